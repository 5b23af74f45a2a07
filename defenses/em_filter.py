"""``em-filter``: class-wise error-minimising FILTERS on per-clip noise (issue 25: noise that projection cannot find).

Class-wise error-minimising noise (``em-noise``, ``mode: class-wise``) adds the same waveform to every clip of a
class; a linear model finds that waveform and orthogonal projection (``attacks/projection.py``) takes it out
(docs/attacks.md: 0.287 -> 0.789 after the MFCC fix). AR noise (``ar-noise``) carries its class in the noise's
COLOUR instead, a fresh draw per clip with no shared waveform, and projection does nothing to it (0.296 -> 0.301);
but its colours are random, not chosen to be learnt. ``em-filter`` optimises the colour: every clip of class c gets
its own white noise (a fresh draw per clip) filtered by class c's FIR filter, and the ten filters are optimised by
min-min (defenses/_minmin.py) against a surrogate, as em-noise's class patterns are.

- The noise of a clip: white Gaussian noise on the clip's real audio, seeded by HMAC(salt, "clip/<sha256 of the
  clean clip's real samples as float32>") (``salt``: derived from the key, "em-filter/v1/noise"; recorded as the
  secret it is, like ar-noise's salts), convolved ("same" alignment, zero outside the clip) with the class's filter
  of ``taps`` taps, then added by :func:`defenses._minmin.add_class_patterns`: scaled per clip to ``snr_db``
  exactly, clipped to ``linf``, shaped to the masking budget (``masking_margin_db``) when set. Deterministic, and
  derivable for any clip of a known class (test clips, a new file) from the record alone.
- Optimised: the filters (C, ``taps``), unit RMS, from white noise drawn from the key-derived seed; descent steps as
  em-noise's class patterns (the class's gradient normalised, ``step_size`` times the filter's norm).
- The min-min settings, budget, surrogate and stop rule are em-noise's (``steps``, ``train_batches``, ...).

What a linear model sees: across the clips of a class the noise's waveform is independent from clip to clip (mean
zero), so no class direction in sample space carries it; what is shared is its power spectrum, which the front-ends
(MFCC, log-mel) and a spectral probe see. ``lab protect`` optimises it on a collection and writes it onto the
collection's own files (:meth:`EMFilterProtection.files_at`): every channel of every file gets its own noise, from
the salt and the channel's samples, through its class's filter resampled to the file's rate.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, SecretStr, model_validator

from defenses._minmin import (FILTERED_NOISE_MAPPING, ClassFilters, FilteredNoiseOnFiles, MinMinSettings,
                              OptimisedDefense, add_class_patterns, clip_noise, filtered, masking_of, span_mask)
from defenses.base import DEFENSES, Protection, TrainingSet, WorkingClips, other_classes
from lab.config import PluginConfig
from lab.keys import derive_seed, fingerprint
from lab.masking import MaskingBudget, check_budget


class EMFilterConfig(PluginConfig, MinMinSettings, MaskingBudget):
    type: Literal["em-filter"] = "em-filter"
    key: SecretStr | None = None
    key_file: Path | None = None
    taps: int = Field(65, ge=2, le=4096)
    snr_db: float | None = 30.0
    linf: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _a_budget(self):
        check_budget(self.snr_db, self.linf, self.masking_margin_db)
        return self


class EMFilterProtection(Protection):
    """Optimised class filters and how to add their noise to any clip (its own white noise from the salt)."""

    name = "em-filter"
    on_collection = True  # lab protect writes it onto a collection's files: see files_at

    def __init__(self, params: dict, key_fingerprint: str, sample_rate: int, num_classes: int, optimisation: dict,
                 salt: str, filters: torch.Tensor):
        self.params, self.key_fingerprint, self.optimisation = params, key_fingerprint, optimisation
        self.sample_rate, self.num_classes = sample_rate, num_classes
        self.salt, self.filters = salt, filters  # the salt is as secret as the key (it derives every clip's noise)

    def apply(self, waveforms, labels, lengths=None, filter_classes=None, **ablation):
        n, t = waveforms.shape
        lengths = lengths if lengths is not None else torch.full((n,), t, dtype=torch.long)
        cls = (labels if filter_classes is None else filter_classes).long()
        rows = filtered(clip_noise(waveforms, lengths, self.salt).to(waveforms), self.filters[cls].to(waveforms))
        return add_class_patterns(waveforms, rows, span_mask(waveforms, lengths), self.params["snr_db"],
                                  self.params["linf"], masking=masking_of(self.params, self.sample_rate))

    def ablation_variants(self, waveforms, labels, lengths, sample_rate, seed=0):
        # each clip's own noise through another class's filter: is the class read from the colour?
        return {"clean": waveforms, "true": self.apply(waveforms, labels, lengths),
                "mixed_filters": self.apply(waveforms, labels, lengths,
                                            filter_classes=other_classes(labels, self.num_classes, seed + 1))}

    def arrays(self):
        return {"filters": self.filters}

    def files_at(self, sample_rate: int, working: WorkingClips) -> "EMFilterFiles":
        return EMFilterFiles(self, sample_rate, working)

    def to_dict(self) -> dict:
        return {"defense": self.name, "params": self.params, "key_fingerprint": self.key_fingerprint,
                "sample_rate": self.sample_rate, "num_classes": self.num_classes, "optimisation": self.optimisation,
                "noise_salt": self.salt, "arrays": "protection.pt"}

    @classmethod
    def from_dict(cls, record: dict, arrays: dict | None = None) -> "EMFilterProtection":
        if not arrays:
            raise ValueError(f"a {record['defense']} record needs its arrays (protection.pt beside protection.json)")
        return cls(record["params"], record["key_fingerprint"], record["sample_rate"], record["num_classes"],
                   record["optimisation"], record["noise_salt"], arrays["filters"])


class EMFilterFiles(Protection):
    """em-filter optimised by lab protect on a collection's working clips, written onto the collection's own files
    at ``sample_rate`` (the shared :class:`defenses._minmin.FilteredNoiseOnFiles`; its mapping says how). The rows
    given to :meth:`apply` are the channels of ONE file (as lab protect's worker gives them)."""

    file_by_file = True

    def __init__(self, source: EMFilterProtection, sample_rate: int, working: WorkingClips):
        self.defense, self.params = source.name, source.params
        self.key_fingerprint, self.num_classes = source.key_fingerprint, source.num_classes
        self.sample_rate, self.working_rate, self.clip_samples = sample_rate, working.sample_rate, working.clip_samples
        self.files = FilteredNoiseOnFiles(source.filters, source.salt, working.sample_rate, sample_rate,
                                          self.params["snr_db"], self.params["linf"],
                                          self.params.get("masking_margin_db"))

    def apply(self, waveforms, labels, lengths=None, **ablation):
        return self.files.apply(waveforms, labels)

    def to_dict(self) -> dict:  # no salt: what lab verify compares, rebuilt from the private record
        return {"defense": self.defense, "params": self.params, "key_fingerprint": self.key_fingerprint,
                "num_classes": self.num_classes, "sample_rate": self.sample_rate, "working_rate": self.working_rate,
                "clip_samples": self.clip_samples, "mapping": FILTERED_NOISE_MAPPING}


@DEFENSES.register("em-filter")
class EMFilter(OptimisedDefense):
    """Class-wise error-minimising filters on per-clip white noise (the class in the noise's colour, no shared
    waveform)."""

    Config = EMFilterConfig
    additive = True
    seed_label = "em-filter/v1/surrogate"

    def derive_from(self, data: TrainingSet) -> EMFilterProtection:
        cfg: EMFilterConfig = self.config
        key, seed = self._key(), self.surrogate_seed()
        salt = f"{derive_seed(key, 'em-filter/v1/noise'):016x}"
        pert = ClassFilters(data, cfg.snr_db, cfg.linf, cfg.step_size, torch.Generator().manual_seed(seed),
                            cfg.masking_margin_db, cfg.taps, salt)
        data.log(f"em-filter: optimising {data.num_classes} class filters of {cfg.taps} taps on the noise of "
                 f"{len(data.labels)} clips against a {data.description} surrogate")
        record = cfg.run(data, pert, seed)
        params = cfg.model_dump(exclude={"key", "key_file", "type"}, mode="json")
        return EMFilterProtection(params, fingerprint(key), data.sample_rate, data.num_classes, record, salt,
                                  pert.patterns.float())
