"""``lab attack`` end to end: the columns' recipes, the matrix, and the run folder (through the life cycle every run
folder has, lab.rundir.running: ``INCOMPLETE`` while it runs, ``results.json`` last, Ctrl-C kept apart). The
command parses and prints; this is what it runs."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lab.attacking.matrix import Matrix, matrix_data, run_matrix
from lab.attacking.setup import defense_configs, with_defense
from lab.attacking.tables import cell_folder, write_results
from lab.recipe import Recipe


@dataclass
class AttackPlan:
    """What one ``lab attack`` trains: the recipe, its attack configs and the table's columns (defense names),
    with options for single columns (``DEFENSE.FIELD=VALUE``)."""

    recipe: Recipe
    recipe_path: str
    label: str  # the run folder's label: the --type given ('all', or the names joined with '+')
    attacks: list
    defenses: list[str]
    defense_options: list[str]


def column_recipes(plan: AttackPlan, log: Callable[[str], None]) -> tuple[list[Recipe], object]:
    """The recipe of each column (noise baselines at the SNR the recipe's own defense measures), each checked
    (key, fit to the clips) before any training; and the recipe's own ExperimentData (reused by the matrix)."""
    from defenses import DEFENSES
    from lab.quality import snr_summary
    from lab.spine import ExperimentData, check_defense
    rec = plan.recipe
    check_defense(rec.defense, rec.data.sample_rate)  # its key, before its SNR is measured on the data
    own = ExperimentData(rec, log=lambda s: None)
    snr = None
    if rec.defense.type != "none" and any(DEFENSES.get(d).takes_snr for d in plan.defenses):
        snr = snr_summary(own.protected_train.waveforms, own.clean_train.waveforms)["snr_db_mean"]
        log(f"noise baselines at the recipe's {rec.defense.type} SNR: {snr:.2f} dB")
    dcfgs = defense_configs(rec, plan.defenses, snr, plan.defense_options)
    recipes = [with_defense(rec, d) for d in dcfgs]  # each must fit the recipe, before any training
    for d in dcfgs:  # a missing key or key file fails here, not mid-matrix
        check_defense(d, rec.data.sample_rate)
    return recipes, own


def run_attack(plan: AttackPlan, log: Callable[[str], None] = print, progress: bool = False,
               jobs: int = 1) -> tuple[dict, Matrix, Path]:
    """Train the plan's matrix (finished cells kept and reused, see lab.attacking.matrix.run_matrix) and write its
    run folder; returns (results, matrix, run folder)."""
    from lab.rundir import Progress, open_run, running
    started = time.perf_counter()
    recipes, own = column_recipes(plan, log)
    datas = matrix_data(recipes, first=own)
    cells = cell_folder(plan.recipe, recipes, plan.attacks)
    log(f"finished cells (defense x seed) are kept in {cells}: if this run is interrupted, the same command "
        f"continues where it stopped")
    run_dir, created = open_run(Path(plan.recipe.output_dir) / plan.recipe.name, f"attack-{plan.label}")
    state = Progress(sum(len(r.seeds) for r in recipes), "cells (defense x seed)", stage="training the cells")
    with running(run_dir, created, state, "attack", log):
        matrix = run_matrix(datas, plan.attacks, log=log, progress=progress, cell_dir=cells, jobs=jobs, state=state)
        state.stage = "writing the results"
        results = write_results(run_dir, plan.recipe, plan.recipe_path, plan.label, plan.attacks, matrix,
                                time.perf_counter() - started, column_recipes=recipes)
    return results, matrix, run_dir
