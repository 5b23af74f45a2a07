"""Peak memory and wall time of ``lab protect`` and ``lab verify`` on one long recording, for two checkouts of the
lab (BEFORE, e.g. main, and AFTER, e.g. this branch), run one after the other on the same generated files, and the
ratios AFTER / BEFORE (issue 21: a long recording must be protected in a bounded amount of memory).

    .venv/bin/python bench/bench_long_file.py --before /work/main --after . [--cases mono8k,stereo44k]
        [--minutes 60] [--defense poscuda] [--option repeat_seconds=1.0] [--workers 0] [--shorts 1] [--tmp /tmp]

Cases: ``mono8k`` (8 kHz mono) and ``stereo44k`` (44.1 kHz stereo), 16-bit PCM WAV, ``--minutes`` long (default one
hour: 55 MB and 635 MB), generated block by block with soundfile (a tone and seeded noise, seed 0), with one short
clip of a second class beside it; both checkouts protect with the same key (generated once). Each command runs
in a fresh process under ``/usr/bin/time -v``: its "Maximum
resident set size" is the peak RSS of the largest process of the run (with ``--workers 0``, the default here,
everything happens in that one process). The generated files and outputs are deleted at the end (``--keep``: not).
Only one command runs at a time; on a shared machine the memory numbers mean more than the times.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

CASES = {"mono8k": (8000, 1), "stereo44k": (44100, 2)}


def generate(path: Path, rate: int, channels: int, minutes: float, seed: int = 0) -> None:
    """A ``minutes``-long 16-bit WAV of a tone and seeded noise, written a block at a time (bounded memory)."""
    rng = np.random.default_rng(seed)
    total, block = int(minutes * 60 * rate), 1 << 20
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(path, "w", rate, channels, "PCM_16", format="WAV") as f:
        for a in range(0, total, block):
            n = min(block, total - a)
            t = (a + np.arange(n))[:, None] / rate
            tone = 0.3 * np.sin(2 * np.pi * 220.0 * (1 + np.arange(channels)) * t)
            x = tone + 0.05 * rng.standard_normal((n, channels))
            f.write(x.astype(np.float32))


def timed(cmd: list[str], repo: Path, env: dict) -> dict:
    """Run ``cmd`` in ``repo`` under /usr/bin/time -v: exit code, peak RSS (MB), wall seconds, last output line."""
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=repo, env=env, capture_output=True, text=True)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1)) / 1024
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", res.stderr).group(1)
    seconds = sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall.split(":"))))
    if res.returncode != 0:
        print(res.stdout[-2000:], res.stderr[-3000:], file=sys.stderr)
    return {"rc": res.returncode, "rss_mb": rss, "seconds": seconds}


def commit(repo: Path) -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def run_case(case: str, args, tmp: Path, python: str) -> dict:
    rate, channels = CASES[case]
    src = tmp / case / "src"
    generate(src / "speech" / "long.wav", rate, channels, args.minutes)
    for i in range(args.shorts):  # a defense optimised on the collection needs 2 files per class: --shorts 2
        generate(src / "music" / ("short.wav" if i == 0 else f"short{i}.wav"), rate, channels, 0.05, seed=1 + i)
        if i:
            generate(src / "speech" / f"short{i}.wav", rate, channels, 0.05, seed=100 + i)
    size = (src / "speech" / "long.wav").stat().st_size / 1e6
    print(f"{case}: {size:.0f} MB ({args.minutes} min, {rate} Hz, {channels} ch, PCM_16)", flush=True)
    results = {}
    for side in args.sides.split(","):
        repo = Path(getattr(args, side)).resolve()
        env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        key, out = tmp / case / side / "keys" / "owner.key", tmp / case / side / "out"
        key.parent.mkdir(parents=True, mode=0o700)
        if not (tmp / case / "owner.key").exists():
            subprocess.run([python, "-m", "lab", "keygen", str(key)], cwd=repo, env=env, check=True,
                           capture_output=True)
            shutil.copy2(key, tmp / case / "owner.key")
        else:  # the same key: the same protection, so the output bytes can be compared
            shutil.copy2(tmp / case / "owner.key", key)
        options = [a for o in args.option for a in ("--option", o)]
        prot = timed([python, "-m", "lab", "protect", str(src), str(out), "--key-file", str(key), "--defense",
                      args.defense, "--workers", str(args.workers), *options], repo, env)
        ver = timed([python, "-m", "lab", "verify", str(out), "--key-file", str(key), "--workers",
                     str(args.workers)], repo, env)
        results[side] = {"commit": commit(repo), "protect": prot, "verify": ver,
                         "output_sha": subprocess.run(["sha256sum", str(out / "speech" / "long.wav")],
                                                      capture_output=True, text=True).stdout.split()[:1]}
        print(f"  {side:6} {results[side]['commit']:>14}: protect rc={prot['rc']} {prot['rss_mb']:8.0f} MB "
              f"{prot['seconds']:7.1f} s | verify rc={ver['rc']} {ver['rss_mb']:8.0f} MB {ver['seconds']:7.1f} s",
              flush=True)
        shutil.rmtree(tmp / case / side)
    if len(results) < 2:
        return results
    b, a = results["before"], results["after"]
    for step in ("protect", "verify"):
        print(f"  {step}: peak RSS after/before {a[step]['rss_mb'] / b[step]['rss_mb']:.3f}, wall after/before "
              f"{a[step]['seconds'] / b[step]['seconds']:.2f}")
    print(f"  same output bytes before and after: {b['output_sha'] == a['output_sha']}")
    shutil.rmtree(src) if not args.keep else None
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="checkout of the lab measured first (e.g. /work/main)")
    p.add_argument("--after", required=True, help="checkout measured second (e.g. this branch)")
    p.add_argument("--cases", default="mono8k,stereo44k")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--defense", default="poscuda")
    p.add_argument("--option", action="append", default=None, help="lab protect --option (default "
                   "repeat_seconds=1.0: a patch every second, as for a long recording)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--shorts", type=int, default=1, help="3-second clips of the second class (and N-1 beside the "
                   "long file): 2 for a defense optimised on the collection (em-noise, robust-em, poscuda-opt), "
                   "which needs 2 files per class")
    p.add_argument("--sides", default="before,after", help="'after' alone: where BEFORE would not fit in memory")
    p.add_argument("--tmp", default=None, help="where the generated files go (default: a new folder in /tmp)")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    args.option = ["repeat_seconds=1.0"] if args.option is None else args.option
    tmp = Path(tempfile.mkdtemp(prefix="bench-long-", dir=args.tmp))
    print(f"python {sys.executable}; defense {args.defense} {args.option}; workers {args.workers}; files in {tmp}")
    try:
        for case in args.cases.split(","):
            run_case(case, args, tmp, sys.executable)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
