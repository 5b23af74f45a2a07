"""What em-noise's records share with ensemble-em's (``mode: sample-wise`` in both, and em-noise's class-wise
record): the per-clip noise variable (:class:`SampleNoise`), the record and how it is applied again
(:class:`EMNoiseProtection`: sample-wise by each clip's content hash), and how it is written onto a collection's files
(:class:`EMNoiseFiles`, :data:`MAPPING`). A module that registers no plugin, so that both defense modules can use it
(tests/test_imports.py); defenses/em_noise.py says what the noise is and how it is made."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from defenses._minmin import ClassPatternsOnFiles, MaskedNoise, Perturbation, add_class_patterns, masking_of, span_mask
from defenses.base import Protection, TrainingSet, WorkingClips, samples_hash, samples_hasher
from lab import dsp
from lab.dsp import add_energy, change_scale, fit_length, limit_change, scaled_change, snr_radius
from lab.masking import limit_to_threshold

FP16_MARGIN = 0.999  # the L2 radius used in the optimisation: float16 storage then cannot push a clip below target


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
