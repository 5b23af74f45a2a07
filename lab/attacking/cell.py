"""The one cell runner: a defense (an :class:`~lab.spine.ExperimentData`) and a seed -> models -> evaluations.

Every experiment the lab trains is made of cells. ``lab attack`` and ``lab audit`` run a cell per (defense, seed):
the protected model with no attack, then one model per attack, each scored on the clean test clips. ``lab run`` is
the no-attack row of the same cell with :class:`RunExtras`: the seed's clean-trained model beside the protected one
(reused where a sweep already trained it; the same model when the defense is ``none``), both scored on every
position-ablation variant of the test split, with training logs, checkpoints and a per-epoch clean-test monitor in
the run folder. ``lab regress``'s negative control is a cell with no attack. A cell is JSON-able (``lab attack``
writes each finished one, so an interrupted matrix resumes); the trained modules come back through ``modules``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from attacks.base import build_attack
from lab import modelstore
from lab.attacking.setup import column_name
from lab.attacking.training import train_under_attack
from lab.recipe import Recipe
from lab.spine import ExperimentData
from lab.train import evaluate, fit

NO_ATTACK = "no attack"


@dataclass
class RunExtras:
    """What ``lab run`` adds to a cell (see the module docstring). ``run_dir``: where the training logs (``logs/``)
    and checkpoints (``models/``) go. ``clean_models``: clean-trained models shared by runs that differ only in
    their defense (a sweep), by :func:`clean_model_key`. ``state``: the run's :class:`lab.rundir.Progress`, told
    what the cell is doing (what an interrupted run's ``INCOMPLETE`` says it stopped in)."""

    run_dir: Path
    clean_models: dict | None = None
    state: Any = None

    def doing(self, stage: str) -> None:
        if self.state is not None:
            self.state.stage = stage


def run_cell(data: ExperimentData, attack_cfgs: list, seed: int, log: Callable[[str], None] = print,
             progress: bool = False, outsider: bool = False, extras: RunExtras | None = None,
             modules: dict | None = None) -> dict:
    """One cell: ``data``'s defense and a seed, trained with no attack and under every attack of ``attack_cfgs``.
    Returns a JSON-able dict: ``columns`` (in order), ``values`` (clean-test accuracy) and ``seconds`` per column,
    ``records`` per attack, the ``protection`` record; with ``extras`` also ``models`` (per trained model: its
    training seconds, its scores on every ablation variant, its convergence). ``outsider``: the attacks get only the
    training clips as given (no clean copies, no protection: ``lab audit``). ``modules``, when given, receives the
    no-attack models by name (``protected_model``, and ``clean_model`` with ``extras``)."""
    rec, name = data.recipe, data.recipe.defense.type
    cell: dict = {"defense": name, "seed": seed, "columns": [NO_ATTACK], "values": {}, "seconds": {}, "records": {},
                  "protection": data.protection.to_dict()}
    trained = plain_models(data, seed, log, progress, extras)
    if modules is not None:
        modules.update({which: module for which, (module, _) in trained.items()})
    plain, seconds = trained["protected_model"]
    clean_test = data.features(data.clean_test), data.clean_test.labels
    if extras is None:
        acc = evaluate(plain, rec.train, *clean_test)["accuracy"]
        log(f"{name}, seed {seed}: no attack {acc:.3f} ({seconds:.0f} s)")
    else:
        extras.doing(f"evaluating seed {seed}")
        cell["models"] = score_on_variants(data, trained)
        acc = cell["models"]["protected_model"]["scores"][data.variant_of("clean_test")]["accuracy"]
    cell["values"][NO_ATTACK], cell["seconds"][NO_ATTACK] = acc, round(seconds or 0.0, 2)
    for acfg in attack_cfgs:
        attack = build_attack(acfg)
        models, timing = train_under_attack(rec, data, attack, seed, plain=plain, outsider=outsider)
        for variant, module in models.items():
            col = column_name(acfg, variant)
            if col not in cell["columns"]:
                cell["columns"].append(col)
            acc = evaluate(module, rec.train, *clean_test)["accuracy"]
            cell["values"][col], cell["seconds"][col] = acc, round(timing["total"], 2)
            log(f"{name}, seed {seed}: {col} {acc:.3f} ({timing['total']:.0f} s)")
        cell["records"][column_name(acfg)] = {"seed": seed, **attack.record()}
    return cell


def plain_models(data: ExperimentData, seed: int, log: Callable[[str], None], progress: bool,
                 extras: RunExtras | None) -> dict[str, tuple]:
    """The no-attack models of a cell, by name: (module, training seconds, None for a model reused). Without
    ``extras``: the protected model alone, nothing written. With them: the clean-trained model too (the protected
    one IS it when the defense is ``none``), each trained with the clean-test monitor, its CSV log and checkpoint."""
    rec = data.recipe
    if extras is None:
        fitted = fit(rec, data.training(data.protected_train, seed), data.num_classes, seed, progress=progress)
        return {"protected_model": (fitted.module, fitted.seconds)}
    out: dict[str, tuple] = {}
    monitor = (data.features(data.clean_test), data.clean_test.labels)
    shared = extras.clean_models
    for which, clips in (("clean_model", data.clean_train), ("protected_model", data.protected_train)):
        checkpoint = extras.run_dir / "models" / f"{which}_seed{seed}.ckpt"
        key = clean_model_key(rec, seed) if which == "clean_model" else None
        if which == "protected_model" and rec.defense.type == "none":
            out[which] = (out["clean_model"][0], None)  # no checkpoint of its own: it is the clean model
            continue
        in_memory = shared is not None and key in shared
        stored = stored_clean_model(data, clips, seed, monitor, checkpoint, extras) if key and not in_memory else None
        if in_memory:
            out[which] = (shared[key], None)
            log(f"seed {seed}: clean model reused (same data, features, model and training)")
        elif stored is not None and stored[0] is not None:
            out[which] = (stored[0], None)
            log(f"seed {seed}: clean model reused from the model store ({modelstore.ENV})")
        else:
            extras.doing(f"training seed {seed} ({which.replace('_', ' ')})")
            fitted = fit(rec, data.training(clips, seed), data.num_classes, seed, monitor=monitor,
                         log_dir=extras.run_dir / "logs", name=which, progress=progress, checkpoint=checkpoint)
            fitted.module.lab_convergence = fitted.convergence()  # travels with a model reused by a sweep
            out[which] = (fitted.module, fitted.seconds)
            log(f"seed {seed}: trained {which.replace('_', ' ')} in {fitted.seconds:.1f} s")
            if stored is not None:
                why = modelstore.keep(stored[1], checkpoint, fitted.module.lab_convergence, fitted.log_dir,
                                      extras.run_dir / "logs")
                if why:
                    log(f"seed {seed}: the clean model was not kept in the model store ({why}); the run goes on")
        if shared is not None and key is not None and key not in shared:
            shared[key] = out[which][0]
        save_model(out[which][0], checkpoint)
    return out


def stored_clean_model(data: ExperimentData, clips, seed: int, monitor: tuple, checkpoint: Path,
                       extras: RunExtras) -> tuple | None:
    """The clean model from the model store (lab.modelstore; None when ``LAB_MODEL_STORE`` is unset): (module or
    None when the store has no such entry yet, the entry's name)."""
    if modelstore.folder() is None:
        return None
    name = modelstore.entry_name(data.recipe, seed, data.features(clips), clips.labels, monitor)
    got = modelstore.fetch(name, checkpoint, extras.run_dir / "logs")
    if isinstance(got, str):
        data.log(f"seed {seed}: the model store's entry is not used ({got}); training the clean model")
    if not isinstance(got, tuple):
        return None, name
    module, convergence = got
    module.lab_convergence = convergence
    return module, name


def score_on_variants(data: ExperimentData, trained: dict[str, tuple]) -> dict[str, dict]:
    """Each model scored on every position-ablation variant of the test split, once (a protected model that is the
    clean one is not scored twice): per model, ``train_seconds`` (None: reused), ``scores`` by variant (the
    ``evaluate`` dicts) and ``convergence``."""
    scored: dict[int, dict] = {}
    out = {}
    for which, (module, seconds) in trained.items():
        if id(module) not in scored:
            scored[id(module)] = {name: evaluate(module, data.recipe.train, data.features(clips), clips.labels)
                                  for name, clips in data.ablation.items()}
        out[which] = {"train_seconds": None if seconds is None else round(seconds, 2), "scores": scored[id(module)],
                      "convergence": getattr(module, "lab_convergence", None)}
    return out


def clean_model_key(recipe: Recipe, seed: int) -> str:
    """What a clean-trained model depends on: everything in the recipe except the defense (and bookkeeping)."""
    public = recipe.public_dict()
    for field in ("defense", "name", "description", "output_dir", "seeds", "evaluation"):
        public.pop(field, None)
    return json.dumps(public, sort_keys=True) + f"|seed={seed}"


def save_model(module, path: Path) -> None:
    """Lightning's checkpoint of a trained module at ``path`` (``.ckpt``). ``fit`` writes it for the models it
    trains; a model reused from an earlier cell (or the clean model standing in for a protected one) gets its own
    here, from the trainer that trained it."""
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer = getattr(module, "_trainer", None)
    if trainer is not None:
        trainer.save_checkpoint(str(path))
    else:
        torch.save({"state_dict": module.state_dict()}, path)
