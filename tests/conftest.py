"""Shared fixtures: the real FSDD copy (``$LAB_TEST_FSDD``, default ``../shared/data/fsdd`` beside the repo) and
small generated audio."""
from __future__ import annotations

import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist (pyproject's addopts: -n 2): two worker processes share the 2 cores, so each uses one thread
    # (threads x processes <= cores; oversubscribed OpenMP threads spin and cost 3x), set before torch or a BLAS
    # starts here and inherited by every `lab` subprocess a test runs. A recipe's own train.num_threads still wins.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # xdist's workers inherit a COLUMNS=80/LINES=24 of their own making: the lab's console would then be 80 columns
    # wide in every in-process command a test runs (not what a user's log gets: tests check that)
    for var in ("COLUMNS", "LINES"):
        os.environ.pop(var, None)

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent

# optimised protections are not cached across tests (a test that checks the cache turns it on in a temporary folder)
os.environ.setdefault("LAB_PROTECTION_CACHE", "off")


def fsdd_root() -> Path:
    return Path(os.environ.get("LAB_TEST_FSDD", REPO.parent / "shared" / "data" / "fsdd"))


@pytest.fixture(scope="session")
def fsdd_dir() -> Path:
    root = fsdd_root()
    if not (root / "recordings").is_dir():
        pytest.skip(f"real FSDD copy not found at {root} (set LAB_TEST_FSDD)")
    return root


def tone(seconds: float, sr: int, freq: float = 440.0, channels: int = 1, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.shape)
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def write(path: Path, data: np.ndarray, sr: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr)
    return path


@pytest.fixture
def labelled_folder(tmp_path) -> Path:
    """ROOT/<label>/*.wav|flac with 3 labels x 5 clips, mixed formats, rates and channel counts."""
    root = tmp_path / "folder"
    for i, label in enumerate(["cat", "dog", "owl"]):
        for j in range(5):
            ext = ".flac" if j % 2 else ".wav"
            write(root / label / f"{label}{j}{ext}", tone(0.5 + 0.1 * j, 16000 if j < 3 else 8000,
                                                            220 * (i + 1), channels=1 + j % 2, seed=j), 
                  16000 if j < 3 else 8000)
    (root / "cat" / "notes.txt").write_text("not audio")
    return root


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``lab ARGS`` in this process (a subprocess pays seconds of imports each time): (exit code, stdout,
    stderr), with the same one-line error handling as the real command."""
    from lab.cli import main

    def run(*args: str):
        monkeypatch.setattr("sys.argv", ["lab", *args])
        monkeypatch.setenv("COLUMNS", "200")  # a table's lines are not wrapped
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code or 0
        out = capsys.readouterr()
        return code, out.out, out.err
    return run
