"""A linear classifier: the standardised features (or the raw waveform), flattened, times one weight matrix.

The simplest surrogate there is: simple and linear surrogates transfer error-minimising noise surprisingly well
(Transferable Unlearnable Examples, ICLR 2023), so ``ensemble-em`` uses one as a member. It sees every position of
every feature (no pooling), so on its own it is the most position-bound of the lab's models. ``embed`` is the
flattened input (after dropout): there is no hidden layer.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from lab.config import PluginConfig
from lab.models.base import MODELS, Classifier


class LinearConfig(PluginConfig):
    type: Literal["linear"] = "linear"
    dropout: float = Field(0.0, ge=0, lt=1)


@MODELS.register("linear")
class Linear(Classifier):
    Config = LinearConfig

    def __init__(self, cfg: LinearConfig, input_shape: tuple[int, int], num_classes: int, raw: bool,
                 sample_rate: int):
        super().__init__()
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(int(input_shape[0]) * int(input_shape[1]), num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.flatten(x, 1))
