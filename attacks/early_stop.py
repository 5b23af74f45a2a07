"""``early-stop``: the trainer keeps a few clean labelled clips aside and stops at the epoch that scores best on them.

Availability poisons are known to behave differently early and late in training: a model may learn the real task
first and the shortcut later (or the other way round). An attacker who holds a small clean labelled set (here taken
from the training clips, default 1% per class, as their CLEAN versions: the attacker labelled a few recordings of
their own) trains on the rest of the protected data as usual, scores the held-out clips after every epoch, and keeps
the weights of the best epoch (the first one reaching the best score). The held-out clips are never trained on.

It reports the clean-test accuracy of that epoch's model, and measures which epoch it was and the held-out accuracy
of every epoch.
"""
from __future__ import annotations

import copy
import functools
from typing import Literal

import torch
from pydantic import Field

from attacks.base import ATTACKS, Attack
from lab.config import PluginConfig


class EarlyStopConfig(PluginConfig):
    type: Literal["early-stop"] = "early-stop"
    holdout_fraction: float = Field(0.01, gt=0, lt=1)  # of each class's training clips (at least one per class)
    holdout_per_class: int | None = Field(None, ge=1)  # a count per class instead of the fraction
    seed: int = 0  # which clips are held out


def holdout_indices(labels: torch.Tensor, num_classes: int, fraction: float, per_class: int | None,
                    seed: int) -> torch.Tensor:
    """Sorted indices of the held-out clips: ``per_class`` clips of each class (or round(fraction x the class's
    clips), at least one), drawn with ``seed``; a class keeps at least one clip to train on."""
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c in range(num_classes):
        mine = (labels == c).nonzero().flatten()
        if len(mine) < 2:
            continue
        k = per_class if per_class is not None else max(1, round(fraction * len(mine)))
        k = min(k, len(mine) - 1)
        picked.append(mine[torch.randperm(len(mine), generator=gen)[:k]])
    return torch.cat(picked).sort().values if picked else torch.zeros(0, dtype=torch.long)


@functools.cache
def best_epoch_callback() -> type:
    """The Lightning callback class below, made on first use: Lightning (about 5 s of imports) is imported when an
    attack trains, not when the registry imports every plugin (`lab list`, a one-line error)."""
    import lightning as L

    class BestEpoch(L.Callback):
        """After every training epoch: the accuracy on the held-out clips; keeps a copy of the best epoch's weights."""

        def __init__(self, features: torch.Tensor, labels: torch.Tensor):
            self.features, self.labels = features, labels
            self.history: list[float] = []
            self.best_state: dict | None = None

        @torch.no_grad()
        def on_train_epoch_end(self, trainer, module) -> None:
            was_training = module.training
            module.eval()
            pred = torch.cat([module(x.to(module.device)).argmax(dim=1).cpu() for x in self.features.split(256)])
            module.train(was_training)
            acc = float((pred == self.labels).float().mean())
            if not self.history or acc > max(self.history):
                self.best_state = copy.deepcopy(module.state_dict())
            self.history.append(acc)

        @property
        def best_epoch(self) -> int:
            """1-based: the first epoch that reached the best held-out accuracy."""
            return self.history.index(max(self.history)) + 1

    return BestEpoch


@ATTACKS.register("early-stop")
class EarlyStop(Attack):
    """Hold out a small clean labelled set; keep the epoch that scores best on it."""

    Config = EarlyStopConfig
    needs_clean = True  # scores clean held-out training clips after every epoch

    def start(self, ctx) -> None:
        super().start(ctx)
        cfg = self.config
        self.holdout = holdout_indices(ctx.labels, ctx.num_classes, cfg.holdout_fraction, cfg.holdout_per_class,
                                       cfg.seed)
        keep = torch.ones(len(ctx.labels), dtype=torch.bool)
        keep[self.holdout] = False
        self.train_idx = keep.nonzero().flatten()
        self.monitor = None  # the BestEpoch callback of this training run

    def training_set(self, ctx):
        return ctx.protected[self.train_idx], ctx.labels[self.train_idx]

    def callbacks(self, ctx) -> list:
        if ctx.features is None:
            raise RuntimeError("early-stop needs the context's feature front-end (AttackContext.features)")
        self.monitor = best_epoch_callback()(ctx.features(ctx.clean[self.holdout]), ctx.labels[self.holdout])
        return [self.monitor]

    def after_training(self, module, ctx):
        m = self.monitor
        if m is not None and m.best_state is not None:
            module.load_state_dict(m.best_state)
            self.measured = {"holdout_clips": len(self.holdout), "best_epoch": m.best_epoch,
                             "epochs": len(m.history), "holdout_accuracy": [round(a, 4) for a in m.history]}
        return {"": module}
