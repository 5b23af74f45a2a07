"""The attack interface: what an unauthorised trainer changes to learn from protected data anyway.

An attack can change three things, and one small class covers all three (override only what the attack needs):

1. the training data (``training_set``): e.g. compress every clip once, protect only part of the data, undo an
   estimated protection;
2. a per-batch transform of the waveforms before the feature front-end (``transform_batch``, with ``per_batch =
   True``): augmentation, random shifts, sharpening, PGD examples, learnable deconvolution filters; it receives the
   module being trained, so attacks that need the model's gradient can use it;
3. what happens after training (``after_training``): e.g. fine-tune on a little clean data; it returns one or more
   named models to evaluate.

Every attack is a registered plugin with a pydantic ``Config`` (validated like the recipe's other blocks: unknown
fields and impossible values fail before any training). ``record()`` gives the parameters and anything the attack
measured (e.g. how well it recovered a filter), and goes into the results.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from lab.config import PluginConfig, parse_plugin
from lab.keys import derive_seed
from lab.registry import Registry

ATTACKS: Registry = Registry("attack", package="attacks")


@dataclass
class AttackContext:
    """What the attacker works with for one training run.

    ``clean`` and ``protected`` are the training waveforms (N, T) before and after the data owner's protection (an
    attack may only use ``clean`` where its threat model says so: known-plaintext pairs, a clean fraction for
    fine-tuning, the unprotected part in ``partial``, and must then declare ``needs_clean``); ``labels`` (N,),
    ``lengths`` (N,) real clip lengths; ``protection`` what the owner applied (for measuring what an attack
    recovered, never for the attack itself); ``sample_rate``; ``num_classes``; ``seed`` the training seed (attacks draw
    their randomness from it); ``finetune`` a function ``(module, waveforms, labels, epochs) -> module`` that
    continues training a model (used by procedure attacks); ``features`` the recipe's feature front-end over
    waveforms (cached), for attacks that score clips during training.

    For an outsider (``lab audit``: only the published clips, no key) ``clean`` and ``protection`` are None.
    """

    clean: torch.Tensor | None
    protected: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor
    protection: Any
    sample_rate: int
    num_classes: int
    seed: int
    finetune: Callable | None = None
    features: Callable | None = None  # waveforms (N, T) -> the recipe's features (N, C, F), cached


class Attack:
    """Base class: by default the trainer trains on the protected data, unchanged, and the model is evaluated as is."""

    Config: ClassVar[type[PluginConfig]]
    per_batch: ClassVar[bool] = False  # True: transform_batch runs on every training batch
    trains_plain: ClassVar[bool] = False  # True: trains exactly like no attack first (that model may be reused)
    # True: the attack uses clean copies of (some of) the training clips (ctx.clean: known plaintext, clean
    # fine-tuning, an unprotected part). A trainer holding only the published data cannot run it: lab audit refuses it
    needs_clean: ClassVar[bool] = False
    # True: transform_batch draws at random (augmentation parameters, shifts, PGD's random start). It draws from
    # self.gen, its own generator, which start() seeds with batch_seed(ctx.seed, type) and record() records as
    # "batch_seed"; never from torch's global generator, whose stream the model's own draws (dropout) share
    draws_per_batch: ClassVar[bool] = False

    def __init__(self, config: PluginConfig):
        self.config = config
        self.measured: dict = {}  # what the attack measured during a run (goes into record())
        self.sample_rate: int | None = None
        self.batch_seed: int | None = None
        self.gen: torch.Generator | None = None  # None until start(): draws then fall back to the global generator

    def start(self, ctx: AttackContext) -> None:
        """Called once before each training run (reset learned state here)."""
        self.measured = {}
        self.sample_rate = ctx.sample_rate
        if self.draws_per_batch:
            self.batch_seed = batch_seed(ctx.seed, self.config.type)
            self.gen = torch.Generator().manual_seed(self.batch_seed)

    def training_set(self, ctx: AttackContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The waveforms (N', T) and labels (N',) the trainer trains on; never modifies ``ctx``'s tensors."""
        return ctx.protected, ctx.labels

    def transform_batch(self, waveforms: torch.Tensor, labels: torch.Tensor, module) -> torch.Tensor:
        """A training batch (B, T) as the model should see it (only called when ``per_batch``)."""
        return waveforms

    def callbacks(self, ctx: AttackContext) -> list:
        """Lightning callbacks for the training run (e.g. score a held-out set after every epoch); called once
        per training run, after ``start`` and ``training_set``."""
        return []

    def after_training(self, module, ctx: AttackContext) -> dict[str, Any]:
        """Named models to evaluate ('' is the trained model itself)."""
        return {"": module}

    def record(self) -> dict:
        return {"type": self.config.type, "params": self.config.model_dump(mode="json", exclude={"type"}),
                **({"batch_seed": self.batch_seed} if self.batch_seed is not None else {}),
                **({"measured": self.measured} if self.measured else {})}


def build_attack(config: PluginConfig | dict | str) -> Attack:
    """An attack from its config (a validated Config, a ``{type: ..., ...}`` mapping or a bare name)."""
    config = parse_plugin(ATTACKS, config, "attack")
    return ATTACKS.get(config.type)(config)


def batch_seed(seed: int, attack: str) -> int:
    """The seed of a batch attack's own generator (``Attack.draws_per_batch``): derived from the training seed and
    the attack's type (HMAC, as lab.keys derives keyed seeds), so that its stream is not the data loader's, which
    shuffles with the training seed itself."""
    return derive_seed("lab/attack-batch/v1", attack, int(seed)) % (2 ** 31)


def detached_copy(module):
    """A deep copy of a trained model (a LightningModule without its finished Trainer), e.g. to fine-tune a copy."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None:
        return copy.deepcopy(module)
    module.trainer = None
    try:
        return copy.deepcopy(module)
    finally:
        module.trainer = trainer
