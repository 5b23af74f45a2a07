"""Ablation variants put patches where they say (on generated audio)."""
from __future__ import annotations

import torch

from defenses.poscuda import PosCUDA, PosCUDAConfig
from lab.ablation import SHIFTS_MS, other_classes, variants
from lab.data import AudioSet

SR = 8000


def setup():
    prot = PosCUDA(PosCUDAConfig(key="ablation-key-123", position_range=(0.2, 0.5))).derive(10, SR)
    gen = torch.Generator().manual_seed(0)
    w = 0.3 * torch.randn(30, SR, generator=gen)
    y = torch.arange(30) % 10
    test = AudioSet(w, y, torch.full((30,), SR), SR, [str(i) for i in range(10)])
    return prot, test, variants(prot, test, seed=5)


def changed_span(a, b):
    idx = (a != b).nonzero().flatten()
    return (idx.min().item(), idx.max().item() + 1) if len(idx) else None


def test_variant_names():
    _, _, v = setup()
    assert set(v) == {"clean", "true", "mixed_positions", "mixed_filters", "random_positions", "filter_whole_clip"} | {
        f"shift_{ms:+d}ms" for ms in SHIFTS_MS}


def test_each_variant_changes_exactly_its_patch():
    prot, test, v = setup()
    w, y, p = test.waveforms, test.labels, prot.patch_len
    assert torch.equal(v["clean"], w)
    own = prot.starts(y, SR)[:, 0]
    other = prot.starts(other_classes(y, 10, 5), SR)[:, 0]
    for n in range(len(y)):
        span = changed_span(v["true"][n], w[n])
        assert span[0] >= own[n] and span[1] <= own[n] + p
        span = changed_span(v["mixed_positions"][n], w[n])
        assert span[0] >= other[n] and span[1] <= other[n] + p
        span = changed_span(v["mixed_filters"][n], w[n])
        assert span[0] >= own[n] and span[1] <= own[n] + p
        for ms in SHIFTS_MS:
            s = own[n] + round(ms * SR / 1000)
            span = changed_span(v[f"shift_{ms:+d}ms"][n], w[n])
            assert span[0] >= s and span[1] <= s + p
        span = changed_span(v["random_positions"][n], w[n])
        assert span[0] >= round(0.2 * SR) and span[1] <= round(0.5 * SR) + p
        assert (v["filter_whole_clip"][n] != w[n]).float().mean() > 0.9


def test_mixed_filters_use_another_filter():
    prot, test, v = setup()
    assert not torch.equal(v["mixed_filters"], v["true"])
    assert (other_classes(test.labels, 10, 6) != test.labels).all()
