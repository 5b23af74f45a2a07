"""What a matrix runs: the attacks' configs (recipe blocks and --option), the defenses' configs (the recipe's own
and the matched baselines at equal distortion), and the recipe with each defense, all validated before any training.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

import attacks
from defenses.base import DEFENSES
from lab.config import format_validation_error, parse_plugin
from lab.errors import LabError
from lab.recipe import Recipe, parse_override, read_recipe_data, recipe_from_dict, set_path


def attack_configs(names: list[str], recipe_blocks: list[dict], options: list[str]) -> list:
    """Validated attack configs for ``names``: each starts from its block in the recipe's ``attack:`` section (if
    any), then ``options`` (``FIELD=VALUE``, or ``ATTACK.FIELD=VALUE`` to target one attack) are applied. Fails
    before any training on an unknown attack, field or impossible value."""
    by_type = {}
    for block in recipe_blocks:
        if not isinstance(block, dict) or "type" not in block:
            raise LabError(f"attack: each block needs a 'type' (one of {', '.join(attacks.ATTACKS.names())})")
        by_type[block["type"]] = dict(block)
    for block in by_type.values():  # every block is checked, used or not
        parse_plugin(attacks.ATTACKS, block, "attack")
    out = []
    for name in names:
        attacks.ATTACKS.get(name)  # unknown name: one line listing the valid ones
        data = dict(by_type.get(name, {"type": name}))
        for item in options:
            field_, value = parse_override(item)
            target, _, rest = field_.partition(".")
            if rest and target in attacks.ATTACKS:
                if target == name:
                    set_path(data, rest, value)
            elif len(names) == 1:
                set_path(data, field_, value)
            else:
                raise LabError(f"--option {item!r}: with several attacks, name the attack: ATTACK.{field_}=...")
        out.append(parse_plugin(attacks.ATTACKS, data, f"attack ({name})"))
    return out


def load_attack_recipe(path: Path | str, overrides: list[str] | None = None) -> tuple[Recipe, list[dict]]:
    """The recipe (validated as for ``lab run``) and its ``attack:`` blocks (a mapping or a list of mappings)."""
    path = Path(path)
    data = read_recipe_data(path)
    blocks = data.pop("attack", None) or []
    blocks = [blocks] if isinstance(blocks, dict) else blocks
    if not isinstance(blocks, list):
        raise LabError(f"recipe {path}: attack: expected a mapping or a list of mappings with a 'type'")
    for item in overrides or []:
        set_path(data, *parse_override(item))
    return recipe_from_dict(data, str(path)), blocks


def baselines() -> list[str]:
    """The defenses that declare themselves matched baselines (``Defense.matched_baseline``), in their declared
    order: ``lab attack --type all`` compares the recipe's defense with them."""
    ranks = {name: DEFENSES.get(name).matched_baseline for name in DEFENSES.names()}
    return sorted((name for name, rank in ranks.items() if rank is not None), key=lambda name: (ranks[name], name))


def defense_configs(recipe: Recipe, names: list[str], snr_db: float | None,
                    options: list[str] | None = None) -> list:
    """Defense configs for ``names``: the recipe's own defense as it is; every other one configured like it by its
    own ``Defense.matched_config`` (the recipe's key, and what else it shares with it) at ``snr_db`` (rounded to
    0.01 dB; equal distortion, for the defenses that take an SNR), when given. ``options``
    (``DEFENSE.FIELD=VALUE``, ``lab attack --defense-option``) then set a field of one column's defense, e.g.
    ``em-noise.mode=class-wise``; they do not change the recipe's own defense (``--set defense.FIELD=...`` does)."""
    own = recipe.defense
    snr = None if snr_db is None else round(snr_db, 2)
    extra: dict[str, list[tuple[str, Any]]] = {}
    for item in options or []:
        field_, value = parse_override(item)
        target, _, rest = field_.partition(".")
        if not rest or target not in names:
            raise LabError(f"--defense-option {item!r}: expected DEFENSE.FIELD=VALUE with DEFENSE one of the "
                           f"columns ({', '.join(names)})")
        if target == own.type:
            raise LabError(f"--defense-option {item!r}: {target} is the recipe's own defense; change it with "
                           f"--set defense.{rest}=...")
        extra.setdefault(target, []).append((rest, value))
    out = []
    for name in names:
        defense = DEFENSES.get(name)
        if name == own.type:
            out.append(own)
            continue
        data: dict[str, Any] = {"type": name, **defense.matched_config(own, snr)}
        for field_, value in extra.get(name, []):
            set_path(data, field_, value)
        out.append(parse_plugin(DEFENSES, data, f"defense ({name})"))
    return out


def column_name(cfg, variant: str = "") -> str:
    """The table column of an attack's model: the attack's type, then the variant its after_training named."""
    return f"{cfg.type} {variant}".strip()


def with_defense(recipe: Recipe, defense) -> Recipe:
    """The recipe with another defense, validated again (a patch must still fit the clip, ...)."""
    data = {name: getattr(recipe, name) for name in type(recipe).model_fields}
    data["defense"] = defense
    try:
        return type(recipe).model_validate(data)
    except ValidationError as e:
        raise LabError(f"defense {defense.type}: {format_validation_error(e)}") from None
