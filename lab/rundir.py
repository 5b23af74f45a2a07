"""Reading a finished run back: its recipe, protection record, results and trained models."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from defenses.base import Protection
from lab.errors import LabError
from lab.models import build_model
from lab.module import LabModule
from lab.recipe import Recipe, recipe_from_dict


@dataclass
class FinishedRun:
    path: Path
    recipe: Recipe
    protection: Protection
    results: dict

    def module(self, which: str, seed: int) -> LabModule:
        """The trained ``clean_model`` or ``protected_model`` of ``seed``."""
        path = self.path / "models" / f"{which}_seed{seed}.pt"
        if not path.is_file():
            raise LabError(f"{self.path}: no saved model {path.name} (runs made before models were saved cannot be "
                           f"ablated; run the recipe again)")
        shape = self.results["data"]["feature_shape"]
        classes = len(self.results["data"]["classes"])
        model = build_model(self.recipe.model, tuple(shape), classes, self.recipe.features.type == "raw",
                            self.recipe.data.sample_rate)
        module = LabModule(model, classes, self.recipe.train.lr, self.recipe.train.weight_decay,
                           torch.zeros(shape[0], 1), torch.ones(shape[0], 1))
        module.load_state_dict(torch.load(path))
        return module.eval()


def load_run(path: Path) -> FinishedRun:
    path = Path(path)
    files = {name: path / name for name in ("recipe.yaml", "protection.json", "results.json")}
    missing = [n for n, p in files.items() if not p.is_file()]
    if missing:
        raise LabError(f"{path} is not a finished lab run (missing {', '.join(missing)})")
    # the run may have been made on another machine (e.g. with a GPU): its train section is not checked against this
    recipe = recipe_from_dict(yaml.safe_load(files["recipe.yaml"].read_text()), str(files["recipe.yaml"]),
                              machine=False)
    protection = Protection.from_dict(json.loads(files["protection.json"].read_text()))
    return FinishedRun(path, recipe, protection, json.loads(files["results.json"].read_text()))


def find_results(paths: list[Path]) -> list[Path]:
    """Every results.json in or below the given run or sweep folders (or the files themselves)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.name == "results.json":
            found.append(p)
        elif p.is_dir():
            found += sorted(p.rglob("results.json"))
        else:
            raise LabError(f"no such run folder or results.json: {p}")
    if not found:
        raise LabError(f"no results.json under {', '.join(map(str, paths))}")
    return found


def refresh_quality(path: Path, log=print) -> dict:
    """Recompute a finished run's quality section with the current code (from its recipe, protection record and
    first seed's clean model; no training) and store it in results.json. The previous section is kept under
    ``quality_history`` with the commit that made it, so nothing is lost."""
    from lab.data import load_dataset
    from lab.provenance import git_commit
    from lab.quality import assess

    run = load_run(path)
    train, _ = load_dataset(run.recipe.data, log)
    waves = {"clean_train": train.waveforms,
             "protected_train": run.protection.apply(train.waveforms, train.labels, train.lengths)}
    module = run.module("clean_model", run.results["seeds"][0])
    quality = assess(run.recipe, waves, module)
    quality["recomputed"] = {"commit": git_commit()["commit"]}
    results = run.results
    results.setdefault("quality_history", []).append(
        {"commit": results.get("provenance", {}).get("git", {}).get("commit"), "quality": results.get("quality")})
    results["quality"] = quality
    target = Path(path) / "results.json"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(target)
    return quality
