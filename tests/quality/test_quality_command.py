"""``lab quality``: the quality section for a recipe and its defense variants, without training."""
from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from lab.cli import app

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "fsdd_cnn.yaml"
KEY = "quality-test-secret-31"


def test_variants_share_the_floor_and_hide_the_key(fsdd_dir, tmp_path):
    out = tmp_path / "q.json"
    result = CliRunner().invoke(app, [
        "quality", str(RECIPE), "--no-classifier", "--json", str(out), "--set", f"data.root={fsdd_dir}",
        "--set", "data.max_train_per_class=20", "--set", f"defense.key={KEY}",
        "--variant", "defense.blur=1.0;defense.filter_length=63"])
    assert result.exit_code == 0, result.output
    assert KEY not in out.read_text() and KEY not in result.output
    runs = json.loads(out.read_text())["results"]
    assert [r["variant"] for r in runs] == [[], ["defense.blur=1.0", "defense.filter_length=63"]]
    base, strong = (r["quality"]["fad"] for r in runs)
    assert base["floor"] == strong["floor"]                  # same clean data, same halves
    assert strong["value"] > base["value"]                   # a longer, stronger blur moves the audio further
    snr = [r["quality"]["protected_train_vs_clean"]["snr_db_mean"] for r in runs]
    assert snr[1] < snr[0]
    pesq = [r["quality"]["perceptual"]["metrics"]["pesq"]["mean"] for r in runs]
    assert pesq[1] < pesq[0] and "PESQ" in result.output    # and the stronger blur is heard


def test_variants_may_change_only_the_defense(tmp_path):
    result = CliRunner().invoke(app, ["quality", str(RECIPE), "--variant", "train.epochs=3"])
    assert result.exit_code != 0 and "is not a defense field" in str(result.exception)
