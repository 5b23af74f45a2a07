"""Throughput of `lab sweep --jobs`: models trained per hour with --jobs 2 against --jobs 1 on the same cells,
measured in one run (the same grid twice, into two fresh folders), and whether the per-cell numbers agree.

    LAB_DATA_DIR=../shared/data .venv/bin/python bench/bench_jobs.py [--recipe recipes/fsdd_cnn.yaml] [--cells 4]

Both runs use one torch thread per cell (train.num_threads=1), so --jobs 1 leaves a core idle and --jobs 2 uses
both: the ratio is what running cells side by side buys on a 2-core machine, next to one 1-thread job.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import fsdd_train  # noqa: F401  (puts the repo on sys.path)

from lab.provenance import git_commit
from lab.sweep import run_sweep


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/fsdd_cnn.yaml")
    ap.add_argument("--cells", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--per-class", type=int, default=100)
    args = ap.parse_args()
    grid = {"defense.blur": [round(0.1 + 0.2 * i, 2) for i in range(args.cells)]}
    base = [f"train.epochs={args.epochs}", "train.num_threads=1", "train.progress=false",
            f"data.max_train_per_class={args.per_class}"]
    timings, numbers = {}, {}
    for jobs in (1, 2):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            rows = run_sweep(Path(args.recipe), grid, Path(out), [0], base, log=lambda s: None, jobs=jobs)
            timings[jobs] = time.perf_counter() - start
            numbers[jobs] = [(r["protected_clean_acc"], r["clean_clean_acc"]) for r in rows]
    models = 2 * args.cells  # a clean and a protected model per cell (one seed)
    print(f"{args.recipe}: {args.cells} cells x 2 models, {args.epochs} epochs, {args.per_class} clips per class, "
          f"1 thread per cell; commit {git_commit()['commit']}")
    for jobs in (1, 2):
        print(f"--jobs {jobs}: {timings[jobs]:6.1f} s  ({models / timings[jobs] * 3600:6.0f} models/hour)")
    print(f"ratio --jobs 2 / --jobs 1 throughput: {timings[1] / timings[2]:.2f}x; same per-cell numbers: "
          f"{numbers[1] == numbers[2]}")
    print(json.dumps({"seconds": timings, "same_numbers": numbers[1] == numbers[2]}))


if __name__ == "__main__":
    main()
