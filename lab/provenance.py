"""What every reported number carries: versions, git commit, time, machine."""
from __future__ import annotations

import datetime as dt
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "torchaudio", "lightning", "torchmetrics", "numpy", "soundfile", "pydantic", "audiomentations")
SOURCE = Path(__file__).resolve().parent.parent


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    from lab import __version__
    out["lab"] = __version__
    return out


def git_commit() -> dict[str, str | bool | None]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(SOURCE), *args], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


# The commit of the code this process runs: read when the lab is first imported (a long run or sweep imports its
# code at the start; a commit made while it trains must not be recorded as the code that produced its numbers).
CODE_GIT = git_commit()


def provenance() -> dict:
    import torch
    return {
        "git": dict(CODE_GIT),
        "versions": versions(),
        "time_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
