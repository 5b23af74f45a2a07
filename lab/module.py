"""One LightningModule for every architecture: standardises features, trains with cross-entropy and Adam, and
measures accuracy (overall and per class) with torchmetrics, so evaluation is correct across devices (DDP).

It has no validation step: what is monitored during training (the clean test set, for learning curves) is
scored by a callback (lab.train.CleanTestMonitor), so a fit without monitoring raises no Lightning warning.

It builds its classifier itself, from the recipe's model section and the feature shape, and saves what it was built
from as Lightning hyperparameters (plain JSON values: the model's config, feature shape, classes, learning rate,
weight decay, raw input, sample rate). A checkpoint ``lab run`` writes therefore loads back with Lightning's own
``LabModule.load_from_checkpoint(path)``; the standardisation buffers are in its state dict."""
from __future__ import annotations

from typing import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from lab.config import PluginConfig, parse_plugin
from lab.models.base import MODELS, build_model


class LabModule(L.LightningModule):
    """The recipe's classifier (``model``: the recipe's model section, a config or its JSON mapping) for features
    of ``feature_shape`` (C, F), standardised with ``mean`` and ``std`` (C, 1) (default: none, 0 and 1, as a
    checkpoint's state dict then overwrites them), trained with Adam (``lr``, ``weight_decay``). ``raw`` and
    ``sample_rate``: the features are the audio itself, at that rate (see lab.models)."""

    def __init__(self, model: PluginConfig | dict, feature_shape: Sequence[int], num_classes: int, lr: float,
                 weight_decay: float, raw: bool, sample_rate: int, mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None, frontend=None):
        super().__init__()
        cfg = model if isinstance(model, PluginConfig) else parse_plugin(MODELS, model, "model")
        shape = tuple(int(d) for d in feature_shape)
        # what rebuilds the classifier (load_from_checkpoint): JSON values only, so the checkpoint loads weights-only
        self.save_hyperparameters({"model": cfg.model_dump(mode="json"), "feature_shape": list(shape),
                                   "num_classes": num_classes, "lr": lr, "weight_decay": weight_decay, "raw": raw,
                                   "sample_rate": sample_rate})
        # the feature front-end (lab.features.FrontEnd) when the module is trained on waveform batches; kept out of
        # the module's state (saved models hold the classifier and its standardisation only)
        self._frontend = frontend
        self.model = build_model(cfg, shape, num_classes, raw, sample_rate)
        self.num_classes = num_classes
        self.lr = lr
        self.weight_decay = weight_decay
        mean = torch.zeros(shape[0], 1) if mean is None else mean
        std = torch.ones(shape[0], 1) if std is None else std
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_class_acc = MulticlassAccuracy(num_classes, average="none")

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalise(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(self.normalise(x))

    def features(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Features of waveform batches through the front-end, differentiable (for attacks that need gradients
        with respect to the audio, e.g. PGD): ``module(module.features(w))`` classifies audio."""
        if self._frontend is None:
            raise RuntimeError("this module was not given the feature front-end (it was trained on features)")
        return self._frontend.compute(waveforms)

    def training_step(self, batch, _):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def test_step(self, batch, _):
        x, y = batch
        logits = self(x)
        self.test_acc.update(logits, y)
        self.test_class_acc.update(logits, y)

    def on_test_epoch_end(self):
        # Logged (not only stored) so that trainer.test returns them from every strategy, spawned DDP included;
        # torchmetrics' compute() already synchronises the states across processes.
        self.log("test_acc", self.test_acc.compute())
        for i, acc in enumerate(self.test_class_acc.compute()):
            self.log(f"test_acc_class_{i}", acc)
        self.test_acc.reset()
        self.test_class_acc.reset()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def standardisation(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over clips and frames of a training set's features (N, C, F) -> (C, 1) each."""
    mean = features.mean(dim=(0, 2))[:, None]
    std = features.std(dim=(0, 2))[:, None].clamp(min=1e-5)
    return mean, std
