"""Cost of training under each attack against a plain training epoch, measured in one run and reported as ratios
(machines drift; ratios hold).

    .venv/bin/python bench/bench_attacks.py [--recipe recipes/fsdd_cnn.yaml] [--epochs 2] [--attacks augment,...]

Plain: the lab's `fit` on cached features of the protected training set. Batch attacks (augment, mixed-position,
sharpen-lowpass, adversarial-training, filter-retrain adversarial) transform the waveforms of every batch and compute
features per batch; their epoch time is compared with the plain one. Data attacks (codec, partial, filter-retrain
estimate) transform the training set once: the one-off seconds are printed, and their epochs are plain ones.
clean-finetune reuses the plain model and adds its fine-tuning epochs on a few clean clips.
Bar (issue 3): augment, mixed-position and codec at most 2x a plain epoch. Needs FSDD.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attacks import ATTACKS, build_attack  # noqa: E402
from lab.attacking import train_under_attack  # noqa: E402
from lab.experiment import prepare  # noqa: E402
from lab.features import FeatureCache, FrontEnd  # noqa: E402
from lab.recipe import load_recipe  # noqa: E402
from lab.train import fit  # noqa: E402

BAR = {"augment": 2.0, "mixed-position": 2.0, "codec": 2.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/fsdd_cnn.yaml")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--attacks", default=",".join(ATTACKS.names()))
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    recipe = load_recipe(args.recipe, ["train.progress=false", f"train.epochs={args.epochs}", *args.set])
    prep = prepare(recipe, log=lambda s: None)
    num_classes = len(prep.train.class_names)
    frontend, cache = FrontEnd(recipe.features, recipe.data.sample_rate), FeatureCache()
    feats, labels = prep.features["protected_train"], prep.train.labels

    def plain() -> tuple[float, object]:
        fitted = fit(recipe, feats, labels, num_classes, 0)
        return fitted.seconds / args.epochs, fitted.module

    plain_before, plain_module = plain()
    names = [n for n in args.attacks.split(",") if n]
    configs = []
    for name in names:
        configs.append({"type": name})
        if name == "filter-retrain":
            configs.append({"type": name, "method": "estimate"})
    rows = []
    for data in configs:
        attack = build_attack(data)
        label = data["type"] + (f" ({attack.config.method})" if data["type"] == "filter-retrain" else "")
        start = time.perf_counter()
        _, seconds = train_under_attack(recipe, prep, attack, 0, frontend, cache, plain=plain_module)
        total = time.perf_counter() - start
        if attack.trains_plain:
            rows.append((label, None, total, "fine-tuning only (the plain model is reused)"))
        elif attack.per_batch:
            rows.append((label, seconds / args.epochs, 0.0, "per batch"))
        else:  # data attack: the one-off work, then plain epochs on its training set
            t0 = time.perf_counter()
            attack.start_seconds = None
            attack2 = build_attack(data)
            from attacks.base import AttackContext
            ctx = AttackContext(prep.waveforms["clean_train"], prep.waveforms["protected_train"], labels,
                                prep.train.lengths, prep.protection, recipe.data.sample_rate, num_classes, 0)
            attack2.start(ctx)
            attack2.training_set(ctx)
            once = time.perf_counter() - t0
            rows.append((label, (seconds - once) / args.epochs, once, "once per training run"))
    plain_after, _ = plain()
    plain_s = min(plain_before, plain_after)
    print(f"recipe {args.recipe} ({recipe.model.type} on {recipe.features.type}), {len(labels)} clips, batch "
          f"{recipe.train.batch_size}, {args.epochs} epochs each, {torch.get_num_threads()} threads, defense "
          f"{recipe.defense.type}")
    print(f"plain epoch: {plain_s:.2f} s (best of before/after: {plain_before:.2f} / {plain_after:.2f})")
    print(f"{'attack':<32}{'s/epoch':>9}{'ratio':>8}{'one-off s':>11}  bar")
    for label, per_epoch, once, note in rows:
        bar = BAR.get(label)
        if per_epoch is None:
            print(f"{label:<32}{'-':>9}{'-':>8}{once:>11.2f}  {note}")
            continue
        ratio = per_epoch / plain_s
        verdict = "" if bar is None else (f"<= {bar}x {'ok' if ratio <= bar else 'FAILS'}")
        print(f"{label:<32}{per_epoch:>9.2f}{ratio:>7.2f}x{once:>11.2f}  {verdict} ({note})")


if __name__ == "__main__":
    main()
