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
  ``eot.lowpass_hz``, white noise at an SNR drawn in ``eot.noise_snr_db``; and, each with its own probability
  (0, off, by default: then a draw, its hash and the noise are what they were before them), SpecAugment-style masks
  on the waveform (a time span of up to ``eot.time_mask_seconds`` zeroed; a band of up to ``eot.freq_mask_hz``
  removed by an FFT brick wall) and a codec proxy (a brick-wall low-pass at ``eot.codec_hz / 2`` and
  ``eot.codec_bits``-bit quantisation with a straight-through gradient: the ``codec`` attack's default resample and
  bits steps; not its MP3); all differentiable;
- ``pattern``: ``waveform`` (the default), one pattern as long as the clips per class, or ``tile``, a timing-free
  parametrisation: one tile of ``tile_seconds`` per class repeated over every clip from a key-derived per-clip
  offset (:class:`TilePatterns`), so that a shift of the clip only moves the tile's phase (the surrogates train and
  the tiles descend at every phase); new clips and files get the tile from its first sample; or ``filter``: the
  class in the noise's colour, as ``em-filter`` makes it (one FIR filter of ``filter_taps`` taps per class on every
  clip's own white noise, seeded from the clip's samples and a key-derived salt, "ensemble-em/v1/noise"): no
  waveform is shared by a class's clips, so orthogonal projection finds none;
- the stop rule: every member's accuracy on the perturbed training clips reaches ``stop_accuracy`` (at most
  ``max_rounds`` rounds).

Everything random comes from seeds derived from the key (HMAC): the members' weights and batch order
("ensemble-em/v1/surrogate") and the transformations ("ensemble-em/v1/eot", a generator of its own). The record keeps
the settings, each member's description, the accuracies and the descent loss (first and last step) per round, the
number of transformation draws and a SHA-256 chain over all drawn parameters (so two runs can be compared), never
the key.

``lab protect --defense ensemble-em`` optimises it on a collection's own files (mono working clips at one rate, see
lab/protect/optimise.py; each member's front-end and model built by the spine for those clips) with a checkpoint
after every round (:func:`ensemble_state`: the patterns, every member's weights, optimiser and batch order, the
loop's, torch's and the transformations' generators, the history; an interrupted run resumes after its last round
and ends where an uninterrupted one ends), then writes it onto each file at the file's own rate and length
(:class:`EnsembleEMFiles`, :data:`MAPPING`): the class pattern resampled, repeated over the file and scaled per
channel to ``snr_db`` (then shaped to the masking budget when ``masking_margin_db`` is set), as em-noise's class-wise
noise (the mapping is shared: defenses._minmin.ClassPatternsOnFiles; a long file is written a block at a time with
the very bytes of the whole file, not with a masking budget).

``mode: sample-wise`` (with ``pattern: waveform`` only): every training clip its own noise, as em-noise's sample-wise
mode makes it (:class:`defenses._samplewise.SampleNoise`: inside each clip's SNR budget, or its masking budget),
descended on the same ensemble loss through the same transformations. The record is em-noise's sample-wise one (the
noise as float16 and each clip's SHA-256; a clip the noise was not made for is left unchanged), and lab protect writes
it onto the files it was optimised on with em-noise's sample-wise mapping (:data:`defenses._samplewise.MAPPING`).

Not in this version: the robust inner step (``rho``), a spectral-envelope parametrisation, an MP3 or Opus proxy in
the transformations.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, SecretStr, field_validator, model_serializer, model_validator

from defenses._minmin import (FILTERED_NOISE_MAPPING, ClassFilters, ClassPatterns, ClassPatternsOnFiles,
                              FilteredNoiseOnFiles, MinMinSettings, OptimisedDefense, Perturbation, SurrogateConfig,
                              _on, _on_cpu, accuracy, add_class_patterns, class_patterns_mapping, clip_noise, filtered,
                              masking_of, span_mask, train_surrogate)
from defenses._samplewise import EMNoiseProtection, SampleNoise, clip_hash
from defenses.base import DEFENSES, Protection, TrainingSet, WorkingClips
from lab.augment import StrongChain, augment_chain
from lab.config import PluginConfig, Section
from lab.dsp import band_limit, fit_length, quantise_ste, tile_rows, zero_span
from lab.errors import LabError
from lab.keys import derive_seed, fingerprint
from lab.masking import MaskingBudget, check_budget

DEFAULT_MEMBERS = ({"model": {"type": "cnn"}, "features": {"type": "logmel"}},
                   {"model": {"type": "lstm"}, "features": {"type": "mfcc"}},
                   {"model": {"type": "linear"}, "features": {"type": "logmel"}},
                   {"model": {"type": "cnn"}, "features": {"type": "raw"}})


class EOTConfig(Section):
    """The expectation over transformations inside every descent step (``draws`` 0: none). The masks and the codec
    proxy are off by default (probability 0): then a draw, its hash and the noise are what they were before them."""

    draws: int = Field(2, ge=0)
    p: float = Field(0.5, ge=0, le=1)
    shift_seconds: float = Field(0.1, ge=0)
    gain_db: float = Field(6.0, ge=0)
    lowpass_hz: tuple[float, float] = (1500.0, 3500.0)
    noise_snr_db: tuple[float, float] = (20.0, 40.0)
    time_mask_p: float = Field(0.0, ge=0, le=1)
    time_mask_seconds: float = Field(0.1, gt=0)
    freq_mask_p: float = Field(0.0, ge=0, le=1)
    freq_mask_hz: float = Field(500.0, gt=0)
    codec_p: float = Field(0.0, ge=0, le=1)
    codec_hz: float = Field(4000.0, gt=0)
    codec_bits: int = Field(8, ge=1, le=24)
    strong_augment: StrongChain | None = None

    @model_serializer(mode="wrap")
    def _omit_strong_augment_when_off(self, handler):
        """``strong_augment`` left out while off: the dump of every earlier configuration (its cache file, records
        and attack-matrix cells) stays what it was."""
        data = handler(self)
        if isinstance(data, dict) and data.get("strong_augment", 0) is None:
            del data["strong_augment"]
        return data

    @model_validator(mode="after")
    def _one_draw(self):
        if self.strong_augment is not None and max(self.time_mask_p, self.freq_mask_p, self.codec_p) > 0:
            raise ValueError("strong_augment replaces the built-in draw (its spec_mask step is the mask); give "
                             "time_mask_p, freq_mask_p and codec_p 0 with it")
        return self

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
    mode: Literal["class-wise", "sample-wise"] = "class-wise"
    snr_db: float | None = 30.0
    surrogates: list[SurrogateConfig] = Field(default_factory=lambda: [SurrogateConfig(**m) for m in DEFAULT_MEMBERS],
                                              min_length=1)
    eot: EOTConfig = Field(default_factory=EOTConfig)
    pattern: Literal["waveform", "tile", "filter"] = "waveform"
    tile_seconds: float = Field(0.25, gt=0)
    filter_taps: int = Field(65, ge=2, le=4096)

    @model_serializer(mode="wrap")
    def _omit_masking_when_off(self, handler):
        """MaskingBudget's rule (the field left out while off), and ``filter_taps`` left out unless the pattern is
        ``filter``: the dump of every earlier configuration, and so its cache file, records and attack-matrix cells,
        stays what it was."""
        data = handler(self)
        if isinstance(data, dict):
            if "masking_margin_db" in data and data["masking_margin_db"] is None:
                del data["masking_margin_db"]
            if data.get("pattern") != "filter":
                data.pop("filter_taps", None)
        return data

    @model_validator(mode="after")
    def _supported(self):
        check_budget(self.snr_db, None, self.masking_margin_db)
        if self.rho:
            raise ValueError("ensemble-em has no robust inner step yet: leave rho at 0")
        if self.mode == "sample-wise" and self.pattern != "waveform":
            raise ValueError(f"mode sample-wise takes pattern waveform (every clip its own noise); pattern "
                             f"{self.pattern!r} is a class-wise parametrisation")
        if self.surrogate.model_dump():
            raise ValueError("ensemble-em takes its surrogates in 'surrogates' (a list of {model, features, train}), "
                             "not 'surrogate'")
        return self


class TilePatterns(ClassPatterns):
    """The timing-free parametrisation (``pattern: tile``): one unit-RMS tile of ``tile`` samples per class (C, L),
    repeated over every clip from a per-clip offset (key-derived, uniform in [0, L), fixed for the run), then scaled
    per clip to the SNR target (and shaped to the masking budget) as :class:`ClassPatterns`. A clip's noise is thus
    periodic and its class signal is the same tile wherever the clip starts: shifting a clip by s samples only moves
    the tile's phase, and the surrogates are trained and the tiles descended over every phase."""

    def __init__(self, data: TrainingSet, snr_db, margin_db, step_size, gen: torch.Generator, tile: int,
                 offsets_gen: torch.Generator):
        self.tile = tile
        super().__init__(data, snr_db, None, step_size, gen, margin_db)
        self.offsets = torch.randint(0, tile, (len(data.labels),), generator=offsets_gen)

    def start(self, data, gen):
        return torch.randn(data.num_classes, self.tile, generator=gen).to(data.waveforms)

    def rows(self, var, idx, y, t):
        return tile_rows(var[y], self.offsets[idx], t)

    def state(self):
        return {"patterns": self.patterns, "offsets": self.offsets}

    def restore(self, state):
        self.patterns, self.offsets = state["patterns"].to(self.patterns), state["offsets"].clone()


class Transformations:
    """Random transformations of waveform batches (EOTConfig), drawn from their own generator; every draw's
    parameters go into a SHA-256 chain (the record's ``draws_sha256``: each draw hashed after the chain so far, so
    that the chain, a hex text, goes into a checkpoint with the generator and the count)."""

    def __init__(self, cfg: EOTConfig, sample_rate: int, seed: int):
        self.cfg, self.sample_rate = cfg, sample_rate
        self.gen = torch.Generator().manual_seed(seed)
        self.made, self.chain = 0, hashlib.sha256().hexdigest()

    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=self.gen, dtype=torch.float64)

    def draw(self, n: int, t: int) -> dict[str, torch.Tensor]:
        """One draw for ``n`` clips of ``t`` samples: per clip, each transformation on with probability ``p`` (the
        masks and the codec proxy: with their own, drawn after the rest and only when above 0); with
        ``strong_augment``, the seed of one pass of that chain (lab.augment: every step's parameters come from it)."""
        c = self.cfg
        if c.strong_augment is not None:
            return self._hashed({"chain_seed": torch.randint(0, 2 ** 62, (1,), generator=self.gen)})
        on = torch.rand(4, n, generator=self.gen) < c.p
        reach = int(round(c.shift_seconds * self.sample_rate))
        shift = torch.randint(-reach, reach + 1, (n,), generator=self.gen) * on[0]
        inf = torch.full((n,), float("inf"), dtype=torch.float64)
        gain = torch.where(on[1], 10 ** (self._uniform(n, -c.gain_db, c.gain_db) / 20), torch.ones_like(inf))
        cutoff = torch.where(on[2], self._uniform(n, *c.lowpass_hz), inf)
        snr = torch.where(on[3], self._uniform(n, *c.noise_snr_db), inf)
        noise = torch.randn(n, t, generator=self.gen)
        return self._hashed({"shift": shift, "gain": gain, "cutoff": cutoff, "snr": snr, "noise": noise,
                             **self._draw_masks(n, t)})

    def _hashed(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``params``, counted and hashed after the chain so far."""
        digest = hashlib.sha256(bytes.fromhex(self.chain))
        for v in params.values():
            digest.update(v.contiguous().numpy().tobytes())
        self.made, self.chain = self.made + 1, digest.hexdigest()
        return params

    def _draw_masks(self, n: int, t: int) -> dict[str, torch.Tensor]:
        """The SpecAugment-style masks and the codec proxy, each only when its probability is above 0 (so that a
        draw without them takes nothing more from the generator): a time mask of up to ``time_mask_seconds`` at a
        uniform start, a frequency band of up to ``freq_mask_hz`` within (0, sr/2), the codec proxy on or off."""
        c, out = self.cfg, {}
        if c.time_mask_p > 0:
            on = torch.rand(n, generator=self.gen) < c.time_mask_p
            most = min(t, int(round(c.time_mask_seconds * self.sample_rate)))
            width = (torch.rand(n, generator=self.gen) * (most + 1)).long().clamp(max=most) * on
            out["tmask_start"] = (torch.rand(n, generator=self.gen) * (t - width + 1)).long().clamp(max=t - width)
            out["tmask_width"] = width
        if c.freq_mask_p > 0:
            on = torch.rand(n, generator=self.gen) < c.freq_mask_p
            nyquist = self.sample_rate / 2
            width = torch.where(on, self._uniform(n, 0.0, min(c.freq_mask_hz, nyquist)), torch.zeros(n).double())
            low = self._uniform(n, 0.0, 1.0) * (nyquist - width)
            out["fmask_low"], out["fmask_high"] = torch.where(on, low, -1.0), torch.where(on, low + width, -2.0)
        if c.codec_p > 0:
            out["codec"] = torch.rand(n, generator=self.gen) < c.codec_p
        return out

    def apply(self, x: torch.Tensor, d: dict[str, torch.Tensor]) -> torch.Tensor:
        """``x`` (n, t) transformed by draw ``d`` (differentiable): the codec proxy, shift, low-pass and frequency
        mask, time mask, added noise, gain."""
        n, t = x.shape
        if "chain_seed" in d:
            return augment_chain(x, self.sample_rate, self.cfg.strong_augment,
                                 torch.Generator().manual_seed(int(d["chain_seed"])))
        if "codec" in d:
            x = self._codec(x, d["codec"])
        pos = (torch.arange(t)[None, :] - d["shift"][:, None]) % t
        x = x.gather(1, pos.to(x.device))
        freqs = torch.fft.rfftfreq(t, 1.0 / self.sample_rate)
        keep = freqs[None, :] <= d["cutoff"][:, None]
        if "fmask_low" in d:
            keep &= (freqs[None, :] < d["fmask_low"][:, None]) | (freqs[None, :] > d["fmask_high"][:, None])
        keep = keep.to(x.dtype)
        if not bool(keep.all()):
            x = torch.fft.irfft(torch.fft.rfft(x) * keep.to(x.device), n=t)
        if "tmask_start" in d:
            x = zero_span(x, d["tmask_start"], d["tmask_width"])
        rms = x.detach().pow(2).mean(dim=1, keepdim=True).sqrt()
        x = x + d["noise"].to(x) * rms * (10 ** (-d["snr"] / 20)).to(x)[:, None]
        return x * d["gain"].to(x)[:, None]

    def _codec(self, x: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
        """The codec proxy on the rows where ``on``: an FFT brick-wall low-pass at ``codec_hz / 2`` (the ``codec``
        attack's resampling down to ``resample_hz`` and back), then ``codec_bits``-bit quantisation with a
        straight-through gradient (its ``bits`` step)."""
        if not bool(on.any()):
            return x
        squeezed = quantise_ste(band_limit(x, self.sample_rate, 0.0, self.cfg.codec_hz / 2), self.cfg.codec_bits)
        return torch.where(on[:, None].to(x.device), squeezed, x)

    def record(self) -> dict:
        return {**self.cfg.model_dump(mode="json"), "draws_made": self.made, "draws_sha256": self.chain,
                "seed_source": "key"}

    def state(self) -> dict:
        return {"generator": self.gen.get_state(), "made": self.made, "chain": self.chain}

    def restore(self, state: dict) -> None:
        self.gen.set_state(state["generator"])
        self.made, self.chain = int(state["made"]), str(state["chain"])


class Member:
    """One surrogate of the ensemble: its training set (its own surrogate factory and settings), model, optimiser,
    and batch order."""

    def __init__(self, data: TrainingSet, gen: torch.Generator):
        self.data = data
        self.model = data.new_surrogate().to(data.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=data.lr, weight_decay=data.weight_decay)
        self.loop = {"order": torch.randperm(len(data.labels), generator=gen), "cursor": 0}

    def state(self) -> dict:
        """The member as a round left it (on the CPU): weights, optimiser, batch order and cursor."""
        return {"model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                "optimizer": _on_cpu(self.opt.state_dict()), "order": self.loop["order"].clone(),
                "cursor": self.loop["cursor"]}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.loop = {"order": state["order"].clone(), "cursor": int(state["cursor"])}


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


def descend_ensemble(members: list[Member], pert: Perturbation, data: TrainingSet, gen: torch.Generator,
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


def ensemble_min_min(data: TrainingSet, members_data: list[TrainingSet], pert: Perturbation, seed: int,
                     eot: Transformations, cfg: "EnsembleEMConfig") -> dict:
    """Min-min (defenses/_minmin.py) against every member at once (module docstring); returns the record.

    As :func:`defenses._minmin.min_min`: after every round ``data.checkpoint`` (when given) receives the loop's whole
    state (:func:`ensemble_state`), and with ``data.resume`` set to such a state the loop goes on after its round,
    ending (in one process) exactly where an uninterrupted run ends."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    members = [Member(d, gen) for d in members_data]
    loop = {"round": 0, "history": [], "stopped": False, "seconds": 0.0}
    if data.resume is not None:
        loop = resume_ensemble(data.resume, members, gen, pert, eot)
    started = time.perf_counter() - loop["seconds"]
    for round_ in range(loop["round"] + 1, cfg.max_rounds + 1):
        if loop["stopped"]:
            break
        for m in members:
            train_surrogate(m.model, m.opt, pert, m.data, m.loop, gen, cfg.train_batches, m.data.batch_size, 0.0, 1)
        first, last = descend_ensemble(members, pert, data, gen, eot, cfg.steps)
        accs = [round(accuracy(m.model, pert, m.data), 4) for m in members]
        loop["seconds"] = time.perf_counter() - started
        loop["history"].append({"round": round_, "train_accuracy": accs, "descent_loss": [round(first, 4),
                                                                                          round(last, 4)],
                                "seconds": round(loop["seconds"], 1)})
        data.log(f"  ensemble min-min round {round_}: members' accuracy on the perturbed training clips "
                 f"{', '.join(f'{a:.3f}' for a in accs)}; descent loss {first:.3f} -> {last:.3f} "
                 f"({loop['seconds']:.0f} s)")
        loop["round"] = round_
        loop["stopped"] = min(accs) >= cfg.stop_accuracy and round_ >= cfg.min_rounds
        if data.checkpoint is not None:
            data.checkpoint(ensemble_state(loop, members, gen, pert, eot))
    return {"rounds": loop["history"], "stop_rule_met": loop["stopped"],
            "seconds": round(time.perf_counter() - started, 1), "surrogates": [m.data.description for m in members],
            "seed_source": "key", "device": str(data.device), "eot": eot.record()}


def ensemble_state(loop: dict, members: list[Member], gen: torch.Generator, pert: Perturbation,
                   eot: Transformations) -> dict:
    """Everything the ensemble loop needs to go on after this round, as tensors and plain values (on the CPU): the
    round and its history, the patterns, every member (weights, optimiser, batch order), the loop's generator,
    torch's, and the transformations' generator, count and chain."""
    state = {"round": loop["round"], "stopped": loop["stopped"], "seconds": loop["seconds"],
             "history": [dict(h) for h in loop["history"]], "generator": gen.get_state(),
             "torch_rng": torch.get_rng_state(), "members": [m.state() for m in members], "eot": eot.state(),
             "perturbation": {k: v.detach().cpu().clone() for k, v in pert.state().items()}}
    if any(next(m.model.parameters()).is_cuda for m in members):
        state["cuda_rng"] = torch.cuda.get_rng_state()
    return state


def resume_ensemble(state: dict, members: list[Member], gen: torch.Generator, pert: Perturbation,
                    eot: Transformations) -> dict:
    """Put every member, the generators, the transformations and the patterns back as :func:`ensemble_state` saw
    them; returns the loop's own state."""
    if len(state["members"]) != len(members):
        raise ValueError(f"the checkpoint has {len(state['members'])} members, this ensemble {len(members)}")
    for m, saved in zip(members, state["members"]):
        m.restore(saved)
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"])
    eot.restore(state["eot"])
    pert.restore(state["perturbation"])
    return {"round": int(state["round"]), "history": [dict(h) for h in state["history"]],
            "stopped": bool(state["stopped"]), "seconds": float(state["seconds"])}


class EnsembleEMProtection(Protection):
    """Class patterns and how to add them again (any clip of a known class)."""

    name = "ensemble-em"
    on_collection = True  # lab protect writes it onto a collection's files: see files_at

    def __init__(self, params: dict, key_fingerprint: str, sample_rate: int, num_classes: int, optimisation: dict,
                 patterns: torch.Tensor | None, salt: str | None = None, noise: torch.Tensor | None = None,
                 hashes: list[str] | None = None):
        self.params, self.key_fingerprint, self.optimisation = params, key_fingerprint, optimisation
        self.sample_rate, self.num_classes, self.patterns = sample_rate, num_classes, patterns
        self.salt = salt  # pattern 'filter': derives every clip's noise; as secret as the key
        self.sample_wise = None  # mode 'sample-wise': em-noise's record (the float16 noise, each clip's SHA-256)
        if self.params.get("mode") == "sample-wise":
            self.sample_wise = EMNoiseProtection(params, key_fingerprint, sample_rate, num_classes, optimisation,
                                                 noise=noise, hashes=hashes)

    def apply(self, waveforms, labels, lengths=None, filter_classes=None, **ablation):
        if self.sample_wise is not None:
            return self.sample_wise.apply(waveforms, labels, lengths)
        n, t = waveforms.shape
        lengths = lengths if lengths is not None else torch.full((n,), t, dtype=torch.long)
        cls = (labels if filter_classes is None else filter_classes).long()
        if self.params.get("pattern") == "filter":
            rows = filtered(clip_noise(waveforms, lengths, self.salt).to(waveforms), self.patterns[cls].to(waveforms))
        else:
            rows = self.clip_patterns(t)[cls].to(waveforms)
        return add_class_patterns(waveforms, rows, span_mask(waveforms, lengths), self.params["snr_db"], None,
                                  masking_of(self.params, self.sample_rate))

    def clip_patterns(self, t: int) -> torch.Tensor:
        """(C, t): each class's noise on a clip of ``t`` samples before scaling: the pattern cropped or zero-padded
        (``pattern: waveform``), or the tile repeated from its first sample (``pattern: tile``, offset 0: the tile
        was optimised at every offset)."""
        if self.params.get("pattern", "waveform") == "tile":
            return tile_rows(self.patterns, torch.zeros(len(self.patterns), dtype=torch.long), t)
        return fit_length(self.patterns, t)

    def working_patterns(self, clip_samples: int) -> torch.Tensor:
        """What is written onto files (:class:`EnsembleEMFiles`): the patterns as they are, or the tiles repeated a
        whole number of times to cover a working clip (so that the repetition over a file keeps the tile's
        period)."""
        if self.params.get("pattern", "waveform") == "tile":
            tile = self.patterns.shape[1]
            return self.clip_patterns(-(-clip_samples // tile) * tile)
        return self.patterns

    def ablation_variants(self, waveforms, labels, lengths, sample_rate, seed=0):
        from defenses.base import other_classes
        if self.sample_wise is not None:  # no class pattern to swap
            return self.sample_wise.ablation_variants(waveforms, labels, lengths, sample_rate, seed)
        return {"clean": waveforms, "true": self.apply(waveforms, labels, lengths),
                "mixed_filters": self.apply(waveforms, labels, lengths,
                                            filter_classes=other_classes(labels, self.num_classes, seed + 1))}

    def arrays(self):
        if self.sample_wise is not None:
            return self.sample_wise.arrays()
        return {"patterns": self.patterns}

    def to_dict(self) -> dict:
        out = {"defense": self.name, "params": self.params, "key_fingerprint": self.key_fingerprint,
               "sample_rate": self.sample_rate, "num_classes": self.num_classes, "optimisation": self.optimisation,
               "arrays": "protection.pt"}
        if self.salt is not None:
            out["noise_salt"] = self.salt
        if self.sample_wise is not None:
            out["clip_sha256"] = self.sample_wise.hashes
        return out

    @classmethod
    def from_dict(cls, record: dict, arrays: dict | None = None) -> "EnsembleEMProtection":
        wanted = "noise" if record["params"].get("mode") == "sample-wise" else "patterns"
        if not arrays or wanted not in arrays:
            raise ValueError("an ensemble-em record needs its arrays (protection.pt beside protection.json)")
        return cls(record["params"], record["key_fingerprint"], record["sample_rate"], record["num_classes"],
                   record["optimisation"], arrays.get("patterns"), record.get("noise_salt"), arrays.get("noise"),
                   record.get("clip_sha256"))

    def files_at(self, sample_rate: int, working: WorkingClips) -> Protection:
        if self.sample_wise is not None:  # em-noise's sample-wise mapping, under this defense's name
            files = self.sample_wise.files_at(sample_rate, working)
            files.defense = self.name
            return files
        return EnsembleEMFiles(self, sample_rate, working)


MAPPING = class_patterns_mapping(", shaped to the masking budget when masking_margin_db is set")
FILTER_MAPPING = "pattern 'filter': " + FILTERED_NOISE_MAPPING
TILE_MAPPING = ("pattern 'tile': the class's tile (arrays 'patterns', a row per class, at working_rate) repeated a "
                "whole number of times to cover clip_samples, then: " + MAPPING)


class EnsembleEMFiles(Protection):
    """ensemble-em optimised by lab protect on a collection's working clips, written onto the collection's own
    files at ``sample_rate`` (:meth:`EnsembleEMProtection.files_at`; :data:`MAPPING` says how, the shared
    :class:`defenses._minmin.ClassPatternsOnFiles` does it). The rows given to :meth:`apply` are the channels of
    ONE file (as lab protect's worker gives them)."""

    file_by_file = True

    def __init__(self, source: EnsembleEMProtection, sample_rate: int, working: WorkingClips):
        self.defense, self.params = source.name, source.params
        self.key_fingerprint, self.num_classes = source.key_fingerprint, source.num_classes
        self.sample_rate, self.working_rate, self.clip_samples = sample_rate, working.sample_rate, working.clip_samples
        pattern = self.params.get("pattern", "waveform")
        self.mapping = {"tile": TILE_MAPPING, "filter": FILTER_MAPPING}.get(pattern, MAPPING)
        if pattern == "filter":  # each channel's own noise through its class's filter (no block hooks)
            self.files = FilteredNoiseOnFiles(source.patterns, source.salt, working.sample_rate, sample_rate,
                                              self.params["snr_db"], None, self.params.get("masking_margin_db"))
        else:
            self.files = ClassPatternsOnFiles(source.working_patterns(working.clip_samples), working.sample_rate,
                                              sample_rate, self.params["snr_db"],
                                              None, self.params.get("masking_margin_db"))

    def apply(self, waveforms, labels, lengths=None, **ablation):
        return self.files.apply(waveforms, labels)

    # a long file a block at a time: the shared mapping's blocks (not with a masking budget)
    @property
    def block_first_pass(self) -> bool:
        return self.files.first_pass

    def block_plan(self, cls, frames, channels):
        return self.files.block_plan(cls, frames, channels)

    def block_stats(self, plan, x, start):
        self.files.block_stats(plan, x, start)

    def apply_block(self, plan, x, lo, a, b):
        return self.files.apply_block(plan, x[:, a - lo:b - lo], a, b)

    def to_dict(self) -> dict:
        return {"defense": self.defense, "params": self.params, "key_fingerprint": self.key_fingerprint,
                "num_classes": self.num_classes, "sample_rate": self.sample_rate, "working_rate": self.working_rate,
                "clip_samples": self.clip_samples, "mapping": self.mapping}


@DEFENSES.register("ensemble-em")
class EnsembleEM(OptimisedDefense):
    """Class-wise error-minimising noise made by min-min against several surrogates, through random
    transformations, within a per-clip budget."""

    Config = EnsembleEMConfig
    record_type = EnsembleEMProtection
    additive = True
    seed_label = "ensemble-em/v1/surrogate"
    members_replace_surrogate = True  # the members are trained, never the recipe's own model (the cache's name)
    cache_sources = (SampleNoise,)  # defenses/_samplewise.py: its code makes the sample-wise noise (the cache's name)

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
        pert = self.perturbation(data, key, seed)
        eot = Transformations(cfg.eot, data.sample_rate, derive_seed(key, "ensemble-em/v1/eot", 0) % (2 ** 31))
        members = self.members(data)
        data.log(f"ensemble-em: optimising {cfg.mode} noise on {len(data.labels)} clips against "
                 f"{', '.join(m.description or '?' for m in members)} ({cfg.eot.draws} transformation draw(s) a step, "
                 f"pattern {cfg.pattern})")
        record = {**ensemble_min_min(data, members, pert, seed, eot, cfg), "pattern": cfg.pattern}
        params = cfg.model_dump(exclude={"key", "key_file", "type"}, mode="json")
        if cfg.mode == "sample-wise":
            hashes = [clip_hash(w, int(n)) for w, n in zip(data.waveforms, data.lengths)]
            return EnsembleEMProtection(params, fingerprint(key), data.sample_rate, data.num_classes, record, None,
                                        noise=pert.noise.to(torch.float16), hashes=hashes)
        return EnsembleEMProtection(params, fingerprint(key), data.sample_rate, data.num_classes, record,
                                    pert.patterns.float(), getattr(pert, "salt", None))

    def perturbation(self, data: TrainingSet, key: str, seed: int) -> Perturbation:
        """The optimised variable: a pattern as long as the clips per class, or (``pattern: tile``) a tile of
        ``tile_seconds`` per class with per-clip offsets from the key ("ensemble-em/v1/tile"), or (``mode:
        sample-wise``) every clip's own noise."""
        cfg: EnsembleEMConfig = self.config
        gen = torch.Generator().manual_seed(seed)
        if cfg.mode == "sample-wise":
            return SampleNoise(data, cfg.snr_db, None, cfg.step_size, gen, cfg.masking_margin_db)
        if cfg.pattern == "waveform":
            return ClassPatterns(data, cfg.snr_db, None, cfg.step_size, gen, cfg.masking_margin_db)
        if cfg.pattern == "filter":
            salt = f"{derive_seed(key, 'ensemble-em/v1/noise'):016x}"
            return ClassFilters(data, cfg.snr_db, None, cfg.step_size, gen, cfg.masking_margin_db, cfg.filter_taps,
                                salt)
        tile, t = int(round(cfg.tile_seconds * data.sample_rate)), data.waveforms.shape[1]
        if not 1 < tile <= t:
            raise LabError(f"ensemble-em: tile_seconds {cfg.tile_seconds} gives a tile of {tile} samples; give one "
                             f"of 2 to {t} samples (at most the clips' {t / data.sample_rate:g} s)")
        offsets = torch.Generator().manual_seed(derive_seed(key, "ensemble-em/v1/tile", 0) % (2 ** 31))
        return TilePatterns(data, cfg.snr_db, cfg.masking_margin_db, cfg.step_size, gen, tile, offsets)
