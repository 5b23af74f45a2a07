"""``projection``: what it removes (a class-wise pattern in the space it projects in) and what it keeps (the clips'
own content); the contract tests (tests/test_contracts.py) cover what every attack owes."""
from __future__ import annotations

import pytest
import torch

from attacks import AttackContext, build_attack
from attacks.projection import ProjectionConfig, fit_linear, log_band_power, project

SR = 8000
T = 2000
C = 4
N = 160  # 40 clips per class


def content(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips whose own content (a tone of random frequency and phase, and a little noise) says nothing linear about
    their class, and labels 0..C-1."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T) / SR
    freq = 200 + 1500 * torch.rand(N, 1, generator=g)
    phase = 2 * torch.pi * torch.rand(N, 1, generator=g)
    x = 0.3 * torch.sin(2 * torch.pi * freq * t + phase) + 0.01 * torch.randn(N, T, generator=g)
    return x, torch.arange(N) % C


def heldout_accuracy(v: torch.Tensor, y: torch.Tensor, seed: int = 1) -> float:
    """A fresh linear model fitted on 75% of the rows of ``v`` and scored on the rest (a class-wise pattern is what
    lets it generalise)."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    fit, held = order[: 3 * len(y) // 4], order[3 * len(y) // 4:]
    mean = v[fit].mean(0)
    scale = (v[fit] - mean).std()
    w, b = fit_linear((v[fit] - mean) / scale, y[fit], C, 50, 1e-4)
    return float((((v[held] - mean) / scale @ w.T + b).argmax(1) == y[held]).float().mean())


def energy_share(part: torch.Tensor, whole: torch.Tensor) -> float:
    return float(part.pow(2).sum() / whole.pow(2).sum())


@pytest.mark.parametrize("directions", ["weights", "means"])
def test_waveform_projection_removes_a_class_wise_additive_pattern_and_keeps_the_content(directions):
    x, y = content(0)
    pattern = 0.1 * torch.randn(C, T, generator=torch.Generator().manual_seed(7))  # the same samples in every clip
    protected = x + pattern[y]
    lengths = torch.full((N,), T)
    assert heldout_accuracy(protected, y) > 0.95  # the shortcut: linearly separable from the samples
    assert heldout_accuracy(x, y) < 0.5  # the content alone is not
    out, measured = project(protected, y, lengths, C, ProjectionConfig(space="waveform", directions=directions),
                            seed=0)
    assert heldout_accuracy(out, y) < 0.25 + 0.15  # chance 0.25: the pattern is gone for a linear model
    # what is left of the pattern's class-wise part (what every class shares, its mean, may stay) is a fraction
    # of it: the directions are estimated from 32 clips per class whose content, 4.5 times the pattern's amplitude,
    # is averaged down only by sqrt(32); the content itself is barely touched
    shared = pattern.mean(0)
    assert energy_share(out - x - shared, pattern[y] - shared) < 0.25
    assert energy_share(out - x - shared, x) < 0.05
    assert measured["linear_holdout_accuracy"] > 0.95 and measured["directions"] == C
    assert measured["change_energy_mean"] == pytest.approx(energy_share(out - protected, protected), rel=0.2)


def test_spectrum_projection_removes_class_wise_coloured_noise_that_waveform_projection_misses():
    """Class-wise coloured noise, a fresh draw in every clip (ar-noise's kind): no waveform is shared by a class, so
    the waveform space has nothing to project; the time-averaged log spectrum has."""
    x, y = content(1)
    g = torch.Generator().manual_seed(3)
    bands = torch.zeros(C, T // 2 + 1)
    for c in range(C):  # class c's noise: one band of its own
        lo = 100 + 200 * c
        bands[c, lo: lo + 150] = 1.0
    noise = torch.fft.irfft(torch.fft.rfft(torch.randn(N, T, generator=g)) * bands[y], n=T)
    protected = x + 0.5 * noise / noise.std()
    lengths = torch.full((N,), T)
    spectrum = lambda w: log_band_power(w, 128)  # noqa: E731
    assert heldout_accuracy(spectrum(protected), y) > 0.95
    by_waveform, _ = project(protected, y, lengths, C, ProjectionConfig(space="waveform"), seed=0)
    assert heldout_accuracy(spectrum(by_waveform), y) > 0.95  # still there
    by_spectrum, measured = project(protected, y, lengths, C, ProjectionConfig(space="spectrum"), seed=0)
    assert heldout_accuracy(spectrum(by_spectrum), y) < 0.25 + 0.2
    assert measured["linear_holdout_accuracy"] > 0.95
    assert by_spectrum.shape == protected.shape and torch.isfinite(by_spectrum).all()


def test_padding_stays_zero_and_the_attack_records_what_it_measured():
    x, y = content(2)
    lengths = torch.randint(T // 2, T + 1, (N,), generator=torch.Generator().manual_seed(0))
    pad = torch.arange(T)[None, :] >= lengths[:, None]
    protected = (x + 0.1 * torch.randn(C, T, generator=torch.Generator().manual_seed(1))[y]).masked_fill(pad, 0.0)
    attack = build_attack({"type": "projection", "holdout_fraction": 0.0})
    ctx = AttackContext(clean=None, protected=protected, labels=y, lengths=lengths, protection=None,
                        sample_rate=SR, num_classes=C, seed=5)
    attack.start(ctx)
    out, labels = attack.training_set(ctx)
    assert torch.equal(labels, y) and not out.masked_select(pad).any()
    measured = attack.record()["measured"]
    assert measured["holdout_clips"] == 0 and measured["linear_holdout_accuracy"] is None  # fitted on every clip
    assert measured["fit_clips"] == N and measured["split_seed"] == 5 and measured["linear_fit_accuracy"] > 0.95
