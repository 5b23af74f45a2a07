"""Finding the audio files of a collection and their labels.

The walk is sorted (the same collection always gives the same order), streams (it never holds the file list), does
not follow symbolic links to folders, and takes a linked file only when its target lies inside INPUT.
"""
from __future__ import annotations

import csv
import os
import posixpath
import re
from dataclasses import dataclass, field
import stat
from pathlib import Path, PurePosixPath
from typing import Iterator

from lab.errors import LabError
from lab.formats import AUDIO_EXTENSIONS  # the lab's one list of audio extensions

UNLABELLED = "all"  # the single class every file takes with --labels none
LABEL_FORMS = "folder, none, regex:PATTERN (group 1 of the file name), or a CSV file (path,label)"


@dataclass(frozen=True)
class LabelRule:
    """How a file's label is found.

    ``kind``: ``folder`` (the name of the top-level folder under INPUT that holds the file, at any depth), ``csv``
    (a table of path,label rows; paths relative to INPUT), ``regex`` (the first group of ``pattern`` searched in the file name, or the whole match
    when it has no group) or ``none`` (every file gets the one label ``all``: one key-wide position and filter).
    ``spec``: the text the user gave, recorded in the manifest.
    """

    kind: str
    spec: str
    pattern: re.Pattern | None = None
    table: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str, input_root: Path) -> "LabelRule":
        """Read ``--labels`` (see :data:`LABEL_FORMS`); ``input_root`` anchors the CSV's relative paths."""
        if spec in ("folder", "none"):
            return cls(spec, spec)
        if spec.startswith("regex:"):
            try:
                return cls("regex", spec, pattern=re.compile(spec[len("regex:"):]))
            except re.error as e:
                raise LabError(f"--labels {spec}: not a valid regular expression ({e})") from None
        path = Path(spec[len("csv:"):] if spec.startswith("csv:") else spec).expanduser()
        if spec.startswith("csv:") or path.suffix.lower() == ".csv":
            return cls("csv", spec, table=read_label_csv(path, input_root))
        raise LabError(f"--labels {spec!r}: expected {LABEL_FORMS}")

    def label(self, rel: str) -> str | None:
        """The label of the file at ``rel`` (POSIX path relative to INPUT), or None when the rule gives it none."""
        if self.kind == "none":
            return UNLABELLED
        if self.kind == "folder":
            top, sep, _ = rel.partition("/")
            return top if sep else None
        if self.kind == "csv":
            return self.table.get(rel)
        m = self.pattern.search(posixpath.basename(rel))
        if m is None:
            return None
        return m.group(1) if m.re.groups else m.group(0)


def read_label_csv(path: Path, input_root: Path) -> dict[str, str]:
    """``path,label`` rows (an optional header row ``path,label`` is skipped); paths relative to ``input_root`` or
    absolute inside it."""
    if not path.is_file():
        raise LabError(f"--labels: CSV file not found: {path}")
    table: dict[str, str] = {}
    root = input_root.resolve()
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            if i == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
                continue
            if len(row) < 2 or not row[1].strip():
                raise LabError(f"--labels {path}: line {i}: expected 'path,label', got {','.join(row)!r}")
            p = Path(row[0].strip())
            if p.is_absolute():
                try:
                    p = p.resolve().relative_to(root)
                except ValueError:
                    raise LabError(f"--labels {path}: line {i}: {p} is not inside INPUT {root}") from None
            table[str(PurePosixPath(*p.parts))] = row[1].strip()
    if not table:
        raise LabError(f"--labels {path}: no path,label rows")
    return table


@dataclass
class Entry:
    """One thing found under INPUT: ``rel`` (POSIX path relative to INPUT), ``path`` (absolute), ``kind``:
    ``audio``, ``other`` (not audio: ignored), ``link`` (a symbolic link not followed) or ``special`` (named like
    audio but not a regular file: a FIFO, which would block a reader forever, a device, a socket; skipped), and
    ``size`` in bytes."""

    rel: str
    path: str
    kind: str
    size: int = 0


def walk(input_root: Path) -> Iterator[Entry]:
    """Every file under ``input_root`` in a fixed (sorted) order, streamed (plain strings: this runs per file)."""
    root = str(Path(input_root).resolve())
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        prefix = os.path.relpath(dirpath, root).replace(os.sep, "/")
        prefix = "" if prefix == "." else prefix + "/"
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                yield Entry(prefix + d, os.path.join(dirpath, d), "link")
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(path)
                if not os.path.isfile(target) or os.path.commonpath([root, target]) != root:
                    yield Entry(prefix + name, path, "link")
                    continue
                st = os.stat(target)
            kind = "audio" if os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS else "other"
            if kind == "audio" and not stat.S_ISREG(st.st_mode):
                kind = "special"
            yield Entry(prefix + name, path, kind, st.st_size)


def natural_key(label: str) -> tuple:
    """Sort labels so that '2' comes before '10' (numbers by value, then text)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", label) if p != "")


@dataclass
class Survey:
    """What a first pass over INPUT found: the sorted ``classes``, counts per kind, and audio ``seconds`` unknown
    until decoded."""

    classes: list[str]
    audio_files: int
    other_files: int
    links_skipped: int
    special_skipped: list[str] = field(default_factory=list)  # named like audio, not regular files (all of them)


def survey(input_root: Path, rule: LabelRule) -> Survey:
    """First pass: count files and collect the labels (memory grows with the number of labels, not of files).
    Every audio file must get a label: a file without one is an error naming it, before any work is done."""
    labels: set[str] = set()
    counts = {"audio": 0, "other": 0, "link": 0, "special": 0}
    special: list[str] = []
    unlabelled: list[str] = []
    n_unlabelled = 0
    for e in walk(input_root):
        counts[e.kind] += 1
        if e.kind == "special":
            special.append(e.rel)
        if e.kind != "audio":
            continue
        label = rule.label(e.rel)
        if label is None:
            n_unlabelled += 1
            if len(unlabelled) < 3:
                unlabelled.append(str(e.rel))
        else:
            labels.add(label)
    if n_unlabelled:
        why = {"folder": "files directly in INPUT have no label folder",
               "regex": "the pattern does not match their names",
               "csv": "they are not in the CSV"}[rule.kind]
        raise LabError(f"--labels {rule.spec}: {n_unlabelled} audio file(s) get no label ({why}), e.g. "
                       f"{', '.join(unlabelled)}; fix the rule or use --labels none (one key-wide setting)")
    if counts["audio"] == 0:
        raise LabError(f"no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) under INPUT {input_root}")
    return Survey(sorted(labels, key=natural_key), counts["audio"], counts["other"], counts["link"], special)
