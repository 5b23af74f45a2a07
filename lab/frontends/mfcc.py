"""``mfcc``: torchaudio's MFCC (``n_mfcc`` coefficients of ``n_mels`` mel bands, ``win_ms`` windows every ``hop_ms``),
each clip's dB scale floored 80 dB below its own loudest value.

torchaudio's ``AmplitudeToDB`` (inside ``MFCC``, ``top_db=80``) floors at the loudest value of each item of its
batch dimension, and a (B, T) input reaches it as ONE item of B channels: a clip's MFCCs then depended on the clips
computed beside it (a quiet clip beside a loud one: differences of 300+). Each clip goes in as its own item,
(B, 1, T), so the floor is its own. Every MFCC number the lab measured before this change carries the old floor."""
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
        return self.transform(x.unsqueeze(-2)).squeeze(-3)
