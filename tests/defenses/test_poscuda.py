"""The PosCUDA contract: only patches change, keyed determinism, tap range, batching, re-application, no key leak."""
from __future__ import annotations

import json

import pytest
import torch

from defenses._patches import PosCUDAProtection
from defenses.poscuda import PosCUDA, PosCUDAConfig
from lab.dsp import convolve_patches
from lab.errors import LabError

SR = 8000


def protection(**kw) -> PosCUDAProtection:
    kw.setdefault("key", "test-key-123456")
    return PosCUDA(PosCUDAConfig(**kw)).derive(num_classes=10, sample_rate=SR)


def batch(n=40, t=8000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = 0.5 * torch.randn(n, t, generator=gen).clamp(-2, 2) / 2
    y = torch.arange(n) % 10
    return x, y


def patch_mask(prot, labels, t, lengths=None, **kw):
    starts = prot.starts(labels if "position_classes" not in kw else kw["position_classes"], t, lengths)
    mask = torch.zeros(len(labels), t, dtype=torch.bool)
    for n in range(len(labels)):
        for s in starts[n].tolist():
            mask[n, s:s + prot.patch_len] = True
    return mask


@pytest.mark.parametrize("kw", [{}, {"patches_per_class": 3}, {"position_mode": "relative", "position_range": (0.1, 0.8)},
                                {"filter_length": 4}, {"output": "clip", "blur": 1.0}])
def test_outside_patches_bit_identical_inside_changed(kw):
    prot = protection(**kw)
    x, y = batch()
    lengths = torch.full((len(y),), 6000) if kw.get("position_mode") == "relative" else None
    out = prot.apply(x, y, lengths)
    mask = patch_mask(prot, y, x.shape[1], lengths)
    assert torch.equal(out[~mask], x[~mask])
    assert (out[mask] != x[mask]).float().mean() > 0.9
    assert torch.equal(x, batch()[0]), "input modified in place"


def test_same_key_same_output_other_key_other_positions_and_filters():
    x, y = batch()
    a, b = protection(), protection()
    assert torch.equal(a.apply(x, y), b.apply(x, y))
    c = protection(key="another-key-654321")
    assert not torch.equal(a.positions, c.positions)
    assert not torch.equal(a.filters, c.filters)
    assert a.key_fingerprint != c.key_fingerprint


def test_classes_get_distinct_filters_and_positions():
    p = protection()
    assert len({tuple(f) for f in p.filters[:, 0].tolist()}) == 10
    assert len(set(p.positions[:, 0].tolist())) == 10


@pytest.mark.parametrize("one_tap", [True, False])
def test_taps_in_range(one_tap):
    p = protection(blur=0.25, filter_length=63, one_tap=one_tap)
    f = p.filters
    ones = (f == 1.0).sum(-1)
    assert (ones == (1 if one_tap else 0)).all()
    rest = f[f != 1.0]
    assert rest.min() >= 0 and rest.max() <= 0.25
    lo, hi = p.params["position_range"]
    assert ((p.positions >= lo) & (p.positions <= hi)).all()


def test_filter_norm_sum():
    p = protection(filter_norm="sum")
    assert torch.allclose(p.filters.sum(-1), torch.ones(10, 1))


def test_batched_equals_per_clip():
    prot = protection(patches_per_class=2)
    x, y = batch()
    whole = prot.apply(x, y)
    one_by_one = torch.cat([prot.apply(x[i:i + 1], y[i:i + 1]) for i in range(len(y))])
    assert torch.equal(whole, one_by_one)


def test_convolution_uses_real_neighbours_and_matches_reference():
    """The patch equals a full 'same' convolution of the whole clip, restricted to the patch: the neighbours beyond
    the patch edges are the real samples, not zeros."""
    torch.manual_seed(0)
    x = torch.randn(3, 500, dtype=torch.float64)
    f = torch.rand(3, 1, 7, dtype=torch.float64)
    starts = torch.tensor([[0], [100], [470]])
    out = convolve_patches(x, starts, f, 40)
    for n in range(3):
        full = torch.nn.functional.conv1d(x[n].view(1, 1, -1), f[n, 0].flip(-1).view(1, 1, -1), padding=3)[0, 0]
        s = starts[n, 0].item()
        e = min(s + 40, 500)
        assert torch.allclose(out[n, s:e], full[s:e], atol=1e-12)
        assert torch.equal(out[n, :s], x[n, :s]) and torch.equal(out[n, e:], x[n, e:])


def test_reapplying_recorded_protection_reproduces_it():
    prot = protection(patches_per_class=2, position_mode="relative", position_range=(0.0, 0.9))
    x, y = batch()
    lengths = torch.randint(3000, 8000, (len(y),))
    record = json.loads(json.dumps(prot.to_dict()))
    again = PosCUDAProtection.from_dict(record)
    assert torch.equal(prot.apply(x, y, lengths), again.apply(x, y, lengths))


def test_key_not_in_record():
    key = "super-secret-key-42"
    text = json.dumps(protection(key=key).to_dict())
    assert key not in text and "super-secret" not in text


def test_clip_shorter_than_patch_is_convolved_whole():
    prot = protection(patch_seconds=0.2)  # 1600 samples
    x, y = batch(n=10, t=1000)
    out = prot.apply(x, y)
    assert out.shape == x.shape
    assert (out != x).float().mean() > 0.9


def test_patch_past_end_is_moved_left():
    prot = protection(position_range=(0.9, 0.95))
    x, y = batch(n=10, t=8000)
    starts = prot.starts(y, 8000)
    assert (starts + prot.patch_len <= 8000).all()
    short = prot.starts(y, 4000)
    assert (short == 4000 - prot.patch_len).all()


def test_mixed_positions_move_patch():
    prot = protection()
    x, y = batch()
    other = (y + 3) % 10
    mixed = prot.apply(x, y, position_classes=other)
    mask = patch_mask(prot, y, x.shape[1], position_classes=other)
    assert torch.equal(mixed[~mask], x[~mask])
    assert not torch.equal(mixed, prot.apply(x, y))


def test_output_normalize_keeps_full_scale():
    prot = protection(blur=1.0, filter_length=63, output="normalize")
    x, y = batch()
    assert prot.apply(x * 1.9, y).abs().max() <= 1.0 + 1e-6


def test_missing_or_short_key_is_an_error(tmp_path):
    with pytest.raises(LabError, match="key is required"):
        PosCUDA(PosCUDAConfig()).derive(10, SR)
    with pytest.raises(LabError, match="too short"):
        PosCUDA(PosCUDAConfig(key="abc")).derive(10, SR)
    with pytest.raises(LabError, match="no such file"):
        PosCUDA(PosCUDAConfig(key_file=tmp_path / "nope")).derive(10, SR)
    kf = tmp_path / "k"
    kf.write_text("file-key-123456\n")
    from_file = PosCUDA(PosCUDAConfig(key_file=kf)).derive(10, SR)
    assert torch.equal(from_file.filters, protection(key="file-key-123456").filters)
