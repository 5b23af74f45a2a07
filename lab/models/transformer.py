"""Transformer encoder over feature frames (or raw-audio frames) with a positional encoding, mean-pooled.

``positional``: ``sinusoidal`` (fixed), ``learned`` (a trained table) or ``none`` (the model is then blind to order,
and so to where a PosCUDA patch is, except through the content itself).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from lab.config import PluginConfig
from lab.models.base import MODELS, Classifier, frames


class TransformerConfig(PluginConfig):
    type: Literal["transformer"] = "transformer"
    d_model: int = Field(64, ge=1)
    heads: int = Field(4, ge=1)
    layers: int = Field(2, ge=1)
    ff_mult: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    positional: Literal["sinusoidal", "learned", "none"] = "sinusoidal"
    frame_ms: float = Field(10.0, gt=0)


def sinusoidal(length: int, dim: int) -> torch.Tensor:
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return pe


@MODELS.register("transformer")
class Transformer(Classifier):
    Config = TransformerConfig

    def __init__(self, cfg: TransformerConfig, input_shape: tuple[int, int], num_classes: int, raw: bool,
                 sample_rate: int):
        super().__init__()
        if cfg.d_model % cfg.heads:
            from lab.errors import LabError
            raise LabError(f"model.d_model ({cfg.d_model}) must be divisible by model.heads ({cfg.heads})")
        self.raw = raw
        self.frame = max(1, round(cfg.frame_ms * sample_rate / 1000))
        in_dim = self.frame if raw else input_shape[0]
        length = input_shape[1] // self.frame if raw else input_shape[1]
        self.proj = nn.Linear(in_dim, cfg.d_model)
        if cfg.positional == "learned":
            self.pos = nn.Parameter(torch.randn(length, cfg.d_model) * 0.02)
        else:
            self.register_buffer("pos", sinusoidal(length, cfg.d_model) if cfg.positional == "sinusoidal"
                                 else torch.zeros(length, cfg.d_model), persistent=False)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, cfg.d_model * cfg.ff_mult, cfg.dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(frames(x, self.raw, self.frame))
        h = self.encoder(h + self.pos[: h.shape[1]])
        return self.norm(h.mean(dim=1))
