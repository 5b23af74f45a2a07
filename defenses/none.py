"""``none``: clean data, so every table has its reference row."""
from __future__ import annotations

from typing import Literal


from defenses.base import DEFENSES, Defense, Protection
from lab.config import PluginConfig


class NoProtection(Protection):
    name = "none"

    def apply(self, waveforms, labels, lengths=None, **ablation):
        return waveforms.clone()

    def to_dict(self) -> dict:
        return {"defense": "none"}

    @classmethod
    def from_dict(cls, record: dict) -> "NoProtection":
        return cls()


@DEFENSES.register("none")
class NoDefense(Defense):
    """Leaves the audio as it is."""

    class Config(PluginConfig):
        type: Literal["none"] = "none"

    def derive(self, num_classes: int, sample_rate: int) -> Protection:
        return NoProtection()
