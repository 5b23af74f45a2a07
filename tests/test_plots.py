"""Learning curves as matplotlib objects: every epoch marked (a one-epoch run still shows), whole-number epoch
ticks, and the training loss that metrics.csv holds."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from lab.plots import learning_curves_figure, read_metrics

# what Lightning's CSVLogger writes for one epoch: validation and training metrics on separate rows
ONE_EPOCH = "epoch,step,train_acc,train_loss,val_acc\n0,1,,,0.16\n0,1,0.1,2.44,\n"


def run_folder(root: Path, metrics: str) -> Path:
    for which in ("clean_model", "protected_model"):
        folder = root / "logs" / which / "seed0"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text(metrics)
    return root


def data_lines(fig):
    return [line for ax in fig.axes for line in ax.get_lines() if len(line.get_xdata())]


def test_one_epoch_run_is_drawn(tmp_path):
    fig = learning_curves_figure([("cnn/mfcc", [run_folder(tmp_path / "run", ONE_EPOCH)])])
    try:
        lines = data_lines(fig)
        assert len(lines) == 4  # accuracy and loss, for each of the two models
        assert all(line.get_marker() not in ("None", "", None) for line in lines)  # a single point is visible
        accuracy = [line for line in lines if "clean-test accuracy" in line.get_label()]
        loss = [line for line in lines if "training loss" in line.get_label()]
        assert len(accuracy) == 2 and len(loss) == 2
        assert list(loss[0].get_ydata()) == [pytest.approx(2.44)]
        main = fig.axes[0]
        lo, hi = main.get_xlim()
        ticks = [t for t in main.get_xticks() if lo <= t <= hi]
        assert ticks == [0]  # whole epochs only: no 0.015, 0.03, ...
        assert any(ax.get_ylabel() == "training loss" for ax in fig.axes)
    finally:
        plt.close(fig)


def test_epoch_ticks_are_whole_numbers(tmp_path):
    rows = "".join(f"{e},{e + 1},,,{0.1 * e}\n{e},{e + 1},0.5,{2 - 0.3 * e},\n" for e in range(7))
    fig = learning_curves_figure([("a", [run_folder(tmp_path / "a", "epoch,step,train_acc,train_loss,val_acc\n"
                                                    + rows)])])
    try:
        main = fig.axes[0]
        lo, hi = main.get_xlim()
        ticks = [t for t in main.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks)
    finally:
        plt.close(fig)


def test_read_metrics_one_value_per_epoch(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train_loss,val_acc\n0,1,2.0,\n0,2,1.0,\n0,2,,0.4\n1,3,0.5,\n1,3,,0.6\n")
    series = read_metrics(path)
    assert series["train_loss"] == [(0, 1.5), (1, 0.5)]  # logged per step: averaged over the epoch
    assert series["val_acc"] == [(0, 0.4), (1, 0.6)]
