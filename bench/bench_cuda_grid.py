"""How far cuda's chunked convolution (lab.dsp.convolve_same, a fixed grid a long file's blocks reproduce) moves its
outputs from the whole-row torchaudio ``fftconvolve`` it replaced, and its speed on FSDD's training batch.

    .venv/bin/python bench/bench_cuda_grid.py [--key measure-key] [--repeats 5] [--files-every 10]

Three inputs, each protected by the old rule (computed here: ``fftconvolve(mode="same")`` over the whole row, then
the same scaling) and by ``CUDAProtection.apply``, for the three ``output`` modes:

- ``batch``: FSDD's training split, 2,700 clips padded to 1 s at 8 kHz, in one (2700, 8000) batch (training);
- ``files``: every ``--files-every``-th FSDD recording at its own length, one row each (lab protect's files);
- ``long``: all 3,000 recordings in name order joined into one row (longer than ENERGY_CHUNK: the grid at work).

For each: the largest absolute difference in float32 and, after 16-bit quantisation (lab protect's ``quantise``),
how many samples differ. Then the best-of-``--repeats`` wall time of the old and new ``apply`` on the batch (one
thread). The filters come from ``--key`` (derive with 10 classes at 8 kHz).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import best_of, fsdd_train  # noqa: E402
from defenses import DEFENSES, build_defense  # noqa: E402
from lab.config import parse_plugin  # noqa: E402
from lab.data import fsdd  # noqa: E402
from lab.data.audio import read_audio  # noqa: E402
from lab.protect.audiofile import Decoded, quantise  # noqa: E402

PCM16 = Decoded(np.empty((0, 1)), 8000, "WAV", "PCM_16", "FILE", {})


def old_apply(prot, waveforms: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """cuda's apply before the grid (main at 48287f4): one FFT convolution over each whole row."""
    taps = prot.filters[labels.long()].to(waveforms)
    out = AF.fftconvolve(waveforms, taps, mode="same")
    if prot.params["output"] != "none":
        peak = out.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
        target = 1.0 if prot.params["output"] == "peak" else waveforms.abs().amax(dim=1, keepdim=True)
        out = torch.where(peak > 1e-12, out * target / peak, out)
    return out


def moved(prot, rows: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, int, int, int]:
    """(max |new - old| in float32, samples that differ after 16-bit quantisation, by at most how many steps,
    samples) over ``rows``."""
    worst, differ, steps, total = 0.0, 0, 0, 0
    for x, y in rows:
        old, new = old_apply(prot, x, y), prot.apply(x, y)
        worst = max(worst, float((new - old).abs().max()))
        gap = np.abs(quantise(old.numpy(), PCM16)[0].astype(np.int64) - quantise(new.numpy(), PCM16)[0]) >> 16
        differ += int(np.count_nonzero(gap))
        steps = max(steps, int(gap.max()))
        total += x.numel()
    return worst, differ, steps, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--key", default="measure-key")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--files-every", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    train = fsdd_train()
    paths = sorted(fsdd.locate(None, lambda s: None).glob("*.wav"))
    files = [(torch.from_numpy(read_audio(p)[0].T.copy()), torch.tensor([int(p.name.split("_")[0])]))
             for p in paths]
    joined = (torch.cat([x for x, _ in files], dim=1), torch.tensor([0]))
    inputs = {"batch": [(train.waveforms, train.labels)], "files": files[::args.files_every], "long": [joined]}
    print(f"batch {tuple(train.waveforms.shape)}, files {len(inputs['files'])}, long row {joined[0].shape[1]} samples")
    for output in ("peak", "match_peak", "none"):
        prot = build_defense(parse_plugin(DEFENSES, {"type": "cuda", "key": args.key, "output": output},
                                          "defense")).derive(10, 8000)
        for name, rows in inputs.items():
            worst, differ, steps, total = moved(prot, rows)
            print(f"output={output:10s} {name:5s}: max |new - old| {worst:.3g}, 16-bit samples differing "
                  f"{differ} of {total} (by at most {steps} step)")
    prot = build_defense(parse_plugin(DEFENSES, {"type": "cuda", "key": args.key}, "defense")).derive(10, 8000)
    x, y = train.waveforms, train.labels
    for label, fn in (("old", lambda: old_apply(prot, x, y)), ("new", lambda: prot.apply(x, y))) * 2:
        print(f"{label} apply on the batch: {best_of(fn, args.repeats):.3f} s (best of {args.repeats})")


if __name__ == "__main__":
    start = time.time()
    main()
    print(f"total {time.time() - start:.0f} s")
