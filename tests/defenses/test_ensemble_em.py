"""ensemble-em's own behaviour (the contract suite covers what every defense shares): the ensemble loss falls while the
noise is made, every clip keeps its budget, the transformations are drawn from the key and recorded, each member is
the surrogate its entry names, and the leave-one-out recipes really leave their trainer out."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from defenses import DEFENSES, build_defense
from defenses.base import Protection, TrainingSet
from defenses.ensemble_em import EOTConfig, Transformations
from lab.config import parse_plugin
from tests.defenses.checkpoints import state_after_round_1
from lab.errors import LabError

ROOT = Path(__file__).resolve().parents[2]
KEY = "ensemble-test-key-0001"
SR, T, C, N = 8000, 4000, 4, 16


def clips(seed: int = 0):
    """N generated clips: a class-dependent tone plus noise, right-padded after lengths between 0.3 and 0.5 s."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(N) % C
    lengths = torch.randint(T * 3 // 5, T + 1, (N,), generator=g)
    t = torch.arange(T) / SR
    x = 0.3 * torch.sin(2 * torch.pi * (300 + 150 * y[:, None]) * t) + 0.05 * torch.randn(N, T, generator=g)
    return x * (torch.arange(T)[None] < lengths[:, None]), y, lengths


class Energy(torch.nn.Module):
    """Log-energy of 20 frames -> linear (a 'front-end' of frame energies)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(20, C)

    def forward(self, w):
        n = w.shape[1] // 20 * 20
        return self.lin(torch.log(w[:, :n].reshape(len(w), 20, -1).pow(2).mean(-1) + 1e-4) + 4)


class Spectrum(torch.nn.Module):
    """Log magnitude spectrum in 32 bands -> linear (a 'front-end' of the spectrum)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(32, C)

    def forward(self, w):
        mag = torch.fft.rfft(w).abs()[:, :T // 2 // 32 * 32]
        return self.lin(torch.log(mag.reshape(len(w), 32, -1).mean(-1) + 1e-3))


FACTORIES = {"energy": Energy, "cnn": Energy, "linear": Spectrum}  # the members' model types -> tiny models


def training_set(asked: list | None = None) -> TrainingSet:
    """The clips with a ``surrogate_with`` that builds the member its ``model.type`` names (and notes what it was
    asked for in ``asked``)."""
    x, y, lengths = clips()

    def make(overrides: dict, factory=Energy, name="energy") -> TrainingSet:
        if asked is not None and overrides:
            asked.append(overrides)
        kind = (overrides.get("model") or {}).get("type", name)
        return TrainingSet(x, y, lengths, SR, C, FACTORIES[kind], lr=0.05, weight_decay=0.0, batch_size=8,
                           log=lambda s: None, description=kind, surrogate_with=make)

    return make({})


def config(**fields):
    members = [{"model": {"type": "cnn"}, "features": {"type": "mfcc"}},
               {"model": {"type": "linear"}, "features": {"type": "logmel"}}]
    return parse_plugin(DEFENSES, {"type": "ensemble-em", "key": KEY, "surrogates": members, **fields}, "defense")


def derive(asked=None, **fields):
    # the members' model types name the lab's models (validated); the test's surrogate_with maps them to tiny ones
    return build_defense(config(**fields)).derive_from(training_set(asked))


def snr_db(clean, protected, lengths):
    mask = torch.arange(clean.shape[1])[None] < lengths[:, None]
    change = (protected - clean).double() * mask
    return 10 * torch.log10(clean.double().pow(2).sum(1) / change.pow(2).sum(1))


@pytest.mark.parametrize("draws, mode", [(0, "class-wise"), (8, "class-wise"), (8, "sample-wise")])
def test_the_ensemble_loss_falls_every_clip_keeps_its_snr_and_the_record_rebuilds(draws, mode):
    """The descent lowers the members' mean loss in every round (without transformations, and with 8 draws a step:
    with 1 draw the estimate is so noisy that the recorded loss fell here even with the step's sign flipped; with
    0 or 8 draws a flipped sign makes this test fail), class-wise and sample-wise."""
    asked = []
    prot = derive(asked, snr_db=20, max_rounds=2, steps=4, train_batches=2, step_size=0.2, eot={"draws": draws},
                  mode=mode)
    rec = prot.optimisation
    assert [a["model"]["type"] for a in asked] == ["cnn", "linear"]  # each member built from its own entry
    assert rec["surrogates"] == ["cnn", "linear"]
    for r in rec["rounds"]:
        first, last = r["descent_loss"]
        assert last < first, rec["rounds"]
        assert len(r["train_accuracy"]) == 2
    x, y, lengths = clips()
    out = prot.apply(x, y, lengths)
    assert snr_db(x, out, lengths).min() >= 20 - 1e-3
    assert torch.equal(out * (torch.arange(T)[None] >= lengths[:, None]), torch.zeros_like(out))  # none in padding
    text = json.dumps(prot.to_dict())
    assert KEY not in text
    again = Protection.from_dict(json.loads(text), {k: v.clone() for k, v in prot.arrays().items()})
    assert torch.equal(again.apply(x, y, lengths), out)


def test_sample_wise_noise_is_each_clips_own_and_only_for_the_clips_it_was_made_for():
    """mode sample-wise: two clips of a class get different noise (no class pattern), each within its budget; the
    record keeps every clip's SHA-256 and the noise (float16), never the key; a clip it was not made for, or a clip
    changed by one sample, is left as it is."""
    prot = derive(mode="sample-wise", snr_db=20, max_rounds=1, steps=2, train_batches=1, eot={"draws": 1})
    x, y, lengths = clips()
    noise = prot.apply(x, y, lengths) - x
    assert prot.arrays()["noise"].dtype == torch.float16 and prot.arrays()["noise"].shape == (N, T)
    assert len(prot.to_dict()["clip_sha256"]) == N and KEY not in json.dumps(prot.to_dict())
    a, b = torch.nonzero(y == y[0]).flatten()[:2]
    m = int(min(lengths[a], lengths[b]))
    assert abs(torch.corrcoef(torch.stack([noise[a, :m], noise[b, :m]]))[0, 1]) < 0.5
    assert (snr_db(x, x + noise, lengths) >= 20 - 1e-2).all()
    other, _, other_lengths = clips(seed=1)
    assert torch.equal(prot.apply(other, y, other_lengths), other)
    changed = x.clone()
    changed[0, 0] += 1e-3
    assert torch.equal(prot.apply(changed[:1], y[:1], lengths[:1]), changed[:1])
    assert set(prot.ablation_variants(x, y, lengths, SR)) == {"clean", "true"}  # no class pattern to swap


def test_the_transformations_come_from_the_key_and_are_recorded():
    fields = dict(max_rounds=1, steps=2, train_batches=1, eot={"draws": 2})
    a, b, other = derive(**fields), derive(**fields), build_defense(
        config(**{**fields, "key": "ensemble-test-key-0002"})).derive_from(training_set())
    eot = a.optimisation["eot"]
    assert eot["draws"] == 2 and eot["seed_source"] == "key"
    assert eot["draws_made"] == (N // 8) * 2 * 2  # batches x steps x draws
    assert eot["draws_sha256"] == b.optimisation["eot"]["draws_sha256"] and torch.equal(a.patterns, b.patterns)
    assert eot["draws_sha256"] != other.optimisation["eot"]["draws_sha256"]


def test_a_transformation_draw_does_what_it_says():
    x, _, _ = clips()
    off = Transformations(EOTConfig(p=0.0), SR, 1)
    assert torch.equal(off.apply(x, off.draw(N, T)), x)  # nothing drawn on: the batch as it is
    gain = Transformations(EOTConfig(p=1.0, shift_seconds=0.0, lowpass_hz=(4000, 4000), noise_snr_db=(300, 300)),
                           SR, 1)
    d = gain.draw(N, T)
    assert torch.allclose(gain.apply(x, d), x * d["gain"].float()[:, None], atol=1e-5)
    shift = Transformations(EOTConfig(p=1.0, gain_db=0.0, lowpass_hz=(4000, 4000), noise_snr_db=(300, 300)), SR, 1)
    d = shift.draw(N, T)
    assert d["shift"].abs().max() <= 800 and (d["shift"] != 0).any()
    assert torch.allclose(shift.apply(x, d)[0], torch.roll(x[0], int(d["shift"][0])), atol=1e-5)
    low = Transformations(EOTConfig(p=1.0, shift_seconds=0.0, gain_db=0.0, noise_snr_db=(300, 300)), SR, 1)
    d = low.draw(N, T)
    spectrum = torch.fft.rfft(low.apply(x, d)).abs()
    above = torch.fft.rfftfreq(T, 1 / SR)[None] > d["cutoff"].float()[:, None] + 2
    assert spectrum[above].max() < 1e-3 * spectrum.max()


@pytest.mark.parametrize("fields, says", [
    ({"rho": 0.001}, "rho"),
    ({"surrogate": {"model": {"type": "lstm"}}}, "surrogates"),
    ({"surrogates": []}, "surrogates"),
    ({"eot": {"lowpass_hz": [3000, 1000]}}, "lowpass_hz"),
    ({"eot": {"time_mask_p": 1.5}}, "time_mask_p"),
    ({"eot": {"freq_mask_hz": 0}}, "freq_mask_hz"),
    ({"eot": {"codec_bits": 0}}, "codec_bits"),
    ({"pattern": "spectral"}, "pattern"),
    ({"mode": "sample-wise", "pattern": "filter"}, "mode sample-wise takes pattern waveform"),
    ({"tile_seconds": -0.1}, "tile_seconds"),
    ({"eot": {"strong_augment": {}, "codec_p": 0.5}}, "strong_augment replaces the built-in draw"),
    ({"eot": {"strong_augment": {"speed": {"min_factor": 1.2, "max_factor": 0.9}}}}, "min_factor"),
])
def test_a_wrong_setting_is_refused_in_one_line(fields, says):
    with pytest.raises((LabError, ValueError)) as e:
        config(**fields)
    assert says in str(e.value)


def test_a_tile_longer_than_the_clips_is_refused_in_one_line():
    with pytest.raises(LabError, match=r"tile_seconds 0.6 gives a tile of 4800 samples; give one of 2 to 4000"):
        derive(pattern="tile", tile_seconds=0.6, max_rounds=1)


def test_the_masks_and_the_codec_proxy_do_what_they_say():
    """A time mask zeroes one span of at most time_mask_seconds; a frequency mask removes one band of at most
    freq_mask_hz; the codec proxy is the codec attack's band limit (resample_hz / 2) and bit depth in the forward
    pass, the band limit's gradient in the backward pass; with them on, the rest of a draw is what it was without."""
    from attacks.codec import reduce_bits, squeeze, CodecConfig
    x, _, _ = clips()
    quiet = dict(p=0.0)
    tm = Transformations(EOTConfig(**quiet, time_mask_p=1.0, time_mask_seconds=0.05), SR, 1)
    d = tm.draw(N, T)
    assert (d["tmask_width"] > 0).all() and d["tmask_width"].max() <= 400
    span = (torch.arange(T)[None] >= d["tmask_start"][:, None]) & (
        torch.arange(T)[None] < (d["tmask_start"] + d["tmask_width"])[:, None])
    out = tm.apply(x, d)
    assert torch.equal(out[span], torch.zeros_like(out[span])) and torch.allclose(out[~span], x[~span])
    fm = Transformations(EOTConfig(**quiet, freq_mask_p=1.0, freq_mask_hz=1000.0), SR, 1)
    d = fm.draw(N, T)
    width = d["fmask_high"] - d["fmask_low"]
    assert (width > 0).all() and width.max() <= 1000 and d["fmask_high"].max() <= SR / 2
    spectrum, before = torch.fft.rfft(fm.apply(x, d)).abs(), torch.fft.rfft(x).abs()
    freqs = torch.fft.rfftfreq(T, 1 / SR)[None]
    band = (freqs >= d["fmask_low"][:, None]) & (freqs <= d["fmask_high"][:, None])
    assert spectrum[band].max() < 1e-4 * before.max() and torch.allclose(spectrum[~band], before[~band], atol=1e-3)
    codec = Transformations(EOTConfig(**quiet, codec_p=1.0, codec_hz=4000.0, codec_bits=8), SR, 1)
    d = codec.draw(N, T)
    xg = x.clone().requires_grad_(True)
    out = codec.apply(xg, d)
    low = torch.fft.irfft(torch.fft.rfft(x) * (torch.fft.rfftfreq(T, 1 / SR) <= 2000), n=T)
    assert torch.allclose(out, reduce_bits(low, 8), atol=1e-6) and not torch.allclose(out, low, atol=1e-4)
    (grad,) = torch.autograd.grad((out * x).sum(), xg)
    assert torch.allclose(grad, low, atol=1e-5)  # straight through the rounding, through the band limit
    attack = squeeze(x, SR, CodecConfig())  # the attack itself (resample 4 kHz and back, 8 bits)
    assert (out.detach() - attack).norm() < 0.5 * (x - attack).norm()
    plain, both = Transformations(EOTConfig(p=0.5), SR, 7), Transformations(
        EOTConfig(p=0.5, time_mask_p=0.5, freq_mask_p=0.5, codec_p=0.5), SR, 7)
    a, b = plain.draw(N, T), both.draw(N, T)
    assert all(torch.equal(a[k], b[k]) for k in a) and set(b) - set(a) == {
        "tmask_start", "tmask_width", "fmask_low", "fmask_high", "codec"}


def test_the_tile_pattern_moves_with_the_clip_and_keeps_the_budget():
    """pattern: tile: the record says so, the arrays hold one tile per class; every clip keeps its SNR exactly; a
    clip shifted (circularly) by s samples and then protected is the protected clip shifted by s when s is a
    multiple of the tile, and otherwise the clip protected with the tile rolled by s (the same class signal at
    another phase); each training clip got the tile at its own key-derived offset."""
    from defenses.ensemble_em import TilePatterns
    from lab.dsp import circular_shift, tile_rows
    prot = derive(pattern="tile", tile_seconds=0.05, snr_db=20, max_rounds=1, steps=2, train_batches=1,
                  eot={"draws": 1})
    assert prot.params["pattern"] == "tile" and prot.optimisation["pattern"] == "tile"
    assert prot.patterns.shape == (C, 400)
    x, y, lengths = clips()
    assert (snr_db(x, prot.apply(x, y, lengths), lengths) - 20).abs().max() < 1e-3
    full = torch.full((N,), T)
    again = Protection.from_dict(json.loads(json.dumps(prot.to_dict())), prot.arrays())
    for s in (800, 123, -57):
        shifted = circular_shift(x, torch.full((N,), s))
        moved = circular_shift(prot.apply(x, y, full), torch.full((N,), s))
        again.patterns = prot.patterns if s % 400 == 0 else torch.roll(prot.patterns, s, dims=1)
        assert torch.allclose(again.apply(shifted, y, full), moved, atol=1e-6)
    assert not torch.allclose(prot.apply(circular_shift(x, torch.full((N,), 123)), y, full),
                              circular_shift(prot.apply(x, y, full), torch.full((N,), 123)), atol=1e-4)
    data = training_set()
    pert = TilePatterns(data, None, None, 0.1, torch.Generator().manual_seed(0), 400,
                        torch.Generator().manual_seed(1))
    idx = torch.arange(N)
    noise = pert.perturbed(pert.patterns, idx, data.waveforms, data.labels, data.lengths) - data.waveforms
    expected = tile_rows(pert.patterns[data.labels], pert.offsets, T) * pert.mask
    assert torch.allclose(noise, expected) and len(set(pert.offsets.tolist())) > N // 2



def test_the_filter_pattern_shares_no_waveform_keeps_the_budget_and_is_taken_by_lab_protect(tmp_path):
    """pattern: filter: the arrays hold one filter per class; two clips of a class get uncorrelated noise (their own
    draws), each clip the same noise in any batch; every clip keeps its SNR; the record rebuilds with its salt; lab
    protect takes it (tests/protect/test_optimised.py writes it onto files)."""
    from lab.protect.protector import defense_config
    prot = derive(pattern="filter", filter_taps=17, snr_db=20, max_rounds=1, steps=2, train_batches=1,
                  eot={"draws": 1})
    assert prot.patterns.shape == (C, 17) and prot.to_dict()["noise_salt"] == prot.salt
    x, y, lengths = clips()
    noise = prot.apply(x, y, lengths) - x
    assert (snr_db(x, x + noise, lengths) - 20).abs().max() < 1e-3
    a, b = torch.nonzero(y == y[0]).flatten()[:2]
    m = int(min(lengths[a], lengths[b]))
    assert abs(torch.corrcoef(torch.stack([noise[a, :m], noise[b, :m]]))[0, 1]) < 0.2
    again = Protection.from_dict(json.loads(json.dumps(prot.to_dict())), prot.arrays())
    ba = torch.stack([b, a])
    assert torch.equal(again.apply(x[ba], y[ba], lengths[ba]) - x[ba], noise[ba])
    # its field is in the dump only with the pattern, so every earlier configuration dumps (and caches) as before
    assert config(pattern="filter").model_dump()["filter_taps"] == 65 and "filter_taps" not in config().model_dump()
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    assert defense_config(key_file, {"type": "ensemble-em", "pattern": "filter"}).pattern == "filter"

def test_the_tile_pattern_keeps_the_masking_budget():
    """pattern: tile with masking_margin_db 0 (and snr_db 20): every clip's change at most its masking threshold in
    every frame and bin (the contract suite's tolerance), the SNR floor kept, a clip alone protected as in a batch."""
    from lab.masking import threshold_excess_db
    prot = derive(pattern="tile", tile_seconds=0.05, snr_db=20, masking_margin_db=0.0, max_rounds=1, steps=1,
                  train_batches=1, eot={"draws": 0})
    x, y, lengths = clips()
    change = (prot.apply(x, y, lengths) - x).double()
    assert change.abs().sum() > 0
    assert float(threshold_excess_db(x, change, SR, 0.0).max()) <= 0.1  # tests/test_contracts.py's tolerance
    assert snr_db(x, x + change, lengths).min() >= 20 - 1e-3
    alone = torch.cat([prot.apply(x[i:i + 1], y[i:i + 1], lengths[i:i + 1]) for i in range(N)])
    assert torch.allclose(alone, x + change.float(), atol=1e-6)


def test_a_member_the_recipe_cannot_build_is_refused_at_the_door():
    from lab.recipe import load_recipe
    with pytest.raises(LabError, match="lsmt"):
        load_recipe(ROOT / "recipes" / "loo" / "cnn_mfcc.yaml", ["defense.surrogates=[{model: {type: lsmt}}]"])
    with pytest.raises(LabError, match="chanels"):
        load_recipe(ROOT / "recipes" / "loo" / "cnn_mfcc.yaml",
                    ["defense.surrogates=[{model: {type: linear}}, {model: {type: cnn, chanels: [4]}}]"])


def test_the_leave_one_out_recipes_leave_their_trainer_out_and_are_up_to_date():
    from lab.recipe import load_recipe
    from lab.spine import Clips, training_set
    check = subprocess.run([sys.executable, str(ROOT / "bench" / "loo_recipes.py"), "--check"], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout
    paths = sorted((ROOT / "recipes" / "loo").glob("*.yaml"))
    assert paths
    trainers = set()
    for path in paths:
        recipe = load_recipe(path)
        trainer = (recipe.model.type, recipe.features.type)
        members = [(m.model["type"], m.features["type"]) for m in recipe.defense.surrogates]
        assert trainer not in members and len(members) == len(set(members)), (path.name, members)
        trainers.add(trainer)
    assert len(trainers) == len(paths)
    # through the spine: the members' surrogates are the recipe's entries, the trainer's pair is not among them
    recipe = load_recipe(paths[0])
    x = torch.randn(6, 8000) * 0.1
    data = training_set(recipe, build_defense(recipe.defense), Clips(x, torch.arange(6) % 3, torch.full((6,), 8000)), 3,
                        log=lambda s: None)
    built = [m.description for m in build_defense(recipe.defense).members(data)]
    assert built == [f"{m.model['type']} on {m.features['type']}" for m in recipe.defense.surrogates]
    assert f"{recipe.model.type} on {recipe.features.type}" not in built


@pytest.mark.parametrize("extra", [{}, {"pattern": "tile", "tile_seconds": 0.05,
                                         "eot": {"draws": 2, "time_mask_p": 0.5, "freq_mask_p": 0.5, "codec_p": 0.5}},
                                   {"pattern": "filter", "filter_taps": 9, "eot": {"draws": 2, "strong_augment": {}}}])
def test_an_interrupted_ensemble_resumed_from_its_checkpoint_ends_where_an_uninterrupted_one_does(extra):
    """The checkpoint after round 1 (saved and loaded back as lab protect does, weights_only) holds every member and
    the transformations' generator; given back as ``resume``, rounds 2 and 3 only, and the same patterns, accuracies,
    descent losses and transformation draws as an uninterrupted run, bit for bit (today's settings, and the tile
    pattern with the masks and the codec proxy among the transformations)."""
    fields = {**dict(max_rounds=3, stop_accuracy=1.0, steps=2, train_batches=2, eot={"draws": 2}), **extra}
    defense = build_defense(config(**fields))
    whole = defense.derive_from(training_set())
    state = state_after_round_1(defense, training_set())
    assert state["round"] == 1 and len(state["members"]) == 2 and state["eot"]["made"] == (N // 8) * 2 * 2
    rounds = []
    resumed = defense.derive_from(dataclasses.replace(training_set(), resume=state,
                                                      checkpoint=lambda s: rounds.append(s["round"])))
    assert rounds == [2, 3] and len(whole.optimisation["rounds"]) == 3
    for a, b in zip(resumed.optimisation["rounds"], whole.optimisation["rounds"]):
        assert (a["train_accuracy"], a["descent_loss"]) == (b["train_accuracy"], b["descent_loss"])
    assert resumed.optimisation["eot"] == whole.optimisation["eot"]  # the draws' count and SHA-256 chain
    assert torch.equal(resumed.patterns, whole.patterns)
    with pytest.raises(ValueError, match="the checkpoint has 2 members, this ensemble 1"):
        build_defense(config(**fields, surrogates=[{}])).derive_from(
            dataclasses.replace(training_set(), resume=state))


def test_written_onto_files_it_is_em_noises_class_wise_mapping_at_each_rate():
    """lab protect's file-level protection (files_at): the class pattern resampled to the file's rate, repeated to
    its length, scaled per channel to snr_db exactly (a silent channel gets none), shaped to the masking budget when
    set: the mapping defenses._minmin shares, which gives what em-noise's class-wise EMNoiseFiles gives, bit for
    bit, and its words (so em-noise can use it without changing a written file or a record)."""
    from defenses._minmin import ClassPatternsOnFiles, class_patterns_mapping
    from defenses.base import WorkingClips
    from defenses._samplewise import MAPPING, EMNoiseProtection
    prot = derive(snr_db=20, max_rounds=1, steps=1, train_batches=1, eot={"draws": 0})
    working = WorkingClips(SR, T, ("a",) * N)
    g = torch.Generator().manual_seed(3)
    for rate, frames in ((8000, 9000), (16000, 3000), (44100, 50000)):
        at = prot.files_at(rate, working)
        assert type(at).file_by_file and at.to_dict()["mapping"].startswith("the file's class pattern")
        assert at.to_dict()["working_rate"] == SR and KEY not in json.dumps(at.to_dict())
        x = 0.1 * torch.randn(2, frames, generator=g)
        x[1] = 0.0  # a silent channel
        out = at.apply(x, torch.full((2,), 2), torch.full((2,), frames))
        assert torch.equal(out[1], x[1])
        assert abs(float(snr_db(x[:1], out[:1], torch.tensor([frames]))) - 20.0) < 1e-3
        for linf, margin in ((None, None), (0.002, None), (None, 0.0)):
            params = {**prot.params, "mode": "class-wise", "linf": linf, "masking_margin_db": margin}
            em = EMNoiseProtection(params, prot.key_fingerprint, SR, C, {}, patterns=prot.patterns)
            shared = ClassPatternsOnFiles(prot.patterns, SR, rate, 20.0, linf, margin)
            labels = torch.full((2,), 1)
            assert torch.equal(shared.apply(x, labels), em.files_at(rate, working).apply(x, labels))
    assert class_patterns_mapping(", clipped to linf") == MAPPING["class-wise"]
    # with masking_margin_db, each file's noise is shaped under its own masking threshold
    from lab.masking import threshold_excess_db
    masked = Protection.from_dict(json.loads(json.dumps({**prot.to_dict(), "params": {
        **prot.params, "masking_margin_db": 0.0}})), prot.arrays()).files_at(16000, working)
    x = 0.1 * torch.randn(1, 16000, generator=g)
    plain, shaped = (p.apply(x, torch.ones(1)) for p in (prot.files_at(16000, working), masked))
    assert float(threshold_excess_db(x, plain - x, 16000)) > 0.5
    assert float(threshold_excess_db(x, shaped - x, 16000)) <= 1e-6


def test_a_tile_pattern_written_onto_files_keeps_its_period_and_the_budget():
    """pattern: tile on files (files_at): the tile repeated a whole number of times over a working clip, then the
    shared mapping; at the working rate the noise on a file is periodic with the tile's period and every channel
    keeps snr_db exactly; the mapping's words say 'tile'."""
    from defenses.base import WorkingClips
    prot = derive(pattern="tile", tile_seconds=0.03, snr_db=20, max_rounds=1, steps=1, train_batches=1,
                  eot={"draws": 0})
    working = WorkingClips(SR, T, ("a",) * N)
    g = torch.Generator().manual_seed(4)
    for rate, frames in ((8000, 9000), (16000, 3000)):
        at = prot.files_at(rate, working)
        assert at.to_dict()["mapping"].startswith("pattern 'tile'")
        x = 0.1 * torch.randn(1, frames, generator=g)
        out = at.apply(x, torch.full((1,), 3))
        assert abs(float(snr_db(x, out, torch.tensor([frames]))) - 20.0) < 1e-3
    x = 0.1 * torch.randn(1, 9000, generator=g)
    noise = (prot.files_at(SR, working).apply(x, torch.full((1,), 2)) - x)[0]
    assert torch.allclose(noise[240:], noise[:-240], atol=1e-6)  # 0.03 s at 8 kHz: 240 samples


@pytest.mark.parametrize("mode", ["class-wise", "sample-wise"])
def test_a_short_real_run_through_the_spine_on_fsdd(mode, fsdd_dir, monkeypatch):
    """The LOO recipe for the Transformer on FSDD (3 clips a class, 1 round, 1 step): the spine builds the four
    members the recipe names, the noise is optimised against them, every training clip keeps its 20 dB; the test
    clips are left clean (sample-wise: they are not clips the noise was made for)."""
    from lab.recipe import load_recipe
    from lab.spine import ExperimentData
    monkeypatch.setenv("LAB_PROTECTION_CACHE", "off")
    recipe = load_recipe(ROOT / "recipes" / "loo" / "transformer_mfcc.yaml", [
        f"data.root={fsdd_dir}", "data.max_train_per_class=3", "data.max_test_per_class=1", "defense.max_rounds=1",
        "defense.steps=1", "defense.train_batches=1", "defense.eot.draws=1", "train.num_threads=1",
        f"defense.mode={mode}"])
    data = ExperimentData(recipe, log=lambda s: None)
    rec = data.protection.optimisation
    assert rec["surrogates"] == [f"{m.model['type']} on {m.features['type']}" for m in recipe.defense.surrogates]
    assert len(rec["rounds"][0]["train_accuracy"]) == 4 and rec["eot"]["draws_made"] == 1
    clean, protected = data.clean_train, data.protected_train
    assert snr_db(clean.waveforms, protected.waveforms, clean.lengths).min() >= 20 - 1e-3
    if mode == "sample-wise":
        test = data.clean_test
        assert torch.equal(data.protection.apply(test.waveforms, test.labels, test.lengths), test.waveforms)


def test_the_strong_augment_draw_is_the_attacks_chain_and_passes_gradients():
    """``eot.strong_augment``: a draw is one pass of the strong-augment attack's own chain (lab.augment) with a seed
    from the key's generator: the same output as the attack's chain from that seed, gradients that are finite and not
    zero, the draws counted and hashed; with it off, a configuration's dump (its cache name) is what it was."""
    from attacks.strong_augment import StrongAugmentConfig
    from lab.augment import augment_chain
    x, _, _ = clips()
    eot = Transformations(EOTConfig(strong_augment={}, draws=1), SR, 3)
    seeds = []
    for _ in range(3):
        d = eot.draw(N, T)
        seeds.append(int(d["chain_seed"]))
        v = x.clone().requires_grad_(True)
        out = eot.apply(v, d)
        assert torch.equal(out.detach(), augment_chain(x, SR, StrongAugmentConfig(),
                                                       torch.Generator().manual_seed(seeds[-1])))
        assert not torch.equal(out.detach(), x)
        (g,) = torch.autograd.grad(out.pow(2).sum(), v)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert len(set(seeds)) == 3 and eot.record()["draws_made"] == 3
    again = Transformations(EOTConfig(strong_augment={}, draws=1), SR, 3)
    assert [int(again.draw(N, T)["chain_seed"]) for _ in range(3)] == seeds
    assert again.record()["draws_sha256"] == eot.record()["draws_sha256"]
    assert "strong_augment" not in config().model_dump()["eot"]
    assert config(eot={"strong_augment": {}}).model_dump()["eot"]["strong_augment"]["speed"]["p"] == 0.5
    prot = derive(max_rounds=1, steps=2, train_batches=1, pattern="filter", filter_taps=9,
                  eot={"draws": 2, "strong_augment": {}})
    assert prot.optimisation["eot"]["strong_augment"]["reverb"]["p"] == 0.3
