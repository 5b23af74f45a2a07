"""Recipes: one YAML file = one complete experiment, validated once at the door.

A mistake (unknown field, wrong type, unknown model/feature/defense name, impossible value) fails before any work
with one line naming the field and what is allowed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

import defenses
from lab import models
from lab.config import PluginConfig, Section, format_validation_error, parse_plugin
from lab.errors import LabError
from lab.features import FeatureConfig


class DataConfig(Section):
    dataset: Literal["fsdd", "speechcommands", "folder"] = "fsdd"
    root: Path | None = None  # else $LAB_DATA_DIR, else (FSDD) the cache / a download
    split: Literal["official", "speaker", "random"] = "official"
    test_speaker: str | None = None  # FSDD speaker-held-out split
    test_fraction: float = Field(0.2, gt=0, lt=1)  # folder datasets without train/ and test/
    words: str | list[str] | None = None  # Speech Commands: all | digits | commands10 | [word, ...]
    sample_rate: int = Field(8000, gt=0)
    clip_seconds: float = Field(1.0, gt=0)
    crop: Literal["left", "center"] = "left"
    pad: Literal["right", "both"] = "right"
    max_train_per_class: int | None = Field(None, ge=1)
    max_test_per_class: int | None = Field(None, ge=1)
    subset_seed: int = 0

    @model_validator(mode="after")
    def _consistent(self):
        if self.split == "speaker":
            if self.dataset != "fsdd":
                raise ValueError("split 'speaker' is only defined for dataset 'fsdd'")
            if not self.test_speaker:
                raise ValueError("split 'speaker' needs test_speaker (george, jackson, lucas, nicolas, theo, yweweler)")
        if self.split == "random" and self.dataset == "speechcommands":
            raise ValueError("split 'random' is not defined for dataset 'speechcommands' (its official lists give "
                             "the test set); use split 'official'")
        if self.words is not None and self.dataset != "speechcommands":
            raise ValueError("words is only used by dataset 'speechcommands'")
        return self


class TrainConfig(Section):
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    precision: str = "32-true"
    deterministic: bool = True
    num_threads: int | None = Field(None, ge=1)
    progress: bool = True


class EvaluationConfig(Section):
    mixed_seed: int = 0  # draws which other class's position each mixed-position test clip takes


class Recipe(Section):
    name: str = "experiment"
    description: str = ""
    data: DataConfig = Field(default_factory=DataConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    model: Any = Field(default_factory=lambda: {"type": "cnn"})
    train: TrainConfig = Field(default_factory=TrainConfig)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    defense: Any = Field(default_factory=lambda: {"type": "poscuda"})
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    output_dir: Path = Path("runs")

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, v: Any) -> PluginConfig:
        return parse_plugin(models.MODELS, v, "model", default="cnn")

    @field_validator("defense", mode="before")
    @classmethod
    def _defense(cls, v: Any) -> PluginConfig:
        return parse_plugin(defenses.DEFENSES, v, "defense", default="poscuda")

    @model_validator(mode="after")
    def _fits(self):
        """Each defense says whether its configuration fits the recipe's clips (``Defense.check_fits``). A recipe
        without a defense section keeps its default as an unvalidated mapping, as before: nothing to check."""
        if isinstance(self.defense, PluginConfig):
            defenses.DEFENSES.get(self.defense.type).check_fits(self.defense, self.data.clip_seconds)
        return self

    def public_dict(self) -> dict:
        """The resolved recipe without secrets (an inline key is replaced by a note; its fingerprint is recorded
        separately)."""
        out = self.model_dump(mode="json")
        out["model"] = self.model.model_dump(mode="json")
        out["defense"] = self.defense.model_dump(mode="json", exclude={"key"})
        if getattr(self.defense, "key", None) is not None:
            out["defense"]["key"] = "<redacted>"
        return out


def set_path(data: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict (for ``--set`` overrides and sweeps)."""
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        if not isinstance(node.get(p, {}), dict):
            raise LabError(f"--set {dotted}: {p!r} is not a section")
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise LabError(f"--set {text!r}: expected FIELD=VALUE, e.g. train.epochs=5")
    field, value = text.split("=", 1)
    try:
        return field.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise LabError(f"--set {text!r}: the value is not valid YAML") from None


def read_recipe_data(path: Path) -> dict:
    """The raw mapping of a recipe file (``name`` defaults to the file's stem); one-line errors for a missing file
    or bad YAML."""
    if not path.is_file():
        raise LabError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise LabError(f"recipe {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise LabError(f"recipe {path}: expected a mapping of sections at the top level")
    data.setdefault("name", path.stem)
    return data


def load_recipe(path: Path | str, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    data = read_recipe_data(path)
    for item in overrides or []:
        set_path(data, *parse_override(item))
    return recipe_from_dict(data, str(path))


def recipe_from_dict(data: dict, where: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise LabError(f"{where}: {format_validation_error(e)}") from None
    except LabError as e:
        raise LabError(f"{where}: {e}") from None
