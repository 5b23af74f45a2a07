"""``lab fad DIR_A DIR_B`` on real FSDD clips and on generated audio, and its one-line refusals."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tone, write

REPO = Path(__file__).resolve().parents[2]


def lab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


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
    assert proc.returncode == 2 and f"no audio files (.wav, .flac, .ogg) under {tmp_path / 'empty'}" in \
        " ".join(proc.stderr.split())
    write(tmp_path / "a" / "x.wav", tone(0.3, 8000), 8000)
    proc = lab("fad", str(tmp_path / "a"), str(tmp_path / "nope"))
    assert proc.returncode == 2 and f"no such folder: {tmp_path / 'nope'}" in " ".join(proc.stderr.split())
