"""``lab ablate RUN_DIR``: the position ablation on a finished run's saved models."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import typer

from lab.cli import app, console, log


@app.command()
def ablate(run_dir: Path = typer.Argument(..., help="A finished run folder (runs/<recipe>/<timestamp>).")):
    """Re-evaluate a finished run's models on every position-ablation variant of the test set.

    Variants: clean; true positions and filters; positions mixed between classes; filters mixed; random positions;
    positions shifted by +-10, 50, 100 ms; the filter over the whole clip. Protected-trained and clean-trained (the
    control) models, every seed. Writes ablation-<time>.json and .md into the run folder.
    """
    from lab.commands.run import ablation_table
    from lab.experiment import evaluate_ablation
    from lab.results import summarise
    from lab.rundir import load_run
    from lab.spine import ExperimentData

    run = load_run(run_dir)
    data = ExperimentData.from_run(run, log=log)
    per_seed = {which: [evaluate_ablation(run.module(which, s), run.recipe.train, data) for s in run.results["seeds"]]
                for which in ("protected_model", "clean_model")}
    table = {name: {which: summarise([row[name] for row in per_seed[which]]) for which in per_seed}
             for name in data.ablation}
    out = {"run_dir": str(run_dir), "seeds": run.results["seeds"], "ablation": table}
    console.print(ablation_table(out))
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(run_dir) / f"ablation-{stamp}.json"
    path.write_text(json.dumps(out, indent=2))
    console.print(f"written: {path}")
