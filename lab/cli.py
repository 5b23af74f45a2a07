"""The ``lab`` command line: one command per job, Rich output, one-line errors for a user's mistakes."""
from __future__ import annotations

import signal
import sys

import typer
from rich.console import Console, ConsoleDimensions

from lab import __version__
from lab.errors import LabError

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="The open reference lab for unlearnable audio datasets (PosCUDA and friends).")
class LabConsole(Console):
    """Rich's console, except that when its stream is not a terminal (a log file, a pipe, a notebook cell running
    the command) and ``$COLUMNS`` does not say otherwise, it is :data:`UNCUT` columns wide instead of Rich's 80:
    tables take the width their cells need (they never stretch) and long lines stay whole, where at 80 columns
    they were wrapped and their cells folded. On a terminal it is the terminal's width, as before."""

    UNCUT = 1000

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self._width is None and "COLUMNS" not in self._environ and not self.is_terminal:
            return ConsoleDimensions(self.UNCUT, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


console = LabConsole()
err_console = LabConsole(stderr=True)


def log(msg: str) -> None:
    """Progress messages for a person (dim), on stdout."""
    console.print(f"[dim]{msg}[/dim]", highlight=False)


def _version(value: bool) -> None:
    if value:
        console.print(f"lab {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the lab's version and exit."),
):
    """The open reference lab for unlearnable audio datasets (PosCUDA and friends)."""


def _load_commands() -> None:
    """Every module in lab/commands/ adds its own commands to ``app`` (one module per job)."""
    import importlib
    import pkgutil

    import lab.commands
    for info in sorted(pkgutil.iter_modules(lab.commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"lab.commands.{info.name}")


_sigint = {"seen": False}


def _on_sigint(signum, frame):
    # Lightning catches the KeyboardInterrupt inside fit/test and calls sys.exit(1); this flag tells main() that
    # such an exit was a Ctrl-C
    _sigint["seen"] = True
    raise KeyboardInterrupt


def _interruption(error: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt behind an exit, if any (Typer turns one into a silent exit 130)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _interrupted(error: BaseException | None) -> None:
    """One line on stderr (what the run kept, when it says so), exit code 130."""
    message = str(error) if error is not None else ""
    err_console.print(f"interrupted: {message}" if message else "interrupted", highlight=False, soft_wrap=True)
    sys.exit(130)


def main() -> None:
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        app(prog_name="lab")
    except LabError as e:
        err_console.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt as e:
        _interrupted(e)
    except SystemExit as e:
        if e.code == 130 or (_sigint["seen"] and e.code not in (0, None)):
            _interrupted(_interruption(e))
        raise


_load_commands()  # at the end: the command modules import app, console and log from here
