"""``projection``: orthogonal projection (Sandoval-Segura et al., NeurIPS 2023, "What can we learn from unlearnable
datasets?", Algorithm 1), in two representations of audio.

A class-wise pattern is what a linear model finds first: fitted on the protected training set, a multinomial
logistic regression's class weight vectors point along the patterns. The attack fits one (full batch, L-BFGS,
weights starting at zero: no random draw), orthonormalises its C weight vectors (QR), removes the data's components
along them from every training clip, and trains on the result as usual. The test clips are not touched: Algorithm 1
outputs the recovered training set only, and the authors' code evaluates on the plain test set. It needs no clean
clips.

Which directions (``directions``): ``weights`` (the paper's: the span of the linear model's class weight vectors) or
``means`` (the span of the class means of the centred data; after it, every class has the same mean in that space
on the clips fitted, so no linear model separates them by a shift).

Where it projects (``space``):

- ``waveform``: the samples themselves, as the paper does with pixels. It removes a pattern that sits at the same
  samples in every clip of a class (class-wise additive noise, patches at fixed positions), and nothing that moves:
  a pattern shifted by a few samples from clip to clip is another direction of R^T.
- ``spectrum``: the clip's log power spectrum (the FFT of the whole clip, averaged in ``bands`` equal bands), a
  representation that does not depend on where in the clip a sound is: what a class-wise coloured noise (ar-noise,
  a fresh draw per clip) or a class-wise filter shares across a class lives there. The projected spectrum is put back
  into the audio exactly, as a per-clip zero-phase gain on every band (the clip's FFT times exp(change / 2)). The
  price: a speech clip's own spectrum says much about its class too (a linear model on it scores about 0.87 on
  clean FSDD clips it was not fitted on), and the projection takes that away with the pattern.

In both spaces the data are centred on the training set's mean (and scaled by one global standard deviation, for the
fit) before the projection, and the mean is kept: x' = x - QQ^T (x - mean). The padding after a clip's real length
stays zero.

Measured (``record()["measured"]``): the linear model's accuracy on the clips it was fitted on and on
``holdout_fraction`` of the clips kept out of the fit (a split drawn from the training seed; the directions are
then those of the other clips): a class-wise pattern makes both high, a linear fit of real content with more
dimensions than clips only the first; the energy of the change the projection made, as a fraction of the clip's
energy (mean and median over the clips with any energy, and their count; in the spectrum space a gain can also
raise a band, so it can pass 1).
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
    directions: Literal["weights", "means"] = "weights"  # the linear model's weights (the paper) or the class means
    steps: int = Field(50, ge=1)  # L-BFGS iterations of the linear fit
    weight_decay: float = Field(1e-4, ge=0)  # L2 penalty of the linear fit (on the weights, not the bias)
    holdout_fraction: float = Field(0.2, ge=0, lt=1)  # clips kept out of the fit to score it; 0: fit on all
    bands: int = Field(128, ge=2)  # spectrum space: equal frequency bands of the clip's power spectrum


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


FLOOR = 1e-6  # of a clip's mean band power, added before the log


def band_index(total: int, bands: int) -> torch.Tensor:
    """The band (0..bands-1, equal widths) of every bin of a ``total``-sample real FFT."""
    bins = total // 2 + 1
    return (torch.arange(bins) * min(bands, bins) // bins).long()


def log_band_power(x: torch.Tensor, bands: int) -> torch.Tensor:
    """(N, B): each clip's power spectrum (the FFT of the whole clip: where in the clip a sound is does not matter)
    averaged in ``bands`` equal bands, in log, with a floor 60 dB under the clip's mean band power (a near-empty band
    would otherwise weigh in the fit, and get the projection's largest gains, by how far below the rest it is)."""
    index = band_index(x.shape[1], bands)
    power = torch.fft.rfft(x).abs().pow(2)
    count = torch.bincount(index).to(power)
    summed = torch.zeros(len(x), int(index.max()) + 1, dtype=power.dtype).index_add_(1, index, power)
    band = summed / count
    return torch.log(band + FLOOR * band.mean(1, keepdim=True) + 1e-20)


def apply_band_gain(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Every clip's FFT times its own gain per band (N, B) (zero phase), back to audio of the same length: the
    clip's band powers are multiplied by the gain squared, exactly."""
    index = band_index(x.shape[1], gain.shape[1])
    return torch.fft.irfft(torch.fft.rfft(x) * gain[:, index], n=x.shape[1])


def class_directions(v: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: ProjectionConfig,
                     seed: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Orthonormal class directions Q (D, C') in ``v``'s space (rows: clips): of the linear model's weight vectors
    or of the class means (``cfg.directions``); the data's mean (D,); what the fit measured."""
    mean = v.mean(0)
    scale = (v - mean).std().clamp_min(1e-12)
    z = (v - mean) / scale
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    held = order[: round(cfg.holdout_fraction * len(labels))]
    fitted = order[len(held):]
    w, b = fit_linear(z[fitted], labels[fitted], num_classes, cfg.steps, cfg.weight_decay)
    span = w if cfg.directions == "weights" else torch.stack(
        [z[fitted][labels[fitted] == c].mean(0) if (labels[fitted] == c).any() else torch.zeros(z.shape[1])
         for c in range(num_classes)])
    q, r = torch.linalg.qr(span.T)  # (D, C): an orthonormal basis of the class directions' span
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
        v = log_band_power(x, cfg.bands)
        q, mean, measured = class_directions(v, labels, num_classes, cfg, seed)
        change = -((v - mean) @ q) @ q.T  # in log power
        out = apply_band_gain(x, torch.exp(change / 2))
    out = out * (torch.arange(x.shape[1])[None, :] < lengths[:, None]).to(out)
    before = energy(x)[:, 0]
    has = before > 0
    change = energy(out - x)[:, 0][has] / before[has]
    measured["change_energy_mean"] = float(change.mean()) if has.any() else None
    measured["change_energy_median"] = float(change.median()) if has.any() else None
    measured["change_energy_clips"] = int(has.sum())
    return out.to(waveforms.dtype), measured


@ATTACKS.register("projection")
class Projection(Attack):
    """Fit a linear model on the protected training set, project its class directions out of every clip, train."""

    Config = ProjectionConfig

    def training_set(self, ctx):
        out, self.measured = project(ctx.protected, ctx.labels, ctx.lengths, ctx.num_classes, self.config, ctx.seed)
        return out, ctx.labels
