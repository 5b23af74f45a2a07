"""Print the leave-one-out table of docs/results/loo/loo_filter_reduced.sh (markdown) from its output folder:
per held-out trainer, clean and protected-trained clean-test accuracy (lab run, 3 seeds), the same under each attack
(lab attack), the worst case over the attacks (none of them uses clean clips), and the quality of the protected
training clips (PESQ narrow-band mean and worst 5%, log-mel FAD against its clean floor).

    python docs/results/loo/loo_table.py runs/loo-filter-reduced
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

TRAINERS = ["cnn_mfcc", "lstm_mfcc", "transformer_mfcc", "cnn_logmel", "cnn_raw"]
ATTACKS = ["projection", "strong-augment", "codec"]


def finished_run(folder: Path) -> dict | None:
    for results in sorted(folder.glob("*/*/results.json")):
        if not (results.parent / "INCOMPLETE").exists():
            return json.loads(results.read_text())
    return None


def attack_rows(folder: Path) -> dict[str, tuple[float, float, int]]:
    for table in sorted(folder.glob("*/attack-*/table.csv")):
        if not (table.parent / "INCOMPLETE").exists():
            with table.open() as f:
                return {r["attack"]: (float(r["mean"]), float(r["std"] or 0), int(r["n"] or 0))
                        for r in csv.DictReader(f) if r["n"]}
    return {}


def cell(m: float, s: float) -> str:
    return f"{m:.3f} ± {s:.3f}"


def main(root: Path) -> None:
    print("| held-out trainer | clean-trained | protected-trained (lab run) | " + " | ".join(ATTACKS)
          + " | worst case | PESQ nb mean / worst 5% | log-mel FAD (clean floor) | commit |")
    print("|---" * (7 + len(ATTACKS)) + "|")
    for name in TRAINERS:
        run, rows = finished_run(root / f"run-{name}"), attack_rows(root / f"attack-{name}")
        if run is None:
            print(f"| {name} | (not run yet) |" + " |" * (5 + len(ATTACKS)))
            continue
        acc = run["accuracy"]
        clean, prot = acc["clean_model/clean_test"], acc["protected_model/clean_test"]
        attacked = [rows.get(a) for a in ATTACKS]
        done = [(m, a) for a, r in zip(ATTACKS, attacked) if r for m in (r[0],)]
        worst = max(done + [(prot["mean"], "no attack")]) if done else None
        pesq = run["quality"]["perceptual"]["metrics"]["pesq"]
        fad = run["quality"]["fad"]["backends"]["logmel"]
        print(f"| {name} | {cell(clean['mean'], clean['std'])} | {cell(prot['mean'], prot['std'])} | "
              + " | ".join(cell(r[0], r[1]) if r else "-" for r in attacked)
              + f" | {f'{worst[0]:.3f} ({worst[1]})' if worst else '-'} | {pesq['mean']:.2f} / {pesq['worst5']:.2f}"
              + f" | {fad['protected_vs_clean']['fad']:.1f} ({fad['clean_floor']['fad']:.1f}) | "
              + f"{run['provenance']['git']['commit'][:7]} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/loo-filter-reduced"))
