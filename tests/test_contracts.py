"""The plugin contracts, written once and checked for EVERY registered plugin (as timm checks every model it lists).

The tests are parametrised over the registries as they stand after discovery (the built-in packages, the entry points
of ``lab.plugins`` and ``$LAB_PLUGINS``), so a new defense, attack, model or feature front-end is checked by being
registered, and no name is kept here. A plugin that legitimately cannot do something says so through a declaration
of its own interface, and the test reads the declaration:

- a defense that ``needs_training_set`` is optimised (``derive_from``) on a few generated clips with a tiny surrogate;
- a defense whose ``example_config`` holds no key is keyless: "another key, another protection" is skipped;
- a protection that does not override ``Protection.from_dict`` cannot be rebuilt from its record: it must refuse with
  the documented one-line LabError;
- a protection marked ``file_by_file`` must protect a clip alone exactly as in a batch;
- a defense that declares itself ``additive`` takes the masking budget (``masking_margin_db``) and meets it on every
  clip;
- an attack that does not declare ``needs_clean`` must run without clean clips and without the protection (an
  outsider, ``lab audit``).

Everything runs on a few clips of generated audio (8 kHz, 0.75 s) and stays fast (CI runs it). tests/test_plugins.py
runs this file again with the example third-party plugins named in ``$LAB_PLUGINS``.
"""
from __future__ import annotations

import functools
import importlib
import json
import math
import pkgutil

import pytest
import torch

from attacks import ATTACKS, AttackContext, build_attack
from defenses import DEFENSES, Protection, build_defense
from defenses.base import TrainingSet
from lab.config import parse_plugin
from lab.errors import LabError
from lab.features import FeatureConfig, FrontEnd
from lab.frontends import FRONTENDS
from lab.models import MODELS, build_model
from lab.protect.protector import file_by_file_defenses

SR = 8000
T = 6000  # 0.75 s: the defaults of every built-in defense fit (PosCUDA's patches end by 0.6 s)
C = 4  # classes
N = 8  # clips, two of each class
KEY = "contract-key-0001"
OTHER_KEY = "contract-key-0002"

DEFENSE_NAMES = DEFENSES.names()  # (a contract that applies to some defenses only is collected for those only)
ATTACK_NAMES = ATTACKS.names()
MODEL_NAMES = MODELS.names()
FRONTEND_NAMES = FRONTENDS.names()


def clips(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """N clips (N, T) of generated audio (a tone per clip and a little noise), right-padded with zeros after their
    real length (between 0.5 and 0.75 s), labels 0..C-1 twice, and the real lengths."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(T * 2 // 3, T + 1, (N,), generator=g)
    lengths[0] = T
    t = torch.arange(T) / SR
    freq = 200 + 600 * torch.rand(N, 1, generator=g)
    x = 0.3 * torch.sin(2 * torch.pi * freq * t) + 0.02 * torch.randn(N, T, generator=g)
    x = x * (torch.arange(T)[None] < lengths[:, None])
    return x, torch.arange(N) % C, lengths


class TinySurrogate(torch.nn.Module):
    """A classifier of waveforms for the optimised defenses: log-energy of 20 frames -> linear."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(20, C)

    def forward(self, w):
        n = w.shape[1] // 20 * 20
        return self.lin(torch.log(w[:, :n].reshape(len(w), 20, -1).pow(2).mean(-1) + 1e-4) + 4)


def without_timings(obj):
    """A record without its wall-clock measurements (every entry named ``seconds``): not part of determinism."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k != "seconds"}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def as_json(record: dict) -> str:
    return json.dumps(record, sort_keys=True)


# --- defenses --------------------------------------------------------------------------------------------------------

def defense_config(name: str, key: str = KEY):
    return parse_plugin(DEFENSES, {"type": name, **DEFENSES.get(name).example_config(key)}, "defense")


def is_keyed(name: str) -> bool:
    """Whether the defense derives from a key: its example configuration depends on the key it is given."""
    cls = DEFENSES.get(name)
    return cls.example_config(KEY) != cls.example_config(OTHER_KEY)


def derived(name: str, key: str = KEY) -> tuple[Protection, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The protection of defense ``name`` with ``key``, derived anew (or optimised on the clips, where the defense
    ``needs_training_set``), and the clips it is applied to."""
    x, y, lengths = clips()
    defense = build_defense(defense_config(name, key))
    if defense.needs_training_set:
        data = TrainingSet(x.clone(), y.clone(), lengths.clone(), SR, C, TinySurrogate, lr=0.01, weight_decay=0.0,
                           batch_size=4, log=lambda s: None, description="tiny")
        prot = defense.derive_from(data)
        assert torch.equal(data.waveforms, x) and torch.equal(data.labels, y) and torch.equal(data.lengths, lengths), \
            "derive_from changed the training set it was given"
    else:
        prot = defense.derive(C, SR)
    return prot, (x, y, lengths)


@functools.lru_cache(maxsize=None)
def _derived_once(name: str, key: str) -> Protection:
    return derived(name, key)[0]


def protect(name: str, key: str = KEY) -> tuple[Protection, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`derived`, derived once per (defense, key) for the whole module (an optimisation is the slow part),
    with fresh clips."""
    return _derived_once(name, key), clips()


def applied(prot: Protection, x, y, lengths) -> torch.Tensor:
    """``prot.apply``, checked: the inputs are left as they were."""
    before = x.clone(), y.clone(), lengths.clone()
    out = prot.apply(x, y, lengths)
    assert torch.equal(x, before[0]) and torch.equal(y, before[1]) and torch.equal(lengths, before[2]), \
        "apply modified its inputs in place"
    return out


@pytest.mark.parametrize("name", DEFENSE_NAMES)
def test_defense_protects_a_copy_of_the_same_shape(name):
    prot, (x, y, lengths) = protect(name)
    out = applied(prot, x, y, lengths)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    out.add_(1.0)  # a new tensor: changing it leaves the input alone
    assert torch.equal(x, clips()[0]), "apply returned (a view of) its input"


@pytest.mark.parametrize("name", DEFENSE_NAMES)
def test_defense_is_deterministic_from_its_key(name):
    prot, (x, y, lengths) = protect(name)
    again, _ = derived(name)
    assert as_json(without_timings(again.to_dict())) == as_json(without_timings(prot.to_dict()))
    assert torch.equal(applied(again, x, y, lengths), applied(prot, x, y, lengths))
    assert prot.arrays().keys() == again.arrays().keys()
    assert all(torch.equal(a, again.arrays()[k]) for k, a in prot.arrays().items())


@pytest.mark.parametrize("name", DEFENSE_NAMES)
def test_another_key_gives_another_protection(name):
    if not is_keyed(name):
        pytest.skip(f"{name} is keyless: its example_config takes no key")
    prot, (x, y, lengths) = protect(name)
    other, _ = protect(name, OTHER_KEY)
    assert not torch.equal(applied(other, x, y, lengths), applied(prot, x, y, lengths))


@pytest.mark.parametrize("name", DEFENSE_NAMES)
def test_defense_record_is_json_without_the_key(name):
    prot, _ = protect(name)
    record = prot.to_dict()
    text = json.dumps(record)  # JSON-serialisable as it is
    assert KEY not in text and KEY not in repr(record)
    assert record["defense"] == type(prot).name and Protection.types[type(prot).name] is type(prot), \
        "Protection.from_dict finds the class by the record's 'defense'"
    assert all(isinstance(a, torch.Tensor) for a in prot.arrays().values())


@pytest.mark.parametrize("name", DEFENSE_NAMES)
def test_defense_record_round_trip(name):
    """``Protection.from_dict(to_dict(), arrays())`` applies exactly as the protection did; a protection that keeps
    the base class's ``from_dict`` declares that it cannot be rebuilt and says so in one line."""
    prot, (x, y, lengths) = protect(name)
    record = json.loads(json.dumps(prot.to_dict()))
    arrays = {k: v.clone() for k, v in prot.arrays().items()}
    if type(prot).from_dict.__func__ is Protection.from_dict.__func__:
        with pytest.raises(LabError, match=f"a {type(prot).name} protection cannot be rebuilt from its record"):
            Protection.from_dict(record, arrays)
        return
    rebuilt = Protection.from_dict(record, arrays)
    assert type(rebuilt) is type(prot)
    assert torch.equal(applied(rebuilt, x, y, lengths), applied(prot, x, y, lengths))
    assert as_json(rebuilt.to_dict()) == as_json(record)


@pytest.mark.parametrize("name", DEFENSE_NAMES)
def test_declared_capabilities_are_well_formed(name):
    prot, (x, y, lengths) = protect(name)
    variants = prot.ablation_variants(x, y, lengths, SR, seed=0)
    assert {"clean", "true"} <= set(variants) and torch.equal(variants["clean"], x)
    assert torch.equal(variants["true"], applied(prot, x, y, lengths))
    assert all(v.shape == x.shape for v in variants.values())
    spans = prot.patch_spans(y, T, lengths)
    if spans is not None:
        assert len(spans) == N and all(0 <= a < b for row in spans for a, b in row)
    filters = prot.class_filters()
    if filters is not None:
        assert filters.dim() == 2 and filters.shape[0] == C
    if not build_defense(defense_config(name)).needs_training_set:  # lab protect goes by the flag it can read
        assert (name in file_by_file_defenses()) == type(prot).file_by_file


@pytest.mark.parametrize("name", DEFENSE_NAMES)
def test_file_by_file_protects_each_clip_as_in_a_batch(name):
    """What ``file_by_file`` promises: a clip's protection does not depend on the other clips it is protected with."""
    prot, (x, y, lengths) = protect(name)
    if not type(prot).file_by_file:
        pytest.skip(f"{name}'s protection is not file_by_file")
    together = applied(prot, x, y, lengths)
    alone = torch.cat([applied(prot, x[i:i + 1], y[i:i + 1], lengths[i:i + 1]) for i in range(N)])
    assert torch.allclose(together, alone, atol=1e-6)


MASKING_TOLERANCE_DB = 0.1
"""How far over the masking budget a protected clip may measure. The shaping meets the bound exactly in float64
(lab.masking.limit_to_threshold); what a test measures is ``protected - clean`` after the protected clip was
rounded to float32 (and, for em-noise, after its noise was stored as float16), whose rounding error adds coherently
to a change that sits exactly at the bound: measured up to 0.002 dB (float32) and 0.005 dB (float16) on these
clips. 0.1 dB leaves room for that and flags any real failure of the shaping (which leaves cells decibels over)."""


@pytest.mark.parametrize("name", [n for n in DEFENSE_NAMES if DEFENSES.get(n).additive])
def test_additive_defense_meets_the_masking_budget(name):
    """A defense that declares ``additive`` takes ``masking_margin_db`` (lab.masking.MaskingBudget); configured with
    margin 0 dB on top of its example configuration (its SNR floor, where it has one, stays), every clip's change is
    at most the clean clip's masking threshold in every frame and bin, the SNR floor still holds, a file-by-file
    protection still protects a clip alone as in a batch, and the record carries the budget (and rebuilds, where the
    protection can be rebuilt, applying the same)."""
    from lab.masking import threshold_excess_db
    cls = DEFENSES.get(name)
    assert "masking_margin_db" in cls.Config.model_fields, f"{name} is additive but takes no masking budget"
    config = parse_plugin(DEFENSES, {"type": name, **cls.example_config(KEY), "masking_margin_db": 0.0}, "defense")
    x, y, lengths = clips()
    defense = build_defense(config)
    if defense.needs_training_set:
        prot = defense.derive_from(TrainingSet(x.clone(), y.clone(), lengths.clone(), SR, C, TinySurrogate, lr=0.01,
                                               weight_decay=0.0, batch_size=4, log=lambda s: None,
                                               description="tiny"))
    else:
        prot = defense.derive(C, SR)
    out = applied(prot, x, y, lengths)
    change = (out - x).double()
    assert change.abs().sum() > 0, f"{name} with the masking budget changed nothing"
    excess = threshold_excess_db(x, change, SR, 0.0)
    assert excess.max() <= MASKING_TOLERANCE_DB, excess.tolist()
    snr_db = getattr(config, "snr_db", None)
    if snr_db is not None:
        snr = 10 * torch.log10(x.double().pow(2).sum(1) / change.pow(2).sum(1))
        assert snr.min() >= snr_db - 1e-3
    if type(prot).file_by_file:  # the shaping is clip by clip: a clip alone is protected as in the batch
        alone = torch.cat([applied(prot, x[i:i + 1], y[i:i + 1], lengths[i:i + 1]) for i in range(N)])
        assert torch.allclose(alone, out, atol=1e-6)
    record = json.loads(json.dumps(prot.to_dict()))
    assert record["params"]["masking_margin_db"] == 0.0
    if type(prot).from_dict.__func__ is not Protection.from_dict.__func__:
        rebuilt = Protection.from_dict(record, {k: v.clone() for k, v in prot.arrays().items()})
        assert torch.equal(applied(rebuilt, x, y, lengths), out)


# --- attacks ---------------------------------------------------------------------------------------------------------

def tiny_module():
    """A freshly initialised LabModule (a small CNN on MFCC) that attacks can use during training."""
    from lab.module import LabModule, standardisation
    frontend = FrontEnd(FeatureConfig(type="mfcc", n_mfcc=13, n_mels=20), SR)
    x, _, _ = clips()
    feats = frontend(x)
    cfg = parse_plugin(MODELS, {"type": "cnn", "channels": [4, 8]}, "model")
    mean, std = standardisation(feats)
    return LabModule(cfg, feats.shape[1:], C, 1e-3, 0.0, False, SR, mean, std, frontend=frontend)


def run_attack(name: str, seed: int, outsider: bool = False, rng_state: int = 0) -> dict:
    """One training run under the attack, as lab.attacking.train_under_attack runs it, with the training itself
    replaced by two batches: ``start`` and ``training_set`` (before the lab seeds torch's global generator, whose
    state is therefore set to ``rng_state`` here), ``callbacks``, then, seeded with ``seed`` as lab.train.fit seeds,
    ``transform_batch`` on two batches (``per_batch``) and ``after_training`` (``ctx.finetune`` returns the model
    as it is). Checks that nothing it was given is modified in place; returns what it produced."""
    x, y, lengths = clips()
    protection = build_defense(parse_plugin(DEFENSES, {"type": "poscuda", "key": KEY}, "defense")).derive(C, SR)
    protected = protection.apply(x, y, lengths)
    frontend = FrontEnd(FeatureConfig(type="mfcc", n_mfcc=13, n_mels=20), SR)
    ctx = AttackContext(clean=None if outsider else x, protected=protected, labels=y, lengths=lengths,
                        protection=None if outsider else protection, sample_rate=SR, num_classes=C, seed=seed,
                        finetune=lambda module, waveforms, labels, epochs: module, features=frontend)
    given = [t.clone() for t in (x, protected, y, lengths)]
    attack = build_attack({"type": name})
    torch.manual_seed(rng_state)
    attack.start(ctx)
    waves, labels = attack.training_set(ctx)
    assert waves.dim() == 2 and waves.shape[1] == T and len(waves) == len(labels)
    callbacks = attack.callbacks(ctx)
    assert isinstance(callbacks, list)
    torch.manual_seed(seed)
    module = tiny_module()
    batches = []
    if attack.per_batch:
        module.train()
        for rows in torch.arange(len(labels)).split(max(1, len(labels) // 2))[:2]:
            batch, batch_labels = waves[rows].clone(), labels[rows].clone()
            out = attack.transform_batch(batch, batch_labels, module)
            assert torch.equal(batch, waves[rows]) and torch.equal(batch_labels, labels[rows]), \
                "transform_batch modified its batch in place"
            assert out.shape == batch.shape
            batches.append(out.detach().clone())
    models = attack.after_training(module, ctx)
    assert models and all(isinstance(k, str) and isinstance(m, torch.nn.Module) for k, m in models.items())
    for before, now in zip(given, (x, protected, y, lengths)):
        assert torch.equal(before, now), "the attack modified the context's tensors"
    return {"waves": waves.detach().clone(), "labels": labels.clone(), "batches": batches, "models": sorted(models),
            "record": attack.record(), "config": attack.config}


def same_record(a, b) -> bool:
    """Records equal, floats to 1e-9 relative: what an attack measures may come from LAPACK, whose least squares
    (filter-estimate's) is not bit-reproducible from one call to the next (the last digit of a cosine moves)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9,
                                                                                          abs_tol=1e-12)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_record(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same_record(p, q) for p, q in zip(a, b))
    return a == b


def same_run(a: dict, b: dict) -> bool:
    return (torch.equal(a["waves"], b["waves"]) and torch.equal(a["labels"], b["labels"])
            and len(a["batches"]) == len(b["batches"])
            and all(torch.equal(p, q) for p, q in zip(a["batches"], b["batches"]))
            and a["models"] == b["models"] and same_record(a["record"], b["record"]))


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attack_is_deterministic_given_the_seed(name):
    """The same training seed gives the same training set, batches, models and record, whatever state torch's
    global generator was left in before the run (``start`` and ``training_set`` draw from ``ctx.seed`` or their
    config, per-batch transforms may draw from the global generator, which the lab seeds before the first batch)."""
    first = run_attack(name, seed=3, rng_state=1)
    assert same_run(first, run_attack(name, seed=3, rng_state=2))


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attack_record_is_json_and_rebuilds_its_config(name):
    run = run_attack(name, seed=0)
    record = json.loads(json.dumps(run["record"]))
    assert record == run["record"] and record["type"] == name
    assert "seed" not in record, "the lab stores the training seed beside the record under 'seed'"
    # every parameter is recorded (the attack's own seed too, where it has one): the run can be repeated
    assert parse_plugin(ATTACKS, {"type": record["type"], **record["params"]}, "attack") == run["config"]


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attack_without_clean_clips_runs_as_an_outsider(name):
    if ATTACKS.get(name).needs_clean:
        pytest.skip(f"{name} declares needs_clean: lab audit refuses it")
    run_attack(name, seed=0, outsider=True)


# --- feature front-ends and models -----------------------------------------------------------------------------------

def frontend_of(name: str) -> FrontEnd:
    return FrontEnd(FeatureConfig(type=name), SR)


@pytest.mark.parametrize("name", FRONTEND_NAMES)
def test_front_end_is_deterministic_differentiable_and_per_clip(name):
    fe = frontend_of(name)
    x, _, _ = clips()
    before = x.clone()
    out = fe.compute(x)
    assert torch.equal(x, before), "the front-end modified its input"
    assert out.dim() == 3 and out.shape[0] == N and min(out.shape[1:]) >= 1 and torch.isfinite(out).all()
    if FRONTENDS.get(name).raw:  # declared: the "features" are the audio itself
        assert out.shape == (N, 1, T)
    assert torch.equal(frontend_of(name).compute(x), out)
    assert torch.allclose(fe.compute(x[:1]), out[:1], atol=1e-5), "a clip's features depend on its batch"
    w = x.clone().requires_grad_(True)
    fe.compute(w).sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


@pytest.mark.parametrize("name", FRONTEND_NAMES)
def test_front_end_features_of_a_clip_do_not_depend_on_a_louder_clip_beside_it(name):
    """The same quiet clip alone and in a batch with a clip 40 dB louder gives the same features."""
    x, _, _ = clips()
    quiet, loud = x[1:2] * 0.01, x[:1]
    fe = frontend_of(name)
    assert torch.allclose(fe.compute(quiet), fe.compute(torch.cat([quiet, loud]))[:1], atol=1e-4)


MODEL_CASES = [(m, f) for m in MODEL_NAMES for f in FRONTEND_NAMES]


@pytest.mark.parametrize("model, frontend", MODEL_CASES, ids=[f"{m}-{f}" for m, f in MODEL_CASES])
def test_model_builds_for_every_front_end_and_gives_logits(model, frontend):
    fe = frontend_of(frontend)
    feats = fe(clips()[0])
    cfg = parse_plugin(MODELS, {"type": model}, "model")

    def build():
        torch.manual_seed(0)
        return build_model(cfg, tuple(feats.shape[1:]), C, FRONTENDS.get(frontend).raw, SR)

    net = build().eval()
    logits = net(feats)
    assert logits.shape == (N, C) and torch.isfinite(logits).all()
    assert torch.equal(build().eval()(feats), logits), "the same seed must build the same model"
    assert net.embed(feats).dim() == 2
    net.train()
    torch.nn.functional.cross_entropy(net(feats), torch.arange(N) % C).backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad), "a parameter gets no gradient"


# --- the registries are not empty by accident ------------------------------------------------------------------------

@pytest.mark.parametrize("registry", [DEFENSES, ATTACKS, MODELS, FRONTENDS], ids=lambda r: r.kind)
def test_every_module_of_a_plugin_package_registers_a_plugin(registry):
    """The suite above is only as good as the registries it reads: every public module of a plugin package (``base``
    apart) registers at least one plugin, so a module that stopped registering is caught here, not skipped."""
    package = importlib.import_module(registry.package)
    modules = {f"{registry.package}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
               if not m.name.startswith("_") and m.name != "base"}
    registered = {registry.get(name).__module__ for name in registry.names()}
    assert modules and modules <= registered, sorted(modules - registered)
