"""A short real training run through the CLI on the real FSDD copy: files written, numbers sane, key nowhere."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lab.cli import app
from lab.experiment import other_classes

KEY = "run-test-secret-key-77"


def test_other_classes_never_own_class():
    import torch
    labels = torch.arange(1000) % 10
    other = other_classes(labels, 10, seed=3)
    assert (other != labels).all()
    assert set(other.tolist()) == set(range(10))


@pytest.fixture(scope="module")
def short_run(fsdd_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "fsdd_cnn.yaml"
    result = CliRunner().invoke(app, [
        "run", str(recipe), "--seeds", "0,1", "--out", str(out),
        "--set", f"data.root={fsdd_dir}", "--set", "train.epochs=4", "--set", "data.max_train_per_class=60",
        "--set", f"defense.key={KEY}", "--set", "train.progress=false"])
    assert result.exit_code == 0, result.output
    run_dirs = list((out / "fsdd_cnn").iterdir())
    assert len(run_dirs) == 1
    return result.output, run_dirs[0]


def test_run_writes_results(short_run):
    output, run_dir = short_run
    for name in ("results.json", "results.md", "recipe.yaml", "protection.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "logs").rglob("metrics.csv"))
    results = json.loads((run_dir / "results.json").read_text())
    assert results["seeds"] == [0, 1] and len(results["per_seed"]) == 2
    assert results["data"]["train_clips"] == 600 and results["data"]["test_clips"] == 300
    for key in ("clean_model/clean_test", "protected_model/clean_test", "protected_model/protected_test",
                "protected_model/mixed_test", "clean_model/protected_test"):
        stat = results["accuracy"][key]
        assert 0.0 <= stat["mean"] <= 1.0 and stat["n"] == 2 and len(stat["values"]) == 2
    # four epochs on 600 clips must already beat chance (0.1) clearly on clean data
    assert results["accuracy"]["clean_model/clean_test"]["mean"] > 0.3
    assert results["provenance"]["versions"]["torch"].startswith("2.")
    assert "commit" in results["provenance"]["git"]
    assert len(results["key_fingerprint"]) == 16
    assert "protected-trained, clean test" in output and "protected-trained, positions mixed" in output


def test_ablation_in_results_and_lab_ablate_reproduces_it(short_run):
    _, run_dir = short_run
    results = json.loads((run_dir / "results.json").read_text())
    assert {"clean", "true", "mixed_positions", "filter_whole_clip"} <= set(results["ablation"])
    assert results["ablation"]["true"]["protected_model"]["values"] == [
        e["protected_model"]["protected_test"]["accuracy"] for e in results["per_seed"]]
    result = CliRunner().invoke(app, ["ablate", str(run_dir)])
    assert result.exit_code == 0, result.output
    again = json.loads(next(run_dir.glob("ablation-*.json")).read_text())["ablation"]
    for name, row in results["ablation"].items():
        for which in ("protected_model", "clean_model"):
            assert again[name][which]["values"] == pytest.approx(row[which]["values"], abs=1e-6), (name, which)


def test_requality_recomputes_and_keeps_history(short_run):
    _, run_dir = short_run
    before = json.loads((run_dir / "results.json").read_text())["quality"]
    result = CliRunner().invoke(app, ["requality", str(run_dir)])
    assert result.exit_code == 0, result.output
    after = json.loads((run_dir / "results.json").read_text())
    assert after["quality_history"][-1]["quality"] == before
    assert after["quality"]["fad"]["value"] == pytest.approx(before["fad"]["value"], rel=1e-6)
    assert after["quality"]["protected_train_vs_clean"] == before["protected_train_vs_clean"]


def test_key_in_no_output_file_nor_terminal(short_run):
    output, run_dir = short_run
    assert KEY not in output
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_rerun_never_overwrites(fsdd_dir, tmp_path):
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "fsdd_cnn.yaml"
    args = ["run", str(recipe), "--seeds", "0", "--out", str(tmp_path), "--set", f"data.root={fsdd_dir}",
            "--set", "train.epochs=1", "--set", "data.max_train_per_class=5", "--set", "data.max_test_per_class=2",
            "--set", "train.progress=false"]
    for _ in range(2):
        assert CliRunner().invoke(app, args).exit_code == 0
    assert len(list((tmp_path / "fsdd_cnn").iterdir())) == 2


@pytest.mark.slow
def test_two_process_ddp_on_cpu(fsdd_dir, tmp_path):
    """devices > 1 works unchanged (here two CPU processes with gloo; on a GPU machine, two GPUs)."""
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "fsdd_cnn.yaml"
    result = CliRunner().invoke(app, [
        "run", str(recipe), "--seeds", "0", "--out", str(tmp_path), "--set", f"data.root={fsdd_dir}",
        "--set", "train.epochs=1", "--set", "data.max_train_per_class=10", "--set", "data.max_test_per_class=5",
        "--set", "train.accelerator=cpu", "--set", "train.devices=2", "--set", "train.progress=false"])
    assert result.exit_code == 0, result.output
    results = json.loads(next(tmp_path.rglob("results.json")).read_text())
    assert results["recipe"]["train"]["devices"] == 2
    assert 0.0 <= results["accuracy"]["protected_model/clean_test"]["mean"] <= 1.0
