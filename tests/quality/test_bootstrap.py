"""Clip-grouped embedding statistics, bootstrap intervals and FAD-infinity."""
from __future__ import annotations

import numpy as np
import pytest

from lab.fad import EmbeddingSet, FrechetError, fad, fad_infinity
from lab.fad import sets as sets_module


def frame_set(rng, clips: int, dim: int, shift: float = 0.0) -> EmbeddingSet:
    """Clips of 3 to 9 frames each; frames of one clip share a clip-level offset (they are correlated)."""
    per_clip = [rng.standard_normal(dim) + rng.standard_normal((rng.integers(3, 10), dim)) * 0.5 + shift
                for _ in range(clips)]
    return EmbeddingSet.from_list(per_clip)


@pytest.mark.parametrize("scatter_limit", [0, 2 ** 25])  # direct path and precomputed per-clip scatter path
def test_weighted_stats_equal_those_of_the_repeated_frames(monkeypatch, scatter_limit):
    monkeypatch.setattr(sets_module, "SCATTER_LIMIT", scatter_limit)
    rng = np.random.default_rng(0)
    emb = frame_set(rng, 30, 5, shift=100.0)  # a large offset: statistics must not lose precision to it
    weights = rng.integers(0, 4, 30)
    repeated = np.concatenate([emb.frames[emb.clip == i] for i in range(30) for _ in range(weights[i])])
    mean, cov, n = emb.stats(weights)
    assert n == len(repeated)
    np.testing.assert_allclose(mean, repeated.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(repeated, rowvar=False), rtol=1e-9, atol=1e-12)


def test_subset_of_a_set_with_computed_moments_has_the_same_stats():
    rng = np.random.default_rng(8)
    parent = frame_set(rng, 40, 6, shift=50.0)
    parent.stats()                                   # computes (and caches) the per-clip moments
    clips = rng.choice(40, 15, replace=False)
    reused, fresh = parent.subset(clips), EmbeddingSet(parent.subset(clips).frames, parent.subset(clips).clip, 15)
    assert reused._scatter is not None and fresh._scatter is None
    weights = rng.integers(0, 3, 15)
    for a, b in zip(reused.stats(weights), fresh.stats(weights)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


def test_subset_keeps_each_clips_frames():
    rng = np.random.default_rng(1)
    emb = frame_set(rng, 10, 4)
    sub = emb.subset([7, 2])
    assert sub.n_clips == 2
    np.testing.assert_array_equal(sub.frames[sub.clip == 0], emb.frames[emb.clip == 7])
    np.testing.assert_array_equal(sub.frames[sub.clip == 1], emb.frames[emb.clip == 2])


@pytest.mark.parametrize("paired", [False, True])
def test_interval_contains_the_full_sample_value(paired):
    rng = np.random.default_rng(2)
    a = frame_set(rng, 200, 8)
    b = EmbeddingSet(a.frames + rng.standard_normal(a.frames.shape) * 0.3 + 0.2, a.clip, a.n_clips) if paired \
        else frame_set(rng, 150, 8, shift=0.2)
    out = fad(a, b, bootstrap=100, seed=3, paired=paired)
    assert 0 <= out["ci_low"] <= out["fad"] <= out["ci_high"]
    assert out["ci_high"] > out["ci_low"]
    assert out["bootstrap"] == 100 and out["seed"] == 3 and out["level"] == 0.95


def test_interval_is_reproducible_and_narrows_with_more_clips():
    rng = np.random.default_rng(4)
    big_a, big_b = frame_set(rng, 1600, 6), frame_set(rng, 1600, 6, shift=0.3)
    small = fad(big_a.subset(np.arange(100)), big_b.subset(np.arange(100)), bootstrap=100, seed=0)
    again = fad(big_a.subset(np.arange(100)), big_b.subset(np.arange(100)), bootstrap=100, seed=0)
    assert (small["ci_low"], small["ci_high"]) == (again["ci_low"], again["ci_high"])
    large = fad(big_a, big_b, bootstrap=100, seed=0)
    assert large["ci_high"] - large["ci_low"] < (small["ci_high"] - small["ci_low"]) / 2  # 16x clips: ~4x narrower


def test_identical_sets_give_zero():
    emb = frame_set(np.random.default_rng(5), 50, 6)
    out = fad(emb, emb, bootstrap=50, paired=True)
    assert out["fad"] == 0.0 and out["ci_low"] == 0.0 and out["ci_high"] == 0.0


def test_refusals():
    rng = np.random.default_rng(6)
    with pytest.raises(FrechetError, match="different embedding dimensions"):
        fad(frame_set(rng, 20, 4), frame_set(rng, 20, 5))
    with pytest.raises(FrechetError, match="paired sets must hold the same clips"):
        fad(frame_set(rng, 20, 4), frame_set(rng, 21, 4), paired=True)
    with pytest.raises(FrechetError, match="10 embeddings for 16 dimensions"):
        fad(EmbeddingSet.per_clip(rng.standard_normal((10, 16))), EmbeddingSet.per_clip(rng.standard_normal((99, 16))))


def test_fad_infinity_removes_the_finite_sample_bias():
    # N(0, I) against N(delta, I) in 32-d: the true FD is |delta|^2 = 1, and a FAD from a few hundred samples is
    # biased upwards by about tr-terms / N; the extrapolation to 1/N = 0 must land closer to the truth.
    rng = np.random.default_rng(7)
    d, n = 32, 600
    delta = np.full(d, 1 / np.sqrt(d))
    a = EmbeddingSet.per_clip(rng.standard_normal((n, d)))
    b = EmbeddingSet.per_clip(rng.standard_normal((n, d)) + delta)
    full = fad(a, b, bootstrap=0)["fad"]
    inf = fad_infinity(a, b, seed=0, draws=5)
    assert abs(inf["fad_inf"] - 1.0) < abs(full - 1.0)
    assert inf["slope"] > 0 and len(inf["sizes"]) >= 2 and inf["sizes"][-1] == n
