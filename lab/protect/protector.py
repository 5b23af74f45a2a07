"""Protecting a whole collection: derive once, stream the files through worker processes, write atomically, resume.

Memory: the parent holds the protection, the label table, and (when resuming) the earlier records; each worker holds
one file at a time. The file list is never built: a sorted walk feeds the workers lazily. Peak memory therefore
depends on the largest file, not on how many files there are.
"""
from __future__ import annotations

import multiprocessing as mp
from collections import deque
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import defenses
from defenses.poscuda import PosCUDA
from lab.config import parse_plugin
from lab.errors import LabError
from lab.keys import fingerprint, resolve_key
from lab.protect.collection import LabelRule, survey, walk
from lab.protect.manifest import FORMAT, MANIFEST, PARTIAL, ManifestWriter, previous_records
from lab.protect.worker import PARTIAL_SUFFIX, protect_files, start_worker

REFERENCE_RATE = 8000  # the rate the protection is derived at; it is applied at each file's own rate
CHUNK_FILES = 64  # a worker takes up to this many files at once (one batched convolution per sample rate) ...
CHUNK_BYTES = 4 << 20  # ... or this many bytes of source files: a chunk's memory is bounded, whatever the collection


def check_folders(input_root: Path, output_root: Path) -> tuple[Path, Path]:
    """INPUT must be a folder; OUTPUT must lie outside it (and not contain it), and be new, empty, or an earlier
    lab protect OUTPUT (which is then resumed)."""
    inp = Path(input_root).expanduser().resolve()
    out = Path(output_root).expanduser().resolve()
    if not inp.is_dir():
        raise LabError(f"INPUT {input_root} is not a folder")
    if out == inp or out.is_relative_to(inp):
        raise LabError(f"OUTPUT {out} is inside INPUT {inp}; choose a folder outside it (the input is never modified)")
    if inp.is_relative_to(out):
        raise LabError(f"OUTPUT {out} contains INPUT {inp}; choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise LabError(f"OUTPUT {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).exists() and not (out / PARTIAL).exists():
        raise LabError(f"OUTPUT {out} is not empty and holds no lab protect manifest; choose a new or empty folder "
                       f"(nothing is overwritten)")
    return inp, out


def defense_config(key_file: Path, options: dict | None):
    """The PosCUDA configuration from ``options`` (its parameters, without key) and the key file."""
    options = dict(options or {})
    if options.get("type", "poscuda") != "poscuda":
        raise LabError(f"lab protect applies PosCUDA; the defense type {options['type']!r} cannot protect files")
    for secret in ("key", "key_file"):
        options.pop(secret, None)  # the key comes from --key-file only
    return parse_plugin(defenses.DEFENSES, {**options, "type": "poscuda", "key_file": str(key_file)}, "defense")


def remove_partials(out: Path) -> int:
    """Delete temporary files an interrupted run left in OUTPUT (only ours: ``*.lab-partial``)."""
    n = 0
    for dirpath, _, filenames in os.walk(out):
        for name in filenames:
            if name.endswith(PARTIAL_SUFFIX) and name != PARTIAL:
                os.unlink(os.path.join(dirpath, name))
                n += 1
    return n


def in_order(pool, fn: Callable, items: Iterator, ahead: int) -> Iterator:
    """``fn(item)`` for each item on the pool's workers, results in the items' order, with at most ``ahead`` items
    in flight (``Pool.imap`` would read the whole iterator into its queue: memory growing with the collection)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.apply_async(fn, (item,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def protect_collection(input_root: Path, output_root: Path, key_file: Path, labels: str = "folder",
                       defense: dict | None = None, workers: int | None = None, fsync: bool = False,
                       log: Callable[[str], None] = lambda msg: None,
                       progress: Callable[[int, int], None] | None = None) -> dict:
    """Write a protected copy of every audio file under ``input_root`` into ``output_root`` and return the summary.

    ``input_root``: the collection (never modified). ``output_root``: where the copies and ``manifest.jsonl`` go,
    mirroring INPUT's folders; if it holds an earlier run's manifest the run resumes (files whose source and output
    still match their records are kept, the rest is done). ``key_file``: the private key (``lab keygen``).
    ``labels``: ``folder``, ``none``, ``regex:PATTERN`` or a CSV (see :class:`LabelRule`). ``defense``: PosCUDA
    parameters (``patch_seconds``, ``blur``, ``repeat_seconds``, ...; defaults otherwise). ``workers``: worker
    processes (default: the CPU count; 0 runs everything in this process). ``fsync``: force every file to disk
    before its rename. ``log``: receives progress messages. ``progress``: called with (files handled, files total).
    """
    started = time.perf_counter()
    inp, out = check_folders(input_root, output_root)
    key_path = Path(key_file).expanduser()
    key = resolve_key(None, key_path, where="--key-file")
    cfg = defense_config(key_path, defense)
    rule = LabelRule.parse(labels, inp)
    found = survey(inp, rule)
    classes = {c: i for i, c in enumerate(found.classes)}
    protection = PosCUDA(cfg).derive(len(found.classes), REFERENCE_RATE)
    record = protection.to_dict()
    from lab.provenance import provenance
    header = {"kind": "header", "format": FORMAT, "input": str(inp), "labels": rule.spec,
              "classes": found.classes, "key_fingerprint": fingerprint(key), "protection": record,
              "note": "positions are seconds (absolute) or fractions (relative) and filters are taps: the protection "
                      "is derived once and applied at each file's own sample rate", "provenance": provenance()}
    del key
    out.mkdir(parents=True, exist_ok=True)
    previous = previous_records(out, header)
    stale = remove_partials(out)
    mode = key_path.stat().st_mode & 0o777
    if mode & 0o077:
        log(f"warning: key file {key_path} can be read by others (mode {mode:o}); `chmod 600 {key_path}`")
    log(f"{found.audio_files} audio files in {len(found.classes)} classes; key fingerprint "
        f"{header['key_fingerprint']}" + (f"; resuming ({len(previous)} earlier records)" if previous else "")
        + (f"; removed {stale} temporary files of an interrupted run" if stale else ""))

    def chunks() -> Iterator[list[tuple]]:
        chunk, size = [], 0
        for e in walk(inp):
            if e.kind == "audio":
                label = rule.label(e.rel)
                chunk.append((e.path, os.path.join(out, e.rel), e.rel, label, classes.get(label),
                              previous.get(e.rel), fsync))
                size += e.size
                if len(chunk) >= CHUNK_FILES or size >= CHUNK_BYTES:
                    yield chunk
                    chunk, size = [], 0
        if chunk:
            yield chunk

    counts = {"protected": 0, "done": 0, "failed": 0}
    failed: list[dict] = []
    seconds = new_seconds = past_full_scale = files_past = 0
    writer = ManifestWriter(out, header)
    n_workers = os.cpu_count() if workers is None else workers
    pool = None
    try:
        if n_workers > 0:
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            pool = ctx.Pool(n_workers, initializer=start_worker, initargs=(record,))
            results = (r for done in in_order(pool, protect_files, chunks(), ahead=2 * n_workers + 2) for r in done)
        else:
            start_worker(record)
            results = (r for chunk in chunks() for r in protect_files(chunk))
        for i, (outcome, rec) in enumerate(results, start=1):
            writer.write({"kind": "file", **rec})
            counts[outcome] += 1
            if outcome == "failed":
                failed.append({"path": rec["path"], "error": rec["error"]})  # named in the summary
            else:
                seconds += rec["seconds"]
                new_seconds += rec["seconds"] if outcome == "protected" else 0
                past_full_scale += rec["past_full_scale"]
                files_past += rec["past_full_scale"] > 0
            if progress:
                progress(i, found.audio_files)
    except BaseException:
        writer.abandon()
        if pool is not None:
            pool.terminate()
        raise
    if pool is not None:
        pool.close()
        pool.join()
    wall = time.perf_counter() - started
    summary = {"kind": "summary", "audio_files": found.audio_files, "protected": counts["protected"],
               "already_done": counts["done"], "failed": failed, "non_audio_ignored": found.other_files,
               "symlinks_not_followed": found.links_skipped, "audio_seconds": round(seconds, 3),
               "samples_past_full_scale": past_full_scale, "files_past_full_scale": files_past,
               "past_full_scale_handling": "integer and lossy formats: clipped to full scale; float formats: kept",
               "workers": n_workers, "wall_seconds": round(wall, 3),
               "x_realtime": round(new_seconds / wall, 1) if wall > 0 else None}  # newly protected audio only
    summary["manifest"] = str(writer.finish(summary))
    return summary
