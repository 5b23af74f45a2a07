"""lab sweep --jobs N: cells in N worker processes give the same per-cell numbers as one at a time, and resume."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.errors import LabError
from lab.sweep import run_sweep, threads_per_job

REPO = Path(__file__).resolve().parent.parent


def per_cell(out: Path) -> dict:
    cells = {}
    for f in sorted(out.glob("cell-*/results.json")):
        r = json.loads(f.read_text())
        cells[f.parent.name] = [{k: v for k, v in e.items() if k != "train_seconds"} for e in r["per_seed"]]
    return cells


def test_two_jobs_give_the_same_cells_as_one(fsdd_dir, tmp_path):
    base = [f"data.root={fsdd_dir}", "data.max_train_per_class=6", "data.max_test_per_class=2", "train.epochs=1",
            "train.progress=false", "train.num_threads=1"]
    grid = {"defense.blur": [0.1, 0.5, 1.0]}
    said = []
    one = run_sweep(REPO / "recipes" / "fsdd_cnn.yaml", grid, tmp_path / "one", [0], base, log=lambda s: None)
    two = run_sweep(REPO / "recipes" / "fsdd_cnn.yaml", grid, tmp_path / "two", [0], base, log=said.append, jobs=2)
    assert per_cell(tmp_path / "one") == per_cell(tmp_path / "two") and len(per_cell(tmp_path / "two")) == 3
    assert [r["protected_clean_acc"] for r in one] == [r["protected_clean_acc"] for r in two]
    assert "3 of 3 cells to run, 2 at a time" in said
    again = []
    run_sweep(REPO / "recipes" / "fsdd_cnn.yaml", grid, tmp_path / "two", [0], base, log=again.append, jobs=2)
    assert sum("finished earlier, skipped" in s for s in again) == 3  # resumable the same way


def test_threads_are_shared_out_and_oversubscription_is_named(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    said = []
    assert threads_per_job(2, None) == 1 and threads_per_job(1, None) is None and threads_per_job(4, None) == 1
    assert threads_per_job(2, 2, said.append) == 2 and "oversubscribed" in said[0]
    with pytest.raises(LabError, match="--jobs 0"):
        run_sweep(REPO / "recipes" / "fsdd_cnn.yaml", {"defense.blur": [0.1]}, Path("/nonexistent"), jobs=0)
