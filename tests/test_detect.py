"""``lab detect``: the split keeps the probe's clips and the held-out clips apart; a blatant protection is detected
(AUC near 1) and no protection is not (AUC 0.5 within chance); a failed run leaves no folder behind."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from lab.detect import DetectOptions, null_sd, split_clips


def test_split_keeps_groups_and_sets_apart():
    groups = [f"speaker{i % 6}" for i in range(600)]
    idx = split_clips(groups, seed=3, opts=DetectOptions(reference_fraction=0.1))
    sets = [set(idx[k].tolist()) for k in ("reference", "protected", "test_clean", "test_protected")]
    assert all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1:])  # no clip twice
    probe_groups = {groups[i] for s in sets[:2] for i in s}
    test_groups = {groups[i] for s in sets[2:] for i in s}
    assert not probe_groups & test_groups and test_groups == set(idx["held_out"]) and len(test_groups) == 2
    assert len(sets[0]) == len(sets[1]) == 60 and len(sets[2]) == len(sets[3]) == 100
    assert split_clips(groups, 3, DetectOptions())["held_out"] == idx["held_out"]  # seeded
    assert any(split_clips(groups, s, DetectOptions())["held_out"] != idx["held_out"] for s in range(4, 10))


def test_null_sd_is_the_spread_of_a_score_that_tells_nothing():
    g = torch.Generator().manual_seed(0)
    from torchmetrics.functional.classification import binary_auroc
    target = torch.cat([torch.zeros(30), torch.ones(40)]).long()
    aucs = torch.tensor([float(binary_auroc(torch.rand(70, generator=g), target)) for _ in range(400)])
    assert aucs.mean() == pytest.approx(0.5, abs=0.01)
    assert aucs.std() == pytest.approx(null_sd(30, 40), rel=0.15)


def test_detect_finds_a_blatant_protection_and_not_none(fsdd_dir, tmp_path, cli):
    code, out, err = cli("detect", "recipes/fsdd_cnn.yaml", "--defenses", "none,classwise-noise",
                         "--defense-option", "classwise-noise.snr_db=10", "--set", f"data.root={fsdd_dir}",
                         "--set", "data.max_train_per_class=20", "--set", "data.max_test_per_class=1",
                         "--seeds", "0", "--out", str(tmp_path))
    assert code == 0, out + err
    (run_dir,) = (tmp_path / "fsdd_cnn").glob("detect-*")
    assert not (run_dir / "INCOMPLETE").exists() and (run_dir / "results.md").is_file()
    results = json.loads((run_dir / "results.json").read_text())
    (cell,) = results["cells"]["none"]
    assert cell["grouping"] == "speaker" and len(cell["held_out"]) == 2
    assert cell["counts"]["reference"] == cell["counts"]["protected"] == 20
    for probe in ("linear", "mlp"):
        assert results["auc"]["classwise-noise"][probe]["mean"] > 0.95
        # the negative control: its "protected" clips are clean; 3 standard deviations of chance (about 0.2 here)
        assert abs(results["auc"]["none"][probe]["mean"] - 0.5) < 3 * cell["null_sd"]
    key = yaml.safe_load(open("recipes/fsdd_cnn.yaml"))["defense"]["key"]
    assert key not in (run_dir / "results.json").read_text() + (run_dir / "results.md").read_text() + out
    assert "classwise-noise" in out and "results:" in out


def test_a_failed_detection_leaves_no_run_folder(fsdd_dir, tmp_path, cli, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("probe exploded")
    monkeypatch.setattr("lab.detect.detect_cell", broken)
    with pytest.raises(RuntimeError, match="probe exploded"):
        cli("detect", "recipes/fsdd_cnn.yaml", "--defenses", "none", "--set", f"data.root={fsdd_dir}",
            "--set", "data.max_train_per_class=4", "--seeds", "0", "--out", str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, message", [
    (["--reference-fraction", "0.7"], "reference_fraction must be in (0, 0.5)"),
    (["--features", "mfcc"], "features must be one of logmel, frontend"),
    (["--defenses", "none,blur"], "unknown defense 'blur'"),
])
def test_bad_input_is_one_line(args, message, tmp_path, cli):
    code, out, err = cli("detect", "recipes/fsdd_cnn.yaml", *args, "--set", f"data.root={tmp_path}",
                         "--out", str(tmp_path / "runs"))
    assert code == 2 and message in " ".join(err.split()), err
    assert not (tmp_path / "runs").exists()
