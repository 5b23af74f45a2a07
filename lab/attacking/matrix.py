"""The matrix runner: every (defense, attack, seed) trained and scored on clean test clips."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from attacks.base import build_attack
from lab.attacking.setup import column_name
from lab.attacking.training import train_under_attack
from lab.features import FeatureCache
from lab.quality import snr_summary
from lab.recipe import Recipe
from lab.spine import ExperimentData
from lab.train import evaluate, fit

NO_ATTACK = "no attack"
WORST = "worst case"


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
