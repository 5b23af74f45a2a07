"""``filter-retrain``: the attacker learns the protection's filters back. Two methods:

``method: adversarial`` (CUDA's own adaptive attack, deconvolution-based adversarial training, in 1-D): every class
has a learnable filter of ``filter_length`` taps (starting as the identity, kept at unit L2 norm). For every training
batch, ``ascent_steps`` normalised gradient-ascent steps of size ``filter_lr`` move the filters of the batch's classes
towards a HIGHER loss of the current model; each clip, convolved with its class's filter, is then what the model
trains on. The model must learn to classify whatever class-wise filtering it meets.

``method: estimate`` (known plaintext): the attacker holds ``pairs_per_class`` clean/protected pairs per class
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
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from attacks.base import ATTACKS, Attack
from lab.config import PluginConfig


class FilterRetrainConfig(PluginConfig):
    type: Literal["filter-retrain"] = "filter-retrain"
    method: Literal["adversarial", "estimate"] = "adversarial"
    filter_length: int = Field(63, ge=1)
    # adversarial
    ascent_steps: int = Field(2, ge=1)
    filter_lr: float = Field(0.05, gt=0)
    # estimate
    pairs_per_class: int = Field(5, ge=1)
    regularisation: float = Field(1e-3, ge=0)
    hit_tolerance: int = Field(10, ge=0)
    max_exact_span: int = Field(4096, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _odd(self):
        if self.filter_length % 2 == 0:
            raise ValueError(f"filter_length must be odd (centred lags -L..L), got {self.filter_length}")
        return self


# --- deconvolution-based adversarial training -------------------------------------------------------------------

def filter_rows(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Row n of ``x`` (N, T) convolved ("same", centred) with ``filters[n]`` (N, K), K odd; differentiable."""
    k = filters.shape[1]
    return F.conv1d(x[None], filters.flip(1)[:, None, :], padding=k // 2, groups=len(x))[0]


def identity_filters(num_classes: int, length: int) -> torch.Tensor:
    f = torch.zeros(num_classes, length)
    f[:, length // 2] = 1.0
    return f


# --- known-plaintext estimation -----------------------------------------------------------------------------------

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


@ATTACKS.register("filter-retrain")
class FilterRetrain(Attack):
    """Learn the class filters back: deconvolution adversarial training, or known-plaintext estimate-and-undo."""

    Config = FilterRetrainConfig

    @property
    def per_batch(self) -> bool:  # type: ignore[override]
        return self.config.method == "adversarial"

    def start(self, ctx):
        super().start(ctx)
        self.filters = identity_filters(ctx.num_classes, self.config.filter_length)

    # adversarial ---------------------------------------------------------------------------------------------
    def transform_batch(self, waveforms, labels, module):
        cfg: FilterRetrainConfig = self.config
        filters = self.filters.to(waveforms)
        was_training = module.training
        module.eval()
        with torch.enable_grad():
            for _ in range(cfg.ascent_steps):
                filters.requires_grad_(True)
                loss = F.cross_entropy(module(module.features(filter_rows(waveforms, filters[labels]))), labels)
                (grad,) = torch.autograd.grad(loss, filters)
                step = grad / grad.norm(dim=1, keepdim=True).clamp(min=1e-12)
                filters = filters.detach() + cfg.filter_lr * step
                filters = filters / filters.norm(dim=1, keepdim=True).clamp(min=1e-12)
        module.train(was_training)
        self.filters = filters.detach().cpu()
        return filter_rows(waveforms, self.filters.to(waveforms)[labels]).detach()

    # estimate ------------------------------------------------------------------------------------------------
    def training_set(self, ctx):
        if self.config.method == "adversarial":
            return ctx.protected, ctx.labels
        cfg: FilterRetrainConfig = self.config
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
