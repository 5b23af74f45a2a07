"""The model store (``LAB_MODEL_STORE``): a clean model trained by one run is reused by a later run (another
process, another defense) with the same data, features, model and training, giving the same numbers; any change
of what the model depends on trains a new one; unset, nothing is stored."""
from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from lab.cli import app

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "fsdd_cnn.yaml"


def tiny_run(fsdd_dir, out: Path, *extra: str) -> tuple[str, dict, Path]:
    result = CliRunner().invoke(app, [
        "run", str(RECIPE), "--seeds", "0", "--out", str(out), "--set", f"data.root={fsdd_dir}",
        "--set", "train.epochs=2", "--set", "data.max_train_per_class=8", "--set", "data.max_test_per_class=3",
        "--set", "train.progress=false", *extra])
    assert result.exit_code == 0, result.output
    (run_dir,) = (out / "fsdd_cnn").iterdir()
    return result.output, json.loads((run_dir / "results.json").read_text()), run_dir


def clean_numbers(results: dict) -> dict:
    """The clean model's numbers that do not depend on the defense (its protected test sets do)."""
    seed = results["per_seed"][0]["clean_model"]
    return {"summary": results["accuracy"]["clean_model/clean_test"], "clean_test": seed["clean_test"],
            "convergence": seed["convergence"], "ablation": seed["ablation"]["clean"]}


def test_a_second_run_reuses_the_stored_clean_model_and_gets_the_same_numbers(fsdd_dir, tmp_path, monkeypatch):
    store = tmp_path / "store"
    monkeypatch.setenv("LAB_MODEL_STORE", str(store))
    first_out, first, first_dir = tiny_run(fsdd_dir, tmp_path / "a", "--set", "defense.key=store-test-key-one")
    assert "trained clean model" in first_out and "model store" not in first_out
    (entry,) = [p for p in store.iterdir() if not p.name.startswith(".")]
    assert (entry / "model.ckpt").is_file() and (entry / "log" / "clean_model" / "seed0" / "metrics.csv").is_file()

    # another defense (another key): the clean model does not depend on it
    second_out, second, second_dir = tiny_run(fsdd_dir, tmp_path / "b", "--set", "defense.key=store-test-key-two")
    assert "clean model reused from the model store" in second_out and "trained clean model" not in second_out
    assert clean_numbers(second) == clean_numbers(first)
    assert "clean_model" in first["per_seed"][0]["train_seconds"]
    assert "clean_model" not in second["per_seed"][0]["train_seconds"]  # reused: no training time of its own
    ckpt = "models/clean_model_seed0.ckpt"
    assert (second_dir / ckpt).read_bytes() == (first_dir / ckpt).read_bytes()
    assert (second_dir / "logs/clean_model/seed0/metrics.csv").read_text() == \
        (first_dir / "logs/clean_model/seed0/metrics.csv").read_text()
    # the protected models differ (other keys) and were trained, not taken from the store
    assert "trained protected model" in second_out

    # a change of what the clean model depends on (one more epoch) trains and stores a new one
    third_out, _, _ = tiny_run(fsdd_dir, tmp_path / "c", "--set", "defense.key=store-test-key-two",
                               "--set", "train.epochs=3")
    assert "trained clean model" in third_out and "model store" not in third_out
    assert len([p for p in store.iterdir() if not p.name.startswith(".")]) == 2


def test_without_the_variable_nothing_is_stored(fsdd_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("LAB_MODEL_STORE", raising=False)
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    out, _, _ = tiny_run(fsdd_dir, tmp_path / "a", "--set", "defense.key=store-test-key-one")
    assert "model store" not in out
    assert not any(tmp_path.rglob("meta.json"))


def test_a_store_that_cannot_be_written_or_read_never_fails_the_run(fsdd_dir, tmp_path, monkeypatch):
    """The store saves time only: a store path that is a file (not a folder) leaves the run complete, saying the model
    was not kept; a damaged entry (its meta.json gone) is not used, the model is trained and the run completes."""
    not_a_folder = tmp_path / "store-file"
    not_a_folder.write_text("")
    monkeypatch.setenv("LAB_MODEL_STORE", str(not_a_folder))
    out, results, _ = tiny_run(fsdd_dir, tmp_path / "a", "--set", "defense.key=store-test-key-one")
    assert "not kept in the model store" in out and "clean_model" in results["per_seed"][0]["train_seconds"]

    store = tmp_path / "store"
    monkeypatch.setenv("LAB_MODEL_STORE", str(store))
    tiny_run(fsdd_dir, tmp_path / "b", "--set", "defense.key=store-test-key-one")
    (entry,) = [p for p in store.iterdir() if not p.name.startswith(".")]
    (entry / "meta.json").unlink()
    out, results, run_dir = tiny_run(fsdd_dir, tmp_path / "c", "--set", "defense.key=store-test-key-one")
    assert "entry is not used" in out and "trained clean model" in out
    assert (run_dir / "models" / "clean_model_seed0.ckpt").is_file() and (run_dir / "results.json").is_file()
