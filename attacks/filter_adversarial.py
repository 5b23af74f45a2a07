"""``filter-adversarial``: CUDA's own adaptive attack, deconvolution-based adversarial training, in 1-D.

Every class has a learnable filter of ``filter_length`` taps (starting as the identity, kept at unit L2 norm). For
every training batch, ``ascent_steps`` normalised gradient-ascent steps of size ``filter_lr`` move the filters of the
batch's classes towards a HIGHER loss of the current model; each clip, convolved with its class's filter, is then
what the model trains on. The model must learn to classify whatever class-wise filtering it meets.

(Formerly ``filter-retrain`` with ``method: adversarial``; its known-plaintext sibling is ``filter-estimate``.)
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from attacks._filters import FilterConfig
from attacks.base import ATTACKS, Attack


class FilterAdversarialConfig(FilterConfig):
    type: Literal["filter-adversarial"] = "filter-adversarial"
    ascent_steps: int = Field(2, ge=1)
    filter_lr: float = Field(0.05, gt=0)


def filter_rows(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Row n of ``x`` (N, T) convolved ("same", centred) with ``filters[n]`` (N, K), K odd; differentiable."""
    k = filters.shape[1]
    return F.conv1d(x[None], filters.flip(1)[:, None, :], padding=k // 2, groups=len(x))[0]


def identity_filters(num_classes: int, length: int) -> torch.Tensor:
    f = torch.zeros(num_classes, length)
    f[:, length // 2] = 1.0
    return f


@ATTACKS.register("filter-adversarial")
class FilterAdversarial(Attack):
    """Deconvolution adversarial training: class filters moved by gradient ascent on every batch."""

    Config = FilterAdversarialConfig
    per_batch = True

    def start(self, ctx):
        super().start(ctx)
        self.filters = identity_filters(ctx.num_classes, self.config.filter_length)

    def transform_batch(self, waveforms, labels, module):
        cfg: FilterAdversarialConfig = self.config
        filters = self.filters.to(waveforms)
        was_training = module.training
        module.eval()
        with torch.enable_grad():
            for _ in range(cfg.ascent_steps):
                filters.requires_grad_(True)
                loss = F.cross_entropy(module(module.features(filter_rows(waveforms, filters[labels]))), labels)
                (grad,) = torch.autograd.grad(loss, filters)
                step = grad / grad.norm(dim=1, keepdim=True).clamp(min=1e-12)
                filters = filters.detach() + cfg.filter_lr * step
                filters = filters / filters.norm(dim=1, keepdim=True).clamp(min=1e-12)
        module.train(was_training)
        self.filters = filters.detach().cpu()
        return filter_rows(waveforms, self.filters.to(waveforms)[labels]).detach()
