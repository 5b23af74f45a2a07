"""``lab report RUN_OR_SWEEP_DIRS...``: tables and plots across runs."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from lab.cli import app, console, log


@app.command()
def report(
    dirs: list[Path] = typer.Argument(..., help="Run folders, sweep folders, attack folders or results.json files."),
    out: Optional[Path] = typer.Option(None, help="Report folder (default runs/reports/<timestamp>)."),
    spectrograms: bool = typer.Option(True, help="Plot one protected clip per class (reloads the first run's data)."),
    html: bool = typer.Option(False, "--html", help="Also write listen.html: per protection (lab run, lab attack "
                              "column) a few clips clean and protected (players), spectrograms of both and of their "
                              "difference, and the accuracy and quality rows; one self-contained file, as PRIVATE "
                              "as the protection records."),
):
    """Aggregate results.json files into the accuracy, position-ablation and quality tables (mean ± std over seeds,
    with the number of seeds) in the terminal, report.md and CSV; plot learning curves, the frontier and a
    spectrogram of one protected clip per class with its patch marked. Each `lab attack` run found gets its own
    table (a row per attack, a column per defense, the worst case last; also in attacks.csv); any other
    results.json is named as skipped. With --html, also a listening page (docs/quality.md, "Listening")."""
    from lab import plots
    from lab.errors import LabError
    from lab.report import attack_table, attack_title, read, skipped_line, tables, write
    from lab.rundir import find_results

    out = out or Path("runs") / "reports" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if html:
        from lab.listen import refuse_published
        refuse_published(out, "--out")
    found = find_results(dirs, log=log)
    collected = read(found)
    groups = collected.groups
    for path, why in collected.skipped:  # one line each, however long: never wrapped
        console.print(skipped_line(path, why), style="dim", markup=False, highlight=False, soft_wrap=True)
    if not groups and not collected.attacks:
        raise LabError(f"nothing to report: none of the {len(found)} results.json files is a lab run or lab attack "
                       f"result")
    for name, (head, rows) in (tables(groups).items() if groups else ()):
        _print_table(name, head, rows)
    for run in collected.attacks:
        _print_table(attack_title(run), *attack_table(run), matrix=True)
    page = None
    if html:  # built before anything is written (a page with nothing to hear: one line, nothing written)
        from lab.listen import PAGE, report_page
        page = report_page(groups, collected.attacks, log)
    written = write(groups, out, collected.attacks, collected.skipped, listening=PAGE if page else None)
    if page:
        from lab.listen import PRIVATE_NOTE, write_page
        write_page(out / PAGE, page, private=True)
        console.print(f"listening page: {out / PAGE} ({len(page.encode()) / 1e6:.1f} MB). {PRIVATE_NOTE}",
                      style="bold red", markup=False, highlight=False)
    if groups:
        run_dirs = [d for g in groups for d in g.run_dirs]
        plots.learning_curves([(g.label.split(": ", 1)[-1], g.run_dirs) for g in groups],
                              out / "learning_curves.png")
        _frontier(groups, out / "frontier.png")
        if spectrograms:
            _spectrograms(run_dirs[0], out / "spectrograms.png")
    extra = "CSV tables and PNG plots" if groups else "attacks.csv"
    console.print(f"written: {written['report']} (+ {extra}) in {out}")


def _print_table(title: str, head: list[str], rows: list[list[str]], matrix: bool = False) -> None:
    """A run table as before; an attack matrix as `lab attack` prints it (numbers right-aligned, long cells folded)."""
    table = Table(title=title)
    for i, h in enumerate(head):
        if matrix:
            table.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
        else:
            table.add_column(h)
    for r in rows:
        table.add_row(*r)
    console.print(table)


def _frontier(groups, path: Path) -> None:
    from lab import plots
    from lab.results import stat
    from lab.sweep import pareto
    rows, cost = [], []
    use_fad = all(any((q.get("fad") or {}).get("value") is not None for q in g.quality) for g in groups)
    for g in groups:
        acc = g.accuracy["protected_model/clean_test"]
        quality = next((q for q in g.quality if (q.get("fad") or {}).get("value") is not None or not use_fad), {})
        snr = (quality.get("protected_train_vs_clean") or {}).get("snr_db_mean")
        if not use_fad and snr is None:
            log(f"frontier plot: {g.label} left out (its results have no SNR)")
            continue
        mean, std, _ = stat(acc)
        rows.append({"model": g.recipe["model"]["type"], "feature": g.recipe["features"]["type"],
                     "protected_clean_acc": mean, "protected_clean_acc_std": std})
        cost.append(quality["fad"]["value"] if use_fad else -snr)
    if not rows:
        log("frontier plot skipped: no run has an SNR or FAD")
        return
    for r, on_front in zip(rows, pareto([(c, r["protected_clean_acc"]) for c, r in zip(cost, rows)])):
        r["pareto"] = on_front
    plots.frontier_plot(rows, cost, "FAD (protected vs clean)" if use_fad else "-SNR of protected audio (dB)", path)


def _spectrograms(run_dir: Path, path: Path) -> None:
    from lab.errors import LabError
    from lab.plots import protected_spectrograms
    from lab.rundir import load_run
    from lab.spine import ExperimentData
    try:
        run = load_run(run_dir)
        data = ExperimentData.from_run(run, log=log)
        test = data.test
    except LabError as e:
        log(f"spectrogram plot skipped: {e}")
        return
    protection = run.protection
    protected = data.protected_test.waveforms
    spans = protection.patch_spans(test.labels, test.waveforms.shape[1], test.lengths)
    if spans is None:  # a protection without patches (whole-clip filters or noise)
        spans = [[] for _ in range(len(test))]
    protected_spectrograms(test.waveforms, protected, test.labels, test.class_names, spans, test.sample_rate, path)
