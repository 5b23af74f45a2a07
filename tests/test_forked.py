"""tests/forked.py runs `lab` in a forked child as a subprocess would run it: the same exit code, stdout and stderr,
and nothing of the child's changes left in the test's process."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from tests.forked import REPO, lab_forked


def real(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=300)


def test_a_forked_command_says_what_a_subprocess_says(tmp_path):
    env = {**os.environ, "LAB_DATA_DIR": str(tmp_path)}  # no data there
    stamp = re.compile(r"\d{8}-\d{6}")  # a run folder's name: the second it was made
    for args in (["fad", str(tmp_path / "missing"), str(tmp_path)],  # a one-line error, exit 2
                 ["run", "recipes/fsdd_cnn.yaml", "--out", str(tmp_path / "o"), "--set",
                  f"data.root={tmp_path}"],  # no clips there: fails at the data, exit 2
                 ["list"]):
        forked, proc = lab_forked(*args, env=env, cwd=REPO), real(*args, env=env, cwd=REPO)
        said = [(p.returncode, stamp.sub("<time>", p.stdout), stamp.sub("<time>", p.stderr)) for p in (forked, proc)]
        assert said[0] == said[1], args
    assert forked.returncode == 0 and "poscuda" in forked.stdout
    assert not (tmp_path / "o").exists()


def test_what_the_command_changes_stays_in_the_child(fsdd_dir, tmp_path):
    """A tiny run that trains (it sets torch's threads and seeds its generators) from another working directory and
    with its own environment: none of it is left in this process."""
    torch.set_num_threads(1)
    before = (os.getcwd(), dict(os.environ), torch.get_num_threads(), torch.random.get_rng_state().clone())
    env = {"PATH": os.environ.get("PATH", ""), "ONLY_IN_THE_CHILD": "1", "OMP_NUM_THREADS": "1",
           "LAB_PROTECTION_CACHE": "off"}
    proc = lab_forked("run", str(REPO / "recipes" / "fsdd_cnn.yaml"), "--seeds", "0", "--out", str(tmp_path),
                      "--set", f"data.root={fsdd_dir}", "--set", "data.max_train_per_class=2", "--set",
                      "data.max_test_per_class=1", "--set", "train.epochs=1", "--set", "train.num_threads=2",
                      "--set", "train.progress=false", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trained protected model" in proc.stdout and list(tmp_path.rglob("results.json"))
    after = (os.getcwd(), dict(os.environ), torch.get_num_threads(), torch.random.get_rng_state())
    assert after[:3] == before[:3] and torch.equal(after[3], before[3])
    assert "ONLY_IN_THE_CHILD" not in os.environ
