from __future__ import annotations

import pytest
import torch

from lab.features import FeatureConfig, FrontEnd
from lab.frontends import FRONTENDS
from lab.models import build_model
from lab.recipe import recipe_from_dict

# the feature shape of one second at 8 kHz, for every registered front-end (raw (1, 8000), mfcc (40, 101), ...)
SHAPES = {name: tuple(FrontEnd(FeatureConfig(type=name), 8000)(torch.zeros(1, 8000)).shape[1:])
          for name in FRONTENDS.names()}


@pytest.mark.parametrize("feature", list(SHAPES))
@pytest.mark.parametrize("model", [{"type": "cnn", "head": "global"}, {"type": "cnn", "head": "flatten"},
                                   {"type": "lstm"}, {"type": "lstm", "pooling": "last"}, {"type": "transformer"},
                                   {"type": "transformer", "positional": "learned"}])
def test_forward_and_backward(model, feature):
    """Configuration variants of the built-in models on every front-end (every registered model with its defaults:
    tests/test_contracts.py)."""
    cfg = recipe_from_dict({"model": model}).model
    net = build_model(cfg, SHAPES[feature], 10, FRONTENDS.get(feature).raw, 8000)
    x = torch.randn(3, *SHAPES[feature])
    out = net(x)
    assert out.shape == (3, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    assert net.embed(x).dim() == 2


def test_flatten_head_sees_position_global_does_not():
    """A time-shifted input changes a flatten-head CNN's logits; the global head is (nearly) shift-blind."""
    torch.manual_seed(0)
    x = torch.zeros(1, 40, 101)
    x[0, :, 32:40] = 1.0
    shifted = torch.roll(x, 24, dims=2)  # a multiple of the pooling stride (8), away from the edges
    for head, blind in (("global", True), ("flatten", False)):
        cfg = recipe_from_dict({"model": {"type": "cnn", "head": head, "dropout": 0.0}}).model
        net = build_model(cfg, (40, 101), 10, False, 8000).eval()
        diff = (net(x) - net(shifted)).abs().max().item()
        assert (diff < 1e-4) == blind, (head, diff)
