"""The matrix runner: every (defense, attack, seed) trained and scored on clean test clips."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from lab.attacking.cell import NO_ATTACK, run_cell
from lab.features import FeatureCache
from lab.quality import snr_summary
from lab.recipe import Recipe
from lab.results import stat
from lab.spine import ExperimentData

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
    protections: dict[str, dict] = field(default_factory=dict)  # defense -> its protection record (private)

    def add(self, defense: str, column: str, value: float, seconds: float | None = None) -> None:
        self.cells.setdefault(defense, {}).setdefault(column, []).append(value)
        if seconds is not None:
            self.seconds.setdefault(defense, {}).setdefault(column, []).append(round(seconds, 2))

    def mean(self, defense: str, column: str) -> float | None:
        values = self.cells.get(defense, {}).get(column)
        return stat(values)[0] if values else None

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


def cell_file(cell_dir: Path, index: int, defense: str, seed: int) -> Path:
    return Path(cell_dir) / f"{index:02d}-{defense}-seed{seed}.json"


def _cell_in_worker(recipe: Recipe, attack_cfgs: list, seed: int, threads: int | None) -> dict:
    """A cell in a worker process (``--jobs`` > 1): its own data (loaded and protected there), its own log prefix."""
    if threads:
        torch.set_num_threads(threads)
    data = ExperimentData(recipe, log=lambda s: None)
    label = f"[{recipe.defense.type}, seed {seed}]"
    return run_cell(data, attack_cfgs, seed, log=lambda msg: print(f"{label} {msg}", flush=True))


def run_matrix(datas: list[ExperimentData], attack_cfgs: list, log: Callable[[str], None] = print,
               progress: bool = False, cell_dir: Path | None = None, jobs: int = 1, state=None) -> Matrix:
    """Train every (defense, attack, seed) and collect clean-test accuracies; ``datas`` hold one recipe with each
    defense (the table's columns), identical otherwise (share their dataset and feature cache: see
    :func:`matrix_data`).

    The work is cut into cells, one per (defense, seed). ``cell_dir``: each finished cell is written there as JSON,
    and a cell already there is read instead of trained, so an interrupted matrix continues where it stopped.
    ``jobs`` > 1 trains that many cells at once in spawned worker processes (threads shared out, see
    lab.sweep.threads_per_job); each cell is the same self-contained computation either way, so the numbers are the
    same. ``state`` (a lab.rundir.Progress), when given, counts the cells trained."""
    import json

    from lab.recipe import check_jobs
    from lab.rundir import write_atomic
    from lab.sweep import threads_per_job, worker_pool
    check_jobs(jobs)
    first = datas[0].recipe
    if first.train.num_threads:
        torch.set_num_threads(first.train.num_threads)
    plan = [(i, data, seed) for i, data in enumerate(datas) for seed in data.recipe.seeds]
    cells: dict[tuple[int, int], dict] = {}
    todo = []
    for i, data, seed in plan:
        path = cell_file(cell_dir, i, data.recipe.defense.type, seed) if cell_dir is not None else None
        if path is not None and path.is_file():
            cells[(i, seed)] = json.loads(path.read_text())
            log(f"{data.recipe.defense.type}, seed {seed}: finished earlier, read from {path.name}")
        else:
            todo.append((i, data, seed, path))

    def keep(i: int, seed: int, path: Path | None, cell: dict) -> None:
        cells[(i, seed)] = cell
        if state is not None:
            state.trained += 1
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(cell, indent=2))

    if jobs <= 1:
        for i, data, seed, path in todo:
            keep(i, seed, path, run_cell(data, attack_cfgs, seed, log, progress))
    elif todo:
        threads = threads_per_job(jobs, first.train.num_threads, log)
        log(f"{len(todo)} of {len(plan)} cells (defense x seed) to train, {jobs} at a time")
        with worker_pool(jobs) as pool:
            futures = [(pool.submit(_cell_in_worker, data.recipe, attack_cfgs, seed, threads), i, seed, path)
                       for i, data, seed, path in todo]
            for future, i, seed, path in futures:
                keep(i, seed, path, future.result())
    matrix = Matrix([d.recipe.defense.type for d in datas], [NO_ATTACK])
    for data in datas:
        name = data.recipe.defense.type
        matrix.chance = 1.0 / data.num_classes
        matrix.snr[name] = snr_summary(data.protected_train.waveforms, data.clean_train.waveforms)
    for i, data, seed in plan:  # assembled in the same order however the cells were trained
        cell, name = cells[(i, seed)], data.recipe.defense.type
        for col in cell["columns"]:
            if col not in matrix.columns:
                matrix.columns.append(col)
            matrix.add(name, col, cell["values"][col], cell["seconds"][col])
        for attack_col, record in cell["records"].items():
            matrix.records.setdefault(name, {}).setdefault(attack_col, []).append(record)
        if "protection" in cell:  # (cells written before records were kept have none)
            matrix.protections.setdefault(name, cell["protection"])
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
