"""Training and evaluation with a configured (not subclassed) Lightning Trainer."""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lab.models import build_model
from lab.module import LabModule, standardisation

for _name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*predict_dataloader.*")
warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed.*")


@dataclass
class Fitted:
    module: LabModule
    seconds: float
    epochs: int
    log_dir: str | None


def _several_devices(devices) -> bool:
    if isinstance(devices, int):
        return devices > 1 or devices == -1
    return str(devices) not in ("1", "auto")


def make_trainer(train_cfg, max_epochs: int = 1, logger=False, progress: bool = False, single: bool = False) -> L.Trainer:
    """A Trainer as the recipe's ``train`` section configures it. Several devices with ``strategy: auto`` use
    ``ddp_spawn``: Lightning's default ``ddp`` re-executes the whole command in every process, which would redo (and
    re-write) a whole ``lab run``. ``single`` forces one device (evaluation: exact, no padded distributed sampler)."""
    strategy, devices = train_cfg.strategy, train_cfg.devices
    if single:
        strategy, devices = "auto", 1
    elif _several_devices(devices) and strategy == "auto":
        strategy = "ddp_spawn"
    if strategy == "ddp_spawn":
        # the default shared-memory file descriptors fail in some sandboxes ("unable to resize file")
        torch.multiprocessing.set_sharing_strategy("file_system")
    callbacks = []
    if progress:
        from lightning.pytorch.callbacks import RichProgressBar
        callbacks.append(RichProgressBar(leave=False))
    return L.Trainer(max_epochs=max_epochs, accelerator=train_cfg.accelerator, devices=devices,
                     strategy=strategy, precision=train_cfg.precision,
                     deterministic=train_cfg.deterministic, logger=logger, enable_checkpointing=False,
                     enable_model_summary=False, enable_progress_bar=progress, callbacks=callbacks,
                     num_sanity_val_steps=0, log_every_n_steps=1)


def fit(recipe, features: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int,
        val: tuple[torch.Tensor, torch.Tensor] | None = None, log_dir: Path | None = None, name: str = "model",
        progress: bool = False, epochs: int | None = None) -> Fitted:
    """Train the recipe's model on ``features`` (N, C, F) with ``labels`` from seed ``seed``.

    ``val`` is monitored each epoch (learning curves) and never used to choose anything: the last epoch's model is
    returned.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    cfg = recipe.train
    model = build_model(recipe.model, tuple(features.shape[1:]), num_classes, recipe.features.type == "raw",
                        recipe.data.sample_rate)
    mean, std = standardisation(features)
    module = LabModule(model, num_classes, cfg.lr, cfg.weight_decay, mean, std)
    gen = torch.Generator().manual_seed(seed)
    train_dl = DataLoader(TensorDataset(features, labels), batch_size=cfg.batch_size, shuffle=True, generator=gen)
    val_dl = DataLoader(TensorDataset(*val), batch_size=256) if val is not None else None
    logger = CSVLogger(str(log_dir), name=name, version=f"seed{seed}") if log_dir is not None else False
    trainer = make_trainer(cfg, epochs or cfg.epochs, logger, progress)
    start = time.perf_counter()
    trainer.fit(module, train_dl, val_dl)
    return Fitted(module, time.perf_counter() - start, epochs or cfg.epochs,
                  logger.log_dir if logger else None)


def evaluate(module: LabModule, train_cfg, features: torch.Tensor, labels: torch.Tensor) -> dict:
    """Accuracy (overall and per class) of a trained module on a feature set."""
    trainer = make_trainer(train_cfg, single=True)
    logged = trainer.test(module, DataLoader(TensorDataset(features, labels), batch_size=256), verbose=False)[0]
    return {"accuracy": float(logged["test_acc"]),
            "per_class": [float(logged[f"test_acc_class_{i}"]) for i in range(module.num_classes)]}


@torch.no_grad()
def embed(module: LabModule, features: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Penultimate-layer embeddings (N, D) of a trained module."""
    module.eval()
    return torch.cat([module.embed(x.to(module.device)).cpu() for x in features.split(batch)])
