"""``lab attack``: train on protected data the way an unauthorised trainer would, and measure what survives.

recipe + attack(s) ─► for each defense (none = clean reference, the recipe's, baselines at the same distortion):
    ExperimentData (protect, features; lab.spine) ─► per seed: no-attack model, then each attack's model(s) ─► clean-test accuracy
  ─► one table (rows: no attack, each attack, then the worst case over them; columns: defenses) as JSON, Markdown,
     CSV

Training under an attack is the lab's one training path (lab.train.fit): data attacks change the training set
(features computed once, cached), batch attacks give a per-batch transform of the waveforms that the training data
applies on the device before the recipe's front-end (Lightning's on_after_batch_transfer), procedure attacks get the
model after training.
"""
from __future__ import annotations

import csv
import io
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

import attacks
from attacks.base import Attack, AttackContext, build_attack, detached_copy
from defenses.base import DEFENSES
from lab.config import format_validation_error, parse_plugin
from pydantic import ValidationError
from lab.errors import LabError
from lab.features import FeatureCache
from lab.module import LabModule
from lab.provenance import provenance
from lab.results import mean_std, new_run_dir, provenance_line
from lab.quality import snr_summary
from lab.recipe import Recipe, parse_override, read_recipe_data, recipe_from_dict, set_path
from lab.spine import ExperimentData
from lab.train import evaluate, fit

NO_ATTACK = "no attack"
WORST = "worst case"


# --- training under an attack ------------------------------------------------------------------------------------
#
# There is one training path (lab.train.fit). An attack acts on it only through the data it is given: its training
# set (ExperimentData.training over the attack's waveforms and labels) and, for batch attacks, a per-batch transform
# that TrainingData applies in Lightning's on_after_batch_transfer hook, before the front-end. Procedure attacks get
# the trained model after training.

def finetune(recipe: Recipe, data: ExperimentData, module: LabModule, waveforms: torch.Tensor, labels: torch.Tensor,
             epochs: int) -> LabModule:
    """Continue training ``module`` (a fresh optimiser, the recipe's learning rate) on ``waveforms`` for ``epochs``.
    The module keeps its feature standardisation."""
    return fit(recipe, data.training((waveforms, labels), seed=0), data.num_classes, 0, epochs=epochs,
               module=module).module


def train_under_attack(recipe: Recipe, data: ExperimentData, attack: Attack, seed: int,
                       plain: LabModule | None = None) -> tuple[dict[str, LabModule], dict]:
    """Named models trained on ``data``'s protected training set under ``attack`` (``plain``: the no-attack model
    of the same seed, reused by attacks whose first stage is plain training), and the seconds spent: ``data`` (the
    attack's one-off work on the training set), ``train`` (training, with any per-batch work), ``after`` (e.g.
    fine-tuning), ``total``."""
    clean, protected = data.clean_train, data.protected_train
    ctx = AttackContext(clean=clean.waveforms, protected=protected.waveforms, labels=clean.labels,
                        lengths=clean.lengths, protection=data.protection, sample_rate=recipe.data.sample_rate,
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


# --- the matrix ----------------------------------------------------------------------------------------------------

def attack_configs(names: list[str], recipe_blocks: list[dict], options: list[str]) -> list:
    """Validated attack configs for ``names``: each starts from its block in the recipe's ``attack:`` section (if
    any), then ``options`` (``FIELD=VALUE``, or ``ATTACK.FIELD=VALUE`` to target one attack) are applied. Fails
    before any training on an unknown attack, field or impossible value."""
    by_type = {}
    for block in recipe_blocks:
        if not isinstance(block, dict) or "type" not in block:
            raise LabError(f"attack: each block needs a 'type' (one of {', '.join(attacks.ATTACKS.names())})")
        by_type[block["type"]] = dict(block)
    for block in by_type.values():  # every block is checked, used or not
        parse_plugin(attacks.ATTACKS, block, "attack")
    out = []
    for name in names:
        attacks.ATTACKS.get(name)  # unknown name: one line listing the valid ones
        data = dict(by_type.get(name, {"type": name}))
        for item in options:
            field_, value = parse_override(item)
            target, _, rest = field_.partition(".")
            if rest and target in attacks.ATTACKS:
                if target == name:
                    set_path(data, rest, value)
            elif len(names) == 1:
                set_path(data, field_, value)
            else:
                raise LabError(f"--option {item!r}: with several attacks, name the attack: ATTACK.{field_}=...")
        out.append(parse_plugin(attacks.ATTACKS, data, f"attack ({name})"))
    return out


def load_attack_recipe(path: Path | str, overrides: list[str] | None = None) -> tuple[Recipe, list[dict]]:
    """The recipe (validated as for ``lab run``) and its ``attack:`` blocks (a mapping or a list of mappings)."""
    path = Path(path)
    data = read_recipe_data(path)
    blocks = data.pop("attack", None) or []
    blocks = [blocks] if isinstance(blocks, dict) else blocks
    if not isinstance(blocks, list):
        raise LabError(f"recipe {path}: attack: expected a mapping or a list of mappings with a 'type'")
    for item in overrides or []:
        set_path(data, *parse_override(item))
    return recipe_from_dict(data, str(path)), blocks


def baselines() -> list[str]:
    """The defenses that declare themselves matched baselines (``Defense.matched_baseline``), in their declared
    order: ``lab attack --type all`` compares the recipe's defense with them."""
    ranks = {name: DEFENSES.get(name).matched_baseline for name in DEFENSES.names()}
    return sorted((name for name, rank in ranks.items() if rank is not None), key=lambda name: (ranks[name], name))


def defense_configs(recipe: Recipe, names: list[str], snr_db: float | None) -> list:
    """Defense configs for ``names``: the recipe's own defense as it is; every other one configured like it by its
    own ``Defense.matched_config`` (the recipe's key, and what else it shares with it) at ``snr_db`` (rounded to
    0.01 dB; equal distortion, for the defenses that take an SNR), when given."""
    own = recipe.defense
    snr = None if snr_db is None else round(snr_db, 2)
    out = []
    for name in names:
        defense = DEFENSES.get(name)
        if name == own.type:
            out.append(own)
            continue
        data: dict[str, Any] = {"type": name, **defense.matched_config(own, snr)}
        out.append(parse_plugin(DEFENSES, data, f"defense ({name})"))
    return out


@dataclass
class Matrix:
    defenses: list[str]
    columns: list[str]
    cells: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # defense -> column -> per-seed values
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # defense -> attack -> per-seed records
    seconds: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    snr: dict[str, dict] = field(default_factory=dict)
    chance: float = 0.0

    def add(self, defense: str, column: str, value: float, seconds: float | None = None) -> None:
        self.cells.setdefault(defense, {}).setdefault(column, []).append(value)
        if seconds is not None:
            self.seconds.setdefault(defense, {}).setdefault(column, []).append(round(seconds, 2))

    def mean(self, defense: str, column: str) -> float | None:
        values = self.cells.get(defense, {}).get(column)
        return statistics.fmean(values) if values else None

    @classmethod
    def from_results(cls, results: dict) -> "Matrix":
        """The matrix a ``lab attack`` results.json holds (what write_results wrote); a KeyError, TypeError or
        ValueError if it holds no such matrix."""
        defenses, columns = list(results["defenses"]), list(results["columns"])
        cells = {d: {c: [float(v) for v in cell["values"]] for c, cell in results["accuracy"][d].items()}
                 for d in defenses}
        if not defenses or not columns or any(c not in columns for cols in cells.values() for c in cols):
            raise ValueError("defenses, columns and accuracy do not match")
        return cls(defenses, columns, cells, results.get("attack_records", {}), results.get("train_seconds", {}),
                   results.get("snr", {}), float(results["chance"]))

    def worst(self, defense: str) -> tuple[float, str] | None:
        """The highest clean-test accuracy over no attack and every attack (what the data owner can count on)."""
        means = [(self.mean(defense, c), c) for c in self.columns if self.mean(defense, c) is not None]
        return max(means) if means else None


def column_name(cfg, variant: str = "") -> str:
    """The table column of an attack's model: the attack's type, then the variant its after_training named."""
    return f"{cfg.type} {variant}".strip()


def with_defense(recipe: Recipe, defense) -> Recipe:
    """The recipe with another defense, validated again (a patch must still fit the clip, ...)."""
    data = {name: getattr(recipe, name) for name in type(recipe).model_fields}
    data["defense"] = defense
    try:
        return type(recipe).model_validate(data)
    except ValidationError as e:
        raise LabError(f"defense {defense.type}: {format_validation_error(e)}") from None


def run_matrix(datas: list[ExperimentData], attack_cfgs: list, log: Callable[[str], None] = print,
               progress: bool = False) -> Matrix:
    """Train every (defense, attack, seed) and collect clean-test accuracies; ``datas`` hold one recipe with each
    defense (the table's columns), identical otherwise (share their dataset and feature cache: see
    :func:`matrix_data`)."""
    first = datas[0].recipe
    if first.train.num_threads:
        torch.set_num_threads(first.train.num_threads)
    matrix = Matrix([d.recipe.defense.type for d in datas], [NO_ATTACK])
    for data in datas:
        rec, name = data.recipe, data.recipe.defense.type
        matrix.chance = 1.0 / data.num_classes
        matrix.snr[name] = snr_summary(data.protected_train.waveforms, data.clean_train.waveforms)
        clean_test = data.features(data.clean_test), data.clean_test.labels
        for seed in rec.seeds:
            fitted = fit(rec, data.training(data.protected_train, seed), data.num_classes, seed, progress=progress)
            acc = evaluate(fitted.module, rec.train, *clean_test)["accuracy"]
            matrix.add(name, NO_ATTACK, acc, fitted.seconds)
            log(f"{name}, seed {seed}: no attack {acc:.3f} ({fitted.seconds:.0f} s)")
            for acfg in attack_cfgs:
                attack = build_attack(acfg)
                models, timing = train_under_attack(rec, data, attack, seed, plain=fitted.module)
                seconds = timing["total"]
                for variant, module in models.items():
                    col = column_name(acfg, variant)
                    if col not in matrix.columns:
                        matrix.columns.append(col)
                    acc = evaluate(module, rec.train, *clean_test)["accuracy"]
                    matrix.add(name, col, acc, seconds)
                    log(f"{name}, seed {seed}: {col} {acc:.3f} ({seconds:.0f} s)")
                matrix.records.setdefault(name, {}).setdefault(column_name(acfg), []).append(
                    {"seed": seed, **attack.record()})
    return matrix


def matrix_data(recipes: list[Recipe], first: ExperimentData | None = None) -> list[ExperimentData]:
    """One ExperimentData per recipe (the matrix's columns), sharing one loaded dataset and one feature cache
    (``first``, when given, is reused for the recipe it was made for)."""
    cache = first.cache if first is not None else FeatureCache()
    out: list[ExperimentData] = []
    for rec in recipes:
        if first is not None and rec == first.recipe:
            out.append(first)
            continue
        shared = (first or (out[0] if out else None))
        out.append(ExperimentData(rec, cache=cache, log=lambda s: None,
                                  dataset=shared.dataset if shared is not None else None))
    return out


# --- reports -------------------------------------------------------------------------------------------------------

def fmt_cell(values: list[float] | None) -> str:
    return mean_std(values, empty="-")


def table_rows(matrix: Matrix) -> tuple[list[str], list[list[str]]]:
    """The table people read: one row per attack column (no attack first), one column per defense, and a last row
    with each defense's worst case (the highest clean-test accuracy over the rows above, and which attack gave it)."""
    header = ["attack", *matrix.defenses]
    rows = [[c, *[fmt_cell(matrix.cells.get(d, {}).get(c)) for d in matrix.defenses]] for c in matrix.columns]
    worst = [matrix.worst(d) for d in matrix.defenses]
    rows.append([WORST, *[f"{w[0]:.3f} ({w[1]})" if w else "-" for w in worst]])
    return header, rows


CSV_HEADER = ["defense", "attack", "mean", "std", "n", "values"]


def csv_rows(matrix: Matrix) -> list[list]:
    """table.csv's lines below its header: one per defense and attack, then each defense's worst case."""
    rows: list[list] = []
    for d in matrix.defenses:
        for c in matrix.columns:
            values = matrix.cells.get(d, {}).get(c)
            if values:
                rows.append([d, c, f"{statistics.fmean(values):.4f}",
                             f"{statistics.stdev(values) if len(values) > 1 else 0.0:.4f}", len(values),
                             " ".join(f"{v:.4f}" for v in values)])
        worst = matrix.worst(d)
        if worst:
            rows.append([d, f"{WORST} ({worst[1]})", f"{worst[0]:.4f}", "", "", ""])
    return rows


def to_csv(matrix: Matrix) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_HEADER)
    w.writerows(csv_rows(matrix))
    return buf.getvalue()


def to_markdown(results: dict, matrix: Matrix) -> str:
    header, rows = table_rows(matrix)
    lines = [f"# {results['recipe_name']}: attacks ({', '.join(results['attacks']) or 'none'})", "",
             f"Clean-test accuracy (chance {results['chance']:.3f}) of a model trained on each defense's protected "
             f"training set under each attack; mean ± std over seeds {results['seeds']}. The last row is the "
             f"worst case for the data owner (the highest mean accuracy over no attack and the attacks). Column "
             f"`none` is clean data: there, an attack's row shows what the attack itself costs.", "",
             provenance_line(results), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "SNR of each defense's protected training audio (dB, mean / worst 5%): " + "; ".join(
        f"{d} {s['snr_db_mean']:.1f} / {s['snr_db_worst5']:.1f}" for d, s in matrix.snr.items()
        if d != "none" and s['snr_db_mean'] != float('inf')), ""]
    return "\n".join(lines)


def new_attack_dir(recipe: Recipe, label: str) -> Path:
    return new_run_dir(Path(recipe.output_dir) / recipe.name, f"attack-{label}")


def write_results(recipe: Recipe, recipe_path: str, label: str, attack_cfgs: list, matrix: Matrix,
                  wall_seconds: float) -> tuple[dict, Path]:
    run_dir = new_attack_dir(recipe, label)
    results = {
        "recipe_name": recipe.name, "recipe_path": recipe_path, "recipe": recipe.public_dict(),
        "provenance": provenance(), "seeds": list(recipe.seeds), "chance": matrix.chance,
        "attacks": [c.type for c in attack_cfgs],
        "attack_params": [c.model_dump(mode="json") for c in attack_cfgs],
        "defenses": matrix.defenses, "columns": matrix.columns,
        "accuracy": {d: {c: {"mean": statistics.fmean(v), "values": v} for c, v in cols.items()}
                     for d, cols in matrix.cells.items()},
        "worst_case": {d: dict(zip(("accuracy", "attack"), matrix.worst(d))) for d in matrix.defenses
                       if matrix.worst(d)},
        "train_seconds": matrix.seconds, "attack_records": matrix.records, "snr": matrix.snr,
        "wall_seconds": round(wall_seconds, 1),
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    (run_dir / "results.md").write_text(to_markdown(results, matrix))
    (run_dir / "table.csv").write_text(to_csv(matrix))
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.public_dict(), sort_keys=False))
    return results, run_dir
