"""The regression check: directions, tolerances from measured spread, and negative controls (changes the check
must catch: CI runs them for real, see .ci/run)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lab.cli import app
from lab.errors import LabError
from lab.regress import calibrate, check_baseline_file, compare, values

REPO = Path(__file__).resolve().parents[2]


def results(per_seed_acc: dict[int, tuple[float, float, float]], snr: float = 20.0) -> dict:
    per_seed = [{"seed": s, "clean_model": {"clean_test": {"accuracy": c}},
                 "protected_model": {"clean_test": {"accuracy": p}, "mixed_test": {"accuracy": m}}}
                for s, (c, p, m) in per_seed_acc.items()]
    return {"seeds": list(per_seed_acc), "per_seed": per_seed,
            "quality": {"protected_train_vs_clean": {"snr_db_mean": snr}}}


def test_calibrate_uses_checked_seeds_and_spread():
    calib = results({0: (0.97, 0.30, 0.5), 1: (0.95, 0.40, 0.6), 2: (0.96, 0.20, 0.4), 3: (0.96, 0.50, 0.7)})
    base = calibrate(calib, [0, 1])
    assert base["protected_model/clean_test"]["value"] == pytest.approx(0.35)
    import statistics
    sd = statistics.stdev([0.30, 0.40, 0.20, 0.50])
    assert base["protected_model/clean_test"]["tolerance"] == pytest.approx(3 * sd / 2 ** 0.5, abs=1e-4)
    assert base["clean_model/clean_test"]["tolerance"] >= 0.01
    assert base["snr_db"]["tolerance"] == pytest.approx(1.0)
    with pytest.raises(LabError, match="must include the checked seeds"):
        calibrate(calib, [0, 9])


def test_compare_directions():
    base = {"protected_model/clean_test": {"value": 0.3, "tolerance": 0.05, "bad": "rise"},
            "clean_model/clean_test": {"value": 0.96, "tolerance": 0.02, "bad": "fall"}}
    ok = compare({"protected_model/clean_test": 0.34, "clean_model/clean_test": 0.99}, base)
    assert all(c.ok for c in ok)
    bad = compare({"protected_model/clean_test": 0.36, "clean_model/clean_test": 0.93}, base)
    assert [c.ok for c in bad] == [False, False]
    better = compare({"protected_model/clean_test": 0.10, "clean_model/clean_test": 0.999}, base)
    assert all(c.ok for c in better)  # improvements never fail
    missing = compare({"clean_model/clean_test": 0.96}, base)
    assert not missing[0].ok and missing[0].value is None


def test_values_and_bad_baseline_file():
    v = values(results({0: (0.9, 0.3, 0.5), 1: (1.0, 0.5, 0.7)}))
    assert v["clean_model/clean_test"] == pytest.approx(0.95) and v["snr_db"] == 20.0
    with pytest.raises(LabError, match="not a regression baseline"):
        check_baseline_file({"oops": 1}, "b.json")
    with pytest.raises(LabError, match="needs value, tolerance and bad"):
        check_baseline_file({"metrics": {"x": {"value": 1, "bad": "up"}}}, "b.json")


def test_shipped_baseline_is_valid_and_matches_recipe():
    data = json.loads((REPO / "tests" / "regression" / "baseline.json").read_text())
    check_baseline_file(data, "baseline.json")
    assert data["recipe"] == "recipes/ci_regression.yaml"
    assert set(data["checked_seeds"]) <= set(data["calibration_seeds"])
    for name in ("clean_model/clean_test", "protected_model/clean_test", "protected_model/mixed_test", "snr_db"):
        assert name in data["metrics"]


def as_baseline_run(shipped: dict) -> dict:
    """A results.json whose every metric equals the shipped baseline's value, on the baseline's checked seeds."""
    m = {k: v["value"] for k, v in shipped["metrics"].items()}
    run = results({s: (m["clean_model/clean_test"], m["protected_model/clean_test"], m["protected_model/mixed_test"])
                   for s in shipped["checked_seeds"]}, snr=m["snr_db"])
    run["quality"]["fad"] = {"value": m["fad"]}
    return run


@pytest.mark.parametrize("control, per_seed, caught", [
    ("defense.blur=0", [0.97, 0.96, 0.975], True),  # what blur 0 gives: as learnable as clean audio
    ("defense.blur=0.31", [0.88, 0.89, 0.87], False),  # a change the check cannot see: it must say so, exit 1
    ("defense.blur=0; seeds=[0]", [0.97], True),  # several changes of one control: here, one seed only
])
def test_a_negative_control_must_be_caught(control, per_seed, caught, tmp_path, monkeypatch):
    """``lab regress --negative-control CHANGE`` trains the changed recipe's protected models (the clean ones are
    the main run's) and exits 1 unless the check catches the change: CI runs it with defense.blur=0 on the
    regression and with no defense at all on the positive control (.ci/run), so every CI run shows the check can
    fail. Here the training is replaced by fixed numbers; the real runs are CI's."""
    import lab.experiment
    import lab.regress
    shipped = json.loads((REPO / "tests" / "regression" / "baseline.json").read_text())
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(lab.experiment, "run", lambda rec, name, log=print: (as_baseline_run(shipped), tmp_path))
    trained = []

    def fake_control(recipe, seeds, log):
        trained.append((recipe.defense.blur, list(seeds)))
        return per_seed
    monkeypatch.setattr(lab.regress, "negative_control", fake_control)
    result = CliRunner().invoke(app, ["regress", "recipes/ci_regression.yaml", "--baseline",
                                      "tests/regression/baseline.json", "--negative-control", control])
    assert result.exit_code == (0 if caught else 1), result.output
    blur = float(control.split(";")[0].split("=")[1])
    assert trained == [(blur, [0] if "seeds" in control else shipped["checked_seeds"])]
    report = json.loads((tmp_path / "regress.json").read_text())
    assert all(c["ok"] for c in report["checks"])  # the main run itself matches the baseline
    (control_report,) = report["negative_controls"]
    assert control_report["caught"] is caught and control_report["per_seed"] == per_seed
    assert ("NOT caught" in result.output) is not caught


def test_a_negative_control_that_is_not_a_valid_recipe_fails_before_any_run(tmp_path, monkeypatch):
    import lab.experiment
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(lab.experiment, "run", lambda *a, **k: pytest.fail("trained before checking the control"))
    result = CliRunner().invoke(app, ["regress", "recipes/ci_regression.yaml", "--baseline",
                                      "tests/regression/baseline.json", "--negative-control", "defense.blurr=0"])
    assert isinstance(result.exception, LabError) and "unknown field 'blurr'" in str(result.exception)


def test_shipped_positive_control_baseline_sees_a_large_effect():
    """The positive control is only worth its CI minutes if its protection's effect is many tolerances wide."""
    data = json.loads((REPO / "tests" / "regression" / "positive_control.json").read_text())
    check_baseline_file(data, "positive_control.json")
    assert data["recipe"] == "recipes/ci_positive_control.yaml"
    m = data["metrics"]
    effect = m["clean_model/clean_test"]["value"] - m["protected_model/clean_test"]["value"]
    assert effect > 5 * m["protected_model/clean_test"]["tolerance"], (effect, m["protected_model/clean_test"])
