"""Helpers shared by the bench scripts: the FSDD training set, and best-of-N timing."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def fsdd_train():
    """FSDD's official training split (2,700 clips, 1 s at 8 kHz) from data.root/$LAB_DATA_DIR/the cache."""
    from lab.data import load_dataset
    from lab.recipe import DataConfig
    root = os.environ.get("LAB_BENCH_FSDD")
    train, _ = load_dataset(DataConfig(root=Path(root) if root else None), log=lambda s: None)
    return train


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls (the least disturbed by other load on the machine)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
