"""The optimised defenses through the lab's own path on the real FSDD copy: the spine hands them the clean training
clips and surrogates of the recipe's model (or another named one), lab run keeps the record and its arrays, and a
finished run's protection is re-applied exactly from them (no key needed, none written)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from lab.cli import app
from lab.recipe import load_recipe
from lab.rundir import load_run
from lab.spine import ExperimentData, surrogate_recipe

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "fsdd_cnn.yaml"
KEY = "optimised-run-key-4321"
SMALL = ["data.max_train_per_class=12", "data.max_test_per_class=4", "train.epochs=1", "seeds=[0]",
         "train.num_threads=1"]


def small(fsdd_dir, defense: str, *more: str):
    return load_recipe(RECIPE, [f"data.root={fsdd_dir}", f"defense={defense}", *SMALL, *more])


@pytest.mark.parametrize("defense", [
    f"{{type: em-noise, key: {KEY}, mode: sample-wise, max_rounds: 1, snr_db: 30}}",
    f"{{type: em-noise, key: {KEY}, mode: class-wise, max_rounds: 1, snr_db: 20}}",
    f"{{type: poscuda-opt, key: {KEY}, max_rounds: 1, snr_db: 30}}",
    f"{{type: budget, snr_db: 30, inner: {{type: em-noise, key: {KEY}, max_rounds: 1, snr_db: 25}}}}"])
def test_lab_run_keeps_an_optimised_protection_that_reapplies_exactly(fsdd_dir, tmp_path, defense):
    result = CliRunner().invoke(app, ["run", str(RECIPE), "--out", str(tmp_path), "--set", f"data.root={fsdd_dir}",
                                      "--set", f"defense={defense}", *sum((["--set", s] for s in SMALL), [])])
    assert result.exit_code == 0, result.output
    assert "min-min round 1" in result.output
    (run_dir,) = (tmp_path / "fsdd_cnn").iterdir()
    record = json.loads((run_dir / "protection.json").read_text())
    assert record["optimisation"]["rounds"] if "optimisation" in record else record["inner"]["optimisation"]
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), f"the key is in {path}"
    run = load_run(run_dir)
    fresh = ExperimentData(run.recipe, log=lambda s: None)  # the recipe's data, not re-optimised: re-applied
    again = ExperimentData.from_run(run, log=lambda s: None)
    assert torch.equal(again.protected_train.waveforms,
                       run.protection.apply(fresh.clean_train.waveforms, fresh.clean_train.labels,
                                            fresh.clean_train.lengths))
    assert not torch.equal(again.protected_train.waveforms, again.clean_train.waveforms)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["quality"]["protected_train_vs_clean"]["snr_db_worst5"] >= (20 if "20" in defense else 30) - 0.01


def test_the_spine_optimises_once_and_sample_wise_noise_leaves_the_test_set_clean(fsdd_dir):
    data = ExperimentData(small(fsdd_dir, f"{{type: em-noise, key: {KEY}, max_rounds: 1}}"), log=lambda s: None)
    prot = data.protection
    assert data.protection is prot
    assert torch.equal(data.protected_test.waveforms, data.clean_test.waveforms)
    assert len(prot.hashes) == len(data.train.labels)


def test_the_surrogate_can_be_another_model_and_features(fsdd_dir):
    said = []
    rec = small(fsdd_dir, f"{{type: em-noise, key: {KEY}, max_rounds: 1, surrogate: {{model: {{type: lstm}}, "
                          f"features: {{type: logmel}}}}}}")
    data = ExperimentData(rec, log=said.append)
    assert data.protection.optimisation["surrogate"] == "lstm on logmel"
    assert any("lstm on logmel surrogate" in s for s in said)
    sur = surrogate_recipe(rec, {"train": {"lr": 0.01}})
    assert sur.train.lr == 0.01 and sur.model == rec.model


def test_a_surrogate_section_that_is_not_allowed_is_refused(fsdd_dir):
    from lab.errors import LabError
    with pytest.raises(LabError, match="not a section a surrogate may change"):
        surrogate_recipe(small(fsdd_dir, "{type: poscuda, key: abcdefghij}"), {"data": {"sample_rate": 16000}})


def test_lab_list_shows_the_new_defenses():
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0
    for name in ("em-noise", "robust-em", "poscuda-opt", "budget"):
        assert name in result.output


def test_an_optimised_protection_is_cached_privately_and_reused(fsdd_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_PROTECTION_CACHE", "on")
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    spec = f"{{type: em-noise, key: {KEY}, mode: class-wise, max_rounds: 1}}"
    said = []
    first = ExperimentData(small(fsdd_dir, spec), log=said.append).protection
    (cached,) = (tmp_path / "cache" / "protections").glob("em-noise-*.pt")
    assert cached.stat().st_mode & 0o777 == 0o600 and (cached.parent.stat().st_mode & 0o777) == 0o700
    assert KEY.encode() not in cached.read_bytes()
    said.clear()
    # another model trained on the same protection (the transfer setting) reuses it: nothing optimised again
    again = ExperimentData(small(fsdd_dir, spec, "model={type: lstm}", "defense.surrogate={model: {type: cnn, "
                                 "head: flatten, channels: [8, 16, 32]}}"), log=said.append).protection
    assert not any("min-min round" in s for s in said)
    # (the surrogate named explicitly as the recipe's own CNN: the same optimisation, the same cache file)
    assert any("reused" in s for s in said) and torch.equal(again.patterns, first.patterns)
    # the same clips read from another place (a copy of the dataset) are the same clips: reused
    copy = tmp_path / "copy" / "fsdd"
    copy.mkdir(parents=True)
    (copy / "recordings").symlink_to(fsdd_dir / "recordings")
    said.clear()
    ExperimentData(load_recipe(RECIPE, [f"data.root={copy}", f"defense={spec}", *SMALL]), log=said.append).protection
    assert any("reused" in s for s in said)
    other = ExperimentData(small(fsdd_dir, spec.replace("max_rounds: 1", "max_rounds: 1, snr_db: 20")),
                           log=said.append).protection
    assert len(list(cached.parent.glob("*.pt"))) == 2 and not torch.equal(other.patterns, first.patterns)
    cached.write_bytes(b"damaged")
    said.clear()
    ExperimentData(small(fsdd_dir, spec), log=said.append).protection
    assert any("optimising again" in s for s in said) and any("min-min round" in s for s in said)


def test_a_changed_front_end_or_model_never_reuses_an_old_optimisation(tmp_path, monkeypatch):
    """The cache name hashes the front-end and model code the surrogates are built from (the MFCC floor changed once:
    noise optimised through the old MFCC must not come back)."""
    from defenses import build_defense
    from lab.spine import Clips, optimised_cache_path
    monkeypatch.setenv("LAB_PROTECTION_CACHE", "on")
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    recipe = load_recipe(RECIPE, [f"defense={{type: em-noise, key: {KEY}, mode: class-wise}}"])
    train = Clips(torch.zeros(4, 800), torch.arange(4) % 2, torch.full((4,), 800))
    defense = build_defense(recipe.defense)
    path = optimised_cache_path(recipe, defense, train, 2)
    assert path == optimised_cache_path(recipe, defense, train, 2)
    read_text = Path.read_text
    for changed in ("frontends/mfcc.py", "models/cnn.py"):
        def edited(self, *args, changed=changed, **kwargs):
            text = read_text(self, *args, **kwargs)
            return text + "\n# edited" if self.as_posix().endswith(changed) else text
        monkeypatch.setattr(Path, "read_text", edited)
        assert optimised_cache_path(recipe, defense, train, 2) != path, changed
        monkeypatch.setattr(Path, "read_text", read_text)


def test_an_ensemble_is_cached_by_its_members_not_by_the_model_being_trained(tmp_path, monkeypatch):
    """Two leave-one-out trainers whose ensembles are the same (the CNN and the Transformer on MFCC) share one cached
    optimisation; a third whose ensemble differs (the CNN on log-mel) does not, nor does a changed member; a defense
    with one surrogate (em-noise) is still cached by the model it trains."""
    from defenses import build_defense
    from lab.spine import Clips, optimised_cache_path
    monkeypatch.setenv("LAB_PROTECTION_CACHE", "on")
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    train = Clips(torch.zeros(4, 800), torch.arange(4) % 2, torch.full((4,), 800))
    loo = Path(__file__).resolve().parents[2] / "recipes" / "loo"

    def path(name: str | Path, *sets: str) -> Path:
        recipe = load_recipe(loo / f"{name}.yaml" if isinstance(name, str) else name, list(sets))
        return optimised_cache_path(recipe, build_defense(recipe.defense), train, 2)

    shared = path("cnn_mfcc")
    assert path("transformer_mfcc") == shared and path("lstm_mfcc") != shared and path("cnn_logmel") != shared
    changed = yaml.safe_load((loo / "transformer_mfcc.yaml").read_text())
    changed["defense"]["surrogates"][0]["model"]["channels"] = [8, 8]
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    assert path(tmp_path / "changed.yaml") != shared
    assert path("transformer_mfcc", "train.batch_size=32") != shared  # the descent's batches are the trainer's
    em = [f"defense={{type: em-noise, key: {KEY}, mode: class-wise}}"]
    assert path("cnn_mfcc", *em) != path("transformer_mfcc", *em)


def test_an_optimisation_stopped_between_rounds_goes_on_from_its_last_round(fsdd_dir, tmp_path, monkeypatch):
    """lab run / lab attack keep the loop's state beside the cache file after every round; stopped in round 2, the
    same run again resumes after round 1 (round 1 is not optimised again) and ends with the noise an uninterrupted
    run makes; the round file is gone once the result is cached."""
    import lab.spine as spine
    TINY = ("data.max_train_per_class=4", "data.max_test_per_class=1")
    monkeypatch.setenv("LAB_PROTECTION_CACHE", "on")
    spec = f"{{type: em-noise, key: {KEY}, mode: class-wise, max_rounds: 2, min_rounds: 2}}"
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "whole"))
    whole = ExperimentData(small(fsdd_dir, spec, *TINY), log=lambda s: None).protection
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    save = spine.save_private

    def stop_after_round_one(path, obj):
        save(path, obj)
        if path.name.endswith(".rounds"):
            raise KeyboardInterrupt
    monkeypatch.setattr(spine, "save_private", stop_after_round_one)
    with pytest.raises(KeyboardInterrupt):
        ExperimentData(small(fsdd_dir, spec, *TINY), log=lambda s: None).protection
    (partial,) = (tmp_path / "cache" / "protections").glob("*.rounds")
    assert partial.stat().st_mode & 0o777 == 0o600 and not list(partial.parent.glob("*.pt"))
    assert KEY.encode() not in partial.read_bytes()
    monkeypatch.setattr(spine, "save_private", save)
    said = []
    resumed = ExperimentData(small(fsdd_dir, spec, *TINY), log=said.append).protection
    assert any("after round 1 goes on" in s for s in said), said
    assert not any("round 1:" in s for s in said) and any("round 2:" in s for s in said), said
    assert torch.equal(resumed.patterns, whole.patterns)
    assert not partial.exists() and len(list(partial.parent.glob("*.pt"))) == 1
    partial.write_bytes(b"damaged")  # a checkpoint that cannot be read is started over, saying so
    next(partial.parent.glob("*.pt")).unlink()
    said.clear()
    again = ExperimentData(small(fsdd_dir, spec, *TINY), log=said.append).protection
    assert any("from the first round" in s for s in said) and torch.equal(again.patterns, whole.patterns)


def test_a_protection_cache_that_cannot_be_written_never_fails_the_run(fsdd_dir, tmp_path, monkeypatch):
    """A file where the cache's folder should be: the round checkpoints and the result are not kept, one warning
    each (not one a round), and the protection is the one an uncached run makes."""
    monkeypatch.setenv("LAB_PROTECTION_CACHE", "on")
    spec = f"{{type: em-noise, key: {KEY}, mode: class-wise, max_rounds: 2, min_rounds: 2}}"
    tiny = ("data.max_train_per_class=4", "data.max_test_per_class=1")
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "protections").write_text("not a folder")
    said = []
    prot = ExperimentData(small(fsdd_dir, spec, *tiny), log=said.append).protection
    warned = [s for s in said if "protection cache could not keep" in s]
    assert len(warned) == 2 and ".rounds" in warned[0] and ".pt" in warned[1], warned
    monkeypatch.setenv("LAB_PROTECTION_CACHE", "off")
    uncached = ExperimentData(small(fsdd_dir, spec, *tiny), log=lambda s: None).protection
    assert torch.equal(prot.patterns, uncached.patterns)
