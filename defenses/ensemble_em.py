"""``ensemble-em``: class-wise error-minimising noise made against SEVERAL surrogates at once, through random
transformations (issue 25, first version).

The noise is what ``em-noise`` (``mode: class-wise``) makes, one unit-RMS pattern per class scaled on every clip to
the per-clip SNR (and shaped to the masking budget), but the min-min loop (defenses/_minmin.py) runs against an
ensemble of surrogates that differ in architecture AND front-end (``surrogates``: a list of {model, features,
train} changes of the recipe, as em-noise's ``surrogate``; default: CNN on log-mel, LSTM on MFCC, a linear model on
log-mel, CNN on raw audio), so that the noise has to be learnable by all of them, and thus, one hopes, by a trainer
the owner does not know (the transfer argument of AntiFake, Transferable Unlearnable Examples, and the ensemble
literature; docs/defenses_optimised.md, "Ensemble").

Every round:
- each member trains for ``train_batches`` batches on the perturbed clips (its own Adam, the lr of its recipe);
- for every batch, ``steps`` normalised descent steps of the class patterns on the MEAN over members of the mean
  over ``eot.draws`` random transformations of the members' cross-entropy (an expectation over transformations:
  REM, ICLR 2022): each draw, per clip, with probability ``eot.p`` each, a circular time shift of up to
  ``eot.shift_seconds``, a gain within +-``eot.gain_db``, a low-pass (FFT brick-wall) at a cut-off drawn in
  ``eot.lowpass_hz``, white noise at an SNR drawn in ``eot.noise_snr_db``; all differentiable;
- the stop rule: every member's accuracy on the perturbed training clips reaches ``stop_accuracy`` (at most
  ``max_rounds`` rounds).

Everything random comes from seeds derived from the key (HMAC): the members' weights and batch order
("ensemble-em/v1/surrogate") and the transformations ("ensemble-em/v1/eot", a generator of its own). The record keeps
the settings, each member's description, the accuracies and the descent loss (first and last step) per round, the
number of transformation draws and a SHA-256 of all drawn parameters (so two runs can be compared), never the key.

Not in this version (issue 25 asks for them later): sample-wise noise, the robust inner step (``rho``), SpecAugment
masks and a codec proxy in the transformations, a timing-invariant parametrisation, ``lab protect`` (it refuses:
the protection is not ``on_collection``), checkpoints (``lab protect``'s resume).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, SecretStr, field_validator, model_validator

from defenses._minmin import (MinMinSettings, OptimisedDefense, Perturbation, SurrogateConfig, _on, accuracy,
                              span_mask, train_surrogate)
from defenses.base import DEFENSES, Protection, TrainingSet
from lab.config import PluginConfig, Section
from lab.dsp import fit_length, snr_gain
from lab.keys import derive_seed, fingerprint
from lab.masking import MaskingBudget, check_budget, limit_to_threshold, masking_threshold

DEFAULT_MEMBERS = ({"model": {"type": "cnn"}, "features": {"type": "logmel"}},
                   {"model": {"type": "lstm"}, "features": {"type": "mfcc"}},
                   {"model": {"type": "linear"}, "features": {"type": "logmel"}},
                   {"model": {"type": "cnn"}, "features": {"type": "raw"}})


class EOTConfig(Section):
    """The expectation over transformations inside every descent step (``draws`` 0: none)."""

    draws: int = Field(2, ge=0)
    p: float = Field(0.5, ge=0, le=1)
    shift_seconds: float = Field(0.1, ge=0)
    gain_db: float = Field(6.0, ge=0)
    lowpass_hz: tuple[float, float] = (1500.0, 3500.0)
    noise_snr_db: tuple[float, float] = (20.0, 40.0)

    @field_validator("lowpass_hz", "noise_snr_db")
    @classmethod
    def _ordered(cls, v):
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"give [low, high] with 0 < low <= high (got {list(v)})")
        return v


class EnsembleEMConfig(PluginConfig, MinMinSettings, MaskingBudget):
    type: Literal["ensemble-em"] = "ensemble-em"
    key: SecretStr | None = None
    key_file: Path | None = None
    mode: Literal["class-wise"] = "class-wise"
    snr_db: float | None = 30.0
    surrogates: list[SurrogateConfig] = Field(default_factory=lambda: [SurrogateConfig(**m) for m in DEFAULT_MEMBERS],
                                              min_length=1)
    eot: EOTConfig = Field(default_factory=EOTConfig)

    @model_validator(mode="after")
    def _supported(self):
        check_budget(self.snr_db, None, self.masking_margin_db)
        if self.rho:
            raise ValueError("ensemble-em has no robust inner step yet: leave rho at 0")
        if self.surrogate.model_dump():
            raise ValueError("ensemble-em takes its surrogates in 'surrogates' (a list of {model, features, train}), "
                             "not 'surrogate'")
        return self


def add_patterns(x: torch.Tensor, patterns: torch.Tensor, mask: torch.Tensor, snr_db: float | None,
                 masking: tuple | None = None) -> torch.Tensor:
    """``x`` plus each row's class pattern on its real audio, scaled to ``snr_db`` exactly, then (``masking``:
    ``(sample_rate, margin_db, thresholds or None)``) shaped to the masking budget; differentiable."""
    noise = patterns * mask
    if snr_db is not None:
        noise = noise * snr_gain(x, noise, snr_db).to(x.dtype)
    if masking is not None:
        sample_rate, margin, thresholds = masking
        noise = limit_to_threshold(x, noise, sample_rate, margin, support=mask, snr_db=snr_db,
                                   threshold_db=thresholds)
    return x + noise


class ClassPatterns(Perturbation):
    """One unit-RMS pattern per class (C, T), scaled per clip to the SNR target (and shaped to the masking budget,
    with the training clips' thresholds computed once)."""

    def __init__(self, data: TrainingSet, snr_db, margin_db, step_size, gen: torch.Generator):
        self.snr_db, self.margin, self.step, self.sample_rate = snr_db, margin_db, step_size, data.sample_rate
        self.mask = span_mask(data.waveforms, data.lengths)
        c, t = data.num_classes, data.waveforms.shape[1]
        self.patterns = self.normalise(torch.randn(c, t, generator=gen).to(data.waveforms))
        self.thresholds = None if margin_db is None else masking_threshold(data.waveforms, data.sample_rate).float()

    @staticmethod
    def normalise(p):
        return p / p.pow(2).mean(dim=1, keepdim=True).sqrt().clamp(min=1e-30)

    def variable(self, idx, y):
        return self.patterns.clone()

    def perturbed(self, var, idx, x, y, lengths):
        masking = None if self.margin is None else (self.sample_rate, self.margin, self.thresholds[idx])
        return add_patterns(x, var[y], self.mask[idx], self.snr_db, masking)

    def descend(self, var, grad, idx, y):
        norm = grad.norm(dim=1, keepdim=True)
        step = self.step * var.norm(dim=1, keepdim=True) * grad / norm.clamp(min=1e-30)
        return self.normalise(torch.where(norm > 0, var - step, var))

    def store(self, var, idx, y):
        self.patterns = var.detach()

    def state(self):
        return {"patterns": self.patterns}

    def restore(self, state):
        self.patterns = state["patterns"].to(self.patterns)


class Transformations:
    """Random transformations of waveform batches (EOTConfig), drawn from their own generator; every draw's
    parameters go into a running SHA-256 (the record's ``draws_sha256``)."""

    def __init__(self, cfg: EOTConfig, sample_rate: int, seed: int):
        self.cfg, self.sample_rate = cfg, sample_rate
        self.gen = torch.Generator().manual_seed(seed)
        self.made, self.digest = 0, hashlib.sha256()

    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=self.gen, dtype=torch.float64)

    def draw(self, n: int, t: int) -> dict[str, torch.Tensor]:
        """One draw for ``n`` clips of ``t`` samples: per clip, each transformation on with probability ``p``."""
        c = self.cfg
        on = torch.rand(4, n, generator=self.gen) < c.p
        reach = int(round(c.shift_seconds * self.sample_rate))
        shift = torch.randint(-reach, reach + 1, (n,), generator=self.gen) * on[0]
        inf = torch.full((n,), float("inf"), dtype=torch.float64)
        gain = torch.where(on[1], 10 ** (self._uniform(n, -c.gain_db, c.gain_db) / 20), torch.ones_like(inf))
        cutoff = torch.where(on[2], self._uniform(n, *c.lowpass_hz), inf)
        snr = torch.where(on[3], self._uniform(n, *c.noise_snr_db), inf)
        noise = torch.randn(n, t, generator=self.gen)
        params = {"shift": shift, "gain": gain, "cutoff": cutoff, "snr": snr, "noise": noise}
        for v in params.values():
            self.digest.update(v.contiguous().numpy().tobytes())
        self.made += 1
        return params

    def apply(self, x: torch.Tensor, d: dict[str, torch.Tensor]) -> torch.Tensor:
        """``x`` (n, t) transformed by draw ``d`` (differentiable): shift, low-pass, added noise, gain."""
        n, t = x.shape
        pos = (torch.arange(t)[None, :] - d["shift"][:, None]) % t
        x = x.gather(1, pos.to(x.device))
        freqs = torch.fft.rfftfreq(t, 1.0 / self.sample_rate)
        keep = (freqs[None, :] <= d["cutoff"][:, None]).to(x.dtype)
        if not bool(keep.all()):
            x = torch.fft.irfft(torch.fft.rfft(x) * keep, n=t)
        rms = x.detach().pow(2).mean(dim=1, keepdim=True).sqrt()
        x = x + d["noise"].to(x) * rms * (10 ** (-d["snr"] / 20)).to(x)[:, None]
        return x * d["gain"].to(x)[:, None]

    def record(self) -> dict:
        return {**self.cfg.model_dump(mode="json"), "draws_made": self.made, "draws_sha256": self.digest.hexdigest(),
                "seed_source": "key"}


class Member:
    """One surrogate of the ensemble: its training set (its own surrogate factory and settings), model, optimiser,
    and batch order."""

    def __init__(self, data: TrainingSet, gen: torch.Generator):
        self.data = data
        self.model = data.new_surrogate().to(data.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=data.lr, weight_decay=data.weight_decay)
        self.loop = {"order": torch.randperm(len(data.labels), generator=gen), "cursor": 0}


def ensemble_loss(members: list[Member], xp: torch.Tensor, y: torch.Tensor, eot: Transformations) -> torch.Tensor:
    """The mean over members and over ``eot.cfg.draws`` transformations (none: the batch as it is) of the members'
    cross-entropy on the perturbed batch ``xp``."""
    draws = [eot.draw(*xp.shape) for _ in range(eot.cfg.draws)] or [None]
    total = 0.0
    for d in draws:
        xt = xp if d is None else eot.apply(xp, d)
        for m in members:
            total = total + F.cross_entropy(m.model(_on(m.model, xt)), _on(m.model, y)).cpu()
    return total / (len(draws) * len(members))


def descend_ensemble(members: list[Member], pert: ClassPatterns, data: TrainingSet, gen: torch.Generator,
                     eot: Transformations, steps: int) -> tuple[float, float]:
    """A round's second half: for every batch, ``steps`` descent steps of the patterns on :func:`ensemble_loss`;
    returns the loss at the first and at the last step, averaged over the batches."""
    for m in members:
        m.model.eval()
    first, last, batches = 0.0, 0.0, 0
    for idx in torch.randperm(len(data.labels), generator=gen).split(data.batch_size):
        x, y, ln = data.waveforms[idx], data.labels[idx], data.lengths[idx]
        var = pert.variable(idx, y)
        for step in range(steps):
            v = var.detach().requires_grad_(True)
            loss = ensemble_loss(members, pert.perturbed(v, idx, x, y, ln), y, eot)
            (g,) = torch.autograd.grad(loss, v)
            var = pert.descend(v.detach(), g, idx, y)
            first += loss.item() if step == 0 else 0.0
            last += loss.item() if step == steps - 1 else 0.0
        pert.store(var, idx, y)
        batches += 1
    return first / batches, last / batches


def ensemble_min_min(data: TrainingSet, members_data: list[TrainingSet], pert: ClassPatterns, seed: int,
                     eot: Transformations, cfg: "EnsembleEMConfig") -> dict:
    """Min-min (defenses/_minmin.py) against every member at once (module docstring); returns the record."""
    import time
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    members = [Member(d, gen) for d in members_data]
    started, history, stopped = time.perf_counter(), [], False
    for round_ in range(1, cfg.max_rounds + 1):
        for m in members:
            train_surrogate(m.model, m.opt, pert, m.data, m.loop, gen, cfg.train_batches, m.data.batch_size, 0.0, 1)
        first, last = descend_ensemble(members, pert, data, gen, eot, cfg.steps)
        accs = [round(accuracy(m.model, pert, m.data), 4) for m in members]
        history.append({"round": round_, "train_accuracy": accs, "descent_loss": [round(first, 4), round(last, 4)],
                        "seconds": round(time.perf_counter() - started, 1)})
        data.log(f"  ensemble min-min round {round_}: members' accuracy on the perturbed training clips "
                 f"{', '.join(f'{a:.3f}' for a in accs)}; descent loss {first:.3f} -> {last:.3f}")
        stopped = min(accs) >= cfg.stop_accuracy and round_ >= cfg.min_rounds
        if stopped:
            break
    return {"rounds": history, "stop_rule_met": stopped, "seconds": round(time.perf_counter() - started, 1),
            "surrogates": [m.data.description for m in members], "seed_source": "key", "device": str(data.device),
            "eot": eot.record()}


class EnsembleEMProtection(Protection):
    """Class patterns and how to add them again (any clip of a known class)."""

    name = "ensemble-em"

    def __init__(self, params: dict, key_fingerprint: str, sample_rate: int, num_classes: int, optimisation: dict,
                 patterns: torch.Tensor):
        self.params, self.key_fingerprint, self.optimisation = params, key_fingerprint, optimisation
        self.sample_rate, self.num_classes, self.patterns = sample_rate, num_classes, patterns

    def apply(self, waveforms, labels, lengths=None, filter_classes=None, **ablation):
        n, t = waveforms.shape
        lengths = lengths if lengths is not None else torch.full((n,), t, dtype=torch.long)
        cls = (labels if filter_classes is None else filter_classes).long()
        margin = self.params.get("masking_margin_db")
        masking = None if margin is None else (self.sample_rate, margin, None)
        return add_patterns(waveforms, fit_length(self.patterns, t)[cls].to(waveforms), span_mask(waveforms, lengths),
                            self.params["snr_db"], masking)

    def ablation_variants(self, waveforms, labels, lengths, sample_rate, seed=0):
        from defenses.base import other_classes
        return {"clean": waveforms, "true": self.apply(waveforms, labels, lengths),
                "mixed_filters": self.apply(waveforms, labels, lengths,
                                            filter_classes=other_classes(labels, self.num_classes, seed + 1))}

    def arrays(self):
        return {"patterns": self.patterns}

    def to_dict(self) -> dict:
        return {"defense": self.name, "params": self.params, "key_fingerprint": self.key_fingerprint,
                "sample_rate": self.sample_rate, "num_classes": self.num_classes, "optimisation": self.optimisation,
                "arrays": "protection.pt"}

    @classmethod
    def from_dict(cls, record: dict, arrays: dict | None = None) -> "EnsembleEMProtection":
        if not arrays or "patterns" not in arrays:
            raise ValueError("an ensemble-em record needs its arrays (protection.pt beside protection.json)")
        return cls(record["params"], record["key_fingerprint"], record["sample_rate"], record["num_classes"],
                   record["optimisation"], arrays["patterns"])


@DEFENSES.register("ensemble-em")
class EnsembleEM(OptimisedDefense):
    """Class-wise error-minimising noise made by min-min against several surrogates, through random
    transformations, within a per-clip budget."""

    Config = EnsembleEMConfig
    record_type = EnsembleEMProtection
    additive = True
    seed_label = "ensemble-em/v1/surrogate"

    @classmethod
    def example_config(cls, key):
        """One short round against two tiny members, with one transformation draw per step."""
        return {"key": key, "max_rounds": 1, "train_batches": 1, "steps": 2,
                "surrogates": [{}, {"model": {"type": "linear"}}], "eot": {"draws": 1}}

    def surrogate_overrides(self) -> dict:
        return {}  # the members' changes are in ``surrogates``, each applied to the recipe on its own

    def surrogate_variants(self) -> list[dict]:
        return [m.model_dump() for m in self.config.surrogates]  # each checked against the recipe at the door

    def members(self, data: TrainingSet) -> list[TrainingSet]:
        """Each member's training set: the recipe changed by its ``surrogates`` entry, or (a caller that gives no
        ``surrogate_with``) ``data`` itself, a fresh draw of the same surrogate for every member."""
        if data.surrogate_with is None:
            return [data] * len(self.config.surrogates)
        return [data.surrogate_with(m.model_dump()) for m in self.config.surrogates]

    def derive_from(self, data: TrainingSet) -> EnsembleEMProtection:
        cfg: EnsembleEMConfig = self.config
        key = self._key()
        seed = self.surrogate_seed()
        pert = ClassPatterns(data, cfg.snr_db, cfg.masking_margin_db, cfg.step_size,
                             torch.Generator().manual_seed(seed))
        eot = Transformations(cfg.eot, data.sample_rate, derive_seed(key, "ensemble-em/v1/eot", 0) % (2 ** 31))
        members = self.members(data)
        data.log(f"ensemble-em: optimising class-wise noise on {len(data.labels)} clips against "
                 f"{', '.join(m.description or '?' for m in members)} ({cfg.eot.draws} transformation draw(s) a step)")
        record = ensemble_min_min(data, members, pert, seed, eot, cfg)
        params = cfg.model_dump(exclude={"key", "key_file", "type"}, mode="json")
        return EnsembleEMProtection(params, fingerprint(key), data.sample_rate, data.num_classes, record,
                                    pert.patterns.float())
