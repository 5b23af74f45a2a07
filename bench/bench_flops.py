"""Achieved FLOP/s of training, per architecture, against the machine's own sgemm FLOP/s measured in the same run.

    LAB_DATA_DIR=../shared/data .venv/bin/python bench/bench_flops.py [--threads 1] [--steps 20] [--repeats 3]

For the CNN, the LSTM and the Transformer on MFCC (recipes/fsdd_cnn.yaml, fsdd_lstm.yaml, fsdd_transformer.yaml)
and the 1-D CNN on raw audio (recipes/fsdd_raw_cnn.yaml), each with its recipe's sizes and batch size:

- FLOPs of one training step (forward, cross-entropy, backward, Adam step), counted by torch's own counter
  (``torch.utils.flop_counter.FlopCounterMode``) on a real batch;
- seconds per step: the best of ``--repeats`` runs of ``--steps`` steps (after ``--warmup`` steps), a plain loop
  like bench_training.py's (the lab's Lightning loop costs the same per epoch: 0.95x, docs/performance.md);
- achieved GFLOP/s = FLOPs per step / seconds per step, and its fraction of the machine's limit: float32 sgemm
  (``torch.matmul`` of two square matrices, 2 n^3 FLOPs) with the same thread count, measured before and after the
  models (the better of the two is the limit);
- where the time goes: one more (untimed) run under torch.profiler gives the share of the ops' time spent in the
  matrix-product/convolution/LSTM kernels that do the counted FLOPs ("time in mm/conv"; the FLOP rate inside
  them is then GFLOP/s / share) and the costliest other ops.

What the counter counts: matrix products and convolutions (mm, addmm, bmm, convolution and their backward), nearly
all of these models' arithmetic. Elementwise work (activations, batch/layer norm, softmax, pooling, dropout, Adam)
counts 0, so the achieved figure slightly understates the work done. On the CPU the counter has no formula for the
fused LSTM kernel (``aten.mkldnn_rnn_layer`` and its backward): an LSTM's recurrent layers count 0, and the bench
adds their analytic count (:func:`lstm_flops`, 3x the forward matrix products) and says so in the table.
``--synthetic`` uses random inputs of the recipe's feature shape instead of FSDD (no data needed; the same FLOPs).
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import best_of  # noqa: E402

ARCHITECTURES = {  # name -> recipe (its model, features and batch size)
    "cnn-mfcc": "recipes/fsdd_cnn.yaml",
    "lstm-mfcc": "recipes/fsdd_lstm.yaml",
    "transformer-mfcc": "recipes/fsdd_transformer.yaml",
    "cnn-raw": "recipes/fsdd_raw_cnn.yaml",
}

# ops that do heavy arithmetic: one of these that the counter has no formula for makes its count an undercount
HEAVY = re.compile(r"mm|matmul|conv|linear|rnn|lstm|gru|attention|einsum")
RECURRENT = re.compile(r"rnn|lstm|gru")


class _OpLog(TorchDispatchMode):
    """Records every aten op dispatched (by overload packet)."""

    def __init__(self):
        super().__init__()
        self.ops: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket)
        return func(*args, **(kwargs or {}))


def lstm_flops(lstm: nn.LSTM, batch: int, steps: int) -> int:
    """Forward FLOPs of an ``nn.LSTM``'s matrix products on ``batch`` sequences of ``steps`` steps: per layer and
    direction, the four gates' input and recurrent products, 2 * batch * steps * 4 * hidden * (input + hidden).
    The gates' elementwise arithmetic is not counted (as the counter counts none). A training step costs about 3x
    this: the backward pass takes the same products once for the weights' gradients and once for the inputs' and
    hidden states' (slightly less in fact: the first layer's input needs no gradient)."""
    if lstm.proj_size:
        raise NotImplementedError("lstm_flops: LSTMs with proj_size are not counted")
    dirs = 2 if lstm.bidirectional else 1
    total = 0
    for layer in range(lstm.num_layers):
        inp = lstm.input_size if layer == 0 else lstm.hidden_size * dirs
        total += dirs * 2 * batch * steps * 4 * lstm.hidden_size * (inp + lstm.hidden_size)
    return total


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               mean: torch.Tensor, std: torch.Tensor) -> None:
    """One training step as the lab takes it: standardise, forward, cross-entropy, backward, optimiser step."""
    loss = F.cross_entropy(model((x - mean) / std), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def count_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               mean: torch.Tensor, std: torch.Tensor) -> dict:
    """The FLOPs of one training step: ``counted`` (torch's counter), ``by_op`` (its count per op),
    ``uncounted`` (heavy ops dispatched that the counter has no formula for), ``analytic`` (FLOPs added for LSTMs
    when their kernel was not counted: 3x :func:`lstm_flops`) and ``total`` (counted + analytic)."""
    shapes: dict[nn.LSTM, tuple[int, int]] = {}

    def remember(module, args, _out):
        b, t = args[0].shape[:2] if module.batch_first else args[0].shape[1::-1]
        shapes[module] = (int(b), int(t))

    hooks = [m.register_forward_hook(remember) for m in model.modules() if isinstance(m, nn.LSTM)]
    log = _OpLog()
    try:
        with FlopCounterMode(display=False) as counter, log:
            train_step(model, opt, x, y, mean, std)
    finally:
        for h in hooks:
            h.remove()
    counted = int(counter.get_total_flops())
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    uncounted = sorted(str(op) for op in log.ops if op not in flop_registry and HEAVY.search(str(op)))
    analytic = 0
    if any(RECURRENT.search(op) for op in uncounted):
        analytic = sum(3 * lstm_flops(m, *bt) for m, bt in shapes.items())
    return {"counted": counted, "by_op": by_op, "uncounted": uncounted, "analytic": analytic,
            "total": counted + analytic}


def sgemm_gflops(n: int, repeats: int) -> float:
    """float32 GFLOP/s of ``torch.matmul`` of two n x n matrices (2 n^3 FLOPs, checked with the same counter),
    best of ``repeats`` after one warm-up product."""
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    with FlopCounterMode(display=False) as counter:
        torch.matmul(a, b, out=out)
    flops = counter.get_total_flops()
    assert flops == 2 * n ** 3, (flops, n)
    return flops / best_of(lambda: torch.matmul(a, b, out=out), repeats) / 1e9


def _batches(feats: torch.Tensor, labels: torch.Tensor, batch_size: int, steps: int) -> list:
    """``steps`` full batches of ``batch_size`` in a fixed random order (cycling through the set if it is short)."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    full = len(order) // batch_size
    if full == 0:
        raise ValueError(f"{len(labels)} clips: fewer than one batch of {batch_size}")
    out = []
    for i in range(steps):
        idx = order[(i % full) * batch_size:(i % full + 1) * batch_size]
        out.append((feats[idx], labels[idx]))
    return out


def _synthetic(recipe, clips: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Random waveforms through the recipe's front-end (its feature shape), random labels of 10 classes."""
    from lab.features import FrontEnd
    samples = int(round(recipe.data.sample_rate * recipe.data.clip_seconds))
    gen = torch.Generator().manual_seed(0)
    feats = FrontEnd(recipe.features, recipe.data.sample_rate)(0.1 * torch.randn(clips, samples, generator=gen))
    return feats, torch.randint(0, 10, (clips,), generator=gen), 10


def measure(name: str, recipe, feats: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int,
            repeats: int, warmup: int) -> dict:
    """One architecture: FLOPs per step, best seconds per step, achieved GFLOP/s."""
    from lab.models import build_model
    from lab.module import standardisation
    torch.manual_seed(0)
    model = build_model(recipe.model, tuple(feats.shape[1:]), num_classes, recipe.features.raw,
                        recipe.data.sample_rate)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=recipe.train.lr)
    mean, std = standardisation(feats)
    bs = recipe.train.batch_size
    batches = _batches(feats, labels, bs, max(steps, warmup, 1))
    flops = count_step(model, opt, *batches[0], mean, std)
    for x, y in batches[:warmup]:
        train_step(model, opt, x, y, mean, std)

    def timed():
        for x, y in batches[:steps]:
            train_step(model, opt, x, y, mean, std)

    seconds = best_of(timed, repeats) / steps
    heavy_share, others = time_shares(timed)
    return {"name": name, "model": recipe.model.type, "features": recipe.features.type, "batch_size": bs,
            "input_shape": list(feats.shape[1:]), "params": sum(p.numel() for p in model.parameters()),
            **flops, "seconds_per_step": seconds, "gflops": flops["total"] / seconds / 1e9,
            "heavy_time_share": heavy_share, "top_other_ops": others}


def time_shares(fn) -> tuple[float, list[tuple[str, float]]]:
    """Profile one call of ``fn`` (torch.profiler, CPU): the share of the ops' self time spent in the heavy
    kernels (matrix products, convolutions, the LSTM kernel: what the FLOPs are) and the three costliest other ops
    with their shares. A separate, untimed run: the profiler's own overhead is not in the seconds per step."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    times = {e.key: e.self_cpu_time_total for e in prof.key_averages() if e.key.startswith("aten::")}
    total = sum(times.values()) or 1.0
    heavy = sum(t for k, t in times.items() if HEAVY.search(k))
    others = sorted(((k.removeprefix("aten::"), t / total) for k, t in times.items() if not HEAVY.search(k)),
                    key=lambda kv: -kv[1])[:3]
    return heavy / total, others


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the models and sgemm (default 1)")
    ap.add_argument("--steps", type=int, default=20, help="training steps per timed run (default 20)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per architecture, the best kept (default 3)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    ap.add_argument("--sgemm-size", type=int, default=2048, help="n of the n x n float32 matmul (default 2048)")
    ap.add_argument("--sgemm-repeats", type=int, default=5)
    ap.add_argument("--arch", action="append", choices=list(ARCHITECTURES),
                    help="only these architectures (repeatable; default all)")
    ap.add_argument("--set", action="append", default=[], help="recipe override for every architecture")
    ap.add_argument("--synthetic", action="store_true", help="random inputs of the recipes' feature shapes, no FSDD")
    args = ap.parse_args(argv)
    if min(args.threads, args.steps, args.repeats, args.sgemm_size, args.sgemm_repeats) < 1 or args.warmup < 0:
        ap.error("--threads, --steps, --repeats, --sgemm-size, --sgemm-repeats must be >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads)

    from lab.features import FeatureCache
    from lab.recipe import load_recipe
    from lab.spine import ExperimentData

    started = time.perf_counter()
    sgemm = [sgemm_gflops(args.sgemm_size, args.sgemm_repeats)]
    rows, cache, loaded = [], FeatureCache(), {}
    for name in args.arch or list(ARCHITECTURES):
        recipe = load_recipe(REPO / ARCHITECTURES[name], ["train.progress=false", *args.set])
        if args.synthetic:
            feats, labels, classes = _synthetic(recipe, recipe.train.batch_size * max(1, min(args.steps, 4)))
        else:
            key = json.dumps(recipe.data.model_dump(mode="json"), sort_keys=True)
            data = ExperimentData(recipe, cache=cache, log=lambda s: None, dataset=loaded.get(key))
            loaded[key] = data.dataset
            feats, labels, classes = data.features(data.clean_train), data.clean_train.labels, data.num_classes
        rows.append(measure(name, recipe, feats, labels, classes, args.steps, args.repeats, args.warmup))
    sgemm.append(sgemm_gflops(args.sgemm_size, args.sgemm_repeats))
    limit = max(sgemm)
    for r in rows:
        r["fraction_of_sgemm"] = r["gflops"] / limit
    report = {"threads": torch.get_num_threads(), "cpu": _cpu(), "torch": torch.__version__,
              "sgemm_size": args.sgemm_size, "sgemm_gflops": sgemm, "limit_gflops": limit, "rows": rows,
              "steps": args.steps, "repeats": args.repeats, "synthetic": args.synthetic,
              "wall_seconds": time.perf_counter() - started}
    print_report(report)
    return report


def print_report(report: dict) -> None:
    from lab.provenance import git_commit
    s = report["sgemm_gflops"]
    print(f"{report['cpu']}, torch {report['torch']}, {report['threads']} thread(s), commit "
          f"{git_commit().get('commit')}; {report['steps']} steps x best of {report['repeats']}"
          f"{' (synthetic inputs)' if report['synthetic'] else ''}")
    print(f"machine limit: sgemm {report['sgemm_size']}x{report['sgemm_size']} float32: {s[0]:.1f} GFLOP/s before, "
          f"{s[1]:.1f} after the models (limit {report['limit_gflops']:.1f})")
    head = (f"{'architecture':<17} {'batch':>5} {'params':>8} {'GFLOP/step':>10} {'of which analytic':>17} "
            f"{'ms/step':>8} {'GFLOP/s':>8} {'of sgemm':>8} {'time in mm/conv':>15} {'GFLOP/s there':>13}")
    print(head)
    print("-" * len(head))
    for r in report["rows"]:
        print(f"{r['name']:<17} {r['batch_size']:>5} {r['params']:>8,} {r['total'] / 1e9:>10.3f} "
              f"{r['analytic'] / 1e9:>17.3f} {r['seconds_per_step'] * 1e3:>8.1f} {r['gflops']:>8.2f} "
              f"{r['fraction_of_sgemm']:>8.1%} {r['heavy_time_share']:>15.0%} "
              f"{r['gflops'] / max(r['heavy_time_share'], 1e-9):>13.1f}")
    for r in report["rows"]:
        ops = ", ".join(f"{op.removeprefix('aten.')} {n / 1e9:.3f}" for op, n in
                        sorted(r["by_op"].items(), key=lambda kv: -kv[1]))
        print(f"  {r['name']}: counted by torch (GFLOP) {ops or 'nothing'}")
        rest = ", ".join(f"{op} {share:.0%}" for op, share in r["top_other_ops"])
        print(f"  {r['name']}: costliest other ops (share of op time): {rest}")
        if r["uncounted"]:
            note = (f"; the analytic LSTM count ({r['analytic'] / 1e9:.3f} GFLOP, 3x the forward gate products) is "
                    "added" if r["analytic"] else "; NOT added: the count is an undercount")
            print(f"  {r['name']}: counted 0 by torch: {', '.join(o.removeprefix('aten.') for o in r['uncounted'])}"
                  f"{note}")
    print("Elementwise ops (activations, norms, softmax, pooling, Adam) count 0 everywhere. "
          f"Wall {report['wall_seconds']:.0f} s.")


if __name__ == "__main__":
    main()
