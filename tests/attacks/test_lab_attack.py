"""`lab attack` on real FSDD (tiny subsets, one epoch) and its one-line errors for bad input before any training."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from attacks import ATTACKS
from lab.attacking import attack_configs, load_attack_recipe
from lab.errors import LabError
from tests.forked import lab_forked

REPO = Path(__file__).resolve().parent.parent.parent
TINY = ["--set", "data.max_train_per_class=8", "--set", "data.max_test_per_class=4", "--set", "train.epochs=1",
        "--set", "train.progress=false", "--seeds", "0"]


def lab(*args: str, env_root: Path | None = None) -> subprocess.CompletedProcess:
    """``lab ARGS`` in its own process, forked from this one (tests/forked.py: no second of imports)."""
    import os
    env = dict(os.environ)
    if env_root is not None:
        env["LAB_DATA_DIR"] = str(env_root)
    return lab_forked(*args, env=env, cwd=REPO, timeout=600)


R = "recipes/fsdd_cnn.yaml"


@pytest.mark.parametrize("args, pattern", [
    ([R, "--type", "augmnt"], "unknown attack 'augmnt' (did you mean 'augment'?); valid: "
                              + ", ".join(ATTACKS.names())),
    ([R, "--type", "partial", "-o", "fraction=1.5"], "attack (partial).fraction: Input should be less than or equal "
                                                     "to 1"),
    ([R, "--type", "adversarial-training", "-o", "eps=-0.1"], "eps: Input should be greater than or equal to 0"),
    ([R, "--type", "sharpen-lowpass", "-o", "keep_fraction=-0.5"], "keep_fraction: Input should be greater than 0"),
    ([R, "--type", "clean-finetune", "-o", "fractions=[0.01, 2]"], "each fraction must be in (0, 1]"),
    ([R, "--type", "codec", "-o", "bitz=4"], "unknown field 'bitz' (did you mean 'bits'?)"),
    ([R, "--type", "all", "-o", "eps=0.1"], "with several attacks, name the attack: ATTACK.eps=..."),
    ([R, "--type", "augment", "--defenses", "none,blur"], "unknown defense 'blur'"),
    ([R, "--type", "filter-retrain"], "attack 'filter-retrain' no longer exists: it became two attacks: "
                                      "filter-adversarial (was method: adversarial) and filter-estimate"),
    ([R, "--type", "augment", "--set", "data.max_train_per_class=-1"], "max_train_per_class"),
    (["--type", "augment"], "missing recipe: lab attack RECIPE --type ATTACK (e.g. lab attack recipes/fsdd_cnn.yaml"),
    (["recipes/nope.yaml", "--type", "augment"], "recipe not found: recipes/nope.yaml"),
    # --jobs and --seeds that used to train anyway (one cell at a time; the recipe's seeds)
    ([R, "--type", "augment", "--jobs", "0"], "--jobs 0: expected a whole number of cells to train at once, 1 or more"),
    ([R, "--type", "augment", "--jobs", "-1"], "--jobs -1: expected a whole number of cells to train at once, 1 or "
                                               "more"),
    ([R, "--type", "augment", "--seeds", ""], "--seeds '': expected comma-separated whole-number seeds from 0 to "
                                             "4294967295, each once, e.g. --seeds 0,1,2"),
])
def test_bad_input_fails_in_one_line_before_training(args, pattern, tmp_path, cli, monkeypatch):
    monkeypatch.setenv("LAB_DATA_DIR", str(tmp_path))  # no data there: nothing could train
    monkeypatch.chdir(REPO)
    code, stdout, stderr = cli("attack", *args, "--out", str(tmp_path))  # in this process: no second of imports
    assert code == 2, stdout + stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert pattern in " ".join(stderr.split())
    assert not any(tmp_path.rglob("results.json"))


def test_help_lists_the_registered_attacks_and_reads_rows_as_attacks():
    import os

    import attacks
    proc = subprocess.run([sys.executable, "-m", "lab", "attack", "--help"], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "300"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.replace("│", " ").split())
    assert "Usage:" in text and "[RECIPE]" in text
    assert "The table's rows are attacks" in text and "Its columns are defenses" in text
    assert "The last row is the worst case for the data owner" in text
    lines = proc.stdout.splitlines()
    (start,) = [i for i, line in enumerate(lines) if "--type" in line and "Attack to run" in line]
    # the option's help with its continuation lines (it wraps once enough attacks are registered)
    rest = [line for line in lines[start + 1:start + 4] if not line.lstrip("│ ").startswith("-")]
    type_line = " ".join(line.strip("│ ") for line in [lines[start], *rest])
    for name in attacks.ATTACKS.names():
        assert name in type_line, (name, type_line)
    assert "'all'" in type_line


def test_help_names_come_from_the_registry(monkeypatch):
    from typer.testing import CliRunner

    import attacks
    from lab.cli import app
    monkeypatch.setitem(attacks.ATTACKS._items, "zz-test-only", object)
    first = CliRunner().invoke(app, ["attack", "--help"], env={"COLUMNS": "300"})
    assert first.exit_code == 0 and "zz-test-only" in first.output
    monkeypatch.delitem(attacks.ATTACKS._items, "zz-test-only")
    again = CliRunner().invoke(app, ["attack", "--help"], env={"COLUMNS": "300"})
    assert "zz-test-only" not in again.output and "sharpen-lowpass" in again.output


def test_help_lists_the_matched_baselines_from_the_defenses():
    """--defenses' help names every defense that declares itself a matched baseline (it once omitted ar-noise)."""
    from typer.testing import CliRunner

    from lab.attacking import baselines
    from lab.cli import app
    result = CliRunner().invoke(app, ["attack", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.output.splitlines() if "--defenses" in line]
    assert "<the matched baselines>" not in line
    assert "ar-noise" in baselines()
    for name in baselines():
        assert name in line, (name, line)


def test_recipe_attack_block_and_options(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text((REPO / "recipes" / "fsdd_cnn.yaml").read_text() +
                      "attack:\n  - {type: mixed-position, mode: shuffle, segments: 6}\n  - {type: codec, bits: 6}\n")
    rec, blocks = load_attack_recipe(recipe, ["train.epochs=2"])
    assert rec.train.epochs == 2
    (mixed,) = attack_configs(["mixed-position"], blocks, ["segments=3"])
    assert mixed.mode == "shuffle" and mixed.segments == 3  # the command line wins over the recipe
    mixed, codec = attack_configs(["mixed-position", "codec"], blocks, ["codec.bits=4"])
    assert mixed.segments == 6 and codec.bits == 4
    recipe.write_text((REPO / "recipes" / "fsdd_cnn.yaml").read_text() + "attack: {type: jpeg}\n")
    _, blocks = load_attack_recipe(recipe)
    with pytest.raises(LabError, match="unknown attack 'jpeg'"):
        attack_configs(["augment"], blocks, [])


def test_old_filter_retrain_block_names_the_two_attacks_it_became(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text((REPO / "recipes" / "fsdd_cnn.yaml").read_text() +
                      "attack: {type: filter-retrain, method: estimate, pairs_per_class: 3}\n")
    _, blocks = load_attack_recipe(recipe)
    with pytest.raises(LabError) as err:
        attack_configs(["augment"], blocks, [])
    said = str(err.value)
    assert "\n" not in said and "'filter-retrain' no longer exists" in said
    assert "filter-adversarial (was method: adversarial)" in said and "filter-estimate (was method: estimate)" in said


def test_the_two_filter_attacks_are_plain_registered_attacks():
    """--type all runs both filter attacks (no special case in the matrix code): each is its own attack type with its
    own options, one per batch, one on the training set once, and each its own table column."""
    import attacks
    from lab.attacking import column_name
    cfgs = {c.type: c for c in attack_configs(attacks.ATTACKS.names(), [], [])}
    adversarial, estimate = cfgs["filter-adversarial"], cfgs["filter-estimate"]
    assert attacks.build_attack(adversarial).per_batch and not attacks.build_attack(estimate).per_batch
    assert {"ascent_steps", "filter_lr"} <= set(type(adversarial).model_fields) and "pairs_per_class" not in set(
        type(adversarial).model_fields)
    assert {"pairs_per_class", "regularisation"} <= set(type(estimate).model_fields) and "ascent_steps" not in set(
        type(estimate).model_fields)
    assert adversarial.filter_length == estimate.filter_length == 63
    assert column_name(adversarial) == "filter-adversarial" and column_name(estimate) == "filter-estimate"
    with pytest.raises(LabError, match="filter_length must be odd"):
        attack_configs(["filter-estimate"], [], ["filter_length=62"])


def test_lab_attack_augment_on_fsdd(fsdd_dir, tmp_path):
    recipe = REPO / "recipes" / "fsdd_cnn.yaml"  # the first argument, from anywhere
    proc = lab("attack", str(recipe), "--type", "augment", *TINY, "--out", str(tmp_path), env_root=fsdd_dir.parent)
    assert proc.returncode == 0, proc.stderr
    (run,) = list(tmp_path.glob("fsdd_cnn/attack-augment-*"))
    results = json.loads((run / "results.json").read_text())
    assert results["defenses"] == ["none", "poscuda"] and results["columns"] == ["no attack", "augment"]
    for d in ("none", "poscuda"):
        for c in ("no attack", "augment"):
            acc = results["accuracy"][d][c]["values"]
            assert len(acc) == 1 and 0 <= acc[0] <= 1
        assert results["worst_case"][d]["accuracy"] == max(results["accuracy"][d][c]["mean"]
                                                           for c in ("no attack", "augment"))
    assert results["attack_params"][0]["chain"][0]["name"] == "gaussian_noise"
    assert results["provenance"]["git"]["commit"] and results["seeds"] == [0]
    rows = list(csv.reader((run / "table.csv").open()))
    assert rows[0] == ["defense", "attack", "mean", "std", "n", "values"] and len(rows) == 1 + 2 * 3
    md = (run / "results.md").read_text()
    assert "| worst case |" in md and "lab-demo-key" not in md and "lab-demo-key" not in json.dumps(results)
    pos = results["defense_params"]["poscuda"]  # each column's defense as it ran, key redacted
    assert pos["key"] == "<redacted>" and pos["blur"] == 0.3 and results["defense_params"]["none"]["type"] == "none"
    assert "worst case" in proc.stdout
    # the last line: the verdict on the recipe's defense at its worst case (one epoch on 80 clips: inconclusive,
    # said with a warning before it)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("verdict poscuda, worst case (") and "protected-trained clean-test" in last, last
    clean = results["accuracy"]["none"]["no attack"]["mean"]
    if clean < 0.55:
        assert last.endswith("inconclusive (the clean-trained model is near chance: the setting is too small)")
        assert "this setting is too small to say anything about the protection" in " ".join(proc.stderr.split())
    assert "- poscuda, worst case (" in md
    assert "validation_step" not in proc.stdout + proc.stderr  # Lightning's warning about a validation step
    # a finished run folder (results.json last, no INCOMPLETE) with each column's private protection record
    assert not (run / "INCOMPLETE").exists()
    from defenses.base import Protection
    record = json.loads((run / "protections" / "poscuda.json").read_text())
    from lab.keys import fingerprint
    assert record["key_fingerprint"] == fingerprint("lab-demo-key-not-secret")
    assert "lab-demo-key" not in (run / "protections" / "poscuda.json").read_text()
    assert Protection.from_dict(record).to_dict() == record
    assert (run / "protections" / "none.json").is_file()


def test_attack_training_paths_define_no_validation_step(fsdd_dir):
    """Every way the attack path trains (plain, a data attack, a per-batch attack, fine-tuning after training) trains
    without a validation set, so Lightning must not warn that a validation step has no val_dataloader."""
    import warnings

    from attacks import build_attack
    from lab.attacking import train_under_attack
    from lab.spine import ExperimentData
    from lab.train import fit
    rec, _ = load_attack_recipe(REPO / "recipes" / "fsdd_cnn.yaml", [
        f"data.root={fsdd_dir}", "data.max_train_per_class=3", "data.max_test_per_class=1", "train.epochs=1",
        "train.progress=false", "seeds=[0]"])
    data = ExperimentData(rec, log=lambda s: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = fit(rec, data.training(data.protected_train, 0), 10, 0).module
        for name in ("codec", "augment", "clean-finetune"):
            models, _ = train_under_attack(rec, data, build_attack(name), 0, plain=plain)
            assert models
    said = [str(w.message) for w in caught]
    assert not [m for m in said if "validation_step" in m], said


@pytest.mark.slow
def test_lab_attack_all_on_fsdd(fsdd_dir, tmp_path):
    import attacks
    proc = lab("attack", R, "--type", "all", *TINY, "--defenses", "poscuda", "--out", str(tmp_path),
               env_root=fsdd_dir.parent)
    assert proc.returncode == 0, proc.stderr
    (run,) = list(tmp_path.glob("fsdd_cnn/attack-all-*"))
    results = json.loads((run / "results.json").read_text())
    # every registered attack is a column (its variants after its name), no attack first; each has its record
    columns = results["columns"]
    assert columns[0] == "no attack" and len(set(columns)) == len(columns)
    assert {c.split(" ")[0] for c in columns[1:]} == set(attacks.ATTACKS.names())
    assert set(results["attack_records"]["poscuda"]) == set(attacks.ATTACKS.names())
    for name in attacks.ATTACKS.names():  # one column, its name, unless after_training names variants
        if attacks.ATTACKS.get(name).after_training is attacks.Attack.after_training:
            assert [c for c in columns if c.split(" ")[0] == name] == [name]
    assert [c for c in columns if c.startswith("clean-finetune")] == ["clean-finetune 1%", "clean-finetune 5%"]
    estimate = results["attack_records"]["poscuda"]["filter-estimate"][0]["measured"]
    assert estimate["position_hit_rate"] is not None and estimate["filter_cosine_mean"] is not None
    assert results["worst_case"]["poscuda"]["accuracy"] == max(v["mean"] for v in results["accuracy"]["poscuda"].values())


def test_matrix_baselines_take_the_recipes_key_positions_and_snr():
    from defenses import build_defense
    from lab.attacking import defense_configs
    from lab.recipe import load_recipe
    rec = load_recipe(REPO / "recipes" / "fsdd_cnn.yaml", ["defense.patch_seconds=0.05"])
    none, pos, cuda, noise, classwise = defense_configs(rec, ["none", "poscuda", "cuda", "noise-patch",
                                                              "classwise-noise"], snr_db=18.834)
    assert pos is rec.defense and none.type == "none"
    assert noise.snr_db == classwise.snr_db == 18.83 and noise.patch_seconds == 0.05
    assert cuda.filter_length == rec.defense.filter_length and cuda.blur == rec.defense.blur
    y = __import__("torch").arange(10)
    p, n = build_defense(pos).derive(10, 8000), build_defense(noise).derive(10, 8000)
    assert (p.starts(y, 8000) == n.starts(y, 8000)).all()
    assert build_defense(cuda).derive(10, 8000).key_fingerprint == p.key_fingerprint


def test_defense_options_set_one_columns_field_and_bad_ones_fail_in_one_line():
    from lab.attacking import defense_configs
    from lab.errors import LabError
    from lab.recipe import load_recipe
    rec = load_recipe(REPO / "recipes" / "fsdd_cnn.yaml")
    names = ["none", "poscuda", "em-noise", "classwise-noise"]
    _, pos, em, classwise = defense_configs(rec, names, 6.731, ["em-noise.mode=class-wise", "em-noise.max_rounds=2"])
    assert pos is rec.defense
    assert (em.mode, em.max_rounds, em.snr_db) == ("class-wise", 2, 6.73)  # the matched SNR is kept
    assert classwise.snr_db == 6.73 and em.key.get_secret_value() == rec.defense.key.get_secret_value()
    assert defense_configs(rec, names, 6.731)[2].mode == "sample-wise"  # the default without the option
    for bad, says in [("cuda.blur=0.5", "one of the columns"), ("em-noise=3", "DEFENSE.FIELD=VALUE"),
                      ("poscuda.blur=0.5", "--set defense.blur"), ("em-noise.mode=both", "mode")]:
        with pytest.raises(LabError, match=says):
            defense_configs(rec, names, 6.731, [bad])


def test_a_defense_option_reaches_the_run_and_its_record(fsdd_dir, tmp_path):
    proc = lab("attack", R, "--type", "codec", "--defenses", "none,poscuda,classwise-noise", "--defense-option",
               "classwise-noise.span=audio", *TINY, "--out", str(tmp_path), env_root=fsdd_dir.parent)
    assert proc.returncode == 0, proc.stderr
    (run,) = list(tmp_path.glob("fsdd_cnn/attack-codec-*"))
    params = json.loads((run / "results.json").read_text())["defense_params"]["classwise-noise"]
    assert params["span"] == "audio" and params["key"] == "<redacted>" and params["snr_db"] > 0  # matched SNR kept
    assert "span=audio" in (run / "results.md").read_text()
    bad = lab("attack", R, "--type", "codec", "--defense-option", "cuda.blur=0.5", *TINY, "--out",
              str(tmp_path / "bad"), env_root=fsdd_dir.parent)
    assert bad.returncode != 0 and "one of the columns" in bad.stderr and not (tmp_path / "bad").exists()


def test_the_matrix_resumes_from_its_cells_and_two_jobs_give_the_same_numbers(fsdd_dir, tmp_path):
    """Cells (defense x seed) are kept as they finish: the same command after an interruption trains only what is
    missing; --jobs 2 trains cells in two processes and gives the same numbers (same train.num_threads)."""
    args = [R, "--type", "codec", "--defenses", "none,poscuda", *TINY, "--seeds", "0,1",
            "--set", "train.num_threads=1"]
    first = lab("attack", *args, "--out", str(tmp_path / "one"), env_root=fsdd_dir.parent)
    assert first.returncode == 0, first.stderr
    (cells,) = list((tmp_path / "one" / "fsdd_cnn" / "attack-cells").iterdir())
    files = sorted(cells.glob("*.json"))
    assert [f.name for f in files] == ["00-none-seed0.json", "00-none-seed1.json", "01-poscuda-seed0.json",
                                       "01-poscuda-seed1.json"]
    (run1,) = list((tmp_path / "one" / "fsdd_cnn").glob("attack-codec-*"))
    files[3].unlink()  # as if interrupted before the last cell finished
    again = lab("attack", *args, "--out", str(tmp_path / "one"), env_root=fsdd_dir.parent)
    assert again.returncode == 0, again.stderr
    assert " ".join(again.stdout.split()).count("finished earlier") == 3 and files[3].is_file()
    run2 = max((tmp_path / "one" / "fsdd_cnn").glob("attack-codec-*"))
    two = lab("attack", *args, "--out", str(tmp_path / "two"), "--jobs", "2", env_root=fsdd_dir.parent)
    assert two.returncode == 0, two.stderr
    assert "4 of 4 cells (defense x seed) to train, 2 at a time" in " ".join(two.stdout.split())
    (run3,) = list((tmp_path / "two" / "fsdd_cnn").glob("attack-codec-*"))
    acc = [json.loads((r / "results.json").read_text())["accuracy"] for r in (run1, run2, run3)]
    assert acc[0] == acc[1] == acc[2]


def tiny_attack(fsdd_dir, out: Path, types: str, defenses: str) -> dict:
    """results.json of a tiny one-thread ``lab attack`` of fsdd_cnn.yaml (which must succeed)."""
    proc = lab("attack", str(REPO / "recipes" / "fsdd_cnn.yaml"), "--type", types, "--defenses", defenses, *TINY,
               "--set", "train.num_threads=1", "--out", str(out), env_root=fsdd_dir.parent)
    assert proc.returncode == 0, proc.stderr
    (run,) = list(out.glob(f"fsdd_cnn/attack-{types.replace(',', '+')}-*"))
    return json.loads((run / "results.json").read_text())


def test_lab_attack_takes_an_optimised_defense_as_a_column(fsdd_dir, tmp_path):
    """em-noise is derived on the data (not from the key alone): lab attack checks its key at the door and
    optimises it when its column is built; noise at the recipe's SNR like the other noise baselines."""
    recipe = REPO / "recipes" / "fsdd_cnn.yaml"
    results = tiny_attack(fsdd_dir, tmp_path, "augment", "none,em-noise")
    assert results["defenses"] == ["none", "em-noise"]
    assert len(results["accuracy"]["em-noise"]["augment"]["values"]) == 1
    bad = lab("attack", str(recipe), "--type", "augment", "--defenses", "em-noise", *TINY, "--set",
              "defense.key=short", "--out", str(tmp_path / "bad"), env_root=fsdd_dir.parent)
    assert bad.returncode != 0 and "too short" in (bad.stdout + bad.stderr)
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").rglob("results.json"))


def test_type_takes_several_attacks(fsdd_dir, tmp_path):
    recipe = REPO / "recipes" / "fsdd_cnn.yaml"
    results = tiny_attack(fsdd_dir, tmp_path, "codec,augment", "none")
    assert results["attacks"] == ["codec", "augment"] and results["columns"] == ["no attack", "codec", "augment"]
    bad = lab("attack", str(recipe), "--type", "codec,nosuch", *TINY, env_root=fsdd_dir.parent)
    assert bad.returncode != 0 and "nosuch" in (bad.stdout + bad.stderr)


@pytest.mark.parametrize("cells_done, kept", [(0, False), (1, True)])
def test_a_failed_attack_run_keeps_its_folder_only_when_a_cell_finished(fsdd_dir, tmp_path, monkeypatch, cells_done,
                                                                        kept):
    """lab attack's run folder goes through the run-folder life cycle: INCOMPLETE while it runs; a failure after a
    finished cell keeps the folder marked INCOMPLETE (the reason and how far it got), before any cell removes it."""
    import lab.attacking.run as attack_run

    monkeypatch.setenv("LAB_DATA_DIR", str(fsdd_dir.parent))
    rec, blocks = load_attack_recipe(REPO / R, ["data.max_train_per_class=2", "data.max_test_per_class=1",
                                                f"output_dir={tmp_path}", "seeds=[0]"])

    def broken(datas, attacks, log, progress, cell_dir, jobs, state):
        run_dir = next((tmp_path / "fsdd_cnn").glob("attack-codec-*"))
        assert (run_dir / "INCOMPLETE").read_text().startswith("in progress")
        state.trained = cells_done
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(attack_run, "run_matrix", broken)
    plan = attack_run.AttackPlan(rec, R, "codec", attack_configs(["codec"], blocks, []), ["none", "poscuda"], [])
    with pytest.raises(RuntimeError, match="the disk went away"):
        attack_run.run_attack(plan, log=lambda s: None)
    runs = list((tmp_path / "fsdd_cnn").glob("attack-codec-*"))
    if not kept:
        assert runs == []
        return
    (run_dir,) = runs
    assert not (run_dir / "results.json").exists()
    assert (run_dir / "INCOMPLETE").read_text().splitlines()[0] == (
        "failed (RuntimeError: the disk went away): 1 of 2 cells (defense x seed) trained, stopped while training "
        "the cells")
