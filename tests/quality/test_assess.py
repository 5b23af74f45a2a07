"""The quality section of `lab run` on real FSDD clips: per-clip metrics and FAD beside the clean floor."""
from __future__ import annotations

import pytest
import torch

from lab.experiment import prepare
from lab.quality import assess, markdown_lines, real_lengths, sisnr_summary, snr_summary
from lab.recipe import load_recipe
from lab.train import fit
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "fsdd_cnn.yaml"


def test_snr_of_known_noise_and_unchanged_clips_counted():
    gen = torch.Generator().manual_seed(0)
    clean = torch.randn(10, 4000, generator=gen)
    protected = clean.clone()
    protected[:6] += 0.1 * clean[:6]                         # noise at exactly 1/10 of the signal: 20 dB
    out = snr_summary(protected, clean)
    assert out["snr_db_mean"] == pytest.approx(20.0, abs=1e-4) and out["unchanged_clips"] == 4
    scaled = sisnr_summary(2 * clean, clean)                 # a gain change costs nothing in SI-SNR
    assert scaled["si_snr_db_mean"] > 100


def test_real_lengths_stop_at_the_last_sound():
    x = torch.zeros(3, 100)
    x[0, :40] = 1
    x[1, 10] = -0.5
    assert real_lengths(x).tolist() == [40, 11, 1]


@pytest.fixture(scope="module")
def small(fsdd_dir):
    recipe = load_recipe(RECIPE, [f"data.root={fsdd_dir}", "data.max_train_per_class=30",
                                  "data.max_test_per_class=2", "train.epochs=1", "train.progress=false"])
    prep = prepare(recipe, log=lambda m: None)
    module = fit(recipe, prep.training(prep.clean_train, 0), 10, seed=0).module
    return recipe, prep, module


def test_poscuda_quality_section(small):
    recipe, prep, module = small
    q = assess(recipe, prep.clean_train, prep.protected_train, module)
    per_clip = q["protected_train_vs_clean"]
    # absolute positions can fall past a short clip's end (into padding): those clips stay unchanged, and counted
    unchanged = int((prep.protected_train.waveforms == prep.clean_train.waveforms).all(dim=1).sum())
    assert per_clip["unchanged_clips"] == unchanged < len(prep.train) // 2
    assert per_clip["snr_db_worst5"] < per_clip["snr_db_mean"] < 60
    for name in ("logmel", "classifier"):
        entry = q["fad"]["backends"][name]
        assert entry["backend"] == name and entry["dim"] > 0
        for which in ("protected_vs_clean", "protected_half_vs_clean_half", "clean_floor"):
            f = entry[which]
            assert 0 <= f["ci_low"] <= f["fad"] <= f["ci_high"]
        assert entry["protected_vs_clean"]["fad"] > 0 and entry["clean_floor"]["clips"] == [150, 150]
    top, logmel = q["fad"], q["fad"]["backends"]["logmel"]
    assert top["backend"] == "logmel" and top["value"] == logmel["protected_vs_clean"]["fad"]
    assert top["floor"] == logmel["clean_floor"]["fad"] and top["ci"][0] <= top["value"] <= top["ci"][1]
    assert top["same_size_value"] == logmel["protected_half_vs_clean_half"]["fad"]
    text = "\n".join(markdown_lines(q))
    assert "clean floor" in text and "| logmel (64-d)" in text and "SI-SNR" in text
    # perceptual metrics on every clip of this small set (at most PERCEPTUAL_CLIPS), narrow-band PESQ at 8 kHz
    perceptual = q["perceptual"]
    assert perceptual["clips_scored"] == perceptual["clips_total"] == len(prep.train)
    assert perceptual["unchanged_clips"] <= unchanged
    for name, entry in perceptual["metrics"].items():
        assert entry["n"] + entry["n_not_applicable"] == len(prep.train) and entry["n"] > 0, name
        assert entry["worst5"] <= entry["mean"] <= (4.55 if name == "pesq" else 1.0), name
    assert perceptual["metrics"]["pesq"]["mode"] == "nb" and perceptual["metrics"]["pesq"]["mean"] < 4.4
    assert "| PESQ (nb) |" in text and "| ESTOI |" in text


def test_unprotected_audio_has_zero_fad_and_no_snr_cost(small):
    recipe, prep, module = small
    q = assess(recipe, prep.clean_train, prep.clean_train, module)
    assert q["protected_train_vs_clean"]["unchanged_clips"] == len(prep.train)
    for name in ("logmel", "classifier"):
        assert q["fad"]["backends"][name]["protected_vs_clean"]["fad"] == 0.0
        assert q["fad"]["backends"][name]["clean_floor"]["fad"] > 0
    assert q["fad"]["value"] == 0.0 and q["fad"]["floor"] > 0
    metrics = q["perceptual"]["metrics"]  # every clip scored is its own original: the maximum wherever defined
    assert metrics["pesq"]["worst5"] == pytest.approx(4.549, abs=0.01)
    assert metrics["stoi"]["worst5"] == pytest.approx(1.0, abs=1e-6) and metrics["stoi"]["n_not_applicable"] > 0


def test_classifier_is_skipped_without_a_model(small):
    recipe, prep, _ = small
    q = assess(recipe, prep.clean_train, prep.protected_train, None)
    assert "skipped" in q["fad"]["backends"]["classifier"]
    assert q["fad"]["backends"]["logmel"]["protected_vs_clean"]["fad"] > 0
