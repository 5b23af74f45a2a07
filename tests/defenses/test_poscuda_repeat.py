"""PosCUDA's optional repeated patches for long recordings: off by default (nothing changes), and when on, every
window of ``repeat_seconds + patch_seconds`` holds every class patch, each an exact 'same' convolution."""
from __future__ import annotations

import pytest
import torch

from defenses.poscuda import PosCUDA, PosCUDAConfig
from lab.config import parse_plugin
from lab.errors import LabError
import defenses

SR = 8000


def derive(**kw):
    kw.setdefault("key", "test-key-123456")
    return PosCUDA(PosCUDAConfig(**kw)).derive(num_classes=4, sample_rate=SR)


def test_off_by_default_and_absent_from_records():
    prot = derive()
    assert prot.repeat_samples is None
    assert "repeat_seconds" not in prot.params
    assert "repeat_seconds" not in PosCUDAConfig(key="test-key-123456").model_dump()
    assert derive(repeat_seconds=2.0).params["repeat_seconds"] == 2.0


def test_repeat_must_exceed_patch():
    with pytest.raises(LabError, match="repeat_seconds .* must be longer than patch_seconds"):
        parse_plugin(defenses.DEFENSES, {"type": "poscuda", "key": "k" * 10, "patch_seconds": 0.2,
                                         "repeat_seconds": 0.2}, "defense")


def test_same_positions_and_filters_as_without_repeat():
    plain, rep = derive(), derive(repeat_seconds=1.5)
    assert torch.equal(plain.positions, rep.positions) and torch.equal(plain.filters, rep.filters)


def test_spacing_longer_than_clip_changes_nothing():
    """One repeat only (the first patch lies inside the spacing): the output equals the plain protection."""
    plain, rep = derive(), derive(repeat_seconds=5.0)  # positions in [0, 0.5) s, clips of 1 s
    x = 0.3 * torch.randn(8, SR, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 4
    assert torch.equal(plain.apply(x, y), rep.apply(x, y))


@pytest.mark.parametrize("kw", [{}, {"patches_per_class": 2}, {"filter_length": 6, "blur": 1.0},
                                {"position_mode": "relative", "position_range": (0.0, 0.1)}])
def test_every_window_holds_an_exact_patch_and_the_rest_is_untouched(kw):
    prot = derive(repeat_seconds=1.0, patch_seconds=0.05, **kw)
    t = 10 * SR + 123
    x = 0.3 * torch.randn(3, t, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.tensor([0, 1, 3])
    out = prot.apply(x, y)
    starts = prot.repeat_starts(prot.starts(y, t, torch.full((3,), t)), t, torch.full((3,), t))
    k = prot.filters.shape[-1]
    left = (k - 1) // 2
    changed = torch.zeros_like(x, dtype=torch.bool)
    spacing, plen = prot.repeat_samples, prot.patch_len
    for n in range(3):
        for j in range(starts.shape[1]):
            s = sorted(v for v in starts[n, j].tolist() if v >= 0)
            assert s[0] < spacing and all(b - a == spacing for a, b in zip(s, s[1:]))
            assert s[-1] + plen <= t < s[-1] + spacing + plen  # the last repeat that fits is there
            f = prot.filters[y[n], j].double().flip(-1).view(1, 1, -1)
            full = torch.nn.functional.conv1d(torch.nn.functional.pad(x[n].view(1, 1, -1), (left, k - 1 - left)),
                                              f)[0, 0]
            for a in s:
                if starts.shape[1] == 1:  # with several patches they may overlap; checked by the mask below
                    assert torch.allclose(out[n, a:a + plen], full[a:a + plen], atol=1e-12)
                changed[n, a:a + plen] = True
    assert torch.equal(out[~changed], x[~changed])
    assert (out[changed] != x[changed]).float().mean() > 0.9


def test_short_clip_keeps_one_clamped_patch():
    prot = derive(repeat_seconds=1.0, patch_seconds=0.1)
    x = 0.3 * torch.randn(2, 300, generator=torch.Generator().manual_seed(2))  # shorter than one patch (800)
    y = torch.tensor([0, 2])
    assert torch.equal(prot.apply(x, y), derive(patch_seconds=0.1).apply(x, y))
