"""PESQ, STOI and ESTOI in the quality sections: known answers on generated speech-like audio (identical clips score
the maximum, heavy noise much lower), clips a metric does not apply to counted and never averaged, the seeded
subset, and the sections of `lab fad --paired` and `lab report`."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lab.quality import (PESQ_NOT_APPLICABLE, STOI_NOT_APPLICABLE, markdown_lines, metric_summary, perceptual,
                         perceptual_metrics, pick_clips, scoring_rate)
from tests.conftest import write

PESQ_MAX = {"nb": 4.549, "wb": 4.644}  # P.862.1 / P.862.2 mapping of a perfect score


def speechlike(seconds: float, sr: int, seed: int = 0) -> torch.Tensor:
    """A voiced, syllable-like signal: 19 harmonics of a gliding 110-170 Hz pitch under a 2.5 Hz on/off envelope."""
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(140 + 30 * np.sin(2 * np.pi * 1.3 * t)) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 20)) * np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 0.5
    return torch.from_numpy(0.3 * voiced + 0.001 * np.random.default_rng(seed).standard_normal(t.shape)).float()


def noisy(x: torch.Tensor, snr_db: float, seed: int = 1) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return x + noise * (x.pow(2).mean() / noise.pow(2).mean() / 10 ** (snr_db / 10)).sqrt()


@pytest.mark.parametrize("sr,mode", [(8000, "nb"), (16000, "wb"), (22050, "wb")])
def test_identical_clips_score_the_maximum(sr, mode):
    clean = torch.stack([speechlike(1.5, sr, seed) for seed in (0, 1)])
    section = perceptual(clean.clone(), clean, sr)
    assert section["sample_rate"] == scoring_rate(sr)[0] and section["unchanged_clips"] == 2
    m = section["metrics"]
    assert m["pesq"]["mode"] == mode and m["pesq"]["n"] == 2 and m["pesq"]["n_not_applicable"] == 0
    assert m["pesq"]["mean"] == pytest.approx(PESQ_MAX[mode], abs=0.01)
    for name in ("stoi", "estoi"):
        assert m[name]["n"] == 2 and m[name]["mean"] == pytest.approx(1.0, abs=1e-6)


def test_heavy_noise_scores_much_lower_than_light_noise():
    clean = speechlike(1.5, 8000)[None]
    scores = {snr: perceptual(noisy(clean, snr), clean, 8000)["metrics"] for snr in (20, 0)}
    for name in ("pesq", "stoi", "estoi"):
        assert scores[0][name]["mean"] < scores[20][name]["mean"], name
    assert scores[20]["pesq"]["mean"] < PESQ_MAX["nb"] - 1       # 20 dB of white noise is clearly audible
    assert scores[0]["pesq"]["mean"] < 2.0 and scores[0]["stoi"]["mean"] < 0.8 and scores[0]["estoi"]["mean"] < 0.5


def test_clips_a_metric_does_not_apply_to_are_counted_not_averaged():
    sr = 8000
    long_clip, mid_clip, short_clip = speechlike(1.5, sr, 0), speechlike(1.5, sr, 1), speechlike(1.5, sr, 2)
    mid_clip[int(0.3 * sr):] = 0     # 0.3 s: long enough for PESQ (0.25 s), too short for STOI (~0.4 s of speech)
    short_clip[int(0.2 * sr):] = 0   # 0.2 s: too short for both (the zeros after it are padding)
    clean = torch.stack([long_clip, mid_clip, short_clip, torch.zeros_like(long_clip)])  # and a silent clip
    protected = clean.clone()
    protected[0] = noisy(clean[0], 0)
    m = perceptual(protected, clean, sr)["metrics"]
    alone = perceptual(protected[:1], clean[:1], sr)["metrics"]
    for name in ("stoi", "estoi"):
        assert (m[name]["n"], m[name]["n_not_applicable"]) == (1, 3)
        assert m[name]["not_applicable"] == {STOI_NOT_APPLICABLE: 2, "silent clean clip": 1}
        assert m[name]["mean"] == pytest.approx(alone[name]["mean"])  # only the long clip's score
    assert (m["pesq"]["n"], m["pesq"]["n_not_applicable"]) == (2, 2)
    assert m["pesq"]["not_applicable"] == {PESQ_NOT_APPLICABLE[-6]: 1, "silent clean clip": 1}
    assert m["pesq"]["mean"] == pytest.approx((alone["pesq"]["mean"] + PESQ_MAX["nb"]) / 2, abs=0.01)
    empty = metric_summary([1e-5], [STOI_NOT_APPLICABLE])
    assert empty["mean"] is None and empty["worst5"] is None and empty["n_not_applicable"] == 1


def test_worst5_is_the_5th_percentile_of_the_applicable_clips():
    values = list(range(1, 21)) + [-6.0]
    out = metric_summary(values, [None] * 20 + ["shorter than PESQ's 0.25 s"])
    assert out["mean"] == pytest.approx(10.5) and out["worst5"] == pytest.approx(1.95)
    assert (out["n"], out["n_not_applicable"]) == (20, 1)


def test_the_subset_is_seeded_and_recorded():
    assert pick_clips(300, 500).tolist() == list(range(300))           # small sets: every clip
    a, b, c = pick_clips(2700, 500, 0), pick_clips(2700, 500, 0), pick_clips(2700, 500, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(a.unique()) == 500 and torch.equal(a, a.sort().values)
    clean = torch.stack([speechlike(0.6, 8000, seed) for seed in range(3)])
    section = perceptual(clean, clean, 8000, clips=2, seed=3)
    assert (section["clips_scored"], section["clips_total"], section["max_clips"], section["seed"]) == (2, 3, 2, 3)
    assert "seed 3" in section["selection"] and section["metrics"]["pesq"]["n"] == 2
    text = "\n".join(markdown_lines({"protected_train_vs_clean": {"snr_db_mean": 1.0, "snr_db_worst5": 0.0},
                                     "perceptual": section}))
    assert "| PESQ (nb) | 4.549 |" in text and "2 of 3 clips, drawn with seed 3" in text


def test_paired_fad_scores_each_pair(cli, tmp_path):
    for i in range(4):
        clean = speechlike(1.0 if i else 0.2, 8000, i)   # pair 0 is too short for PESQ and STOI
        write(tmp_path / "a" / f"{i}.wav", clean.numpy(), 8000)
        write(tmp_path / "b" / f"{i}.wav", (clean if i < 2 else noisy(clean, 0, i)).numpy(), 8000)  # 2, 3 noisy
    code, out, err = cli("fad", str(tmp_path / "a"), str(tmp_path / "b"), "--paired", "--bootstrap", "0",
                         "--json", str(tmp_path / "paired.json"))
    assert code == 0, err
    section = json.loads((tmp_path / "paired.json").read_text())["perceptual"]
    assert (section["clips_scored"], section["sample_rate"], section["unchanged_clips"]) == (4, 8000, 2)
    pesq = section["metrics"]["pesq"]
    assert (pesq["mode"], pesq["n"], pesq["n_not_applicable"]) == ("nb", 3, 1)
    assert 1 < pesq["worst5"] < 2 < pesq["mean"] < PESQ_MAX["nb"] - 1  # one perfect pair, two at 0 dB SNR
    assert section["metrics"]["stoi"]["n"] + section["metrics"]["stoi"]["n_not_applicable"] == 4
    assert "PESQ (nb)" in out and "all 4 pairs" in out
    code, out, err = cli("fad", str(tmp_path / "a"), str(tmp_path / "b"), "--paired", "--bootstrap", "0",
                         "--no-perceptual", "--json", str(tmp_path / "plain.json"))
    assert code == 0, err
    assert "perceptual" not in json.loads((tmp_path / "plain.json").read_text()) and "PESQ" not in out


def test_report_tables_carry_the_perceptual_columns(tmp_path):
    from lab.report import Group, csv_tables, tables, write as write_report
    new = {"perceptual": {"metrics": {
        "pesq": {"mean": 3.5, "worst5": 2.6, "n": 461, "n_not_applicable": 39, "mode": "nb"},
        "stoi": {"mean": 0.92, "worst5": 0.83, "n": 240, "n_not_applicable": 260},
        "estoi": {"mean": 0.88, "worst5": 0.77, "n": 240, "n_not_applicable": 260}}}}
    # a section written before ESTOI, and one from a machine without the packages
    old = {"perceptual": {"stoi": {"stoi_mean": 0.93, "stoi_worst5": 0.84, "clips": 98, "too_short_clips": 102},
                          "pesq": {"pesq_mean": 3.51, "pesq_worst5": 2.63, "mode": "nb", "clips": 186,
                                   "failed_clips": 14}}}
    missing = {"perceptual": {"stoi": {"missing": "pip install pystoi"}, "pesq": {"missing": "pip install pesq"}}}
    assert perceptual_metrics(old)["pesq"] == {"mean": 3.51, "worst5": 2.63, "n": 186, "n_not_applicable": 14,
                                               "mode": "nb"}
    groups = [Group(name, {}, quality=[q]) for name, q in (("new", new), ("old", old), ("missing", missing))]
    head, rows = tables(groups)["quality"]
    assert head[:4] == ["run", "SNR dB (mean)", "PESQ", "STOI"] and head[4] == "ESTOI"
    assert rows[0][2] == "3.50 / 2.60 (nb, 461 clips, 39 n/a)" and rows[1][4] == "–" and rows[2][2] == "–"
    write_report(groups, tmp_path)
    table = list(csv.DictReader((tmp_path / "quality.csv").open()))
    assert [float(table[0][f"PESQ {c}"]) for c in ("mean", "worst5", "n", "n_not_applicable")] == [3.5, 2.6, 461, 39]
    assert table[0]["PESQ mode"] == "nb" and float(table[1]["STOI n_not_applicable"]) == 102
    assert table[1]["ESTOI mean"] == "" and table[2]["PESQ mean"] == ""
    assert "| 3.50 / 2.60 (nb, 461 clips, 39 n/a) |" in (tmp_path / "report.md").read_text()
