"""Training epoch cost: the lab (LightningModule + Trainer) against a minimal hand-written PyTorch loop on the same
model, data, batch size and optimiser, measured in one run and reported as a ratio (machines drift; ratios hold).

    .venv/bin/python bench/bench_training.py [--recipe recipes/fsdd_cnn.yaml] [--epochs 3] [--repeats 2]

Needs FSDD (data.root, $LAB_DATA_DIR or the cache). Prints seconds per epoch for both and lab/plain.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab.experiment import prepare  # noqa: E402
from lab.models import build_model  # noqa: E402
from lab.module import standardisation  # noqa: E402
from lab.recipe import load_recipe  # noqa: E402
from lab.train import fit  # noqa: E402


def plain_loop(recipe, feats, labels, num_classes, epochs, seed) -> float:
    torch.manual_seed(seed)
    model = build_model(recipe.model, tuple(feats.shape[1:]), num_classes, recipe.features.raw,
                        recipe.data.sample_rate)
    mean, std = standardisation(feats)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.train.lr)
    bs = recipe.train.batch_size
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(labels)).split(bs):
            loss = F.cross_entropy(model((feats[idx] - mean) / std), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return (time.perf_counter() - start) / epochs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/fsdd_cnn.yaml")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    recipe = load_recipe(args.recipe, ["train.progress=false", *args.set])
    prep = prepare(recipe, log=lambda s: None)
    feats, labels = prep.features(prep.clean_train), prep.train.labels
    num_classes = prep.num_classes
    lab_times, plain_times = [], []
    for r in range(args.repeats):  # interleaved, so drift hits both alike
        plain_times.append(plain_loop(recipe, feats, labels, num_classes, args.epochs, r))
        fitted = fit(recipe, prep.training(prep.clean_train, r), num_classes, r, epochs=args.epochs)
        lab_times.append(fitted.seconds / args.epochs)
    lab_s, plain_s = min(lab_times), min(plain_times)
    print(f"recipe {args.recipe} ({recipe.model.type} on {recipe.features.type}), {len(labels)} clips, "
          f"batch {recipe.train.batch_size}, {args.epochs} epochs x {args.repeats} repeats, "
          f"{torch.get_num_threads()} threads")
    print(f"plain loop : {plain_s:.2f} s/epoch (best of {args.repeats})")
    print(f"lab        : {lab_s:.2f} s/epoch (best of {args.repeats}; Lightning, no validation)")
    print(f"ratio lab/plain: {lab_s / plain_s:.2f}x  (bar: <= 1.15x)")


if __name__ == "__main__":
    main()
