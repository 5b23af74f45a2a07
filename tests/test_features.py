from __future__ import annotations

import pytest
import torch

from lab.features import FeatureCache, FeatureConfig, FrontEnd


@pytest.mark.parametrize("kind, shape", [("raw", (1, 8000)), ("mfcc", (40, 101)), ("logmel", (64, 101))])
def test_frontend_shapes(kind, shape):
    x = torch.randn(5, 8000) * 0.1
    feats = FrontEnd(FeatureConfig(type=kind, chunk=2), 8000)(x)
    assert feats.shape == (5, *shape)
    assert torch.isfinite(feats).all()


def test_chunking_does_not_change_features():
    """Chunks change nothing beyond float32 rounding. MFCCs reach ~50 in magnitude, and the batch size may select
    another BLAS kernel (seen under load in CI), so the tolerance is relative to float32 precision, not absolute."""
    x = torch.randn(7, 8000, generator=torch.Generator().manual_seed(0)) * 0.1
    a = FrontEnd(FeatureConfig(type="mfcc", chunk=3), 8000)(x)
    b = FrontEnd(FeatureConfig(type="mfcc", chunk=100), 8000)(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(a, FrontEnd(FeatureConfig(type="mfcc", n_mels=48), 8000)(x), atol=1e-2)


def test_cache_computes_once_and_on_disk(tmp_path):
    x = torch.randn(4, 8000) * 0.1
    fe = FrontEnd(FeatureConfig(type="logmel"), 8000)
    cache = FeatureCache(disk=tmp_path)
    first = cache(fe, x)
    assert cache(fe, x) is first and cache.computed == 1
    cache(fe, x + 1e-3)
    assert cache.computed == 2
    fresh = FeatureCache(disk=tmp_path)
    assert torch.equal(fresh(fe, x), first) and fresh.computed == 0
    other = FrontEnd(FeatureConfig(type="logmel", n_mels=32), 8000)
    assert cache(other, x).shape[1] == 32
