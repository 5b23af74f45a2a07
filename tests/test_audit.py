"""``lab audit``: a real run on a small folder published with ``lab protect`` (FSDD, 3 digits), the verdict rule,
what a failed audit leaves, and the one-line refusals of bad input."""
from __future__ import annotations

import inspect
import json
import math
import re
import shutil
from pathlib import Path

import pytest

import lab
from lab.errors import LabError
from lab.formats import AUDIO_EXTENSIONS
from tests.conftest import tone, write

DIGITS = ("0", "1", "2")
QUICK = ["--models", "cnn", "--seeds", "0", "--epochs", "1", "--set", "train.num_threads=1",
         "--set", "train.progress=false"]


@pytest.fixture(scope="module")
def folders(fsdd_dir, tmp_path_factory) -> dict[str, Path]:
    """A clean training folder (3 digits x 20 clips of takes >= 5), its copy protected with lab protect (PosCUDA,
    a fresh key), and a clean test folder (3 digits x 4 clips of takes < 5), each ROOT/<digit>/*.wav."""
    root = tmp_path_factory.mktemp("audit")
    recordings = sorted((fsdd_dir / "recordings").glob("*.wav"))
    for digit in DIGITS:
        mine = [p for p in recordings if p.name.startswith(f"{digit}_")]
        train = [p for p in mine if int(p.stem.split("_")[2]) >= 5][:20]
        test = [p for p in mine if int(p.stem.split("_")[2]) < 5][:4]
        for folder, files in (("clean", train), ("test", test)):
            (root / folder / digit).mkdir(parents=True)
            for p in files:
                shutil.copy(p, root / folder / digit / p.name)
    lab.new_key_file(root / "owner.key")
    lab.protect_collection(root / "clean", root / "published", key_file=root / "owner.key", workers=0)
    return {"clean": root / "clean", "published": root / "published", "test": root / "test", "root": root}


def test_quick_real_audit_prints_the_table_and_verdict_and_writes_the_rows(folders, tmp_path, cli):
    out = tmp_path / "runs"
    code, stdout, stderr = cli("audit", str(folders["published"]), "--test",
                                   str(folders["test"]), "--reference", str(folders["clean"]), "--out", str(out),
                                   *QUICK)
    assert code == 0, stdout + stderr
    for attack in ("no attack", "augment", "codec"):
        assert re.search(rf"│ cnn\s+│ {attack}\s+│\s+\d\.\d{{3}} │ 1 │\s+\d\.\d{{3}} │ 1 │", stdout), stdout
    assert "published: clean-test accuracy" in stdout and "clean copy: clean-test accuracy" in stdout
    verdict = re.search(r"^(learnable|unlearnable|inconclusive): .*$", stdout, re.M)
    assert verdict, stdout
    (run_dir,) = (out / "audit").iterdir()
    assert run_dir.name.startswith("published-")
    results = json.loads((run_dir / "results.json").read_text())
    assert not (run_dir / "INCOMPLETE").exists() and (run_dir / "results.md").is_file()
    assert [(r["model"], r["attack"]) for r in results["rows"]] == [("cnn", "no attack"), ("cnn", "augment"),
                                                                    ("cnn", "codec")]
    for row in results["rows"]:
        for role in ("published", "reference"):
            assert row[role]["seeds"] == [0] and len(row[role]["values"]) == 1 and row[role]["n"] == 1
            assert 0.0 <= row[role]["mean"] <= 1.0
    assert results["seeds"] == [0] and results["attacks"] == ["augment", "codec"] and results["epochs"] == 1
    assert results["data"]["published_clips"] == 60 and results["data"]["test_clips"] == 12
    assert results["data"]["ignored_files"]["published"] == 1  # manifest.jsonl
    assert results["data"]["published_identical_to_clean_copy"] == 0 and "warning" not in stderr
    assert results["manifest"]["key_fingerprint"] and results["manifest"]["files"] == 60
    assert results["provenance"]["git"]["commit"] and results["provenance"]["versions"]["torch"]
    assert results["verdict"] == lab_rule(results["rows"], 1 / 3, 12)  # the documented rule, computed here
    assert " ".join(stdout.split()).count(results["verdict"]["line"]) == 1
    assert results["verdict"]["line"] in (run_dir / "results.md").read_text()
    assert sorted(p.name for p in (run_dir / "cells").iterdir()) == ["cnn-published-seed0.json",
                                                                      "cnn-reference-seed0.json"]


def lab_rule(rows: list[dict], chance: float, n: int) -> dict:
    """The verdict rule as docs/protect.md states it, written out again: the test's own reading of it."""
    from lab.audit import verdict
    expected = verdict(rows, chance, n)
    margin = 3 * math.sqrt(chance * (1 - chance) / n)
    best = max(r["published"]["mean"] for r in rows)
    refs = [r["reference"]["mean"] for r in rows if r.get("reference")]
    if refs and max(refs) <= chance + margin:
        want = "inconclusive"
    elif refs:
        want = "learnable" if best > chance + margin and best >= chance + 0.5 * (max(refs) - chance) else "unlearnable"
    else:
        want = "learnable" if best > chance + margin else "unlearnable"
    assert expected["verdict"] == want and math.isclose(expected["margin"], margin)
    return expected


def rows(published: list[float], reference: list[float] | None = None) -> list[dict]:
    def summary(v):
        return {"mean": v, "std": 0.0, "n": 1, "values": [v], "seeds": [0]}
    names = [("cnn", "no attack"), ("cnn", "augment"), ("lstm", "no attack")]
    return [{"model": m, "attack": a, "published": summary(p),
             "reference": summary(reference[i]) if reference else None}
            for i, ((m, a), p) in enumerate(zip(names, published))]


def test_verdict_rule():
    from lab.audit import verdict
    # 10 classes, 500 test clips: margin = 3 x sqrt(0.09 / 500) = 0.0402
    v = verdict(rows([0.30, 0.91, 0.50], [0.97, 0.95, 0.90]), 0.1, 500)
    assert v["verdict"] == "learnable" and v["best"] == {"model": "cnn", "attack": "augment", "accuracy": 0.91}
    assert v["line"] == ("learnable: 0.910 on clean test (cnn, augment), against 0.970 for a clean copy: 93% of the "
                         "way from chance 0.100 (learnable from 50%)")
    v = verdict(rows([0.18, 0.12, 0.10], [0.97, 0.95, 0.90]), 0.1, 500)
    assert v["verdict"] == "unlearnable" and round(v["fraction"], 3) == 0.092
    assert v["line"].startswith("unlearnable: best 0.180 on clean test (cnn, no attack), against 0.970 for a clean")
    assert verdict(rows([0.50, 0.1, 0.1], [0.94, 0.1, 0.1]), 0.1, 500)["verdict"] == "unlearnable"  # 48% of the way
    assert verdict(rows([0.53, 0.1, 0.1], [0.94, 0.1, 0.1]), 0.1, 500)["verdict"] == "learnable"  # 51%
    v = verdict(rows([0.13, 0.12, 0.11], [0.13, 0.12, 0.12]), 0.1, 500)
    assert v["verdict"] == "inconclusive" and "train longer" in v["line"]
    # without a clean copy: chance + margin only
    assert verdict(rows([0.15, 0.12, 0.11]), 0.1, 500)["verdict"] == "learnable"  # above 0.1402
    v = verdict(rows([0.14, 0.12, 0.11]), 0.1, 100)  # fewer test clips, wider margin (0.09)
    assert v["verdict"] == "unlearnable" and "too little training" in v["line"]
    assert v["line"].startswith("unlearnable: best 0.140 on clean test (cnn, no attack), chance 0.100 + margin 0.090")


def test_a_failed_audit_keeps_finished_cells_marked_incomplete(folders, tmp_path, monkeypatch):
    import lab.attacking
    from lab.audit import plan_audit, run_audit
    from lab.rundir import is_finished
    real, calls = lab.attacking.run_cell, []

    def second_cell_breaks(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the disk went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(lab.attacking, "run_cell", second_cell_breaks)
    plan = plan_audit(folders["published"], folders["test"], models=["cnn"], attacks=["none"], seeds=[0, 1],
                      epochs=1, max_per_class=5, overrides=["train.num_threads=1", "train.progress=false"])
    said = []
    with pytest.raises(RuntimeError, match="the disk went away"):
        run_audit(plan, tmp_path / "runs", log=said.append)
    (run_dir,) = (tmp_path / "runs" / "audit").iterdir()
    assert not (run_dir / "results.json").exists() and not is_finished(run_dir)
    assert (run_dir / "INCOMPLETE").read_text().splitlines()[0] == (
        "failed (RuntimeError: the disk went away): 1 of 2 cells (model x folder x seed) trained, stopped while "
        "training cnn on the published folder, seed 1")
    assert [p.name for p in (run_dir / "cells").iterdir()] == ["cnn-published-seed0.json"]
    assert any(f"kept {run_dir}/" in s for s in said)
    calls.clear()
    calls.append(1)  # now the first cell breaks: nothing is kept
    with pytest.raises(RuntimeError):
        run_audit(plan, tmp_path / "empty", log=said.append)
    assert not (tmp_path / "empty").exists()


def test_attacks_that_read_clean_clips_say_so_and_an_outsider_cannot_run_them():
    import attacks
    from lab.audit import attack_plan, outsider_attacks
    for name in attacks.ATTACKS.names():
        cls = attacks.ATTACKS.get(name)
        reads_clean = "ctx.clean" in inspect.getsource(inspect.getmodule(cls))
        assert cls.needs_clean == reads_clean, name
    assert {"augment", "codec", "mixed-position"} <= set(outsider_attacks())
    assert not {"partial", "clean-finetune", "early-stop", "filter-estimate"} & set(outsider_attacks())
    assert [c.type for c in attack_plan(["all"])] == outsider_attacks()
    assert attack_plan(["none"]) == []
    with pytest.raises(LabError, match="attack 'partial' needs clean copies of the training clips, which an "
                                       "outsider does not have; attacks an audit can run: "):
        attack_plan(["augment", "partial"])


def test_published_clips_identical_to_the_clean_copy_are_counted(tmp_path, cli):
    from lab.audit import check_folders
    pub, test = label_tree(tmp_path / "pub", DIGITS, files=2), label_tree(tmp_path / "test", DIGITS, start=50)
    ref = label_tree(tmp_path / "ref", DIGITS, files=2, start=100)
    shutil.copy(pub / "1" / "1-0.wav", ref / "1" / "1-0.wav")  # one clip was published unprotected
    folders = check_folders(pub, test, ref)
    assert folders.unchanged == 1 and folders.clips == {"published": 6, "test": 3, "reference": 6}
    assert folders.classes == list(DIGITS) and folders.manifest is None and folders.published == pub.resolve()
    code, stdout, stderr = cli("audit", str(pub), "--test", str(test), "--reference",
                                   str(ref), "--out", str(tmp_path / "runs"), "--attacks", "none", *QUICK)
    assert code == 0, stdout + stderr
    assert " ".join(stderr.split()) == ("warning: 1 of 6 published clips are byte-identical to clips of the clean "
                                        "copy: they carry no protection")


def label_tree(root: Path, labels, files: int = 1, start: int = 0) -> Path:
    """ROOT/<label>/<label>-<i>.wav: short generated clips, every one different."""
    for label in labels:
        for i in range(files):
            write(root / label / f"{label}-{i}.wav", tone(0.2, 8000, 200 + 40 * int(label) + 7 * i, seed=start + i),
                  8000)
    return root


@pytest.mark.parametrize("case, pattern", [
    ("missing", "PUBLISHED: no such folder: {tmp}/nope (expected a folder of <label>/*.wav, one folder per label)"),
    ("no_audio", "PUBLISHED: no audio files (" + ", ".join(AUDIO_EXTENSIONS) + ") in label folders of {tmp}/pub (expected "
                 "{tmp}/pub/<label>/*.wav)"),
    ("flat", "its 2 audio files lie directly in it, with no label folders and no metadata.csv or manifest.jsonl "
             "giving their labels"),
    ("flat_damaged", "{tmp}/pub/manifest.jsonl: not a lab-protect-manifest/v2 manifest (no header line)"),
    ("one_class", "PUBLISHED: {tmp}/pub holds one label folder (0); an audit needs at least two classes"),
    ("empty_label", "PUBLISHED: label folder(s) without audio files in {tmp}/pub: 2"),
    ("labels", "PUBLISHED {tmp}/pub and --test {tmp}/test have different label folders (only in PUBLISHED "
               "{tmp}/pub: 2; only in --test {tmp}/test: 3)"),
    ("reference_labels", "PUBLISHED {tmp}/pub and --reference {tmp}/ref have different label folders (only in "
                         "PUBLISHED {tmp}/pub: 1)"),
    ("not_held_out", "1 --test clip(s) are byte-identical to clips in PUBLISHED"),
    ("needs_clean", "attack 'early-stop' needs clean copies of the training clips"),
    ("unknown_attack", "unknown attack 'augmnt' (did you mean 'augment'?)"),
    ("unknown_model", "unknown model 'resnet'"),
    ("own_field", "--set model.hidden=32: lab audit sets model.hidden itself (--models)"),
    ("bad_seeds", "--seeds 'a,b': expected comma-separated whole numbers"),
    ("epochs", "train.epochs: Input should be greater than or equal to 1"),
])
def test_bad_input_is_one_line_and_leaves_nothing(case, pattern, tmp_path, cli):
    pub, test, ref = label_tree(tmp_path / "pub", DIGITS), label_tree(tmp_path / "test", DIGITS, start=50), None
    if case == "missing":
        pub = tmp_path / "nope"
    elif case in ("no_audio", "flat", "flat_damaged"):
        shutil.rmtree(pub)
        pub.mkdir()
        if case != "flat":  # a flat folder's labels would be read from it (damaged here; no audio: never read)
            (pub / "manifest.jsonl").write_text("{}\n")
        (pub / "0").mkdir()
        (pub / "0" / "notes.txt").write_text("not audio")
        if case.startswith("flat"):
            for p in label_tree(tmp_path / "flat", ["7"], files=2).rglob("*.wav"):
                shutil.copy(p, pub / p.name)
    elif case == "one_class":
        shutil.rmtree(pub)
        label_tree(pub, ["0"])
    elif case == "empty_label":
        shutil.rmtree(pub / "2")
        (pub / "2").mkdir()
    elif case == "labels":
        shutil.rmtree(test / "2")
        label_tree(test, ["3"])
    elif case == "reference_labels":
        ref = label_tree(tmp_path / "ref", ["0", "2"], start=100)
    elif case == "not_held_out":
        shutil.copy(next((pub / "1").iterdir()), test / "1" / "same.wav")
    extra = {"needs_clean": ["--attacks", "augment,early-stop"], "unknown_attack": ["--attacks", "augmnt"],
             "unknown_model": ["--models", "cnn,resnet"], "own_field": ["--set", "model.hidden=32"],
             "bad_seeds": ["--seeds", "a,b"], "epochs": ["--epochs", "0"]}.get(case, [])
    out = tmp_path / "runs"
    args = ["audit", str(pub), "--test", str(test), "--out", str(out), *extra]
    code, stdout, stderr = cli(*args, *(["--reference", str(ref)] if ref else []))
    assert code == 2, stdout + stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert pattern.format(tmp=tmp_path) in " ".join(stderr.split())
    assert not out.exists()


def test_ctrl_c_before_a_cell_finishes_exits_130_and_leaves_no_folder(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    pub, test = label_tree(tmp_path / "pub", DIGITS, files=8), label_tree(tmp_path / "test", DIGITS, start=50)
    out = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab", "audit", str(pub), "--test", str(test), "--out", str(out), "--models", "cnn",
         "--seeds", "0", "--epochs", "2000", "--attacks", "none", "--set", "train.num_threads=1",
         "--set", "train.progress=false"],
        cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not list(out.glob("audit/*/INCOMPLETE")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the audit ended before it could be interrupted"
    time.sleep(1.0)  # inside training (2000 epochs)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, (stdout, stderr)
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert " ".join(stderr.split()).startswith(
        "interrupted: nothing kept (0 of 1 cells (model x folder x seed) trained, stopped while training cnn on the "
        "published folder, seed 0;")
    assert not out.exists()  # the run folder and the folders made for it are gone
