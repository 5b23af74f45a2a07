"""PosCUDA application speed: batched over the whole FSDD training set, against a per-clip Python loop and against a
plain copy of the same tensor (the memory-bandwidth floor), measured in one run.

    LAB_DATA_DIR=../shared/data .venv/bin/python bench/bench_poscuda.py [--repeats 5]
"""
from __future__ import annotations

import argparse

import torch
from common import best_of, fsdd_train

from defenses.poscuda import PosCUDA, PosCUDAConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--filter-length", type=int, default=31)
    args = ap.parse_args()
    train = fsdd_train()
    x, y = train.waveforms, train.labels
    prot = PosCUDA(PosCUDAConfig(key="bench-key-0000", filter_length=args.filter_length)).derive(10, 8000)
    copy_s = best_of(lambda: x.clone(), args.repeats)
    batched_s = best_of(lambda: prot.apply(x, y, train.lengths), args.repeats)
    loop_s = best_of(lambda: [prot.apply(x[i:i + 1], y[i:i + 1], train.lengths[i:i + 1]) for i in range(len(y))],
                     max(1, args.repeats // 2))
    audio_s = x.numel() / train.sample_rate
    print(f"PosCUDA on {len(y)} clips x {x.shape[1]} samples (k={args.filter_length}, patch {prot.patch_len} samples), "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"plain copy (floor) : {copy_s * 1e3:8.1f} ms")
    print(f"batched            : {batched_s * 1e3:8.1f} ms  ({audio_s / batched_s:,.0f}x real time)")
    print(f"per-clip loop      : {loop_s * 1e3:8.1f} ms")
    print(f"ratio per-clip/batched: {loop_s / batched_s:.1f}x   ratio batched/copy: {batched_s / copy_s:.1f}x")


if __name__ == "__main__":
    main()
