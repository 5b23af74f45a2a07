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


def test_workers_end_with_a_killed_parent(tmp_path):
    """A sweep or matrix killed by its PID used to leave its --jobs workers training on as orphans (found when a
    study was stopped with pkill: they went on for minutes at half speed, writing into the cells the resumed run
    was writing). Each worker now ends soon after its parent."""
    import os
    import signal
    import subprocess
    import sys
    import time
    pids = tmp_path / "worker.pid"
    script = f"""
import time
from pathlib import Path
from lab.sweep import worker_pool
pool = worker_pool(1)
pool.submit(time.sleep, 120)
time.sleep(1.0)
Path({str(pids)!r}).write_text(" ".join(str(p) for p in pool._processes))
time.sleep(120)
"""
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not (pids.exists() and pids.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.2)
        (worker,) = map(int, pids.read_text().split())
        os.kill(worker, 0)  # alive while the parent is
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 15
        alive = True
        while alive and time.monotonic() < deadline:
            try:  # gone, or a zombie no init has reaped yet (state Z): it no longer runs
                alive = Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            except (FileNotFoundError, ProcessLookupError):
                alive = False
            time.sleep(0.2)
        if alive:
            os.kill(worker, signal.SIGKILL)
        assert not alive, "the worker outlived its killed parent by 15 s"
    finally:
        if parent.poll() is None:
            parent.kill()
