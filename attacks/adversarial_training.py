"""``adversarial-training``: PGD adversarial training on the waveform (Madry et al.), L-infinity ball.

For every training batch the attacker first pushes each clip, within +-``eps`` per sample, towards a higher loss of
the current model (``steps`` steps of signed-gradient ascent of size ``step_size``, default 2.5 x eps / steps, from a
random start in the ball when ``random_start``), then trains the model on those clips. The gradient passes through
the feature front-end (MFCC / log-mel / raw). Costs about (steps + 1) forward-backward passes per batch.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from attacks.base import ATTACKS, Attack
from lab.config import PluginConfig


class AdversarialTrainingConfig(PluginConfig):
    type: Literal["adversarial-training"] = "adversarial-training"
    eps: float = Field(0.005, ge=0)
    steps: int = Field(3, ge=1)
    step_size: float | None = Field(None, gt=0)
    random_start: bool = True


def pgd(module, waveforms: torch.Tensor, labels: torch.Tensor, eps: float, steps: int, step_size: float,
        random_start: bool = True, gen: torch.Generator | None = None) -> torch.Tensor:
    """Waveforms moved within +-eps (L-infinity) to raise ``module``'s cross-entropy; ``module`` needs
    ``features(waveforms)`` (a differentiable front-end) and ``forward(features)``. Model weights get no gradient.
    The random start is drawn from ``gen`` (a CPU generator: the same start on every device)."""
    if eps == 0:
        return waveforms
    was_training = module.training
    module.eval()
    if random_start:
        noise = torch.rand(waveforms.shape, generator=gen, dtype=waveforms.dtype).to(waveforms.device)
        delta = (2 * noise - 1) * eps
    else:
        delta = torch.zeros_like(waveforms)
    with torch.enable_grad():
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(module(module.features(waveforms + delta)), labels)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + step_size * grad.sign()).clamp(-eps, eps)
    module.train(was_training)
    return (waveforms + delta).detach()


@ATTACKS.register("adversarial-training")
class AdversarialTraining(Attack):
    """PGD (L-infinity on the waveform) during training."""

    Config = AdversarialTrainingConfig
    per_batch = True
    draws_per_batch = True  # the random start

    def transform_batch(self, waveforms, labels, module):
        cfg: AdversarialTrainingConfig = self.config
        step = cfg.step_size or 2.5 * cfg.eps / cfg.steps
        return pgd(module, waveforms, labels, cfg.eps, cfg.steps, step, cfg.random_start, self.gen)
