"""``lab run``: one recipe, end to end.

clean data ─► defense.derive(key) ─► protected train / test / mixed-position test ─► features (cached)
  ─► per seed: model trained on clean data, model trained on protected data ─► evaluations ─► results files
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch
import yaml

from lab.features import FeatureCache
from lab import results as results_writer
from lab.results import mean_std as fmt, summarise
from lab.provenance import provenance
from lab.quality import assess, markdown_lines
from lab.recipe import Recipe
from lab.spine import ExperimentData, check_defense
from lab.rundir import Progress, finish, open_run, running, write_protection
from lab.train import evaluate, fit

# (model, test set) pairs reported by `lab run`, in table order
EVALUATIONS = [
    ("clean_model", "clean_test"),
    ("clean_model", "protected_test"),
    ("protected_model", "clean_test"),
    ("protected_model", "protected_test"),
    ("protected_model", "mixed_test"),
]
LABELS = {
    ("clean_model", "clean_test"): "clean-trained, clean test",
    ("clean_model", "protected_test"): "clean-trained, protected test",
    ("protected_model", "clean_test"): "protected-trained, clean test  (unlearnability: low is good)",
    ("protected_model", "protected_test"): "protected-trained, protected test  (shortcut learned: high)",
    ("protected_model", "mixed_test"): "protected-trained, positions mixed between classes",
}


def prepare(recipe: Recipe, log: Callable[[str], None] = print, cache: FeatureCache | None = None) -> ExperimentData:
    """The recipe's data (lab.spine.ExperimentData: loaded, protected and featurised once, on first use)."""
    return ExperimentData(recipe, cache=cache, log=log)


def evaluate_ablation(module, train_cfg, data: ExperimentData) -> dict[str, float]:
    """Accuracy of ``module`` on every position-ablation variant of ``data``'s test split."""
    return {name: evaluate(module, train_cfg, data.features(clips), clips.labels)["accuracy"]
            for name, clips in data.ablation.items()}


def _worth_keeping(run_dir: Path, state: Progress) -> bool:
    """Whether a stopped run left anything of use: training logs or saved models."""
    models = run_dir / "models"
    return any((run_dir / "logs").rglob("metrics.csv")) or (models.is_dir() and any(models.iterdir()))


CONVERGENCE_NAMES = {"clean_model": "clean-trained", "protected_model": "protected-trained"}


def convergence_lines(results: dict) -> list[str]:
    """The results.md table: clean-test accuracy at the last epoch and at its peak over epochs (seeds' epochs)."""
    conv = results.get("convergence") or {}
    if not conv:
        return []
    lines = ["", "Clean-test accuracy over training (monitored every epoch; the last epoch is the one evaluated):", "",
             "| model | last epoch | peak over epochs | epoch of the peak (per seed) |", "|---|---|---|---|"]
    for which, c in conv.items():
        lines.append(f"| {CONVERGENCE_NAMES[which]} ({c['epochs']} epochs) | {fmt(c['final'])} | {fmt(c['peak'])} | "
                     f"{', '.join(map(str, c['peak_epoch']))} |")
    return lines


def convergence_summary(per_seed: list[dict]) -> dict:
    """Per model, over seeds: the clean-test accuracy of the last epoch (what is reported), its peak over epochs,
    and the epoch of the peak. A peak well above the final value means the model learned the task early and
    unlearned it later (or the other way round): an attacker holding a few clean clips could stop there (the
    ``early-stop`` question). Models without a monitored history are left out."""
    out = {}
    for which in ("clean_model", "protected_model"):
        rows = [e[which]["convergence"] for e in per_seed if e.get(which, {}).get("convergence")]
        if rows:
            out[which] = {"final": summarise([r["final"] for r in rows]), "peak": summarise([r["peak"] for r in rows]),
                          "peak_epoch": [r["peak_epoch"] for r in rows], "epochs": rows[0]["epochs"]}
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


def run(recipe: Recipe, recipe_path: str | None = None, log: Callable[[str], None] = print,
        progress: bool = False, run_dir: Path | None = None, clean_models: dict | None = None) -> tuple[dict, Path]:
    """Run a recipe end to end (see the module docstring) and return ``(results, run_dir)``.

    ``run_dir``: where to write (default: a new runs/<name>/<timestamp>/ under the recipe's output_dir).
    ``clean_models``: a dict shared across runs that differ only in their defense (a sweep), so each seed's
    clean-trained model is trained once. The folder goes through the life cycle of every run folder
    (lab.rundir.running): ``INCOMPLETE`` while in progress, ``results.json`` last; a run that fails or is
    interrupted keeps a folder with trained models or logs, marked ``INCOMPLETE`` with the reason (a new folder with
    nothing in it yet is removed), and the error is raised again; Ctrl-C raises :class:`lab.rundir.RunInterrupted`
    saying what was kept."""
    check_defense(recipe.defense, recipe.data.sample_rate)  # a missing key fails before any folder or data
    if recipe.train.num_threads:
        torch.set_num_threads(recipe.train.num_threads)
    created: list[Path] = []
    if run_dir is None:
        run_dir, created = open_run(Path(recipe.output_dir) / recipe.name)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
    state = Progress(len(recipe.seeds), "seeds")
    with running(run_dir, created, state, "run", log, _worth_keeping):
        results = _run(recipe, recipe_path, log, progress, run_dir, clean_models, state)
    return results, run_dir


def _evaluate_seed(entry: dict, models: dict, recipe: Recipe, prep) -> None:
    """One seed's evaluations into ``entry``: each model on each position-ablation variant of the test split, once
    (the report's test sets are three of those variants: ``ExperimentData.TEST_SETS``), and its convergence. A
    protected model that is the clean one (defense none) is not evaluated twice."""
    scored: dict[int, dict] = {}
    for which in ("clean_model", "protected_model"):
        module = models[which]
        if id(module) not in scored:
            scored[id(module)] = {name: evaluate(module, recipe.train, prep.features(clips), clips.labels)
                                  for name, clips in prep.ablation.items()}
        scores = scored[id(module)]
        entry[which] = {test_set: scores[prep.variant_of(test_set)] for m, test_set in EVALUATIONS if m == which}
        entry[which]["ablation"] = {name: s["accuracy"] for name, s in scores.items()}
        entry[which]["convergence"] = getattr(module, "lab_convergence", None)


def _run(recipe: Recipe, recipe_path: str | None, log: Callable[[str], None], progress: bool, run_dir: Path,
         clean_models: dict | None, state: Progress) -> dict:
    started = time.perf_counter()
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.public_dict(), sort_keys=False))
    state.stage = "loading and protecting the data"
    prep = prepare(recipe, log)
    num_classes = prep.num_classes
    for clips in (prep.clean_train, prep.protected_train, *prep.ablation.values()):
        prep.features(clips)  # every set featurised before training starts
    log(f"data: {len(prep.train)} training and {len(prep.test)} test clips, {num_classes} classes, "
        f"{recipe.data.sample_rate} Hz, {recipe.data.clip_seconds} s; features {recipe.features.type} "
        f"{prep.feature_shape}")
    record = write_protection(run_dir / "protection.json", prep.protection)
    same_as_clean = recipe.defense.type == "none"
    per_seed = []
    first_clean_model = None
    monitor = (prep.features(prep.clean_test), prep.test.labels)
    for seed in recipe.seeds:
        entry: dict = {"seed": seed, "train_seconds": {}}
        models = {}
        for which, clips in (("clean_model", prep.clean_train), ("protected_model", prep.protected_train)):
            if which == "protected_model" and same_as_clean:
                models[which] = models["clean_model"]
                continue
            shared_key = clean_model_key(recipe, seed) if which == "clean_model" else None
            if clean_models is not None and shared_key in clean_models:
                models[which] = clean_models[shared_key]
                log(f"seed {seed}: clean model reused (same data, features, model and training)")
            else:
                state.stage = f"training seed {seed} ({which.replace('_', ' ')})"
                fitted = fit(recipe, prep.training(clips, seed), num_classes, seed, monitor=monitor,
                             log_dir=run_dir / "logs", name=which, progress=progress,
                             checkpoint=run_dir / "models" / f"{which}_seed{seed}.ckpt")
                models[which] = fitted.module
                fitted.module.lab_convergence = fitted.convergence()  # travels with a model reused by a sweep
                entry["train_seconds"][which] = round(fitted.seconds, 2)
                log(f"seed {seed}: trained {which.replace('_', ' ')} in {fitted.seconds:.1f} s")
                if clean_models is not None and shared_key is not None:
                    clean_models[shared_key] = fitted.module
            save_model(models[which], run_dir / "models" / f"{which}_seed{seed}.ckpt")
        if first_clean_model is None:
            first_clean_model = models["clean_model"]
        state.stage = f"evaluating seed {seed}"
        _evaluate_seed(entry, models, recipe, prep)
        per_seed.append(entry)
        state.trained += 1
    summary = {f"{m}/{t}": summarise([e[m][t]["accuracy"] for e in per_seed]) for m, t in EVALUATIONS}
    ablation = {name: {which: summarise([e[which]["ablation"][name] for e in per_seed])
                       for which in ("protected_model", "clean_model")} for name in prep.ablation}
    convergence = convergence_summary(per_seed)
    state.stage = "measuring the quality of the protected audio"
    quality = assess(recipe, prep.clean_train, prep.protected_train, first_clean_model)
    results = {
        "recipe_name": recipe.name,
        "recipe_path": recipe_path,
        "recipe": recipe.public_dict(),
        "run_dir": str(run_dir),
        "provenance": provenance(),
        "key_fingerprint": record.get("key_fingerprint"),
        "defense": recipe.defense.type,
        "data": {"train_clips": len(prep.train), "test_clips": len(prep.test), "classes": prep.train.class_names,
                 "sample_rate": recipe.data.sample_rate, "clip_samples": prep.train.waveforms.shape[1],
                 "feature_shape": list(prep.feature_shape)},
        "chance": 1.0 / num_classes,
        "seeds": list(recipe.seeds),
        "quality": quality,
        "accuracy": summary,
        "ablation": ablation,
        "convergence": convergence,
        "per_seed": per_seed,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    state.stage = "writing the results"
    finish(run_dir, results, {"results.md": markdown(results)})
    return results


def quality_warnings(quality: dict) -> list[str]:
    """What a reader of a quality section must be told about its FAD numbers: a backend that was skipped (and why),
    or one whose sets hold too few clips for its dimension (reported for the smallest comparison, the floor's
    halves)."""
    out = []
    for name, entry in (quality.get("fad") or {}).get("backends", {}).items():
        if "skipped" in entry:
            out.append(f"FAD backend {name} skipped: {entry['skipped']}")
            continue
        for part, label in (("clean_floor", "clean floor, half vs half"),
                            ("protected_half_vs_clean_half", "protected half vs clean half"),
                            ("protected_vs_clean", "protected vs clean")):
            warnings = (entry.get(part) or {}).get("warnings")
            if warnings:
                out.append(f"FAD backend {name} ({label}): {warnings[0]}")
                break
    return out


def conclusions(results: dict) -> tuple[str | None, str]:
    """What a reader of a run may conclude: the too-small warning (None when the clean model learned the task) and
    the one-line verdict on the protection (lab.results.verdict: the rule is in README, "The verdict")."""
    acc, chance = results["accuracy"], results["chance"]
    clean = acc["clean_model/clean_test"]
    return (results_writer.too_small_warning(clean, chance),
            results_writer.verdict(results["defense"], acc["protected_model/clean_test"], clean, chance))


def markdown(results: dict) -> str:
    lines = [
        f"# {results['recipe_name']}: {results['defense']}",
        "",
        results_writer.provenance_line(results),
        "",
        f"Data: {results['data']['train_clips']} train / {results['data']['test_clips']} test clips, "
        f"chance accuracy {results['chance']:.3f}.",
        "",
        "| model, test set | accuracy (mean ± std over seeds) |",
        "|---|---|",
    ]
    for m, t in EVALUATIONS:
        lines.append(f"| {LABELS[(m, t)]} | {fmt(results['accuracy'][f'{m}/{t}'])} |")
    too_small, said = conclusions(results)
    lines += ["", f"**Verdict**: {said}"]
    lines += ["", "Position ablation (test clips protected in each way; see lab/ablation.py):", "",
              "| test variant | protected-trained | clean-trained (control) |", "|---|---|---|"]
    for name, row in results.get("ablation", {}).items():
        lines.append(f"| {name} | {fmt(row['protected_model'])} | {fmt(row['clean_model'])} |")
    lines += convergence_lines(results)
    lines += [""] + markdown_lines(results["quality"])
    warnings = [too_small] if too_small else []
    warnings += quality_warnings(results["quality"])
    if warnings:
        lines += ["Warnings:", ""] + [f"- {w}" for w in warnings] + [""]
    return "\n".join(lines)
