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

Each protection says which variants it has (``Protection.ablation_variants``): PosCUDA all of the above, a
protection without positions ``clean`` and ``true`` only.
"""
from __future__ import annotations

import torch

from defenses.base import SHIFTS_MS, Protection, other_classes
from lab.data import AudioSet

__all__ = ["SHIFTS_MS", "other_classes", "variants"]


def variants(protection: Protection, test: AudioSet, seed: int = 0) -> dict[str, torch.Tensor]:
    """The ablation test sets (name -> waveforms (N, T)), see the module docstring."""
    return protection.ablation_variants(test.waveforms, test.labels, test.lengths, test.sample_rate, seed)
