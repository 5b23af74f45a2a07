"""``lab detect RECIPE``: can a trainer with a few clean clips tell the protected clips from clean ones?"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from lab.cli import app, console, log
from lab.errors import LabError


HELP = """Detection: ROC AUC of probes (linear, two-layer MLP) telling protected clips from clean ones.

For each defense and seed, the probes train on a small clean reference set (a fraction of the clean training split)
and as many other, protected, training clips; they are scored on held-out clips of held-out speakers (FSDD) or
files, half clean and half protected. 0.5 is chance (the `none` column, the negative control, should be there), 1.0
perfect detection.

Writes runs/<recipe>/detect-<timestamp>/ with results.json (every AUC per seed, the split's counts and held-out
groups, options, defenses with the key redacted, versions, git commit) and results.md.
"""


def _paragraphs(text: str) -> str:
    """Each paragraph on one line, for the terminal to wrap (Typer keeps a docstring's line breaks)."""
    return "\n\n".join(" ".join(p.split()) for p in text.strip().split("\n\n"))


@app.command(help=_paragraphs(HELP))
def detect(
    recipe: Path = typer.Argument(..., metavar="RECIPE", help="Recipe YAML, e.g. recipes/fsdd_cnn.yaml (its data, "
                                  "features and defense; an `attack:` block is ignored)."),
    defenses_: Optional[str] = typer.Option(None, "--defenses", help="Comma-separated defenses to detect (default: "
                                            "none, the recipe's own and the matched baselines, set up as lab attack "
                                            "sets its columns up). `none` is the negative control."),
    defense_option: Optional[list[str]] = typer.Option(None, "--defense-option", help="Set a field of one "
                                                       "column's defense: DEFENSE.FIELD=VALUE. Repeatable."),
    features: str = typer.Option("logmel", help="Probe features, pooled over time (mean and std per band): logmel "
                                 "(64 log-mel bands) or frontend (the recipe's own front-end)."),
    reference_fraction: float = typer.Option(0.1, help="Size of the clean reference set (and of the protected "
                                             "training clips of the probe), as a fraction of the training split."),
    holdout_fraction: float = typer.Option(1 / 3, help="Fraction of the groups (FSDD: speakers; else files) held "
                                           "out for the AUC."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a recipe field (repeatable)."),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds, replacing the recipe's (e.g. 0,1,2)."),
    out: Optional[Path] = typer.Option(None, help="Folder for runs (default: the recipe's output_dir, 'runs')."),
):
    """Detection: ROC AUC of probes telling protected clips from clean ones (the help: HELP)."""
    from lab import attacking
    from lab.detect import DetectOptions, columns, detect as run_detect
    from lab.recipe import command_overrides
    from lab.results import mean_std

    opts = DetectOptions(reference_fraction=reference_fraction, holdout_fraction=holdout_fraction,
                         features=features)
    try:
        opts.check()
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    rec, _ = attacking.load_attack_recipe(recipe, command_overrides(set_, seeds, out))
    names = [d.strip() for d in defenses_.split(",") if d.strip()] if defenses_ else None
    if defenses_ is not None and not names:
        raise LabError(f"--defenses {defenses_!r}: name at least one defense (e.g. none,poscuda)")
    datas = columns(rec, names, defense_option, log=log)
    console.print(f"[bold]lab detect[/bold] on {recipe}: defenses "
                  f"{', '.join(d.recipe.defense.type for d in datas)}, features {features}, seeds {rec.seeds}")
    results, run_dir = run_detect(rec, str(recipe), datas, opts, log=log)
    table = Table(title=f"{rec.name}: detection ROC AUC on held-out clips (chance 0.5; seeds {rec.seeds})")
    for h in ("defense", *(f"{p} AUC" for p in results["probes"]), "chance spread"):
        table.add_column(h, justify="left" if h == "defense" else "right")
    for name in results["defenses"]:
        spread = max(c["null_sd"] for c in results["cells"][name])
        table.add_row(name, *(mean_std(results["auc"][name][p]) for p in results["probes"]), f"± {spread:.3f}")
    console.print(table)
    console.print(f"results: {run_dir}/results.json, results.md")
