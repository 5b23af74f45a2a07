"""lab verify finds tampered, missing, unprotected and extra files and sources left without a protected copy; an
interrupted run resumes to the same output."""
from __future__ import annotations

import json
import shutil

import pytest

from lab.errors import LabError
from lab.protect import new_key_file, protect_collection, verify_collection
from lab.protect.manifest import MANIFEST, PARTIAL, read_manifest
from tests.protect.conftest import BAD, GOOD, private_record, sha, tree_hashes


@pytest.fixture
def protected(collection, key_file, tmp_path):
    out = tmp_path / "out"
    protect_collection(collection, out, key_file, workers=0)
    return out


def statuses(report):
    return {p["path"]: p["status"] for p in report["problems"]}


def test_verify_passes_on_a_fresh_complete_output(collection, key_file, tmp_path):
    for rel in BAD:
        (collection / rel).unlink()
    out = tmp_path / "out"
    protect_collection(collection, out, key_file, workers=0)
    report = verify_collection(out, key_file, workers=2)
    assert report["passed"] and report["complete"], report
    assert report["counts"] == {"ok": len(GOOD)} and report["not_protected"] == []


def test_verify_checks_the_outputs_and_names_the_sources_left_unprotected(protected, key_file):
    report = verify_collection(protected, key_file, workers=0)
    assert report["counts"] == {"ok": len(GOOD)} and report["problems"] == [] and not report["extra"]
    assert set(report["failed_at_protection"]) == BAD
    assert {p["path"] for p in report["not_protected"]} == BAD
    assert not report["complete"] and not report["passed"]


def test_verify_names_sources_without_a_protected_copy_and_exits_1(protected, collection, key_file, cli, tmp_path):
    """A source that failed at protection, or that is not in the record at all (added after the run), leaves the
    collection incomplete: each is named, and the exit code says so, even though every output file checks."""
    import soundfile as sf
    from tests.conftest import tone
    sf.write(str(collection / "dog" / "late.wav"), tone(0.4, 8000), 8000)
    code, stdout, _ = cli("verify", str(protected), "--key-file", str(key_file), "--workers", "0")
    text = " ".join(stdout.split())
    assert code == 1 and f"{len(GOOD)} ok" in text and "verified" not in text
    assert "not protected dog/late.wav: no protected copy: not in the record (added after the run?)" in text
    for rel in BAD:
        assert f"not protected {rel}: failed when protected: " in text
    assert "incomplete: 4 source file(s) have no protected copy (listed above); every output file checks" in text
    # INPUT moved: --source finds it; INPUT gone: the record's failures are still named
    moved = tmp_path / "moved"
    collection.rename(moved)
    report = verify_collection(protected, key_file, source=moved, workers=0)
    assert {p["path"] for p in report["not_protected"]} == BAD | {"dog/late.wav"} and report["source_found"]
    report = verify_collection(protected, key_file, workers=0)
    assert {p["path"] for p in report["not_protected"]} == BAD and not report["source_found"]
    assert not report["passed"] and report["counts"] == {"unchecked": len(GOOD)}


def record_path(out, key_file):
    from lab.protect.manifest import locate_record
    return locate_record(out, key_file, read_manifest(out)[0]["collection_id"], None, earlier=True)


def rewrite_lines(path, change):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(json.dumps(change(json.loads(line))) for line in lines) + "\n")


def test_verify_detects_tampered_missing_unprotected_and_extra(protected, collection, key_file):
    data = bytearray((protected / "cat" / "a.wav").read_bytes())
    data[-100] ^= 0x01  # one bit of one sample
    (protected / "cat" / "a.wav").write_bytes(bytes(data))
    (protected / "dog" / "d.wav").unlink()
    # an unprotected copy whose hashes (record and manifest) were "fixed" to match: only re-deriving from the key
    # catches it
    shutil.copy(collection / "owl" / "g.wav", protected / "owl" / "g.wav")

    def fix(obj):
        if obj.get("path") == "owl/g.wav":
            obj["output_sha256"] = sha(protected / "owl" / "g.wav")
        return obj

    rewrite_lines(record_path(protected, key_file), fix)
    rewrite_lines(protected / MANIFEST, fix)
    shutil.copy(collection / "cat" / "c.wav", protected / "cat" / "stray.wav")
    report = verify_collection(protected, key_file, workers=0)
    assert not report["passed"]
    assert statuses(report) == {"cat/a.wav": "changed", "dog/d.wav": "missing", "owl/g.wav": "unprotected"}
    assert report["extra"] == ["cat/stray.wav"]
    assert report["counts"]["ok"] == len(GOOD) - 3


def test_verify_reports_a_public_manifest_that_disagrees_with_the_record(protected, key_file):
    def drop_hash(obj):
        if obj.get("path") == "cat/b.flac":
            obj["output_sha256"] = "0" * 64
        return obj

    rewrite_lines(protected / MANIFEST, drop_hash)
    report = verify_collection(protected, key_file, workers=0)
    assert statuses(report) == {"cat/b.flac": "manifest"} and report["counts"] == {"ok": len(GOOD)}


def test_verify_refuses_another_key(protected, tmp_path):
    other = tmp_path / "other.key"
    new_key_file(other)
    with pytest.raises(LabError, match="is not the one OUTPUT was protected with"):
        verify_collection(protected, other)


def test_verify_reports_a_changed_source(protected, collection, key_file):
    import soundfile as sf
    from tests.conftest import tone
    sf.write(str(collection / "cat" / "a.wav"), tone(0.6, 8000, 999), 8000, subtype="PCM_16")
    assert statuses(verify_collection(protected, key_file, workers=0)) == {"cat/a.wav": "source-changed"}


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_run_resumes_to_the_same_output(collection, key_file, tmp_path, workers):
    reference = tmp_path / "reference"
    protect_collection(collection, reference, key_file, workers=0)

    out = tmp_path / "out"

    def stop_after_four(done, total):
        if done == 4:
            raise Interrupt  # as a kill would: between files, with the manifest partly written

    with pytest.raises(Interrupt):
        protect_collection(collection, out, key_file, workers=workers, progress=stop_after_four)
    assert (out / PARTIAL).is_file() and not (out / MANIFEST).exists()
    (record,) = key_file.parent.glob("out.*.protect-record.jsonl.lab-partial")
    assert not record.with_suffix("").exists()  # the finished record comes at the end
    # what a kill in the middle of a write leaves: a temporary file (never a half file under a final name) and a
    # record line cut short
    (out / "owl" / ".g.wav.999.lab-partial").parent.mkdir(parents=True, exist_ok=True)
    (out / "owl" / ".g.wav.999.lab-partial").write_bytes(b"RIFF half a file")
    with open(record, "a") as f:
        f.write('{"kind": "file", "path": "owl/g.w')
    # and an output someone damaged since: it must be redone, not kept
    done_before = [obj["path"] for obj in map(json.loads, record.read_text().splitlines()[1:-1])
                   if obj["kind"] == "file"]
    damaged = next(p for p in done_before if p not in BAD)
    (out / damaged).write_bytes(b"damaged")

    summary = protect_collection(collection, out, key_file, workers=workers)
    assert 0 < summary["already_done"] < len(GOOD)
    assert summary["already_done"] + summary["protected"] == len(GOOD)
    assert tree_hashes(out).keys() - {MANIFEST} == tree_hashes(reference).keys() - {MANIFEST}
    for rel, digest in tree_hashes(reference).items():
        if rel != MANIFEST:
            assert tree_hashes(out)[rel] == digest, rel
    assert read_manifest(out)[1] == read_manifest(reference)[1]  # the same public lines, in the same order
    assert private_record(out, key_file)[1] == private_record(reference, key_file)[1]  # and private records
    report = verify_collection(out, key_file, workers=0)
    assert report["counts"] == {"ok": len(GOOD)} and not report["problems"] and not report["partial"]

    again = protect_collection(collection, out, key_file, workers=workers)  # a third run has nothing to do
    assert again["protected"] == 0 and again["already_done"] == len(GOOD)


def test_resume_with_another_key_or_parameters_is_refused(protected, collection, tmp_path, key_file):
    other = tmp_path / "other.key"
    new_key_file(other)
    before = tree_hashes(protected)
    with pytest.raises(LabError, match="was protected with another key"):
        protect_collection(collection, protected, other, workers=0)
    with pytest.raises(LabError, match="was protected with other defense parameters"):
        protect_collection(collection, protected, key_file, defense={"blur": 0.9}, workers=0)
    assert tree_hashes(protected) == before


def test_a_real_kill_midway_resumes_to_the_same_output(fsdd_dir, tmp_path):
    """SIGKILL to the whole `lab protect` process group while it writes (real FSDD clips), then the same command
    again: the output equals an uninterrupted run's, byte for byte, and verify passes."""
    import os
    import signal
    import subprocess
    import sys
    import time
    src = tmp_path / "recordings"
    src.mkdir()
    for p in sorted((fsdd_dir / "recordings").glob("*.wav"))[:600]:
        shutil.copy(p, src / p.name)
    key = tmp_path / "k"
    new_key_file(key)
    reference = tmp_path / "reference"
    protect_collection(src, reference, key, labels=r"regex:^(\d+)_", workers=0)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lab", "protect", str(src), str(out), "--key-file", str(key), "--labels",
           r"regex:^(\d+)_", "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        part = out / PARTIAL
        if part.is_file() and part.read_text().count("\n") > 20:
            break
        time.sleep(0.005)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be killed")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    from lab.protect.safefs import OutputLock
    gone = time.monotonic() + 30  # its killed workers hold OUTPUT's lock until the last one has exited
    while True:
        try:
            with OutputLock(out):
                break
        except LabError:
            if time.monotonic() > gone:
                raise
            time.sleep(0.01)
    assert not (out / MANIFEST).exists()
    summary = protect_collection(src, out, key, labels=r"regex:^(\d+)_", workers=2)
    assert summary["already_done"] > 0 and summary["already_done"] + summary["protected"] == 600
    assert tree_hashes(out).keys() == tree_hashes(reference).keys()
    ref = tree_hashes(reference)
    assert all(digest == ref[rel] for rel, digest in tree_hashes(out).items() if rel != MANIFEST)
    assert read_manifest(out)[1] == read_manifest(reference)[1]
    assert private_record(out, key)[1] == private_record(reference, key)[1]
    assert verify_collection(out, key, workers=2)["passed"]
