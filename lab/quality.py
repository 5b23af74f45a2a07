"""Quality of protected audio against the clean original: per-clip metrics and FAD (the ``quality`` section of
``lab run`` results).

Per clip (protected clip against its own clean original): SNR and SI-SNR (torchmetrics) over the clips the protection
changed; PESQ (narrow-band at 8 kHz, wide-band at 16 kHz; the ``pesq`` package), STOI and ESTOI (``pystoi``) over
at most PERCEPTUAL_CLIPS clips drawn with SPLIT_SEED, each with the clips it does not apply to counted, never
averaged. Each as mean and worst 5% (the 5th percentile). FAD (lab.fad): protected vs clean training audio, beside the clean floor (FAD
between two disjoint random halves of the clean training audio) and the protected half vs the other clean half (the
same sizes as the floor, so the two are directly comparable), each with a bootstrap confidence interval, for every
backend in DEFAULT_BACKENDS that can run.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import torch
from torchmetrics.functional.audio import scale_invariant_signal_noise_ratio, signal_noise_ratio

from lab.errors import LabError
from lab.fad import build_backend, fad
from lab.fad.compare import one_blas_thread

DEFAULT_BACKENDS = ("logmel", "classifier")  # offline backends run by `lab run`
HEADLINE = "logmel"        # its numbers head the section (reports, sweeps): model-independent and deterministic
BOOTSTRAP = 100            # resamples per FAD confidence interval
LEVEL = 0.95               # confidence level
SPLIT_SEED = 0             # seed of the random halves (floor) and of the bootstrap
PERCEPTUAL_CLIPS = 500     # PESQ/STOI/ESTOI cost ~12 ms of CPU a clip: at most this many, drawn with SPLIT_SEED


def summary(values: torch.Tensor, name: str) -> dict:
    """Mean and worst 5% (5th percentile) of per-clip ``values`` (higher is better)."""
    values = values.double().flatten()
    if values.numel() == 0:
        return {f"{name}_mean": None, f"{name}_worst5": None}
    return {f"{name}_mean": float(values.mean()), f"{name}_worst5": float(torch.quantile(values, 0.05))}


def _changed(protected: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    return (protected != clean).any(dim=1)


def snr_summary(protected: torch.Tensor, clean: torch.Tensor) -> dict:
    """SNR (dB, torchmetrics) of each protected clip against its clean original: mean and the worst 5% (5th
    percentile) over the clips the protection changed; clips left unchanged (infinite SNR) are counted, not
    averaged."""
    changed = _changed(protected, clean)
    out = summary(signal_noise_ratio(protected[changed], clean[changed]), "snr_db") if changed.any() else \
        {"snr_db_mean": float("inf"), "snr_db_worst5": float("inf")}
    return {**out, "unchanged_clips": int((~changed).sum())}


def sisnr_summary(protected: torch.Tensor, clean: torch.Tensor) -> dict:
    """Scale-invariant SNR (dB, torchmetrics) of each changed protected clip against its clean original, as
    :func:`snr_summary`."""
    changed = _changed(protected, clean)
    if not changed.any():
        return {"si_snr_db_mean": float("inf"), "si_snr_db_worst5": float("inf")}
    return summary(scale_invariant_signal_noise_ratio(protected[changed], clean[changed]), "si_snr_db")


def real_lengths(waveforms: torch.Tensor) -> torch.Tensor:
    """Samples up to and including the last non-zero one of each clip (the rest is padding), at least 1."""
    nonzero = waveforms != 0
    last = waveforms.shape[1] - 1 - nonzero.flip(1).int().argmax(dim=1)
    return torch.where(nonzero.any(dim=1), last + 1, torch.ones_like(last))


# ---- perceptual metrics: PESQ (ITU-T P.862), STOI and ESTOI, per clip against the clean original ----

PESQ_NOT_APPLICABLE = {-6: "shorter than PESQ's 0.25 s", -7: "no speech found by PESQ"}  # pesq's error values
STOI_NOT_APPLICABLE = "under STOI's 30 frames of speech (about 0.4 s after silence removal)"


def scoring_rate(sample_rate: int) -> tuple[int, str]:
    """The rate the perceptual metrics run at and PESQ's mode: narrow-band at 8 kHz, wide-band at 16 kHz; audio at
    another rate is resampled to 16 kHz (wide-band) from 16 kHz up, to 8 kHz (narrow-band) below."""
    return (16000, "wb") if sample_rate >= 16000 else (8000, "nb")


def pick_clips(n: int, clips: int = PERCEPTUAL_CLIPS, seed: int = SPLIT_SEED) -> torch.Tensor:
    """Indices of the clips scored, in order: all ``n`` when there are at most ``clips``, else ``clips`` drawn
    without replacement by a generator seeded with ``seed`` (the same clips for every protection of one dataset)."""
    if n <= clips:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:clips].sort().values


def selection(scored: int, total: int, clips: int, seed: int) -> dict:
    """How a perceptual section chose its clips (recorded beside its metrics)."""
    how = "all clips (at most max_clips)" if scored == total else \
        f"a fixed subset of max_clips clips, drawn with seed {seed} (the same clips for every protection)"
    return {"clips_scored": scored, "clips_total": total, "max_clips": clips, "seed": seed, "selection": how}


def metric_summary(scores, reasons: list) -> dict:
    """Mean and worst 5% (5th percentile) of the scores of the clips a metric applies to (``reasons[i]`` is None),
    their number ``n``, and the clips it does not apply to: ``n_not_applicable`` and the count per reason. Scores of
    clips it does not apply to are never averaged."""
    scores = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    ok = torch.tensor([r is None for r in reasons], dtype=torch.bool)
    why: dict = {}
    for r in reasons:
        if r is not None:
            why[r] = why.get(r, 0) + 1
    values = scores[ok]
    return {"mean": float(values.mean()) if len(values) else None,
            "worst5": float(torch.quantile(values, 0.05)) if len(values) else None,
            "n": int(ok.sum()), "n_not_applicable": int((~ok).sum()), "not_applicable": why}


def _pesq_scores(pairs, rate: int, mode: str, advance):
    from pesq import PesqError, pesq
    scores, reasons = [], []
    for clean, protected in pairs:
        advance(1)
        value, reason = float("nan"), "silent clean clip"
        if np.any(clean):
            value = float(pesq(rate, clean, protected, mode, on_error=PesqError.RETURN_VALUES))
            # pesq returns a negative error code (not a score: MOS-LQO starts at 1) for a clip it cannot score
            reason = "not finite" if not np.isfinite(value) else \
                PESQ_NOT_APPLICABLE.get(int(value), f"PESQ error {int(value)}") if value < 0 else None
        scores.append(value)
        reasons.append(reason)
    return scores, reasons


def _stoi_scores(pairs, rate: int, extended: bool, advance):
    from pystoi import stoi
    scores, reasons = [], []
    for clean, protected in pairs:
        advance(1)
        value, reason = float("nan"), "silent clean clip"
        if np.any(clean):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                value = float(stoi(clean, protected, rate, extended=extended))
            # pystoi warns, and returns 1e-5, for a clip with under 30 frames of speech: a placeholder, not a score
            short = any("Not enough STFT frames" in str(w.message) for w in caught)
            reason = STOI_NOT_APPLICABLE if short else None if np.isfinite(value) else "not finite"
        scores.append(value)
        reasons.append(reason)
    return scores, reasons


def score_pairs(pairs: list, rate: int, advance=lambda n: None) -> dict:
    """PESQ (narrow-band at 8 kHz, wide-band at 16 kHz), STOI and ESTOI of each (clean, protected) pair of float64
    arrays of one length at ``rate``, summarised by :func:`metric_summary`, each with the seconds it took;
    ``advance(1)`` before each clip's score (3 per pair)."""
    mode = {8000: "nb", 16000: "wb"}.get(rate)
    if mode is None:
        raise LabError(f"perceptual metrics run at 8000 Hz (PESQ narrow-band) or 16000 Hz (wide-band); got {rate} Hz")
    out = {}
    for name, score in (("pesq", lambda: _pesq_scores(pairs, rate, mode, advance)),
                        ("stoi", lambda: _stoi_scores(pairs, rate, False, advance)),
                        ("estoi", lambda: _stoi_scores(pairs, rate, True, advance))):
        started = time.perf_counter()
        out[name] = metric_summary(*score())
        out[name]["seconds"] = round(time.perf_counter() - started, 3)
    out["pesq"]["mode"] = mode
    return out


def perceptual(protected: torch.Tensor, clean: torch.Tensor, sample_rate: int, clips: int = PERCEPTUAL_CLIPS,
               seed: int = SPLIT_SEED) -> dict:
    """PESQ, STOI and ESTOI of protected clips against their clean originals (N, T), on the clips of
    :func:`pick_clips`, each trimmed to its clean clip's real length (:func:`real_lengths`), at
    the rate of :func:`scoring_rate` (resampled when the audio's rate differs). Clips the protection left unchanged
    are scored like the others (a listener hears them too) and counted."""
    pick = pick_clips(len(clean), clips, seed)
    lengths = real_lengths(clean[pick])
    rate, _ = scoring_rate(sample_rate)
    clean_p, prot_p = clean[pick], protected[pick]
    if rate != sample_rate:
        import torchaudio.functional as AF
        clean_p, prot_p = AF.resample(clean_p, sample_rate, rate), AF.resample(prot_p, sample_rate, rate)
        lengths = torch.ceil(lengths * rate / sample_rate).long().clamp(max=clean_p.shape[1])
    pairs = [(c[:n].double().numpy(), p[:n].double().numpy()) for c, p, n in zip(clean_p, prot_p, lengths.tolist())]
    return {**selection(len(pick), len(clean), clips, seed), "sample_rate": rate, "source_sample_rate": sample_rate,
            "unchanged_clips": int((~_changed(protected[pick], clean[pick])).sum()),
            "metrics": score_pairs(pairs, rate)}


def perceptual_metrics(quality: dict) -> dict:
    """The perceptual metrics of a quality section as ``{name: {"mean", "worst5", "n", "n_not_applicable", ...}}``;
    sections written before ESTOI (``perceptual.stoi.stoi_mean``, ``too_short_clips``, ``failed_clips``) read
    the same way, and a metric that was not measured is left out."""
    section = (quality or {}).get("perceptual") or {}
    if "metrics" in section:
        return {k: v for k, v in section["metrics"].items() if isinstance(v, dict)}
    out = {}
    for name, missed in (("stoi", "too_short_clips"), ("pesq", "failed_clips")):
        old = section.get(name) or {}
        if f"{name}_mean" in old:
            out[name] = {"mean": old[f"{name}_mean"], "worst5": old[f"{name}_worst5"], "n": old.get("clips"),
                         "n_not_applicable": old.get(missed), **({"mode": old["mode"]} if "mode" in old else {})}
    return out


def selection_text(section: dict, unit: str = "clips") -> str:
    """``500 of 2700 clips, drawn with seed 0`` or ``all 300 clips``: which clips a perceptual section scored."""
    n, total = section.get("clips_scored", "?"), section.get("clips_total", "?")
    return f"all {total} {unit}" if n == total else f"{n} of {total} {unit}, drawn with seed {section.get('seed')}"


def metric_label(name: str, entry: dict) -> str:
    """``PESQ (nb)``, ``STOI``, ``ESTOI``."""
    return f"PESQ ({entry['mode']})" if name == "pesq" and entry.get("mode") else name.upper()


def metric_cell(entry: dict) -> str:
    """``3.51 / 2.61 (nb, 479 clips, 21 n/a)``: mean / worst 5%, PESQ's mode, clips scored and clips the metric
    does not apply to."""
    counts = f"{entry.get('n')} clips, {entry.get('n_not_applicable')} n/a"
    counts = f"{entry['mode']}, {counts}" if entry.get("mode") else counts
    if entry.get("mean") is None:
        return f"– ({counts})"
    return f"{entry['mean']:.2f} / {entry['worst5']:.2f} ({counts})"


def perceptual_lines(quality: dict) -> list[str]:
    """The perceptual table of results.md: per metric mean, worst 5%, clips scored and why the others were not."""
    section, metrics = (quality or {}).get("perceptual") or {}, perceptual_metrics(quality)
    if not metrics:
        return []
    head = (f"Perceptual metrics against the clean original ({selection_text(section)}, at "
            f"{section.get('sample_rate', '?')} Hz, each trimmed to the clean clip's real length; "
            f"{section.get('unchanged_clips', '?')} of them left unchanged by the protection):")
    lines = [head, "", "| metric | mean | worst 5% | clips scored | not applicable |", "|---|---|---|---|---|"]
    for name, e in metrics.items():
        why = "; ".join(f"{n} {r}" for r, n in (e.get("not_applicable") or {}).items()) or e.get("n_not_applicable")
        mean, worst = (f"{e[k]:.3f}" if e.get(k) is not None else "–" for k in ("mean", "worst5"))
        lines.append(f"| {metric_label(name, e)} | {mean} | {worst} | {e.get('n')} | {why} |")
    return lines + [""]


def fad_section(backend, clean: torch.Tensor, protected: torch.Tensor, sample_rate: int) -> dict:
    """Protected vs clean FAD, the clean floor and protected half vs clean half, with bootstrap CIs."""
    lengths = real_lengths(clean)
    backend.prepare(clean, sample_rate, lengths)
    emb_clean = backend.embed(clean, sample_rate, lengths)
    emb_prot = backend.embed(protected, sample_rate, lengths)
    gen = torch.Generator().manual_seed(SPLIT_SEED)
    order = torch.randperm(len(clean), generator=gen).numpy()
    half_a, half_b = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])
    kw = dict(bootstrap=BOOTSTRAP, level=LEVEL, seed=SPLIT_SEED)
    return {
        **backend.info(),
        "protected_vs_clean": fad(emb_prot, emb_clean, paired=True, **kw),
        "clean_floor": fad(emb_clean.subset(half_b), emb_clean.subset(half_a), **kw),
        "protected_half_vs_clean_half": fad(emb_prot.subset(half_b), emb_clean.subset(half_a), **kw),
    }


def headline(backends: dict) -> dict:
    """The FAD section: the HEADLINE backend's numbers at the top (``value`` = protected vs clean, ``ci``, ``floor``
    = clean floor, ``floor_ci``, and ``same_size_value``/``same_size_ci`` = protected half vs clean half, the one to
    set against the floor), every backend's full record under ``backends``."""
    out: dict = {"backend": None, "backends": backends}
    main = backends.get(HEADLINE)
    if main and "skipped" not in main:
        pick = lambda e: (e["fad"], [e["ci_low"], e["ci_high"]] if "ci_low" in e else None)
        out["backend"] = HEADLINE
        out["value"], out["ci"] = pick(main["protected_vs_clean"])
        out["floor"], out["floor_ci"] = pick(main["clean_floor"])
        out["same_size_value"], out["same_size_ci"] = pick(main["protected_half_vs_clean_half"])
    return out


@one_blas_thread
def assess(recipe, clean, protected, clean_module=None) -> dict:
    """The quality section of ``lab run`` results: how far the protected training audio is from the clean one.
    ``clean`` and ``protected`` are the training split before and after protection (lab.spine.Clips, or waveforms
    (N, T)); ``clean_module`` is a clean-trained model (for in-domain embeddings; without it the classifier backend
    is skipped and says so)."""
    clean = getattr(clean, "waveforms", clean)
    protected = getattr(protected, "waveforms", protected)
    sr = recipe.data.sample_rate
    started, cpu = time.perf_counter(), time.process_time()
    per_clip = {**snr_summary(protected, clean), **sisnr_summary(protected, clean)}
    backends: dict = {}
    out = {"protected_train_vs_clean": per_clip, "perceptual": perceptual(protected, clean, sr), "fad": {},
           "settings": {"bootstrap": BOOTSTRAP, "level": LEVEL, "seed": SPLIT_SEED,
                        "perceptual_clips": PERCEPTUAL_CLIPS, "perceptual_seed": SPLIT_SEED,
                        "backends": list(DEFAULT_BACKENDS)}}
    for name in DEFAULT_BACKENDS:
        try:
            context = dict(module=clean_module, features=recipe.features, sample_rate=sr) \
                if name == "classifier" else {}
            if name == "classifier" and clean_module is None:
                raise LabError("no clean-trained model was given")
            backends[name] = fad_section(build_backend(name, **context), clean, protected, sr)
        except LabError as e:
            backends[name] = {"backend": name, "skipped": str(e)}
    out["fad"] = headline(backends)
    out["seconds"] = round(time.perf_counter() - started, 2)
    out["cpu_seconds"] = round(time.process_time() - cpu, 2)  # all threads; less sensitive to a busy machine
    return out


# ---- how the quality section is shown (results.md and the `lab run` terminal table) ----

FAD_COLUMNS = ("protected vs clean (all clips, paired)", "protected half vs other clean half",
               "clean floor (half vs half)")


def _with_ci(entry: dict) -> str:
    if "ci_low" not in entry:
        return f"{entry['fad']:.3g}"
    return f"{entry['fad']:.3g} [{entry['ci_low']:.3g}, {entry['ci_high']:.3g}]"


def fad_rows(quality: dict) -> list[tuple[str, ...]]:
    """One row per backend: name, then the three FADs of FAD_COLUMNS with their intervals (or why it was skipped)."""
    rows = []
    for name, entry in quality.get("fad", {}).get("backends", {}).items():
        if "skipped" in entry:
            rows.append((name, f"skipped: {entry['skipped']}", "", ""))
            continue
        label = f"{name} ({entry['dim']}-d{', in-domain' if entry.get('in_domain') else ''})"
        rows.append((label, _with_ci(entry["protected_vs_clean"]), _with_ci(entry["protected_half_vs_clean_half"]),
                     _with_ci(entry["clean_floor"])))
    return rows


def per_clip_line(quality: dict) -> str:
    """Per-clip metrics in one sentence: mean and worst 5% of SNR, SI-SNR, and PESQ/STOI/ESTOI where measured (with
    the clips scored and those they do not apply to)."""
    q = quality["protected_train_vs_clean"]
    parts = [f"SNR {q['snr_db_mean']:.1f} dB mean, {q['snr_db_worst5']:.1f} dB worst 5%"]
    if "si_snr_db_mean" in q:
        parts.append(f"SI-SNR {q['si_snr_db_mean']:.1f} / {q['si_snr_db_worst5']:.1f} dB")
    for name, entry in perceptual_metrics(quality).items():
        parts.append(f"{name.upper()} {metric_cell(entry)}")
    if q.get("unchanged_clips"):
        parts.append(f"{q['unchanged_clips']} clips unchanged")
    return "; ".join(parts)


def markdown_lines(quality: dict) -> list[str]:
    """The quality part of results.md."""
    s = quality.get("settings", {})
    lines = ["## Quality of the protected training audio", "",
             f"Per clip (mean / worst 5%): {per_clip_line(quality)}.", "", *perceptual_lines(quality)]
    rows = fad_rows(quality)
    if rows:
        lines += [f"FAD with {s.get('level', 0.95):.0%} bootstrap intervals ({s.get('bootstrap')} resamples of clips, "
                  f"seed {s.get('seed')}); compare the middle column with the clean floor (same sizes):", "",
                  "| backend | " + " | ".join(FAD_COLUMNS) + " |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    return lines
