"""early-stop: the held-out clean clips are not trained on, and the model kept is the best epoch on them."""
from __future__ import annotations

from pathlib import Path

import torch

from attacks import ATTACKS, build_attack
from attacks.early_stop import holdout_indices

REPO = Path(__file__).resolve().parents[2]


def test_holdout_takes_a_share_of_every_class_and_leaves_each_some_to_train_on():
    labels = torch.arange(10).repeat_interleave(30)
    idx = holdout_indices(labels, 10, 0.01, None, seed=0)
    assert torch.bincount(labels[idx], minlength=10).tolist() == [1] * 10  # 1% of 30 rounds to 0: at least one
    idx5 = holdout_indices(labels, 10, 0.01, 5, seed=0)
    assert torch.bincount(labels[idx5], minlength=10).tolist() == [5] * 10
    assert not torch.equal(holdout_indices(labels, 10, 0.1, None, seed=1), holdout_indices(labels, 10, 0.1, None, 2))
    few = torch.tensor([0, 0, 1])
    assert holdout_indices(few, 2, 0.5, 9, seed=0).tolist() in ([0], [1])  # class 0 keeps one; class 1 has one


def test_early_stop_keeps_the_best_epoch_on_clips_it_did_not_train_on(fsdd_dir):
    from lab.attacking import train_under_attack
    from lab.recipe import load_recipe
    from lab.spine import ExperimentData
    from lab.train import evaluate
    assert "early-stop" in ATTACKS
    recipe = load_recipe(REPO / "recipes" / "fsdd_cnn.yaml", [
        f"data.root={fsdd_dir}", "data.max_train_per_class=20", "data.max_test_per_class=3", "train.epochs=4",
        "train.progress=false", "seeds=[0]", "train.num_threads=1"])
    data = ExperimentData(recipe, log=lambda s: None)
    attack = build_attack({"type": "early-stop", "holdout_per_class": 3})
    trained_on = []
    original = attack.training_set
    attack.training_set = lambda ctx: trained_on.append(original(ctx)) or trained_on[-1]
    models, _ = train_under_attack(recipe, data, attack, 0)
    waves, labels = trained_on[0]
    held = attack.holdout
    assert len(held) == 30 and len(waves) == 200 - 30
    protected = data.protected_train.waveforms
    # none of the held-out clips (neither protected nor clean) is in what was trained on
    for i in held.tolist():
        assert not (waves == protected[i]).all(dim=1).any()
        assert not (waves == data.clean_train.waveforms[i]).all(dim=1).any()
    m = attack.record()["measured"]
    assert m["holdout_clips"] == 30 and m["epochs"] == 4 and len(m["holdout_accuracy"]) == 4
    assert m["best_epoch"] == m["holdout_accuracy"].index(max(m["holdout_accuracy"])) + 1
    # the returned model IS the best epoch's: it scores the held-out clean clips as that epoch did
    clean = data.clean_train
    acc = evaluate(models[""], recipe.train, data.features(clean.waveforms[held]), clean.labels[held])["accuracy"]
    assert abs(acc - max(attack.monitor.history)) < 1e-6
