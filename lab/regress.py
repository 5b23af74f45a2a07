"""Regression of unlearnability: compare a run's metrics with a stored baseline, each in the direction that matters.

| metric | a regression is |
|---|---|
| clean-trained model, clean test accuracy | a FALL (the lab got worse at learning the task itself) |
| protected-trained model, clean test accuracy | a RISE (the protected data became learnable) |
| protected-trained model, mixed-position test accuracy | a RISE (the model relies less on the positional shortcut) |
| SNR of protected vs clean training audio | a FALL (the protection became louder) |
| FAD of protected vs clean training audio (when the run has it) | a RISE (the protection became audibly worse) |

Tolerances come from measurement (``calibrate``): the recipe is run over several calibration seeds, and each
metric's tolerance is 3 standard deviations of a mean over the recipe's seeds (3 sigma / sqrt(n)), with a floor. A
harmless change that reshuffles random streams behaves like drawing new seeds, so it stays inside the tolerance; a
change that really weakens the protection moves the metric further than that.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable

from lab.errors import LabError


@dataclass(frozen=True)
class Metric:
    name: str
    bad: str  # "rise" or "fall"
    floor: float  # smallest tolerance (measurement resolution)
    per_seed: Callable[[dict], list[float] | None]  # values per seed from results.json
    description: str


def _acc(model: str, test: str) -> Callable[[dict], list[float]]:
    return lambda r: [e[model][test]["accuracy"] for e in r["per_seed"]]


def _quality(key: str, field: str) -> Callable[[dict], list[float] | None]:
    def get(r: dict) -> list[float] | None:
        section = r.get("quality", {}).get(key)
        return [float(section[field])] if section and section.get(field) is not None else None
    return get


METRICS = [
    Metric("clean_model/clean_test", "fall", 0.01, _acc("clean_model", "clean_test"),
           "clean-trained model, clean test accuracy"),
    Metric("protected_model/clean_test", "rise", 0.01, _acc("protected_model", "clean_test"),
           "protected-trained model, clean test accuracy (unlearnability)"),
    Metric("protected_model/mixed_test", "rise", 0.01, _acc("protected_model", "mixed_test"),
           "protected-trained model, positions mixed between classes"),
    Metric("snr_db", "fall", 0.1, _quality("protected_train_vs_clean", "snr_db_mean"),
           "SNR of protected vs clean training audio (dB)"),
    Metric("fad", "rise", 0.0, _quality("fad", "value"), "FAD of protected vs clean training audio"),
]


def values(results: dict) -> dict[str, float]:
    """The run's value of each metric (mean over its seeds), for the metrics the run has."""
    out = {}
    for m in METRICS:
        v = m.per_seed(results)
        if v:
            out[m.name] = statistics.fmean(v)
    return out


def calibrate(results: dict, check_seeds: list[int]) -> dict:
    """A baseline from a calibration run over several seeds (which include ``check_seeds``, the seeds the check
    runs): each metric's value is its mean over ``check_seeds`` (so an unchanged lab reproduces it), and its tolerance
    3 * std / sqrt(len(check_seeds)) from the spread over all calibration seeds (per-seed metrics), or a fixed
    relative margin (dataset-level metrics, which do not vary with the training seed)."""
    baseline = {}
    n_check_seeds = len(check_seeds)
    for m in METRICS:
        v = m.per_seed(results)
        if not v:
            continue
        checked = v
        if len(v) == len(results["per_seed"]):
            checked = [x for x, e in zip(v, results["per_seed"]) if e["seed"] in check_seeds]
            if len(checked) != n_check_seeds:
                raise LabError(f"calibration seeds {results['seeds']} must include the checked seeds {check_seeds}")
        if len(v) > 1:
            sd = statistics.stdev(v)
            tol = max(m.floor, 3 * sd / math.sqrt(n_check_seeds))
            how = (f"3 x std over {len(v)} calibration seeds ({sd:.4f}) / sqrt({n_check_seeds} checked seeds), "
                   f"floor {m.floor}")
        else:  # the protection and its audio do not depend on the training seed: only code changes move them
            tol = max(m.floor, 0.05 * abs(v[0]))
            how = f"5% of the value, floor {m.floor} (deterministic given the key; no seed spread to measure)"
        baseline[m.name] = {"value": statistics.fmean(checked), "bad": m.bad, "tolerance": round(tol, 4),
                            "how": how, "description": m.description}
    return baseline


@dataclass
class Check:
    name: str
    baseline: float
    value: float | None
    tolerance: float
    bad: str
    ok: bool
    delta: float | None


def compare(current: dict[str, float], baseline: dict) -> list[Check]:
    checks = []
    for name, ref in baseline.items():
        value = current.get(name)
        if value is None:
            checks.append(Check(name, ref["value"], None, ref["tolerance"], ref["bad"], False, None))
            continue
        delta = value - ref["value"]
        worse = delta if ref["bad"] == "rise" else -delta
        checks.append(Check(name, ref["value"], value, ref["tolerance"], ref["bad"], worse <= ref["tolerance"], delta))
    return checks


def check_baseline_file(data: dict, path: str) -> dict:
    if not isinstance(data, dict) or "metrics" not in data or not isinstance(data["metrics"], dict):
        raise LabError(f"{path}: not a regression baseline (expected a 'metrics' mapping); create one with "
                       f"`lab regress RECIPE --update`")
    for name, ref in data["metrics"].items():
        if not {"value", "tolerance", "bad"} <= set(ref) or ref["bad"] not in ("rise", "fall"):
            raise LabError(f"{path}: metric {name!r} needs value, tolerance and bad (rise|fall)")
    return data


NEGATIVE_METRIC = "protected_model/clean_test"


def negative_control(recipe, seeds: list[int], log: Callable[[str], None]) -> list[float]:
    """Protected-trained clean-test accuracy, per seed, of ``recipe`` (the regression recipe changed so that it
    SHOULD fail: a weakened protection, or none at all). Only the protected models are trained (the lab's one
    training path, as a ``lab attack`` cell with no attack); the clean models are the main run's."""
    from lab.attacking.cell import NO_ATTACK, run_cell
    from lab.spine import ExperimentData
    data = ExperimentData(recipe, log=log)
    return [run_cell(data, [], seed, log=log)["values"][NO_ATTACK] for seed in seeds]


def caught(per_seed: list[float], baseline: dict) -> Check:
    """The negative control's check on :data:`NEGATIVE_METRIC` against the baseline: ``ok`` False means the
    regression check catches it (what a negative control must show)."""
    return compare({NEGATIVE_METRIC: statistics.fmean(per_seed)}, {NEGATIVE_METRIC: baseline[NEGATIVE_METRIC]})[0]
