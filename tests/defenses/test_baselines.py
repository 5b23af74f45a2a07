"""The baselines PosCUDA is compared with: cuda (whole-clip class filter, peak-normalised), noise-patch (class noise in
PosCUDA's patches at a target SNR), classwise-noise (class noise over the whole clip at a target SNR), none."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchaudio.functional as AF
from torchmetrics.functional.audio import signal_noise_ratio

from defenses import DEFENSES, build_defense
from defenses.poscuda import PosCUDA, PosCUDAConfig
from lab import dsp
from lab.config import parse_plugin
from lab.errors import LabError

SR = 8000
KEY = "test-key-123456"


def derive(data: dict, num_classes: int = 10):
    return build_defense(parse_plugin(DEFENSES, data, "defense")).derive(num_classes, SR)


def batch(n=40, t=SR, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = 0.2 * torch.randn(n, t, generator=gen)
    x[:, t // 2:] *= 0.1  # uneven loudness inside the clips
    return x, torch.arange(n) % 10


# --- cuda ---------------------------------------------------------------------------------------------------------

def test_cuda_filters_follow_cuda_conventions_and_the_key():
    p = derive({"type": "cuda", "key": KEY, "filter_length": 9, "blur": 0.3})
    assert p.filters.shape == (10, 9)
    assert ((p.filters >= 0) & (p.filters <= 1.0)).all()
    assert ((p.filters == 1.0).sum(dim=1) == 1).all(), "exactly one tap set to 1.0"
    assert (torch.where(p.filters == 1.0, 0.0, p.filters) <= 0.3).all()
    assert len({tuple(f.tolist()) for f in p.filters}) == 10
    q = derive({"type": "cuda", "key": "another-key-654321", "filter_length": 9})
    assert not torch.equal(p.filters, q.filters) and p.key_fingerprint != q.key_fingerprint
    assert torch.equal(p.filters, derive({"type": "cuda", "key": KEY, "filter_length": 9}).filters)


def test_cuda_convolves_the_whole_clip_then_normalises_by_its_peak():
    x, y = batch()
    raw = derive({"type": "cuda", "key": KEY, "output": "none"})
    impulse = torch.zeros(10, 101)
    impulse[:, 50] = 1.0
    response = raw.apply(impulse, torch.arange(10))
    k = raw.filters.shape[1]
    assert torch.allclose(response[:, 50 - (k - 1) // 2: 50 - (k - 1) // 2 + k], raw.filters, atol=1e-6)
    out = raw.apply(x, y)
    assert (out != x).float().mean() > 0.99, "every sample of the clip is filtered"
    peak = derive({"type": "cuda", "key": KEY}).apply(x, y)
    assert torch.allclose(peak.abs().amax(dim=1), torch.ones(len(x)), atol=1e-6)
    assert torch.allclose(peak, out / out.abs().amax(dim=1, keepdim=True), atol=1e-6)
    matched = derive({"type": "cuda", "key": KEY, "output": "match_peak"}).apply(x, y)
    assert torch.allclose(matched.abs().amax(dim=1), x.abs().amax(dim=1), atol=1e-6)
    assert torch.equal(x, batch()[0]), "input modified in place"


def test_cuda_convolves_short_clips_as_torchaudio_and_long_ones_on_a_grid(monkeypatch):
    """A clip up to lab.dsp.ENERGY_CHUNK samples gets torchaudio's fftconvolve bit for bit (what cuda computed
    before its grid); a longer one is convolved chunk by chunk (lab.dsp.convolve_same): the same convolution up to
    float rounding, every sample read with its real neighbours across the chunks' edges."""
    x, y = batch(n=6, t=700)
    for k in (1, 2, 9, 300):
        prot = derive({"type": "cuda", "key": KEY, "filter_length": k, "output": "none"})
        taps = prot.filters[y]
        assert torch.equal(prot.apply(x, y), AF.fftconvolve(x, taps, mode="same"))
        monkeypatch.setattr(dsp, "ENERGY_CHUNK", 128)  # 700 samples: six chunks, some shorter than the filter
        grid = prot.apply(x.double(), y)
        for a in range(0, 700, 97):  # any span, from the window grid_window names: the very same samples
            lo, hi = dsp.grid_window(a, min(700, a + 97), 700, k)
            part = dsp.convolve_same(x.double()[:, lo:hi], taps.double(), lo, a, min(700, a + 97), 700)
            assert torch.equal(part, dsp.convolve_same(x.double(), taps.double())[:, a:a + 97])
        monkeypatch.undo()
        left = (k - 1) // 2
        exact = np.stack([np.convolve(r, t)[left:left + x.shape[1]] for r, t in zip(x.double().numpy(),
                                                                                   taps.double().numpy())])
        assert np.abs(grid.numpy() - exact).max() < 1e-12


# --- noise-patch ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("snr_db", [10.0, 24.0, 35.0])
@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_noise_patch_hits_its_target_snr_and_only_touches_patches(snr_db, mode):
    x, y = batch()
    lengths = torch.full((len(y),), 7000)
    p = derive({"type": "noise-patch", "key": KEY, "snr_db": snr_db, "position_mode": mode,
                "position_range": [0.1, 0.6]})
    out = p.apply(x, y, lengths)
    snr = signal_noise_ratio(out.double(), x.double())
    assert (snr - snr_db).abs().max() <= 0.5
    starts = p.starts(y, x.shape[1], lengths)
    mask = torch.zeros_like(x, dtype=torch.bool)
    for n, s in enumerate(starts[:, 0].tolist()):
        mask[n, s:s + p.patch_len] = True
    assert torch.equal(out[~mask], x[~mask])
    assert (out[mask] != x[mask]).float().mean() > 0.99


def test_noise_patch_uses_poscudas_positions_for_the_same_key():
    common = {"key": KEY, "patch_seconds": 0.05, "position_range": [0.0, 0.4]}
    noise = derive({"type": "noise-patch", **common})
    pos = PosCUDA(PosCUDAConfig(**common)).derive(10, SR)
    y = torch.arange(10)
    assert torch.equal(noise.starts(y, SR), pos.starts(y, SR))
    assert noise.patch_len == pos.patch_len
    record = json.dumps(noise.to_dict())
    assert KEY not in record and noise.key_fingerprint in record


def test_noise_patch_pattern_is_class_wise():
    x, y = batch()
    p = derive({"type": "noise-patch", "key": KEY})
    added = p.apply(x, y) - x
    s = p.starts(y, SR)[:, 0]
    patches = torch.stack([added[n, s[n]:s[n] + p.patch_len] for n in range(len(x))])
    same = torch.nn.functional.cosine_similarity(patches[0], patches[10], dim=0)  # both class 0
    other = torch.nn.functional.cosine_similarity(patches[0], patches[1], dim=0)
    assert same > 0.999 and abs(other) < 0.2


# --- classwise-noise --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("snr_db", [0.0, 20.0, 40.0])
def test_classwise_noise_hits_its_target_snr_over_the_whole_clip(snr_db):
    x, y = batch()
    p = derive({"type": "classwise-noise", "key": KEY, "snr_db": snr_db})
    out = p.apply(x, y)
    assert (signal_noise_ratio(out.double(), x.double()) - snr_db).abs().max() <= 0.5
    added = out - x
    assert (added != 0).float().mean() > 0.99
    cos = torch.nn.functional.cosine_similarity
    assert cos(added[0], added[10], dim=0) > 0.999 and abs(cos(added[0], added[1], dim=0)) < 0.1
    assert torch.equal(p.apply(x, y), derive({"type": "classwise-noise", "key": KEY, "snr_db": snr_db}).apply(x, y))


def test_silent_clip_gets_no_noise():
    x = torch.zeros(2, 800)
    for data in ({"type": "classwise-noise", "key": KEY}, {"type": "noise-patch", "key": KEY}):
        assert torch.equal(derive(data).apply(x, torch.tensor([0, 1])), x)


# --- none and bad input -----------------------------------------------------------------------------------------------

def test_none_is_the_clean_reference():
    x, y = batch()
    out = derive({"type": "none"}).apply(x, y)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("data, message", [
    ({"type": "cuda", "key": KEY, "blur": -0.1}, "blur"),
    ({"type": "cuda", "key": KEY, "output": "loud"}, "output"),
    ({"type": "noise-patch", "key": KEY, "patch_seconds": 0}, "patch_seconds"),
    ({"type": "classwise-noise", "key": KEY, "snr": 3}, "unknown field 'snr'"),
    ({"type": "whitenoise"}, "unknown defense 'whitenoise'"),
])
def test_bad_parameters_fail_with_one_line(data, message):
    with pytest.raises(LabError) as err:
        parse_plugin(DEFENSES, data, "defense")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_key_is_required():
    with pytest.raises(LabError, match="a key is required"):
        derive({"type": "cuda"})
