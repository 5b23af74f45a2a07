"""Convergence: lab run and lab report give the clean-test peak over epochs and its epoch beside the final value."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lab.cli import app
from lab.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent


def test_run_and_report_give_the_peak_over_epochs_beside_the_last(fsdd_dir, tmp_path):
    from lab.experiment import run
    recipe = load_recipe(REPO / "recipes" / "fsdd_cnn.yaml", [
        f"data.root={fsdd_dir}", "data.max_train_per_class=10", "data.max_test_per_class=3", "train.epochs=3",
        "train.progress=false", "seeds=[0, 1]", "train.num_threads=1", f"output_dir={tmp_path}"])
    results, run_dir = run(recipe, log=lambda s: None)
    for entry in results["per_seed"]:
        for which in ("clean_model", "protected_model"):
            c = entry[which]["convergence"]
            logged = [float(r["val_acc"]) for r in csv.DictReader(open(run_dir / "logs" / which /
                                                                         f"seed{entry['seed']}" / "metrics.csv"))
                      if r.get("val_acc")]
            # the same numbers as the learning curves (the CSV holds them as float32)
            assert c["per_epoch"] == pytest.approx(logged, abs=1e-6) and len(logged) == 3
            # the last epoch is the one evaluated
            assert c["final"] == pytest.approx(entry[which]["clean_test"]["accuracy"], abs=1e-6)
            logged = c["per_epoch"]
            assert c["peak"] == max(logged) and logged[c["peak_epoch"] - 1] == c["peak"]
            assert logged.index(c["peak"]) == c["peak_epoch"] - 1  # the first epoch that reached it
            from lab.train import settled_epoch
            assert c["settled_epoch"] == settled_epoch(logged) and 1 <= c["settled_epoch"] <= 3
    summary = results["convergence"]["protected_model"]
    assert summary["peak"]["n"] == 2 and summary["peak"]["mean"] >= summary["final"]["mean"]
    assert "peak over epochs" in (run_dir / "results.md").read_text()
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(out), "--no-spectrograms"],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    rows = {(r["model"], r["measure"]): r for r in csv.DictReader(open(out / "convergence.csv"))}  # tidy
    assert sorted({m for m, _ in rows}) == ["clean-trained", "protected-trained"]
    peak = rows["protected-trained", "epoch of the peak"]
    epochs = [e["protected_model"]["convergence"]["peak_epoch"] for e in results["per_seed"]]
    assert [float(v) for v in peak["values"].split()] == epochs and float(peak["mean"]) == pytest.approx(
        sum(epochs) / len(epochs)) and peak["n"] == str(len(epochs))
    settled = rows["protected-trained", "settled from epoch (±0.02 of the last 10)"]
    assert [float(v) for v in settled["values"].split()] == [
        e["protected_model"]["convergence"]["settled_epoch"] for e in results["per_seed"]]
    last = rows["protected-trained", "last epoch"]
    assert float(last["mean"]) == pytest.approx(summary["final"]["mean"]) and last["n"] == "2"
    assert "## Convergence" in (out / "report.md").read_text()


def test_settled_epoch_is_where_the_curve_stops_moving():
    from lab.train import settled_epoch
    rising = [0.1, 0.5, 0.8, 0.9] + [0.95] * 10
    assert settled_epoch(rising) == 5  # from epoch 5 every value is the last-10 mean
    assert settled_epoch([0.1, 0.5, 0.8, 0.94, 0.96] + [0.95] * 10) == 4  # 0.94 is within 0.02 of 0.95
    # a curve still climbing at the end settles only at its last epochs
    assert settled_epoch([i / 20 for i in range(20)]) == 20
    # a late fall is movement: the settled epoch comes after it
    assert settled_epoch([0.9] * 10 + [0.5] * 10) == 11
    assert settled_epoch([0.7]) == 1
    with pytest.raises(ValueError):
        settled_epoch([])
