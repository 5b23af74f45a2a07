"""Listening pages: one static HTML file to hear and see what a protection does to the audio.

    lab report RUNS... --html  ─► REPORT/listen.html: per protection (each lab run group, each defense column of
                                  a lab attack run), a few training clips clean and protected (players),
                                  spectrograms of clean, protected and their difference, and the accuracy and
                                  quality rows. PRIVATE: the difference is derived from the key.
    lab audit PUBLISHED --html ─► AUDIT_DIR/listen.html: the outsider's view, a few published clips (players and
                                  spectrograms; no clean counterpart, no key), the audit table and its verdict.

One page builder for both (:func:`page`): everything is inline (audio as base64 WAV data URIs, images as base64
PNG), so the file opens in any browser with no server and no network. The clips are chosen by :func:`pick_clips`
with a generator seeded from the run's (audit's) first seed; the page names the seed and every clip it shows.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from lab.errors import LabError

PAGE = "listen.html"
CLIPS = 6  # clips per protection: one per class, at most this many classes
PRIVATE_NOTE = ("PRIVATE: this page is as private as the runs' protection records (a lab run's protection.json, a "
                "lab attack run's protections/). It holds the difference between protected and clean audio, which "
                "is derived from the key; never publish it or copy it into a published folder.")
PUBLIC_NOTE = ("The outsider's view: clips of the published folder only, as anyone who downloads it hears them (no "
               "clean counterpart, no key, nothing derived from the key).")
DPI = 72  # spectrogram figures: about 110 KB of base64 PNG per clip at 3 panels (noise-like images compress poorly)
DB_RANGE = 80.0  # spectrogram colour scale: the loudest bin of a clip's panels down to this many dB below it
# an element that does not load says so in the console (a browser test reads it); a loaded one records what it got
AUDIO_HOOKS = ('onerror="console.error(\'audio did not load: \' + this.title)" '
               'onloadedmetadata="this.dataset.duration = this.duration.toFixed(3)"')
IMAGE_HOOKS = ('onerror="console.error(\'image did not load: \' + this.alt)" '
               'onload="this.dataset.width = this.naturalWidth"')
STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:75em;color:#111;background:#fff}
.banner{padding:.6em 1em;border:2px solid;margin-bottom:1em}.private{border-color:#b00;background:#fee}
.public{border-color:#06a;background:#eef6ff}
table{border-collapse:collapse;margin:.5em 0;font-size:90%;display:block;overflow-x:auto}
td,th{border:1px solid #bbb;padding:.2em .5em;text-align:left}
.clip{margin:1em 0;padding-top:.5em;border-top:1px solid #ddd}
.players{display:flex;gap:2em;align-items:center;flex-wrap:wrap}
.players label{display:block;font-size:85%;color:#444}.clip img{max-width:100%;height:auto}
.note{color:#444;font-size:90%}"""


@dataclass
class Clip:
    """One clip as the page shows it: ``audio`` maps a role (``clean``, ``protected``, ``published``) to its
    samples (1-D, real length), in the order the players appear; the difference is drawn when there is a clean and
    a protected version."""

    name: str
    label: str
    sample_rate: int
    audio: dict[str, torch.Tensor]


@dataclass
class Section:
    """One protection (or the audited folder): a title, notes, clips and tables ``(caption, head, rows)``; the
    ``details`` tables are folded away (long listings)."""

    title: str
    notes: list[str] = field(default_factory=list)
    clips: list[Clip] = field(default_factory=list)
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)
    details: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)


# --- choosing and encoding clips ---------------------------------------------------------------------------------

def pick_clips(labels: torch.Tensor, seed: int, n: int = CLIPS) -> list[int]:
    """Indices of at most ``n`` clips, one per class: all classes when there are at most ``n``, else ``n`` classes
    drawn at random; within a class one clip drawn at random. Drawn from a generator seeded with ``seed``; returned
    in class order."""
    gen = torch.Generator().manual_seed(int(seed))
    classes = sorted(set(labels.tolist()))
    if len(classes) > n:
        chosen = torch.randperm(len(classes), generator=gen)[:n]
        classes = sorted(classes[i] for i in chosen.tolist())
    out = []
    for c in classes:
        members = (labels == c).nonzero().flatten()
        out.append(int(members[torch.randint(len(members), (1,), generator=gen)]))
    return out


def wav_uri(samples: torch.Tensor, sample_rate: int) -> str:
    """A 16-bit PCM WAV data URI of mono ``samples`` (clipped to [-1, 1], as any 16-bit file would be)."""
    import soundfile as sf
    buf = io.BytesIO()
    sf.write(buf, samples.detach().float().clamp(-1, 1).numpy(), int(sample_rate), format="WAV", subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def snr_db(clean: torch.Tensor, protected: torch.Tensor) -> float | None:
    """This clip's SNR of the protected version against the clean one (dB); None when they are equal."""
    noise = float(((protected - clean) ** 2).sum())
    if noise == 0.0:
        return None
    return 10.0 * torch.log10(torch.tensor(float((clean ** 2).sum()) / noise)).item()


def _spectrogram_db(x: torch.Tensor) -> torch.Tensor:
    """Magnitude spectrogram in dB (n_fft 256, hop 64: 32 ms windows at 8 kHz), frequency x time."""
    n_fft = 256
    if x.numel() < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - x.numel()))
    spec = torch.stft(x.float(), n_fft, hop_length=64, window=torch.hann_window(n_fft), return_complex=True)
    return 20.0 * torch.log10(spec.abs() + 1e-8)


def spectrogram_uri(clip: Clip) -> str:
    """A PNG data URI: one panel per version of ``clip`` and, when it has clean and protected versions, one of
    their difference; every panel on the same dB scale (so a quiet difference looks quiet)."""
    from lab import plots  # noqa: F401  (selects matplotlib's non-interactive backend)
    import matplotlib.pyplot as plt
    panels = list(clip.audio.items())
    if "clean" in clip.audio and "protected" in clip.audio:
        panels.append(("difference (protected - clean)", clip.audio["protected"] - clip.audio["clean"]))
    specs = [(title, _spectrogram_db(x)) for title, x in panels]
    top = max(float(s.max()) for _, s in specs)
    width = 2.9 * len(specs) + 0.7
    fig, axes = plt.subplots(1, len(specs), figsize=(width, 2.1), sharey=True, squeeze=False)
    fig.subplots_adjust(left=0.45 / width, right=1 - 0.65 / width, bottom=0.2, top=0.88, wspace=0.08)
    seconds = max(x.numel() for _, x in panels) / clip.sample_rate
    for ax, (title, s) in zip(axes[0], specs):
        image = ax.imshow(s.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=top - DB_RANGE, vmax=top,
                          extent=(0, seconds, 0, clip.sample_rate / 2000), interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("s", fontsize=7, labelpad=1)
        ax.tick_params(labelsize=6)
    axes[0, 0].set_ylabel("kHz", fontsize=7)
    bar = fig.colorbar(image, cax=fig.add_axes((1 - 0.55 / width, 0.2, 0.1 / width, 0.68)))
    bar.set_label("dB", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --- HTML --------------------------------------------------------------------------------------------------------

def _e(text) -> str:
    return html.escape(str(text), quote=True)


def table_html(caption: str, head: list[str], rows: list[list[str]]) -> str:
    out = [f"<table><caption>{_e(caption)}</caption><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows]
    return "".join(out) + "</table>"


def clip_html(clip: Clip) -> str:
    """A clip's players (one per version) and its spectrogram figure."""
    players = []
    for role, x in clip.audio.items():
        title = f"{clip.name} ({role})"
        players.append(f'<div><label>{_e(role)}, {x.numel() / clip.sample_rate:.2f} s</label><audio controls '
                       f'preload="metadata" title="{_e(title)}" data-role="{_e(role)}" {AUDIO_HOOKS} '
                       f'src="{wav_uri(x, clip.sample_rate)}"></audio></div>')
    extra = ""
    if "clean" in clip.audio and "protected" in clip.audio:
        snr = snr_db(clip.audio["clean"], clip.audio["protected"])
        extra = f"; this clip's SNR {snr:.1f} dB" if snr is not None else "; unchanged by the protection"
    return (f'<div class="clip"><h4>class {_e(clip.label)}: {_e(clip.name)}</h4><p class="note">'
            f'{clip.sample_rate} Hz{_e(extra)}</p><div class="players">{"".join(players)}</div>'
            f'<img alt="{_e("spectrograms of " + clip.name)}" {IMAGE_HOOKS} src="{spectrogram_uri(clip)}"></div>')


def section_html(section: Section) -> str:
    parts = [f"<section><h2>{_e(section.title)}</h2>"]
    parts += [f'<p class="note">{_e(n)}</p>' for n in section.notes]
    parts += [table_html(*t) for t in section.tables]
    parts += [clip_html(c) for c in section.clips]
    parts += [f"<details><summary>{_e(t[0])}</summary>{table_html(*t)}</details>" for t in section.details]
    return "\n".join(parts) + "</section>"


def page(title: str, banner: str, private: bool, sections: list[Section], footer: list[str]) -> str:
    """The whole page: the banner first (what the page is, how private), then each section, then the footer."""
    from lab.provenance import git_commit
    commit = git_commit()
    made = (f"Written {dt.datetime.now().isoformat(timespec='seconds')} by the lab at commit {commit['commit']}"
            f"{' (dirty)' if commit.get('dirty') else ''}.")
    kind = "private" if private else "public"
    return "\n".join([
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{_e(title)}</title>",
        f"<style>{STYLE}</style></head><body>", f'<p class="banner {kind}" id="banner">{_e(banner)}</p>',
        f"<h1>{_e(title)}</h1>", *(section_html(s) for s in sections),
        "<footer>" + "".join(f'<p class="note">{_e(line)}</p>' for line in [*footer, made]) + "</footer>",
        "</body></html>", ""])


# --- where a page may go -------------------------------------------------------------------------------------------

def refuse_published(folder: Path, option: str) -> None:
    """A one-line LabError when ``folder`` is, or lies inside, a ``lab protect`` OUTPUT (a folder holding the public
    manifest): a private page must never be written where a collection is published."""
    from lab.protect.manifest import MANIFEST
    folder = Path(folder).expanduser().resolve()
    for parent in (folder, *folder.parents):
        if (parent / MANIFEST).is_file():
            raise LabError(f"{option} {folder}: lies in {parent}, a published folder (it holds {MANIFEST}); the "
                           f"listening page is as private as the protection record: write the report elsewhere")


def write_page(path: Path, text: str, private: bool) -> Path:
    """Write the page through a temporary file and a rename; a private page is readable by its owner only (0600,
    like the protection record of ``lab protect``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600 if private else 0o644)
    tmp.replace(path)
    return path


# --- the pages of lab report and lab audit -------------------------------------------------------------------------

def flatten(record: dict, prefix: str = "", skip: tuple[str, ...] = ()) -> list[list[str]]:
    """``[key.path, value]`` rows of a nested record's leaves (numbers to 4 significant digits), leaving out the
    subtrees named in ``skip``: quality sections render whatever keys they hold."""
    rows = []
    for key, value in record.items():
        name = f"{prefix}{key}"
        if name in skip:
            continue
        if isinstance(value, dict):
            rows += flatten(value, f"{name}.", skip)
        elif isinstance(value, float):
            rows.append([name, f"{value:.4g}"])
        else:
            rows.append([name, str(value)])
    return rows


def clips_of(data, protection, seed: int) -> list[Clip]:
    """Clean and protected training clips of ``data`` (lab.spine.ExperimentData given the recorded ``protection``),
    chosen by :func:`pick_clips` with ``seed``. A protection that works clip by clip is applied to the chosen clips
    only; any other (e.g. noise optimised on the whole set) to the training set as the run had it, then picked."""
    train = data.train
    idx = pick_clips(train.labels, seed)
    chosen = torch.tensor(idx)
    if type(protection).file_by_file:
        protected = protection.apply(train.waveforms[chosen], train.labels[chosen], train.lengths[chosen])
    else:
        protected = data.protected_train.waveforms[chosen]
    clips = []
    for row, i in enumerate(idx):
        n = int(train.lengths[i])
        name = train.ids[i] if train.ids else f"training clip {i}"
        clips.append(Clip(name, train.class_names[int(train.labels[i])], train.sample_rate,
                          {"clean": train.waveforms[i, :n], "protected": protected[row, :n]}))
    return clips


def run_clips(run_dir: Path, log: Callable[[str], None]) -> tuple[list[Clip], int]:
    """A finished lab run's clips, rebuilt as ``lab requality`` does (its recipe's data with its recorded
    protection; no training), chosen with the run's first seed. Returns (clips, seed)."""
    from lab.rundir import load_run
    from lab.spine import ExperimentData
    run = load_run(run_dir)
    seed = int(run.results["seeds"][0])
    return clips_of(ExperimentData.from_run(run, log=log), run.protection, seed), seed


def _provenance(results: dict) -> str:
    from lab.results import provenance_line
    return provenance_line(results).replace("`", "")


CLIP_NOTE = ("{n} training clips, one per class, drawn with seed {seed} (the run's first seed), protected as the "
             "run's training set was (its recipe and the protection record {record}; no training). Players: clean, "
             "then protected; the spectrogram panels share one dB scale.")


def run_section(group, log: Callable[[str], None]) -> Section:
    """A lab run group's section: its accuracy and quality rows (``lab.report.tables``, as report.md has them), a
    few clips of its first run, and every quality figure of that run folded away (whatever keys it records)."""
    import json

    from lab.report import tables
    run_dir = group.run_dirs[0]
    results = json.loads((run_dir / "results.json").read_text())
    rows = tables([group])
    section = Section(group.label, notes=[_provenance(results)],
                      tables=[("accuracy, mean ± std over seeds (trained on → tested on)"
                               if name == "accuracy" else name, *rows[name]) for name in ("accuracy", "quality")])
    if len(group.run_dirs) > 1:
        section.notes.append(f"Pooled from {len(group.run_dirs)} run folders; the clips are from the first.")
    try:
        section.clips, seed = run_clips(run_dir, log)
        section.notes.append(CLIP_NOTE.format(n=len(section.clips), seed=seed, record=run_dir / "protection.json"))
    except LabError as e:
        section.notes.append(f"No clips for this run: {e}")
    quality = results.get("quality")
    if isinstance(quality, dict) and quality:
        section.details.append(("every quality figure of the first run (results.json's quality section; the FAD "
                                "backends' detail left out)", ["quality", "value"],
                                flatten(quality, skip=("fad.backends",))))
    return section


def column_protection(folder: Path, defense: str):
    """The protection of one column of a lab attack run, from its private record ``protections/<defense>.json``
    (and ``<defense>.pt`` where the protection has large tensors)."""
    import json

    from defenses.base import Protection
    path = Path(folder) / "protections" / f"{defense}.json"
    if not path.is_file():
        raise LabError(f"no protection record {path} (lab attack runs made before each column's record was kept "
                       f"have none: run the attack again)")
    arrays = path.with_suffix(".pt")
    try:
        return Protection.from_dict(json.loads(path.read_text()),
                                    torch.load(arrays, weights_only=True) if arrays.is_file() else None)
    except (ValueError, KeyError, TypeError) as e:
        raise LabError(f"{path}: cannot rebuild the protection ({type(e).__name__}: {e})") from None


def attack_sections(run, log: Callable[[str], None]) -> list[Section]:
    """A lab attack run's sections (``run``: lab.report.AttackRun): one per defense column (``none``, clean data,
    has nothing to hear), each with that column of the matrix, the per-clip quality the run measured for it, and a
    few clips rebuilt from the column's protection record on the run's recipe (its data section)."""
    import yaml

    from lab.recipe import recipe_from_dict
    from lab.report import attack_table
    from lab.spine import ExperimentData
    folder, (head, rows) = run.path.parent, attack_table(run)
    seed, dataset, sections = int(run.results["seeds"][0]), None, []
    for defense in [d for d in run.results.get("defenses", []) if d != "none" and d in head]:
        col = head.index(defense)
        section = Section(f"{run.label}: {defense}", notes=[_provenance(run.results)], tables=[(
            "clean-test accuracy of models trained on the protected data under each attack, mean ± std over seeds",
            ["attack", defense], [[r[0], r[col]] for r in rows])])
        snr = (run.results.get("snr") or {}).get(defense)
        if isinstance(snr, dict) and snr:
            section.tables.append(("quality of the protected training audio", ["quality", "value"], flatten(snr)))
        try:
            protection = column_protection(folder, defense)
            recipe = recipe_from_dict(yaml.safe_load((folder / "recipe.yaml").read_text()),
                                      str(folder / "recipe.yaml"), machine=False)
            data = ExperimentData(recipe, protection=protection, log=log, dataset=dataset)
            section.clips, dataset = clips_of(data, protection, seed), data.dataset
            section.notes.append(CLIP_NOTE.format(n=len(section.clips), seed=seed,
                                                  record=folder / "protections" / f"{defense}.json"))
        except (LabError, OSError) as e:
            section.notes.append(f"No clips for this column: {e}")
        sections.append(section)
    return sections


def report_page(groups: list, attack_runs: list, log: Callable[[str], None] = print) -> str:
    """``lab report --html``: one section per protection, i.e. per lab run group and per defense column of each lab
    attack run. PRIVATE (:data:`PRIVATE_NOTE`)."""
    sections = []
    for i, g in enumerate(groups, 1):
        log(f"listening page: run {i}/{len(groups)} {g.label}")
        sections.append(run_section(g, log))
    for i, run in enumerate(attack_runs, 1):
        log(f"listening page: attack run {i}/{len(attack_runs)} {run.label}")
        sections += attack_sections(run, log)
    if not sections:
        raise LabError("--html: no protection to listen to (the attack runs given have only the 'none' column); "
                       "give lab run folders or lab attack runs with a defense column")
    return page("lab report: listening page", PRIVATE_NOTE, True, sections, [])


def audit_page(results: dict, train) -> str:
    """``lab audit --html``: the audited folder's clips as an outsider gets them (``train``: the published folder's
    AudioSet, as the audit loaded it), the audit table and the verdict. Public: nothing here comes from the key."""
    from lab.audit import RULE, table
    seed = int(results["seeds"][0])
    clips = []
    for i in pick_clips(train.labels, seed):
        n = int(train.lengths[i])
        name = train.ids[i] if train.ids else f"published clip {i}"
        clips.append(Clip(name, train.class_names[int(train.labels[i])], train.sample_rate,
                          {"published": train.waveforms[i, :n]}))
    head, rows = table(results)
    data = results["data"]
    section = Section(f"published folder {Path(results['published']).name}", notes=[  # no local paths: shareable
        f"Verdict: {results['verdict']['line']}", _provenance(results),
        f"{len(clips)} published clips, one per class, drawn with seed {seed} (the audit's first seed), as the "
        f"audit's models got them ({data['sample_rate']} Hz, at most {data['clip_seconds']} s)."],
        clips=clips, tables=[(f"clean-test accuracy of models trained on the published folder (chance "
                              f"{results['chance']:.3f}; {data['test_clips']} clean test clips)", head, rows)])
    return page(f"lab audit: {Path(results['published']).name}", PUBLIC_NOTE, False, [section], [f"Rule: {RULE}."])
