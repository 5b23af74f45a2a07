"""``codec``: squeeze the shortcut out (the audio analogue of ISS's JPEG / bit-depth squeezing).

The training set is passed once, before training, through the steps of ``methods`` in order:

- ``resample``: down to ``resample_hz`` and back up to the dataset's rate (removes everything above
  ``resample_hz / 2``);
- ``bits``: quantise to ``bits`` bits (2**(bits-1) levels per unit of amplitude);
- ``mp3``: MP3 encode and decode at ``mp3_kbps`` kbit/s (audiomentations' Mp3Compression with the fast-mp3-augment
  backend: ``pip install fast-mp3-augment``, or the lab's ``codec`` extra).

Done once per training run (the compression is deterministic), so a training epoch costs what a plain one does.
"""
from __future__ import annotations

from typing import Literal

import torch
import torchaudio.functional as AF
from pydantic import Field, field_validator

from attacks.base import ATTACKS, Attack
from lab.config import PluginConfig


def mp3_available() -> bool:
    try:
        import fast_mp3_augment  # noqa: F401
        return True
    except ImportError:
        return False


class CodecConfig(PluginConfig):
    type: Literal["codec"] = "codec"
    methods: list[Literal["resample", "bits", "mp3"]] = Field(default_factory=lambda: ["resample", "bits"],
                                                               min_length=1)
    resample_hz: int = Field(4000, gt=0)
    bits: int = Field(8, ge=1, le=24)
    mp3_kbps: int = Field(32, ge=8, le=320)

    @field_validator("methods")
    @classmethod
    def _mp3(cls, v):
        if "mp3" in v and not mp3_available():
            raise ValueError("method 'mp3' needs the fast-mp3-augment package (pip install fast-mp3-augment); "
                             "'resample' and 'bits' need nothing")
        return v


def resample_down_up(x: torch.Tensor, sr: int, low: int) -> torch.Tensor:
    if low >= sr:
        return x.clone()
    return AF.resample(AF.resample(x, sr, low), low, sr)[:, : x.shape[1]]


def reduce_bits(x: torch.Tensor, bits: int) -> torch.Tensor:
    levels = 2 ** (bits - 1)
    return torch.round(x * levels) / levels


def mp3(x: torch.Tensor, sr: int, kbps: int) -> torch.Tensor:
    import audiomentations
    t = audiomentations.Mp3Compression(min_bitrate=kbps, max_bitrate=kbps, backend="fast-mp3-augment", p=1.0)
    return torch.stack([torch.from_numpy(t(r.numpy().astype("float32"), sr)[: x.shape[1]]) for r in x.cpu()]).to(x)


def squeeze(x: torch.Tensor, sr: int, cfg: CodecConfig) -> torch.Tensor:
    for method in cfg.methods:
        if method == "resample":
            x = resample_down_up(x, sr, cfg.resample_hz)
        elif method == "bits":
            x = reduce_bits(x, cfg.bits)
        else:
            x = mp3(x, sr, cfg.mp3_kbps)
    return x


@ATTACKS.register("codec")
class Codec(Attack):
    """Compress the protected training set once (resampling, bit depth, MP3) and train on the result."""

    Config = CodecConfig

    def training_set(self, ctx):
        return squeeze(ctx.protected, ctx.sample_rate, self.config), ctx.labels
