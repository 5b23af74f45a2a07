"""The reviewer's attacks (issue 24) do what they claim: interpolation moves timing but keeps the length and the
spectrum near; strong-augment repeats from its seed, differs across seeds, and each step changes what it names (the
Max form keeps each clip's worst candidate); resynthesis squeezes to 256 µ-law levels, to a band, or through a mel
spectrogram. Generated audio only; the registry's contract tests (tests/test_contracts.py) cover seeding, records
and untouched inputs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attacks import build_attack
from attacks.base import AttackContext
from attacks.interpolation import warp_positions
from attacks.resynthesis import ResynthesisConfig, resynthesise
from attacks.strong_augment import StrongAugmentConfig, augment_chain
from lab.dsp import band_limit, read_at, zero_shift
from lab.errors import LabError

SR = 8000
OFF = {name: {"p": 0.0} for name in ("speed", "pitch", "shift", "crop", "reverb", "low_pass", "high_pass",
                                      "spec_mask", "gain", "noise")}


def sine(freq: float, n: int = 8, t: int = SR) -> torch.Tensor:
    return 0.5 * torch.sin(2 * torch.pi * freq * torch.arange(t) / SR).repeat(n, 1)


def dominant_hz(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.rfft(x).abs().argmax(dim=1).float() * SR / x.shape[1]


def clicks(n: int = 16, t: int = SR, every: int = 1000) -> torch.Tensor:
    x = torch.zeros(n, t)
    x[:, every::every] = 1.0
    return x


def started(options: dict, seed: int = 0, n: int = 16):
    attack = build_attack(options)
    x = torch.zeros(n, SR)
    attack.start(AttackContext(clean=None, protected=x, labels=torch.zeros(n, dtype=torch.long),
                               lengths=torch.full((n,), SR), protection=None, sample_rate=SR, num_classes=2,
                               seed=seed))
    return attack


def band_energy(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    spec = torch.fft.rfft(x).abs().pow(2)
    freqs = torch.fft.rfftfreq(x.shape[1], 1 / SR)
    return spec[:, (freqs >= lo) & (freqs <= hi)].sum(dim=1) / spec.sum(dim=1)


# --- lab.dsp helpers -------------------------------------------------------------------------------------------------

def test_read_at_interpolates_linearly_and_reads_zero_outside():
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    out = read_at(x, torch.tensor([[0.5, 2.25, -1.0, 3.5]], dtype=torch.float64))
    assert torch.allclose(out, torch.tensor([[0.5, 2.25, 0.0, 1.5]]))


def test_zero_shift_drops_what_leaves_and_fills_zeros():
    x = torch.arange(1, 6, dtype=torch.float32).repeat(2, 1)
    assert zero_shift(x, torch.tensor([2, -1])).tolist() == [[0, 0, 1, 2, 3], [2, 3, 4, 5, 0]]


# --- interpolation ---------------------------------------------------------------------------------------------------

def test_warp_positions_are_monotone_and_keep_the_duration():
    n, t = 32, SR
    pos = warp_positions(n, t, 8, 0.2, torch.ones(n, dtype=torch.bool), torch.ones(n, dtype=torch.float64), 0.0,
                         torch.Generator().manual_seed(0))
    steps = pos.diff(dim=1)
    assert (steps > 0).all() and steps.min() > 1 / 1.2 ** 2 - 1e-6 and steps.max() < 1.2 ** 2 + 1e-6
    assert torch.allclose(pos[:, -1], torch.full((n,), t - 1.0, dtype=torch.float64), atol=1.0)  # the mean rate is 1
    assert (pos - torch.arange(t)).abs().amax(dim=1).min() > 5  # every clip's timing moved


def test_interpolation_moves_timing_keeps_length_and_spectrum():
    attack = started({"type": "interpolation", "p_speed": 0.0})
    x = clicks()
    out = attack.transform_batch(x, torch.zeros(len(x), dtype=torch.long))
    assert out.shape == x.shape
    moved = (out.abs() > 0.5).float().argmax(dim=1)  # where the first click is now (it was at 1000)
    assert (moved != 1000).float().mean() > 0.8
    tone = sine(1000.0)
    warped = attack.transform_batch(tone, torch.zeros(len(tone), dtype=torch.long))
    assert (dominant_hz(warped) - 1000).abs().max() <= 200  # the local rate moves it by at most 20%
    assert band_energy(warped, 700, 1300).min() > 0.9
    assert torch.allclose(warped.pow(2).sum(1), tone.pow(2).sum(1), rtol=0.1)


def test_interpolation_speed_changes_pitch_and_duration_by_its_factor():
    attack = started({"type": "interpolation", "p_warp": 0.0, "p_speed": 1.0, "min_speed": 1.25, "max_speed": 1.25})
    out = attack.transform_batch(sine(800.0), torch.zeros(8, dtype=torch.long))
    assert (dominant_hz(out) - 1000).abs().max() <= 2
    assert (out[:, 6400:] == 0).all() and (out[:, :6300] != 0).any(dim=1).all()  # 1 s played in 0.8 s


def test_interpolation_refuses_inverted_speeds():
    with pytest.raises(LabError, match="min_speed .* is above max_speed"):
        build_attack({"type": "interpolation", "min_speed": 1.2, "max_speed": 0.9})


# --- strong-augment --------------------------------------------------------------------------------------------------

def test_strong_augment_repeats_from_its_seed_and_differs_across_seeds():
    x = 0.3 * torch.randn(16, SR, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(16, dtype=torch.long)
    first = started({"type": "strong-augment"}, seed=0).transform_batch(x, y)
    again = started({"type": "strong-augment"}, seed=0).transform_batch(x, y)
    other = started({"type": "strong-augment"}, seed=1).transform_batch(x, y)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == x.shape and torch.isfinite(first).all() and not torch.allclose(first, x)


def chain(x, seed=0, **steps):
    cfg = StrongAugmentConfig(**{**OFF, **steps})
    return augment_chain(x, SR, cfg, torch.Generator().manual_seed(seed))


def test_strong_augment_steps_change_what_they_name():
    noise = 0.3 * torch.randn(16, SR, generator=torch.Generator().manual_seed(0))
    assert torch.equal(chain(noise), noise)  # every step off: the batch as it was
    low = chain(noise, low_pass={"p": 1.0, "min_hz": 1500, "max_hz": 3500})
    assert band_energy(low, 3510, 4000).max() < 1e-6 and band_energy(low, 0, 1490).min() > 0.3
    high = chain(noise, high_pass={"p": 1.0, "min_hz": 300, "max_hz": 400})
    assert band_energy(high, 0, 290).max() < 1e-6
    shifted = chain(clicks(), shift={"p": 1.0, "max_seconds": 0.15})
    first = (shifted > 0.5).float().argmax(dim=1)
    assert ((first - 1000).abs() <= 1200).all() and (first != 1000).any()  # no wrap-around: zeros came in
    noisy = chain(sine(500.0, 16), noise={"p": 1.0, "min_snr_db": 10, "max_snr_db": 20})
    snr = 10 * torch.log10(sine(500.0, 16).pow(2).sum(1) / (noisy - sine(500.0, 16)).pow(2).sum(1))
    assert ((snr > 9.5) & (snr < 20.5)).all()
    quiet = chain(sine(500.0, 16), gain={"p": 1.0, "min_db": -6, "max_db": -6})
    assert torch.allclose(quiet, sine(500.0, 16) * 10 ** (-6 / 20))


def test_strong_augment_reverb_spreads_energy_and_keeps_the_level():
    x = torch.zeros(8, SR)
    x[:, 1000:1400] = torch.randn(8, 400, generator=torch.Generator().manual_seed(0))
    wet = chain(x, reverb={"p": 1.0, "min_rt60": 0.3, "max_rt60": 0.5})
    assert (wet[:, 1500:3000].pow(2).sum(1) > 0.01 * x.pow(2).sum(1)).all()  # a tail after the sound ends
    assert torch.allclose(wet.pow(2).sum(1), x.pow(2).sum(1), rtol=1e-4)
    assert wet[:, :1000].abs().max() < 1e-6  # causal: nothing before the sound (FFT rounding apart)


def test_strong_augment_pitch_and_spec_mask():
    up = chain(sine(500.0), pitch={"p": 1.0, "min_semitones": 3, "max_semitones": 3})
    assert (dominant_hz(up) > 540).all()  # a crude warp: a 500 Hz tone lands near 570 Hz for +3 semitones (595)
    masked = chain(0.3 * torch.randn(8, SR, generator=torch.Generator().manual_seed(0)),
                   spec_mask={"p": 1.0, "freq_masks": 1, "max_freq_fraction": 0.3, "time_masks": 0})
    assert masked.pow(2).sum() < 0.99 * (0.3 * torch.randn(8, SR, generator=torch.Generator().manual_seed(0))).pow(
        2).sum()


class EnergyModel(torch.nn.Module):
    """A stand-in for the model being trained: its loss on class 0 grows with a clip's energy."""

    def features(self, w):
        return w.pow(2).mean(dim=1, keepdim=True)

    def forward(self, f):
        return torch.cat([-100 * f, 100 * f], dim=1)


def test_strong_augment_max_keeps_each_clips_worst_candidate():
    k = 4
    x = 0.3 * torch.randn(8, SR, generator=torch.Generator().manual_seed(2))
    y = torch.zeros(8, dtype=torch.long)
    options = {"type": "strong-augment", "k": k, **OFF, "gain": {"p": 1.0, "min_db": -12, "max_db": 12}}
    attack = started(options)
    model = EnergyModel().train()
    out = attack.transform_batch(x, y, model)
    assert model.training  # restored after scoring
    gen = torch.Generator().manual_seed(attack.batch_seed)
    candidates = torch.stack([augment_chain(x, SR, attack.config, gen) for _ in range(k)])
    best = candidates.pow(2).sum(dim=2).argmax(dim=0)  # the loudest candidate has the highest loss
    assert torch.equal(out, candidates[best, torch.arange(8)])
    assert not torch.equal(out, candidates[0])
    with pytest.raises(ValueError, match="k > 1"):
        attack.transform_batch(x, y, None)


def test_strong_augment_refuses_inverted_ranges_and_unknown_fields():
    with pytest.raises(LabError, match="min_hz .* is above max_hz"):
        build_attack({"type": "strong-augment", "low_pass": {"min_hz": 4000, "max_hz": 1000}})
    with pytest.raises(LabError, match="unknown field 'prob'"):
        build_attack({"type": "strong-augment", "gain": {"prob": 0.5}})


def test_strong_augment_default_covers_the_outside_chain():
    """At least as strong as the outside trainer's chain: shift up to +-0.15 s, low-pass 1.5-3.5 kHz, gain, noise."""
    cfg = build_attack({"type": "strong-augment"}).config
    assert cfg.shift.max_seconds >= 0.15 and cfg.shift.p > 0
    assert cfg.low_pass.min_hz <= 1500 and cfg.low_pass.max_hz >= 3500 and cfg.low_pass.p > 0
    assert cfg.gain.p > 0 and cfg.noise.p > 0 and cfg.reverb.p > 0 and cfg.spec_mask.p > 0


# --- resynthesis -----------------------------------------------------------------------------------------------------

def test_resynthesis_mu_law_gives_256_levels():
    x = 0.5 * torch.randn(4, SR, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    out = resynthesise(x, SR, ResynthesisConfig(method="mu-law"))
    assert out.shape == x.shape and 200 < out.unique().numel() <= 256
    assert ((out - x).pow(2).sum() / x.pow(2).sum()) < 1e-3  # 8-bit mu-law: about 38 dB SNR on loud audio
    assert resynthesise(x, SR, ResynthesisConfig(method="mu-law", bits=4)).unique().numel() <= 16


def test_resynthesis_band_limit_keeps_only_its_band():
    noise = 0.3 * torch.randn(4, SR, generator=torch.Generator().manual_seed(0))
    out = resynthesise(noise, SR, ResynthesisConfig(method="band-limit", low_hz=300, high_hz=2000))
    assert band_energy(out, 0, 290).max() < 1e-6 and band_energy(out, 2010, 4000).max() < 1e-6
    assert torch.allclose(out, band_limit(noise, SR, 300.0, 2000.0))
    with pytest.raises(ValueError, match="above the Nyquist frequency"):
        resynthesise(noise, SR, ResynthesisConfig(method="band-limit", high_hz=5000))


def test_resynthesis_griffin_lim_keeps_the_tone_and_length_but_not_the_samples():
    x = sine(440.0, 2, 4000)
    cfg = ResynthesisConfig(method="griffin-lim", iterations=8)
    out = resynthesise(x, SR, cfg)
    assert out.shape == x.shape and torch.equal(out, resynthesise(x, SR, cfg))  # zero initial phase: deterministic
    assert (dominant_hz(out) - 440).abs().max() <= 40  # within a mel band of 64 over 0-4 kHz
    assert band_energy(out, 300, 600).min() > 0.8
    assert (out - x).pow(2).sum() > 0.1 * x.pow(2).sum()  # the phase is made anew: the samples are not kept


def test_resynthesis_refuses_bad_settings():
    with pytest.raises(LabError, match="low_hz .* must be below high_hz"):
        build_attack({"type": "resynthesis", "low_hz": 3000, "high_hz": 2000})
    with pytest.raises(LabError, match="method"):
        build_attack({"type": "resynthesis", "method": "jpeg"})
