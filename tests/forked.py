"""``lab ARGS`` in its own process without a fresh interpreter's imports.

A test that runs ``python -m lab ...`` in a subprocess pays torch's and Lightning's imports (5-7 s on the lab's
machines) before the command does anything: for a tiny ``lab attack`` that is most of its time, and the tests run
dozens. :func:`lab_forked` forks this process instead, after importing what the commands import, and runs the command
in the child with its own arguments, working directory, environment and stdin/stdout/stderr: what the command changes
(torch's threads and generators, signal handlers, the working directory, the environment) and how it ends (an exit
code, a crash) stay in the child, as with a subprocess.

Not for what needs a fresh interpreter: plugins found through ``$LAB_PLUGINS`` or entry points (the registries are
filled here before the fork), the import checks, and a process that is sent a signal mid-run.
"""
from __future__ import annotations

import io
import os
import selectors
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_PRELOAD = ("lab.cli", "lab.commands.run", "lab.commands.attack", "lab.commands.fad", "lab.attacking.run",
            "lab.experiment", "lab.train", "attacks", "defenses")


def _preload() -> None:
    import importlib
    for name in _PRELOAD:
        importlib.import_module(name)
    import attacks
    import defenses
    attacks.ATTACKS.names(), defenses.DEFENSES.names()  # the registries, filled once here


def _child(args: list[str], cwd: Path, env: dict, out_w: int, err_w: int) -> None:
    code = 1
    try:
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", line_buffering=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", line_buffering=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = ["lab", *args]
        from lab import cli
        for c in (cli.console, cli.err_console):  # made in this process, maybe on a terminal (pytest -s): colours
            c._color_system = c._detect_color_system()  # as a console made on the child's pipe would choose them
        from lab.cli import main
        try:
            main()
            code = 0
        except SystemExit as e:  # as the interpreter ends on it
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def lab_forked(*args: str, env: dict | None = None, cwd: Path = REPO, timeout: float = 600
               ) -> subprocess.CompletedProcess:
    """``python -m lab ARGS`` (module docstring) as a CompletedProcess: its exit code and its stdout and stderr as
    text. ``env`` is the child's whole environment (default: this process's)."""
    _preload()
    sys.stdout.flush()
    sys.stderr.flush()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(out_r)
        os.close(err_r)
        _child(list(args), Path(cwd), dict(os.environ if env is None else env), out_w, err_w)
    os.close(out_w)
    os.close(err_w)
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    sel = selectors.DefaultSelector()
    for fd in chunks:
        sel.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    open_fds = set(chunks)
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            for fd in chunks:
                os.close(fd)
            raise subprocess.TimeoutExpired(["lab", *args], timeout)
        for key, _ in sel.select(timeout=min(left, 1.0)):
            data = os.read(key.fd, 65536)
            if data:
                chunks[key.fd].append(data)
            else:
                sel.unregister(key.fd)
                open_fds.discard(key.fd)
    sel.close()
    for fd in chunks:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return subprocess.CompletedProcess(["lab", *args], code, b"".join(chunks[out_r]).decode(errors="replace"),
                                       b"".join(chunks[err_r]).decode(errors="replace"))
