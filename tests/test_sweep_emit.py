"""lab sweep --emit DIR: every cell's resolved recipe as its own file (and cells.txt listing them), nothing trained;
one such file run with `lab run` gives that cell's numbers, as the sweep itself does (docs/cluster.md)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lab.cli import app
from lab.errors import LabError
from lab.recipe import load_recipe
from lab.sweep import cells, emit_cells, plan_cells, resolved_dict, run_sweep

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "fsdd_cnn.yaml"


def _no_training(monkeypatch):
    import lab.experiment

    def refuse(*args, **kwargs):
        raise AssertionError("--emit must not train")

    monkeypatch.setattr(lab.experiment, "run", refuse)


def _same_recipe(a, b) -> bool:
    strip = lambda d: {k: v for k, v in resolved_dict(d).items() if k not in ("name", "description")}  # noqa: E731
    return strip(a) == strip(b)


def test_emit_writes_each_cells_resolved_recipe_and_trains_nothing(tmp_path, monkeypatch):
    _no_training(monkeypatch)
    monkeypatch.chdir(tmp_path)
    grid = {"defense.blur": [0.1, 0.7], "defense.patch_seconds": [0.05, 0.1]}
    fixed = ["train.epochs=2", "data.max_train_per_class=7"]
    written = emit_cells(RECIPE, grid, Path("cells"), [3, 4], fixed)
    listed = (tmp_path / "cells" / "cells.txt").read_text().splitlines()
    assert listed == [str(tmp_path / "cells" / f"cell-{i:03d}.yaml") for i in range(4)]
    assert [p for _, p in written] == [Path(p) for p in listed] and all(Path(p).is_absolute() for p in listed)
    planned = plan_cells(RECIPE, grid, [3, 4], fixed)
    for i, (path, cell, (_, want)) in enumerate(zip(listed, cells(grid), planned)):
        got = load_recipe(path)
        assert _same_recipe(got, want)  # the cell's recipe exactly, every default written out
        assert (got.defense.blur, got.defense.patch_seconds) == (cell["defense.blur"], cell["defense.patch_seconds"])
        assert got.seeds == [3, 4] and got.train.epochs == 2 and got.data.max_train_per_class == 7
        assert got.defense.key.get_secret_value() == "lab-demo-key-not-secret"  # runnable: the key is not redacted
        assert Path(path).stat().st_mode & 0o777 == 0o600, "a file with an inline key is its owner's only"
        assert got.name == f"fsdd_cnn-cell-{i:03d}"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cell-000.yaml", "cell-001.yaml", "cell-002.yaml",
                                                            "cell-003.yaml", "cells", "cells.txt"]


def test_emit_keeps_a_key_file_and_leaves_the_machine_check_to_the_run(tmp_path):
    key = tmp_path / "owner.key"
    key.write_text("a-private-key-of-some-length\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.read_text().replace("key: lab-demo-key-not-secret", f"key_file: {key}"))
    gpu = [] if torch.cuda.is_available() else ["train.accelerator=gpu"]  # a cluster's GPU cells, emitted here
    [(_, path)] = emit_cells(recipe, {"defense.blur": [0.2]}, tmp_path / "cells", None, gpu)
    text = path.read_text()
    assert f"key_file: {key}" in text and "a-private-key" not in text and "key: null" in text
    assert path.stat().st_mode & 0o777 == 0o644  # no key in it: an ordinary file
    if gpu:
        with pytest.raises(LabError, match="not available on this machine"):
            load_recipe(path)  # `lab run` on a machine without the GPU refuses it, at the door
        with pytest.raises(LabError, match="not available on this machine"):
            run_sweep(recipe, {"defense.blur": [0.2]}, tmp_path / "sweep", None, gpu)  # the sweep checks here
    else:
        assert load_recipe(path).defense.key_file == key


def test_the_command_lists_the_cells(tmp_path, monkeypatch):
    _no_training(monkeypatch)
    result = CliRunner().invoke(app, ["sweep", str(RECIPE), "--grid", "defense.blur=0.1,0.3,0.5", "--emit",
                                      str(tmp_path / "c"), "--set", "train.epochs=1"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "3 cell recipes written, nothing trained" in text and "--array=0-2" in text
    assert len((tmp_path / "c" / "cells.txt").read_text().splitlines()) == 3
    assert not (tmp_path / "c" / "frontier.csv").exists()


def test_an_emitted_cell_run_with_lab_run_gives_the_sweeps_numbers(fsdd_dir, tmp_path):
    fixed = [f"data.root={fsdd_dir}", "data.max_train_per_class=6", "data.max_test_per_class=2", "train.epochs=1",
             "train.progress=false", "train.num_threads=1"]
    grid = {"defense.blur": [0.1, 0.6]}
    run_sweep(RECIPE, grid, tmp_path / "sweep", [0], fixed, log=lambda s: None)
    written = emit_cells(RECIPE, grid, tmp_path / "cells", [0], fixed)
    cell, path = written[1]
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    [ran] = list((tmp_path / "out" / "fsdd_cnn-cell-001").glob("*/results.json"))
    from lab.sweep import cell_id
    swept = tmp_path / "sweep" / cell_id(cell, [0]) / "results.json"

    def numbers(p):
        return [{k: v for k, v in e.items() if k != "train_seconds"} for e in json.loads(p.read_text())["per_seed"]]

    assert numbers(ran) == numbers(swept) and numbers(ran)
    other = tmp_path / "sweep" / cell_id(written[0][0], [0]) / "results.json"
    assert numbers(other) != numbers(swept)  # the cells differ, so the comparison could fail


def test_the_array_script_runs_its_cell_and_skips_a_finished_one(tmp_path):
    import os
    import subprocess
    shared = tmp_path / "shared"
    emit_cells(RECIPE, {"defense.blur": [0.1, 0.3]}, shared / "cells", [0])
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SHARED=str(shared), LAB_DATA_DIR=str(tmp_path), LAB="echo", SLURM_CPUS_PER_TASK="3")

    def task(n: int) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(REPO / "docs" / "sweep_array.sbatch"), "--set", "train.epochs=1"],
                              env={**env, "SLURM_ARRAY_TASK_ID": str(n)}, capture_output=True, text=True, timeout=30)

    ran = task(1)  # LAB=echo prints the lab run command the task would run
    assert ran.returncode == 0, ran.stderr
    assert (f"run {shared / 'cells' / 'cell-001.yaml'} --out {shared / 'runs'} --set train.num_threads=3 "
            "--set train.progress=false --set train.epochs=1") in ran.stdout
    run_dir = shared / "runs" / "fsdd_cnn-cell-001" / "20260101-000000"
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text("{}")
    (run_dir / "INCOMPLETE").write_text("interrupted")
    assert "run " in task(1).stdout  # an interrupted run does not count: the cell runs again
    (run_dir / "INCOMPLETE").unlink()
    again = task(1)
    assert again.returncode == 0 and "cell 1 finished earlier" in again.stdout and "run " not in again.stdout
    assert "cell-000.yaml" in task(0).stdout  # the other cell is not taken for finished
    missing = task(2)
    assert missing.returncode == 1 and "no cell 2" in missing.stderr
