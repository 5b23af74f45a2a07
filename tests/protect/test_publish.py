"""OUTPUT is what a data owner publishes: nothing in it may reveal the protection (positions, filter taps, patch
starts) or the owner's paths; the private record lives outside it (mode 0600) and verify and resume still work; the
metadata file and the dataset card let Hugging Face `datasets` load the published folder (the real load is in
test_hf_roundtrip.py)."""
from __future__ import annotations

import csv
import json
import re
import shutil
import stat
import struct

import numpy as np
import pytest
import soundfile as sf

from lab.errors import LabError
from lab.protect import protect_collection, verify_collection
from lab.protect.manifest import CARD, LEGACY_FORMAT, MANIFEST, METADATA, PARTIAL, read_manifest
from tests.conftest import tone
from tests.protect.conftest import GOOD, private_record, sha, tree_hashes

GOOD_PATHS = {f"{label}/{name}" for label, name, *_ in GOOD}
FIXED_KEY = "fixed-test-key-for-the-publish-test-0001"  # a fixed key: the values searched for never change


@pytest.fixture
def fixed_key(tmp_path):
    path = tmp_path / "keys" / "owner.key"
    path.parent.mkdir()
    path.write_text(FIXED_KEY + "\n")
    path.chmod(0o600)
    return path


def text_forms(v: float) -> set[bytes]:
    """The ways one float could be written down as text: repr/json of the float64 and of its float32 value, short
    decimal forms."""
    f32 = np.float32(v)
    return {t.encode() for t in (repr(v), json.dumps(v), repr(float(f32)), str(f32), f"{v:.6g}", f"{v:.8f}",
                                 f"{v:.6e}")}


def float_forms(v: float) -> set[bytes]:
    """The text forms of a float and its raw IEEE bytes (both precisions, both byte orders). For values with full
    precision (positions, filter taps); a value with few significant bits (noise stored as float16) is searched as a
    run instead: alone, its 4 float32 bytes hold two fixed zero bytes and match a pair of quiet 16-bit samples by
    chance (it happened: -0.000487 packed big-endian is the samples -71, 96)."""
    return text_forms(v) | {struct.pack(order + code, v) for order in "<>" for code in "df"}


def run_forms(run) -> set[bytes]:
    """A run of consecutive values as a stored array would hold them: float16, float32 and float64, both byte
    orders."""
    values = np.asarray(run, dtype=np.float64)
    return {values.astype(np.dtype(order + code)).tobytes() for order in "<>" for code in ("f2", "f4", "f8")}


def published_hits(root, floats=(), whole_numbers=(), texts=(), runs=()) -> list[tuple[str, object]]:
    """Every (file, value) where one of the values turns up in a file under ``root``: a float in any of
    :func:`float_forms`, a whole number in any text (not inside a longer number), a text as its bytes; for each run
    of consecutive values, the run as an array (:func:`run_forms`, reported as its tuple) and each of its values as
    text."""
    needles = {b: v for v in floats for b in float_forms(v)}
    needles |= {b: v for run in runs for v in run for b in text_forms(v)}
    needles |= {b: tuple(run) for run in runs for b in run_forms(run)}
    hits = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel, data = p.relative_to(root).as_posix(), p.read_bytes()
        hits += [(rel, v) for b, v in needles.items() if b in data]
        hits += [(rel, n) for n in whole_numbers if re.search(rb"(?<![0-9.])%d(?![0-9])" % n, data)]
        hits += [(rel, t) for t in texts if t.encode() in data]
    return hits


def secrets_of(record_header: dict, records: list[dict]) -> tuple[set[float], set[int]]:
    """Every float of the derived protection (positions, filter taps other than the trivial 0 and 1) and every patch
    start sample of every file."""
    prot = record_header["protection"]
    floats = {v for row in prot["positions"] for v in row}
    floats |= {v for cls in prot["filters"] for taps in cls for v in taps if v not in (0.0, 1.0)}
    starts = {p["start"] for r in records if r["status"] == "protected" for p in r["patches"]}
    return floats, starts


def test_nothing_under_output_reveals_the_protection_or_the_owners_paths(collection, fixed_key, tmp_path, cli):
    out = tmp_path / "out"
    code, stdout, stderr = cli("protect", str(collection), str(out), "--key-file", str(fixed_key), "--workers", "0",
                               "-o", "patches_per_class=2", "--metadata")
    assert code == 1, stderr  # 1: the corrupt files of the collection; the rest is done
    header, records, _ = private_record(out, fixed_key)
    floats, starts = secrets_of(header, records)
    assert len(floats) == 3 * 2 * (1 + 30) and len(starts) >= 8  # 3 classes x 2 patches: a position, 30 taps
    # a start below 10 is a digit any text has, and one that equals a file's length or rate (facts anyone reads
    # from the file itself) says nothing: search for every other start
    facts = {r[k] for r in records if r["status"] == "protected" for k in ("frames", "sample_rate", "channels")}
    distinctive = {s for s in starts if s >= 10} - facts
    assert len(distinctive) >= 8
    owner_paths = {str(tmp_path), str(collection.resolve()), str(fixed_key.parent), fixed_key.name}
    source_hashes = {r["source_sha256"] for r in records if r["status"] == "protected"}
    published = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert published == GOOD_PATHS | {MANIFEST, METADATA, CARD}
    # starts as whole numbers, in any text (json, repr, csv)
    assert published_hits(out, floats, distinctive, owner_paths | source_hashes) == []
    # the same search does find them in the private record (the forms searched are the ones a file would hold)
    record = [p for p in fixed_key.parent.iterdir() if p.name.endswith(".protect-record.jsonl")]
    assert len(record) == 1 and stat.S_IMODE(record[0].stat().st_mode) == 0o600
    secret = record[0].read_bytes()
    assert all(re.search(rb"(?<![0-9.])%d(?![0-9])" % s, secret) for s in distinctive)
    assert all(json.dumps(v).encode() in secret for v in floats)
    assert "private" in " ".join(stdout.split()) and str(record[0]) in "".join(stdout.split())

    # verify and resume still work from the record
    code, stdout, _ = cli("verify", str(out), "--key-file", str(fixed_key), "--workers", "0")
    text = " ".join(stdout.split())
    assert f"{len(GOOD)} ok" in text and code == 1 and "incomplete: 3 source file(s)" in text  # the corrupt three
    assert not re.search(r"^(changed|missing|mismatch|unprotected|extra|partial|manifest|metadata|card|unsafe) ",
                         stdout, re.M)
    code, stdout, _ = cli("protect", str(collection), str(out), "--key-file", str(fixed_key), "--workers", "0",
                          "-o", "patches_per_class=2", "--metadata")
    assert f"protected 0 files, {len(GOOD)} already done" in " ".join(stdout.split())


def test_the_partial_record_is_owner_only_while_the_run_goes(collection, key_file, tmp_path):
    out = tmp_path / "out"
    modes = []

    def look(done, total):
        (partial,) = key_file.parent.glob("*.protect-record.jsonl.lab-partial")
        modes.append(stat.S_IMODE(partial.stat().st_mode))

    import os
    old = os.umask(0)  # even with no umask
    try:
        protect_collection(collection, out, key_file, workers=0, progress=look)
    finally:
        os.umask(old)
    assert modes and set(modes) == {0o600}
    (record,) = key_file.parent.glob("*.protect-record.jsonl")
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert record.name.startswith("out.")


def test_a_record_inside_output_or_input_or_over_another_file_is_refused(collection, key_file, tmp_path, cli):
    out = tmp_path / "out"
    before = tree_hashes(collection)
    for inside, message in ((out / "rec.jsonl", "is inside OUTPUT"), (out / "sub" / "r", "is inside OUTPUT"),
                            (collection / "rec.jsonl", "is inside INPUT")):
        code, _, err = cli("protect", str(collection), str(out), "--key-file", str(key_file), "--record", str(inside))
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not out.exists() and tree_hashes(collection) == before
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    code, _, err = cli("protect", str(collection), str(out), "--key-file", str(key_file), "--record", str(precious))
    assert code == 2 and "is not a lab protect record; refusing to overwrite" in " ".join(err.split())
    assert precious.read_text() == "mine"
    # the record of another OUTPUT is never overwritten either
    mine = tmp_path / "first.record"
    protect_collection(collection, tmp_path / "first", key_file, workers=0, record=mine)
    first = mine.read_bytes()
    with pytest.raises(LabError, match="is the record of another OUTPUT"):
        protect_collection(collection, tmp_path / "second", key_file, workers=0, record=mine)
    assert mine.read_bytes() == first
    # nor is a key left inside OUTPUT used (it would be published)
    shutil.copy(key_file, tmp_path / "first" / "owner.key")
    with pytest.raises(LabError, match="is inside OUTPUT"):
        protect_collection(collection, tmp_path / "first", tmp_path / "first" / "owner.key", workers=0, record=mine)


def test_outputs_of_one_name_protected_with_one_key_keep_separate_records(collection, key_file, tmp_path):
    a, b = tmp_path / "x" / "out", tmp_path / "y" / "out"
    protect_collection(collection, a, key_file, workers=0)
    protect_collection(collection, b, key_file, workers=0)
    assert len(list(key_file.parent.glob("out.*.protect-record.jsonl"))) == 2
    for out in (a, b):
        assert verify_collection(out, key_file, workers=0)["counts"] == {"ok": len(GOOD)}
    # renaming OUTPUT (e.g. to publish it) does not lose its record: it is found by the collection id
    a.rename(tmp_path / "x" / "renamed")
    report = verify_collection(tmp_path / "x" / "renamed", key_file, workers=0)
    assert report["counts"] == {"ok": len(GOOD)} and not report["problems"]


class Interrupt(Exception):
    pass


def test_a_chosen_record_serves_resume_and_verify(collection, key_file, tmp_path, cli):
    out, record = tmp_path / "out", tmp_path / "vault" / "collection.record"
    record.parent.mkdir()

    def stop(done, total):
        if done == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        protect_collection(collection, out, key_file, workers=0, record=record, progress=stop)
    assert (record.parent / "collection.record.lab-partial").is_file() and not record.exists()
    # resuming without --record cannot find it next to the key: a one-line error says what to pass
    code, _, err = cli("protect", str(collection), str(out), "--key-file", str(key_file))
    assert code == 2 and "pass --record PATH" in " ".join(err.split())
    summary = protect_collection(collection, out, key_file, workers=0, record=record)
    assert summary["already_done"] >= 3 and summary["already_done"] + summary["protected"] == len(GOOD)
    assert stat.S_IMODE(record.stat().st_mode) == 0o600 and summary["record"] == str(record)
    assert not list(key_file.parent.glob("*.protect-record*"))
    code, stdout, err = cli("verify", str(out), "--key-file", str(key_file), "--record", str(record))
    assert f"{len(GOOD)} ok" in " ".join(stdout.split()), err
    code, _, err = cli("verify", str(out), "--key-file", str(key_file))
    assert code == 2 and "pass --record PATH" in " ".join(err.split())


def write_old_manifest(out, key_file):
    """Turn a protected OUTPUT into what lab protect wrote before the split: the whole record in OUTPUT."""
    header, records, summary = private_record(out, key_file)
    (record,) = key_file.parent.glob("*.protect-record.jsonl")
    record.unlink()
    old = {k: v for k, v in header.items() if k not in ("collection_id", "output")} | {"format": LEGACY_FORMAT}
    with open(out / MANIFEST, "w") as f:
        for obj in (old, *({"kind": "file", **r} for r in records), summary):
            f.write(json.dumps(obj, sort_keys=True) + "\n")


def test_an_old_output_holding_the_protection_is_flagged_then_cleaned(collection, key_file, tmp_path):
    out = tmp_path / "out"
    protect_collection(collection, out, key_file, workers=0)
    write_old_manifest(out, key_file)
    with pytest.raises(LabError, match="do NOT publish this folder; run the same `lab protect` command again"):
        verify_collection(out, key_file, workers=0)
    messages = []
    summary = protect_collection(collection, out, key_file, workers=0, log=messages.append)
    assert any("do NOT publish" in m for m in messages)
    assert summary["already_done"] == len(GOOD) and summary["protected"] == 0  # nothing redone
    header, _, _ = read_manifest(out)
    assert "protection" not in header and b"\"patches\"" not in (out / MANIFEST).read_bytes()
    assert verify_collection(out, key_file, workers=0)["counts"] == {"ok": len(GOOD)}


def test_verify_flags_a_record_copied_into_output(collection, key_file, tmp_path):
    out = tmp_path / "out"
    protect_collection(collection, out, key_file, workers=0)
    (record,) = key_file.parent.glob("*.protect-record.jsonl")
    shutil.copy(record, out / "notes.jsonl")
    report = verify_collection(out, key_file, workers=0)
    assert [(p["path"], p["status"]) for p in report["problems"]] == [("notes.jsonl", "unsafe")]
    with pytest.raises(LabError, match="is inside OUTPUT"):
        verify_collection(out, key_file, workers=0, record=out / "notes.jsonl")


# --- metadata for Hugging Face datasets' audiofolder -------------------------------------------------------------

def read_metadata(out):
    with open(out / METADATA, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_metadata_is_the_audiofolder_format_and_verify_accepts_it(collection, key_file, tmp_path, cli):
    out = tmp_path / "out"
    code, stdout, _ = cli("protect", str(collection), str(out), "--key-file", str(key_file), "--workers", "0",
                          "--metadata")
    columns, rows = read_metadata(out)
    assert columns == ["file_name", "label"]
    assert {r["file_name"] for r in rows} == GOOD_PATHS and len(rows) == len(GOOD)  # protected files only
    for r in rows:
        assert (out / r["file_name"]).is_file()  # relative to the metadata file's folder (OUTPUT)
        assert r["label"] == r["file_name"].split("/")[0]
    assert read_manifest(out)[2]["metadata_sha256"] == sha(out / METADATA)
    report = verify_collection(out, key_file, workers=0)
    assert report["problems"] == [] and report["extra"] == [] and report["counts"] == {"ok": len(GOOD)}
    # a source added later: a plain re-run (no --metadata) keeps the run's own metadata.csv up to date
    sf.write(str(collection / "owl" / "late.wav"), tone(0.5, 8000), 8000)
    protect_collection(collection, out, key_file, workers=0)
    assert {r["file_name"] for r in read_metadata(out)[1]} == GOOD_PATHS | {"owl/late.wav"}
    # an edited metadata.csv: verify says so, and lab protect --metadata does not overwrite it
    (out / METADATA).write_text("file_name,label\ncat/a.wav,dog\n")
    problems = verify_collection(out, key_file, workers=0)["problems"]
    assert [p["status"] for p in problems] == ["metadata"] and "not listed" in problems[0]["detail"]
    code, _, err = cli("protect", str(collection), str(out), "--key-file", str(key_file), "--metadata")
    assert code == 2 and "was not written by lab protect" in " ".join(err.split())
    assert (out / METADATA).read_text() == "file_name,label\ncat/a.wav,dog\n"


def test_an_interrupted_run_leaves_no_metadata_or_manifest_under_their_names(collection, key_file, tmp_path):
    out = tmp_path / "out"

    def stop(done, total):
        if done == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        protect_collection(collection, out, key_file, workers=0, metadata=True, progress=stop)
    assert (out / PARTIAL).is_file() and not (out / MANIFEST).exists() and not (out / METADATA).exists()


def card_header(out):
    """The YAML header of OUTPUT's dataset card."""
    import yaml
    text = (out / CARD).read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_the_dataset_card_declares_the_classes_in_the_manifests_order(collection, key_file, tmp_path, cli):
    out = tmp_path / "out"
    code, stdout, _ = cli("protect", str(collection), str(out), "--key-file", str(key_file), "--workers", "0",
                          "--metadata")
    assert f"datasetcard{out / CARD}" in "".join(stdout.split())  # (rich wraps long lines)
    classes = read_manifest(out)[0]["classes"]
    assert classes == ["cat", "dog", "owl"]
    # the config datasets loads by default declares the columns: audio, and label a ClassLabel of the classes
    assert card_header(out) == {"configs": [{"config_name": "default", "features": [
        {"name": "audio", "dtype": "audio"},
        {"name": "label", "dtype": {"class_label": {"names": {"0": "cat", "1": "dog", "2": "owl"}}}}]}]}
    assert read_manifest(out)[2]["card"] == CARD and read_manifest(out)[2]["card_sha256"] == sha(out / CARD)
    # nothing but the class names, the public file names and how to load it: no key, paths or protection
    text = (out / CARD).read_text()
    assert str(tmp_path) not in text and "fingerprint" not in text and "position" not in text
    assert verify_collection(out, key_file, workers=0)["problems"] == []
    # without --metadata there is no card
    protect_collection(collection, tmp_path / "plain", key_file, workers=0)
    assert not (tmp_path / "plain" / CARD).exists()


def test_verify_flags_a_card_that_disagrees_and_no_run_overwrites_the_owners_card(collection, key_file, tmp_path,
                                                                                cli):
    out = tmp_path / "out"
    protect_collection(collection, out, key_file, workers=0, metadata=True)
    ours = (out / CARD).read_text()
    # the classes in another order: verify flags it, and neither a plain run nor --metadata overwrites it
    swapped = ours.replace("'0': cat", "'0': TMP").replace("'1': dog", "'1': cat").replace("'0': TMP", "'0': dog")
    assert swapped != ours
    (out / CARD).write_text(swapped)
    problems = verify_collection(out, key_file, workers=0)["problems"]
    assert [(p["path"], p["status"]) for p in problems] == [(CARD, "card")]
    assert "dog, cat, owl" in problems[0]["detail"] and "cat, dog, owl" in problems[0]["detail"]
    messages = []
    protect_collection(collection, out, key_file, workers=0, log=messages.append)
    assert (out / CARD).read_text() == swapped
    assert any(m.startswith("warning:") and "was not written by lab protect" in m for m in messages)
    code, _, err = cli("protect", str(collection), str(out), "--key-file", str(key_file), "--metadata")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "was not written by lab protect" in err, err
    assert (out / CARD).read_text() == swapped
    # a card of the owner's own that declares the labels right is kept as it is, and passes verify
    mine = ours.replace("# Protected audio collection", "# My birds and pets\n\nRecorded in my garden.")
    (out / CARD).write_text(mine)
    code, _, err = cli("protect", str(collection), str(out), "--key-file", str(key_file), "--metadata")
    assert code == 1 and (out / CARD).read_text() == mine, err  # 1: the corrupt files of the collection
    assert verify_collection(out, key_file, workers=0)["problems"] == []
    # a plain card beside metadata.csv (labels would load as strings) is flagged; with no metadata.csv it is not
    (out / CARD).write_text("# My collection\n")
    problems = verify_collection(out, key_file, workers=0)["problems"]
    assert [(p["path"], p["status"]) for p in problems] == [(CARD, "card")]
    assert "plain strings" in problems[0]["detail"]
    (out / METADATA).unlink()
    assert verify_collection(out, key_file, workers=0)["problems"] == []
    # a card that does not parse, or that declares other columns, is flagged
    for text, says in (("---\nconfigs: [\n---\n", "does not parse"),
                       ("---\nconfigs:\n- config_name: default\n  features:\n  - name: label\n    dtype: string\n"
                        "---\n", "not audio and label")):
        (out / CARD).write_text(text)
        problems = verify_collection(out, key_file, workers=0)["problems"]
        assert [p["status"] for p in problems] == ["card"] and says in problems[0]["detail"], problems


def test_our_card_is_kept_up_to_date_and_written_beside_an_earlier_runs_metadata(collection, key_file, tmp_path):
    out = tmp_path / "out"
    protect_collection(collection, out, key_file, workers=0, metadata=True)
    # a card lab protect wrote and nobody edited is the run's own: a plain re-run writes it again (and records it)
    (out / CARD).unlink()
    protect_collection(collection, out, key_file, workers=0)
    assert (out / CARD).is_file() and read_manifest(out)[2]["card_sha256"] == sha(out / CARD)
    before = (out / CARD).read_bytes()
    protect_collection(collection, out, key_file, workers=0)
    assert (out / CARD).read_bytes() == before and verify_collection(out, key_file, workers=0)["problems"] == []


def test_a_class_that_csv_readers_take_for_missing_stops_metadata_in_one_line(tmp_path, key_file, cli):
    root = tmp_path / "input"
    for label in ("NA", "cat"):
        (root / label).mkdir(parents=True)
        sf.write(str(root / label / "a.wav"), tone(0.3, 8000), 8000)
    out = tmp_path / "out"
    code, _, err = cli("protect", str(root), str(out), "--key-file", str(key_file), "--metadata")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "'NA' would load with no label" in err, err
    assert not out.exists()
    # without --metadata the collection is protected as usual
    assert protect_collection(root, out, key_file, workers=0)["protected"] == 2
