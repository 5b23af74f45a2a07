"""``lab fad DIR_A DIR_B`` on real FSDD clips and on generated audio, and its one-line refusals."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab.formats import AUDIO_EXTENSIONS
from tests.conftest import tone, write
from tests.forked import lab_forked

REPO = Path(__file__).resolve().parents[2]


def lab(*args: str) -> subprocess.CompletedProcess:
    """``lab ARGS`` in its own process, forked from this one (tests/forked.py: no second of imports)."""
    return lab_forked(*args, cwd=REPO, timeout=120)


def linked(folder: Path, files: list[Path]) -> Path:
    folder.mkdir(parents=True)
    for f in files:
        (folder / f.name).symlink_to(f)
    return folder


@pytest.fixture(scope="module")
def speaker_folders(fsdd_dir, tmp_path_factory) -> dict[str, Path]:
    rec = fsdd_dir / "recordings"
    base = tmp_path_factory.mktemp("fad")
    out = {}
    for speaker in ("jackson", "theo"):
        files = sorted(rec.glob(f"*_{speaker}_*.wav"))
        out[f"{speaker}_even"] = linked(base / f"{speaker}_even", files[0:160:2])
        out[f"{speaker}_odd"] = linked(base / f"{speaker}_odd", files[1:160:2])
    return out


def test_two_folders_of_real_speech(speaker_folders, tmp_path):
    out = tmp_path / "fad.json"
    same = lab("fad", str(speaker_folders["jackson_even"]), str(speaker_folders["jackson_odd"]), "--json", str(out))
    assert same.returncode == 0, same.stderr
    result = json.loads(out.read_text())
    assert result["backend"] == "logmel" and result["clips"] == [80, 80]
    assert 0 <= result["ci_low"] <= result["fad"] <= result["ci_high"]
    other = tmp_path / "other.json"
    proc = lab("fad", str(speaker_folders["jackson_even"]), str(speaker_folders["theo_even"]), "--json", str(other),
               "--bootstrap", "50")
    assert proc.returncode == 0, proc.stderr
    assert "FAD" in proc.stdout
    # another speaker is farther than other takes of the same speaker, beyond both intervals
    assert json.loads(other.read_text())["ci_low"] > result["ci_high"]
    again = lab("fad", str(speaker_folders["jackson_even"]), str(speaker_folders["theo_even"]), "--json", str(other))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_a_folder_against_itself_is_zero(tmp_path):
    for i in range(12):
        write(tmp_path / "a" / f"{i}.wav", tone(0.4, 16000, 200 + 20 * i, seed=i), 16000)
    proc = lab("fad", str(tmp_path / "a"), str(tmp_path / "a"), "--json", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["fad"] == 0.0 and result["ci_low"] == 0.0  # the two bootstrap draws differ: ci_high > 0


@pytest.mark.parametrize("backend, pattern", [
    ("vggish", "FAD backend 'vggish' needs the frechet-audio-distance package"),
    ("pann", "FAD backend 'pann' needs the frechet-audio-distance package"),
    ("classifier", "needs a model the lab trained on clean data"),
    ("openl3", "unknown FAD backend 'openl3'"),
])
def test_backends_that_cannot_run_here_fail_in_one_line(tmp_path, backend, pattern):
    import importlib.util
    if backend in ("vggish", "pann") and importlib.util.find_spec("frechet_audio_distance") is not None:
        pytest.skip("frechet-audio-distance is installed here")
    write(tmp_path / "a" / "x.wav", tone(0.3, 8000), 8000)
    proc = lab("fad", str(tmp_path / "a"), str(tmp_path / "a"), "--backend", backend)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert pattern in " ".join(proc.stderr.split())


def test_missing_or_empty_folders_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio")
    proc = lab("fad", str(tmp_path / "empty"), str(tmp_path / "nope"))
    assert proc.returncode == 2 and f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {tmp_path / 'empty'}" in \
        " ".join(proc.stderr.split())
    write(tmp_path / "a" / "x.wav", tone(0.3, 8000), 8000)
    proc = lab("fad", str(tmp_path / "a"), str(tmp_path / "nope"))
    assert proc.returncode == 2 and f"no such folder: {tmp_path / 'nope'}" in " ".join(proc.stderr.split())


def tones(folder: Path, n: int, seconds: float = 0.3, noise: float = 0.0) -> Path:
    import numpy as np
    rng = np.random.default_rng(99)
    for i in range(n):
        clip = tone(seconds, 8000, 150 + 15 * i, seed=i)
        write(folder / ("low" if i % 2 else "high") / f"{i}.wav",
              clip + noise * rng.standard_normal(clip.shape).astype(clip.dtype), 8000)
    return folder


def test_paired_matches_files_by_relative_path(tmp_path):
    clean, noisy = tones(tmp_path / "clean", 30), tones(tmp_path / "noisy", 30, noise=0.02)
    results = {}
    for flag in ("--paired", None):
        out = tmp_path / f"{flag}.json"
        proc = lab("fad", str(clean), str(noisy), "--json", str(out), *([flag] if flag else []))
        assert proc.returncode == 0, proc.stderr
        results[flag] = json.loads(out.read_text())
    paired, unpaired = results["--paired"], results[None]
    assert paired["paired"] is True and unpaired["paired"] is False
    assert paired["fad"] == unpaired["fad"]  # the same clips: pairing changes only the resampling
    # resampling the same clips from both sets removes the between-clip spread from the interval
    assert paired["ci_high"] - paired["ci_low"] < 0.5 * (unpaired["ci_high"] - unpaired["ci_low"])


def test_paired_refuses_folders_with_other_names(tmp_path):
    clean, noisy = tones(tmp_path / "clean", 6), tones(tmp_path / "noisy", 6, noise=0.02)
    (noisy / "low" / "1.wav").rename(noisy / "low" / "one.wav")
    proc = lab("fad", str(clean), str(noisy), "--paired")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert (f"--paired: the folders do not hold the same files (1 only in {clean} (e.g. low/1.wav); 1 only in "
            f"{noisy} (e.g. low/one.wav))") in " ".join(proc.stderr.split())


def test_too_few_clips_for_the_dimension_warns(tmp_path):
    few = tones(tmp_path / "few", 40)
    proc = lab("fad", str(few), str(few), "--json", str(tmp_path / "few.json"), "--bootstrap", "20")
    assert proc.returncode == 0, proc.stderr
    warning = ("warning: few clips for 64-d embeddings: 40 and 40 clips, fewer than 2 x 64 = 128 per set (the frames "
               "of one clip are not independent: the covariance rests on too few independent clips), so FAD is "
               "biased upwards and its interval is wide")
    assert warning in " ".join(proc.stderr.split())
    assert json.loads((tmp_path / "few.json").read_text())["warnings"][0].startswith("few clips for 64-d")
    many = tones(tmp_path / "many", 128, seconds=0.15)
    proc = lab("fad", str(many), str(many), "--json", str(tmp_path / "many.json"), "--bootstrap", "0")
    assert proc.returncode == 0 and "warning" not in proc.stderr
    assert json.loads((tmp_path / "many.json").read_text())["warnings"] == []


def test_sample_size_messages_say_why():
    import numpy as np

    from lab.fad import EmbeddingSet, fad
    from lab.fad.distance import FrechetError
    rng = np.random.default_rng(0)
    small = EmbeddingSet.per_clip(rng.standard_normal((40, 32)))
    result = fad(small, EmbeddingSet.per_clip(rng.standard_normal((40, 32))), bootstrap=0)
    assert "one embedding per clip: the covariance is nearly rank-deficient" in result["warnings"][0]
    with pytest.raises(FrechetError, match=r"32 embeddings for 32 dimensions: too few for a full-rank covariance "
                                           r"\(it is rank-deficient, .*at least 2 x 32 = 64 clips"):
        fad(EmbeddingSet.per_clip(rng.standard_normal((32, 32))), small, bootstrap=0)


def test_progress_while_reading_and_embedding(tmp_path):
    import os
    folder = tones(tmp_path / "a", 12)
    proc = lab("fad", str(folder), str(folder), "--bootstrap", "10")
    assert proc.returncode == 0, proc.stderr
    for step in (f"reading A ({folder}): 12 files in", "embedding A (logmel): 12 clips in",
                 f"reading B ({folder}): 12 files in", "embedding B (logmel): 12 clips in",
                 "bootstrap: 10 resamples of clips", "bootstrap done in"):
        assert step in " ".join(proc.stdout.split()), step  # a line per step in a log or pipe
    on_terminal = subprocess.run([sys.executable, "-m", "lab", "fad", str(folder), str(folder), "--bootstrap", "0"],
                                 cwd=REPO, capture_output=True, text=True, timeout=120,
                                 env={**os.environ, "FORCE_COLOR": "1", "COLUMNS": "200"})
    assert on_terminal.returncode == 0, on_terminal.stderr
    assert "━" in on_terminal.stdout and "12/12" in on_terminal.stdout  # a progress bar on a terminal


def test_embedding_in_chunks_equals_all_at_once():
    import torch

    from lab.commands.fad import embed_in_chunks
    from lab.fad import build_backend
    model = build_backend("logmel")
    waves = 0.1 * torch.randn(10, 4000)
    lengths = torch.tensor([4000, 3000, 2500, 4000, 100, 4000, 3999, 2000, 4000, 1234])
    whole = model.embed(waves, 8000, lengths)
    chunked = embed_in_chunks(model, waves, lengths, chunk=3)
    assert chunked.n_clips == 10 and (chunked.clip == whole.clip).all()
    assert abs(chunked.frames - whole.frames).max() < 1e-9
