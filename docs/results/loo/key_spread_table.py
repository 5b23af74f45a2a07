"""Print the key-spread table of docs/results/loo/key_spread.sh (markdown): per key (one optimisation each), the
held-out Transformer's clean-test accuracy without an attack and under each attack (mean ± std over trainer seeds
0,1,2) and the worst case; then the mean ± std OVER KEYS of each key's means (the spread a data owner choosing a key
sees) and of the worst case.

    python docs/results/loo/key_spread_table.py runs/loo-key-spread
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from loo_table import ATTACKS, attack_rows, cell

COLUMNS = ["no attack", *ATTACKS]


def commit_of(folder: Path) -> str:
    for results in sorted(folder.glob("*/attack-*/results.json")):
        if not (results.parent / "INCOMPLETE").exists():
            return json.loads(results.read_text())["provenance"]["git"]["commit"][:7]
    return "?"


def main(root: Path) -> None:
    print("| key | " + " | ".join(COLUMNS) + " | worst case | commit |")
    print("|---" * (3 + len(COLUMNS)) + "|")
    means: dict[str, list[float]] = {c: [] for c in COLUMNS + ["worst"]}
    for folder in sorted(root.glob("key-*")):
        rows = attack_rows(folder)
        if not all(c in rows for c in COLUMNS):
            print(f"| {folder.name} | (not finished) |" + " |" * (len(COLUMNS) + 1))
            continue
        worst = max((rows[c][0], c) for c in COLUMNS)
        for c in COLUMNS:
            means[c].append(rows[c][0])
        means["worst"].append(worst[0])
        print(f"| {folder.name} | " + " | ".join(cell(*rows[c][:2]) for c in COLUMNS)
              + f" | {worst[0]:.3f} ({worst[1]}) | {commit_of(folder)} |")
    n = len(means["worst"])
    if n >= 2:
        print(f"| over {n} keys (mean ± std of the keys' means) | "
              + " | ".join(cell(statistics.mean(means[c]), statistics.stdev(means[c])) for c in COLUMNS)
              + f" | {cell(statistics.mean(means['worst']), statistics.stdev(means['worst']))} | |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/loo-key-spread"))
