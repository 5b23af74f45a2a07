"""``lab rotate``: key rotation, one of PosCUDA's open questions, measured.

A data owner releases the same dataset twice under two keys (or two halves of it, one under each key), and a trainer
pools what was released. Per seed, five models of the recipe are trained, each scored on the clean test set:

- ``clean``: the clean training split (the ceiling);
- ``one-key``: everything protected under key A (what ``lab run`` measures);
- ``disjoint``: two releases with disjoint clips: half of each class under key A, the other half under key B;
- ``twice``: the same clips released under both keys, pooled (every clip twice: 2x the clips per epoch);
- ``twice-rebuilt``: the attacker who holds both versions of each clip differences them. Where they agree, both
  are the clean audio (a patch of one key is clean in the other version unless the two keys' patches overlap).
  Each stretch where they differ is cut into 50 ms windows, and each window is taken from the version that is
  rougher there (the ratio of first-difference energy to energy: PosCUDA's non-negative filter taps smooth); a
  model is trained on what that rebuilds. Where the two keys' patches overlap, neither version is clean.

The differencing is also scored against the truth (the protections' own patch spans, which the attacker does not
have): the share of patched samples it flags, the share of clips it rebuilds exactly, and the rebuilt audio's SNR.

Only defenses whose protection is ``file_by_file`` (derived from the key and a clip's label alone: PosCUDA, CUDA,
noise-patch, classwise-noise, ar-noise) can be released under two keys this way. The second key is the one in
``--second-key-file``, or one derived from the first (HMAC, domain-separated: as secret as the first). Neither key
is printed or written; results carry both fingerprints.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import time
from typing import Callable

import torch
from pydantic import SecretStr

from defenses import build_defense
from lab.errors import LabError
from lab.results import summarise
from lab.keys import fingerprint, resolve_key
from lab.quality import snr_summary
from lab.recipe import Recipe
from lab.spine import Clips, ExperimentData
from lab.train import evaluate, fit

SCENARIOS = ("clean", "one-key", "disjoint", "twice", "twice-rebuilt")
LABELS = {
    "clean": "clean training split",
    "one-key": "all clips under key A",
    "disjoint": "half of each class under key A, the other half under key B",
    "twice": "every clip under key A and under key B, pooled (2x clips)",
    "twice-rebuilt": "both versions differenced, the rougher version kept where they differ",
}
TEST_SETS = ("clean_test", "protected_test_a", "protected_test_b")


def derived_second_key(first: str) -> str:
    """A second key derived from the first (HMAC-SHA256, domain-separated): reproducible, and as secret as the
    first (whoever has the first can compute it)."""
    return hmac.new(first.encode(), b"lab-rotation/v1/release-2", hashlib.sha256).hexdigest()


def with_key(recipe: Recipe, key: str) -> Recipe:
    """The recipe with its defense under another (inline, in-memory) key."""
    defense = recipe.defense.model_copy(update={"key": SecretStr(key), "key_file": None})
    data = {name: getattr(recipe, name) for name in type(recipe).model_fields}
    data["defense"] = defense
    return type(recipe).model_validate(data)


def check_rotatable(recipe: Recipe) -> str:
    """The first key of a recipe whose defense can be released under two keys, or a LabError saying why not."""
    cfg = recipe.defense
    if not hasattr(cfg, "key"):
        raise LabError(f"lab rotate: defense {cfg.type!r} has no key to rotate; use one of the keyed file-by-file "
                       "defenses (poscuda, cuda, noise-patch, classwise-noise, ar-noise)")
    defense = build_defense(cfg)
    if defense.needs_training_set:
        raise LabError(f"lab rotate: defense {cfg.type!r} is optimised on the whole training set, so its two "
                       "releases cannot be split by clip; use a file-by-file defense (poscuda, cuda, noise-patch, "
                       "classwise-noise, ar-noise)")
    return resolve_key(getattr(cfg, "key", None), getattr(cfg, "key_file", None))


def halves(labels: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of two disjoint halves of a labelled set, each holding half of every class (a seeded shuffle per
    class; an odd class gives its extra clip to the first half)."""
    gen = torch.Generator().manual_seed(seed)
    first, second = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        cut = (len(idx) + 1) // 2
        first.append(idx[:cut])
        second.append(idx[cut:])
    return torch.sort(torch.cat(first)).values, torch.sort(torch.cat(second)).values


def _runs(mask: torch.Tensor, min_gap: int) -> list[tuple[int, int]]:
    """Maximal [start, end) stretches of True in a 1-D mask, merging stretches separated by fewer than
    ``min_gap`` False samples."""
    where = torch.nonzero(mask).flatten().tolist()
    if not where:
        return []
    out, start, last = [], where[0], where[0]
    for t in where[1:]:
        if t - last - 1 > min_gap:  # more than min_gap False samples between
            out.append((start, last + 1))
            start = t
        last = t
    out.append((start, last + 1))
    return out


def roughness(x: torch.Tensor) -> float:
    """First-difference energy over energy (higher: more high-frequency content); 0 for silence."""
    energy = float((x.double() ** 2).sum())
    if energy == 0.0 or len(x) < 2:
        return 0.0
    return float((torch.diff(x.double()) ** 2).sum()) / energy


def rebuild(a: torch.Tensor, b: torch.Tensor, window: int = 400, min_gap: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The differencing attack: from two versions (N, T) of the same clips, the rebuilt clips and the mask of
    samples where the versions differ. Where they agree the sample is kept. Each stretch where they differ
    (stretches closer than ``min_gap`` samples merged) is cut into windows of ``window`` samples, and each window is
    taken from the version that is rougher there. (Windows, not whole stretches: where the two keys' patches
    overlap, a stretch is one key's patch at one end and the other's at the other end.)"""
    if window < 2:
        raise LabError(f"rebuild: window must be at least 2 samples (got {window})")
    differ = a != b
    out = a.clone()
    for i in range(len(a)):
        for s, e in _runs(differ[i], min_gap):
            for w in range(s, e, window):
                we = min(e, w + window)
                if roughness(b[i, w:we]) > roughness(a[i, w:we]):
                    out[i, w:we] = b[i, w:we]
    return out, differ


def _patch_mask(protection, labels: torch.Tensor, total: int, lengths: torch.Tensor) -> torch.Tensor | None:
    """(N, T) True inside the protection's own patches, or None for a protection without patches."""
    spans = protection.patch_spans(labels, total, lengths)
    if spans is None:
        return None
    mask = torch.zeros(len(labels), total, dtype=torch.bool)
    for i, row in enumerate(spans):
        for s, e in row:
            mask[i, max(0, int(s)):min(total, int(e))] = True
    return mask


def pooled_snr_db(clean: torch.Tensor, other: torch.Tensor) -> float:
    """SNR (dB) of ``other`` against ``clean`` over the whole set: total clean energy over total error energy
    (inf when identical)."""
    noise = float(((other.double() - clean.double()) ** 2).sum())
    if noise == 0.0:
        return float("inf")
    return 10 * math.log10(float((clean.double() ** 2).sum()) / noise)


def differencing_stats(clean: Clips, a: torch.Tensor, b: torch.Tensor, rebuilt: torch.Tensor,
                       differ: torch.Tensor, prot_a, prot_b) -> dict:
    """How well differencing finds and removes the protection (scored against the truth the attacker lacks)."""
    total = clean.waveforms.shape[1]
    stats = {
        "clips": len(clean),
        "differing_samples_per_clip": float(differ.sum(dim=1).double().mean()),
        "clips_rebuilt_exactly": float((rebuilt == clean.waveforms).all(dim=1).double().mean()),
        "pooled_snr_db_key_a": pooled_snr_db(clean.waveforms, a),
        "pooled_snr_db_rebuilt": pooled_snr_db(clean.waveforms, rebuilt),
        # the lab's usual figure: mean per-clip SNR over the clips that differ at all (lab.quality, torchmetrics)
        "clip_snr_db_key_a": snr_summary(a, clean.waveforms)["snr_db_mean"],
        "clip_snr_db_rebuilt_not_exact": snr_summary(rebuilt, clean.waveforms)["snr_db_mean"],
    }
    ma = _patch_mask(prot_a, clean.labels, total, clean.lengths)
    mb = _patch_mask(prot_b, clean.labels, total, clean.lengths)
    if ma is not None and mb is not None:
        patched = ma | mb
        changed = (a != clean.waveforms) | (b != clean.waveforms)  # patched samples the filters actually moved
        stats["patched_samples_flagged"] = float((differ & changed).sum()) / max(1, int(changed.sum()))
        stats["flagged_samples_in_patches"] = float((differ & patched).sum()) / max(1, int(differ.sum()))
        stats["clips_with_overlapping_patches"] = float((ma & mb).any(dim=1).double().mean())
        stats["patched_samples_restored"] = float(((rebuilt == clean.waveforms) & changed).sum()) / max(
            1, int(changed.sum()))
    return stats


def rotate(recipe: Recipe, second_key: str | None = None, log: Callable[[str], None] = print,
           scenarios: tuple[str, ...] = SCENARIOS) -> dict:
    """Run the key-rotation experiment (see the module docstring) and return its results (no key in them)."""
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise LabError(f"lab rotate: unknown scenario {unknown[0]!r}; known: {', '.join(SCENARIOS)}")
    first = check_rotatable(recipe)
    second = second_key if second_key is not None else derived_second_key(first)
    if fingerprint(second) == fingerprint(first):
        raise LabError("lab rotate: the second key is the same as the first; give another --second-key-file")
    if recipe.train.num_threads:
        torch.set_num_threads(recipe.train.num_threads)
    start = time.perf_counter()
    data_a = ExperimentData(with_key(recipe, first), log=log)
    data_b = ExperimentData(with_key(recipe, second), log=log, dataset=data_a.dataset, cache=data_a.cache)
    clean = data_a.clean_train
    a, b = data_a.protected_train.waveforms, data_b.protected_train.waveforms
    first_half, second_half = halves(clean.labels, seed=0)
    rebuilt, differ = rebuild(a, b, window=max(2, round(0.05 * recipe.data.sample_rate)))
    stats = differencing_stats(clean, a, b, rebuilt, differ, data_a.protection, data_b.protection)
    log(f"differencing: {stats['differing_samples_per_clip']:.0f} differing samples per clip, "
        f"{stats['clips_rebuilt_exactly']:.3f} of clips rebuilt exactly, pooled SNR of the rebuilt clips "
        f"{stats['pooled_snr_db_rebuilt']:.1f} dB (key A's release {stats['pooled_snr_db_key_a']:.1f} dB)")
    disjoint = a.clone()
    disjoint[second_half] = b[second_half]
    training = {
        "clean": (clean.waveforms, clean.labels),
        "one-key": (a, clean.labels),
        "disjoint": (disjoint, clean.labels),
        "twice": (torch.cat([a, b]), torch.cat([clean.labels, clean.labels])),
        "twice-rebuilt": (rebuilt, clean.labels),
    }
    tests = {"clean_test": data_a.clean_test, "protected_test_a": data_a.protected_test,
             "protected_test_b": data_b.protected_test}
    feats = {name: data_a.features(clips) for name, clips in tests.items()}
    per_seed: dict[str, dict[str, list[float]]] = {s: {t: [] for t in TEST_SETS} for s in scenarios}
    histories: dict[str, list[list[float]]] = {s: [] for s in scenarios}
    for seed in recipe.seeds:
        for scenario in scenarios:
            waveforms, labels = training[scenario]
            log(f"seed {seed}: training on {scenario} ({len(labels)} clips)")
            fitted = fit(recipe, data_a.training((waveforms, labels), seed), data_a.num_classes, seed,
                         monitor=(feats["clean_test"], tests["clean_test"].labels), name=scenario)
            histories[scenario].append(fitted.monitored)
            for t in TEST_SETS:
                per_seed[scenario][t].append(
                    evaluate(fitted.module, recipe.train, feats[t], tests[t].labels)["accuracy"])
            log(f"seed {seed}: {scenario} -> clean test {per_seed[scenario]['clean_test'][-1]:.3f}")
    summary = {s: {t: summarise(per_seed[s][t]) for t in TEST_SETS} for s in scenarios}
    return {"scenarios": list(scenarios), "labels": {s: LABELS[s] for s in scenarios},
            "key_fingerprints": {"a": fingerprint(first), "b": fingerprint(second)},
            "second_key": "given" if second_key is not None else "derived from the first (HMAC)",
            "halves_seed": 0, "differencing": stats, "accuracy": summary, "per_seed": per_seed,
            "clean_test_history": histories, "wall_seconds": round(time.perf_counter() - start, 1)}


def markdown(results: dict) -> str:
    """results.md of a rotation run: provenance, the accuracy table, the differencing scores."""
    from lab.results import mean_std, provenance_line
    fp = results["key_fingerprints"]
    lines = [f"# Key rotation: {results.get('recipe_name')}", "", provenance_line(results), "",
             f"Key A fingerprint `{fp['a']}`, key B fingerprint `{fp['b']}` (key B {results['second_key']}).", "",
             "| training set | clean test | protected test (key A) | protected test (key B) |",
             "|---|---|---|---|"]
    for s in results["scenarios"]:
        acc = results["accuracy"][s]
        lines.append(f"| {s}: {results['labels'][s]} | " + " | ".join(mean_std(acc[t]) for t in TEST_SETS) + " |")
    lines += ["", "Differencing the two releases of every training clip (scored against the true patches):", ""]
    for name, value in results["differencing"].items():
        lines.append(f"- {name.replace('_', ' ')}: {value:.4g}" if isinstance(value, float) else
                     f"- {name.replace('_', ' ')}: {value}")
    return "\n".join(lines) + "\n"
