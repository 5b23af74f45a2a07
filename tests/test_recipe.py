"""Recipes are validated at the door: each mistake is one line naming the field and what is allowed."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from lab.errors import LabError
from lab.models import MODELS
from lab.recipe import load_recipe, recipe_from_dict

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_validate(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem or recipe.name


def test_shipped_recipe_set():
    names = {p.stem for p in RECIPES}
    assert {"fsdd_cnn", "fsdd_lstm", "fsdd_transformer", "fsdd_raw_cnn", "speechcommands_cnn"} <= names


@pytest.mark.parametrize("data, pattern", [
    ({"data": {"smaple_rate": 8000}}, r"data: unknown field 'smaple_rate' \(did you mean 'sample_rate'\?\); allowed: dataset,"),
    ({"trian": {}}, r"unknown field 'trian' \(did you mean 'train'\?\)"),
    ({"model": {"type": "resnet"}}, r"model.type: unknown model 'resnet'; valid: " + ", ".join(MODELS.names())),
    ({"model": {"type": "cnn", "head": "flat"}}, r"model.head: Input should be 'global' or 'flatten' \(got 'flat'\)"),
    ({"model": {"type": "lstm", "head": "global"}}, r"model: unknown field 'head'; allowed: type, hidden"),
    ({"features": {"type": "mel"}}, r"features.type: unknown feature front-end 'mel' \(did you mean 'logmel'\?\); "
                                    r"valid: logmel, mfcc, raw"),
    ({"defense": {"type": "poscud"}}, r"defense.type: unknown defense 'poscud' \(did you mean 'poscuda'\?\); valid:"),
    ({"defense": {"type": "poscuda", "blur": -1}}, r"defense.blur: Input should be greater than or equal to 0"),
    ({"train": {"epochs": "many"}}, r"train.epochs: Input should be a valid integer"),
    ({"data": {"dataset": "timit"}}, r"data.dataset: Input should be 'fsdd', 'speechcommands' or 'folder'"),
    ({"data": {"split": "speaker"}}, r"split 'speaker' needs test_speaker"),
    ({"defense": {"type": "poscuda", "patch_seconds": 2.0}}, r"patch_seconds \(2.0\) is longer than data.clip_seconds"),
    ({"defense": {"type": "poscuda", "position_range": [0.5, 0.2]}}, r"position_range must satisfy"),
    ({"defense": {"type": "poscuda", "position_range": [0.0, 0.95]}}, r"passes the clip's end"),
    ({"seeds": []}, r"seeds: List should have at least 1 item"),
    ({"seeds": [0, -1]}, r"seeds.1: Input should be greater than or equal to 0 \(got -1\)"),
    ({"features": {"n_mfcc": 80, "n_mels": 64}}, r"features: n_mfcc \(80\) cannot exceed n_mels \(64\)"),
    ({"data": {"sample_rate": -8000}}, r"data.sample_rate: Input should be greater than 0 \(got -8000\)"),
    ({"data": {"sample_rate": "8kHz"}}, r"data.sample_rate: Input should be a valid integer"),
    # an optimised defense's surrogate is checked at the door (it used to fail only after the data had loaded)
    ({"defense": {"type": "em-noise", "key": "k" * 10, "surrogate": {"modle": {"type": "lstm"}}}},
     r"^recipe: defense.surrogate: unknown field 'modle' \(did you mean 'model'\?\); allowed: model, features, train$"),
    ({"defense": {"type": "em-noise", "key": "k" * 10, "surrogate": {"model": {"type": "lsmt"}}}},
     r"defense.surrogate.model.type: unknown model 'lsmt' \(did you mean 'lstm'\?\); valid: "
     + ", ".join(MODELS.names())),
    ({"defense": {"type": "em-noise", "key": "k" * 10, "surrogate": {"features": {"n_mel": 32}}}},
     r"defense.surrogate.features: unknown field 'n_mel' \(did you mean 'n_mels'\?\); allowed: type, n_mfcc"),
    ({"defense": {"type": "robust-em", "key": "k" * 10, "surrogate": {"train": {"lrr": 0.1}}}},
     r"defense.surrogate.train: unknown field 'lrr' \(did you mean 'lr'\?\)"),
    ({"defense": {"type": "poscuda-opt", "key": "k" * 10, "surrogate": {"model": "lstm"}}},
     r"defense.surrogate.model: Input should be a valid dictionary"),
    ({"defense": {"type": "budget", "inner": {"type": "em-noise", "key": "k" * 10,
                                              "surrogate": {"model": {"type": "lstm", "hiden": 8}}}}},
     r"defense.surrogate.model: unknown field 'hiden' \(did you mean 'hidden'\?\)"),
])
def test_bad_recipes_fail_with_one_line(data, pattern):
    with pytest.raises(LabError, match=pattern) as info:
        recipe_from_dict(data)
    assert "\n" not in str(info.value)


def test_a_recipe_with_only_data_gets_validated_defaults():
    """The default model and defense are their validated configs (they were bare mappings, and `lab run` ended in
    AttributeError: 'dict' object has no attribute 'type'); no recipe field is typed Any."""
    from typing import Any

    from defenses.poscuda import PosCUDAConfig
    from lab.models.cnn import CNNConfig
    from lab.recipe import Recipe
    recipe = recipe_from_dict({"data": {"max_train_per_class": 2}})
    assert isinstance(recipe.model, CNNConfig) and recipe.model.type == "cnn" and recipe.model.head == "flatten"
    assert isinstance(recipe.defense, PosCUDAConfig) and recipe.defense.type == "poscuda"
    assert recipe == recipe_from_dict({"data": {"max_train_per_class": 2}, "model": {"type": "cnn"},
                                       "defense": {"type": "poscuda"}})
    public = recipe.public_dict()
    assert public["model"] == CNNConfig(type="cnn").model_dump(mode="json") and public["defense"]["blur"] == 0.3
    assert recipe.model_dump(mode="json")["model"] == public["model"]  # every field, not only 'type'
    assert all(f.annotation is not Any for f in Recipe.model_fields.values())


def test_a_surrogate_is_typed_and_dumped_as_given():
    recipe = recipe_from_dict({"defense": {"type": "em-noise", "key": "k" * 10,
                                           "surrogate": {"model": {"type": "lstm"}}}})
    assert recipe.defense.surrogate.model == {"type": "lstm"} and recipe.defense.surrogate.features is None
    assert recipe.public_dict()["defense"]["surrogate"] == {"model": {"type": "lstm"}}  # as the mapping was
    assert recipe_from_dict({"defense": {"type": "em-noise", "key": "k" * 10}}).public_dict()["defense"][
        "surrogate"] == {}


def test_seeds_and_jobs_options_are_checked_once():
    """The helper every command's --seeds / --jobs goes through: the seeds as a list, or one line naming the option,
    the value and what is allowed."""
    from lab.recipe import check_jobs, command_overrides, parse_seeds
    assert parse_seeds("0, 1,2") == [0, 1, 2] and parse_seeds(None) is None
    assert command_overrides(["train.epochs=1"], "3,4", "out", jobs=2) == ["train.epochs=1", "seeds=[3, 4]",
                                                                           "output_dir=out"]
    for bad in ["", " ", "0,", "a", "-1", "1.5", "0,0", "²", str(2 ** 32)]:
        said = f"--seeds {bad!r}: expected comma-separated whole-number seeds from 0 to 4294967295, each once, " \
               "e.g. --seeds 0,1,2"
        with pytest.raises(LabError, match=f"^{re.escape(said)}$"):
            parse_seeds(bad)
    assert check_jobs(1) == 1 and check_jobs(None) is None
    for bad in (0, -1):
        with pytest.raises(LabError, match=f"^--jobs {bad}: expected a whole number of cells to train at once, 1 or "
                                           "more"):
            command_overrides(None, jobs=bad)


def test_yaml_and_file_errors(tmp_path):
    with pytest.raises(LabError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(LabError, match="not valid YAML"):
        load_recipe(bad)


def test_overrides_and_public_dict_hide_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"defense": {"type": "poscuda", "key": "very-secret-key-1"}}))
    recipe = load_recipe(path, ["train.epochs=3", "model.head=global", "seeds=[4, 5]"])
    assert recipe.train.epochs == 3 and recipe.model.head == "global" and recipe.seeds == [4, 5]
    assert recipe.name == "r"
    public = yaml.safe_dump(recipe.public_dict())
    assert "very-secret-key-1" not in public and "<redacted>" in public
    assert "very-secret-key-1" not in repr(recipe)


@pytest.fixture
def cpu_only(monkeypatch):
    """This machine as a CPU-only one (the checks must not depend on where the tests run)."""
    import lab.recipe
    monkeypatch.setattr(lab.recipe, "_cuda_devices", lambda: 0)
    monkeypatch.setattr(lab.recipe, "_mps_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    import lab.recipe
    monkeypatch.setattr(lab.recipe, "_cuda_devices", lambda: 2)
    monkeypatch.setattr(lab.recipe, "_mps_available", lambda: False)


@pytest.mark.parametrize("train, pattern", [
    ({"accelerator": "gpux"}, r"^recipe: train.accelerator: 'gpux' is not an accelerator \(did you mean 'gpu'\?\); "
                              r"allowed here: auto, cpu$"),
    ({"accelerator": "gpu"}, r"train.accelerator: 'gpu' is not available on this machine \(no CUDA or MPS GPU "
                             r"found\); allowed here: auto, cpu$"),
    ({"precision": "fp16"}, r"train.precision: 'fp16' is not a Lightning precision \(did you mean 'bf16'\?\); "
                            r"allowed: .*16-mixed, bf16-true, bf16-mixed, 32-true, 64-true"),
    ({"strategy": "dpp"}, r"train.strategy: 'dpp' is not a Lightning strategy \(did you mean 'ddp'\?\); allowed "
                          r"here: auto, ddp, .*ddp_spawn"),
    ({"strategy": "fsdp"}, r"train.strategy: 'fsdp' needs accelerator gpu or cuda"),
    ({"devices": "two"}, r"train.devices: expected 'auto', a number of devices .* got 'two'"),
    ({"devices": 0}, r"train.devices: expected 'auto'"),
    ({"devices": [0, 1]}, r"train.devices: \[0, 1\] selects GPUs, but accelerator 'auto' \(here: cpu\) trains on "
                          r"the CPU, .*allowed here: auto or an integer >= 1"),
])
def test_train_flags_fail_at_the_door_with_what_is_allowed_here(cpu_only, train, pattern):
    with pytest.raises(LabError, match=pattern) as info:
        recipe_from_dict({"train": train})
    assert "\n" not in str(info.value)


def test_train_flags_lightning_accepts(cpu_only):
    train = recipe_from_dict({"train": {"precision": 16, "strategy": "ddp_spawn", "devices": "2"}}).train
    assert train.precision == "16" and train.strategy == "ddp_spawn" and train.devices == 2  # YAML numbers as text
    assert recipe_from_dict({"train": {"precision": "bf16-mixed", "devices": "auto"}}).train.devices == "auto"


def test_gpu_devices_are_counted(two_gpus):
    assert recipe_from_dict({"train": {"accelerator": "gpu", "devices": [0, 1]}}).train.devices == [0, 1]
    assert recipe_from_dict({"train": {"accelerator": "cuda", "devices": -1, "strategy": "fsdp"}}).train.devices == -1
    with pytest.raises(LabError, match=r"train.devices: 4 asks for more cuda devices than this machine has \(2\); "
                                       r"allowed here: auto, 1..2, -1 \(all\)"):
        recipe_from_dict({"train": {"accelerator": "gpu", "devices": 4}})
    with pytest.raises(LabError, match=r"train.devices: \[1, 2\] asks for more cuda devices"):
        recipe_from_dict({"train": {"accelerator": "auto", "devices": "1,2"}})


def test_a_run_made_on_a_gpu_reads_back_on_a_cpu(cpu_only):
    """A finished run's recipe is read without checking it against this machine; names are still checked."""
    recipe = recipe_from_dict({"train": {"accelerator": "gpu", "devices": [0, 1]}}, machine=False)
    assert recipe.train.accelerator == "gpu"
    with pytest.raises(LabError, match="'gpux' is not an accelerator"):
        recipe_from_dict({"train": {"accelerator": "gpux"}}, machine=False)


def test_precision_and_strategy_lists_are_lightnings():
    from lightning.pytorch.strategies import StrategyRegistry

    from lab.recipe import precisions, strategies
    assert {"32-true", "16-mixed", "bf16-mixed", "64-true", "32", "16"} <= set(precisions())
    assert set(strategies(machine=False)) == {"auto", *StrategyRegistry.available_strategies()}
