"""Long files in bounded memory: decode, protect, encode and check a long recording a block of frames at a time.

A file longer than :data:`STREAM_FRAMES` frames whose protection has a block hook
(:meth:`defenses.base.Protection.block_plan` returns a plan) is never held whole: it is hashed piece by piece,
decoded :data:`BLOCK_FRAMES` frames at a time (plus the context the protection's filter reads around them, see
:meth:`~defenses.base.Protection.block_window`), protected block by block and encoded block by block into the
temporary file under OUTPUT (:func:`lab.protect.safefs.writing_under`: the same link-free walk, temporary name,
fsync and atomic rename as a whole file). The output bytes equal those of the whole-file path, bit for bit (the
contract tests check every protection that has a plan), so a collection's records do not depend on how it was
written. A protection without a block hook (or a file in a lossy format when verifying) is handled whole, as before,
and its record says so (``long_file``).
"""
from __future__ import annotations

import os
from typing import BinaryIO, Iterator

import numpy as np
import soundfile as sf
import torch

from defenses.base import Protection
from lab import dsp
from lab.protect.audiofile import (FLOAT_SUBTYPES, INT_BITS, TEXT_FIELDS, Decoded, no_peak_chunk, quantise,
                                   working_dtype)

STREAM_FRAMES = 1 << 22  # longer files are streamed where the protection can (95 s at 44.1 kHz, 8.7 min at 8 kHz)
BLOCK_FRAMES = 1 << 18  # frames per block: a multiple of lab.dsp.ENERGY_CHUNK (a block's sums group as the file's)
STREAMED = "streamed in blocks"
WHOLE = "decoded whole: the protection has no block hook"
# A long file that cannot be streamed (its protection has no plan for it, e.g. the masking budget, or a lossy format)
# is decoded whole; past this many samples (frames x channels) it is refused instead, in one line, so that no file
# can make lab protect use memory without bound: 2^26 samples (12.7 min of 44.1 kHz stereo, 2.3 h of 8 kHz mono).
# The whole-file path measured 18-43 bytes a sample before streaming (5.7-13.6 GB for a one-hour 44.1 kHz stereo
# file, docs/protect.md), i.e. about 1.2-2.9 GB at the limit; the masking budget's own cost there is not measured.
# $LAB_MAX_WHOLE_SAMPLES raises or lowers it.
MAX_WHOLE_SAMPLES = 1 << 26


def max_whole_samples() -> int:
    import os
    value = os.environ.get("LAB_MAX_WHOLE_SAMPLES", "")
    return int(value) if value.isdigit() else MAX_WHOLE_SAMPLES


def too_long_to_decode(frames: int, channels: int, lossless: bool) -> str | None:
    """Why a long file that cannot be streamed is refused (one line), or None when it may be decoded whole."""
    limit = max_whole_samples()
    if frames * channels <= limit:
        return None
    why = "the protection has no block path with these options (e.g. masking_margin_db)" if lossless else \
        "its format is lossy (only lossless formats are streamed)"
    return (f"too long to protect whole: {frames} frames x {channels} channel(s) = {frames * channels} samples, over "
            f"the limit of {limit} for a file that cannot be streamed ({why}); convert it to WAV or FLAC, protect it "
            f"without that option, cut it, or raise LAB_MAX_WHOLE_SAMPLES if the machine has the memory")


class NonFinite(ValueError):
    """A block of the file holds NaN or infinite samples."""


class ChangedWhileRead(ValueError):
    """The source file changed while it was being read."""


def may_be_long(f: BinaryIO) -> bool:
    """Whether the open file ``f`` is large enough to hold more than :data:`STREAM_FRAMES` frames (at least
    ``STREAM_FRAMES / 64`` bytes: only near-silence compresses further), so that only such files pay for reading
    their header twice (about 0.1 ms a file). True for an object that is not a file on disk."""
    try:
        return os.fstat(f.fileno()).st_size >= STREAM_FRAMES // 64
    except (OSError, AttributeError):  # io.UnsupportedOperation is an OSError
        return True


def header(f: BinaryIO) -> tuple[Decoded, int, int] | None:
    """How the open file ``f`` is stored (a :class:`Decoded` without its samples), its frames and its channels,
    or None when soundfile cannot read its header (the whole-file path then names the error)."""
    try:
        f.seek(0)
        with sf.SoundFile(f) as s:
            if not s.seekable():
                return None
            text = {k: getattr(s, k) for k in TEXT_FIELDS if getattr(s, k, "")}
            like = Decoded(np.empty((0, s.channels)), s.samplerate, s.format, s.subtype, s.endian, text)
            return like, s.frames, s.channels
    except Exception:
        return None


def read_frames(s: sf.SoundFile, lo: int, hi: int) -> np.ndarray:
    """Frames ``[lo, hi)`` of the open sound file ``s`` (frames, channels), decoded exactly as
    :func:`lab.protect.audiofile.decode` decodes the whole file."""
    dtype = working_dtype(s.subtype)
    s.seek(lo)
    if s.subtype in INT_BITS:
        data = np.multiply(s.read(hi - lo, dtype="int32", always_2d=True), dtype(2.0 ** -31), dtype=dtype)
    else:
        data = s.read(hi - lo, dtype=dtype.__name__, always_2d=True)
    if data.shape[0] != hi - lo:
        raise ChangedWhileRead(f"frames {lo}-{hi} could not be read (the file changed while it was read?)")
    return data


def protected_blocks(prot: Protection, plan, s: sf.SoundFile, cls: int,
                     block: int | None = None) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """(a, b, clean frames [a, b), protected frames [a, b)) of the open file ``s`` of class ``cls``, block after
    block, each (frames, channels): what :func:`lab.protect.worker.protect_samples` gives for the whole file,
    in pieces. Raises :class:`NonFinite` at the first block holding NaN or infinity."""
    block = block or BLOCK_FRAMES
    frames = s.frames
    if prot.block_first_pass:  # sums over the file are grouped by ENERGY_CHUNK: blocks are a multiple of it
        block = -(-block // dsp.ENERGY_CHUNK) * dsp.ENERGY_CHUNK
        for _ in range(prot.block_passes(plan)):
            for a in range(0, frames, block):
                x = finite(read_frames(s, a, min(frames, a + block)), a)
                prot.block_stats(plan, torch.from_numpy(np.ascontiguousarray(x.T)), a)
    for a in range(0, frames, block):
        b = min(frames, a + block)
        lo, hi = prot.block_window(plan, a, b)
        x = finite(read_frames(s, lo, hi), lo)
        out = prot.apply_block(plan, torch.from_numpy(np.ascontiguousarray(x.T)), lo, a, b)
        yield a, b, x[a - lo:b - lo], out.numpy().T


def finite(x: np.ndarray, at: int) -> np.ndarray:
    bad = x.size - int(np.count_nonzero(np.isfinite(x)))
    if bad:
        raise NonFinite(f"{bad} samples from frame {at} on are NaN or infinite: such audio cannot be protected (nor "
                        f"verified); repair or remove the file")
    return x


def stream_protect(prot: Protection, plan, src: BinaryIO, like: Decoded, cls: int, dst: BinaryIO,
                   block: int | None = None) -> int:
    """Protect the open source file ``src`` (stored as ``like``) block by block into the empty file ``dst`` in the
    source's own format (as :func:`lab.protect.audiofile.encode` writes the whole file); the count of samples past
    full scale."""
    over = 0
    src.seek(0)
    sink = Sink(dst)
    try:
        with sf.SoundFile(src) as s, sf.SoundFile(sink, "w", like.sample_rate, s.channels, like.subtype, like.endian,
                                                  like.format) as o:
            if like.subtype in FLOAT_SUBTYPES:
                no_peak_chunk(o)
            for k, v in like.text.items():
                setattr(o, k, v)
            for _, _, _, out in protected_blocks(prot, plan, s, cls, block):
                stored, n = quantise(out, like)
                over += n
                o.write(stored)
    except Exception:
        if sink.error is not None:  # the system's own error (a full disk stops the run): not soundfile's echo of it
            raise sink.error from None
        raise
    return over


class Sink:
    """The temporary output file as soundfile writes it: an error of the system while writing (e.g. no space left)
    is kept and reported as itself, instead of escaping from soundfile's callback as a traceback."""

    def __init__(self, f: BinaryIO):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            return 0

    def read(self, n: int = -1) -> bytes:
        return self.f.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def flush(self) -> None:
        self.f.flush()


def unchanged(f: BinaryIO, before: os.stat_result) -> None:
    """Raise :class:`ChangedWhileRead` when the open file ``f`` is no longer what ``before`` described."""
    now = os.fstat(f.fileno())
    if (now.st_size, now.st_mtime_ns, now.st_ino) != (before.st_size, before.st_mtime_ns, before.st_ino):
        raise ChangedWhileRead("the file changed while it was read; run again")
