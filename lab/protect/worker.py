"""What one worker process does to one file: protect it (read, protect, encode, write atomically) or check it.

A worker never sees the key. It receives the derived protections (:class:`defenses.base.Protection` objects,
pickled, one per sample rate; the parent derives them, see :mod:`lab.protect.protector`): with each chunk of files
(the rates of that chunk's files) when protecting, once at start when checking. They are unpickled afresh per chunk
(per file when checking), so whatever a protection caches (classwise-noise's patterns per clip length, ar-noise's
class sequences) lasts one chunk and never grows with the collection.

A file is protected by the protection's own ``apply``, the one experiments use: rows = the file's channels, every
row the file's class, lengths = its frames (:func:`protect_samples`). A chunk's files of one sample rate go through
the protection's declared hook ``apply_files`` (PosCUDA: one padded batch, bit-identical to ``apply`` file by file;
the others: file by file) (:func:`protect_batch`). Results are small dicts (the private record's lines, see :mod:`lab.protect.manifest`); audio
never travels between processes. A long file (over :data:`lab.protect.blocks.STREAM_FRAMES` frames, lossless) whose
protection has a block hook is never held whole: it is read, protected, written and checked a block at a time
(:mod:`lab.protect.blocks`), with the same bytes as a file protected whole.
"""
from __future__ import annotations

import errno
import hashlib
import os
import pickle
import re

import numpy as np
import soundfile as sf
import torch

from defenses.base import Protection
from lab.protect.audiofile import as_stored, decode, encode
from lab.protect import blocks
from lab.protect.blocks import header
from lab.protect.safefs import (LinkInOutput, NotRegular, close_inherited_locks, file_sha256, open_regular,
                               open_under, writing_under, write_under)

PARTIAL_SUFFIX = ".lab-partial"  # temporary names: ".<name>.<pid>.lab-partial" beside the final file
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})  # no space (or quota) left: no later file could be written

_protections: dict[int, bytes] = {}  # checking: the pickled protection at each sample rate of the record


def start_worker(protections: dict[int, bytes] | None = None) -> None:
    """Pool initializer: one thread per worker (the processes are the parallelism); for checking, remember the
    pickled protection of each sample rate (``{rate: pickle.dumps(protection)}``)."""
    torch.set_num_threads(1)
    close_inherited_locks()  # the parent's lock on OUTPUT is the parent's alone
    _protections.clear()
    _protections.update(protections or {})


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def protect_samples(prot: Protection, data: np.ndarray, cls: int) -> np.ndarray:
    """One file's (frames, channels) samples of class ``cls`` protected by ``prot.apply``: every channel a row of
    the file's class and length (so per-row rules, e.g. an SNR or a peak normalisation, hold per channel)."""
    frames, channels = data.shape
    x = torch.from_numpy(np.ascontiguousarray(data.T))
    labels = torch.full((channels,), cls, dtype=torch.long)
    lengths = torch.full((channels,), frames, dtype=torch.long)
    return prot.apply(x, labels, lengths).numpy().T


def protect_batch(prot: Protection, items: list[tuple[np.ndarray, int]]) -> list[np.ndarray]:
    """Protect several files of one sample rate and precision, ``items`` = (samples (frames, channels), class),
    through the protection's declared hook :meth:`~defenses.base.Protection.apply_files` (PosCUDA: the chunk in one
    padded batch; others: file by file); each result equals :func:`protect_samples` of that file, bit for bit
    (the contract tests check every file-by-file defense)."""
    files = [(torch.from_numpy(np.ascontiguousarray(d.T)), c) for d, c in items]
    return [out.numpy().T for out in prot.apply_files(files)]


def patches_of(prot: Protection, cls: int, frames: int) -> list[dict] | None:
    """Where the protection puts its patches in a file of class ``cls`` and ``frames`` samples (its declared
    :meth:`~defenses.base.Protection.file_patches`), or None for a protection that changes the whole file.
    Private: never in OUTPUT."""
    return prot.file_patches([(cls, frames)])[0]


def patches_of_files(prot: Protection, files: list[tuple[int, int]]) -> list[list[dict] | None]:
    """:func:`patches_of` for several files (class, frames) in one call."""
    return prot.file_patches(files)


def _reason(e: Exception) -> str:
    """soundfile's message in one line, without the in-memory object's address (the same file, the same text)."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return re.sub(r"^Error opening <[^>]*>: ", "", text)


def _failed(rel: str, label: str, why: str) -> tuple[str, dict]:
    return "failed", {"path": rel, "label": label, "status": "failed", "error": why}


def _read(job: tuple, protections: dict[int, Protection] | None = None):
    """First half of protecting a file: read, hash, check whether it is already done, decode. Returns a final
    (outcome, record) or (source hash, decoded audio). A long file whose protection has a block hook is protected
    here and now, a block at a time (:func:`_streamed`), and its final (outcome, record) returned."""
    src, out, rel, label, cls, previous, fsync = job
    if cls is None:
        return _failed(rel, label, "no label (the file appeared while the run was going; run again)")
    try:
        with open_regular(src) as f:
            info = header(f) if blocks.may_be_long(f) else None
            if info is not None and info[1] > blocks.STREAM_FRAMES:
                prot = (protections or {}).get(info[0].sample_rate)
                exact = info[0].exact  # lossless formats only are streamed
                plan = prot.block_plan(cls, info[1], info[2]) if prot is not None and exact else None
                if plan is not None:
                    return _streamed(job, f, info, prot, plan)
                refused = blocks.too_long_to_decode(info[1], info[2], exact)
                if refused:
                    return _failed(rel, label, refused)
            f.seek(0)
            blob = f.read()
    except NotRegular as e:
        return _failed(rel, label, f"skipped: {e.strerror}")
    except OSError as e:
        return _failed(rel, label, f"unreadable: {e.strerror or e}")
    src_hash = sha256(blob)
    if _already_done(job, src_hash):
        return "done", previous
    if not blob:
        return _failed(rel, label, "empty file (0 bytes)")
    try:
        dec = decode(blob)
    except Exception as e:  # soundfile raises several types for a corrupt file
        return _failed(rel, label, f"cannot decode: {_reason(e)}")
    if dec.data.shape[0] == 0:
        return _failed(rel, label, "empty audio (0 samples)")
    bad = dec.data.size - int(np.count_nonzero(np.isfinite(dec.data)))
    if bad:
        return _failed(rel, label, f"{bad} of {dec.data.size} samples are NaN or infinite: such audio cannot be "
                                   f"protected (nor verified); repair or remove the file")
    return src_hash, dec


def _already_done(job: tuple, src_hash: str) -> bool:
    """Whether the previous record's protected copy is still there for this very source (both hashes match); the
    output is hashed piece by piece (bounded memory, whatever its length)."""
    src, out, rel, label, cls, previous, fsync = job
    if not (previous and previous.get("status") == "protected" and previous["source_sha256"] == src_hash
            and previous["class"] == cls):
        return False
    try:
        with open_under(out, rel) as f:
            return file_sha256(f) == previous["output_sha256"]
    except OSError:
        return False


def _streamed(job: tuple, f, info: tuple, prot: Protection, plan) -> tuple[str, dict]:
    """Protect a long file block by block (:mod:`lab.protect.blocks`): hashed piece by piece, decoded, protected
    and encoded a block at a time into the temporary file under OUTPUT, renamed into place once complete."""
    src, root, rel, label, cls, previous, fsync = job
    like, frames, channels = info
    before = os.fstat(f.fileno())
    src_hash = file_sha256(f)
    if _already_done(job, src_hash):
        return "done", previous
    done = {}

    def write() -> None:
        with writing_under(root, rel, PARTIAL_SUFFIX, fsync) as dst:
            done["over"] = blocks.stream_protect(prot, plan, f, like, cls, dst)
            blocks.unchanged(f, before)
            done["hash"] = file_sha256(dst)

    try:
        stopped = _saved(job, write)
    except (blocks.NonFinite, blocks.ChangedWhileRead) as e:
        return _failed(rel, label, str(e))
    except Exception as e:  # soundfile's errors while decoding or encoding a block
        return _failed(rel, label, f"cannot protect {like.format}/{like.subtype} block by block: {_reason(e)}")
    if stopped:
        return stopped
    return "protected", _record(job, src_hash, like, frames, channels, done["hash"], done["over"],
                                patches_of(prot, cls, frames), blocks.STREAMED)


def _saved(job: tuple, write) -> tuple[str, dict] | None:
    """Run ``write`` (which writes the file under OUTPUT); the file's final (outcome, record) when it could not,
    None when it did."""
    src, root, rel, label, cls, previous, fsync = job
    try:
        write()
    except LinkInOutput as e:
        return _failed(rel, label, f"not written: {e.strerror}")
    except OSError as e:
        if e.errno in DISK_FULL:  # every later file would fail too: the run stops (and can be resumed)
            return "stopped", {"path": rel, "output": os.path.join(root, rel), "error": e.strerror or str(e)}
        return _failed(rel, label, f"cannot write the output: {e.strerror or e}")  # e.g. no permission: this file
    return None


def _record(job: tuple, src_hash: str, like, frames: int, channels: int, out_hash: str, over: int,
            applied: list[dict] | None, long_file: str | None) -> dict:
    """The private record's line of a protected file."""
    src, root, rel, label, cls, previous, fsync = job
    rec = {"path": rel, "label": label, "class": cls, "status": "protected", "source_sha256": src_hash,
           "output_sha256": out_hash, "format": like.format, "subtype": like.subtype,
           "sample_rate": like.sample_rate, "channels": channels, "frames": frames,
           "seconds": frames / like.sample_rate, "past_full_scale": over,
           "past_full_scale_handling": "kept (float)" if like.subtype in ("FLOAT", "DOUBLE") else "clipped"}
    if applied is not None:  # protections with positions (see patches_of)
        rec["patches"] = applied
    if long_file is not None:  # how a long file was handled: in bounded memory, or whole (no block hook)
        rec["long_file"] = long_file
    return rec


def _write(job: tuple, src_hash: str, dec, out: np.ndarray, applied: list[dict] | None) -> tuple[str, dict]:
    """Second half: encode in the source's own format and write atomically under OUTPUT (never through a link);
    the file's record."""
    src, root, rel, label, cls, previous, fsync = job
    try:
        out_blob, over = encode(out, dec)
    except Exception as e:
        return _failed(rel, label, f"cannot write {dec.format}/{dec.subtype}: {_reason(e)}")
    stopped = _saved(job, lambda: write_under(root, rel, out_blob, PARTIAL_SUFFIX, fsync))
    if stopped:
        return stopped
    frames, channels = dec.data.shape
    long_file = blocks.WHOLE if frames > blocks.STREAM_FRAMES else None
    return "protected", _record(job, src_hash, dec, frames, channels, sha256(out_blob), over, applied, long_file)


def protect_files(task: tuple[list[tuple], dict[int, bytes]]) -> list[tuple[str, dict]]:
    """Protect a chunk of files. ``task`` = (jobs, {sample rate: pickled protection} for the rates of the chunk's
    files). Each job = (source path, OUTPUT folder, path relative to INPUT and OUTPUT, label, class index, previous
    record or None, fsync). A file already done (its previous record's source and output hashes both still match) is not redone.
    Returns, per job in order, what happened (``protected``, ``done``, ``failed``, or ``stopped``: the disk is full,
    the output was not written and the run must stop) and the file's record. The files of one sample rate and
    precision are protected together (:func:`protect_batch`)."""
    jobs, blobs = task
    protections = {rate: pickle.loads(blob) for rate, blob in blobs.items()}  # afresh: caches last one chunk
    results: list = [None] * len(jobs)
    groups: dict[tuple, list[tuple[int, str, object]]] = {}
    for i, job in enumerate(jobs):
        first = _read(job, protections)
        if first[0] == "stopped":  # a long file met a full disk: write nothing more (as below)
            results[i] = first
            return [r if r is not None else first for r in results]
        if isinstance(first[1], dict):
            results[i] = first
        else:  # one batch per sample rate and working precision (float32 and float64 round differently)
            groups.setdefault((first[1].sample_rate, first[1].data.dtype.name), []).append((i, *first))
    for (rate, _), group in groups.items():
        prot = protections.get(rate)
        if prot is None:  # the parent read another rate from this file's header a moment ago
            for i, _, _ in group:
                results[i] = _failed(jobs[i][2], jobs[i][3], f"sample rate {rate} Hz not known when the run read "
                                     f"the file's header (the file changed while the run was going; run again)")
            continue
        try:
            done = protect_batch(prot, [(dec.data, jobs[i][4]) for i, _, dec in group])
        except Exception:  # a file the protection cannot take (e.g. out of memory): find which, the rest go on
            done = []
            for i, _, dec in group:
                try:
                    done.append(protect_samples(prot, dec.data, jobs[i][4]))
                except Exception as e:
                    done.append(e)
        patches = patches_of_files(prot, [(jobs[i][4], dec.data.shape[0]) for i, _, dec in group])
        for (i, src_hash, dec), out, applied in zip(group, done, patches):
            if isinstance(out, Exception):
                results[i] = _failed(jobs[i][2], jobs[i][3], f"cannot protect: {_reason(out)}")
                continue
            results[i] = _write(jobs[i], src_hash, dec, out, applied)
            if results[i][0] == "stopped":  # the disk is full: write nothing more; the rest of the chunk stops too
                return [r if r is not None else results[i] for r in results]
    return results


def check_file(job: tuple) -> dict:
    """Check one output file against its private record and its source. ``job`` = (source path, OUTPUT folder,
    record). Returns {"path", "status", "detail"} with status ``ok``, ``missing``, ``changed`` (output bytes differ
    from the record), ``unprotected`` (output holds the source's audio), ``mismatch`` (output is not what the key
    gives for this source), ``source-changed``, or ``unchecked`` (source gone: only the hash was checked). Both
    files are hashed piece by piece; a long file in a lossless format whose protection has a block hook is
    compared block by block (:func:`check_blocks`), in bounded memory."""
    src, out, rec = job
    rel = rec["path"]
    try:
        with open_under(out, rel) as o:
            if file_sha256(o) != rec["output_sha256"]:
                return {"path": rel, "status": "changed", "detail": "output bytes differ from the record's hash"}
            try:
                with open_regular(src) as f:
                    if file_sha256(f) != rec["source_sha256"]:
                        return {"path": rel, "status": "source-changed", "detail": "source differs from the "
                                                                                   "record's hash"}
                    streamed = check_blocks(rel, rec, f, o)
                    if streamed is not None:
                        return streamed
                    f.seek(0)
                    src_blob = f.read()
            except NotRegular as e:
                return {"path": rel, "status": "source-changed", "detail": f"source is {e.strerror}"}
            except OSError:
                return {"path": rel, "status": "unchecked", "detail": "source not found: output hash checked only"}
            o.seek(0)
            out_blob = o.read()
    except FileNotFoundError:
        return {"path": rel, "status": "missing", "detail": "output file is missing"}
    except (LinkInOutput, NotRegular) as e:
        return {"path": rel, "status": "unsafe", "detail": f"output is {e.strerror}"}
    except OSError as e:
        return {"path": rel, "status": "missing", "detail": f"output unreadable: {e.strerror}"}
    return check_decoded(rel, rec, src_blob, out_blob)


def check_blocks(rel: str, rec: dict, f, o) -> dict | None:
    """:func:`check_file` for a long file in a lossless format whose protection has a block hook: both files
    decoded, and the source protected again, a block at a time (:mod:`lab.protect.blocks`), each block of the
    output compared with the re-protected one. None for any other file (checked whole)."""
    info = header(f) if blocks.may_be_long(f) else None
    if info is None or info[1] <= blocks.STREAM_FRAMES or not info[0].exact or info[0].sample_rate not in _protections:
        return None
    like, frames, channels = info
    prot = pickle.loads(_protections[like.sample_rate])  # afresh: caches last one file
    plan = prot.block_plan(rec["class"], frames, channels)
    if plan is None:
        return None
    if patches_of(prot, rec["class"], frames) != rec.get("patches"):
        return {"path": rel, "status": "mismatch", "detail": "recorded patches differ from those the key gives"}
    out_info = header(o)
    if out_info is None:
        return {"path": rel, "status": "mismatch", "detail": "cannot decode the output"}
    stored, out_frames, out_channels = out_info
    if (out_frames, out_channels, stored.sample_rate) != (frames, channels, like.sample_rate):
        return {"path": rel, "status": "mismatch", "detail": "shape or sample rate differs from the source"}
    facts = (out_frames, out_channels, stored.sample_rate, stored.format, stored.subtype)
    if facts != tuple(rec[k] for k in ("frames", "channels", "sample_rate", "format", "subtype")):
        return {"path": rel, "status": "mismatch", "detail": "frames, channels, sample rate, format or subtype "
                                                             "differ from the record's"}
    same, wrong = True, False
    try:
        f.seek(0)
        o.seek(0)
        with sf.SoundFile(f) as s, sf.SoundFile(o) as out:
            for a, b, clean, expected in blocks.protected_blocks(prot, plan, s, rec["class"]):
                got = blocks.read_frames(out, a, b)
                same = same and np.array_equal(got, clean)
                wrong = wrong or not np.array_equal(got, as_stored(expected, like))
    except Exception as e:  # a block that cannot be decoded, NaN in the source, a file changed meanwhile
        return {"path": rel, "status": "mismatch", "detail": f"cannot check block by block: {_reason(e)}"}
    if same:
        return {"path": rel, "status": "unprotected", "detail": "output equals the source"}
    if wrong:
        return {"path": rel, "status": "mismatch", "detail": "samples differ from the key's protection"}
    return {"path": rel, "status": "ok", "detail": "", "blocks": True}


def check_decoded(rel: str, rec: dict, src_blob: bytes, out_blob: bytes) -> dict:
    """:func:`check_file` for a file decoded whole (its hashes already checked)."""
    try:
        source, output = decode(src_blob), decode(out_blob)
    except Exception as e:
        return {"path": rel, "status": "mismatch", "detail": f"cannot decode: {_reason(e)}"}
    if source.sample_rate not in _protections:
        return {"path": rel, "status": "mismatch", "detail": f"no protection derived at {source.sample_rate} Hz"}
    prot = pickle.loads(_protections[source.sample_rate])  # afresh: caches last one file
    expected = protect_samples(prot, source.data, rec["class"])
    applied = patches_of(prot, rec["class"], source.data.shape[0])
    if applied != rec.get("patches"):
        return {"path": rel, "status": "mismatch", "detail": "recorded patches differ from those the key gives"}
    if output.data.shape != source.data.shape or output.sample_rate != source.sample_rate:
        return {"path": rel, "status": "mismatch", "detail": "shape or sample rate differs from the source"}
    facts = (output.data.shape[0], output.data.shape[1], output.sample_rate, output.format, output.subtype)
    if facts != tuple(rec[k] for k in ("frames", "channels", "sample_rate", "format", "subtype")):
        return {"path": rel, "status": "mismatch", "detail": "frames, channels, sample rate, format or subtype "
                                                             "differ from the record's"}
    if source.exact:
        if np.array_equal(output.data, source.data):
            return {"path": rel, "status": "unprotected", "detail": "output equals the source"}
        if not np.array_equal(output.data, as_stored(expected, source)):
            return {"path": rel, "status": "mismatch", "detail": "samples differ from the key's protection"}
        return {"path": rel, "status": "ok", "detail": ""}
    # lossy codecs: where the protection changes the audio (its patches, or every sample it changed) the output
    # must be nearer the protected audio than the unprotected source
    if applied is not None:
        mask = np.zeros(source.data.shape[0], dtype=bool)
        for p in applied:
            for m in range(p["count"]):
                a = p["start"] + m * (p["every"] or 0)
                mask[a:a + p["length"]] = True
    else:
        mask = (expected != source.data).any(axis=1)
        if not mask.any():
            mask[:] = True  # nothing changed (silence): the output is then as near the source as the protection
    near_protected = np.abs(output.data[mask] - expected[mask]).mean()
    near_source = np.abs(output.data[mask] - source.data[mask]).mean()
    if near_protected >= near_source:
        return {"path": rel, "status": "unprotected", "detail": "patches look like the source (lossy format)"}
    return {"path": rel, "status": "ok", "detail": "lossy format: checked inside the patches"}
