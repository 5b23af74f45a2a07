"""The ``lab`` command line: one command per job, Rich output, one-line errors for a user's mistakes."""
from __future__ import annotations

import sys
import typer
from rich.console import Console

from lab.errors import LabError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="The open reference lab for unlearnable audio datasets (PosCUDA and friends).")
console = Console()
err_console = Console(stderr=True)


def log(msg: str) -> None:
    """Progress messages for a person (dim), on stdout."""
    console.print(f"[dim]{msg}[/dim]", highlight=False)


def _load_commands() -> None:
    """Every module in lab/commands/ adds its own commands to ``app`` (one module per job)."""
    import importlib
    import pkgutil

    import lab.commands
    for info in sorted(pkgutil.iter_modules(lab.commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"lab.commands.{info.name}")


def main() -> None:
    try:
        app()
    except LabError as e:
        err_console.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


_load_commands()  # at the end: the command modules import app, console and log from here
