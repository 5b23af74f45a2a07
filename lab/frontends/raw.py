"""``raw``: the waveform itself, one channel (B, 1, T); the models cut it into frames or convolve it in 1-D."""
from __future__ import annotations

from lab.frontends.base import FRONTENDS, FrontEndKind


@FRONTENDS.register("raw")
class Raw(FrontEndKind):
    raw = True

    def compute(self, x):
        return x.unsqueeze(1)
