"""Quality of protected audio against the clean original: per-clip metrics and FAD (the ``quality`` section of
``lab run`` results).

Per clip (protected clip against its own clean original): SNR and SI-SNR (torchmetrics), and STOI and PESQ where
the optional packages pystoi and pesq are installed (the optional extra ``quality``), each as mean
and worst 5% (the 5th percentile). FAD (lab.fad): protected vs clean training audio, beside the clean floor (FAD
between two disjoint random halves of the clean training audio) and the protected half vs the other clean half (the
same sizes as the floor, so the two are directly comparable), each with a bootstrap confidence interval, for every
backend in DEFAULT_BACKENDS that can run.
"""
from __future__ import annotations

import importlib.util
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
PERCEPTUAL_CLIPS = 200     # STOI/PESQ are slow: measured on this many clips drawn with SPLIT_SEED


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


def perceptual(protected: torch.Tensor, clean: torch.Tensor, sample_rate: int) -> dict:
    """STOI and PESQ (narrow-band at 8 kHz, wide-band at 16 kHz; other rates are resampled to 16 kHz) on
    PERCEPTUAL_CLIPS clips drawn with SPLIT_SEED, each trimmed to the clean clip's real length; a metric whose
    package is missing is reported as such."""
    out: dict = {}
    gen = torch.Generator().manual_seed(SPLIT_SEED)
    pick = torch.randperm(len(clean), generator=gen)[:PERCEPTUAL_CLIPS]
    lengths = real_lengths(clean[pick])
    if sample_rate not in (8000, 16000):
        import torchaudio.functional as AF
        clean_p, prot_p = AF.resample(clean[pick], sample_rate, 16000), AF.resample(protected[pick], sample_rate, 16000)
        lengths = torch.ceil(lengths * 16000 / sample_rate).long().clamp(max=clean_p.shape[1])
        sample_rate = 16000
    else:
        clean_p, prot_p = clean[pick], protected[pick]
    pairs = [(c[:n].double().numpy(), p[:n].double().numpy()) for c, p, n in zip(clean_p, prot_p, lengths.tolist())]
    if importlib.util.find_spec("pystoi") is not None:
        from pystoi import stoi
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pystoi warns, and returns 1e-5, for clips under ~30 speech frames
            scores = torch.tensor([stoi(c, p, sample_rate) for c, p in pairs], dtype=torch.float64)
        short = scores <= 1e-5
        out["stoi"] = {**summary(scores[~short], "stoi"), "clips": int((~short).sum()),
                       "too_short_clips": int(short.sum())}
    else:
        out["stoi"] = {"missing": "pip install pystoi (or the lab's optional extra named quality)"}
    if importlib.util.find_spec("pesq") is not None:
        from pesq import PesqError, pesq
        mode = "nb" if sample_rate == 8000 else "wb"
        scores = torch.tensor([pesq(sample_rate, c, p, mode, on_error=PesqError.RETURN_VALUES) for c, p in pairs],
                              dtype=torch.float64)
        failed = scores < -0.5  # pesq returns -1 (or -2) for clips it cannot score (no speech detected)
        out["pesq"] = summary(scores[~failed], "pesq")
        out["pesq"].update({"mode": mode, "clips": int((~failed).sum()), "failed_clips": int(failed.sum())})
    else:
        out["pesq"] = {"missing": "pip install pesq (or the lab's optional extra named quality)"}
    return out


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
                        "perceptual_clips": PERCEPTUAL_CLIPS, "backends": list(DEFAULT_BACKENDS)}}
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
    """Per-clip metrics in one sentence: mean and worst 5% of SNR, SI-SNR, and STOI/PESQ where measured."""
    q = quality["protected_train_vs_clean"]
    parts = [f"SNR {q['snr_db_mean']:.1f} dB mean, {q['snr_db_worst5']:.1f} dB worst 5%"]
    if "si_snr_db_mean" in q:
        parts.append(f"SI-SNR {q['si_snr_db_mean']:.1f} / {q['si_snr_db_worst5']:.1f} dB")
    for name in ("stoi", "pesq"):
        entry = quality.get("perceptual", {}).get(name, {})
        if entry.get(f"{name}_mean") is not None:
            parts.append(f"{name.upper()} {entry[f'{name}_mean']:.2f} / {entry[f'{name}_worst5']:.2f} "
                         f"({entry['clips']} clips)")
    if q.get("unchanged_clips"):
        parts.append(f"{q['unchanged_clips']} clips unchanged")
    return "; ".join(parts)


def markdown_lines(quality: dict) -> list[str]:
    """The quality part of results.md."""
    s = quality.get("settings", {})
    lines = ["## Quality of the protected training audio", "",
             f"Per clip (mean / worst 5%): {per_clip_line(quality)}.", ""]
    rows = fad_rows(quality)
    if rows:
        lines += [f"FAD with {s.get('level', 0.95):.0%} bootstrap intervals ({s.get('bootstrap')} resamples of clips, "
                  f"seed {s.get('seed')}); compare the middle column with the clean floor (same sizes):", "",
                  "| backend | " + " | ".join(FAD_COLUMNS) + " |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    return lines
