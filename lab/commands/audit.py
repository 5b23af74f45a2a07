"""``lab audit``: would a model trained on my published folder work? (The data owner's self-test; no key.)"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from lab.cli import app, console, log
from lab.errors import LabError


def _names(text: str | None, option: str) -> list[str] | None:
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise LabError(f"{option} {text!r}: give comma-separated names")
    return names


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise LabError(f"--seeds {text!r}: expected comma-separated whole numbers, e.g. 0,1,2") from None


def _announce(plan) -> None:
    """What the audit will train, and what it found in the folders that a person should know."""
    from lab.audit import AUDIO_EXTENSIONS
    from lab.commands.fad import warn
    folders, first = plan.folders, plan.published[plan.models[0]]
    console.print(f"[bold]lab audit[/bold] {escape(str(folders.published))}: {', '.join(plan.models)} on "
                  f"{first.features.type}, attacks {', '.join(c.type for c in plan.attacks) or 'none'}, seeds "
                  f"{plan.seeds}, {first.train.epochs} epochs; {len(plan.cells())} cells (model x folder x seed)",
                  highlight=False)
    ignored = sum(folders.ignored.values())
    if ignored:
        log(f"left out: {ignored} files that are not ROOT/<label>/*{'|*'.join(AUDIO_EXTENSIONS)} (manifest, "
            f"metadata, other formats, deeper folders)")
    if folders.unchanged:
        warn(f"{folders.unchanged} of {folders.clips['published']} published clips are byte-identical to clips of "
             f"the clean copy: they carry no protection")
    if folders.manifest is None:
        log(f"{folders.published} has no manifest.jsonl (not written by lab protect): audited as it is")


@app.command()
def audit(
    published: Path = typer.Argument(..., metavar="PUBLISHED", help="The published folder (what lab protect wrote): "
                                     "PUBLISHED/<label>/*.wav|flac|ogg, or a flat folder whose metadata.csv "
                                     "(file_name,label) or manifest.jsonl gives each file's label; other files "
                                     "are ignored."),
    test: Path = typer.Option(..., "--test", metavar="CLEAN_TEST_DIR", help="Clean held-out clips, "
                              "CLEAN_TEST_DIR/<label>/*.wav (or flat, as PUBLISHED), with the same label names "
                              "as PUBLISHED."),
    reference: Optional[Path] = typer.Option(None, "--reference", metavar="CLEAN_TRAIN_DIR", help="A clean copy of "
                                             "the training audio (same labels): the same models are trained on it, "
                                             "and the verdict compares with it; without it, with chance only."),
    models: str = typer.Option("cnn,lstm,transformer", "--models", help="Architectures, comma-separated (each on "
                               "the lab's default features, MFCC)."),
    attacks_: str = typer.Option("augment,codec", "--attacks", help="Attacks an outsider can run, comma-separated, "
                                 "e.g. augment,codec,mixed-position; 'all' for every one; 'none' for plain training "
                                 "only. Plain training (no attack) is always a row."),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="Attack option ATTACK.FIELD=VALUE (YAML "
                                               "value), e.g. -o codec.resample_hz=2000. Repeatable."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated seeds."),
    epochs: int = typer.Option(10, "--epochs", help="Training epochs of every model."),
    max_per_class: Optional[int] = typer.Option(None, "--max-per-class", help="At most this many training "
                                                "clips per label (a quick run; the same draw from PUBLISHED and the "
                                                "clean copy); the test clips are always used whole."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Any other recipe field, e.g. --set "
                                             "data.sample_rate=16000 --set train.num_threads=1 (repeatable)."),
    out: Path = typer.Option(Path("runs"), "--out", metavar="DIR", help="Folder for runs: writes "
                             "DIR/audit/<PUBLISHED>-<time>/."),
    html: bool = typer.Option(False, "--html", help="Also write listen.html in the audit folder: a few published "
                              "clips (players, spectrograms), the table and the verdict, in one self-contained "
                              "file; an outsider's view (no clean counterpart, no key)."),
):
    """Train the lab's models on a published folder as an outsider would, and test them on clean held-out clips.

    Example: lab audit published/ --test clean_test/ --reference clean_train/

    Prints one table (rows: model x attack, no attack first; columns: clean-test accuracy, mean ± std over the seeds,
    and n) and a verdict. The verdict rule: let c = 1/K be chance for K labels, n the number of clean test clips, and
    margin = 3 x sqrt(c(1-c)/n). The published folder is learnable when the best mean clean-test accuracy over all
    rows is above c + margin and, with --reference, also at least 50% of the way from chance to the best mean
    accuracy the clean copy gives; unlearnable otherwise; inconclusive when the clean copy itself is not above
    c + margin (too little training).

    Writes DIR/audit/<PUBLISHED>-<time>/ (--out DIR, default runs) with results.json (every accuracy per seed, the
    verdict, versions, git commit), results.md and cells/; results.json is written last, and an audit that fails
    keeps the folder marked INCOMPLETE (or removes it when nothing was trained). With --html also listen.html there
    (docs/protect.md).
    """
    from lab import audit as lab_audit
    plan = lab_audit.plan_audit(published, test, reference, _names(models, "--models"),
                                _names(attacks_, "--attacks"), _seeds(seeds), epochs, max_per_class,
                                list(option or []), list(set_ or []))
    _announce(plan)
    started = time.perf_counter()
    rec = plan.published[plan.models[0]]
    results, run_dir = lab_audit.run_audit(plan, out, log=log, progress=rec.train.progress and console.is_terminal,
                                           html=html)
    header, rows = lab_audit.table(results)
    table = Table(title=f"clean-test accuracy of models trained on {escape(plan.folders.published.name)} (chance "
                        f"{results['chance']:.2f}; {results['data']['test_clips']} clean test clips)")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i < 2 else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    console.print(f"[bold]{escape(results['verdict']['line'])}[/bold]", highlight=False, soft_wrap=True)
    page = f", listening page {run_dir}/listen.html" if html else ""
    console.print(f"results: {run_dir}/results.json, results.md{page} ({time.perf_counter() - started:.0f} s)",
                  highlight=False, soft_wrap=True)
