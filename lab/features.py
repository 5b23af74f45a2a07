"""Feature front-ends (raw waveform, MFCC, log-mel), computed once per tensor set and cached.

Every front-end maps waveforms (N, T) to features (N, C, F): raw gives C=1, F=T; MFCC and log-mel give C
coefficients/bands by F frames. Features are computed in chunks over the whole set and kept in an in-memory cache keyed
by a hash of the waveforms and the front-end's parameters (optionally also on disk), so a training epoch never
recomputes them.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import torch
import torchaudio.transforms as T
from pydantic import Field, model_validator

from lab.config import Section

FeatureType = Literal["raw", "mfcc", "logmel"]


class FeatureConfig(Section):
    type: FeatureType = "mfcc"
    n_mfcc: int = Field(40, ge=1)
    n_mels: int = Field(64, ge=1)
    win_ms: float = Field(25.0, gt=0)
    hop_ms: float = Field(10.0, gt=0)
    chunk: int = Field(512, ge=1)

    @model_validator(mode="after")
    def _enough_mels(self):
        if self.type == "mfcc" and self.n_mfcc > self.n_mels:
            raise ValueError(f"n_mfcc ({self.n_mfcc}) cannot exceed n_mels ({self.n_mels})")
        return self


class FrontEnd:
    def __init__(self, cfg: FeatureConfig, sample_rate: int):
        self.cfg = cfg
        self.sample_rate = sample_rate
        win = round(cfg.win_ms * sample_rate / 1000)
        hop = round(cfg.hop_ms * sample_rate / 1000)
        mel = dict(n_fft=win, win_length=win, hop_length=hop, n_mels=cfg.n_mels)
        if cfg.type == "mfcc":
            self.transform = T.MFCC(sample_rate, n_mfcc=cfg.n_mfcc, melkwargs=mel)
        elif cfg.type == "logmel":
            self.transform = T.MelSpectrogram(sample_rate, **mel)
        else:
            self.transform = None

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        """Features (B, C, F) of a batch of waveforms (B, T) on the batch's device, differentiable (PGD and
        learnable filters get gradients through it). The one implementation of the front-end: cached feature sets
        and per-batch features during training both come from here."""
        if self.cfg.type == "raw":
            return x.unsqueeze(1)
        if self.transform is not None and next(iter(self.transform.buffers())).device != x.device:
            self.transform = self.transform.to(x.device)
        y = self.transform(x)
        return torch.log(y + 1e-6) if self.cfg.type == "logmel" else y

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
