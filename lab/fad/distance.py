"""The Fréchet distance between two Gaussians, in float64, by the symmetric route.

For Gaussians N(mu1, S1) and N(mu2, S2):

    FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)

The last trace is computed without a general (non-symmetric) matrix square root: S1^1/2 comes from the
eigendecomposition of S1 (tiny negative eigenvalues from rounding set to 0), M = S1^1/2 S2 S1^1/2 is symmetric and
positive semi-definite, and tr(M^1/2) is the sum of the square roots of M's eigenvalues. Every step is real, so the
result is never complex; a result that rounding makes slightly negative is clamped to 0, while a clearly negative
one, non-finite input, or a covariance that is not positive semi-definite raises :class:`FrechetError`.
"""
from __future__ import annotations

import warnings

import numpy as np

from lab.errors import LabError

# Relative tolerances: how negative an eigenvalue (relative to the largest one) or the final distance (relative to
# the size of the terms it is the difference of) may be before it counts as a real failure rather than rounding.
EIG_TOL = 1e-8
DIST_TOL = 1e-9
# Fewer clips than this many per embedding dimension (in the smaller set) make FAD warn: the covariance then rests on
# too few independent samples, and the estimate is biased upwards with a wide interval.
RELIABLE_PER_DIM = 2


class FrechetError(LabError):
    """The Fréchet distance cannot be computed from these statistics (the message says why)."""


def _psd_sqrt(cov: np.ndarray, what: str) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix ``cov``; ``what`` names it in errors."""
    w, v = np.linalg.eigh(cov)
    scale = max(float(np.abs(w).max()), np.finfo(np.float64).tiny)
    if w.min() < -EIG_TOL * scale * max(1, cov.shape[0]):
        raise FrechetError(f"{what} is not positive semi-definite (eigenvalue {w.min():.3g} against largest "
                           f"{scale:.3g}); pass a covariance matrix of real embeddings")
    return (v * np.sqrt(resolved(w))) @ v.T


def resolved(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues with those below what eigh can resolve (D * eps * largest) set to 0: their square roots would
    otherwise add rounding noise of order sqrt(eps) to the traces."""
    cutoff = eigenvalues.shape[0] * np.finfo(np.float64).eps * max(float(np.abs(eigenvalues).max()), 0.0)
    return np.where(eigenvalues > cutoff, eigenvalues, 0.0)


def _check(mu: np.ndarray, cov: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    if mu.ndim != 1 or cov.shape != (mu.shape[0], mu.shape[0]):
        raise FrechetError(f"{what}: mean of shape {mu.shape} and covariance of shape {cov.shape} do not match "
                           "(expected (D,) and (D, D))")
    if not (np.isfinite(mu).all() and np.isfinite(cov).all()):
        raise FrechetError(f"{what}: mean or covariance holds NaN or infinity (are the embeddings finite?)")
    return mu, (cov + cov.T) / 2


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2), a finite float >= 0.

    mu1, mu2: means, shape (D,). cov1, cov2: covariance matrices, shape (D, D), positive semi-definite (rank-deficient
    is fine). Computed in float64 whatever the input type. Raises FrechetError for mismatched shapes, non-finite
    values, a covariance that is clearly not positive semi-definite, or a clearly negative result.
    """
    mu1, cov1 = _check(mu1, cov1, "first set")
    mu2, cov2 = _check(mu2, cov2, "second set")
    if mu1.shape != mu2.shape:
        raise FrechetError(f"the two sets have different embedding dimensions ({mu1.shape[0]} and {mu2.shape[0]})")
    if np.array_equal(mu1, mu2) and np.array_equal(cov1, cov2):
        return 0.0  # identical statistics: exactly 0 (the route below would leave rounding of ~sqrt(eps))
    root1 = _psd_sqrt(cov1, "first covariance")
    middle = root1 @ cov2 @ root1
    middle = (middle + middle.T) / 2
    eig = np.linalg.eigvalsh(middle)
    scale = max(float(np.abs(eig).max()), np.finfo(np.float64).tiny)
    if eig.min() < -EIG_TOL * scale * max(1, eig.shape[0]):
        raise FrechetError(f"second covariance is not positive semi-definite (eigenvalue {eig.min():.3g} of "
                           f"S1^1/2 S2 S1^1/2 against largest {scale:.3g})")
    tr_covmean = float(np.sqrt(resolved(eig)).sum())
    diff = mu1 - mu2
    mean_term = float(diff @ diff)
    trace1, trace2 = float(np.trace(cov1)), float(np.trace(cov2))
    value = mean_term + trace1 + trace2 - 2.0 * tr_covmean
    size = mean_term + trace1 + trace2
    if not np.isfinite(value):
        raise FrechetError("the Fréchet distance overflowed (embeddings too large to square in float64)")
    if value < 0:
        if value < -DIST_TOL * max(size, np.finfo(np.float64).tiny) * max(1, mu1.shape[0]):
            raise FrechetError(f"the Fréchet distance came out clearly negative ({value:.3g} for terms of size "
                               f"{size:.3g}); the statistics are inconsistent")
        value = 0.0
    return value


def gaussian_stats(embeddings) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D), float64, of embeddings (N, D), one row per sample."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise FrechetError(f"embeddings must be an (N, D) array with N >= 2; got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def check_sample_size(n: int, dim: int, what: str, strict: bool = True) -> None:
    """Refuse (``strict``) or warn loudly when a set has fewer embeddings ``n`` than dimensions ``dim``: its
    covariance is then rank-deficient and the distance mostly measures the sample size, not the audio."""
    if n > dim:
        return
    msg = (f"{what} has {n} embeddings for {dim} dimensions: too few for a full-rank covariance (it is "
           f"rank-deficient, so FAD would mostly measure the sample size, not the audio); use more audio (at least "
           f"{RELIABLE_PER_DIM} x {dim} = {RELIABLE_PER_DIM * dim} clips for one embedding per clip), or a backend "
           "with fewer dimensions")
    if strict:
        raise FrechetError(msg)
    warnings.warn(msg, stacklevel=2)


def frechet_distance_of(a, b, strict: bool = True) -> float:
    """Fréchet distance between two sets of embeddings (N1, D) and (N2, D) (see :func:`frechet_distance`).
    ``strict``: refuse when a set has fewer embeddings than dimensions (else warn)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    for x, what in ((a, "first set"), (b, "second set")):
        if x.ndim == 2:
            check_sample_size(x.shape[0], x.shape[1], what, strict)
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
