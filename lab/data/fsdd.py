"""Free Spoken Digit Dataset: ``{digit}_{speaker}_{take}.wav``, 8 kHz mono, 6 speakers x 10 digits x 50 takes.

Where the data comes from, in order: the recipe's ``data.root``; ``$LAB_DATA_DIR`` (a folder holding the clips, their
``recordings/`` folder, or ``fsdd/recordings/``); the lab's cache (``$LAB_CACHE_DIR``, default ``~/.cache/lab``);
otherwise the upstream release archive (tag v1.0.10) is downloaded into the cache, checked, and the lab says so.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Callable

from lab.errors import LabError

FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz"
FSDD_PATTERN = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")
FSDD_CLIPS = 3000
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")


def cache_dir() -> Path:
    return Path(os.environ.get("LAB_CACHE_DIR", Path.home() / ".cache" / "lab")).expanduser()


def _clips_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if FSDD_PATTERN.match(p.name))


def find_recordings(base: Path) -> Path | None:
    """The folder under ``base`` that holds FSDD clips, or None."""
    for candidate in (base, base / "recordings", base / "fsdd" / "recordings"):
        if _clips_in(candidate):
            return candidate
    return None


def parse_name(path: Path) -> tuple[int, str, int]:
    m = FSDD_PATTERN.match(path.name)
    if not m:
        raise LabError(f"not an FSDD clip name (expected DIGIT_SPEAKER_TAKE.wav): {path}")
    return int(m.group(1)), m.group(2), int(m.group(3))


def download(dest: Path, url: str | None = None, log: Callable[[str], None] = print) -> Path:
    """Download the FSDD release archive, extract its recordings into ``dest/recordings``, verify them."""
    url = url or os.environ.get("LAB_FSDD_URL", FSDD_URL)
    dest.mkdir(parents=True, exist_ok=True)
    log(f"FSDD not found locally: downloading {url} into {dest}")
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        archive = Path(tmp) / "fsdd.tar.gz"
        try:
            urllib.request.urlretrieve(url, archive)
        except Exception as e:
            raise LabError(f"could not download FSDD from {url} ({e}); put the clips in a folder and set "
                           f"LAB_DATA_DIR or data.root to it") from None
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        staging = Path(tmp) / "recordings"
        staging.mkdir()
        try:
            with tarfile.open(archive) as tar:
                for member in tar.getmembers():
                    name = Path(member.name).name
                    if member.isfile() and Path(member.name).parent.name == "recordings" and FSDD_PATTERN.match(name):
                        with tar.extractfile(member) as src, open(staging / name, "wb") as dst:
                            shutil.copyfileobj(src, dst)
        except tarfile.TarError as e:
            raise LabError(f"the FSDD archive from {url} is not a valid tar.gz ({e})") from None
        found = _clips_in(staging)
        expected = os.environ.get("LAB_FSDD_EXPECTED_CLIPS")
        expected = int(expected) if expected else FSDD_CLIPS
        if len(found) != expected:
            raise LabError(f"the FSDD archive from {url} holds {len(found)} clips, expected {expected}; not using it")
        final = dest / "recordings"
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    (dest / "SOURCE.json").write_text(json.dumps({"url": url, "sha256": digest, "clips": len(found)}, indent=2))
    log(f"FSDD ready: {len(found)} clips in {final} (archive sha256 {digest[:16]}...)")
    return final


def locate(root: Path | None, log: Callable[[str], None] = print) -> Path:
    """Find the FSDD recordings folder (see the module docstring for the order); download when nothing has it."""
    if root is not None:
        found = find_recordings(Path(root).expanduser())
        if found is None:
            raise LabError(f"no FSDD clips (DIGIT_SPEAKER_TAKE.wav) in data.root={root}; point it at the "
                           f"'recordings' folder of the Free Spoken Digit Dataset, or remove it to download the data")
        return found
    env = os.environ.get("LAB_DATA_DIR")
    if env:
        found = find_recordings(Path(env).expanduser())
        if found is not None:
            return found
        log(f"LAB_DATA_DIR={env} holds no FSDD clips (looked in it, recordings/ and fsdd/recordings/)")
    cached = find_recordings(cache_dir() / "fsdd")
    if cached is not None:
        return cached
    return download(cache_dir() / "fsdd", log=log)
