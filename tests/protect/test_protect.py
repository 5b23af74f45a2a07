"""lab protect on generated collections: input untouched, formats kept, manifest complete, bad files skipped,
clipping counted, refusals, and the batch path equal to PosCUDA's own apply."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from lab.errors import LabError
from lab.protect import protect_collection
from lab.protect.manifest import read_manifest
from lab.protect import worker
from tests.conftest import tone
from tests.protect.conftest import BAD, GOOD, private_record, sha, tree_hashes

GOOD_PATHS = {f"{label}/{name}" for label, name, *_ in GOOD}


def run(collection, out, key_file, **kw):
    kw.setdefault("workers", 0)
    return protect_collection(collection, out, key_file, **kw)


def test_input_untouched_outputs_keep_format_and_shape(collection, key_file, tmp_path):
    before = tree_hashes(collection)
    out = tmp_path / "out"
    summary = run(collection, out, key_file, workers=2)
    assert tree_hashes(collection) == before
    assert summary["protected"] == len(GOOD)
    for rel in GOOD_PATHS:
        a, b = sf.info(str(collection / rel)), sf.info(str(out / rel))
        assert (a.format, a.subtype, a.samplerate, a.channels, a.frames) == \
            (b.format, b.subtype, b.samplerate, b.channels, b.frames), rel
    assert not (out / "cat" / "notes.txt").exists() and not (out / "dog" / "outside_link.wav").exists()
    assert summary["non_audio_ignored"] == 1 and summary["symlinks_not_followed"] == 1


def test_only_patches_change_every_channel_alike(collection, key_file, tmp_path):
    out = tmp_path / "out"
    run(collection, out, key_file)
    _, records, _ = private_record(out, key_file)
    for rec in records:
        if rec["status"] != "protected" or rec["subtype"] == "PCM_U8":
            continue
        src, _ = sf.read(str(collection / rec["path"]), dtype="int32" if rec["subtype"] != "FLOAT" else "float32",
                         always_2d=True)
        dst, _ = sf.read(str(out / rec["path"]), dtype="int32" if rec["subtype"] != "FLOAT" else "float32",
                         always_2d=True)
        mask = np.zeros(len(src), dtype=bool)
        for p in rec["patches"]:
            mask[p["start"]:p["start"] + p["length"]] = True
        assert np.array_equal(src[~mask], dst[~mask]), rec["path"]  # bit-identical outside the patch
        changed = src[mask] != dst[mask]
        assert changed.mean() > 0.5, rec["path"]
        if src.shape[1] == 2:  # the same patch in both channels
            assert np.array_equal(changed[:, 0], changed[:, 1]) or changed.all(axis=0).all()


def test_record_is_complete_and_manifest_holds_only_public_facts(collection, key_file, tmp_path):
    out = tmp_path / "out"
    run(collection, out, key_file, labels="folder", defense={"patch_seconds": 0.05, "blur": 0.5})
    header, records, summary = private_record(out, key_file)
    assert header["classes"] == ["cat", "dog", "owl"]
    assert header["protection"]["params"]["patch_seconds"] == 0.05 and header["protection"]["params"]["blur"] == 0.5
    assert len(header["key_fingerprint"]) == 16 and header["provenance"]["versions"]["torch"]
    assert "git" in header["provenance"]
    assert header["input"] == str(collection.resolve()) and header["output"] == str(out.resolve())
    assert {r["path"] for r in records} == GOOD_PATHS | BAD
    for rec in records:
        if rec["path"] in BAD:
            assert rec["status"] == "failed" and rec["error"]
            continue
        assert rec["status"] == "protected"
        assert rec["source_sha256"] == sha(collection / rec["path"])
        assert rec["output_sha256"] == sha(out / rec["path"])
        assert rec["label"] == rec["path"].split("/")[0]
        assert rec["class"] == header["classes"].index(rec["label"])
        assert [p["filter"] for p in rec["patches"]] == [f"{rec['class']}/0"]
        info = sf.info(str(collection / rec["path"]))
        assert (rec["sample_rate"], rec["channels"], rec["frames"]) == (info.samplerate, info.channels, info.frames)
    assert summary["protected"] == len(GOOD) and len(summary["failed"]) == len(BAD)
    public, files, public_summary = read_manifest(out)
    assert public["collection_id"] == header["collection_id"] and public["key_fingerprint"] == header[
        "key_fingerprint"]
    assert public["classes"] == header["classes"] and public["labels"] == "folder"
    assert not {"protection", "input", "output", "provenance"} & public.keys()
    by_path = {r["path"]: r for r in records}
    assert [f["path"] for f in files] == [r["path"] for r in records if r["status"] == "protected"]
    for f in files:
        assert set(f) == {"kind", "path", "label", "output_sha256", "format", "subtype", "sample_rate", "channels",
                          "frames", "seconds"}
        assert all(f[k] == by_path[f["path"]][k] for k in f if k != "kind")
    assert public_summary == {"kind": "summary", "files": len(GOOD), "metadata": None, "metadata_sha256": None,
                              "card": None, "card_sha256": None}


def test_corrupt_and_empty_files_are_reported_and_skipped(collection, key_file, tmp_path):
    out = tmp_path / "out"
    summary = run(collection, out, key_file)
    failed = {f["path"]: f["error"] for f in summary["failed"]}
    assert set(failed) == BAD
    assert failed["owl/empty.wav"] == "empty file (0 bytes)"
    assert failed["cat/header_only.wav"] == "empty audio (0 samples)"
    assert failed["owl/corrupt.wav"].startswith("cannot decode")
    assert not any((out / rel).exists() for rel in BAD)
    assert summary["protected"] == len(GOOD)  # the rest finished


def test_key_wide_setting_for_unlabelled_audio(collection, key_file, tmp_path):
    out = tmp_path / "out"
    run(collection, out, key_file, labels="none")
    header, records, _ = private_record(out, key_file)
    assert header["classes"] == ["all"]
    done = [r for r in records if r["status"] == "protected"]
    assert {r["class"] for r in done} == {0}
    starts = {r["patches"][0]["start"] / r["sample_rate"] for r in done if r["frames"] / r["sample_rate"] > 0.6}
    assert max(starts) - min(starts) < 2 / 8000  # the same position (in seconds) in every long-enough file


def test_labels_from_regex_and_csv(tmp_path, key_file):
    root = tmp_path / "flat"
    for d in range(3):
        for take in range(2):
            root.mkdir(exist_ok=True)
            sf.write(str(root / f"{d * 5}_spk_{take}.wav"), tone(0.4, 8000, 300 + d * 100, seed=take), 8000)
    out = tmp_path / "o1"
    run(root, out, key_file, labels=r"regex:^(\d+)_")
    header, records, _ = read_manifest(out)
    assert header["classes"] == ["0", "5", "10"]  # natural order
    assert all(r["label"] == r["path"].split("_")[0] for r in records)
    table = tmp_path / "labels.csv"
    table.write_text("path,label\n" + "".join(f"{p.name},{'low' if p.name[0] == '0' else 'high'}\n"
                                              for p in sorted(root.iterdir())))
    out2 = tmp_path / "o2"
    run(root, out2, key_file, labels=str(table))
    header, records, _ = read_manifest(out2)
    assert header["classes"] == ["high", "low"]
    assert {r["path"]: r["label"] for r in records}["0_spk_0.wav"] == "low"


@pytest.mark.parametrize("labels, message", [
    (r"regex:^zz(\d)", "get no label (the pattern does not match their names)"),
    ("folder", "files directly in INPUT have no label folder"),
    ("regex:(", "not a valid regular expression"),
    ("sometimes", "expected folder, none, regex:PATTERN"),
])
def test_label_mistakes_are_one_line_errors(tmp_path, key_file, labels, message):
    root = tmp_path / "flat"
    root.mkdir()
    sf.write(str(root / "x.wav"), tone(0.2, 8000), 8000)
    with pytest.raises(LabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(root, tmp_path / "out", key_file, labels=labels)
    assert not (tmp_path / "out").exists()


def test_output_inside_input_or_foreign_folder_is_refused(collection, key_file, tmp_path):
    with pytest.raises(LabError, match="is inside INPUT"):
        run(collection, collection / "protected", key_file)
    with pytest.raises(LabError, match="contains INPUT"):
        run(collection, tmp_path, key_file)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.wav").write_bytes(b"precious")
    with pytest.raises(LabError, match="not empty and holds no lab protect manifest"):
        run(collection, busy, key_file)
    assert (busy / "mine.wav").read_bytes() == b"precious"


def test_full_scale_is_clipped_and_counted_for_integers_kept_for_float(tmp_path, key_file):
    root = tmp_path / "loud" / "x"
    root.mkdir(parents=True)
    square = np.sign(np.sin(2 * np.pi * 50 * np.arange(8000) / 8000))[:, None] * 0.99
    sf.write(str(root / "int.wav"), square, 8000, subtype="PCM_16")
    sf.write(str(root / "float.wav"), square, 8000, subtype="FLOAT")
    out = tmp_path / "out"
    summary = run(root.parent, out, key_file, defense={"blur": 1.0})  # taps up to 1: the patch gains a lot
    _, records, _ = private_record(out, key_file)
    by = {r["path"]: r for r in records}
    assert by["x/int.wav"]["past_full_scale"] > 0 and by["x/int.wav"]["past_full_scale_handling"] == "clipped"
    ints, _ = sf.read(str(out / "x" / "int.wav"), dtype="int16")
    assert ints.max() == 32767 and ints.min() == -32768
    floats, _ = sf.read(str(out / "x" / "float.wav"), dtype="float32")
    assert np.count_nonzero(np.abs(floats) > 1) == by["x/float.wav"]["past_full_scale"] > 0
    assert summary["samples_past_full_scale"] == by["x/int.wav"]["past_full_scale"] + by["x/float.wav"][
        "past_full_scale"]
    assert summary["files_past_full_scale"] == 2


@pytest.mark.parametrize("params", [{}, {"position_mode": "relative", "position_range": (0.2, 0.9)},
                                    {"output": "clip", "blur": 1.0}, {"output": "normalize", "blur": 1.0},
                                    {"patches_per_class": 2}, {"repeat_seconds": 0.25}])
def test_batched_files_equal_poscuda_apply_one_by_one(params, key_file):
    """PosCUDA's batched hook (PosCUDAProtection.apply_files: a chunk's files in one padded batch) gives every file
    exactly what its own apply gives, whatever the files' lengths (shorter than a patch, or than its position)."""
    from defenses.poscuda import PosCUDA, PosCUDAConfig
    prot = PosCUDA(PosCUDAConfig(key_file=key_file, **params)).derive(3, 16000)
    rng = np.random.default_rng(0)
    items = [(0.4 * rng.standard_normal((n, ch)), n % 3) for n, ch in
             [(3000, 1), (9000, 2), (500, 1), (16000, 1), (7000, 3), (900, 2)]]
    batched = worker.protect_batch(prot, items)
    assert len(batched) == len(items)
    for (data, c), out in zip(items, batched):
        single = worker.protect_samples(prot, data, c)
        assert np.array_equal(out, single)
        ref = prot.apply(torch.from_numpy(data.T.copy()), torch.full((data.shape[1],), c))
        assert np.array_equal(single, ref.numpy().T)
        assert not np.array_equal(single, data)
    long_ones = [it for it in items if it[0].shape[0] >= prot.patch_len]  # no row to set aside: the plain path
    assert len(long_ones) == 4 and all(np.array_equal(a, b) for a, b in zip(
        worker.protect_batch(prot, long_ones), (worker.protect_samples(prot, d, c) for d, c in long_ones)))
    # and the patches recorded for a chunk (PosCUDAProtection.file_patches, one call) are those of each file alone
    files = [(c, data.shape[0]) for data, c in items]
    assert worker.patches_of_files(prot, files) == [worker.patches_of(prot, c, n) for c, n in files]


def test_long_recordings_carry_repeated_patches(tmp_path, key_file):
    root = tmp_path / "podcast" / "talk"
    root.mkdir(parents=True)
    sf.write(str(root / "episode.flac"), tone(12.0, 16000, channels=2), 16000, subtype="PCM_16")
    out = tmp_path / "out"
    run(root.parent, out, key_file, defense={"repeat_seconds": 2.0, "patch_seconds": 0.1})
    _, records, _ = private_record(out, key_file)
    (p,) = records[0]["patches"]
    assert p["every"] == 32000 and p["count"] == len(range(p["start"], 12 * 16000 - 1600 + 1, 32000)) >= 5
    src, _ = sf.read(str(root / "episode.flac"), dtype="int16")
    dst, _ = sf.read(str(out / "talk" / "episode.flac"), dtype="int16")
    diff = np.nonzero((src != dst).any(axis=1))[0]
    gaps = np.diff(diff)
    assert gaps.max() <= 32000 - 1600 + 1  # no stretch longer than the spacing is left unprotected


def test_an_unwritable_output_fails_that_file_only(collection, key_file, tmp_path, monkeypatch):
    """A write error other than a full disk (here: no permission) fails that file, leaves no temporary file, and
    the run goes on."""
    import errno
    real_replace = worker.os.replace

    def no_permission(src, dst, **kw):
        if str(dst).endswith("d.wav"):
            raise OSError(errno.EACCES, "Permission denied")
        real_replace(src, dst, **kw)

    monkeypatch.setattr(worker.os, "replace", no_permission)
    out = tmp_path / "out"
    summary = run(collection, out, key_file)
    assert {f["path"]: f["error"] for f in summary["failed"]}["dog/d.wav"] == \
        "cannot write the output: Permission denied"
    assert summary["protected"] == len(GOOD) - 1
    assert not list(out.rglob("*.lab-partial")) and not (out / "dog" / "d.wav").exists()


def fill_the_disk_after(monkeypatch, n: int) -> list:
    """From the (n+1)-th output file on, writing fails as on a full disk (the worker's temporary file is created and
    half written first). Returns the temporary paths the worker opened."""
    import errno
    from lab.protect import safefs
    real = safefs.write_temp
    opened = []

    def write_temp(fd, blob, fsync, where):
        opened.append(where)
        if len(opened) > n:
            real(fd, blob[:len(blob) // 2], fsync, where)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, blob, fsync, where)

    monkeypatch.setattr(safefs, "write_temp", write_temp)
    return opened


@pytest.mark.parametrize("workers", [0, 2])
def test_a_full_disk_stops_the_run_in_one_line_and_a_rerun_resumes(collection, key_file, tmp_path, monkeypatch,
                                                                   workers):
    from lab.protect import protector, verify_collection
    from lab.protect.manifest import PARTIAL
    monkeypatch.setattr(protector, "CHUNK_FILES", 1)  # one file per chunk: recorded as soon as written
    opened = fill_the_disk_after(monkeypatch, 3)
    out = tmp_path / "out"
    with pytest.raises(LabError) as err:
        run(collection, out, key_file, workers=workers)
    message = str(err.value)
    assert "\n" not in message
    # walk order: cat/a, cat/b, cat/c written, cat/header_only failed (nothing to write), then dog/d.wav
    if workers == 0:
        assert message.startswith(f"stopped: cannot write {out.resolve() / 'dog' / 'd.wav'}: disk full (No space "
                                  f"left on device); 4 of 11 files were done and recorded in ")
    else:  # each worker process fills its own disk: which file stops the run depends on the scheduling
        assert re.match(r"stopped: cannot write \S+\.(wav|flac|aiff): disk full \(No space left on device\); \d+ of "
                        r"11 files were done and recorded in ", message), message
    assert message.endswith("no temporary file is left; free some space and run the same command again to resume")
    if workers == 0:  # (worker processes keep their own list)
        assert len(opened) == 4 and not Path(opened[-1]).exists()  # the half-written temporary file is gone
    assert [p.name for p in out.rglob("*.lab-partial")] == [PARTIAL]  # only the partial manifest: resume needs it
    monkeypatch.undo()
    summary = run(collection, out, key_file, workers=workers)
    assert summary["already_done"] >= (3 if workers == 0 else 1)
    assert summary["already_done"] + summary["protected"] == len(GOOD)
    assert verify_collection(out, key_file, workers=0)["counts"] == {"ok": len(GOOD)}


def test_a_full_disk_is_one_line_from_the_command_too(collection, key_file, tmp_path, monkeypatch, cli):
    from lab.protect import protector
    monkeypatch.setattr(protector, "CHUNK_FILES", 1)
    fill_the_disk_after(monkeypatch, 0)
    code, stdout, stderr = cli("protect", str(collection), str(tmp_path / "out"), "--key-file", str(key_file),
                               "--workers", "0")
    assert code == 2 and "Traceback" not in stderr + stdout
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stopped: cannot write ") and "a.wav: disk full" in lines[0]
    assert "0 of 11 files were done" in lines[0] and lines[0].endswith("run the same command again to resume")


def test_a_full_disk_while_writing_the_record_stops_the_run_too(collection, key_file, tmp_path, monkeypatch):
    """The record is the run's own file: a full disk there stops the run the same way, naming the record."""
    import errno
    import os
    from lab.protect import manifest, protector
    monkeypatch.setattr(protector, "CHUNK_FILES", 1)
    real_fdopen = os.fdopen

    class Record:
        def __init__(self, f):
            self.f, self.lines = f, 0

        def write(self, text):
            self.lines += '"kind": "file"' in text  # the header and the protection lines go down too
            if self.lines > 2:  # two files, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(text)

        def __getattr__(self, name):
            return getattr(self.f, name)

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        return Record(f) if ".protect-record.jsonl.lab-partial" in os.readlink(f"/proc/self/fd/{fd}") else f

    monkeypatch.setattr(manifest.os, "fdopen", fdopen)
    out = tmp_path / "out"
    with pytest.raises(LabError, match=r"^stopped: cannot write \S+\.protect-record\.jsonl\.lab-partial: disk full "
                                       r"\(No space left on device\); 2 of 11 files were done and recorded in "):
        run(collection, out, key_file)
    assert [p.name for p in out.rglob("*.lab-partial")] == [".manifest.jsonl.lab-partial"]
    monkeypatch.undo()
    summary = run(collection, out, key_file)
    assert summary["already_done"] == 2 and summary["protected"] == len(GOOD) - 2


def test_a_disk_already_full_when_a_resumed_run_starts_keeps_the_earlier_partial_record(collection, key_file,
                                                                                         tmp_path, monkeypatch):
    import errno
    import os
    from lab.protect import manifest

    def stop_after_four(done, total):
        if done == 4:
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(collection, out, key_file, progress=stop_after_four)
    (partial,) = key_file.parent.glob("*.protect-record.jsonl.lab-partial")
    before = partial.read_bytes()
    real_open = os.open

    def full(path, *args, **kwargs):
        if "protect-record" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(manifest.os, "open", full)
    with pytest.raises(LabError, match=r"^stopped: cannot write \S+\.protect-record\.jsonl\.lab-partial: disk full.*"
                                       r"0 of 11 files were done and recorded in \S+ \(earlier runs recorded 4\), .*run the "
                                       r"same command again"):
        run(collection, out, key_file)
    monkeypatch.undo()
    assert partial.read_bytes() == before  # what the first run did is still there to resume from
    assert sorted(p.name for p in key_file.parent.iterdir()) == sorted([key_file.name, partial.name])
    assert run(collection, out, key_file)["already_done"] == 3  # cat/a, cat/b, cat/c (header_only failed)


def test_same_input_and_key_give_the_same_bytes_at_another_time(collection, key_file, tmp_path):
    """No timestamp in the outputs (libsndfile's PEAK chunk in float files has one): a resumed run can equal an
    uninterrupted one byte for byte."""
    import time
    run(collection, tmp_path / "first", key_file)
    time.sleep(1.1)  # the PEAK chunk's clock counts seconds
    run(collection, tmp_path / "second", key_file)
    for rel in GOOD_PATHS:
        assert sha(tmp_path / "first" / rel) == sha(tmp_path / "second" / rel), rel


def test_a_key_file_others_can_read_is_warned_about_without_showing_the_key(collection, key_file, tmp_path):
    key_file.chmod(0o644)
    messages: list[str] = []
    run(collection, tmp_path / "out", key_file, log=messages.append)
    warning = [m for m in messages if m.startswith("warning:")]
    assert len(warning) == 1 and "can be read by others (mode 644)" in warning[0]
    assert key_file.read_text().strip() not in " ".join(messages)
