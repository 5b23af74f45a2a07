"""Feature front-ends are plugins: the built-ins compute what torchaudio gives, and a new one is one registered class."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchaudio.transforms as T

from lab.features import FeatureConfig, FrontEnd
from lab.frontends import FRONTENDS, FrontEndKind

REPO = Path(__file__).resolve().parent.parent


def test_built_in_front_ends_are_torchaudios():
    x = 0.1 * torch.randn(3, 8000, generator=torch.Generator().manual_seed(0))
    mel = dict(n_fft=200, win_length=200, hop_length=80, n_mels=64)
    mfcc = T.MFCC(8000, n_mfcc=40, melkwargs=mel)  # each clip alone: its dB floor is its own (not the batch's)
    assert torch.equal(FrontEnd(FeatureConfig(type="mfcc"), 8000)(x), torch.cat([mfcc(c[None]) for c in x]))
    assert torch.equal(FrontEnd(FeatureConfig(type="logmel"), 8000)(x), torch.log(T.MelSpectrogram(8000, **mel)(x) + 1e-6))
    assert torch.equal(FrontEnd(FeatureConfig(type="raw"), 8000)(x), x[:, None])
    assert FeatureConfig(type="raw").raw and not FeatureConfig(type="mfcc").raw
    assert {"logmel", "mfcc", "raw"} <= set(FRONTENDS.names())  # the built-ins (every one: tests/test_contracts.py)
    with pytest.raises(ValueError, match=r"n_mfcc \(80\) cannot exceed n_mels \(64\)"):
        FeatureConfig(type="mfcc", n_mfcc=80)


class FrameEnergy(FrontEndKind):
    """Log energy of 10 ms frames: features (B, 1, frames)."""

    def compute(self, x):
        hop = round(0.01 * self.sample_rate)
        frames = x[:, : x.shape[1] // hop * hop].reshape(len(x), -1, hop)
        return torch.log(frames.pow(2).mean(dim=2) + 1e-6)[:, None]


def test_a_new_front_end_is_one_registered_class(fsdd_dir):
    from lab.recipe import load_recipe
    from lab.spine import ExperimentData
    from lab.train import evaluate, fit
    FRONTENDS.register("frame-energy")(FrameEnergy)
    try:
        recipe = load_recipe(REPO / "recipes" / "fsdd_cnn.yaml", [
            f"data.root={fsdd_dir}", "data.max_train_per_class=5", "data.max_test_per_class=2", "train.epochs=1",
            "train.progress=false", "seeds=[0]", "features.type=frame-energy", "model={type: lstm}"])
        data = ExperimentData(recipe, log=lambda s: None)
        assert data.feature_shape == (1, 100)
        fitted = fit(recipe, data.training(data.protected_train, 0), 10, 0)
        acc = evaluate(fitted.module, recipe.train, data.features(data.clean_test), data.clean_test.labels)
        assert 0.0 <= acc["accuracy"] <= 1.0
        # and through a batch attack's path: the same front-end per batch, with gradients
        w = data.clean_train.waveforms[:2].clone().requires_grad_(True)
        data.frontend.compute(w).sum().backward()
        assert w.grad is not None and w.grad.abs().sum() > 0
    finally:
        FRONTENDS._items.pop("frame-energy", None)
    assert "frame-energy" not in FRONTENDS.names()
