"""Cost of the reviewer's attacks (issue 24) against a plain training epoch, measured in the same run and printed as
ratios (a shared machine drifts; ratios of interleaved runs hold better than seconds).

    .venv/bin/python bench/bench_attacks_cost.py [--recipe recipes/fsdd_cnn.yaml] [--epochs 2] [--repeats 2]
        [--attack interpolation --attack "{type: strong-augment, k: 4}" ...] [--set data.max_train_per_class=100]

Each ``--attack`` is an attack name or a YAML mapping with its options (default: interpolation, strong-augment, its
Max form with k 4, and resynthesis by each method). Plain: the lab's ``fit`` on cached features of the protected
training set (what `lab run` does). Each attack trains for the same epochs by `lab attack`'s own code path
(lab.attacking.train_under_attack): batch attacks transform every batch and compute its features per batch; data
attacks transform the training set once (those one-off seconds are printed apart; their epochs are plain ones).
Plain and attacks are interleaved ``--repeats`` times and the best time of each is kept. Needs FSDD.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attacks import build_attack  # noqa: E402
from lab.attacking import train_under_attack  # noqa: E402
from lab.experiment import prepare  # noqa: E402
from lab.provenance import git_commit  # noqa: E402
from lab.recipe import load_recipe  # noqa: E402
from lab.train import fit  # noqa: E402

DEFAULT = ["interpolation", "strong-augment", "{type: strong-augment, k: 4}", "{type: resynthesis, method: griffin-lim}",
           "{type: resynthesis, method: mu-law}", "{type: resynthesis, method: band-limit}"]


def label(spec: str) -> str:
    data = yaml.safe_load(spec)
    if isinstance(data, str):
        return data
    rest = ", ".join(f"{k}={v}" for k, v in data.items() if k != "type")
    return f"{data['type']} ({rest})" if rest else data["type"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/fsdd_cnn.yaml")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--attack", action="append", default=[])
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    specs = args.attack or DEFAULT
    configs = {label(s): build_attack(yaml.safe_load(s)).config for s in specs}  # bad options fail before training
    recipe = load_recipe(args.recipe, ["train.progress=false", f"train.epochs={args.epochs}", *args.set])
    if recipe.train.num_threads:
        torch.set_num_threads(recipe.train.num_threads)
    prep = prepare(recipe, log=lambda s: None)
    plain_times: list[float] = []
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        plain_times.append(fit(recipe, prep.training(prep.protected_train, 0), prep.num_classes, 0).seconds
                           / args.epochs)
        for name, cfg in configs.items():
            attack = build_attack(cfg)
            _, timing = train_under_attack(recipe, prep, attack, 0)
            entry = {"epoch": timing["train"] / args.epochs, "data": timing["data"], "per_batch": attack.per_batch}
            old = best.get(name)
            best[name] = entry if old is None else {k: min(v, old[k]) if isinstance(v, float) else v
                                                    for k, v in entry.items()}
    plain_s = min(plain_times)
    commit = git_commit()
    print(f"recipe {args.recipe} ({recipe.model.type} on {recipe.features.type}) {' '.join(args.set)}: "
          f"{len(prep.train.labels)} clips, batch {recipe.train.batch_size}, {args.epochs} epochs x {args.repeats} "
          f"repeats (best kept), {torch.get_num_threads()} threads, defense {recipe.defense.type}, commit "
          f"{(commit['commit'] or '?')[:10]}{' (dirty)' if commit['dirty'] else ''}")
    print(f"plain epoch: {plain_s:.2f} s (runs: {', '.join(f'{t:.2f}' for t in plain_times)})")
    print(f"{'attack':<44}{'s/epoch':>9}{'ratio':>8}{'one-off s':>11}  kind")
    for name, e in best.items():
        kind = "per-batch transform" if e["per_batch"] else "training set changed once"
        print(f"{name:<44}{e['epoch']:>9.2f}{e['epoch'] / plain_s:>7.2f}x{e['data']:>11.2f}  {kind}")


if __name__ == "__main__":
    main()
