"""The Fréchet distance: exact where a closed form exists, equal to a scipy-sqrtm reference, never negative or
complex, and refusing what it cannot compute."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from lab.fad import FrechetError, frechet_distance, frechet_distance_of, gaussian_stats
from lab.fad.distance import check_sample_size


def random_rotation(d: int, rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def random_cov(d: int, rng, n: int | None = None) -> np.ndarray:
    x = rng.standard_normal((n or 3 * d, d)) @ rng.standard_normal((d, d))
    return np.cov(x, rowvar=False)


def scipy_reference(mu1, s1, mu2, s2) -> float:
    covmean = linalg.sqrtm(s1 @ s2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def test_set_with_itself_is_zero():
    x = np.random.default_rng(0).standard_normal((500, 32)) * 3 + 1
    assert frechet_distance_of(x, x) == 0.0
    assert frechet_distance_of(x.astype(np.float32), x.astype(np.float32)) == 0.0


@pytest.mark.parametrize("d", [1, 4, 32, 128])
def test_gaussians_with_shared_eigenbasis_match_closed_form(d):
    # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T  =>  FD = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    rng = np.random.default_rng(d)
    q = random_rotation(d, rng)
    a, b = rng.uniform(0.1, 5.0, d), rng.uniform(0.1, 5.0, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    got = frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-8)


def test_scaled_covariance_closed_form():
    # S2 = c^2 S1  =>  FD = |mu1 - mu2|^2 + (1 - c)^2 tr(S1), for any full covariance S1
    rng = np.random.default_rng(1)
    s1 = random_cov(40, rng)
    mu = rng.standard_normal(40)
    got = frechet_distance(mu, s1, mu + 0.5, 2.25 * s1)
    assert got == pytest.approx(40 * 0.25 + 0.25 * np.trace(s1), rel=1e-8)


@pytest.mark.parametrize("d, seed", [(2, 0), (16, 1), (64, 2), (200, 3)])
def test_agrees_with_scipy_sqrtm_on_full_rank_statistics(d, seed):
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d) * 0.1
    s1, s2 = random_cov(d, rng), random_cov(d, rng)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(scipy_reference(mu1, s1, mu2, s2), rel=1e-6)


def test_rank_deficient_inputs_stay_finite_and_non_negative():
    rng = np.random.default_rng(4)
    d = 64
    few = rng.standard_normal((10, d))               # 10 samples in 64 dimensions: rank 9
    other = rng.standard_normal((10, d)) + 0.01
    value = frechet_distance(*gaussian_stats(few), *gaussian_stats(other))
    assert np.isfinite(value) and value >= 0
    zero = np.zeros((d, d))                          # a set of identical embeddings: covariance exactly 0
    assert frechet_distance(np.zeros(d), zero, np.ones(d), zero) == pytest.approx(d, rel=1e-12)
    assert frechet_distance(np.zeros(d), zero, np.zeros(d), np.eye(d)) == pytest.approx(d, rel=1e-12)
    # rank-1 covariances along the same direction: FD = (sqrt(4) - sqrt(1))^2 = 1
    v = rng.standard_normal(d)
    v /= np.linalg.norm(v)
    assert frechet_distance(np.zeros(d), np.outer(v, v), np.zeros(d), 4 * np.outer(v, v)) == pytest.approx(1, rel=1e-8)


def test_ill_conditioned_inputs_stay_finite_and_non_negative():
    rng = np.random.default_rng(5)
    d = 100
    q = random_rotation(d, rng)
    spectrum = np.logspace(-14, 6, d)                # condition number 1e20
    s1 = (q * spectrum) @ q.T
    s2 = (q * spectrum * (1 + 1e-9)) @ q.T           # nearly the same: the true distance is ~1e-13
    mu = rng.standard_normal(d)
    for a, b in ((s1, s2), (s2, s1), (s1, s1 + 1e-15 * np.eye(d))):
        value = frechet_distance(mu, a, mu, b)
        assert np.isfinite(value) and value >= 0
        assert isinstance(value, float)
    # With a real difference the result stays within the symmetric route's resolution of the closed form: each of
    # the d eigenvalues of M = S1^1/2 S2 S1^1/2 below r = d * eps * max eig(M) is unresolvable and can move
    # tr(M^1/2), hence FD / 2, by at most sqrt(r).
    expected = float(((np.sqrt(spectrum) - np.sqrt(4 * spectrum)) ** 2).sum())
    resolution = d * np.finfo(np.float64).eps * 4 * spectrum.max() ** 2
    assert abs(frechet_distance(mu, s1, mu, 4 * s1) - expected) <= 2 * d * np.sqrt(resolution)


def test_refuses_what_it_cannot_compute():
    rng = np.random.default_rng(6)
    s = random_cov(8, rng)
    with pytest.raises(FrechetError, match="not positive semi-definite"):
        frechet_distance(np.zeros(8), s - 2 * np.trace(s) * np.eye(8), np.zeros(8), s)
    with pytest.raises(FrechetError, match="not positive semi-definite"):
        frechet_distance(np.zeros(8), s, np.zeros(8), -s)
    bad = s.copy()
    bad[0, 0] = np.nan
    with pytest.raises(FrechetError, match="NaN or infinity"):
        frechet_distance(np.zeros(8), bad, np.zeros(8), s)
    with pytest.raises(FrechetError, match="do not match"):
        frechet_distance(np.zeros(7), s, np.zeros(8), s)
    with pytest.raises(FrechetError, match="different embedding dimensions"):
        frechet_distance(np.zeros(8), s, np.zeros(3), np.eye(3))


def test_fewer_embeddings_than_dimensions_is_refused_or_warned():
    x = np.random.default_rng(7).standard_normal((20, 32))
    with pytest.raises(FrechetError, match="20 embeddings for 32 dimensions"):
        frechet_distance_of(x, x + 1)
    with pytest.warns(UserWarning, match="20 embeddings for 32 dimensions"):
        value = frechet_distance_of(x, x + 1, strict=False)
    assert value == pytest.approx(32.0, rel=1e-8)   # a pure shift by 1 in each of 32 dimensions
    check_sample_size(33, 32, "a set")                # one more than the dimension: accepted
