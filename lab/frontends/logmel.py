"""``logmel``: the log of torchaudio's mel spectrogram (``n_mels`` bands; log(power + 1e-6))."""
from __future__ import annotations

import torch
import torchaudio.transforms as T

from lab.frontends.base import FRONTENDS, FrontEndKind


@FRONTENDS.register("logmel")
class LogMel(FrontEndKind):
    def __init__(self, cfg, sample_rate: int):
        super().__init__(cfg, sample_rate)
        self.transform = T.MelSpectrogram(sample_rate, **self.mel_kwargs())

    def compute(self, x):
        return torch.log(self.transform(x) + 1e-6)
