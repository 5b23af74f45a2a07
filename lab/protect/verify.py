"""``lab verify``: re-derive the protection from the key and check OUTPUT against the private record, the public
manifest and the sources; report the sources that have no protected copy (an incomplete collection)."""
from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import pickle
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Callable

from defenses.base import build_defense
from lab.errors import LabError
from lab.keys import fingerprint, resolve_key
from lab.protect.collection import AUDIO_EXTENSIONS, walk
from lab.protect.manifest import (CARD, LEGACY_FORMAT, MANIFEST, METADATA, PUBLIC_FIELDS, RECORD_FORMAT,
                                  card_features_declared, check_record_path, features_problem, locate_record,
                                  read_manifest, read_protections, read_record)
from lab.protect.safefs import OutputLock, links_under
from lab.protect.optimise import rebuild
from lab.protect.protector import REFERENCE_RATE, defense_config, derive_at
from lab.protect.worker import PARTIAL_SUFFIX, check_file, start_worker

SECRET_MARKS = (RECORD_FORMAT.encode(), LEGACY_FORMAT.encode())  # a private record (or an old manifest) in OUTPUT


def verify_collection(output_root: Path, key_file: Path, source: Path | None = None, record: Path | None = None,
                      workers: int | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Check every file of a lab protect OUTPUT and return a report.

    ``output_root``: the OUTPUT folder (with the public ``manifest.jsonl``). ``key_file``: the key it was protected
    with; the protection (whichever defense the record names) is derived again from it, at the reference rate and
    at each file's sample rate, and must equal the record's. ``source``: the INPUT folder
    (default: the one the record names). ``record``: the private record (default: where ``lab protect`` put it,
    next to the key file). ``workers``: processes (default the CPU count; 0: in this process). ``progress``: called
    with (files checked, files total).

    The report has ``counts`` per status (see :func:`lab.protect.worker.check_file`), ``checked_in_blocks`` (long
    files checked block by block, in bounded memory: :mod:`lab.protect.blocks`), the ``problems`` (every file
    whose status is not ``ok`` or ``unchecked`` (source no longer there, output hash still right), plus ``manifest``
    (the public manifest disagrees with the record), ``metadata`` (``metadata.csv`` does not list the protected files),
    ``card`` (the dataset card ``README.md`` would not load the labels as a class label of the collection's classes)
    and ``unsafe`` (a file in OUTPUT holds a private record: the folder is not safe to publish)), ``extra`` (audio
    files in OUTPUT the record does not list), ``partial`` (temporary files of an interrupted write),
    ``failed_at_protection`` (files the run could not protect) and ``not_protected``: every source audio file with
    no protected copy (failed, or not in the record at all, e.g. added later), each with why; the collection is
    then ``complete: False``. ``source_found``: whether the source folder could be walked for that check.
    """
    out = Path(output_root).expanduser().resolve()
    if not out.is_dir():
        raise LabError(f"OUTPUT {output_root} is not a folder")
    key_path = Path(key_file).expanduser()
    with OutputLock(out, shared=True):
        header, public_files, key_fp, record_path, rec_header, records = checked_record(out, key_path, record)
        src_root = Path(source).expanduser().resolve() if source else Path(rec_header["input"])
        done = [r for r in records if r["status"] == "protected"]
        protections = derived_protections(record_path, rec_header, key_path, key_fp, done)
        jobs = [(str(src_root / r["path"]), str(out), r) for r in done]
        results = check_files(jobs, protections, workers, progress)
        counts = Counter(r["status"] for r in results)
        problems = [r for r in results if r["status"] not in ("ok", "unchecked")]  # unchecked: source gone, hash ok
        problems += manifest_problems(public_files, done) + metadata_problems(out, done)
        problems += card_problems(out, rec_header["classes"])
        problems += label_problems(records, rec_header["classes"]) + header_problems(header, rec_header)
        extra, partial, unsafe = scan_output(out, {r["path"] for r in records}, key_path)
        problems += unsafe
        not_protected, source_found = unprotected_sources(records, src_root)
    complete = not not_protected
    return {"output": str(out), "source": str(src_root), "record": str(record_path),
            "key_fingerprint": rec_header["key_fingerprint"], "files": len(results), "counts": dict(counts),
            "checked_in_blocks": sum(bool(r.get("blocks")) for r in results),
            "problems": problems, "extra": sorted(extra), "partial": sorted(partial),
            "failed_at_protection": [r["path"] for r in records if r["status"] == "failed"],
            "not_protected": not_protected, "source_found": source_found, "complete": complete,
            "passed": not problems and not extra and not partial and complete}


def checked_record(out: Path, key_path: Path, record: Path | None) -> tuple:
    """The public manifest and the private record of ``out``, each line checked (:mod:`lab.protect.schema`), and
    checked against each other and the key: (manifest header, manifest files, key fingerprint, record path, record
    header, record files). Any disagreement is a one-line error."""
    header, public_files, _ = read_manifest(out)
    key_fp = fingerprint(resolve_key(None, key_path, where="--key-file"))
    if key_fp != header["key_fingerprint"]:
        raise LabError(f"--key-file {key_path}: this key (fingerprint {key_fp}) is not the one OUTPUT was "
                       f"protected with (fingerprint {header['key_fingerprint']})")
    record_path = locate_record(out, key_path, header["collection_id"], record, earlier=True)
    check_record_path(record_path, out)
    rec_header, records, _ = read_record(record_path)
    if rec_header["collection_id"] != header["collection_id"]:
        raise LabError(f"--record {record_path} is the record of another OUTPUT (collection "
                       f"{rec_header['collection_id']}, {out} is {header['collection_id']}); give this OUTPUT's")
    if key_fp != rec_header["key_fingerprint"]:
        raise LabError(f"{record_path}: made with another key (fingerprint {rec_header['key_fingerprint']}) than "
                       f"OUTPUT's manifest names (the record was edited)")
    return header, public_files, key_fp, record_path, rec_header, records


def derived_protections(record_path: Path, rec_header: dict, key_path: Path, key_fp: str,
                        done: list[dict]) -> dict[int, bytes]:
    """The protection at each sample rate of the record's files, derived again from the key, pickled; each must
    equal the record's (at the reference rate and in its ``protection`` lines). The record's parameters are
    validated first, like a command line's: an edited record cannot make the derivation allocate without bound.
    A protection optimised on the collection cannot be optimised again: it is rebuilt from the record and its arrays
    file (hash and key fingerprint checked) and written onto each rate as lab protect did (:func:`rebuilt_at`)."""
    recorded = rec_header["protection"]
    kind = recorded.get("defense", "poscuda")
    try:
        cfg = defense_config(key_path, {**recorded["params"], "type": kind})
    except LabError as e:
        raise LabError(f"{record_path}: the recorded protection's parameters are not valid ({e}); the record was "
                       f"damaged or edited") from None
    defense = build_defense(cfg)
    if defense.needs_training_set or rec_header.get("optimised") is not None:
        return rebuilt_at(record_path, rec_header, key_fp, done)
    classes = len(rec_header["classes"])
    if derive_at(defense, classes, REFERENCE_RATE, key_fp).to_dict() != recorded:
        raise LabError(f"{record_path}: the recorded protection ({kind}: its positions, filters or other derived "
                       f"values) is not what the key gives (the record was edited)")
    recorded_at = read_protections(record_path)
    protections = {}
    for rate in sorted({r["sample_rate"] for r in done}):
        prot = derive_at(defense, classes, rate, key_fp)
        if rate in recorded_at and recorded_at[rate] != prot.to_dict():
            raise LabError(f"{record_path}: the protection recorded at {rate} Hz is not what the key gives (the "
                           f"record was edited)")
        protections[rate] = pickle.dumps(prot)
    return protections


def rebuilt_at(record_path: Path, rec_header: dict, key_fp: str, done: list[dict]) -> dict[int, bytes]:
    """:func:`derived_protections` for a protection optimised on the collection: rebuilt from the record and its
    arrays file, then, at each sample rate of the record's files, what lab protect wrote onto them, which must equal
    the record's ``protection`` line of that rate."""
    if rec_header.get("optimised") is None:
        raise LabError(f"{record_path}: the recorded protection ({rec_header['protection'].get('defense')}) was "
                       f"optimised on the collection, and the record has no 'optimised' facts (edited?)")
    prot, working = rebuild(rec_header, record_path, key_fp)
    recorded_at = read_protections(record_path)
    protections = {}
    for rate in sorted({r["sample_rate"] for r in done}):
        at_rate = prot.files_at(rate, working)
        if rate not in recorded_at or recorded_at[rate] != json.loads(json.dumps(at_rate.to_dict())):
            raise LabError(f"{record_path}: the protection recorded at {rate} Hz is not what the record's optimised "
                           f"protection gives at that rate (the record was edited)")
        protections[rate] = pickle.dumps(at_rate)
    return protections


def check_files(jobs: list[tuple], protections: dict[int, bytes], workers: int | None,
                progress: Callable[[int, int], None] | None) -> list[dict]:
    """:func:`lab.protect.worker.check_file` for every job, on ``workers`` processes (default the CPU count)."""
    n_workers = os.cpu_count() if workers is None else workers
    results = []
    if n_workers > 0 and len(jobs) > 1:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(n_workers, initializer=start_worker, initargs=(protections,)) as pool:
            for i, res in enumerate(pool.imap(check_file, jobs, chunksize=8), start=1):
                results.append(res)
                if progress:
                    progress(i, len(jobs))
    else:
        start_worker(protections)
        for i, job in enumerate(jobs, start=1):
            results.append(check_file(job))
            if progress:
                progress(i, len(jobs))
    return results


def scan_output(out: Path, listed: set[str], key_path: Path) -> tuple[list[str], list[str], list[dict]]:
    """What lies in OUTPUT besides the listed files: (audio files the record does not list, temporary files of an
    interrupted write, problems that make OUTPUT unsafe to publish: a private record or the key inside it, a
    symbolic link)."""
    extra, partial, unsafe = [], [], []
    for dirpath, _, filenames in os.walk(out):
        for name in sorted(filenames):
            rel = str(PurePosixPath(Path(dirpath, name).relative_to(out).as_posix()))
            if name.endswith(PARTIAL_SUFFIX):
                partial.append(rel)
            elif Path(name).suffix.lower() in AUDIO_EXTENSIONS:
                if rel not in listed:
                    extra.append(rel)
            elif not os.path.islink(os.path.join(dirpath, name)) and holds_a_record(Path(dirpath, name)):
                unsafe.append({"path": rel, "status": "unsafe", "detail": "holds a private lab protect record "
                               "(positions, filters, patch starts): move it out, OUTPUT is what is published"})
    unsafe += [{"path": rel, "status": "unsafe", "detail": "a symbolic link inside OUTPUT (a downloader gets "
                "whatever it points to, or nothing): replace it with the file or remove it"}
               for rel in links_under(out, limit=1000)]
    if key_path.resolve().is_relative_to(out):
        unsafe.append({"path": str(key_path.resolve().relative_to(out)), "status": "unsafe",
                       "detail": "the key file is inside OUTPUT: move it out, OUTPUT is what is published"})
    return extra, partial, unsafe


def unprotected_sources(records: list[dict], src_root: Path) -> tuple[list[dict], bool]:
    """Every source audio file with no protected copy (failed, or not in the record at all), each with why, and
    whether the source folder could be walked."""
    not_protected = [{"path": r["path"], "why": f"failed when protected: {r['error']}"}
                     for r in records if r["status"] == "failed"]
    source_found = src_root.is_dir()
    if source_found:
        known = {r["path"] for r in records}
        not_protected += [{"path": e.rel, "why": "no protected copy: not in the record (added after the run?)"}
                          for e in walk(src_root) if e.kind == "audio" and e.rel not in known]
    not_protected.sort(key=lambda p: p["path"])
    return not_protected, source_found


def manifest_problems(public_files: list[dict], done: list[dict]) -> list[dict]:
    """Where the public manifest disagrees with the record: a protected file missing from it, listed with another
    output hash or other facts (label, format, sample rate, channels, frames, seconds), or listed though the record
    has no protected copy of it. (A file listed twice is refused when the manifest is read.)"""
    public = {f["path"]: f for f in public_files}
    problems = []
    for r in done:
        f = public.pop(r["path"], None)
        if f is None:
            problems.append({"path": r["path"], "status": "manifest", "detail": f"not listed in {MANIFEST}"})
        elif f.get("output_sha256") != r["output_sha256"]:
            problems.append({"path": r["path"], "status": "manifest", "detail": f"{MANIFEST} gives another hash"})
        else:
            other = [k for k in PUBLIC_FIELDS if f.get(k) != r.get(k)]
            if other:
                problems.append({"path": r["path"], "status": "manifest",
                                 "detail": f"{MANIFEST} gives another {', '.join(other)} than the record"})
    problems += [{"path": p, "status": "manifest", "detail": f"listed in {MANIFEST} but not protected in the record"}
                 for p in sorted(public)]
    return problems


def label_problems(records: list[dict], classes: list[str]) -> list[dict]:
    """Record lines whose class index and label disagree with the record's class list."""
    problems = []
    for r in records:
        if r["status"] != "protected":
            continue
        if r["class"] >= len(classes) or classes[r["class"]] != r["label"]:
            problems.append({"path": r["path"], "status": "record", "detail": f"label {r['label']!r} and class "
                             f"{r['class']} do not match the record's classes (the record was edited)"})
    return problems


def header_problems(public: dict, private: dict) -> list[dict]:
    """The public manifest's header must name the record's classes (the downloader's label list)."""
    if public["classes"] != private["classes"]:
        return [{"path": MANIFEST, "status": "manifest", "detail": "its classes differ from the record's"}]
    return []


def metadata_problems(out: Path, done: list[dict]) -> list[dict]:
    """``metadata.csv``, when there is one, must list exactly the protected files (``file_name``, relative to OUTPUT)
    with their labels, or the ``datasets`` loader will not load the collection as it is."""
    path = out / METADATA
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        return [{"path": METADATA, "status": "metadata", "detail": f"unreadable: {e}"}]
    if not rows or "file_name" not in rows[0]:
        return [{"path": METADATA, "status": "metadata", "detail": "no file_name column"}]
    listed = {row["file_name"]: row.get("label") for row in rows}
    expected = {r["path"]: r["label"] for r in done}
    missing, unknown = expected.keys() - listed.keys(), listed.keys() - expected.keys()
    wrong = [p for p in expected.keys() & listed.keys() if "label" in rows[0] and listed[p] != expected[p]]
    if not (missing or unknown or wrong) and len(rows) == len(listed):
        return []
    detail = "; ".join(f"{what}: {', '.join(sorted(paths)[:3])}{' ...' if len(paths) > 3 else ''}"
                       for what, paths in (("protected files not listed", missing), ("not protected files", unknown),
                                           ("other labels", wrong)) if paths) or "a file is listed twice"
    return [{"path": METADATA, "status": "metadata", "detail": detail}]


def card_problems(out: Path, classes: list[str]) -> list[dict]:
    """The dataset card ``README.md``, when there is one, must not declare other features than ``audio`` and
    ``label`` as a class label of the collection's ``classes`` in order; beside a ``metadata.csv`` it must declare
    them (without, ``datasets`` loads the labels as plain strings)."""
    path = out / CARD
    if not path.is_file():
        return []
    features, why = card_features_declared(path)
    if why is None and features is None:
        why = None if not (out / METADATA).is_file() else \
            (f"declares no features beside {METADATA} (configs: - config_name: default, features: ...): Hugging "
             f"Face datasets loads the labels as plain strings")
    elif why is None:
        why = features_problem(features, classes)
    return [] if why is None else [{"path": CARD, "status": "card", "detail": why}]


def holds_a_record(path: Path) -> bool:
    """Whether a (non-audio) file in OUTPUT begins like a private record or an old manifest that held one."""
    try:
        with open(path, "rb") as f:
            head = f.readline(1 << 26)  # the format is a key of the header line, after the classes
    except OSError:
        return False
    return any(mark in head for mark in SECRET_MARKS)
