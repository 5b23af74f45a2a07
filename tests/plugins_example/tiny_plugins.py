"""A worked example of third-party plugins (docs/extending.md): one defense and one attack, written against the lab's
public plugin interface only and registered with its decorators. Nothing in lab/, defenses/ or attacks/ names this
module: the lab imports it when it is named in ``$LAB_PLUGINS`` (``LAB_PLUGINS=tests.plugins_example.tiny_plugins``)
or by an entry point of the group ``lab.plugins``, e.g. in the pyproject.toml of the package that holds it::

    [project.entry-points."lab.plugins"]
    tiny = "tests.plugins_example.tiny_plugins"

- ``dc-offset`` (defense): every clip of class i is shifted by a constant offset o_i in [-amplitude, amplitude],
  drawn from the key (HMAC-derived seed per class, as the built-in defenses do). A crude class-wise shortcut.
- ``gain-jitter`` (attack): every training batch, each clip is scaled by a random gain in [1 - jitter, 1 + jitter]
  (from the training seed); it records how many batches it saw.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, SecretStr

from attacks import ATTACKS, Attack
from defenses import DEFENSES, Defense, Protection
from lab.config import PluginConfig
from lab.keys import derive_seed, fingerprint, resolve_key


# --- a defense --------------------------------------------------------------------------------------------------

class DCOffsetConfig(PluginConfig):
    type: Literal["dc-offset"] = "dc-offset"
    key: SecretStr | None = None
    key_file: Path | None = None
    amplitude: float = Field(0.02, gt=0, le=1)


class DCOffsetProtection(Protection):
    name = "dc-offset"  # the ``defense`` of its record: Protection.from_dict finds this class by it
    file_by_file = True  # one clip's offset depends on its label and the key only

    def __init__(self, params: dict, key_fingerprint: str, offsets: torch.Tensor):
        self.params = params
        self.key_fingerprint = key_fingerprint
        self.offsets = offsets  # (C,)

    def apply(self, waveforms, labels, lengths=None, **ablation):
        return waveforms + self.offsets[labels.long()].to(waveforms)[:, None]

    def to_dict(self) -> dict:
        return {"defense": self.name, "params": self.params, "key_fingerprint": self.key_fingerprint,
                "offsets": self.offsets.tolist()}

    @classmethod
    def from_dict(cls, record: dict) -> "DCOffsetProtection":
        return cls(record["params"], record["key_fingerprint"], torch.tensor(record["offsets"]))


@DEFENSES.register("dc-offset")
class DCOffset(Defense):
    """Each class's clips shifted by a constant drawn from the key."""

    Config = DCOffsetConfig

    def derive(self, num_classes: int, sample_rate: int) -> DCOffsetProtection:
        cfg: DCOffsetConfig = self.config
        key = resolve_key(cfg.key, cfg.key_file)
        offsets = torch.stack([
            cfg.amplitude * (2 * torch.rand((), generator=torch.Generator().manual_seed(
                derive_seed(key, "dc-offset/v1/class", c))) - 1)
            for c in range(num_classes)])
        params = cfg.model_dump(exclude={"key", "key_file", "type"}, mode="json")
        return DCOffsetProtection(params, fingerprint(key), offsets)


# --- an attack --------------------------------------------------------------------------------------------------

class GainJitterConfig(PluginConfig):
    type: Literal["gain-jitter"] = "gain-jitter"
    jitter: float = Field(0.2, ge=0, lt=1)


@ATTACKS.register("gain-jitter")
class GainJitter(Attack):
    """Every batch, every clip at a random gain in [1 - jitter, 1 + jitter]."""

    Config = GainJitterConfig
    per_batch = True

    def start(self, ctx):
        super().start(ctx)
        self.gen = torch.Generator().manual_seed(ctx.seed)
        self.measured = {"batches": 0}

    def transform_batch(self, waveforms, labels, module):
        self.measured["batches"] += 1
        gains = 1 + self.config.jitter * (2 * torch.rand(len(waveforms), 1, generator=self.gen) - 1)
        return waveforms * gains.to(waveforms)
