"""``filter-estimate`` (known plaintext): the attacker holds ``pairs_per_class`` clean/protected pairs per class
(drawn at random from the training set with ``seed``). For each class it

1. estimates the patch: the span from the first to the last sample where any pair differs (assumes a position fixed
   in samples, as PosCUDA's ``absolute`` mode gives; other protections change other spans, or the whole clip);
2. estimates the filter by least squares: protected[t] = sum_d g[d] clean[t - d] over the span, lags d in
   [-L, L] with ``filter_length`` = 2L + 1 (it should be at least the real filter's length);
3. undoes it on every training clip of the class: the span's clean samples are the solution of a regularised
   (Tikhonov, ``regularisation`` x mean diagonal) linear deconvolution that uses the untouched samples around it
   (spans longer than ``max_exact_span`` samples, e.g. a whole-clip filter: a regularised FFT deconvolution);

then trains on the result. It reports how well it recovered the protection, where the protection says what it did:
the position hit rate (the estimated start within ``hit_tolerance`` samples of the real one, for a protection with
``patch_spans``) and the cosine similarity of each estimated filter with the real one (``class_filters``).

(Formerly ``filter-retrain`` with ``method: estimate``; its adversarial sibling is ``filter-adversarial``.)
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from attacks._filters import FilterConfig
from attacks.base import ATTACKS, Attack


class FilterEstimateConfig(FilterConfig):
    type: Literal["filter-estimate"] = "filter-estimate"
    pairs_per_class: int = Field(5, ge=1)
    regularisation: float = Field(1e-3, ge=0)
    hit_tolerance: int = Field(10, ge=0)
    max_exact_span: int = Field(4096, ge=1)
    seed: int = 0


def changed_span(clean: torch.Tensor, protected: torch.Tensor) -> tuple[int, int] | None:
    """First and last sample (inclusive) where any of the pairs (N, T) differ; None if none does."""
    changed = (protected != clean).any(dim=0).nonzero().flatten()
    if changed.numel() == 0:
        return None
    return int(changed[0]), int(changed[-1])


def lagged(x: torch.Tensor, lags: int, start: int, stop: int) -> torch.Tensor:
    """Design matrix (N, stop - start, 2L + 1): entry [n, t, d + L] = x[n, start + t - d] (zeros beyond the ends)."""
    padded = F.pad(x, (lags, lags))
    idx = torch.arange(start, stop)[:, None] - torch.arange(-lags, lags + 1)[None, :] + lags
    return padded[:, idx]


def estimate_filter(clean: torch.Tensor, protected: torch.Tensor, span: tuple[int, int], length: int) -> torch.Tensor:
    """Least-squares filter g (lags -L..L) with protected[t] ~= sum_d g[d] clean[t - d] over the span of all pairs."""
    lags = length // 2
    a = lagged(clean.double(), lags, span[0], span[1] + 1).reshape(-1, length)
    b = protected.double()[:, span[0]: span[1] + 1].reshape(-1, 1)
    return torch.linalg.lstsq(a, b).solution.flatten()


def undo_filter(protected: torch.Tensor, span: tuple[int, int], g: torch.Tensor, regularisation: float) -> torch.Tensor:
    """Estimate the clean samples of ``span`` in every row of ``protected`` (N, T), given that they were replaced by
    their convolution with ``g`` (lags -L..L) and that everything outside the span is unchanged."""
    lags = len(g) // 2
    s, e = span[0], span[1] + 1
    y = protected.double()
    outside = y.clone()
    outside[:, s:e] = 0
    from_outside = F.conv1d(F.pad(outside, (lags, lags))[:, None], g.flip(0)[None, None])[:, 0, s:e]
    r = y[:, s:e] - from_outside  # what the span's own samples contributed
    p = e - s
    diff = torch.arange(p)[:, None] - torch.arange(p)[None, :]  # A[t, u] = g[t - u]
    a = torch.where(diff.abs() <= lags, g[(diff + lags).clamp(0, 2 * lags)], torch.zeros((), dtype=g.dtype))
    ata = a.T @ a
    lam = regularisation * float(ata.diagonal().mean())
    rhs = a.T @ r.T + lam * y[:, s:e].T
    x = torch.linalg.solve(ata + lam * torch.eye(p, dtype=ata.dtype), rhs).T
    out = y.clone()
    out[:, s:e] = x
    return out.to(protected.dtype)


def undo_filter_fft(protected: torch.Tensor, span: tuple[int, int], g: torch.Tensor,
                    regularisation: float) -> torch.Tensor:
    """For long spans (a whole-clip filter): regularised (Wiener-like) deconvolution of every row by ``g`` in the
    frequency domain, X = Y conj(G) / (|G|^2 + lambda), lambda = ``regularisation`` x mean |G|^2; only the span's
    samples are replaced."""
    lags = len(g) // 2
    n = protected.shape[1] + 2 * lags
    y = torch.fft.rfft(protected.double(), n=n)
    kernel = torch.zeros(n, dtype=torch.float64)
    kernel[: lags + 1] = g[lags:]  # lags 0..L
    if lags:
        kernel[-lags:] = g[:lags]  # lags -L..-1 wrap around
    spec = torch.fft.rfft(kernel)
    power = spec.abs() ** 2
    x = torch.fft.irfft(y * spec.conj() / (power + regularisation * power.mean()), n=n)[:, : protected.shape[1]]
    out = protected.clone()
    out[:, span[0]: span[1] + 1] = x[:, span[0]: span[1] + 1].to(protected.dtype)
    return out


def true_filter_as_lags(taps: torch.Tensor, length: int) -> torch.Tensor:
    """A protection filter (taps f[0..k-1], applied "same"-aligned as in PosCUDA) in the lag convention of
    :func:`estimate_filter`: protected[t] = sum_j f[j] x[t - (j - right)], right = k - 1 - (k - 1) // 2."""
    k = len(taps)
    right = k - 1 - (k - 1) // 2
    lags = length // 2
    out = torch.zeros(length, dtype=torch.float64)
    for j in range(k):
        d = j - right
        if -lags <= d <= lags:
            out[d + lags] = float(taps[j])
    return out


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double()[None], b.double()[None]))


def pick_pairs(labels: torch.Tensor, per_class: int, seed: int) -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for c in labels.unique().tolist():
        rows = (labels == c).nonzero().flatten()
        out[c] = rows[torch.randperm(len(rows), generator=gen)[:per_class]]
    return out


@ATTACKS.register("filter-estimate")
class FilterEstimate(Attack):
    """Known plaintext: estimate each class's patch and filter from a few clean/protected pairs, undo them."""

    Config = FilterEstimateConfig
    needs_clean = True  # known plaintext: clean/protected pairs

    def training_set(self, ctx):
        cfg: FilterEstimateConfig = self.config
        out = ctx.protected.clone()
        pairs = pick_pairs(ctx.labels, cfg.pairs_per_class, cfg.seed)
        per_class = []
        for c, rows in pairs.items():
            clean, prot = ctx.clean[rows], ctx.protected[rows]
            span = changed_span(clean, prot)
            entry = {"class": c, "pairs": len(rows), "estimated_start": None, "estimated_patch_samples": None}
            if span is not None:
                g = estimate_filter(clean, prot, span, cfg.filter_length)
                members = ctx.labels == c
                undo = undo_filter if span[1] - span[0] < cfg.max_exact_span else undo_filter_fft
                out[members] = undo(ctx.protected[members], span, g, cfg.regularisation)
                entry.update(estimated_start=span[0], estimated_patch_samples=span[1] - span[0] + 1)
                entry.update(self._truth(ctx, c, rows, span, g))
            per_class.append(entry)
        self.measured = self._summary(per_class)
        return out, ctx.labels

    def _truth(self, ctx, c: int, rows: torch.Tensor, span, g) -> dict:
        """Compare with what was really applied, where the protection says where it put its patches
        (``patch_spans``) and which filters it convolved with (``class_filters``)."""
        prot = ctx.protection
        found = {}
        if prot is None:
            return found
        spans = prot.patch_spans(ctx.labels[rows], ctx.protected.shape[1], ctx.lengths[rows])
        if spans:
            true_start = min(row[0][0] for row in spans)
            found.update(true_start=true_start, true_patch_samples=spans[0][0][1] - spans[0][0][0],
                         position_hit=abs(span[0] - true_start) <= self.config.hit_tolerance)
        filters = prot.class_filters()
        if filters is not None:
            found["filter_cosine"] = cosine(g, true_filter_as_lags(filters[c], self.config.filter_length))
        return found

    @staticmethod
    def _summary(per_class: list[dict]) -> dict:
        hits = [e["position_hit"] for e in per_class if "position_hit" in e]
        cos = [e["filter_cosine"] for e in per_class if "filter_cosine" in e]
        return {"position_hit_rate": sum(hits) / len(hits) if hits else None,
                "filter_cosine_mean": sum(cos) / len(cos) if cos else None,
                "filter_cosine_min": min(cos) if cos else None,
                "per_class": per_class}
