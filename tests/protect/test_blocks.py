"""Long files in blocks (lab/protect/blocks.py), checked over the registry: for every defense lab protect can apply
whose protection has a block hook, a file protected block by block (tiny blocks, so that patches and their filters'
context straddle block boundaries) gives the very bytes the whole-file path gives, for several channel counts and
subtypes; a defense without one is protected whole and its record says so. No list of defense names here: an option
set runs for every defense that has its fields and takes its values (a Literal field's choices)."""
from __future__ import annotations

import functools
import io
import json
import pickle
import typing

import numpy as np
import pytest
import soundfile as sf
import torch

from defenses.base import DEFENSES, TrainingSet, WorkingClips, build_defense, samples_hash
from lab import dsp
from lab.protect import blocks, optimise, worker
from lab.protect.audiofile import decode, encode
from lab.protect.collection import LabelRule
from lab.protect.optimise import WorkingConfig, collection_files
from lab.protect.protector import defense_config, defense_fields_of, file_by_file_defenses, optimised_defenses

SR = 8000
OPTION_SETS = {"defaults": {}, "wide-filter-clipped": {"patches_per_class": 3, "filter_length": 65, "output": "clip"},
               "repeats": {"patches_per_class": 2, "repeat_seconds": 0.13}, "three-patches": {"patches_per_class": 3},
               "audio-span": {"span": "audio"},
               # budgets and noise modes (a file is one clip per channel; its noise scaled to the whole file's sums)
               "linf-alone": {"snr_db": None, "linf": 0.05}, "snr-linf-clip": {"linf": 0.02, "linf_mode": "clip"},
               "snr-linf-scale": {"snr_db": 20.0, "linf": 0.05}, "classwise": {"noise": "classwise"},
               "classwise-linf": {"noise": "classwise", "snr_db": None, "linf": 0.05},
               # shaped noise (lab/masking.py) is frame-local over the whole file: no block plan, or the same bytes
               "masking": {"masking_margin_db": 0.0},
               # a scale by the protected file's peak (a first pass through the protected samples; the loud source
               # goes past full scale once patched), and the other scalings of a filtered file
               "normalize": {"output": "normalize", "patches_per_class": 2, "repeat_seconds": 0.13},
               "match-peak": {"output": "match_peak"}, "unscaled": {"output": "none"},
               # a filter longer than the tiny blocks and than the grid's chunks (lab.dsp.convolve_same)
               "long-filter": {"filter_length": 601},
               # noise optimised on a collection: one pattern per class (tiled over the file), with and without SNR
               "class-wise": {"mode": "class-wise"}, "class-wise-linf": {"mode": "class-wise", "snr_db": None,
                                                                         "linf": 0.05},
               # a scale by the patched file's peak, then a budget over the whole file (two first passes)
               "normalize-snr": {"output": "normalize", "snr_db": 20.0}}


def takes(kind: str, options: dict) -> bool:
    """Whether the defense ``kind`` has every field of ``options`` and, for a field with fixed choices, the value
    (a set that only repeats the defense's defaults is left to ``defaults``)."""
    if not set(options) <= set(defense_fields_of(kind)):
        return False
    fields = DEFENSES.get(kind).Config.model_fields
    if options and all(fields[k].default == v for k, v in options.items()):
        return False
    if not all(typing.get_origin(fields[k].annotation) is not typing.Literal
               or v in typing.get_args(fields[k].annotation) for k, v in options.items()):
        return False
    try:  # a set the defense refuses as a whole (e.g. poscuda-opt: no repeat_seconds)
        DEFENSES.get(kind).Config.model_validate({"type": kind, **DEFENSES.get(kind).example_config("k"), **options})
    except ValueError:
        return False
    return True


CASES = [(kind, name) for kind in file_by_file_defenses() for name, opts in OPTION_SETS.items() if takes(kind, opts)]
# the defenses lab protect optimises on a collection and writes onto its files (Protection.files_at)
OPTIMISED = [(kind, name) for kind in optimised_defenses() for name, opts in OPTION_SETS.items() if takes(kind, opts)]
WORKING_RATE, WORKING_CLIP = 4000, 3000  # the working clips (0.75 s): files at SR get the optimised noise resampled


def source(frames: int, channels: int, subtype: str, seed: int = 0, fmt: str = "WAV") -> bytes:
    """A file (WAV unless ``fmt``) of loud noise and a tone (some protected samples go past full scale)."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None] / SR
    data = 0.6 * np.sin(2 * np.pi * 300 * t * (1 + np.arange(channels))) + 0.3 * rng.standard_normal((frames, channels))
    buf = io.BytesIO()
    sf.write(buf, np.clip(data, -1, 1).astype(np.float32), SR, subtype=subtype, format=fmt)
    return buf.getvalue()


FILES = [(20011, 1, "PCM_16", "WAV", 1, 997), (16000, 2, "FLOAT", "WAV", 2, 1000),
         (12345, 3, "PCM_24", "FLAC", 0, 4096),
         (5003, 1, "DOUBLE", "WAV", 1, 512),  # float64 working; shorter than em-noise's resampled clip (6000)
         (9001, 3, "DOUBLE", "WAV", 2, 2000),  # sums seen unrounded
         (16389, 1, "PCM_16", "WAV", 0, 1024),  # a block ends 5 short
         (7777, 2, "PCM_16", "WAV", 2, 256)]  # blocks under the AR warm-up


@pytest.mark.parametrize("kind, options", CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_streamed_output_equals_the_whole_file_bit_for_bit(kind, options, key_file, monkeypatch):
    monkeypatch.setattr(dsp, "ENERGY_CHUNK", 256)  # sums over a file grouped in chunks, the whole file's too
    prot = build_defense(defense_config(key_file, {"type": kind, **OPTION_SETS[options]})).derive(3, SR)
    streamed_equals_whole(prot, kind, options)


@functools.lru_cache(maxsize=None)
def optimised(kind: str, options: str):
    """The defense ``kind`` with the option set ``options`` optimised on 8 generated working clips (4 classes, 0.75 s
    at WORKING_RATE) against a tiny surrogate, as lab protect's TINY runs do (once per defense and set)."""
    fields = {"type": kind, **DEFENSES.get(kind).example_config("blocks-test-key"), **OPTION_SETS[options]}
    config = DEFENSES.get(kind).Config.model_validate(fields)
    g = torch.Generator().manual_seed(0)
    t = torch.arange(WORKING_CLIP) / WORKING_RATE
    # loud working clips (amplitude 3): their noise is then louder than the files' budget allows, so that the
    # budget's scale over the whole file is at work in the files below (the test checks that it is)
    x = 3.0 * torch.sin(2 * torch.pi * (200 + 600 * torch.rand(8, 1, generator=g)) * t) \
        + 0.02 * torch.randn(8, WORKING_CLIP, generator=g)
    lengths = torch.full((8,), WORKING_CLIP)
    lengths[1::2] = WORKING_CLIP * 2 // 3  # some working clips are shorter files, zero-padded
    x = x * (torch.arange(WORKING_CLIP)[None] < lengths[:, None])

    class Tiny(torch.nn.Module):  # log-energy of 20 frames -> linear
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(20, 4)

        def forward(self, w):
            n = w.shape[1] // 20 * 20
            return self.lin(torch.log(w[:, :n].reshape(len(w), 20, -1).pow(2).mean(-1) + 1e-4) + 4)
    data = TrainingSet(x, torch.arange(8) % 4, lengths, WORKING_RATE, 4, Tiny, lr=0.01, weight_decay=0.0,
                       batch_size=4, log=lambda s: None, description="tiny")
    return build_defense(config).derive_from(data)


@pytest.mark.parametrize("kind, options", OPTIMISED, ids=[f"{k}-{n}" for k, n in OPTIMISED])
def test_an_optimised_protection_streams_bit_for_bit(kind, options, monkeypatch):
    """What lab protect writes onto a collection's files (files_at, at SR from clips at WORKING_RATE): the files
    below are the collection (sample-wise noise finds its row by the hash of each file's samples)."""
    monkeypatch.setattr(dsp, "ENERGY_CHUNK", 256)
    sources = [samples_hash(torch.from_numpy(np.ascontiguousarray(decode(source(f, c, s, seed=f, fmt=m)).data.T)))
               for f, c, s, m, _, _ in FILES]
    prot = optimised(kind, options).files_at(SR, WorkingClips(WORKING_RATE, WORKING_CLIP, (*sources, "0" * 64)))
    snrs = streamed_equals_whole(prot, kind, options)
    if prot.params.get("snr_db") is not None and prot.params.get("linf") is None:
        # the budget's scale over the whole file was at work somewhere (a linf clip after it raises the SNR)
        assert min(abs(s - prot.params["snr_db"]) for s in snrs) < 0.01, snrs


def streamed_equals_whole(prot, kind: str, options: str) -> list[float]:
    """Every file of FILES protected whole and block by block: the same bytes. Each channel's SNR (dB) of the
    protected file (float, before encoding)."""
    if prot.block_plan(1, 20000, 1) is None:
        pytest.skip(f"{kind} ({options}) has no block hook: protected whole (see the test below)")
    snrs = []
    for frames, channels, subtype, fmt, cls, block in FILES:
        blob = source(frames, channels, subtype, seed=frames, fmt=fmt)
        dec = decode(blob)
        protected = worker.protect_samples(prot, dec.data, cls)
        change = (protected.astype(np.float64) - dec.data) ** 2
        snrs += list(10 * np.log10((dec.data.astype(np.float64) ** 2).sum(0) / change.sum(0).clip(1e-300)))
        if OPTION_SETS[options].get("output") == "normalize" and "snr_db" not in OPTION_SETS[options]:
            # the file passed full scale and was divided (normalize-snr: then its change was scaled down)
            assert np.abs(protected).max() == 1.0
        whole, whole_over = encode(protected, dec)
        like, n, ch = blocks.header(io.BytesIO(blob))
        assert (n, ch) == (frames, channels)
        out = io.BytesIO()
        over = blocks.stream_protect(prot, prot.block_plan(cls, n, ch), io.BytesIO(blob), like, cls, out, block)
        assert out.getvalue() == whole, (kind, options, subtype, channels)
        assert over == whole_over
        assert whole != encode(dec.data, dec)[0]  # the protection changed something
    return snrs


def run_protect(cli, src, out, key_file, kind, options=()):
    return cli("protect", str(src), str(out), "--key-file", str(key_file), "--defense", kind, "--workers", "0",
               *[a for k, v in options for a in ("--option", f"{k}={v}")])


def long_folder(root, subtype_by_name):
    for name, (frames, channels, subtype) in subtype_by_name.items():
        path = root / "cat" / name if name < "c" else root / "dog" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(source(frames, channels, subtype, seed=frames))
    return root


def test_a_long_file_is_streamed_verified_in_blocks_and_equals_the_whole_path(cli, tmp_path, key_file, monkeypatch):
    src = long_folder(tmp_path / "in", {"a.wav": (20000, 2, "PCM_16"), "b.wav": (9000, 1, "FLOAT"),
                                        "c.wav": (3000, 1, "PCM_16"), "d.wav": (17000, 3, "PCM_24")})
    code, _, _ = run_protect(cli, src, tmp_path / "whole", key_file, "poscuda", [("repeat_seconds", 0.3)])
    assert code == 0
    monkeypatch.setattr(blocks, "STREAM_FRAMES", 5000)
    monkeypatch.setattr(blocks, "BLOCK_FRAMES", 1024)
    code, out, err = run_protect(cli, src, tmp_path / "out", key_file, "poscuda", [("repeat_seconds", 0.3)])
    assert code == 0, err
    assert f"long files (over 5000 frames): 3 {blocks.STREAMED}" in out
    for rel in ("cat/a.wav", "cat/b.wav", "dog/c.wav", "dog/d.wav"):
        assert (tmp_path / "out" / rel).read_bytes() == (tmp_path / "whole" / rel).read_bytes(), rel
    assert long_file_of(key_file) == {"cat/a.wav": blocks.STREAMED, "cat/b.wav": blocks.STREAMED,
                                      "dog/c.wav": None, "dog/d.wav": blocks.STREAMED}  # c is short: as before
    code, out, err = cli("verify", str(tmp_path / "out"), "--key-file", str(key_file), "--workers", "0")
    assert code == 0, out + err
    assert "3 long file(s) checked block by block" in out


def test_block_check_finds_a_changed_sample_and_an_unprotected_copy(key_file, monkeypatch):
    monkeypatch.setattr(blocks, "STREAM_FRAMES", 5000)
    monkeypatch.setattr(blocks, "BLOCK_FRAMES", 1000)
    prot = build_defense(defense_config(key_file, {"type": "poscuda", "repeat_seconds": 0.3})).derive(3, SR)
    worker.start_worker({SR: pickle.dumps(prot)})
    blob = source(17000, 2, "PCM_16")
    like, frames, channels = blocks.header(io.BytesIO(blob))
    out = io.BytesIO()
    blocks.stream_protect(prot, prot.block_plan(1, frames, channels), io.BytesIO(blob), like, 1, out)
    rec = {"class": 1, "frames": frames, "channels": channels, "sample_rate": SR, "format": "WAV",
           "subtype": "PCM_16", "patches": worker.patches_of(prot, 1, frames)}
    assert worker.check_blocks("a.wav", rec, io.BytesIO(blob), io.BytesIO(out.getvalue()))["status"] == "ok"
    assert worker.check_blocks("a.wav", rec, io.BytesIO(blob), io.BytesIO(blob))["status"] == "unprotected"
    data, _ = sf.read(io.BytesIO(out.getvalue()), dtype="int16", always_2d=True)
    data[frames - 7, 1] ^= 1  # one bit of one sample near the end (the last block)
    changed = io.BytesIO()
    sf.write(changed, data, SR, subtype="PCM_16", format="WAV")
    assert worker.check_blocks("a.wav", rec, io.BytesIO(blob), changed)["status"] == "mismatch"
    assert worker.check_blocks("a.wav", {**rec, "class": 2}, io.BytesIO(blob), io.BytesIO(out.getvalue()))[
        "status"] == "mismatch"  # another class: other patches


def long_file_of(key_file) -> dict:
    """Each file of the latest private record beside the key -> how it was handled (``long_file``)."""
    record = max(key_file.parent.glob("*.jsonl"), key=lambda p: p.stat().st_mtime_ns)
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    return {r["path"]: r.get("long_file") for r in lines if r.get("kind") == "file"}


def test_a_long_file_without_a_block_hook_is_protected_whole_and_says_so(cli, tmp_path, key_file, monkeypatch):
    """A defense (with one of the option sets above) whose protection returns no plan."""
    without = [(k, OPTION_SETS[o]) for k, o in CASES if build_defense(defense_config(
        key_file, {"type": k, **OPTION_SETS[o]})).derive(2, SR).block_plan(0, 9000, 1) is None]
    if not without:
        pytest.skip("every file-by-file defense has a block hook with every option set")
    src = long_folder(tmp_path / "in", {"a.wav": (9000, 1, "PCM_16"), "c.wav": (3000, 2, "PCM_16")})
    monkeypatch.setattr(blocks, "STREAM_FRAMES", 5000)
    code, out, err = run_protect(cli, src, tmp_path / "out", key_file, without[0][0], list(without[0][1].items()))
    assert code == 0, err
    assert f"long files (over 5000 frames): 1 {blocks.WHOLE}" in out
    assert long_file_of(key_file) == {"cat/a.wav": blocks.WHOLE, "dog/c.wav": None}
    code, out, err = cli("verify", str(tmp_path / "out"), "--key-file", str(key_file), "--workers", "0")
    assert code == 0 and "checked block by block" not in out, out + err


def test_a_long_file_that_cannot_be_streamed_is_refused_past_the_whole_file_limit(cli, tmp_path, key_file,
                                                                                   monkeypatch):
    """No file can make lab protect decode without bound: past LAB_MAX_WHOLE_SAMPLES a long file without a block
    path (a protection with no plan for it, or a lossy format) fails in one line naming the limit and the way out;
    the other files are protected and nothing is written for it."""
    without = [(k, OPTION_SETS[o]) for k, o in CASES if build_defense(defense_config(
        key_file, {"type": k, **OPTION_SETS[o]})).derive(2, SR).block_plan(0, 9000, 1) is None]
    if not without:
        pytest.skip("every file-by-file defense has a block hook with every option set")
    src = long_folder(tmp_path / "in", {"a.wav": (9000, 2, "PCM_16"), "c.wav": (3000, 2, "PCM_16")})
    ogg = src / "dog" / "long.ogg"
    sf.write(ogg, 0.1 * np.sin(np.arange(9000) / 7.0), SR, format="OGG", subtype="VORBIS")
    monkeypatch.setattr(blocks, "STREAM_FRAMES", 5000)
    monkeypatch.setattr(blocks, "may_be_long", lambda f: True)
    monkeypatch.setenv("LAB_MAX_WHOLE_SAMPLES", "12000")
    code, out, err = run_protect(cli, src, tmp_path / "out", key_file, without[0][0], list(without[0][1].items()))
    text = " ".join((out + err).split())
    assert code == 1, out + err
    assert "too long to protect whole: 9000 frames x 2 channel(s) = 18000 samples, over the limit of 12000" in text
    assert "the protection has no block path with these options" in text
    assert "its format is lossy" not in text and (tmp_path / "out" / "dog" / "long.ogg").is_file()  # 9000 x 1: whole
    assert (tmp_path / "out" / "dog" / "c.wav").is_file() and not (tmp_path / "out" / "cat" / "a.wav").exists()
    monkeypatch.setenv("LAB_MAX_WHOLE_SAMPLES", "8000")  # now the Ogg file is over it too: refused for its format
    code, out, err = run_protect(cli, src, tmp_path / "out2", key_file, "poscuda")
    text = " ".join((out + err).split())
    assert code == 1 and "its format is lossy (only lossless formats are streamed)" in text, out + err
    assert (tmp_path / "out2" / "cat" / "a.wav").is_file()  # poscuda streams the long WAV


def test_a_long_file_with_nan_or_a_full_disk_leaves_nothing_written(cli, tmp_path, key_file, monkeypatch):
    """Found half-way through a streamed file: NaN fails that file by name; a full disk stops the run (resumable);
    neither leaves an output or a temporary file behind."""
    src = long_folder(tmp_path / "in", {"a.wav": (9000, 1, "FLOAT"), "c.wav": (3000, 1, "PCM_16")})
    data, _ = sf.read(src / "cat" / "a.wav", dtype="float32")
    data[8500] = np.nan
    sf.write(src / "cat" / "a.wav", data, SR, subtype="FLOAT")
    monkeypatch.setattr(blocks, "STREAM_FRAMES", 5000)
    monkeypatch.setattr(blocks, "BLOCK_FRAMES", 1024)
    code, out, _ = run_protect(cli, src, tmp_path / "out", key_file, "poscuda")
    assert code == 1 and "cat/a.wav: 1 samples from frame 8192 on are NaN or infinite" in out
    assert not (tmp_path / "out" / "cat").exists() or not any((tmp_path / "out" / "cat").iterdir())
    data[8500] = 0.0
    sf.write(src / "cat" / "a.wav", data, SR, subtype="FLOAT")
    class Full:  # the temporary file's disk fills up after 20,000 bytes
        def __init__(self, f):
            self.f = f

        def write(self, blob):
            if self.f.tell() > 20000:
                raise OSError(28, "No space left on device")
            return self.f.write(blob)

        def __getattr__(self, name):
            return getattr(self.f, name)

    real_init = blocks.Sink.__init__
    monkeypatch.setattr(blocks.Sink, "__init__", lambda self, f: real_init(self, Full(f)))
    code, out, err = run_protect(cli, src, tmp_path / "out2", key_file, "poscuda")
    assert code != 0 and "No space left on device" in out + err
    assert not list((tmp_path / "out2").rglob("*.wav")) and not list((tmp_path / "out2").rglob("*partial*"))


def test_an_optimised_defense_streams_a_long_file_and_verify_checks_it(cli, tmp_path, key_file, monkeypatch):
    """lab protect --defense em-noise (sample-wise: the file's row found by the hash of its samples, a pass per
    channel) on a collection whose stereo file is long enough to stream: the same bytes as the whole-file path,
    the summary says the file was streamed, lab verify checks it block by block."""
    src = long_folder(tmp_path / "in", {"a.wav": (20000, 2, "PCM_16"), "b.wav": (3000, 1, "PCM_16"),
                                        "c.wav": (3000, 1, "PCM_16"), "d.wav": (4000, 1, "FLOAT")})
    tiny = [("max_rounds", 1), ("train_batches", 2), ("steps", 2), ("snr_db", 30)]
    monkeypatch.setattr(dsp, "ENERGY_CHUNK", 2048)  # the noise (1 s, 8000 frames) reaches over several chunks
    code, _, err = run_protect(cli, src, tmp_path / "whole", key_file, "em-noise", tiny)
    assert code == 0, err
    monkeypatch.setattr(blocks, "STREAM_FRAMES", 5000)
    monkeypatch.setattr(blocks, "BLOCK_FRAMES", 1024)
    code, out, err = run_protect(cli, src, tmp_path / "out", key_file, "em-noise", tiny)
    assert code == 0, err
    assert f"long files (over 5000 frames): 1 {blocks.STREAMED}" in " ".join(out.split())
    assert long_file_of(key_file) == {"cat/a.wav": blocks.STREAMED, "cat/b.wav": None, "dog/c.wav": None,
                                      "dog/d.wav": None}
    for rel in ("cat/a.wav", "cat/b.wav", "dog/c.wav", "dog/d.wav"):
        assert (tmp_path / "out" / rel).read_bytes() == (tmp_path / "whole" / rel).read_bytes(), rel
    code, out, err = cli("verify", str(tmp_path / "out"), "--key-file", str(key_file), "--workers", "0")
    assert code == 0, out + err
    assert "1 long file(s) checked block by block" in out


def test_working_clips_of_long_files_are_made_in_blocks_as_from_the_whole_file(tmp_path, monkeypatch):
    """What an optimisation on the collection reads of each file (its bytes' hash, its working clip and real length,
    the hash of its samples), for long files read a block at a time: exactly what the whole file gives (stereo and
    three-channel files at other rates than the working rate, resampled; a FLAC; float samples)."""
    root = tmp_path / "in"
    for rel, (frames, channels, subtype, rate, fmt) in {
            "cat/a.wav": (20011, 2, "PCM_16", 8000, "WAV"), "cat/b.flac": (50000, 3, "PCM_24", 16000, "FLAC"),
            "dog/c.wav": (3000, 1, "PCM_16", 8000, "WAV"), "dog/d.wav": (60000, 1, "FLOAT", 11025, "WAV")}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        data = np.random.default_rng(frames).uniform(-0.5, 0.5, (frames, channels)).astype(np.float32)
        sf.write(root / rel, data, rate, subtype=subtype, format=fmt)
    rule, working = LabelRule.parse("folder", root), WorkingConfig(working_rate=8000, clip_seconds=0.5)  # 4000 samples
    whole = collection_files(root, rule, ["cat", "dog"], working)
    monkeypatch.setattr(blocks, "STREAM_FRAMES", 5000)
    monkeypatch.setattr(blocks, "BLOCK_FRAMES", 1000)
    read = []
    real = optimise.long_working_clip
    monkeypatch.setattr(optimise, "long_working_clip", lambda f, *a: read.append(a[0][1]) or real(f, *a))
    streamed = collection_files(root, rule, ["cat", "dog"], working)
    assert sorted(read) == [20011, 50000, 60000]  # the three long files were read in blocks, their clips from
    # their first frames only (a 0.5 s clip reads 2.5 s of them and a little more: less than each file)
    assert streamed.files == whole.files and streamed.sources == whole.sources and not streamed.left_out
    assert torch.equal(streamed.clips, whole.clips) and torch.equal(streamed.lengths, whole.lengths)
    assert torch.equal(streamed.labels, whole.labels)
