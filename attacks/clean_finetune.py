"""``clean-finetune``: train on the protected data as usual, then fine-tune on a small clean part of the training set.

For each of ``fractions`` (e.g. 0.01 and 0.05: 1% and 5% of the training clips, drawn at random from ``seed``, at
least one clip), a copy of the protected-trained model is trained ``epochs`` more epochs on those clean clips only.
The results give the clean-test accuracy against the amount of clean data used.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator

from attacks.base import ATTACKS, Attack, detached_copy
from lab.config import PluginConfig


class CleanFinetuneConfig(PluginConfig):
    type: Literal["clean-finetune"] = "clean-finetune"
    fractions: list[float] = Field(default_factory=lambda: [0.01, 0.05], min_length=1)
    epochs: int = Field(5, ge=1)
    seed: int = 0

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v):
        for f in v:
            if not 0 < f <= 1:
                raise ValueError(f"each fraction must be in (0, 1] (got {f})")
        return sorted(set(v))


def clean_subset(n: int, fraction: float, seed: int) -> torch.Tensor:
    """Indices of round(fraction x n) clips (at least one), drawn at random."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[: max(1, round(fraction * n))].sort().values


@ATTACKS.register("clean-finetune")
class CleanFinetune(Attack):
    """Fine-tune the protected-trained model on 1%, 5%, ... of clean training data."""

    Config = CleanFinetuneConfig
    trains_plain = True  # the first stage is plain training on the protected data (a shared model can be reused)
    needs_clean = True  # fine-tunes on clean clips

    def after_training(self, module, ctx):
        out = {}
        for fraction in self.config.fractions:
            idx = clean_subset(len(ctx.labels), fraction, self.config.seed)
            tuned = ctx.finetune(detached_copy(module), ctx.clean[idx], ctx.labels[idx], self.config.epochs)
            name = f"{100 * fraction:g}%"
            out[name] = tuned
            self.measured[f"clean_clips@{name}"] = len(idx)
        return out
