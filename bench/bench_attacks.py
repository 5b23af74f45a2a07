"""Cost of training under each attack against a plain training epoch, measured in one run and reported as ratios
(machines drift and are shared; ratios of interleaved runs hold better than seconds).

    .venv/bin/python bench/bench_attacks.py [--recipe recipes/fsdd_cnn.yaml] [--epochs 2] [--repeats 2]
        [--attacks augment,mixed-position,codec] [--set data.max_train_per_class=100]

Plain: the lab's ``fit`` on cached features of the protected training set (what `lab run` does). Each attack is
trained for the same epochs by `lab attack`'s own code path (lab.attacking.train_under_attack): batch attacks
(augment, mixed-position, sharpen-lowpass, adversarial-training, filter-adversarial) transform the waveforms
of every batch and compute its features per batch; data attacks (codec, partial, filter-estimate) transform
the training set once (the one-off seconds are printed separately; their epochs are plain ones on the new set);
clean-finetune reuses the plain model and adds its fine-tuning on a few clean clips. Plain and attacks are
interleaved, ``--repeats`` times, and the best time of each is kept.
Bar (issue 3): augment, mixed-position and codec epochs at most 2x a plain epoch. Needs FSDD.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attacks import ATTACKS, build_attack  # noqa: E402
from lab.attacking import column_name, train_under_attack  # noqa: E402
from lab.experiment import prepare  # noqa: E402
from lab.provenance import git_commit  # noqa: E402
from lab.recipe import load_recipe  # noqa: E402
from lab.train import fit  # noqa: E402

BAR = {"augment": 2.0, "mixed-position": 2.0, "codec": 2.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/fsdd_cnn.yaml")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--attacks", default=",".join(ATTACKS.names()))
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    recipe = load_recipe(args.recipe, ["train.progress=false", f"train.epochs={args.epochs}", *args.set])
    if recipe.train.num_threads:
        torch.set_num_threads(recipe.train.num_threads)
    prep = prepare(recipe, log=lambda s: None)
    num_classes, labels = prep.num_classes, prep.train.labels
    configs = []
    for name in [n for n in args.attacks.split(",") if n]:
        configs.append(build_attack({"type": name}).config)
    plain_times: list[float] = []
    best: dict[str, dict] = {}
    plain_module = None
    for _ in range(args.repeats):
        fitted = fit(recipe, prep.training(prep.protected_train, 0), num_classes, 0)
        plain_times.append(fitted.seconds / args.epochs)
        plain_module = fitted.module
        for cfg in configs:
            attack = build_attack(cfg)
            _, timing = train_under_attack(recipe, prep, attack, 0, plain=plain_module)
            label = column_name(cfg)
            entry = {"epoch": timing["train"] / args.epochs, "data": timing["data"], "after": timing["after"],
                     "plain_start": attack.trains_plain, "per_batch": attack.per_batch}
            old = best.get(label)
            best[label] = entry if old is None else {k: min(v, old[k]) if isinstance(v, float) else v
                                                     for k, v in entry.items()}
    plain_s = min(plain_times)
    commit = git_commit()
    print(f"recipe {args.recipe} ({recipe.model.type} on {recipe.features.type}) {' '.join(args.set)}: "
          f"{len(labels)} clips, batch {recipe.train.batch_size}, {args.epochs} epochs x {args.repeats} repeats "
          f"(best kept), {torch.get_num_threads()} threads, defense {recipe.defense.type}, commit "
          f"{(commit['commit'] or '?')[:10]}{' (dirty)' if commit['dirty'] else ''}")
    print(f"plain epoch: {plain_s:.2f} s (runs: {', '.join(f'{t:.2f}' for t in plain_times)})")
    print(f"{'attack':<32}{'s/epoch':>9}{'ratio':>8}{'one-off s':>11}  note")
    for label, e in best.items():
        if e["plain_start"]:
            print(f"{label:<32}{'-':>9}{'-':>8}{e['after']:>11.2f}  reuses the plain model; fine-tuning seconds")
            continue
        ratio = e["epoch"] / plain_s
        bar = BAR.get(label)
        verdict = f"bar <= {bar}x: {'ok' if ratio <= bar else 'FAILS'}; " if bar else ""
        kind = "per-batch transform" if e["per_batch"] else "training set changed once"
        print(f"{label:<32}{e['epoch']:>9.2f}{ratio:>7.2f}x{e['data']:>11.2f}  {verdict}{kind}")


if __name__ == "__main__":
    main()
