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
    negative: Optional[list[str]] = typer.Option(None, "--negative-control", metavar="FIELD=VALUE", help="A change "
                                                 "of the recipe that the check MUST catch (e.g. defense.blur=0, or "
                                                 "'defense={type: none}': clean audio as protected training); its "
                                                 "protected models are trained on the recipe's seeds (the clean "
                                                 "models are the main run's) and their clean-test accuracy must fail "
                                                 "the baseline; exit 1 if it does not. Several changes of one control: "
                                                 "separated by ';' (e.g. 'defense={type: none};seeds=[0]': one seed "
                                                 "for a change far beyond the tolerance). Repeatable."),
):
    """Run the regression recipe and compare each metric with the baseline, in the direction that matters:
    clean-model accuracy may not fall, protected-model clean-test and mixed-position accuracy may not rise, SNR may
    not fall, FAD may not rise (each by more than its tolerance). Prints a table; exits 1 on a regression, or when a
    --negative-control is not caught (the check would then be blind to it).

    --update re-measures over the calibration seeds and rewrites the baseline (see README: only when a change is
    meant to move the numbers, with the reason in the commit message)."""
    from lab.recipe import load_recipe, parse_seeds

    overrides = list(set_ or [])
    if out:
        overrides.append(f"output_dir={out}")
    rec = load_recipe(recipe, overrides)
    # mistakes fail here, first; several changes of one control are separated by ';' (as lab quality's --variant)
    variants = [(ov, load_recipe(recipe, overrides + [o.strip() for o in ov.split(";") if o.strip()]))
                for ov in negative or []]
    if update:
        write_baseline(recipe, rec, overrides, baseline, parse_seeds(calibration_seeds, "--calibration-seeds"))
        return
    if not baseline.is_file():
        raise LabError(f"no baseline at {baseline}; create one with `lab regress {recipe} --update`")
    from lab.regress import check_baseline_file
    ref = check_baseline_file(json.loads(baseline.read_text()), str(baseline))
    if ref.get("checked_seeds") and list(ref["checked_seeds"]) != list(rec.seeds):
        raise LabError(f"the baseline was measured for seeds {ref['checked_seeds']}, the recipe runs {rec.seeds}")
    failed, run_dir, report = check_run(recipe, rec, baseline, ref)
    blind = run_negative_controls(variants, ref, report)
    (run_dir / "regress.json").write_text(json.dumps(report, indent=2))
    if failed or blind:
        if failed:
            console.print(f"[bold red]regression[/bold red] in {', '.join(failed)} (run: {run_dir})")
        if blind:
            console.print(f"[bold red]negative control not caught[/bold red]: {', '.join(blind)} (the check would not "
                          f"see such a change)")
        raise typer.Exit(1)
    console.print(f"no regression ({len(report['checks'])} metrics"
                  + (f"; {len(variants)} negative control(s) caught" if variants else "") + f"; run: {run_dir})")


def write_baseline(recipe: Path, rec, overrides: list[str], baseline: Path, seeds: list[int]) -> None:
    """``--update``: run the recipe over the calibration ``seeds`` and write the baseline file."""
    from lab.experiment import run
    from lab.provenance import provenance
    from lab.recipe import load_recipe
    from lab.regress import calibrate
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


def check_run(recipe: Path, rec, baseline: Path, ref: dict) -> tuple[list[str], Path, dict]:
    """Run the recipe, compare with the baseline, print the table: (failed metrics, run folder, report)."""
    from lab.experiment import run
    from lab.regress import compare, values
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
    report = {"baseline": str(baseline), "checks": [c.__dict__ for c in checks]}
    return [c.name for c in checks if not c.ok], run_dir, report


def run_negative_controls(variants: list, ref: dict, report: dict) -> list[str]:
    """Train each negative control's protected models (on its recipe's seeds: the regression recipe's unless the
    control sets ``seeds``), check them against the baseline, print one line each and add them to ``report``;
    return the overrides the check did NOT catch."""
    from lab.regress import NEGATIVE_METRIC, caught, negative_control
    blind, report["negative_controls"] = [], []
    for override, variant in variants:
        seeds = list(variant.seeds)
        per_seed = negative_control(variant, seeds, log)
        check = caught(per_seed, ref["metrics"])
        ok = not check.ok
        report["negative_controls"].append({"override": override, "seeds": seeds, "per_seed": per_seed,
                                            "check": check.__dict__, "caught": ok})
        console.print(f"negative control {override}: {NEGATIVE_METRIC} {check.value:.3f} over seeds {seeds} against "
                      f"the baseline {check.baseline:.3f} (tolerance {check.tolerance:.3g}): "
                      + ("[green]caught[/green]" if ok else "[bold red]NOT caught[/bold red]"), highlight=False)
        if not ok:
            blind.append(override)
    return blind
