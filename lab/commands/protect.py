"""``lab keygen``, ``lab protect`` and ``lab verify``: the data owner's commands (see docs/protect.md)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from lab.cli import app, console, log


@app.command()
def keygen(key_file: Path = typer.Argument(..., help="Where to write the new key (must not exist).")):
    """Write a new random private key to KEY_FILE, readable by its owner only (mode 0600); never overwrites.

    Keep the key: it is needed to verify a protected collection and to protect more files the same way.
    Prints the key's public fingerprint, never the key.
    """
    from lab.protect import new_key_file
    fp = new_key_file(key_file)
    console.print(f"new key written to {key_file} (mode 0600); fingerprint {fp}. Keep it secret and backed up.")


def _progress(label: str):
    """A Rich progress bar on a terminal, nothing otherwise; returns (callback, context manager)."""
    from contextlib import nullcontext
    if not console.is_terminal:
        return None, nullcontext()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), console=console, transient=True)
    task = bar.add_task(label, total=None)
    return (lambda done, total: bar.update(task, completed=done, total=total)), bar


def check_applicable(kind: str) -> None:
    """A defense lab protect cannot apply is refused here, in one line naming those it can (its fields are validated
    later, by its own config)."""
    from lab.protect.protector import applicable_defenses, cannot_apply
    if kind not in applicable_defenses():
        raise cannot_apply(kind)


def parse_options(items: list[str]) -> dict:
    """``--option FIELD=VALUE`` items as {field: value}, each value read as YAML (``20`` a number, ``[0, 0.3]`` a
    list, ``null`` none, ``classwise`` a string)."""
    import yaml
    from lab.errors import LabError
    options: dict = {}
    for item in items:
        field, sep, text = item.partition("=")
        field = field.strip()
        if not sep or not field:
            raise LabError(f"--option {item!r}: expected FIELD=VALUE, e.g. --option snr_db=20")
        if field in ("key", "key_file"):
            raise LabError(f"--option {field}: the key comes from --key-file only")
        if field == "type":
            raise LabError("--option type: choose the defense with --defense TYPE")
        if field in options:
            raise LabError(f"--option {field}: given twice")
        try:
            options[field] = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise LabError(f"--option {item!r}: not a YAML value ({str(e).splitlines()[0]})") from None
    return options


@app.command()
def protect(
    input_dir: Path = typer.Argument(..., metavar="INPUT", help="Folder of audio files to protect (never modified)."),
    output_dir: Path = typer.Argument(..., metavar="OUTPUT", help="Where the protected copies and the public "
                                      "manifest.jsonl go: the folder to publish (outside INPUT; new, empty, or an "
                                      "earlier OUTPUT to resume)."),
    key_file: Path = typer.Option(..., "--key-file", help="The private key (make one with `lab keygen`)."),
    labels: str = typer.Option("folder", help="Where labels come from: 'folder' (the top-level folder under INPUT), "
                               "'regex:PATTERN' (group 1 of the file name, e.g. 'regex:^(\\d+)_' for FSDD), a CSV "
                               "file of path,label rows, or 'none' (unlabelled: one key-wide position and filter)."),
    defense: Optional[str] = typer.Option(None, "--defense", metavar="TYPE", help="The defense to apply: poscuda "
                                          "(the default, or the recipe's), another that can be applied file by "
                                          "file, e.g. cuda, noise-patch, classwise-noise, ar-noise, or one optimised "
                                          "on the collection itself first (resumable), e.g. em-noise, robust-em, "
                                          "poscuda-opt, ensemble-em (one lab protect cannot apply is refused, naming "
                                          "those it "
                                          "can). Its fields: --option, or --recipe."),
    option: Optional[List[str]] = typer.Option(None, "--option", "-o", metavar="FIELD=VALUE", help="Set a field of "
                                               "the defense, the value read as YAML (e.g. -o blur=0.5, -o "
                                               "filter_length=63, -o position_range=[0,0.3], -o repeat_seconds=2, "
                                               "-o snr_db=20); repeatable; an unknown field is refused naming the "
                                               "defense's fields (`lab list` shows them). The key comes from "
                                               "--key-file only. Optimised defenses also take working_rate (Hz, "
                                               "default 8000) and clip_seconds (default 1) for the clips they are "
                                               "optimised on."),
    recipe: Optional[Path] = typer.Option(None, help="Take the defense (type and parameters) from this recipe's "
                                          "defense section (options given here override them)."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (default: CPU count; 0: none)."),
    fsync: bool = typer.Option(False, help="Force each file to disk before renaming it into place (slower; "
                               "survives power cuts, not just interruptions)."),
    record: Optional[Path] = typer.Option(None, help="Where the PRIVATE record goes (what verify and a resume need; "
                                          "it reveals the protection, so it must stay outside OUTPUT, mode 0600). "
                                          "Default: next to the key file, OUTPUTNAME.ID.protect-record.jsonl."),
    metadata: bool = typer.Option(False, "--metadata", help="Also write OUTPUT/metadata.csv (file_name, label) and "
                                  "a dataset card OUTPUT/README.md, so that Hugging Face datasets' load_dataset("
                                  "OUTPUT) reads the published collection with label a ClassLabel of the classes."),
):
    """Write a protected copy of every audio file under INPUT into OUTPUT, with a public manifest, and a private
    record outside OUTPUT.

    The defense is PosCUDA unless --defense (or --recipe) names another that can be applied file by file (cuda,
    noise-patch, classwise-noise, ar-noise); each file gets the defense's own protection derived from the key at the
    file's sample rate, its channels as rows of the file's class. A defense optimised on the data (em-noise,
    robust-em, poscuda-opt, ensemble-em) is first optimised on the collection itself (mono working clips at working_rate,
    clip_seconds long; a private checkpoint after every round, so the same command resumes it), then written onto
    every file at its own rate and length; the optimised noise or filters go only to the private record and an
    arrays file beside it. OUTPUT is safe to publish: it holds the copies,
    manifest.jsonl (file list, hashes, key fingerprint) and, with --metadata, metadata.csv and README.md (a
    dataset card naming the classes). The record (see
    --record) reveals the protection: keep it private, like the key. Each file keeps its format, sample rate,
    channel count and subtype; with PosCUDA every channel gets the same patch. Files
    are written under a temporary name and renamed when complete; running the same command again resumes,
    skipping files already done and verified. Corrupt or empty files are reported and skipped (exit code 1).
    """
    from lab.protect import protect_collection
    kind, options = defense_options(recipe, defense, option or [])
    console.print(f"[bold]lab protect[/bold] {input_dir} -> {output_dir} (defense: {kind}, labels: {labels})")
    callback, bar = _progress("protecting")
    with bar:
        summary = protect_collection(input_dir, output_dir, key_file, labels=labels, defense=options,
                                     workers=workers, fsync=fsync, record=record, metadata=metadata, log=log,
                                     progress=callback)
    print_summary(kind, summary, output_dir)
    if summary["failed"]:
        raise typer.Exit(1)


def defense_options(recipe: Path | None, defense: str | None, option: list[str]) -> tuple[str, dict]:
    """The defense lab protect is asked for and its options, from --recipe, --defense and --option (validated by
    the defense's own config when the run builds it); each mistake one line."""
    from lab.errors import LabError
    options: dict = {}
    if recipe is not None:
        from lab.recipe import load_recipe
        options = load_recipe(recipe, []).defense.model_dump(mode="json", exclude={"key", "key_file"})
        if defense is not None and defense != options["type"]:
            raise LabError(f"--defense {defense}: the defense section of {recipe} is {options['type']}; give "
                           f"--defense or --recipe, or a recipe whose defense is {defense}")
    kind = defense or options.get("type") or "poscuda"
    options["type"] = kind
    check_applicable(kind)
    options.update(parse_options(option))  # fields are validated with the defense's config (did you mean)
    return kind, options


def print_summary(kind: str, s: dict, output_dir: Path) -> None:
    """What lab protect did, for a person: the optimisation (optimised defenses), the counts, what is public and
    what is private, the files that failed (exit code 1 when there are any)."""
    opt = s.get("optimisation")
    if opt is not None:
        acc = opt["surrogate_accuracy"]
        if isinstance(acc, list):  # an ensemble (ensemble-em): every member's accuracy
            acc = f", members' accuracy {', '.join(f'{a:.3f}' for a in acc)}"
        else:
            acc = f", surrogate accuracy {acc:.3f}" if acc is not None else ""
        rounds = f"{opt['rounds']} round{'s' if opt['rounds'] != 1 else ''}"
        console.print(f"{kind}: {opt['how']}: {rounds}{acc}, on {opt['clips']} working clips "
                      f"({opt['working_rate']} Hz, {opt['clip_samples']} samples) in {opt['seconds']:.1f} s (part of "
                      f"the wall time below)")
    speed = f"{s['x_realtime']}x real-time for the newly protected audio" if s["protected"] else "nothing new"
    console.print(f"protected {s['protected']} files, {s['already_done']} already done (verified and kept), "
                  f"{len(s['failed'])} failed; {s['audio_seconds']:.1f} s of audio in {s['wall_seconds']:.2f} s "
                  f"({speed}, {s['workers']} workers)")
    console.print(f"ignored: {s['non_audio_ignored']} non-audio files, {s['symlinks_not_followed']} symbolic links "
                  f"not followed; past full scale: {s['samples_past_full_scale']} samples in "
                  f"{s['files_past_full_scale']} files ({s['past_full_scale_handling']})")
    from lab.protect import blocks
    for how, count in sorted(s.get("long_files", {}).items()):
        console.print(f"long files (over {blocks.STREAM_FRAMES} frames): {count} {how}", highlight=False)
    for rel in s["not_regular_skipped"]:
        console.print(f"[yellow]skipped[/yellow] {rel}: named like audio but not a regular file (a FIFO, device or "
                      f"socket)", highlight=False)
    console.print(f"public (safe to publish): {output_dir}, with manifest {s['manifest']}"
                  + (f" and {s['metadata']}" if s["metadata"] else "")
                  + (f" and dataset card {s['card']}" if s["card"] else ""), highlight=False)
    console.print(f"private (keep it with the key, never publish it): record {s['record']}"
                  + (f" and its arrays {opt['arrays']}" if opt is not None else ""), highlight=False)
    for f in s["failed"]:
        console.print(f"[red]failed[/red] {f['path']}: {f['error']}", highlight=False)
    if s["failed"]:
        console.print(f"[bold red]{len(s['failed'])} file(s) could not be protected[/bold red] (listed above and in "
                      f"the record); the rest are done")


@app.command()
def verify(
    output_dir: Path = typer.Argument(..., metavar="OUTPUT", help="A folder written by `lab protect`."),
    key_file: Path = typer.Option(..., "--key-file", help="The key OUTPUT was protected with."),
    source: Optional[Path] = typer.Option(None, help="The INPUT folder, if it moved (default: the record's)."),
    record: Optional[Path] = typer.Option(None, help="The private record lab protect wrote (default: where it "
                                          "puts it, next to the key file)."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (default: CPU count; 0: none)."),
):
    """Re-derive the protection from the key and check every OUTPUT file against the private record and its source.

    Reports missing, changed, unprotected or mismatching files, audio files the record does not list, leftovers of
    an interrupted write, a manifest.jsonl, metadata.csv or dataset card README.md that disagrees with the record,
    private files inside OUTPUT, and source files that have no protected copy (the collection is incomplete). Exit
    code 0 when everything checks and the collection is complete, 1 otherwise.
    """
    from lab.protect import verify_collection
    callback, bar = _progress("verifying")
    with bar:
        report = verify_collection(output_dir, key_file, source=source, record=record, workers=workers,
                                   progress=callback)
    counts = ", ".join(f"{v} {k}" for k, v in sorted(report["counts"].items())) or "no files"
    console.print(f"[bold]lab verify[/bold] {report['output']}: {report['files']} files checked against "
                  f"{report['source']} (key fingerprint {report['key_fingerprint']}): {counts}")
    if report["checked_in_blocks"]:
        console.print(f"{report['checked_in_blocks']} long file(s) checked block by block (bounded memory)")
    for p in report["problems"]:
        console.print(f"[red]{p['status']}[/red] {p['path']}: {p['detail']}", highlight=False)
    for rel in report["extra"]:
        console.print(f"[red]extra[/red] {rel}: audio file not in the record", highlight=False)
    for rel in report["partial"]:
        console.print(f"[red]partial[/red] {rel}: leftover of an interrupted write", highlight=False)
    for p in report["not_protected"]:
        console.print(f"[red]not protected[/red] {p['path']}: {p['why']}", highlight=False)
    if report["counts"].get("unchecked"):
        console.print(f"{report['counts']['unchecked']} file(s) unchecked against their source (source not found; "
                      f"output hashes match)")
    if not report["source_found"]:
        console.print(f"source folder {report['source']} not found: only the record's failed files can be named as "
                      f"unprotected (give --source INPUT)", highlight=False)
    checked = not report["problems"] and not report["extra"] and not report["partial"]
    if not report["complete"]:
        console.print(f"[bold red]incomplete[/bold red]: {len(report['not_protected'])} source file(s) have no "
                      f"protected copy (listed above)" + ("; every output file checks" if checked else ""))
    if report["passed"]:
        console.print("[green]verified[/green]: every output file is the key's protection of its source, and every "
                      "source file has one")
    else:
        raise typer.Exit(1)
