"""The defense interface. Like an audiomentations transform, a defense has two halves:

1. ``derive``: draw everything random (per-class positions, filters, ...) from the private key and RECORD it in a
   :class:`Protection` (serialisable, testable, key-free);
2. ``Protection.apply``: apply what was recorded to a batch of waveforms, with no randomness of its own.

A protection can therefore be re-applied to other clips (the protected test set, position ablations) and reloaded
from ``results.json`` to reproduce an experiment exactly.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from lab.config import PluginConfig
from lab.registry import Registry

DEFENSES: Registry = Registry("defense", package="defenses")


class Protection(ABC):
    """What a defense applied, with everything needed to apply it again (and no key)."""

    name: ClassVar[str]
    types: ClassVar[dict[str, type["Protection"]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            Protection.types[cls.name] = cls

    @classmethod
    def from_dict(cls, record: dict) -> "Protection":
        """Rebuild a protection from its ``to_dict`` record (dispatching on ``record['defense']``)."""
        if cls is Protection:
            if record.get("defense") not in Protection.types:
                DEFENSES.discover()  # the record may come from a plugin not imported yet
            try:
                return Protection.types[record["defense"]].from_dict(record)
            except KeyError:
                raise ValueError(f"unknown protection record {record.get('defense')!r}; "
                                 f"known: {', '.join(sorted(Protection.types))}") from None
        raise NotImplementedError

    @abstractmethod
    def apply(self, waveforms: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor | None = None,
              **ablation: Any) -> torch.Tensor:
        """Protected copies of ``waveforms`` (N, T); the input is never modified in place."""

    @abstractmethod
    def to_dict(self) -> dict:
        """JSON-serialisable record (parameters, derived values, key fingerprint; never the key)."""


class Defense(ABC):
    Config: ClassVar[type[PluginConfig]]

    def __init__(self, config: PluginConfig):
        self.config = config

    @abstractmethod
    def derive(self, num_classes: int, sample_rate: int) -> Protection:
        """Draw the protection for ``num_classes`` classes at ``sample_rate`` (from the key, where there is one)."""


def build_defense(config: PluginConfig) -> Defense:
    return DEFENSES.get(config.type)(config)
