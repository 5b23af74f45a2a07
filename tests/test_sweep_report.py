"""Sweeps resume after an interruption; reports aggregate the right mean and std; plots are real PNGs."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lab.experiment
from lab.cli import app
from lab.report import collect, tables, write
from lab.sweep import _split, cells, pareto, parse_grid, run_sweep

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "fsdd_cnn.yaml"


def test_grid_parsing():
    grid = parse_grid(["defense.blur=0.1,0.3,1", "defense.position_range=[0.0,0.2],[0.1,0.5]"])
    assert grid == {"defense.blur": [0.1, 0.3, 1], "defense.position_range": [[0.0, 0.2], [0.1, 0.5]]}
    assert len(cells(grid)) == 6
    assert _split("a,[1,2],b") == ["a", "[1,2]", "b"]
    assert parse_grid(["model={type: cnn, head: global},{type: lstm}"])["model"] == [
        {"type": "cnn", "head": "global"}, {"type": "lstm"}]


def test_pareto():
    assert pareto([(1, 0.9), (2, 0.5), (3, 0.6), (0.5, 0.95)]) == [True, True, False, True]


def test_sweep_resumes_after_interruption(fsdd_dir, tmp_path, monkeypatch):
    fixed = [f"data.root={fsdd_dir}", "train.epochs=1", "data.max_train_per_class=4", "data.max_test_per_class=2",
             "train.progress=false"]
    grid = {"defense.blur": [0.1, 0.5]}
    real_run = lab.experiment.run
    calls = []

    def crashing_run(recipe, *args, **kwargs):
        calls.append(recipe.defense.blur)
        if len(calls) == 2:
            (kwargs["run_dir"] / "partial.txt").write_text("half a cell")
            raise KeyboardInterrupt
        return real_run(recipe, *args, **kwargs)

    monkeypatch.setattr(lab.experiment, "run", crashing_run)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(RECIPE, grid, tmp_path, [0], fixed, log=lambda s: None)
    finished = list(tmp_path.glob("cell-*/results.json"))
    assert len(finished) == 1
    stamp = finished[0].stat().st_mtime_ns

    monkeypatch.setattr(lab.experiment, "run", real_run)
    said = []
    rows = run_sweep(RECIPE, grid, tmp_path, [0], fixed, log=said.append)
    assert any("finished earlier, skipped" in s for s in said)
    assert any("incomplete from an earlier run, redoing" in s for s in said)
    assert finished[0].stat().st_mtime_ns == stamp  # the finished cell was not touched
    assert not list(tmp_path.glob("cell-*/partial.txt"))
    assert len(rows) == 2 and {r["defense.blur"] for r in rows} == {0.1, 0.5}
    assert (tmp_path / "frontier.csv").is_file()
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def fake_results(path: Path, seeds: list[int], accs: dict[int, float], blur: float = 0.3, epochs: int = 8) -> Path:
    recipe = {"name": "toy", "model": {"type": "cnn"}, "features": {"type": "mfcc"}, "train": {"epochs": epochs},
              "defense": {"type": "poscuda", "blur": blur}, "seeds": seeds, "output_dir": "runs"}
    per_seed = []
    for s in seeds:
        evals = {"clean_test": {"accuracy": 0.9 + s / 100}, "protected_test": {"accuracy": 0.99}}
        per_seed.append({"seed": s, "clean_model": {**evals, "ablation": {"true": 0.9}},
                         "protected_model": {**evals, "clean_test": {"accuracy": accs[s]},
                                             "mixed_test": {"accuracy": 0.5}, "ablation": {"true": 0.99}}})
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({
        "recipe_name": "toy", "recipe": recipe, "per_seed": per_seed, "seeds": seeds,
        "quality": {"protected_train_vs_clean": {"snr_db_mean": 20.0 - blur}},
        "provenance": {"git": {"commit": "abc"}}}))
    return path / "results.json"


def test_report_pools_seeds_and_computes_mean_std(tmp_path):
    accs = {0: 0.2, 1: 0.4, 2: 0.9}
    files = [fake_results(tmp_path / "a", [0, 1], accs), fake_results(tmp_path / "b", [2, 1], accs),
             fake_results(tmp_path / "c", [0], {0: 0.7}, blur=1.0)]
    groups = collect(files)
    assert len(groups) == 2
    pooled = groups[0]
    assert sorted(pooled.seeds) == [0, 1, 2]  # seed 1 appears twice and counts once
    head, rows = tables(groups)["accuracy"]
    col = head.index("protected→clean")
    expected = f"{statistics.fmean([0.2, 0.4, 0.9]):.3f} ± {statistics.stdev([0.2, 0.4, 0.9]):.3f}"
    assert rows[0][col] == expected and rows[0][1] == "3"
    assert rows[1][col] == "0.700 (n=1)" and rows[1][1] == "1"  # one seed: no "± 0.000"
    written = write(groups, tmp_path / "report")
    assert expected in written["report"].read_text()  # the Markdown table stays for people: "mean ± std"
    # the CSV files are tidy: a row per statistic, mean / std / n as numbers (no "0.971 ± 0.004" text)
    import csv
    rows = list(csv.DictReader((tmp_path / "report" / "accuracy.csv").open()))
    assert list(rows[0]) == ["run", "trained on", "tested on", "mean", "std", "n", "values"] and len(rows) == 2 * 5
    (pooled,) = [r for r in rows[:5] if (r["trained on"], r["tested on"]) == ("protected", "clean")]
    assert float(pooled["mean"]) == statistics.fmean([0.2, 0.4, 0.9]) and int(pooled["n"]) == 3
    assert float(pooled["std"]) == statistics.stdev([0.2, 0.4, 0.9])
    assert sorted(map(float, pooled["values"].split())) == [0.2, 0.4, 0.9]
    (single,) = [r for r in rows[5:] if (r["trained on"], r["tested on"]) == ("protected", "clean")]
    assert (float(single["mean"]), single["std"], single["n"]) == (0.7, "", "1")  # one seed: no std
    ablation = list(csv.DictReader((tmp_path / "report" / "ablation.csv").open()))
    assert [(r["test variant"], r["trained on"], r["n"]) for r in ablation] == [
        ("true", "protected", "3"), ("true", "clean", "3"), ("true", "protected", "1"), ("true", "clean", "1")]
    quality = list(csv.DictReader((tmp_path / "report" / "quality.csv").open()))
    assert float(quality[0]["SNR dB (mean)"]) == pytest.approx(19.7) and quality[0]["FAD"] == ""
    assert not any("±" in (tmp_path / "report" / f"{n}.csv").read_text() for n in ("accuracy", "ablation"))


def test_report_labels_tell_training_lengths_apart(tmp_path):
    short = fake_results(tmp_path / "s" / "cell-1", [0], {0: 0.4}, epochs=5)
    long = fake_results(tmp_path / "l" / "cell-2", [0], {0: 0.6}, epochs=15)
    for f in (short, long):  # a sweep cell that set the model and feature, and one other field
        (f.parent / "cell.json").write_text(json.dumps(
            {"cell": {"model": {"type": "cnn"}, "features.type": "mfcc", "defense.blur": 0.3}, "seeds": [0]}))
    labels = [g.label for g in collect([short, long])]
    assert labels == ["toy: cnn/mfcc/poscuda, 5 epochs [blur=0.3]", "toy: cnn/mfcc/poscuda, 15 epochs [blur=0.3]"]


def test_report_command_writes_plots(tmp_path):
    files = [fake_results(tmp_path / "a", [0, 1], {0: 0.2, 1: 0.4}),
             fake_results(tmp_path / "b", [0], {0: 0.7}, blur=1.0)]
    log_dir = tmp_path / "a" / "logs" / "protected_model" / "seed0"
    log_dir.mkdir(parents=True)
    (log_dir / "metrics.csv").write_text("epoch,step,val_acc,train_loss\n0,10,0.3,\n0,10,,2.0\n1,20,0.5,\n")
    result = CliRunner().invoke(app, ["report", str(tmp_path / "a"), str(files[1]), "--out", str(tmp_path / "r"),
                                      "--no-spectrograms"])
    assert result.exit_code == 0, result.output
    for name in ("learning_curves.png", "frontier.png"):
        data = (tmp_path / "r" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_learning_curves_one_panel_per_group(tmp_path):
    import matplotlib.pyplot as plt

    from lab.plots import learning_curves
    run = tmp_path / "run"
    for which in ("clean_model", "protected_model"):
        (run / "logs" / which / "seed0").mkdir(parents=True)
        (run / "logs" / which / "seed0" / "metrics.csv").write_text("epoch,step,val_acc\n0,1,0.2\n1,2,0.6\n")
    learning_curves([("cnn/mfcc", [run])], tmp_path / "one.png")
    learning_curves([(f"model {i}", [run]) for i in range(4)], tmp_path / "four.png")
    one, four = plt.imread(tmp_path / "one.png"), plt.imread(tmp_path / "four.png")
    assert four.shape[0] > 1.5 * one.shape[0] and four.shape[1] > 2 * one.shape[1]  # a 2 x 3 grid, not one axis


def test_spectrogram_plot(tmp_path):
    import torch

    from defenses.poscuda import PosCUDA, PosCUDAConfig
    from lab.plots import protected_spectrograms
    prot = PosCUDA(PosCUDAConfig(key="plot-key-12345")).derive(3, 8000)
    w = 0.2 * torch.randn(6, 8000)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    starts = prot.starts(y, 8000)
    spans = [[(s, s + prot.patch_len) for s in row] for row in starts.tolist()]
    protected_spectrograms(w, prot.apply(w, y), y, ["a", "b", "c"], spans, 8000, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 5000


REPO = Path(__file__).resolve().parent.parent
TINY = ["--set", "data.max_train_per_class=4", "--set", "data.max_test_per_class=2", "--set", "train.epochs=1",
        "--set", "train.progress=false", "--set", "train.num_threads=1"]


def lab_cli(*args: str, data_root: Path):
    """``lab ARGS`` in its own process, forked from this one (tests/forked.py: no second of imports)."""
    import os

    from tests.forked import lab_forked
    env = {**os.environ, "LAB_DATA_DIR": str(data_root), "COLUMNS": "250"}
    return lab_forked(*args, env=env, cwd=REPO, timeout=600)


def test_report_reads_attack_runs_beside_lab_runs(fsdd_dir, tmp_path):
    """A folder with a real `lab run` and a real `lab attack` run (tiny): the run tables as before, and the attack
    run's matrix with the numbers its own table.csv holds, in the terminal, report.md and attacks.csv."""
    import csv

    runs = tmp_path / "runs"
    for args in (["run", str(RECIPE), "--seeds", "0"], ["attack", str(RECIPE), "--type", "codec", "--seeds", "0,1"]):
        proc = lab_cli(*args, *TINY, "--out", str(runs), data_root=fsdd_dir.parent)
        assert proc.returncode == 0, proc.stderr
    (attack_dir,) = runs.glob("fsdd_cnn/attack-codec-*")
    attack = json.loads((attack_dir / "results.json").read_text())
    proc = lab_cli("report", str(runs), "--out", str(tmp_path / "report"), "--no-spectrograms",
                   data_root=fsdd_dir.parent)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "skipped" not in proc.stdout

    expected = {}  # (defense, attack) -> the cell as `lab attack` shows it: mean ± std over the two seeds
    for d in attack["defenses"]:
        for c in attack["columns"]:
            values = attack["accuracy"][d][c]["values"]
            assert len(values) == 2
            expected[d, c] = f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Accuracy" in md and "fsdd_cnn: cnn/mfcc/poscuda, 1 epochs" in md  # the lab run, as before
    assert "## Attacks" in md and attack_dir.name in md and "seeds [0, 1]" in md
    for c in attack["columns"]:
        row = f"| {c} | " + " | ".join(expected[d, c] for d in attack["defenses"]) + " |"
        assert row in md, (row, md)
    worst = " | ".join(f"{attack['worst_case'][d]['accuracy']:.3f} ({attack['worst_case'][d]['attack']})"
                       for d in attack["defenses"])
    assert f"| worst case | {worst} |" in md
    terminal = proc.stdout
    for cell in expected.values():
        assert cell in terminal
    rows = list(csv.reader((tmp_path / "report" / "attacks.csv").open()))
    own = list(csv.reader((attack_dir / "table.csv").open()))
    assert rows[0] == ["run", *own[0]]
    assert [r[1:] for r in rows[1:]] == own[1:] and all(attack_dir.name in r[0] for r in rows[1:])
    accuracy = list(csv.reader((tmp_path / "report" / "accuracy.csv").open()))
    assert len(accuracy) == 1 + 5  # one lab run's five evaluations; the attack run is not mistaken for one


def test_report_names_what_it_cannot_read_and_goes_on(tmp_path):
    from lab.errors import LabError
    good = fake_results(tmp_path / "run", [0, 1], {0: 0.2, 1: 0.4})
    odd = {"not-json": "{not json", "a-list": "[1, 2]", "other-tool": json.dumps({"score": 3}),
           "run-without-evaluations": json.dumps({"recipe": {}, "per_seed": [{"seed": 0}]}),
           "attack-without-its-matrix": json.dumps({"accuracy": {}, "defenses": ["none"], "columns": ["no attack"],
                                                    "chance": 0.1})}
    for name, text in odd.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(text)
    bare = json.loads(good.read_text())  # a lab run result without a quality section: tables, no frontier point
    del bare["quality"]
    bare["recipe"]["defense"]["blur"] = 0.9
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "results.json").write_text(json.dumps(bare))
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r"), "--no-spectrograms"],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name in odd:
        said = [line for line in lines if f"{tmp_path / name / 'results.json'}" in line]
        assert len(said) == 1 and said[0].startswith("skipped "), (name, said)
    assert "not readable JSON" in result.output and "not a lab run or lab attack result" in result.output
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Skipped" in md and all(f"{tmp_path / n / 'results.json'}" in md for n in odd)
    assert md.count("toy: cnn/mfcc/poscuda, 8 epochs") >= 2  # both lab runs are in the tables
    assert "## Attacks" not in md and not (tmp_path / "r" / "attacks.csv").exists()

    for name in ("run", "bare"):
        (tmp_path / name / "results.json").unlink()
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r2")])
    assert isinstance(result.exception, LabError)
    assert "nothing to report: none of the 5 results.json files is a lab run or lab attack result" in str(
        result.exception)


def test_report_says_it_left_out_unfinished_runs(tmp_path):
    from lab.rundir import INCOMPLETE
    fake_results(tmp_path / "done", [0], {0: 0.3})
    fake_results(tmp_path / "stopped", [0], {0: 0.777})
    (tmp_path / "stopped" / INCOMPLETE).write_text("interrupted while training seed 0")
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r"), "--no-spectrograms"],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert f"1 unfinished run folder(s) marked {INCOMPLETE} left out" in " ".join(result.output.split())
    assert "0.777" not in (tmp_path / "r" / "report.md").read_text()


def test_one_results_writer_for_runs_attacks_and_reports(tmp_path):
    """run, attack and report format mean ± std alike, make run folders alike, and head results.md with the same
    provenance line (seeds, recipe, commit, versions; the key's fingerprint where there is a key)."""
    from lab import attacking, experiment, report
    from lab.results import mean_std, new_run_dir, provenance_line
    values = [0.5, 0.7]
    stat = experiment.summarise(values)
    assert experiment.fmt(stat) == attacking.fmt_cell(values) == report.fmt(values) == mean_std(values) \
        == "0.600 ± 0.141"
    assert mean_std([]) == "–" and attacking.fmt_cell([]) == "-" and mean_std(None) == "–"
    # one seed has no spread: the mean alone and n=1, never "± 0.000" (also from a stored summary, a sweep row)
    one = experiment.summarise([0.25])
    assert mean_std([0.25]) == mean_std(one) == attacking.fmt_cell([0.25]) == report.fmt([0.25]) == "0.250 (n=1)"
    assert one == {"mean": 0.25, "std": 0.0, "n": 1, "values": [0.25]}  # results.json keeps its form
    first, second = new_run_dir(tmp_path, "attack-x"), new_run_dir(tmp_path, "attack-x")
    assert first != second and first.is_dir() and second.name.startswith(first.name)
    prov = {"git": {"commit": "abc123", "dirty": True}, "versions": {"torch": "2.13.0", "lightning": "2.6.6"},
            "time_utc": "2026-12-01T00:00:00Z"}
    line = provenance_line({"seeds": [0, 1], "recipe_path": "r.yaml", "provenance": prov, "key_fingerprint": "fp",
                            "wall_seconds": 3.0})
    assert line == ("Seeds [0, 1] · recipe `r.yaml` · commit `abc123` (dirty) · key fingerprint `fp` · "
                    "torch 2.13.0, lightning 2.6.6 · 2026-12-01T00:00:00Z · 3.0 s")
    assert "fingerprint" not in provenance_line({"seeds": [0], "provenance": prov})
    assert "recipe" not in provenance_line({"seeds": [0], "provenance": prov})  # lab audit: made without a recipe


def test_the_verdict_and_the_too_small_warning_follow_one_rule():
    """The protected-trained model's share of the clean model's margin over chance decides (<= 25% unlearnable,
    >= 75% learnable, partly in between); a clean model below halfway from chance to perfect makes it
    inconclusive, and is a warning of its own."""
    from lab.attacking import Matrix, conclusions
    from lab.results import too_small_bar, too_small_warning, verdict
    assert too_small_bar(0.1) == pytest.approx(0.55) and too_small_bar(0.5) == pytest.approx(0.75)
    assert verdict("poscuda", [0.82, 0.85, 0.88], [0.96, 0.97, 0.98], 0.1) == (
        "poscuda: protected-trained clean-test 0.850 ± 0.030 against 0.970 ± 0.010 clean (chance 0.10): learnable "
        "(it keeps 86% of the clean model's margin over chance)")
    assert verdict("em-noise", {"mean": 0.311, "std": 0.0, "n": 1}, [0.968], 0.1).endswith(
        "0.311 (n=1) against 0.968 (n=1) clean (chance 0.10): unlearnable (it keeps 24% of the clean model's margin "
        "over chance)")
    assert verdict("x", [0.5], [0.9], 0.1).endswith(": partly learnable (it keeps 50% of the clean model's margin "
                                                    "over chance)")
    assert verdict("x", [0.05], [0.9], 0.1).endswith(": unlearnable (it is at or below chance)")
    assert verdict("x", [0.05], [0.5], 0.1).endswith(": inconclusive (the clean-trained model is near chance: the "
                                                     "setting is too small)")
    assert too_small_warning([0.56], 0.1) is None and "reaches only 0.540 on clean test" in too_small_warning(
        [0.54], 0.1)
    cells = {"none": {"no attack": [0.9], "codec": [0.8]}, "poscuda": {"no attack": [0.3], "codec": [0.8]}}
    warning, (said,) = conclusions(Matrix(["none", "poscuda"], ["no attack", "codec"], cells, chance=0.1))
    assert warning is None  # on the worst case for the data owner, against clean data with no attack
    assert said == ("poscuda, worst case (codec): protected-trained clean-test 0.800 (n=1) against 0.900 (n=1) "
                    "clean (chance 0.10): learnable (it keeps 88% of the clean model's margin over chance)")
    assert conclusions(Matrix(["poscuda"], ["no attack"], {"poscuda": {"no attack": [0.3]}}, chance=0.1)) == (
        None, ["no verdict: the table has no clean reference (add none to --defenses)"])


def test_mean_and_std_are_computed_in_one_place(monkeypatch):
    """run, attack, report and sweep summaries all go through lab.results.stat (they computed it in five places)."""
    import lab.results
    from lab import attacking, experiment, report
    from lab.attacking import Matrix
    calls = []
    real = lab.results.stat

    def counted(values):
        calls.append(values)
        return real(values)
    monkeypatch.setattr(lab.results, "stat", counted)
    for use in (lambda: experiment.summarise([0.5, 0.7]), lambda: lab.results.mean_std([0.5, 0.7]),
                lambda: attacking.csv_rows(Matrix(["none"], ["no attack"], {"none": {"no attack": [0.5, 0.7]}})),
                lambda: lab.results.stat_columns([0.5, 0.7])):
        calls.clear()
        use()
        assert calls, use
    assert report.stat is real and report.fmt is lab.results.mean_std and experiment.fmt is lab.results.mean_std


def test_spectrograms_skip_a_protection_that_cannot_be_rebuilt(tmp_path, monkeypatch):
    """lab report over the runs of a protection that keeps no derived values in its record (classwise-noise: its
    patterns come from the key, which no run stores) used to end in a NotImplementedError traceback after writing
    the tables; rebuilding it is now a one-line LabError, and the spectrogram plot is skipped, named in one line."""
    import pytest

    import lab.rundir
    from defenses.base import Protection
    from defenses.classwise_noise import ClasswiseNoise, ClasswiseNoiseConfig
    from lab.commands import report as report_cmd
    from lab.errors import LabError
    record = ClasswiseNoise(ClasswiseNoiseConfig(key="test-key-not-secret", snr_db=20)).derive(10, 8000).to_dict()
    with pytest.raises(LabError) as caught:
        Protection.from_dict(record)
    assert "classwise-noise" in str(caught.value) and "\n" not in str(caught.value)

    def not_rebuilt(run_dir):
        return Protection.from_dict(record)
    said = []
    monkeypatch.setattr(lab.rundir, "load_run", not_rebuilt)
    monkeypatch.setattr(report_cmd, "log", said.append)
    report_cmd._spectrograms(tmp_path / "run", tmp_path / "s.png")
    assert not (tmp_path / "s.png").exists()
    assert len(said) == 1 and said[0].startswith("spectrogram plot skipped") and "classwise-noise" in said[0]


def test_tables_are_not_cut_to_80_columns_when_stdout_is_not_a_terminal(tmp_path):
    """A log file or a notebook cell got Rich's 80 columns: wide tables were wrapped, their cells folded over
    several lines. With stdout captured (and no $COLUMNS), every row of the table is one whole line."""
    import os
    import subprocess
    import sys
    results = fake_results(tmp_path / "run", [0, 1], {0: 0.2, 1: 0.4})
    data = json.loads(results.read_text())
    data["recipe_name"] = "a-recipe-name-long-enough-to-push-the-accuracy-table-past-eighty-columns"
    results.write_text(json.dumps(data))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.run([sys.executable, "-m", "lab", "report", str(results), "--out", str(tmp_path / "r"),
                           "--no-spectrograms"], cwd=REPO, capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (row,) = [line for line in proc.stdout.splitlines() if data["recipe_name"] in line and "0.300 ± 0.141" in line]
    assert len(row) > 150 and row.count("0.990 ± 0.000") == 2  # the whole row: label, seeds and the five cells
    assert "0.905 ± 0.007" in row and "0.500 ± 0.000" in row
    assert "…" not in proc.stdout
    from lab.cli import LabConsole
    assert LabConsole(file=open(os.devnull, "w")).width == LabConsole.UNCUT  # not a terminal: uncut


def test_columns_still_sets_the_width(monkeypatch):
    import io

    from lab.cli import LabConsole
    monkeypatch.setenv("COLUMNS", "100")
    assert LabConsole(file=io.StringIO()).width == 100
