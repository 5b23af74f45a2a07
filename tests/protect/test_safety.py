"""A data owner's files cannot be harmed: links inside OUTPUT, FIFOs and devices named like audio, absurd sizes in
an option or an edited record, two runs on one OUTPUT, read-only folders, a key that is not text, NaN audio."""
from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lab.errors import LabError
from lab.protect import new_key_file, protect_collection, verify_collection
from lab.protect.manifest import locate_record, read_manifest
from lab.protect.safefs import LinkInOutput, NotRegular, OutputLock, read_regular, write_under
from tests.protect.conftest import BAD, GOOD, tree_hashes
from tests.conftest import tone


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def clean(collection):
    """The shared collection without its deliberately broken files (every file protects)."""
    for rel in BAD:
        (collection / rel).unlink()
    return collection


def test_a_folder_in_output_linked_into_input_is_refused_and_input_is_untouched(clean, key_file, tmp_path, cli):
    """The reported attack: protect, replace OUTPUT/cat by a link to INPUT/cat, protect again. It used to overwrite
    the ORIGINAL files in INPUT/cat with protected copies and exit 0."""
    out = tmp_path / "out"
    code, _, err = cli("protect", str(clean), str(out), "--key-file", str(key_file), "--workers", "0")
    assert code == 0, err
    before = tree_hashes(clean)
    for child in (out / "cat").iterdir():
        child.unlink()
    (out / "cat").rmdir()
    (out / "cat").symlink_to(clean / "cat", target_is_directory=True)
    code, _, err = cli("protect", str(clean), str(out), "--key-file", str(key_file), "--workers", "0")
    assert code == 2 and "symbolic link" in one_line(err) and "cat ->" in err
    assert tree_hashes(clean) == before


def test_a_folder_in_output_linked_elsewhere_gets_nothing_written_there(clean, key_file, tmp_path, cli):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    protect_collection(clean, out, key_file, workers=0)
    (out / "dog").rename(tmp_path / "old_dog")
    (out / "dog").symlink_to(elsewhere, target_is_directory=True)
    before = tree_hashes(out)
    code, _, err = cli("protect", str(clean), str(out), "--key-file", str(key_file), "--workers", "0")
    assert code == 2 and "symbolic link" in one_line(err)
    assert list(elsewhere.iterdir()) == []
    assert tree_hashes(out) == before  # nothing written, the link left as it was


def test_writes_never_pass_through_a_link_that_appears_during_a_run(tmp_path):
    """The run refuses links at its start; a link made while it runs is refused by every write (no race)."""
    root, victim = tmp_path / "out", tmp_path / "victim"
    root.mkdir()
    victim.mkdir()
    (root / "cat").symlink_to(victim, target_is_directory=True)
    with pytest.raises(LinkInOutput):
        write_under(str(root), "cat/a.wav", b"x", ".tmp")
    (root / "deep").mkdir()
    (root / "deep" / "er").symlink_to(victim, target_is_directory=True)
    with pytest.raises(LinkInOutput):
        write_under(str(root), "deep/er/a.wav", b"x", ".tmp")
    assert list(victim.iterdir()) == []
    (root / "deep" / "f.wav").symlink_to(victim / "target.wav")  # a link at the final name is replaced, not followed
    write_under(str(root), "deep/f.wav", b"data", ".tmp")
    assert not (root / "deep" / "f.wav").is_symlink() and (root / "deep" / "f.wav").read_bytes() == b"data"
    assert not (victim / "target.wav").exists()


def test_verify_reports_a_link_inside_output(clean, key_file, tmp_path):
    out = tmp_path / "out"
    protect_collection(clean, out, key_file, workers=0)
    target = out / "cat" / "a.wav"
    kept = tmp_path / "kept.wav"
    target.rename(kept)
    target.symlink_to(kept)  # the same bytes, behind a link
    report = verify_collection(out, key_file, workers=0)
    assert not report["passed"]
    assert {p["status"] for p in report["problems"] if p["path"] == "cat/a.wav"} == {"unsafe"}


def test_a_fifo_named_like_audio_is_skipped_by_name_in_bounded_time(clean, key_file, tmp_path):
    os.mkfifo(clean / "cat" / "pipe.wav")
    out = tmp_path / "out"
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(protect_collection(clean, out, key_file, workers=0)),
                              daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "lab protect blocked on a FIFO"
    assert result["not_regular_skipped"] == ["cat/pipe.wav"] and result["protected"] == len(GOOD)
    assert not (out / "cat" / "pipe.wav").exists()


def test_a_device_named_like_audio_is_skipped(clean, key_file, tmp_path):
    try:
        os.mknod(clean / "cat" / "zero.wav", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero's numbers
    except PermissionError:
        pytest.skip("creating a device node needs root")
    (clean / "dog" / "dev.wav").symlink_to("/dev/zero")  # a link out of INPUT: not followed either
    out = tmp_path / "out"
    summary = protect_collection(clean, out, key_file, workers=0)
    assert summary["not_regular_skipped"] == ["cat/zero.wav"] and summary["symlinks_not_followed"] == 2
    assert summary["protected"] == len(GOOD)


def test_reading_a_fifo_or_device_fails_at_once(tmp_path):
    fifo = tmp_path / "p.wav"
    os.mkfifo(fifo)
    started = time.perf_counter()
    with pytest.raises(NotRegular, match="FIFO"):
        read_regular(fifo)
    with pytest.raises(NotRegular, match="character device"):
        read_regular("/dev/zero")
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("flag, value, field", [("-o", "filter_length=100000000", "filter_length"),
                                                ("-o", "patches_per_class=100000", "patches_per_class"),
                                                ("--option", "patch_seconds=1e9", "patch_seconds")])
def test_an_absurd_size_on_the_command_line_is_one_line(clean, key_file, tmp_path, cli, flag, value, field):
    code, _, err = cli("protect", str(clean), str(tmp_path / "out"), "--key-file", str(key_file), flag, value)
    assert code == 2 and field in one_line(err) and "less than or equal" in err
    assert not (tmp_path / "out").exists()


def record_lines(out: Path, key_file: Path) -> tuple[Path, list[dict]]:
    path = locate_record(out, key_file, read_manifest(out)[0]["collection_id"], None, earlier=True)
    return path, [json.loads(line) for line in path.read_text().splitlines()]


def rewrite(path: Path, lines: list) -> None:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


def test_an_edited_record_with_a_huge_filter_is_one_line_not_an_allocation(clean, key_file, tmp_path, cli):
    out = tmp_path / "out"
    protect_collection(clean, out, key_file, workers=0)
    path, lines = record_lines(out, key_file)
    lines[0]["protection"]["params"]["filter_length"] = 10 ** 9
    rewrite(path, lines)
    started = time.perf_counter()
    code, _, err = cli("verify", str(out), "--key-file", str(key_file), "--workers", "0")
    assert code == 2 and "filter_length" in one_line(err) and "damaged or edited" in err
    assert time.perf_counter() - started < 30


def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(clean, key_file, tmp_path):
    """Two runs on one OUTPUT used to delete each other's temporary files and records. The second is refused in one
    line while the first holds OUTPUT; the first finishes and verifies; afterwards OUTPUT is free again."""
    out = tmp_path / "out"
    inside, release = threading.Event(), threading.Event()
    errors: list = []

    def first():
        def progress(done, total):
            inside.set()
            release.wait(30)
        try:
            protect_collection(clean, out, key_file, workers=0, progress=progress)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
    t = threading.Thread(target=first, daemon=True)
    t.start()
    assert inside.wait(30)
    try:
        with pytest.raises(LabError, match="in use by another lab protect"):
            protect_collection(clean, out, key_file, workers=0)
        with pytest.raises(LabError, match="being written by a lab protect run"):
            verify_collection(out, key_file, workers=0)
    finally:
        release.set()
        t.join(60)
    assert not errors and verify_collection(out, key_file, workers=0)["passed"]
    with OutputLock(out):  # released: the lock lives as long as the run
        pass


def test_a_second_process_is_refused_while_a_run_holds_output(clean, key_file, tmp_path):
    """The reported case, as a real second process started while OUTPUT is held: refused at once, in one line,
    having written nothing."""
    import sys
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with OutputLock(out):  # this test plays the first run
        second = subprocess.run([sys.executable, "-m", "lab", "protect", str(clean), str(out), "--key-file",
                                 str(key_file), "--workers", "0"], capture_output=True, text=True, timeout=120,
                                env=env, cwd=Path(__file__).resolve().parents[2])
    assert second.returncode == 2 and "in use by another lab protect" in one_line(second.stderr)
    assert list(out.iterdir()) == []


def test_read_only_output_is_one_line_and_leaves_no_orphan_record(clean, key_file, tmp_path, cli):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "out").mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro / "out")],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only file system here")
    try:
        code, _, err = cli("protect", str(clean), str(ro / "out"), "--key-file", str(key_file), "--workers", "0")
    finally:
        subprocess.run(["umount", str(ro / "out")], check=True)
    assert code == 2 and "not writable" in one_line(err)
    assert sorted(p.name for p in key_file.parent.iterdir()) == [key_file.name]  # no orphan record beside the key


def test_read_only_key_folder_is_one_line(clean, tmp_path, cli):
    keys = tmp_path / "keys"
    keys.mkdir()
    new_key_file(keys / "owner.key")
    if subprocess.run(["mount", "--bind", "-o", "ro", str(keys), str(keys)], capture_output=True).returncode != 0 \
            or os.access(keys, os.W_OK):
        subprocess.run(["umount", str(keys)], capture_output=True)
        pytest.skip("cannot make a read-only bind mount here")
    try:
        code, _, err = cli("protect", str(clean), str(tmp_path / "out"), "--key-file", str(keys / "owner.key"),
                           "--workers", "0")
    finally:
        subprocess.run(["umount", str(keys)], check=True)
    assert code == 2 and "not writable" in one_line(err) and "--record" in err
    assert not (tmp_path / "out").exists()


def test_a_manifest_that_cannot_be_started_leaves_no_orphan_record(clean, key_file, tmp_path, monkeypatch):
    """Wherever the file system says no (read-only, no space) after the private record was started, the run ends
    in one line and the record it had just begun is gone."""
    from lab.protect import manifest
    real = manifest.LinesWriter.__init__

    def refuse_in_output(self, final, header, private=False, partial=None):
        if not private:
            raise manifest.WriteFailed.of(final, OSError(errno.EROFS, "Read-only file system"))
        real(self, final, header, private, partial)
    monkeypatch.setattr(manifest.LinesWriter, "__init__", refuse_in_output)
    with pytest.raises(LabError, match="Read-only file system"):
        protect_collection(clean, tmp_path / "out", key_file, workers=0)
    assert sorted(p.name for p in key_file.parent.iterdir()) == [key_file.name]
    assert not (tmp_path / "out").exists()


def test_a_key_file_that_is_not_text_is_one_line(clean, tmp_path, cli):
    key = tmp_path / "binary.key"
    key.write_bytes(b"\xff\xfe\x00\x81" * 8)
    code, _, err = cli("protect", str(clean), str(tmp_path / "out"), "--key-file", str(key))
    assert code == 2 and "not text (not UTF-8)" in one_line(err)
    big = tmp_path / "big.key"
    big.write_bytes(b"a" * 100_000)
    code, _, err = cli("protect", str(clean), str(tmp_path / "out"), "--key-file", str(big))
    assert code == 2 and "not a key file" in one_line(err)


def test_nan_audio_is_refused_by_name(clean, key_file, tmp_path):
    data = np.full((4000, 1), np.nan, dtype=np.float32)
    sf.write(str(clean / "owl" / "nan.wav"), data, 8000, subtype="FLOAT")
    part = tone(0.5, 8000)
    part[100] = np.inf
    sf.write(str(clean / "owl" / "inf.wav"), part, 8000, subtype="FLOAT")
    out = tmp_path / "out"
    summary = protect_collection(clean, out, key_file, workers=0)
    failed = {f["path"]: f["error"] for f in summary["failed"]}
    assert set(failed) == {"owl/nan.wav", "owl/inf.wav"}
    assert "4000 of 4000 samples are NaN or infinite" in failed["owl/nan.wav"]
    assert "1 of 4000" in failed["owl/inf.wav"]
    assert not (out / "owl" / "nan.wav").exists() and not (out / "owl" / "inf.wav").exists()


def test_keygen_creates_missing_folders_owner_only(tmp_path, cli):
    path = tmp_path / "keys" / "deeper" / "owner.key"
    code, _, err = cli("keygen", str(path))
    assert code == 0, err
    for folder in (tmp_path / "keys", tmp_path / "keys" / "deeper"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_worker_that_outlives_its_parent_does_not_keep_output_locked(tmp_path):
    """The lock belongs to the open file, and a forked worker inherits it: a worker left behind by a killed run
    would keep OUTPUT locked. Workers close their copies at start; the process that took the lock keeps it."""
    import multiprocessing as mp
    from lab.protect.worker import start_worker
    out = tmp_path / "out"
    out.mkdir()
    ctx = mp.get_context("fork")
    with OutputLock(out) as held:
        start_worker()  # in the locking process itself (workers=0): the lock stays
        with pytest.raises(LabError, match="in use"):
            OutputLock(out).__enter__()
        ready, release = ctx.Event(), ctx.Event()

        def worker():
            start_worker()
            ready.set()
            release.wait(30)
        child = ctx.Process(target=worker)
        child.start()
        assert ready.wait(30)
        held.__exit__(None, None, None)  # the parent lets go while its worker still runs
        try:
            with OutputLock(out):  # free: the worker does not hold it
                pass
        finally:
            release.set()
            child.join(30)
