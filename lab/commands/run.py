"""``lab run`` and ``lab list``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from lab.cli import app, console, log


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. recipes/fsdd_cnn.yaml."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a recipe field: --set train.epochs=5 "
                                             "(repeatable; dotted paths, YAML values)."),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds, replacing the recipe's (e.g. 0,1,2)."),
    out: Optional[Path] = typer.Option(None, help="Folder for runs (default: the recipe's output_dir, 'runs')."),
):
    """Train the recipe's model on clean and on protected data and evaluate both.

    Prints a table of accuracies (clean model on clean test; protected model on clean test, on test clips protected
    with the same key, and on test clips whose patch positions are mixed between classes) and writes
    runs/<recipe>/<timestamp>/ with results.json, results.md, the resolved recipe (no key), the protection record,
    CSV training logs, versions and git commit. results.json is written last: a run that fails or is interrupted
    (Ctrl-C: exit code 130) keeps its folder marked by an INCOMPLETE file saying why, or removes it when nothing
    was trained yet.
    """
    from lab.recipe import command_overrides, load_recipe
    overrides = command_overrides(set_, seeds, out)
    rec = load_recipe(recipe, overrides)
    from lab.experiment import EVALUATIONS, LABELS, run as run_experiment
    from lab.results import mean_std as fmt
    console.print(f"[bold]lab run[/bold] {recipe}: {rec.model.type} on {rec.features.type}, defense "
                  f"{rec.defense.type}, seeds {rec.seeds}, {rec.train.epochs} epochs")
    results, run_dir = run_experiment(rec, str(recipe), log=log, progress=rec.train.progress and console.is_terminal)
    table = Table(title=f"{rec.name}: accuracy (chance {results['chance']:.2f}; seeds {rec.seeds})")
    table.add_column("model, test set")
    table.add_column("accuracy", justify="right")
    for m, t in EVALUATIONS:
        table.add_row(LABELS[(m, t)], fmt(results["accuracy"][f"{m}/{t}"]))
    console.print(table)
    from lab.commands.fad import warn
    from lab.experiment import conclusions
    too_small, said = conclusions(results)
    if too_small:
        warn(too_small)
    console.print(ablation_table(results))
    from lab.experiment import CONVERGENCE_NAMES
    for which, c in (results.get("convergence") or {}).items():
        console.print(f"{CONVERGENCE_NAMES[which]}, clean test over {c['epochs']} epochs: last {fmt(c['final'])}, "
                      f"peak {fmt(c['peak'])} at epoch {', '.join(map(str, c['peak_epoch']))}", highlight=False)
    from rich.markup import escape

    from lab.quality import FAD_COLUMNS, fad_rows, per_clip_line
    quality = results["quality"]
    if fad_rows(quality):
        fad_table = Table(title=f"FAD of the protected training audio ({quality['settings']['level']:.0%} bootstrap "
                                "interval); compare the middle column with the clean floor")
        for column in ("backend",) + FAD_COLUMNS:
            fad_table.add_column(column, justify="left" if column == "backend" else "right")
        for row in fad_rows(quality):
            fad_table.add_row(*(escape(cell) for cell in row))
        console.print(fad_table)
    from lab.experiment import quality_warnings
    for warning in quality_warnings(quality):
        warn(warning)
    console.print(f"protected training audio per clip: {per_clip_line(quality)}; key fingerprint "
                  f"{results['key_fingerprint']}; {results['wall_seconds']} s", highlight=False)
    console.print(f"results: {run_dir}/results.json, {run_dir}/results.md")
    console.print(f"[bold]verdict[/bold] {escape(said)}", highlight=False)


def ablation_table(results: dict) -> Table:
    from lab.results import mean_std as fmt
    table = Table(title="position ablation: accuracy on test clips protected in each way")
    table.add_column("test variant")
    table.add_column("protected-trained", justify="right")
    table.add_column("clean-trained (control)", justify="right")
    for name, row in results["ablation"].items():
        table.add_row(name, fmt(row["protected_model"]), fmt(row["clean_model"]))
    return table


@app.command("list")
def list_plugins():
    """List the registered models, feature front-ends, defenses and attacks (the lab's own and those of plugin
    modules: entry points of the group lab.plugins and $LAB_PLUGINS, see docs/extending.md)."""
    import attacks
    import defenses
    from lab import models
    from lab.registry import load_plugins
    table = Table(title="what the lab knows")
    table.add_column("kind")
    table.add_column("names")
    table.add_row("models", ", ".join(models.MODELS.names()))
    from lab.frontends import FRONTENDS
    table.add_row("features", ", ".join(FRONTENDS.names()))
    table.add_row("defenses", ", ".join(defenses.DEFENSES.names()))
    table.add_row("attacks", ", ".join(attacks.ATTACKS.names()) or "(none yet)")
    table.add_row("plugin modules", ", ".join(load_plugins()) or "(none)")
    console.print(table)
