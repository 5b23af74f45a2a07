"""Shared by the optimised defenses' resume tests: a derivation stopped by Ctrl-C after its first round."""
from __future__ import annotations

import dataclasses
import io

import pytest
import torch


def state_after_round_1(defense, data) -> dict:
    """``defense.derive_from(data)`` interrupted (KeyboardInterrupt) by its checkpoint hook after round 1: the state
    it saved, written and read back as lab protect does (``torch.save``, then ``torch.load(weights_only=True)``)."""
    saved = []

    def stop_after_round_1(state):
        buf = io.BytesIO()
        torch.save(state, buf)
        saved.append(buf.getvalue())
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        defense.derive_from(dataclasses.replace(data, checkpoint=stop_after_round_1))
    return torch.load(io.BytesIO(saved[0]), weights_only=True)
