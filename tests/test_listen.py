"""Listening pages (lab.listen): ``lab report --html`` on a tiny real run and ``lab audit --html`` on a tiny
generated folder, read back (the clips are the run's clean and protected audio, the private line comes first), and
loaded in a real headless browser (Debian's chromium): every player and image loads, nothing is logged to the
console, and a screenshot is not blank."""
from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import stat
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from lab.cli import app
from lab.errors import LabError
from lab.listen import PAGE, PRIVATE_NOTE, PUBLIC_NOTE, pick_clips
from tests.conftest import tone, write

REPO = Path(__file__).resolve().parent.parent
SEED = 3
TINY_RUN = ["--seeds", str(SEED), "--set", "train.epochs=1", "--set", "data.max_train_per_class=3",
            "--set", "data.max_test_per_class=2", "--set", "train.num_threads=1", "--set", "train.progress=false"]


class Elements(HTMLParser):
    """The page's audio and img elements (their attributes) and its text, in document order."""

    def __init__(self, text: str):
        super().__init__()
        self.audio: list[dict] = []
        self.images: list[dict] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag in ("audio", "img"):
            (self.audio if tag == "audio" else self.images).append(dict(attrs))

    def handle_data(self, data):
        if data.strip():
            self.text.append(data.strip())


def first_line(page: str) -> str:
    """The text of the body's first element."""
    match = re.search(r"<body>\s*<p[^>]*>([^<]*)</p>", page)
    assert match, page[:500]
    return html.unescape(match.group(1))


def decode(uri: str, kind: str) -> bytes:
    prefix = {"wav": "data:audio/wav;base64,", "png": "data:image/png;base64,"}[kind]
    assert uri.startswith(prefix), uri[:40]
    return base64.b64decode(uri[len(prefix):])


def png_colours(data: bytes) -> int:
    from PIL import Image
    image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.uint32)
    return len(np.unique((image[..., 0] << 16) | (image[..., 1] << 8) | image[..., 2]))


@pytest.fixture(scope="module")
def report(fsdd_dir, tmp_path_factory) -> dict:
    """A tiny real lab run and lab attack run (PosCUDA, 3 clips per digit, 1 epoch, seed 3), the run's results.json
    given an extra quality figure (as a newer metric would add), and ``lab report RUN ATTACK_RUN --html``."""
    root = tmp_path_factory.mktemp("listen")
    recipe = str(REPO / "recipes" / "fsdd_cnn.yaml")
    for command in (["run", recipe, "--out", str(root / "runs")],
                    ["attack", recipe, "--type", "sharpen-lowpass", "--set", f"output_dir={root / 'attacks'}"]):
        result = CliRunner().invoke(app, [*command, "--set", f"data.root={fsdd_dir}", *TINY_RUN])
        assert result.exit_code == 0, result.output
    (run_dir,) = (root / "runs" / "fsdd_cnn").iterdir()
    (attack_dir,) = (root / "attacks" / "fsdd_cnn").glob("attack-sharpen-lowpass-*")
    results = json.loads((run_dir / "results.json").read_text())
    results["quality"]["newer_metric"] = {"made_up_score_mean": 2.5, "clips_without_it": 7}
    (run_dir / "results.json").write_text(json.dumps(results))
    out = root / "report"
    result = CliRunner().invoke(app, ["report", str(run_dir), str(attack_dir), "--html", "--out", str(out),
                                      "--no-spectrograms"])
    assert result.exit_code == 0, result.output
    return {"run": run_dir, "attack": attack_dir, "out": out, "page": out / PAGE, "output": result.output}


def test_report_page_holds_each_protections_clean_and_protected_clips(report, fsdd_dir):
    from defenses.base import Protection
    from lab.rundir import load_run
    page = report["page"].read_text()
    assert stat.S_IMODE(report["page"].stat().st_mode) == 0o600  # as private as the protection record
    assert first_line(page) == PRIVATE_NOTE
    assert PRIVATE_NOTE in " ".join(report["output"].split()) and PAGE in (report["out"] / "report.md").read_text()
    # a section per protection: the lab run's, then the attack run's poscuda column (its none column is clean data)
    sections = page.split("<section>")[1:]
    assert len(sections) == 2 and "attack-sharpen-lowpass" in sections[1] and ": poscuda</h2>" in sections[1]
    record = json.loads((report["attack"] / "protections" / "poscuda.json").read_text())
    for section, protection in zip(sections, [load_run(report["run"]).protection, Protection.from_dict(record)]):
        assert f"drawn with seed {SEED}" in section
        check_clips(Elements(section), protection, fsdd_dir)


def check_clips(found: Elements, protection, fsdd_dir: Path) -> None:
    """One clip per class for 6 of the 10 digits: a clean and a protected player each (the clip file itself, and
    it protected as the run protected it), one spectrogram figure each."""
    assert [a["data-role"] for a in found.audio] == ["clean", "protected"] * 6 and len(found.images) == 6
    changed = 0
    for clean_el, protected_el in zip(found.audio[::2], found.audio[1::2]):
        name = clean_el["title"].removesuffix(" (clean)")
        assert protected_el["title"] == f"{name} (protected)"
        clean, sr = sf.read(io.BytesIO(decode(clean_el["src"], "wav")), dtype="float32")
        protected, _ = sf.read(io.BytesIO(decode(protected_el["src"], "wav")), dtype="float32")
        original, sr_file = sf.read(str(fsdd_dir / "recordings" / name), dtype="float32")
        original = original[:8000]  # the recipe's 1 s clips (crop: left)
        assert sr == sr_file == 8000 and clean.shape == protected.shape == original.shape  # each clip's real length
        np.testing.assert_allclose(clean, original, atol=1.5 / 32768)  # the clean clip is the file itself
        label = torch.tensor([int(name.split("_")[0])])
        padded = torch.nn.functional.pad(torch.from_numpy(original), (0, 8000 - len(original)))[None]  # pad: right
        again = protection.apply(padded, label, torch.tensor([len(original)]))[0, :len(original)]
        np.testing.assert_allclose(protected, again.clamp(-1, 1).numpy(), atol=1.5 / 32768)  # as the run had it
        changed += not np.array_equal(clean, protected)
    assert changed >= 1
    assert len({a["title"].split("_")[0] for a in found.audio}) == 6  # six different digits
    for image in found.images:
        assert png_colours(decode(image["src"], "png")) > 50  # a spectrogram, not a blank image


def test_report_page_renders_every_quality_key_and_the_accuracy_row(report):
    page = report["page"].read_text()
    assert "newer_metric.made_up_score_mean" in page and "newer_metric.clips_without_it" in page
    assert "protected_train_vs_clean.snr_db_mean" in page
    assert "clean→clean" in page and "protected→clean" in page and "SNR dB (mean)" in page
    results = json.loads((report["run"] / "results.json").read_text())
    assert results["provenance"]["git"]["commit"] in page and f"Seeds [{SEED}]" in page


def test_pick_clips_one_per_class_from_a_recorded_seed():
    labels = torch.arange(10).repeat_interleave(7)
    picks = {seed: pick_clips(labels, seed) for seed in range(5)}
    for seed, idx in picks.items():
        assert len(idx) == 6 and len({int(labels[i]) for i in idx}) == 6
        assert pick_clips(labels, seed) == idx
    assert len({tuple(idx) for idx in picks.values()}) > 1
    three = torch.tensor([0, 0, 1, 1, 1, 2])
    assert sorted(int(three[i]) for i in pick_clips(three, 0)) == [0, 1, 2]


def test_report_html_refuses_a_published_folder_and_a_page_with_nothing_to_hear(cli, tmp_path):
    from lab.listen import report_page
    published = tmp_path / "published"
    published.mkdir()
    (published / "manifest.jsonl").write_text("{}\n")
    # refused before any run is read (the run folder named here does not even exist)
    code, out, err = cli("report", str(tmp_path / "some-run"), "--html", "--out", str(published / "report"))
    assert code != 0 and "published folder" in err and len(err.strip().splitlines()) == 1, err
    assert not (published / "report").exists()
    with pytest.raises(LabError, match="no protection to listen to"):
        report_page([], [])


@pytest.fixture(scope="module")
def audit(tmp_path_factory) -> dict:
    """``lab audit --html`` on a generated folder (3 labels x 4 tones, 1 epoch, no attack)."""
    root = tmp_path_factory.mktemp("listen-audit")
    for i, label in enumerate(["cat", "dog", "owl"]):
        for j in range(6):
            folder = "published" if j < 4 else "test"
            write(root / folder / label / f"{label}{j}.wav", tone(0.4 + 0.05 * j, 8000, 300 * (i + 1), seed=j), 8000)
    result = CliRunner().invoke(app, ["audit", str(root / "published"), "--test", str(root / "test"), "--models",
                                      "cnn", "--seeds", "0", "--epochs", "1", "--attacks", "none", "--out",
                                      str(root / "runs"), "--html", "--set", "train.num_threads=1",
                                      "--set", "train.progress=false"])
    assert result.exit_code == 0, result.output
    (run_dir,) = (root / "runs" / "audit").iterdir()
    return {"run": run_dir, "page": run_dir / PAGE, "root": root, "output": result.output}


def test_audit_page_shows_published_clips_the_table_and_the_verdict(audit):
    page = audit["page"].read_text()
    found = Elements(page)
    assert first_line(page) == PUBLIC_NOTE and PRIVATE_NOTE not in page and "difference" not in page
    assert [a["data-role"] for a in found.audio] == ["published"] * 3 and len(found.images) == 3
    for element in found.audio:
        name = element["title"].removesuffix(" (published)")
        label = re.match(r"[a-z]+", name).group()
        heard, _ = sf.read(io.BytesIO(decode(element["src"], "wav")), dtype="float32")
        original, _ = sf.read(str(audit["root"] / "published" / label / name), dtype="float32")
        np.testing.assert_allclose(heard, original, atol=1.5 / 32768)
    results = json.loads((audit["run"] / "results.json").read_text())
    assert f"Verdict: {results['verdict']['line']}" in page and "no attack" in page
    assert str(audit["page"]) in " ".join(audit["output"].split())
    assert str(audit["root"]) not in page  # no local paths: the page may be shared like the published folder


# --- in a real browser ------------------------------------------------------------------------------------------

def chromium_or_skip() -> str:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; CI must install it (.ci/run: apt-get install chromium)")
        pytest.skip("chromium is not installed (Debian: apt-get install --no-install-recommends chromium); CI "
                    "installs it and runs this test")
    return found


def chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("which", ["report", "audit"])
def test_pages_load_in_headless_chromium(which, report, audit, tmp_path):
    binary = chromium_or_skip()
    page = {"report": report, "audit": audit}[which]["page"]
    url = page.resolve().as_uri()
    # the DOM after load, with time for the players to read their audio (each records its duration, each image its
    # width, and anything that fails to load says so in the console), and a screenshot, in one start of the browser
    shot = tmp_path / "page.png"
    loaded = chromium(binary, tmp_path / "profile", "--dump-dom", f"--screenshot={shot}", "--window-size=1000,1400",
                      "--hide-scrollbars", "--virtual-time-budget=10000", url)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    console = [line for line in loaded.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console
    given, shown = Elements(page.read_text()), Elements(loaded.stdout)
    assert len(shown.audio) == len(given.audio) > 0 and len(shown.images) == len(given.images) > 0
    for before, after in zip(given.audio, shown.audio):
        samples, sr = sf.read(io.BytesIO(decode(before["src"], "wav")))
        assert abs(float(after["data-duration"]) - len(samples) / sr) < 0.01, after["title"]
    assert all(int(img["data-width"]) > 100 for img in shown.images)
    assert shot.is_file(), loaded.stderr[-2000:]
    assert png_colours(shot.read_bytes()) > 50  # the page drawn: text, players and spectrograms, not one colour
    if os.environ.get("LAB_KEEP_SCREENSHOT"):  # to look at it: LAB_KEEP_SCREENSHOT=folder
        shutil.copy(shot, Path(os.environ["LAB_KEEP_SCREENSHOT"]) / f"{which}.png")


def test_chromium_check_catches_an_element_that_does_not_load(tmp_path):
    """The browser check can fail: a player and an image whose data do not decode are reported in the console by
    the page's own hooks (the same hooks as every listening page)."""
    from lab.listen import AUDIO_HOOKS, IMAGE_HOOKS
    binary = chromium_or_skip()
    broken = tmp_path / "broken.html"
    broken.write_text(f'<!doctype html><html><body><audio controls preload="metadata" title="bad clip" '
                      f'{AUDIO_HOOKS} src="data:audio/wav;base64,AAAA"></audio><img alt="bad figure" {IMAGE_HOOKS} '
                      f'src="data:image/png;base64,AAAA"></body></html>')
    loaded = chromium(binary, tmp_path / "profile", "--dump-dom", "--virtual-time-budget=5000", broken.as_uri())
    console = [line for line in loaded.stderr.splitlines() if "CONSOLE" in line]
    assert any("audio did not load: bad clip" in line for line in console), loaded.stderr[-2000:]
    assert any("image did not load: bad figure" in line for line in console), loaded.stderr[-2000:]
    assert "data-duration" not in loaded.stdout and "data-width" not in loaded.stdout
