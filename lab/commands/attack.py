"""``lab attack``: does unlearnability survive what a determined trainer would try?"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from lab.cli import app, console, log


@app.command()
def attack(
    type_: str = typer.Option(..., "--type", "-t", help="Attack to run (see `lab list`), or 'all' for the matrix "
                              "defenses x attacks."),
    recipe: Path = typer.Option(Path("recipes/fsdd_cnn.yaml"), help="Recipe YAML; its optional `attack:` block "
                                "(one mapping or a list) gives attack options."),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="Attack option FIELD=VALUE (YAML value), "
                                               "e.g. -o eps=0.01; with --type all: ATTACK.FIELD=VALUE. Repeatable."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a recipe field: --set train.epochs=5 "
                                             "(repeatable)."),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds, replacing the recipe's (e.g. 0,1)."),
    defenses_: Optional[str] = typer.Option(None, "--defenses", help="Comma-separated defenses (rows). Default: "
                                            "none and the recipe's own for one attack; with --type all also cuda, "
                                            "noise-patch, classwise-noise (at the recipe's PosCUDA SNR)."),
    out: Optional[Path] = typer.Option(None, help="Folder for runs (default: the recipe's output_dir, 'runs')."),
):
    """Train on protected data under an attack and report clean-test accuracy next to no attack and clean data.

    Rows are defenses (`none` = clean data, the reference), columns are no attack and each attack (and its variants,
    e.g. clean-finetune's fractions); the last column is the worst case for the data owner: the highest clean-test
    accuracy over them. Writes runs/<recipe>/attack-<type>-<timestamp>/ with results.json (every number per seed,
    attack parameters and what they measured, versions, git commit), results.md, table.csv and recipe.yaml.
    """
    import attacks
    from lab import attacking
    from lab.data import load_dataset
    from defenses import build_defense
    from lab.quality import snr_summary

    overrides = list(set_ or [])
    if seeds:
        overrides.append(f"seeds=[{seeds}]")
    if out:
        overrides.append(f"output_dir={out}")
    rec, blocks = attacking.load_attack_recipe(recipe, overrides)
    names = attacks.ATTACKS.names() if type_ == "all" else [type_]
    cfgs = attacking.attack_configs(names, blocks, list(option or []))
    if type_ == "all":
        cfgs = attacking.with_both_filter_methods(cfgs, blocks, list(option or []))
    if defenses_:
        defense_names = [d.strip() for d in defenses_.split(",") if d.strip()]
    elif type_ == "all":
        defense_names = list(dict.fromkeys(["none", rec.defense.type, *attacking.BASELINES[2:]]))
    else:
        defense_names = list(dict.fromkeys(["none", rec.defense.type]))
    snr = None
    if rec.defense.type != "none" and any(d in ("noise-patch", "classwise-noise") for d in defense_names):
        train, _ = load_dataset(rec.data, lambda s: None)
        prot = build_defense(rec.defense).derive(len(train.class_names), rec.data.sample_rate)
        snr = snr_summary(prot.apply(train.waveforms, train.labels, train.lengths), train.waveforms)["snr_db_mean"]
        log(f"noise baselines at the recipe's {rec.defense.type} SNR: {snr:.2f} dB")
    dcfgs = attacking.defense_configs(rec, defense_names, snr)
    recipes = [attacking.with_defense(rec, d) for d in dcfgs]  # each must fit the recipe, before any training
    for d in dcfgs:
        build_defense(d).derive(2, rec.data.sample_rate)  # a missing key or key file fails here, not mid-matrix
    console.print(f"[bold]lab attack[/bold] {type_} on {recipe}: {rec.model.type} on {rec.features.type}, "
                  f"defenses {', '.join(defense_names)}, attacks {', '.join(names)}, seeds {rec.seeds}, "
                  f"{rec.train.epochs} epochs")
    started = time.perf_counter()
    matrix = attacking.run_matrix(recipes, cfgs, log=log, progress=rec.train.progress and console.is_terminal)
    results, run_dir = attacking.write_results(rec, str(recipe), type_, cfgs, matrix, time.perf_counter() - started)
    header, rows = attacking.table_rows(matrix)
    table = Table(title=f"{rec.name}: clean-test accuracy under attack (chance {results['chance']:.2f}; "
                        f"seeds {rec.seeds})")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    console.print(f"results: {run_dir}/results.json, results.md, table.csv")
