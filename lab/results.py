"""The one results writer's pieces, shared by ``lab run``, ``lab attack``, ``lab sweep`` and ``lab report``: a new
run folder that never overwrites another, the statistics over seeds and how they are written (:func:`stat`,
:func:`summarise`, :func:`mean_std`: the one place mean ± std is computed and formatted), and the provenance line
under every results.md title (seeds, recipe, commit, key fingerprint, versions, time)."""
from __future__ import annotations

import datetime as dt
import statistics
from pathlib import Path


def new_run_dir(base: Path, label: str = "") -> Path:
    """A new folder ``base/[label-]<timestamp>[-n]`` (created; an existing folder is never reused)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{label}-{stamp}" if label else stamp
    run_dir, n = Path(base) / name, 1
    while run_dir.exists():  # never overwrite an earlier run
        n += 1
        run_dir = Path(base) / f"{name}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir


def summarise(values) -> dict:
    """The summary over seeds that results files store: ``{"mean", "std", "n", "values"}`` (std 0.0 for one value,
    as results.json has always held it; :func:`mean_std` then prints no std)."""
    values = list(values)
    mean, std, n = stat(values)
    return {"mean": mean, "std": std, "n": n, "values": values}


def stat(values) -> tuple[float, float, int]:
    """``(mean, std, n)`` over seeds: THE computation (sample standard deviation; 0.0 for one value). ``values``: a
    list of numbers, or a summary ``{"mean", "std", "n"}`` as results.json stores it (read as stored)."""
    if isinstance(values, dict):
        return values["mean"], values.get("std", 0.0), values.get("n", 1)
    values = list(values)
    if not values:
        raise ValueError("no values to summarise")
    n = len(values)
    return statistics.fmean(values), (statistics.stdev(values) if n > 1 else 0.0), n


def mean_std(values, empty: str = "–", digits: int = 3, show_n: bool = True) -> str:
    """THE cell people read: ``mean ± std`` over seeds (``0.600 ± 0.141``), and for a single seed the mean alone
    with ``(n=1)``: one seed has no spread, and ``± 0.000`` would claim one. ``empty`` for no values. ``values``: as
    for :func:`stat`. ``show_n=False``: a table with its own n column (the single seed's mean then stands alone)."""
    if values is None or (not isinstance(values, dict) and not len(values)):
        return empty
    mean, std, n = stat(values)
    if n > 1:
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f} (n={n})" if show_n else f"{mean:.{digits}f}"


def stat_columns(values) -> list:
    """``[mean, std, n]`` as numbers for a CSV (the same :func:`stat`); std left empty for a single seed."""
    mean, std, n = stat(values)
    return [mean, std if n > 1 else "", n]


def provenance_line(results: dict) -> str:
    """What every number in a results file rests on, in one Markdown line: seeds, recipe (where there is one), git
    commit (dirty or not), key fingerprint (never the key), torch and lightning versions, time, and wall time where
    known."""
    prov = results.get("provenance", {})
    git, versions = prov.get("git", {}), prov.get("versions", {})
    parts = [f"Seeds {results['seeds']}"]
    if "recipe_path" in results:  # results made without a recipe file (lab audit) have none to name
        parts.append(f"recipe `{results['recipe_path']}`")
    parts.append(f"commit `{git.get('commit')}`{' (dirty)' if git.get('dirty') else ''}")
    if results.get("key_fingerprint"):
        parts.append(f"key fingerprint `{results['key_fingerprint']}`")
    parts += [f"torch {versions.get('torch')}, lightning {versions.get('lightning')}", str(prov.get("time_utc"))]
    if results.get("wall_seconds") is not None:
        parts.append(f"{results['wall_seconds']} s")
    return " · ".join(parts)


# ---- what a reader may conclude: the too-small warning and the verdict (README, "The verdict") ----------------------

LEARNABLE = 0.75  # the protected-trained model keeps at least this much of the clean model's margin over chance
UNLEARNABLE = 0.25  # ... at most this much


def too_small_bar(chance: float) -> float:
    """The clean-test accuracy the clean-trained model must reach for a run to say anything: halfway from chance to
    perfect (0.55 for ten classes). Below it the task itself was not learned (too few clips or epochs), so a low
    protected-trained accuracy would show nothing about the protection."""
    return chance + 0.5 * (1.0 - chance)


def too_small_warning(clean, chance: float) -> str | None:
    """One line when the clean-trained model's clean-test accuracy (``clean``: values or a summary) is below
    :func:`too_small_bar`; None otherwise."""
    mean, bar = stat(clean)[0], too_small_bar(chance)
    if mean >= bar:
        return None
    return (f"the clean-trained model reaches only {mean:.3f} on clean test (chance {chance:.2f}; a run says "
            f"something from {bar:.2f}, halfway from chance to perfect): this setting is too small to say anything "
            "about the protection; train longer or on more clips")


def verdict(name: str, protected, clean, chance: float) -> str:
    """The one-line verdict on a protection. ``protected``: the clean-test accuracy of the model trained on the
    protected data (values or a summary); ``clean``: that of the model trained on clean data. The fraction of the
    clean model's margin over chance that the protected-trained model keeps, (protected - chance) / (clean -
    chance), decides: at most 25% unlearnable, at least 75% learnable, in between partly learnable. A clean model
    below :func:`too_small_bar` makes it inconclusive."""
    p, c = stat(protected)[0], stat(clean)[0]
    head = (f"{name}: protected-trained clean-test {mean_std(protected)} against {mean_std(clean)} clean "
            f"(chance {chance:.2f})")
    if c < too_small_bar(chance):
        return f"{head}: inconclusive (the clean-trained model is near chance: the setting is too small)"
    kept = (p - chance) / (c - chance)
    word = "unlearnable" if kept <= UNLEARNABLE else "learnable" if kept >= LEARNABLE else "partly learnable"
    share = ("it is at or below chance" if p <= chance
             else f"it keeps {kept:.0%} of the clean model's margin over chance")
    return f"{head}: {word} ({share})"
