"""Decoding a file and writing it back in its own format, sample rate, channel count and subtype.

Integer PCM (8/16/24/32-bit) is read as exact integers and written back as integers, so every sample outside the
protected patches is bit-identical to the source. Inside a patch the protected value is rounded to the subtype's
grid; a value past full scale (above 1 - 2^-(bits-1) or below -1) is CLIPPED to full scale and counted: it cannot be
represented otherwise, and the count is reported per file and in the run's summary. Float subtypes (FLOAT, DOUBLE)
keep values past full scale unchanged (they are representable) and count them too. Other subtypes (Vorbis, Opus,
MP3, A-law, ...) are re-encoded from floats clipped to [-1, 1] (counted); a lossy codec changes every sample a little
when re-encoding, which is unavoidable.

Text metadata that libsndfile knows (title, artist, ...) is copied; other chunks (cue points, embedded pictures, a
float file's PEAK chunk) are not. Output bytes are a function of the input and the key, so that a resumed run equals
an uninterrupted one, except for Ogg (Vorbis/Opus) files, whose stream serial number libsndfile draws at random.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf

INT_BITS = {"PCM_S8": 8, "PCM_U8": 8, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32}
FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE"})
LOSSLESS_FORMATS = frozenset({"WAV", "WAVEX", "AIFF", "AU", "CAF", "W64", "RF64", "FLAC", "RAW", "NIST", "IRCAM",
                              "SVX", "PAF", "VOC", "SD2", "WVE", "MAT4", "MAT5", "PVF", "XI", "HTK", "SDS", "AVR"})
TEXT_FIELDS = ("title", "copyright", "software", "artist", "comment", "date", "album", "license", "tracknumber",
               "genre")


@dataclass
class Decoded:
    """A decoded file: ``data`` (frames, channels) in [-1, 1] full scale (float32 or float64, see
    :func:`working_dtype`), and how it was stored."""

    data: np.ndarray
    sample_rate: int
    format: str
    subtype: str
    endian: str
    text: dict

    @property
    def exact(self) -> bool:
        """True when re-encoding reproduces every unchanged sample exactly (lossless format and subtype)."""
        return self.format in LOSSLESS_FORMATS and (self.subtype in INT_BITS or self.subtype in FLOAT_SUBTYPES)


def working_dtype(subtype: str) -> type:
    """float32 holds every sample of 8- to 24-bit PCM and of FLOAT files exactly (and halves the memory traffic);
    32-bit PCM and DOUBLE need float64."""
    return np.float64 if subtype in ("PCM_32", "DOUBLE") else np.float32


def decode(blob: bytes) -> Decoded:
    """Decode a whole file from its bytes (raises soundfile's errors for a corrupt file)."""
    with sf.SoundFile(io.BytesIO(blob)) as f:
        dtype = working_dtype(f.subtype)
        if f.subtype in INT_BITS:
            data = np.multiply(f.read(dtype="int32", always_2d=True), dtype(2.0 ** -31), dtype=dtype)
        else:
            data = f.read(dtype=dtype.__name__, always_2d=True)
        text = {k: getattr(f, k) for k in TEXT_FIELDS if getattr(f, k, "")}
        return Decoded(data, f.samplerate, f.format, f.subtype, f.endian, text)


def quantise(data: np.ndarray, like: Decoded) -> tuple[np.ndarray, int]:
    """The samples as they will be stored, and how many lie past full scale (clipped for integer and other
    subtypes, kept for float subtypes)."""
    bits = INT_BITS.get(like.subtype)
    if bits is not None:
        scale = 2.0 ** (bits - 1)
        q = data * data.dtype.type(scale)  # exact: a power of two
        np.rint(q, out=q)
        over = 0
        if q.max() > scale - 1 or q.min() < -scale:
            over = int(np.count_nonzero(q > scale - 1) + np.count_nonzero(q < -scale))
            np.clip(q, -scale, scale - 1, out=q)
        q *= data.dtype.type(2.0 ** (32 - bits))  # to libsndfile's 32-bit integer scale (exact)
        return q.astype(np.int32), over
    over = int(np.count_nonzero(np.abs(data) > 1.0))
    if like.subtype in FLOAT_SUBTYPES:
        return data, over
    return np.clip(data, -1.0, 1.0), over


SFC_SET_ADD_PEAK_CHUNK = 0x1050  # libsndfile's command number (sndfile.h); soundfile does not name it


def no_peak_chunk(f: sf.SoundFile) -> None:
    """Ask libsndfile not to add a PEAK chunk to a float WAV/AIFF file: that chunk holds the time of writing, so
    the same audio would give different bytes on every run (and a resumed run would not equal an uninterrupted
    one). Uses soundfile's low-level handle; if that is unavailable the chunk is simply kept."""
    try:
        sf._snd.sf_command(f._file, SFC_SET_ADD_PEAK_CHUNK, sf._ffi.NULL, sf._snd.SF_FALSE)
    except AttributeError:
        pass


def encode(data: np.ndarray, like: Decoded) -> tuple[bytes, int]:
    """Bytes of a file holding ``data`` (frames, channels) in the format, rate and subtype of ``like``, and the count
    of samples past full scale (see :func:`quantise`)."""
    stored, over = quantise(data, like)
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", like.sample_rate, stored.shape[1], like.subtype, like.endian, like.format) as f:
        if like.subtype in FLOAT_SUBTYPES:
            no_peak_chunk(f)
        for k, v in like.text.items():
            setattr(f, k, v)
        f.write(stored)
    return buf.getvalue(), over


def as_stored(data: np.ndarray, like: Decoded) -> np.ndarray:
    """``data`` as a decoder will read it back from an exact (lossless) file: rounded and clipped like the file."""
    stored, _ = quantise(data, like)
    if stored.dtype == np.int32:
        return stored.astype(np.float64) / 2.0 ** 31
    return stored.astype(np.float32).astype(np.float64) if like.subtype == "FLOAT" else stored
