"""Configuration as data: strict pydantic sections and one-line error messages.

Every recipe section derives from :class:`Section`: unknown fields are refused with the list of allowed ones (and a
"did you mean" hint), values are type-checked, and objects are frozen once validated.
"""
from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from lab.errors import LabError
from lab.registry import Registry


class Section(BaseModel):
    # validate_default: a default is checked like a value from a file (a default model or defense becomes its
    # validated config, never a bare mapping that fails later)
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=(), validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = list(cls.model_fields)
            for key in data:
                if key not in cls.model_fields:
                    hint = difflib.get_close_matches(str(key), allowed, n=1)
                    did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
                    raise ValueError(f"unknown field {key!r}{did_you_mean}; allowed: {', '.join(allowed)}")
        return data


class PluginConfig(Section):
    """Configuration of a registered plugin (model, defense, attack); ``type`` names the plugin."""

    type: str


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """The first error of a pydantic ValidationError as one line: ``field.path: message (got value)``."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-"))
    loc = ".".join(p for p in [prefix, loc] if p)
    msg = first["msg"].removeprefix("Value error, ")
    got = ""
    if first["type"] not in ("value_error", "missing") and "input" in first and not isinstance(first["input"], dict):
        got = f" (got {first['input']!r})"
    more = len(err.errors()) - 1
    tail = f" [and {more} more problem{'s' if more > 1 else ''}]" if more else ""
    return f"{loc}: {msg}{got}{tail}" if loc else f"{msg}{got}{tail}"


def parse_plugin(registry: Registry, data: Any, where: str, default: str | None = None) -> PluginConfig:
    """Validate a ``{type: name, ...}`` block against the config class of the registered plugin ``name``
    (``default`` when the block names no type)."""
    if isinstance(data, PluginConfig):
        return data
    if isinstance(data, str):
        data = {"type": data}
    if isinstance(data, dict) and "type" not in data and default is not None:
        data = {"type": default, **data}
    if not isinstance(data, dict) or "type" not in data:
        raise LabError(f"{where}: expected a mapping with a 'type' field; valid types: {', '.join(registry.names())}")
    try:
        plugin = registry.get(data["type"])
    except LabError as e:
        raise LabError(f"{where}.type: {e}") from None
    try:
        return plugin.Config.model_validate(data)
    except ValidationError as e:
        raise LabError(format_validation_error(e, where)) from None
