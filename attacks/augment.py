"""``augment``: a per-sample, per-epoch augmentation chain applied to waveforms before the feature front-end.

The chain is a list of steps, each with a name, a probability ``p`` (each clip draws for itself whether the step
applies) and its parameters; every clip draws its own parameters in every epoch. Default chain (all configurable in
the recipe's ``attack:`` block or on the command line):

- ``gaussian_noise``: add white noise of amplitude (std) drawn from [min_amplitude, max_amplitude];
- ``shift``: roll the clip by up to ``max_fraction`` of its length either way (what leaves one end comes back in at
  the other);
- ``time_stretch``: play faster or slower by a rate in [min_rate, max_rate] without changing pitch (phase vocoder;
  the length is kept: cut or zero-padded); rates are drawn from ``levels`` evenly spaced values so that clips with
  the same rate are stretched together (one batched STFT per level);
- ``pitch_shift``: shift the pitch by a whole number of semitones in [min_semitones, max_semitones] (stretch, then
  resample back to the clip's length);
- ``gain``: multiply by a gain drawn in [min_db, max_db] decibels;
- ``band_pass``: keep only a band around a centre drawn in [min_center_hz, max_center_hz], of width
  [min_bandwidth_fraction, max_bandwidth_fraction] x the centre (an ideal FFT-domain band-pass);
- ``time_mask``: silence a random span of up to ``max_fraction`` of the clip.

These are batched tensor versions of the audiomentations transforms of the same names (per-clip numpy audiomentations
costs ~2-3 ms per clip and step at 8 kHz, several times a plain training epoch). Any other audiomentations transform
can be added per clip with ``{name: audiomentations, transform: ClassName, p: ..., params: {...}}``.

Every draw (which clips a step changes, and with what parameters) comes from the attack's own generator, seeded from
the training seed and recorded as ``batch_seed`` (``Attack.draws_per_batch``); the step functions take it as ``gen``.
An ``audiomentations`` step draws from numpy's and Python's own generators instead (seeded by the lab).
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from attacks.base import ATTACKS, Attack
from lab.config import PluginConfig
from lab.dsp import circular_shift, fit_length


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator | None = None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def gaussian_noise(x, sr, min_amplitude=0.001, max_amplitude=0.015, *, gen=None):
    amp = _uniform(len(x), min_amplitude, max_amplitude, gen).to(x)
    return x + amp[:, None] * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)


def gain(x, sr, min_db=-12.0, max_db=12.0, *, gen=None):
    return x * (10 ** (_uniform(len(x), min_db, max_db, gen) / 20)).to(x)[:, None]


def shift(x, sr, max_fraction=0.5, *, gen=None):
    limit = int(max_fraction * x.shape[1])
    return circular_shift(x, torch.randint(-limit, limit + 1, (len(x),), generator=gen).to(x.device))


def time_mask(x, sr, max_fraction=0.1, *, gen=None):
    n, t = x.shape
    width = (torch.rand(n, generator=gen) * max_fraction * t).long()
    start = (torch.rand(n, generator=gen) * (t - width + 1)).long()
    pos = torch.arange(t)[None, :]
    keep = (pos < start[:, None]) | (pos >= (start + width)[:, None])
    return x * keep.to(x)


def band_pass(x, sr, min_center_hz=200.0, max_center_hz=2000.0, min_bandwidth_fraction=0.5,
              max_bandwidth_fraction=1.99, *, gen=None):
    n, t = x.shape
    centre = _uniform(n, min_center_hz, max_center_hz, gen)
    width = centre * _uniform(n, min_bandwidth_fraction, max_bandwidth_fraction, gen)
    freqs = torch.fft.rfftfreq(t, 1 / sr)[None, :]
    mask = (freqs >= (centre - width / 2)[:, None]) & (freqs <= (centre + width / 2)[:, None])
    return torch.fft.irfft(torch.fft.rfft(x) * mask.to(x), n=t)


def _stretch(x: torch.Tensor, rate: float, n_fft: int = 256, overlap: int = 2) -> torch.Tensor:
    """Rows of x played ``rate`` times faster with their pitch kept (phase vocoder on an STFT of ``n_fft`` samples with
    ``overlap`` frames per window (2: 50%): magnitudes interpolated between frames, phases advanced by each bin's
    measured frequency). Returns the stretched length, round(T / rate)."""
    hop = n_fft // overlap
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    spec = torch.stft(x, n_fft, hop, window=window, return_complex=True)  # (N, F, frames)
    frames = spec.shape[-1]
    steps = torch.arange(0, frames, rate, device=x.device, dtype=x.dtype)
    idx = steps.long()
    alpha = (steps - idx)[None, None, :]
    mag = torch.nn.functional.pad(spec.abs(), (0, 2))
    phase = torch.nn.functional.pad(spec.angle(), (0, 2))
    expected = torch.linspace(0, math.pi * hop, spec.shape[-2], device=x.device, dtype=x.dtype)[None, :, None]
    delta = phase[..., idx + 1] - phase[..., idx] - expected
    delta = delta - 2 * math.pi * torch.round(delta / (2 * math.pi)) + expected
    acc = torch.cat([phase[..., :1], phase[..., :1] + delta[..., :-1].cumsum(-1)], dim=-1)
    magnitude = (1 - alpha) * mag[..., idx] + alpha * mag[..., idx + 1]
    length = max(1, round(x.shape[1] / rate))
    return torch.istft(torch.polar(magnitude, acc), n_fft, hop, window=window, length=length)


def _by_level(x, values: torch.Tensor, fn):
    out = x.clone()
    for v in values.unique().tolist():
        rows = values == v
        out[rows] = fn(x[rows], v)
    return out


def time_stretch(x, sr, min_rate=0.8, max_rate=1.25, levels=5, *, gen=None):
    grid = torch.linspace(min_rate, max_rate, levels)
    rates = grid[torch.randint(levels, (len(x),), generator=gen)]
    return _by_level(x, rates, lambda rows, r: rows if r == 1.0 else fit_length(_stretch(rows, r), x.shape[1]))


def pitch_shift(x, sr, min_semitones=-4, max_semitones=4, *, gen=None):
    steps = torch.randint(int(min_semitones), int(max_semitones) + 1, (len(x),), generator=gen).float()

    def shift_rows(rows, n_steps):
        if n_steps == 0:
            return rows
        ratio = 2 ** (n_steps / 12)
        slow = _stretch(rows, 1 / ratio)  # longer by `ratio`, same pitch
        return torch.nn.functional.interpolate(slow[:, None], size=rows.shape[1], mode="linear",
                                               align_corners=False)[:, 0]  # squeezed back: pitch x ratio
    return _by_level(x, steps, shift_rows)


class _Audiomentations:
    """Any audiomentations transform, applied clip by clip (numpy; slow but the whole library)."""

    def __init__(self, transform: str, params: dict | None = None):
        import audiomentations
        if not hasattr(audiomentations, transform):
            raise ValueError(f"audiomentations has no transform {transform!r}")
        self.transform = getattr(audiomentations, transform)(p=1.0, **(params or {}))

    def __call__(self, x, sr, *, gen=None):  # audiomentations draws from numpy's and Python's own generators
        rows = [torch.from_numpy(self.transform(r.cpu().numpy(), sr)).to(x)[: x.shape[1]] for r in x]
        return torch.stack([fit_length(r, x.shape[1]) for r in rows])


STEPS = {"gaussian_noise": gaussian_noise, "shift": shift, "time_stretch": time_stretch, "pitch_shift": pitch_shift,
         "gain": gain, "band_pass": band_pass, "time_mask": time_mask}

DEFAULT_CHAIN = [
    {"name": "gaussian_noise", "p": 0.5},
    {"name": "shift", "p": 0.5},
    {"name": "time_stretch", "p": 0.3},
    {"name": "pitch_shift", "p": 0.3},
    {"name": "gain", "p": 0.5},
    {"name": "band_pass", "p": 0.3},
    {"name": "time_mask", "p": 0.3},
]


def _check_step(i: int, step: Any) -> dict:
    import inspect
    if not isinstance(step, dict) or "name" not in step:
        raise ValueError(f"chain[{i}]: expected a mapping with 'name' (one of {', '.join([*STEPS, 'audiomentations'])})")
    step = dict(step)
    name = step.pop("name")
    p = step.pop("p", 1.0)
    if not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"chain[{i}] ({name}): p must be a probability in [0, 1] (got {p!r})")
    if name == "audiomentations":
        try:
            _Audiomentations(**step)
        except (TypeError, ValueError) as e:
            raise ValueError(f"chain[{i}] (audiomentations): {e}") from None
    elif name in STEPS:
        allowed = [p.name for p in list(inspect.signature(STEPS[name]).parameters.values())[2:]
                   if p.kind is p.POSITIONAL_OR_KEYWORD]  # gen (keyword-only) is the attack's, not the recipe's
        for key, value in step.items():
            if key not in allowed:
                raise ValueError(f"chain[{i}] ({name}): unknown parameter {key!r}; allowed: p, {', '.join(allowed)}")
        lows = [k for k in step if k.startswith("min_")]
        for lo in lows:
            hi = "max_" + lo[4:]
            if hi in step and step[lo] > step[hi]:
                raise ValueError(f"chain[{i}] ({name}): {lo} ({step[lo]}) is above {hi} ({step[hi]})")
        for key in ("max_fraction", "min_amplitude", "min_rate", "min_center_hz"):
            if key in step and step[key] < 0:
                raise ValueError(f"chain[{i}] ({name}): {key} must be >= 0 (got {step[key]})")
    else:
        raise ValueError(f"chain[{i}]: unknown step {name!r}; valid: {', '.join([*STEPS, 'audiomentations'])}")
    return {"name": name, "p": float(p), **step}


class AugmentConfig(PluginConfig):
    type: Literal["augment"] = "augment"
    chain: list[dict] = Field(default_factory=lambda: [dict(s) for s in DEFAULT_CHAIN])

    @field_validator("chain", mode="before")
    @classmethod
    def _chain(cls, v):
        if not isinstance(v, list) or not v:
            raise ValueError("chain must be a non-empty list of steps")
        return [_check_step(i, s) for i, s in enumerate(v)]


@ATTACKS.register("augment")
class Augment(Attack):
    """Per-sample, per-epoch augmentation of every training batch (before the features are computed)."""

    Config = AugmentConfig
    per_batch = True
    draws_per_batch = True

    def __init__(self, config):
        super().__init__(config)
        self.steps = []
        for step in config.chain:
            params = {k: v for k, v in step.items() if k not in ("name", "p")}
            fn = _Audiomentations(**params) if step["name"] == "audiomentations" else \
                (lambda f, kw: (lambda x, sr, gen: f(x, sr, gen=gen, **kw)))(STEPS[step["name"]], params)
            self.steps.append((step["p"], fn))

    def transform_batch(self, waveforms, labels, module=None):
        sr = self.sample_rate or 8000
        x = waveforms
        for p, fn in self.steps:
            rows = torch.rand(len(x), generator=self.gen) < p
            if rows.any():
                x = x.clone()
                x[rows] = fn(x[rows], sr, gen=self.gen)
        return x
