"""``lab regress RECIPE --baseline FILE``: fail when unlearnability or audio quality regress."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from lab.cli import app, console, log
from lab.errors import LabError


@app.command()
def regress(
    recipe: Path = typer.Argument(Path("recipes/ci_regression.yaml"), help="The regression recipe."),
    baseline: Path = typer.Option(Path("tests/regression/baseline.json"), help="Baseline metrics file."),
    update: bool = typer.Option(False, "--update", help="Re-measure and rewrite the baseline instead of checking."),
    calibration_seeds: str = typer.Option("0,1,2,3,4,5", help="With --update: seeds whose spread sets the "
                                          "tolerances (must include the recipe's seeds)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a recipe field (repeatable)."),
    out: Optional[Path] = typer.Option(None, help="Folder for the run (default: the recipe's output_dir)."),
):
    """Run the regression recipe and compare each metric with the baseline, in the direction that matters:
    clean-model accuracy may not fall, protected-model clean-test and mixed-position accuracy may not rise, SNR may
    not fall, FAD may not rise (each by more than its tolerance). Prints a table; exits 1 on a regression.

    --update re-measures over the calibration seeds and rewrites the baseline (see README: only when a change is
    meant to move the numbers, with the reason in the commit message)."""
    from lab.experiment import run
    from lab.provenance import provenance
    from lab.recipe import load_recipe, parse_seeds
    from lab.regress import calibrate, check_baseline_file, compare, values

    overrides = list(set_ or [])
    if out:
        overrides.append(f"output_dir={out}")
    seeds = parse_seeds(calibration_seeds, "--calibration-seeds") if update else None
    rec = load_recipe(recipe, overrides)
    if update:
        if not set(rec.seeds) <= set(seeds):
            raise LabError(f"--calibration-seeds {seeds} must include the recipe's seeds {rec.seeds}")
        calibration = load_recipe(recipe, overrides + [f"seeds={json.dumps(seeds)}"])
        results, run_dir = run(calibration, str(recipe), log=log)
        data = {"recipe": str(recipe), "overrides": overrides, "checked_seeds": rec.seeds,
                "calibration_seeds": seeds, "calibration_run": str(run_dir),
                "provenance": provenance(), "metrics": calibrate(results, rec.seeds)}
        baseline.parent.mkdir(parents=True, exist_ok=True)
        tmp = baseline.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(baseline)
        console.print(f"baseline written: {baseline} ({len(data['metrics'])} metrics, seeds {seeds})")
        return
    if not baseline.is_file():
        raise LabError(f"no baseline at {baseline}; create one with `lab regress {recipe} --update`")
    ref = check_baseline_file(json.loads(baseline.read_text()), str(baseline))
    if ref.get("checked_seeds") and list(ref["checked_seeds"]) != list(rec.seeds):
        raise LabError(f"the baseline was measured for seeds {ref['checked_seeds']}, the recipe runs {rec.seeds}")
    results, run_dir = run(rec, str(recipe), log=log)
    checks = compare(values(results), ref["metrics"])
    table = Table(title=f"regression check: {recipe} vs {baseline}")
    for col in ("metric", "baseline", "now", "change", "tolerance", "bad if", "verdict"):
        table.add_column(col)
    for c in checks:
        table.add_row(c.name, f"{c.baseline:.4g}", "missing" if c.value is None else f"{c.value:.4g}",
                      "–" if c.delta is None else f"{c.delta:+.4g}", f"{c.tolerance:.4g}", c.bad,
                      "[green]ok[/green]" if c.ok else "[bold red]REGRESSION[/bold red]")
    console.print(table)
    (run_dir / "regress.json").write_text(json.dumps({"baseline": str(baseline), "checks": [c.__dict__ for c in checks]},
                                                     indent=2))
    failed = [c.name for c in checks if not c.ok]
    if failed:
        console.print(f"[bold red]regression[/bold red] in {', '.join(failed)} (run: {run_dir})")
        raise typer.Exit(1)
    console.print(f"no regression ({len(checks)} metrics; run: {run_dir})")
