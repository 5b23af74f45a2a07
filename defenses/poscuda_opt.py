"""``poscuda-opt``: PosCUDA with its class filters chosen by error minimisation instead of at random.

Everything PosCUDA fixes stays fixed: the key-derived class positions (exactly PosCUDA's, from the same key and
position parameters), the patch length, the filter length k, the taps' range [0, ``blur``] and, with ``one_tap``,
the one tap PosCUDA sets to 1.0 (it stays 1.0, so the patch keeps the original sound). Only the other taps move:
starting from PosCUDA's own random draw, they are optimised by min-min (defenses/_minmin.py) so that a surrogate
(the recipe's model and features by default; ``surrogate`` changes them) finds the class in the blurred patch as
easily as possible: signed-gradient steps of ``step_size * blur`` on the surrogate's loss, clamped back into
[0, ``blur``] after every step. The question it answers: does an OPTIMISED positional blur become unlearnable at a
quality the random blurs cannot reach?

The budget (optional): ``snr_db`` and/or ``linf`` limit each clip's change as the ``budget`` defense does (the
change is scaled down clip by clip until SNR >= ``snr_db``; clipped to +-``linf``), inside the optimisation as well,
so the filters are optimised for what is actually applied. Without them the blur is PosCUDA's, unlimited.

Limits of this first version (refused at the door): ``filter_norm`` must be ``none`` (a normalised filter would move
the constraint set under the optimiser) and ``repeat_seconds`` off. The positions are not optimised.

Everything random (the starting filters: PosCUDA's; the surrogate's weights and batches) comes from the key. The
record is PosCUDA's (positions, optimised filters) plus the budget and the optimisation's history; it is as secret
as the key. The filters cannot be derived from the key file by file, but ``lab protect`` optimises them on a
collection's own files (lab/protect/optimise.py) and writes them onto every file at its own rate
(:class:`PosCUDAOptFiles`: PosCUDA's patches at the file's rate, the budget per channel over the whole file; a long
file a block at a time, with PosCUDA's patch blocks and a first pass for the budget's sums).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
from pydantic import Field, model_validator

from defenses._minmin import MinMinSettings, OptimisedDefense, Perturbation
from defenses._patches import PatchOps, PosCUDAConfig, PosCUDAProtection, check_patches_fit, derive_poscuda
from defenses.base import DEFENSES, InOrder, Protection, TrainingSet, WorkingClips
from lab.dsp import EnergySum, add_energy, change_scale, convolve_patches, limit_change, scaled_change
from lab.keys import fingerprint

OPTIMISATION_FIELDS = ("steps", "step_size", "train_batches", "stop_accuracy", "max_rounds", "min_rounds", "rho",
                       "rho_steps", "surrogate", "snr_db", "linf")


class PosCUDAOptConfig(PosCUDAConfig, MinMinSettings):
    type: Literal["poscuda-opt"] = "poscuda-opt"  # type: ignore[assignment]
    snr_db: float | None = None
    linf: float | None = Field(None, gt=0)
    steps: int = Field(5, ge=1)
    step_size: float = Field(0.1, gt=0)

    @model_validator(mode="after")
    def _optimisable(self):
        if self.filter_norm != "none":
            raise ValueError("filter_norm must be 'none' for poscuda-opt (a normalised filter moves the taps' "
                             "range under the optimiser)")
        if self.repeat_seconds is not None:
            raise ValueError("repeat_seconds is not supported by poscuda-opt yet; leave it off")
        return self


class PosCUDAOptProtection(PosCUDAProtection):
    """PosCUDA's positions with optimised filters, and the per-clip budget."""

    name = "poscuda-opt"
    file_by_file = False  # the filters are optimised on the data: lab protect cannot derive them from the key ...
    on_collection = True  # ... but it can optimise them on a collection and write them onto its files (files_at)

    def __init__(self, params, key_fingerprint, sample_rate, positions, filters, optimisation: dict | None = None):
        super().__init__(params, key_fingerprint, sample_rate, positions, filters)
        self.optimisation = optimisation or {}

    def apply(self, waveforms, labels, lengths=None, **ablation):
        out = super().apply(waveforms, labels, lengths, **ablation)
        return limit_change(waveforms, out, self.params.get("snr_db"), self.params.get("linf"))

    def to_dict(self) -> dict:
        return {**super().to_dict(), "optimisation": self.optimisation}

    @classmethod
    def from_dict(cls, record: dict) -> "PosCUDAOptProtection":
        return cls(record["params"], record["key_fingerprint"], record["sample_rate"],
                   torch.tensor(record["positions"], dtype=torch.float64),
                   torch.tensor(record["filters"], dtype=torch.float32), record.get("optimisation"))


    def files_at(self, sample_rate: int, working: WorkingClips) -> "PosCUDAOptFiles":
        return PosCUDAOptFiles(self.params, self.key_fingerprint, sample_rate, self.positions, self.filters,
                               self.optimisation, working.sample_rate)


class PosCUDAOptFiles(PosCUDAOptProtection):
    """poscuda-opt optimised by lab protect on a collection's working clips, written onto its files at
    ``sample_rate``: PosCUDA's positions (seconds, or fractions of each file's length) and the optimised filters
    (taps are per sample: the same at every rate), the patch ``patch_seconds`` long at the file's rate, then each
    channel's change held to the budget (``snr_db``, ``linf``) over the whole file."""

    file_by_file = True

    def __init__(self, params, key_fingerprint, sample_rate, positions, filters, optimisation, working_rate: int):
        super().__init__(params, key_fingerprint, sample_rate, positions, filters, optimisation)
        self.working_rate = working_rate

    def apply_files(self, files):
        return Protection.apply_files(self, files)  # file by file: the budget is each file's own

    # --- lab protect's block hooks (a long file in bounded memory): PosCUDA's (its patches replayed block by block,
    # with output: normalize a first pass for the patched file's peak), then, with snr_db, one more first pass: the
    # file patched block by block (InOrder) for the change's energy, summed by ENERGY_CHUNK as limit_change sums it

    @property
    def block_first_pass(self) -> bool:
        return self.params["output"] == "normalize" or self.params.get("snr_db") is not None

    def block_plan(self, cls, frames, channels):
        return BudgetPlan(self.patch_ops(cls, frames))

    def block_passes(self, plan):
        return int(self.params["output"] == "normalize") + int(self.params.get("snr_db") is not None)

    def block_window(self, plan, a, b):
        return plan.ops.window(a, b)

    def block_stats(self, plan, x, start):
        plan.passes += start == 0
        if plan.passes == 0 and self.params["output"] == "normalize":
            return PosCUDAProtection.block_stats(self, plan.ops, x, start)  # the peak, before any change is known
        if start == 0:
            plan.first = InOrder(plan.ops.frames, plan.ops.window, partial(self._change, plan))
        plan.signal = add_energy(plan.signal, x)
        change = plan.first.feed(x, start)
        if change is not None:
            plan.power.add(change)

    def _change(self, plan, x, lo, a, b):
        return PosCUDAProtection.apply_block(self, plan.ops, x, lo, a, b) - x[:, a - lo:b - lo]

    def apply_block(self, plan, x, lo, a, b):
        snr_db = self.params.get("snr_db")
        if snr_db is not None and plan.scale is None:
            plan.scale = change_scale(plan.signal, plan.power.result(), snr_db)
        patched = PosCUDAProtection.apply_block(self, plan.ops, x, lo, a, b)
        return scaled_change(x[:, a - lo:b - lo], patched, plan.scale, self.params.get("linf"))

    def to_dict(self) -> dict:
        return {**super().to_dict(), "working_rate": self.working_rate,
                "mapping": "PosCUDA's patches at the file's own rate with the optimised filters, then every "
                           "channel's change scaled down until its SNR >= snr_db (whole file), clipped to linf"}


@dataclass
class BudgetPlan:
    """A long file's plan for :class:`PosCUDAOptFiles`: PosCUDA's patches (``ops``) and the budget's sums over the
    whole file (the clean ``signal``, the change's ``power``), then the change's ``scale``."""

    ops: PatchOps
    passes: int = -1
    first: InOrder | None = None
    signal: torch.Tensor | None = None
    power: EnergySum = field(default_factory=EnergySum)
    scale: torch.Tensor | None = None


class ClassFilters(Perturbation):
    """The class filters (C, P, k) of a PosCUDA protection, within [0, blur], the one-tap fixed at 1."""

    def __init__(self, start: PosCUDAProtection, cfg: PosCUDAOptConfig):
        self.prot = start
        self.filters = start.filters.clone()
        self.fixed = (self.filters == 1.0) if cfg.one_tap else torch.zeros_like(self.filters, dtype=torch.bool)
        self.blur, self.step = cfg.blur, cfg.step_size
        self.snr_db, self.linf = cfg.snr_db, cfg.linf
        self.clip = cfg.output == "clip"
        self.normalize = cfg.output == "normalize"

    def variable(self, idx, y):
        return self.filters.clone()

    def perturbed(self, var, idx, x, y, lengths):
        starts = self.prot.starts(y.long(), x.shape[1], lengths)
        out = convolve_patches(x, starts, var[y.long()], self.prot.patch_len, clip=self.clip)
        if self.normalize:
            peak = out.abs().amax(dim=1, keepdim=True)
            out = torch.where(peak > 1.0, out / peak, out)
        return limit_change(x, out, self.snr_db, self.linf)

    def descend(self, var, grad, idx, y):
        moved = (var - self.step * self.blur * grad.sign()).clamp(0.0, self.blur)
        return torch.where(self.fixed, torch.ones_like(moved), moved)

    def store(self, var, idx, y):
        self.filters = var.detach()

    def state(self):
        return {"filters": self.filters}

    def restore(self, state):
        self.filters = state["filters"].to(self.filters)


@DEFENSES.register("poscuda-opt")
class PosCUDAOpt(OptimisedDefense):
    """PosCUDA with error-minimising class filters (positions and constraints as PosCUDA's)."""

    Config = PosCUDAOptConfig
    seed_label = "poscuda-opt/v1/surrogate"
    # code whose change makes a cached protection outdated: the patch places and the random start
    # (defenses/_patches.py), the convolution and the budget (lab/dsp.py)
    cache_sources = (PosCUDAProtection, convolve_patches, limit_change)

    @classmethod
    def check_fits(cls, config, clip_seconds):
        check_patches_fit(config, clip_seconds)

    def random_start(self, num_classes: int, sample_rate: int) -> PosCUDAProtection:
        """PosCUDA's own protection from the same key and parameters: where the optimisation starts."""
        cfg = self.config.model_dump(exclude={"type", *OPTIMISATION_FIELDS})
        cfg["key"] = self.config.key.get_secret_value() if self.config.key is not None else None
        return derive_poscuda(PosCUDAConfig.model_validate(cfg), num_classes, sample_rate)

    def derive_from(self, data: TrainingSet) -> PosCUDAOptProtection:
        cfg: PosCUDAOptConfig = self.config
        start = self.random_start(data.num_classes, data.sample_rate)
        pert = ClassFilters(start, cfg)
        data.log(f"poscuda-opt: optimising {data.num_classes} class filters ({cfg.filter_length} taps in "
                 f"[0, {cfg.blur}]) against a {data.description} surrogate"
                 + (f", budget SNR >= {cfg.snr_db} dB" if cfg.snr_db is not None else ""))
        seed = self.surrogate_seed()
        record = cfg.run(data, pert, seed)
        params = cfg.model_dump(exclude={"key", "key_file", "type"}, mode="json")
        return PosCUDAOptProtection(params, fingerprint(self._key()), data.sample_rate, start.positions,
                                    pert.filters.float(), record)
