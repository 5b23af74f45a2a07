"""Detection: can a trainer tell protected clips from clean ones? (``lab detect``; Zhu et al., AAAI 2024, found that
simple networks detect every image poison they tried.)

The trainer holds the published (protected) training clips and a small clean reference set: clips they know are
clean. For each defense (a column, set up as ``lab attack`` sets its columns up) and each seed:

1. The training split's clips are cut into groups that must not straddle the probe's training and test clips: the
   speakers for FSDD (the ``{digit}_{speaker}_{take}`` file names), every file its own group otherwise. A seeded
   draw holds out ``holdout_fraction`` of the groups (at least one).
2. Probe training clips, from the other groups: ``reference_fraction`` x the training split's size of CLEAN clips
   (the reference set) and as many other clips, PROTECTED (files disjoint from the reference's).
3. Held-out clips, from the held-out groups: half of them clean, the other half protected (disjoint files).
4. Features of each clip computed alone, pooled over time (mean and standard deviation of every band): ``logmel``
   (64 log-mel bands, 25 ms / 10 ms; the same for every recipe) or ``frontend`` (the recipe's own front-end).
   Standardised on the probe's training clips.
5. Two probes, trained full batch with Adam from a seeded initialisation: ``linear`` (logistic regression) and
   ``mlp`` (one hidden layer of ``hidden`` ReLU units). Their ROC AUC on the held-out clips (torchmetrics), with
   the AUC's standard deviation under no difference at all (Mann-Whitney: sqrt((n1 + n2 + 1) / (12 n1 n2))), so a
   reader can tell a real detection from chance.

Column ``none`` is the negative control: its "protected" clips are clean, so its AUC should be 0.5 within chance.
Every draw comes from the seed (recorded); nothing random is drawn from torch's global generator.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from lab.recipe import Recipe
from lab.spine import ExperimentData

PROBES = ("linear", "mlp")
FEATURES = ("logmel", "frontend")


@dataclass(frozen=True)
class DetectOptions:
    reference_fraction: float = 0.1  # clean reference clips, as a fraction of the training split
    holdout_fraction: float = 1 / 3  # groups (speakers, files) held out for the AUC
    features: str = "logmel"
    steps: int = 300  # Adam steps, full batch
    lr: float = 0.01
    weight_decay: float = 1e-3
    hidden: int = 64  # the MLP's hidden units

    def check(self) -> None:
        if not 0 < self.reference_fraction < 0.5:
            raise ValueError(f"reference_fraction must be in (0, 0.5) (got {self.reference_fraction})")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1) (got {self.holdout_fraction})")
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {', '.join(FEATURES)} (got {self.features!r})")
        if self.steps < 1 or self.hidden < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("steps and hidden must be >= 1, lr > 0 and weight_decay >= 0")


def clip_groups(recipe: Recipe, ids: list[str], count: int) -> tuple[list[str], str]:
    """The group of every training clip (clips of one group stay on one side of the probe's train/test split) and
    what the groups are: FSDD's speakers, else one group per file."""
    if recipe.data.dataset == "fsdd" and len(ids) == count:
        from lab.data import fsdd
        return [fsdd.parse_name(Path(name))[1] for name in ids], "speaker"
    return [ids[i] if len(ids) == count else str(i) for i in range(count)], "file"


def split_clips(groups: list[str], seed: int, opts: DetectOptions) -> dict[str, torch.Tensor]:
    """Indices of the probe's clean reference and protected training clips and of the held-out clean and protected
    clips (four disjoint sets; held-out clips only from held-out groups), drawn with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    names = sorted(set(groups))
    if len(names) < 2:
        raise ValueError("detection needs at least two groups of clips (speakers or files) to hold some out")
    order = [names[i] for i in torch.randperm(len(names), generator=gen).tolist()]
    k = min(len(names) - 1, max(1, round(opts.holdout_fraction * len(names))))
    held = set(order[:k])
    side = torch.tensor([g in held for g in groups])
    probe_side, held_side = (~side).nonzero().flatten(), side.nonzero().flatten()
    probe_side = probe_side[torch.randperm(len(probe_side), generator=gen)]
    held_side = held_side[torch.randperm(len(held_side), generator=gen)]
    n_ref = min(max(2, round(opts.reference_fraction * len(groups))), len(probe_side) // 2)
    half = len(held_side) // 2
    if n_ref < 2 or half < 2:
        raise ValueError(f"too few clips to detect: {len(probe_side)} on the probe's side, {len(held_side)} held out")
    return {"reference": probe_side[:n_ref], "protected": probe_side[n_ref:2 * n_ref],
            "test_clean": held_side[:half], "test_protected": held_side[half:2 * half], "held_out": sorted(held)}


def pooled(features: torch.Tensor) -> torch.Tensor:
    """(N, C, F) features -> (N, 2C): each band's mean and standard deviation over time."""
    return torch.cat([features.mean(-1), features.std(-1)], dim=1)


def clip_features(data: ExperimentData, waveforms: torch.Tensor, kind: str) -> torch.Tensor:
    """Pooled features of every clip (every front-end computes each clip independently of its batch: a contract
    test; with a batch-dependent front-end, sets computed in separate batches would differ by that alone)."""
    if kind == "frontend":
        frontend = data.frontend
    else:
        from lab.features import FeatureConfig, FrontEnd
        frontend = FrontEnd(FeatureConfig(type="logmel", n_mels=64, win_ms=25, hop_ms=10),
                            data.recipe.data.sample_rate)
    return pooled(frontend(waveforms))


def train_probe(kind: str, x: torch.Tensor, y: torch.Tensor, seed: int, opts: DetectOptions) -> torch.nn.Module:
    """A probe (``linear`` or ``mlp``) giving one logit per row of ``x`` (protected: 1), trained full batch."""
    with torch.random.fork_rng(devices=[]):  # the seeded initialisation leaves torch's global generator alone
        torch.manual_seed(seed)
        net = torch.nn.Linear(x.shape[1], 1) if kind == "linear" else torch.nn.Sequential(
            torch.nn.Linear(x.shape[1], opts.hidden), torch.nn.ReLU(), torch.nn.Linear(opts.hidden, 1))
    opt = torch.optim.Adam(net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    with torch.enable_grad():
        for _ in range(opts.steps):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x)[:, 0], y)
            loss.backward()
            opt.step()
    return net.eval()


def null_sd(n_clean: int, n_protected: int) -> float:
    """The standard deviation of the AUC of a score that does not tell the two sets apart (Mann-Whitney U / n1 n2)."""
    return math.sqrt((n_clean + n_protected + 1) / (12 * n_clean * n_protected))


def detect_cell(data: ExperimentData, seed: int, opts: DetectOptions) -> dict:
    """One defense (``data``'s) and one seed: the probes' held-out ROC AUC and what the split was."""
    from torchmetrics.functional.classification import binary_auroc
    clean, protected = data.clean_train.waveforms, data.protected_train.waveforms
    groups, grouping = clip_groups(data.recipe, data.train.ids, len(clean))
    idx = split_clips(groups, seed, opts)
    sets = {"reference": clean, "protected": protected, "test_clean": clean, "test_protected": protected}
    feats = {name: clip_features(data, sets[name][idx[name]], opts.features) for name in sets}
    x_train = torch.cat([feats["reference"], feats["protected"]])
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    y_train = torch.cat([torch.zeros(len(idx["reference"])), torch.ones(len(idx["protected"]))])
    x_test = torch.cat([feats["test_clean"], feats["test_protected"]])
    y_test = torch.cat([torch.zeros(len(idx["test_clean"])), torch.ones(len(idx["test_protected"]))]).long()
    auc = {}
    for kind in PROBES:
        probe = train_probe(kind, (x_train - mean) / std, y_train, seed, opts)
        with torch.no_grad():
            scores = probe((x_test - mean) / std)[:, 0]
        auc[kind] = float(binary_auroc(scores, y_test))
    counts = {name: len(idx[name]) for name in sets}
    return {"seed": seed, "auc": auc, "counts": counts, "grouping": grouping, "held_out": idx["held_out"],
            "null_sd": null_sd(counts["test_clean"], counts["test_protected"])}


def run_detect(datas: list[ExperimentData], opts: DetectOptions, log: Callable[[str], None] = print) -> dict:
    """Every column (``datas``: the recipe with each defense, sharing one dataset) and seed: per-seed cells and
    the AUC of each probe summarised over seeds."""
    from lab.results import summarise
    opts.check()
    cells: dict[str, list[dict]] = {}
    for data in datas:
        name = data.recipe.defense.type
        for seed in data.recipe.seeds:
            cell = detect_cell(data, seed, opts)
            cells.setdefault(name, []).append(cell)
            log(f"{name}, seed {seed}: AUC " + ", ".join(f"{k} {v:.3f}" for k, v in cell["auc"].items())
                + f" (chance 0.5 ± {cell['null_sd']:.3f})")
    auc = {name: {kind: summarise([c["auc"][kind] for c in per_seed]) for kind in PROBES}
           for name, per_seed in cells.items()}
    return {"options": asdict(opts), "defenses": list(cells), "probes": list(PROBES), "auc": auc, "cells": cells}


def markdown(results: dict) -> str:
    from lab.results import mean_std, provenance_line
    opts = results["options"]
    first = next(iter(results["cells"].values()))[0]
    lines = [f"# {results['recipe_name']}: detection of protected clips", "",
             f"ROC AUC of probes telling protected training clips from clean ones, on held-out clips "
             f"({first['grouping']}s disjoint from the probe's training clips); mean ± std over seeds "
             f"{results['seeds']}. Features: {opts['features']} (mean and std over time); clean reference set: "
             f"{opts['reference_fraction']:g} of the training split. 0.5 is chance (column `none`, the negative "
             f"control, should be there: ± the chance spread below), 1.0 is perfect detection.", "",
             provenance_line(results), "",
             "| defense | " + " | ".join(f"{p} AUC" for p in results["probes"]) + " | chance spread (1 sd) |",
             "|---|" + "---|" * (len(results["probes"]) + 1)]
    for name in results["defenses"]:
        sd = max(c["null_sd"] for c in results["cells"][name])
        lines.append(f"| {name} | " + " | ".join(mean_std(results["auc"][name][p]) for p in results["probes"])
                     + f" | {sd:.3f} |")
    return "\n".join(lines) + "\n"


def columns(recipe: Recipe, names: list[str] | None, defense_options: list[str] | None = None,
            log: Callable[[str], None] = print) -> list[ExperimentData]:
    """The recipe with each defense of ``names`` (default: none, the recipe's own and the matched baselines), set
    up as ``lab attack`` sets its columns up (the recipe's key; noise baselines at the SNR the recipe's defense
    measures; ``defense_options`` as its --defense-option), validated before any data is protected."""
    from defenses import DEFENSES
    from lab import attacking
    from lab.quality import snr_summary
    from lab.spine import check_defense
    names = names or list(dict.fromkeys(["none", recipe.defense.type, *attacking.baselines()]))
    for name in names:
        DEFENSES.get(name)  # an unknown name: one line listing the valid ones
    check_defense(recipe.defense, recipe.data.sample_rate)
    own = ExperimentData(recipe, log=lambda s: None)
    snr = None
    if recipe.defense.type != "none" and any(DEFENSES.get(d).takes_snr for d in names):
        snr = snr_summary(own.protected_train.waveforms, own.clean_train.waveforms)["snr_db_mean"]
        log(f"noise baselines at the recipe's {recipe.defense.type} SNR: {snr:.2f} dB")
    configs = attacking.defense_configs(recipe, names, snr, list(defense_options or []))
    recipes = [attacking.with_defense(recipe, d) for d in configs]
    for d in configs:
        check_defense(d, recipe.data.sample_rate)
    return attacking.matrix_data(recipes, first=own)


def detect(recipe: Recipe, recipe_path: str, datas: list[ExperimentData], opts: DetectOptions,
           log: Callable[[str], None] = print) -> tuple[dict, Path]:
    """Run detection over ``datas`` into a new run folder ``<output_dir>/<recipe>/detect-<time>/`` through the
    run-folder life cycle (lab.rundir.running): ``INCOMPLETE`` while it runs, then ``results.md`` and last
    ``results.json``; a run that fails or is interrupted removes the folder it made (nothing in it is worth
    keeping: the probes train in seconds)."""
    import time

    from lab.provenance import provenance
    from lab.rundir import Progress, finish, open_run, running
    opts.check()
    run_dir, created = open_run(Path(recipe.output_dir) / recipe.name, "detect")
    started, clock = provenance(), time.perf_counter()
    state = Progress(len(datas), "defenses", stage="training the probes")
    with running(run_dir, created, state, "detection", log, worth_keeping=lambda d, s: False):
        found = run_detect(datas, opts, log)
        results = {"command": "detect", "recipe_name": recipe.name, "recipe_path": recipe_path,
                   "recipe": recipe.public_dict(), "seeds": list(recipe.seeds), "provenance": started,
                   "defense_params": {d.recipe.defense.type: d.recipe.public_dict()["defense"] for d in datas},
                   **found, "wall_seconds": round(time.perf_counter() - clock, 1)}
        finish(run_dir, results, {"results.md": markdown(results)})
    return results, run_dir
