"""ar-noise: class-wise AR (coloured) noise from the key. Budget met clip by clip, noise only in the real audio, keyed
determinism, exact re-application from the record, no key in it, stable class processes whose spectra the noise
follows, and a real `lab run` with it."""
from __future__ import annotations

import json
import os
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from defenses import DEFENSES, Protection, build_defense
from defenses.ar_noise import ARNoiseProtection, ar_power_spectrum, pole_radius, step_up
from lab import dsp
from lab.config import parse_plugin
from lab.errors import LabError
from lab.protect import blocks, worker
from lab.protect.audiofile import decode, encode
from tests.forked import lab_forked

REPO = Path(__file__).resolve().parent.parent.parent
SR = 8000
KEY = "test-key-123456"


def derive(num_classes: int = 10, **options) -> ARNoiseProtection:
    return build_defense(parse_plugin(DEFENSES, {"type": "ar-noise", "key": KEY, **options}, "defense")).derive(
        num_classes, SR)


def batch(n=40, t=SR, seed=0):
    """Clips of different real lengths (right-padded with zeros), uneven loudness, and one silent clip."""
    gen = torch.Generator().manual_seed(seed)
    x = 0.2 * torch.randn(n, t, generator=gen) * torch.linspace(0.05, 2.0, n)[:, None]
    x[:, t // 2:] *= 0.1
    lengths = torch.randint(t // 4, t + 1, (n,), generator=gen)
    lengths[0] = t
    x[torch.arange(t)[None, :] >= lengths[:, None]] = 0.0
    x[3] = 0.0  # silent
    return x, torch.arange(n) % 10, lengths


def span_snr(clean: torch.Tensor, out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """10 log10(|x|^2 / |delta|^2) of every clip over its first ``lengths`` samples, in float64."""
    inside = torch.arange(clean.shape[1])[None, :] < lengths[:, None]
    x, d = clean.double() * inside, (out.double() - clean.double()) * inside
    return 10 * torch.log10(x.pow(2).sum(1) / d.pow(2).sum(1))


@pytest.mark.parametrize("noise", ["per-clip", "classwise"])
@pytest.mark.parametrize("snr_db", [10.0, 30.0, 45.0])
def test_every_clip_meets_the_snr_target_inside_its_real_length(snr_db, noise):
    x, y, lengths = batch()
    out = derive(snr_db=snr_db, noise=noise).apply(x, y, lengths)
    live = torch.ones(len(y), dtype=torch.bool)
    live[3] = False
    snr = span_snr(x, out, lengths)[live]
    assert (snr - snr_db).abs().max() < 0.01, (snr.min(), snr.max())
    padding = torch.arange(x.shape[1])[None, :] >= lengths[:, None]
    assert torch.equal(out[padding], x[padding]), "noise in the zero padding"
    assert torch.equal(out[3], x[3]), "a silent clip got noise"
    inside = ~padding & live[:, None]
    assert (out[inside] != x[inside]).float().mean() > 0.99, "the whole real span is perturbed"
    assert torch.equal(x, batch()[0]), "input modified in place"


def test_noise_follows_centred_audio_when_padded_on_both_sides():
    x, y, lengths = batch()
    t = x.shape[1]
    centred = torch.zeros_like(x)
    for n, m in enumerate(lengths.tolist()):  # lab.data.audio's pad: both
        b = (t - m) // 2
        centred[n, b:b + m] = x[n, :m]
    out = derive().apply(centred, y, lengths)
    for n, m in enumerate(lengths.tolist()):
        b = (t - m) // 2
        added = out[n] - centred[n]
        assert (added[:b] == 0).all() and (added[b + m:] == 0).all(), n
    before = (t - lengths) // 2
    snr = torch.stack([10 * torch.log10(centred[n].double().pow(2).sum() / (out[n] - centred[n]).double().pow(2).sum())
                       for n in range(len(y)) if n != 3])
    assert (snr - 30.0).abs().max() < 0.01
    assert before.max() > 0


def test_span_clip_also_fills_the_padding_at_the_same_snr():
    x, y, lengths = batch()
    out = derive(span="clip").apply(x, y, lengths)
    padding = torch.arange(x.shape[1])[None, :] >= lengths[:, None]
    live = torch.arange(len(y)) != 3
    assert (out[padding & live[:, None]] != 0).float().mean() > 0.99
    snr = 10 * torch.log10(x.double().pow(2).sum(1) / (out - x).double().pow(2).sum(1))
    assert (snr[live] - 30.0).abs().max() < 0.01 and torch.equal(out[3], x[3])


def test_linf_alone_and_with_snr():
    x, y, lengths = batch()
    d = (derive(snr_db=None, linf=0.004).apply(x, y, lengths) - x).double()
    peaks = d.abs().amax(1)
    assert (peaks <= 0.004 + 1e-7).all()
    assert (torch.cat([peaks[:3], peaks[4:]]) - 0.004).abs().max() < 1e-6, "linf alone: every clip peaks at linf"
    for mode in ("scale", "clip"):
        out = derive(snr_db=20.0, linf=0.004, linf_mode=mode).apply(x, y, lengths)
        delta = (out - x).double()
        assert (delta.abs() <= 0.004 + 1e-7).all(), mode
        snr = torch.cat([span_snr(x, out, lengths)[:3], span_snr(x, out, lengths)[4:]])
        assert (snr >= 20.0 - 0.01).all(), mode
        assert ((snr - 20.0).abs() < 0.01).any() and (snr > 21.0).any(), "linf binds on loud clips only"
    scaled = derive(snr_db=20.0, linf=0.004).apply(x, y, lengths) - x
    unbound = derive(snr_db=20.0).apply(x, y, lengths) - x
    cos = torch.nn.functional.cosine_similarity(scaled.double(), unbound.double(), dim=1)
    assert (torch.cat([cos[:3], cos[4:]]) > 1 - 1e-9).all(), "scale mode keeps the noise's shape"


def test_same_key_same_noise_other_key_other_noise():
    x, y, lengths = batch()
    for noise in ("per-clip", "classwise"):
        a, b = derive(noise=noise), derive(noise=noise)
        assert torch.equal(a.apply(x, y, lengths), b.apply(x, y, lengths))
        other = build_defense(parse_plugin(DEFENSES, {"type": "ar-noise", "key": "another-key-654321", "noise": noise},
                                           "defense")).derive(10, SR)
        assert other.key_fingerprint != a.key_fingerprint
        assert not np.allclose(other.coefficients, a.coefficients)
        da, do = a.apply(x, y, lengths) - x, other.apply(x, y, lengths) - x
        cos = torch.nn.functional.cosine_similarity(da.double(), do.double(), dim=1)
        assert cos[torch.arange(len(y)) != 3].abs().max() < 0.2, noise


def test_class_sequences_of_any_length_share_one_cached_sequence_per_class():
    """Files of many lengths (lab protect, classwise noise) keep one sequence per class, the longest: a shorter one
    is its start, bit for bit, whichever is drawn first."""
    prot, fresh = derive(noise="classwise"), derive(noise="classwise")
    short, long_ = prot.class_sequence(2, 1000), prot.class_sequence(2, 5000)
    assert np.array_equal(short, long_[:1000]) and np.array_equal(fresh.class_sequence(2, 1000), short)
    for n in (10, 3000, 4999, 700):
        assert np.array_equal(prot.class_sequence(2, n), long_[:n])
    assert list(prot._classwise) == [2] and len(prot._classwise[2]) == 5000


@pytest.mark.parametrize("noise", ["per-clip", "classwise"])
def test_record_round_trip_reproduces_bit_for_bit_and_holds_no_key(noise):
    x, y, lengths = batch()
    p = derive(noise=noise, snr_db=25.0, linf=0.01)
    text = json.dumps(p.to_dict())
    assert KEY not in text and p.key_fingerprint in text
    again = Protection.from_dict(json.loads(text))
    assert isinstance(again, ARNoiseProtection)
    assert torch.equal(again.apply(x, y, lengths), p.apply(x, y, lengths))
    assert torch.equal(again.apply(x, y), p.apply(x, y))
    older = json.loads(text)
    del older["params"]["span"]  # records written before the span option apply as span: audio
    assert torch.equal(Protection.from_dict(older).apply(x, y, lengths), p.apply(x, y, lengths))


def test_step_up_and_every_class_process_is_stable():
    assert np.allclose(step_up(np.array([0.5])), [1.0, 0.5])
    assert np.allclose(step_up(np.array([0.5, -0.2])), [1.0, 0.5 * (1 - 0.2), -0.2])
    for k in np.random.default_rng(0).uniform(-0.999, 0.999, (200, 12)):  # |k| < 1 alone: stable
        assert pole_radius(step_up(k)) < 1.0
    for options in ({}, {"order": 16, "reflection_max": 0.99, "pole_radius_max": 0.999}, {"order": 2}):
        p = derive(**options)
        record = p.to_dict()
        limit = options.get("pole_radius_max", 0.95)
        for c in range(p.num_classes):
            poles = np.roots(p.coefficients[c])
            assert len(poles) == record["params"]["order"]
            assert np.abs(poles).max() <= limit + 1e-9 and record["pole_radius"][c] <= limit + 1e-9
            assert (np.abs(p.reflection[c]) < record["params"]["reflection_max"]).all()
        assert record["warmup_samples"] >= np.log(1e-6) / np.log(max(record["pole_radius"]))
    assert len({tuple(a) for a in derive().coefficients.round(6).tolist()}) == 10


def class_psd(added: torch.Tensor, n_fft: int = 256) -> np.ndarray:
    """Welch estimate of the mean (unit-power) spectrum of rows of ``added``, Hann windows, half overlap."""
    d = added.double().numpy()
    d = d / np.sqrt((d ** 2).mean(axis=1, keepdims=True))
    frames = np.lib.stride_tricks.sliding_window_view(d, n_fft, axis=1)[:, ::n_fft // 2]
    return (np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=-1)) ** 2).mean(axis=(0, 1))


def test_noise_spectrum_is_the_class_ar_spectrum_and_differs_between_classes():
    gen = torch.Generator().manual_seed(1)
    x = 0.1 * torch.randn(200, SR, generator=gen)
    y = torch.arange(200) % 10
    p = derive()
    added = p.apply(x, y) - x
    n_fft = 256
    est = np.log(np.stack([class_psd(added[y == c], n_fft) for c in range(10)]))[:, 2:-2]
    theory = np.log(np.stack([ar_power_spectrum(a, n_fft) for a in p.coefficients]))[:, 2:-2]
    corr = np.corrcoef(est, theory)[:10, 10:]  # corr[i, j]: class i's noise against class j's process
    assert (np.diag(corr) > 0.97).all(), np.diag(corr)
    assert (corr.argmax(axis=1) == np.arange(10)).all(), "each class's noise matches its own process best"
    spread = est - est.mean(axis=1, keepdims=True)
    gaps = [np.abs(spread[i] - spread[j]).mean() for i in range(10) for j in range(i)]
    assert min(gaps) > 0.5, "every two classes' spectra differ by over 2.2 dB (0.5 in natural log) on average"


def test_per_clip_draws_differ_within_a_class_and_do_not_depend_on_the_batch():
    x, y, lengths = batch()
    p = derive()
    out = p.apply(x, y, lengths)
    added = (out - x).double()
    cos = torch.nn.functional.cosine_similarity
    assert abs(cos(added[0], added[10], dim=0)) < 0.2, "two clips of class 0 got the same draw"
    for n in (0, 7, 21):
        assert torch.equal(p.apply(x[n:n + 1], y[n:n + 1], lengths[n:n + 1]), out[n:n + 1]), n
    shuffled = torch.randperm(len(y), generator=torch.Generator().manual_seed(2))
    assert torch.equal(p.apply(x[shuffled], y[shuffled], lengths[shuffled]), out[shuffled])
    fixed = derive(noise="classwise").apply(x, y) - x
    assert cos(fixed[0].double(), fixed[10].double(), dim=0) > 1 - 1e-9, "classwise: one sequence per class"
    assert abs(cos(fixed[0].double(), fixed[1].double(), dim=0)) < 0.2
    assert torch.equal(p.apply(x, y, lengths, filter_classes=(y + 1) % 10), p.apply(x, (y + 1) % 10, lengths))


@pytest.mark.parametrize("noise", ["per-clip", "classwise"])
def test_a_long_file_streams_without_an_array_as_long_as_the_file(noise, tmp_path, monkeypatch):
    """lab protect's block path (lab/protect/blocks.py) on a 2^18-frame stereo file in blocks of 2048 frames: the
    arrays numpy allocates (traced by tracemalloc; the noise, its innovation and the sums are numpy's) stay far below
    one float64 copy of the file, while apply on the whole file needs several; the bytes are the same."""
    monkeypatch.setattr(dsp, "ENERGY_CHUNK", 1024)
    frames, channels = 1 << 18, 2
    src, dst = tmp_path / "long.wav", tmp_path / "out.wav"
    sf.write(src, 0.3 * np.random.default_rng(0).standard_normal((frames, channels)), SR, subtype="PCM_16")
    prot = derive(noise=noise)
    with open(src, "rb") as f, open(dst, "wb+") as out:
        like, n, ch = blocks.header(f)
        tracemalloc.start()
        blocks.stream_protect(prot, prot.block_plan(3, n, ch), f, like, 3, out, block=2048)
        streamed = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    dec = decode(src.read_bytes())
    tracemalloc.start()
    whole = worker.protect_samples(prot, dec.data, 3)
    at_once = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    one_copy = frames * channels * 8
    assert streamed < one_copy / 8 and at_once > 2 * one_copy, (streamed, at_once, one_copy)
    assert dst.read_bytes() == encode(whole, dec)[0]


@pytest.mark.parametrize("options, message", [
    ({"snr_db": None}, "give a budget: snr_db, linf, or both"),
    ({"reflection_max": 1.0}, "reflection_max"),
    ({"order": 0}, "order"),
    ({"linf": -0.1}, "linf"),
    ({"noise": "white"}, "noise"),
    ({"snr": 30}, "unknown field 'snr' (did you mean 'snr_db'?)"),
])
def test_bad_parameters_fail_in_one_line(options, message):
    with pytest.raises(LabError) as err:
        parse_plugin(DEFENSES, {"type": "ar-noise", "key": KEY, **options}, "defense")
    assert message in str(err.value) and "\n" not in str(err.value)


def lab(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``lab ARGS`` in its own process, forked from this one (tests/forked.py: no second of imports)."""
    return lab_forked(*args, env={**os.environ, **(env or {})}, cwd=REPO, timeout=600)


def test_lab_list_shows_ar_noise():
    proc = lab("list")
    assert proc.returncode == 0, proc.stderr
    assert "ar-noise" in proc.stdout


def test_lab_run_with_ar_noise_writes_results_and_lab_ablate_reproduces_them(fsdd_dir, tmp_path):
    secret = "ar-run-test-secret-key-31"
    proc = lab("run", "recipes/fsdd_cnn.yaml", "--seeds", "0", "--out", str(tmp_path),
               "--set", f"data.root={fsdd_dir}", "--set", f"defense={{type: ar-noise, key: {secret}, snr_db: 30}}",
               "--set", "data.max_train_per_class=10", "--set", "data.max_test_per_class=5",
               "--set", "train.epochs=1", "--set", "train.num_threads=1", "--set", "train.progress=false",
               env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir, = (tmp_path / "fsdd_cnn").iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["defense"] == "ar-noise" and results["data"]["train_clips"] == 100
    assert set(results["ablation"]) == {"clean", "true"}, "no positions: clean and true only"
    assert 0.0 <= results["accuracy"]["protected_model/clean_test"]["mean"] <= 1.0
    assert results["quality"]["protected_train_vs_clean"]["snr_db_worst5"] == pytest.approx(30.0, abs=0.01)
    record = json.loads((run_dir / "protection.json").read_text())
    assert record["defense"] == "ar-noise" and record["key_fingerprint"] == results["key_fingerprint"]
    for path in run_dir.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md", ".yaml", ".csv"):
            assert secret not in path.read_text(), path
    proc = lab("ablate", str(run_dir), env={"OMP_NUM_THREADS": "1"})  # the protection rebuilt from its record
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(next(run_dir.glob("ablation-*.json")).read_text())["ablation"]
    for name, row in results["ablation"].items():
        for which in ("protected_model", "clean_model"):
            assert again[name][which]["values"] == pytest.approx(row[which]["values"], abs=1e-6), (name, which)
