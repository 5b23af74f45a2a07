"""``lab requality DIRS...``: recompute the quality section of finished runs with the current code."""
from __future__ import annotations

from pathlib import Path

import typer

from lab.cli import app, console, log


@app.command()
def requality(dirs: list[Path] = typer.Argument(..., help="Run folders or sweep folders.")):
    """Recompute FAD and per-clip quality (SNR, SI-SNR, PESQ, STOI, ESTOI) of finished runs (no training: the
    recipe, the protection record and the first seed's saved clean model are enough) and store them in each
    results.json; the previous quality section is kept under quality_history. For runs made before a quality fix,
    or to add FAD or the perceptual metrics to older runs."""
    from lab.quality import per_clip_line
    from lab.rundir import find_results, refresh_quality
    from lab.sweep import summary_row, write_frontier
    import json
    files = find_results(dirs, log=log)
    for i, f in enumerate(files, 1):
        q = refresh_quality(f.parent, log)
        fad = q.get("fad", {})
        console.print(f"[{i}/{len(files)}] {f.parent}: FAD {fad.get('value', float('nan')):.3g} (floor "
                      f"{fad.get('floor', float('nan')):.3g}); per clip: {per_clip_line(q)}",
                      highlight=False, markup=False)
    for d in dirs:  # sweep folders: rewrite their frontier with the new numbers
        cells = sorted(Path(d).glob("cell-*/results.json"))
        if cells:
            rows = [summary_row(json.loads((c.parent / "cell.json").read_text())["cell"],
                                json.loads(c.read_text()), c.parent) for c in cells]
            write_frontier(rows, Path(d))
            console.print(f"frontier rewritten: {d}/frontier.csv, {d}/frontier.png")
