"""lab protect with a defense optimised on the collection itself (em-noise, robust-em, poscuda-opt, ensemble-em:
every registered defense that ``needs_training_set`` and whose protection is ``on_collection``, from the registry):
optimised on the collection's working clips, resumable after an interruption mid-optimisation (exactly: the same result as an
uninterrupted run), written file by file at each file's own rate and length, checked by lab verify from the record
and its arrays alone, nothing of it under OUTPUT; the refusals in one line. Tiny optimisations (1-2 rounds of a few
batches) on 3 FSDD digits x 8 recordings and on a generated mixed-rate folder."""
from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from defenses.base import Protection
from lab.errors import LabError
from lab.protect import protect_collection, verify_collection
from lab.protect import worker
from lab.protect.manifest import MANIFEST, locate_record, read_manifest, read_protections
from lab.protect.optimise import STATE_SUFFIX, StateFolder, rebuild
from lab.protect.protector import optimised_defenses
from tests.protect.conftest import private_record, tree_hashes
from tests.protect.test_defenses import options_of
from tests.protect.test_publish import FIXED_KEY, fixed_key, published_hits  # noqa: F401 (fixture)

TINY = {"max_rounds": 1, "train_batches": 2, "steps": 2}  # an optimisation of about a second on 24 clips
TWO_ROUNDS = {"max_rounds": 2, "min_rounds": 2, "stop_accuracy": 1.0, "train_batches": 2, "steps": 2}


def options(fields: dict) -> list[str]:
    return [a for k, v in fields.items() for a in ("--option", f"{k}={v}")]


def read(path):
    return sf.read(str(path), dtype="float64", always_2d=True)[0]


def snr_db(clean, protected):
    return 10 * np.log10((clean ** 2).sum() / ((protected - clean) ** 2).sum())


@pytest.fixture
def digits(fsdd_dir, tmp_path) -> Path:
    """INPUT/<digit>/<recording>.wav: 3 FSDD digits x 8 recordings (8 kHz mono 16-bit, 0.2 to 0.9 s)."""
    root = tmp_path / "digits"
    for digit in "012":
        (root / digit).mkdir(parents=True)
        for p in sorted((fsdd_dir / "recordings").glob(f"{digit}_*.wav"))[::25][:8]:
            shutil.copy(p, root / digit / p.name)
    assert len(list(root.rglob("*.wav"))) == 24
    return root


def record_file(out: Path, key: Path) -> Path:
    return locate_record(out, key, read_manifest(out)[0]["collection_id"], None, earlier=True)


def arrays_of(out: Path, key: Path) -> dict[str, torch.Tensor]:
    header = private_record(out, key)[0]
    return torch.load(record_file(out, key).parent / header["optimised"]["arrays"]["file"], weights_only=True)


def test_class_wise_em_noise_protect_then_verify_on_real_recordings(digits, fixed_key, tmp_path, cli):
    out = tmp_path / "out"
    args = ["protect", str(digits), str(out), "--key-file", str(fixed_key), "--defense", "em-noise", "--workers",
            "0", *options({**TINY, "mode": "class-wise", "snr_db": 20})]
    code, stdout, stderr = cli(*args)
    text = " ".join(stdout.split())
    assert code == 0, stdout + stderr
    assert "24 working clips (8000 Hz, mono, 1 s) from 24 files in 3 classes" in text
    assert "min-min round 1: surrogate accuracy" in text and "protected 24 files" in text
    code, vout, _ = cli("verify", str(out), "--key-file", str(fixed_key), "--workers", "0")
    assert code == 0 and "24 ok" in " ".join(vout.split()), vout

    # each file: its class pattern at exactly 20 dB (rounded to 16 bits), over the whole file
    header, records, _ = private_record(out, fixed_key)
    assert header["protection"]["defense"] == "em-noise" and header["protection"]["params"]["mode"] == "class-wise"
    for r in records:
        assert abs(snr_db(read(digits / r["path"]), read(out / r["path"])) - 20.0) < 0.05, r["path"]
    assert read_protections(record_file(out, fixed_key))[8000]["mapping"].startswith("the file's class pattern")

    # the noise is in the arrays file beside the record (0600, hash in the header), the checkpoint folder is gone
    info = header["optimised"]
    arrays_path = record_file(out, fixed_key).parent / info["arrays"]["file"]
    assert stat.S_IMODE(arrays_path.stat().st_mode) == 0o600 and info["arrays"]["names"] == ["patterns"]
    assert info["working"]["sample_rate"] == 8000 and info["working"]["clip_samples"] == 8000
    assert len(info["sources"]) == 24 and not list(fixed_key.parent.glob(f"*{STATE_SUFFIX}"))
    patterns = torch.load(arrays_path, weights_only=True)["patterns"]
    assert patterns.shape == (3, 8000)

    # nothing under OUTPUT reveals it: the noise's values, the sources' hashes, the record's facts, the key, paths
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == \
        {r["path"] for r in records} | {MANIFEST}
    runs = [tuple(row.tolist()) for row in patterns[:, 100:110]]
    floats = {v for run in runs for v in run}
    texts = {*info["sources"], info["collection_sha256"], info["arrays"]["sha256"], info["arrays"]["file"],
             FIXED_KEY, str(tmp_path), str(fixed_key.parent)} | {r["source_sha256"] for r in records}
    assert len(floats) == 30 and published_hits(out, (), (), texts, runs) == []
    planted = tmp_path / "planted"  # the same search finds them where they are written down, as text or an array
    planted.mkdir()
    (planted / "values.json").write_text(json.dumps(sorted(floats)) + json.dumps(sorted(texts)))
    assert {v for _, v in published_hits(planted, (), (), texts, runs)} == floats | texts
    (planted / "values.json").unlink()
    (planted / "noise.raw").write_bytes(b"\x01" + np.asarray(runs[1], dtype=">f2").tobytes())
    assert [v for _, v in published_hits(planted, (), (), texts, runs)] == [runs[1]]

    # the same command again: the noise is rebuilt from the record (not optimised again), every file already done
    code, stdout, _ = cli(*args)
    text = " ".join(stdout.split())
    assert code == 0 and "reused from its record" in text and "protected 0 files, 24 already done" in text
    assert "min-min round" not in text


def test_an_interrupted_optimisation_resumes_after_its_last_round(digits, key_file, tmp_path, cli, monkeypatch):
    """Ctrl-C after round 1 of 2 (a checkpoint hook raising KeyboardInterrupt): one line saying what was kept, a
    private checkpoint beside the record, nothing in OUTPUT; the same command resumes with round 2 (round 1 is not
    redone) and ends exactly where an uninterrupted run does (the same process: bit for bit)."""
    fields = {**TWO_ROUNDS, "mode": "sample-wise", "snr_db": 25}
    args = ["--key-file", str(key_file), "--defense", "em-noise", "--workers", "0", *options(fields)]
    save = StateFolder.save

    def interrupted(self, name, obj):
        save(self, name, obj)
        if name == "checkpoint.pt" and obj["round"] == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(StateFolder, "save", interrupted)
    out = tmp_path / "out"
    code, stdout, stderr = cli("protect", str(digits), str(out), *args)
    assert code == 130 and "min-min round 1" in stdout and "min-min round 2" not in stdout
    assert len(stderr.strip().splitlines()) == 1 and "stopped after round 1" in stderr
    (state,) = key_file.parent.glob(f"*{STATE_SUFFIX}")
    assert f"its state is kept in {state} (private" in stderr and "run the same command again to resume" in stderr
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "checkpoint.pt").stat().st_mode) == 0o600
    assert not out.exists() and not list(key_file.parent.glob("*.protect-record*"))
    monkeypatch.setattr(StateFolder, "save", save)

    code, stdout, stderr = cli("protect", str(digits), str(out), *args)
    text = " ".join(stdout.split())
    assert code == 0, stdout + stderr
    assert "resuming after round 1" in text and "min-min round 2" in text and "min-min round 1" not in text
    assert "resumed after round 1: 2 rounds" in text and not state.exists()
    assert verify_collection(out, key_file, workers=0)["passed"]

    reference = tmp_path / "reference"
    summary = protect_collection(digits, reference, key_file, defense={"type": "em-noise", **fields}, workers=0)
    assert summary["optimisation"]["how"] == "optimised"
    resumed, uninterrupted = arrays_of(out, key_file), arrays_of(reference, key_file)
    assert resumed.keys() == {"noise"} and torch.equal(resumed["noise"], uninterrupted["noise"])
    noise = resumed["noise"].float()  # nothing of the noise (the float16 values applied) or its sources in OUTPUT
    runs = [tuple(row[row != 0][1000:1010].tolist()) for row in noise[:3]]
    info = private_record(out, key_file)[0]["optimised"]
    assert len({v for run in runs for v in run}) >= 20
    assert published_hits(out, (), (), {*info["sources"], str(key_file.parent)}, runs) == []
    a, b = tree_hashes(out), tree_hashes(reference)
    assert {k: v for k, v in a.items() if k != MANIFEST} == {k: v for k, v in b.items() if k != MANIFEST}
    rounds = [private_record(o, key_file)[0]["protection"]["optimisation"]["rounds"] for o in (out, reference)]
    assert [r["train_accuracy"] for r in rounds[0]] == [r["train_accuracy"] for r in rounds[1]]


def test_ensemble_em_interrupted_resumes_bit_for_bit_and_nothing_of_it_is_published(digits, fixed_key, tmp_path, cli,
                                                                                     monkeypatch):
    """ensemble-em (two members the spine builds for the working clips: CNN on MFCC and a linear model, one
    transformation draw a step), Ctrl-C after round 1 of 2: one line, a private checkpoint holding both members and
    the transformations' generator; the same command resumes with round 2 and ends where an uninterrupted run ends
    (patterns, every file, the members' accuracies, the draws' SHA-256 chain); lab verify passes; nothing of the
    patterns, the key or the record is under OUTPUT."""
    fields = {**options_of("ensemble-em"), **TWO_ROUNDS, "snr_db": 25}
    args = ["--key-file", str(fixed_key), "--defense", "ensemble-em", "--workers", "0", *options(fields)]
    save, kept = StateFolder.save, []

    def interrupted(self, name, obj):
        save(self, name, obj)
        if name == "checkpoint.pt" and obj["round"] == 1:
            kept.append(obj)
            raise KeyboardInterrupt
    monkeypatch.setattr(StateFolder, "save", interrupted)
    out = tmp_path / "out"
    code, stdout, stderr = cli("protect", str(digits), str(out), *args)
    assert code == 130 and "ensemble min-min round 1" in stdout and "min-min round 2" not in stdout, stdout + stderr
    assert len(stderr.strip().splitlines()) == 1 and "stopped after round 1" in stderr
    assert len(kept[0]["members"]) == 2 and kept[0]["eot"]["made"] > 0 and not out.exists()
    monkeypatch.setattr(StateFolder, "save", save)

    code, stdout, stderr = cli("protect", str(digits), str(out), *args)
    text = " ".join(stdout.split())
    assert code == 0, stdout + stderr
    assert "resuming after round 1" in text and "ensemble min-min round 2" in text and "min-min round 1" not in text
    assert "resumed after round 1: 2 rounds, members' accuracy" in text
    code, vout, _ = cli("verify", str(out), "--key-file", str(fixed_key), "--workers", "0")
    assert code == 0 and "24 ok" in " ".join(vout.split()), vout

    reference = tmp_path / "reference"
    protect_collection(digits, reference, fixed_key, defense={"type": "ensemble-em", **fields}, workers=0)
    resumed, uninterrupted = arrays_of(out, fixed_key), arrays_of(reference, fixed_key)
    assert resumed.keys() == {"patterns"} and torch.equal(resumed["patterns"], uninterrupted["patterns"])
    a, b = tree_hashes(out), tree_hashes(reference)
    assert {k: v for k, v in a.items() if k != MANIFEST} == {k: v for k, v in b.items() if k != MANIFEST}
    records = [private_record(o, fixed_key)[0]["protection"]["optimisation"] for o in (out, reference)]
    assert [r["train_accuracy"] for r in records[0]["rounds"]] == [r["train_accuracy"] for r in records[1]["rounds"]]
    assert records[0]["eot"] == records[1]["eot"] and records[0]["surrogates"] == ["cnn on mfcc", "linear on mfcc"]

    header, rows, _ = private_record(out, fixed_key)
    for r in rows:  # each file: its class pattern at 25 dB (rounded to 16 bits)
        assert abs(snr_db(read(digits / r["path"]), read(out / r["path"])) - 25.0) < 0.05, r["path"]
    info = header["optimised"]
    runs = [tuple(row.tolist()) for row in resumed["patterns"][:, 100:110]]
    texts = {*info["sources"], info["collection_sha256"], info["arrays"]["sha256"], info["arrays"]["file"],
             FIXED_KEY, str(tmp_path), str(fixed_key.parent)} | {r["source_sha256"] for r in rows}
    assert len({v for run in runs for v in run}) == 30 and published_hits(out, (), (), texts, runs) == []
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == \
        {r["path"] for r in rows} | {MANIFEST}


def test_ensemble_em_tile_pattern_protects_then_verifies_on_real_recordings(digits, key_file, tmp_path):
    """ensemble-em with pattern: tile (and the masks and the codec proxy among its transformations) through lab
    protect: every file gets its class's tile, periodic with the tile's period and at 25 dB exactly (16-bit
    rounding aside); the arrays hold one tile per class; lab verify passes."""
    fields = {**options_of("ensemble-em"), "snr_db": 25, "pattern": "tile", "tile_seconds": 0.05,
              "eot": {"draws": 1, "time_mask_p": 0.5, "freq_mask_p": 0.5, "codec_p": 0.5}}
    out = tmp_path / "out"
    protect_collection(digits, out, key_file, defense={"type": "ensemble-em", **fields}, workers=0)
    assert arrays_of(out, key_file)["patterns"].shape == (3, 400)  # 3 classes, 0.05 s at 8 kHz
    header, rows, _ = private_record(out, key_file)
    assert header["protection"]["optimisation"]["pattern"] == "tile"
    for r in rows:
        clean, protected = read(digits / r["path"]), read(out / r["path"])
        assert abs(snr_db(clean, protected) - 25.0) < 0.05, r["path"]
        noise = (protected - clean)[:, 0]  # each sample rounded to 16 bits: off by at most half a step
        assert np.abs(noise[400:] - noise[:-400]).max() <= 1 / 32768 + 1e-12 < np.abs(noise).max(), r["path"]
    assert verify_collection(out, key_file, workers=0)["passed"]


def test_a_changed_option_or_collection_starts_over_and_says_so(digits, key_file, tmp_path, monkeypatch):
    save = StateFolder.save

    def interrupted(self, name, obj):
        save(self, name, obj)
        if name == "checkpoint.pt":
            raise KeyboardInterrupt
    monkeypatch.setattr(StateFolder, "save", interrupted)
    out = tmp_path / "out"
    defense = {"type": "em-noise", "mode": "class-wise", **TWO_ROUNDS}
    with pytest.raises(KeyboardInterrupt, match="stopped after round 1"):
        protect_collection(digits, out, key_file, defense=defense, workers=0)
    monkeypatch.setattr(StateFolder, "save", save)
    messages: list[str] = []
    protect_collection(digits, out, key_file, defense={**defense, "snr_db": 25}, workers=0, log=messages.append)
    text = " ".join(messages)
    assert "does not fit this run" in text and "starting over" in text and "min-min round 1" in text

    # once written, the OUTPUT belongs to the collection it was optimised on: a new file is refused in one line
    shutil.copy(next((digits / "1").iterdir()), digits / "1" / "copy.wav")
    with pytest.raises(LabError, match="optimised on the collection as it was then"):
        protect_collection(digits, out, key_file, defense={**defense, "snr_db": 25}, workers=0)


@pytest.mark.parametrize("kind", optimised_defenses())
def test_each_optimised_defense_is_written_at_each_files_own_rate(kind, labelled_folder, key_file, tmp_path):
    """A mixed 8/16 kHz, mono/stereo, WAV/FLAC folder: the optimised protection written onto every file at its own
    rate (a protection line per rate, what the record's protection gives there), verified, within the budget per
    channel; the written protections keep lab protect's hook contract (apply_files = apply, file by file)."""
    out = tmp_path / "out"
    summary = protect_collection(labelled_folder, out, key_file, workers=2,
                                 defense={"type": kind, **options_of(kind), "snr_db": 30, "clip_seconds": 0.6})
    assert summary["protected"] == 15 and summary["optimisation"]["clip_samples"] == 4800
    report = verify_collection(out, key_file, workers=0)
    assert report["passed"] and report["counts"] == {"ok": 15}, report
    header, records, _ = private_record(out, key_file)
    path = record_file(out, key_file)
    lines = read_protections(path)
    assert sorted(lines) == [8000, 16000] and all(line["working_rate"] == 8000 for line in lines.values())
    prot, working = rebuild(header, path, header["key_fingerprint"])
    if kind == "poscuda-opt":  # its optimised taps are in the record's JSON, never under OUTPUT
        taps = {v for cls in header["protection"]["filters"] for f in cls for v in f if v not in (0.0, 1.0)}
        assert len(taps) > 50 and published_hits(out, taps) == []
    for r in records:
        src, dst = read(labelled_folder / r["path"]), read(out / r["path"])
        assert dst.shape == src.shape and not np.array_equal(dst, src)
        assert min(snr_db(src[:, c], dst[:, c]) for c in range(src.shape[1])) >= 30 - 0.05, r["path"]
    for rate in (8000, 16000):
        at = prot.files_at(rate, working)
        assert type(at).file_by_file and json.loads(json.dumps(at.to_dict())) == lines[rate]
        items = [(sf.read(str(labelled_folder / r["path"]), dtype="float32", always_2d=True)[0], r["class"])
                 for r in records if r["sample_rate"] == rate]
        batched = worker.protect_batch(at, items)
        assert all(np.array_equal(b, worker.protect_samples(at, d, c)) for (d, c), b in zip(items, batched))


@pytest.mark.parametrize("defense", [{"type": "em-filter", "taps": 17},
                                     {"type": "ensemble-em", **options_of("ensemble-em"), "pattern": "filter",
                                      "filter_taps": 17}], ids=["em-filter", "ensemble-em-filter"])
def test_class_filters_write_each_channel_its_own_noise_through_its_class_filter(defense, labelled_folder, key_file,
                                                                                  tmp_path):
    """Class filters on files: every channel of every file its own noise, drawn from its samples (two files of one
    class share no waveform; a stereo file whose channels are equal gets equal noise), coloured alike by their class's filter (their spectra correlate
    more than with another class's), the budget kept per channel; lab verify re-derives every file."""
    out = tmp_path / "out"
    summary = protect_collection(labelled_folder, out, key_file, workers=0,
                                 defense={**TINY, **defense, "snr_db": 20, "clip_seconds": 0.6})
    assert summary["protected"] == 15
    assert verify_collection(out, key_file, workers=0)["counts"] == {"ok": 15}
    header, records, _ = private_record(out, key_file)
    assert header["protection"]["noise_salt"] not in json.dumps(read_protections(record_file(out, key_file)))

    def change(name: str) -> np.ndarray:
        return read(out / name) - read(labelled_folder / name)

    def band_spectrum(d: np.ndarray) -> np.ndarray:
        spec = np.abs(np.fft.rfft(d[:8000], 8192)) ** 2
        return np.log(spec[:4096].reshape(64, 64).mean(axis=1) + 1e-20)

    same_rate = [("cat/cat0.wav", "cat/cat2.wav"), ("dog/dog0.wav", "dog/dog2.wav")]  # 16 kHz, mono
    for a, b in same_rate:
        da, db = change(a)[:, 0], change(b)[:, 0]
        m = min(len(da), len(db))
        assert abs(np.corrcoef(da[:m], db[:m])[0, 1]) < 0.2, (a, b)
    stereo = change("cat/cat1.flac")  # its two channels hold the same samples: the same noise (dual mono stays so)
    assert np.array_equal(stereo[:, 0], stereo[:, 1]) and np.abs(stereo).max() > 0
    cat, cat2, dog = (band_spectrum(change(n)[:, 0]) for n in ("cat/cat0.wav", "cat/cat2.wav", "dog/dog0.wav"))
    assert np.corrcoef(cat, cat2)[0, 1] > np.corrcoef(cat, dog)[0, 1]
    for r in records:
        src, dst = read(labelled_folder / r["path"]), read(out / r["path"])
        assert min(snr_db(src[:, c], dst[:, c]) for c in range(src.shape[1])) >= 20 - 0.05, r["path"]


def test_verify_checks_the_arrays_file_and_the_protection_lines(digits, key_file, tmp_path):
    out = tmp_path / "out"
    protect_collection(digits, out, key_file, defense={"type": "em-noise", "mode": "class-wise", **TINY}, workers=0)
    header = private_record(out, key_file)[0]
    path = record_file(out, key_file)
    arrays_path = path.parent / header["optimised"]["arrays"]["file"]
    blob = arrays_path.read_bytes()
    arrays = torch.load(arrays_path, weights_only=True)
    torch.save({"patterns": arrays["patterns"] * 1.01}, arrays_path)
    with pytest.raises(LabError, match="is not the one the record names"):
        verify_collection(out, key_file, workers=0)
    arrays_path.unlink()
    with pytest.raises(LabError, match="cannot be read"):
        verify_collection(out, key_file, workers=0)
    arrays_path.write_bytes(blob)
    text = path.read_text()
    path.write_text(text.replace('"working_rate": 8000', '"working_rate": 8001'))
    with pytest.raises(LabError, match="the protection recorded at 8000 Hz is not what the record's optimised"):
        verify_collection(out, key_file, workers=0)
    path.write_text(text)
    assert verify_collection(out, key_file, workers=0)["passed"]


@pytest.mark.parametrize("defense", [{"type": "em-noise"},
                                     {"type": "ensemble-em", **options_of("ensemble-em"), "mode": "sample-wise"}],
                         ids=["em-noise", "ensemble-em-sample-wise"])
def test_sample_wise_noise_refuses_a_file_it_was_not_optimised_on(defense, digits, key_file, tmp_path):
    """Sample-wise noise exists only for the files it was optimised on: every one of them written within its budget
    and verified (under its own defense's name, with em-noise's sample-wise mapping); a file of another content gets
    no noise silently; writing it fails, naming why."""
    out = tmp_path / "out"
    protect_collection(digits, out, key_file, defense={**TINY, **defense, "snr_db": 25}, workers=0)
    assert verify_collection(out, key_file, workers=0)["counts"] == {"ok": 24}
    header, records, _ = private_record(out, key_file)
    prot, working = rebuild(header, record_file(out, key_file), header["key_fingerprint"])
    at = prot.files_at(8000, working)
    line = read_protections(record_file(out, key_file))[8000]
    assert line["defense"] == defense["type"] and "the noise of the file's own working clip" in line["mapping"]
    for r in records:
        src, dst = read(digits / r["path"]), read(out / r["path"])
        assert not np.array_equal(src, dst) and snr_db(src, dst) >= 25 - 0.05, r["path"]
    x = 0.1 * np.random.default_rng(0).standard_normal((4000, 1)).astype(np.float32)
    with pytest.raises(ValueError, match="not one of the files the noise was optimised on"):
        worker.protect_samples(at, x, 0)
    assert isinstance(prot, Protection) and header["optimised"]["arrays"]["names"] == ["noise"]


@pytest.mark.parametrize("args, message", [
    (["--labels", "none"], "has one class only ('all')"),
    (["--option", "no_such_field=1"], "--option no_such_field: the em-noise defense has no field 'no_such_field'"),
    (["--option", "working_rat=8000"], "(did you mean 'working_rate'?)"),
    (["--option", "clip_seconds=-1"], "clip_seconds"),
    (["--defense", "poscuda", "--option", "working_rate=8000"], "unknown field 'working_rate'"),
    (["--option", "clip_seconds=0.03"], "the em-noise defense's surrogate (cnn on mfcc) cannot take the working "
                                        "clips (8000 Hz, 240 samples): RuntimeError"),
    (["--defense", "ensemble-em", "--option", "clip_seconds=0.03", "--option", "surrogates=[{model: {type: linear}}, "
      "{}]"], "the ensemble-em defense's surrogate (surrogates[1], cnn on mfcc) cannot take the working clips"),
])
def test_mistakes_are_one_line_errors(args, message, digits, key_file, tmp_path, cli):
    base = ["--defense", "em-noise"] if "--defense" not in args else []
    code, _, stderr = cli("protect", str(digits), str(tmp_path / "out"), "--key-file", str(key_file), *base, *args)
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and message in " ".join(stderr.split()), stderr
    assert not (tmp_path / "out").exists()


def test_an_arrays_file_never_replaces_a_file_of_the_owners(digits, key_file, tmp_path):
    record = tmp_path / "mine.jsonl"
    (tmp_path / "mine.arrays.pt").write_text("my own notes")
    with pytest.raises(LabError, match="is not a lab protect arrays file; refusing to overwrite it"):
        protect_collection(digits, tmp_path / "out", key_file, record=record, workers=0,
                           defense={"type": "em-noise", "mode": "class-wise", **TINY})
    assert (tmp_path / "mine.arrays.pt").read_text() == "my own notes"


def test_too_few_files_in_a_class_is_one_line(digits, key_file, tmp_path, cli):
    for p in sorted((digits / "2").iterdir())[1:]:
        p.unlink()
    (digits / "1" / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    code, _, stderr = cli("protect", str(digits), str(tmp_path / "out"), "--key-file", str(key_file), "--defense",
                          "em-noise")
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert "too few files to optimise em-noise on: every class needs at least 2 files that can be decoded, and " \
           "'2' (1) has fewer" in " ".join(stderr.split())
    assert not (tmp_path / "out").exists()
