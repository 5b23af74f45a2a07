"""Recipes: one YAML file = one complete experiment, validated once at the door.

A mistake (unknown field, wrong type, unknown model/feature/defense name, impossible value) fails before any work
with one line naming the field and what is allowed.
"""
from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, SerializeAsAny, ValidationError, ValidationInfo, field_validator, model_validator

import defenses
from lab import models
from lab.config import PluginConfig, Section, format_validation_error, parse_plugin
from lab.errors import LabError
from lab.features import FeatureConfig

# the largest seed Lightning's seed_everything (numpy) accepts; a larger or a negative one failed with a traceback
# after the data had loaded
MAX_SEED = 2 ** 32 - 1


class DataConfig(Section):
    dataset: Literal["fsdd", "speechcommands", "folder"] = "fsdd"
    root: Path | None = None  # else $LAB_DATA_DIR, else (FSDD) the cache / a download
    test_root: Path | None = None  # folder datasets: test clips from TEST_ROOT/<label>/, training from ROOT/<label>/
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
        if self.test_root is not None and self.dataset != "folder":
            raise ValueError("test_root is only used by dataset 'folder' (test clips from TEST_ROOT/<label>/, "
                             "training clips from ROOT/<label>/)")
        return self


# ---- what Lightning accepts for train.accelerator / devices / strategy / precision, and what this machine has ----

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


def _machine_checks(info: ValidationInfo) -> bool:
    """Whether to check the train section against this machine (``lab run`` and friends), or only against what
    Lightning knows (a finished run read back, perhaps made on another machine)."""
    return (info.context or {}).get("machine", True)


def _cuda_devices() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps_available() -> bool:
    import torch
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def _xla_available() -> bool:
    return importlib.util.find_spec("torch_xla") is not None


def accelerators_here() -> list[str]:
    """The values of train.accelerator that can train on this machine."""
    allowed = ["auto", "cpu"]
    if _cuda_devices():
        allowed += ["gpu", "cuda"]
    if _mps_available():
        allowed += ["mps"] if "gpu" in allowed else ["gpu", "mps"]
    if _xla_available():
        allowed.append("tpu")
    return allowed


def _device_kind(accelerator: str) -> str:
    """What ``accelerator`` trains on here: cpu, cuda, mps or tpu (Lightning's 'auto' and 'gpu' resolved)."""
    if accelerator in ("gpu", "auto"):
        if _cuda_devices():
            return "cuda"
        if _mps_available():
            return "mps"
        return "cpu" if accelerator == "auto" else "cuda"
    return accelerator


def precisions() -> list[str]:
    """Lightning's precision values (its own list: lightning.fabric.connector), as the strings a recipe holds."""
    from typing import get_args

    from lightning.fabric.connector import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS
    return list(get_args(_PRECISION_INPUT_STR)) + list(get_args(_PRECISION_INPUT_STR_ALIAS))


def strategies(machine: bool = True, accelerator: str | None = None) -> list[str]:
    """'auto' and Lightning's registered strategies; with ``machine``, only those that can run here: their packages
    installed (deepspeed, torch_xla), and FSDP only with ``accelerator`` gpu or cuda (Lightning refuses it
    otherwise, even with 'auto')."""
    from lightning.pytorch.strategies import StrategyRegistry
    names = sorted(StrategyRegistry.available_strategies())
    if machine:
        names = [n for n in names if not _strategy_missing(n, accelerator)]
    return ["auto"] + names


def _strategy_missing(name: str, accelerator: str | None) -> str | None:
    """Why strategy ``name`` cannot run here (None when it can)."""
    if name.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        return "needs the deepspeed package, which is not installed here"
    if ("xla" in name or "tpu" in name) and not _xla_available():
        return "needs torch_xla (a TPU), which is not installed here"
    if name.startswith("fsdp") and accelerator not in ("gpu", "cuda"):
        return f"needs accelerator gpu or cuda (Lightning refuses it with {accelerator!r})"
    return None


def _listing(names: list[str]) -> str:
    """Strategy names, the ``*_find_unused_parameters_true/false`` variants folded into one note."""
    variant = "_find_unused_parameters_"
    shown = [n for n in names if variant not in n]
    note = " (and ddp*_find_unused_parameters_true/false)" if len(shown) < len(names) else ""
    return ", ".join(shown) + note


def _hint(value: str, allowed) -> str:
    close = difflib.get_close_matches(value, list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _parse_devices(value: Any) -> int | str | list[int]:
    """``devices`` as 'auto', an int (>= 1, or -1 for all GPUs) or a list of distinct GPU indices; the string forms
    Lightning takes ("2", "-1", "0,1") are turned into those."""
    wanted = ("expected 'auto', a number of devices (1, 2, ...; -1 for all GPUs) or a list of GPU indices such as "
              f"[0, 1]; got {value!r}")
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        try:
            parts = [int(p) for p in text.strip("[]").split(",") if p.strip()]
        except ValueError:
            raise ValueError(wanted) from None
        if not parts:
            raise ValueError(wanted)
        value = parts[0] if ("," not in text and "[" not in text) else parts
    if isinstance(value, bool):
        raise ValueError(wanted)
    if isinstance(value, int):
        if value == 0 or value < -1:
            raise ValueError(wanted)
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                for v in value):
        if len(set(value)) != len(value):
            raise ValueError(f"the GPU indices must be distinct; got {value!r}")
        return value
    raise ValueError(wanted)


class TrainConfig(Section):
    """How to train. ``accelerator``, ``devices``, ``strategy`` and ``precision`` are Lightning's Trainer flags,
    checked here: a name Lightning does not know, or hardware this machine does not have, fails at the door with the
    values allowed here."""

    epochs: int = Field(15, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    accelerator: str = "auto"
    devices: int | str | list[int] = 1
    strategy: str = "auto"
    precision: str = "32-true"
    deterministic: bool = True
    num_threads: int | None = Field(None, ge=1)
    progress: bool = True
    loggers: list[Literal["csv", "tensorboard"]] = Field(default_factory=lambda: ["csv"])

    @field_validator("loggers")
    @classmethod
    def _loggers(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if "tensorboard" in v and _machine_checks(info):
            import importlib.util
            if not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
                raise ValueError("'tensorboard' needs the tensorboard package (pip install tensorboard); installed "
                                 "here: csv")
        return list(dict.fromkeys(v))

    @field_validator("accelerator")
    @classmethod
    def _accelerator(cls, v: str, info: ValidationInfo) -> str:
        machine = _machine_checks(info)
        here = accelerators_here() if machine else list(ACCELERATORS)
        if v not in ACCELERATORS:
            raise ValueError(f"{v!r} is not an accelerator{_hint(v, ACCELERATORS)}; allowed"
                             f"{' here' if machine else ''}: {', '.join(here)}")
        if v not in here:
            what = {"gpu": "no CUDA or MPS GPU", "cuda": "no CUDA GPU", "mps": "no Apple MPS device",
                    "tpu": "torch_xla is not installed"}[v]
            raise ValueError(f"{v!r} is not available on this machine ({what} found); allowed here: "
                             f"{', '.join(here)}")
        return v

    @field_validator("devices", mode="before")
    @classmethod
    def _devices_form(cls, v: Any) -> Any:
        return _parse_devices(v)

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: int | str | list[int], info: ValidationInfo) -> int | str | list[int]:
        accelerator = info.data.get("accelerator")
        if v == "auto" or accelerator is None or not _machine_checks(info):
            return v
        kind = _device_kind(accelerator)
        on = f"accelerator {accelerator!r}" + (f" (here: {kind})" if kind != accelerator else "")
        if kind == "cpu":
            if isinstance(v, list) or v < 1:
                raise ValueError(f"{v!r} selects GPUs, but {on} trains on the CPU, where devices is a number of "
                                 "processes; allowed here: auto or an integer >= 1")
        elif kind in ("cuda", "mps"):
            count = _cuda_devices() if kind == "cuda" else int(_mps_available())
            indices = v if isinstance(v, list) else list(range(count if v == -1 else v))
            if any(i >= count for i in indices):
                raise ValueError(f"{v!r} asks for more {kind} devices than this machine has ({count}); allowed here: "
                                 f"auto, 1..{count}, -1 (all) or a list of indices from 0 to {count - 1}")
        return v

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str, info: ValidationInfo) -> str:
        if v == "auto":
            return v
        machine = _machine_checks(info)
        accelerator = info.data.get("accelerator")
        allowed = strategies(machine, accelerator)
        if v not in allowed:
            why = _strategy_missing(v, accelerator) if v in strategies(machine=False) else None
            why = why or f"is not a Lightning strategy{_hint(v, allowed)}"
            raise ValueError(f"{v!r} {why}; allowed{' here' if machine else ''}: {_listing(allowed)}")
        return v

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_form(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v  # YAML reads 32 and 16 as numbers

    @field_validator("precision")
    @classmethod
    def _precision(cls, v: str, info: ValidationInfo) -> str:
        if v == "32-true":
            return v
        allowed = precisions()
        if _machine_checks(info) and importlib.util.find_spec("transformer_engine") is None:
            if v.startswith("transformer-engine"):
                raise ValueError(f"{v!r} needs the transformer_engine package, which is not installed here; "
                                 f"allowed here: {', '.join(p for p in allowed if not p.startswith('transformer'))}")
        if v not in allowed:
            raise ValueError(f"{v!r} is not a Lightning precision{_hint(v, allowed)}; allowed: {', '.join(allowed)}")
        return v


class EvaluationConfig(Section):
    mixed_seed: int = 0  # draws which other class's position each mixed-position test clip takes


class Recipe(Section):
    name: str = "experiment"
    description: str = ""
    data: DataConfig = Field(default_factory=DataConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    # a registered model's / defense's config (validated by the plugin's own Config, the default too); SerializeAsAny:
    # dumped with all the fields of that Config, not only PluginConfig's ``type``
    model: SerializeAsAny[PluginConfig] = Field(default_factory=lambda: {"type": "cnn"})
    train: TrainConfig = Field(default_factory=TrainConfig)
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(default_factory=lambda: [0], min_length=1)
    defense: SerializeAsAny[PluginConfig] = Field(default_factory=lambda: {"type": "poscuda"})
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
    def _fits(self, info: ValidationInfo):
        """Each defense says whether its configuration fits the recipe's clips (``Defense.check_fits``), and the
        surrogate recipe of a defense that trains one (``Defense.surrogate_overrides``) is validated here too, so a
        typo in ``defense.surrogate`` fails at the door, not after the data has loaded."""
        defenses.DEFENSES.get(self.defense.type).check_fits(self.defense, self.data.clip_seconds)
        if not (info.context or {}).get("surrogate"):  # (a surrogate recipe does not check its own surrogate)
            for overrides in defenses.build_defense(self.defense).surrogate_variants():
                if overrides:
                    surrogate_recipe(self, overrides)
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


SURROGATE_SECTIONS = ("model", "features", "train")


def surrogate_recipe(recipe: Recipe, overrides: dict) -> Recipe:
    """``recipe`` with the ``model`` / ``features`` / ``train`` sections that a defense's surrogate changes
    (a model of another ``type`` replaces the section; otherwise the fields are merged), validated again (not
    against this machine's hardware). A mistake is one line under ``defense.surrogate``."""
    data = {name: getattr(recipe, name) for name in type(recipe).model_fields}
    for section, change in (overrides or {}).items():
        if section not in SURROGATE_SECTIONS or not isinstance(change, dict):
            raise LabError(f"defense.surrogate: {section!r} is not a section a surrogate may change; allowed: "
                           f"{', '.join(SURROGATE_SECTIONS)} (each a mapping)")
        current = getattr(recipe, section).model_dump(mode="json")
        replaces = section == "model" and change.get("type", current["type"]) != current["type"]
        data[section] = dict(change) if replaces else {**current, **change}
    try:
        return Recipe.model_validate(data, context={"machine": False, "surrogate": True})
    except ValidationError as e:
        raise LabError(format_validation_error(e, "defense.surrogate")) from None
    except LabError as e:  # a plugin's message starts with its field (model.type: unknown model ...)
        raise LabError(f"defense.surrogate.{e}") from None


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


def parse_seeds(text: str | None, option: str = "--seeds") -> list[int] | None:
    """``--seeds 0,1,2`` as ``[0, 1, 2]`` (None when the option was not given). Anything else (an empty list, a
    word, a negative or repeated seed) is a one-line error naming the option, the value and what is allowed, before
    any work: an empty ``--seeds ""`` used to fall back on the recipe's seeds silently."""
    if text is None:
        return None
    allowed = f"expected comma-separated whole-number seeds from 0 to {MAX_SEED}, each once, e.g. {option} 0,1,2"
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or not all(p.isascii() and p.isdigit() for p in parts):
        raise LabError(f"{option} {text!r}: {allowed}")
    seeds = [int(p) for p in parts]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated or max(seeds) > MAX_SEED:
        raise LabError(f"{option} {text!r}: {allowed}")
    return seeds


def check_jobs(jobs: int | None, option: str = "--jobs") -> int | None:
    """``--jobs N``: N >= 1 (how many cells train at once), else a one-line error before any work (``--jobs 0``
    and ``--jobs -1`` used to train one cell at a time as if nothing were wrong)."""
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise LabError(f"{option} {jobs}: expected a whole number of cells to train at once, 1 or more "
                       f"(e.g. {option} 2)")
    return jobs


def command_overrides(set_: list[str] | None, seeds: str | None = None, out: Path | str | None = None,
                      jobs: int | None = None) -> list[str]:
    """A command's ``--set`` overrides with its ``--seeds 0,1,2`` and ``--out DIR`` options added as overrides of
    ``seeds`` and ``output_dir`` (what ``lab run``, ``lab attack`` and ``lab rotate`` share). ``--seeds`` and
    ``--jobs`` (where the command has it) are checked here, before any work (:func:`parse_seeds`,
    :func:`check_jobs`)."""
    overrides = list(set_ or [])
    check_jobs(jobs)
    seed_list = parse_seeds(seeds)
    if seed_list is not None:
        overrides.append(f"seeds={seed_list}")
    if out:
        overrides.append(f"output_dir={out}")
    return overrides


def load_recipe(path: Path | str, overrides: list[str] | None = None) -> Recipe:
    """Read and validate a recipe file, with ``--set``-style overrides (``["train.epochs=1", ...]``).

    Every mistake raises :class:`lab.errors.LabError` with one line naming the field and what is allowed, including
    training settings this machine cannot run (e.g. ``train.accelerator: gpu`` without a GPU)."""
    path = Path(path)
    data = read_recipe_data(path)
    for item in overrides or []:
        set_path(data, *parse_override(item))
    return recipe_from_dict(data, str(path))


def recipe_from_dict(data: dict, where: str = "recipe", machine: bool = True) -> Recipe:
    """Validate a recipe given as a mapping (as a YAML file holds it). ``machine``: also check that the train
    section can run on this machine (off when reading back a run that may have been made elsewhere)."""
    try:
        return Recipe.model_validate(data, context={"machine": machine})
    except ValidationError as e:
        raise LabError(f"{where}: {format_validation_error(e)}") from None
    except LabError as e:
        raise LabError(f"{where}: {e}") from None
