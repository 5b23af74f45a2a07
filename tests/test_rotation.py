"""Key rotation (`lab rotate`): the two releases, the differencing attack, and a short real run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from defenses import build_defense
from defenses.poscuda import PosCUDAConfig
from lab.cli import app
from lab.errors import LabError
from lab.recipe import load_recipe
from lab import rotation as R

REPO = Path(__file__).resolve().parent.parent
KEY = "rotation-test-secret-key-41"


def test_halves_split_every_class_in_two_disjoint_halves():
    labels = torch.arange(101) % 10
    a, b = R.halves(labels, seed=3)
    assert set(a.tolist()).isdisjoint(b.tolist())
    assert sorted(a.tolist() + b.tolist()) == list(range(101))
    for c in range(10):
        na, nb = int((labels[a] == c).sum()), int((labels[b] == c).sum())
        assert na - nb in (0, 1)
    again = R.halves(labels, seed=3)
    assert torch.equal(again[0], a) and not torch.equal(R.halves(labels, seed=4)[0], a)


def test_second_key_is_reproducible_and_another_key():
    second = R.derived_second_key(KEY)
    assert second == R.derived_second_key(KEY) and second != KEY and KEY not in second
    assert R.derived_second_key(KEY + "x") != second


def _poscuda(key: str, sr: int):
    cfg = PosCUDAConfig(key=key, patch_seconds=0.1, position_range=(0.0, 0.8))
    return build_defense(cfg).derive(10, sr)


def test_differencing_rebuilds_clips_whose_patches_do_not_overlap_exactly():
    sr, n = 8000, 40
    gen = torch.Generator().manual_seed(0)
    clean = 0.2 * torch.randn(n, sr, generator=gen)  # rough (white) audio: a blurred patch is smoother than it
    labels = torch.arange(n) % 10
    lengths = torch.full((n,), sr)
    pa, pb = _poscuda(KEY, sr), _poscuda(R.derived_second_key(KEY), sr)
    a, b = pa.apply(clean, labels, lengths), pb.apply(clean, labels, lengths)
    rebuilt, differ = R.rebuild(a, b, window=400)
    ma, mb = R._patch_mask(pa, labels, sr, lengths), R._patch_mask(pb, labels, sr, lengths)
    overlap = (ma & mb).any(dim=1)
    assert (~overlap).any(), "the two keys should leave some classes' patches apart"
    # where the versions agree nothing was changed; every changed sample is flagged
    assert torch.equal(differ, (a != clean) | (b != clean))
    assert torch.equal(rebuilt[~overlap], clean[~overlap])
    assert not torch.equal(a[~overlap], clean[~overlap])  # the protection itself did change them
    stats = R.differencing_stats(R.Clips(clean, labels, lengths), a, b, rebuilt, differ, pa, pb)
    assert stats["patched_samples_flagged"] == 1.0 and stats["flagged_samples_in_patches"] == 1.0
    assert stats["clips_rebuilt_exactly"] == pytest.approx(float((~overlap).double().mean()))
    assert stats["pooled_snr_db_rebuilt"] > stats["pooled_snr_db_key_a"]
    assert stats["clip_snr_db_rebuilt_not_exact"] > stats["clip_snr_db_key_a"]


def test_rebuild_keeps_the_rougher_version_of_each_window():
    a = torch.tensor([[0.0, 1.0, -1.0, 1.0, -1.0, 0.5, 0.5, 0.5, 0.5, 0.0]])
    b = torch.tensor([[0.0, 0.5, 0.5, 0.5, 0.5, 1.0, -1.0, 1.0, -1.0, 0.0]])
    rebuilt, differ = R.rebuild(a, b, window=4, min_gap=0)
    assert differ[0].tolist() == [False] + [True] * 8 + [False]
    assert rebuilt[0].tolist() == [0.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 0.0]
    with pytest.raises(LabError, match="window"):
        R.rebuild(a, b, window=1)


@pytest.mark.parametrize("defense, why", [("none", "no key"), ("em-noise", "optimised on the whole training set")])
def test_refuses_defenses_that_cannot_be_released_under_two_keys(defense, why):
    overrides = [f"defense={json.dumps({'type': defense, **({'key': KEY} if defense != 'none' else {})})}"]
    rec = load_recipe(REPO / "recipes" / "fsdd_cnn.yaml", overrides)
    with pytest.raises(LabError, match=why):
        R.check_rotatable(rec)


def test_lab_rotate_short_real_run(fsdd_dir, tmp_path):
    second = tmp_path / "second.key"
    second.write_text("another-rotation-key-93\n")
    result = CliRunner().invoke(app, [
        "rotate", str(REPO / "recipes" / "fsdd_cnn.yaml"), "--seeds", "0", "--out", str(tmp_path / "runs"),
        "--second-key-file", str(second), "--scenarios", "one-key,twice,twice-rebuilt",
        "--set", f"data.root={fsdd_dir}", "--set", "train.epochs=2", "--set", "data.max_train_per_class=20",
        "--set", "data.max_test_per_class=10", "--set", f"defense.key={KEY}", "--set", "train.progress=false"])
    assert result.exit_code == 0, result.output
    (run_dir,) = list((tmp_path / "runs" / "fsdd_cnn").iterdir())
    assert not (run_dir / "INCOMPLETE").exists()
    text = (run_dir / "results.json").read_text()
    results = json.loads(text)
    assert results["scenarios"] == ["one-key", "twice", "twice-rebuilt"]
    for s in results["scenarios"]:
        for t in R.TEST_SETS:
            assert len(results["per_seed"][s][t]) == 1 and 0.0 <= results["accuracy"][s][t]["mean"] <= 1.0
    assert results["second_key"] == "given" and results["key_fingerprints"]["a"] != results["key_fingerprints"]["b"]
    diff = results["differencing"]
    assert diff["clips"] == 200 and diff["patched_samples_flagged"] == 1.0
    for secret in (KEY, "another-rotation-key-93"):
        for f in run_dir.iterdir():
            assert secret not in f.read_text(), f
        assert secret not in result.output


def test_lab_rotate_names_a_bad_scenario(tmp_path):
    result = CliRunner().invoke(app, ["rotate", str(REPO / "recipes" / "fsdd_cnn.yaml"), "--scenarios", "thrice",
                                      "--out", str(tmp_path)])
    assert isinstance(result.exception, LabError)  # `lab` prints it as one line and exits 2
    assert "thrice" in str(result.exception) and "one-key" in str(result.exception)
    assert not (tmp_path / "fsdd_cnn").exists()
