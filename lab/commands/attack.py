"""``lab attack``: does unlearnability survive what a determined trainer would try?"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from typer.core import TyperCommand

from lab.cli import app, console, log
from lab.errors import LabError

ATTACK_NAMES = "<the registered attacks>"  # replaced by the registry's names when the help is shown
BASELINE_NAMES = "<the matched baselines>"  # replaced by the defenses that declare themselves matched baselines


def _fill(text: str, fill: dict[str, str]) -> str:
    for placeholder, value in fill.items():
        text = text.replace(placeholder, value)
    return text


class AttackHelp(TyperCommand):
    """Puts the registered attack names into ``lab attack --help`` when the help is shown, not when the CLI starts:
    importing the attacks (and torch) would add over a second to every ``lab`` command. Each paragraph of the help
    is joined into one line, for the terminal to wrap (Typer keeps the docstring's line breaks)."""

    def format_help(self, ctx, formatter):
        import attacks
        from lab.attacking import baselines
        names = ", ".join(attacks.ATTACKS.names())
        fill = {ATTACK_NAMES: names, BASELINE_NAMES: ", ".join(baselines())}
        saved = self.help, [getattr(p, "help", None) for p in self.params]
        paragraphs = inspect.cleandoc(self.help or "").split("\n\n")
        self.help = _fill("\n\n".join(" ".join(p.split()) for p in paragraphs), fill)
        for param, text in zip(self.params, saved[1]):
            if text:
                param.help = _fill(text, fill)
        try:
            return super().format_help(ctx, formatter)
        finally:  # the template stays, for the next help in the same process
            self.help = saved[0]
            for param, text in zip(self.params, saved[1]):
                if text:
                    param.help = text


@app.command(cls=AttackHelp)
def attack(
    recipe: Optional[Path] = typer.Argument(None, metavar="RECIPE", help="Recipe YAML, e.g. recipes/fsdd_cnn.yaml; "
                                            "its optional `attack:` block (one mapping or a list) gives attack "
                                            "options."),
    type_: str = typer.Option(..., "--type", "-t", help=f"Attack to run: one of {ATTACK_NAMES}; several, "
                              "comma-separated (e.g. augment,codec); or 'all' for every attack (the whole matrix)."),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="Attack option FIELD=VALUE (YAML value), "
                                               "e.g. -o eps=0.01; with --type all: ATTACK.FIELD=VALUE. Repeatable."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a recipe field: --set train.epochs=5 "
                                             "(repeatable)."),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds, replacing the recipe's (e.g. 0,1)."),
    defenses_: Optional[str] = typer.Option(None, "--defenses", help="Comma-separated defenses (the table's "
                                            "columns). Default: none and the recipe's own; with --type all also "
                                            "the matched baselines (<the matched baselines>; at the "
                                            "SNR the recipe's defense measures)."),
    defense_option: Optional[list[str]] = typer.Option(None, "--defense-option", help="Set a field of one "
                                                       "column's defense: DEFENSE.FIELD=VALUE (YAML value), e.g. "
                                                       "em-noise.mode=class-wise. Repeatable."),
    out: Optional[Path] = typer.Option(None, help="Folder for runs (default: the recipe's output_dir, 'runs')."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Cells (defense x seed) trained at once, each in its own process "
                             "with its share of the cores; the same numbers as one at a time with the same "
                             "train.num_threads."),
):
    """Train on protected data under an attack and report clean-test accuracy next to no attack and clean data.

    Example: lab attack recipes/fsdd_cnn.yaml --type augment

    Attacks (--type): <the registered attacks>; or all (every attack).

    The table's rows are attacks: no attack first, then each attack (and its variants, e.g. clean-finetune's
    fractions). Its columns are defenses: none (clean data, the reference: there a row shows what the attack itself
    costs), the recipe's defense and any baselines. The last row is the worst case for the data owner: for each
    defense, the highest mean clean-test accuracy over the rows above, and the attack that reached it. Cells are
    mean ± std over the seeds.

    Writes runs/<recipe>/attack-<type>-<timestamp>/ with results.json (every number per seed, attack parameters
    and what they measured, versions, git commit), results.md, table.csv, recipe.yaml and protections/ (each
    column's protection record: private, derived from the key). While it runs the folder holds INCOMPLETE;
    results.json is written last.
    """
    from lab import attacking
    from lab.recipe import command_overrides

    recipe = _recipe_path(recipe)
    overrides = command_overrides(set_, seeds, out, jobs)  # --seeds and --jobs checked here, before any work
    rec, blocks = attacking.load_attack_recipe(recipe, overrides)
    names = _attack_names(type_)
    configs = attacking.attack_configs(names, blocks, list(option or []))  # checked before training code is imported
    defenses = _defense_names(rec, type_, defenses_)
    plan = attacking.AttackPlan(rec, str(recipe), type_ if type_ == "all" else "+".join(names), configs, defenses,
                                list(defense_option or []))
    console.print(f"[bold]lab attack[/bold] {type_} on {recipe}: {rec.model.type} on {rec.features.type}, "
                  f"defenses {', '.join(plan.defenses)}, attacks {', '.join(names)}, seeds {rec.seeds}, "
                  f"{rec.train.epochs} epochs")
    bars = rec.train.progress and console.is_terminal and jobs == 1
    results, matrix, run_dir = attacking.run_attack(plan, log=log, progress=bars, jobs=jobs)
    _print_matrix(rec, results, matrix, run_dir)


def _attack_names(type_: str) -> list[str]:
    """``--type``: 'all' (every registered attack), or one or several names, comma-separated."""
    import attacks
    names = attacks.ATTACKS.names() if type_ == "all" else list(dict.fromkeys(
        t.strip() for t in type_.split(",") if t.strip()))
    if not names:
        raise LabError(f"--type {type_!r}: name an attack ({', '.join(attacks.ATTACKS.names())}) or 'all'")
    return names


def _defense_names(rec, type_: str, defenses_: str | None) -> list[str]:
    """The table's columns: ``--defenses``; else none and the recipe's defense, with ``--type all`` also the
    matched baselines."""
    from defenses import DEFENSES
    from lab.attacking import baselines
    if defenses_:
        names = [d.strip() for d in defenses_.split(",") if d.strip()]
        for name in names:  # an unknown name fails here, in one line, before any training code is imported
            DEFENSES.get(name)
        return names
    return list(dict.fromkeys(["none", rec.defense.type, *(baselines() if type_ == "all" else [])]))


def _print_matrix(rec, results: dict, matrix, run_dir: Path) -> None:
    """The table, a warning when the clean-trained model did not learn the task, where the files are, and last one
    verdict per defense on its worst case."""
    from rich.markup import escape

    from lab import attacking
    from lab.commands.fad import warn
    header, rows = attacking.table_rows(matrix)
    table = Table(title=f"{rec.name}: clean-test accuracy under attack (chance {results['chance']:.2f}; "
                        f"seeds {rec.seeds})")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    too_small, verdicts = attacking.conclusions(matrix)
    if too_small:
        warn(too_small)
    console.print(f"results: {run_dir}/results.json, results.md, table.csv")
    for said in verdicts:
        console.print(f"[bold]verdict[/bold] {escape(said)}", highlight=False)


def _recipe_path(positional: Path | None) -> Path:
    """The recipe (the first argument), or a one-line error naming what to give."""
    if positional is None:
        raise LabError("missing recipe: lab attack RECIPE --type ATTACK (e.g. lab attack recipes/fsdd_cnn.yaml "
                       "--type augment)")
    return positional
