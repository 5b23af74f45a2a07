"""A short real training run through the CLI on the real FSDD copy: files written, numbers sane, key nowhere."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lab.cli import app
from lab.ablation import other_classes

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
        "--set", "data.max_test_per_class=10",
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
    assert results["data"]["train_clips"] == 600 and results["data"]["test_clips"] == 100
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
    for name, entry in after["quality"]["perceptual"]["metrics"].items():  # the same clips: the same scores
        old = before["perceptual"]["metrics"][name]
        assert (entry["n"], entry["n_not_applicable"], entry["not_applicable"]) == \
            (old["n"], old["n_not_applicable"], old["not_applicable"]), name
        assert (entry["mean"], entry["worst5"]) == pytest.approx((old["mean"], old["worst5"]), rel=1e-9), name
    assert "PESQ" in result.output


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


TINY = ["--seeds", "0", "--set", "data.max_train_per_class=10", "--set", "data.max_test_per_class=5",
        "--set", "train.num_threads=1", "--set", "train.progress=false"]


def test_ctrl_c_during_training_exits_130_and_marks_the_folder(fsdd_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    repo = Path(__file__).resolve().parent.parent
    out = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab", "run", "recipes/fsdd_cnn.yaml", "--out", str(out), *TINY,
         "--set", f"data.root={fsdd_dir}", "--set", "train.epochs=500"],
        cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not list(out.rglob("metrics.csv")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    time.sleep(0.5)  # well inside training (500 epochs)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, (stdout, stderr)
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    (run_dir,) = (out / "fsdd_cnn").iterdir()
    assert " ".join(stderr.split()).startswith(
        f"interrupted: kept {run_dir}/ (incomplete: 0 of 1 seed trained, stopped while training seed 0 (clean "
        "model); its results.json is not written")
    assert not (run_dir / "results.json").exists()
    assert (run_dir / "INCOMPLETE").read_text().startswith("interrupted (Ctrl-C): 0 of 1 seed trained")


def test_a_failing_run_is_marked_incomplete_and_readers_skip_it(fsdd_dir, tmp_path, monkeypatch):
    import lab.attacking.cell
    import lab.experiment
    from lab.errors import LabError
    from lab.recipe import load_recipe
    from lab.rundir import find_results, is_finished, load_run

    def broken_evaluate(*args, **kwargs):
        raise RuntimeError("evaluation broke")

    recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "fsdd_cnn.yaml", [
        f"data.root={fsdd_dir}", "data.max_train_per_class=5", "data.max_test_per_class=2", "train.epochs=1",
        "seeds=[0, 1]", "train.num_threads=1", f"output_dir={tmp_path}"])
    monkeypatch.setattr(lab.attacking.cell, "evaluate", broken_evaluate)  # (lab run's seeds are cells)
    said = []
    with pytest.raises(RuntimeError, match="evaluation broke"):
        lab.experiment.run(recipe, log=said.append)
    (run_dir,) = (tmp_path / "fsdd_cnn").iterdir()
    assert not (run_dir / "results.json").exists() and not is_finished(run_dir)
    assert list((run_dir / "models").glob("*.ckpt"))  # the trained models are kept...
    reason = (run_dir / "INCOMPLETE").read_text().splitlines()[0]
    assert reason == "failed (RuntimeError: evaluation broke): 0 of 2 seeds trained, stopped while evaluating seed 0"
    assert any(f"kept {run_dir}/" in s for s in said)  # ...and the log says where
    with pytest.raises(LabError, match="is not a finished lab run \\(INCOMPLETE: failed"):
        load_run(run_dir)
    # a results.json beside an INCOMPLETE marker (a crash between the two) does not count either
    (run_dir / "results.json").write_text("{}")
    with pytest.raises(LabError, match="unfinished run folder\\(s\\) marked INCOMPLETE left out"):
        find_results([tmp_path])


def test_sweep_redoes_a_cell_marked_incomplete(tmp_path, monkeypatch):
    import json

    import lab.experiment
    from lab.rundir import mark_incomplete
    from lab.sweep import cell_id, run_sweep
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "fsdd_cnn.yaml"
    ran = []

    def fake_run(rec, *args, run_dir, **kwargs):
        ran.append(run_dir.name)
        stat = {"mean": 0.5, "std": 0.0, "n": 1, "values": [0.5]}
        results = {"recipe": rec.public_dict(), "seeds": [0], "quality": {},
                   "accuracy": {k: stat for k in ("protected_model/clean_test", "clean_model/clean_test",
                                                   "protected_model/protected_test", "protected_model/mixed_test")}}
        (run_dir / "results.json").write_text(json.dumps(results))
        return results, run_dir

    monkeypatch.setattr(lab.experiment, "run", fake_run)
    grid = {"defense.blur": [0.1, 0.5]}
    run_sweep(recipe, grid, tmp_path, [0], [], log=lambda s: None)
    assert len(ran) == 2
    stale = tmp_path / cell_id({"defense.blur": 0.5}, [0])
    mark_incomplete(stale, "interrupted (Ctrl-C): 0 of 1 seed trained")  # results.json is there, but not final
    said = []
    run_sweep(recipe, grid, tmp_path, [0], [], log=said.append)
    assert ran[2:] == [stale.name]
    assert any("blur=0.5: incomplete from an earlier run, redoing" in s for s in said)
    assert any("blur=0.1: finished earlier, skipped" in s for s in said)


def test_a_recipe_with_only_data_runs(fsdd_dir, tmp_path):
    """A recipe with only a data section used to end in AttributeError: 'dict' object has no attribute 'type'. Its
    defaults (CNN on MFCC, PosCUDA) are validated configs: without a key it stops in one line before the data is
    loaded; with one it trains (a 20-clip subset, one epoch: a few seconds)."""
    from lab.errors import LabError
    recipe = tmp_path / "only_data.yaml"
    recipe.write_text(f"data:\n  root: {fsdd_dir}\n  max_train_per_class: 2\n  max_test_per_class: 1\n")
    args = ["run", str(recipe), "--set", "train.epochs=1", "--seeds", "0", "--out", str(tmp_path / "runs"),
            "--set", "train.progress=false", "--set", "train.num_threads=1"]
    said = CliRunner().invoke(app, args)
    assert isinstance(said.exception, LabError) and "defense: a key is required" in str(said.exception)
    assert "cnn on mfcc, defense poscuda" in said.output and "data:" not in said.output  # stopped before loading
    assert not (tmp_path / "runs").exists()
    result = CliRunner().invoke(app, args + ["--set", f"defense.key={KEY}"])
    assert result.exit_code == 0, result.output
    results = json.loads(next((tmp_path / "runs").rglob("results.json")).read_text())
    assert results["recipe"]["model"]["type"] == "cnn" and results["recipe"]["defense"]["type"] == "poscuda"
    assert results["data"]["train_clips"] == 20


def test_tiny_run_warns_about_its_few_clips(fsdd_dir, tmp_path):
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "fsdd_cnn.yaml"
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(tmp_path), *TINY, "--set",
                                      f"data.root={fsdd_dir}", "--set", "train.epochs=1"])
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "fsdd_cnn").iterdir()
    assert not (run_dir / "INCOMPLETE").exists() and (run_dir / "results.json").is_file()
    text = " ".join(result.output.split())
    assert "warning: FAD backend logmel (clean floor, half vs half): few clips for 64-d embeddings: 50 and 50 " \
           "clips, fewer than 2 x 64 = 128 per set" in text
    assert "warning: FAD backend classifier skipped: the first set has 100 embeddings for 100 dimensions" in text
    assert "few clips for 64-d embeddings" in (run_dir / "results.md").read_text()
    # one epoch on 100 clips does not learn the task: said in one warning line, and the verdict (the last line) says
    # the run cannot tell anything about the protection
    results = json.loads((run_dir / "results.json").read_text())
    clean = results["accuracy"]["clean_model/clean_test"]["mean"]
    assert clean < 0.55, "the tiny run learned the task: this test needs a setting that does not"
    assert (f"warning: the clean-trained model reaches only {clean:.3f} on clean test (chance 0.10; a run says "
            "something from 0.55, halfway from chance to perfect): this setting is too small to say anything about "
            "the protection") in text
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("verdict poscuda: protected-trained clean-test ") and "(n=1) against" in last
    assert last.endswith("inconclusive (the clean-trained model is near chance: the setting is too small)")
    md = (run_dir / "results.md").read_text()
    assert "**Verdict**: poscuda: protected-trained clean-test" in md and "this setting is too small" in md


def test_provenance_records_the_commit_of_the_code_at_the_start(monkeypatch):
    """A commit made while a long run trains is not the code that produced its numbers: the recorded commit is the
    one read when the lab was imported."""
    from lab import provenance as prov
    at_start = dict(prov.CODE_GIT)
    monkeypatch.setattr(prov, "git_commit", lambda: {"commit": "0" * 40, "dirty": False})  # "a later commit"
    assert prov.provenance()["git"] == at_start


def test_a_run_checkpoint_loads_with_lightning_alone(fsdd_dir, tmp_path):
    """``LabModule.load_from_checkpoint`` rebuilds a model ``lab run`` saved (its hyperparameters are in the
    checkpoint, its standardisation in the state dict), equal to ``read_run(...).module(...)``; a checkpoint without
    the hyperparameters (a run made before they were saved) still reads through ``read_run``."""
    import torch

    from lab import read_run
    from lab.module import LabModule
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "fsdd_cnn.yaml"
    result = CliRunner().invoke(app, [
        "run", str(recipe), "--seeds", "0", "--out", str(tmp_path), "--set", f"data.root={fsdd_dir}",
        "--set", "train.epochs=1", "--set", "data.max_train_per_class=5", "--set", "data.max_test_per_class=2",
        "--set", "train.progress=false", "--set", f"defense.key={KEY}"])
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "fsdd_cnn").iterdir()
    run = read_run(run_dir)
    path = run.checkpoint("protected_model", 0)
    loaded = LabModule.load_from_checkpoint(path, map_location="cpu").eval()
    rebuilt = run.module("protected_model", 0)
    assert loaded.hparams["model"] == run.recipe.model.model_dump(mode="json") and loaded.num_classes == 10
    assert not torch.equal(loaded.mean, torch.zeros_like(loaded.mean)), "the standardisation comes from the state"
    x = torch.randn(6, *run.results["data"]["feature_shape"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = rebuilt(x)
        assert torch.equal(loaded(x), expected)
        state = torch.load(path, map_location="cpu", weights_only=False)
        del state["hyper_parameters"]  # as a checkpoint written before LabModule saved its hyperparameters
        torch.save(state, path)
        assert torch.equal(read_run(run_dir).module("protected_model", 0)(x), expected)
