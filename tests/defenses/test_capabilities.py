"""What each defense declares it can do (defenses/base.py), and that the lab's code acts on the declarations, not on
defense names: a defense registered here, with no lab file edited, is treated by what it declares."""
from __future__ import annotations

from typing import Literal

import pytest
import torch
from pydantic import SecretStr

from defenses import DEFENSES, Defense, Protection, build_defense
from defenses.base import other_classes
from lab.config import PluginConfig, parse_plugin
from lab.errors import LabError

SR = 8000
KEY = "capability-key-123"
BUILT_IN = ("poscuda", "cuda", "noise-patch", "classwise-noise", "none")


def derive(data: dict, num_classes: int = 10):
    return build_defense(parse_plugin(DEFENSES, data, "defense")).derive(num_classes, SR)


def batch(n=20, t=SR):
    return 0.2 * torch.randn(n, t, generator=torch.Generator().manual_seed(0)), torch.arange(n) % 10


def test_file_by_file_is_declared_by_the_defenses_that_derive_per_clip():
    flags = {name: type(derive({"type": name, **({"key": KEY} if name != "none" else {})})).file_by_file
             for name in BUILT_IN}
    assert flags == {"poscuda": True, "cuda": True, "noise-patch": True, "classwise-noise": True, "none": False}
    # what the flag promises (a clip protected alone as in a batch) is checked for every defense that sets it, as it
    # registers: tests/test_contracts.py


def test_patch_spans_say_where_the_patches_are():
    x, y = batch()
    pos = derive({"type": "poscuda", "key": KEY, "patches_per_class": 2})
    spans = pos.patch_spans(y, SR)
    starts = pos.starts(y, SR)
    assert spans == [[(s, s + pos.patch_len) for s in row] for row in starts.tolist()] and len(spans[0]) == 2
    protected = pos.apply(x, y)
    for n, row in enumerate(spans):  # only samples inside the spans change
        inside = torch.zeros(SR, dtype=torch.bool)
        for a, b in row:
            inside[a:b] = True
        assert torch.equal(protected[n][~inside], x[n][~inside]) and not torch.equal(protected[n][inside],
                                                                                      x[n][inside])
    noise = derive({"type": "noise-patch", "key": KEY, "patches_per_class": 2})
    assert noise.patch_spans(y, SR) == spans, "noise-patch uses PosCUDA's patches for the same key"
    for name in ("cuda", "classwise-noise"):
        assert derive({"type": name, "key": KEY}).patch_spans(y, SR) is None
    assert derive({"type": "none"}).patch_spans(y, SR) is None


def test_class_filters_are_the_filters_convolved_with():
    pos = derive({"type": "poscuda", "key": KEY, "patches_per_class": 2, "filter_length": 7})
    assert torch.equal(pos.class_filters(), pos.filters[:, 0]) and pos.class_filters().shape == (10, 7)
    cuda = derive({"type": "cuda", "key": KEY})
    assert torch.equal(cuda.class_filters(), cuda.filters)
    for data in ({"type": "noise-patch", "key": KEY}, {"type": "classwise-noise", "key": KEY}, {"type": "none"}):
        assert derive(data).class_filters() is None


def test_ablation_variants_default_to_clean_and_true():
    x, y = batch()
    lengths = torch.full((len(y),), SR)
    for data in ({"type": "cuda", "key": KEY}, {"type": "noise-patch", "key": KEY}, {"type": "none"}):
        prot = derive(data)
        v = prot.ablation_variants(x, y, lengths, SR, seed=0)
        assert set(v) == {"clean", "true"} and v["clean"] is x and torch.equal(v["true"], prot.apply(x, y, lengths))
    v = derive({"type": "poscuda", "key": KEY}).ablation_variants(x, y, lengths, SR, seed=0)
    assert {"mixed_positions", "mixed_filters", "filter_whole_clip"} < set(v)
    assert (other_classes(y, 10, 0) != y).all()


def built_in_baselines(names: list[str], *also: str) -> list[str]:
    """``lab attack --type all``'s baselines (``names``, in their order) that are built-in defenses (or named in
    ``also``), after checking that every one of them declares a rank and that they come by (rank, name): another
    defense that declares itself a baseline (a plugin) takes its place without changing what is checked here."""
    ranks = [(DEFENSES.get(n).matched_baseline, n) for n in names]
    assert all(r is not None for r, _ in ranks) and ranks == sorted(ranks)
    assert set(names) == {n for n in DEFENSES.names() if DEFENSES.get(n).matched_baseline is not None}
    return [n for n in names if DEFENSES.get(n).__module__.startswith("defenses.") or n in also]


def test_baselines_and_how_they_match_the_recipes_defense():
    from lab.attacking import baselines
    assert built_in_baselines(baselines()) == ["cuda", "noise-patch", "classwise-noise", "ar-noise"]
    assert [n for n in BUILT_IN if DEFENSES.get(n).takes_snr] == ["noise-patch", "classwise-noise"]
    ref = parse_plugin(DEFENSES, {"type": "poscuda", "key": KEY, "filter_length": 5, "patch_seconds": 0.2}, "defense")
    assert DEFENSES.get("none").matched_config(ref, 12.0) == {}
    assert DEFENSES.get("poscuda").matched_config(ref, 12.0) == {"key": ref.key}
    assert DEFENSES.get("cuda").matched_config(ref, 12.0) == {"key": ref.key, "filter_length": 5, "blur": 0.3,
                                                            "one_tap": True}
    noise = DEFENSES.get("noise-patch").matched_config(ref, 12.0)
    assert noise == {"key": ref.key, "patch_seconds": 0.2, "patches_per_class": 1, "position_mode": "absolute",
                     "position_range": (0.0, 0.5), "snr_db": 12.0}
    assert DEFENSES.get("classwise-noise").matched_config(ref, None) == {"key": ref.key}
    assert DEFENSES.get("classwise-noise").matched_config(ref, 12.0) == {"key": ref.key, "snr_db": 12.0}
    assert DEFENSES.get("ar-noise").takes_snr
    assert DEFENSES.get("ar-noise").matched_config(ref, 12.0) == {"key": ref.key, "snr_db": 12.0}


def test_check_fits_is_each_defenses_own():
    cfg = parse_plugin(DEFENSES, {"type": "noise-patch", "key": KEY, "patch_seconds": 0.3}, "defense")
    with pytest.raises(ValueError, match=r"defense.patch_seconds \(0.3\) is longer than data.clip_seconds \(0.25\)"):
        DEFENSES.get("noise-patch").check_fits(cfg, 0.25)
    DEFENSES.get("noise-patch").check_fits(cfg, 1.0)
    DEFENSES.get("cuda").check_fits(parse_plugin(DEFENSES, {"type": "cuda", "key": KEY}, "defense"), 0.001)


# --- a defense registered here: the core acts on what it declares ---------------------------------------------------

class _Flip(Protection):
    name = "test-flip"

    def apply(self, waveforms, labels, lengths=None, **ablation):
        return torch.where((labels % 2 == 1)[:, None], -waveforms, waveforms)

    def to_dict(self):
        return {"defense": self.name}


Protection.types.pop("test-flip")  # known only while the fixture below registers the defense

class _FlipConfig(PluginConfig):
    type: Literal["test-flip"] = "test-flip"
    key: SecretStr | None = None
    snr_db: float = 0.0
    max_seconds: float = 10.0


class _Flip_(Defense):
    """Flips the sign of odd classes; declares itself a baseline (between cuda and noise-patch) that takes an SNR,
    and fits only clips up to max_seconds."""

    Config = _FlipConfig
    matched_baseline = 1
    takes_snr = True

    @classmethod
    def matched_config(cls, reference, snr_db=None):
        return {**super().matched_config(reference, snr_db), "snr_db": snr_db or -1.0}

    @classmethod
    def check_fits(cls, config, clip_seconds):
        if clip_seconds > config.max_seconds:
            raise ValueError(f"defense.max_seconds ({config.max_seconds}) is shorter than the clips")

    def derive(self, num_classes, sample_rate):
        return _Flip()


@pytest.fixture
def flip(monkeypatch):
    monkeypatch.setitem(DEFENSES._items, "test-flip", _Flip_)
    monkeypatch.setitem(Protection.types, "test-flip", _Flip)
    return _Flip_


def test_the_core_uses_what_a_new_defense_declares(flip):
    from lab.attacking import baselines, defense_configs
    from lab.recipe import recipe_from_dict
    assert built_in_baselines(baselines(), "test-flip") == ["cuda", "test-flip", "noise-patch", "classwise-noise",
                                                            "ar-noise"]  # rank 1, then by name
    rec = recipe_from_dict({"defense": {"type": "poscuda", "key": KEY}})
    none, flipped, cuda = defense_configs(rec, ["none", "test-flip", "cuda"], snr_db=7.126)
    assert flipped.type == "test-flip" and flipped.snr_db == 7.13 and flipped.key.get_secret_value() == KEY
    assert none.type == "none" and cuda.filter_length == rec.defense.filter_length
    with pytest.raises(LabError, match=r"defense.max_seconds \(0.5\) is shorter than the clips"):
        recipe_from_dict({"defense": {"type": "test-flip", "max_seconds": 0.5}})
    assert recipe_from_dict({"defense": {"type": "test-flip", "max_seconds": 2}}).defense.type == "test-flip"
    x, y = batch()
    prot = build_defense(parse_plugin(DEFENSES, {"type": "test-flip"}, "defense")).derive(10, SR)
    assert prot.patch_spans(y, SR) is None and prot.class_filters() is None and not prot.file_by_file
    assert set(prot.ablation_variants(x, y, None, SR)) == {"clean", "true"}


def test_a_defense_without_a_key_is_not_given_one():
    """The default matched_config passes only the fields the defense's own Config has."""
    ref = parse_plugin(DEFENSES, {"type": "poscuda", "key": KEY, "key_file": None}, "defense")

    class NoKey(PluginConfig):
        type: Literal["test-nokey"] = "test-nokey"

    class NoKeyDefense(Defense):
        Config = NoKey

        def derive(self, num_classes, sample_rate):
            return _Flip()

    assert NoKeyDefense.matched_config(ref, 5.0) == {}
    assert _Flip_.matched_config(ref, 5.0) == {"key": ref.key, "snr_db": 5.0}


def test_a_recipe_without_a_defense_section_still_validates():
    """The recipe's default defense stays an unvalidated mapping (as before check_fits existed); validation must
    not trip over it."""
    from lab.recipe import recipe_from_dict
    assert recipe_from_dict({"model": {"type": "cnn"}}).model.type == "cnn"
