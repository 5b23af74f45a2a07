"""Embedding backends: each offline backend returns embeddings of the shape it states; the FAD standards that
cannot run here say so in one line instead of being replaced by something else."""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from lab.errors import LabError
from lab.fad import BACKENDS, build_backend
from lab.features import FeatureConfig
from lab.models.cnn import CNNConfig
from lab.module import LabModule, standardisation
from tests.conftest import tone


def test_registry_lists_every_backend():
    assert {"logmel", "classifier", "vggish", "pann"} <= set(BACKENDS.names())
    with pytest.raises(LabError, match="unknown FAD backend 'logmle' \\(did you mean 'logmel'\\?\\)"):
        build_backend("logmle")


def test_logmel_frames_have_the_stated_shape_and_rate():
    backend = build_backend("logmel")
    info = backend.info()
    assert (info["sample_rate"], info["frame_rate"], info["dim"]) == (8000, 100.0, 64)
    waves = torch.from_numpy(np.stack([tone(1.0, 8000, f, seed=i)[:, 0] for i, f in enumerate((200, 400, 800))]))
    lengths = torch.tensor([8000, 4000, 123])
    emb = backend.embed(waves, 8000, lengths)
    assert emb.dim == 64 and emb.n_clips == 3
    hop = 8000 // 100
    assert np.bincount(emb.clip).tolist() == [math.ceil(n / hop) for n in lengths.tolist()]  # padding left out
    assert np.isfinite(emb.frames).all()


def test_logmel_resamples_other_rates_to_its_own():
    backend = build_backend("logmel")
    at16k = torch.from_numpy(tone(0.5, 16000, 300)[:, 0])[None]
    emb = backend.embed(at16k, 16000)
    assert emb.dim == 64 and len(emb) == math.ceil(0.5 * backend.frame_rate)


def test_logmel_sees_a_tone_change():
    backend = build_backend("logmel")
    make = lambda f, s: torch.from_numpy(np.stack([tone(0.5, 8000, f + 5 * i, seed=s + i)[:, 0] for i in range(20)]))
    same = backend.embed(make(300, 0), 8000), backend.embed(make(300, 100), 8000)
    other = backend.embed(make(1200, 200), 8000)
    from lab.fad import fad
    assert fad(*same, bootstrap=0)["fad"] < fad(same[0], other, bootstrap=0)["fad"] / 10


def small_module(features: FeatureConfig, sr: int, clip: int, channels=(4, 8)) -> LabModule:
    from lab.features import FrontEnd
    x = FrontEnd(features, sr)(torch.randn(8, clip))
    return LabModule(CNNConfig(channels=list(channels)), x.shape[1:], 10, 1e-3, 0.0, False, sr, *standardisation(x))


@pytest.mark.parametrize("dims, channels", [(128, (4, 8)), (16, (4, 8)), (4096, (2, 2))])
def test_classifier_embeddings_have_the_stated_shape(dims, channels):
    features = FeatureConfig(type="mfcc", n_mfcc=20, n_mels=32)
    module = small_module(features, 8000, 4000, channels)
    backend = build_backend("classifier", module=module, features=features, sample_rate=8000)
    backend.max_dims = dims
    waves = torch.randn(160, 4000) * 0.1
    backend.prepare(waves, 8000)
    emb = backend.embed(waves[:30], 8000)
    info = backend.info()
    assert info["dim"] == min(dims, info["raw_dim"], 160) == emb.dim
    assert emb.n_clips == 30 and len(emb) == 30 and info["frame_rate"] is None and info["in_domain"]
    # the reference itself is served from what prepare() computed, and equals a fresh embedding of it
    np.testing.assert_allclose(backend.embed(waves, 8000).frames, backend.embed(waves.clone() + 0.0, 8000).frames)
    assert (info["projection"] is None) == (info["raw_dim"] <= dims)


def test_classifier_without_a_model_says_where_it_runs():
    with pytest.raises(LabError, match="runs inside `lab run`.*--backend logmel"):
        build_backend("classifier")


@pytest.mark.parametrize("name", ["vggish", "pann"])
def test_package_backends_say_what_is_missing(monkeypatch, name):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda mod, *a: None if mod == "frechet_audio_distance" else real(mod, *a))
    with pytest.raises(LabError) as err:
        build_backend(name)
    message = str(err.value)
    assert "\n" not in message
    assert f"FAD backend '{name}' needs the frechet-audio-distance package" in message
    assert "--backend logmel" in message
