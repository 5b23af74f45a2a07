"""Feature front-ends (raw waveform, MFCC, log-mel, and any registered in lab.frontends), computed once per tensor set
and cached.

Every front-end maps waveforms (N, T) to features (N, C, F): raw gives C=1, F=T; MFCC and log-mel give C
coefficients/bands by F frames. Features are computed in chunks over the whole set and kept in an in-memory cache keyed
by a hash of the waveforms and the front-end's parameters (optionally also on disk), so a training epoch never
recomputes them.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
import torch
from pydantic import Field, field_validator, model_validator

from lab.config import Section
from lab.errors import LabError

class FeatureConfig(Section):
    type: str = "mfcc"  # a registered front-end (lab.frontends; `lab list` shows them)
    n_mfcc: int = Field(40, ge=1)
    n_mels: int = Field(64, ge=1)
    win_ms: float = Field(25.0, gt=0)
    hop_ms: float = Field(10.0, gt=0)
    chunk: int = Field(512, ge=1)

    @field_validator("type")
    @classmethod
    def _known(cls, v: str) -> str:
        from lab.frontends import FRONTENDS
        try:
            FRONTENDS.get(v)
        except LabError as e:
            raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def _fits_the_front_end(self):
        from lab.frontends import FRONTENDS
        FRONTENDS.get(self.type).check(self)
        return self

    @property
    def raw(self) -> bool:
        """Whether the front-end hands the models the audio itself (1-D models, frames of samples)."""
        from lab.frontends import FRONTENDS
        return FRONTENDS.get(self.type).raw


class FrontEnd:
    """The recipe's front-end (lab.frontends, by ``features.type``) at a sample rate, with chunked, cached use."""

    def __init__(self, cfg: FeatureConfig, sample_rate: int):
        from lab.frontends import FRONTENDS
        self.cfg = cfg
        self.sample_rate = sample_rate
        self.kind = FRONTENDS.get(cfg.type)(cfg, sample_rate)

    @property
    def transform(self):
        return self.kind.transform

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        """Features (B, C, F) of a batch of waveforms (B, T) on the batch's device, differentiable (PGD and
        learnable filters get gradients through it). The one implementation of the front-end: cached feature sets
        and per-batch features during training both come from here."""
        t = self.kind.transform
        if t is not None and next(iter(t.buffers())).device != x.device:
            self.kind.transform = t.to(x.device)
        return self.kind.compute(x)

    @torch.no_grad()
    def __call__(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Features (N, C, F) of waveforms (N, T), computed in chunks of ``chunk`` clips (bounded memory)."""
        if len(waveforms) <= self.cfg.chunk:
            return self.compute(waveforms)
        return torch.cat([self.compute(c) for c in waveforms.split(self.cfg.chunk)])

    def key(self) -> str:
        return f"{self.cfg.model_dump_json()}@{self.sample_rate}"


def tensor_hash(x: torch.Tensor) -> str:
    return hashlib.sha1(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class FeatureCache:
    """Features by (waveform hash, front-end): computed once, then served from memory (and ``disk``, if given)."""

    def __init__(self, disk: Path | None = None):
        self.memory: dict[str, torch.Tensor] = {}
        self.disk = Path(disk) if disk else None
        self.computed = 0

    def __call__(self, frontend: FrontEnd, waveforms: torch.Tensor) -> torch.Tensor:
        key = hashlib.sha1(f"{tensor_hash(waveforms)}|{frontend.key()}".encode()).hexdigest()
        if key in self.memory:
            return self.memory[key]
        path = self.disk / f"{key}.pt" if self.disk else None
        if path is not None and path.is_file():
            feats = torch.load(path)
        else:
            feats = frontend(waveforms)
            self.computed += 1
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                torch.save(feats, tmp)
                tmp.replace(path)
        self.memory[key] = feats
        return feats
