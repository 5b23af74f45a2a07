"""Protecting a whole collection: derive from the key, stream the files through worker processes, write atomically,
resume.

Any registered defense whose :class:`~defenses.base.Protection` is marked ``file_by_file`` can be applied (see
:func:`file_by_file_defenses`); each file is protected by that protection's own ``apply``, as in experiments. The
parent holds the key's derivation: it derives the protection once at :data:`REFERENCE_RATE` (the record's header)
and again at each sample rate it meets (it reads each file's header as it hands the files out), and sends the
workers the derived protections of the rates of each chunk, never the key. Everything derived goes into the private
record (a ``protection`` line per rate), nothing into OUTPUT.

A defense optimised on the data it protects (``needs_training_set``, with a protection that is ``on_collection``:
:func:`optimised_defenses`) is optimised on the collection itself first, resumably, and then written the same way,
file by file at each file's own rate (see :mod:`lab.protect.optimise`).

What is written: the protected copies and a public manifest in OUTPUT (the folder that is published), and the
owner's private record outside it (see :mod:`lab.protect.manifest`).

Memory: the parent holds the protection, the label table, and (when resuming) the earlier records; each worker holds
one file at a time. The file list is never built: a sorted walk feeds the workers lazily. Peak memory therefore
depends on the largest file, not on how many files there are.
"""
from __future__ import annotations

import difflib
import multiprocessing as mp
import os
import pickle
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, get_type_hints

import soundfile as sf

import defenses
from defenses.base import Defense, Protection, build_defense
from lab.config import PluginConfig, parse_plugin
from lab.errors import LabError
from lab.keys import fingerprint, resolve_key
from lab.protect.collection import LabelRule, Survey, survey, walk
from lab.protect.manifest import (CARD, LEGACY_FORMAT, MANIFEST, METADATA, PARTIAL, PUBLIC_FORMAT, RECORD_FORMAT,
                                  LinesWriter, WriteFailed, card_problem, check_record_path, file_sha256,
                                  labels_read_as_missing, legacy_files, legacy_warning, locate_record,
                                  new_collection_id, output_header, partial_of, previous_records, public_file,
                                  public_label_rule, public_note, read_all, write_card, write_metadata)
from lab.protect.optimise import (WORKING_FIELDS, Optimised, WorkingConfig, check_option_names,
                                  optimise_collection, working_config)
from lab.protect.safefs import OutputLock, refuse_links
from lab.protect.worker import PARTIAL_SUFFIX, protect_files, start_worker

REFERENCE_RATE = 8000  # the record's header holds the protection derived at this rate; each file gets the one
# derived at its own sample rate
CHUNK_FILES = 64  # a worker takes up to this many files at once (PosCUDA: one batched convolution per rate) ...
CHUNK_BYTES = 4 << 20  # ... or this many bytes of source files: a chunk's memory is bounded, whatever the collection


def check_folders(input_root: Path, output_root: Path) -> tuple[Path, Path]:
    """INPUT must be a folder; OUTPUT must lie outside it (and not contain it), and be new, empty, or an earlier
    lab protect OUTPUT (which is then resumed)."""
    inp = Path(input_root).expanduser().resolve()
    out = Path(output_root).expanduser().resolve()
    if not inp.is_dir():
        raise LabError(f"INPUT {input_root} is not a folder")
    if out == inp or out.is_relative_to(inp):
        raise LabError(f"OUTPUT {out} is inside INPUT {inp}; choose a folder outside it (the input is never modified)")
    if inp.is_relative_to(out):
        raise LabError(f"OUTPUT {out} contains INPUT {inp}; choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise LabError(f"OUTPUT {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).exists() and not (out / PARTIAL).exists():
        raise LabError(f"OUTPUT {out} is not empty and holds no lab protect manifest; choose a new or empty folder "
                       f"(nothing is overwritten)")
    return inp, out


def protection_class(name: str) -> type[Protection] | None:
    """The :class:`Protection` class the registered defense ``name`` derives (the protection of that name, else the
    class its ``derive`` is annotated to return), or None when that cannot be told."""
    cls = Protection.types.get(name)
    if cls is None and name in defenses.DEFENSES:
        try:
            cls = get_type_hints(defenses.DEFENSES.get(name).derive).get("return")
        except Exception:  # an annotation that does not resolve: not known to be file by file
            cls = None
    return cls if isinstance(cls, type) and issubclass(cls, Protection) else None


def file_by_file_defenses() -> list[str]:
    """The registered defenses lab protect can apply: those whose protection is marked ``file_by_file``."""
    return [n for n in defenses.DEFENSES.names() if getattr(protection_class(n), "file_by_file", False)]


def optimised_defenses() -> list[str]:
    """The registered defenses lab protect optimises on the collection itself and then writes file by file: those
    that ``needs_training_set`` and whose protection is ``on_collection`` (it can be written onto the collection's
    own files, see :meth:`defenses.base.Protection.files_at`)."""
    return [n for n in defenses.DEFENSES.names() if getattr(defenses.DEFENSES.get(n), "needs_training_set", False)
            and getattr(protection_class(n), "on_collection", False)]


def applicable_defenses() -> list[str]:
    """Every defense lab protect can apply: derived from the key file by file, or optimised on the collection."""
    return sorted({*file_by_file_defenses(), *optimised_defenses()})


def config_fields(kind: str) -> list[str]:
    """The fields of the registered defense ``kind``'s configuration, all but its type and key."""
    return [f for f in defenses.DEFENSES.get(kind).Config.model_fields if f not in ("type", "key", "key_file")]


def defense_fields_of(kind: str) -> list[str]:
    """The configurable fields of the registered defense ``kind`` (all but its type and key; for a defense optimised
    on the collection, also the working clips' settings)."""
    return config_fields(kind) + list(WORKING_FIELDS) if kind in optimised_defenses() else config_fields(kind)


def cannot_apply(kind: str) -> LabError:
    able = applicable_defenses()
    if kind not in defenses.DEFENSES:
        hint = difflib.get_close_matches(str(kind), able, n=1)
        return LabError(f"unknown defense {kind!r}{f' (did you mean {hint[0]!r}?)' if hint else ''}; lab protect "
                        f"can apply: {', '.join(able)}")
    return LabError(f"lab protect cannot apply the defense {kind!r} file by file (nor optimise it on the collection "
                    f"and write it file by file); it can apply: {', '.join(able)}")


def defense_config(key_file: Path, options: dict | None) -> PluginConfig:
    """The configuration of the defense ``options`` names (``type``, default ``poscuda``; its parameters, without
    key) with the key file. Only a defense lab protect can apply is accepted (one line naming those that can,
    otherwise). For a defense optimised on the collection the working clips' settings are left out (see
    :func:`working_settings`); any other name that is not one of its fields is one line."""
    options = dict(options or {})
    kind = options.pop("type", None) or "poscuda"
    if kind not in applicable_defenses():
        raise cannot_apply(kind)
    for secret in ("key", "key_file"):
        options.pop(secret, None)  # the key comes from --key-file only
    if kind in optimised_defenses():
        check_option_names(kind, options, config_fields(kind))
        options = {k: v for k, v in options.items() if k not in WORKING_FIELDS}
    return parse_plugin(defenses.DEFENSES, {**options, "type": kind, "key_file": str(key_file)}, "defense")


def working_settings(options: dict | None) -> WorkingConfig | None:
    """The working clips' settings of a defense optimised on the collection (``working_rate``, ``clip_seconds``:
    defaults where not given); None for a defense derived from the key."""
    options = dict(options or {})
    if (options.get("type") or "poscuda") not in optimised_defenses():
        return None
    return working_config(options)


def derive_at(defense: Defense, num_classes: int, sample_rate: int, key_fp: str) -> Protection:
    """The protection ``defense`` derives for ``num_classes`` classes at ``sample_rate``, checked: applicable file by
    file, and from the key whose fingerprint is ``key_fp`` (the key file was not replaced during the run)."""
    prot = defense.derive(num_classes, sample_rate)
    if not type(prot).file_by_file:
        raise cannot_apply(defense.config.type)
    found = getattr(prot, "key_fingerprint", key_fp)
    if found != key_fp:
        raise LabError(f"the key file now holds another key (fingerprint {found}, the run began with {key_fp}); put "
                       f"the key back and run again")
    return prot


def header_rate(path: str) -> int | None:
    """A file's sample rate from its header (None when it cannot be opened: the worker then says why)."""
    try:
        with sf.SoundFile(path) as f:
            return f.samplerate
    except Exception:
        return None


def remove_partials(out: Path) -> int:
    """Delete temporary files an interrupted run left in OUTPUT (only ours: ``*.lab-partial``)."""
    n = 0
    for dirpath, _, filenames in os.walk(out):
        for name in filenames:
            if name.endswith(PARTIAL_SUFFIX) and name != PARTIAL:
                os.unlink(os.path.join(dirpath, name))
                n += 1
    return n


def in_order(pool, fn: Callable, items: Iterator, ahead: int) -> Iterator:
    """``fn(item)`` for each item on the pool's workers, results in the items' order, with at most ``ahead`` items
    in flight (``Pool.imap`` would read the whole iterator into its queue: memory growing with the collection)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.apply_async(fn, (item,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def protect_collection(input_root: Path, output_root: Path, key_file: Path, labels: str = "folder",
                       defense: dict | None = None, workers: int | None = None, fsync: bool = False,
                       record: Path | None = None, metadata: bool = False,
                       log: Callable[[str], None] = lambda msg: None,
                       progress: Callable[[int, int], None] | None = None) -> dict:
    """Write a protected copy of every audio file under ``input_root`` into ``output_root`` and return the summary.

    ``input_root``: the collection (never modified). ``output_root``: where the copies and the public
    ``manifest.jsonl`` go, mirroring INPUT's folders; if an earlier run wrote it the run resumes (files whose source
    and output still match their records are kept, the rest is done). ``key_file``: the private key (``lab keygen``).
    ``labels``: ``folder``, ``none``, ``regex:PATTERN`` or a CSV (see :class:`LabelRule`). ``defense``: the defense
    section without key: ``type`` (default ``poscuda``; any of :func:`applicable_defenses`) and its parameters
    (PosCUDA's ``patch_seconds``, ``blur``, ``repeat_seconds``, ...; defaults otherwise); for a defense optimised on
    the collection (:func:`optimised_defenses`: em-noise, robust-em, poscuda-opt, ensemble-em) also ``working_rate`` and
    ``clip_seconds`` (see :mod:`lab.protect.optimise`; the optimisation is resumable too). ``workers``: worker
    processes (default: the CPU count; 0 runs everything in this process). ``fsync``: force every file to disk
    before its rename. ``record``: where the private record goes (outside OUTPUT; default next to the key file, see
    :func:`lab.protect.manifest.default_record`). ``metadata``: also write ``OUTPUT/metadata.csv`` (file_name,
    label) for Hugging Face ``datasets``' audiofolder loader, and the dataset card ``OUTPUT/README.md`` that makes
    ``datasets.load_dataset(OUTPUT)`` load ``label`` as a ClassLabel of the classes (see :func:`own_card`).
    ``log``: receives progress messages. ``progress``: called with (files handled, files total).

    Safety: OUTPUT is locked for the run (a second run on it is refused in one line); a symbolic link inside OUTPUT
    is refused, and nothing is ever written through one (see :mod:`lab.protect.safefs`); OUTPUT and the record's
    folder must be writable before anything is written. A full disk stops the run with a :class:`LabError` naming
    the file and how much was done; no temporary file is left, and running again resumes.
    """
    started = time.perf_counter()
    inp, out = check_folders(input_root, output_root)
    key_path = Path(key_file).expanduser()
    if key_path.resolve().is_relative_to(out):
        raise LabError(f"--key-file {key_path} is inside OUTPUT {out}, the folder that is published; move the key "
                       f"out of it")
    key_fp = fingerprint(resolve_key(None, key_path, where="--key-file"))
    cfg, working = defense_config(key_path, defense), working_settings(defense)
    rule = LabelRule.parse(labels, inp)
    found = survey(inp, rule)
    mode = key_path.stat().st_mode & 0o777
    if mode & 0o077:
        log(f"warning: key file {key_path} can be read by others (mode {mode:o}); `chmod 600 {key_path}`")
    with claimed(out):
        plan = plan_run(inp, out, key_path, key_fp, cfg, rule, found, record, metadata, working, log)
        stale = remove_partials(out)
        if plan.legacy:
            log(f"warning: {legacy_warning(out / MANIFEST)}; this run does it: the private record goes to "
                f"{plan.record_path}")
        if plan.lost:
            log(f"warning: {METADATA}: {plan.lost}")
        log(f"{found.audio_files} audio files in {len(found.classes)} classes; key fingerprint {key_fp}"
            + (f"; resuming ({len(plan.previous)} earlier records)" if plan.previous else "")
            + (f"; removed {stale} temporary files of an interrupted run" if stale else ""))
        summary = run_files(plan, workers, fsync, started, progress)
        if plan.optimised is not None:
            plan.optimised.finished()
            summary["optimisation"] = plan.optimised.summary()
        return summary


@dataclass
class Plan:
    """Everything a run decided before its first file: folders, key fingerprint, defense, labels, headers, the
    earlier records it resumes from, and where the private record goes."""

    inp: Path
    out: Path
    key_fp: str
    defense: Defense
    rule: LabelRule
    found: Survey
    record_path: Path
    private_header: dict
    public_header: dict
    previous: dict[str, dict]
    write_meta: bool
    write_card: bool  # the dataset card OUTPUT/README.md (beside metadata.csv; see own_card)
    lost: str | None  # labels pandas would read as missing (NA, null, ...): said, metadata written anyway
    legacy: bool
    optimised: Optimised | None = None

    @property
    def classes(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.found.classes)}

    def protection_at(self, rate: int) -> Protection:
        """The protection of the files at ``rate``: derived from the key, or the optimised one written onto them."""
        if self.optimised is not None:
            return self.optimised.at_rate(rate)
        return derive_at(self.defense, len(self.found.classes), rate, self.key_fp)


@contextmanager
def claimed(out: Path) -> Iterator[None]:
    """OUTPUT made (if new), checked writable, locked against a second run and free of symbolic links, for the
    length of the run. If it was made here and the run fails before writing anything in it, it is removed again."""
    try:
        out.mkdir(parents=True)
        created = True
    except FileExistsError:
        created = False  # (a run started beside this one may have made it a moment ago: never removed here)
    except OSError as e:
        raise LabError(f"cannot create OUTPUT {out}: {e.strerror or e}; choose a folder you can write to") from None
    try:
        if not os.access(out, os.W_OK | os.X_OK):
            raise LabError(f"OUTPUT {out} is not writable (read-only file system or no permission); choose a folder "
                           f"you can write to")
        with OutputLock(out):
            refuse_links(out)
            yield
    except BaseException:
        if created:
            try:
                out.rmdir()  # only when still empty: nothing of a run that wrote something is removed
            except OSError:
                pass
        raise


def plan_run(inp: Path, out: Path, key_path: Path, key_fp: str, cfg: PluginConfig, rule: LabelRule,
             found: Survey, record: Path | None, metadata: bool, working: WorkingConfig | None = None,
             log: Callable[[str], None] = lambda msg: None) -> Plan:
    """The run's :class:`Plan`: derive the protection at the reference rate, read OUTPUT's earlier manifest (a
    resumed run must use the same key, defense and classes), place the private record (its folder must be
    writable), and read the earlier records. A defense optimised on the collection is optimised here (or taken
    from the earlier run's record), once the record's place is known."""
    chosen = build_defense(cfg)
    derived = None if chosen.needs_training_set else \
        derive_at(chosen, len(found.classes), REFERENCE_RATE, key_fp).to_dict()
    earlier = output_header(out)
    legacy = earlier is not None and earlier["format"] == LEGACY_FORMAT
    if earlier is not None and earlier.get("key_fingerprint") != key_fp:
        raise LabError(f"{out} was protected with another key (fingerprint {earlier.get('key_fingerprint')}, this "
                       f"key {key_fp}); use that key or choose another OUTPUT")
    if legacy and derived is None:
        raise LabError(f"{out} was protected with other defense parameters; repeat the first run's options or "
                       f"choose another OUTPUT")
    collection_id = earlier["collection_id"] if earlier is not None and not legacy else new_collection_id()
    record_path = locate_record(out, key_path, collection_id, record, earlier=earlier is not None and not legacy)
    check_record_path(record_path, out, inp, collection_id)
    if not os.access(record_path.parent, os.W_OK | os.X_OK):
        raise LabError(f"the private record's folder {record_path.parent} is not writable (read-only file system or "
                       f"no permission); choose another place with --record PATH")
    optimised = None
    if derived is None:
        optimised = optimise_collection(chosen, working or WorkingConfig(), inp, out, rule, found, key_fp,
                                        record_path, log)
        derived = optimised.protection.to_dict()
    private_header = record_header(collection_id, inp, out, rule, found, key_fp, derived, optimised)
    public_header = {"kind": "header", "format": PUBLIC_FORMAT, "collection_id": collection_id,
                     "key_fingerprint": key_fp, "labels": public_label_rule(rule.kind, rule.spec),
                     "classes": found.classes, "note": public_note(cfg.type, optimised is not None)}
    sources = legacy_files(out) if legacy else [record_path, partial_of(record_path)]
    previous = previous_records(sources, private_header, out)
    write_meta = own_metadata(out, metadata)
    lost = labels_read_as_missing(found.classes) if write_meta else None
    if lost and metadata:
        raise LabError(f"--metadata: {lost} (or leave out --metadata)")
    write_card = write_meta and own_card(out, metadata, found.classes, log)
    return Plan(inp, out, key_fp, chosen, rule, found, record_path, private_header, public_header, previous,
                write_meta, write_card, lost, legacy, optimised)


def record_header(collection_id: str, inp: Path, out: Path, rule: LabelRule, found: Survey, key_fp: str,
                  derived: dict, optimised: Optimised | None) -> dict:
    """The private record's header: the collection, the label rule, the protection (derived at the reference rate,
    or optimised on the collection, with its ``optimised`` facts), a note and provenance."""
    from lab.provenance import provenance
    if optimised is None:
        note = (f"PRIVATE: keep this file with the key, never in OUTPUT. 'protection' is derived at {REFERENCE_RATE} "
                f"Hz; every file gets the protection derived from the key at its own sample rate, written in a "
                f"'protection' line before the first file of that rate")
    else:
        note = (f"PRIVATE: keep this file and its arrays file {optimised.info['arrays']['file']} (beside it) with "
                f"the key, never in OUTPUT. 'protection' was optimised on the collection's working clips "
                f"('optimised'); every file gets it as the 'protection' line of its sample rate says ('mapping')")
    header = {"kind": "header", "format": RECORD_FORMAT, "collection_id": collection_id, "output": str(out),
              "input": str(inp), "labels": rule.spec, "classes": found.classes, "key_fingerprint": key_fp,
              "protection": derived, "note": note, "provenance": provenance()}
    if optimised is not None:
        header["optimised"] = optimised.info
    return header


def file_jobs(plan: Plan, fsync: bool, at_rate: Callable[[int], bytes]) -> Iterator[tuple[list[tuple], dict]]:
    """The jobs, in walk order, a chunk at a time, with the protections of the chunk's sample rates."""
    classes = plan.classes
    chunk, size, rates = [], 0, {}
    for e in walk(plan.inp):
        if e.kind == "audio":
            label = plan.rule.label(e.rel)
            chunk.append((e.path, str(plan.out), e.rel, label, classes.get(label), plan.previous.get(e.rel), fsync))
            rate = header_rate(e.path)
            if rate is not None and rate not in rates:
                rates[rate] = at_rate(rate)
            size += e.size
            if len(chunk) >= CHUNK_FILES or size >= CHUNK_BYTES:
                yield chunk, rates
                chunk, size, rates = [], 0, {}
    if chunk:
        yield chunk, rates


@dataclass
class Tally:
    """What the run has done so far."""

    counts: dict = field(default_factory=lambda: {"protected": 0, "done": 0, "failed": 0})
    failed: list = field(default_factory=list)
    seconds: float = 0.0
    new_seconds: float = 0.0
    past_full_scale: int = 0
    files_past: int = 0
    handled: int = 0
    long_files: dict = field(default_factory=dict)  # how the long files were handled (streamed or whole) -> count

    def add(self, outcome: str, rec: dict) -> None:
        self.handled += 1
        self.counts[outcome] += 1
        if outcome == "failed":
            self.failed.append({"path": rec["path"], "error": rec["error"]})  # named in the summary
            return
        self.seconds += rec["seconds"]
        self.new_seconds += rec["seconds"] if outcome == "protected" else 0
        self.past_full_scale += rec["past_full_scale"]
        self.files_past += rec["past_full_scale"] > 0
        if "long_file" in rec:
            self.long_files[rec["long_file"]] = self.long_files.get(rec["long_file"], 0) + 1


def run_files(plan: Plan, workers: int | None, fsync: bool, started: float,
              progress: Callable[[int, int], None] | None) -> dict:
    """Protect every file of the plan through the workers, writing the record and the manifest line by line, then
    finish both; on any failure, keep what resumes and remove what does not."""
    pickled: dict[int, bytes] = {}  # the protection derived at each sample rate met so far
    writers: list[LinesWriter] = []
    tally, pool = Tally(), None
    n_workers = os.cpu_count() if workers is None else workers

    def at_rate(rate: int) -> bytes:
        if rate not in pickled:
            prot = plan.protection_at(rate)
            writers[0].write({"kind": "protection", "sample_rate": rate, "protection": prot.to_dict()})
            pickled[rate] = pickle.dumps(prot)
        return pickled[rate]

    try:
        writers.append(LinesWriter(plan.record_path, plan.private_header, private=True))
        writers.append(LinesWriter(plan.out / MANIFEST, plan.public_header, partial=plan.out / PARTIAL))
        private, public = writers
        jobs = file_jobs(plan, fsync, at_rate)
        if n_workers > 0:
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            pool = ctx.Pool(n_workers, initializer=start_worker)
            results = (r for done in in_order(pool, protect_files, jobs, ahead=2 * n_workers + 2) for r in done)
        else:
            start_worker()
            results = (r for chunk in jobs for r in protect_files(chunk))
        for outcome, rec in results:
            if outcome == "stopped":
                raise WriteFailed(rec["output"], rec["error"], disk_full=True)
            private.write({"kind": "file", **rec})
            if outcome != "failed":
                public.write(public_file(rec))
            tally.add(outcome, rec)
            if progress:
                progress(tally.handled, plan.found.audio_files)
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
        return finish(plan, writers, tally, n_workers, started)
    except WriteFailed as e:
        stop(writers, pool, plan.out, keep=tally.handled > 0 or bool(plan.previous))
        raise stopped_error(plan, e, tally.handled) from None
    except BaseException:
        stop(writers, pool, plan.out, keep=tally.handled > 0 or bool(plan.previous))
        raise


def finish(plan: Plan, writers: list[LinesWriter], tally: Tally, n_workers: int, started: float) -> dict:
    """The summary line of the record and the manifest, both renamed into place, and the summary returned."""
    private, public = writers
    wall = time.perf_counter() - started
    found = plan.found
    summary = {"kind": "summary", "audio_files": found.audio_files, "protected": tally.counts["protected"],
               "already_done": tally.counts["done"], "failed": tally.failed, "non_audio_ignored": found.other_files,
               "symlinks_not_followed": found.links_skipped, "not_regular_skipped": found.special_skipped,
               "audio_seconds": round(tally.seconds, 3), "samples_past_full_scale": tally.past_full_scale,
               "files_past_full_scale": tally.files_past,
               "past_full_scale_handling": "integer and lossy formats: clipped to full scale; float formats: kept",
               "long_files": tally.long_files, "workers": n_workers, "wall_seconds": round(wall, 3),
               "x_realtime": round(tally.new_seconds / wall, 1) if wall > 0 else None}  # newly protected audio only
    meta_sha = write_metadata(plan.out, public.partial) if plan.write_meta else None
    card_sha = write_card(plan.out, found.classes) if plan.write_card else None
    summary["record"] = str(private.finish(summary))
    public_summary = {"kind": "summary", "files": tally.counts["protected"] + tally.counts["done"],
                      "metadata": METADATA if plan.write_meta else None, "metadata_sha256": meta_sha,
                      "card": CARD if plan.write_card else None, "card_sha256": card_sha}
    summary["manifest"] = str(public.finish(public_summary))
    summary["metadata"] = str(plan.out / METADATA) if plan.write_meta else None
    summary["card"] = str(plan.out / CARD) if plan.write_card else None
    return summary


def stopped_error(plan: Plan, e: WriteFailed, handled: int) -> LabError:
    """The one line a run stopped by a write that failed ends with: what, how far it got, and how to resume."""
    record_path = plan.record_path
    kept = record_path if record_path.is_file() and not partial_of(record_path).exists() else \
        partial_of(record_path)
    what = f"disk full ({e.reason})" if e.disk_full else e.reason
    fix = "free some space" if e.disk_full else "fix that"
    done = f"and recorded in {kept}" if kept.is_file() else "(nothing recorded)"
    earlier_runs = f" (earlier runs recorded {len(plan.previous)})" if plan.previous else ""
    return LabError(f"stopped: cannot write {e.path}: {what}; {handled} of {plan.found.audio_files} files were done "
                    f"{done}{earlier_runs}, no temporary file is left; {fix} and run the same command again to "
                    f"resume")


def stop(writers: list[LinesWriter], pool, out: Path, keep: bool = True) -> None:
    """An interrupted run: keep the partial manifest and record (the next run resumes from them; ``keep=False``:
    the run handled no file and had no earlier record, so they hold nothing and are removed), stop the workers,
    and delete the temporary files they were writing."""
    for w in writers:
        w.abandon(remove=not keep)
    if pool is not None:
        end_pool(pool)
    remove_partials(out)


def end_pool(pool, wait: float = 30.0) -> None:
    """Stop a worker pool that is being abandoned. ``Pool.terminate`` can hang for ever when the pool's task queue
    still holds chunks its workers will never read (the task thread stays blocked writing to a full pipe: a known
    weakness of multiprocessing.Pool), so it runs in a helper thread: after ``wait`` seconds the workers are killed
    and the run goes on to its one-line error instead of hanging."""
    import threading
    ender = threading.Thread(target=lambda: (pool.terminate(), pool.join()), daemon=True)
    ender.start()
    ender.join(wait)
    if ender.is_alive():
        for proc in list(getattr(pool, "_pool", [])):
            if proc.exitcode is None:
                proc.kill()


def earlier_wrote(out: Path, name: str, field: str) -> bool:
    """Whether the file ``name`` in OUTPUT is the one an earlier run wrote: the SHA-256 the finished manifest's
    summary gives in ``field`` is its hash."""
    summary = read_all(out / MANIFEST, "public")[2] if (out / MANIFEST).is_file() else None
    return bool(summary and summary.get(field) and summary[field] == file_sha256(out / name))


def own_metadata(out: Path, requested: bool) -> bool:
    """Whether to write ``OUTPUT/metadata.csv``: when ``requested``, or when an earlier run wrote it and it has not
    changed since (it is then kept up to date). A ``metadata.csv`` that is not the run's own is never replaced."""
    meta = out / METADATA
    if not meta.exists():
        return requested
    if earlier_wrote(out, METADATA, "metadata_sha256"):
        return True
    if requested:
        raise LabError(f"--metadata: {meta} exists and was not written by lab protect (or was edited since); move "
                       f"it away (nothing is overwritten)")
    return False


def own_card(out: Path, requested: bool, classes: list[str], log: Callable[[str], None]) -> bool:
    """Whether to write the dataset card ``OUTPUT/README.md`` beside the ``metadata.csv`` this run writes: when there
    is none, or when an earlier run wrote it and it has not changed since. A ``README.md`` that is not the run's own
    is never replaced: it is kept when it already declares ``label`` a class label of ``classes`` (in order);
    otherwise ``--metadata`` (``requested``) stops in one line, and a run that only keeps its metadata up to date
    warns."""
    card = out / CARD
    if not card.exists() or earlier_wrote(out, CARD, "card_sha256"):
        return True
    problem = card_problem(card, classes)
    if problem is None:
        return False  # the owner's own card, and it declares the labels right
    what = (f"{card} exists and was not written by lab protect (or was edited since), and {problem}: Hugging Face "
            f"datasets would not load label as a class label of the collection's classes")
    if requested:
        raise LabError(f"--metadata: {what}; move it away or declare the labels in it (see docs/protect.md; nothing "
                       f"is overwritten)")
    log(f"warning: {what}")
    return False
