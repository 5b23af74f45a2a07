"""``lab attack``: train on protected data the way an unauthorised trainer would, and measure what survives.

recipe + attack(s) ─► for each defense (none = clean reference, the recipe's, baselines at the same distortion):
    prepare (protect, features) ─► per seed: no-attack model, then each attack's model(s) ─► clean-test accuracy
  ─► one table (rows: no attack, each attack, then the worst case over them; columns: defenses) as JSON, Markdown,
     CSV

Training under an attack reuses the lab's Trainer set-up: data attacks change the training set (features computed
once, cached), batch attacks run their transform on the waveforms of every batch and compute features per batch
with the recipe's torchaudio front-end (batched), procedure attacks get the model inside the training step or after
training.
"""
from __future__ import annotations

import copy
import csv
import datetime as dt
import io
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, TensorDataset

import attacks
from attacks.base import Attack, AttackContext, build_attack
from defenses.base import DEFENSES
from lab.config import format_validation_error, parse_plugin
from pydantic import ValidationError
from lab.errors import LabError
from lab.experiment import Prepared, prepare
from lab.features import FeatureCache, FrontEnd
from lab.models import build_model
from lab.module import LabModule, standardisation
from lab.provenance import provenance
from lab.quality import snr_summary
from lab.recipe import Recipe, parse_override, read_recipe_data, recipe_from_dict, set_path
from lab.train import evaluate, make_trainer

NO_ATTACK = "no attack"
WORST = "worst case"


# --- training under an attack ------------------------------------------------------------------------------------

class TrainOnlyModule(LabModule):
    """The LabModule the attack path trains. Nothing is monitored while it trains (only the final model's clean-test
    accuracy counts), so it has no validation step: LabModule's would make Lightning warn "You defined a
    `validation_step` but have no `val_dataloader`" on every fit. Lightning treats its own (empty) hook as "not
    defined"."""

    validation_step = L.LightningModule.validation_step


class AttackedModule(TrainOnlyModule):
    """A LabModule trained on WAVEFORM batches: the attack's per-batch transform runs first, then the recipe's
    feature front-end (batched, differentiable, so PGD and learnable filters get gradients through it).
    Evaluation still takes features, like every LabModule."""

    def __init__(self, model, num_classes, lr, weight_decay, mean, std, frontend: FrontEnd, attack: Attack | None):
        super().__init__(model, num_classes, lr, weight_decay, mean, std)
        self.feature_type = frontend.cfg.type
        self.front = frontend.transform  # a torchaudio module (moves with the LightningModule), None for raw
        self.attack = attack

    def features(self, waveforms: torch.Tensor) -> torch.Tensor:
        """The front-end of lab.features.FrontEnd, with gradients."""
        if self.front is None:
            return waveforms.unsqueeze(1)
        y = self.front(waveforms)
        return torch.log(y + 1e-6) if self.feature_type == "logmel" else y

    def training_step(self, batch, i):
        x, y = batch
        if self.attack is not None and self.attack.per_batch:
            x = self.attack.transform_batch(x, y, self)
        with torch.no_grad():
            feats = self.features(x)
        return super().training_step((feats, y), i)


def _train(recipe: Recipe, inputs: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, num_classes: int,
           seed: int, make_module: Callable[..., LabModule], epochs: int | None = None,
           progress: bool = False) -> tuple[LabModule, float]:
    """Train a new module of the recipe's model on ``inputs`` (features, or waveforms for an AttackedModule) the way
    lab.train.fit does (same seeding, initialisation, standardisation from ``feats``, shuffling, Trainer), without a
    validation set; returns the module and the training seconds."""
    L.seed_everything(seed, workers=True, verbose=False)
    cfg = recipe.train
    model = build_model(recipe.model, tuple(feats.shape[1:]), num_classes, recipe.features.type == "raw",
                        recipe.data.sample_rate)
    mean, std = standardisation(feats)
    module = make_module(model, num_classes, cfg.lr, cfg.weight_decay, mean, std)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=cfg.batch_size, shuffle=True, generator=gen)
    trainer = make_trainer(cfg, epochs or cfg.epochs, False, progress)
    start = time.perf_counter()
    trainer.fit(module, loader)
    return module, time.perf_counter() - start


def fit_features(recipe: Recipe, feats: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int,
                 progress: bool = False) -> tuple[LabModule, float]:
    """Train the recipe's model on features (no attack, or a data attack's training set); the module and seconds."""
    return _train(recipe, feats, feats, labels, num_classes, seed, TrainOnlyModule, progress=progress)


def fit_waveforms(recipe: Recipe, waveforms: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int,
                  frontend: FrontEnd, attack: Attack | None, epochs: int | None = None,
                  progress: bool = False) -> tuple[LabModule, float]:
    """Train the recipe's model on waveform batches under ``attack``'s per-batch transform; returns the module and
    the training seconds. Standardisation comes from the untransformed training features."""
    return _train(recipe, waveforms, frontend(waveforms), labels, num_classes, seed,
                  lambda *args: AttackedModule(*args, frontend, attack), epochs, progress)


def finetune(recipe: Recipe, frontend: FrontEnd, module: LabModule, waveforms: torch.Tensor, labels: torch.Tensor,
             epochs: int) -> LabModule:
    """Continue training ``module`` (a fresh optimiser, the recipe's learning rate) on ``waveforms`` for ``epochs``.
    The module keeps its feature standardisation."""
    feats = frontend(waveforms)
    loader = DataLoader(TensorDataset(feats, labels), batch_size=recipe.train.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    make_trainer(recipe.train, epochs).fit(module, loader)
    return module


def detached_copy(module: LabModule) -> LabModule:
    """A deep copy of a trained module without its (finished) Trainer."""
    if not isinstance(module, L.LightningModule):
        return copy.deepcopy(module)
    trainer, module.trainer = module._trainer, None
    try:
        return copy.deepcopy(module)
    finally:
        module.trainer = trainer


def train_under_attack(recipe: Recipe, prep: Prepared, attack: Attack, seed: int, frontend: FrontEnd,
                       cache: FeatureCache, plain: LabModule | None = None) -> tuple[dict[str, LabModule], dict]:
    """Named models trained on ``prep``'s protected training set under ``attack`` (``plain``: the no-attack model
    of the same seed, reused by attacks whose first stage is plain training), and the seconds spent: ``data`` (the
    attack's one-off work on the training set), ``train`` (training, with any per-batch work), ``after`` (e.g.
    fine-tuning), ``total``."""
    num_classes = len(prep.train.class_names)
    ctx = AttackContext(clean=prep.waveforms["clean_train"], protected=prep.waveforms["protected_train"],
                        labels=prep.train.labels, lengths=prep.train.lengths, protection=prep.protection,
                        sample_rate=recipe.data.sample_rate, num_classes=num_classes, seed=seed,
                        finetune=lambda m, w, y, e: finetune(recipe, frontend, m, w, y, e))
    attack.start(ctx)
    clock = time.perf_counter()
    seconds = {"data": 0.0, "train": 0.0}
    if attack.trains_plain and plain is not None:
        module = detached_copy(plain)
    else:
        waves, labels = attack.training_set(ctx)
        seconds["data"] = time.perf_counter() - clock
        if attack.per_batch:
            module, seconds["train"] = fit_waveforms(recipe, waves, labels, num_classes, seed, frontend, attack)
        else:
            module, seconds["train"] = fit_features(recipe, cache(frontend, waves), labels, num_classes, seed)
    after = time.perf_counter()
    models = attack.after_training(module, ctx)
    seconds["after"] = time.perf_counter() - after
    seconds["total"] = time.perf_counter() - clock
    return models, {k: round(v, 3) for k, v in seconds.items()}


# --- the matrix ----------------------------------------------------------------------------------------------------

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


def defense_configs(recipe: Recipe, names: list[str], snr_db: float | None) -> list:
    """Defense configs for ``names``: the recipe's own defense as it is; every other one configured like it by its
    own ``Defense.matched_config`` (the recipe's key, and what else it shares with it) at ``snr_db`` (rounded to
    0.01 dB; equal distortion, for the defenses that take an SNR), when given."""
    own = recipe.defense
    snr = None if snr_db is None else round(snr_db, 2)
    out = []
    for name in names:
        defense = DEFENSES.get(name)
        if name == own.type:
            out.append(own)
            continue
        data: dict[str, Any] = {"type": name, **defense.matched_config(own, snr)}
        out.append(parse_plugin(DEFENSES, data, f"defense ({name})"))
    return out


@dataclass
class Matrix:
    defenses: list[str]
    columns: list[str]
    cells: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # defense -> column -> per-seed values
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # defense -> attack -> per-seed records
    seconds: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    snr: dict[str, dict] = field(default_factory=dict)
    chance: float = 0.0

    def add(self, defense: str, column: str, value: float, seconds: float | None = None) -> None:
        self.cells.setdefault(defense, {}).setdefault(column, []).append(value)
        if seconds is not None:
            self.seconds.setdefault(defense, {}).setdefault(column, []).append(round(seconds, 2))

    def mean(self, defense: str, column: str) -> float | None:
        values = self.cells.get(defense, {}).get(column)
        return statistics.fmean(values) if values else None

    @classmethod
    def from_results(cls, results: dict) -> "Matrix":
        """The matrix a ``lab attack`` results.json holds (what write_results wrote); a KeyError, TypeError or
        ValueError if it holds no such matrix."""
        defenses, columns = list(results["defenses"]), list(results["columns"])
        cells = {d: {c: [float(v) for v in cell["values"]] for c, cell in results["accuracy"][d].items()}
                 for d in defenses}
        if not defenses or not columns or any(c not in columns for cols in cells.values() for c in cols):
            raise ValueError("defenses, columns and accuracy do not match")
        return cls(defenses, columns, cells, results.get("attack_records", {}), results.get("train_seconds", {}),
                   results.get("snr", {}), float(results["chance"]))

    def worst(self, defense: str) -> tuple[float, str] | None:
        """The highest clean-test accuracy over no attack and every attack (what the data owner can count on)."""
        means = [(self.mean(defense, c), c) for c in self.columns if self.mean(defense, c) is not None]
        return max(means) if means else None


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


def run_matrix(recipes: list[Recipe], attack_cfgs: list, log: Callable[[str], None] = print,
               progress: bool = False) -> Matrix:
    """Train every (defense, attack, seed) and collect clean-test accuracies; ``recipes`` are one recipe with each
    defense (the table's columns), identical otherwise."""
    first = recipes[0]
    if first.train.num_threads:
        torch.set_num_threads(first.train.num_threads)
    cache = FeatureCache()
    frontend = FrontEnd(first.features, first.data.sample_rate)
    matrix = Matrix([r.defense.type for r in recipes], [NO_ATTACK])
    for rec in recipes:
        dcfg = rec.defense
        prep = prepare(rec, log=lambda s: None, cache=cache)
        num_classes = len(prep.train.class_names)
        matrix.chance = 1.0 / num_classes
        matrix.snr[dcfg.type] = snr_summary(prep.waveforms["protected_train"], prep.waveforms["clean_train"])
        clean_test = prep.features["clean_test"], prep.test.labels
        for seed in rec.seeds:
            plain, plain_seconds = fit_features(rec, prep.features["protected_train"], prep.train.labels, num_classes,
                                                seed, progress=progress)
            acc = evaluate(plain, rec.train, *clean_test)["accuracy"]
            matrix.add(dcfg.type, NO_ATTACK, acc, plain_seconds)
            log(f"{dcfg.type}, seed {seed}: no attack {acc:.3f} ({plain_seconds:.0f} s)")
            for acfg in attack_cfgs:
                attack = build_attack(acfg)
                models, timing = train_under_attack(rec, prep, attack, seed, frontend, cache, plain=plain)
                seconds = timing["total"]
                for variant, module in models.items():
                    col = column_name(acfg, variant)
                    if col not in matrix.columns:
                        matrix.columns.append(col)
                    acc = evaluate(module, rec.train, *clean_test)["accuracy"]
                    matrix.add(dcfg.type, col, acc, seconds)
                    log(f"{dcfg.type}, seed {seed}: {col} {acc:.3f} ({seconds:.0f} s)")
                matrix.records.setdefault(dcfg.type, {}).setdefault(column_name(acfg), []).append(
                    {"seed": seed, **attack.record()})
    return matrix


# --- reports -------------------------------------------------------------------------------------------------------

def fmt_cell(values: list[float] | None) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def table_rows(matrix: Matrix) -> tuple[list[str], list[list[str]]]:
    """The table people read: one row per attack column (no attack first), one column per defense, and a last row
    with each defense's worst case (the highest clean-test accuracy over the rows above, and which attack gave it)."""
    header = ["attack", *matrix.defenses]
    rows = [[c, *[fmt_cell(matrix.cells.get(d, {}).get(c)) for d in matrix.defenses]] for c in matrix.columns]
    worst = [matrix.worst(d) for d in matrix.defenses]
    rows.append([WORST, *[f"{w[0]:.3f} ({w[1]})" if w else "-" for w in worst]])
    return header, rows


CSV_HEADER = ["defense", "attack", "mean", "std", "n", "values"]


def csv_rows(matrix: Matrix) -> list[list]:
    """table.csv's lines below its header: one per defense and attack, then each defense's worst case."""
    rows: list[list] = []
    for d in matrix.defenses:
        for c in matrix.columns:
            values = matrix.cells.get(d, {}).get(c)
            if values:
                rows.append([d, c, f"{statistics.fmean(values):.4f}",
                             f"{statistics.stdev(values) if len(values) > 1 else 0.0:.4f}", len(values),
                             " ".join(f"{v:.4f}" for v in values)])
        worst = matrix.worst(d)
        if worst:
            rows.append([d, f"{WORST} ({worst[1]})", f"{worst[0]:.4f}", "", "", ""])
    return rows


def to_csv(matrix: Matrix) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_HEADER)
    w.writerows(csv_rows(matrix))
    return buf.getvalue()


def to_markdown(results: dict, matrix: Matrix) -> str:
    prov = results["provenance"]
    header, rows = table_rows(matrix)
    lines = [f"# {results['recipe_name']}: attacks ({', '.join(results['attacks']) or 'none'})", "",
             f"Clean-test accuracy (chance {results['chance']:.3f}) of a model trained on each defense's protected "
             f"training set under each attack; mean ± std over seeds {results['seeds']}. The last row is the "
             f"worst case for the data owner (the highest mean accuracy over no attack and the attacks). Column "
             f"`none` is clean data: there, an attack's row shows what the attack itself costs.", "",
             f"Recipe `{results['recipe_path']}` · commit `{prov['git']['commit']}`"
             f"{' (dirty)' if prov['git']['dirty'] else ''} · torch {prov['versions']['torch']} · "
             f"lightning {prov['versions']['lightning']} · {prov['time_utc']} · {results['wall_seconds']} s", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "SNR of each defense's protected training audio (dB, mean / worst 5%): " + "; ".join(
        f"{d} {s['snr_db_mean']:.1f} / {s['snr_db_worst5']:.1f}" for d, s in matrix.snr.items()
        if d != "none" and s['snr_db_mean'] != float('inf')), ""]
    return "\n".join(lines)


def new_attack_dir(recipe: Recipe, label: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(recipe.output_dir) / recipe.name
    run_dir, n = base / f"attack-{label}-{stamp}", 1
    while run_dir.exists():  # never overwrite an earlier run
        n += 1
        run_dir = base / f"attack-{label}-{stamp}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir


def write_results(recipe: Recipe, recipe_path: str, label: str, attack_cfgs: list, matrix: Matrix,
                  wall_seconds: float) -> tuple[dict, Path]:
    run_dir = new_attack_dir(recipe, label)
    results = {
        "recipe_name": recipe.name, "recipe_path": recipe_path, "recipe": recipe.public_dict(),
        "provenance": provenance(), "seeds": list(recipe.seeds), "chance": matrix.chance,
        "attacks": [c.type for c in attack_cfgs],
        "attack_params": [c.model_dump(mode="json") for c in attack_cfgs],
        "defenses": matrix.defenses, "columns": matrix.columns,
        "accuracy": {d: {c: {"mean": statistics.fmean(v), "values": v} for c, v in cols.items()}
                     for d, cols in matrix.cells.items()},
        "worst_case": {d: dict(zip(("accuracy", "attack"), matrix.worst(d))) for d in matrix.defenses
                       if matrix.worst(d)},
        "train_seconds": matrix.seconds, "attack_records": matrix.records, "snr": matrix.snr,
        "wall_seconds": round(wall_seconds, 1),
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    (run_dir / "results.md").write_text(to_markdown(results, matrix))
    (run_dir / "table.csv").write_text(to_csv(matrix))
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.public_dict(), sort_keys=False))
    return results, run_dir
