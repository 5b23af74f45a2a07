"""Recipes are validated at the door: each mistake is one line naming the field and what is allowed."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lab.errors import LabError
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
    ({"model": {"type": "resnet"}}, r"model.type: unknown model 'resnet'; valid: cnn, lstm, transformer"),
    ({"model": {"type": "cnn", "head": "flat"}}, r"model.head: Input should be 'global' or 'flatten' \(got 'flat'\)"),
    ({"model": {"type": "lstm", "head": "global"}}, r"model: unknown field 'head'; allowed: type, hidden"),
    ({"features": {"type": "mel"}}, r"features.type: Input should be 'raw', 'mfcc' or 'logmel' \(got 'mel'\)"),
    ({"defense": {"type": "poscud"}}, r"defense.type: unknown defense 'poscud' \(did you mean 'poscuda'\?\); valid:"),
    ({"defense": {"type": "poscuda", "blur": -1}}, r"defense.blur: Input should be greater than or equal to 0"),
    ({"train": {"epochs": "many"}}, r"train.epochs: Input should be a valid integer"),
    ({"data": {"dataset": "timit"}}, r"data.dataset: Input should be 'fsdd', 'speechcommands' or 'folder'"),
    ({"data": {"split": "speaker"}}, r"split 'speaker' needs test_speaker"),
    ({"defense": {"type": "poscuda", "patch_seconds": 2.0}}, r"patch_seconds \(2.0\) is longer than data.clip_seconds"),
    ({"defense": {"type": "poscuda", "position_range": [0.5, 0.2]}}, r"position_range must satisfy"),
    ({"defense": {"type": "poscuda", "position_range": [0.0, 0.95]}}, r"passes the clip's end"),
    ({"seeds": []}, r"seeds: List should have at least 1 item"),
    ({"features": {"n_mfcc": 80, "n_mels": 64}}, r"features: n_mfcc \(80\) cannot exceed n_mels \(64\)"),
    ({"data": {"sample_rate": -8000}}, r"data.sample_rate: Input should be greater than 0 \(got -8000\)"),
    ({"data": {"sample_rate": "8kHz"}}, r"data.sample_rate: Input should be a valid integer"),
])
def test_bad_recipes_fail_with_one_line(data, pattern):
    with pytest.raises(LabError, match=pattern) as info:
        recipe_from_dict(data)
    assert "\n" not in str(info.value)


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
