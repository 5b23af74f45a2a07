"""``projection``: orthogonal projection (Sandoval-Segura et al., NeurIPS 2023, "What can we learn from unlearnable
datasets?", Algorithm 1), in two representations of audio.

A class-wise pattern is what a linear model finds first: fitted on the protected training set, a multinomial
logistic regression's class weight vectors point along the patterns. The attack fits one (full batch, L-BFGS,
weights starting at zero: no random draw), orthonormalises its C weight vectors (QR), removes the data's components
along them from every training clip, and trains on the result as usual. The test clips are not touched: Algorithm 1
outputs the recovered training set only, and the authors' code evaluates on the plain test set. It needs no clean
clips.

Where it projects (``space``):

- ``waveform``: the samples themselves, as the paper does with pixels. It removes a pattern that sits at the same
  samples in every clip of a class (class-wise additive noise, patches at fixed positions), and nothing that moves:
  a pattern shifted by a few samples from clip to clip is another direction of R^T.
- ``spectrum``: the clip's time-averaged log power spectrum (STFT, ``n_fft``), a representation that does not
  depend on where in the clip a sound is: what a class-wise coloured noise (ar-noise, a fresh draw per clip) or a
  class-wise filter shares across a class lives there. The projected spectrum is put back into the audio as a
  per-clip zero-phase gain on every STFT bin (the clip's STFT times exp(change / 2), then the inverse STFT), so that
  the clip's new time-averaged log power spectrum is the projected one.

In both spaces the data are centred on the training set's mean (and scaled by one global standard deviation, for the
fit) before the projection, and the mean is kept: x' = x - QQ^T (x - mean). The padding after a clip's real length
stays zero.

Measured (``record()["measured"]``): the linear model's accuracy on the clips it was fitted on and on
``holdout_fraction`` of the clips kept out of the fit (a split drawn from the training seed; the directions are
then those of the other clips): a class-wise pattern makes both high, a linear fit of real content with more
dimensions than clips only the first; the fraction of the clips' energy the projection removed (mean over clips
with any energy, and their count).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from attacks.base import ATTACKS, Attack
from lab.config import PluginConfig
from lab.dsp import energy


class ProjectionConfig(PluginConfig):
    type: Literal["projection"] = "projection"
    space: Literal["waveform", "spectrum"] = "waveform"
    steps: int = Field(50, ge=1)  # L-BFGS iterations of the linear fit
    weight_decay: float = Field(1e-4, ge=0)  # L2 penalty of the linear fit (on the weights, not the bias)
    holdout_fraction: float = Field(0.2, ge=0, lt=1)  # clips kept out of the fit to score it; 0: fit on all
    n_fft: int = Field(256, ge=16)  # spectrum space: STFT window (hop n_fft / 4, Hann)


def fit_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, steps: int,
               weight_decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A multinomial logistic regression ``x @ W.T + b`` fitted full batch by L-BFGS from zero weights
    (deterministic); returns (W (C, D), b (C,))."""
    w = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, history_size=10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def accuracy(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> float | None:
    return float(((x @ w.T + b).argmax(1) == y).float().mean()) if len(y) else None


def _stft(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    window = torch.hann_window(n_fft, dtype=x.dtype)
    return torch.stft(x, n_fft, n_fft // 4, window=window, return_complex=True)


def log_power_spectrum(x: torch.Tensor, n_fft: int, chunk: int = 256) -> torch.Tensor:
    """(N, n_fft // 2 + 1): each clip's power spectrum averaged over its STFT frames, in log with a floor 30 dB
    under the clip's mean power per bin (a near-empty bin would otherwise weigh in the fit, and get the projection's
    largest gains, by how far below everything else it is)."""
    parts = []
    for part in x.split(chunk):
        power = _stft(part, n_fft).abs().pow(2).mean(-1)
        parts.append(torch.log(power + 1e-3 * power.mean(1, keepdim=True) + 1e-10))
    return torch.cat(parts)


def apply_gain(x: torch.Tensor, gain: torch.Tensor, n_fft: int, chunk: int = 256) -> torch.Tensor:
    """Every clip's STFT times its own gain per bin (N, F), back to audio of the same length."""
    window = torch.hann_window(n_fft, dtype=x.dtype)
    out = [torch.istft(_stft(part, n_fft) * g[:, :, None], n_fft, n_fft // 4, window=window, length=x.shape[1])
           for part, g in zip(x.split(chunk), gain.split(chunk))]
    return torch.cat(out)


def class_directions(v: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: ProjectionConfig,
                     seed: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The linear model's orthonormal class directions Q (D, C') in ``v``'s space (rows: clips), the data's mean
    (D,), and what the fit measured."""
    mean = v.mean(0)
    scale = (v - mean).std().clamp_min(1e-12)
    z = (v - mean) / scale
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    held = order[: round(cfg.holdout_fraction * len(labels))]
    fitted = order[len(held):]
    w, b = fit_linear(z[fitted], labels[fitted], num_classes, cfg.steps, cfg.weight_decay)
    q, r = torch.linalg.qr(w.T)  # (D, C): an orthonormal basis of the class weight vectors' span
    keep = r.diagonal().abs() > 1e-6 * r.diagonal().abs().max().clamp_min(1e-30)  # a zero weight vector spans nothing
    measured = {"linear_fit_accuracy": accuracy(z[fitted], labels[fitted], w, b),
                "linear_holdout_accuracy": accuracy(z[held], labels[held], w, b),
                "fit_clips": len(fitted), "holdout_clips": len(held), "split_seed": int(seed),
                "directions": int(keep.sum()), "dimensions": int(v.shape[1])}
    return q[:, keep], mean, measured


def project(waveforms: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, num_classes: int,
            cfg: ProjectionConfig, seed: int) -> tuple[torch.Tensor, dict]:
    """The training clips with the linear model's class directions projected out (see the module docstring), and
    what was measured."""
    x = waveforms.float()
    if cfg.space == "waveform":
        q, mean, measured = class_directions(x, labels, num_classes, cfg, seed)
        out = x - ((x - mean) @ q) @ q.T
    else:
        v = log_power_spectrum(x, cfg.n_fft)
        q, mean, measured = class_directions(v, labels, num_classes, cfg, seed)
        change = -((v - mean) @ q) @ q.T  # in log power
        out = apply_gain(x, torch.exp(change / 2), cfg.n_fft)
    out = out * (torch.arange(x.shape[1])[None, :] < lengths[:, None]).to(out)
    before = energy(x)[:, 0]
    has = before > 0
    removed = energy(out - x)[:, 0][has] / before[has]
    measured["energy_removed"] = float(removed.mean()) if has.any() else None
    measured["energy_removed_median"] = float(removed.median()) if has.any() else None
    measured["energy_clips"] = int(has.sum())
    return out.to(waveforms.dtype), measured


@ATTACKS.register("projection")
class Projection(Attack):
    """Fit a linear model on the protected training set, project its class directions out of every clip, train."""

    Config = ProjectionConfig

    def training_set(self, ctx):
        out, self.measured = project(ctx.protected, ctx.labels, ctx.lengths, ctx.num_classes, self.config, ctx.seed)
        return out, ctx.labels
