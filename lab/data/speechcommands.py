"""Speech Commands v0.02, through ``torchaudio.datasets.SPEECHCOMMANDS`` and its official validation/test lists.

The data root is the folder that holds ``SpeechCommands/speech_commands_v0.02/`` (torchaudio's layout): the recipe's
``data.root``, else ``$LAB_DATA_DIR`` or ``$LAB_DATA_DIR/speechcommands``. torchaudio's own decoding needs FFmpeg, so
the lab takes only file lists and labels from it and decodes with soundfile.
"""
from __future__ import annotations

import os
from pathlib import Path

from torchaudio.datasets import SPEECHCOMMANDS

from lab.errors import LabError

FOLDER = Path("SpeechCommands") / "speech_commands_v0.02"
WORD_SETS = {
    "digits": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
    "commands10": ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"],
}


def locate(root: Path | None) -> Path:
    candidates = [Path(root).expanduser()] if root is not None else []
    env = os.environ.get("LAB_DATA_DIR")
    if root is None and env:
        candidates += [Path(env).expanduser(), Path(env).expanduser() / "speechcommands"]
    for c in candidates:
        if (c / FOLDER).is_dir():
            return c
    looked = ", ".join(str(c / FOLDER) for c in candidates) or "nowhere (neither data.root nor LAB_DATA_DIR is set)"
    raise LabError(f"Speech Commands v0.02 not found; looked in {looked}. Download speech_commands_v0.02.tar.gz "
                   f"(about 2.3 GB), extract it into ROOT/{FOLDER}, and set data.root or LAB_DATA_DIR to ROOT")


def resolve_words(words: str | list[str] | None, available: list[str]) -> list[str]:
    if words is None or words == "all":
        return available
    if isinstance(words, str):
        if words not in WORD_SETS:
            raise LabError(f"data.words: unknown word set {words!r}; valid: all, {', '.join(WORD_SETS)}, or a list")
        words = WORD_SETS[words]
    missing = [w for w in words if w not in available]
    if missing:
        raise LabError(f"data.words: {missing} not in the dataset; available: {', '.join(available)}")
    return list(words)


def split_files(root: Path, words: str | list[str] | None) -> tuple[list[str], dict[str, list[tuple[Path, str]]]]:
    """Class names and, per split (train/test), the (path, word) pairs of the chosen words."""
    splits: dict[str, list[tuple[Path, str]]] = {}
    for ours, theirs in (("train", "training"), ("test", "testing")):
        ds = SPEECHCOMMANDS(str(root), subset=theirs, download=False)
        items = []
        for n in range(len(ds)):
            relpath, _sr, label, _speaker, _utt = ds.get_metadata(n)
            items.append((root / "SpeechCommands" / relpath, label))
        splits[ours] = items
    available = sorted({w for _, w in splits["train"]})
    if not available:
        raise LabError(f"Speech Commands under {root / FOLDER} has no training clips")
    chosen = resolve_words(words, available)
    keep = set(chosen)
    return chosen, {k: [(p, w) for p, w in v if w in keep] for k, v in splits.items()}
