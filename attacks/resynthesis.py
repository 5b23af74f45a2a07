"""``resynthesis``: squeeze the protection out by resynthesising every training clip once (the audio analogue of
ISS's grayscale and JPEG squeezing, Liu et al., ICML 2023; ``codec`` is its resampling, bit-depth and MP3 sibling).

``method`` chooses the squeeze (recorded with the attack's parameters):

- ``griffin-lim``: the clip's mel power spectrogram (``n_mels`` bands, STFT of ``n_fft`` samples, hop
  ``hop_length``), mapped back to a linear-frequency magnitude (least squares, torchaudio's InverseMelScale) and
  turned into audio by ``iterations`` Griffin-Lim iterations from zero phase (deterministic: no random initial
  phase). What survives is what a mel spectrogram keeps: the fine spectral structure between mel bands and the
  phase are made anew;
- ``mu-law``: µ-law companding to ``bits`` bits (2**bits levels, 256 at the default 8) and back, as telephone audio
  (amplitudes clipped to [-1, 1] first);
- ``band-limit``: only the band [low_hz, high_hz] kept (an ideal FFT band-pass).

Done once per training run (deterministic), in chunks of clips to bound memory; an epoch then costs a plain one.
"""
from __future__ import annotations

from typing import Literal

import torch
import torchaudio.functional as AF
import torchaudio.transforms as AT
from pydantic import Field, model_validator

from attacks.base import ATTACKS, Attack
from lab.config import PluginConfig
from lab.dsp import band_limit

CHUNK = 256  # clips resynthesised at once


class ResynthesisConfig(PluginConfig):
    type: Literal["resynthesis"] = "resynthesis"
    method: Literal["griffin-lim", "mu-law", "band-limit"] = "griffin-lim"
    n_fft: int = Field(512, ge=16)
    hop_length: int = Field(128, ge=1)
    n_mels: int = Field(64, ge=1)
    iterations: int = Field(32, ge=1)
    bits: int = Field(8, ge=1, le=16)
    low_hz: float = Field(100.0, ge=0)
    high_hz: float = Field(2000.0, gt=0)

    @model_validator(mode="after")
    def _ranges(self):
        if self.hop_length > self.n_fft:
            raise ValueError(f"hop_length ({self.hop_length}) must be at most n_fft ({self.n_fft})")
        if self.n_mels > self.n_fft // 2 + 1:
            raise ValueError(f"n_mels ({self.n_mels}) must be at most n_fft // 2 + 1 ({self.n_fft // 2 + 1})")
        if self.low_hz >= self.high_hz:
            raise ValueError(f"low_hz ({self.low_hz}) must be below high_hz ({self.high_hz})")
        return self


def griffin_lim(x: torch.Tensor, sr: int, cfg: ResynthesisConfig) -> torch.Tensor:
    """Rows of ``x`` (N, T) through a mel power spectrogram and back by Griffin-Lim (zero initial phase)."""
    mel = AT.MelSpectrogram(sr, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels, power=2.0)
    inverse = AT.InverseMelScale(cfg.n_fft // 2 + 1, n_mels=cfg.n_mels, sample_rate=sr)
    gl = AT.GriffinLim(n_fft=cfg.n_fft, n_iter=cfg.iterations, hop_length=cfg.hop_length, power=2.0,
                       length=x.shape[1], rand_init=False)
    out = [gl(inverse(mel(chunk.float()))).to(x.dtype) for chunk in x.split(CHUNK)]
    return torch.cat(out) if out else x.clone()


def mu_law(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Rows of ``x`` µ-law companded to ``bits`` bits (2**bits levels) and expanded back."""
    channels = 2 ** bits
    codes = AF.mu_law_encoding(x.clamp(-1.0, 1.0), channels)
    return AF.mu_law_decoding(codes, channels).to(x.dtype)


def resynthesise(x: torch.Tensor, sr: int, cfg: ResynthesisConfig) -> torch.Tensor:
    if cfg.method == "griffin-lim":
        return griffin_lim(x, sr, cfg)
    if cfg.method == "mu-law":
        return mu_law(x, cfg.bits)
    if cfg.high_hz > sr / 2:
        raise ValueError(f"resynthesis: high_hz ({cfg.high_hz}) is above the Nyquist frequency of {sr} Hz audio "
                         f"({sr / 2:g}); give high_hz <= {sr / 2:g}")
    return band_limit(x, sr, cfg.low_hz, cfg.high_hz)


@ATTACKS.register("resynthesis")
class Resynthesis(Attack):
    """Resynthesise the protected training set once (mel + Griffin-Lim, µ-law, band-limiting) and train on it."""

    Config = ResynthesisConfig

    def training_set(self, ctx):
        return resynthesise(ctx.protected, ctx.sample_rate, self.config), ctx.labels
