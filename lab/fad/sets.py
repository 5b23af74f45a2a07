"""A set of embeddings grouped by clip, with the Gaussian statistics FAD needs (float64).

A backend may give several embeddings per clip (one per frame: log-mel, VGGish) or one (a classifier's penultimate
layer). Resampling for confidence intervals must draw whole clips, because frames of one clip are not independent;
so a set keeps, for every frame, the clip it came from, and computes mean and covariance for any clip weights (the
number of times each clip was drawn).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lab.fad.distance import FrechetError

# Precompute per-clip scatter matrices (fast weighted statistics) when they fit in this many float64 values.
SCATTER_LIMIT = 2 ** 25


@dataclass
class EmbeddingSet:
    """``frames`` (M, D): every embedding of every clip; ``clip`` (M,): the clip index (0..n_clips-1) of each."""

    frames: np.ndarray
    clip: np.ndarray
    n_clips: int

    def __post_init__(self):
        self.frames = np.asarray(self.frames, dtype=np.float64)
        self.clip = np.asarray(self.clip, dtype=np.int64)
        if self.frames.ndim != 2 or self.clip.shape != (self.frames.shape[0],):
            raise FrechetError(f"embeddings must be (M, D) with one clip index each; got {self.frames.shape} and "
                               f"{self.clip.shape}")
        if not np.isfinite(self.frames).all():
            raise FrechetError("the embeddings hold NaN or infinity (is the audio finite?)")
        self._center = self.frames.mean(axis=0) if len(self.frames) else np.zeros(self.dim)
        self._counts = np.bincount(self.clip, minlength=self.n_clips).astype(np.float64)
        self._scatter = None

    @classmethod
    def per_clip(cls, embeddings) -> "EmbeddingSet":
        """One embedding per clip: ``embeddings`` (N, D)."""
        x = np.asarray(embeddings, dtype=np.float64)
        return cls(x, np.arange(x.shape[0]), x.shape[0])

    @classmethod
    def from_list(cls, per_clip_frames: list) -> "EmbeddingSet":
        """Several embeddings per clip: a list of (F_i, D) arrays, one per clip."""
        frames = np.concatenate([np.asarray(f, dtype=np.float64) for f in per_clip_frames])
        clip = np.concatenate([np.full(len(f), i) for i, f in enumerate(per_clip_frames)])
        return cls(frames, clip, len(per_clip_frames))

    @classmethod
    def concat(cls, sets: list["EmbeddingSet"]) -> "EmbeddingSet":
        """The clips of several sets, in order, as one set (clip indices of each set after those of the ones before
        it): embeddings computed in chunks, joined."""
        if not sets:
            raise FrechetError("no embedding sets to join")
        if len({s.dim for s in sets}) > 1:
            raise FrechetError(f"cannot join embedding sets of different dimensions ({sorted({s.dim for s in sets})})")
        offsets = np.cumsum([0] + [s.n_clips for s in sets])
        return cls(np.concatenate([s.frames for s in sets]),
                   np.concatenate([s.clip + off for s, off in zip(sets, offsets)]), int(offsets[-1]))

    @property
    def dim(self) -> int:
        return self.frames.shape[1]

    def __len__(self) -> int:
        return self.frames.shape[0]

    def subset(self, clips) -> "EmbeddingSet":
        """The embeddings of the given clips (indices, without repetition), renumbered 0..len(clips)-1."""
        clips = np.asarray(clips, dtype=np.int64)
        where = np.full(self.n_clips, -1)
        where[clips] = np.arange(len(clips))
        keep = where[self.clip] >= 0
        out = EmbeddingSet(self.frames[keep], where[self.clip[keep]], len(clips))
        if self._scatter is not None:  # reuse the parent's per-clip moments, moved to the subset's centre
            scatter, sums = self._scatter
            d, shift = self.dim, out._center - self._center
            counts = self._counts[clips]
            q = scatter[clips].reshape(-1, d, d)
            s = sums[clips]
            q = q - s[:, :, None] * shift[None, None, :] - shift[None, :, None] * s[:, None, :] \
                + counts[:, None, None] * np.outer(shift, shift)[None]
            out._scatter = (q.reshape(len(clips), d * d), s - counts[:, None] * shift)
        return out

    def stats(self, weights=None) -> tuple[np.ndarray, np.ndarray, float]:
        """Mean (D,), unbiased covariance (D, D) and number of embeddings, each clip counted ``weights[i]`` times
        (all once when None)."""
        if weights is None:
            weights = np.ones(self.n_clips)
        return self.batch_stats(np.asarray(weights, dtype=np.float64)[None])[0]

    def batch_stats(self, weights: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """:meth:`stats` for each row of ``weights`` (B, n_clips), sharing the work where possible."""
        d = self.dim
        one_per_clip = len(self) == self.n_clips and np.array_equal(self.clip, np.arange(self.n_clips))
        x = self.frames - self._center  # centring first keeps the moment sums well conditioned
        if not one_per_clip and self.n_clips * d * d <= SCATTER_LIMIT:
            if self._scatter is None:
                order = np.argsort(self.clip, kind="stable")
                bounds = np.concatenate([[0], np.cumsum(self._counts).astype(np.int64)])
                xs = x[order]
                scatter = np.zeros((self.n_clips, d, d))
                sums = np.zeros((self.n_clips, d))
                for i in range(self.n_clips):
                    part = xs[bounds[i]:bounds[i + 1]]
                    scatter[i] = part.T @ part
                    sums[i] = part.sum(axis=0)
                self._scatter = (scatter.reshape(self.n_clips, d * d), sums)
            scatter, sums = self._scatter
            n = weights @ self._counts
            s = weights @ sums
            q = (weights @ scatter).reshape(-1, d, d)
            out = []
            for b in range(len(weights)):
                mean = s[b] / n[b]
                cov = (q[b] - n[b] * np.outer(mean, mean)) / max(n[b] - 1, 1)
                out.append((mean + self._center, cov, float(n[b])))
            return out
        out = []
        for w in weights:
            wf = w[self.clip]
            n = wf.sum()
            mean = wf @ x / n
            xc = x - mean
            cov = (xc * wf[:, None]).T @ xc / max(n - 1, 1)
            out.append((mean + self._center, cov, float(n)))
        return out
