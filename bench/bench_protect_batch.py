"""``lab protect``'s batched path against the per-file loop, on the same real files, in one run, as a RATIO.

    LAB_DATA_DIR=../shared/data .venv/bin/python bench/bench_protect_batch.py [--files 512] [--repeats 3]

What a worker does with a chunk of files once they are decoded: ``protect_batch`` (the protection's declared
``apply_files`` hook: PosCUDA protects the chunk's files in one padded batch) against protecting the same files one
by one with ``apply`` (what every chunk went through while the batched path was dead: the worker looked for hooks
that no protection had any more). FSDD clips (8 kHz speech, real lengths 0.14-2.3 s), chunks of the size ``lab
protect`` uses (64 files), one thread, best of ``--repeats``. Both paths' outputs are checked equal before timing.
Prints seconds per path, the ratio (per-file / batched: above 1 means the batched path is faster), torch version and
git commit.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import best_of  # noqa: E402


def fsdd_files(n: int) -> list[tuple[np.ndarray, int]]:
    """``n`` FSDD recordings at their real lengths, as (frames, 1) float32 arrays with their digit."""
    import os

    import soundfile as sf

    from lab.data import fsdd
    folder = fsdd.locate(None, lambda s: None) if not os.environ.get("LAB_BENCH_FSDD") else \
        Path(os.environ["LAB_BENCH_FSDD"]) / "recordings"
    paths = sorted(folder.glob("*.wav"))[:n]
    return [(sf.read(str(p), dtype="float32", always_2d=True)[0], int(p.name.split("_")[0])) for p in paths]


def main() -> None:
    import torch

    from defenses.poscuda import PosCUDA, PosCUDAConfig
    from lab.protect.protector import CHUNK_FILES
    from lab.protect.worker import protect_batch, protect_samples
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    prot = PosCUDA(PosCUDAConfig(key="bench-protect-batch-key")).derive(10, 8000)
    items = fsdd_files(args.files)
    chunks = [items[i:i + CHUNK_FILES] for i in range(0, len(items), CHUNK_FILES)]
    for chunk in chunks:  # the two paths must give the same bytes, or the comparison means nothing
        for (d, c), out in zip(chunk, protect_batch(prot, chunk)):
            assert np.array_equal(out, protect_samples(prot, d, c))
    batched = best_of(lambda: [protect_batch(prot, chunk) for chunk in chunks], args.repeats)
    per_file = best_of(lambda: [[protect_samples(prot, d, c) for d, c in chunk] for chunk in chunks], args.repeats)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip()
    print(f"{len(items)} FSDD files in chunks of {CHUNK_FILES}, PosCUDA defaults, 1 thread, best of {args.repeats}")
    print(f"batched (apply_files): {batched:.3f} s; per file (apply): {per_file:.3f} s; "
          f"ratio per-file / batched: {per_file / batched:.2f}x")
    print(f"torch {torch.__version__}, commit {commit}")


if __name__ == "__main__":
    main()
