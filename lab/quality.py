"""Per-clip quality of protected audio against the clean original (torchmetrics' SNR)."""
from __future__ import annotations

import torch
from torchmetrics.functional.audio import signal_noise_ratio


def snr_summary(protected: torch.Tensor, clean: torch.Tensor) -> dict:
    """SNR (dB) of each protected clip against its clean original: mean and the worst 5% (5th percentile).
    Clips left unchanged have infinite SNR and are counted, not averaged."""
    snr = signal_noise_ratio(protected.double(), clean.double())
    finite = snr[torch.isfinite(snr)]
    if finite.numel() == 0:
        return {"snr_db_mean": float("inf"), "snr_db_worst5": float("inf"), "unchanged_clips": int(snr.numel())}
    return {"snr_db_mean": float(finite.mean()), "snr_db_worst5": float(torch.quantile(finite, 0.05)),
            "unchanged_clips": int(snr.numel() - finite.numel())}


def assess(recipe, waveforms: dict, clean_module=None) -> dict:
    """The quality section of ``lab run`` results: how far the protected training audio is from the clean one.
    ``waveforms`` holds clean_train, protected_train, clean_test, ...; ``clean_module`` is a clean-trained model
    (for in-domain embeddings)."""
    return {"protected_train_vs_clean": snr_summary(waveforms["protected_train"], waveforms["clean_train"])}
