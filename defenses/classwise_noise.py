"""``classwise-noise``: the classic synthetic baseline: one fixed random noise pattern per class (drawn from the
key, as long as the clips) added to the whole clip, scaled per clip to ``snr_db`` (clip against added noise).

``span``: where the noise goes. ``clip`` (default, as before): the whole row, the zero padding of a short clip
included (in an experiment on padded clips, the padding then holds pure noise: a shortcut no real recording of
that length has); ``audio``: only each clip's real audio (its ``lengths``), as ar-noise and em-noise do, and as
``lab protect`` protects a file (its real length).

``masking_margin_db`` (off by default): the ``masking`` budget (docs/masking.md): the noise, scaled to ``snr_db`` as
usual, is then shaped so that its power in every frame and bin is at most the clean clip's masking threshold plus the
margin (lab.masking.limit_to_threshold; the SNR stays at least ``snr_db``). With ``snr_db: null`` the masking budget
stands alone: the noise fills the threshold (plus margin) in every bin of its span."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import SecretStr, model_validator

from defenses.base import DEFENSES, Defense, Protection
from lab.config import PluginConfig
from lab.dsp import add_energy, gain_for, scale_to_snr
from lab.keys import derive_seed, fingerprint, resolve_key
from lab.masking import MaskingBudget, check_budget, limit_to_threshold


class ClasswiseNoiseConfig(PluginConfig, MaskingBudget):
    type: Literal["classwise-noise"] = "classwise-noise"
    key: SecretStr | None = None
    key_file: Path | None = None
    snr_db: float | None = 24.0
    span: Literal["clip", "audio"] = "clip"

    @model_validator(mode="after")
    def _a_budget(self):
        check_budget(self.snr_db, None, self.masking_margin_db)
        return self


class ClasswiseNoiseProtection(Protection):
    name = "classwise-noise"
    file_by_file = True  # a class pattern from the key (prefix-stable in length), scaled to each clip's power

    def __init__(self, params: dict, key_fingerprint: str, sample_rate: int, key: str, num_classes: int):
        self.params = params
        self.key_fingerprint = key_fingerprint
        self.sample_rate = sample_rate
        self.num_classes = num_classes
        self._seeds = [derive_seed(key, "classwise-noise/v1/class", c) for c in range(num_classes)]
        self._patterns: dict[int, torch.Tensor] = {}

    def patterns(self, length: int) -> torch.Tensor:
        """(C, length) class noise patterns (the same for every clip length's common prefix)."""
        if length not in self._patterns:
            self._patterns[length] = torch.stack([torch.randn(length, generator=torch.Generator().manual_seed(s))
                                                  for s in self._seeds])
        return self._patterns[length]

    def apply(self, waveforms, labels, lengths=None, filter_classes=None, **ablation):
        cls = (labels if filter_classes is None else filter_classes).long()
        noise = self.patterns(waveforms.shape[1])[cls].to(waveforms)
        if self.params.get("span", "clip") == "audio" and lengths is not None:
            from defenses._minmin import span_mask
            noise = noise * span_mask(waveforms, lengths)
        snr_db, margin = self.params["snr_db"], self.params.get("masking_margin_db")
        if snr_db is not None:
            noise = scale_to_snr(waveforms, noise, snr_db)
        if margin is not None:
            noise = limit_to_threshold(waveforms, noise, self.sample_rate, margin, snr_db=snr_db, fill=snr_db is None)
        return waveforms + noise

    # --- lab protect's block hook (a long file in bounded memory): the file's energy and its class pattern's in a
    # first pass, summed as apply sums them (lab.dsp.add_energy), then the scaled pattern added block by block; the
    # pattern is drawn a block at a time (NormalPieces), never whole
    block_first_pass = True

    def block_plan(self, cls, frames, channels):
        if type(self).apply is not ClasswiseNoiseProtection.apply or frames < 16 \
                or self.params.get("masking_margin_db") is not None:
            return None  # under 16 normals torch draws otherwise; a subclass that changes apply, a masking budget
        return {"cls": cls, "frames": frames, "signal": None, "power": None, "gain": None, "pieces": None}

    def _pattern_between(self, plan, a, b, rows, dtype):
        if a == 0:  # each pass draws the pattern again from its start
            plan["pieces"] = NormalPieces(self._seeds[plan["cls"]], plan["frames"])
        return plan["pieces"].take(a, b).to(dtype)[None].repeat(rows, 1)

    def block_stats(self, plan, x, start):
        plan["signal"] = add_energy(plan["signal"], x)
        plan["power"] = add_energy(plan["power"], self._pattern_between(plan, start, start + x.shape[1],
                                                                        x.shape[0], x.dtype))

    def apply_block(self, plan, x, lo, a, b):
        if plan["gain"] is None:
            plan["gain"] = gain_for(plan["signal"], plan["power"], self.params["snr_db"])
        noise = self._pattern_between(plan, a, b, x.shape[0], x.dtype)
        return x + (noise.double() * plan["gain"]).to(x.dtype)

    def to_dict(self) -> dict:
        return {"defense": self.name, "params": self.params, "key_fingerprint": self.key_fingerprint,
                "sample_rate": self.sample_rate, "num_classes": self.num_classes}


class NormalPieces:
    """``torch.randn(n, generator=torch.Generator().manual_seed(seed))`` (n >= 16), drawn piece after piece:
    :meth:`take` gives its values ``[a, b)`` for consecutive pieces whose bounds are multiples of 16 (or n). torch
    draws n uniforms and turns them into normals 16 at a time; when n is not a multiple of 16 it then draws 16 more
    and turns them into the last 16 values (the contract tests check the equality)."""

    def __init__(self, seed: int, n: int):
        self.gen, self.n, self.full, self.at, self.tail = torch.Generator().manual_seed(seed), n, n // 16 * 16, 0, None

    def take(self, a: int, b: int) -> torch.Tensor:
        if a != self.at:
            raise ValueError(f"pieces are drawn in order: expected one from {self.at}, got {a}")
        self.at = b
        out = torch.randn(max(0, min(b, self.full) - a), generator=self.gen)
        if self.n % 16 and b > self.n - 16:  # the last 16 values are drawn again
            if self.tail is None:
                torch.rand(self.n % 16, generator=self.gen)
                self.tail = torch.randn(16, generator=self.gen)
            cut = max(a, self.n - 16)
            out = torch.cat([out[:cut - a], self.tail[cut - (self.n - 16):b - (self.n - 16)]])
        return out


@DEFENSES.register("classwise-noise")
class ClasswiseNoise(Defense):
    """One fixed noise pattern per class over the whole clip, at a given SNR."""

    Config = ClasswiseNoiseConfig
    matched_baseline = 3
    takes_snr = True
    additive = True

    @classmethod
    def example_config(cls, key):
        return {"key": key, "snr_db": 20.0}  # not the default 24 dB

    def derive(self, num_classes: int, sample_rate: int) -> ClasswiseNoiseProtection:
        cfg: ClasswiseNoiseConfig = self.config
        key = resolve_key(cfg.key, cfg.key_file)
        params = cfg.model_dump(exclude={"key", "key_file", "type"}, mode="json")
        if params["span"] == "clip":
            del params["span"]  # records made before span existed stay byte-identical (lab verify compares them)
        return ClasswiseNoiseProtection(params, fingerprint(key), sample_rate, key, num_classes)
