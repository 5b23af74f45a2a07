"""Position ablation: where does a model trained on protected data look?

For a test set, every variant below is the same clips with the protection applied differently. A model that learned
the positional shortcut is accurate on ``true`` and loses accuracy when the position or the filter no longer matches
the label; a model that learned the digits is indifferent to all of them.

- ``clean``: no protection;
- ``true``: each clip's own class position and filter (what the training data carried);
- ``mixed_positions``: own filter at another class's position;
- ``mixed_filters``: own position with another class's filter;
- ``random_positions``: own filter at a random position drawn from the defense's position range;
- ``shift_<+-ms>ms``: own position moved by a few milliseconds;
- ``filter_whole_clip``: own filter over the whole clip (no position at all).

Defenses without positions get ``clean`` and ``true`` only.
"""
from __future__ import annotations

import torch

from defenses.base import Protection
from defenses.poscuda import PosCUDAProtection
from lab.data import AudioSet

SHIFTS_MS = (-100, -50, -10, 10, 50, 100)


def other_classes(labels: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """For each clip, a class drawn uniformly from the OTHER classes."""
    gen = torch.Generator().manual_seed(seed)
    return (labels + torch.randint(1, num_classes, labels.shape, generator=gen)) % num_classes


def variants(protection: Protection, test: AudioSet, seed: int = 0) -> dict[str, torch.Tensor]:
    """The ablation test sets (name -> waveforms (N, T)), see the module docstring."""
    w, y, lengths = test.waveforms, test.labels, test.lengths
    out = {"clean": w, "true": protection.apply(w, y, lengths)}
    if not isinstance(protection, PosCUDAProtection):
        return out
    c = protection.num_classes
    out["mixed_positions"] = protection.apply(w, y, lengths, position_classes=other_classes(y, c, seed))
    out["mixed_filters"] = protection.apply(w, y, lengths, filter_classes=other_classes(y, c, seed + 1))
    gen = torch.Generator().manual_seed(seed + 2)
    lo, hi = protection.params["position_range"]
    random_pos = lo + (hi - lo) * torch.rand(len(y), protection.positions.shape[1], generator=gen,
                                             dtype=torch.float64)
    out["random_positions"] = protection.apply(w, y, lengths, positions=random_pos)
    for ms in SHIFTS_MS:
        out[f"shift_{ms:+d}ms"] = protection.apply(w, y, lengths, shift_samples=round(ms * test.sample_rate / 1000))
    out["filter_whole_clip"] = protection.apply(w, y, lengths, whole_clip=True)
    return out
