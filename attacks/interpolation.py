"""``interpolation``: random interpolation of every clip's time axis, per batch (the audio analogue of COIN's random
pixel interpolation, AAAI 2025, against convolution-based protections such as CUDA and PosCUDA).

Each training clip, in every batch, is read again at new times by linear interpolation (:func:`lab.dsp.read_at`):

- a **local time warp** (probability ``p_warp``): the local playback rate follows a smooth random curve, its
  logarithm drawn uniformly in [-log(1 + max_rate_change), log(1 + max_rate_change)] at ``knots + 1`` evenly spaced
  points and interpolated linearly between them; the rates are normalised to a mean of 1 and summed into the read
  positions, so the warp is monotone (the rate is always positive) and the clip keeps its overall duration while
  its parts are stretched and squeezed by up to that change;
- a **resampling** (probability ``p_speed``): the clip is played ``s`` times faster, ``s`` uniform in
  [min_speed, max_speed] (pitch and tempo together, as a tape played at another speed);
- an optional per-sample **jitter** (COIN's per-pixel form): every read position moves by a uniform draw in
  [-jitter, jitter] samples (below 0.5 keeps the positions in order wherever the rate stays above 2 x jitter).

The length is kept: what is read past the clip's end is zero, and a slower clip is cut at the end. A filter
convolved into fixed positions (PosCUDA's patches) lands elsewhere and its taps are spread over other lags; the
spectrum moves only by the local rate. All draws come from the attack's own generator (``batch_seed``); one batched
gather per batch, no loop over clips.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator

from attacks.base import ATTACKS, Attack
from lab.config import PluginConfig
from lab.dsp import read_at


class InterpolationConfig(PluginConfig):
    type: Literal["interpolation"] = "interpolation"
    p_warp: float = Field(1.0, ge=0, le=1)
    max_rate_change: float = Field(0.2, ge=0, le=1)
    knots: int = Field(8, ge=1)
    p_speed: float = Field(0.5, ge=0, le=1)
    min_speed: float = Field(0.9, gt=0)
    max_speed: float = Field(1.1, gt=0)
    jitter: float = Field(0.0, ge=0, le=2)

    @model_validator(mode="after")
    def _ranges(self):
        if self.min_speed > self.max_speed:
            raise ValueError(f"min_speed ({self.min_speed}) is above max_speed ({self.max_speed})")
        return self


def warp_positions(n: int, t: int, knots: int, max_rate_change: float, warp: torch.Tensor, speeds: torch.Tensor,
                   jitter: float, gen: torch.Generator | None) -> torch.Tensor:
    """(N, T) read positions: a smooth monotone random warp for rows where ``warp`` (N,) is True (identity timing
    elsewhere), times each row's speed (N,), plus a uniform per-sample jitter of up to ``jitter`` samples."""
    span = math.log1p(max_rate_change)
    log_rate = (2 * torch.rand(n, knots + 1, generator=gen, dtype=torch.float64) - 1) * span
    log_rate = log_rate * warp[:, None].to(log_rate.dtype)
    rate = torch.nn.functional.interpolate(log_rate[:, None], size=t, mode="linear", align_corners=True)[:, 0].exp()
    rate = rate / rate.mean(dim=1, keepdim=True)
    positions = (rate.cumsum(dim=1) - rate[:, :1]) * speeds[:, None].to(rate.dtype)
    if jitter > 0:
        positions = positions + jitter * (2 * torch.rand(n, t, generator=gen, dtype=torch.float64) - 1)
    return positions


@ATTACKS.register("interpolation")
class Interpolation(Attack):
    """Random local time warp and resampling of every clip, per batch, by linear interpolation."""

    Config = InterpolationConfig
    per_batch = True
    draws_per_batch = True

    def transform_batch(self, waveforms, labels, module=None):
        cfg = self.config
        n, t = waveforms.shape
        warp = torch.rand(n, generator=self.gen) < cfg.p_warp
        fast = torch.rand(n, generator=self.gen) < cfg.p_speed
        drawn = cfg.min_speed + (cfg.max_speed - cfg.min_speed) * torch.rand(n, generator=self.gen, dtype=torch.float64)
        speeds = torch.where(fast, drawn, torch.ones_like(drawn))
        positions = warp_positions(n, t, cfg.knots, cfg.max_rate_change, warp, speeds, cfg.jitter, self.gen)
        return read_at(waveforms, positions.to(waveforms.device))
