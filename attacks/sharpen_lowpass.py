"""``sharpen-lowpass``: the 1-D analogue of the attack that broke CUDA on images (Kim & Sandoval-Segura, 2024).

Every training clip, in every epoch, is (1) convolved with its own random sharpening kernel
``[-a, 1 + 2a, -a]`` with ``a`` drawn from U(0, ``max_sharpness``) (boosts what a blur took away), then (2) low-passed
in the DCT domain: only the lowest ``keep_fraction`` of the clip's DCT-II coefficients are kept.

Batched: one grouped convolution and one DCT (scipy.fft) per batch.
"""
from __future__ import annotations

from typing import Literal

import scipy.fft
import torch
import torch.nn.functional as F
from pydantic import Field

from attacks.base import ATTACKS, Attack
from lab.config import PluginConfig


class SharpenLowpassConfig(PluginConfig):
    type: Literal["sharpen-lowpass"] = "sharpen-lowpass"
    max_sharpness: float = Field(1.0, ge=0)
    keep_fraction: float = Field(0.5, gt=0, le=1)


def sharpen(x: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Row n of ``x`` (N, T) convolved with [-a, 1 + 2a, -a], a = amount[n] ("same" length, zeros beyond the ends)."""
    a = amount.to(x)[:, None]
    kernels = torch.cat([-a, 1 + 2 * a, -a], dim=1)[:, None, :]  # (N, 1, 3)
    return F.conv1d(x[None], kernels, padding=1, groups=len(x))[0]


def dct_lowpass(x: torch.Tensor, keep_fraction: float) -> torch.Tensor:
    """Keep only the lowest ``keep_fraction`` of each row's DCT-II (orthonormal) coefficients."""
    coeffs = scipy.fft.dct(x.detach().cpu().numpy(), type=2, norm="ortho", axis=-1)
    coeffs[:, max(1, round(keep_fraction * x.shape[1])):] = 0
    return torch.from_numpy(scipy.fft.idct(coeffs, type=2, norm="ortho", axis=-1)).to(x)


@ATTACKS.register("sharpen-lowpass")
class SharpenLowpass(Attack):
    """A random sharpening kernel per clip per epoch, then a DCT low-pass."""

    Config = SharpenLowpassConfig
    per_batch = True
    draws_per_batch = True

    def transform_batch(self, waveforms, labels, module=None):
        amount = self.config.max_sharpness * torch.rand(len(waveforms), generator=self.gen)
        return dct_lowpass(sharpen(waveforms, amount), self.config.keep_fraction)
