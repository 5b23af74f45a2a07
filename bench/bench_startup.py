"""Start-up cost of the `lab` commands that train nothing, against the floor every one of them pays: a fresh
interpreter that imports torch. Measured in one run (best of N each), so the ratios hold on a busy machine.

    .venv/bin/python bench/bench_startup.py [--repeats 3]

A command that only lists, checks or refuses (`lab list`, a one-line error, `lab fad`) imports the registries, which
import every plugin module; a plugin that imports Lightning, torchmetrics or scipy.signal at its top makes all of
them pay those imports (about 5 s on the lab's machines). The tests run `lab` in subprocesses dozens of times, so
this is also CI time.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import best_of

REPO = Path(__file__).resolve().parent.parent


def timed(args: list[str], repeats: int, expect: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def once():
        proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != expect:
            raise SystemExit(f"{' '.join(args)}: exit {proc.returncode}, expected {expect}: {proc.stderr[-500:]}")
    return best_of(once, repeats)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    empty = tempfile.mkdtemp()
    cases = [
        ("floor: python -c 'import torch'", ["-c", "import torch"], 0),
        ("lab list", ["-m", "lab", "list"], 0),
        ("lab attack, unknown attack (one-line error)",
         ["-m", "lab", "attack", "recipes/fsdd_cnn.yaml", "--type", "augmnt", "--out", empty], 2),
        ("lab fad, empty folders (one-line error)", ["-m", "lab", "fad", empty, empty], 2),
    ]
    times = [(name, timed(argv, args.repeats, expect)) for name, argv, expect in cases]
    floor = times[0][1]
    print(f"{'command':48s} {'seconds':>8s} {'x floor':>8s}")
    for name, t in times:
        print(f"{name:48s} {t:8.2f} {t / floor:8.2f}")


if __name__ == "__main__":
    main()
