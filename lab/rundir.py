"""Run folders: how an unfinished one is marked, and reading a finished one back (its recipe, protection record,
results and trained models).

A run folder is finished when it holds ``results.json`` and no ``INCOMPLETE`` file. Every command that writes one
(``lab run``, ``lab attack``, ``lab audit``) goes through the same life cycle (:func:`open_run`, :func:`running`,
:func:`finish`): ``INCOMPLETE`` first (saying the run is in progress); when the run fails or is interrupted, it is
rewritten with the reason and how far the run got, or, when nothing worth keeping was made yet, the folder (and the
parents made for it) is removed; ``results.json`` is written atomically, as the last file, and only then is
``INCOMPLETE`` removed. Ctrl-C raises :class:`RunInterrupted` saying what was kept. Readers (``lab report``,
``lab ablate``, sweep resume) use :func:`is_finished`.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import yaml

from defenses.base import Protection
from lab.errors import LabError
from lab.module import LabModule
from lab.recipe import Recipe, recipe_from_dict


INCOMPLETE = "INCOMPLETE"


def mark_incomplete(run_dir: Path, reason: str) -> None:
    """Write (or replace) ``run_dir/INCOMPLETE`` saying why the run is not finished."""
    stamp = dt.datetime.now().isoformat(timespec="seconds")
    text = (f"{reason}\n\nThis run folder is not a finished run ({stamp}, pid {os.getpid()}): results.json is "
            "written last, and lab report, lab ablate and sweep resume skip folders holding this file.\n")
    write_atomic(Path(run_dir) / INCOMPLETE, text)


def remove_created(run_dir: Path, created: list[Path]) -> None:
    """Remove a run folder that holds nothing worth keeping, and the parents made for it while they are empty
    (``created``: the run folder and the folders made for it, in the order they were made)."""
    import shutil
    for folder in created:
        if folder == run_dir:
            shutil.rmtree(folder, ignore_errors=True)
        elif folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; the message says what was kept (the CLI prints it and exits 130)."""


@dataclass
class Progress:
    """How far a run got: what its INCOMPLETE marker and an interruption message report. ``units``: what
    ``total`` counts, plural (e.g. "seeds", "cells (defense x seed)")."""

    total: int
    units: str
    trained: int = 0
    stage: str = "starting"
    sigint: bool = field(default=False, repr=False)  # set by noticing_sigint

    def summary(self) -> str:
        units = self.units.removesuffix("s") if self.total == 1 and self.units.endswith("s") else self.units
        return f"{self.trained} of {self.total} {units} trained, stopped while {self.stage}"


@contextmanager
def noticing_sigint(state: Progress):
    """Remember a Ctrl-C in ``state``: Lightning catches the KeyboardInterrupt inside fit/test and turns it into
    ``sys.exit(1)`` (leaving SIGINT ignored); the run must still know it was interrupted. The previous handler is
    put back afterwards (main thread only; elsewhere signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        state.sigint = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def open_run(base: Path, label: str = "") -> tuple[Path, list[Path]]:
    """A new run folder under ``base`` (``lab.results.new_run_dir``) and the folders made for it, run folder first
    (what :func:`running` removes when a run stops with nothing worth keeping)."""
    from lab.results import new_run_dir
    base = Path(base)
    parents = [p for p in [*reversed(base.parents), base] if not p.exists()]
    run_dir = new_run_dir(base, label)
    return run_dir, [run_dir, *reversed(parents)]


def trained_something(run_dir: Path, state: Progress) -> bool:
    """The default of what makes a stopped run worth keeping: at least one unit trained."""
    return state.trained > 0


@contextmanager
def running(run_dir: Path, created: list[Path], state: Progress, what: str = "run",
            log: Callable[[str], None] = print,
            worth_keeping: Callable[[Path, Progress], bool] = trained_something) -> Iterator[Path]:
    """The life cycle of a run folder (see the module docstring) around the body of a ``with``: ``INCOMPLETE``
    written first; a failure or Ctrl-C keeps the folder marked INCOMPLETE (why, how far it got) when
    ``worth_keeping`` says so or when the caller made the folder (``created`` empty), else removes what was
    created; the error is raised again (Ctrl-C as :class:`RunInterrupted`, after a ``log`` line for a failure).
    The body ends with :func:`finish`."""
    mark_incomplete(run_dir, "in progress")
    try:
        with noticing_sigint(state):
            yield run_dir
    except BaseException as e:
        interrupted = isinstance(e, KeyboardInterrupt) or (isinstance(e, SystemExit) and state.sigint)
        first_line = str(e).splitlines()[0] if str(e) else ""
        why = "interrupted (Ctrl-C)" if interrupted else f"failed ({type(e).__name__}: {first_line})"
        if created and not worth_keeping(run_dir, state):
            remove_created(run_dir, created)
            kept = f"nothing kept ({state.summary()}; {run_dir} removed)"
        else:
            mark_incomplete(run_dir, f"{why}: {state.summary()}")
            kept = (f"kept {run_dir}/ (incomplete: {state.summary()}; its results.json is not written, and "
                    f"{INCOMPLETE} says why)")
        if interrupted:
            raise RunInterrupted(kept) from None
        log(f"the {what} failed: {kept}")
        raise


def finish(run_dir: Path, results: dict, files: dict[str, str] | None = None) -> None:
    """End a run: its other ``files`` (name -> text), then ``results.json`` (atomically, last: its presence means
    finished), then ``INCOMPLETE`` removed."""
    for name, text in (files or {}).items():
        (Path(run_dir) / name).write_text(text)
    write_atomic(Path(run_dir) / "results.json", json.dumps(results, indent=2))
    (Path(run_dir) / INCOMPLETE).unlink(missing_ok=True)


def write_protection(path: Path, protection) -> dict:
    """A protection's record (``path``, JSON) and, for an optimised protection, its large tensors (``path`` with
    the suffix ``.pt``), both private: derived from the key; returns the record."""
    path = Path(path)
    record = protection.to_dict()
    path.write_text(json.dumps(record))
    arrays = protection.arrays()
    if arrays:
        torch.save(arrays, path.with_suffix(".pt"))
    return record


def incomplete_reason(run_dir: Path) -> str | None:
    """The first line of ``run_dir/INCOMPLETE``, or None when there is no such file."""
    marker = Path(run_dir) / INCOMPLETE
    if not marker.is_file():
        return None
    return (marker.read_text().splitlines() or ["(no reason recorded)"])[0]


def is_finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run: a results.json and no INCOMPLETE marker."""
    return (Path(run_dir) / "results.json").is_file() and not (Path(run_dir) / INCOMPLETE).exists()


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see the old file or the whole new
    one, never half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


@dataclass
class FinishedRun:
    path: Path
    recipe: Recipe
    protection: Protection
    results: dict

    def module(self, which: str, seed: int) -> LabModule:
        """The trained ``clean_model`` or ``protected_model`` of ``seed``, from its Lightning checkpoint
        (``models/<which>_seed<N>.ckpt``; runs made before checkpoints have a bare ``.pt`` state dict instead).

        The model is rebuilt from the run's recipe and results, so this reads runs made before checkpoints held
        the module's hyperparameters too; a newer checkpoint also loads alone, with
        ``LabModule.load_from_checkpoint(run.checkpoint(which, seed))``."""
        path = self.checkpoint(which, seed)
        shape = self.results["data"]["feature_shape"]
        classes = len(self.results["data"]["classes"])
        module = LabModule(self.recipe.model, shape, classes, self.recipe.train.lr, self.recipe.train.weight_decay,
                           self.recipe.features.raw, self.recipe.data.sample_rate)
        state = torch.load(path, map_location="cpu", weights_only=path.suffix == ".pt")
        module.load_state_dict(state["state_dict"] if path.suffix == ".ckpt" else state)
        return module.eval()

    def checkpoint(self, which: str, seed: int) -> Path:
        """Where the model's weights are: its Lightning checkpoint (evaluate it, or fine-tune from it with
        ``lab.train.fit(..., module=run.module(which, seed), resume=run.checkpoint(which, seed))``)."""
        for suffix in (".ckpt", ".pt"):
            path = self.path / "models" / f"{which}_seed{seed}{suffix}"
            if path.is_file():
                return path
        raise LabError(f"{self.path}: no saved model models/{which}_seed{seed}.ckpt (runs made before models were "
                       f"saved cannot be ablated; run the recipe again)")


def load_run(path: Path) -> FinishedRun:
    path = Path(path)
    files = {name: path / name for name in ("recipe.yaml", "protection.json", "results.json")}
    reason = incomplete_reason(path)
    if reason is not None:
        raise LabError(f"{path} is not a finished lab run ({INCOMPLETE}: {reason}); run the recipe again")
    missing = [n for n, p in files.items() if not p.is_file()]
    if missing:
        raise LabError(f"{path} is not a finished lab run (missing {', '.join(missing)})")
    # the run may have been made on another machine (e.g. with a GPU): its train section is not checked against this
    recipe = recipe_from_dict(yaml.safe_load(files["recipe.yaml"].read_text()), str(files["recipe.yaml"]),
                              machine=False)
    arrays_file = path / "protection.pt"  # an optimised protection's large tensors (e.g. per-clip noise)
    arrays = torch.load(arrays_file, weights_only=True) if arrays_file.is_file() else None
    protection = Protection.from_dict(json.loads(files["protection.json"].read_text()), arrays)
    return FinishedRun(path, recipe, protection, json.loads(files["results.json"].read_text()))


def find_results(paths: list[Path], log=None) -> list[Path]:
    """Every results.json of a finished run in or below the given run or sweep folders (or the files themselves).
    Folders marked INCOMPLETE are left out (``log``, when given, is told how many); naming one directly is an
    error."""
    found: list[Path] = []
    unfinished: set[Path] = set()
    for p in map(Path, paths):
        if p.is_file() and p.name == "results.json":
            if not is_finished(p.parent):
                raise LabError(f"{p.parent} is not a finished lab run ({INCOMPLETE}: {incomplete_reason(p.parent)})")
            found.append(p)
        elif p.is_dir():
            marked = {m.parent for m in p.rglob(INCOMPLETE)}
            unfinished |= marked
            found += [f for f in sorted(p.rglob("results.json")) if f.parent not in marked]
        else:
            raise LabError(f"no such run folder or results.json: {p}")
    left_out = f"{len(unfinished)} unfinished run folder(s) marked {INCOMPLETE} left out" if unfinished else ""
    if left_out and log is not None:
        log(f"{left_out}, e.g. {min(unfinished)}")
    if not found:
        raise LabError(f"no results.json under {', '.join(map(str, paths))}" + (f" ({left_out})" if left_out else ""))
    return found


def refresh_quality(path: Path, log=print) -> dict:
    """Recompute a finished run's quality section with the current code (from its recipe, protection record and
    first seed's clean model; no training) and store it in results.json. The previous section is kept under
    ``quality_history`` with the commit that made it, so nothing is lost."""
    from lab.provenance import git_commit
    from lab.quality import assess
    from lab.spine import ExperimentData

    run = load_run(path)
    data = ExperimentData.from_run(run, log=log)
    module = run.module("clean_model", run.results["seeds"][0])
    quality = assess(run.recipe, data.clean_train, data.protected_train, module)
    quality["recomputed"] = {"commit": git_commit()["commit"]}
    results = run.results
    results.setdefault("quality_history", []).append(
        {"commit": results.get("provenance", {}).get("git", {}).get("commit"), "quality": results.get("quality")})
    results["quality"] = quality
    write_atomic(Path(path) / "results.json", json.dumps(results, indent=2))
    return quality
