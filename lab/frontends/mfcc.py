"""``mfcc``: torchaudio's MFCC (``n_mfcc`` coefficients of ``n_mels`` mel bands, ``win_ms`` windows every ``hop_ms``)."""
from __future__ import annotations

import torchaudio.transforms as T

from lab.frontends.base import FRONTENDS, FrontEndKind


@FRONTENDS.register("mfcc")
class MFCC(FrontEndKind):
    def __init__(self, cfg, sample_rate: int):
        super().__init__(cfg, sample_rate)
        self.transform = T.MFCC(sample_rate, n_mfcc=cfg.n_mfcc, melkwargs=self.mel_kwargs())

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.n_mfcc > cfg.n_mels:
            raise ValueError(f"n_mfcc ({cfg.n_mfcc}) cannot exceed n_mels ({cfg.n_mels})")

    def compute(self, x):
        return self.transform(x)
