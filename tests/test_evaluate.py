"""Evaluation without Lightning's test loop on the CPU gives exactly what Trainer.test gives."""
from __future__ import annotations

import torch

from lab.models.cnn import CNNConfig
from lab.module import LabModule, standardisation
from lab.recipe import TrainConfig
from lab.train import _evaluate_directly, _evaluate_with_trainer, evaluate


def _module_and_data(n: int = 300, classes: int = 10):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, 20, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    x[torch.arange(n), y % 8, :5] += 2.0  # something to be right about, so accuracies are not all equal
    torch.manual_seed(1)
    module = LabModule(CNNConfig(channels=[4, 8]), x.shape[1:], classes, 1e-3, 0.0, False, 8000, *standardisation(x))
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    for _ in range(20):  # a few steps of plain gradient descent: a model that is right about some clips
        loss = torch.nn.functional.cross_entropy(module(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return module, x, y


def test_direct_evaluation_equals_lightnings_test_loop():
    module, x, y = _module_and_data()  # 300 clips: two batches, the second partial
    cfg = TrainConfig()
    direct = _evaluate_directly(module, x, y)
    lightning = _evaluate_with_trainer(module, cfg, x, y)
    assert direct == lightning
    assert evaluate(module, cfg, x, y) == direct  # the CPU path at full precision takes the direct route
    assert 0.1 < direct["accuracy"] < 1.0 and len(set(direct["per_class"])) > 1  # not a degenerate case
    assert module.training  # the module's mode is left as it was
    assert _evaluate_directly(module, x[:50], y[:50]) == _evaluate_with_trainer(module, cfg, x[:50], y[:50])
