"""``strong-augment``: a strong random augmentation chain on every training batch, UEraser-style (Qin et al., ICCVW
2023: its "Lite" form, a strong random chain, restores near-clean accuracy against image poisons; its "Max" form
trains on the worst of K augmentations).

Every clip of every batch goes through these steps in order, each applied to a clip with its probability ``p`` and
with the clip's own parameters (all drawn from the attack's generator, recorded as ``batch_seed``):

- ``speed``: played ``s`` times faster, ``s`` in [min_factor, max_factor] (pitch and tempo together; linear interpolation);
- ``pitch``: the STFT magnitudes moved along the frequency axis by 2**(semitones / 12), semitones in [min, max],
  the phases kept (a crude, cheap, batched pitch/formant warp; not a phase vocoder);
- ``shift``: moved by up to ``max_seconds`` either way; what leaves the clip is dropped and zeros come in;
- ``crop``: up to ``max_fraction`` of the clip silenced at its start and, independently, at its end;
- ``reverb``: convolved with a synthetic room: an exponentially decaying white-noise impulse response with a
  60 dB decay time (RT60) in [min_rt60, max_rt60] s, a direct path of 1 and a tail of relative energy ``wet`` in
  [min_wet, max_wet]; the result is scaled back to the clip's energy;
- ``low_pass``: an ideal FFT low-pass at a cut-off in [min_hz, max_hz];
- ``high_pass``: an ideal FFT high-pass at a cut-off in [min_hz, max_hz] (with ``low_pass``: a band-pass);
- ``spec_mask``: SpecAugment on the waveform's STFT (the attack interface acts on waveforms, before the recipe's
  front-end): ``freq_masks`` bands of up to ``max_freq_fraction`` of the bins and ``time_masks`` spans of up to
  ``max_time_fraction`` of the frames set to zero, then back to a waveform;
- ``gain``: multiplied by a gain in [min_db, max_db] dB;
- ``noise``: white noise added at a per-clip SNR in [min_snr_db, max_snr_db] dB (over the whole clip).

The defaults hold the outside trainer's audiomentations chain (time shift up to +-0.15 s, low-pass 1.5-3.5 kHz,
gain, noise), which lifted class-wise EM noise at 20 dB to 0.617, at its ranges, with the other steps on top; shift,
low-pass and noise apply to every clip (p 1.0): with p 0.8/0.7/0.6 the chain reached 0.553 on that protection, with
1.0 0.628 (docs/attacks.md). Each step is batched over the clips that draw it (no loop over clips).

``k`` > 1 is the "Max" form: K augmentations of the batch are drawn and each clip keeps the one on which the model
being trained has the highest cross-entropy (scored without gradients, the model in eval mode); K forward passes
more per batch.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from attacks.base import ATTACKS, Attack
from lab.config import PluginConfig, Section
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


class StrongAugmentConfig(PluginConfig):
    type: Literal["strong-augment"] = "strong-augment"
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
    k: int = Field(1, ge=1, le=16)


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


def augment_chain(x: torch.Tensor, sr: int, cfg: StrongAugmentConfig, gen: torch.Generator | None) -> torch.Tensor:
    """One draw of the chain over a batch (B, T): a new tensor, ``x`` untouched."""
    for name, fn in STEPS.items():
        step = getattr(cfg, name)
        rows = torch.rand(len(x), generator=gen) < step.p
        if rows.any():
            x = x.clone()
            x[rows.to(x.device)] = fn(x[rows.to(x.device)], sr, step, gen)
    return x


@ATTACKS.register("strong-augment")
class StrongAugment(Attack):
    """A strong random augmentation chain per clip and batch (UEraser-Lite); ``k`` > 1: the worst of K per clip
    by the model's loss (UEraser-Max)."""

    Config = StrongAugmentConfig
    per_batch = True
    draws_per_batch = True

    def transform_batch(self, waveforms, labels, module=None):
        sr = self.sample_rate or 8000
        if self.config.k == 1:
            return augment_chain(waveforms, sr, self.config, self.gen)
        if module is None or not hasattr(module, "features"):
            raise ValueError("strong-augment with k > 1 scores its augmentations with the model being trained: "
                             "it needs a module with a waveform front-end")
        candidates = [augment_chain(waveforms, sr, self.config, self.gen) for _ in range(self.config.k)]
        was_training = module.training
        module.eval()
        with torch.no_grad():
            losses = torch.stack([F.cross_entropy(module(module.features(c)), labels, reduction="none")
                                  for c in candidates])  # (K, B)
        module.train(was_training)
        pick = losses.argmax(dim=0)
        return torch.stack(candidates)[pick, torch.arange(len(labels), device=pick.device)]
