"""``budget``: any defense held to a per-clip quality budget, so that protections are compared at the SAME
distortion (issue 13's matched budgets), not at whatever each defaults to.

The inner defense protects the clip as usual; its change ``d = protected - clean`` is then limited clip by clip
(``lab.dsp.limit_change``, which poscuda-opt applies too):

- ``snr_db``: every clip's SNR (its real audio against ``d``, float64) is at least ``snr_db``: where it is lower, ``d``
  is scaled down by the factor that puts the clip exactly at ``snr_db``; a clip already above it is left as the
  inner defense made it (the change is never scaled UP).
- ``linf``: ``d`` is clipped to [-linf, linf] (waveform units, full scale 1.0), after the SNR scaling (clipping only
  lowers the change, so the SNR bound still holds).

For a convolution (PosCUDA, CUDA) the scaled change is ``s*(f*x) + (1-s)*x``: the clip is convolved with the filter
``s*f + (1-s)*delta``, so a tighter budget is a milder blur, chosen per clip. Silent clips are unchanged by every
defense that scales to SNR, and get no change here either.

    defense: {type: budget, snr_db: 30, inner: {type: poscuda, key_file: owner.key}}

The record holds the inner protection's record; the key stays in the inner config, as for the inner defense alone.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator

from defenses.base import DEFENSES, Defense, Protection, TrainingSet
from lab.config import PluginConfig, parse_plugin
from lab.dsp import limit_change


class BudgetConfig(PluginConfig):
    type: Literal["budget"] = "budget"
    inner: Any
    snr_db: float | None = 30.0
    linf: float | None = Field(None, gt=0)

    @field_validator("inner", mode="before")
    @classmethod
    def _inner(cls, v: Any) -> PluginConfig:
        inner = parse_plugin(DEFENSES, v, "defense.inner")
        if inner.type == "budget":
            raise ValueError("a budget's inner defense cannot itself be a budget")
        return inner

    @model_validator(mode="after")
    def _a_budget(self):
        if self.snr_db is None and self.linf is None:
            raise ValueError("give a budget: snr_db, linf, or both")
        return self


class BudgetProtection(Protection):
    """The inner protection, then each clip's change limited to the budget."""

    name = "budget"
    # not applied by lab protect (yet): its configuration nests another defense's, which --option cannot give

    def __init__(self, inner: Protection, snr_db: float | None, linf: float | None):
        self.inner = inner
        self.snr_db = snr_db
        self.linf = linf

    @property
    def key_fingerprint(self):
        return getattr(self.inner, "key_fingerprint", None)

    def limit(self, clean: torch.Tensor, protected: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        return limit_change(clean, protected, self.snr_db, self.linf)

    def apply(self, waveforms, labels, lengths=None, **ablation):
        return self.limit(waveforms, self.inner.apply(waveforms, labels, lengths, **ablation), lengths)

    def ablation_variants(self, waveforms, labels, lengths, sample_rate, seed=0):
        inner = self.inner.ablation_variants(waveforms, labels, lengths, sample_rate, seed)
        return {name: w if name == "clean" else self.limit(waveforms, w, lengths) for name, w in inner.items()}

    def patch_spans(self, labels, total, lengths=None):
        return self.inner.patch_spans(labels, total, lengths)

    def class_filters(self):
        return self.inner.class_filters()

    def arrays(self):
        return self.inner.arrays()

    def to_dict(self) -> dict:
        return {"defense": self.name, "snr_db": self.snr_db, "linf": self.linf,
                "key_fingerprint": self.key_fingerprint, "inner": self.inner.to_dict()}

    @classmethod
    def from_dict(cls, record: dict, arrays: dict | None = None) -> "BudgetProtection":
        return cls(Protection.from_dict(record["inner"], arrays), record["snr_db"], record["linf"])


@DEFENSES.register("budget")
class Budget(Defense):
    """Another defense with every clip's change limited to a per-clip SNR and/or L-infinity budget."""

    Config = BudgetConfig

    @classmethod
    def example_config(cls, key):
        """``inner`` has no default: PosCUDA with the key (the key lives in the inner defense's section)."""
        return {"inner": {"type": "poscuda", "key": key}}

    def __init__(self, config: BudgetConfig):
        super().__init__(config)
        self.inner = DEFENSES.get(config.inner.type)(config.inner)
        self.needs_training_set = self.inner.needs_training_set  # as the inner defense
        self.cache_sources = (type(self.inner),)  # an optimised inner defense's code versions a cached protection

    @classmethod
    def check_fits(cls, config, clip_seconds):
        DEFENSES.get(config.inner.type).check_fits(config.inner, clip_seconds)

    def derive(self, num_classes: int, sample_rate: int) -> BudgetProtection:
        cfg: BudgetConfig = self.config
        return BudgetProtection(self.inner.derive(num_classes, sample_rate), cfg.snr_db, cfg.linf)

    def derive_from(self, data: TrainingSet) -> BudgetProtection:
        cfg: BudgetConfig = self.config
        return BudgetProtection(self.inner.derive_from(data), cfg.snr_db, cfg.linf)

    def surrogate_overrides(self) -> dict:
        return self.inner.surrogate_overrides()

    def surrogate_seed(self) -> int:
        return self.inner.surrogate_seed()
