"""``lab attack``, in six modules, one idea each: ``training`` (training under an attack), ``setup`` (the attack
and defense configs of a matrix), ``cell`` (the one cell runner: a defense and a seed, no attack and each attack;
``lab run`` is its no-attack row), ``matrix`` (cells over defenses and seeds, resumable), ``tables`` (tables, CSV, Markdown, the run folder's
files) and ``run`` (the whole command: columns, matrix, run folder).

``lab attack``: train on protected data the way an unauthorised trainer would, and measure what survives.

recipe + attack(s) ─► for each defense (none = clean reference, the recipe's, baselines at the same distortion):
    ExperimentData (protect, features; lab.spine) ─► per seed: no-attack model, then each attack's model(s) ─► clean-test accuracy
  ─► one table (rows: no attack, each attack, then the worst case over them; columns: defenses) as JSON, Markdown,
     CSV

Training under an attack is the lab's one training path (lab.train.fit): data attacks change the training set
(features computed once, cached), batch attacks give a per-batch transform of the waveforms that the training data
applies on the device before the recipe's front-end (Lightning's on_after_batch_transfer), procedure attacks get the
model after training.

Everything is importable from ``lab.attacking`` as before, each name from its module on first use: checking a recipe
and its attacks (``setup``) imports no training code, so ``lab attack``'s one-line errors and its help come without
Lightning's seconds of imports.
"""
from __future__ import annotations

import importlib

_WHERE = {  # name -> the module of lab.attacking that defines it
    "NO_ATTACK": "cell", "RunExtras": "cell", "run_cell": "cell",
    "WORST": "matrix", "Matrix": "matrix", "cell_file": "matrix", "matrix_data": "matrix", "run_matrix": "matrix",
    "attack_configs": "setup", "baselines": "setup", "column_name": "setup", "defense_configs": "setup",
    "load_attack_recipe": "setup", "with_defense": "setup",
    "CSV_HEADER": "tables", "cell_folder": "tables", "conclusions": "tables", "csv_rows": "tables",
    "fmt_cell": "tables", "table_rows": "tables", "to_csv": "tables", "to_markdown": "tables",
    "write_results": "tables",
    "AttackPlan": "run", "run_attack": "run",
    "detached_copy": "training", "finetune": "training", "train_under_attack": "training",
}


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'lab.attacking' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lab.attacking.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
