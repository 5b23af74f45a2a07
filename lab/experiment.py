"""``lab run``: one recipe, end to end.

clean data ─► defense.derive(key) ─► protected train / test / mixed-position test ─► features (cached)
  ─► per seed: model trained on clean data, model trained on protected data ─► evaluations ─► results files

Each seed is the no-attack row of the one cell runner ``lab attack`` uses (:func:`lab.attacking.cell.run_cell` with
:class:`~lab.attacking.cell.RunExtras`: the clean-trained model too, the ablation variants, logs and checkpoints).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
import yaml

from lab.attacking.cell import RunExtras, run_cell
from lab.features import FeatureCache
from lab import results as results_writer
from lab.results import mean_std as fmt, summarise
from lab.provenance import provenance
from lab.quality import assess, markdown_lines
from lab.recipe import Recipe
from lab.spine import ExperimentData, check_defense
from lab.rundir import Progress, finish, open_run, running, write_protection
from lab.train import evaluate

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


def seed_entry(cell: dict, prep: ExperimentData) -> dict:
    """A seed's entry of results.json (``per_seed``) from its cell: the training seconds of the models trained (not
    reused), and per model its scores on the report's test sets (each one of the ablation variants it was scored
    on once), every variant's accuracy and its convergence."""
    entry: dict = {"seed": cell["seed"], "train_seconds": {}}
    for which, got in cell["models"].items():
        if got["train_seconds"] is not None:
            entry["train_seconds"][which] = got["train_seconds"]
        scores = got["scores"]
        entry[which] = {test_set: scores[prep.variant_of(test_set)] for m, test_set in EVALUATIONS if m == which}
        entry[which]["ablation"] = {name: s["accuracy"] for name, s in scores.items()}
        entry[which]["convergence"] = got["convergence"]
    return entry


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
    extras = RunExtras(run_dir, clean_models, state)
    per_seed = []
    first_clean_model = None
    for seed in recipe.seeds:  # each seed is the no-attack row of the one cell runner (lab.attacking.cell)
        modules: dict = {}
        cell = run_cell(prep, [], seed, log=log, progress=progress, extras=extras, modules=modules)
        per_seed.append(seed_entry(cell, prep))
        if first_clean_model is None:
            first_clean_model = modules["clean_model"]
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
