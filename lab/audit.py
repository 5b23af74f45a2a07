"""``lab audit``: the data owner's self-test, with no key. Would a model trained on my published folder work?

    PUBLISHED (ROOT/<label>/*.wav, as lab protect wrote it) ──┐
    CLEAN_TEST_DIR (held-out clean clips, same labels) ───────┤  per model (cnn, lstm, transformer on the default
    [REFERENCE: a clean copy of the training audio] ──────────┘  features) and seed: trained plainly and under each
                                                                  attack an outsider can run (lab.attacking.run_cell)
  ─► clean-test accuracy per (model, attack): mean ± std over seeds ─► one verdict (:func:`verdict`)

The training is the lab's own: each folder becomes a ``folder`` recipe (``data.root`` the training folder,
``data.test_root`` the clean test folder, defense ``none``: the clips are trained on as they are), and every
(model, folder, seed) is one cell of the attack matrix (``lab.attacking.run_cell`` with ``outsider=True``: the attacks
get no clean clips and no protection, and those that need clean clips are refused).

The verdict rule (:data:`RULE`): let c = 1/K be chance for K classes, n the number of clean test clips and
margin = 3 x sqrt(c (1 - c) / n), three binomial standard errors of a chance-level accuracy on n clips. The best
row is the (model, attack) with the highest mean clean-test accuracy, no attack included. The published folder is
**learnable** when that best accuracy is above c + margin and, with a clean copy (``--reference``), also at least
half of the way from chance to the best mean accuracy a model trained on the clean copy reaches (any row);
**unlearnable** otherwise. With a clean copy that itself stays within c + margin, the verdict is **inconclusive**
(the models did not learn the task at all: train longer or on more clips).
"""
from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from lab.data.audio import AUDIO_EXTENSIONS
from lab.errors import LabError

if TYPE_CHECKING:
    from lab.rundir import Progress

MODELS = ("cnn", "lstm", "transformer")
DEFAULT_ATTACKS = ("augment", "codec")
DEFAULT_EPOCHS = 10
LEARNABLE_FRACTION = 0.5  # of the way from chance to the clean copy
MARGIN_SES = 3.0  # binomial standard errors of a chance-level accuracy on the test clips
NO_ATTACK = "no attack"
RULE = (f"learnable when the best mean clean-test accuracy over every row (model x attack, no attack included) is "
        f"above chance + margin (margin = {MARGIN_SES:g} binomial standard errors of a chance-level accuracy on the "
        f"test clips: {MARGIN_SES:g} x sqrt(c(1-c)/n)) and, with a clean copy, also at least "
        f"{LEARNABLE_FRACTION:.0%} of the way from chance to the best mean accuracy of the models trained on the "
        f"clean copy; unlearnable otherwise; inconclusive when the clean copy itself is not above chance + margin")
# --set fields the audit sets itself, and the option that sets them
OWN_FIELDS = {"data.dataset": "PUBLISHED", "data.root": "PUBLISHED", "data.test_root": "--test",
              "data.max_train_per_class": "--max-per-class", "data.max_test_per_class": "(the test set is used whole)",
              "model": "--models", "seeds": "--seeds", "defense": "(the folders are trained on as they are)",
              "train.epochs": "--epochs", "output_dir": "--out", "name": "(named after PUBLISHED)"}


# --- the folders -----------------------------------------------------------------------------------------------------

@dataclass
class Folders:
    """The checked inputs: the folders, their label names (the same in each), and what the loader leaves out."""

    published: Path  # absolute
    test: Path
    reference: Path | None
    classes: list[str]
    clips: dict[str, int]  # folder role (published, test, reference) -> audio files
    ignored: dict[str, int] = field(default_factory=dict)  # folder role -> files the loader does not read
    manifest: dict | None = None
    unchanged: int = 0  # published clips byte-identical to a clip of the clean copy (not protected)


OPTIONS = {"published": "PUBLISHED", "test": "--test", "reference": "--reference"}  # how the command names each


def label_folders(root: Path, what: str) -> tuple[dict[str, list[Path]], int]:
    """``root``'s label folders and their audio files (``root/<label>/*.wav|flac|ogg``, what the lab's folder loader
    reads), and how many other files it leaves out; a one-line LabError for a folder an audit cannot use."""
    if not root.is_dir():
        raise LabError(f"{what}: no such folder: {root} (expected a folder of <label>/*.wav, one folder per label)")
    loose = [p for p in root.iterdir() if p.is_file()]
    labels = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = {d.name: sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
             for d in labels}
    if not any(files.values()):
        from lab.data import LISTS, listed_labels
        flat = sum(p.suffix.lower() in AUDIO_EXTENSIONS for p in loose)
        # a flat folder: its labels in metadata.csv or lab protect's manifest
        listed = listed_labels(root, what) if flat else None
        if listed is None:
            hint = (f"; its {flat} audio files lie directly in it, with no label folders and no {' or '.join(LISTS)} "
                    f"giving their labels") if flat else ""
            raise LabError(f"{what}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in label folders of {root} "
                           f"(expected {root}/<label>/*.wav{hint})")
        files = {}
        for path, label in listed.items():
            files.setdefault(label, []).append(path)
        files = dict(sorted(files.items()))
        labels = []  # no label folders: every file under root that is not listed is left out
    empty = [name for name, found in files.items() if not found]
    if empty:
        raise LabError(f"{what}: label folder(s) without audio files in {root}: {', '.join(empty)}")
    if len(files) < 2:
        raise LabError(f"{what}: {root} holds one label folder ({next(iter(files))}); an audit needs at least two "
                       f"classes")
    if not labels:
        every = sum(1 for p in root.rglob("*") if p.is_file())
        return files, every - sum(map(len, files.values()))
    every = sum(1 for d in labels for p in d.rglob("*") if p.is_file())
    return files, len(loose) + every - sum(map(len, files.values()))


def _digests(files: dict[str, list[Path]]) -> list[tuple[str, Path]]:
    return [(hashlib.sha256(p.read_bytes()).hexdigest(), p) for found in files.values() for p in found]


def check_folders(published: Path, test: Path, reference: Path | None = None) -> Folders:
    """Check the folders before any work: each exists and holds audio in at least two label folders; the test
    folder (and the clean copy) has the same label names as PUBLISHED; no test clip is byte-identical to a training
    clip (the test must be held out). One-line LabErrors."""
    from lab.data import label_difference
    roles = {"published": published, "test": test, **({"reference": reference} if reference is not None else {})}
    roles = {role: Path(path).expanduser() for role, path in roles.items()}
    found = {role: label_folders(path, OPTIONS[role]) for role, path in roles.items()}
    classes = list(found["published"][0])
    for role in roles:
        differ = label_difference(classes, list(found[role][0]), f"PUBLISHED {roles['published']}",
                                  f"{OPTIONS[role]} {roles[role]}")
        if differ:
            raise LabError(differ)
    digests = {role: _digests(f[0]) for role, f in found.items()}
    for role in roles.keys() - {"test"}:
        train = dict(digests[role])
        same = [(p, train[d]) for d, p in digests["test"] if d in train]
        if same:
            raise LabError(f"{len(same)} --test clip(s) are byte-identical to clips in {OPTIONS[role]} (e.g. "
                           f"{same[0][0]} and {same[0][1]}): the test clips must be held out")
    clean = {d for d, _ in digests.get("reference", [])}
    where = {role: path.resolve() for role, path in roles.items()}
    return Folders(where["published"], where["test"], where.get("reference"), classes,
                   {role: sum(map(len, f[0].values())) for role, f in found.items()},
                   {role: f[1] for role, f in found.items()}, manifest_summary(where["published"]),
                   sum(d in clean for d, _ in digests["published"]))


def manifest_summary(published: Path) -> dict | None:
    """What the public manifest of a ``lab protect`` OUTPUT says about the folder (collection id, key fingerprint,
    classes, defense note, file count), None when there is none; an unreadable one gives ``{"error": ...}``."""
    from lab.protect.manifest import MANIFEST, read_manifest
    if not (published / MANIFEST).is_file():
        return None
    try:
        header, records, summary = read_manifest(published)
    except LabError as e:
        return {"error": str(e)}
    keep = ("collection_id", "key_fingerprint", "classes", "note")
    return {**{k: header.get(k) for k in keep}, "files": len(records)}


# --- what is trained ------------------------------------------------------------------------------------------------

def outsider_attacks() -> list[str]:
    """The registered attacks a trainer holding only the published clips can run (not ``needs_clean``)."""
    import attacks
    return [name for name in attacks.ATTACKS.names() if not attacks.ATTACKS.get(name).needs_clean]


def attack_plan(names: list[str], options: list[str] | None = None) -> list:
    """Validated configs of the attacks ``names`` (``["all"]``: every outsider attack; ``["none"]``: none, plain
    training only) with ``--option`` items (``ATTACK.FIELD=VALUE``; ``FIELD=VALUE`` with one attack). An attack
    that needs clean clips is refused."""
    import attacks
    from lab.attacking import attack_configs
    if names == ["all"]:
        names = outsider_attacks()
    elif names == ["none"]:
        return []  # plain training only
    for name in names:
        if attacks.ATTACKS.get(name).needs_clean:
            raise LabError(f"attack {name!r} needs clean copies of the training clips, which an outsider does not "
                           f"have; attacks an audit can run: {', '.join(outsider_attacks())}")
    return attack_configs(names, [], list(options or []))


def audit_recipe(train_root: Path, test_root: Path, model: str, seeds: list[int], epochs: int,
                 max_per_class: int | None = None, overrides: list[str] | None = None, name: str = "audit"):
    """The ``folder`` recipe one model of the audit trains: training clips ``train_root/<label>``, test clips
    ``test_root/<label>``, defense ``none`` (the clips as they are), the model's and the features' defaults (MFCC),
    ``overrides`` (``--set`` items) on top, except the fields the audit sets itself (:data:`OWN_FIELDS`)."""
    from lab.recipe import parse_override, recipe_from_dict, set_path
    data = {"name": name, "data": {"dataset": "folder", "root": str(train_root), "test_root": str(test_root),
                                   "max_train_per_class": max_per_class},
            "model": {"type": model}, "train": {"epochs": epochs}, "seeds": list(seeds), "defense": {"type": "none"}}
    for item in overrides or []:
        path, value = parse_override(item)
        owner = next((o for f, o in OWN_FIELDS.items() if path == f or path.startswith(f + ".")), None)
        if owner is not None:
            raise LabError(f"--set {item}: lab audit sets {path} itself ({owner})")
        set_path(data, path, value)
    return recipe_from_dict(data, "lab audit")


@dataclass
class Plan:
    """Everything an audit trains, checked before any work: the folders, each model's recipe on PUBLISHED (and on
    the clean copy), the attacks' configs."""

    folders: Folders
    models: list[str]
    attacks: list
    published: dict  # model -> Recipe
    reference: dict  # model -> Recipe (empty without a clean copy)

    @property
    def seeds(self) -> list[int]:
        return list(next(iter(self.published.values())).seeds)

    def cells(self) -> list[tuple[str, str, int]]:
        """(model, folder role, seed) in training order: published first, then the clean copy, model by model."""
        roles = ["published"] + (["reference"] if self.reference else [])
        return [(m, role, s) for m in self.models for role in roles for s in self.seeds]


def plan_audit(published: Path, test: Path, reference: Path | None = None, models: list[str] | None = None,
               attacks: list[str] | None = None, seeds: list[int] | None = None, epochs: int = DEFAULT_EPOCHS,
               max_per_class: int | None = None, options: list[str] | None = None,
               overrides: list[str] | None = None) -> Plan:
    """Check every input (folders, models, attacks and their options, ``--set`` items) and build the plan; one-line
    LabErrors before any audio is loaded or anything trains."""
    from lab import models as model_registry
    models = list(dict.fromkeys(models or MODELS))
    for m in models:
        model_registry.MODELS.get(m)  # an unknown name: one line listing the valid ones
    seeds = list(dict.fromkeys(seeds or []))
    if not seeds:
        raise LabError("--seeds: give at least one seed, e.g. 0,1,2")
    attack_cfgs = attack_plan(list(dict.fromkeys(attacks if attacks is not None else DEFAULT_ATTACKS)), options)
    folders = check_folders(published, test, reference)
    name = f"audit-{folders.published.name}"

    def recipes(root: Path) -> dict:
        return {m: audit_recipe(root, folders.test, m, seeds, epochs, max_per_class, overrides, name) for m in models}

    return Plan(folders, models, attack_cfgs, recipes(folders.published),
                recipes(folders.reference) if folders.reference is not None else {})


# --- training --------------------------------------------------------------------------------------------------------

ROLE_NAMES = {"published": "published folder", "reference": "clean copy"}


def audit_data(plan: Plan, log: Callable[[str], None] = print) -> dict:
    """(model, folder role) -> ExperimentData; each folder's clips are loaded once (here: a corrupt file stops the
    audit before anything is written) and the features are shared through one cache."""
    from lab.features import FeatureCache
    from lab.spine import ExperimentData
    cache, out = FeatureCache(), {}
    for role, recipes in (("published", plan.published), ("reference", plan.reference)):
        loaded = None
        for model, rec in recipes.items():
            out[(model, role)] = ExperimentData(rec, cache=cache, log=log, dataset=loaded)
            loaded = out[(model, role)].dataset
        if loaded is not None:
            log(f"{ROLE_NAMES[role]}: {len(loaded[0])} training clips, {len(loaded[0].class_names)} classes; "
                f"clean test: {len(loaded[1])} clips")
    return out


def train_cells(plan: Plan, datas: dict, run_dir: Path, log: Callable[[str], None], progress: bool,
                state: Progress) -> list[dict]:
    """Every (model, folder, seed) of the plan, trained plainly and under each attack and scored on the clean test
    clips (``lab.attacking.run_cell``, as an outsider); each finished cell is also written to ``run_dir/cells``."""
    from lab.attacking import run_cell
    from lab.rundir import write_atomic
    cells = []
    for model, role, seed in plan.cells():
        state.stage = f"training {model} on the {ROLE_NAMES[role]}, seed {seed}"
        prefix = f"{model} on the {ROLE_NAMES[role]}"
        cell = run_cell(datas[(model, role)], plan.attacks, seed, progress=progress, outsider=True,
                        log=lambda msg, p=prefix: log(f"{p}, {msg.removeprefix('none, ')}"))  # the defense is 'none'
        cell = {"model": model, "data": role, **{k: v for k, v in cell.items() if k != "defense"}}
        (run_dir / "cells").mkdir(exist_ok=True)
        write_atomic(run_dir / "cells" / f"{model}-{role}-seed{seed}.json", json.dumps(cell, indent=2))
        cells.append(cell)
        state.trained += 1
    return cells


def run_audit(plan: Plan, out: Path | str = "runs", log: Callable[[str], None] = print,
              progress: bool = False, html: bool = False) -> tuple[dict, Path]:
    """Train the plan and write ``out/audit/<PUBLISHED name>-<time>/``: ``results.json`` (written last, in one
    piece), ``results.md``, ``cells/`` (one JSON per finished model x folder x seed) and, with ``html``, the
    listening page ``listen.html`` (lab.listen.audit_page: published clips only). While it runs the folder
    holds ``INCOMPLETE``; an audit that fails or is interrupted keeps it (saying why and how far it got) when some
    cell finished, else removes the folder; Ctrl-C raises lab.rundir.RunInterrupted saying what was kept."""
    import torch

    from lab.rundir import Progress, finish, open_run, running
    first = next(iter(plan.published.values()))
    if first.train.num_threads:
        torch.set_num_threads(first.train.num_threads)
    datas = audit_data(plan, log)
    run_dir, created = open_run(Path(out) / "audit", plan.folders.published.name)
    state, started = Progress(len(plan.cells()), "cells (model x folder x seed)"), time.perf_counter()
    with running(run_dir, created, state, "audit", log):
        cells = train_cells(plan, datas, run_dir, log, progress, state)
        state.stage = "writing the results"
        results = assemble(plan, datas, cells, run_dir, time.perf_counter() - started)
        if html:  # before results.json: a finished audit asked for a page has it
            from lab.listen import PAGE, audit_page, write_page
            state.stage = "writing the listening page"
            write_page(run_dir / PAGE, audit_page(results, datas[(plan.models[0], "published")].train), False)
        finish(run_dir, results, {"results.md": to_markdown(results)})
    return results, run_dir


# --- results ---------------------------------------------------------------------------------------------------------

def summary(pairs: list[tuple[int, float]]) -> dict:
    """Mean ± std over seeds of (seed, accuracy) pairs, with the values and their seeds."""
    values = [v for _, v in pairs]
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values, "seeds": [s for s, _ in pairs]}


def rows_of(models: list[str], cells: list[dict]) -> list[dict]:
    """One row per (model, attack) in training order (no attack first): the clean-test accuracy of the models
    trained on the published folder and, where trained, on the clean copy (``reference``), over seeds."""
    rows = []
    for model in models:
        mine = [c for c in cells if c["model"] == model]
        for column in dict.fromkeys(col for c in mine for col in c["columns"]):
            row = {"model": model, "attack": column}
            for role in ("published", "reference"):
                pairs = [(c["seed"], c["values"][column]) for c in mine if c["data"] == role and column in c["values"]]
                row[role] = summary(pairs) if pairs else None
            rows.append(row)
    return rows


def verdict(rows: list[dict], chance: float, test_clips: int) -> dict:
    """The audit's verdict by :data:`RULE` on ``rows`` (:func:`rows_of`): ``verdict`` (learnable, unlearnable or
    inconclusive), the ``line`` people read, and the numbers it rests on."""
    margin = MARGIN_SES * math.sqrt(chance * (1 - chance) / test_clips)
    best = max(rows, key=lambda r: r["published"]["mean"])
    acc, where = best["published"]["mean"], f"({best['model']}, {best['attack']})"
    above = acc > chance + margin
    out = {"chance": chance, "margin": margin, "test_clips": test_clips, "rule": RULE, "reference": None,
           "best": {"model": best["model"], "attack": best["attack"], "accuracy": acc}, "fraction": None}
    refs = [r for r in rows if r.get("reference")]
    if not refs:
        out["verdict"] = "learnable" if above else "unlearnable"
        tail = ("no clean copy to compare with (--reference)" if above else
                "without a clean copy (--reference) this can also mean too little training")
        out["line"] = (f"{out['verdict']}: {'' if above else 'best '}{acc:.3f} on clean test {where}, chance "
                       f"{chance:.3f} + margin {margin:.3f}; {tail}")
        return out
    ref = max(refs, key=lambda r: r["reference"]["mean"])
    ref_acc = ref["reference"]["mean"]
    out["reference"] = {"model": ref["model"], "attack": ref["attack"], "accuracy": ref_acc}
    if ref_acc <= chance + margin:
        out["verdict"] = "inconclusive"
        out["line"] = (f"inconclusive: the clean copy reaches only {ref_acc:.3f} ({ref['model']}, {ref['attack']}), "
                       f"not above chance {chance:.3f} + margin {margin:.3f}: the models did not learn the task "
                       f"itself; train longer (--epochs) or on more clips")
        return out
    out["fraction"] = fraction = (acc - chance) / (ref_acc - chance)
    out["verdict"] = "learnable" if above and fraction >= LEARNABLE_FRACTION else "unlearnable"
    note = "" if above or fraction < LEARNABLE_FRACTION else f"; not above chance + margin {margin:.3f}"
    out["line"] = (f"{out['verdict']}: {'' if out['verdict'] == 'learnable' else 'best '}{acc:.3f} on clean test "
                   f"{where}, against {ref_acc:.3f} for a clean copy: {fraction:.0%} of the way from chance "
                   f"{chance:.3f} (learnable from {LEARNABLE_FRACTION:.0%}{note})")
    return out


def assemble(plan: Plan, datas: dict, cells: list[dict], run_dir: Path, wall_seconds: float) -> dict:
    """results.json's content: the inputs, the rows with their seeds, the verdict, every cell, provenance."""
    from lab.provenance import provenance
    model = plan.models[0]
    train, test = datas[(model, "published")].dataset
    rec, chance = plan.published[model], 1.0 / len(train.class_names)
    rows = rows_of(plan.models, cells)
    folders = plan.folders
    return {
        "kind": "lab-audit", "published": str(folders.published), "test": str(folders.test),
        "reference": str(folders.reference) if folders.reference is not None else None,
        "manifest": folders.manifest, "run_dir": str(run_dir), "classes": train.class_names, "chance": chance,
        "data": {"published_clips": len(train), "test_clips": len(test),
                 "reference_clips": len(datas[(model, "reference")].train) if plan.reference else None,
                 "audio_files": folders.clips, "ignored_files": folders.ignored,
                 "published_identical_to_clean_copy": folders.unchanged if plan.reference else None,
                 "max_per_class": rec.data.max_train_per_class, "sample_rate": rec.data.sample_rate,
                 "clip_seconds": rec.data.clip_seconds, "features": rec.features.type},
        "models": plan.models, "attacks": [c.type for c in plan.attacks],
        "attack_params": [c.model_dump(mode="json") for c in plan.attacks],
        "seeds": plan.seeds, "epochs": rec.train.epochs, "rows": rows, "verdict": verdict(rows, chance, len(test)),
        "cells": cells, "recipes": {m: r.public_dict() for m, r in plan.published.items()},
        "provenance": provenance(), "wall_seconds": round(wall_seconds, 1),
    }


def table(results: dict) -> tuple[list[str], list[list[str]]]:
    """The table people read: one row per (model, attack), clean-test accuracy mean ± std over seeds and n, for the
    published folder and, where trained, the clean copy."""
    from lab.results import mean_std
    reference = results.get("reference") is not None
    header = ["model", "attack", "published: clean-test accuracy", "n"]
    header += ["clean copy: clean-test accuracy", "n"] if reference else []
    out = []
    for row in results["rows"]:
        cells = [row["model"], row["attack"], mean_std(row["published"], show_n=False), str(row["published"]["n"])]
        if reference:
            ref = row.get("reference")
            cells += [mean_std(ref, show_n=False), str(ref["n"])] if ref else ["-", "0"]
        out.append(cells)
    return header, out


def to_markdown(results: dict) -> str:
    from lab.results import provenance_line
    header, rows = table(results)
    data, manifest = results["data"], results.get("manifest") or {}
    attacks = f" and under {', '.join(results['attacks'])}" if results["attacks"] else ""
    made = (f"; manifest: key fingerprint `{manifest.get('key_fingerprint')}`, collection "
            f"`{manifest.get('collection_id')}`" if manifest.get("key_fingerprint") else "")
    lines = [f"# lab audit: {Path(results['published']).name}", "", provenance_line(results), "",
             f"Published folder `{results['published']}` ({data['published_clips']} training clips, "
             f"{len(results['classes'])} classes{made}); clean test `{results['test']}` ({data['test_clips']} clips); "
             f"clean copy: {('`' + results['reference'] + '`') if results['reference'] else 'none'}. Models "
             f"{', '.join(results['models'])} on {data['features']}, {results['epochs']} epochs, trained plainly "
             f"(no attack){attacks}; chance {results['chance']:.3f}.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", f"**Verdict: {results['verdict']['line']}**", "", f"Rule: {RULE}.", ""]
    return "\n".join(lines)


