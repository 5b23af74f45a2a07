"""``cuda``: CUDA (Sadasivan et al., CVPR 2023) carried to 1-D audio: every clip of class i is convolved over its
whole length with the class-wise random filter f_i, then normalised by its own peak.

- ``key`` / ``key_file``: the private key; filters come from generators seeded by HMAC-SHA256(key, class index), as
  in PosCUDA (only the key's fingerprint is recorded).
- ``filter_length``: taps per filter; ``blur``: taps drawn i.i.d. from U(0, blur) (CUDA's pb, 0.3 by default);
  ``one_tap``: one randomly chosen tap set to 1.0, as in CUDA's public description.
- ``output``: ``peak`` divides each filtered clip by its own peak (CUDA's rule: every clip then peaks at 1.0);
  ``match_peak`` scales it back to the peak the clip had before filtering (keeps loudness); ``none`` leaves it.

The convolution is "same"-aligned (torchaudio's ``fftconvolve``), batched over the whole tensor set; a clip longer
than ``lab.dsp.ENERGY_CHUNK`` samples (24 s at 44.1 kHz) is convolved on that function's fixed grid of chunks
(``lab.dsp.convolve_same``), so that ``lab protect`` can stream a long file in blocks with the very same bits: a first
pass convolves the file block by block for its peak (and the source's), then the blocks are convolved again and
scaled.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, SecretStr

from defenses.base import DEFENSES, MAX_TAPS, Defense, InOrder, Protection
from lab import dsp
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


@dataclass
class FilePlan:
    """One long file for :meth:`CUDAProtection.apply_block`: its class and frames, and what the first pass found:
    each channel's peak after filtering and (for ``match_peak``) before (None until then)."""

    cls: int
    frames: int
    peak: torch.Tensor | None = None
    source_peak: torch.Tensor | None = None
    first: InOrder | None = None


def maximum(a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    return b if a is None else torch.maximum(a, b)


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
        out = dsp.convolve_same(waveforms, self.filters[cls].to(waveforms))
        if self.params["output"] == "none":
            return out
        source_peak = waveforms.abs().amax(dim=1, keepdim=True) if self.params["output"] == "match_peak" else None
        return self._scaled(out, out.abs().amax(dim=1, keepdim=True), source_peak)

    def _scaled(self, out: torch.Tensor, peak: torch.Tensor, source_peak: torch.Tensor | None) -> torch.Tensor:
        """``out`` scaled as ``output`` says, from each row's peak after filtering and (``match_peak``) before."""
        if self.params["output"] == "none":
            return out
        peak = peak.clamp(min=1e-12)
        target = 1.0 if self.params["output"] == "peak" else source_peak
        return torch.where(peak > 1e-12, out * target / peak, out)

    # --- lab protect's block hook (a long file in bounded memory): the file convolved on lab.dsp.convolve_same's
    # grid once for its peak (and the source's), then again beside the blocks, scaled. The first pass also keeps
    # blocks a multiple of the grid's chunk (no chunk computed twice), so it stays on for output: none
    block_first_pass = True

    def block_plan(self, cls, frames, channels):
        return FilePlan(cls, frames)

    def block_window(self, plan, a, b):
        return dsp.grid_window(a, b, plan.frames, self.filters.shape[-1])

    def _convolved(self, plan: FilePlan, x: torch.Tensor, lo: int, a: int, b: int) -> torch.Tensor:
        taps = self.filters[torch.full((x.shape[0],), plan.cls, dtype=torch.long)].to(x)
        return dsp.convolve_same(x, taps, lo, a, b, plan.frames)

    def block_stats(self, plan, x, start):
        if self.params["output"] == "none":
            return
        if plan.first is None:
            plan.first = InOrder(plan.frames, partial(self.block_window, plan), partial(self._convolved, plan))
        if self.params["output"] == "match_peak":
            plan.source_peak = maximum(plan.source_peak, x.abs().amax(dim=1, keepdim=True))
        out = plan.first.feed(x, start)
        if out is not None:
            plan.peak = maximum(plan.peak, out.abs().amax(dim=1, keepdim=True))

    def apply_block(self, plan, x, lo, a, b):
        return self._scaled(self._convolved(plan, x, lo, a, b), plan.peak, plan.source_peak)

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
