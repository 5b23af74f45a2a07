"""Reports: many results.json files -> the accuracy, position-ablation and quality tables (mean ± std over seeds,
with the number of seeds), as Rich tables, Markdown and CSV, plus plots.

Runs whose recipes are identical except for their seeds are pooled (a seed that appears twice counts once).
"""
from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from lab.experiment import EVALUATIONS

ACC_COLUMNS = {f"{m}/{t}": short for (m, t), short in zip(EVALUATIONS, [
    "clean→clean", "clean→protected", "protected→clean", "protected→protected", "protected→mixed"])}


@dataclass
class Group:
    label: str
    recipe: dict
    run_dirs: list[Path] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    accuracy: dict[str, list[float]] = field(default_factory=dict)
    ablation: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    quality: list[dict] = field(default_factory=list)
    commits: set = field(default_factory=set)


def _config_key(recipe: dict) -> str:
    return json.dumps({k: v for k, v in recipe.items() if k not in ("seeds", "output_dir", "description")},
                      sort_keys=True)


def _label(results: dict, path: Path) -> str:
    """`recipe: model/features/defense, N epochs [the sweep cell's other settings]`. Training length is in the label
    because runs that differ only in epochs are different rows, and must not read alike."""
    r = results["recipe"]
    shown = {"model": {"type": r["model"]["type"]}, "features.type": r["features"]["type"]}
    cell = path.parent / "cell.json"
    extra = ""
    if cell.is_file():
        rest = {k: v for k, v in json.loads(cell.read_text())["cell"].items() if shown.get(k) != v}
        if rest:
            extra = " [" + ", ".join(f"{k.split('.')[-1]}={v}" for k, v in rest.items()) + "]"
    epochs = r.get("train", {}).get("epochs")
    ep = f", {epochs} epochs" if epochs is not None else ""
    return f"{results['recipe_name']}: {r['model']['type']}/{r['features']['type']}/{r['defense']['type']}{ep}{extra}"


def collect(paths: list[Path]) -> list[Group]:
    groups: dict[str, Group] = {}
    for path in paths:
        results = json.loads(Path(path).read_text())
        key = _config_key(results["recipe"])
        g = groups.setdefault(key, Group(_label(results, Path(path)), results["recipe"]))
        g.run_dirs.append(Path(path).parent)
        g.commits.add(results.get("provenance", {}).get("git", {}).get("commit"))
        g.quality.append(results.get("quality", {}))
        for entry in results["per_seed"]:
            if entry["seed"] in g.seeds:
                continue
            g.seeds.append(entry["seed"])
            for m, t in EVALUATIONS:
                g.accuracy.setdefault(f"{m}/{t}", []).append(entry[m][t]["accuracy"])
            for which in ("protected_model", "clean_model"):
                for name, acc in entry[which].get("ablation", {}).items():
                    g.ablation.setdefault(name, {}).setdefault(which, []).append(acc)
    return list(groups.values())


def stat(values: list[float]) -> tuple[float, float, int]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), len(values)


def fmt(values: list[float] | None) -> str:
    if not values:
        return "–"
    mean, std, n = stat(values)
    return f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"


def _quality_cells(g: Group) -> dict[str, str]:
    snr = [q.get("protected_train_vs_clean", {}).get("snr_db_mean") for q in g.quality]
    snr = [s for s in snr if s is not None]
    fads = [q["fad"] for q in g.quality if (q.get("fad") or {}).get("value") is not None]
    out = {"SNR dB (mean)": f"{statistics.fmean(snr):.1f}" if snr else "–"}
    if fads:
        f = fads[0]
        ci = f.get("ci")
        out["FAD"] = f"{f['value']:.3g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "")
        out["FAD clean floor"] = f"{f['floor']:.3g}" if f.get("floor") is not None else "–"
        if f.get("same_size_value") is not None:
            out["FAD (same size as floor)"] = f"{f['same_size_value']:.3g}"
        out["FAD backend"] = str(f.get("backend", "–"))
    return out


def tables(groups: list[Group]) -> dict[str, tuple[list[str], list[list[str]]]]:
    acc_head = ["run", "seeds", *ACC_COLUMNS.values()]
    acc_rows = [[g.label, str(len(g.seeds)), *(fmt(g.accuracy.get(k)) for k in ACC_COLUMNS)] for g in groups]
    abl_head = ["run", "test variant", "protected-trained", "clean-trained (control)", "seeds"]
    abl_rows = [[g.label, name, fmt(row.get("protected_model")), fmt(row.get("clean_model")), str(len(g.seeds))]
                for g in groups for name, row in g.ablation.items()]
    q_cells = [_quality_cells(g) for g in groups]
    q_keys = sorted({k for c in q_cells for k in c}, key=lambda k: ["SNR dB (mean)", "FAD", "FAD (same size as floor)",
                                                                     "FAD clean floor", "FAD backend"].index(k))
    q_rows = [[g.label, *(c.get(k, "–") for k in q_keys)] for g, c in zip(groups, q_cells)]
    return {"accuracy": (acc_head, acc_rows), "ablation": (abl_head, abl_rows), "quality": (["run", *q_keys], q_rows)}


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write(groups: list[Group], out: Path) -> dict[str, Path]:
    """Write report.md and one CSV per table into ``out``; return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    parts = ["# Lab report", "",
             "Accuracy is mean ± std over seeds (n = seeds column); arrows read 'trained on → tested on'. "
             f"Git commits of the runs: {', '.join(sorted(str(c) for c in set().union(*(g.commits for g in groups))))}.",
             ""]
    for name, (head, rows) in tables(groups).items():
        path = out / f"{name}.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(head)
            writer.writerows(rows)
        written[name] = path
        parts += [f"## {name.capitalize()}", "", markdown_table(head, rows), ""]
    (out / "report.md").write_text("\n".join(parts))
    written["report"] = out / "report.md"
    return written
