"""End to end: wall time and peak memory of `lab run RECIPE` (a subprocess, as a user runs it), against the bare
training compute it contains (a minimal hand-written loop over the same number of model-epochs, extrapolated from
a short measurement in the same run).

    LAB_DATA_DIR=../shared/data .venv/bin/python bench/bench_end_to_end.py [--recipe recipes/fsdd_cnn.yaml]
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import fsdd_train  # noqa: F401  (puts the repo on sys.path)

from bench_training import plain_loop
from lab.experiment import prepare
from lab.recipe import load_recipe


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/fsdd_cnn.yaml")
    ap.add_argument("--plain-epochs", type=int, default=2)
    args = ap.parse_args()
    recipe = load_recipe(args.recipe)
    lab = Path(sys.executable).with_name("lab")
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        proc = subprocess.run([str(lab), "run", args.recipe, "--out", out, "--set", "train.progress=false"],
                              capture_output=True, text=True, env=os.environ)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"lab run failed:\n{proc.stderr[-2000:]}")
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    prep = prepare(recipe, log=lambda s: None)
    per_epoch = plain_loop(recipe, prep.features(prep.clean_train), prep.train.labels, prep.num_classes,
                           args.plain_epochs, 0)
    fits = 2 * len(recipe.seeds)
    bare = per_epoch * recipe.train.epochs * fits
    print(f"lab run {args.recipe}: {len(recipe.seeds)} seeds x 2 models x {recipe.train.epochs} epochs")
    print(f"wall time      : {wall:7.1f} s   (bar: < 240 s)")
    print(f"peak memory    : {peak_mib:7.0f} MiB (max RSS of the lab process)")
    print(f"bare training  : {bare:7.1f} s   ({fits * recipe.train.epochs} model-epochs x {per_epoch:.2f} s, "
          f"plain loop)")
    print(f"ratio wall/bare training: {wall / bare:.2f}x")


if __name__ == "__main__":
    main()
