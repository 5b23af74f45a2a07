"""``lab attack``, in six modules, one idea each: ``training`` (training under an attack), ``setup`` (the attack
and defense configs of a matrix), ``cell`` (the one cell runner: a defense and a seed, no attack and each attack;
``lab run`` is its no-attack row), ``matrix`` (cells over defenses and seeds, resumable), ``tables`` (tables, CSV, Markdown, the run folder's
files) and ``run`` (the whole command: columns, matrix, run folder).
Everything is importable from ``lab.attacking`` as before.

``lab attack``: train on protected data the way an unauthorised trainer would, and measure what survives.

recipe + attack(s) ─► for each defense (none = clean reference, the recipe's, baselines at the same distortion):
    ExperimentData (protect, features; lab.spine) ─► per seed: no-attack model, then each attack's model(s) ─► clean-test accuracy
  ─► one table (rows: no attack, each attack, then the worst case over them; columns: defenses) as JSON, Markdown,
     CSV

Training under an attack is the lab's one training path (lab.train.fit): data attacks change the training set
(features computed once, cached), batch attacks give a per-batch transform of the waveforms that the training data
applies on the device before the recipe's front-end (Lightning's on_after_batch_transfer), procedure attacks get the
model after training.
"""
from lab.attacking.cell import NO_ATTACK, RunExtras, run_cell  # noqa: F401
from lab.attacking.matrix import WORST, Matrix, cell_file, matrix_data, run_matrix  # noqa: F401
from lab.attacking.setup import (  # noqa: F401
    attack_configs, baselines, column_name, defense_configs, load_attack_recipe, with_defense,
)
from lab.attacking.tables import (  # noqa: F401
    CSV_HEADER, cell_folder, conclusions, csv_rows, fmt_cell, table_rows, to_csv, to_markdown, write_results,
)
from lab.attacking.run import AttackPlan, run_attack  # noqa: F401
from lab.attacking.training import detached_copy, finetune, train_under_attack  # noqa: F401
