"""Embedding backends for FAD, behind one registry: each records its name, sample rate, frame rate and dimension.

- ``logmel``: log-mel frames (offline, no learned weights): every frame of a log-mel spectrogram is one embedding.
- ``classifier``: the penultimate layer of a model the lab trained on clean data (offline; in-domain FAD).
- ``vggish``, ``pann``: the published FAD standards, through the frechet-audio-distance package, only where it is
  installed and can load its weights; otherwise a one-line error says what is missing (never a silent substitute).
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Sequence

import numpy as np
import torch
import torchaudio.functional as AF
import torchaudio.transforms as T

from lab.errors import LabError
from lab.fad.sets import EmbeddingSet
from lab.registry import Registry

BACKENDS: Registry = Registry("FAD backend")


class Backend:
    """What every backend records, and ``embed``. ``frame_rate`` is embeddings per second of audio, or None when
    there is one embedding per clip."""

    name: str = ""
    sample_rate: int = 0
    frame_rate: float | None = None
    dim: int = 0
    in_domain: bool = False
    description: str = ""

    def info(self) -> dict:
        return {"backend": self.name, "sample_rate": self.sample_rate, "frame_rate": self.frame_rate,
                "dim": self.dim, "in_domain": self.in_domain, "description": self.description}

    def prepare(self, reference: torch.Tensor, sample_rate: int, lengths: torch.Tensor | None = None) -> None:
        """Fit anything the backend derives from the reference (clean) audio; most backends need nothing."""

    def embed(self, waveforms: torch.Tensor, sample_rate: int,
              lengths: torch.Tensor | None = None) -> EmbeddingSet:
        """Embeddings of clips ``waveforms`` (N, T) at ``sample_rate``; ``lengths`` (N,) real samples per clip
        (frames past a clip's length, i.e. padding, are left out), all of T when None."""
        raise NotImplementedError


def to_rate(waveforms: torch.Tensor, lengths: torch.Tensor | None, sample_rate: int,
            target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveforms and real lengths resampled from ``sample_rate`` to ``target``."""
    waveforms = waveforms.float()
    if lengths is None:
        lengths = torch.full((waveforms.shape[0],), waveforms.shape[1], dtype=torch.long)
    if sample_rate != target:
        waveforms = AF.resample(waveforms, sample_rate, target)
        lengths = torch.ceil(lengths * target / sample_rate).long().clamp(max=waveforms.shape[1])
    return waveforms, lengths


def pad_clips(clips: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips of different lengths as one zero-padded (N, T_max) tensor and their lengths (N,)."""
    lengths = torch.tensor([len(c) for c in clips], dtype=torch.long)
    out = torch.zeros(len(clips), int(lengths.max()) if len(clips) else 0)
    for i, c in enumerate(clips):
        out[i, :len(c)] = torch.as_tensor(c, dtype=torch.float32)
    return out, lengths


@BACKENDS.register("logmel")
class LogMelBackend(Backend):
    """Log-mel frames: ``n_mels`` bands of a ``win_ms`` window every ``hop_ms``, at ``sample_rate`` (audio at
    other rates is resampled first), log(power + 1e-6). No learned weights, so it works everywhere; it sees spectral
    change, not whether speech stays intelligible, and its numbers are not comparable to VGGish FAD."""

    description = "log-mel frames (no learned weights)"

    def __init__(self, sample_rate: int = 8000, n_mels: int = 64, win_ms: float = 25.0, hop_ms: float = 10.0,
                 chunk: int = 512):
        self.name = "logmel"
        self.sample_rate = sample_rate
        self.hop = round(hop_ms * sample_rate / 1000)
        win = round(win_ms * sample_rate / 1000)
        self.frame_rate = sample_rate / self.hop
        self.dim = n_mels
        self.chunk = chunk
        self.transform = T.MelSpectrogram(sample_rate, n_fft=win, win_length=win, hop_length=self.hop,
                                          n_mels=n_mels)

    @torch.no_grad()
    def embed(self, waveforms, sample_rate, lengths=None) -> EmbeddingSet:
        waveforms, lengths = to_rate(waveforms, lengths, sample_rate, self.sample_rate)
        per_clip = []
        for wav, lens in zip(waveforms.split(self.chunk), lengths.split(self.chunk)):
            spec = torch.log(self.transform(wav) + 1e-6).transpose(1, 2).double()  # (n, frames, mels)
            keep = torch.clamp(torch.ceil(lens / self.hop).long(), min=1, max=spec.shape[1])
            per_clip += [s[:k].numpy() for s, k in zip(spec, keep.tolist())]
        return EmbeddingSet.from_list(per_clip)


@BACKENDS.register("classifier")
class ClassifierBackend(Backend):
    """The penultimate-layer embedding of a model the lab trained on CLEAN data (``module``, a LabModule, with the
    recipe's feature front-end ``features`` at ``sample_rate``): in-domain FAD, meaningful only next to the clean
    floor computed with the same model. Embeddings wider than ``dims`` are projected onto the ``dims`` principal
    directions of the reference (clean) embeddings, fitted once by :meth:`prepare`, so that the covariance stays
    well estimated from a few thousand clips."""

    description = "penultimate layer of a clean-trained lab model (in-domain)"
    in_domain = True

    def __init__(self, module=None, features=None, sample_rate: int | None = None, dims: int = 128):
        if module is None or features is None or sample_rate is None:
            raise LabError("FAD backend 'classifier' needs a model the lab trained on clean data: it runs inside "
                           "`lab run` (on the first seed's clean model); for two folders use --backend logmel")
        from lab.features import FrontEnd
        self.name = "classifier"
        self.module = module
        self.frontend = FrontEnd(features, sample_rate)
        self.sample_rate = sample_rate
        self.max_dims = dims
        self.projection: np.ndarray | None = None
        self.raw_dim = None
        self.dim = 0
        self._reference = None

    def _raw(self, waveforms, sample_rate) -> np.ndarray:
        from lab.train import embed
        waveforms, _ = to_rate(waveforms, None, sample_rate, self.sample_rate)
        return embed(self.module, self.frontend(waveforms)).double().numpy()

    def prepare(self, reference, sample_rate, lengths=None) -> None:
        x = self._raw(reference, sample_rate)
        self._reference = (reference, x)
        self.raw_dim = x.shape[1]
        if x.shape[1] <= self.max_dims:
            self.projection, self.dim = None, x.shape[1]
            return
        # principal directions by a randomized SVD with a fixed seed (any fixed projection fitted on the clean
        # audio is a valid space for FAD; this one keeps most of its variance at a fraction of a full eigh's cost)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            q = min(self.max_dims, x.shape[0])  # no more directions than clips
            _, _, v = torch.pca_lowrank(torch.from_numpy(x).float(), q=q, center=True, niter=2)
        self.projection = v.double().numpy()  # the projection is fitted in float32; FAD stays float64
        self.dim = q

    def embed(self, waveforms, sample_rate, lengths=None) -> EmbeddingSet:
        if self.raw_dim is None:
            raise LabError("FAD backend 'classifier': call prepare() with the clean reference audio first")
        ref, ref_x = self._reference
        same = waveforms is ref or (waveforms.shape == ref.shape and torch.equal(waveforms, ref))
        x = ref_x if same else self._raw(waveforms, sample_rate)
        return EmbeddingSet.per_clip(x @ self.projection if self.projection is not None else x)

    def info(self) -> dict:
        return {**super().info(), "raw_dim": self.raw_dim,
                "projection": f"{self.dim} principal directions of the clean embeddings (randomized SVD, seed 0)"
                if self.projection is not None else None}


FAD_PACKAGE_HELP = ("install frechet-audio-distance 0.3.4 (the lab's optional extra named fad) on a machine with "
                    "network, next to a torch and torchvision that import together; its weights download on first "
                    "use; offline, use --backend logmel")


class PackageBackend(Backend):
    """A model from the frechet-audio-distance package (``model_name``), used only if the package imports and its
    weights load here; any failure is a one-line LabError saying what is missing, never a substitute backend."""

    model_name = ""

    def __init__(self):
        self.name = self.model_name
        if importlib.util.find_spec("frechet_audio_distance") is None:
            raise LabError(f"FAD backend {self.model_name!r} needs the frechet-audio-distance package, which is "
                           f"not installed: {FAD_PACKAGE_HELP}")
        try:
            module = importlib.import_module("frechet_audio_distance")
        except Exception as e:  # e.g. laion_clap -> torchvision that does not import next to this torch
            raise LabError(f"FAD backend {self.model_name!r}: frechet-audio-distance is installed but does not "
                           f"import ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                           f"{FAD_PACKAGE_HELP}") from None
        try:
            self.model = module.FrechetAudioDistance(model_name=self.model_name, sample_rate=self.sample_rate,
                                                     use_pca=False, use_activation=False, verbose=False)
        except Exception as e:  # weights cannot be downloaded or loaded
            raise LabError(f"FAD backend {self.model_name!r}: the model's weights could not be loaded "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                           f"{FAD_PACKAGE_HELP}") from None

    def embed(self, waveforms, sample_rate, lengths=None) -> EmbeddingSet:
        waveforms, lengths = to_rate(waveforms, lengths, sample_rate, self.sample_rate)
        try:
            per_clip = [np.asarray(self.model.get_embeddings([w[:n].numpy()], sr=self.sample_rate))
                        for w, n in zip(waveforms, lengths.tolist())]
        except Exception as e:  # the package prints its own exception and then fails on an empty list
            raise LabError(f"FAD backend {self.model_name!r} could not embed the audio ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})") from None
        return EmbeddingSet.from_list(per_clip)


@BACKENDS.register("vggish")
class VGGishBackend(PackageBackend):
    """VGGish (Hershey et al.) at 16 kHz: one 128-d embedding per 0.96 s of audio (the original FAD)."""

    model_name = "vggish"
    sample_rate = 16000
    frame_rate = 1 / 0.96
    dim = 128
    description = "VGGish via frechet-audio-distance (the FAD standard)"


@BACKENDS.register("pann")
class PANNBackend(PackageBackend):
    """PANN CNN14 (Kong et al.) at 16 kHz: 2048-d embeddings as frechet-audio-distance returns them."""

    model_name = "pann"
    sample_rate = 16000
    frame_rate = None
    dim = 2048
    description = "PANN CNN14 via frechet-audio-distance"


def build_backend(name: str, **context) -> Backend:
    """The backend registered as ``name``; ``context`` (module, features, sample_rate) is given to the classifier
    backend only."""
    cls = BACKENDS.get(name)
    return cls(**context) if name == "classifier" else cls()
