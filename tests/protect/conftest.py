"""A small generated collection with the awkward cases a real one has."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lab.protect import new_key_file
from tests.conftest import tone


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree_hashes(root: Path) -> dict[str, str]:
    """Every file (links as their target text) under ``root`` -> its hash: to prove nothing changed."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "link:" + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(root))] = sha(p)
    return out


# (label, name, seconds, rate, channels, subtype); formats follow the extension
GOOD = [
    ("cat", "a.wav", 0.6, 8000, 1, "PCM_16"),
    ("cat", "b.flac", 0.9, 16000, 2, "PCM_24"),
    ("cat", "c.wav", 0.3, 8000, 1, "FLOAT"),
    ("dog", "d.wav", 1.2, 22050, 2, "PCM_16"),
    ("dog", "e.aiff", 0.5, 8000, 1, "PCM_16"),
    ("dog", "sub/f.wav", 0.05, 8000, 1, "PCM_16"),  # shorter than a patch
    ("owl", "g.wav", 0.7, 16000, 1, "PCM_32"),
    ("owl", "h.wav", 0.4, 8000, 1, "PCM_U8"),
]


@pytest.fixture
def collection(tmp_path) -> Path:
    """INPUT/<label>/... with mixed formats, rates, channels and subtypes, plus a corrupt file, an empty file, a
    header-only file, a text file and links (one pointing out of INPUT)."""
    root = tmp_path / "input"
    for i, (label, name, seconds, sr, ch, subtype) in enumerate(GOOD):
        path = root / label / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), tone(seconds, sr, 200 + 90 * i, channels=ch, seed=i), sr, subtype=subtype)
    (root / "owl" / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + os.urandom(200))
    (root / "owl" / "empty.wav").write_bytes(b"")
    sf.write(str(root / "cat" / "header_only.wav"), np.zeros((0, 1), dtype=np.float32), 8000)
    (root / "cat" / "notes.txt").write_text("not audio")
    outside = tmp_path / "elsewhere.wav"
    sf.write(str(outside), tone(0.5, 8000), 8000)
    (root / "dog" / "outside_link.wav").symlink_to(outside)
    return root


BAD = {"owl/corrupt.wav", "owl/empty.wav", "cat/header_only.wav"}


@pytest.fixture
def key_file(tmp_path) -> Path:
    path = tmp_path / "keys" / "owner.key"
    path.parent.mkdir()
    new_key_file(path)
    return path


def private_record(out: Path, key_file: Path, record: Path | None = None):
    """Header, file records and summary of the private record ``lab protect`` wrote for ``out`` (by default next
    to the key file)."""
    from lab.protect.manifest import locate_record, read_manifest, read_record
    header = read_manifest(out)[0]
    return read_record(locate_record(out, key_file, header["collection_id"], record, earlier=True))
