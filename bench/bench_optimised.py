"""Generation cost of the optimised defenses (em-noise sample-/class-wise, robust-em, poscuda-opt, ensemble-em,
em-filter):
seconds per min-min round per 1,000 clips, and the ratio to one plain training epoch of the recipe's model on its
features on the same clips, measured in the same run (the machine's speed drifts; the ratio does not).

    LAB_DATA_DIR=../shared/data OMP_NUM_THREADS=1 .venv/bin/python bench/bench_optimised.py [--rounds 1] [--clips 2700]

Each defense is derived through the spine exactly as ``lab run`` derives it (surrogate = the recipe's model and
features), with ``min_rounds = max_rounds = --rounds`` so every defense does the same number of rounds; its
default ``steps`` and ``train_batches``. A round = ``train_batches`` surrogate batches + ``steps`` descent steps on
every clip + one accuracy pass. ``lab run`` needs as many rounds as the stop rule takes (its record says how many).
"""
from __future__ import annotations

import argparse
import time

import torch
from bench_training import plain_loop

from lab.recipe import load_recipe
from lab.spine import ExperimentData

DEFENSES = {
    "em-noise sample-wise": "{type: em-noise, mode: sample-wise}",
    "em-noise class-wise": "{type: em-noise, mode: class-wise}",
    "robust-em sample-wise": "{type: robust-em, mode: sample-wise}",
    "poscuda-opt": "{type: poscuda-opt, snr_db: 30}",
    # the ensemble (issue 25): four members that differ in model and front-end, two transformation draws a step
    "ensemble-em class-wise": "{type: ensemble-em}",
    # the class in the noise's colour: class filters on each clip's own noise (issue 25)
    "em-filter": "{type: em-filter}",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/fsdd_cnn.yaml")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--clips", type=int, default=None, help="training clips per class (default: all)")
    ap.add_argument("--only", default=None, help="comma-separated names of DEFENSES to time")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    more = [f"data.max_train_per_class={args.clips}"] if args.clips else []
    base = load_recipe(args.recipe, ["train.progress=false", *more, *args.set])
    if base.train.num_threads:
        torch.set_num_threads(base.train.num_threads)
    clean = ExperimentData(base, log=lambda s: None)
    y = clean.clean_train.labels
    feats = clean.features(clean.clean_train)
    epoch_s = min(plain_loop(base, feats, y, clean.num_classes, 1, r) for r in range(2))
    print(f"plain training epoch ({base.model.type} on {base.features.type}, {len(y)} clips, batch "
          f"{base.train.batch_size}): {epoch_s:.2f} s = {epoch_s * 1000 / len(y):.3f} s per 1,000 clips (best of 2)")
    names = [n.strip() for n in args.only.split(",")] if args.only else list(DEFENSES)
    for name in names:
        spec = DEFENSES[name][:-1] + f", key: bench-key-0000, min_rounds: {args.rounds}, max_rounds: {args.rounds}}}"
        rec = load_recipe(args.recipe, ["train.progress=false", *more, *args.set, f"defense={spec}"])
        data = ExperimentData(rec, log=lambda s: None, dataset=clean.dataset)
        start = time.perf_counter()
        prot = data.protection
        seconds = time.perf_counter() - start
        per_round_1000 = seconds / args.rounds * 1000 / len(y)
        acc = prot.optimisation["rounds"][-1]["train_accuracy"] if hasattr(prot, "optimisation") else None
        print(f"{name:22s}: {seconds:7.1f} s for {args.rounds} round(s) = {per_round_1000:6.2f} s per round per "
              f"1,000 clips = {per_round_1000 / (epoch_s * 1000 / len(y)):5.1f} plain epochs per round "
              f"(surrogate accuracy on the perturbed clips after the last round {acc})")
    print(f"{torch.get_num_threads()} torch threads")


if __name__ == "__main__":
    main()
