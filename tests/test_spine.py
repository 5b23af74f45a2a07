"""The data spine (lab.spine.ExperimentData) and the one training path (lab.train.fit over a TrainingData)."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import torch

from lab.errors import LabError
from lab.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent
TINY = ["data.max_train_per_class=4", "data.max_test_per_class=2", "train.epochs=1", "train.progress=false",
        "seeds=[0]", "train.num_threads=1"]


def tiny_recipe(fsdd_dir, *more: str):
    return load_recipe(REPO / "recipes" / "fsdd_cnn.yaml", [f"data.root={fsdd_dir}", *TINY, *more])


def calls_in(path: Path) -> set[str]:
    """Names of the functions and methods called in a Python file (``f(...)`` -> f, ``x.y.f(...)`` -> f)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            out.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return out


def test_only_the_spine_loads_datasets_and_builds_the_test_variants():
    """Nothing downstream reloads a dataset or re-applies a defense to a split: load_dataset and the ablation's
    variants are called in lab/spine.py only (lab/data defines them; lab protect works on files, not datasets)."""
    offenders = {}
    for path in sorted((REPO / "lab").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel == "lab/spine.py" or rel.startswith(("lab/data/", "lab/protect/")):
            continue
        found = calls_in(path) & {"load_dataset", "variants"}
        if found:
            offenders[rel] = sorted(found)
    assert not offenders, offenders
    assert {"load_dataset", "variants"} <= calls_in(REPO / "lab" / "spine.py")


def test_splits_are_typed_loaded_once_and_featurised_once(fsdd_dir, monkeypatch):
    import lab.spine as spine
    loads = []
    real = spine.load_dataset
    monkeypatch.setattr(spine, "load_dataset", lambda cfg, log: loads.append(1) or real(cfg, log))
    data = spine.ExperimentData(tiny_recipe(fsdd_dir), log=lambda s: None)
    assert loads == []  # nothing happens before it is asked for
    assert isinstance(data.protected_train, spine.Clips) and len(data.protected_train) == 40
    assert torch.equal(data.protected_train.labels, data.clean_train.labels)
    assert not torch.equal(data.protected_train.waveforms, data.clean_train.waveforms)
    assert set(data.ablation) >= {"clean", "true", "mixed_positions", "filter_whole_clip"}
    assert data.mixed_test is data.ablation["mixed_positions"] and data.test_set("clean_test") is data.clean_test
    a, b = data.features(data.protected_train), data.features(data.protected_train.waveforms)
    assert a is b and data.cache.computed == 1
    assert loads == [1]
    with pytest.raises(KeyError, match="unknown test set"):
        data.test_set("train")


def test_a_finished_runs_protection_is_applied_not_derived_again(fsdd_dir):
    from defenses import build_defense
    from lab.spine import ExperimentData
    recipe = tiny_recipe(fsdd_dir)
    other = tiny_recipe(fsdd_dir, "defense.key=another-key")
    recorded = build_defense(other.defense).derive(10, 8000)
    data = ExperimentData(recipe, protection=recorded, log=lambda s: None)
    fresh = ExperimentData(recipe, log=lambda s: None, dataset=data.dataset)
    expected = recorded.apply(data.train.waveforms, data.train.labels, data.train.lengths)
    assert torch.equal(data.protected_train.waveforms, expected)
    assert not torch.equal(fresh.protected_train.waveforms, expected)
    assert fresh.train is data.train  # the shared dataset was not loaded again


def test_a_batch_transform_sees_every_training_batch_on_its_device_then_the_front_end(fsdd_dir):
    from lab.module import LabModule
    from lab.spine import ExperimentData
    from lab.train import fit
    recipe = tiny_recipe(fsdd_dir, "train.batch_size=16")
    data = ExperimentData(recipe, log=lambda s: None)
    seen = []

    def transform(waveforms, labels, module):
        seen.append((tuple(waveforms.shape), isinstance(module, LabModule), torch.is_grad_enabled()))
        return torch.zeros_like(waveforms)

    training = data.training(data.protected_train, 0, batch_transform=transform)
    assert training.inputs.dim() == 2 and training.feature_shape == data.feature_shape
    fitted = fit(recipe, training, 10, 0)
    assert [s[0] for s in seen] == [(16, 8000), (16, 8000), (8, 8000)]
    assert all(is_module and grad for _, is_module, grad in seen)  # PGD-style attacks get the module, with autograd
    # the model saw the front-end's features of the transformed (silent) audio, through the same front-end
    silent = data.frontend.compute(torch.zeros(2, 8000))
    assert fitted.module.features(torch.zeros(2, 8000)).shape == silent.shape
    plain = data.training(data.protected_train, 0)
    assert plain.inputs is data.features(data.protected_train)  # no transform: the cached features


def test_fits_write_lightning_checkpoints_that_evaluate_and_fine_tune(fsdd_dir, tmp_path):
    from lab.spine import ExperimentData
    from lab.train import evaluate, fit, new_module
    recipe = tiny_recipe(fsdd_dir)
    data = ExperimentData(recipe, log=lambda s: None)
    ckpt = tmp_path / "models" / "clean_model_seed0.ckpt"
    fitted = fit(recipe, data.training(data.clean_train, 0), 10, 0, checkpoint=ckpt)
    assert ckpt.is_file() and not list(ckpt.parent.glob("*-v*"))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["epoch"] == 0 and state["optimizer_states"]
    again = new_module(recipe, data.training(data.clean_train, 0), 10)
    again.load_state_dict(state["state_dict"])
    test = data.features(data.clean_test), data.clean_test.labels
    assert evaluate(again, recipe.train, *test) == evaluate(fitted.module, recipe.train, *test)
    before = {k: v.clone() for k, v in again.state_dict().items()}
    tuned = fit(recipe, data.training(data.clean_train, 0), 10, 0, module=again, resume=ckpt, epochs=2)
    assert tuned.module.trainer.current_epoch == 2  # continued from the checkpoint's epoch
    assert any(not torch.equal(before[k], v) for k, v in tuned.module.state_dict().items())


def test_a_run_reads_its_models_back_from_checkpoints(fsdd_dir, tmp_path):
    from lab.experiment import run
    from lab.rundir import load_run
    recipe = tiny_recipe(fsdd_dir, f"output_dir={tmp_path}")
    results, run_dir = run(recipe, log=lambda s: None)
    finished = load_run(run_dir)
    assert sorted(p.name for p in (run_dir / "models").iterdir()) == ["clean_model_seed0.ckpt",
                                                                      "protected_model_seed0.ckpt"]
    assert finished.checkpoint("protected_model", 0).suffix == ".ckpt"
    from lab.spine import ExperimentData
    from lab.train import evaluate
    data = ExperimentData.from_run(finished, log=lambda s: None)
    acc = evaluate(finished.module("protected_model", 0), recipe.train, data.features(data.clean_test),
                   data.clean_test.labels)["accuracy"]
    assert acc == results["per_seed"][0]["protected_model"]["clean_test"]["accuracy"]
    with pytest.raises(LabError, match="no saved model models/clean_model_seed7.ckpt"):
        finished.checkpoint("clean_model", 7)


def test_loggers_csv_by_default_tensorboard_only_when_installed(fsdd_dir, tmp_path):
    recipe = tiny_recipe(fsdd_dir)
    assert recipe.train.loggers == ["csv"]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        from lab.spine import ExperimentData
        from lab.train import fit
        rec = tiny_recipe(fsdd_dir, "train.loggers=[csv, tensorboard]")
        data = ExperimentData(rec, log=lambda s: None)
        fit(rec, data.training(data.clean_train, 0), 10, 0, log_dir=tmp_path, name="m")
        assert list((tmp_path / "m" / "seed0").glob("events.out.tfevents*"))
        assert (tmp_path / "m" / "seed0" / "metrics.csv").is_file()
    else:
        with pytest.raises(LabError, match="'tensorboard' needs the tensorboard package"):
            tiny_recipe(fsdd_dir, "train.loggers=[tensorboard]")
    with pytest.raises(LabError, match="train.loggers"):
        tiny_recipe(fsdd_dir, "train.loggers=[wandb]")
