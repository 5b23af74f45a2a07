"""The manifest: OUTPUT/manifest.jsonl, one JSON object per line.

- line 1, ``{"kind": "header", ...}``: the INPUT folder, the label rule and the sorted classes, the protection as
  derived (parameters, per-class positions and filters, key fingerprint: never the key), versions and git commit;
- one ``{"kind": "file", ...}`` line per audio file, in the walk's order: its path relative to INPUT (and OUTPUT),
  label and class, status (``protected`` or ``failed`` with the error), source and output SHA-256, format, subtype,
  sample rate, channels, frames, the patches applied (filter id ``class/patch``, first start sample, spacing and
  count of repeats, length) and how many samples were past full scale;
- last line, ``{"kind": "summary", ...}``: the counts of the run that wrote the manifest.

While a run is going the lines go, flushed one by one, to a hidden partial file that is renamed to
``manifest.jsonl`` when the run ends; an interrupted run leaves the partial file, and the next run reads it to resume.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from lab.errors import LabError
from lab.protect.worker import PARTIAL_SUFFIX

MANIFEST = "manifest.jsonl"
PARTIAL = f".{MANIFEST}{PARTIAL_SUFFIX}"
FORMAT = "lab-protect-manifest/v1"


def read_lines(path: Path) -> Iterator[dict]:
    """The objects of a manifest file, one by one (a last line cut short by an interruption is ignored)."""
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                return  # a line cut short by an interruption
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                raise LabError(f"{path}: not a lab protect manifest (bad line: {line[:60]!r})") from None


def read_manifest(output: Path) -> tuple[dict, list[dict], dict | None]:
    """Header, file records and summary of a finished manifest in ``output``."""
    path = output / MANIFEST
    if not path.is_file():
        hint = " (an interrupted run: run lab protect again to finish it)" if (output / PARTIAL).is_file() else ""
        raise LabError(f"no {MANIFEST} in {output}: not a lab protect OUTPUT folder{hint}")
    header, records, summary = None, [], None
    for obj in read_lines(path):
        kind = obj.get("kind")
        if kind == "header":
            header = obj
        elif kind == "file":
            records.append(obj)
        elif kind == "summary":
            summary = obj
    if header is None or header.get("format") != FORMAT:
        raise LabError(f"{path}: not a {FORMAT} manifest (no header line)")
    return header, records, summary


def previous_records(output: Path, header: dict) -> dict[str, dict]:
    """Records of earlier runs into ``output`` (finished manifest, then an interrupted run's partial one, which is
    newer), keyed by path. Refuses an OUTPUT written with another key, parameters or classes."""
    found: dict[str, dict] = {}
    for path in (output / MANIFEST, output / PARTIAL):
        if not path.is_file():
            continue
        for obj in read_lines(path):
            if obj.get("kind") == "header":
                check_compatible(obj, header, output)
            elif obj.get("kind") == "file":
                found[obj["path"]] = obj
    return found


def check_compatible(old: dict, new: dict, output: Path) -> None:
    """A resumed run must apply exactly what the earlier one did."""
    if old.get("format") != FORMAT:
        raise LabError(f"{output}: holds a manifest of another format ({old.get('format')}); choose another OUTPUT")
    if old["key_fingerprint"] != new["key_fingerprint"]:
        raise LabError(f"{output} was protected with another key (fingerprint {old['key_fingerprint']}, this key "
                       f"{new['key_fingerprint']}); use that key or choose another OUTPUT")
    for field, what in (("classes", "labels"), ("protection", "defense parameters")):
        if old[field] != new[field]:
            raise LabError(f"{output} was protected with other {what}; repeat the first run's options or choose "
                           f"another OUTPUT")


class ManifestWriter:
    """Writes the partial manifest line by line (flushed) and renames it into place on :meth:`finish`."""

    def __init__(self, output: Path, header: dict):
        self.output = output
        self.file = open(output / PARTIAL, "w")
        self.write(header)

    def write(self, obj: dict) -> None:
        self.file.write(json.dumps(obj, sort_keys=True) + "\n")
        self.file.flush()

    def finish(self, summary: dict) -> Path:
        self.write(summary)
        self.file.close()
        final = self.output / MANIFEST
        (self.output / PARTIAL).replace(final)
        return final

    def abandon(self) -> None:
        """Leave the partial manifest where it is (an interrupted run): the next run resumes from it."""
        self.file.close()
