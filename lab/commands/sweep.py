"""``lab sweep RECIPE --grid FIELD=V1,V2 ...``: a resumable grid of runs and its protection/quality frontier."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from lab.cli import app, console, log


@app.command()
def sweep(
    recipe: Path = typer.Argument(..., help="Base recipe YAML."),
    grid: list[str] = typer.Option(..., "--grid", help="FIELD=V1,V2,... (repeatable), e.g. "
                                   "--grid defense.blur=0.1,0.3,1 --grid defense.patch_seconds=0.05,0.1"),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds for every cell (e.g. 0,1,2)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Fixed override for every cell (repeatable)."),
    out: Optional[Path] = typer.Option(None, help="Sweep folder (default runs/sweeps/<recipe>). Run the same "
                                       "command again to resume: finished cells are skipped."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Cells run at once, each in its own process with its share of "
                             "the cores (threads x jobs <= cores); the same numbers as one at a time."),
    emit: Optional[Path] = typer.Option(None, "--emit", help="Train nothing: write each cell's resolved recipe to "
                                        "DIR/cell-000.yaml, ... and their paths, one a line, to DIR/cells.txt, to "
                                        "run each cell as its own `lab run` (e.g. a cluster job array, "
                                        "docs/cluster.md). A recipe's inline key is copied into them."),
):
    """Run every combination of the grid values (each over the seeds) and write frontier.csv and frontier.png:
    the protected model's clean-test accuracy against the quality cost (FAD when the runs have it, else SNR), per
    architecture and feature, with the Pareto front marked."""
    from lab.recipe import check_jobs, parse_seeds
    from lab.results import mean_std
    from lab.sweep import emit_cells, parse_grid, run_sweep
    seed_list, _ = parse_seeds(seeds), check_jobs(jobs)  # one-line errors before any work
    parsed = parse_grid(grid)
    if emit is not None:
        written = emit_cells(recipe, parsed, emit, seed_list, list(set_ or []))
        table = Table(title=f"sweep {recipe}: {len(written)} cell recipes written, nothing trained")
        for col in ["#", "recipe file", *parsed]:
            table.add_column(col.split(".")[-1])
        for i, (cell, path) in enumerate(written):
            table.add_row(str(i), str(path), *(str(cell[k]) for k in parsed))
        console.print(table)
        console.print(f"list: {emit}/cells.txt (line N+1 is cell N; a job array: --array=0-{len(written) - 1}). "
                      f"Run one: lab run {written[0][1]}", highlight=False, soft_wrap=True)
        return
    out = out or Path("runs") / "sweeps" / recipe.stem
    rows = run_sweep(recipe, parsed, out, seed_list, list(set_ or []), log=log, jobs=jobs)
    table = Table(title=f"sweep {recipe} ({len(rows)} cells)")
    for col in [*parsed, "prot→clean acc", "clean→clean acc", "SNR dB", "FAD", "Pareto"]:
        table.add_column(col.split(".")[-1])
    for r in rows:
        protected = {"mean": r["protected_clean_acc"], "std": r["protected_clean_acc_std"], "n": r["seeds"]}
        table.add_row(*(str(r[k]) for k in parsed), mean_std(protected), f"{r['clean_clean_acc']:.3f}",
                      f"{r['snr_db']:.1f}" if r["snr_db"] is not None else "–",
                      f"{r['fad']:.3g}" if r["fad"] is not None else "–", "*" if r.get("pareto") else "")
    console.print(table)
    console.print(f"written: {out}/frontier.csv, {out}/frontier.png")
