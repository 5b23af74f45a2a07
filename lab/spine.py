"""The data spine: the ONE place that loads a recipe's dataset, derives its protection, applies it (to the training
split and to every evaluation variant of the test split) and computes features (cached).

    recipe ─► ExperimentData ─► train / test (AudioSet), protection, typed Clips splits, cached features
                            └─► training(clips, seed, ...) ─► a TrainingData (LightningDataModule) for one fit

``lab run``, ``lab ablate``, ``lab report``, ``lab requality``, ``lab attack`` and ``lab fad`` all get their data
here; nothing downstream reloads a dataset or re-applies a defense. A finished run is served by
:meth:`ExperimentData.from_run`, which applies the run's RECORDED protection instead of deriving one again.

Everything is computed on first use and kept: a command that needs only the test variants (``lab ablate``) never
protects the training split, one that needs only the training split (``lab requality``) never builds the ablation.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch

from defenses import build_defense
from defenses.base import Defense, Protection, TrainingSet
from lab.ablation import variants
from lab.data import AudioSet, load_dataset
from lab.features import FeatureCache, FrontEnd
from lab.recipe import Recipe, surrogate_recipe
from lab.train import TrainingData


@dataclass(frozen=True)
class Clips:
    """One tensor set: waveforms (N, T), labels (N,), real lengths (N,)."""

    waveforms: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


class ExperimentData:
    """A recipe's data, protected and featurised once (see the module docstring).

    ``protection``: apply this (e.g. a finished run's record) instead of deriving the recipe's defense from its key.
    ``cache``: a FeatureCache shared with other ExperimentData (e.g. the columns of an attack matrix: the clean
    sets are then featurised once). ``dataset``: the (train, test) AudioSets already loaded for the same ``data``
    section (another ExperimentData's ``dataset``), so they are not loaded again. ``log``: progress messages.
    """

    # test sets by the names results files use for them
    TEST_SETS = ("clean_test", "protected_test", "mixed_test")

    def __init__(self, recipe: Recipe, protection: Protection | None = None, cache: FeatureCache | None = None,
                 log: Callable[[str], None] = print, dataset: tuple[AudioSet, AudioSet] | None = None):
        self.recipe = recipe
        if dataset is not None:
            self.__dict__["dataset"] = dataset
        self._given = protection
        self.cache = cache if cache is not None else FeatureCache()
        self.log = log
        self.frontend = FrontEnd(recipe.features, recipe.data.sample_rate)
        self._features_of: dict[int, tuple[Clips, torch.Tensor]] = {}

    @classmethod
    def from_run(cls, run, cache: FeatureCache | None = None, log: Callable[[str], None] = print) -> "ExperimentData":
        """The data of a finished run (:class:`lab.rundir.FinishedRun`): its recipe's dataset with its recorded
        protection."""
        return cls(run.recipe, protection=run.protection, cache=cache, log=log)

    # --- the dataset and the protection -------------------------------------------------------------------------

    @cached_property
    def dataset(self) -> tuple[AudioSet, AudioSet]:
        """The (train, test) clips of the recipe's ``data`` section, loaded on first use."""
        return load_dataset(self.recipe.data, self.log)

    @property
    def train(self) -> AudioSet:
        return self.dataset[0]

    @property
    def test(self) -> AudioSet:
        return self.dataset[1]

    @property
    def num_classes(self) -> int:
        return len(self.train.class_names)

    @cached_property
    def protection(self) -> Protection:
        if self._given is not None:
            return self._given
        return derive_protection(self.recipe, self.clean_train, self.num_classes, self.log)

    # --- typed splits ---------------------------------------------------------------------------------------------

    @cached_property
    def clean_train(self) -> Clips:
        return Clips(self.train.waveforms, self.train.labels, self.train.lengths)

    @cached_property
    def protected_train(self) -> Clips:
        t = self.train
        return Clips(self.protection.apply(t.waveforms, t.labels, t.lengths), t.labels, t.lengths)

    @cached_property
    def ablation(self) -> dict[str, Clips]:
        """The position-ablation variants of the test split (name -> clips; see lab.ablation): ``clean`` and
        ``true`` always, the rest where the protection has positions."""
        t = self.test
        return {name: Clips(w, t.labels, t.lengths)
                for name, w in variants(self.protection, t, self.recipe.evaluation.mixed_seed).items()}

    @property
    def clean_test(self) -> Clips:
        return self.ablation["clean"]

    @property
    def protected_test(self) -> Clips:
        return self.ablation["true"]

    @property
    def mixed_test(self) -> Clips:
        """Own filter at another class's position; the protected test set where the protection has no positions."""
        return self.ablation.get("mixed_positions", self.ablation["true"])

    def test_set(self, name: str) -> Clips:
        """A test set by its results-file name (``clean_test``, ``protected_test``, ``mixed_test``)."""
        return self.ablation[self.variant_of(name)]

    def variant_of(self, name: str) -> str:
        """The position-ablation variant a test set is (``clean_test`` is ``clean``, ``protected_test`` is
        ``true``, ``mixed_test`` is ``mixed_positions`` where the protection has positions, else ``true``)."""
        if name not in self.TEST_SETS:
            raise KeyError(f"unknown test set {name!r}; known: {', '.join(self.TEST_SETS)}")
        if name == "mixed_test":
            return "mixed_positions" if "mixed_positions" in self.ablation else "true"
        return {"clean_test": "clean", "protected_test": "true"}[name]

    # --- features -------------------------------------------------------------------------------------------------

    def features(self, clips: Clips | torch.Tensor) -> torch.Tensor:
        """Features (N, C, F) of a split (or of waveforms (N, T)), computed once and cached (by content, in the
        shared FeatureCache; a split of this object's is also remembered by identity, so asking again does not even
        hash its audio)."""
        if isinstance(clips, Clips):
            known = self._features_of.get(id(clips))
            if known is not None and known[0] is clips:
                return known[1]
            feats = self.cache(self.frontend, clips.waveforms)
            self._features_of[id(clips)] = (clips, feats)
            return feats
        return self.cache(self.frontend, clips)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.features(self.clean_train).shape[1:])

    # --- what one fit trains on -----------------------------------------------------------------------------------

    def training(self, clips: Clips | tuple[torch.Tensor, torch.Tensor], seed: int,
                 batch_transform: Callable | None = None) -> TrainingData:
        """A TrainingData for one fit on ``clips`` (a split, or an attack's (waveforms, labels)) with the recipe's
        batch size and ``seed``'s shuffling. Without ``batch_transform`` it serves the cached features; with one,
        waveform batches that the transform changes on the device before the front-end makes their features."""
        waveforms, labels = (clips.waveforms, clips.labels) if isinstance(clips, Clips) else clips
        feats = self.features(clips if isinstance(clips, Clips) else waveforms)
        if batch_transform is None:
            return TrainingData(feats, labels, self.recipe.train.batch_size, seed)
        return TrainingData(waveforms, labels, self.recipe.train.batch_size, seed, frontend=self.frontend,
                            batch_transform=batch_transform, stats_features=feats)


def check_defense(config, sample_rate: int) -> None:
    """Fail now, in one line, on what a defense would otherwise find only after the data has loaded: a missing or
    too short key, a key file that is not there. A defense that ``needs_training_set`` derives its surrogate's seed
    from the key; any other derives a two-class protection (no data needed, next to nothing to compute)."""
    built = build_defense(config)
    if built.needs_training_set:
        built.surrogate_seed()
    else:
        built.derive(2, sample_rate)


def derive_protection(recipe: Recipe, train: Clips, num_classes: int,
                      log: Callable[[str], None] = print) -> Protection:
    """The recipe's defense derived for ``num_classes`` classes: from its key alone, or, for a defense that
    ``needs_training_set`` (optimised noise), optimised on the clean training clips ``train`` with surrogates of
    the recipe's model and features (changed by the defense's ``surrogate_overrides``)."""
    defense = build_defense(recipe.defense)
    if not defense.needs_training_set:
        return defense.derive(num_classes, recipe.data.sample_rate)
    path = optimised_cache_path(recipe, defense, train, num_classes)
    if path is not None and path.is_file():
        try:
            saved = torch.load(path, weights_only=True)
            prot = Protection.from_dict(json.loads(saved["record"]), saved["arrays"] or None)
            log(f"{recipe.defense.type}: the protection optimised earlier on these clips with this configuration "
                f"and surrogate, reused from {path.parent}")
            return prot
        except Exception as e:  # a damaged or outdated cache file is optimised again
            log(f"{recipe.defense.type}: could not reuse {path} ({type(e).__name__}); optimising again")
    prot = defense.derive_from(resumable(training_set(recipe, defense, train, num_classes, log), path, log))
    if path is not None and cache_write(path, {"record": json.dumps(prot.to_dict()), "arrays": prot.arrays()}, log):
        round_checkpoint(path).unlink(missing_ok=True)
    return prot


def cache_write(path: Path, obj, log: Callable[[str], None]) -> bool:
    """:func:`save_private`, except that a cache that cannot be written (a file where its folder should be, a full
    disk) never fails the run: one line says so and the run goes on without it."""
    try:
        save_private(path, obj)
        return True
    except OSError as e:
        log(f"warning: the protection cache could not keep {path.name} in {path.parent} ({type(e).__name__}: "
            f"{e.strerror or e}); the run goes on without it")
        return False


def _surrogate_described(sur_recipe: Recipe) -> dict:
    """A surrogate recipe as the protection cache's name hashes it: without bookkeeping (name, output folder, seeds,
    threads, progress, epochs) and without where the clips were read from (their content is hashed)."""
    sur = sur_recipe.public_dict()
    for field in ("defense", "name", "description", "output_dir", "seeds", "evaluation"):
        sur.pop(field, None)
    sur.get("data", {}).pop("root", None)
    for field in ("num_threads", "progress", "epochs"):
        sur.get("train", {}).pop(field, None)
    return sur


def round_checkpoint(path: Path) -> Path:
    """Where the optimisation kept at ``path`` keeps its state after every round until it ends (as private)."""
    return path.with_name(path.stem + ".rounds")


def resumable(data: TrainingSet, path: Path | None, log: Callable[[str], None]) -> TrainingSet:
    """``data`` with its optimisation's state saved after every round beside the cache file ``path``, and resumed
    from there when an earlier run of the same optimisation (the same cache name: configuration, key seed, clips,
    code) was stopped: an ensemble that takes hours goes on after its last finished round, not from the start. The
    min-min loops end, resumed, where an uninterrupted run ends (defenses/_minmin.py). Without a cache, as given."""
    if path is None:
        return data
    partial, resume = round_checkpoint(path), None
    if partial.is_file() and not partial.is_symlink():
        try:
            resume = torch.load(partial, weights_only=True)
            log(f"the optimisation stopped earlier after round {int(resume['round'])} goes on from {partial.parent}")
        except Exception as e:  # a damaged checkpoint is started over
            log(f"could not resume from {partial} ({type(e).__name__}); optimising from the first round")
            resume = None
    failed = []  # after one failed write, no more tries (and no more warnings) for this optimisation

    def checkpoint(state: dict) -> None:
        if not failed and not cache_write(partial, state, log):
            failed.append(True)
    return replace(data, checkpoint=checkpoint, resume=resume)


def optimised_cache_path(recipe: Recipe, defense: Defense, train: Clips, num_classes: int) -> Path | None:
    """Where an optimised protection is kept for reuse (``$LAB_CACHE_DIR``/protections, default
    ~/.cache/lab/protections; ``LAB_PROTECTION_CACHE=off`` turns it off): a file named by a hash of everything the
    optimisation depends on: the defense's configuration and a seed derived from its key (never the key), the
    surrogate recipe (for a defense whose ``members_replace_surrogate``, an ensemble: each member's recipe instead of
    the recipe's own model and front-end), the training clips' content, and the source code of the defense, of the
    min-min loop and of the built-in front-ends and models (a changed optimiser or surrogate never reuses an old
    result). Sweep cells, attack-matrix columns, transfer runs and leave-one-out trainers that differ only in the
    model being trained then share one optimisation.
    The files are as secret as the key (mode 0600)."""
    import hashlib
    import inspect
    import os
    if os.environ.get("LAB_PROTECTION_CACHE", "").lower() in ("off", "0", "no", "false"):
        return None
    from lab.data.fsdd import cache_dir
    from lab.features import tensor_hash
    sur_recipe = surrogate_recipe(recipe, defense.surrogate_overrides())
    sur = _surrogate_described(sur_recipe)
    members = None
    if getattr(defense, "members_replace_surrogate", False):
        # an ensemble trains only the members its entries name (each the recipe changed by its entry): the trainer's
        # own model and front-end are not used, so two recipes that differ only there share one optimisation
        sur.pop("model", None)
        sur.pop("features", None)
        members = [_surrogate_described(surrogate_recipe(recipe, v)) for v in defense.surrogate_variants()]
    sources = []
    for obj in (type(defense), *getattr(defense, "cache_sources", ())):
        try:
            sources.append(inspect.getsource(inspect.getmodule(obj)))
        except (OSError, TypeError):
            return None  # no source to tell versions apart: do not cache
    from defenses import _minmin
    sources.append(inspect.getsource(_minmin))
    # the surrogates are built from the front-end and model plugins: a changed front-end (the MFCC floor, once) or
    # model must not reuse noise optimised through the old one; every built-in file of both, in a fixed order
    for package in ("lab/frontends", "lab/models"):
        for path in sorted((Path(__file__).parent.parent / package).glob("*.py")):
            sources.append(path.read_text())
    config = recipe.defense.model_dump(mode="json", exclude={"key", "key_file"})
    for block in (config, config.get("inner") if isinstance(config.get("inner"), dict) else {}):
        for field in ("key", "key_file", "surrogate"):  # the resolved surrogate recipe is hashed below
            block.pop(field, None)
    described = {"defense": config, "device": surrogate_device(sur_recipe.train.accelerator),
                 "key_seed": defense.surrogate_seed(), "surrogate": sur, "classes": num_classes,
                 "clips": [tensor_hash(train.waveforms), tensor_hash(train.labels), tensor_hash(train.lengths)],
                 "code": hashlib.sha256("\n".join(sources).encode()).hexdigest()}
    if members is not None:
        described["members"] = members
    name = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return cache_dir() / "protections" / f"{recipe.defense.type}-{name}.pt"


def save_private(path: Path, obj) -> None:
    """``torch.save`` to ``path`` atomically, readable by its owner only from the first byte (folder 0700)."""
    import os
    import tempfile
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def training_set(recipe: Recipe, defense: Defense, train: Clips, num_classes: int,
                 log: Callable[[str], None] = print) -> TrainingSet:
    """What an optimised defense is given (defenses.base.TrainingSet): the clean training clips and a factory of
    fresh surrogate classifiers of waveforms (the surrogate recipe's model and differentiable front-end, its
    standardisation from the clean training features), seeded from the defense's ``surrogate_seed``; its
    ``surrogate_with`` gives the same with other surrogate overrides (a defense with several surrogates)."""
    return surrogate_training_set(recipe, defense.surrogate_overrides(), train, num_classes, log)


def surrogate_training_set(recipe: Recipe, overrides: dict, train: Clips, num_classes: int,
                           log: Callable[[str], None] = print) -> TrainingSet:
    """:func:`training_set` with the surrogate of ``recipe`` changed by ``overrides`` (lab.recipe.surrogate_recipe)."""
    from lab.train import new_module
    sur = surrogate_recipe(recipe, overrides)
    frontend = FrontEnd(sur.features, sur.data.sample_rate)
    stats = TrainingData(frontend(train.waveforms), train.labels, sur.train.batch_size, 0)

    def new_surrogate() -> torch.nn.Module:
        return WaveformClassifier(new_module(sur, stats, num_classes, frontend=frontend))

    def surrogate_with(other: dict) -> TrainingSet:
        return surrogate_training_set(recipe, other, train, num_classes, log)

    return TrainingSet(train.waveforms, train.labels, train.lengths, sur.data.sample_rate, num_classes,
                       new_surrogate, sur.train.lr, sur.train.weight_decay, sur.train.batch_size, log,
                       f"{sur.model.type} on {sur.features.type}", surrogate_device(sur.train.accelerator),
                       surrogate_with=surrogate_with)


def surrogate_device(accelerator: str) -> str:
    """Where an optimised defense's surrogate trains: ``cuda`` when ``accelerator`` (the recipe's
    ``train.accelerator``) means a GPU and one is here, else ``cpu``."""
    from lab.recipe import _device_kind
    return "cuda" if _device_kind(accelerator) == "cuda" and torch.cuda.is_available() else "cpu"


class WaveformClassifier(torch.nn.Module):
    """A LabModule as a plain classifier of waveforms: ``forward(waveforms) = module(module.features(waveforms))``
    (differentiable with respect to the audio), for surrogates that defenses train themselves."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        return self.module(self.module.features(waveforms))
