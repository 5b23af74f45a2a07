"""lab protect and lab verify with every defense that can be applied file by file (those whose protection is marked
``file_by_file``, read from the registry: no list of names here): each file changed only as its defense says, the
protection derived at each file's own sample rate (a mixed-rate folder), resume, publish safety; defenses that cannot
be applied file by file are refused in one line naming those that can; ar-noise on real FSDD recordings.

Each defense runs with the fields of its own ``example_config`` (the declaration the contract tests use too: a
non-default value worth seeing at work) given as ``--option``; a defense that ``takes_snr`` is checked at the SNR
its configuration sets. What the test knows of a particular built-in (how cuda filters, where PosCUDA's patches go)
is checked for that defense; a new file-by-file defense gets every other check."""
import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from defenses.base import DEFENSES, Defense, Protection
from lab.config import PluginConfig
from lab.errors import LabError
from lab.keys import fingerprint, resolve_key
from lab.protect import protect_collection, verify_collection
from lab.protect.manifest import MANIFEST, locate_record, read_manifest, read_protections
from lab.protect.protector import applicable_defenses, file_by_file_defenses
from tests.protect.conftest import BAD, GOOD, private_record, sha, tree_hashes
from tests.protect.test_publish import FIXED_KEY, fixed_key, float_forms, published_hits  # noqa: F401 (fixture)

FILE_BY_FILE = file_by_file_defenses()
# how many values the key made that the search under OUTPUT must have to look for, per built-in defense (a defense
# not named here: at least one)
AT_LEAST_DERIVED = {"poscuda": 3 * 2 * 31, "cuda": 3 * 14, "noise-patch": 120, "classwise-noise": 120,
                    "ar-noise": 3 * 8}
# the labelled_folder fixture: <label>/<label>J.wav (J = 0, 2, 4: mono) or .flac (J = 1, 3: stereo), 16 kHz for
# J < 3 and 8 kHz otherwise, 0.5 + 0.1 J seconds
FILES = [f"{label}/{label}{j}{'.flac' if j % 2 else '.wav'}" for label in ("cat", "dog", "owl") for j in range(5)]




def read(path):
    return sf.read(str(path), dtype="float64", always_2d=True)[0]


def snr_db(clean, protected):
    return 10 * np.log10((clean ** 2).sum() / ((protected - clean) ** 2).sum())


def derived_values(obj, skip=("params", "defense", "key_fingerprint", "sample_rate", "num_classes", "patch_samples",
                              "warmup_samples")) -> tuple[set[float], set[str]]:
    """Every float (other than the trivial 0 and 1) and every text of a protection's record, parameters and plain
    facts left out: what the key made."""
    floats, texts = set(), set()

    def walk(v):
        if isinstance(v, dict):
            for k, w in v.items():
                if k not in skip:
                    walk(w)
        elif isinstance(v, list):
            for w in v:
                walk(w)
        elif isinstance(v, float) and v not in (0.0, 1.0):
            floats.add(v)
        elif isinstance(v, str):
            texts.add(v)
    walk(obj)
    return floats, texts


def options_of(kind: str) -> dict:
    """The fields lab protect's test sets with --option: the defense's ``example_config`` without its key."""
    example = DEFENSES.get(kind).example_config("unused-key-0000")
    return {k: v for k, v in example.items() if k not in ("key", "key_file")}


def config_of(kind: str, key_file: Path):
    return DEFENSES.get(kind).Config.model_validate({"type": kind, "key_file": str(key_file), **options_of(kind)})


def derive(kind: str, key_file: Path, rate: int, classes: int = 3):
    """The protection the test expects at ``rate``, derived here from the key, independently of lab protect."""
    return DEFENSES.get(kind)(config_of(kind, key_file)).derive(classes, rate)


def check_changed_as_the_defense_says(kind, cfg, prot, src, dst, cls, rec):
    """``dst`` (frames, channels) differs from ``src`` only as defense ``kind`` (configured as ``cfg``) says, for a
    file of class ``cls``."""
    assert dst.shape == src.shape and not np.array_equal(dst, src)
    lsb = 2.0 ** -15  # 16-bit files
    if "patches" in rec:  # a protection with patches: only the patch samples change
        mask = np.zeros(len(src), dtype=bool)
        for p in rec["patches"]:
            if hasattr(cfg, "patch_seconds"):  # patch_seconds at the file's own rate
                assert p["length"] == round(cfg.patch_seconds * rec["sample_rate"])
            mask[p["start"]:p["start"] + p["length"]] = True
        assert np.array_equal(src[~mask], dst[~mask]) and (src[mask] != dst[mask]).mean() > 0.5
    if kind == "cuda":  # the whole file convolved with the class filter, then peak-normalised (per channel)
        taps = prot.filters[cls].double().numpy()
        for c in range(src.shape[1]):
            y = np.convolve(src[:, c], taps, mode="same")
            y /= np.abs(y).max()
            inside = np.abs(y) < 1 - lsb  # 1.0 itself is past 16-bit full scale: clipped (and counted)
            assert np.abs(dst[inside, c] - y[inside]).max() <= lsb
    if DEFENSES.get(kind).takes_snr:  # at the target SNR (whole file against what was added), in every channel
        for c in range(src.shape[1]):
            assert abs(snr_db(src[:, c], dst[:, c]) - cfg.snr_db) < 0.01
    if kind == "classwise-noise":  # the class's pattern for the file's own length, from key + class
        pattern = prot.patterns(len(src))[cls].double().numpy()
        assert np.corrcoef(dst[:, 0] - src[:, 0], pattern)[0, 1] > 0.999
    if kind == "ar-noise":  # coloured noise: its spectrum has the shape of its class's AR process
        from scipy.signal import welch
        from defenses.ar_noise import ar_power_spectrum
        noise = welch(dst[:, 0] - src[:, 0], nperseg=256)[1]
        shapes = [ar_power_spectrum(a, 256) for a in prot.coefficients]
        fits = [np.corrcoef(np.log(noise[1:-1]), np.log(shape[1:-1]))[0, 1] for shape in shapes]
        assert fits[cls] > 0.8 and fits[cls] == max(fits), fits
    if src.shape[1] == 2:  # both channels of the fixture's stereo files are one signal: one protection (the FFT
        # of cuda may round the two rows of its batch differently, by a last bit)
        assert np.abs(dst[:, 0] - dst[:, 1]).max() <= (lsb if kind == "cuda" else 0)


@pytest.mark.parametrize("kind", FILE_BY_FILE)
def test_protect_and_verify_with_each_defense(kind, labelled_folder, fixed_key, tmp_path, cli):
    out = tmp_path / "out"
    cfg = config_of(kind, fixed_key)
    options = [a for f, v in options_of(kind).items() for a in ("--option", f"{f}={json.dumps(v)}")]
    before = tree_hashes(labelled_folder)
    code, stdout, stderr = cli("protect", str(labelled_folder), str(out), "--key-file", str(fixed_key),
                               "--defense", kind, *options, "--workers", "0")
    assert code == 0, stdout + stderr
    assert tree_hashes(labelled_folder) == before
    terminal = stdout + stderr
    code, stdout, stderr = cli("verify", str(out), "--key-file", str(fixed_key), "--workers", "0")
    assert code == 0 and "15 ok" in " ".join(stdout.split()) and "verified" in stdout
    assert FIXED_KEY not in terminal + stdout + stderr  # the key is never shown
    header, records, _ = private_record(out, fixed_key)
    assert header["protection"]["defense"] == kind and {r["path"] for r in records} == set(FILES)

    # derived at each file's own sample rate: one protection line per rate, each what the key gives at that rate
    record_file = locate_record(out, fixed_key, header["collection_id"], None, earlier=True)
    lines = read_protections(record_file)
    assert sorted(lines) == [8000, 16000]
    prots = {rate: derive(kind, fixed_key, rate) for rate in lines}
    assert all(lines[rate] == json.loads(json.dumps(prots[rate].to_dict())) for rate in lines)
    assert header["protection"] == json.loads(json.dumps(derive(kind, fixed_key, 8000).to_dict()))

    by_path = {r["path"]: r for r in records}
    for rel in FILES:
        rec = by_path[rel]
        assert rec["sample_rate"] == (16000 if int(Path(rel).stem[-1]) < 3 else 8000)
        prot = prots[rec["sample_rate"]]
        # a protection that declares where its patches go (patch_spans) has them written in the record
        spans = prot.patch_spans(torch.tensor([rec["class"]]), rec["frames"], torch.tensor([rec["frames"]]))
        assert ("patches" in rec) == (spans is not None)
        check_changed_as_the_defense_says(kind, cfg, prot, read(labelled_folder / rel), read(out / rel),
                                          rec["class"], rec)

    # a second run resumes: every file already done, nothing rewritten
    hashes = tree_hashes(out)
    code, stdout, _ = cli("protect", str(labelled_folder), str(out), "--key-file", str(fixed_key), "--defense", kind,
                          *options, "--workers", "0")
    assert code == 0 and "protected 0 files, 15 already done" in " ".join(stdout.split())
    assert {k: v for k, v in tree_hashes(out).items() if k != MANIFEST} == \
        {k: v for k, v in hashes.items() if k != MANIFEST}

    # another key: verify refuses it, in one line
    other = tmp_path / "other.key"
    other.write_text("another-key-entirely-0002\n")
    code, _, stderr = cli("verify", str(out), "--key-file", str(other))
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "is not the one OUTPUT was protected with" in \
        " ".join(stderr.split())

    # nothing under OUTPUT reveals what the key made: the record's derived values, every patch start, the patterns
    # the defense adds (derived here), the key, the owner's paths or the sources' hashes
    floats, texts = set(), set()
    for prot in [header["protection"], *lines.values()]:
        f, t = derived_values(prot)
        floats |= f
        texts |= t
    for prot in prots.values():
        if kind == "noise-patch":
            floats |= {float(v) for v in prot.noise[:, :, :40].flatten()}
        if kind == "classwise-noise":
            floats |= {float(v) for v in prot.patterns(8000)[:, :40].flatten()}
    assert len(floats) >= AT_LEAST_DERIVED.get(kind, 1)
    starts = {p["start"] for r in records for p in r.get("patches", [])}
    facts = {r[k] for r in records for k in ("frames", "sample_rate", "channels")}
    distinctive = {s for s in starts if s >= 10} - facts
    assert len(distinctive) >= {"poscuda": 8, "noise-patch": 4}.get(kind, 0)
    key = fixed_key.read_text().strip()
    private_texts = texts | {key, str(tmp_path), str(fixed_key.parent)} | {r["source_sha256"] for r in records}
    assert published_hits(out, floats, distinctive, private_texts) == []
    # the same search finds them where they are written down
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "values.json").write_text(json.dumps(sorted(floats)) + json.dumps(sorted(texts)))
    assert {v for _, v in published_hits(planted, floats, (), texts)} == floats | texts
    # the record is private (0600), holds the derived values but never the key
    assert stat.S_IMODE(record_file.stat().st_mode) == 0o600
    assert key.encode() not in record_file.read_bytes() and FIXED_KEY.encode() not in (out / MANIFEST).read_bytes()


@pytest.mark.parametrize("kind", FILE_BY_FILE)
def test_each_defense_handles_an_awkward_collection(kind, collection, key_file, tmp_path):
    """Mixed formats (WAV, FLAC, AIFF), subtypes (8/16/24/32-bit PCM, float), 8-22.05 kHz, mono and stereo, a file
    shorter than a patch, corrupt and empty files: every good file is protected and checks exactly."""
    out = tmp_path / "out"
    summary = protect_collection(collection, out, key_file, defense={"type": kind}, workers=0)
    assert summary["protected"] == len(GOOD) and {f["path"] for f in summary["failed"]} == BAD
    report = verify_collection(out, key_file, workers=0)
    assert report["counts"] == {"ok": len(GOOD)} and report["problems"] == []
    assert sorted(read_protections(Path(summary["record"]))) == [8000, 16000, 22050]


def test_verify_recomputes_per_clip_ar_noise_from_the_source(labelled_folder, key_file, tmp_path):
    """verify recomputes the noise of a file from its source (ar-noise's per-clip draw seeds from the clean samples'
    hash): an output replaced by another draw at the same SNR is a mismatch."""
    out = tmp_path / "out"
    protect_collection(labelled_folder, out, key_file, defense={"type": "ar-noise"}, workers=0)
    rel = "dog/dog0.wav"
    src = read(labelled_folder / rel)
    other = src + 0.01 * np.random.default_rng(1).standard_normal(src.shape)
    sf.write(str(out / rel), other, 16000, subtype="PCM_16")
    header, records, _ = private_record(out, key_file)
    record_file = locate_record(out, key_file, header["collection_id"], None, earlier=True)
    text = record_file.read_text().replace(next(r["output_sha256"] for r in records if r["path"] == rel),
                                           sha(out / rel))
    record_file.write_text(text)
    (out / MANIFEST).write_text((out / MANIFEST).read_text().replace(
        next(f["output_sha256"] for f in read_manifest(out)[1] if f["path"] == rel), sha(out / rel)))
    report = verify_collection(out, key_file, workers=0)
    assert [(p["path"], p["status"]) for p in report["problems"]] == [(rel, "mismatch")]


def test_an_edited_protection_line_is_caught_by_verify(labelled_folder, key_file, tmp_path):
    out = tmp_path / "out"
    protect_collection(labelled_folder, out, key_file, defense={"type": "noise-patch"}, workers=0)
    header = read_manifest(out)[0]
    record_file = locate_record(out, key_file, header["collection_id"], None, earlier=True)
    lines = record_file.read_text().splitlines()
    edited = []
    for line in lines:
        obj = json.loads(line)
        if obj["kind"] == "protection" and obj["sample_rate"] == 16000:
            obj["protection"]["positions"][0][0] += 0.01
        edited.append(json.dumps(obj, sort_keys=True))
    record_file.write_text("\n".join(edited) + "\n")
    with pytest.raises(LabError, match="the protection recorded at 16000 Hz is not what the key gives"):
        verify_collection(out, key_file, workers=0)


def test_resuming_with_another_defense_is_refused(labelled_folder, key_file, tmp_path, cli):
    out = tmp_path / "out"
    assert cli("protect", str(labelled_folder), str(out), "--key-file", str(key_file), "--defense", "cuda",
               "--workers", "0")[0] == 0
    before = tree_hashes(out)
    code, _, stderr = cli("protect", str(labelled_folder), str(out), "--key-file", str(key_file), "--defense",
                          "noise-patch", "--workers", "0")
    assert code == 2 and "was protected with other defense parameters" in " ".join(stderr.split())
    assert tree_hashes(out) == before


# --- defenses that cannot be applied file by file ---------------------------------------------------------------

class LocalConfig(PluginConfig):
    type: str
    key_file: Path | None = None


class HalfProtection(Protection):
    """A test-local protection that halves the audio; registered under a name only while a test runs."""

    def __init__(self, key_fingerprint: str):
        self.key_fingerprint = key_fingerprint

    def apply(self, waveforms, labels, lengths=None, **ablation):
        return waveforms * 0.5

    def to_dict(self) -> dict:
        return {"defense": self.name, "params": {}, "key_fingerprint": self.key_fingerprint}


class FileByFileHalf(HalfProtection):
    file_by_file = True


class LocalDefense(Defense):
    Config = LocalConfig
    protection: type = HalfProtection

    def derive(self, num_classes: int, sample_rate: int) -> Protection:
        return self.protection(fingerprint(resolve_key(None, self.config.key_file)))


class FileByFileLocalDefense(LocalDefense):
    protection = FileByFileHalf


@pytest.fixture
def local_defenses(monkeypatch):
    """Two test-local defenses: ``test-whole`` (its protection is not marked file_by_file) and ``test-files``
    (marked)."""
    for name, defense, prot in (("test-whole", LocalDefense, HalfProtection),
                                ("test-files", FileByFileLocalDefense, FileByFileHalf)):
        monkeypatch.setitem(DEFENSES._items, name, defense)
        monkeypatch.setitem(Protection.types, name, prot)
        monkeypatch.setattr(prot, "name", name, raising=False)


@pytest.mark.parametrize("kind", ["none", "test-whole", "no-such-defense"])
def test_a_defense_that_cannot_be_applied_file_by_file_is_refused_in_one_line(kind, local_defenses,
                                                                              labelled_folder, key_file, tmp_path,
                                                                              cli):
    out = tmp_path / "out"
    code, stdout, stderr = cli("protect", str(labelled_folder), str(out), "--key-file", str(key_file), "--defense",
                               kind)
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    allowed = applicable_defenses()  # from the registry: the test-local one that is marked, too, and those
    # optimised on the collection
    assert "test-files" in allowed and "test-whole" not in allowed and "none" not in allowed
    assert set(FILE_BY_FILE) | {"test-files"} <= set(allowed) and allowed == sorted(allowed)
    assert stderr.strip().endswith(f"lab protect can apply: {', '.join(allowed)}") or \
        stderr.strip().endswith(f"it can apply: {', '.join(allowed)}"), stderr
    assert (f"cannot apply the defense {kind!r} file by file" if kind != "no-such-defense" else
            "unknown defense 'no-such-defense'") in stderr
    assert not out.exists()
    with pytest.raises(LabError, match="file by file|unknown defense"):  # the Python API refuses it the same way
        protect_collection(labelled_folder, out, key_file, defense={"type": kind}, workers=0)


def test_a_new_defense_needs_only_the_flag(local_defenses, labelled_folder, key_file, tmp_path):
    """A registered defense whose protection is marked file_by_file goes through lab protect and verify with no
    change to lab protect (here one that halves the audio)."""
    out = tmp_path / "out"
    summary = protect_collection(labelled_folder, out, key_file, defense={"type": "test-files"}, workers=0)
    assert summary["protected"] == 15
    assert verify_collection(out, key_file, workers=0)["passed"]
    src, dst = read(labelled_folder / "cat/cat0.wav"), read(out / "cat/cat0.wav")
    assert np.abs(dst - 0.5 * src).max() <= 2.0 ** -15


@pytest.mark.parametrize("args, message", [
    (["--defense", "cuda", "-o", "patch_seconds=0.2"], "unknown field 'patch_seconds'"),
    (["--defense", "cuda", "--option", "blurr=0.2"], "unknown field 'blurr' (did you mean 'blur'?)"),
    (["--defense", "ar-noise", "--option", "snr_db"], "expected FIELD=VALUE"),
    (["--defense", "ar-noise", "--option", "key=abcdefgh12"], "the key comes from --key-file only"),
    (["--defense", "ar-noise", "--option", "noise=sometimes"], "defense.noise"),
    (["--option", "blur=0.2", "--option", "blur=0.3"], "given twice"),
])
def test_option_mistakes_are_one_line_errors(args, message, labelled_folder, key_file, tmp_path, cli):
    code, _, stderr = cli("protect", str(labelled_folder), str(tmp_path / "out"), "--key-file", str(key_file), *args)
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and message in " ".join(stderr.split()), stderr
    assert not (tmp_path / "out").exists()


def test_a_recipe_names_the_defense(labelled_folder, key_file, tmp_path, cli):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("defense:\n  type: ar-noise\n  key_file: /nonexistent/ignored\n  snr_db: 35\n"
                      "  noise: classwise\n")
    out = tmp_path / "out"
    code, _, err = cli("protect", str(labelled_folder), str(out), "--key-file", str(key_file), "--recipe",
                       str(recipe), "--option", "snr_db=28", "--workers", "0")
    assert code == 0, err
    params = private_record(out, key_file)[0]["protection"]["params"]
    assert params["noise"] == "classwise" and params["snr_db"] == 28
    code, _, err = cli("protect", str(labelled_folder), str(tmp_path / "o2"), "--key-file", str(key_file),
                       "--recipe", str(recipe), "--defense", "cuda")
    assert code == 2 and "the defense section of" in err and "is ar-noise" in " ".join(err.split())


def test_ar_noise_on_real_fsdd_recordings(fsdd_dir, fixed_key, tmp_path, cli):
    """AR perturbations on a real folder: 20 FSDD recordings (labels from the file names) protected in two worker
    processes, verified, each at the SNR asked for, nothing derived under OUTPUT, and a re-run resumes."""
    src = tmp_path / "recordings"
    src.mkdir()
    for p in sorted((fsdd_dir / "recordings").glob("*.wav"))[::150]:
        shutil.copy(p, src / p.name)
    assert len(list(src.iterdir())) == 20
    key = fixed_key  # fixed: the values searched for under OUTPUT are the same on every run
    out = tmp_path / "out"
    args = ["protect", str(src), str(out), "--key-file", str(key), "--labels", r"regex:^(\d+)_", "--defense",
            "ar-noise", "--option", "snr_db=30"]
    code, stdout, stderr = cli(*args, "--workers", "2")
    assert code == 0, stdout + stderr
    code, stdout, _ = cli("verify", str(out), "--key-file", str(key), "--workers", "2")
    assert code == 0 and "20 ok" in " ".join(stdout.split())
    header, records, _ = private_record(out, key)
    assert len(header["classes"]) == 10 and len(records) == 20
    for r in records:
        assert abs(snr_db(read(src / r["path"]), read(out / r["path"])) - 30.0) < 0.05, r["path"]
    floats, texts = derived_values(header["protection"])
    assert len(texts) == 10 and len(floats) > 100  # a salt per class; reflection and AR coefficients
    assert published_hits(out, floats, (), texts | {key.read_text().strip()}) == []
    code, stdout, _ = cli(*args)
    assert code == 0 and "protected 0 files, 20 already done" in " ".join(stdout.split())
