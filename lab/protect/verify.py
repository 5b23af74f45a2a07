"""``lab verify``: re-derive the protection from the key and check OUTPUT against its manifest and its sources."""
from __future__ import annotations

import multiprocessing as mp
import os
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Callable

from defenses.poscuda import PosCUDA
from lab.errors import LabError
from lab.keys import fingerprint, resolve_key
from lab.protect.collection import AUDIO_EXTENSIONS
from lab.protect.manifest import read_manifest
from lab.protect.protector import REFERENCE_RATE, defense_config
from lab.protect.worker import PARTIAL_SUFFIX, check_file, start_worker


def verify_collection(output_root: Path, key_file: Path, source: Path | None = None, workers: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> dict:
    """Check every file of a lab protect OUTPUT and return a report.

    ``output_root``: the OUTPUT folder (with ``manifest.jsonl``). ``key_file``: the key it was protected with; the
    protection is derived again from it and must equal the manifest's. ``source``: the INPUT folder (default: the
    one the manifest names). ``workers``: processes (default the CPU count; 0: in this process). ``progress``:
    called with (files checked, files total).

    The report has ``counts`` per status (see :func:`lab.protect.worker.check_file`), the ``problems`` (every file
    whose status is not ``ok``, or ``unchecked``: source no longer there, output hash still right), ``extra`` (audio files in OUTPUT the manifest does not list), ``partial``
    (temporary files of an interrupted write) and ``failed_at_protection`` (files the run could not protect).
    """
    out = Path(output_root).expanduser().resolve()
    if not out.is_dir():
        raise LabError(f"OUTPUT {output_root} is not a folder")
    header, records, _ = read_manifest(out)
    key_path = Path(key_file).expanduser()
    key = resolve_key(None, key_path, where="--key-file")
    if fingerprint(key) != header["key_fingerprint"]:
        raise LabError(f"--key-file {key_path}: this key (fingerprint {fingerprint(key)}) is not the one OUTPUT was "
                       f"protected with (fingerprint {header['key_fingerprint']})")
    del key
    recorded = header["protection"]
    cfg = defense_config(key_path, recorded["params"])
    derived = PosCUDA(cfg).derive(len(header["classes"]), REFERENCE_RATE).to_dict()
    if derived != recorded:
        raise LabError(f"{out}/manifest.jsonl: the recorded positions or filters are not what the key gives "
                       f"(the manifest was edited)")
    src_root = Path(source).expanduser().resolve() if source else Path(header["input"])
    done = [r for r in records if r["status"] == "protected"]
    jobs = [(str(src_root / r["path"]), str(out / r["path"]), r) for r in done]
    n_workers = os.cpu_count() if workers is None else workers
    results = []
    if n_workers > 0 and len(jobs) > 1:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(n_workers, initializer=start_worker, initargs=(recorded,)) as pool:
            for i, res in enumerate(pool.imap(check_file, jobs, chunksize=8), start=1):
                results.append(res)
                if progress:
                    progress(i, len(jobs))
    else:
        start_worker(recorded)
        for i, job in enumerate(jobs, start=1):
            results.append(check_file(job))
            if progress:
                progress(i, len(jobs))
    listed = {r["path"] for r in records}
    extra, partial = [], []
    for dirpath, _, filenames in os.walk(out):
        for name in sorted(filenames):
            rel = str(PurePosixPath(Path(dirpath, name).relative_to(out).as_posix()))
            if name.endswith(PARTIAL_SUFFIX):
                partial.append(rel)
            elif Path(name).suffix.lower() in AUDIO_EXTENSIONS and rel not in listed:
                extra.append(rel)
    counts = Counter(r["status"] for r in results)
    problems = [r for r in results if r["status"] not in ("ok", "unchecked")]  # unchecked: source gone, hash ok
    return {"output": str(out), "source": str(src_root), "key_fingerprint": header["key_fingerprint"],
            "files": len(results), "counts": dict(counts), "problems": problems, "extra": sorted(extra),
            "partial": sorted(partial),
            "failed_at_protection": [r["path"] for r in records if r["status"] == "failed"],
            "passed": not problems and not extra and not partial}
