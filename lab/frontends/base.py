"""The front-end interface: what a recipe's ``features.type`` names.

A front-end kind is built once per recipe from the ``features`` section and the sample rate, and maps a batch of
waveforms (B, T) to features (B, C, F) with ``compute``, differentiably (attacks that need gradients with respect to
the audio go through it). ``raw = True`` tells the models that the "features" are the audio itself (C = 1), which
they then cut into frames or convolve in 1-D. ``check(cfg)`` refuses settings the front-end cannot use (one line).
"""
from __future__ import annotations

from typing import ClassVar

import torch

from lab.registry import Registry

FRONTENDS: Registry = Registry("feature front-end", package="lab.frontends")


class FrontEndKind:
    raw: ClassVar[bool] = False

    def __init__(self, cfg, sample_rate: int):
        self.cfg = cfg
        self.sample_rate = sample_rate
        self.transform: torch.nn.Module | None = None  # a torch module with buffers, moved to each batch's device

    @classmethod
    def check(cls, cfg) -> None:
        """Raise ValueError (one line, naming the field) for settings this front-end cannot use."""

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mel_kwargs(self) -> dict:
        """The STFT/mel settings of the ``features`` section at this sample rate (for spectral front-ends)."""
        win = round(self.cfg.win_ms * self.sample_rate / 1000)
        hop = round(self.cfg.hop_ms * self.sample_rate / 1000)
        return dict(n_fft=win, win_length=win, hop_length=hop, n_mels=self.cfg.n_mels)
