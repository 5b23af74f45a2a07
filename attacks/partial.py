"""``partial``: the data owner controls only part of the training set, so only ``fraction`` of it is protected.

Exactly round(fraction x N) clips, drawn at random (from ``seed``, stratification-free), carry the protection; the
others are the clean originals. ``fraction: 1`` is the plain protected set, ``0`` the clean one.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from attacks.base import ATTACKS, Attack
from lab.config import PluginConfig


class PartialConfig(PluginConfig):
    type: Literal["partial"] = "partial"
    fraction: float = Field(0.5, ge=0, le=1)
    seed: int = 0


def protected_rows(n: int, fraction: float, seed: int) -> torch.Tensor:
    """A boolean mask (n,) with exactly round(fraction x n) True entries at random places."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=gen)[: round(fraction * n)]] = True
    return mask


@ATTACKS.register("partial")
class Partial(Attack):
    """Train on a set where only a fraction of the clips is protected."""

    Config = PartialConfig
    needs_clean = True  # the unprotected part is clean audio

    def training_set(self, ctx):
        mask = protected_rows(len(ctx.labels), self.config.fraction, self.config.seed)
        self.measured = {"protected_clips": int(mask.sum()), "total_clips": len(mask)}
        return torch.where(mask[:, None], ctx.protected, ctx.clean), ctx.labels
