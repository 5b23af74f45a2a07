"""ar-noise generation cost: seconds per 1,000 clips (1 s at 8 kHz), against one plain training epoch of the recipe's
model on its features (MFCC for fsdd_cnn) on the same clips, measured in one run and reported as a ratio.

    LAB_DATA_DIR=../shared/data OMP_NUM_THREADS=1 .venv/bin/python bench/bench_generation.py [--repeats 3]

Generation is timed as ``lab run`` does it: ``Protection.apply`` on the whole training set (its real lengths), for
both ``noise`` modes. The epoch is bench_training's hand-written PyTorch loop (no Lightning) on features computed
once, so the ratio says what protecting costs next to training on the result.
"""
from __future__ import annotations

import argparse
import time

import torch
from bench_training import plain_loop
from common import best_of

from defenses import DEFENSES, build_defense
from lab.config import parse_plugin
from lab.data import load_dataset
from lab.features import FrontEnd
from lab.recipe import load_recipe


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/fsdd_cnn.yaml")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1, help="plain-loop epochs per repeat")
    ap.add_argument("--snr-db", type=float, default=30.0)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    recipe = load_recipe(args.recipe, ["train.progress=false", *args.set])
    if recipe.train.num_threads:
        torch.set_num_threads(recipe.train.num_threads)
    train, _ = load_dataset(recipe.data, log=lambda s: None)
    x, y, lengths = train.waveforms, train.labels, train.lengths
    n_classes = len(train.class_names)
    per_1000 = {}
    for noise in ("per-clip", "classwise"):
        cfg = parse_plugin(DEFENSES, {"type": "ar-noise", "key": "bench-key-0000", "noise": noise,
                                      "snr_db": args.snr_db}, "defense")
        derive_s = best_of(lambda: build_defense(cfg).derive(n_classes, train.sample_rate), args.repeats)
        apply_s = float("inf")
        for _ in range(args.repeats):  # a fresh protection each time: classwise caches its class sequences
            prot = build_defense(cfg).derive(n_classes, train.sample_rate)
            start = time.perf_counter()
            prot.apply(x, y, lengths)
            apply_s = min(apply_s, time.perf_counter() - start)
        per_1000[noise] = apply_s * 1000 / len(y)
        print(f"ar-noise {noise:9s}: derive {derive_s * 1e3:6.1f} ms; apply to {len(y)} clips {apply_s:6.3f} s = "
              f"{per_1000[noise]:.3f} s per 1,000 clips ({x.numel() / train.sample_rate / apply_s:,.0f}x real time; "
              f"order {prot.params['order']}, warm-up {prot.warmup} samples)")
    frontend = FrontEnd(recipe.features, recipe.data.sample_rate)
    feats_s = best_of(lambda: frontend(x), 1)
    feats = frontend(x)
    epoch_s = min(plain_loop(recipe, feats, y, n_classes, args.epochs, r) for r in range(args.repeats))
    print(f"{recipe.features.type} features of the {len(y)} clips: {feats_s:.2f} s "
          f"({feats_s * 1000 / len(y):.3f} s per 1,000 clips)")
    print(f"plain training epoch ({recipe.model.type} on {recipe.features.type}, batch {recipe.train.batch_size}): "
          f"{epoch_s:.2f} s = {epoch_s * 1000 / len(y):.3f} s per 1,000 clips (best of {args.repeats})")
    for noise, s in per_1000.items():
        print(f"ratio generation/epoch ({noise}): {s / (epoch_s * 1000 / len(y)):.3f}")
    print(f"{torch.get_num_threads()} torch threads")


if __name__ == "__main__":
    main()
