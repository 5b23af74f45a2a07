"""Training under an attack: the lab's one training path (lab.train.fit), with what the attack changes.

Data attacks change the training set (features computed once, cached); batch attacks give a per-batch transform of
the waveforms that TrainingData applies on the device before the recipe's front-end (Lightning's
on_after_batch_transfer); procedure attacks get the model after training; an attack may add Lightning callbacks.
"""
from __future__ import annotations

import time

import torch

from attacks.base import Attack, AttackContext, detached_copy
from lab.module import LabModule
from lab.recipe import Recipe
from lab.spine import ExperimentData
from lab.train import fit


def finetune(recipe: Recipe, data: ExperimentData, module: LabModule, waveforms: torch.Tensor, labels: torch.Tensor,
             epochs: int) -> LabModule:
    """Continue training ``module`` (a fresh optimiser, the recipe's learning rate) on ``waveforms`` for ``epochs``.
    The module keeps its feature standardisation."""
    return fit(recipe, data.training((waveforms, labels), seed=0), data.num_classes, 0, epochs=epochs,
               module=module).module


def train_under_attack(recipe: Recipe, data: ExperimentData, attack: Attack, seed: int,
                       plain: LabModule | None = None, outsider: bool = False) -> tuple[dict[str, LabModule], dict]:
    """Named models trained on ``data``'s protected training set under ``attack`` (``plain``: the no-attack model
    of the same seed, reused by attacks whose first stage is plain training), and the seconds spent: ``data`` (the
    attack's one-off work on the training set), ``train`` (training, with any per-batch work), ``after`` (e.g.
    fine-tuning), ``total``. ``outsider``: the attacker holds only the published clips (``lab audit``): the
    context has no clean clips and no protection, and an attack that ``needs_clean`` is refused."""
    if outsider and attack.needs_clean:
        raise ValueError(f"attack {attack.config.type!r} needs clean training clips, which an outsider does not have")
    clean, protected = data.clean_train, data.protected_train
    ctx = AttackContext(clean=None if outsider else clean.waveforms, protected=protected.waveforms,
                        labels=clean.labels, lengths=clean.lengths, protection=None if outsider else data.protection,
                        sample_rate=recipe.data.sample_rate,
                        num_classes=data.num_classes, seed=seed,
                        finetune=lambda m, w, y, e: finetune(recipe, data, m, w, y, e), features=data.features)
    attack.start(ctx)
    clock = time.perf_counter()
    seconds = {"data": 0.0, "train": 0.0}
    if attack.trains_plain and plain is not None:
        module = detached_copy(plain)
    else:
        waves, labels = attack.training_set(ctx)
        seconds["data"] = time.perf_counter() - clock
        transform = attack.transform_batch if attack.per_batch else None
        fitted = fit(recipe, data.training((waves, labels), seed, batch_transform=transform), data.num_classes,
                     seed, callbacks=attack.callbacks(ctx))
        module, seconds["train"] = fitted.module, fitted.seconds
    after = time.perf_counter()
    models = attack.after_training(module, ctx)
    seconds["after"] = time.perf_counter() - after
    seconds["total"] = time.perf_counter() - clock
    return models, {k: round(v, 3) for k, v in seconds.items()}
