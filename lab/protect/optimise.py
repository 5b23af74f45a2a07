"""``lab protect`` with a protection optimised on the collection itself: every registered defense that
``needs_training_set`` and whose protection is ``on_collection`` (em-noise, robust-em, poscuda-opt, ensemble-em
today; see :func:`lab.protect.protector.optimised_defenses`).

1. **Working clips.** Every audio file of INPUT is decoded (as the workers decode it), its channels averaged (mono),
   resampled to ``working_rate`` (default 8000 Hz, ``torchaudio.functional.resample``) and its first
   ``clip_seconds`` kept (default 1 s; a shorter file is zero-padded at its end): the defense's
   :class:`~defenses.base.TrainingSet`, labelled by the label rule, with the surrogate the spine builds
   (:func:`lab.spine.training_set`: the lab's default recipe, CNN on MFCC, changed by the defense's ``surrogate``
   field). Files that cannot be decoded are left out (the writing reports them, as for every defense).
2. **Optimisation**, by the defense's own ``derive_from`` (min-min), with a **checkpoint after every round** in a
   PRIVATE folder beside the private record (:class:`StateFolder`, mode 0700, files 0600, never under OUTPUT): the
   perturbation, the surrogate and its optimiser, the generators. The same command run again resumes after the last
   finished round; a changed collection, key or option (anything in :func:`collection_sha256`, or the lab's
   optimisation code) starts over and says so.
3. **Writing**, file by file through the usual workers: the protection's :meth:`~defenses.base.Protection.files_at`
   at each file's own sample rate (its ``to_dict`` ``mapping`` says how the optimised noise or filters map onto a
   file of another rate and length). Its large tensors (:meth:`~defenses.base.Protection.arrays`) go to an arrays
   file beside the record (``torch.save``, mode 0600), whose name and SHA-256 are in the record's header
   (``optimised``), never under OUTPUT; a resumed run and ``lab verify`` rebuild the protection from the record and
   that file alone (:func:`rebuild`), checking the hash and the key's fingerprint.
"""
from __future__ import annotations

import difflib
import hashlib
import inspect
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from pydantic import Field, ValidationError

from defenses.base import Defense, Protection, WorkingClips, samples_hash, samples_hasher
from lab.config import Section, format_validation_error
from lab.errors import LabError
from lab.protect.collection import LabelRule, Survey, walk
from lab.protect.manifest import first_line, partial_of
from lab.protect.safefs import file_sha256, open_regular, read_regular
from lab.protect.schema import check_line

MIN_FILES_PER_CLASS = 2  # fewer usable files in a class: nothing to optimise a class's noise on
STATE_SUFFIX = ".protect-optimisation"  # the private folder of an optimisation's checkpoint, beside the record
ARRAYS_SUFFIX = ".arrays.pt"
WORKING = {"channels": "averaged (mono)", "crop": "left: the first clip_samples of the file",
           "pad": "right: zeros after a shorter file", "resampler": "torchaudio.functional.resample (defaults)"}


class WorkingConfig(Section):
    """The working clips' settings (``--option working_rate=16000``, ``--option clip_seconds=2``)."""

    working_rate: int = Field(8000, gt=0, le=384_000)
    clip_seconds: float = Field(1.0, gt=0, le=60)


WORKING_FIELDS = tuple(WorkingConfig.model_fields)


def check_option_names(kind: str, options: dict, fields: list[str]) -> None:
    """Every option must be a field of the defense ``kind`` or a working-clip setting: one line otherwise."""
    allowed = [*fields, *WORKING_FIELDS]
    for name in options:
        if name not in allowed:
            hint = difflib.get_close_matches(str(name), allowed, n=1)
            raise LabError(f"--option {name}: the {kind} defense has no field {name!r}"
                           f"{f' (did you mean {hint[0]!r}?)' if hint else ''}; its fields: {', '.join(allowed)}")


def working_config(options: dict) -> WorkingConfig:
    """The working-clip settings among ``options`` (defaults for those not given), validated in one line."""
    try:
        return WorkingConfig.model_validate({k: v for k, v in options.items() if k in WORKING_FIELDS})
    except ValidationError as e:
        raise LabError(f"--option {format_validation_error(e)}") from None


@dataclass
class WorkingSet:
    """The collection as the optimisation sees it: ``clips`` (N, T) at the working rate, ``labels``, real
    ``lengths``, ``sources`` (:func:`defenses.base.samples_hash` of each clip's file); ``files``: every audio file
    (path, class, SHA-256 of its bytes or None when unreadable), for :func:`collection_sha256`; ``left_out``: the
    files that could not be used (path: why)."""

    clips: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor
    sources: list[str]
    files: list[tuple[str, int, str | None]]
    left_out: dict[str, str]


def working_clip(blob: bytes, rate: int, clip_samples: int) -> tuple[torch.Tensor, int, str] | str:
    """One file's working clip (clip_samples,), its real length and its source hash; or why it cannot be used."""
    import torchaudio.functional as AF

    from lab.data.audio import fix_length
    from lab.protect.audiofile import decode
    try:
        dec = decode(blob)
    except Exception:
        return "cannot be decoded"
    if dec.data.shape[0] == 0:
        return "no samples"
    if not np.isfinite(dec.data).all():
        return "NaN or infinite samples"
    samples = torch.from_numpy(np.ascontiguousarray(dec.data.T))  # (channels, frames), as the workers give it
    mono = samples.mean(dim=0).to(torch.float32)
    if dec.sample_rate != rate:
        mono = AF.resample(mono, dec.sample_rate, rate)
    clip, length = fix_length(mono, clip_samples, "left", "right")
    return clip, length, samples_hash(samples)


def file_and_clip(path, working: WorkingConfig | None, clip_samples: int):
    """The SHA-256 of a file's bytes and, with ``working``, :func:`working_clip` of it (None without). A long file
    in a lossless format (over :data:`lab.protect.blocks.STREAM_FRAMES` frames) is never held whole: its bytes are
    hashed piece by piece and its clip made by :func:`long_working_clip`."""
    from lab.protect import blocks
    with open_regular(path) as f:
        info = blocks.header(f) if blocks.may_be_long(f) else None
        if info is not None and info[1] > blocks.STREAM_FRAMES and info[0].exact:
            digest = file_sha256(f)
            return digest, long_working_clip(f, info, working.working_rate, clip_samples) if working else None
        f.seek(0)
        blob = f.read()
    digest = hashlib.sha256(blob).hexdigest()
    return digest, working_clip(blob, working.working_rate, clip_samples) if working else None


def long_working_clip(f, info: tuple, rate: int, clip_samples: int) -> tuple[torch.Tensor, int, str] | str:
    """:func:`working_clip` of the open long file ``f`` (``info``: :func:`lab.protect.blocks.header`'s), a block at a
    time: the clip from the file's first frames only (those the resampled clip reads, with the resampling filter's
    reach), the hash of the whole file's samples one pass per channel
    (:func:`defenses.base.samples_hasher`). The same clip, length and hash as the whole file gives (tested)."""
    import soundfile as sf
    import torchaudio.functional as AF

    from lab.data.audio import fix_length
    from lab.protect import blocks
    like, frames, channels = info
    sr = like.sample_rate
    # the resampling filter (torchaudio's, 6 zero crossings) reads at most one period of the reduced ratio (<= sr
    # frames) and 6.1 x sr / rate frames past the clip's last input frame: two seconds and more are enough
    need = min(frames, clip_samples if sr == rate else -(-clip_samples * sr // rate) + 2 * sr + 8 * (sr // rate + 1))
    digest = samples_hasher(channels, frames)
    try:
        f.seek(0)
        with sf.SoundFile(f) as s:
            samples = torch.from_numpy(np.ascontiguousarray(blocks.read_frames(s, 0, need).T))
            for c in range(channels):
                for a in range(0, frames, blocks.BLOCK_FRAMES):
                    x = blocks.finite(blocks.read_frames(s, a, min(frames, a + blocks.BLOCK_FRAMES)), a)
                    digest.update(torch.from_numpy(np.ascontiguousarray(x[:, c])).to(torch.float32).numpy()
                                  .tobytes())
    except blocks.NonFinite:
        return "NaN or infinite samples"
    except Exception:
        return "cannot be decoded"
    mono = samples.mean(dim=0).to(torch.float32)
    if sr != rate:
        mono = AF.resample(mono, sr, rate)
    clip, length = fix_length(mono, clip_samples, "left", "right")
    return clip, length, digest.hexdigest()


def collection_files(inp: Path, rule: LabelRule, classes: list[str], working: WorkingConfig | None = None,
                     ) -> WorkingSet:
    """Every audio file of INPUT in walk order (path, class, bytes hash) and, with ``working``, its working clip."""
    index = {c: i for i, c in enumerate(classes)}
    clip_samples = round(working.clip_seconds * working.working_rate) if working is not None else 0
    files, clips, labels, lengths, sources, left_out = [], [], [], [], [], {}
    for e in walk(inp):
        if e.kind != "audio":
            continue
        cls = index[rule.label(e.rel)]
        try:
            digest, made = file_and_clip(e.path, working, clip_samples)
        except OSError as err:
            files.append((e.rel, cls, None))
            left_out[e.rel] = f"unreadable ({err.strerror or err})"
            continue
        files.append((e.rel, cls, digest))
        if working is None:
            continue
        if isinstance(made, str):
            left_out[e.rel] = made
            continue
        clips.append(made[0])
        lengths.append(made[1])
        sources.append(made[2])
        labels.append(cls)
    stacked = torch.stack(clips) if clips else torch.zeros(0, clip_samples)
    return WorkingSet(stacked, torch.tensor(labels, dtype=torch.long), torch.tensor(lengths, dtype=torch.long),
                      sources, files, left_out)


def check_classes(kind: str, classes: list[str]) -> None:
    if len(classes) < 2:
        raise LabError(f"the {kind} defense is optimised on the collection to tell its classes apart, and it has one "
                       f"class only ({classes[0]!r}); give each file its label (--labels folder, regex:PATTERN or a "
                       f"CSV)")


def check_counts(kind: str, work: WorkingSet, classes: list[str]) -> None:
    """At least :data:`MIN_FILES_PER_CLASS` usable files in every class, in one line naming those with fewer."""
    counts = torch.bincount(work.labels, minlength=len(classes)).tolist()
    few = [f"{c!r} ({n})" for c, n in zip(classes, counts) if n < MIN_FILES_PER_CLASS]
    if few:
        raise LabError(f"too few files to optimise {kind} on: every class needs at least {MIN_FILES_PER_CLASS} files "
                       f"that can be decoded, and {', '.join(few[:5])}{' ...' if len(few) > 5 else ''} "
                       f"{'has' if len(few) == 1 else 'have'} fewer")


def collection_sha256(defense: Defense, key_fp: str, working: dict, classes: list[str],
                      files: list[tuple[str, int, str | None]]) -> str:
    """What the optimisation depends on, hashed: the defense and its parameters, the key's fingerprint (never the
    key), the working-clip settings, the classes, and every audio file (path, class, SHA-256 of its bytes)."""
    params = defense.config.model_dump(mode="json", exclude={"key", "key_file"})
    digest = hashlib.sha256(json.dumps({"defense": params, "key_fingerprint": key_fp, "working": working,
                                        "classes": classes}, sort_keys=True).encode())
    for rel, cls, sha in files:
        digest.update(f"{rel}\0{cls}\0{sha}\n".encode())
    return digest.hexdigest()


def code_sha256(defense: Defense) -> str:
    """The optimisation's code (the defense's module, the min-min loop, this module): a checkpoint made by other
    code is not resumed."""
    from defenses import _minmin
    texts = [inspect.getsource(m) for m in (inspect.getmodule(type(defense)), _minmin, inspect.getmodule(rebuild))]
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


def write_private(path: Path, blob: bytes) -> None:
    """``blob`` to ``path`` atomically, owner-only (0600) from its first byte; a link at ``path`` is replaced, never
    followed."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600, O_EXCL
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise LabError(f"cannot write {path}: {e.strerror or e}") from None


def arrays_file(record_path: Path) -> Path:
    """Where the protection's arrays go: beside the private record, named after it."""
    return record_path.with_name(record_path.name.removesuffix(".jsonl") + ARRAYS_SUFFIX)


def write_arrays(path: Path, arrays: dict[str, torch.Tensor]) -> str:
    """``torch.save`` of the arrays to ``path`` (private); returns the file's SHA-256. A file already there is
    replaced only when it is an arrays file (named tensors: an interrupted run's), never any other file."""
    if path.is_symlink() or path.exists():
        try:
            old = torch.load(io.BytesIO(read_regular(path, follow=False)), weights_only=True)
            ours = isinstance(old, dict) and all(isinstance(v, torch.Tensor) for v in old.values())
        except Exception:
            ours = False
        if not ours:
            raise LabError(f"{path} exists and is not a lab protect arrays file; refusing to overwrite it (choose "
                           f"another --record PATH: the arrays file goes beside the record)")
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in arrays.items()}, buf)
    blob = buf.getvalue()
    write_private(path, blob)
    return hashlib.sha256(blob).hexdigest()


def read_arrays(path: Path, sha: str, where: Path) -> dict[str, torch.Tensor]:
    """The arrays file of a record, its SHA-256 checked against the record's (``where``: the record, for
    messages)."""
    try:
        blob = read_regular(path, follow=False)
    except OSError as e:
        raise LabError(f"{where}: its arrays file {path} cannot be read ({e.strerror or e}); it holds the optimised "
                       f"protection: restore it from your backup beside the record") from None
    if hashlib.sha256(blob).hexdigest() != sha:
        raise LabError(f"{where}: its arrays file {path} is not the one the record names (SHA-256 differs): "
                       f"damaged or replaced; restore it from your backup")
    try:
        arrays = torch.load(io.BytesIO(blob), weights_only=True)
    except Exception as e:
        raise LabError(f"{where}: its arrays file {path} cannot be loaded ({type(e).__name__})") from None
    if not isinstance(arrays, dict) or not all(isinstance(v, torch.Tensor) for v in arrays.values()):
        raise LabError(f"{where}: its arrays file {path} does not hold named tensors")
    return arrays


def rebuild(header: dict, record_path: Path, key_fp: str) -> tuple[Protection, WorkingClips]:
    """The optimised protection and its working clips from a private record's header and its arrays file alone
    (the hash and the key's fingerprint checked): what a resumed run and lab verify apply."""
    info = header["optimised"]
    path = record_path.parent / info["arrays"]["file"]
    arrays = read_arrays(path, info["arrays"]["sha256"], record_path)
    try:
        prot = Protection.from_dict(header["protection"], arrays or None)
    except Exception as e:
        raise LabError(f"{record_path}: the recorded protection cannot be rebuilt ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}); the record was damaged or edited") from None
    if not type(prot).on_collection:
        raise LabError(f"{record_path}: the recorded protection ({header['protection'].get('defense')}) cannot be "
                       f"written onto a collection's files; the record was edited")
    if getattr(prot, "key_fingerprint", None) != key_fp:
        raise LabError(f"{record_path}: the recorded protection was made with another key (fingerprint "
                       f"{getattr(prot, 'key_fingerprint', None)}, this key {key_fp})")
    work = info["working"]
    return prot, WorkingClips(work["sample_rate"], work["clip_samples"], tuple(info["sources"]), str(path))


class StateFolder:
    """The PRIVATE folder beside the record (mode 0700, files 0600; never under OUTPUT) where an optimisation keeps
    ``checkpoint.pt`` (its state after the last finished round) and ``result.pt`` (the protection, once optimised),
    each tagged with what it was optimised on (``tag``). Named after OUTPUT (its name and a hash of its path), so
    that a run stopped before it wrote anything still finds it; one run at a time holds OUTPUT's lock."""

    def __init__(self, record_dir: Path, out: Path, tag: str):
        self.path = record_dir / f"{out.name}.{hashlib.sha256(str(out).encode()).hexdigest()[:16]}{STATE_SUFFIX}"
        self.tag = tag
        self.saved_round = 0  # the round of the checkpoint on disk (what an interrupted run keeps)

    def load(self, name: str, log: Callable[[str], None]) -> dict | None:
        """The saved ``name`` when it is this optimisation's, else None (the folder of another one is emptied,
        saying so)."""
        path = self.path / name
        if not path.is_file() or path.is_symlink() or self.path.is_symlink():
            return None
        try:
            saved = torch.load(path, weights_only=True)
            if isinstance(saved, dict) and saved.get("tag") == self.tag:
                self.saved_round = int(saved.get("round", self.saved_round))
                return saved
            why = "the collection, the key, an option or the lab's optimisation code changed since"
        except Exception as e:
            why = f"it cannot be read ({type(e).__name__})"
        log(f"the interrupted optimisation kept in {self.path} does not fit this run ({why}): starting over")
        self.remove()
        return None

    def save(self, name: str, obj: dict) -> None:
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_dir()):
            raise LabError(f"{self.path} is not a folder (a link?); move it away: it is where lab protect keeps an "
                           f"optimisation's private checkpoint")
        self.path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.path, 0o700)
        buf = io.BytesIO()
        torch.save({**obj, "tag": self.tag}, buf)
        write_private(self.path / name, buf.getvalue())
        self.saved_round = int(obj.get("round", self.saved_round))

    def remove(self) -> None:
        if self.path.is_dir() and not self.path.is_symlink():
            shutil.rmtree(self.path, ignore_errors=True)


@dataclass
class Optimised:
    """An optimised protection as a run applies it: ``protection`` (at the working rate), ``working``, the record
    header's ``optimised`` field (``info``), how it was obtained (``how``), and the run's state folder."""

    protection: Protection
    working: WorkingClips
    info: dict
    how: str
    folder: StateFolder | None = None
    seconds: float = 0.0

    def at_rate(self, rate: int) -> Protection:
        """The file-by-file protection of the collection's files at ``rate``."""
        prot = self.protection.files_at(rate, self.working)
        if not type(prot).file_by_file:
            raise LabError(f"{type(prot).__name__} (files_at) is not a file-by-file protection")
        return prot

    def finished(self) -> None:
        """The run is complete: the record and its arrays hold everything; the checkpoint folder goes."""
        if self.folder is not None:
            self.folder.remove()

    def summary(self) -> dict:
        rounds = getattr(self.protection, "optimisation", {}).get("rounds", [])
        return {"how": self.how, "rounds": len(rounds), "seconds": round(self.seconds, 1),
                "surrogate_accuracy": rounds[-1]["train_accuracy"] if rounds else None,
                "clips": len(self.working.sources), "working_rate": self.working.sample_rate,
                "clip_samples": self.working.clip_samples, "arrays": self.working.arrays}


def earlier_header(record_path: Path) -> dict | None:
    """The header of an earlier run's private record for this OUTPUT (an interrupted run's partial one first)."""
    for path in (partial_of(record_path), record_path):
        if path.is_file():
            header = first_line(path)
            if header is None:
                raise LabError(f"{path}: not a lab protect record (no header line); restore it from your backup")
            return check_line(header, "record", f"{path}: line 1")
    return None


def optimise_collection(defense: Defense, working: WorkingConfig, inp: Path, out: Path, rule: LabelRule,
                        found: Survey, key_fp: str, record_path: Path, log: Callable[[str], None]) -> Optimised:
    """The protection of ``defense`` for this collection: rebuilt from an earlier run's record (the same collection
    and options), or optimised (resuming an interrupted optimisation), its arrays written beside the record."""
    kind = defense.config.type
    check_classes(kind, found.classes)
    facts = {"sample_rate": working.working_rate, "clip_seconds": working.clip_seconds,
             "clip_samples": round(working.clip_seconds * working.working_rate), **WORKING}
    earlier = earlier_header(record_path)
    started = time.perf_counter()
    if earlier is None:
        log(f"{kind}: reading the {found.audio_files} audio files into working clips ({working.working_rate} Hz, "
            f"mono, the first {working.clip_seconds:g} s)")
    work = collection_files(inp, rule, found.classes, None if earlier is not None else working)
    tag = collection_sha256(defense, key_fp, facts, found.classes, work.files)
    if earlier is not None:
        return from_record(earlier, tag, record_path, key_fp, out, log)
    check_counts(kind, work, found.classes)
    for rel, why in list(work.left_out.items())[:3]:
        log(f"left out of the optimisation: {rel} ({why})")
    folder = StateFolder(record_path.parent, out, f"{tag}/{code_sha256(defense)}")
    prot, how = optimise(defense, working, work, len(found.classes), folder, log)
    path = arrays_file(record_path)
    sha = write_arrays(path, prot.arrays())
    info = {"working": facts, "collection_sha256": tag, "files": len(work.files), "clips": len(work.sources),
            "left_out": len(work.left_out), "sources": work.sources,
            "arrays": {"file": path.name, "sha256": sha, "names": sorted(prot.arrays())},
            "reapply": "rebuild 'protection' with defenses.base.Protection.from_dict(protection, arrays) (arrays: "
                       "torch.load of the arrays file, its SHA-256 checked), then for a file at rate R apply "
                       "protection.files_at(R, WorkingClips(working.sample_rate, working.clip_samples, sources)); "
                       "the 'protection' line of rate R says what it does ('mapping')"}
    working_clips = WorkingClips(facts["sample_rate"], facts["clip_samples"], tuple(work.sources), str(path))
    return Optimised(prot, working_clips, info, how, folder, time.perf_counter() - started)


def from_record(header: dict, tag: str, record_path: Path, key_fp: str, out: Path,
                log: Callable[[str], None]) -> Optimised:
    """A resumed run: the protection the first run optimised, from its record, if the collection is the same."""
    info = header.get("optimised")
    if not isinstance(info, dict):
        raise LabError(f"{out} was protected with other defense parameters; repeat the first run's options or "
                       f"choose another OUTPUT")
    if info["collection_sha256"] != tag:
        raise LabError(f"{out} was protected with a protection optimised on the collection as it was then, with "
                       f"that run's options: the collection (a file added, removed, changed or relabelled) or the "
                       f"options differ now; the protection is optimised on the whole collection, so repeat the "
                       f"first run's options or protect the collection into a new OUTPUT")
    prot, working = rebuild(header, record_path, key_fp)
    log(f"the protection optimised by the first run on this collection is reused from its record (arrays "
        f"{working.arrays}, SHA-256 checked)")
    return Optimised(prot, working, info, "reused from the record")


def check_surrogates(defense: Defense, recipe, work: WorkingSet, num_classes: int) -> None:
    """Every surrogate the defense will train (:meth:`~defenses.base.Defense.surrogate_variants`: its one, or each
    member of an ensemble), built by the spine on two working clips and run on them once: one that cannot take
    clips of this rate and length (e.g. a CNN whose pooling leaves nothing of a very short clip) is refused in one
    line, before the optimisation. torch's random state is left as it was."""
    from lab.recipe import surrogate_recipe
    from lab.spine import Clips, surrogate_training_set
    few = Clips(work.clips[:2], work.labels[:2], work.lengths[:2])
    variants = defense.surrogate_variants()
    for i, overrides in enumerate(variants):
        sur = surrogate_recipe(recipe, overrides)
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                surrogate_training_set(recipe, overrides, few, num_classes, lambda msg: None).new_surrogate()(
                    few.waveforms)
        except LabError:
            raise
        except Exception as e:
            which = f"surrogates[{i}], " if len(variants) > 1 else ""
            raise LabError(f"the {defense.config.type} defense's surrogate ({which}{sur.model.type} on "
                           f"{sur.features.type}) cannot take the working clips ({sur.data.sample_rate} Hz, "
                           f"{few.waveforms.shape[1]} samples): {type(e).__name__}: "
                           f"{(str(e).splitlines() or [''])[0][:200]}; give longer clips (--option clip_seconds=S), "
                           f"another working_rate, or another surrogate") from None


def optimise(defense: Defense, working: WorkingConfig, work: WorkingSet, num_classes: int, folder: StateFolder,
             log: Callable[[str], None]) -> tuple[Protection, str]:
    """``defense.derive_from`` on the working clips with the spine's surrogate, resumed from ``folder``'s
    checkpoint when there is one, checkpointed after every round; or the result an interrupted run already had."""
    done = folder.load("result.pt", log)
    if done is not None:
        log(f"the protection optimised by an interrupted run of this command is reused from {folder.path}")
        return Protection.from_dict(json.loads(done["record"]), done["arrays"] or None), "reused (optimised earlier)"
    from lab.recipe import recipe_from_dict
    from lab.spine import Clips, training_set
    recipe = recipe_from_dict({"name": "lab-protect", "defense": defense.config,
                               "data": {"dataset": "folder", "sample_rate": working.working_rate,
                                        "clip_seconds": working.clip_seconds}}, "lab protect's working clips")
    check_surrogates(defense, recipe, work, num_classes)
    data = training_set(recipe, defense, Clips(work.clips, work.labels, work.lengths), num_classes, log)
    resume = folder.load("checkpoint.pt", log)
    log(f"{defense.config.type}: {len(work.labels)} working clips ({working.working_rate} Hz, mono, "
        f"{working.clip_seconds:g} s) from {len(work.files)} files in {num_classes} classes; "
        + (f"resuming after round {folder.saved_round} from the checkpoint in {folder.path}" if resume is not None
           else f"a private checkpoint after every round in {folder.path}"))
    try:
        prot = defense.derive_from(replace(data, checkpoint=lambda state: folder.save("checkpoint.pt", state),
                                           resume=resume))
    except KeyboardInterrupt:
        if not folder.saved_round:
            raise KeyboardInterrupt("the optimisation stopped before its first round ended; nothing to resume "
                                    "from: the same command starts it again") from None
        raise KeyboardInterrupt(f"the optimisation stopped after round {folder.saved_round}; its state is kept in "
                                f"{folder.path} (private, as secret as the key); run the same command again to "
                                f"resume") from None
    folder.save("result.pt", {"record": json.dumps(prot.to_dict()), "arrays": prot.arrays()})
    return prot, f"resumed after round {int(resume['round'])}" if resume is not None else "optimised"
