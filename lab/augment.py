"""The strong augmentation chain (UEraser-style) as shared signal code: the ``strong-augment`` attack trains through
it (attacks/strong_augment.py, where every step is described) and ``ensemble-em``'s expectation over
transformations can descend through it (``eot.strong_augment``). Every step is batched over the clips that draw it,
takes its parameters from the generator it is given, returns a new tensor, and is differentiable in the clips
(linear interpolation, FFT filters and convolution, STFT magnitudes; the pitch step keeps each bin's phase, so its
gradient flows through the magnitudes only)."""
from __future__ import annotations

import math

import torch
from pydantic import Field, model_validator

from lab.config import Section
from lab.dsp import band_limit, energy, read_at, zero_shift

N_FFT, HOP = 256, 64  # the STFT of the pitch and spec_mask steps (32 ms / 8 ms at 8 kHz)


class _Step(Section):
    p: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _ranges(self):
        for name in type(self).model_fields:
            if name.startswith("min_") and ("max_" + name[4:]) in type(self).model_fields:
                lo, hi = getattr(self, name), getattr(self, "max_" + name[4:])
                if lo > hi:
                    raise ValueError(f"{name} ({lo}) is above max_{name[4:]} ({hi})")
        return self


class Speed(_Step):
    p: float = Field(0.5, ge=0, le=1)
    min_factor: float = Field(0.85, gt=0)
    max_factor: float = Field(1.15, gt=0)


class Pitch(_Step):
    p: float = Field(0.3, ge=0, le=1)
    min_semitones: float = -3.0
    max_semitones: float = 3.0


class Shift(_Step):
    p: float = Field(1.0, ge=0, le=1)
    max_seconds: float = Field(0.15, ge=0)


class Crop(_Step):
    p: float = Field(0.3, ge=0, le=1)
    max_fraction: float = Field(0.1, ge=0, le=0.5)


class Reverb(_Step):
    p: float = Field(0.3, ge=0, le=1)
    min_rt60: float = Field(0.1, gt=0)
    max_rt60: float = Field(0.5, gt=0)
    min_wet: float = Field(0.1, ge=0)
    max_wet: float = Field(0.6, ge=0)


class LowPass(_Step):
    p: float = Field(1.0, ge=0, le=1)
    min_hz: float = Field(1500.0, gt=0)
    max_hz: float = Field(3500.0, gt=0)


class HighPass(_Step):
    p: float = Field(0.3, ge=0, le=1)
    min_hz: float = Field(50.0, ge=0)
    max_hz: float = Field(400.0, ge=0)


class SpecMask(_Step):
    p: float = Field(0.5, ge=0, le=1)
    freq_masks: int = Field(2, ge=0)
    max_freq_fraction: float = Field(0.15, ge=0, le=1)
    time_masks: int = Field(2, ge=0)
    max_time_fraction: float = Field(0.1, ge=0, le=1)


class Gain(_Step):
    p: float = Field(0.8, ge=0, le=1)
    min_db: float = -12.0
    max_db: float = 12.0


class Noise(_Step):
    p: float = Field(1.0, ge=0, le=1)
    min_snr_db: float = 10.0
    max_snr_db: float = 30.0


class StrongChain(Section):
    """The chain's ten steps in order (each with its probability ``p`` and ranges; the defaults are the
    ``strong-augment`` attack's)."""

    speed: Speed = Speed()
    pitch: Pitch = Pitch()
    shift: Shift = Shift()
    crop: Crop = Crop()
    reverb: Reverb = Reverb()
    low_pass: LowPass = LowPass()
    high_pass: HighPass = HighPass()
    spec_mask: SpecMask = SpecMask()
    gain: Gain = Gain()
    noise: Noise = Noise()


def _uniform(n: int, lo: float, hi: float, gen) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def speed(x, sr, cfg: Speed, gen):
    s = _uniform(len(x), cfg.min_factor, cfg.max_factor, gen)
    return read_at(x, (s[:, None] * torch.arange(x.shape[1], dtype=torch.float64)[None, :]).to(x.device))


def _stft(x):
    return torch.stft(x, N_FFT, HOP, window=torch.hann_window(N_FFT, dtype=x.dtype, device=x.device),
                      return_complex=True)  # (n, F, frames)


def _istft(spec, t):
    return torch.istft(spec, N_FFT, HOP, window=torch.hann_window(N_FFT, dtype=spec.real.dtype, device=spec.device),
                       length=t)


def pitch(x, sr, cfg: Pitch, gen):
    n, t = x.shape
    ratio = 2 ** (_uniform(n, cfg.min_semitones, cfg.max_semitones, gen) / 12)
    spec = _stft(x)
    bins, frames = spec.shape[1], spec.shape[2]
    where = (torch.arange(bins, dtype=torch.float64)[None, :] / ratio[:, None]).to(x.device)  # bin k reads k / ratio
    lo = where.floor()
    frac = (where - lo).to(x.dtype)[:, :, None]
    lo = lo.long()
    mags = spec.abs()

    def at(i):  # (n, bins, frames): the magnitudes of bins i (n, bins); zero above the last bin
        return mags.gather(1, i.clamp(max=bins - 1)[:, :, None].expand(n, bins, frames)) * (i < bins)[:, :, None]
    moved = at(lo) * (1 - frac) + at(lo + 1) * frac
    return _istft(torch.polar(moved, spec.angle()), t)


def shift(x, sr, cfg: Shift, gen):
    limit = int(round(cfg.max_seconds * sr))
    return zero_shift(x, torch.randint(-limit, limit + 1, (len(x),), generator=gen))


def crop(x, sr, cfg: Crop, gen):
    n, t = x.shape
    start = (torch.rand(n, generator=gen) * cfg.max_fraction * t).long()
    end = t - (torch.rand(n, generator=gen) * cfg.max_fraction * t).long()
    pos = torch.arange(t)[None, :]
    return x * ((pos >= start[:, None]) & (pos < end[:, None])).to(x)


def reverb(x, sr, cfg: Reverb, gen):
    n, t = x.shape
    rt60 = _uniform(n, cfg.min_rt60, cfg.max_rt60, gen)
    wet = _uniform(n, cfg.min_wet, cfg.max_wet, gen)
    length = max(2, int(cfg.max_rt60 * sr))
    times = torch.arange(length, dtype=torch.float64)[None, :] / sr
    tail = torch.randn(n, length, generator=gen, dtype=torch.float64) * torch.exp(-3 * math.log(10) * times
                                                                                  / rt60[:, None])
    tail[:, 0] = 0.0
    tail = tail * torch.sqrt(wet[:, None] / tail.pow(2).sum(dim=1, keepdim=True).clamp(min=1e-30))
    ir = tail.clone()
    ir[:, 0] = 1.0
    size = t + length
    wetted = torch.fft.irfft(torch.fft.rfft(x.double(), n=size) * torch.fft.rfft(ir, n=size).to(x.device), n=size)
    wetted = wetted[:, :t]
    level = torch.sqrt(x.double().pow(2).sum(1, keepdim=True) / wetted.pow(2).sum(1, keepdim=True).clamp(min=1e-30))
    return (wetted * level).to(x.dtype)


def low_pass(x, sr, cfg: LowPass, gen):
    return band_limit(x, sr, 0.0, _uniform(len(x), cfg.min_hz, cfg.max_hz, gen))


def high_pass(x, sr, cfg: HighPass, gen):
    return band_limit(x, sr, _uniform(len(x), cfg.min_hz, cfg.max_hz, gen), float(sr))


def _masks(n: int, size: int, count: int, max_fraction: float, gen) -> torch.Tensor:
    """(n, size) True where none of ``count`` random spans of up to ``max_fraction`` x size covers a position."""
    keep = torch.ones(n, size, dtype=torch.bool)
    pos = torch.arange(size)[None, :]
    for _ in range(count):
        width = (torch.rand(n, generator=gen) * max_fraction * size).long()
        start = (torch.rand(n, generator=gen) * (size - width + 1)).long()
        keep &= (pos < start[:, None]) | (pos >= (start + width)[:, None])
    return keep


def spec_mask(x, sr, cfg: SpecMask, gen):
    n, t = x.shape
    spec = _stft(x)
    freq = _masks(n, spec.shape[1], cfg.freq_masks, cfg.max_freq_fraction, gen)
    time = _masks(n, spec.shape[2], cfg.time_masks, cfg.max_time_fraction, gen)
    keep = (freq[:, :, None] & time[:, None, :]).to(spec.device)
    return _istft(spec * keep, t)


def gain(x, sr, cfg: Gain, gen):
    return x * (10 ** (_uniform(len(x), cfg.min_db, cfg.max_db, gen) / 20)).to(x)[:, None]


def noise(x, sr, cfg: Noise, gen):
    snr = _uniform(len(x), cfg.min_snr_db, cfg.max_snr_db, gen)
    white = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    signal, power = energy(x).cpu(), energy(white)
    scale = torch.sqrt(signal / (power.clamp(min=1e-30) * 10 ** (snr[:, None] / 10)))  # silent clip: no noise
    return x + (white * scale.to(x.dtype)).to(x.device)


STEPS = {"speed": speed, "pitch": pitch, "shift": shift, "crop": crop, "reverb": reverb, "low_pass": low_pass,
         "high_pass": high_pass, "spec_mask": spec_mask, "gain": gain, "noise": noise}


def augment_chain(x: torch.Tensor, sr: int, cfg: StrongChain, gen: torch.Generator | None) -> torch.Tensor:
    """One draw of the chain over a batch (B, T): a new tensor, ``x`` untouched."""
    for name, fn in STEPS.items():
        step = getattr(cfg, name)
        rows = torch.rand(len(x), generator=gen) < step.p
        if rows.any():
            x = x.clone()
            x[rows.to(x.device)] = fn(x[rows.to(x.device)], sr, step, gen)
    return x
