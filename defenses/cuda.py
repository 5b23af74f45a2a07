"""``cuda``: CUDA (Sadasivan et al., CVPR 2023) carried to 1-D audio: every clip of class i is convolved over its
whole length with the class-wise random filter f_i, then normalised by its own peak.

- ``key`` / ``key_file``: the private key; filters come from generators seeded by HMAC-SHA256(key, class index), as
  in PosCUDA (only the key's fingerprint is recorded).
- ``filter_length``: taps per filter; ``blur``: taps drawn i.i.d. from U(0, blur) (CUDA's pb, 0.3 by default);
  ``one_tap``: one randomly chosen tap set to 1.0, as in CUDA's public description.
- ``output``: ``peak`` divides each filtered clip by its own peak (CUDA's rule: every clip then peaks at 1.0);
  ``match_peak`` scales it back to the peak the clip had before filtering (keeps loudness); ``none`` leaves it.

The convolution is "same"-aligned (torchaudio's fftconvolve), batched over the whole tensor set.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torchaudio.functional as AF
from pydantic import Field, SecretStr

from defenses.base import DEFENSES, MAX_TAPS, Defense, Protection
from lab.config import PluginConfig
from lab.keys import derive_seed, fingerprint, resolve_key


class CUDAConfig(PluginConfig):
    type: Literal["cuda"] = "cuda"
    key: SecretStr | None = None
    key_file: Path | None = None
    filter_length: int = Field(9, ge=1, le=MAX_TAPS)
    blur: float = Field(0.3, ge=0)
    one_tap: bool = True
    output: Literal["peak", "match_peak", "none"] = "peak"


class CUDAProtection(Protection):
    name = "cuda"
    file_by_file = True  # a class filter from the key over the clip, normalised by the clip's own peak

    def __init__(self, params: dict, key_fingerprint: str, sample_rate: int, filters: torch.Tensor):
        self.params = params
        self.key_fingerprint = key_fingerprint
        self.sample_rate = sample_rate
        self.filters = filters  # (C, k)

    def apply(self, waveforms, labels, lengths=None, filter_classes=None, **ablation):
        """Whole-clip class-wise convolution of ``waveforms`` (N, T); ``filter_classes`` gives a clip another
        class's filter."""
        cls = (labels if filter_classes is None else filter_classes).long()
        taps = self.filters[cls].to(waveforms)
        out = AF.fftconvolve(waveforms, taps, mode="same")
        if self.params["output"] != "none":
            peak = out.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
            target = 1.0 if self.params["output"] == "peak" else waveforms.abs().amax(dim=1, keepdim=True)
            out = torch.where(peak > 1e-12, out * target / peak, out)
        return out

    def class_filters(self):
        return self.filters

    def to_dict(self) -> dict:
        return {"defense": self.name, "params": self.params, "key_fingerprint": self.key_fingerprint,
                "sample_rate": self.sample_rate, "filters": self.filters.tolist()}


@DEFENSES.register("cuda")
class CUDA(Defense):
    """Class-wise random filter over the whole clip, then peak normalisation."""

    Config = CUDAConfig
    matched_baseline = 1

    @classmethod
    def example_config(cls, key):
        return {"key": key, "filter_length": 15}  # not the default 9 taps

    @classmethod
    def matched_config(cls, reference, snr_db=None):
        """The reference's key and, where it has them, its filter parameters (``filter_length``, ``blur``,
        ``one_tap``): the same kind of filters over the whole clip instead of a patch."""
        out = super().matched_config(reference, snr_db)
        out.update({k: getattr(reference, k) for k in ("filter_length", "blur", "one_tap") if hasattr(reference, k)})
        return out

    def derive(self, num_classes: int, sample_rate: int) -> CUDAProtection:
        cfg: CUDAConfig = self.config
        key = resolve_key(cfg.key, cfg.key_file)
        filters = []
        for c in range(num_classes):
            gen = torch.Generator().manual_seed(derive_seed(key, "cuda/v1/class", c))
            taps = cfg.blur * torch.rand(cfg.filter_length, generator=gen, dtype=torch.float64)
            if cfg.one_tap:
                taps[torch.randint(cfg.filter_length, (1,), generator=gen)] = 1.0
            filters.append(taps.float())
        params = cfg.model_dump(exclude={"key", "key_file", "type"}, mode="json")
        return CUDAProtection(params, fingerprint(key), sample_rate, torch.stack(filters))
