"""FAD between two embedding sets: the full-sample value, a bootstrap confidence interval, and FAD-infinity.

Bootstrap: clips (not frames) are drawn with replacement, from each set independently, or with the same draw for
both when the sets are ``paired`` (clip i of one set is a version of clip i of the other, as protected and clean
training audio are). A FAD estimate is biased upwards by finite samples, and a resample with repeated clips is a
smaller effective sample, so the raw bootstrap values sit above the full-sample value. The reported interval is
therefore the bootstrap's spread centred on the full-sample value (a bias-corrected percentile interval):

    [fad + q(alpha/2) - median, fad + q(1 - alpha/2) - median], its lower end clamped at 0,

where q are the quantiles of the bootstrap values. The raw percentile interval and the bootstrap bias
(mean of the bootstrap values minus the full-sample value) are recorded beside it.

FAD-infinity (Gui et al., 2024, "Adapting Frechet Audio Distance for generative music evaluation"): FAD computed on
random subsets of several sizes N and regressed on 1/N; the intercept estimates the FAD of infinitely many clips,
free of the finite-sample bias.
"""
from __future__ import annotations

import functools

import numpy as np
from threadpoolctl import threadpool_limits

from lab.fad.distance import RELIABLE_PER_DIM, FrechetError, check_sample_size, frechet_distance
from lab.fad.sets import EmbeddingSet


def one_blas_thread(func):
    """Run ``func`` with BLAS on one thread: the many small eigendecompositions of a bootstrap run up to 100x
    slower when OpenBLAS spreads each over cores that other work is using (measured on the lab's 2-core machines)."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return func(*args, **kwargs)
    return wrapper


def _distance(a_stats, b_stats) -> float:
    return frechet_distance(a_stats[0], a_stats[1], b_stats[0], b_stats[1])


def _check(a: EmbeddingSet, b: EmbeddingSet, strict: bool, paired: bool) -> None:
    if a.dim != b.dim:
        raise FrechetError(f"the two sets have different embedding dimensions ({a.dim} and {b.dim})")
    if paired and a.n_clips != b.n_clips:
        raise FrechetError(f"paired sets must hold the same clips; got {a.n_clips} and {b.n_clips}")
    check_sample_size(len(a), a.dim, "the first set", strict)
    check_sample_size(len(b), b.dim, "the second set", strict)


def sample_size_warnings(a: EmbeddingSet, b: EmbeddingSet) -> list[str]:
    """Why a FAD between ``a`` and ``b`` may not be trusted for their size: fewer clips than RELIABLE_PER_DIM x the
    embedding dimension in a set. Clips are the independent samples (frames of one clip are not), so the covariance
    is then poorly estimated, rank-deficient or nearly so: FAD is biased upwards (two sets of the same audio do not
    give 0) and its bootstrap interval, which resamples clips, is wide."""
    need = RELIABLE_PER_DIM * a.dim
    if min(a.n_clips, b.n_clips) >= need:
        return []
    per_clip = len(a) == a.n_clips and len(b) == b.n_clips
    why = "one embedding per clip: the covariance is nearly rank-deficient" if per_clip else \
        "the frames of one clip are not independent: the covariance rests on too few independent clips"
    return [f"few clips for {a.dim}-d embeddings: {a.n_clips} and {b.n_clips} clips, fewer than {RELIABLE_PER_DIM} x "
            f"{a.dim} = {need} per set ({why}), so FAD is biased upwards and its interval is wide; use at least "
            f"{need} clips per set, and compare it only with a floor of the same sizes"]


@one_blas_thread
def fad(a: EmbeddingSet, b: EmbeddingSet, bootstrap: int = 200, level: float = 0.95, seed: int = 0,
        paired: bool = False, strict: bool = True) -> dict:
    """FAD between sets ``a`` and ``b`` with a bootstrap confidence interval.

    bootstrap: number of resamples (0: no interval). level: confidence level of the interval (0.95 is 95%).
    seed: seed of the resampling (recorded). paired: resample the same clips in both sets (they must hold the same
    number of clips, clip i in one being a version of clip i in the other). strict: refuse a set with fewer
    embeddings than dimensions (else warn). Returns a dict with ``fad``, ``ci_low``, ``ci_high``, how they were
    obtained, and ``warnings``: why the value may not be trusted for these sizes (:func:`sample_size_warnings`).
    """
    _check(a, b, strict, paired)
    if not 0 < level < 1:
        raise FrechetError(f"confidence level must be between 0 and 1 (e.g. 0.95); got {level}")
    value = _distance(a.stats(), b.stats())
    out = {"fad": value, "dim": a.dim, "clips": [a.n_clips, b.n_clips], "embeddings": [len(a), len(b)],
           "paired": paired, "warnings": sample_size_warnings(a, b)}
    if bootstrap <= 0:
        return out
    rng = np.random.default_rng(seed)
    draws_a = rng.integers(0, a.n_clips, size=(bootstrap, a.n_clips))
    draws_b = draws_a if paired else rng.integers(0, b.n_clips, size=(bootstrap, b.n_clips))
    wa = np.stack([np.bincount(d, minlength=a.n_clips) for d in draws_a]).astype(np.float64)
    wb = wa if paired else np.stack([np.bincount(d, minlength=b.n_clips) for d in draws_b]).astype(np.float64)
    values = np.array([_distance(sa, sb) for sa, sb in zip(a.batch_stats(wa), b.batch_stats(wb))])
    alpha = 1 - level
    q_low, q_high, median = np.quantile(values, [alpha / 2, 1 - alpha / 2, 0.5])
    out.update({
        "ci_low": max(0.0, value + float(q_low - median)), "ci_high": value + float(q_high - median),
        "level": level, "bootstrap": bootstrap, "seed": seed,
        "bootstrap_bias": float(values.mean() - value),
        "percentile_interval": [float(q_low), float(q_high)],
    })
    return out


def default_sizes(n: int, dim: int, per_clip: float = 1.0, count: int = 6) -> list[int]:
    """``count`` subset sizes from n/4 clips (at least enough clips for dim+1 embeddings at ``per_clip`` embeddings
    per clip) to n clips, evenly spaced in 1/N."""
    low = max(n // 4, int(np.ceil((dim + 1) / per_clip)), 2)
    if low >= n:
        raise FrechetError(f"FAD-infinity needs more clips than the embedding dimension: {n} clips for {dim} "
                           "dimensions")
    return sorted({int(round(1 / x)) for x in np.linspace(1 / low, 1 / n, count)})


@one_blas_thread
def fad_infinity(a: EmbeddingSet, b: EmbeddingSet, sizes: list[int] | None = None, draws: int = 3,
                 seed: int = 0, paired: bool = False, strict: bool = True) -> dict:
    """FAD extrapolated to infinitely many clips: FAD on random clip subsets of each size in ``sizes`` (default
    :func:`default_sizes`), ``draws`` subsets per size (drawn with ``seed``; the same clips in both sets when
    ``paired``), then a least-squares line FAD = fad_inf + slope / N. Returns the intercept, the slope, R^2 and
    every point."""
    _check(a, b, strict, paired)
    n = min(a.n_clips, b.n_clips)
    sizes = sorted(set(sizes)) if sizes else default_sizes(n, a.dim, min(len(a) / a.n_clips, len(b) / b.n_clips))
    if len(sizes) < 2 or sizes[0] < 2 or sizes[-1] > n:
        raise FrechetError(f"FAD-infinity needs at least two subset sizes between 2 and {n}; got {sizes}")
    rng = np.random.default_rng(seed)
    inv, vals = [], []
    for size in sizes:
        for _ in range(draws if size < n else 1):
            ia = rng.choice(a.n_clips, size, replace=False)
            ib = ia if paired else rng.choice(b.n_clips, size, replace=False)
            sa, sb = a.subset(ia), b.subset(ib)
            check_sample_size(len(sa), sa.dim, f"a subset of {size} clips", strict)
            inv.append(1.0 / size)
            vals.append(_distance(sa.stats(), sb.stats()))
    slope, intercept = np.polyfit(np.array(inv), np.array(vals), 1)
    fitted = intercept + slope * np.array(inv)
    ss_res = float(((np.array(vals) - fitted) ** 2).sum())
    ss_tot = float(((np.array(vals) - np.mean(vals)) ** 2).sum())
    # the intercept is an extrapolation: for sets whose true distance is about 0 it may dip below 0; fad_inf is
    # clamped at 0, the raw intercept is kept beside it
    return {"fad_inf": max(0.0, float(intercept)), "intercept": float(intercept), "slope": float(slope), "r2": 1 - ss_res / ss_tot if ss_tot > 0 else 1.0,
            "sizes": sizes, "draws": draws, "seed": seed,
            "points": [[1.0 / i, v] for i, v in zip(inv, vals)]}
