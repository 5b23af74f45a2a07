"""``mixed-position``: break the link between a patch's position and the label.

Every training clip is moved anew in every epoch, so a class's patch no longer sits at one place:

- ``mode: shift``: a random circular shift of each clip by up to ``max_shift_seconds`` either way (``null``: any
  amount up to the whole clip);
- ``mode: shuffle``: each clip is cut into ``segments`` equal pieces which are put back in a random order.

Batched over the whole training batch (one gather, no loop over clips).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from attacks.base import ATTACKS, Attack
from lab.config import PluginConfig
from lab.dsp import circular_shift


class MixedPositionConfig(PluginConfig):
    type: Literal["mixed-position"] = "mixed-position"
    mode: Literal["shift", "shuffle"] = "shift"
    max_shift_seconds: float | None = Field(None, gt=0)
    segments: int = Field(4, ge=2)


def shuffle_segments(x: torch.Tensor, segments: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Each row of ``x`` (N, T) cut into ``segments`` equal pieces put back in a random order (a remainder of
    T mod segments samples stays at the end)."""
    n, t = x.shape
    seg = t // segments
    order = torch.rand(n, segments, generator=gen).argsort(dim=1)  # (N, S) a random permutation per clip
    idx = (order[:, :, None] * seg + torch.arange(seg)[None, None, :]).reshape(n, segments * seg)
    body = x.gather(1, idx.to(x.device))
    return torch.cat([body, x[:, segments * seg:]], dim=1)


@ATTACKS.register("mixed-position")
class MixedPosition(Attack):
    """Random circular shifts or segment shuffling of every training clip, each epoch."""

    Config = MixedPositionConfig
    per_batch = True
    draws_per_batch = True

    def transform_batch(self, waveforms, labels, module=None):
        cfg: MixedPositionConfig = self.config
        n, t = waveforms.shape
        if cfg.mode == "shuffle":
            return shuffle_segments(waveforms, cfg.segments, self.gen)
        sr = self.sample_rate
        limit = t if cfg.max_shift_seconds is None or sr is None else min(t, round(cfg.max_shift_seconds * sr))
        shifts = torch.randint(-limit, limit + 1, (n,), generator=self.gen)
        return circular_shift(waveforms, shifts.to(waveforms.device))
