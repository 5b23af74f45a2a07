"""Throughput and peak memory of ``lab protect`` against a plain per-file loop (read, protect, write), measured in
the same run on the same files, reported as a RATIO (machines drift, and the 2 cores are shared; ratios hold better).

    LAB_DATA_DIR=../shared/data .venv/bin/python bench/bench_protect.py [--fsdd DIR] [--long-files 8]
        [--long-seconds 60] [--workers 2] [--repeats 2] [--skip-loop-long]

Collections: FSDD (3,000 clips of 8 kHz speech); FSDD copied twice over (6,000 clips: peak memory must not grow
with the collection's size); and generated long recordings (44.1 kHz stereo 16-bit FLAC and WAV, protected with
``repeat_seconds``). Each measurement runs in a fresh process so that its peak memory (max RSS of the process and of
its largest worker) is its own. Prints throughput (x real-time, clips/s), peak memory, the load average before and
after, versions and git commit.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def plain_loop(src: Path, out: Path, key_file: Path, labels: str, defense: dict) -> dict:
    """The baseline: one process, file after file: read (soundfile), protect (PosCUDAProtection.apply on the file's
    channels), write (soundfile, same format and subtype)."""
    import re

    import torch

    from defenses.poscuda import PosCUDA, PosCUDAConfig
    torch.set_num_threads(1)
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in (".wav", ".flac"))
    pattern = re.compile(labels[len("regex:"):]) if labels.startswith("regex:") else None
    names = sorted({(pattern.search(p.name).group(1) if pattern else p.relative_to(src).parts[0]) for p in files})
    cfg = PosCUDAConfig(key_file=key_file, **defense)
    base = PosCUDA(cfg).derive(len(names), 8000)
    cache = {}
    seconds = 0.0
    for p in files:
        label = pattern.search(p.name).group(1) if pattern else p.relative_to(src).parts[0]
        info = sf.info(str(p))
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
        if sr not in cache:
            cache[sr] = type(base)(base.params, base.key_fingerprint, sr, base.positions, base.filters)
        x = torch.from_numpy(data.T.copy())
        y = cache[sr].apply(x, torch.full((x.shape[0],), names.index(label)))
        dst = out / p.relative_to(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(dst), y.numpy().T, sr, subtype=info.subtype, format=info.format)
        seconds += data.shape[0] / sr
    return {"files": len(files), "audio_seconds": seconds}


def one(mode: str, src: Path, key_file: Path, labels: str, defense: dict, workers: int) -> dict:
    """Run one measurement in this process and return its numbers."""
    src, key_file = Path(src), Path(key_file)
    out = Path(tempfile.mkdtemp(prefix="bench-out-"))
    import torch  # noqa: F401  (imports are not part of either measurement)

    from lab.protect.protector import protect_collection
    try:
        start, cpu0 = time.perf_counter(), os.times()
        if mode == "loop":
            res = plain_loop(src, out, key_file, labels, defense)
        else:
            s = protect_collection(src, out / "o", key_file, labels=labels, defense=defense, workers=workers)
            res = {"files": s["protected"], "audio_seconds": s["audio_seconds"]}
        wall = time.perf_counter() - start
        cpu1 = os.times()
        cpu = sum(getattr(cpu1, f) - getattr(cpu0, f) for f in ("user", "system", "children_user", "children_system"))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    kb = 1024  # ru_maxrss is in KiB on Linux
    return {**res, "wall_seconds": wall, "cpu_seconds": cpu, "x_realtime": res["audio_seconds"] / wall, "clips_per_s": res["files"] / wall,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kb,
            "peak_worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kb}


def measure(mode: str, src: Path, key_file: Path, labels: str, defense: dict, workers: int) -> dict:
    cmd = [sys.executable, __file__, "--one", json.dumps([mode, str(src), str(key_file), labels, defense, workers])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_long(root: Path, n: int, seconds: float) -> None:
    """``n`` long 44.1 kHz stereo 16-bit recordings (noise-like music stand-ins), half FLAC, half WAV."""
    rng = np.random.default_rng(0)
    sr = 44100
    for i in range(n):
        t = np.arange(int(seconds * sr)) / sr
        x = 0.2 * np.sin(2 * np.pi * (110 + 40 * i) * t)[:, None] + 0.05 * rng.standard_normal((len(t), 2))
        d = root / f"genre{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        sf.write(str(d / f"track{i}.{'flac' if i % 2 else 'wav'}"), x.astype(np.float32), sr, subtype="PCM_16")


def quality_of_repeats(fsdd: Path, spacings=(1.0, 2.0, 5.0, 10.0), clips: int = 300, keys: int = 5) -> list[dict]:
    """The quality cost of repeated patches on real speech: ``clips`` FSDD clips joined into one long 8 kHz
    recording (a stand-in for a podcast), protected with each spacing under ``keys`` different keys (the filters,
    hence the cost, depend on the key); SNR (torchmetrics, via lab.quality) of the whole recording and of its 10 s
    windows (mean, worst 5%), and the share of samples the patches touch: mean and std over the keys."""
    import torch

    from defenses.poscuda import PosCUDA, PosCUDAConfig
    from lab.quality import snr_summary
    every = sorted(fsdd.glob("*.wav"))
    files = every[::max(1, len(every) // clips)][:clips]
    x = torch.from_numpy(np.concatenate([sf.read(str(p), dtype="float32")[0] for p in files]))[None]
    win = 10 * 8000
    n = x.shape[1] // win
    rows = []
    for spacing in spacings:
        per_key = []
        for k in range(keys):  # throwaway measurement keys, named here so that the numbers can be reproduced
            prot = PosCUDA(PosCUDAConfig(key=f"bench-quality-key-{k}", repeat_seconds=spacing)).derive(1, 8000)
            y = prot.apply(x, torch.zeros(1, dtype=torch.long))
            whole = snr_summary(y, x)
            windows = snr_summary(y[0, :n * win].view(n, win), x[0, :n * win].view(n, win))
            per_key.append([float((y != x).float().mean()), whole["snr_db_mean"], windows["snr_db_mean"],
                            windows["snr_db_worst5"]])
        a = np.array(per_key)
        rows.append({"repeat_seconds": spacing, "recording_seconds": x.shape[1] / 8000, "keys": keys,
                     "mean": a.mean(0).tolist(), "std": a.std(0).tolist()})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = Path(os.environ.get("LAB_DATA_DIR", REPO.parent / "shared" / "data"))
    ap.add_argument("--fsdd", type=Path, default=data / "fsdd" / "recordings",
                    help="FSDD's recordings folder (default: $LAB_DATA_DIR/fsdd/recordings, else ../shared/data/...)")
    ap.add_argument("--long-files", type=int, default=8)
    ap.add_argument("--long-seconds", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="measurements per row; the best (least disturbed) is kept")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(*json.loads(args.one))))
        return

    from lab.protect import new_key_file
    from lab.provenance import provenance
    work = Path(tempfile.mkdtemp(prefix="bench-protect-"))
    try:
        key = work / "key"
        new_key_file(key)
        double = work / "fsdd_x2"
        for copy in range(2):
            shutil.copytree(args.fsdd, double / f"copy{copy}")
        long_dir = work / "long"
        make_long(long_dir, args.long_files, args.long_seconds)
        fsdd_labels = r"regex:^(\d+)_"
        cases = [("FSDD (3,000 clips, 8 kHz)", args.fsdd, fsdd_labels, {}),
                 ("FSDD x2 (6,000 clips)", double, fsdd_labels, {}),
                 (f"long: {args.long_files} x {args.long_seconds:.0f} s, 44.1 kHz stereo", long_dir, "folder",
                  {"repeat_seconds": 5.0})]
        load_before = os.getloadavg()
        rows = []
        for name, src, labels, defense in cases:
            for mode in ("loop", "protect"):
                best = None
                for _ in range(args.repeats):
                    r = measure(mode, src, key, labels, defense, args.workers)
                    best = r if best is None or r["wall_seconds"] < best["wall_seconds"] else best
                rows.append((name, mode, best))
        load_after = os.getloadavg()
        quality = quality_of_repeats(args.fsdd)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    prov = provenance()
    print(f"bench_protect: git {prov['git']['commit']} (dirty={prov['git']['dirty']}), torch "
          f"{prov['versions']['torch']}, soundfile {prov['versions']['soundfile']}, {os.cpu_count()} CPUs, "
          f"workers={args.workers}, best of {args.repeats}")
    print(f"load average (1/5/15 min) before: {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
          f"after: {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}")
    print(f"{'collection':44s} {'mode':8s} {'files':>6s} {'audio s':>8s} {'wall s':>7s} {'x real-time':>11s} "
          f"{'clips/s':>8s} {'peak MB':>8s} {'worker MB':>9s} {'RATIO':>6s} {'CPU s':>6s} {'CPU ms/clip':>11s}")
    base = {}
    for name, mode, r in rows:
        if mode == "loop":
            base[name] = r["wall_seconds"]
        ratio = base[name] / r["wall_seconds"]
        worker_mb = f"{r['peak_worker_rss_mb']:.0f}" if mode == "protect" else "-"
        print(f"{name:44s} {mode:8s} {r['files']:6d} {r['audio_seconds']:8.1f} {r['wall_seconds']:7.2f} "
              f"{r['x_realtime']:11.0f} {r['clips_per_s']:8.0f} {r['peak_rss_mb']:8.0f} {worker_mb:>9s} {ratio:6.2f} "
              f"{r['cpu_seconds']:6.2f} {1000 * r['cpu_seconds'] / r['files']:11.2f}")
    print("RATIO = plain loop wall time / this row's wall time (same files, same run). peak MB: max RSS of the "
          "measuring process; worker MB: max RSS of its largest worker process. CPU s: user+system seconds of the "
          "process and its workers (less sensitive to other load than wall time).")
    print("\nquality cost of repeated patches (default PosCUDA: patch 0.1 s, blur 0.3, 31 taps, one tap 1.0) on "
          f"{quality[0]['recording_seconds']:.0f} s of FSDD speech joined into one recording; mean ± std over "
          f"{quality[0]['keys']} keys:")
    print(f"{'repeat s':>8s} {'changed':>8s} {'SNR dB':>12s} {'10 s windows: mean':>19s} {'worst 5%':>12s}")
    for q in quality:
        m, sd = q["mean"], q["std"]
        print(f"{q['repeat_seconds']:8.1f} {100 * m[0]:7.1f}% {m[1]:6.1f} ± {sd[1]:3.1f} {m[2]:12.1f} ± {sd[2]:3.1f} "
              f"{m[3]:6.1f} ± {sd[3]:3.1f}")


if __name__ == "__main__":
    main()
