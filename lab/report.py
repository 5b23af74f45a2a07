"""Reports: many results.json files -> the accuracy, position-ablation and quality tables (mean ± std over seeds,
with the number of seeds), as Rich tables, Markdown and CSV, plus plots; and each ``lab attack`` run's matrix
(attacks x defenses, as that command writes it).

Runs whose recipes are identical except for their seeds are pooled (a seed that appears twice counts once). Attack
runs are not pooled: each keeps its own matrix. A results.json that is neither is named as skipped.
"""
from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from lab.experiment import CONVERGENCE_NAMES, EVALUATIONS
from lab.quality import metric_cell, perceptual_metrics
from lab.results import mean_std, stat as results_stat, stat_columns

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
    # model -> "final" / "peak" / "peak_epoch" -> per-seed values (runs that monitored every epoch)
    convergence: dict[str, dict[str, list[float]]] = field(default_factory=dict)


@dataclass
class AttackRun:
    """One ``lab attack`` run: its results.json, a label and its matrix (lab.attacking.Matrix)."""
    path: Path
    label: str
    results: dict
    matrix: object


@dataclass
class Collected:
    groups: list[Group]  # lab run results, pooled over seeds
    attacks: list[AttackRun]
    skipped: list[tuple[Path, str]]  # (results.json, why it was not read)


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


def _parse_run(results: dict) -> list[tuple[int, dict[str, float], dict[str, dict[str, float]]]]:
    """A lab run's numbers per seed: (seed, accuracy per evaluation, ablation accuracy per variant and model). Read
    in full before anything is pooled; a KeyError, TypeError or ValueError if the file is not such a result."""
    parsed = []
    for entry in results["per_seed"]:
        accuracy = {f"{m}/{t}": float(entry[m][t]["accuracy"]) for m, t in EVALUATIONS}
        ablation = {which: {name: float(acc) for name, acc in entry[which].get("ablation", {}).items()}
                    for which in ("protected_model", "clean_model")}
        convergence = {which: _convergence(entry[which]["convergence"])
                       for which in ("clean_model", "protected_model") if entry[which].get("convergence")}
        parsed.append((entry["seed"], accuracy, ablation, convergence))
    return parsed


def _convergence(record: dict) -> dict[str, float]:
    """A model's convergence numbers; the settled epoch computed from the per-epoch accuracies for runs recorded
    before it was (the same rule, lab.train.settled_epoch)."""
    from lab.train import settled_epoch
    out = {k: float(record[k]) for k in ("final", "peak", "peak_epoch")}
    settled = record.get("settled_epoch")
    if settled is None and record.get("per_epoch"):
        settled = settled_epoch([float(v) for v in record["per_epoch"]])
    if settled is not None:
        out["settled_epoch"] = float(settled)
    return out


def _commit(results: dict) -> str | None:
    provenance = results.get("provenance")
    git = provenance.get("git") if isinstance(provenance, dict) else None
    return git.get("commit") if isinstance(git, dict) else None


UNREADABLE = (KeyError, TypeError, ValueError, AttributeError, OSError)  # what a file of another shape raises


def _why(e: Exception) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def _attack_label(results: dict, path: Path) -> str:
    """`recipe attack-<type>-<timestamp>: model/features, N epochs`: the folder tells attack runs apart."""
    r = results.get("recipe", {})
    epochs = r.get("train", {}).get("epochs")
    ep = f", {epochs} epochs" if epochs is not None else ""
    return (f"{results.get('recipe_name', '?')} {path.parent.name}: {r.get('model', {}).get('type', '?')}/"
            f"{r.get('features', {}).get('type', '?')}{ep}")


def read(paths: list[Path]) -> Collected:
    """Sort results.json files into lab run results (pooled into groups), lab attack runs and the skipped ones."""
    from lab.attacking import Matrix
    groups: dict[str, Group] = {}
    attack_runs, skipped = [], []
    for path in map(Path, paths):
        try:
            results = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            skipped.append((path, f"not readable JSON ({type(e).__name__})"))
            continue
        if not isinstance(results, dict):
            skipped.append((path, "not a lab run or lab attack result"))
            continue
        if "per_seed" in results:
            try:
                parsed, label = _parse_run(results), _label(results, path)
            except UNREADABLE as e:
                skipped.append((path, f"a lab run result that cannot be read ({_why(e)})"))
                continue
            _pool(groups, results, path, label, parsed)
        elif "accuracy" in results and "defenses" in results:
            try:
                matrix = Matrix.from_results(results)
                label = _attack_label(results, path)
            except UNREADABLE as e:
                skipped.append((path, f"a lab attack result whose matrix cannot be read ({_why(e)})"))
                continue
            attack_runs.append(AttackRun(path, label, results, matrix))
        else:
            skipped.append((path, "not a lab run or lab attack result (no per_seed, no attack matrix)"))
    return Collected(list(groups.values()), attack_runs, skipped)


def _pool(groups: dict[str, Group], results: dict, path: Path, label: str, parsed: list) -> None:
    key = _config_key(results["recipe"])
    g = groups.setdefault(key, Group(label, results["recipe"]))
    g.run_dirs.append(path.parent)
    g.commits.add(_commit(results))
    quality = results.get("quality")
    g.quality.append(quality if isinstance(quality, dict) else {})
    for seed, accuracy, ablation, convergence in parsed:
        if seed in g.seeds:
            continue
        g.seeds.append(seed)
        for which, values in convergence.items():
            for k, v in values.items():
                g.convergence.setdefault(which, {}).setdefault(k, []).append(v)
        for name, acc in accuracy.items():
            g.accuracy.setdefault(name, []).append(acc)
        for which, variants in ablation.items():
            for name, acc in variants.items():
                g.ablation.setdefault(name, {}).setdefault(which, []).append(acc)


def collect(paths: list[Path]) -> list[Group]:
    """The lab run results among ``paths``, pooled (attack runs and unreadable files left out: see ``read``)."""
    return read(paths).groups


stat = results_stat  # (kept under their old names for callers: the one computation and format are lab.results')
fmt = mean_std


QUALITY_KEYS = ["SNR dB (mean)", "PESQ", "STOI", "ESTOI", "FAD", "FAD (same size as floor)", "FAD clean floor",
                "FAD backend"]
PERCEPTUAL = ("pesq", "stoi", "estoi")  # the perceptual metrics of a quality section (lab.quality.score_pairs)


def _perceptual(g: Group) -> dict:
    """The first of the group's runs that has perceptual metrics: ``{name: entry}`` (lab.quality.perceptual_metrics),
    empty when none has (as the FAD columns take the first run's FAD)."""
    return next((m for m in map(perceptual_metrics, g.quality) if m), {})


def _quality_cells(g: Group) -> dict[str, str]:
    snr = [q.get("protected_train_vs_clean", {}).get("snr_db_mean") for q in g.quality]
    snr = [s for s in snr if s is not None]
    fads = [q["fad"] for q in g.quality if (q.get("fad") or {}).get("value") is not None]
    out = {"SNR dB (mean)": f"{statistics.fmean(snr):.1f}" if snr else "–"}
    for name, entry in _perceptual(g).items():
        if name in PERCEPTUAL:
            out[name.upper()] = metric_cell(entry)
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
    q_keys = sorted({k for c in q_cells for k in c}, key=QUALITY_KEYS.index)
    q_rows = [[g.label, *(c.get(k, "–") for k in q_keys)] for g, c in zip(groups, q_cells)]
    conv_head = ["run", "model", "last epoch", "peak over epochs", "epoch of the peak",
                 "settled from epoch (±0.02 of the last 10)", "seeds"]
    conv_rows = [[g.label, CONVERGENCE_NAMES[which], fmt(c["final"]), fmt(c["peak"]),
                  ", ".join(str(int(e)) for e in c["peak_epoch"]),
                  ", ".join(str(int(e)) for e in c["settled_epoch"]) if c.get("settled_epoch") else "–",
                  str(len(c["final"]))]
                 for g in groups for which, c in g.convergence.items()]
    out = {"accuracy": (acc_head, acc_rows), "ablation": (abl_head, abl_rows), "quality": (["run", *q_keys], q_rows)}
    if conv_rows:
        out["convergence"] = (conv_head, conv_rows)
    return out


STAT_HEAD = ["mean", "std", "n", "values"]  # the numeric columns of every statistic in the report's CSV files
TRAINED_ON = {"clean_model": "clean", "protected_model": "protected"}
TESTED_ON = {"clean_test": "clean", "protected_test": "protected", "mixed_test": "protected, positions mixed"}


def _stat_row(values: list[float]) -> list:
    """``mean, std, n, values`` as numbers (std empty for one seed; values: the per-seed numbers, space-separated)."""
    return [*stat_columns(values), " ".join(repr(float(v)) for v in values)]


def csv_tables(groups: list[Group]) -> dict[str, tuple[list[str], list[list]]]:
    """The tables of :func:`tables` as tidy CSV: one row per statistic, its mean, std and n as numeric columns
    (where the Markdown cell reads ``0.971 ± 0.004``), the per-seed values beside them; quality figures as
    numbers (the FAD interval in two columns)."""
    acc = [[g.label, TRAINED_ON[m], TESTED_ON[t], *_stat_row(g.accuracy[f"{m}/{t}"])]
           for g in groups for m, t in EVALUATIONS if g.accuracy.get(f"{m}/{t}")]
    abl = [[g.label, name, TRAINED_ON[which], *_stat_row(row[which])]
           for g in groups for name, row in g.ablation.items() for which in ("protected_model", "clean_model")
           if row.get(which)]
    measures = {"final": "last epoch", "peak": "peak over epochs", "peak_epoch": "epoch of the peak",
                "settled_epoch": "settled from epoch (±0.02 of the last 10)"}
    conv = [[g.label, CONVERGENCE_NAMES[which], name, *_stat_row(c[key])]
            for g in groups for which, c in g.convergence.items() for key, name in measures.items() if c.get(key)]
    out = {"accuracy": (["run", "trained on", "tested on", *STAT_HEAD], acc),
           "ablation": (["run", "test variant", "trained on", *STAT_HEAD], abl),
           "quality": _quality_csv(groups)}
    if conv:
        out["convergence"] = (["run", "model", "measure", *STAT_HEAD], conv)
    return out


def _quality_csv(groups: list[Group]) -> tuple[list[str], list[list]]:
    """The quality table as numbers: mean SNR (dB) over the group's runs; the first run's perceptual metrics (per
    metric its mean, worst 5%, clips scored ``n`` and clips it does not apply to; PESQ's mode, nb or wb); the first
    run's FAD with its interval, its same-size value, the clean floor and the backend (empty where a run has none)."""
    columns = ("mean", "worst5", "n", "n_not_applicable")
    head = ["run", "SNR dB (mean)", *(f"{m.upper()} {c}" for m in PERCEPTUAL for c in columns), "PESQ mode", "FAD",
            "FAD interval low", "FAD interval high", "FAD (same size as floor)", "FAD clean floor", "FAD backend"]
    rows = []
    for g in groups:
        snr = [q.get("protected_train_vs_clean", {}).get("snr_db_mean") for q in g.quality]
        snr = [s for s in snr if s is not None]
        perceptual = _perceptual(g)
        numbers = [_number((perceptual.get(m) or {}).get(c)) for m in PERCEPTUAL for c in columns]
        fad = next((q["fad"] for q in g.quality if (q.get("fad") or {}).get("value") is not None), {})
        ci = fad.get("ci") or ["", ""]
        rows.append([g.label, statistics.fmean(snr) if snr else "", *numbers,
                     (perceptual.get("pesq") or {}).get("mode", ""), fad.get("value", ""), ci[0], ci[1],
                     fad.get("same_size_value", ""), fad.get("floor", ""), fad.get("backend", "")])
    return head, rows


def _number(value):
    """A CSV cell: the number, or empty when there is none."""
    return "" if value is None else value


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def attack_title(run: AttackRun) -> str:
    return (f"{run.label}; clean-test accuracy under attack (chance {run.matrix.chance:.3f}, seeds "
            f"{run.results.get('seeds')})")


def attack_table(run: AttackRun) -> tuple[list[str], list[list[str]]]:
    """The run's matrix as ``lab attack`` prints it: a row per attack, a column per defense, the worst case last."""
    from lab.attacking import table_rows
    return table_rows(run.matrix)


def attack_csv(runs: list[AttackRun]) -> tuple[list[str], list[list]]:
    """Every attack run's table.csv lines, with a first column naming the run."""
    from lab.attacking import CSV_HEADER, csv_rows
    return ["run", *CSV_HEADER], [[run.label, *row] for run in runs for row in csv_rows(run.matrix)]


def skipped_line(path: Path, why: str) -> str:
    return f"skipped {path}: {why}"


def write(groups: list[Group], out: Path, attack_runs: list[AttackRun] = (),
          skipped: list[tuple[Path, str]] = (), listening: str | None = None) -> dict[str, Path]:
    """Write report.md and one CSV per table into ``out`` (the run tables when there are lab run results,
    attacks.csv when there are attack runs); return the paths. ``listening``: the name of the listening page
    written beside it (lab.listen), which report.md then says is private."""
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    commits = set().union(*(g.commits for g in groups), {_commit(r.results) for r in attack_runs})
    parts = ["# Lab report", "",
             "Accuracy is mean ± std over seeds (n = seeds column; one seed: the mean and n=1); arrows read "
             "'trained on → tested on'. The CSV files beside this report hold the same numbers tidy: one row per "
             "statistic, with mean, std and n as numeric columns and the per-seed values. "
             "Quality: PESQ (nb: narrow-band at 8 kHz, wb: wide-band at 16 kHz), STOI and ESTOI read 'mean / worst "
             "5% (clips scored, clips the metric does not apply to)', from the first run of a row that has them. "
             f"Git commits of the runs: {', '.join(sorted(str(c) for c in commits))}.",
             ""]
    if listening:
        from lab.listen import PRIVATE_NOTE
        parts += [f"Listening page: [{listening}]({listening}). {PRIVATE_NOTE}", ""]
    for name, (head, rows) in (tables(groups).items() if groups else ()):
        parts += [f"## {name.capitalize()}", "", markdown_table(head, rows), ""]
    for name, (head, rows) in (csv_tables(groups).items() if groups else ()):  # the same tables, tidy
        path = out / f"{name}.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(head)
            writer.writerows(rows)
        written[name] = path
    if attack_runs:
        parts += ["## Attacks", "",
                  "One table per `lab attack` run: clean-test accuracy of a model trained on each defense's protected "
                  "training set (columns; `none` is clean data) under each attack (rows), mean ± std over the run's "
                  "seeds; the last row is the worst case for the data owner (the highest mean over the rows above, "
                  "and the attack that reached it).", ""]
        for run in attack_runs:
            parts += [f"### {attack_title(run)}", "", markdown_table(*attack_table(run)), ""]
        head, rows = attack_csv(attack_runs)
        with open(out / "attacks.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(head)
            writer.writerows(rows)
        written["attacks"] = out / "attacks.csv"
    if skipped:
        parts += ["## Skipped", ""] + [f"- {skipped_line(p, why)}" for p, why in skipped] + [""]
    (out / "report.md").write_text("\n".join(parts))
    written["report"] = out / "report.md"
    return written
