"""``lab fad``: Fréchet Audio Distance between two folders of audio."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from lab.cli import app, console, err_console, log


def audio_files(folder: Path) -> list[Path]:
    """Every audio file under ``folder`` (recursively), sorted by path; one-line errors for a missing or empty
    folder."""
    from lab.data.audio import AUDIO_EXTENSIONS
    from lab.errors import LabError
    if not folder.is_dir():
        raise LabError(f"no such folder: {folder} (give two folders of audio files)")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise LabError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {folder}")
    return files


def read_clips(files: list[Path], sample_rate: int, advance=lambda n: None):
    """The files, mixed to mono and resampled to ``sample_rate``: (clips, lengths); ``advance(1)`` after each."""
    import torch
    import torchaudio.functional as AF

    from lab.data.audio import read_audio
    from lab.fad.backends import pad_clips
    clips = []
    for path in files:
        data, sr = read_audio(path)
        wave = torch.from_numpy(data.mean(axis=1))
        clips.append(AF.resample(wave, sr, sample_rate) if sr != sample_rate else wave)
        advance(1)
    return pad_clips(clips)


def folder_clips(folder: Path, sample_rate: int):
    """Every audio file under ``folder`` (recursively), mono, resampled to ``sample_rate``: (clips, lengths)."""
    return read_clips(audio_files(folder), sample_rate)


def embed_in_chunks(model, waves, lengths, chunk: int = 256, advance=lambda n: None):
    """``model.embed`` over ``chunk`` clips at a time (so that progress can be shown), joined into one set."""
    from lab.fad import EmbeddingSet
    parts = []
    for start in range(0, len(waves), chunk):
        parts.append(model.embed(waves[start:start + chunk], model.sample_rate, lengths[start:start + chunk]))
        advance(min(chunk, len(waves) - start))
    return EmbeddingSet.concat(parts)


def pairing(files_a: list[Path], dir_a: Path, files_b: list[Path], dir_b: Path) -> None:
    """Refuse ``--paired`` unless both folders hold the same relative paths (clip i of one is then a version of
    clip i of the other: both lists are sorted the same way)."""
    from lab.errors import LabError
    names_a = {f.relative_to(dir_a).as_posix() for f in files_a}
    names_b = {f.relative_to(dir_b).as_posix() for f in files_b}
    if names_a != names_b:
        only_a, only_b = sorted(names_a - names_b), sorted(names_b - names_a)
        parts = [f"{len(only_a)} only in {dir_a} (e.g. {only_a[0]})" if only_a else "",
                 f"{len(only_b)} only in {dir_b} (e.g. {only_b[0]})" if only_b else ""]
        raise LabError(f"--paired: the folders do not hold the same files ({'; '.join(p for p in parts if p)}); "
                       "pairing matches each file with the one at the same relative path in the other folder "
                       "(leave out --paired for unrelated sets)")


def _mono_at(data, sr: int, rate: int):
    """A (frames, channels) array as one float64 channel at ``rate``."""
    import torch
    import torchaudio.functional as AF
    wave = torch.from_numpy(data.mean(axis=1)).double()
    return (AF.resample(wave, sr, rate) if sr != rate else wave).numpy()


def paired_perceptual(files_a: list[Path], files_b: list[Path], seed: int, steps: "Steps") -> dict:
    """PESQ, STOI and ESTOI of each file of B against the file of A at the same place in the sorted lists (the same
    relative path: :func:`pairing`), on the clips :func:`lab.quality.pick_clips` draws with ``seed``, at the rate of
    :func:`lab.quality.scoring_rate` for the lowest rate among the reference files drawn (narrow-band PESQ at
    8 kHz unless all are at 16 kHz or more). Each pair is cut to the reference clip's real length (up to its last
    non-zero sample; a shorter B clip is padded with zeros)."""
    import numpy as np

    from lab.data.audio import read_audio
    from lab.quality import PERCEPTUAL_CLIPS, pick_clips, score_pairs, scoring_rate, selection
    pick = pick_clips(len(files_a), PERCEPTUAL_CLIPS, seed).tolist()

    def read_pairs(advance) -> list:
        out = []
        for i in pick:
            out.append((read_audio(files_a[i]), read_audio(files_b[i])))
            advance(1)
        return out

    audio = steps.run("reading pairs for PESQ/STOI", len(pick), "pairs", read_pairs)
    rate, _ = scoring_rate(min(sr for (_, sr), _ in audio))
    pairs = []
    for (ref, sr_a), (deg, sr_b) in audio:
        ref, deg = _mono_at(ref, sr_a, rate), _mono_at(deg, sr_b, rate)
        nonzero = np.flatnonzero(ref)
        n = int(nonzero[-1]) + 1 if len(nonzero) else 1
        pairs.append((ref[:n], np.pad(deg[:n], (0, max(0, n - len(deg))))))
    metrics = steps.run("PESQ, STOI and ESTOI", 3 * len(pairs), "scores",
                        lambda advance: score_pairs(pairs, rate, advance))
    return {**selection(len(pick), len(files_a), PERCEPTUAL_CLIPS, seed), "sample_rate": rate, "source_sample_rates": sorted({sr for pair in audio for _, sr in pair}),
            "unchanged_clips": sum(bool(np.array_equal(r, d)) for r, d in pairs), "metrics": metrics}


def fad_table(result: dict, backend: str, sample_rate: int) -> Table:
    """What ``lab fad`` prints: the clips and embeddings of each set, FAD, its interval and FAD-infinity where
    computed."""
    paired = result["paired"]
    table = Table(title=f"FAD ({backend}, {result['dim']}-d, {sample_rate} Hz{', paired' if paired else ''})")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("clips A / B", f"{result['clips'][0]} / {result['clips'][1]}")
    table.add_row("embeddings A / B", f"{result['embeddings'][0]} / {result['embeddings'][1]}")
    table.add_row("FAD", f"{result['fad']:.4g}")
    if "ci_low" in result:
        table.add_row(f"{result['level']:.0%} interval ({result['bootstrap']} {'paired ' if paired else ''}"
                      f"resamples, seed {result['seed']})", f"[{result['ci_low']:.4g}, {result['ci_high']:.4g}]")
    if "fad_infinity" in result:
        fi = result["fad_infinity"]
        table.add_row(f"FAD-infinity (sizes {fi['sizes'][0]}..{fi['sizes'][-1]}, R² {fi['r2']:.2f})",
                      f"{fi['fad_inf']:.4g}")
    return table


def perceptual_table(section: dict) -> Table:
    """The perceptual metrics of a paired ``lab fad``: per metric mean, worst 5%, clips scored and not applicable."""
    from lab.quality import metric_label, selection_text
    table = Table(title=f"PESQ, STOI, ESTOI of B against A, pair by pair ({selection_text(section, 'pairs')}; "
                        f"{section['sample_rate']} Hz)")
    for column in ("metric", "mean", "worst 5%", "clips scored", "not applicable"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, e in section["metrics"].items():
        table.add_row(metric_label(name, e), *(f"{e[k]:.3f}" if e[k] is not None else "–" for k in ("mean", "worst5")),
                      str(e["n"]), str(e["n_not_applicable"]))
    return table


class Steps:
    """Progress of the slow steps of ``lab fad``: a Rich progress bar per step on a terminal; elsewhere (a log, a
    pipe) one line when a step ends and one every ``every`` seconds of a long step."""

    def __init__(self, every: float = 10.0):
        self.every = every
        self.bar = None
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn
            self.bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TimeRemainingColumn(), console=console)

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def run(self, label: str, total: int, unit: str, work):
        """``work(advance)``, showing ``label`` with ``total`` units done as ``advance(n)`` is called."""
        import time
        started = last = time.perf_counter()
        done = 0
        task = self.bar.add_task(label, total=total) if self.bar is not None else None

        def advance(n: int) -> None:
            nonlocal done, last
            done += n
            if task is not None:
                self.bar.update(task, completed=done)
            elif time.perf_counter() - last >= self.every:
                last = time.perf_counter()
                log(f"{label}: {done}/{total} {unit} ({last - started:.0f} s)")

        result = work(advance)
        if task is None:
            log(f"{label}: {total} {unit} in {time.perf_counter() - started:.1f} s")
        return result


@app.command("fad")
def fad_command(
    dir_a: Path = typer.Argument(..., help="Reference folder of audio (e.g. the clean clips); searched recursively."),
    dir_b: Path = typer.Argument(..., help="Folder of audio to compare with it (e.g. the protected clips)."),
    backend: str = typer.Option("logmel", help="Embedding backend: logmel (offline), vggish or pann (need the "
                                "frechet-audio-distance package and its weights); classifier runs only inside "
                                "`lab run`."),
    bootstrap: int = typer.Option(200, min=0, help="Bootstrap resamples of clips for the confidence interval "
                                  "(0: none)."),
    level: float = typer.Option(0.95, help="Confidence level of the interval."),
    seed: int = typer.Option(0, help="Seed of the bootstrap and of the FAD-infinity subsets."),
    paired: bool = typer.Option(False, "--paired", help="The folders hold versions of the same clips (e.g. clean "
                                "and protected), matched by relative path: the bootstrap resamples the same clips "
                                "from both, which narrows the interval. Both folders must hold the same file names."),
    fad_inf: bool = typer.Option(False, "--fad-inf", help="Also extrapolate FAD to infinitely many clips (FAD on "
                                 "subsets of several sizes, regressed on 1/N)."),
    perceptual: bool = typer.Option(True, help="With --paired: also PESQ, STOI and ESTOI of each B file against "
                                    "its A file (at most 500 pairs, drawn with --seed; narrow-band PESQ at 8 kHz, "
                                    "wide-band when every drawn A file is at 16 kHz or more)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the result to this JSON file (never "
                                            "overwrites an existing file)."),
):
    """FAD between the audio in DIR_A and DIR_B, with a bootstrap confidence interval.

    Every audio file (any extension of lab.formats.AUDIO_EXTENSIONS) under each folder is read, mixed to mono and resampled to the backend's rate;
    the backend turns each clip into embeddings, each folder's embeddings are summarised by a Gaussian, and the
    Fréchet distance between the two is printed in float64 with its interval. Neither folder is modified. A
    warning says when a folder holds too few clips for the embedding's dimension (fewer than 2 x dim) to trust
    the value. Progress is shown while the folders are read and embedded, and around the bootstrap. With --paired,
    PESQ, STOI and ESTOI of the pairs are reported too (mean, worst 5%, and the clips they do not apply to).
    """
    import time

    from lab.errors import LabError
    from lab.fad import build_backend, fad, fad_infinity
    if json_out is not None and json_out.exists():
        raise LabError(f"--json: {json_out} already exists; choose a new file name")
    model = build_backend(backend)
    files = [audio_files(folder) for folder in (dir_a, dir_b)]
    if paired:
        pairing(files[0], dir_a, files[1], dir_b)
    sets = []
    with Steps() as steps:
        for name, folder, found in (("A", dir_a, files[0]), ("B", dir_b, files[1])):
            waves, lengths = steps.run(f"reading {name} ({folder})", len(found), "files",
                                       lambda advance: read_clips(found, model.sample_rate, advance))
            sets.append(steps.run(f"embedding {name} ({backend})", len(waves), "clips",
                                  lambda advance: embed_in_chunks(model, waves, lengths, advance=advance)))
    if bootstrap:
        log(f"bootstrap: {bootstrap} resamples of {'paired ' if paired else ''}clips")
    started = time.perf_counter()
    result = {"dir_a": str(dir_a), "dir_b": str(dir_b), **model.info(),
              **fad(sets[0], sets[1], bootstrap=bootstrap, level=level, seed=seed, paired=paired)}
    if bootstrap:
        log(f"bootstrap done in {time.perf_counter() - started:.1f} s")
    if fad_inf:
        result["fad_infinity"] = fad_infinity(sets[0], sets[1], seed=seed, paired=paired)
    if paired and perceptual:
        with Steps() as steps:
            result["perceptual"] = paired_perceptual(files[0], files[1], seed, steps)
    console.print(fad_table(result, backend, model.sample_rate))
    if "perceptual" in result:
        console.print(perceptual_table(result["perceptual"]))
    for warning in result["warnings"]:
        warn(warning)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2))
        console.print(f"written: {json_out}")


def warn(message: str) -> None:
    """A warning for a person, on stderr, on one line."""
    err_console.print(f"[bold yellow]warning:[/bold yellow] {message}", highlight=False, soft_wrap=True)


def public(override: str) -> str:
    """An override as it may be written down: a key given on the command line is never recorded."""
    return "defense.key=(hidden)" if override.split("=", 1)[0].strip() == "defense.key" else override


@app.command("quality")
def quality_command(
    recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. recipes/fsdd_cnn.yaml."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a recipe field (repeatable), as in "
                                             "`lab run`."),
    variant: Optional[list[str]] = typer.Option(None, "--variant", help="A defense variant to measure as well: "
                                                "'defense.blur=0.5;defense.filter_length=63' (repeatable; only "
                                                "defense.* fields, so all variants share one clean model)."),
    classifier: bool = typer.Option(True, help="Train a clean model (the recipe's first seed) for the in-domain "
                                    "classifier backend; --no-classifier measures with logmel only, without training."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write all results to this JSON file (never "
                                            "overwrites an existing file)."),
):
    """Measure only the quality section of `lab run` (per-clip SNR, SI-SNR, PESQ, STOI, ESTOI; FAD beside the floor)
    for a recipe's defense and any number of defense variants, without training on protected data.
    """
    from rich.markup import escape

    from lab.errors import LabError
    from lab.experiment import prepare, quality_warnings
    from lab.provenance import provenance
    from lab.quality import FAD_COLUMNS, assess, fad_rows, per_clip_line
    from lab.recipe import load_recipe
    from lab.train import fit
    if json_out is not None and json_out.exists():
        raise LabError(f"--json: {json_out} already exists; choose a new file name")
    base = list(set_ or [])
    variants = [[]] + [[item.strip() for item in v.split(";") if item.strip()] for v in (variant or [])]
    for items in variants:
        for item in items:
            if not item.startswith("defense."):
                raise LabError(f"--variant: {item!r} is not a defense field; variants may change only defense.* "
                               "(use --set for the rest)")
    recipes = [load_recipe(recipe, base + items) for items in variants]
    module = None
    results = []
    for items, rec in zip(variants, recipes):
        prep = prepare(rec, log)
        if classifier and module is None:
            seed = rec.seeds[0]
            log(f"training the clean model (seed {seed}) for the classifier backend")
            module = fit(rec, prep.training(prep.clean_train, seed), prep.num_classes, seed).module
        quality = assess(rec, prep.clean_train, prep.protected_train, module)
        results.append({"variant": [public(i) for i in items], "defense": rec.public_dict()["defense"],
                        "key_fingerprint": prep.protection.to_dict().get("key_fingerprint"),
                        "classifier_seed": rec.seeds[0] if classifier else None, "quality": quality})
        table = Table(title=f"{'; '.join(items) or 'recipe defense'}: FAD (bootstrap "
                            f"{quality['settings']['level']:.0%} interval)")
        for column in ("backend",) + FAD_COLUMNS:
            table.add_column(column, justify="left" if column == "backend" else "right")
        for row in fad_rows(quality):
            table.add_row(*(escape(cell) for cell in row))
        console.print(table)
        for warning in quality_warnings(quality):
            if classifier or not warning.startswith("FAD backend classifier skipped"):  # skipped as asked
                warn(warning)
        console.print(f"per clip: {per_clip_line(quality)}; quality section took {quality['seconds']} s",
                      highlight=False)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"recipe_path": str(recipe), "overrides": [public(o) for o in base],
                                        "provenance": provenance(), "results": results}, indent=2))
        console.print(f"written: {json_out}")
