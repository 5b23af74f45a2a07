"""What a lab protect run writes about itself: a public manifest inside OUTPUT and a private record outside it.

OUTPUT is what a data owner publishes, so nothing in it may reveal what the key is there to hide: whoever knows the
per-class positions and filters (or a file's patch starts) can undo the protection with one deconvolution. The run
therefore writes two JSON-lines files (one object per line: a header, one line per file, a summary):

- the **public manifest** ``OUTPUT/manifest.jsonl`` (format :data:`PUBLIC_FORMAT`): the collection id (random, to
  pair it with its record), the key's fingerprint, the classes, and per protected file its path relative to OUTPUT,
  label, output SHA-256 and audio facts anyone can read from the file itself (format, subtype, sample rate, channels,
  frames, seconds). No positions, filters, patch starts, source hashes, parameters, provenance or owner's paths;
- the **private record** (format :data:`RECORD_FORMAT`), written with mode 0600 like the key, outside OUTPUT: by
  default next to the key file as ``<OUTPUT name>.<collection id>.protect-record.jsonl`` (or ``--record PATH``). It
  holds everything ``lab verify`` and a resumed run need besides the key and the source: INPUT's and OUTPUT's
  absolute paths, the label rule, the protection as derived at the reference rate (its ``to_dict``: parameters and
  derived values, e.g. PosCUDA's per-class positions and filters), the provenance; a ``protection`` line per sample
  rate met (the protection derived at that rate, before the first file of that rate); and per file its class,
  status (``protected`` or ``failed`` with the error), source and output SHA-256, for defenses with positions the
  patches applied (pattern id ``class/patch``, first start sample, spacing and count of repeats, length) and how
  many samples were past full scale; its summary holds the run's counts.

While a run is going both are written line by line (flushed) to partial files, ``OUTPUT/.manifest.jsonl.lab-partial``
and ``RECORD.lab-partial`` (also 0600), renamed into place when the run ends; an interrupted run leaves them, and the
next run resumes from the partial record. Format ``lab-protect-manifest/v1`` (before this split) kept all of the
record in ``OUTPUT/manifest.jsonl``: such a folder is not safe to publish, and running ``lab protect`` on it again
moves the record out (:data:`LEGACY_FORMAT`).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Iterator

from lab.errors import LabError
from lab.protect.schema import check_line
from lab.protect.worker import DISK_FULL, PARTIAL_SUFFIX

MANIFEST = "manifest.jsonl"
PARTIAL = f".{MANIFEST}{PARTIAL_SUFFIX}"
METADATA = "metadata.csv"  # Hugging Face `datasets` audiofolder metadata (file_name, label), written on request
CARD = "README.md"  # with it, a dataset card whose YAML header makes `datasets` load `label` as a ClassLabel
PUBLIC_FORMAT = "lab-protect-manifest/v2"
LEGACY_FORMAT = "lab-protect-manifest/v1"  # everything in OUTPUT: not safe to publish
RECORD_FORMAT = "lab-protect-record/v1"
RECORD_SUFFIX = ".protect-record.jsonl"
# what a downloader may see of a protected file: all of it can be read from the file itself (or is its name/label)
PUBLIC_FIELDS = ("path", "label", "output_sha256", "format", "subtype", "sample_rate", "channels", "frames",
                 "seconds")
PUBLIC_NOTE = ("protected copies written by lab protect (PosCUDA); this folder is what its owner publishes. What "
               "the protection applied (positions, filters, patch starts) is not here: it is in the owner's private "
               "record, kept outside this folder")


def public_note(defense: str, optimised: bool = False) -> str:
    """The public manifest's note: which defense protected the copies (its name only: no parameters), and that what
    it applied is in the private record."""
    if defense == "poscuda":
        return PUBLIC_NOTE
    if optimised:
        return (f"protected copies written by lab protect (defense {defense}, optimised on the collection); this "
                f"folder is what its owner publishes. What the protection applied (the optimised noise or filters) "
                f"is not here: it is in the owner's private record and its arrays file, kept outside this folder")
    return (f"protected copies written by lab protect (defense {defense}); this folder is what its owner publishes. "
            f"What the protection applied (everything it derived from the key) is not here: it is in the owner's "
            f"private record, kept outside this folder")


def new_collection_id() -> str:
    """A random id shared by an OUTPUT's public manifest and its private record (it says nothing of the key)."""
    return secrets.token_hex(8)


def public_label_rule(kind: str, spec: str) -> str:
    """The label rule as published: the rule itself, but never the path of the owner's CSV."""
    return "csv" if kind == "csv" else spec


def public_file(rec: dict) -> dict:
    """The public line of a protected file's record."""
    return {"kind": "file", **{k: rec[k] for k in PUBLIC_FIELDS}}


def read_lines(path: Path, schema: str | None = None) -> Iterator[dict]:
    """The objects of a JSON-lines file, one by one (a last line cut short by an interruption is ignored), each
    checked against ``schema`` (``public``: a manifest; ``record``: a private record; see
    :mod:`lab.protect.schema`): a damaged line is a one-line :class:`LabError` naming the file and the line."""
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.endswith("\n"):
                    return  # a line cut short by an interruption
                try:
                    obj = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    raise LabError(f"{path}: line {n}: not JSON (bad line: {line[:60]!r}); not a lab protect "
                                   f"manifest or record, or a damaged one") from None
                yield check_line(obj, schema, f"{path}: line {n}") if schema else obj
    except UnicodeDecodeError:
        raise LabError(f"{path}: not text (not UTF-8): not a lab protect manifest or record, or a damaged one") \
            from None
    except OSError as e:
        raise LabError(f"cannot read {path}: {e.strerror or e}") from None


def first_line(path: Path) -> dict | None:
    """The header of a manifest or record file, or None when the file has no complete JSON first line."""
    try:
        with open(path) as f:
            line = f.readline(1 << 26)  # a header holds every class's filter: it can be long
    except (OSError, UnicodeDecodeError):
        return None
    try:
        obj = json.loads(line) if line.endswith("\n") else None
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def read_all(path: Path, schema: str | None = None) -> tuple[dict | None, list[dict], dict | None]:
    """Header, file lines and summary of a manifest or record file (lines checked against ``schema``, see
    :func:`read_lines`). A second header, or (when checked) a file listed twice, is a one-line error."""
    header, records, summary = None, [], None
    seen: set[str] = set()
    for obj in read_lines(path, schema):
        kind = obj.get("kind")
        if kind == "header":
            if header is not None:
                raise LabError(f"{path}: two header lines; the file was damaged or edited")
            header = obj
        elif kind == "file":
            if schema and obj["path"] in seen:
                raise LabError(f"{path}: {obj['path']} is listed twice; the file was damaged or edited")
            seen.add(obj.get("path"))
            records.append(obj)
        elif kind == "summary":
            summary = obj
    return header, records, summary


def legacy_warning(path: Path) -> str:
    return (f"{path} is an old {LEGACY_FORMAT} manifest that holds the protection's positions, filters and patch "
            f"starts: do NOT publish this folder; run the same `lab protect` command again to move them into a "
            f"private record outside it")


def output_header(output: Path) -> dict | None:
    """The header of OUTPUT's manifest (an interrupted run's partial one, which is newer, else the finished one), or
    None for a new OUTPUT."""
    for path in (output / PARTIAL, output / MANIFEST):
        if path.is_file():
            header = first_line(path)
            if header is None or header.get("kind") != "header" or \
                    header.get("format") not in (PUBLIC_FORMAT, LEGACY_FORMAT):
                raise LabError(f"{path}: not a lab protect manifest; choose another OUTPUT (nothing is overwritten)")
            return header if header["format"] == LEGACY_FORMAT else check_line(header, "public", f"{path}: line 1")
    return None


def legacy_files(output: Path) -> list[Path]:
    """OUTPUT's manifest files of the old format that kept the whole record in OUTPUT."""
    return [p for p in (output / MANIFEST, output / PARTIAL)
            if p.is_file() and (first_line(p) or {}).get("format") == LEGACY_FORMAT]


def read_manifest(output: Path) -> tuple[dict, list[dict], dict | None]:
    """Header, file lines and summary of the finished public manifest in ``output``."""
    path = output / MANIFEST
    if not path.is_file():
        hint = " (an interrupted run: run lab protect again to finish it)" if (output / PARTIAL).is_file() else ""
        raise LabError(f"no {MANIFEST} in {output}: not a lab protect OUTPUT folder{hint}")
    header = first_line(path)
    if header is not None and header.get("format") == LEGACY_FORMAT:
        raise LabError(legacy_warning(path))
    if header is None or header.get("kind") != "header" or header.get("format") != PUBLIC_FORMAT:
        raise LabError(f"{path}: not a {PUBLIC_FORMAT} manifest (no header line)")
    header, records, summary = read_all(path, "public")
    return header, records, summary


def partial_of(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL_SUFFIX)


def default_record(output: Path, key_file: Path, collection_id: str) -> Path:
    """Where the private record goes unless ``--record`` says otherwise: next to the key file, named after OUTPUT's
    folder and the collection id (several OUTPUTs protected with one key, even of the same name, never share one)."""
    return Path(key_file).expanduser().resolve().parent / f"{output.name}.{collection_id}{RECORD_SUFFIX}"


def locate_record(output: Path, key_file: Path, collection_id: str, given: Path | None, earlier: bool) -> Path:
    """The private record's path: ``given`` (``--record``), else :func:`default_record`; when that is not there (OUTPUT
    was renamed since), the one record of this collection id next to the key. ``earlier``: OUTPUT was written by an
    earlier run, so its record must exist (finished or partial)."""
    if given is not None:
        path = Path(given).expanduser().resolve()
        if path.is_dir():
            raise LabError(f"--record {given} is a folder; give the record's file path")
    else:
        path = default_record(output, key_file, collection_id)
        if earlier and not path.exists() and not partial_of(path).exists():
            ends = (f".{collection_id}{RECORD_SUFFIX}", f".{collection_id}{RECORD_SUFFIX}{PARTIAL_SUFFIX}")
            found = sorted({p.name.removesuffix(PARTIAL_SUFFIX) for p in path.parent.glob(f"*.{collection_id}*")
                            if p.name.endswith(ends)})
            if len(found) == 1:
                path = path.parent / found[0]
    if earlier and not path.exists() and not partial_of(path).exists():
        if given is not None:
            raise LabError(f"--record {given}: no such record (nor an interrupted run's {partial_of(path).name}); "
                           f"give the record lab protect wrote for {output} (printed at its end)")
        raise LabError(f"{output} was written by lab protect (collection {collection_id}) but its private record is "
                       f"not at {path}; pass --record PATH (the record that run wrote, printed at its end)")
    return path


def check_record_path(path: Path, output: Path, input_root: Path | None = None,
                      collection_id: str | None = None) -> None:
    """The record must lie outside OUTPUT (which is published) and INPUT (never modified), in an existing folder, and
    must not replace a file that is not this collection's record (finished or partial)."""
    if path.is_relative_to(output):
        raise LabError(f"--record {path} is inside OUTPUT {output}, the folder that is published, and the record "
                       f"reveals the protection; put it outside OUTPUT (default: next to the key file)")
    if input_root is not None and path.is_relative_to(input_root):
        raise LabError(f"--record {path} is inside INPUT {input_root} (the input is never modified); put it "
                       f"elsewhere with --record PATH")
    if not path.parent.is_dir():
        raise LabError(f"--record {path}: folder {path.parent} does not exist")
    if collection_id is None:
        return
    for p in (path, partial_of(path)):
        if not (p.exists() or p.is_symlink()):
            continue
        header = first_line(p) if p.is_file() else None
        if header is None or header.get("format") != RECORD_FORMAT:
            raise LabError(f"--record {p} exists and is not a lab protect record; refusing to overwrite it (choose "
                           f"another path)")
        if header.get("collection_id") != collection_id:
            raise LabError(f"--record {p} is the record of another OUTPUT ({header.get('output')}, collection "
                           f"{header.get('collection_id')}); refusing to overwrite it (choose another path)")


def read_protections(path: Path) -> dict[int, dict]:
    """The ``protection`` lines of a private record: the protection derived at each sample rate the run met."""
    return {obj["sample_rate"]: obj["protection"] for obj in read_lines(path, "record")
            if obj.get("kind") == "protection"}


def read_record(path: Path) -> tuple[dict, list[dict], dict | None]:
    """Header, file records and summary of a finished private record."""
    if not path.is_file():
        hint = " (only an interrupted run's partial record: run lab protect again to finish it)" \
            if partial_of(path).is_file() else ""
        raise LabError(f"private record {path} not found{hint}; pass --record PATH")
    header = first_line(path)
    if header is None or header.get("kind") != "header" or header.get("format") != RECORD_FORMAT:
        raise LabError(f"{path}: not a {RECORD_FORMAT} file (no header line)")
    return read_all(path, "record")


def previous_records(paths: list[Path], header: dict, where: Path) -> dict[str, dict]:
    """Records of earlier runs (each path in order: a finished file, then an interrupted run's partial one, which is
    newer), keyed by path. Refuses records written with another key, parameters or classes."""
    found: dict[str, dict] = {}
    for path in paths:
        if not path.is_file():
            continue
        schema = None if (first_line(path) or {}).get("format") == LEGACY_FORMAT else "record"
        seen: set[str] = set()
        for obj in read_lines(path, schema):
            if obj.get("kind") == "header":
                check_compatible(obj, header, where)
            elif obj.get("kind") == "file":
                if schema and obj["path"] in seen:
                    raise LabError(f"{path}: {obj['path']} is listed twice; the file was damaged or edited (restore "
                                   f"it from a backup)")
                seen.add(obj["path"])
                found[obj["path"]] = obj
    return found


def check_compatible(old: dict, new: dict, output: Path) -> None:
    """A resumed run must apply exactly what the earlier one did."""
    if old.get("format") not in (RECORD_FORMAT, LEGACY_FORMAT):
        raise LabError(f"{output}: holds a record of another format ({old.get('format')}); choose another OUTPUT")
    if old["key_fingerprint"] != new["key_fingerprint"]:
        raise LabError(f"{output} was protected with another key (fingerprint {old['key_fingerprint']}, this key "
                       f"{new['key_fingerprint']}); use that key or choose another OUTPUT")
    for field, what in (("classes", "labels"), ("protection", "defense parameters")):
        if old[field] != new[field]:
            raise LabError(f"{output} was protected with other {what}; repeat the first run's options or choose "
                           f"another OUTPUT")


class WriteFailed(Exception):
    """Writing one of the run's files failed (disk full, I/O error): ``path``, the system's reason, and whether the
    disk (or the quota) is full."""

    def __init__(self, path: Path | str, reason: str, disk_full: bool):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.disk_full = str(path), reason, disk_full

    @classmethod
    def of(cls, path: Path | str, e: OSError) -> "WriteFailed":
        return cls(path, e.strerror or str(e), e.errno in DISK_FULL)


class LinesWriter:
    """Writes a partial JSON-lines file (``partial``, default :func:`partial_of` ``final``) line by line (flushed)
    and renames it to ``final`` on :meth:`finish`. ``private``: created with mode 0600, like the key."""

    def __init__(self, final: Path, header: dict, private: bool = False, partial: Path | None = None):
        self.final = final
        self.partial = partial or partial_of(final)
        # the header goes to a new file that then replaces an earlier run's partial one: if even the header cannot
        # be written (a full disk), the earlier partial file, which the next run resumes from, is left as it was
        fresh = self.partial.with_name(f"{self.partial.name}.{os.getpid()}{PARTIAL_SUFFIX}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(fresh, flags, 0o600 if private else 0o644)
            if private:
                os.fchmod(fd, 0o600)  # exact, whatever the umask
            self.file = os.fdopen(fd, "w")
            self.file.write(json.dumps(header, sort_keys=True) + "\n")
            self.file.flush()
            os.replace(fresh, self.partial)
        except OSError as e:
            try:
                self.file.close()
            except (AttributeError, OSError):
                pass
            fresh.unlink(missing_ok=True)
            raise WriteFailed.of(self.partial, e) from None

    def write(self, obj: dict) -> None:
        try:
            self.file.write(json.dumps(obj, sort_keys=True) + "\n")
            self.file.flush()
        except OSError as e:
            raise WriteFailed.of(self.partial, e) from None

    def finish(self, summary: dict) -> Path:
        self.write(summary)
        try:
            self.file.close()
            os.replace(self.partial, self.final)
        except OSError as e:
            raise WriteFailed.of(self.final, e) from None
        return self.final

    def abandon(self, remove: bool = False) -> None:
        """Leave the partial file where it is (an interrupted run): the next run resumes from it. ``remove``: the
        run wrote nothing worth resuming from, so the partial file goes too (no orphan is left)."""
        try:
            self.file.close()
        except OSError:
            pass  # a disk still full: the last line stays cut short, and reading ignores it
        if remove:
            try:
                self.partial.unlink(missing_ok=True)
            except OSError:
                pass


def write_atomic(final: Path, text: str) -> str:
    """Write ``text`` (UTF-8) to ``final`` through a temporary file renamed into place; return its SHA-256 (recorded
    in the manifest's summary, so that a later run knows the file is its own)."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            f.write(text)
        digest = file_sha256(tmp)
        os.replace(tmp, final)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WriteFailed.of(final, e) from None
    return digest


def write_metadata(output: Path, public_lines: Path) -> str:
    """Write ``OUTPUT/metadata.csv`` for Hugging Face ``datasets``' audiofolder loader: a ``file_name`` column (each
    protected file's path relative to OUTPUT, where the metadata file lies) and a ``label`` column, one row per file
    of the public manifest ``public_lines``, atomically. Returns its SHA-256."""
    import csv
    import io
    text = io.StringIO()
    rows = csv.writer(text, lineterminator="\n")
    rows.writerow(["file_name", "label"])
    for obj in read_lines(public_lines, "public"):
        if obj.get("kind") == "file":
            rows.writerow([obj["path"], obj["label"]])
    return write_atomic(output / METADATA, text.getvalue())


# the texts pandas (which datasets reads metadata.csv with) takes for a missing value, quoted or not: a class of one
# of these names would load with label None
CSV_MISSING = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                         "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})


def labels_read_as_missing(classes: list[str]) -> str | None:
    """Why some of ``classes`` would not load from ``metadata.csv`` (pandas reads them as missing values), or None."""
    lost = [c for c in classes if c in CSV_MISSING]
    if not lost:
        return None
    return (f"class{'es' if len(lost) > 1 else ''} {', '.join(repr(c) for c in lost)} would load with no label: "
            f"Hugging Face datasets reads {METADATA} with pandas, which takes {'them' if len(lost) > 1 else 'it'} "
            f"for a missing value; rename {'them' if len(lost) > 1 else 'it'}")


def card_features(classes: list[str]) -> list[dict]:
    """The columns the dataset card declares, in ``datasets``' YAML form: ``audio``, and ``label`` a class label whose
    names are the collection's classes in the manifest's order (index i is ``classes[i]``)."""
    return [{"name": "audio", "dtype": "audio"},
            {"name": "label", "dtype": {"class_label": {"names": {str(i): c for i, c in enumerate(classes)}}}}]


def card_text(classes: list[str]) -> str:
    """``OUTPUT/README.md``: a dataset card whose YAML header gives ``datasets`` the columns' types (only the class
    names: nothing the manifest does not already say)."""
    import yaml
    header = yaml.safe_dump({"configs": [{"config_name": "default", "features": card_features(classes)}]},
                            sort_keys=False, allow_unicode=True, default_flow_style=False)
    return (f"---\n{header}---\n\n"
            f"# Protected audio collection\n\n"
            f"Protected copies written by `lab protect` (the unlearnable audio lab), {len(classes)} classes. "
            f"`{METADATA}` gives each file's label; the YAML header above declares `label` a class label with the "
            f"collection's classes (in the order of `{MANIFEST}`), so that Hugging Face `datasets` loads it as one:\n\n"
            f"```python\n"
            f"from datasets import load_dataset\n"
            f"ds = load_dataset(\"path/to/this/folder\", split=\"train\")   # audio, label (ClassLabel)\n"
            f"```\n\n"
            f"`{MANIFEST}` lists every file with its SHA-256 and audio facts.\n")


def write_card(output: Path, classes: list[str]) -> str:
    """Write the dataset card ``OUTPUT/README.md`` (:func:`card_text`) atomically; returns its SHA-256."""
    return write_atomic(output / CARD, card_text(classes))


def class_label_names(dtype) -> list | None:
    """The names of a class label as ``datasets`` writes it in YAML (``class_label: names:`` a mapping from index to
    name, or a list), in index order; None when ``dtype`` is not a class label."""
    names = dtype.get("class_label", {}).get("names") if isinstance(dtype, dict) and \
        isinstance(dtype.get("class_label"), dict) else None
    if isinstance(names, dict):
        try:
            by_index = {int(k): v for k, v in names.items()}
        except (TypeError, ValueError):
            return None
        return [by_index.get(i) for i in range(len(by_index))]
    return list(names) if isinstance(names, list) else None


def card_features_declared(path: Path) -> tuple[list | None, str | None]:
    """The ``features`` the dataset card at ``path`` declares for the config ``datasets`` loads by default (the one
    marked ``default``, else the one named ``default``, else the only one), and why they cannot be read: (features,
    None); (None, None) when its YAML header declares none; (None, why) when it cannot be read or parsed."""
    import yaml
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return None, f"unreadable: {e}"
    lines = text.splitlines()
    ends = [i for i in range(1, len(lines)) if lines[i].strip() == "---"]
    if not lines or lines[0].strip() != "---" or not ends:
        return None, None  # no YAML header: a plain card
    try:
        header = yaml.safe_load("\n".join(lines[1:ends[0]])) or {}
    except yaml.YAMLError as e:
        return None, f"its YAML header does not parse ({str(e).splitlines()[0]})"
    configs = header.get("configs") if isinstance(header, dict) else None
    configs = [c for c in configs if isinstance(c, dict)] if isinstance(configs, list) else []
    chosen = [c for c in configs if c.get("default")] or \
        [c for c in configs if c.get("config_name") == "default"] or configs[:1]
    if not chosen or "features" not in chosen[0]:
        return None, None
    features = chosen[0]["features"]
    return (features, None) if isinstance(features, list) else (None, "its features are not a list of columns")


def features_problem(features: list, classes: list[str]) -> str | None:
    """Why the card's ``features`` would not load ``label`` as a class label of ``classes`` (in that order) beside
    ``audio``, or None when they do."""
    declared = {f.get("name"): f.get("dtype") for f in features if isinstance(f, dict)}
    if set(declared) != {"audio", "label"}:
        return (f"the features it declares are {', '.join(map(str, declared)) or 'none'}, not audio and label (the "
                f"columns of {METADATA})")
    audio = declared["audio"]
    if audio != "audio" and not (isinstance(audio, dict) and set(audio) == {"audio"}):
        return f"it declares audio as {audio!r}, not an audio column"
    names = class_label_names(declared["label"])
    if names is None:
        return "it does not declare label a class label (dtype: class_label: names: ...)"
    if names != list(classes):
        return (f"its class label names ({', '.join(map(str, names[:5]))}{' ...' if len(names) > 5 else ''}) are not "
                f"the collection's {len(classes)} classes in order ({', '.join(classes[:5])}"
                f"{' ...' if len(classes) > 5 else ''})")
    return None


def card_problem(path: Path, classes: list[str]) -> str | None:
    """Why the dataset card at ``path`` would not make ``datasets`` load ``label`` as a class label of ``classes``
    (in that order), or None when it does."""
    features, why = card_features_declared(path)
    if why is not None:
        return why
    if features is None:
        return "its YAML header declares no features (configs: - config_name: default, features: ...)"
    return features_problem(features, classes)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
