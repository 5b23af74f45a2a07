"""Training and evaluation with a configured (not subclassed) Lightning Trainer."""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lab.module import LabModule, standardisation

for _name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*predict_dataloader.*")
warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
# a run's models/ folder holds every model's checkpoint: the second one to be written finds the first there
warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed.*")


@dataclass
class Fitted:
    module: LabModule
    seconds: float
    epochs: int
    log_dir: str | None
    monitored: list[float] | None = None  # the monitored set's accuracy after each epoch (when monitored)

    def convergence(self) -> dict | None:
        """Final and peak accuracy on the monitored set and the epoch (1-based) of the peak; None unmonitored.
        The peak is what a trainer who could pick the best epoch on this very set would get: reported, never used
        to choose the model (the last epoch is returned and evaluated)."""
        if not self.monitored:
            return None
        peak = max(range(len(self.monitored)), key=lambda i: self.monitored[i])  # first epoch reaching the peak
        return {"final": self.monitored[-1], "peak": self.monitored[peak], "peak_epoch": peak + 1,
                "settled_epoch": settled_epoch(self.monitored), "epochs": len(self.monitored),
                "per_epoch": list(self.monitored)}


SETTLED_TOLERANCE, SETTLED_WINDOW = 0.02, 10


def settled_epoch(history: list[float], tol: float = SETTLED_TOLERANCE, window: int = SETTLED_WINDOW) -> int:
    """The first epoch (1-based) from which every later value of ``history`` stays within ``tol`` of the mean of
    its last ``window`` values (all of them when there are fewer): when the curve stopped moving. Equal to the
    number of epochs when even the last value is that far off (never the case: it is in the mean's window) or the
    curve is still moving at the end; a settled epoch close to the last epoch means: train longer to be sure."""
    if not history:
        raise ValueError("settled_epoch: empty history")
    tail = history[-window:]
    level = sum(tail) / len(tail)
    epoch = len(history)
    for i in range(len(history) - 1, -1, -1):
        if abs(history[i] - level) > tol:
            break
        epoch = i + 1
    return epoch


def _several_devices(devices) -> bool:
    if isinstance(devices, int):
        return devices > 1 or devices == -1
    return str(devices) not in ("1", "auto")


def make_trainer(train_cfg, max_epochs: int = 1, logger=False, progress: bool = False, single: bool = False,
                 callbacks: list | None = None) -> L.Trainer:
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
    callbacks = list(callbacks or [])
    if progress:
        from lightning.pytorch.callbacks import RichProgressBar
        callbacks.append(RichProgressBar(leave=False))
    return L.Trainer(max_epochs=max_epochs, accelerator=train_cfg.accelerator, devices=devices,
                     strategy=strategy, precision=train_cfg.precision,
                     deterministic=train_cfg.deterministic, logger=logger,
                     enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                     enable_model_summary=False, enable_progress_bar=progress, callbacks=callbacks,
                     num_sanity_val_steps=0, log_every_n_steps=1)


class TrainingData(L.LightningDataModule):
    """What one fit trains on, as Lightning expects it: a shuffled loader (``seed``'s order) over ``inputs``.

    ``inputs`` are features (N, C, F); or waveforms (N, T) with a ``frontend``: then every training batch, once on
    its device, goes through ``batch_transform(waveforms, labels, module)`` (an attack's per-batch change, which may
    use the module being trained, e.g. for PGD) and the front-end makes its features (``on_after_batch_transfer``,
    Lightning's own hook). The model's standardisation comes from ``stats_features`` (default: ``inputs``), the
    untransformed training features."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int, frontend=None,
                 batch_transform=None, stats_features: torch.Tensor | None = None):
        super().__init__()
        if frontend is None and batch_transform is not None:
            raise ValueError("a per-batch transform needs waveform inputs and the front-end")
        self.inputs, self.labels, self.batch_size, self.seed = inputs, labels, batch_size, seed
        self.frontend, self.batch_transform = frontend, batch_transform
        self.stats_features = stats_features if stats_features is not None else inputs

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.stats_features.shape[1:])

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(TensorDataset(self.inputs, self.labels), batch_size=self.batch_size, shuffle=True,
                          generator=gen)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.frontend is None or not self.trainer.training:
            return batch
        x, y = batch
        if self.batch_transform is not None:
            x = self.batch_transform(x, y, self.trainer.lightning_module)
        with torch.no_grad():
            return self.frontend.compute(x), y


class CleanTestMonitor(L.Callback):
    """Logs ``val_acc``, the accuracy on a monitored set (the clean test set: learning curves), after every training
    epoch. It only watches: nothing is chosen by it. (Its DataLoader, like the validation loader it replaced, takes
    one draw of torch's global generator per epoch for its base seed, so runs train exactly as they did before.)"""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, batch: int = 256):
        self.loader = DataLoader(TensorDataset(features, labels), batch_size=batch)
        self.history: list[float] = []  # accuracy after each epoch, in order

    @torch.no_grad()
    def on_train_epoch_end(self, trainer, module) -> None:
        was_training = module.training
        module.eval()
        correct = total = 0
        for x, y in self.loader:
            correct += int((module(x.to(module.device)).argmax(dim=1).cpu() == y).sum())
            total += len(y)
        module.train(was_training)
        self.history.append(correct / total)
        module.log("val_acc", correct / total, on_step=False, on_epoch=True)


def new_module(recipe, data: TrainingData, num_classes: int, frontend=None) -> LabModule:
    """A freshly initialised LabModule of the recipe's model for ``data`` (call after seeding)."""
    cfg = recipe.train
    mean, std = standardisation(data.stats_features)
    return LabModule(recipe.model, data.feature_shape, num_classes, cfg.lr, cfg.weight_decay, recipe.features.raw,
                     recipe.data.sample_rate, mean, std, frontend=frontend)


def fit(recipe, data: TrainingData, num_classes: int, seed: int, monitor: tuple[torch.Tensor, torch.Tensor] | None = None,
        log_dir: Path | None = None, name: str = "model", progress: bool = False, epochs: int | None = None,
        module: LabModule | None = None, checkpoint: Path | None = None, resume: Path | None = None,
        callbacks: list | None = None) -> Fitted:
    """THE training path: train the recipe's model on ``data`` (a :class:`TrainingData`) from seed ``seed``, or
    continue training ``module`` (fine-tuning: a fresh optimiser, its own standardisation kept).

    ``monitor`` (features, labels) is scored after every epoch (learning curves, ``val_acc`` in the CSV log under
    ``log_dir``/``name``/seed<N>) and never used to choose anything: the last epoch's model is returned.
    ``checkpoint``: write Lightning's checkpoint of the last epoch to this ``.ckpt`` path. ``resume``: a checkpoint
    to continue from (with ``module``: its weights, optimiser state and epoch count; ``epochs`` is then the total).
    ``callbacks``: more Lightning callbacks (an attack's, e.g. early-stop's held-out scoring).
    """
    cfg = recipe.train
    if module is None:
        L.seed_everything(seed, workers=True, verbose=False)
        module = new_module(recipe, data, num_classes, frontend=data.frontend)
    loggers = make_loggers(cfg, log_dir, name, seed)
    monitors = [CleanTestMonitor(*monitor)] if monitor is not None else []
    callbacks = monitors + list(callbacks or [])
    if checkpoint is not None:
        # Lightning's own checkpoint of the last epoch (weights, optimiser, epoch): evaluate or fine-tune from it
        callbacks.append(ModelCheckpoint(dirpath=str(checkpoint.parent), filename=checkpoint.stem, save_top_k=1,
                                         every_n_epochs=epochs or cfg.epochs, enable_version_counter=False))
    trainer = make_trainer(cfg, epochs or cfg.epochs, loggers or False, progress, callbacks=callbacks)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume is not None else None)
    csv_dir = next((lg.log_dir for lg in loggers if isinstance(lg, CSVLogger)), None)
    history = monitors[0].history if monitors else None
    return Fitted(module, time.perf_counter() - start, epochs or cfg.epochs, csv_dir, history)


def make_loggers(train_cfg, log_dir: Path | None, name: str, seed: int) -> list:
    """The recipe's ``train.loggers`` (csv: ``log_dir/name/seed<N>/metrics.csv``, what learning curves read;
    tensorboard: event files beside it), none without ``log_dir``."""
    if log_dir is None:
        return []
    out = []
    for kind in train_cfg.loggers:
        if kind == "csv":
            out.append(CSVLogger(str(log_dir), name=name, version=f"seed{seed}"))
        elif kind == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger
            out.append(TensorBoardLogger(str(log_dir), name=name, version=f"seed{seed}"))
    return out


EVAL_BATCH = 256


def evaluate(module: LabModule, train_cfg, features: torch.Tensor, labels: torch.Tensor) -> dict:
    """Accuracy (overall and per class) of a trained module on a feature set: the module's own ``test_step`` and
    metrics over batches of EVAL_BATCH. On the CPU at full precision the batches go straight through the module
    (Lightning's test loop adds nothing there but about a tenth of a second per call, and a run makes ~30 calls a
    seed; tests/test_evaluate.py checks the two give the same numbers); elsewhere (a GPU, mixed precision) through
    ``Trainer.test``, which sets up the device and autocast."""
    if _plain_cpu(module, train_cfg):
        return _evaluate_directly(module, features, labels)
    return _evaluate_with_trainer(module, train_cfg, features, labels)


def _evaluate_with_trainer(module: LabModule, train_cfg, features: torch.Tensor, labels: torch.Tensor) -> dict:
    trainer = make_trainer(train_cfg, single=True)
    logged = trainer.test(module, DataLoader(TensorDataset(features, labels), batch_size=EVAL_BATCH), verbose=False)[0]
    return {"accuracy": float(logged["test_acc"]),
            "per_class": [float(logged[f"test_acc_class_{i}"]) for i in range(module.num_classes)]}


def _plain_cpu(module: LabModule, train_cfg) -> bool:
    """Whether the module sits on the CPU and the recipe trains at full precision (no autocast to set up)."""
    on_cpu = all(p.device.type == "cpu" for p in module.parameters())
    return on_cpu and str(train_cfg.precision) in ("32-true", "32")


@torch.inference_mode()
def _evaluate_directly(module: LabModule, features: torch.Tensor, labels: torch.Tensor) -> dict:
    was_training = module.training
    module.eval()
    try:
        module.test_acc.reset()
        module.test_class_acc.reset()
        for i, (x, y) in enumerate(zip(features.split(EVAL_BATCH), labels.split(EVAL_BATCH))):
            module.test_step((x, y), i)
        accuracy, per_class = module.test_acc.compute(), module.test_class_acc.compute()
    finally:
        module.test_acc.reset()
        module.test_class_acc.reset()
        module.train(was_training)
    return {"accuracy": float(accuracy), "per_class": [float(a) for a in per_class]}


@torch.no_grad()
def embed(module: LabModule, features: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Penultimate-layer embeddings (N, D) of a trained module."""
    module.eval()
    return torch.cat([module.embed(x.to(module.device)).cpu() for x in features.split(batch)])
