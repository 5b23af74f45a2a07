"""The masking model (lab/masking.py) on cases with known answers, the shaping function behind the ``masking`` budget,
and the budget's plumbing (config, record, lab protect). That every additive defense meets the budget on every clip
is the contract test ``test_additive_defense_meets_the_masking_budget`` in tests/test_contracts.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from defenses import DEFENSES, build_defense
from lab.config import parse_plugin
from lab.errors import LabError
from lab.masking import (FULL_SCALE_DB, absolute_threshold, bark, bin_frequencies, frame_power_db, frame_size,
                         limit_to_threshold, masking_threshold, threshold_excess_db)

SR = 8000


def tone(bin_index: int, sample_rate: int = SR, seconds: float = 0.5, amplitude: float = 1.0) -> torch.Tensor:
    """(1, T) a sine centred on bin ``bin_index`` of the analysis (a whole number of periods per frame: every interior
    frame holds exactly three non-zero bins)."""
    n = frame_size(sample_rate)
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
    return (amplitude * torch.sin(2 * math.pi * bin_index * sample_rate / n * t))[None]


def interior(x: torch.Tensor, sample_rate: int = SR) -> slice:
    """The frames whose window lies wholly inside the clip (the first and last ones see the zeros beyond it)."""
    frames = x.shape[-1] // (frame_size(sample_rate) // 4) + 1
    return slice(4, frames - 4)


def one_masker_threshold(k: int, level_db: float, sample_rate: int, level_dependent: bool = True) -> torch.Tensor:
    """By hand: the threshold (bins,) of one tonal masker of power ``level_db`` at bin ``k`` (Qin et al.'s formulas,
    written out again here)."""
    hz = bin_frequencies(sample_rate)
    z, ath = bark(hz), absolute_threshold(hz)
    dz = z - z[k]
    upper = -27 + (0.37 * max(level_db - 40, 0) if level_dependent else 0.0)
    spread = torch.where(dz < 0, 27 * dz, upper * dz)
    masked = level_db - 6.025 - 0.275 * z[k] + spread
    return 10 * torch.log10(10 ** (ath / 10) + 10 ** (masked / 10))


def test_frame_sizes_suit_each_rate_and_the_calibration_is_stated():
    assert [frame_size(r) for r in (8000, 16000, 44100)] == [256, 512, 1024]  # about 32 ms each
    db = frame_power_db(tone(32), SR)[interior(tone(32))]
    assert torch.allclose(db[:, 32], torch.full_like(db[:, 32], FULL_SCALE_DB), atol=1e-9)  # full-scale sine: 96
    assert torch.allclose(db[:, 31], db[:, 32] - 20 * math.log10(2), atol=1e-9)  # Hann: neighbours at -6.02 dB
    half = frame_power_db(0.5 * tone(32), SR)[interior(tone(32))]
    assert torch.allclose(half[:, 32], db[:, 32] - 20 * math.log10(2), atol=1e-9)


@pytest.mark.parametrize("sample_rate", [8000, 16000, 44100])
def test_silence_gives_the_absolute_threshold(sample_rate):
    thr = masking_threshold(torch.zeros(2, sample_rate // 4), sample_rate)
    ath = absolute_threshold(bin_frequencies(sample_rate))
    assert thr.shape[-1] == frame_size(sample_rate) // 2 + 1
    assert torch.allclose(thr, ath.expand_as(thr), atol=1e-9)


@pytest.mark.parametrize("sample_rate, k", [(8000, 32), (16000, 40), (44100, 60)])
@pytest.mark.parametrize("level_dependent", [True, False])
def test_a_pure_tone_is_one_masker_with_the_known_threshold(sample_rate, k, level_dependent):
    """A bin-centred sine at -20 dBFS: its threshold is the hand-computed one of a single masker of the power of its
    three bins (76 dB + 10 log10(1.5)), at every bin."""
    x = tone(k, sample_rate, amplitude=0.1)
    thr = masking_threshold(x, sample_rate, level_dependent)[0, interior(x, sample_rate)]
    expected = one_masker_threshold(k, 76 + 10 * math.log10(1.5), sample_rate, level_dependent)
    assert torch.allclose(thr, expected.expand_as(thr), atol=1e-6)


def test_a_pure_tone_masks_nearby_frequencies_and_not_distant_ones():
    x = tone(64, amplitude=0.3)  # 2 kHz at -10.5 dBFS
    thr = masking_threshold(x, SR)[0, interior(x)].amax(dim=0)
    ath = absolute_threshold(bin_frequencies(SR))
    z = bark(bin_frequencies(SR))
    near = (z - z[64]).abs() < 1.0
    far_below = z < z[64] - 4  # the lower slope, 27 dB/Bark: gone 4 Bark down
    assert (thr[near] - ath[near]).min() > 30
    assert (thr[far_below] - ath[far_below]).max() < 0.01
    assert far_below.sum() > 20 and near.sum() >= 3


def test_scaling_the_signal_by_g_db_moves_the_threshold_by_g_db():
    """Level-independent spreading: g dB everywhere the threshold is well above the absolute threshold. Qin et al.'s
    level-dependent upper slope (the default): g dB at and below the masker, g (1 + 0.37 dz) dB at dz Bark above."""
    g = 12.0
    x = tone(40, amplitude=0.05)
    z = bark(bin_frequencies(SR))
    ath = absolute_threshold(bin_frequencies(SR))
    for level_dependent in (False, True):
        low = masking_threshold(x, SR, level_dependent)[0, interior(x)]
        high = masking_threshold(x * 10 ** (g / 20), SR, level_dependent)[0, interior(x)]
        above_ath = (low - ath > 30).all(dim=0)
        assert above_ath.sum() > 10
        dz = (z - z[40]).clamp(min=0)
        expected = g * (1 + 0.37 * dz) if level_dependent else torch.full_like(dz, g)
        moved = (high - low)[:, above_ath]
        assert torch.allclose(moved, expected[above_ath].expand_as(moved), atol=0.01)
    noise = torch.randn(1, SR // 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.1
    low = masking_threshold(noise, SR, level_dependent=False)
    high = masking_threshold(noise * 10 ** (g / 20), SR, level_dependent=False)
    well_above = low - ath > 30
    assert well_above.float().mean() > 0.5
    assert torch.allclose((high - low)[well_above], torch.full_like(high[well_above], g), atol=0.01)


def test_threshold_is_per_clip_whatever_the_batch():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2000, generator=gen) * torch.tensor([[0.01], [0.1], [0.5]])
    together = masking_threshold(x, SR)
    alone = torch.cat([masking_threshold(x[i:i + 1], SR) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-9)
    assert torch.allclose(masking_threshold(x[0], SR), alone[0], atol=1e-9)  # one clip (T,)


def speechlike(n: int = 4, t: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips of a few harmonics and a little noise, each silent after its own length; and the lengths."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([t, t * 3 // 4, t // 2, t * 7 // 8])[:n]
    time = torch.arange(t) / SR
    f0 = 100 + 150 * torch.rand(n, 1, generator=gen)
    x = sum(torch.sin(2 * math.pi * h * f0 * time) / h for h in range(1, 6)) * 0.2
    x = x + 0.005 * torch.randn(n, t, generator=gen)
    return x * (torch.arange(t)[None] < lengths[:, None]), lengths


@pytest.mark.parametrize("margin", [0.0, -6.0, 6.0])
def test_shaped_change_meets_the_bound_in_every_frame_and_bin(margin):
    x, lengths = speechlike()
    support = (torch.arange(x.shape[1])[None] < lengths[:, None])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)) * support
    d = limit_to_threshold(x, noise, SR, margin, fill=True)
    assert d.dtype == noise.dtype
    assert threshold_excess_db(x, d.double(), SR, margin).max() <= 1e-4  # float32 rounding of the change
    assert torch.equal(d * ~support, torch.zeros_like(d))  # nowhere the change was not
    # the rounds shape the noise to the threshold: far closer to it than the same noise scaled as a whole
    thr = masking_threshold(x, SR) + margin
    flat = noise.double() * 10 ** (-threshold_excess_db(x, noise.double(), SR, margin)[:, None] / 20)
    hop = frame_size(SR) // 4
    centres = (torch.arange(thr.shape[1]) - 2) * hop  # the first frame is centred half a frame before the clip
    inside = ((centres[None, :] >= 0) & (centres[None, :] < lengths[:, None]))[:, :, None].expand_as(thr)
    shaped_gap = (thr - frame_power_db(d, SR))[inside].median()
    flat_gap = (thr - frame_power_db(flat, SR))[inside].median()
    assert shaped_gap < 12.0 and shaped_gap < flat_gap - 15.0, (shaped_gap, flat_gap)


def test_shaping_keeps_the_snr_floor_and_linf_and_never_adds():
    x, _ = speechlike()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)) * 0.3
    d = limit_to_threshold(x, noise, SR, 20.0, snr_db=25.0, linf=0.002).double()
    snr = 10 * torch.log10(x.double().pow(2).sum(1) / d.pow(2).sum(1))
    assert (snr >= 25.0 - 1e-6).all() and d.abs().max() <= 0.002 + 1e-9
    quiet = limit_to_threshold(x, noise * 1e-9, SR, 0.0)
    assert torch.allclose(quiet, noise * 1e-9, rtol=1e-4, atol=0)  # far under the bound: left as it was
    assert torch.equal(limit_to_threshold(x, torch.zeros_like(x), SR, 0.0), torch.zeros_like(x))
    silent = limit_to_threshold(torch.zeros_like(x), noise, SR, 0.0, snr_db=20.0)
    assert torch.equal(silent, torch.zeros_like(x))  # an SNR floor gives a silent clip nothing


def test_shaping_is_differentiable():
    x, _ = speechlike(n=2)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64).requires_grad_(True)
    limit_to_threshold(x, v, SR, 0.0, snr_db=20.0).pow(2).sum().backward()
    assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0



def test_the_optimisations_cheap_shaping_is_within_the_budget_and_passes_a_useful_gradient():
    from defenses._minmin import add_class_patterns
    x, lengths = speechlike()
    support = (torch.arange(x.shape[1])[None] < lengths[:, None]).float()
    thr = masking_threshold(x, SR).float()
    pattern = torch.randn(x.shape, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(6))
    grads = {}
    for optimising in (False, True):
        out = add_class_patterns(x, pattern, support, 20.0, None, (SR, 0.0, thr), optimising=optimising)
        # within the budget, both ways (up to the float32 rounding of x + d, then - x: 0.0002 dB seen)
        assert threshold_excess_db(x, (out - x).double(), SR, 0.0).max() <= 1e-3
        (grads[optimising],) = torch.autograd.grad((out * target).sum(), pattern)
    cheap, exact = grads[True].flatten(), grads[False].flatten()
    assert torch.isfinite(cheap).all() and cheap.abs().sum() > 0
    # an estimate of the exact gradient's direction, not noise: far from orthogonal (random vectors: cosine ~0.003)
    assert torch.nn.functional.cosine_similarity(cheap, exact, dim=0) > 0.2

def classwise(**fields):
    return parse_plugin(DEFENSES, {"type": "classwise-noise", "key": "masking-test-key", **fields}, "defense")


def test_budget_field_is_recorded_only_when_set_and_a_budget_is_required():
    x, lengths = speechlike()
    y = torch.arange(4) % 2
    plain = build_defense(classwise(snr_db=20.0)).derive(2, SR)
    assert "masking_margin_db" not in plain.to_dict()["params"]  # records made before the field stay identical
    masked = build_defense(classwise(snr_db=20.0, masking_margin_db=-3.0)).derive(2, SR)
    assert masked.to_dict()["params"]["masking_margin_db"] == -3.0
    out = masked.apply(x, y, lengths)
    assert threshold_excess_db(x, (out - x).double(), SR, -3.0).max() <= 1e-4
    assert not torch.equal(out, plain.apply(x, y, lengths))
    with pytest.raises(LabError, match="give a budget"):
        classwise(snr_db=None)
    with pytest.raises(LabError, match="masking_margin_db"):
        classwise(masking_margin_db="loud")


def test_lab_protect_writes_files_within_the_masking_budget(labelled_folder, tmp_path, cli):
    """File by file, at each file's own rate (16 and 8 kHz) and on every channel, then verified. (em-noise written
    onto files: the next test.)"""
    key, out = tmp_path / "owner.key", tmp_path / "out"
    assert cli("keygen", str(key))[0] == 0
    code, _, err = cli("protect", str(labelled_folder), str(out), "--key-file", str(key), "--defense",
                       "classwise-noise", "--option", "snr_db=20", "--option", "masking_margin_db=0")
    assert code == 0, err
    assert cli("verify", str(out), "--key-file", str(key))[0] == 0
    checked, flat_excess = 0, []
    gen = torch.Generator().manual_seed(0)
    for src in sorted(labelled_folder.rglob("*.wav")) + sorted(labelled_folder.rglob("*.flac")):
        clean, sr = sf.read(str(src), dtype="float64", always_2d=True)
        prot, _ = sf.read(str(out / src.relative_to(labelled_folder)), dtype="float64", always_2d=True)
        c, p = torch.from_numpy(clean.T), torch.from_numpy(prot.T)
        # 0.1 dB: what the file stores is rounded (to the source's sample format) after the bound was met in float64
        assert threshold_excess_db(c, p - c, sr, 0.0).max() < 0.1
        snr = 10 * np.log10((clean ** 2).sum() / ((prot - clean) ** 2).sum())
        assert snr >= 20.0 - 0.1
        white = torch.randn(c.shape, generator=gen, dtype=torch.float64)
        white = white * (c.pow(2).sum() / white.pow(2).sum() / 100).sqrt()  # flat noise at 20 dB
        flat_excess.append(float(threshold_excess_db(c, white, sr, 0.0).max()))
        checked += 1
    assert checked == 15
    assert min(flat_excess) > 3.0  # the files are ones where a flat 20 dB budget alone would not do


@pytest.mark.parametrize("mode", ["sample-wise", "class-wise"])
def test_optimised_noise_written_onto_files_keeps_the_masking_budget(mode):
    """em-noise optimised on working clips at 8 kHz (what lab protect makes of a collection) and written onto the
    files themselves at 16 kHz, stereo (``files_at``, what lab protect applies to each file): within the budget."""
    import torchaudio.functional as AF

    from defenses.base import TrainingSet, WorkingClips, samples_hash
    from tests.test_contracts import TinySurrogate
    gen = torch.Generator().manual_seed(5)
    files = [torch.sin(2 * math.pi * (300 + 100 * i) * torch.arange(9600) / 16000).repeat(2, 1) * 0.2
             + 0.01 * torch.randn(2, 9600, generator=gen) for i in range(4)]
    working = torch.stack([AF.resample(f.mean(0), 16000, 8000) for f in files])  # 0.6 s at 8 kHz
    labels = torch.tensor([0, 1, 2, 3]) % 4
    config = parse_plugin(DEFENSES, {"type": "em-noise", "key": "masking-test-key", "mode": mode, "max_rounds": 1,
                                     "train_batches": 2, "steps": 2, "snr_db": 30, "masking_margin_db": 0},
                          "defense")
    data = TrainingSet(working, labels, torch.full((4,), 4800), 8000, 4, TinySurrogate, lr=0.01, weight_decay=0.0,
                       batch_size=4, log=lambda s: None, description="tiny")
    prot = build_defense(config).derive_from(data)
    at = prot.files_at(16000, WorkingClips(8000, 4800, tuple(samples_hash(f) for f in files)))
    for f, c in zip(files, labels.tolist()):
        out = at.apply(f, torch.full((2,), c), torch.full((2,), f.shape[1]))
        change = (out - f).double()
        assert change.abs().sum() > 0
        assert threshold_excess_db(f, change, 16000, 0.0).max() < 0.1


def test_a_large_batch_is_worked_through_in_chunks_with_the_same_result(monkeypatch):
    import lab.masking as masking
    x, lengths = speechlike()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    whole = masking.masking_threshold(x, SR), masking.limit_to_threshold(x, noise, SR, 0.0, snr_db=20.0)
    monkeypatch.setattr(masking, "CLIPS_AT_ONCE", 3)  # 4 clips: a chunk of 3 and one of 1
    chunked = masking.masking_threshold(x, SR), masking.limit_to_threshold(x, noise, SR, 0.0, snr_db=20.0)
    assert torch.allclose(whole[0], chunked[0], atol=1e-9) and torch.allclose(whole[1], chunked[1], atol=1e-12)
