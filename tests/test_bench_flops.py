"""bench/bench_flops.py: its FLOP counts are right where they can be worked out by hand, the LSTM (which torch's
counter does not count on the CPU) gets its analytic count, and the script runs end to end on a tiny setting."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_flops", REPO / "bench" / "bench_flops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _step_counts(bench, model, batch, features):
    x, y = torch.randn(batch, *features), torch.randint(0, 3, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return bench.count_step(model, opt, x, y, torch.zeros(()), torch.ones(()))


def test_linear_step_is_counted_exactly(bench):
    # forward x @ W^T: 2*batch*in*out; backward: only W's gradient (the input needs none), the same again
    batch, d_in, d_out = 8, 12, 3
    got = _step_counts(bench, nn.Linear(d_in, d_out), batch, (d_in,))
    assert got["total"] == got["counted"] == 2 * (2 * batch * d_in * d_out)
    assert got["uncounted"] == [] and got["analytic"] == 0


def test_two_linear_layers_count_the_hidden_gradient(bench):
    # the second layer's input (the hidden activations) needs a gradient: one more product of the same size
    batch, d_in, hidden, d_out = 4, 6, 5, 3
    model = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))
    first, second = 2 * batch * d_in * hidden, 2 * batch * hidden * d_out
    assert _step_counts(bench, model, batch, (d_in,))["total"] == 2 * first + 3 * second


def _unrolled_lstm(lstm: nn.LSTM, x: torch.Tensor) -> torch.Tensor:
    """nn.LSTM (batch_first, one direction) written out step by step with F.linear, which the counter counts."""
    h_seq = x
    for layer in range(lstm.num_layers):
        w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
        b_ih, b_hh = getattr(lstm, f"bias_ih_l{layer}"), getattr(lstm, f"bias_hh_l{layer}")
        h = c = torch.zeros(x.shape[0], lstm.hidden_size)
        outs = []
        for t in range(h_seq.shape[1]):
            i, f, g, o = (F.linear(h_seq[:, t], w_ih, b_ih) + F.linear(h, w_hh, b_hh)).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        h_seq = torch.stack(outs, dim=1)
    return h_seq


def test_lstm_analytic_count_matches_the_counter_on_the_unrolled_lstm(bench):
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 7, num_layers=2, batch_first=True)
    x = torch.randn(3, 4, 5)
    with torch.no_grad():
        assert torch.allclose(_unrolled_lstm(lstm, x), lstm(x)[0], atol=1e-5)  # the same computation
        with FlopCounterMode(display=False) as counter:
            _unrolled_lstm(lstm, x)
    assert bench.lstm_flops(lstm, 3, 4) == counter.get_total_flops() > 0


def test_lstm_step_gets_the_analytic_count_added(bench):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.head = nn.LSTM(5, 8, num_layers=2, batch_first=True), nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.lstm(x)[0].mean(dim=1))

    got = _step_counts(bench, Net(), 4, (6, 5))  # batch 4, 6 steps of 5 features
    head = 3 * (2 * 4 * 8 * 3)  # the head's forward, weight and input gradients: counted by torch
    if got["uncounted"]:  # the fused LSTM kernel, which torch's counter does not count (so far, on the CPU)
        assert any("rnn" in op or "lstm" in op for op in got["uncounted"])
        assert got["counted"] == head
        assert got["analytic"] == 3 * bench.lstm_flops(Net().lstm, 4, 6)
    else:  # a torch that counts the LSTM itself: nothing may be added twice
        assert got["analytic"] == 0 and got["counted"] > head
    assert got["total"] == got["counted"] + got["analytic"]


def test_sgemm_rate_is_positive(bench):
    assert bench.sgemm_gflops(64, 2) > 0


def test_main_runs_on_a_tiny_setting(bench, capsys):
    report = bench.main(["--synthetic", "--arch", "cnn-mfcc", "--arch", "lstm-mfcc", "--steps", "1", "--repeats",
                         "1", "--warmup", "0", "--sgemm-size", "64", "--sgemm-repeats", "1",
                         "--set", "train.batch_size=4"])
    out = capsys.readouterr().out
    assert [r["name"] for r in report["rows"]] == ["cnn-mfcc", "lstm-mfcc"]
    assert report["threads"] == 1 and report["limit_gflops"] == max(report["sgemm_gflops"]) > 0
    cnn, lstm = report["rows"]
    assert cnn["batch_size"] == 4 and cnn["analytic"] == 0 and cnn["total"] > 0
    assert "aten.convolution" in cnn["by_op"] and "aten.convolution_backward" in cnn["by_op"]
    assert lstm["total"] > lstm["counted"]  # the LSTM counted 0 by torch, the analytic count added
    for r in report["rows"]:
        assert r["gflops"] == pytest.approx(r["total"] / r["seconds_per_step"] / 1e9)
        assert r["fraction_of_sgemm"] == pytest.approx(r["gflops"] / report["limit_gflops"])
        assert 0 < r["heavy_time_share"] <= 1
    assert "of sgemm" in out and "cnn-mfcc" in out and "mkldnn_rnn_layer" in out
