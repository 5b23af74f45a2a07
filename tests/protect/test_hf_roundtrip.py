"""The published folder loads with Hugging Face `datasets` for real: `lab protect --metadata`, then
`load_dataset(OUTPUT)` gives every protected file once, `label` a ClassLabel of the collection's classes (in the
manifest's order) with each row's own label, and audio that decodes (torchcodec, FFmpeg) to the file's samples.

Needs the `hf` extra (`pip install -e '.[hf]'`: datasets, torchcodec) and FFmpeg's shared libraries (Debian:
`apt-get install ffmpeg`); skipped without them, except where LAB_EXTRAS names hf (CI: .ci/run installs both), where
their absence fails."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import soundfile as sf

from lab.protect.manifest import CARD, METADATA, read_manifest


def missing(reason: str) -> None:
    """Skip the module, saying why; but where the environment was set up with the hf extra (``LAB_EXTRAS=hf bash
    setup.sh``, as CI does), fail: the round trip must run there, not skip unseen."""
    if "hf" in os.environ.get("LAB_EXTRAS", "").split(","):
        pytest.fail(f"LAB_EXTRAS names hf, but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


if importlib.util.find_spec("datasets") is None:
    missing("Hugging Face datasets is not installed (the hf extra: pip install -e '.[hf]')")
if importlib.util.find_spec("torchcodec") is None:
    missing("torchcodec is not installed (the hf extra: pip install -e '.[hf]'); datasets decodes audio with it")
try:
    import torchcodec  # noqa: F401  (it loads FFmpeg's shared libraries when imported)
except (RuntimeError, OSError):
    missing("FFmpeg's shared libraries (4 to 8) are not installed, so torchcodec cannot decode audio (Debian: "
            "apt-get install ffmpeg)")
import datasets  # noqa: E402

# the folder's files are 16-bit PCM (WAV and FLAC); the decoder gives float32 samples, and a 16-bit sample is exact
# in float32: anything off by half a step of 16 bits or more is a decoding error, not rounding
PCM16_HALF_STEP = 0.5 / 32768


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, and a cache of its own (never the user's ~/.cache)."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return str(tmp_path / "hf-cache")


def test_a_protected_folder_loads_with_class_labels_and_its_own_samples(labelled_folder, key_file, tmp_path, cli,
                                                                        offline):
    out = tmp_path / "out"
    code, _, err = cli("protect", str(labelled_folder), str(out), "--key-file", str(key_file), "--workers", "0",
                       "--metadata")
    assert code == 0, err
    assert (out / METADATA).is_file() and (out / CARD).is_file()
    header, files, _ = read_manifest(out)
    classes = header["classes"]
    assert classes == ["cat", "dog", "owl"] and len(files) == 15
    by_path = {f["path"]: f for f in files}

    ds = datasets.load_dataset(str(out), split="train", cache_dir=offline)
    label = ds.features["label"]
    assert isinstance(label, datasets.ClassLabel) and label.names == classes
    assert isinstance(ds.features["audio"], datasets.Audio) and ds.column_names == ["audio", "label"]
    assert len(ds) == len(files)
    seen = set()
    for row in ds:
        decoder = row["audio"]
        rel = decoder.metadata.path.removeprefix(str(out) + "/")
        assert rel in by_path and rel not in seen, rel
        seen.add(rel)
        assert label.int2str(row["label"]) == by_path[rel]["label"] == rel.split("/")[0]
        # the decoded samples are the protected file's, channel by channel, at its own rate
        samples = decoder.get_all_samples()
        expected, rate = sf.read(str(out / rel), dtype="float32", always_2d=True)
        assert samples.sample_rate == rate == by_path[rel]["sample_rate"]
        got = samples.data.numpy()
        assert got.shape == expected.T.shape == (by_path[rel]["channels"], by_path[rel]["frames"])
        assert np.abs(got - expected.T).max() < PCM16_HALF_STEP, rel
    assert seen == set(by_path)

    # the packaged loader pointed at the folder (it reads no dataset card) gets the same rows, labels as strings
    plain = datasets.load_dataset("audiofolder", data_dir=str(out), split="train", cache_dir=offline)
    plain = plain.cast_column("audio", datasets.Audio(decode=False))
    assert {(row["audio"]["path"].removeprefix(str(out) + "/"), row["label"]) for row in plain} == \
        {(f["path"], f["label"]) for f in files}
