"""``em-noise`` and ``robust-em``: error-minimising noise (Huang et al., "Unlearnable Examples", ICLR 2021) and its
robust variant (Fu et al., "Robust Unlearnable Examples", ICLR 2022), on the waveform.

The noise is optimised by min-min (defenses/_minmin.py) against a surrogate: the recipe's own model on its own
features by default (``surrogate`` changes them, e.g. ``{model: {type: lstm}}``), trained by the defense itself on the
perturbed clips while the noise is pushed to make the surrogate's loss small. The gradient reaches the waveform
through the recipe's differentiable front-end (torchaudio MFCC / log-mel, or the raw waveform).

- ``mode``: ``sample-wise`` (default: every training clip its own noise, the paper's strongest form) or
  ``class-wise`` (one noise pattern per class, added to every clip of the class).
- The budget, per clip, in the data owner's terms (``snr_db`` and/or ``linf``):

  * ``snr_db`` (default 30): every clip's SNR (its real audio against the noise, float64) is at least ``snr_db``.
    Sample-wise: the noise of clip n is kept inside the L2 ball of radius ``|x_n| 10^(-snr_db/20)`` (projected after
    every step; descent steps are normalised-gradient steps of ``step_size`` times that radius). Class-wise: the
    class pattern (unit RMS) is scaled, clip by clip, to exactly ``snr_db``, as ``classwise-noise`` does.
  * ``linf`` (waveform units, full scale 1.0): |noise| <= ``linf`` on every sample (clipped after the SNR scaling, so
    both hold). With ``linf`` alone the sample-wise steps are signed-gradient steps of ``step_size * linf``.

  * ``masking_margin_db`` (off by default): the ``masking`` budget (docs/masking.md): the noise's power in every
    frame and bin at most the clean clip's masking threshold plus the margin. Sample-wise: a projection
    (lab.masking.limit_to_threshold, with the clips' thresholds computed once) after every step, after the L2 and
    L-infinity ones, so the stored noise meets it; class-wise: the scaled class pattern shaped the same way inside
    the optimised function (differentiable), and whenever it is applied. Alone (no ``snr_db``, no ``linf``) the
    sample-wise steps are normalised-gradient steps of ``step_size`` times the L2 norm of noise that fills each
    clip's threshold.

  Noise goes only into each clip's real audio, never its zero padding. Silent clips get none.
- Stop rule (the paper's): the surrogate's accuracy on the perturbed training clips reaches ``stop_accuracy``
  (default 0.99), checked after every round; at most ``max_rounds`` rounds (the record says whether the rule was met
  and how long it took). ``steps`` descent steps per batch per round, ``train_batches`` surrogate batches per round.
- ``robust-em`` is the same with ``rho`` > 0 (default 0.001, L-infinity): each batch is first moved adversarially
  within +-``rho`` (``rho_steps`` PGD steps) before the surrogate trains on it and before the noise descends on it.
  Fu et al. keep the adversarial radius below the noise's own (their 4/255 against 8/255): ``rho`` should be smaller
  than the noise's typical amplitude (at 30 dB on FSDD about 0.0015 RMS).

Everything random (the surrogate's weights, batch order, the start of the noise) comes from a seed derived from the
key (HMAC, "em-noise/v1/surrogate"): the same key and data give the same noise in one process (tested). Across
processes it is floating-point arithmetic and not guaranteed bit-identical: two 2-thread runs of the CI positive
control differed from round 1 (surrogate accuracy 0.792 vs 0.799). Reproduce a run from its RECORD, which is exact.
Only the key's fingerprint is recorded.

What is recorded, and where: sample-wise noise is one tensor per training clip, stored as float16 in the run's
``protection.pt`` (:meth:`Protection.arrays`; the values applied are exactly these float16 values), with the SHA-256
of each clip's real samples in ``protection.json`` to find its noise again. Applied to a clip it was not optimised
for (the test set, a new file), sample-wise noise changes nothing: it exists only for the training clips, so its
``protected_test`` equals ``clean_test``. Class-wise noise applies to any clip of a known class. The noise is as
secret as the key: it never goes into a folder meant for publishing.

``lab protect`` optimises it on a collection's own files (mono working clips at one rate, see
lab/protect/optimise.py) and writes it onto each file at the file's own rate and length (:class:`EMNoiseFiles`,
:data:`MAPPING`): class-wise, the class pattern resampled, repeated over the file and scaled per channel to
``snr_db``; sample-wise, the noise of the file's own working clip resampled and added to the part of the file the
clip came from, then held to the budget per channel. A long file is written a block at a time with the very bytes
of the whole file (:class:`EMNoiseFiles`' block hooks; not with a masking budget), see docs/protect.md.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, SecretStr, model_validator

from defenses._minmin import (ClassPatterns, ClassPatternsOnFiles, MaskedNoise, MinMinSettings, OptimisedDefense,
                              Perturbation, add_class_patterns, masking_of, span_mask)
from defenses.base import DEFENSES, Protection, TrainingSet, WorkingClips, samples_hash, samples_hasher
from lab import dsp
from lab.config import PluginConfig
from lab.dsp import add_energy, change_scale, fit_length, limit_change, scaled_change, snr_radius
from lab.keys import fingerprint
from lab.masking import MaskingBudget, check_budget, limit_to_threshold

FP16_MARGIN = 0.999  # the L2 radius used in the optimisation: float16 storage then cannot push a clip below target


class EMNoiseConfig(PluginConfig, MinMinSettings, MaskingBudget):
    type: Literal["em-noise"] = "em-noise"
    key: SecretStr | None = None
    key_file: Path | None = None
    mode: Literal["sample-wise", "class-wise"] = "sample-wise"
    snr_db: float | None = 30.0
    linf: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _a_budget(self):
        check_budget(self.snr_db, self.linf, self.masking_margin_db)
        return self


class RobustEMConfig(EMNoiseConfig):
    type: Literal["robust-em"] = "robust-em"  # type: ignore[assignment]
    rho: float = Field(0.001, gt=0)


def clip_hash(waveform: torch.Tensor, length: int) -> str:
    """SHA-256 of a clip's real samples (float32), which finds its sample-wise noise again."""
    return hashlib.sha256(waveform[:length].detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()


class SampleNoise(Perturbation):
    """Per-clip noise (N, T) inside each clip's budget."""

    def __init__(self, data: TrainingSet, snr_db, linf, step_size, gen, margin_db=None):
        x = data.waveforms
        self.mask = span_mask(x, data.lengths)
        self.snr_db, self.linf, self.step = snr_db, linf, step_size
        self.masking = MaskedNoise(data, margin_db, linf)
        # (N, 1): the largest L2 norm of noise that keeps each clip's SNR >= snr_db, less the float16 margin
        self.radius = (snr_radius(x, snr_db) * FP16_MARGIN).to(x.dtype) if snr_db is not None else None
        start = torch.randn(x.shape, generator=gen).to(x) * self.mask
        self.reach = self.radius  # the L2 scale of a normalised-gradient step (None: signed steps of linf)
        if self.radius is None and linf is None:  # the masking budget alone: noise that fills the threshold
            self.reach = self.masking.filled(start, self.mask).norm(dim=1, keepdim=True).to(x.dtype)
        self.noise = self.project(start * 1e-3, torch.arange(len(x)))

    def project(self, d, idx):
        d = d * self.mask[idx]
        if self.linf is not None:
            d = d.clamp(-self.linf, self.linf)
        if self.radius is not None:
            norm = d.norm(dim=1, keepdim=True).clamp(min=1e-30)
            d = d * (self.radius[idx] / norm).clamp(max=1.0)
        return self.masking.limit(d, idx, self.mask[idx])

    def variable(self, idx, y):
        return self.noise[idx].clone()

    def perturbed(self, var, idx, x, y, lengths):
        return x + var

    def descend(self, var, grad, idx, y):
        if self.reach is not None:
            g = grad * self.mask[idx]
            step = self.step * self.reach[idx] * g / g.norm(dim=1, keepdim=True).clamp(min=1e-30)
        else:
            step = self.step * self.linf * grad.sign()
        return self.project(var - step, idx)

    def store(self, var, idx, y):
        self.noise[idx] = var.detach()

    def state(self):
        return {"noise": self.noise}

    def restore(self, state):
        self.noise = state["noise"].to(self.noise)


class EMNoiseProtection(Protection):
    """Optimised noise and how to add it again (sample-wise: by each clip's content hash)."""

    name = "em-noise"
    on_collection = True  # lab protect writes it onto a collection's files: see files_at

    def __init__(self, params: dict, key_fingerprint: str, sample_rate: int, num_classes: int, optimisation: dict,
                 noise: torch.Tensor | None = None, hashes: list[str] | None = None,
                 patterns: torch.Tensor | None = None):
        self.params = params
        self.key_fingerprint = key_fingerprint
        self.sample_rate = sample_rate
        self.num_classes = num_classes
        self.optimisation = optimisation
        self.noise = noise  # (N, T) float16, sample-wise
        self.hashes = hashes
        self.patterns = patterns  # (C, T) float32, class-wise
        self._row = {h: i for i, h in enumerate(hashes or [])}

    @property
    def mode(self) -> str:
        return self.params["mode"]

    def apply(self, waveforms, labels, lengths=None, filter_classes=None, **ablation):
        n, t = waveforms.shape
        lengths = lengths if lengths is not None else torch.full((n,), t, dtype=torch.long)
        mask = span_mask(waveforms, lengths)
        if self.mode == "class-wise":
            cls = (labels if filter_classes is None else filter_classes).long()
            pat = fit_length(self.patterns, t)
            return add_class_patterns(waveforms, pat[cls].to(waveforms), mask, self.params["snr_db"],
                                   self.params.get("linf"), masking=masking_of(self.params, self.sample_rate))
        out = waveforms.clone()
        for i in range(n):
            row = self._row.get(clip_hash(waveforms[i], int(lengths[i])))
            if row is None:
                continue  # not a clip the noise was optimised for: unchanged (see the module docstring)
            d = self.noise[row].to(waveforms.dtype)
            if self.params.get("linf") is not None:  # float16 storage may round a sample just past the bound
                d = d.clamp(-self.params.get("linf"), self.params.get("linf"))
            d = fit_length(d, t)
            out[i] = waveforms[i] + d * mask[i]
        return out

    def ablation_variants(self, waveforms, labels, lengths, sample_rate, seed=0):
        from defenses.base import other_classes
        out = {"clean": waveforms, "true": self.apply(waveforms, labels, lengths)}
        if self.mode == "class-wise":  # each clip with another class's pattern: is the class read from the noise?
            out["mixed_filters"] = self.apply(waveforms, labels, lengths,
                                              filter_classes=other_classes(labels, self.num_classes, seed + 1))
        return out

    def arrays(self):
        if self.mode == "class-wise":
            return {"patterns": self.patterns}
        return {"noise": self.noise}

    def to_dict(self) -> dict:
        out = {"defense": self.name, "params": self.params, "key_fingerprint": self.key_fingerprint,
               "sample_rate": self.sample_rate, "num_classes": self.num_classes, "optimisation": self.optimisation,
               "arrays": "protection.pt"}
        if self.mode == "sample-wise":
            out["clip_sha256"] = self.hashes
        return out

    @classmethod
    def from_dict(cls, record: dict, arrays: dict | None = None) -> "EMNoiseProtection":
        if not arrays:
            raise ValueError(f"a {record['defense']} record needs its arrays (protection.pt beside protection.json)")
        return cls(record["params"], record["key_fingerprint"], record["sample_rate"], record["num_classes"],
                   record["optimisation"], noise=arrays.get("noise"), hashes=record.get("clip_sha256"),
                   patterns=arrays.get("patterns"))


    def files_at(self, sample_rate: int, working: WorkingClips) -> "EMNoiseFiles":
        return EMNoiseFiles(self, sample_rate, working)


MAPPING = {
    "class-wise": "the file's class pattern (arrays 'patterns', a row per class, at working_rate) resampled to the "
                  "file's sample_rate (torchaudio.functional.resample), repeated to the file's length, scaled per "
                  "channel to snr_db exactly (silent channels get none), clipped to linf, added to every channel",
    "sample-wise": "the noise of the file's own working clip (arrays 'noise', the row whose entry in the record's "
                   "optimised.sources is the SHA-256 of the file's decoded samples, see defenses.base.samples_hash) "
                   "resampled from working_rate to the file's sample_rate (torchaudio.functional.resample), added to "
                   "the file's first frames (the part its working clip came from) in every channel, then scaled down "
                   "per channel until its SNR >= snr_db, clipped to linf",
}


_MAPPED: dict[tuple, torch.Tensor] = {}  # one arrays file per process (lab protect's run), memory-mapped


def mapped_noise(path: str) -> torch.Tensor:
    """The sample-wise noise of lab protect's arrays file ``path``, memory-mapped, loaded once per process (lab
    verify unpickles the protection for every file: it would otherwise map the file again each time)."""
    st = Path(path).stat()
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _MAPPED:
        _MAPPED.clear()
        _MAPPED[key] = torch.load(path, mmap=True, weights_only=True)["noise"]
    return _MAPPED[key]


class EMNoiseFiles(Protection):
    """em-noise optimised by lab protect on a collection's working clips, written onto the collection's own files
    at ``sample_rate`` (:meth:`EMNoiseProtection.files_at`; :data:`MAPPING` says how). The rows given to
    :meth:`apply` are the channels of ONE file (as lab protect's worker gives them)."""

    file_by_file = True

    def __init__(self, source: EMNoiseProtection, sample_rate: int, working: WorkingClips):
        self.defense, self.params, self.mode = source.name, source.params, source.mode
        self.key_fingerprint, self.num_classes = source.key_fingerprint, source.num_classes
        self.sample_rate, self.working_rate, self.clip_samples = sample_rate, working.sample_rate, working.clip_samples
        self.arrays_file = working.arrays
        self.rows = {h: i for i, h in enumerate(working.sources)} if self.mode == "sample-wise" else {}
        self._noise = source.noise
        self.patterns = self.files = None
        if self.mode == "class-wise":  # the shared mapping (its block hooks); apply below does the same
            self.files = ClassPatternsOnFiles(source.patterns, self.working_rate, sample_rate, self.params["snr_db"],
                                              self.params.get("linf"), self.params.get("masking_margin_db"))
            self.patterns = self.files.patterns

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.arrays_file is not None:
            state["_noise"] = None  # a worker loads it from the private arrays file (memory-mapped), on first use
        return state

    def resampled(self, x: torch.Tensor) -> torch.Tensor:
        import torchaudio.functional as AF
        return AF.resample(x, self.working_rate, self.sample_rate) if self.sample_rate != self.working_rate else x

    def noise_row(self, row: int) -> torch.Tensor:
        if self._noise is None:
            self._noise = mapped_noise(self.arrays_file)
        d = self._noise[row].float()
        return d.clamp(-self.params.get("linf"), self.params.get("linf")) if self.params.get("linf") is not None else d

    def apply(self, waveforms, labels, lengths=None, **ablation):
        channels, n = waveforms.shape
        if self.mode == "class-wise":
            reps = -(-n // self.patterns.shape[1])
            pattern = self.patterns.repeat(1, reps)[:, :n][labels.long()].to(waveforms.dtype)
            return add_class_patterns(waveforms, pattern, torch.ones_like(waveforms), self.params["snr_db"],
                                   self.params.get("linf"), masking=masking_of(self.params, self.sample_rate))
        d = self.file_noise(samples_hash(waveforms), n)
        d = torch.nn.functional.pad(d, (0, n - len(d))).to(waveforms.dtype)
        out = limit_change(waveforms, waveforms + d[None], self.params["snr_db"], self.params.get("linf"))
        margin = self.params.get("masking_margin_db")
        if margin is None:
            return out
        return waveforms + limit_to_threshold(waveforms, out - waveforms, self.sample_rate, margin,
                                              snr_db=self.params["snr_db"], linf=self.params.get("linf"))

    def file_noise(self, digest: str, frames: int) -> torch.Tensor:
        """Sample-wise: the noise of the file whose samples hash to ``digest`` at the file's rate, at most ``frames``
        long (the file's first frames get it, the rest none)."""
        row = self.rows.get(digest)
        if row is None:
            raise ValueError("no optimised noise for this file: it is not one of the files the noise was optimised "
                             "on (protect the changed collection into a new OUTPUT)")
        return self.resampled(self.noise_row(row))[:frames]

    # --- lab protect's block hooks (a long file in bounded memory; not with a masking budget, shaped over the whole
    # file). Class-wise: the shared mapping's (defenses._minmin.ClassPatternsOnFiles: a first pass for the sums,
    # the pattern tiled block by block). Sample-wise: the file's samples_hash (a pass per channel, in the hash's
    # channel order; the first also sums the energy) finds the row; the first block's window reaches over the
    # chunks the noise touches, for the change's energy (limit_change)

    @property
    def block_first_pass(self) -> bool:
        return self.mode == "sample-wise" or self.params["snr_db"] is not None

    def block_plan(self, cls, frames, channels):
        if self.mode == "class-wise":
            return self.files.block_plan(cls, frames, channels)
        if self.params.get("masking_margin_db") is not None:
            return None
        return {"frames": frames, "channels": channels, "pass": -1, "signal": None,
                "hash": samples_hasher(channels, frames), "noise": None, "scale": None}

    def block_passes(self, plan):
        return plan["channels"] if self.mode == "sample-wise" else 1

    def block_stats(self, plan, x, start):
        if self.mode == "class-wise":
            return self.files.block_stats(plan, x, start)
        plan["pass"] += start == 0
        if plan["pass"] == 0 and self.params["snr_db"] is not None:
            plan["signal"] = add_energy(plan["signal"], x)
        plan["hash"].update(x[plan["pass"]].to(torch.float32).contiguous().numpy().tobytes())
        if plan["pass"] == plan["channels"] - 1 and start + x.shape[1] == plan["frames"]:
            plan["noise"] = self.file_noise(plan["hash"].hexdigest(), plan["frames"])

    def _noise_reach(self, plan) -> int:
        """Sample-wise: the frames [0, reach) whose change's energy needs summing (the chunks the noise touches;
        beyond them the change is exactly 0)."""
        chunk = dsp.ENERGY_CHUNK
        return min(plan["frames"], -(-len(plan["noise"]) // chunk) * chunk)

    def block_window(self, plan, a, b):
        if self.mode == "sample-wise" and self.params["snr_db"] is not None and plan["scale"] is None:
            return a, max(b, self._noise_reach(plan))  # the first block: the change's energy first
        return a, b

    def apply_block(self, plan, x, lo, a, b):
        clean = x[:, a - lo:b - lo]
        if self.mode == "class-wise":
            return self.files.apply_block(plan, clean, a, b)
        if self.params["snr_db"] is not None and plan["scale"] is None:
            reach = x[:, :self._noise_reach(plan)]  # the window begins at frame 0 (block_window)
            d = self._noise_between(plan, 0, reach.shape[1], x.dtype)
            power = add_energy(None, (reach + d[None]) - reach)
            plan["scale"] = change_scale(plan["signal"], power, self.params["snr_db"])
        d = self._noise_between(plan, a, b, x.dtype)
        return scaled_change(clean, clean + d[None], plan["scale"], self.params.get("linf"))

    def _noise_between(self, plan, a, b, dtype):
        """Frames [a, b) of the file's noise (zeros past its end), as apply pads it."""
        d = plan["noise"][a:b]
        return torch.nn.functional.pad(d, (0, b - a - len(d))).to(dtype)

    def to_dict(self) -> dict:
        return {"defense": self.defense, "params": self.params, "key_fingerprint": self.key_fingerprint,
                "num_classes": self.num_classes, "sample_rate": self.sample_rate, "working_rate": self.working_rate,
                "clip_samples": self.clip_samples, "mapping": MAPPING[self.mode]}


class RobustEMProtection(EMNoiseProtection):
    name = "robust-em"


@DEFENSES.register("em-noise")
class EMNoise(OptimisedDefense):
    """Error-minimising noise (sample- or class-wise), optimised on a surrogate within a per-clip budget."""

    Config = EMNoiseConfig
    record_type = EMNoiseProtection
    additive = True
    seed_label = "em-noise/v1/surrogate"

    def derive_from(self, data: TrainingSet) -> EMNoiseProtection:
        cfg: EMNoiseConfig = self.config
        key = self._key()
        seed = self.surrogate_seed()
        gen = torch.Generator().manual_seed(seed)
        kind = SampleNoise if cfg.mode == "sample-wise" else ClassPatterns
        pert = kind(data, cfg.snr_db, cfg.linf, cfg.step_size, gen, cfg.masking_margin_db)
        budget = [f"SNR >= {cfg.snr_db:g} dB" if cfg.snr_db is not None else "",
                  f"|noise| <= {cfg.linf:g}" if cfg.linf is not None else "",
                  f"masking threshold {cfg.masking_margin_db:+g} dB" if cfg.masking_margin_db is not None else ""]
        data.log(f"{cfg.type}: optimising {cfg.mode} noise on {len(data.labels)} clips against a "
                 f"{data.description} surrogate (budget: {', '.join(b for b in budget if b)})")
        record = cfg.run(data, pert, seed)
        params = cfg.model_dump(exclude={"key", "key_file", "type"}, mode="json")
        if cfg.mode == "class-wise":
            return self.record_type(params, fingerprint(key), data.sample_rate, data.num_classes, record,
                                    patterns=pert.patterns.float())
        hashes = [clip_hash(w, int(n)) for w, n in zip(data.waveforms, data.lengths)]
        noise = pert.noise.to(torch.float16)
        return self.record_type(params, fingerprint(key), data.sample_rate, data.num_classes, record,
                                noise=noise, hashes=hashes)


@DEFENSES.register("robust-em")
class RobustEM(EMNoise):
    """Robust error-minimising noise: min-min with an adversarial inner step of radius ``rho``."""

    Config = RobustEMConfig
    record_type = RobustEMProtection
