"""Plots for people: frontier, learning curves, and one protected clip per class with its patch marked."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def frontier_plot(rows: list[dict], cost: list[float], cost_label: str, path: Path) -> None:
    """Protected model's clean-test accuracy against the quality cost, one colour per (model, feature), the Pareto
    front marked and joined."""
    fig, ax = plt.subplots(figsize=(7, 5))
    groups = sorted({(r["model"], r["feature"]) for r in rows})
    for g in groups:
        idx = [i for i, r in enumerate(rows) if (r["model"], r["feature"]) == g]
        ax.errorbar([cost[i] for i in idx], [rows[i]["protected_clean_acc"] for i in idx],
                    yerr=[rows[i]["protected_clean_acc_std"] for i in idx], fmt="o", capsize=3,
                    label=f"{g[0]} / {g[1]}")
    front = sorted((cost[i], rows[i]["protected_clean_acc"]) for i, r in enumerate(rows) if r.get("pareto"))
    if front:
        ax.plot(*zip(*front), "k--", lw=1, label="Pareto front")
        ax.scatter(*zip(*front), s=160, facecolors="none", edgecolors="k")
    if min(cost) > 0 and max(cost) / min(cost) > 50:
        ax.set_xscale("log")  # FAD spans orders of magnitude across a sweep
    ax.set_xlabel(cost_label)
    ax.set_ylabel("clean-test accuracy of the protected-trained model")
    ax.set_title("protection / quality frontier (lower-left is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_metrics(csv_path: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch values of each logged metric in a Lightning CSVLogger metrics.csv."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(csv_path) as fh:
        for row in csv.DictReader(fh):
            for key, value in row.items():
                if key not in ("epoch", "step") and value not in ("", None):
                    series.setdefault(key, []).append((int(float(row["epoch"])), float(value)))
    return series


def learning_curves(panels: list[tuple[str, list[Path]]], path: Path) -> None:
    """Clean-test accuracy per epoch (monitoring only) of clean- and protected-trained models, one panel per
    (label, run folders) group and one line per seed, so that many models x features stay readable."""
    colours = {"clean_model": "tab:blue", "protected_model": "tab:red"}
    names = {"clean_model": "clean-trained, clean test", "protected_model": "protected-trained, clean test"}
    panels = panels or [("no runs", [])]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows + 0.6), sharey=True, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    labelled = set()
    for ax, (title, run_dirs) in zip(axes.flat, panels):
        for run_dir in run_dirs:
            for which, colour in colours.items():
                for metrics in sorted((Path(run_dir) / "logs" / which).glob("seed*/metrics.csv")):
                    val = read_metrics(metrics).get("val_acc", [])
                    if val:
                        label = None if which in labelled else names[which]
                        labelled.add(which)
                        ax.plot(*zip(*val), color=colour, alpha=0.7, lw=1.2, label=label)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("clean-test accuracy", fontsize=8)
    fig.suptitle("learning curves, one line per seed", fontsize=10)
    if labelled:  # a figure legend gathers the labelled lines of every panel
        fig.legend(loc="lower center", ncol=2, fontsize=8)
    fig.tight_layout(rect=(0, 0.06 if labelled else 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def protected_spectrograms(waveforms: torch.Tensor, protected: torch.Tensor, labels: torch.Tensor,
                           class_names: list[str], patch_spans: list[list[tuple[int, int]]], sample_rate: int,
                           path: Path) -> None:
    """One clip per class: the log-spectrogram of the protected clip, with the patch span(s) marked, and the
    difference to the clean clip underneath."""
    import torchaudio.transforms as T
    spec = T.Spectrogram(n_fft=256, hop_length=64)
    n = len(class_names)
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.6), sharey=True)
    axes = axes.reshape(2, n)
    for c in range(n):
        idx = int((labels == c).nonzero()[0])
        for row, x in enumerate((protected[idx], protected[idx] - waveforms[idx])):
            s = torch.log10(spec(x) + 1e-8)
            ax = axes[row, c]
            ax.imshow(s.numpy(), origin="lower", aspect="auto",
                      extent=(0, x.shape[0] / sample_rate, 0, sample_rate / 2000))
            for start, stop in patch_spans[idx]:
                ax.axvspan(start / sample_rate, stop / sample_rate, color="w", alpha=0.25, lw=0)
                ax.axvline(start / sample_rate, color="w", lw=0.8)
                ax.axvline(stop / sample_rate, color="w", lw=0.8)
            ax.set_title(f"{class_names[c]}" if row == 0 else "difference", fontsize=8)
            ax.tick_params(labelsize=6)
    axes[0, 0].set_ylabel("protected\nkHz", fontsize=7)
    axes[1, 0].set_ylabel("protected - clean\nkHz", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
