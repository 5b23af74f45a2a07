"""Clean-trained models shared between processes: ``LAB_MODEL_STORE`` names a folder (opt-in; unset, nothing is
stored or read).

A sweep shares a seed's clean-trained model between its cells in memory (``RunExtras.clean_models``); two
processes cannot. CI runs two regression recipes side by side that differ only in their defense, so each trained
the same three clean models. With the store, the first process to finish a clean model leaves it there (Lightning's
checkpoint, its per-epoch clean-test accuracies and its CSV log) and a later run with the same entry copies them
into its own run folder instead of training again; its results then say the model was reused (no training
seconds), as a sweep's do.

An entry is named by a hash of everything the trained model depends on: the recipe without its defense and
bookkeeping (data section without where the clips were read from, features, model, training; the thread count
stays in, as it changes the arithmetic), the seed, the content of the training features and labels and of the
monitored test set, the source of the code that builds and trains a model (lab/models, lab/frontends, the module
and the training loop), and the torch and Lightning versions. A changed model, trainer, dataset or library never
reuses an old entry. Entries are written atomically (a folder renamed into place); two processes that train the
same entry at once each train it, and the first rename wins. Clean models hold nothing derived from a key.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

ENV = "LAB_MODEL_STORE"
_BOOKKEEPING = ("defense", "name", "description", "output_dir", "seeds", "evaluation")
_CODE = ("lab/models", "lab/frontends")
_FILES = ("lab/module.py", "lab/train.py", "lab/features.py")


def folder() -> Path | None:
    """The store's folder (``$LAB_MODEL_STORE``), None when unset."""
    value = os.environ.get(ENV, "").strip()
    return Path(value) if value else None


def code_digest() -> str:
    """A hash of the source files that build and train a model, and of the torch and Lightning versions."""
    import lightning
    root = Path(__file__).resolve().parent.parent
    paths = [p for package in _CODE for p in sorted((root / package).glob("*.py"))] + [root / f for f in _FILES]
    h = hashlib.sha256(f"torch {torch.__version__} lightning {lightning.__version__}".encode())
    for path in paths:
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def entry_name(recipe, seed: int, features: torch.Tensor, labels: torch.Tensor,
               monitor: tuple[torch.Tensor, torch.Tensor] | None) -> str:
    """The entry of a model trained by ``recipe`` from ``seed`` on ``features``/``labels`` (module docstring)."""
    from lab.features import tensor_hash
    public = recipe.public_dict()
    for field in _BOOKKEEPING:
        public.pop(field, None)
    public.get("data", {}).pop("root", None)
    public.get("train", {}).pop("progress", None)
    described = {"recipe": public, "seed": seed, "features": tensor_hash(features), "labels": tensor_hash(labels),
                 "monitor": None if monitor is None else [tensor_hash(t) for t in monitor], "code": code_digest()}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:32]


def fetch(name: str, checkpoint: Path, log_dir: Path | None):
    """The stored model ``name`` as (module, convergence), its checkpoint copied to ``checkpoint`` and its CSV log
    into ``log_dir``/clean_model/; None when the store is off or has no such entry; a string (why) when the entry
    cannot be read (the caller then trains the model, and nothing of the entry is left in the run folder)."""
    from lab.module import LabModule
    root = folder()
    entry = root / name if root is not None else None
    if entry is None or not (entry / "model.ckpt").is_file():
        return None
    try:
        meta = json.loads((entry / "meta.json").read_text())
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(entry / "model.ckpt", checkpoint)
        module = LabModule.load_from_checkpoint(checkpoint, map_location="cpu")
        if log_dir is not None and (entry / "log").is_dir():
            shutil.copytree(entry / "log", log_dir, dirs_exist_ok=True)
    except Exception as e:  # a damaged or half-copied entry: train instead
        checkpoint.unlink(missing_ok=True)
        return f"{entry} cannot be read ({type(e).__name__}: {e})"
    return module, meta["convergence"]


def keep(name: str, checkpoint: Path, convergence: dict | None, log_dir: Path | None,
         run_log_root: Path | None) -> str | None:
    """Put a freshly trained model into the store (nothing when it is off or already holds the entry):
    ``checkpoint`` (the run's .ckpt), ``convergence``, and the CSV log folder ``log_dir`` (kept at its place
    under ``run_log_root``, so :func:`fetch` puts it back at the same place in another run). Returns why it could not
    (a store that is not a writable folder), None otherwise: the store saves time, a run never fails for it."""
    root = folder()
    if root is None or (root / name).exists() or not checkpoint.is_file():
        return None
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
        shutil.copyfile(checkpoint, tmp / "model.ckpt")
        if log_dir is not None and run_log_root is not None and Path(log_dir).is_dir():
            shutil.copytree(log_dir, tmp / "log" / Path(log_dir).relative_to(run_log_root))
        (tmp / "meta.json").write_text(json.dumps({"convergence": convergence}))
        os.rename(tmp, root / name)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not (root / name).exists():  # else another process stored the same entry first
            return f"{root}: {type(e).__name__}: {e}"
    return None
