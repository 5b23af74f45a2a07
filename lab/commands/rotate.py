"""``lab rotate RECIPE``: does unlearnability survive a dataset released under two keys?"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from lab.cli import app, console, log
from lab.errors import LabError


@app.command()
def rotate(
    recipe: Path = typer.Argument(..., metavar="RECIPE", help="Recipe YAML whose defense is keyed and file-by-file "
                                  "(e.g. recipes/fsdd_cnn.yaml: PosCUDA)."),
    second_key_file: Optional[Path] = typer.Option(None, "--second-key-file", help="Key of the second release "
                                                   "(a `lab keygen` file). Default: derived from the recipe's key "
                                                   "(HMAC), as secret as it."),
    scenarios: Optional[str] = typer.Option(None, help="Comma-separated training sets to run (default all: clean, "
                                            "one-key, disjoint, twice, twice-rebuilt)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a recipe field (repeatable)."),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds, replacing the recipe's (e.g. 0,1,2)."),
    out: Optional[Path] = typer.Option(None, help="Folder for runs (default: the recipe's output_dir, 'runs')."),
):
    """Key rotation: train on the dataset released under two keys and report clean-test accuracy.

    Training sets, one model each per seed: clean; one-key (all under key A); disjoint (half of each class under
    key A, half under key B); twice (every clip under both keys, pooled); twice-rebuilt (the two versions of each
    clip differenced, and the rougher version kept where they differ: the attack a second release opens). Also
    scores the differencing against the true patches: how many patched samples it finds, how many clips it
    rebuilds exactly.

    Writes runs/<recipe>/rotation-<timestamp>/ with results.json (every number per seed, both keys' fingerprints,
    versions, git commit) and results.md. Neither key is printed or written.
    """
    from lab import results as results_writer
    from lab.keys import resolve_key
    from lab.provenance import provenance
    from lab.recipe import command_overrides, load_recipe
    from lab.rotation import SCENARIOS, TEST_SETS, markdown, rotate as run_rotation
    from lab.rundir import INCOMPLETE, mark_incomplete, write_atomic

    overrides = command_overrides(set_, seeds, out)
    rec = load_recipe(recipe, overrides)
    chosen = tuple(s.strip() for s in scenarios.split(",") if s.strip()) if scenarios else SCENARIOS
    bad = [s for s in chosen if s not in SCENARIOS]
    if bad or not chosen:
        raise LabError(f"--scenarios {scenarios!r}: choose from {', '.join(SCENARIOS)}")
    second = resolve_key(None, second_key_file, where="--second-key-file") if second_key_file else None
    run_dir = results_writer.new_run_dir(Path(rec.output_dir) / rec.name, "rotation")
    mark_incomplete(run_dir, "in progress")
    started = provenance()  # the code that runs is the code at the start (a commit made meanwhile is not it)
    try:
        results = run_rotation(rec, second, log=log, scenarios=chosen)
    except BaseException as e:
        mark_incomplete(run_dir, f"failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        raise
    results = {"recipe_name": rec.name, "recipe_path": str(recipe), "recipe": rec.public_dict(),
               "seeds": rec.seeds, "provenance": started, **results}
    write_atomic(run_dir / "results.md", markdown(results))
    write_atomic(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    (run_dir / INCOMPLETE).unlink()
    table = Table(title=f"{rec.name}: key rotation, accuracy (seeds {rec.seeds})")
    for h in ("training set", *TEST_SETS):
        table.add_column(h, justify="left" if h == "training set" else "right")
    for s in results["scenarios"]:
        table.add_row(s, *(results_writer.mean_std(results["accuracy"][s][t]) for t in TEST_SETS))
    console.print(table)
    console.print(f"results: {run_dir}/results.json, results.md")
