"""User mistakes end in one line on stderr and exit code 2, with no traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab.models import MODELS

REPO = Path(__file__).resolve().parent.parent
R = "recipes/fsdd_cnn.yaml"


def lab(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.mark.parametrize("args, pattern", [
    (["run", "recipes/nope.yaml"], "recipe not found: recipes/nope.yaml"),
    (["run", "recipes/fsdd_cnn.yaml", "--set", "model.type=resnet"],
     "unknown model 'resnet'; valid: " + ", ".join(MODELS.names())),
    (["run", "recipes/fsdd_cnn.yaml", "--set", "train.epohcs=3"], "unknown field 'epohcs'"),
    (["run", "recipes/fsdd_cnn.yaml", "--set", "noequals"], "expected FIELD=VALUE"),
])
def test_errors_are_one_line(args, pattern, cli, monkeypatch):
    monkeypatch.chdir(REPO)
    code, _, stderr = cli(*args)  # in this process (test_h_is_help and the next ones run the real entry point)
    assert code == 2
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert pattern in " ".join(stderr.split())


@pytest.mark.parametrize("args, pattern", [
    (["run", R, "--seeds", ""], "--seeds '': expected comma-separated whole-number seeds"),
    (["run", R, "--seeds", "0,-1"], "--seeds '0,-1': expected comma-separated whole-number"),
    (["rotate", R, "--seeds", "1,1"], "--seeds '1,1': expected comma-separated whole-number seeds from 0 to "
                                      "4294967295, each once"),
    (["sweep", R, "--grid", "defense.blur=0.1", "--jobs", "0"], "--jobs 0: expected a whole number of cells"),
    (["sweep", R, "--grid", "defense.blur=0.1", "--jobs", "-1"], "--jobs -1: expected a whole number of cells"),
    (["sweep", R, "--grid", "defense.blur=0.1", "--seeds", ""], "--seeds '': expected"),
    (["sweep", R, "--grid", "defense.blur=0.1", "--seeds", "a"], "--seeds 'a': expected"),
    (["regress", R, "--update", "--calibration-seeds", "0,x"], "--calibration-seeds '0,x': expected comma-separated"),
])
def test_bad_seeds_and_jobs_fail_in_one_line_before_any_work(tmp_path, args, pattern, cli, monkeypatch):
    """Checked once, by the helper the commands share (lab.recipe.parse_seeds, check_jobs): an empty --seeds used to
    fall back on the recipe's seeds, --jobs 0 or -1 to train one cell at a time, a word in --seeds to end in a
    traceback."""
    monkeypatch.setenv("LAB_DATA_DIR", str(tmp_path))  # no data there: nothing could train
    monkeypatch.chdir(REPO)
    code, stdout, stderr = cli(*args, "--out", str(tmp_path / "runs"))
    assert code == 2, stdout + stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert pattern in " ".join(stderr.split())
    assert not (tmp_path / "runs").exists()


def test_missing_data_names_the_place_and_leaves_no_folder(tmp_path):
    from tests.forked import lab_forked  # its own process, without a second of imports
    proc = lab_forked("run", "recipes/fsdd_cnn.yaml", "--out", str(tmp_path / "runs"), "--set",
                      f"data.root={tmp_path}")
    assert proc.returncode == 2
    assert f"no FSDD clips (DIGIT_SPEAKER_TAKE.wav) in data.root={tmp_path}" in " ".join(proc.stderr.split())
    assert not (tmp_path / "runs").exists()  # nothing worth keeping: the folder it had made is removed


TRAINING_STACK = ("lightning", "torchmetrics", "scipy.signal")  # about 5 s of imports together on the lab's machines

LIST_AND_SAY_WHAT_WAS_IMPORTED = (
    "import atexit, sys\n"
    f"atexit.register(lambda: print('imported:', [m for m in {TRAINING_STACK!r} if m in sys.modules]))\n"
    "sys.argv = ['lab', 'list']\n"
    "from lab.cli import main\n"
    "main()\n")


def test_list_shows_plugins_without_importing_the_training_stack():
    """`lab list` imports every plugin module (so does every one-line error of a command that checks its plugins):
    none of them may import Lightning, torchmetrics or scipy.signal at its top (bench/bench_startup.py: `lab list`
    took 7.6 s instead of 2.4 s when the early-stop attack did)."""
    proc = subprocess.run([sys.executable, "-c", LIST_AND_SAY_WHAT_WAS_IMPORTED], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "poscuda" in proc.stdout and "transformer" in proc.stdout and "logmel" in proc.stdout
    assert "early-stop" in proc.stdout and "ar-noise" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "imported: []", proc.stdout[-300:]


@pytest.mark.parametrize("override, pattern", [
    ("train.accelerator=gpux", "train.accelerator: 'gpux' is not an accelerator (did you mean 'gpu'?); allowed here: "
                               "auto, cpu"),
    ("train.strategy=dpp", "train.strategy: 'dpp' is not a Lightning strategy (did you mean 'ddp'?); allowed here: "
                           "auto, ddp,"),
    ("train.precision=fp16", "train.precision: 'fp16' is not a Lightning precision (did you mean 'bf16'?); allowed:"),
    ("train.devices=two", "train.devices: expected 'auto', a number of devices (1, 2, ...; -1 for all GPUs) or a list "
                          "of GPU indices such as [0, 1]; got 'two'"),
])
def test_training_flags_are_checked_before_any_work(tmp_path, override, pattern, cli, monkeypatch):
    import torch
    if torch.cuda.is_available() and "accelerator" in override:
        pattern = pattern.split("allowed here")[0]  # the allowed list names this machine's GPU too
    monkeypatch.chdir(REPO)
    code, stdout, stderr = cli("run", "recipes/fsdd_cnn.yaml", "--out", str(tmp_path / "runs"), "--set", override)
    assert code == 2
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert pattern in " ".join(stderr.split())
    assert not (tmp_path / "runs").exists()  # no run folder, not even a half-made one
    assert "data:" not in stdout  # refused before the data was loaded


def test_h_is_help():
    short, long = lab("-h"), lab("--help")
    assert short.returncode == 0 and short.stdout == long.stdout and "Usage: lab" in short.stdout
    sub = lab("run", "-h")
    assert sub.returncode == 0 and "--set" in sub.stdout


def test_version():
    import lab as package
    proc = lab("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"lab {package.__version__}" == "lab 0.1.0"


def test_shell_completion():
    import os
    assert "--install-completion" in lab("--help").stdout
    # the shell named, not detected: Typer finds the shell among the parent processes, and a test run started
    # outside a shell (a detached job, a service) has none; its own tests switch detection off the same way
    named = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    script = lab("--show-completion", "bash", env=named)
    assert script.returncode == 0 and "_LAB_COMPLETE=complete_bash" in script.stdout
    env = {**os.environ, "_LAB_COMPLETE": "complete_bash", "COMP_WORDS": "lab ru", "COMP_CWORD": "1"}
    assert lab(env=env).stdout.split() == ["run"]
