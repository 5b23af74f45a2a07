"""The one results writer's pieces, shared by ``lab run``, ``lab attack``, ``lab sweep`` and ``lab report``: a new
run folder that never overwrites another, the mean ± std cell, and the provenance line under every results.md
title (seeds, recipe, commit, key fingerprint, versions, time)."""
from __future__ import annotations

import datetime as dt
import statistics
from pathlib import Path


def new_run_dir(base: Path, label: str = "") -> Path:
    """A new folder ``base/[label-]<timestamp>[-n]`` (created; an existing folder is never reused)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{label}-{stamp}" if label else stamp
    run_dir, n = Path(base) / name, 1
    while run_dir.exists():  # never overwrite an earlier run
        n += 1
        run_dir = Path(base) / f"{name}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir


def mean_std(values, empty: str = "–") -> str:
    """``mean ± std`` over seeds to 3 decimals (just the mean for one value; ``empty`` for none). ``values``: a
    list of numbers, or a summary ``{"mean", "std", "n"}`` as results.json stores it."""
    if isinstance(values, dict):
        mean, std, n = values["mean"], values.get("std", 0.0), values.get("n", 1)
    else:
        if not values:
            return empty
        mean, n = statistics.fmean(values), len(values)
        std = statistics.stdev(values) if n > 1 else 0.0
    return f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"


def provenance_line(results: dict) -> str:
    """What every number in a results file rests on, in one Markdown line: seeds, recipe (where there is one), git
    commit (dirty or not), key fingerprint (never the key), torch and lightning versions, time, and wall time where
    known."""
    prov = results.get("provenance", {})
    git, versions = prov.get("git", {}), prov.get("versions", {})
    parts = [f"Seeds {results['seeds']}"]
    if "recipe_path" in results:  # results made without a recipe file (lab audit) have none to name
        parts.append(f"recipe `{results['recipe_path']}`")
    parts.append(f"commit `{git.get('commit')}`{' (dirty)' if git.get('dirty') else ''}")
    if results.get("key_fingerprint"):
        parts.append(f"key fingerprint `{results['key_fingerprint']}`")
    parts += [f"torch {versions.get('torch')}, lightning {versions.get('lightning')}", str(prov.get("time_utc"))]
    if results.get("wall_seconds") is not None:
        parts.append(f"{results['wall_seconds']} s")
    return " · ".join(parts)
