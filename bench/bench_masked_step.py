"""The cost of one descent step of class-wise noise under the masking budget, against the same step without it,
measured in the same run: a batch of FSDD training clips, the class patterns added by
``defenses._minmin.add_class_patterns`` (20 dB, margin 0 dB), forward and backward to the patterns.

- ``unmasked``: the SNR budget alone (the baseline);
- ``exact``: differentiated through the masking projection (its 12 float64 STFT rounds), what the optimisation did
  before the straight-through estimate;
- ``straight-through``: what it does now (``optimising=True``: the projection without gradient, 4 rounds).

    LAB_DATA_DIR=../shared/data OMP_NUM_THREADS=1 .venv/bin/python bench/bench_masked_step.py [--batch 64] [--repeats 3]

Prints seconds per step (best of ``--repeats``) and each ratio to ``unmasked``.
"""
from __future__ import annotations

import argparse

import torch

from common import best_of, fsdd_train  # noqa: F401  (puts the repository on sys.path)

from defenses._minmin import add_class_patterns, span_mask  # noqa: E402
from lab.masking import masking_threshold  # noqa: E402
from lab.provenance import git_commit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    train = fsdd_train()
    x, y, lengths = train.waveforms[:args.batch], train.labels[:args.batch], train.lengths[:args.batch]
    mask, sr = span_mask(x, lengths), train.sample_rate
    thresholds = masking_threshold(x, sr).float()
    patterns = torch.randn(int(y.max()) + 1, x.shape[1], generator=torch.Generator().manual_seed(0))

    def step(masking, optimising=False):
        var = patterns.clone().requires_grad_(True)
        out = add_class_patterns(x, var[y], mask, 20.0, None, masking, optimising=optimising)
        out.pow(2).sum().backward()

    times = {"unmasked": best_of(lambda: step(None), args.repeats),
             "exact": best_of(lambda: step((sr, 0.0, thresholds)), args.repeats),
             "straight-through": best_of(lambda: step((sr, 0.0, thresholds), True), args.repeats)}
    print(f"one class-wise descent step, {args.batch} clips of {x.shape[1]} samples, {torch.get_num_threads()} "
          f"thread(s), commit {(git_commit()['commit'] or '?')[:7]}")
    for name, t in times.items():
        print(f"  {name:17s} {t:8.3f} s  {t / times['unmasked']:7.1f}x unmasked")


if __name__ == "__main__":
    main()
