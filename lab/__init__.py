"""The open reference lab for unlearnable audio datasets.

A small Python API for notebooks and scripts (the ``lab`` command line does the same jobs; see docs/api.md)::

    import lab
    recipe = lab.load_recipe("recipes/fsdd_cnn.yaml", ["train.epochs=1", "seeds=[0]"])
    train, test = lab.load_data(recipe)                                   # AudioSets: waveforms, labels, ...
    protected, protection = lab.protect_clips(train.waveforms, train.labels, recipe, lengths=train.lengths)
    results, run_dir = lab.run(recipe, out="/tmp/runs")                   # train and evaluate, like `lab run`
    finished = lab.read_run(run_dir)                                      # results, recipe, protection, models
    lab.new_key_file("owner.key")                                         # like `lab keygen`
    lab.protect_collection("audio/", "audio_protected/", key_file="owner.key")   # a folder, like `lab protect`

Everything is imported on first use, so ``import lab`` stays cheap. A user's mistake raises :class:`LabError`
with a one-line message.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from lab import provenance as _provenance  # noqa: F401  (the commit of the code is read now, at the start)
from lab.errors import LabError

if TYPE_CHECKING:  # for readers and type checkers only; nothing heavy is imported at run time
    import torch

    from defenses.base import Protection
    from lab.data import AudioSet
    from lab.recipe import Recipe
    from lab.rundir import FinishedRun

__version__ = "0.1.0"
__all__ = ["LabError", "__version__", "load_recipe", "recipe_from_dict", "load_data", "protect_clips",
           "new_key_file", "protect_collection", "run", "read_run"]


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> "Recipe":
    """Read and validate a recipe YAML file; ``overrides`` are ``--set`` items, e.g. ``["train.epochs=1"]``.

    Returns a frozen :class:`lab.recipe.Recipe` (sections ``data``, ``features``, ``model``, ``train``,
    ``defense``, ``seeds``, ...). A mistake raises :class:`LabError` naming the field and what is allowed.
    """
    from lab.recipe import load_recipe as _load
    return _load(path, overrides)


def recipe_from_dict(data: dict) -> "Recipe":
    """Validate a recipe given as a mapping, as a YAML file would hold it (missing sections take their defaults):
    ``lab.recipe_from_dict({"model": {"type": "lstm"}, "train": {"epochs": 2}})``."""
    from lab.recipe import recipe_from_dict as _from_dict
    return _from_dict(data)


def load_data(recipe: "Recipe", log: Callable[[str], None] | None = None) -> tuple["AudioSet", "AudioSet"]:
    """The recipe's training and test sets, as ``lab run`` loads them (``recipe.data``: dataset, split, rate, clip
    length, per-class limits). Each :class:`lab.data.AudioSet` has ``waveforms`` (N, T) float tensors, ``labels``
    (N,), ``lengths`` (N,) real samples per clip, ``class_names`` and ``sample_rate``."""
    from lab.spine import ExperimentData
    return ExperimentData(recipe, log=log or (lambda msg: None)).dataset


def protect_clips(waveforms: "torch.Tensor", labels: "torch.Tensor", recipe: "Recipe",
                  num_classes: int | None = None, lengths: "torch.Tensor | None" = None
                  ) -> tuple["torch.Tensor", "Protection"]:
    """Protect clips in memory with the recipe's defense (``recipe.defense``, its key included).

    ``waveforms``: (N, T) float tensor at ``recipe.data.sample_rate``; ``labels``: (N,) class indices;
    ``num_classes``: how many classes the protection is derived for (default: ``labels.max() + 1``);
    ``lengths``: real samples per clip when clips are zero-padded (patch positions relative to a clip's length use
    it). Returns ``(protected, protection)``: protected copies (the input is not changed) and the derived
    protection, whose ``to_dict()`` is the record a run stores (no key; its fingerprint).
    """
    import torch

    from lab.spine import Clips, derive_protection
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if len(labels) else 1
    real = lengths if lengths is not None else torch.full((len(labels),), waveforms.shape[1], dtype=torch.long)
    # an optimised defense (e.g. em-noise) is optimised on these very clips
    protection = derive_protection(recipe, Clips(waveforms, labels, real), num_classes, log=lambda msg: None)
    return protection.apply(waveforms, labels, lengths), protection


def new_key_file(path: str | Path) -> str:
    """Write a new random private key to ``path`` (mode 0600; an existing file is never overwritten) and return its
    public fingerprint, never the key. Keep the key: verifying or extending a protected collection needs it."""
    from lab.protect import new_key_file as _new
    return _new(Path(path))


def protect_collection(input_dir: str | Path, output_dir: str | Path, key_file: str | Path, labels: str = "folder",
                       defense: dict | None = None, workers: int | None = None, **options: Any) -> dict:
    """Write a protected copy of every audio file under ``input_dir`` into ``output_dir`` with a manifest, exactly
    as ``lab protect`` does (same formats, resumable, atomic writes).

    ``key_file``: the private key (make one with ``lab keygen`` or :func:`lab.protect.new_key_file`). ``labels``:
    ``folder`` (the top-level folder), ``none``, ``regex:PATTERN`` or a CSV file of path,label rows. ``defense``:
    PosCUDA parameters such as ``{"patch_seconds": 0.1, "blur": 0.3}``. ``workers``: processes (0: this one).
    Returns the summary ``lab protect`` prints (files protected, failed, manifest path, ...). See docs/protect.md.
    """
    from lab.protect import protect_collection as _protect
    return _protect(Path(input_dir), Path(output_dir), Path(key_file), labels=labels, defense=defense,
                    workers=workers, **options)


def run(recipe: "Recipe | str | Path", out: str | Path | None = None, log: Callable[[str], None] | None = print,
        progress: bool = False) -> tuple[dict, Path]:
    """Train and evaluate a recipe end to end, as ``lab run`` does: the model trained on clean and on protected
    data for every seed, evaluated on clean, protected and mixed-position test clips, plus the quality section.

    ``recipe``: a :class:`lab.recipe.Recipe` or the path of a recipe file. ``out``: folder for runs (default the
    recipe's ``output_dir``). ``log``: receives progress lines (None: silent). ``progress``: Lightning progress
    bars. Returns ``(results, run_dir)``: the dict also written to ``run_dir/results.json`` (``accuracy``,
    ``per_seed``, ``ablation``, ``quality``, ``provenance``, ...) and the new run folder. A run that fails or is
    interrupted leaves no finished-looking folder (see :func:`lab.experiment.run`).
    """
    from lab.experiment import run as _run
    from lab.recipe import Recipe
    recipe_path = None
    if not isinstance(recipe, Recipe):
        recipe_path = str(recipe)
        recipe = load_recipe(recipe)
    if out is not None:
        recipe = recipe.model_copy(update={"output_dir": Path(out)})
    return _run(recipe, recipe_path, log=log or (lambda msg: None), progress=progress)


def read_run(path: str | Path) -> "FinishedRun":
    """A finished run folder read back: ``.results`` (results.json as a dict), ``.recipe``, ``.protection`` (can
    ``apply`` itself again) and ``.module(which, seed)``, a trained ``"clean_model"`` or ``"protected_model"``.
    Raises :class:`LabError` for a folder that is not a finished run (e.g. one marked INCOMPLETE)."""
    from lab.rundir import load_run
    return load_run(Path(path))
