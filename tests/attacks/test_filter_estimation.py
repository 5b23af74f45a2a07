"""Known-plaintext filter estimation recovers PosCUDA's positions and filters from noise-free pairs, and undoing them
brings the clips back; clean-finetune uses exactly the stated amount of clean data."""
from __future__ import annotations

import pytest
import torch

from attacks import build_attack
from attacks.base import AttackContext
from attacks.clean_finetune import clean_subset
from attacks.filter_estimate import changed_span, cosine, estimate_filter, true_filter_as_lags, undo_filter
from defenses.poscuda import PosCUDA, PosCUDAConfig

SR = 8000


def protected_set(n=60, seed=0, **kw):
    prot = PosCUDA(PosCUDAConfig(key="test-key-123456", **kw)).derive(10, SR)
    gen = torch.Generator().manual_seed(seed)
    clean = 0.2 * torch.randn(n, SR, generator=gen)
    labels = torch.arange(n) % 10
    return prot, clean, labels, prot.apply(clean, labels)


@pytest.mark.parametrize("filter_length", [31, 8, 3])
def test_estimate_recovers_a_known_filter(filter_length):
    prot, clean, labels, protected = protected_set(filter_length=filter_length)
    for c in range(10):
        rows = labels == c
        span = changed_span(clean[rows], protected[rows])
        true_start = int(prot.starts(labels[rows], SR)[0, 0])
        assert span[0] == true_start and span[1] - span[0] + 1 == prot.patch_len
        g = estimate_filter(clean[rows][:5], protected[rows][:5], span, 63)
        assert cosine(g, true_filter_as_lags(prot.filters[c, 0], 63)) >= 0.99


def test_undo_brings_the_patch_back():
    prot, clean, labels, protected = protected_set()
    rows = labels == 3
    span = changed_span(clean[rows], protected[rows])
    g = estimate_filter(clean[rows][:5], protected[rows][:5], span, 63)
    undone = undo_filter(protected[rows], span, g, 1e-6)
    before = (protected[rows] - clean[rows]).norm()
    after = (undone - clean[rows]).norm()
    # The patch's convolution matrix is badly conditioned (near-zeros of the filter's response: cond ~1e14), so no
    # deconvolution is exact; the regularised one must still remove most of the perturbation (measured: ~91%).
    assert after < 0.2 * before


def test_fft_undo_inverts_a_whole_clip_filter():
    from attacks.filter_estimate import undo_filter_fft
    from defenses import DEFENSES, build_defense
    from lab.config import parse_plugin
    cuda = build_defense(parse_plugin(DEFENSES, {"type": "cuda", "key": "test-key-123456", "output": "none"},
                                      "defense")).derive(10, SR)
    gen = torch.Generator().manual_seed(1)
    clean = 0.2 * torch.randn(20, 4000, generator=gen)
    labels = torch.zeros(20, dtype=torch.long)
    protected = cuda.apply(clean, labels)
    span = changed_span(clean[:5], protected[:5])
    assert span == (0, 3999)
    g = estimate_filter(clean[:5], protected[:5], span, 63)
    assert cosine(g, true_filter_as_lags(cuda.filters[0], 63)) >= 0.99
    undone = undo_filter_fft(protected, span, g, 1e-6)
    assert (undone - clean)[:, 100:-100].norm() < 0.2 * (protected - clean)[:, 100:-100].norm()


def test_estimate_attack_reports_recovery_and_cleans_the_training_set():
    prot, clean, labels, protected = protected_set(n=100)
    attack = build_attack({"type": "filter-estimate", "pairs_per_class": 3, "regularisation": 1e-6})
    ctx = AttackContext(clean=clean, protected=protected, labels=labels, lengths=torch.full((100,), SR),
                        protection=prot, sample_rate=SR, num_classes=10, seed=0)
    attack.start(ctx)
    out, out_labels = attack.training_set(ctx)
    m = attack.record()["measured"]
    assert m["position_hit_rate"] == 1.0 and m["filter_cosine_min"] >= 0.99
    assert (out - clean).norm() < 0.2 * (protected - clean).norm()
    assert torch.equal(protected, prot.apply(clean, labels)), "the protected set must not be modified"
    assert not attack.per_batch


@pytest.mark.parametrize("fraction, n, expected", [(0.01, 2700, 27), (0.05, 2700, 135), (0.001, 100, 1)])
def test_clean_finetune_uses_the_stated_amount_of_clean_data(fraction, n, expected):
    assert len(clean_subset(n, fraction, 0)) == expected
    seen = []
    attack = build_attack({"type": "clean-finetune", "fractions": [fraction]})
    clean = torch.randn(n, 16)
    ctx = AttackContext(clean=clean, protected=clean + 1, labels=torch.arange(n) % 10, lengths=torch.full((n,), 16),
                        protection=None, sample_rate=SR, num_classes=10, seed=0,
                        finetune=lambda m, w, y, e: seen.append((w, e)) or m)
    attack.start(ctx)
    models = attack.after_training(torch.nn.Linear(2, 2), ctx)
    assert list(models) == [f"{100 * fraction:g}%"]
    assert seen[0][0].shape[0] == expected and seen[0][1] == attack.config.epochs
    assert any(torch.equal(seen[0][0][0], row) for row in clean), "fine-tuning data must be CLEAN clips"
