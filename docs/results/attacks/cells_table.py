"""The finished cells of an attack matrix that is still running or was stopped (lab attack keeps each finished cell,
defense x seed, as one JSON file in its plan folder), as a Markdown table: a row per attack, a column per defense,
mean ± std over the seeds finished (n under 3 is shown), and the worst case over the attacks that use no clean clips.

    python docs/results/attacks/cells_table.py OUT/matched_budget/attack-cells/<plan id>

The finished matrix's own results.json / results.md replace this; it only reads what is there.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path



def needs_clean(column: str) -> bool:
    """Whether the attack of a column ("clean-finetune 5%": the attack's name, then its setting) uses clean clips,
    as the attack declares it (``needs_clean``)."""
    from attacks import ATTACKS
    name = column.split(" ")[0]
    return name in ATTACKS and bool(getattr(ATTACKS.get(name), "needs_clean", False))


def main(folder: Path) -> None:
    cells = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    if not cells:
        sys.exit(f"no finished cells in {folder}")
    defenses = list(dict.fromkeys(c["defense"] for c in cells))
    attacks = list(dict.fromkeys(a for c in cells for a in c["columns"]))
    values = {(c["defense"], a, c["seed"]): v for c in cells for a, v in c["values"].items()}

    def cell(d: str, a: str) -> tuple[str, float | None]:
        got = [v for (dd, aa, _), v in values.items() if dd == d and aa == a]
        if not got:
            return "-", None
        mean = statistics.mean(got)
        text = f"{mean:.3f} ± {statistics.stdev(got):.3f}" if len(got) > 1 else f"{mean:.3f}"
        return text + (f" (n={len(got)})" if len(got) < 3 else ""), mean

    print("| attack | " + " | ".join(defenses) + " |")
    print("|---|" + "---|" * len(defenses))
    worst = {d: ("-", -1.0) for d in defenses}
    for a in attacks:
        row = []
        for d in defenses:
            text, mean = cell(d, a)
            row.append(text)
            if mean is not None and not needs_clean(a) and mean > worst[d][1]:
                worst[d] = (a, mean)
        print(f"| {a} | " + " | ".join(row) + " |")
    print("| worst case (no attack and the attacks without clean clips) | " + " | ".join(f"{m:.3f} ({a})" for a, m in worst.values()) + " |")
    seeds = {d: sorted({c["seed"] for c in cells if c["defense"] == d}) for d in defenses}
    print("\nseeds finished: " + "; ".join(f"{d} {s}" for d, s in seeds.items()))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
