"""The masking budget against a flat SNR budget: classwise-noise (span: audio) on FSDD training clips, at ``--snr``
dB alone and with the masking budget (``masking_margin_db``) on top, per clip at its real length:

- SNR (dB, clean against the change, float64): mean and worst 5%;
- the share of (frame, bin) cells of the clips' audio where the change is louder than the clean clip's masking
  threshold (lab.masking), and the largest excess (dB);
- narrow-band PESQ (ITU-T P.862 through the ``pesq`` package, when it is installed): mean and worst 5%;
- seconds to protect.

    .venv/bin/python bench/bench_masking.py [--clips 200] [--snr 20] [--margin 0] [--seed 0] [--key KEY]
        [--flat 27.4,14.6]

The clips: ``--clips`` drawn from FSDD's official training split with a generator seeded with ``--seed``.
"""
from __future__ import annotations

import argparse
import importlib.util
import time

import torch

from common import fsdd_train  # noqa: F401  (puts the repository on sys.path)

from defenses import DEFENSES, build_defense  # noqa: E402
from lab.config import parse_plugin  # noqa: E402
from lab.masking import frame_power_db, frame_size, masking_threshold  # noqa: E402
from lab.provenance import git_commit  # noqa: E402


def worst5(v: torch.Tensor, low: bool = True) -> float:
    return float(torch.quantile(v, 0.05 if low else 0.95))


def measure(clean, protected, lengths, sample_rate, thresholds) -> dict:
    change = (protected - clean).double()
    span = (torch.arange(clean.shape[1])[None] < lengths[:, None]).double()
    snr = 10 * torch.log10(clean.double().pow(2).sum(1) / change.pow(2).sum(1))
    over = frame_power_db(change, sample_rate) - thresholds
    hop = frame_size(sample_rate) // 4
    frames = torch.arange(over.shape[1]) * hop  # frame centres: a frame counts while its centre is in the audio
    inside = (frames[None, :] < lengths[:, None])[:, :, None].expand_as(over)
    out = {"snr_mean": float(snr.mean()), "snr_worst5": worst5(snr),
           "cells_over_threshold": float((over[inside] > 0).double().mean()),
           "max_excess_db": float(over[inside].max()), "span_check": float((change * (1 - span)).abs().max())}
    if importlib.util.find_spec("pesq") is not None:
        from pesq import PesqError, pesq
        scores = torch.tensor([pesq(sample_rate, c[:n].double().numpy(), p[:n].double().numpy(), "nb",
                                    on_error=PesqError.RETURN_VALUES)
                               for c, p, n in zip(clean, protected, lengths.tolist())], dtype=torch.float64)
        ok = scores > -0.5
        out.update({"pesq_nb_mean": float(scores[ok].mean()), "pesq_nb_worst5": worst5(scores[ok]),
                    "pesq_failed": int((~ok).sum())})
    else:
        out["pesq"] = "not installed"
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--snr", type=float, default=20.0)
    ap.add_argument("--margin", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--key", default="bench-masking-key")
    ap.add_argument("--flat", default="", help="more flat SNRs to compare at, e.g. 27.4,14.6 (the masked rows' SNR)")
    args = ap.parse_args()
    train = fsdd_train()
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[:args.clips]
    data = train.subset(pick)
    x, y, lengths, sr = data.waveforms, data.labels, data.lengths, data.sample_rate
    thresholds = masking_threshold(x, sr)
    print(f"commit {git_commit()}; {len(x)} FSDD training clips (seed {args.seed}), classwise-noise span audio, "
          f"key {args.key!r}")
    rows = [(f"flat {args.snr:g} dB", {}),
            (f"{args.snr:g} dB + masking {args.margin:+g} dB", {"masking_margin_db": args.margin}),
            (f"masking {args.margin:+g} dB alone", {"masking_margin_db": args.margin, "snr_db": None})]
    rows += [(f"flat {float(v):g} dB", {"snr_db": float(v)}) for v in args.flat.split(",") if v]
    for label, extra in rows:
        cfg = parse_plugin(DEFENSES, {"type": "classwise-noise", "key": args.key, "snr_db": args.snr,
                                      "span": "audio", **extra}, "defense")
        prot = build_defense(cfg).derive(len(data.class_names), sr)
        start = time.perf_counter()
        out = prot.apply(x, y, lengths)
        seconds = time.perf_counter() - start
        row = measure(x, out, lengths, sr, thresholds)
        print(f"{label:32s} " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in row.items()) + f" seconds={seconds:.1f}")


if __name__ == "__main__":
    main()
