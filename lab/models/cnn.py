"""Convolutional networks: 2-D over MFCC/log-mel "images", 1-D over raw audio (M5-like).

``head`` decides whether the model can see WHERE a pattern is, which matters to PosCUDA:
``global`` averages the last feature map over time (and frequency), so it is position-blind up to its receptive
field; ``flatten`` feeds the whole last feature map to the classifier, so it keeps the time position.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from lab.config import PluginConfig
from lab.models.base import MODELS, Classifier


class CNNConfig(PluginConfig):
    type: Literal["cnn"] = "cnn"
    head: Literal["global", "flatten"] = "flatten"
    channels: list[int] = Field(default_factory=lambda: [8, 16, 32])
    raw_kernel_ms: float = Field(10.0, gt=0)  # first-layer kernel of the 1-D CNN on raw audio
    raw_stride: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)


@MODELS.register("cnn")
class CNN(Classifier):
    Config = CNNConfig

    def __init__(self, cfg: CNNConfig, input_shape: tuple[int, int], num_classes: int, raw: bool, sample_rate: int):
        super().__init__()
        self.raw = raw
        layers: list[nn.Module] = []
        if raw:
            c_in = 1
            kernel = max(3, round(cfg.raw_kernel_ms * sample_rate / 1000))
            for i, c in enumerate(cfg.channels):
                layers += [nn.Conv1d(c_in, c, kernel if i == 0 else 3, stride=cfg.raw_stride if i == 0 else 1,
                                     padding=0 if i == 0 else 1),
                           nn.BatchNorm1d(c), nn.ReLU(), nn.MaxPool1d(4)]
                c_in = c
            pool = nn.AdaptiveAvgPool1d(1)
        else:
            c_in = 1
            for c in cfg.channels:
                layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
                c_in = c
            pool = nn.AdaptiveAvgPool2d(1)
        self.body = nn.Sequential(*layers)
        self.pool = pool if cfg.head == "global" else nn.Identity()
        with torch.no_grad():
            dim = self._features(torch.zeros(1, *input_shape)).shape[1]
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(dim, num_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = x if self.raw else x.unsqueeze(1)
        return torch.flatten(self.pool(self.body(x)), 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self._features(x))
