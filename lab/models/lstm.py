"""LSTM over feature frames (or raw audio cut into short frames).

``pooling``: ``mean`` averages the outputs over time (default); ``last`` takes the last step's output, which on
right-padded clips sits deep in silence (on FSDD, 1 s clips of 0.44 s speech on average, a 2x128 LSTM with ``last``
stayed near chance after 5 epochs in this lab's runs).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from lab.config import PluginConfig
from lab.models.base import MODELS, Classifier, frames


class LSTMConfig(PluginConfig):
    type: Literal["lstm"] = "lstm"
    hidden: int = Field(128, ge=1)
    layers: int = Field(2, ge=1)
    bidirectional: bool = False
    dropout: float = Field(0.1, ge=0, lt=1)
    frame_ms: float = Field(10.0, gt=0)  # raw audio only: frame length of the input sequence
    pooling: Literal["mean", "last"] = "mean"


@MODELS.register("lstm")
class LSTM(Classifier):
    Config = LSTMConfig

    def __init__(self, cfg: LSTMConfig, input_shape: tuple[int, int], num_classes: int, raw: bool, sample_rate: int):
        super().__init__()
        self.raw = raw
        self.frame = max(1, round(cfg.frame_ms * sample_rate / 1000))
        in_dim = self.frame if raw else input_shape[0]
        self.lstm = nn.LSTM(in_dim, cfg.hidden, cfg.layers, batch_first=True, bidirectional=cfg.bidirectional,
                            dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.pooling = cfg.pooling
        self.head = nn.Linear(cfg.hidden * (2 if cfg.bidirectional else 1), num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(frames(x, self.raw, self.frame))
        return out.mean(dim=1) if self.pooling == "mean" else out[:, -1]
