"""ensemble-em's own behaviour (the contract suite covers what every defense shares): the ensemble loss falls while the
noise is made, every clip keeps its budget, the transformations are drawn from the key and recorded, each member is
the surrogate its entry names, and the leave-one-out recipes really leave their trainer out."""
from __future__ import annotations

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


@pytest.mark.parametrize("draws", [0, 8])
def test_the_ensemble_loss_falls_every_clip_keeps_its_snr_and_the_record_rebuilds(draws):
    """The descent lowers the members' mean loss in every round (without transformations, and with 8 draws a step:
    with 1 draw the estimate is so noisy that the recorded loss fell here even with the step's sign flipped; with
    0 or 8 draws a flipped sign makes this test fail)."""
    asked = []
    prot = derive(asked, snr_db=20, max_rounds=2, steps=4, train_batches=2, step_size=0.2, eot={"draws": draws})
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
])
def test_a_wrong_setting_is_refused_in_one_line(fields, says):
    with pytest.raises((LabError, ValueError)) as e:
        config(**fields)
    assert says in str(e.value)


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


def test_lab_protect_refuses_it_in_one_line():
    from lab.protect.protector import applicable_defenses, cannot_apply
    assert "ensemble-em" not in applicable_defenses()
    message = str(cannot_apply("ensemble-em"))
    assert "ensemble-em" in message and "\n" not in message


def test_a_short_real_run_through_the_spine_on_fsdd(fsdd_dir, monkeypatch):
    """The LOO recipe for the Transformer on FSDD (3 clips a class, 1 round, 1 step): the spine builds the four
    members the recipe names, the noise is optimised against them, every training clip keeps its 20 dB."""
    from lab.recipe import load_recipe
    from lab.spine import ExperimentData
    monkeypatch.setenv("LAB_PROTECTION_CACHE", "off")
    recipe = load_recipe(ROOT / "recipes" / "loo" / "transformer_mfcc.yaml", [
        f"data.root={fsdd_dir}", "data.max_train_per_class=3", "data.max_test_per_class=1", "defense.max_rounds=1",
        "defense.steps=1", "defense.train_batches=1", "defense.eot.draws=1", "train.num_threads=1"])
    data = ExperimentData(recipe, log=lambda s: None)
    rec = data.protection.optimisation
    assert rec["surrogates"] == [f"{m.model['type']} on {m.features['type']}" for m in recipe.defense.surrogates]
    assert len(rec["rounds"][0]["train_accuracy"]) == 4 and rec["eot"]["draws_made"] == 1
    clean, protected = data.clean_train, data.protected_train
    assert snr_db(clean.waveforms, protected.waveforms, clean.lengths).min() >= 20 - 1e-3
