"""The matrix as people and machines read it: the table (rows: attacks, the worst case last; columns: defenses),
CSV, results.md, and the attack run folder with its results.json."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import yaml

from lab.attacking.cell import NO_ATTACK
from lab.attacking.matrix import WORST, Matrix
from lab.provenance import provenance
from lab.recipe import Recipe
from lab.results import (
    mean_std, provenance_line, stat_columns, summarise, too_small_warning, verdict,
)


def fmt_cell(values: list[float] | None) -> str:
    return mean_std(values, empty="-")


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
                mean, std, n = stat_columns(values)
                rows.append([d, c, f"{mean:.4f}", f"{std:.4f}" if n > 1 else "", n,
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


def conclusions(matrix: Matrix) -> tuple[str | None, list[str]]:
    """What a reader of the matrix may conclude: the too-small warning (from column ``none``, no attack: the
    clean-trained model) and one verdict per defense on its worst case, the attack the data owner must expect
    (lab.results.verdict; README, "The verdict"). Without a ``none`` column there is no clean reference: one line
    says so."""
    clean = matrix.cells.get("none", {}).get(NO_ATTACK)
    if not clean:
        return None, ["no verdict: the table has no clean reference (add none to --defenses)"]
    said = []
    for d in matrix.defenses:
        worst = matrix.worst(d)
        if d == "none" or not worst:
            continue
        said.append(verdict(f"{d}, worst case ({worst[1]})", matrix.cells[d][worst[1]], clean, matrix.chance))
    return too_small_warning(clean, matrix.chance), said


def to_markdown(results: dict, matrix: Matrix) -> str:
    header, rows = table_rows(matrix)
    lines = [f"# {results['recipe_name']}: attacks ({', '.join(results['attacks']) or 'none'})", "",
             f"Clean-test accuracy (chance {results['chance']:.3f}) of a model trained on each defense's protected "
             f"training set under each attack; mean ± std over seeds {results['seeds']}. The last row is the "
             f"worst case for the data owner (the highest mean accuracy over no attack and the attacks). Column "
             f"`none` is clean data: there, an attack's row shows what the attack itself costs.", "",
             provenance_line(results), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    too_small, verdicts = conclusions(matrix)
    lines += [""] + ([f"Warning: {too_small}", ""] if too_small else [])
    lines += ["Verdict (on each defense's worst case; the rule: README, \"The verdict\"):", ""]
    lines += [f"- {v}" for v in verdicts]
    lines += ["", "SNR of each defense's protected training audio (dB, mean / worst 5%): " + "; ".join(
        f"{d} {s['snr_db_mean']:.1f} / {s['snr_db_worst5']:.1f}" for d, s in matrix.snr.items()
        if d != "none" and s['snr_db_mean'] != float('inf')), ""]
    params = {d: p for d, p in results.get("defense_params", {}).items() if d != "none"}
    if params:
        lines += ["Defenses (key redacted): " + "; ".join(
            f"{d} " + ", ".join(f"{k}={v}" for k, v in p.items() if k != "type") for d, p in params.items()), ""]
    return "\n".join(lines)


def write_results(run_dir: Path, recipe: Recipe, recipe_path: str, label: str, attack_cfgs: list, matrix: Matrix,
                  wall_seconds: float, column_recipes: list[Recipe] | None = None) -> dict:
    """The attack run folder's files, ``results.json`` last (lab.rundir.finish). ``column_recipes``: the recipe of
    each column (its defense as configured for the matrix, matched SNR and --defense-option included); their
    defenses are recorded, key redacted, as ``defense_params``. Each column's protection record (what its defense
    derived from the key: private, like lab run's protection.json) goes to ``protections/<defense>.json``."""
    from lab.rundir import finish
    write_protection_records(Path(run_dir) / "protections", matrix.protections)
    results = {
        "recipe_name": recipe.name, "recipe_path": recipe_path, "recipe": recipe.public_dict(),
        "provenance": provenance(), "seeds": list(recipe.seeds), "chance": matrix.chance,
        "attacks": [c.type for c in attack_cfgs],
        "attack_params": [c.model_dump(mode="json") for c in attack_cfgs],
        "defenses": matrix.defenses, "columns": matrix.columns,
        "defense_params": {r.defense.type: r.public_dict()["defense"] for r in column_recipes or []},
        "accuracy": {d: {c: summarise(v) for c, v in cols.items()} for d, cols in matrix.cells.items()},
        "worst_case": {d: dict(zip(("accuracy", "attack"), matrix.worst(d))) for d in matrix.defenses
                       if matrix.worst(d)},
        "train_seconds": matrix.seconds, "attack_records": matrix.records, "snr": matrix.snr,
        "wall_seconds": round(wall_seconds, 1),
    }
    finish(run_dir, results, {"results.md": to_markdown(results, matrix), "table.csv": to_csv(matrix),
                              "recipe.yaml": yaml.safe_dump(recipe.public_dict(), sort_keys=False)})
    return results


def write_protection_records(folder: Path, records: dict[str, dict]) -> None:
    """One private JSON record per defense column (none included: its record says so)."""
    folder.mkdir(exist_ok=True)
    for defense, record in records.items():
        (folder / f"{defense}.json").write_text(json.dumps(record))


def cell_folder(recipe: Recipe, recipes: list[Recipe], attack_cfgs: list) -> Path:
    """Where a matrix keeps its finished cells: ``<output_dir>/<recipe>/attack-cells/<plan id>``, the id a hash of
    everything the cells depend on (each column's resolved recipe with its key's fingerprint, the attacks' configs),
    so the same command finds its cells again and another plan never reads them."""
    import hashlib

    from lab.keys import fingerprint, resolve_key
    plan = []
    for r in recipes:
        d = r.defense
        key = getattr(d, "key", None)
        fp = fingerprint(resolve_key(key, getattr(d, "key_file", None))) if (key or getattr(d, "key_file", None)) \
            else None
        plan.append({"recipe": r.public_dict(), "key_fingerprint": fp})
    plan.append({"attacks": [c.model_dump(mode="json") for c in attack_cfgs]})
    digest = hashlib.sha1(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(recipe.output_dir) / recipe.name / "attack-cells" / digest
