"""``noise-patch``: class-wise random noise added in the same key-derived patches as PosCUDA, at a set SNR.

It is PosCUDA's control: the same positions (the same key and position parameters give the same patches), but
instead of convolving the patch with a filter, a fixed class-wise noise pattern (``patch_seconds`` long, drawn from
the key) is added there, scaled per clip so that the clip's signal-to-noise ratio (whole clip against the added
noise) is ``snr_db``. Set ``snr_db`` to the SNR ``lab run`` reports for the PosCUDA setting it is compared with (``lab
attack --type all`` does so itself), and unlearnability is compared at equal distortion. Only patch samples change.

Parameters shared with PosCUDA (same meaning): ``key``, ``key_file``, ``patch_seconds``, ``patches_per_class``,
``position_mode``, ``position_range``.

``masking_margin_db`` (off by default): the ``masking`` budget (docs/masking.md): the patch noise, scaled to
``snr_db``, is then shaped so that its power in every frame and bin is at most the clean clip's masking threshold
plus the margin, still only on patch samples (lab.masking.limit_to_threshold); ``snr_db: null``: the masking budget
alone (the noise fills the threshold in its patches).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, SecretStr, model_validator

from defenses._patches import PatchPlaces, check_patches_fit, check_position_range, class_generator, draw_positions
from defenses.base import DEFENSES, Defense, Protection
from lab.config import PluginConfig
from lab.dsp import add_energy, gain_for, scale_to_snr
from lab.keys import derive_seed, fingerprint, resolve_key
from lab.masking import MaskingBudget, check_budget, limit_to_threshold


class NoisePatchConfig(PluginConfig, MaskingBudget):
    type: Literal["noise-patch"] = "noise-patch"
    key: SecretStr | None = None
    key_file: Path | None = None
    snr_db: float | None = 24.0
    patch_seconds: float = Field(0.1, gt=0, le=60)
    patches_per_class: int = Field(1, ge=1, le=64)
    position_mode: Literal["absolute", "relative"] = "absolute"
    position_range: tuple[float, float] = (0.0, 0.5)

    @model_validator(mode="after")
    def _check_range(self):
        check_position_range(self.position_range, self.position_mode)
        check_budget(self.snr_db, None, self.masking_margin_db)
        return self


class NoisePatchProtection(Protection):
    name = "noise-patch"
    file_by_file = True  # positions and noise per class from the key, scaled to each clip's own power

    def __init__(self, params: dict, key_fingerprint: str, sample_rate: int, places: PatchPlaces,
                 noise: torch.Tensor):
        self.params = params
        self.key_fingerprint = key_fingerprint
        self.sample_rate = sample_rate
        self.places = places  # PosCUDA's positions for the same key and position parameters
        self.noise = noise  # (C, P, patch_len)
        self.patch_len = places.patch_len

    def starts(self, position_classes, total, lengths=None, shift_samples=0):
        return self.places.starts(position_classes, total, lengths, shift_samples)

    def apply(self, waveforms, labels, lengths=None, position_classes=None, filter_classes=None, shift_samples=0):
        labels = labels.long()
        pos_cls = labels if position_classes is None else position_classes.long()
        noise_cls = labels if filter_classes is None else filter_classes.long()
        n, t = waveforms.shape
        starts = self.starts(pos_cls, t, lengths, shift_samples)
        added = torch.zeros(n, t + self.patch_len, dtype=waveforms.dtype)
        patch = torch.arange(self.patch_len)
        for j in range(starts.shape[1]):
            idx = starts[:, j:j + 1] + patch
            added.scatter_add_(1, idx, self.noise[noise_cls, j].to(waveforms.dtype))
        added = added[:, :t]  # a patch longer than the clip is cut at its end
        snr_db, margin = self.params["snr_db"], self.params.get("masking_margin_db")
        if snr_db is not None:
            added = scale_to_snr(waveforms, added, snr_db)
        if margin is not None:  # shaped where the patches are (the non-zero samples), nowhere else
            added = limit_to_threshold(waveforms, added, self.sample_rate, margin, snr_db=snr_db, fill=snr_db is None)
        return waveforms + added.to(waveforms.device)

    def patch_spans(self, labels, total, lengths=None):
        return self.places.patch_spans(labels, total, lengths)

    # --- lab protect's block hook (a long file in bounded memory): the file's energy and its noise's in a first
    # pass, summed as apply sums them (lab.dsp.add_energy), then the scaled noise added block by block
    block_first_pass = True

    def block_plan(self, cls, frames, channels):
        if type(self).apply is not NoisePatchProtection.apply \
                or self.params.get("masking_margin_db") is not None:
            return None  # a subclass that changes apply, or noise shaped by a masking budget: protected whole
        starts = self.starts(torch.tensor([cls]), frames, torch.tensor([frames]))[0].tolist()
        return {"cls": cls, "starts": starts, "signal": None, "power": None, "gain": None}

    def _noise_between(self, plan, a, b, rows, dtype):
        """Frames ``[a, b)`` of the file's unscaled noise (rows, b - a), added patch after patch as apply adds it."""
        added = torch.zeros(1, b - a, dtype=dtype)
        for j, s in enumerate(plan["starts"]):
            lo, hi = max(a, s), min(b, s + self.patch_len)
            if lo < hi:
                added[0, lo - a:hi - a] += self.noise[plan["cls"], j, lo - s:hi - s].to(dtype)
        return added.repeat(rows, 1)

    def block_stats(self, plan, x, start):
        plan["signal"] = add_energy(plan["signal"], x)
        noise = self._noise_between(plan, start, start + x.shape[1], x.shape[0], x.dtype)
        plan["power"] = add_energy(plan["power"], noise)

    def apply_block(self, plan, x, lo, a, b):
        if plan["gain"] is None:
            plan["gain"] = gain_for(plan["signal"], plan["power"], self.params["snr_db"])
        noise = self._noise_between(plan, a, b, x.shape[0], x.dtype)
        return x + (noise.double() * plan["gain"]).to(x.dtype)

    def file_patches(self, files):
        return self.places.describe_patches(files, "noise")

    def to_dict(self) -> dict:
        return {"defense": self.name, "params": self.params, "key_fingerprint": self.key_fingerprint,
                "sample_rate": self.sample_rate, "patch_samples": self.patch_len,
                "positions": self.places.positions.tolist(), "noise_std": float(self.noise.std())}


@DEFENSES.register("noise-patch")
class NoisePatch(Defense):
    """Class-wise noise in PosCUDA's key-derived patches, scaled to a target SNR."""

    Config = NoisePatchConfig
    matched_baseline = 2
    takes_snr = True
    additive = True
    POSITION_FIELDS = ("patch_seconds", "patches_per_class", "position_mode", "position_range")

    @classmethod
    def example_config(cls, key):
        return {"key": key, "snr_db": 20.0}  # not the default 24 dB

    @classmethod
    def matched_config(cls, reference, snr_db=None):
        """The reference's key and, where it has them, its patch positions (the same key and position parameters
        give PosCUDA's patches), at ``snr_db``."""
        out = super().matched_config(reference, snr_db)
        out.update({k: getattr(reference, k) for k in cls.POSITION_FIELDS if hasattr(reference, k)})
        return out

    @classmethod
    def check_fits(cls, config, clip_seconds):
        check_patches_fit(config, clip_seconds)

    def derive(self, num_classes: int, sample_rate: int) -> NoisePatchProtection:
        cfg: NoisePatchConfig = self.config
        key = resolve_key(cfg.key, cfg.key_file)
        params = cfg.model_dump(exclude={"key", "key_file", "type"}, mode="json")
        positions = [draw_positions(class_generator(key, c), cfg.patches_per_class, cfg.position_range)
                     for c in range(num_classes)]
        places = PatchPlaces(params, sample_rate, torch.stack(positions))
        noise = []
        for c in range(num_classes):
            gen = torch.Generator().manual_seed(derive_seed(key, "noise-patch/v1/class", c))
            noise.append(torch.randn(cfg.patches_per_class, places.patch_len, generator=gen))
        return NoisePatchProtection(params, fingerprint(key), sample_rate, places, torch.stack(noise))
