"""Datasets: FSDD, Speech Commands, and any labelled folder, as train/test :class:`AudioSet` pairs."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from lab.data import fsdd, speechcommands
from lab.data.audio import AUDIO_EXTENSIONS, AudioSet, limit_per_class, load_clips
from lab.errors import LabError

__all__ = ["AudioSet", "load_dataset", "folder_files", "label_difference", "listed_labels"]


def _build(items: list[tuple[Path, int]], class_names: list[str], cfg, limit: int | None) -> AudioSet:
    keep = limit_per_class([lab for _, lab in items], limit, seed=cfg.subset_seed)
    items = [items[i] for i in keep]
    if not items:
        raise LabError(f"data: the {cfg.dataset} split selected no clips")
    clip_samples = round(cfg.clip_seconds * cfg.sample_rate)
    waves, lengths = load_clips([p for p, _ in items], cfg.sample_rate, clip_samples, cfg.crop, cfg.pad)
    labels = torch.tensor([lab for _, lab in items], dtype=torch.long)
    return AudioSet(waves, labels, lengths, cfg.sample_rate, class_names, [p.name for p, _ in items])


def folder_files(root: Path, field: str = "data.root") -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted) and (path, class index) pairs of a labelled folder: ``root/<label>/*.wav|flac|ogg``;
    or a flat folder whose labels are listed beside the files (:func:`listed_labels`: a Hugging Face
    ``metadata.csv``, or the manifest ``lab protect`` writes). ``field`` names the folder in errors."""
    if not root.is_dir():
        raise LabError(f"{field}: no such folder: {root} (expected ROOT/<label>/*.wav)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    items = [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).iterdir())
             if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()]
    if not items and any(p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file() for p in root.iterdir()):
        listed = listed_labels(root, field)
        if listed is not None:
            names = sorted(set(listed.values()))
            classes, items = names, [(path, names.index(label)) for path, label in listed.items()]
    if len(classes) < 2 or not items:
        raise LabError(f"{field}: {root} needs at least two label folders with audio files "
                       f"({', '.join(AUDIO_EXTENSIONS)}), or audio files with their labels in {LISTS[0]} or "
                       f"{LISTS[1]}; found {len(classes)} labels, {len(items)} files")
    return classes, items


LISTS = ("metadata.csv", "manifest.jsonl")  # where a flat folder's labels may be listed, in that order


def listed_labels(root: Path, field: str = "data.root") -> dict[Path, str] | None:
    """The labels of a flat folder's audio files, path -> label, sorted by path, from ``root/metadata.csv`` (the
    Hugging Face audiofolder table: ``file_name`` and ``label`` columns, paths relative to ``root``) or else from
    ``root/manifest.jsonl`` (a ``lab protect`` OUTPUT's public manifest: each file's path and label); None when
    neither is there. Every listed file must be an audio file inside ``root``: one-line LabError otherwise."""
    import csv
    table, source = None, None
    if (root / LISTS[0]).is_file():
        source = root / LISTS[0]
        with source.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if rows and not {"file_name", "label"} <= set(rows[0]):
            raise LabError(f"{field}: {source}: expected the columns file_name and label, got "
                           f"{', '.join(rows[0])}")
        table = [(r["file_name"], r["label"]) for r in rows]
    elif (root / LISTS[1]).is_file():
        from lab.protect.manifest import read_manifest
        source = root / LISTS[1]
        table = [(r["path"], r["label"]) for r in read_manifest(root)[1]]
    if table is None:
        return None
    out: dict[Path, str] = {}
    top = root.resolve()
    for rel, label in table:
        path = (root / rel).resolve()
        if top not in path.parents or not path.is_file() or path.suffix.lower() not in AUDIO_EXTENSIONS:
            raise LabError(f"{field}: {source} lists {rel!r}, which is not an audio file "
                           f"({', '.join(AUDIO_EXTENSIONS)}) inside {root}")
        if not label:
            raise LabError(f"{field}: {source} gives {rel!r} no label")
        out[root / rel] = label
    return dict(sorted(out.items()))


def stratified_split(items: list[tuple[Path, int]], num_classes: int, test_fraction: float,
                     seed: int) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Train and test items: ``test_fraction`` of each class (at least one clip where a class has two or more),
    drawn with ``seed``; the same items and seed always give the same split."""
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in range(num_classes):
        mine = [it for it in items if it[1] == c]
        order = torch.randperm(len(mine), generator=gen).tolist()
        n_test = max(1, round(test_fraction * len(mine))) if len(mine) > 1 else 0
        test += [mine[i] for i in order[:n_test]]
        train += [mine[i] for i in order[n_test:]]
    return train, test


def label_difference(a: list[str], b: list[str], name_a: str, name_b: str) -> str | None:
    """None when the label lists ``a`` and ``b`` are the same; else one line naming the labels only one has."""
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if not only_a and not only_b:
        return None
    parts = [f"only in {name}: {', '.join(labels)}" for name, labels in ((name_a, only_a), (name_b, only_b))
             if labels]
    return f"{name_a} and {name_b} have different label folders ({'; '.join(parts)})"


def _two_roots(root: Path, test_root: Path) -> tuple[list[str], list, list]:
    """Classes, training items from ``root/<label>`` and test items from ``test_root/<label>`` (data.test_root)."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        raise LabError(f"data.test_root: {root} holds train/ and test/; with test_root, data.root is the training "
                       f"folder itself (ROOT/<label>/*.wav)")
    if test_root.expanduser().resolve() == root.resolve():
        raise LabError(f"data.test_root: {test_root} is data.root itself; the test clips must be held out")
    classes, train = folder_files(root)
    test_classes, test = folder_files(test_root.expanduser(), "data.test_root")
    differ = label_difference(classes, test_classes, f"data.root {root}", f"data.test_root {test_root}")
    if differ:
        raise LabError(differ)
    return classes, train, test


def _folder(cfg) -> tuple[AudioSet, AudioSet]:
    if cfg.root is None:
        raise LabError("data.root is required for dataset 'folder' (a folder of ROOT/<label>/*.wav)")
    root = Path(cfg.root).expanduser()
    if cfg.test_root is not None:
        classes, train, test = _two_roots(root, Path(cfg.test_root))
    elif (root / "train").is_dir() and (root / "test").is_dir():
        classes, train = folder_files(root / "train")
        test_classes, test = folder_files(root / "test")
        if test_classes != classes:
            raise LabError(f"data.root: train/ and test/ under {root} have different label folders")
    else:
        classes, items = folder_files(root)
        train, test = stratified_split(items, len(classes), cfg.test_fraction, cfg.subset_seed)
    return (_build(train, classes, cfg, cfg.max_train_per_class),
            _build(test, classes, cfg, cfg.max_test_per_class))


def _fsdd(cfg, log) -> tuple[AudioSet, AudioSet]:
    folder = fsdd.locate(cfg.root, log)
    train, test, every = [], [], []
    for path in sorted(folder.iterdir()):
        if not fsdd.FSDD_PATTERN.match(path.name):
            continue
        digit, speaker, take = fsdd.parse_name(path)
        every.append((path, digit))
        if cfg.split == "official":
            is_test = take < 5
        else:
            is_test = speaker == cfg.test_speaker
        (test if is_test else train).append((path, digit))
    if cfg.split == "random":  # stratified by digit; speakers and takes fall on both sides
        train, test = stratified_split(every, 10, cfg.test_fraction, cfg.subset_seed)
    if cfg.split == "speaker" and not test:
        raise LabError(f"data.test_speaker: no clips of speaker {cfg.test_speaker!r}; valid: {', '.join(fsdd.SPEAKERS)}")
    classes = [str(d) for d in range(10)]
    return _build(train, classes, cfg, cfg.max_train_per_class), _build(test, classes, cfg, cfg.max_test_per_class)


def _speechcommands(cfg) -> tuple[AudioSet, AudioSet]:
    root = speechcommands.locate(cfg.root)
    classes, splits = speechcommands.split_files(root, cfg.words)
    index = {w: i for i, w in enumerate(classes)}
    train = [(p, index[w]) for p, w in splits["train"]]
    test = [(p, index[w]) for p, w in splits["test"]]
    return _build(train, classes, cfg, cfg.max_train_per_class), _build(test, classes, cfg, cfg.max_test_per_class)


def load_dataset(cfg, log: Callable[[str], None] = print) -> tuple[AudioSet, AudioSet]:
    """Train and test clips for a recipe's ``data`` section."""
    if cfg.dataset == "fsdd":
        return _fsdd(cfg, log)
    if cfg.dataset == "speechcommands":
        return _speechcommands(cfg)
    return _folder(cfg)
