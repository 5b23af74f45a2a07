"""What one worker process does to one file: protect it (read, protect, encode, write atomically) or check it.

A worker receives the derived protection's record (positions, filters, parameters: never the key) once, when it
starts, and keeps one :class:`PosCUDAProtection` per sample rate it meets. Every channel of a file gets the same
patches and filters. Results are small dicts (the private record's lines, see :mod:`lab.protect.manifest`); audio
never travels between processes.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
from pathlib import Path

import numpy as np
import torch

from defenses.poscuda import PosCUDAProtection, convolve_patches
from lab.protect.audiofile import as_stored, decode, encode

PARTIAL_SUFFIX = ".lab-partial"  # temporary names: ".<name>.<pid>.lab-partial" beside the final file
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})  # no space (or quota) left: no later file could be written

_record: dict = {}
_made: set[str] = set()  # output folders this worker has already created
_cache: dict[int, PosCUDAProtection] = {}


def start_worker(record: dict) -> None:
    """Pool initializer: remember the protection record; one thread per worker (the processes are the parallelism)."""
    torch.set_num_threads(1)
    _record.clear()
    _record.update(record)
    _cache.clear()


def protection_at(sample_rate: int) -> PosCUDAProtection:
    """The recorded protection at ``sample_rate`` (positions are in seconds or fractions, filters in taps, so the
    same derivation serves every rate)."""
    if sample_rate not in _cache:
        r = _record
        _cache[sample_rate] = PosCUDAProtection(r["params"], r["key_fingerprint"], sample_rate,
                                                torch.tensor(r["positions"], dtype=torch.float64),
                                                torch.tensor(r["filters"], dtype=torch.float32))
    return _cache[sample_rate]


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _applied(prot: PosCUDAProtection, starts: torch.Tensor, cls: int, frames: int) -> list[dict]:
    """What was applied to one file, per patch: its filter id (``class/patch``), first start sample, spacing and
    count of repeats, and length in samples. ``starts`` (P, M) as from :meth:`PosCUDAProtection.repeat_starts`."""
    applied = []
    for j in range(starts.shape[0]):
        s = [v for v in starts[j].tolist() if v >= 0]
        applied.append({"filter": f"{cls}/{j}", "start": s[0], "every": prot.repeat_samples if len(s) > 1 else None,
                        "count": len(s), "length": min(prot.patch_len, frames)})
    return applied


def protect_samples(data: np.ndarray, sample_rate: int, cls: int) -> tuple[np.ndarray, list[dict]]:
    """Protect one file's (frames, channels) samples of class ``cls`` with :meth:`PosCUDAProtection.apply` (every
    channel the same); also return what was applied (see :func:`_applied`)."""
    prot = protection_at(sample_rate)
    frames, channels = data.shape
    x = torch.from_numpy(np.ascontiguousarray(data.T))
    labels = torch.full((channels,), cls, dtype=torch.long)
    lengths = torch.full((channels,), frames, dtype=torch.long)
    out = prot.apply(x, labels, lengths).numpy().T
    starts = prot.repeat_starts(prot.starts(labels[:1], frames, lengths[:1]), frames, lengths[:1])[0]
    return out, _applied(prot, starts, cls, frames)


def protect_batch(items: list[tuple[np.ndarray, int]], sample_rate: int) -> list[tuple[np.ndarray, list[dict]]]:
    """Protect several files at one sample rate in ONE batched convolution: ``items`` are (samples (frames,
    channels), class). The result of each file is bit-identical to :func:`protect_samples` (PosCUDA's convolution
    is computed tap by tap, element-wise, so a row does not depend on its batch; the zeros after a shorter file are
    the zeros its own edge reads; each file's patch start is clamped to its own length as ``apply`` does).
    Repeated patches (long recordings) and files shorter than a patch go file by file."""
    prot = protection_at(sample_rate)
    if prot.repeat_samples is not None or len(items) <= 1:
        return [protect_samples(d, sample_rate, c) for d, c in items]
    short = [d.shape[0] < prot.patch_len for d, _ in items]
    if any(short):
        # a file shorter than a patch is convolved whole: its patch would spill into the batch's padding (which a
        # second patch would then read), so it goes alone and the rest still go together
        together = iter(protect_batch([it for it, s in zip(items, short) if not s], sample_rate))
        return [protect_samples(d, sample_rate, c) if s else next(together) for (d, c), s in zip(items, short)]
    rows = sum(d.shape[1] for d, _ in items)
    total = max(d.shape[0] for d, _ in items)
    x = torch.zeros(rows, total, dtype=torch.from_numpy(items[0][0][:0]).dtype)  # the files' own precision
    labels = torch.empty(rows, dtype=torch.long)
    lengths = torch.empty(rows, dtype=torch.long)
    r = 0
    for d, c in items:
        n, ch = d.shape
        x[r:r + ch, :n] = torch.from_numpy(d.T)
        labels[r:r + ch] = c
        lengths[r:r + ch] = n
        r += ch
    starts = torch.minimum(prot.starts(labels, total, lengths),
                           (lengths - prot.patch_len).clamp(min=0)[:, None])  # = starts() at each file's length
    out = convolve_patches(x, starts, prot.filters[labels], prot.patch_len, clip=prot.params["output"] == "clip")
    if prot.params["output"] == "normalize":  # as PosCUDAProtection.apply does, row by row
        peak = out.abs().amax(dim=1, keepdim=True)
        out = torch.where(peak > 1.0, out / peak, out)
    results, r = [], 0
    for d, c in items:
        n, ch = d.shape
        results.append((out[r:r + ch, :n].numpy().T, _applied(prot, starts[r][:, None], c, n)))
        r += ch
    return results


def _reason(e: Exception) -> str:
    """soundfile's message in one line, without the in-memory object's address (the same file, the same text)."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return re.sub(r"^Error opening <[^>]*>: ", "", text)


def _failed(rel: str, label: str, why: str) -> tuple[str, dict]:
    return "failed", {"path": rel, "label": label, "status": "failed", "error": why}


def _read(job: tuple):
    """First half of protecting a file: read, hash, check whether it is already done, decode. Returns a final
    (outcome, record) or (source hash, decoded audio)."""
    src, dst, rel, label, cls, previous, fsync = job
    if cls is None:
        return _failed(rel, label, "no label (the file appeared while the run was going; run again)")
    try:
        with open(src, "rb") as f:
            blob = f.read()
    except OSError as e:
        return _failed(rel, label, f"unreadable: {e.strerror or e}")
    src_hash = sha256(blob)
    if previous and previous.get("status") == "protected" and previous["source_sha256"] == src_hash \
            and previous["class"] == cls:
        try:
            with open(dst, "rb") as f:
                if sha256(f.read()) == previous["output_sha256"]:
                    return "done", previous
        except OSError:
            pass
    if not blob:
        return _failed(rel, label, "empty file (0 bytes)")
    try:
        dec = decode(blob)
    except Exception as e:  # soundfile raises several types for a corrupt file
        return _failed(rel, label, f"cannot decode: {_reason(e)}")
    if dec.data.shape[0] == 0:
        return _failed(rel, label, "empty audio (0 samples)")
    return src_hash, dec


def _write(job: tuple, src_hash: str, dec, out: np.ndarray, applied: list[dict]) -> tuple[str, dict]:
    """Second half: encode in the source's own format and write atomically; the file's record."""
    src, dst, rel, label, cls, previous, fsync = job
    try:
        out_blob, over = encode(out, dec)
    except Exception as e:
        return _failed(rel, label, f"cannot write {dec.format}/{dec.subtype}: {_reason(e)}")
    try:
        write_atomically(Path(dst), out_blob, fsync)
    except OSError as e:
        if e.errno in DISK_FULL:  # every later file would fail too: the run stops (and can be resumed)
            return "stopped", {"path": rel, "output": dst, "error": e.strerror or str(e)}
        return _failed(rel, label, f"cannot write the output: {e.strerror or e}")  # e.g. no permission: this file
    frames, channels = dec.data.shape
    return "protected", {"path": rel, "label": label, "class": cls, "status": "protected", "source_sha256": src_hash,
                         "output_sha256": sha256(out_blob), "format": dec.format, "subtype": dec.subtype,
                         "sample_rate": dec.sample_rate, "channels": channels, "frames": frames,
                         "seconds": frames / dec.sample_rate, "patches": applied, "past_full_scale": over,
                         "past_full_scale_handling": "kept (float)" if dec.subtype in ("FLOAT", "DOUBLE")
                         else "clipped"}


def protect_files(jobs: list[tuple]) -> list[tuple[str, dict]]:
    """Protect a chunk of files. Each job = (source path, output path, relative path, label, class index, previous
    record or None, fsync). A file already done (its previous record's source and output hashes both still match)
    is not redone. Returns, per job in order, what happened (``protected``, ``done``, ``failed``, or ``stopped``: the
    disk is full, the output was not written and the run must stop) and the file's record. Files of one sample rate are protected in one batch (:func:`protect_batch`)."""
    results: list = [None] * len(jobs)
    groups: dict[tuple, list[tuple[int, str, object]]] = {}
    for i, job in enumerate(jobs):
        first = _read(job)
        if isinstance(first[1], dict):
            results[i] = first
        else:  # one batch per sample rate and working precision (float32 and float64 round differently)
            groups.setdefault((first[1].sample_rate, first[1].data.dtype.name), []).append((i, *first))
    for (rate, _), group in groups.items():
        done = protect_batch([(dec.data, jobs[i][4]) for i, _, dec in group], rate)
        for (i, src_hash, dec), (out, applied) in zip(group, done):
            results[i] = _write(jobs[i], src_hash, dec, out, applied)
            if results[i][0] == "stopped":  # the disk is full: write nothing more; the rest of the chunk stops too
                return [r if r is not None else results[i] for r in results]
    return results


def write_atomically(path: Path, blob: bytes, fsync: bool = False) -> None:
    """Write ``blob`` to a temporary name beside ``path`` and rename it into place only once complete: an
    interrupted write never leaves a half file under the final name. ``fsync`` also forces the bytes to disk
    before the rename (survives a power cut; slower)."""
    if str(path.parent) not in _made:
        path.parent.mkdir(parents=True, exist_ok=True)
        _made.add(str(path.parent))
    tmp = path.with_name(f".{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_file(job: tuple) -> dict:
    """Check one output file against its private record and its source. ``job`` = (source path, output path,
    record). Returns {"path", "status", "detail"} with status ``ok``, ``missing``, ``changed`` (output bytes differ
    from the record), ``unprotected`` (output holds the source's audio), ``mismatch`` (output is not what the key
    gives for this source), ``source-changed``, or ``unchecked`` (source gone: only the hash was checked)."""
    src, dst, rec = job
    rel = rec["path"]
    try:
        out_blob = Path(dst).read_bytes()
    except FileNotFoundError:
        return {"path": rel, "status": "missing", "detail": "output file is missing"}
    except OSError as e:
        return {"path": rel, "status": "missing", "detail": f"output unreadable: {e.strerror}"}
    if sha256(out_blob) != rec["output_sha256"]:
        return {"path": rel, "status": "changed", "detail": "output bytes differ from the record's hash"}
    try:
        src_blob = Path(src).read_bytes()
    except OSError:
        return {"path": rel, "status": "unchecked", "detail": "source not found: output hash checked only"}
    if sha256(src_blob) != rec["source_sha256"]:
        return {"path": rel, "status": "source-changed", "detail": "source differs from the record's hash"}
    try:
        source, output = decode(src_blob), decode(out_blob)
    except Exception as e:
        return {"path": rel, "status": "mismatch", "detail": f"cannot decode: {_reason(e)}"}
    expected, applied = protect_samples(source.data, source.sample_rate, rec["class"])
    if applied != rec["patches"]:
        return {"path": rel, "status": "mismatch", "detail": "recorded patches differ from those the key gives"}
    if output.data.shape != source.data.shape or output.sample_rate != source.sample_rate:
        return {"path": rel, "status": "mismatch", "detail": "shape or sample rate differs from the source"}
    if source.exact:
        if np.array_equal(output.data, source.data):
            return {"path": rel, "status": "unprotected", "detail": "output equals the source"}
        if not np.array_equal(output.data, as_stored(expected, source)):
            return {"path": rel, "status": "mismatch", "detail": "samples differ from the key's protection"}
        return {"path": rel, "status": "ok", "detail": ""}
    # lossy codecs: inside the patches the output must be nearer the protected audio than the unprotected source
    mask = np.zeros(source.data.shape[0], dtype=bool)
    for p in applied:
        for m in range(p["count"]):
            a = p["start"] + m * (p["every"] or 0)
            mask[a:a + p["length"]] = True
    near_protected = np.abs(output.data[mask] - expected[mask]).mean()
    near_source = np.abs(output.data[mask] - source.data[mask]).mean()
    if near_protected >= near_source:
        return {"path": rel, "status": "unprotected", "detail": "patches look like the source (lossy format)"}
    return {"path": rel, "status": "ok", "detail": "lossy format: checked inside the patches"}
