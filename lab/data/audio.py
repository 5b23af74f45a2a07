"""Reading audio files into fixed-length mono tensors at one sample rate.

Files are decoded with soundfile (every extension of :data:`lab.formats.AUDIO_EXTENSIONS`; no system FFmpeg needed), mixed to mono by averaging channels,
resampled with torchaudio, then cropped or zero-padded to the recipe's clip length:

- ``crop``: ``left`` keeps the start of a long clip, ``center`` keeps its middle;
- ``pad``: ``right`` appends zeros, ``both`` splits the zeros between start and end.

Each clip's real length (samples of audio before padding, after cropping) is kept beside it: relative PosCUDA
positions are fractions of it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from lab.dsp import fit_length
from lab.errors import LabError
from lab.formats import AUDIO_EXTENSIONS  # noqa: F401  (re-exported: the one list, see lab/formats.py)


@dataclass
class AudioSet:
    """Clips of one split: ``waveforms`` (N, T) float32 in [-1, 1], ``labels`` (N,), real ``lengths`` (N,)."""

    waveforms: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor
    sample_rate: int
    class_names: list[str]
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.waveforms.shape[0]

    def with_waveforms(self, waveforms: torch.Tensor) -> "AudioSet":
        return AudioSet(waveforms, self.labels, self.lengths, self.sample_rate, self.class_names, self.ids)

    def subset(self, index: torch.Tensor) -> "AudioSet":
        index = torch.as_tensor(index, dtype=torch.long)
        return AudioSet(self.waveforms[index], self.labels[index], self.lengths[index], self.sample_rate,
                        self.class_names, [self.ids[i] for i in index.tolist()] if self.ids else [])


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 array and sample rate; a one-line LabError names a corrupt or empty file."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError for bad files
        raise LabError(f"cannot read audio file {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if data.shape[0] == 0:
        raise LabError(f"empty audio file {path} (0 samples)")
    return data, sr


def fix_length(wave: torch.Tensor, total: int, crop: str, pad: str) -> tuple[torch.Tensor, int]:
    """Crop or zero-pad a 1-D tensor to ``total`` samples (:func:`lab.dsp.fit_length`); also return the real
    (unpadded) length."""
    return fit_length(wave, total, crop, pad), min(wave.shape[0], total)


def load_clips(paths: Sequence[Path], sample_rate: int, clip_samples: int, crop: str = "left",
               pad: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Load files as (N, clip_samples) mono float32 at ``sample_rate`` and their real lengths (N,)."""
    out = torch.zeros(len(paths), clip_samples)
    lengths = torch.zeros(len(paths), dtype=torch.long)
    for i, path in enumerate(paths):
        data, sr = read_audio(path)
        wave = torch.from_numpy(data.mean(axis=1))
        if sr != sample_rate:
            wave = AF.resample(wave, sr, sample_rate)
        out[i], lengths[i] = fix_length(wave, clip_samples, crop, pad)
    return out, lengths


def limit_per_class(labels: Sequence[int], limit: int | None, seed: int = 0) -> list[int]:
    """Indices keeping at most ``limit`` items per class, drawn reproducibly with ``seed`` (all if limit is None)."""
    if limit is None:
        return list(range(len(labels)))
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen).tolist()
    seen: dict[int, int] = {}
    keep = []
    for i in order:
        if seen.get(labels[i], 0) < limit:
            seen[labels[i]] = seen.get(labels[i], 0) + 1
            keep.append(i)
    return sorted(keep)
