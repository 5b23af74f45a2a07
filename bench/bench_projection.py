"""Cost of the ``projection`` attack's one-off work (fitting the linear model and projecting the training set)
against one plain training epoch on the same data, measured in one run and reported as a ratio.

    .venv/bin/python bench/bench_projection.py [--recipe recipes/fsdd_cnn.yaml] [--repeats 2]
        [--spaces waveform,spectrum] [--set data.max_train_per_class=100]

Plain: one epoch of the lab's ``fit`` on the cached features of the recipe's protected training set (what `lab run`
and the attack's own training epochs do: after the projection, its epochs are plain ones on the new set).
Projection: the attack's ``training_set`` on the same protected clips, with its default configuration in each
``--spaces`` entry. Interleaved, ``--repeats`` times, the best time of each kept. Needs FSDD.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attacks import AttackContext, build_attack  # noqa: E402
from lab.experiment import prepare  # noqa: E402
from lab.provenance import git_commit  # noqa: E402
from lab.recipe import load_recipe  # noqa: E402
from lab.train import fit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/fsdd_cnn.yaml")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--spaces", default="waveform,spectrum")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    recipe = load_recipe(args.recipe, ["train.progress=false", "train.epochs=1", *args.set])
    if recipe.train.num_threads:
        torch.set_num_threads(recipe.train.num_threads)
    data = prepare(recipe, log=lambda s: None)
    protected = data.protected_train
    data.features(protected)  # cached before timing, as in a run
    ctx = AttackContext(clean=None, protected=protected.waveforms, labels=protected.labels, lengths=protected.lengths,
                        protection=None, sample_rate=recipe.data.sample_rate, num_classes=data.num_classes, seed=0)
    spaces = [s for s in args.spaces.split(",") if s]
    plain: list[float] = []
    times: dict[str, list[float]] = {s: [] for s in spaces}
    measured: dict[str, dict] = {}
    for _ in range(args.repeats):
        plain.append(fit(recipe, data.training(protected, 0), data.num_classes, 0).seconds)
        for space in spaces:
            attack = build_attack({"type": "projection", "space": space})
            attack.start(ctx)
            start = time.perf_counter()
            attack.training_set(ctx)
            times[space].append(time.perf_counter() - start)
            measured[space] = attack.measured
    commit = git_commit()
    plain_s = min(plain)
    print(f"recipe {args.recipe} ({recipe.model.type} on {recipe.features.type}) {' '.join(args.set)}: "
          f"{len(protected)} clips of {protected.waveforms.shape[1]} samples, defense {recipe.defense.type}, "
          f"{args.repeats} repeats (best kept), {torch.get_num_threads()} threads, commit "
          f"{(commit['commit'] or '?')[:10]}{' (dirty)' if commit['dirty'] else ''}")
    print(f"plain epoch: {plain_s:.2f} s (runs: {', '.join(f'{t:.2f}' for t in plain)})")
    print(f"{'projection':<22}{'one-off s':>10}{'x epoch':>9}  linear fit / held-out accuracy, change energy")
    for space in spaces:
        m, best = measured[space], min(times[space])
        print(f"{space:<22}{best:>10.2f}{best / plain_s:>8.2f}x  {m['linear_fit_accuracy']:.3f} / "
              f"{m['linear_holdout_accuracy']:.3f}, {m['change_energy_mean']:.3f} (median "
              f"{m['change_energy_median']:.3f})")


if __name__ == "__main__":
    main()
