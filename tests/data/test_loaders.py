"""Loaders: the real FSDD copy, a generated Speech Commands tree, a generated labelled folder, bad audio, missing
data, and the FSDD download path (from a local archive, no network)."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch

from lab.data import load_dataset
from lab.data.audio import fix_length
from lab.errors import LabError
from lab.recipe import DataConfig
from tests.conftest import tone, write


def test_fsdd_official_split(fsdd_dir):
    train, test = load_dataset(DataConfig(root=fsdd_dir, sample_rate=8000, clip_seconds=1.0))
    assert (len(train), len(test)) == (2700, 300)
    assert train.waveforms.shape == (2700, 8000) and train.waveforms.dtype == torch.float32
    assert torch.bincount(test.labels).tolist() == [30] * 10
    assert all(int(name.split("_")[2].split(".")[0]) >= 5 for name in train.ids)
    assert all(int(name.split("_")[2].split(".")[0]) < 5 for name in test.ids)
    assert (train.lengths <= 8000).all() and (train.lengths > 1000).all()
    assert train.waveforms.abs().max() <= 1.0


def test_fsdd_speaker_split_and_resampling(fsdd_dir):
    cfg = DataConfig(root=fsdd_dir, split="speaker", test_speaker="theo", sample_rate=16000, clip_seconds=0.5,
                     max_train_per_class=5)
    train, test = load_dataset(cfg)
    assert all("_theo_" in n for n in test.ids) and not any("_theo_" in n for n in train.ids)
    assert len(test) == 500 and len(train) == 50
    assert train.waveforms.shape[1] == 8000


def test_fsdd_random_split_is_stratified_and_reproducible(fsdd_dir):
    cfg = DataConfig(root=fsdd_dir, split="random", test_fraction=0.2, subset_seed=3)
    train, test = load_dataset(cfg)
    assert (len(train), len(test)) == (2400, 600)
    assert torch.bincount(test.labels).tolist() == [60] * 10
    assert not set(train.ids) & set(test.ids)
    takes = {int(n.split("_")[2].split(".")[0]) for n in test.ids}
    assert any(t >= 5 for t in takes) and any(t < 5 for t in takes)  # not the official split
    again, other = load_dataset(cfg)[1], load_dataset(DataConfig(root=fsdd_dir, split="random", subset_seed=4))[1]
    assert again.ids == test.ids and set(other.ids) != set(test.ids)


def test_random_split_refused_for_speechcommands():
    with pytest.raises(ValueError, match="split 'random' is not defined for dataset 'speechcommands'"):
        DataConfig(dataset="speechcommands", split="random")


def test_fsdd_unknown_speaker(fsdd_dir):
    with pytest.raises(LabError, match="test_speaker.*valid: george"):
        load_dataset(DataConfig(root=fsdd_dir, split="speaker", test_speaker="nobody"))


def test_fsdd_env_var(fsdd_dir, monkeypatch):
    monkeypatch.setenv("LAB_DATA_DIR", str(fsdd_dir.parent))  # ROOT/fsdd/recordings layout
    train, _ = load_dataset(DataConfig(max_train_per_class=2, max_test_per_class=1))
    assert len(train) == 20


def test_fsdd_missing_root_names_place(tmp_path):
    with pytest.raises(LabError, match=f"no FSDD clips.*{tmp_path}"):
        load_dataset(DataConfig(root=tmp_path))


def _fake_fsdd_archive(tmp_path: Path) -> Path:
    archive = tmp_path / "fsdd.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for d in range(10):
            for take in range(6):
                buf = io.BytesIO()
                import soundfile as sf
                sf.write(buf, tone(0.3, 8000, 200 + 50 * d), 8000, format="WAV")
                info = tarfile.TarInfo(f"free-spoken-digit-dataset-1.0.10/recordings/{d}_alice_{take}.wav")
                info.size = len(buf.getvalue())
                buf.seek(0)
                tar.addfile(info, buf)
        readme = tarfile.TarInfo("free-spoken-digit-dataset-1.0.10/README.md")
        readme.size = 2
        tar.addfile(readme, io.BytesIO(b"hi"))
    return archive


def test_fsdd_download_when_nothing_has_it(tmp_path, monkeypatch):
    archive = _fake_fsdd_archive(tmp_path)
    monkeypatch.delenv("LAB_DATA_DIR", raising=False)
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LAB_FSDD_URL", archive.as_uri())
    monkeypatch.setenv("LAB_FSDD_EXPECTED_CLIPS", "60")
    said = []
    train, test = load_dataset(DataConfig(), log=said.append)
    assert (len(train), len(test)) == (10, 50)
    assert any("downloading" in s for s in said)
    assert (tmp_path / "cache" / "fsdd" / "SOURCE.json").is_file()
    said.clear()
    load_dataset(DataConfig(), log=said.append)  # second time: from the cache, no download
    assert not any("downloading" in s for s in said)


def test_fsdd_download_refuses_incomplete_archive(tmp_path, monkeypatch):
    archive = _fake_fsdd_archive(tmp_path)
    monkeypatch.delenv("LAB_DATA_DIR", raising=False)
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LAB_FSDD_URL", archive.as_uri())
    with pytest.raises(LabError, match="holds 60 clips, expected 3000"):
        load_dataset(DataConfig(), log=lambda s: None)
    assert not (tmp_path / "cache" / "fsdd" / "recordings").exists()


def test_fsdd_download_failure_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("LAB_DATA_DIR", raising=False)
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LAB_FSDD_URL", (tmp_path / "missing.tar.gz").as_uri())
    with pytest.raises(LabError, match="could not download FSDD.*LAB_DATA_DIR"):
        load_dataset(DataConfig(), log=lambda s: None)


def make_speechcommands(root: Path) -> Path:
    """A tiny tree in the upstream layout: ROOT/SpeechCommands/speech_commands_v0.02/<word>/<spk>_nohash_<n>.wav."""
    base = root / "SpeechCommands" / "speech_commands_v0.02"
    words = ["yes", "no", "one", "two", "marvin"]
    val, test = [], []
    for w_i, word in enumerate(words):
        for spk in range(4):
            rel = f"{word}/spk{spk:02d}_nohash_0.wav"
            write(base / rel, tone(0.8, 16000, 300 + 100 * w_i, seed=spk), 16000)
            if spk == 2:
                val.append(rel)
            elif spk == 3:
                test.append(rel)
    write(base / "_background_noise_" / "white_noise.wav", tone(2.0, 16000), 16000)
    (base / "validation_list.txt").write_text("\n".join(val) + "\n")
    (base / "testing_list.txt").write_text("\n".join(test) + "\n")
    return root


def test_speechcommands_generated_tree(tmp_path):
    root = make_speechcommands(tmp_path / "sc")
    cfg = DataConfig(dataset="speechcommands", root=root, sample_rate=8000, words=["yes", "no", "one"])
    train, test = load_dataset(cfg)
    assert train.class_names == ["yes", "no", "one"]
    assert len(train) == 6 and len(test) == 3  # 2 training speakers, 1 test speaker per word; validation unused
    assert train.waveforms.shape == (6, 8000)
    assert not any("spk03" in n or "spk02" in n for n in train.ids)
    all_words, _ = load_dataset(DataConfig(dataset="speechcommands", root=root, sample_rate=8000))
    assert all_words.class_names == ["marvin", "no", "one", "two", "yes"]


def test_speechcommands_bad_words_and_missing(tmp_path):
    root = make_speechcommands(tmp_path / "sc")
    with pytest.raises(LabError, match=r"\['zebra'\] not in the dataset"):
        load_dataset(DataConfig(dataset="speechcommands", root=root, words=["yes", "zebra"]))
    with pytest.raises(LabError, match="unknown word set 'digitz'"):
        load_dataset(DataConfig(dataset="speechcommands", root=root, words="digitz"))
    with pytest.raises(LabError, match="Speech Commands v0.02 not found; looked in"):
        load_dataset(DataConfig(dataset="speechcommands", root=tmp_path / "empty"))


def test_folder_dataset(labelled_folder):
    cfg = DataConfig(dataset="folder", root=labelled_folder, sample_rate=8000, clip_seconds=0.6, test_fraction=0.2)
    train, test = load_dataset(cfg)
    assert train.class_names == ["cat", "dog", "owl"]
    assert len(train) == 12 and len(test) == 3
    assert torch.bincount(test.labels).tolist() == [1, 1, 1]
    assert train.waveforms.shape == (12, 4800)
    assert not set(train.ids) & set(test.ids)


def test_folder_with_train_test_dirs(tmp_path):
    for split in ("train", "test"):
        for label in ("a", "b"):
            write(tmp_path / split / label / "x.wav", tone(0.2, 8000), 8000)
    train, test = load_dataset(DataConfig(dataset="folder", root=tmp_path, clip_seconds=0.2))
    assert len(train) == 2 and len(test) == 2


def test_folder_with_a_separate_test_root(tmp_path):
    for label, n in (("a", 3), ("b", 2)):
        for j in range(n):
            write(tmp_path / "train" / label / f"{label}{j}.wav", tone(0.2, 8000, 200 + 50 * j), 8000)
        write(tmp_path / "held" / label / "t.wav", tone(0.2, 8000, 900), 8000)
    (tmp_path / "held" / "a" / "notes.txt").write_text("not audio")
    cfg = DataConfig(dataset="folder", root=tmp_path / "train", test_root=tmp_path / "held", clip_seconds=0.2,
                     max_train_per_class=2)
    train, test = load_dataset(cfg)
    assert train.class_names == test.class_names == ["a", "b"]
    assert (len(train), len(test)) == (4, 2)  # every clip of the test root; the training limit applies to root
    assert test.ids == ["t.wav", "t.wav"] and torch.bincount(train.labels).tolist() == [2, 2]


def test_test_root_refusals(tmp_path):
    for root, label in (("train", "a"), ("train", "b"), ("held", "a"), ("held", "c")):
        write(tmp_path / root / label / "x.wav", tone(0.2, 8000), 8000)
    with pytest.raises(LabError, match=r"different label folders \(only in data.root .*train: b; only in "
                                       r"data.test_root .*held: c\)"):
        load_dataset(DataConfig(dataset="folder", root=tmp_path / "train", test_root=tmp_path / "held"))
    with pytest.raises(LabError, match="data.test_root: no such folder"):
        load_dataset(DataConfig(dataset="folder", root=tmp_path / "train", test_root=tmp_path / "nope"))
    with pytest.raises(LabError, match="is data.root itself; the test clips must be held out"):
        load_dataset(DataConfig(dataset="folder", root=tmp_path / "train", test_root=tmp_path / "train"))
    with pytest.raises(ValueError, match="test_root is only used by dataset 'folder'"):
        DataConfig(dataset="fsdd", test_root=tmp_path / "held")


def test_corrupt_and_empty_files_are_named(labelled_folder):
    bad = labelled_folder / "dog" / "broken.wav"
    bad.write_bytes(b"RIFF not really a wav file")
    with pytest.raises(LabError, match="cannot read audio file .*broken.wav"):
        load_dataset(DataConfig(dataset="folder", root=labelled_folder))
    bad.unlink()
    write(labelled_folder / "owl" / "silent.wav", tone(0.0, 8000), 8000)
    with pytest.raises(LabError, match="empty audio file .*silent.wav"):
        load_dataset(DataConfig(dataset="folder", root=labelled_folder))


def test_folder_missing(tmp_path):
    with pytest.raises(LabError, match="no such folder"):
        load_dataset(DataConfig(dataset="folder", root=tmp_path / "nope"))


def test_fix_length_rules():
    x = torch.arange(10.0)
    assert fix_length(x, 4, "left", "right")[0].tolist() == [0, 1, 2, 3]
    assert fix_length(x, 4, "center", "right")[0].tolist() == [3, 4, 5, 6]
    y, n = fix_length(x[:3], 6, "left", "both")
    assert y.tolist() == [0, 0, 1, 2, 0, 0] and n == 3


def _flat_folder(root: Path) -> Path:
    for label in ("cat", "dog"):
        for j in range(3):
            write(root / f"{label}-{j}.wav", tone(0.3, 8000, 300 + 200 * j, seed=j), 8000)
    return root


def test_a_flat_folder_takes_its_labels_from_metadata_csv(tmp_path):
    """Hugging Face's audiofolder layout: the files side by side, file_name,label in metadata.csv."""
    from lab.data import folder_files
    root = _flat_folder(tmp_path / "flat")
    with pytest.raises(LabError, match="needs at least two label folders with audio files .*, or audio files "
                                       "with their labels in metadata.csv or manifest.jsonl; found 0 labels"):
        folder_files(root)
    rows = [f"{p.name},{p.name.split('-')[0]}" for p in sorted(root.glob("*.wav"))]
    (root / "metadata.csv").write_text("file_name,label\n" + "\n".join(rows) + "\n")
    classes, items = folder_files(root)
    assert classes == ["cat", "dog"] and [(p.name, i) for p, i in items][:4] == [
        ("cat-0.wav", 0), ("cat-1.wav", 0), ("cat-2.wav", 0), ("dog-0.wav", 1)]
    train, test = load_dataset(DataConfig(dataset="folder", root=root, sample_rate=8000, clip_seconds=0.3,
                                          test_fraction=0.34))
    assert len(train) + len(test) == 6 and train.class_names == ["cat", "dog"]


@pytest.mark.parametrize("table, message", [
    ("file_name,label\n../outside.wav,cat\n", "lists '../outside.wav', which is not an audio file"),
    ("file_name,label\nnope.wav,cat\n", "lists 'nope.wav', which is not an audio file"),
    ("file_name,label\ncat-0.wav,\n", "gives 'cat-0.wav' no label"),
    ("path,class\ncat-0.wav,cat\n", "expected the columns file_name and label, got path, class"),
])
def test_a_bad_label_table_is_one_line(tmp_path, table, message):
    from lab.data import folder_files
    root = _flat_folder(tmp_path / "flat")
    write(tmp_path / "outside.wav", tone(0.3, 8000), 8000)
    (root / "metadata.csv").write_text(table)
    with pytest.raises(LabError, match=message.replace("(", r"\(").replace(".", r"\.")):
        folder_files(root)
