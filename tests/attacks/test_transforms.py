"""The batch and data attacks do what they claim on inputs: positions move, pitch and tempo change as stated, codecs
remove what they should, PGD stays inside its ball and raises the loss, partial protects exactly its fraction."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attacks import ATTACKS, build_attack
from attacks.augment import band_pass, gain, pitch_shift, time_mask, time_stretch
from attacks.base import AttackContext
from attacks.codec import mp3_available, reduce_bits, resample_down_up
from attacks.mixed_position import shuffle_segments
from attacks.partial import protected_rows
from attacks.sharpen_lowpass import dct_lowpass, sharpen
from defenses.poscuda import PosCUDA, PosCUDAConfig
from lab.dsp import circular_shift
from lab.errors import LabError

SR = 8000


def sine(freq: float, n: int = 4, t: int = SR) -> torch.Tensor:
    return 0.5 * torch.sin(2 * torch.pi * freq * torch.arange(t) / SR).repeat(n, 1)


def dominant_hz(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.rfft(x).abs().argmax(dim=1).float() * SR / x.shape[1]


def marker_batch(n=200, t=SR, start=1000, width=400):
    x = torch.zeros(n, t)
    x[:, start:start + width] = 1.0
    return x


def first_nonzero(x: torch.Tensor) -> torch.Tensor:
    return (x != 0).float().argmax(dim=1)


def ctx_for(clean, protected, labels, protection=None, seed=0):
    return AttackContext(clean=clean, protected=protected, labels=labels,
                         lengths=torch.full((len(labels),), clean.shape[1]), protection=protection, sample_rate=SR,
                         num_classes=int(labels.max()) + 1, seed=seed)


# --- mixed-position -------------------------------------------------------------------------------------------------

def test_circular_shift_moves_each_row_by_its_own_amount():
    x = marker_batch(3)
    out = circular_shift(x, torch.tensor([0, 250, -1000]))
    assert first_nonzero(out).tolist() == [1000, 1250, 0]


@pytest.mark.parametrize("options", [{"mode": "shift"}, {"mode": "shuffle", "segments": 8}])
def test_mixed_position_moves_the_patch_away_and_keeps_the_samples(options):
    torch.manual_seed(0)
    attack = build_attack({"type": "mixed-position", **options})
    x = marker_batch()
    attack.start(ctx_for(x, x, torch.zeros(len(x), dtype=torch.long)))
    out = attack.transform_batch(x, torch.zeros(len(x), dtype=torch.long), None)
    moved = (first_nonzero(out) != 1000).float().mean()
    assert moved > 0.6  # expected 1 - 1/8 (shuffle) or ~1 (shift)
    assert torch.equal(out.sort(dim=1).values, x.sort(dim=1).values), "samples must only be moved"
    assert len(set(first_nonzero(out).tolist())) > 5, "every clip draws its own move"


def test_mixed_position_shift_range_is_respected():
    torch.manual_seed(0)
    attack = build_attack({"type": "mixed-position", "max_shift_seconds": 0.01})
    x = marker_batch()
    attack.start(ctx_for(x, x, torch.zeros(len(x), dtype=torch.long)))
    starts = first_nonzero(attack.transform_batch(x, None, None))
    assert (starts - 1000).abs().max() <= 80 and (starts != 1000).any()


def test_shuffle_segments_is_a_permutation_of_whole_segments():
    x = torch.arange(16.0)[None].repeat(5, 1)
    out = shuffle_segments(x, 4)
    for row in out:
        pieces = sorted(row.reshape(4, 4).tolist())
        assert pieces == x[0].reshape(4, 4).tolist()


# --- augment ----------------------------------------------------------------------------------------------------------

def test_time_stretch_keeps_pitch_and_pitch_shift_moves_it():
    torch.manual_seed(0)
    x = sine(500.0)
    stretched = time_stretch(x, SR, min_rate=0.8, max_rate=0.8, levels=1)
    assert not torch.allclose(stretched, x, atol=1e-3)
    assert torch.allclose(dominant_hz(stretched), torch.full((4,), 500.0), atol=20)
    up = pitch_shift(x, SR, min_semitones=12, max_semitones=12)
    assert torch.allclose(dominant_hz(up), torch.full((4,), 1000.0), atol=30)
    down = pitch_shift(x, SR, min_semitones=-12, max_semitones=-12)
    assert torch.allclose(dominant_hz(down), torch.full((4,), 250.0), atol=20)


def test_time_stretch_changes_duration():
    torch.manual_seed(0)
    x = torch.zeros(2, SR)
    x[:, :4000] = sine(400.0, 2, 4000)
    slow = time_stretch(x, SR, min_rate=0.8, max_rate=0.8, levels=1)
    energy_after = slow[:, 4400:].pow(2).sum(dim=1)  # the sound now lasts 4000 / 0.8 = 5000 samples
    assert (energy_after > 0.1 * x[:, :4000].pow(2).sum(dim=1) * 0.1).all()


def test_gain_band_pass_and_time_mask():
    torch.manual_seed(0)
    x = sine(300.0, 8) + sine(3000.0, 8)
    g = gain(x, SR, min_db=-6, max_db=-6)
    assert torch.allclose(g, x * 10 ** (-6 / 20), atol=1e-6)
    bp = band_pass(x, SR, min_center_hz=300, max_center_hz=300, min_bandwidth_fraction=1, max_bandwidth_fraction=1)
    spec = torch.fft.rfft(bp).abs()
    assert (spec[:, 3000] < 1e-3 * spec[:, 300]).all()  # 1 Hz bins: 3 kHz gone, 300 Hz kept
    masked = time_mask(x, SR, max_fraction=0.2)
    zeros = (masked == 0).sum(dim=1)
    assert (zeros <= 0.2 * SR + 5).all() and (zeros > 0).any()


def test_augment_probability_zero_is_identity_and_one_changes_every_clip():
    x = sine(440.0, 6)
    off = build_attack({"type": "augment", "chain": [{"name": "gaussian_noise", "p": 0.0}]})
    off.start(ctx_for(x, x, torch.zeros(6, dtype=torch.long)))
    assert torch.equal(off.transform_batch(x, None), x)
    on = build_attack({"type": "augment", "chain": [{"name": "gaussian_noise", "p": 1.0}]})
    on.start(ctx_for(x, x, torch.zeros(6, dtype=torch.long)))
    assert ((on.transform_batch(x, None) - x).abs().amax(dim=1) > 0).all()


def test_default_augment_chain_runs_and_keeps_shape():
    torch.manual_seed(0)
    attack = build_attack("augment")
    x = 0.1 * torch.randn(16, SR)
    attack.start(ctx_for(x, x, torch.zeros(16, dtype=torch.long)))
    out = attack.transform_batch(x, None)
    assert out.shape == x.shape and torch.isfinite(out).all() and not torch.equal(out, x)


def test_audiomentations_step_from_yaml():
    attack = build_attack({"type": "augment", "chain": [
        {"name": "audiomentations", "transform": "Gain", "p": 1.0, "params": {"min_gain_db": -6, "max_gain_db": -6}}]})
    x = sine(440.0, 2)
    attack.start(ctx_for(x, x, torch.zeros(2, dtype=torch.long)))
    assert torch.allclose(attack.transform_batch(x, None), x * 10 ** (-6 / 20), atol=1e-4)


@pytest.mark.parametrize("chain, message", [
    ([{"name": "reverb"}], "unknown step 'reverb'"),
    ([{"name": "gain", "p": 1.5}], "p must be a probability"),
    ([{"name": "gain", "min_db": 6, "max_db": -6}], "min_db (6) is above max_db"),
    ([{"name": "gain", "gain_db": 3}], "unknown parameter 'gain_db'"),
    ([{"name": "time_mask", "max_fraction": -0.1}], "max_fraction must be >= 0"),
])
def test_augment_chain_mistakes_fail_early(chain, message):
    with pytest.raises(LabError, match=None) as err:
        build_attack({"type": "augment", "chain": chain})
    assert message in str(err.value)


# --- codec and sharpen-lowpass -----------------------------------------------------------------------------------------

def test_resample_down_up_removes_what_the_low_rate_cannot_carry():
    low, high = sine(500.0, 2), sine(3000.0, 2)
    assert resample_down_up(high, SR, 4000).pow(2).mean() < 1e-3 * high.pow(2).mean()
    assert torch.allclose(resample_down_up(low, SR, 4000)[:, 200:-200], low[:, 200:-200], atol=0.02)


def test_bit_reduction_leaves_at_most_2_to_the_bits_levels():
    x = torch.rand(3, SR) * 2 - 1
    y = reduce_bits(x, 4)
    assert len(y.unique()) <= 2 ** 4 + 1 and (y - x).abs().max() <= 1 / 16 + 1e-6


@pytest.mark.skipif(not mp3_available(), reason="fast-mp3-augment not installed")
def test_mp3_codec_changes_but_keeps_the_sound():
    attack = build_attack({"type": "codec", "methods": ["mp3"], "mp3_kbps": 32})
    x = sine(440.0, 2)
    out, _ = attack.training_set(ctx_for(x, x, torch.zeros(2, dtype=torch.long)))
    assert out.shape == x.shape and not torch.equal(out, x)
    assert F.cosine_similarity(out[:, 1000:-1000], x[:, 1000:-1000]).min() > 0.9


def test_sharpen_and_dct_lowpass():
    x = sine(300.0, 2) + sine(3500.0, 2)
    assert torch.allclose(sharpen(x, torch.zeros(2)), x, atol=1e-6)
    hi = sine(3500.0, 2)
    assert (sharpen(hi, torch.ones(2)).pow(2).sum(1) > 3 * hi.pow(2).sum(1)).all()  # high frequencies boosted
    low = dct_lowpass(x, 0.5)  # keeps 0-2 kHz
    spec = torch.fft.rfft(low).abs()
    assert (spec[:, 3500] < 1e-2 * spec[:, 300]).all()


# --- partial --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_partial_protects_exactly_the_stated_fraction(fraction):
    prot = PosCUDA(PosCUDAConfig(key="test-key-123456")).derive(10, SR)
    gen = torch.Generator().manual_seed(0)
    clean = 0.3 * torch.randn(101, SR, generator=gen)
    labels = torch.arange(101) % 10
    protected = prot.apply(clean, labels)
    attack = build_attack({"type": "partial", "fraction": fraction})
    out, out_labels = attack.training_set(ctx_for(clean, protected, labels, prot))
    changed = (out != clean).any(dim=1)
    assert int(changed.sum()) == round(fraction * 101)
    assert torch.equal(out[changed], protected[changed]) and torch.equal(out_labels, labels)
    assert protected_rows(101, fraction, 0).sum() == round(fraction * 101)


# --- PGD ------------------------------------------------------------------------------------------------------------

def tiny_module():
    from lab.features import FeatureConfig, FrontEnd
    from lab.module import LabModule
    from lab.recipe import recipe_from_dict
    recipe = recipe_from_dict({"model": {"type": "cnn"}, "defense": {"type": "none"}, "train": {"epochs": 1}})
    frontend = FrontEnd(FeatureConfig(), SR)
    x = 0.1 * torch.randn(8, SR, generator=torch.Generator().manual_seed(0))
    feats = frontend(x)
    mod = LabModule(recipe.model, feats.shape[1:], 10, 1e-3, 0.0, False, SR, feats.mean(dim=(0, 2))[:, None],
                    feats.std(dim=(0, 2))[:, None], frontend=frontend)
    return mod, x, torch.arange(8) % 10


def test_pgd_stays_in_the_ball_and_raises_the_loss():
    from attacks.adversarial_training import pgd
    torch.manual_seed(0)
    module, x, y = tiny_module()
    adv = pgd(module, x, y, eps=0.01, steps=5, step_size=0.004)
    assert (adv - x).abs().max() <= 0.01 + 1e-6
    loss = lambda w: F.cross_entropy(module(module.features(w)), y).item()  # noqa: E731
    module.eval()
    assert loss(adv) > loss(x)
    assert all(p.grad is None for p in module.parameters()), "PGD must not touch the model's gradients"


def test_adversarial_filters_raise_the_loss_and_keep_unit_norm():
    from attacks.filter_adversarial import filter_rows, identity_filters
    torch.manual_seed(0)
    module, x, y = tiny_module()
    assert torch.allclose(filter_rows(x, identity_filters(10, 31)[y]), x, atol=1e-6)
    attack = build_attack({"type": "filter-adversarial", "filter_length": 31, "ascent_steps": 3})
    attack.start(ctx_for(x, x, y))
    out = attack.transform_batch(x, y, module)
    module.eval()
    loss = lambda w: F.cross_entropy(module(module.features(w)), y).item()  # noqa: E731
    assert loss(out) > loss(x)
    assert torch.allclose(attack.filters.norm(dim=1), torch.ones(len(attack.filters)), atol=1e-5)


# --- randomness -----------------------------------------------------------------------------------------------------

BUILTIN_BATCH_ATTACKS = [n for n in ATTACKS.names()
                         if ATTACKS.get(n).per_batch and ATTACKS.get(n).__module__.startswith("attacks.")]


@pytest.mark.parametrize("name", BUILTIN_BATCH_ATTACKS)
def test_builtin_batch_attacks_draw_from_their_own_recorded_generator(name):
    """A built-in batch attack that draws at random declares ``draws_per_batch`` and draws from its own generator,
    seeded from the training seed and recorded as ``batch_seed``; none draws from torch's global generator (whose
    stream the model's own draws share), so the same seed gives the same batches whatever else drew before."""
    torch.manual_seed(0)
    module, x, y = tiny_module()

    def run(seed):
        attack = build_attack(name)
        attack.start(ctx_for(x, x, y, seed=seed))
        state = torch.get_rng_state()
        outs = [attack.transform_batch(x, y, module) for _ in range(2)]
        assert torch.equal(torch.get_rng_state(), state), f"{name} drew from torch's global generator"
        return outs, attack.record()

    first, record = run(0)
    torch.manual_seed(123)
    again, _ = run(0)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    declared = ATTACKS.get(name).draws_per_batch
    assert ("batch_seed" in record) == declared
    if declared:
        other, other_record = run(1)
        assert record["batch_seed"] != other_record["batch_seed"]
        assert not all(torch.equal(a, b) for a, b in zip(first, other)), "another seed, other draws"
        assert not torch.equal(first[0], first[1]), "every batch draws anew"
