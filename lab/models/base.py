from __future__ import annotations

import torch
from torch import nn

from lab.config import PluginConfig
from lab.registry import Registry

MODELS: Registry = Registry("model", package="lab.models")


class Classifier(nn.Module):
    """Base: ``embed`` (B, C, F) -> (B, D), then a linear ``head``."""

    head: nn.Module

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def frames(x: torch.Tensor, raw: bool, frame: int) -> torch.Tensor:
    """A sequence (B, L, D) for recurrent/attention models: spectral frames, or raw audio cut into ``frame``-sample
    non-overlapping frames (the tail that does not fill a frame is dropped)."""
    if raw:
        x = x[:, 0]
        usable = (x.shape[1] // frame) * frame
        return x[:, :usable].reshape(x.shape[0], -1, frame)
    return x.transpose(1, 2)


def build_model(cfg: PluginConfig, input_shape: tuple[int, int], num_classes: int, raw: bool,
                sample_rate: int) -> Classifier:
    return MODELS.get(cfg.type)(cfg, input_shape, num_classes, raw, sample_rate)
