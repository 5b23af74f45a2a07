"""The optimised defenses (em-noise, robust-em, poscuda-opt) and the per-clip budget (budget): their contract on
small generated data with a tiny surrogate (budget met on every clip, same key -> same result, the record re-applied
reproduces the protection, no key in the record), that min-min really minimises, and one short real run on FSDD
through the spine (lab run folder, protection.pt, load_run)."""
from __future__ import annotations

import json

import pytest
import torch

from defenses import DEFENSES, Protection, build_defense
from defenses._minmin import Perturbation, adversarial, min_min, span_mask
from defenses.base import TrainingSet
from lab.config import parse_plugin
from tests.defenses.checkpoints import state_after_round_1
from lab.dsp import limit_change
from lab.errors import LabError

SR = 8000
KEY = "optimised-key-1234"
T = 800


def clip_snr(clean: torch.Tensor, protected: torch.Tensor) -> torch.Tensor:
    d = (protected - clean).double().pow(2).sum(1)
    return 10 * torch.log10(clean.double().pow(2).sum(1) / d.clamp(min=1e-300))


class TinySurrogate(torch.nn.Module):
    """A classifier of waveforms: log-energy of 20 frames -> linear (differentiable, fast, and too small to
    memorise random labels of noise clips)."""

    def __init__(self, t: int = T, classes: int = 4):
        super().__init__()
        self.frames = 20
        self.lin = torch.nn.Linear(self.frames, classes)

    def forward(self, w):
        n = w.shape[1] // self.frames * self.frames
        energy = w[:, :n].reshape(len(w), self.frames, -1).pow(2).mean(-1)
        return self.lin(torch.log(energy + 1e-4) + 4)


def toy_set(n: int = 64, classes: int = 4, seed: int = 0, random_labels: bool = True) -> TrainingSet:
    """Clips of noise with right padding; labels unrelated to the audio (random_labels): nothing to learn but a
    shortcut."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(T // 2, T + 1, (n,), generator=g)
    w = 0.1 * torch.randn(n, T, generator=g) * (torch.arange(T)[None] < lengths[:, None])
    y = torch.randint(classes, (n,), generator=g) if random_labels else torch.arange(n) % classes
    return TrainingSet(w, y, lengths, SR, classes, lambda: TinySurrogate(T, classes), lr=0.01, weight_decay=0.0,
                       batch_size=16, log=lambda s: None, description="tiny")


def em(data: TrainingSet, **cfg):
    config = parse_plugin(DEFENSES, {"type": "em-noise", "key": KEY, "max_rounds": 3, **cfg}, "defense")
    return build_defense(config).derive_from(data)


# --- the budget ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [{"mode": "sample-wise", "snr_db": 20}, {"mode": "class-wise", "snr_db": 30},
                                 {"mode": "sample-wise", "snr_db": None, "linf": 0.002},
                                 {"mode": "class-wise", "snr_db": 20, "linf": 0.003},
                                 {"mode": "sample-wise", "snr_db": 25, "linf": 0.001}])
def test_em_noise_meets_its_budget_on_every_clip_and_only_inside_the_real_audio(cfg):
    data = toy_set()
    prot = em(data, **cfg)
    out = prot.apply(data.waveforms, data.labels, data.lengths)
    change = out - data.waveforms
    assert change.abs().sum() > 0
    if cfg.get("snr_db") is not None:
        assert clip_snr(data.waveforms, out).min() >= cfg["snr_db"] - 1e-4
    if cfg.get("linf") is not None:
        assert change.abs().max() <= cfg["linf"] + 1e-7  # float32 rounding of x + d
    padding = torch.arange(T)[None] >= data.lengths[:, None]
    assert torch.all(change[padding] == 0), "noise in the zero padding"


def test_class_wise_noise_is_exactly_at_the_snr_target():
    data = toy_set()
    out = em(data, mode="class-wise", snr_db=24).apply(data.waveforms, data.labels, data.lengths)
    assert torch.allclose(clip_snr(data.waveforms, out), torch.full((len(out),), 24.0, dtype=torch.float64),
                          atol=1e-3)


def test_budget_defense_scales_down_only_and_meets_the_snr_on_every_clip():
    x = 0.2 * torch.randn(30, SR, generator=torch.Generator().manual_seed(1))
    y = torch.arange(30) % 10
    inner = build_defense(parse_plugin(DEFENSES, {"type": "poscuda", "key": KEY}, "defense")).derive(10, SR)
    prot = build_defense(parse_plugin(DEFENSES, {"type": "budget", "snr_db": 30,
                                                 "inner": {"type": "poscuda", "key": KEY}}, "defense")).derive(10, SR)
    full, limited = inner.apply(x, y), prot.apply(x, y)
    before, after = clip_snr(x, full), clip_snr(x, limited)
    assert after.min() >= 30 - 1e-4
    kept = before >= 30
    assert torch.equal(limited[kept], full[kept]), "a clip within the budget must be left as the inner made it"
    assert (before < 30).any() and torch.allclose(after[~kept], torch.full_like(after[~kept], 30.0), atol=1e-3)
    again = Protection.from_dict(json.loads(json.dumps(prot.to_dict())))
    assert torch.equal(again.apply(x, y), limited)
    assert set(prot.ablation_variants(x, y, None, SR)) == set(inner.ablation_variants(x, y, None, SR))


def test_budget_refuses_a_budget_inside_a_budget_and_no_budget():
    with pytest.raises(LabError, match="cannot itself be a budget"):
        parse_plugin(DEFENSES, {"type": "budget", "inner": {"type": "budget", "inner": "cuda"}}, "defense")
    with pytest.raises(LabError, match="give a budget"):
        parse_plugin(DEFENSES, {"type": "budget", "snr_db": None, "inner": {"type": "cuda", "key": KEY}},
                     "defense")


def test_limit_change_clips_to_linf_after_the_snr():
    x = torch.ones(2, 10)
    out = limit_change(x, x + torch.tensor([[0.5] * 10, [0.001] * 10]), snr_db=None, linf=0.01)
    assert torch.allclose(out - x, torch.tensor([[0.01] * 10, [0.001] * 10]), atol=1e-6)


# --- min-min ---------------------------------------------------------------------------------------------------------

def test_error_minimising_noise_makes_random_labels_learnable():
    """The point of min-min: with labels that nothing in the audio predicts, a model trained on the protected clips
    fits them (the noise is the shortcut), one trained on the clean clips does not."""
    data = toy_set(n=96, random_labels=True)
    prot = em(data, mode="sample-wise", snr_db=10, max_rounds=4)
    assert prot.optimisation["rounds"][-1]["train_accuracy"] >= 0.9
    protected = prot.apply(data.waveforms, data.labels, data.lengths)

    def fitted_accuracy(w):
        torch.manual_seed(5)  # a fresh model, not the surrogate
        model = TinySurrogate(T, 4)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        for _ in range(15):
            for idx in torch.arange(len(w)).split(16):
                loss = torch.nn.functional.cross_entropy(model(w[idx]), data.labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        return float((model(w).argmax(1) == data.labels).float().mean())
    assert fitted_accuracy(protected) > fitted_accuracy(data.waveforms) + 0.2


def test_min_min_stops_when_the_surrogate_fits_the_perturbed_data_and_caps_the_rounds():
    data = toy_set()
    stopped = em(data, mode="sample-wise", snr_db=10, max_rounds=6).optimisation
    assert stopped["stop_rule_met"] and len(stopped["rounds"]) < 6
    capped = em(data, mode="sample-wise", snr_db=40, stop_accuracy=1.0, max_rounds=2).optimisation
    assert len(capped["rounds"]) == 2 and not capped["stop_rule_met"]


def test_the_adversarial_inner_step_stays_within_rho_and_raises_the_loss():
    data = toy_set()
    torch.manual_seed(0)
    model = TinySurrogate()
    x, y = data.waveforms[:16], data.labels[:16]
    delta = adversarial(model, x, y, 0.01, 5, torch.Generator().manual_seed(0))
    assert delta.abs().max() <= 0.01 + 1e-9
    ce = torch.nn.functional.cross_entropy
    assert ce(model(x + delta), y) > ce(model(x), y)


def test_robust_em_records_its_radius_and_differs_from_plain_em():
    data = toy_set()
    plain = em(data, snr_db=20, max_rounds=2)
    robust = build_defense(parse_plugin(DEFENSES, {"type": "robust-em", "key": KEY, "snr_db": 20, "max_rounds": 2,
                                                   "rho": 0.002}, "defense")).derive_from(data)
    assert robust.to_dict()["defense"] == "robust-em" and robust.params["rho"] == 0.002
    assert not torch.equal(plain.noise, robust.noise)
    assert clip_snr(data.waveforms, robust.apply(data.waveforms, data.labels, data.lengths)).min() >= 20 - 1e-4


# --- reproducible, recorded, keyless --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["sample-wise", "class-wise"])
def test_the_same_key_gives_the_same_noise_and_the_record_reproduces_it(mode):
    data = toy_set()
    a, b = em(data, mode=mode, max_rounds=2), em(data, mode=mode, max_rounds=2)
    wa = a.apply(data.waveforms, data.labels, data.lengths)
    assert torch.equal(wa, b.apply(data.waveforms, data.labels, data.lengths))
    other = build_defense(parse_plugin(DEFENSES, {"type": "em-noise", "key": "another-key-5678", "mode": mode,
                                                  "max_rounds": 2}, "defense")).derive_from(data)
    assert not torch.equal(wa, other.apply(data.waveforms, data.labels, data.lengths))
    record = json.loads(json.dumps(a.to_dict()))
    again = Protection.from_dict(record, a.arrays())
    assert torch.equal(again.apply(data.waveforms, data.labels, data.lengths), wa)
    text = json.dumps(record)
    assert KEY not in text and record["key_fingerprint"] == a.key_fingerprint
    with pytest.raises(ValueError, match="needs its arrays"):
        Protection.from_dict(record)


@pytest.mark.parametrize("cfg", [{"type": "em-noise", "mode": "sample-wise"},
                                 {"type": "em-noise", "mode": "class-wise"}, {"type": "robust-em", "mode": "class-wise"},
                                 {"type": "poscuda-opt", "patch_seconds": 0.02, "position_range": [0, 0.05]}])
def test_an_interrupted_min_min_resumed_from_its_checkpoint_ends_where_an_uninterrupted_one_does(cfg):
    """The checkpoint a TrainingSet's ``checkpoint`` hook receives after round 1 (saved and loaded back as lab protect
    does, weights_only), given back as ``resume``: rounds 2 and 3 only, and the same result, bit for bit."""
    import dataclasses
    data = toy_set()
    defense = build_defense(parse_plugin(DEFENSES, {**cfg, "key": KEY, "max_rounds": 3, "stop_accuracy": 1.0},
                                         "defense"))
    whole = defense.derive_from(data)
    state = state_after_round_1(defense, data)
    assert state["round"] == 1
    rounds = []
    resumed = defense.derive_from(dataclasses.replace(data, resume=state, checkpoint=lambda s: rounds.append(
        s["round"])))
    assert rounds == [r["round"] for r in whole.optimisation["rounds"]][1:]
    assert [r["train_accuracy"] for r in resumed.optimisation["rounds"]] == \
        [r["train_accuracy"] for r in whole.optimisation["rounds"]]
    assert torch.equal(resumed.apply(data.waveforms, data.labels, data.lengths),
                       whole.apply(data.waveforms, data.labels, data.lengths))


def test_sample_wise_noise_changes_only_the_clips_it_was_made_for():
    data = toy_set()
    prot = em(data, max_rounds=1)
    new = 0.1 * torch.randn(5, T, generator=torch.Generator().manual_seed(9))
    assert torch.equal(prot.apply(new, torch.zeros(5, dtype=torch.long)), new)
    some = prot.apply(data.waveforms[3:7], data.labels[3:7], data.lengths[3:7])  # any subset, any order
    assert torch.equal(some, prot.apply(data.waveforms, data.labels, data.lengths)[3:7])


def test_optimised_defenses_refuse_to_derive_from_the_key_alone():
    for kind in ("em-noise", "robust-em", "poscuda-opt"):
        d = build_defense(parse_plugin(DEFENSES, {"type": kind, "key": KEY}, "defense"))
        assert d.needs_training_set
        with pytest.raises(ValueError, match="optimised on the training data"):
            d.derive(10, SR)


def test_span_mask_follows_right_and_centred_padding():
    w = torch.zeros(2, 10)
    w[0, :4] = 1
    w[1, 3:7] = 1  # centred: samples past the length
    m = span_mask(w, torch.tensor([4, 4]))
    assert m[0].tolist() == [1] * 4 + [0] * 6 and m[1].tolist() == [0] * 3 + [1] * 4 + [0] * 3


# --- poscuda-opt -----------------------------------------------------------------------------------------------------

def test_poscuda_opt_keeps_poscudas_positions_and_constraints_and_moves_the_filters():
    g = torch.Generator().manual_seed(3)
    n, classes = 40, 4
    w = 0.2 * torch.randn(n, SR, generator=g)
    y = torch.arange(n) % classes
    data = TrainingSet(w, y, torch.full((n,), SR), SR, classes, lambda: TinySurrogate(SR, classes), 0.01, 0.0, 16,
                       lambda s: None, "tiny")
    cfg = {"type": "poscuda-opt", "key": KEY, "max_rounds": 2, "snr_db": 25}
    prot = build_defense(parse_plugin(DEFENSES, cfg, "defense")).derive_from(data)
    random = build_defense(parse_plugin(DEFENSES, {"type": "poscuda", "key": KEY}, "defense")).derive(classes, SR)
    assert torch.equal(prot.positions, random.positions)
    assert prot.filters.min() >= 0 and prot.filters.max() <= 1.0
    ones = random.filters == 1.0
    assert torch.all(prot.filters[ones] == 1.0), "the one tap stays 1.0"
    others = prot.filters[~ones]
    assert others.max() <= 0.3 + 1e-6 and not torch.equal(others, random.filters[~ones])
    out = prot.apply(w, y)
    assert clip_snr(w, out).min() >= 25 - 1e-4
    outside = torch.ones(n, SR, dtype=torch.bool)
    for i, spans in enumerate(prot.patch_spans(y, SR)):
        for a, b in spans:
            outside[i, a:b] = False
    assert torch.equal(out[outside], w[outside]), "only the patches change"
    again = Protection.from_dict(json.loads(json.dumps(prot.to_dict())))
    assert torch.equal(again.apply(w, y), out) and KEY not in json.dumps(prot.to_dict())


def test_poscuda_opt_refuses_what_it_cannot_optimise():
    with pytest.raises(LabError, match="filter_norm"):
        parse_plugin(DEFENSES, {"type": "poscuda-opt", "key": KEY, "filter_norm": "sum"}, "defense")
    with pytest.raises(LabError, match="repeat_seconds"):
        parse_plugin(DEFENSES, {"type": "poscuda-opt", "key": KEY, "repeat_seconds": 1.0}, "defense")


def test_a_custom_perturbation_only_needs_the_four_methods():
    """min-min is generic: a perturbation of one scalar gain per class is optimised by the same loop."""
    class Gain(Perturbation):
        def __init__(self):
            self.g = torch.zeros(4)

        def variable(self, idx, y):
            return self.g.clone()

        def perturbed(self, var, idx, x, y, lengths):
            return x + 0.01 * var[y][:, None]

        def descend(self, var, grad, idx, y):
            return (var - grad.sign()).clamp(-3, 3)

        def store(self, var, idx, y):
            self.g = var

    data = toy_set()
    pert = Gain()
    out = min_min(data, pert, seed=0, steps=2, max_rounds=2)
    assert len(out["rounds"]) >= 1 and pert.g.abs().sum() > 0


def test_classwise_noise_span_audio_keeps_the_padding_silent_and_the_default_record_unchanged():
    x = torch.zeros(4, 100)
    x[:, :60] = 0.1 * torch.randn(4, 60, generator=torch.Generator().manual_seed(2))
    y, lengths = torch.arange(4), torch.full((4,), 60)
    base = {"type": "classwise-noise", "key": KEY, "snr_db": 20}
    inside = build_defense(parse_plugin(DEFENSES, {**base, "span": "audio"}, "defense")).derive(4, SR)
    whole = build_defense(parse_plugin(DEFENSES, base, "defense")).derive(4, SR)
    a, w = inside.apply(x, y, lengths), whole.apply(x, y, lengths)
    assert torch.all(a[:, 60:] == 0) and torch.any(w[:, 60:] != 0)
    assert torch.allclose(clip_snr(x, a), torch.full((4,), 20.0, dtype=torch.float64), atol=1e-3)
    assert "span" not in whole.to_dict()["params"] and inside.to_dict()["params"]["span"] == "audio"


def test_the_surrogate_trains_on_the_recipes_gpu_only_where_there_is_one():
    from lab.spine import surrogate_device
    assert surrogate_device("cpu") == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert surrogate_device("auto") == expected and surrogate_device("gpu") == expected
    # the record says where the surrogate trained (the min-min loop moves it there; the clips stay on the CPU)
    assert em(toy_set(), mode="class-wise", snr_db=20, max_rounds=1).optimisation["device"] == "cpu"
