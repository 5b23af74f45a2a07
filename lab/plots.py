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
    """Per-epoch values of each logged metric in a Lightning CSVLogger metrics.csv, in epoch order (a metric logged
    several times in one epoch, e.g. per step, is averaged over it)."""
    rows: dict[str, dict[int, list[float]]] = {}
    with open(csv_path) as fh:
        for row in csv.DictReader(fh):
            for key, value in row.items():
                if key not in ("epoch", "step") and value not in ("", None):
                    rows.setdefault(key, {}).setdefault(int(float(row["epoch"])), []).append(float(value))
    return {key: [(epoch, sum(v) / len(v)) for epoch, v in sorted(per_epoch.items())]
            for key, per_epoch in rows.items()}


CURVE_COLOURS = {"clean_model": "tab:blue", "protected_model": "tab:red"}
CURVE_NAMES = {"clean_model": "clean-trained", "protected_model": "protected-trained"}


def learning_curves_figure(panels: list[tuple[str, list[Path]]]):
    """The figure of :func:`learning_curves` (a matplotlib Figure, not yet saved): per panel, clean-test accuracy
    (solid, left axis) and training loss (dashed, right axis) per epoch, one line per seed and model, a marker on
    every epoch (so that a one-epoch run still shows) and whole-number epoch ticks."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    panels = panels or [("no runs", [])]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.0 * rows + 0.8), sharey=True, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    drawn: set[str] = set()
    loss_axes = []
    for ax, (title, run_dirs) in zip(axes.flat, panels):
        loss_ax = None
        epochs: set[int] = set()
        for run_dir in run_dirs:
            for which, colour in CURVE_COLOURS.items():
                for metrics in sorted((Path(run_dir) / "logs" / which).glob("seed*/metrics.csv")):
                    series = read_metrics(metrics)
                    epochs |= {e for name in ("val_acc", "train_loss") for e, _ in series.get(name, [])}
                    if series.get("val_acc"):
                        drawn.add(which)
                        ax.plot(*zip(*series["val_acc"]), color=colour, alpha=0.75, lw=1.2, marker="o", ms=3,
                                label=f"{CURVE_NAMES[which]}: clean-test accuracy")
                    if series.get("train_loss"):
                        drawn.add(which)
                        if loss_ax is None:
                            loss_ax = ax.twinx()
                            loss_axes.append(loss_ax)
                        loss_ax.plot(*zip(*series["train_loss"]), color=colour, alpha=0.6, lw=1.0, ls="--",
                                     marker="s", ms=3, mfc="none", label=f"{CURVE_NAMES[which]}: training loss")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("epoch", fontsize=8)
        if epochs:  # whole epochs only, with room around a single one
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if loss_ax is not None:
            loss_ax.set_ylabel("training loss", fontsize=8)
            loss_ax.tick_params(labelsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("clean-test accuracy", fontsize=8)
    fig.suptitle("learning curves, one line per seed", fontsize=10)
    if drawn:  # one legend for the figure: a colour per model, a line style per quantity
        handles = [Line2D([], [], color=CURVE_COLOURS[w], marker="o", ms=3, label=CURVE_NAMES[w])
                   for w in CURVE_COLOURS if w in drawn]
        handles += [Line2D([], [], color="grey", marker="o", ms=3, label="clean-test accuracy (left axis)"),
                    Line2D([], [], color="grey", ls="--", marker="s", ms=3, mfc="none",
                           label="training loss (right axis)")]
        fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=7)
    fig.tight_layout(rect=(0, 0.1 / rows if drawn else 0, 1, 0.95))
    return fig


def learning_curves(panels: list[tuple[str, list[Path]]], path: Path) -> None:
    """Clean-test accuracy (monitoring only) and training loss per epoch of clean- and protected-trained models,
    read from each run's logs/<model>/seed*/metrics.csv: one panel per (label, run folders) group and one line per
    seed, so that many models x features stay readable. Written to ``path`` (PNG)."""
    fig = learning_curves_figure(panels)
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
