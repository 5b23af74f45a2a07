"""Sweeps: a grid of recipe overrides, run cell by cell, resumable, summarised as a protection/quality frontier.

Each cell is a folder ``cell-<hash>`` holding ``cell.json`` (its overrides) and, when finished, the usual run files.
Running the same sweep again skips finished cells (a results.json and no INCOMPLETE marker) and redoes an
interrupted or failed one. Cells that differ only in their
defense share each seed's clean-trained model (trained once per sweep process).

:func:`emit_cells` (``lab sweep --emit DIR``) trains nothing: it writes each cell's resolved recipe as its own file,
for running the cells elsewhere as separate ``lab run`` commands (a cluster job array: docs/cluster.md).
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import SecretStr

from lab.config import PluginConfig
from lab.errors import LabError
from lab.recipe import Recipe, check_jobs, parse_override, read_recipe_data, recipe_from_dict, set_path
from lab.rundir import is_finished


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["defense.blur=0.1,0.3", ...]`` -> ``{"defense.blur": [0.1, 0.3], ...}`` (values parsed as YAML)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise LabError(f"--grid {item!r}: expected FIELD=V1,V2,..., e.g. defense.blur=0.1,0.3")
        field, raw = (part.strip() for part in item.split("=", 1))
        try:
            values = [yaml.safe_load(v) for v in _split(raw)]
        except yaml.YAMLError:
            raise LabError(f"--grid {item!r}: a value is not valid YAML") from None
        if not values or any(v is None for v in values):
            raise LabError(f"--grid {item!r}: expected FIELD=V1,V2,... with at least one value")
        grid[field] = values
    if not grid:
        raise LabError("a sweep needs at least one --grid FIELD=V1,V2,...")
    return grid


def _split(text: str) -> list[str]:
    """Split on commas outside brackets, so list values like [0.0,0.5] survive."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[({"
        depth -= ch in "])}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def cells(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def cell_id(cell: dict[str, Any], seeds: list[int]) -> str:
    text = json.dumps({"cell": cell, "seeds": seeds}, sort_keys=True)
    return "cell-" + hashlib.sha1(text.encode()).hexdigest()[:10]


def threads_per_job(jobs: int, recipe_threads: int | None, log: Callable[[str], None] = print) -> int | None:
    """Torch threads for each of ``jobs`` parallel cells: the recipe's ``train.num_threads`` when it sets one (a
    warning when threads x jobs exceeds the cores: oversubscription has cost 10-20x on these machines), else the
    cores shared out (at least one each). One job keeps the recipe's setting as it is."""
    if jobs == 1:
        return recipe_threads
    cores = os.cpu_count() or 1
    if recipe_threads is not None:
        if recipe_threads * jobs > cores:
            log(f"warning: {jobs} jobs x train.num_threads={recipe_threads} = {recipe_threads * jobs} threads on "
                f"{cores} cores (oversubscribed: expect it slower, not faster)")
        return recipe_threads
    return max(1, cores // jobs)


def exit_with_parent(parent_pid: int, every_s: float = 2.0) -> None:
    """Worker-process initializer (``--jobs`` > 1): end this worker when the process that started it is gone.
    A sweep or matrix killed by its PID (``kill``, a job scheduler) took only the parent with it: its workers kept
    training for minutes, on the cores of whatever ran next, and wrote into the same cell folders as a resumed run.
    A daemon thread checks the parent every ``every_s`` seconds; the worker's unfinished cell stays INCOMPLETE."""
    import threading
    import time

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(3)
            time.sleep(every_s)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def worker_pool(jobs: int):
    """The ``jobs`` worker processes of a sweep or matrix: spawned (a fresh interpreter each, no forked torch
    state), each ending with its parent (:func:`exit_with_parent`)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    return ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=exit_with_parent,
                               initargs=(os.getpid(),))


def _run_cell(recipe: Recipe, recipe_path: str, folder: str, label: str) -> str:
    """One cell in a worker process (``--jobs`` > 1): its run, its own log lines prefixed with the cell."""
    import torch

    from lab.experiment import run
    if recipe.train.num_threads:
        torch.set_num_threads(recipe.train.num_threads)
    run(recipe, recipe_path, log=lambda msg: print(f"[{label}] {msg}", flush=True), run_dir=Path(folder))
    return folder


def plan_cells(recipe_path: Path, grid: dict[str, list[Any]], seeds: list[int] | None = None,
               overrides: list[str] | None = None, machine: bool = True) -> list[tuple[dict, Recipe]]:
    """Every cell of the grid with its validated recipe (the base recipe, ``overrides``, ``seeds``, then the cell's
    values), in the grid's order; a mistake in any cell fails before any work. ``machine``: also check the train
    section against this machine (off for :func:`emit_cells`: the cells may run on other machines)."""
    base = list(overrides or [])
    if seeds:
        base.append(f"seeds={json.dumps(seeds)}")
    planned = []
    for cell in cells(grid):
        data = read_recipe_data(Path(recipe_path))
        for item in base + [f"{k}={json.dumps(v)}" for k, v in cell.items()]:
            set_path(data, *parse_override(item))
        planned.append((cell, recipe_from_dict(data, str(recipe_path), machine=machine)))
    return planned


def resolved_dict(recipe: Recipe) -> dict:
    """The whole recipe as a recipe file holds it, every default filled in and the defense's secret fields (an
    inline key) KEPT: what ``lab run`` needs to run exactly this recipe again. (``Recipe.public_dict``, what run
    folders get, redacts the key instead; a file from this is as private as a recipe with an inline key.)"""
    out = recipe.model_dump(mode="json")
    for section in ("model", "defense"):
        cfg = getattr(recipe, section)
        if isinstance(cfg, PluginConfig):
            out[section] = cfg.model_dump(mode="json")
            for name in type(cfg).model_fields:
                value = getattr(cfg, name)
                if isinstance(value, SecretStr):
                    out[section][name] = value.get_secret_value()
    return out


def has_inline_key(recipe: Recipe) -> bool:
    return any(isinstance(getattr(recipe.defense, n, None), SecretStr) for n in type(recipe.defense).model_fields)


def emit_cells(recipe_path: Path, grid: dict[str, list[Any]], out: Path, seeds: list[int] | None = None,
               overrides: list[str] | None = None) -> list[tuple[dict, Path]]:
    """Write every cell's resolved recipe to ``out/cell-NNN.yaml`` (N: the cell's index, from 000, in the grid's
    order) and their absolute paths, one a line in that order, to ``out/cells.txt``; train nothing. Each file runs
    as ``lab run out/cell-NNN.yaml``: the cell's recipe exactly, but named ``<recipe>-cell-NNN`` (so its run folder
    and its rows in ``lab report`` are told apart; a name changes nothing else). Returns (cell, path) per cell."""
    planned = plan_cells(recipe_path, grid, seeds, overrides, machine=False)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (cell, recipe) in enumerate(planned):
        label = ", ".join(f"{k}={json.dumps(v)}" for k, v in cell.items())
        data = resolved_dict(recipe)
        data["name"] = f"{recipe.name}-cell-{i:03d}"
        data["description"] = (f"lab sweep cell {i:03d} of {recipe_path}: {label}" +
                               (f". {recipe.description.strip()}" if recipe.description.strip() else ""))
        path = (out / f"cell-{i:03d}.yaml").resolve()
        header = (f"# Cell {i:03d} of {len(planned)} of a sweep of {recipe_path} ({label}); written by lab sweep "
                  f"--emit.\n# Run: lab run {path} [--out DIR]. In a lab sweep folder this cell is "
                  f"{cell_id(cell, list(recipe.seeds))}.\n"
                  "# It holds the recipe's key if the recipe has an inline one: keep it as private as the key.\n")
        text = header + yaml.safe_dump(data, sort_keys=False)
        if path.exists():
            path.unlink()
        # a file holding an inline key is made readable by its owner only, from its first byte
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if has_inline_key(recipe) else 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        written.append((cell, path))
    (out / "cells.txt").write_text("".join(f"{p}\n" for _, p in written))
    return written


def run_sweep(recipe_path: Path, grid: dict[str, list[Any]], out: Path, seeds: list[int] | None = None,
              overrides: list[str] | None = None, log: Callable[[str], None] = print, jobs: int = 1) -> list[dict]:
    """Run every cell not yet finished; return one summary row per cell (finished before or now).

    ``jobs`` > 1 runs that many cells at once, each in its own worker process with its share of the cores (see
    :func:`threads_per_job`); every cell is the same self-contained run either way, so the numbers are the same
    (clean-trained models are then trained in each process instead of shared across cells: identical models, more
    compute)."""
    from lab.experiment import run
    from lab.rundir import RunInterrupted

    check_jobs(jobs)
    planned = plan_cells(recipe_path, grid, seeds, overrides)  # every cell validated before any work
    if jobs > 1:
        threads = threads_per_job(jobs, planned[0][1].train.num_threads, log)
        planned = [(cell, rec.model_copy(update={"train": rec.train.model_copy(update={"num_threads": threads})}))
                   for cell, rec in planned]
    out.mkdir(parents=True, exist_ok=True)
    clean_models: dict = {}
    todo = []
    for i, (cell, recipe) in enumerate(planned, 1):
        folder = out / cell_id(cell, list(recipe.seeds))
        label = ", ".join(f"{k}={v}" for k, v in cell.items())
        if is_finished(folder):
            log(f"[{i}/{len(planned)}] {label}: finished earlier, skipped")
            continue
        if folder.exists():
            log(f"[{i}/{len(planned)}] {label}: incomplete from an earlier run, redoing")
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        (folder / "cell.json").write_text(json.dumps({"cell": cell, "seeds": list(recipe.seeds)}, indent=2))
        todo.append((i, label, recipe, folder))
    if jobs == 1:
        for n, (i, label, recipe, folder) in enumerate(todo):
            log(f"[{i}/{len(planned)}] {label}: running")
            try:
                run(recipe, str(recipe_path), log=log, run_dir=folder, clean_models=clean_models)
            except RunInterrupted as e:
                done = len(planned) - len(todo) + n
                raise RunInterrupted(f"{e}; {done} of {len(planned)} cells finished before it, and running the "
                                     "same sweep again resumes") from None
    elif todo:
        _run_parallel(todo, len(planned), str(recipe_path), jobs, log)
    rows = [summary_row(cell, json.loads((out / cell_id(cell, list(recipe.seeds)) / "results.json").read_text()),
                        out / cell_id(cell, list(recipe.seeds))) for cell, recipe in planned]
    write_frontier(rows, out)
    return rows


def _run_parallel(todo: list, total: int, recipe_path: str, jobs: int, log: Callable[[str], None]) -> None:
    """The cells of ``todo`` in ``jobs`` worker processes (spawned: a fresh interpreter each, no forked torch
    state). A failed cell fails the sweep after the running ones end; an interrupted sweep resumes."""
    from concurrent.futures import FIRST_EXCEPTION, wait

    from lab.rundir import RunInterrupted
    log(f"{len(todo)} of {total} cells to run, {jobs} at a time")
    pool = worker_pool(jobs)
    futures = {}
    try:
        for i, label, recipe, folder in todo:
            futures[pool.submit(_run_cell, recipe, recipe_path, str(folder), label)] = (i, label)
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for f in done:
            if f.exception() is not None:
                i, label = futures[f]
                raise LabError(f"sweep cell [{i}/{total}] {label} failed: {f.exception()}; its folder is marked "
                               f"INCOMPLETE, and running the same sweep again redoes it")
        for f in futures:
            f.result()
            i, label = futures[f]
            log(f"[{i}/{total}] {label}: finished")
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        finished = sum(f.done() and f.exception() is None for f in futures)
        raise RunInterrupted(f"sweep interrupted: {finished} of {len(todo)} cells of this run finished; running the "
                             "same sweep again resumes") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def summary_row(cell: dict, results: dict, folder: Path) -> dict:
    acc = results["accuracy"]
    quality = results.get("quality", {})
    snr = quality.get("protected_train_vs_clean", {})
    fad = quality.get("fad", {}) or {}
    row = {**{k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in cell.items()},
           "model": results["recipe"]["model"]["type"], "feature": results["recipe"]["features"]["type"],
           "seeds": len(results["seeds"]),
           "protected_clean_acc": acc["protected_model/clean_test"]["mean"],
           "protected_clean_acc_std": acc["protected_model/clean_test"]["std"],
           "clean_clean_acc": acc["clean_model/clean_test"]["mean"],
           "protected_protected_acc": acc["protected_model/protected_test"]["mean"],
           "protected_mixed_acc": acc["protected_model/mixed_test"]["mean"],
           "snr_db": snr.get("snr_db_mean"),
           "fad": fad.get("value"), "fad_floor": fad.get("floor"), "fad_backend": fad.get("backend"),
           "folder": str(folder)}
    return row


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """Which points are on the front when both coordinates are to be minimised (nothing is better in both)."""
    return [not any((q[0] <= p[0] and q[1] <= p[1]) and q != p for q in points) for p in points]


def write_frontier(rows: list[dict], out: Path) -> None:
    if not rows:
        return
    use_fad = all(r["fad"] is not None for r in rows)
    cost = [(r["fad"] if use_fad else -(r["snr_db"] or 0.0)) for r in rows]
    front = pareto([(c, r["protected_clean_acc"]) for c, r in zip(cost, rows)])
    for r, f in zip(rows, front):
        r["pareto"] = f
    with open(out / "frontier.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    from lab.plots import frontier_plot
    frontier_plot(rows, cost, "FAD (protected vs clean)" if use_fad else "-SNR of protected audio (dB)",
                  out / "frontier.png")
