"""Write the leave-one-out recipes of ``ensemble-em`` (recipes/loo/*.yaml; docs/defenses_optimised.md, "Ensemble"):
one recipe per held-out trainer, whose ensemble is FOUR members taken in order from :data:`POOL`, skipping the
trainer's own (architecture, front-end). Every recipe has the same data, budget and optimisation settings, so the
rows of the table differ only in the trainer and the member it replaces.

    python bench/loo_recipes.py            # (re)write recipes/loo/
    python bench/loo_recipes.py --check    # exit 1 if recipes/loo/ is not what this script writes
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[1] / "recipes" / "loo"
MODELS = {  # the lab's recipe settings of each (architecture, front-end) (recipes/fsdd_*.yaml)
    "cnn": {"type": "cnn", "head": "flatten", "channels": [8, 16, 32]},
    "lstm": {"type": "lstm", "hidden": 128, "layers": 2},
    "transformer": {"type": "transformer", "d_model": 64, "heads": 4, "layers": 2, "positional": "sinusoidal"},
    "linear": {"type": "linear"},
    "cnn-raw": {"type": "cnn", "head": "flatten", "channels": [32, 32, 64, 64], "raw_kernel_ms": 10, "raw_stride": 4},
}
FEATURES = {"mfcc": {"type": "mfcc", "n_mfcc": 40, "n_mels": 64, "win_ms": 25, "hop_ms": 10},
            "logmel": {"type": "logmel", "n_mels": 64, "win_ms": 25, "hop_ms": 10}, "raw": {"type": "raw"}}
POOL = [("cnn", "logmel"), ("lstm", "mfcc"), ("linear", "logmel"), ("cnn-raw", "raw"), ("cnn", "mfcc")]
TRAINERS = {("cnn", "mfcc"): 10, ("lstm", "mfcc"): 8, ("transformer", "mfcc"): 8, ("cnn", "logmel"): 10,
            ("cnn-raw", "raw"): 15}  # -> epochs, as the lab's recipes train them
MEMBERS = 4


def members_for(trainer: tuple[str, str]) -> list[tuple[str, str]]:
    """The ensemble that leaves ``trainer`` out: the first :data:`MEMBERS` of :data:`POOL` that are not it."""
    return [m for m in POOL if m != trainer][:MEMBERS]


def recipe(trainer: tuple[str, str], epochs: int) -> dict:
    model, features = trainer
    return json.loads(json.dumps({  # copies: no YAML anchors in the files
        "description": f"Leave-one-out: ensemble-em made WITHOUT {model} on {features}, trained on by it "
                       f"(bench/loo_recipes.py writes this file).",
        "data": {"dataset": "fsdd", "split": "official", "sample_rate": 8000, "clip_seconds": 1.0},
        "features": FEATURES[features], "model": MODELS[model],
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.001}, "seeds": [0, 1, 2],
        "defense": {"type": "ensemble-em", "key": "lab-demo-key-not-secret", "mode": "class-wise", "snr_db": 20,
                    "max_rounds": 5, "eot": {"draws": 2},
                    "surrogates": [{"model": MODELS[m], "features": FEATURES[f]} for m, f in members_for(trainer)]},
    }))


def files() -> dict[Path, str]:
    head = "# Written by bench/loo_recipes.py: edit that script, not this file.\n"
    return {OUT / f"{m}_{f}.yaml".replace("cnn-raw_raw", "cnn_raw"): head + yaml.safe_dump(recipe((m, f), e),
                                                                                        sort_keys=False)
            for (m, f), e in TRAINERS.items()}


def main(argv: list[str]) -> int:
    wanted = files()
    if "--check" in argv:
        stale = [str(p) for p, text in wanted.items() if not p.is_file() or p.read_text() != text]
        print("\n".join(stale) or "recipes/loo is up to date")
        return 1 if stale else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for path, text in wanted.items():
        path.write_text(text)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
