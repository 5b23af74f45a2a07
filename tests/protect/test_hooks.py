"""lab protect's hooks, checked once over the registry: for every defense lab protect can apply, the batched hook
``apply_files`` gives each file exactly what ``apply`` gives it alone, and ``file_patches`` describes each file as it
would be described alone (no list of defense names here: a new file-by-file defense is checked as it registers)."""
from __future__ import annotations

import numpy as np
import pytest

from defenses.base import build_defense
from lab.protect import worker
from lab.protect.protector import defense_config, defense_fields_of, file_by_file_defenses


def chunk(seed: int = 0) -> list[tuple[np.ndarray, int]]:
    """Files of awkward lengths (shorter than a patch, shorter than a position, long) and channel counts."""
    rng = np.random.default_rng(seed)
    return [((0.3 * rng.standard_normal((n, ch))).astype(np.float32), n % 3) for n, ch in
            [(3000, 1), (9000, 2), (300, 1), (16000, 1), (7000, 3), (900, 2), (9000, 1)]]


OPTION_SETS = {"defaults": {}, "two-patches": {"patches_per_class": 2}, "repeats": {"repeat_seconds": 0.25}}
CASES = [(kind, name) for kind in file_by_file_defenses() for name, opts in OPTION_SETS.items()
         if set(opts) <= set(defense_fields_of(kind))]  # each defense with the option sets it has fields for


@pytest.mark.parametrize("kind, options", CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_the_batched_hook_equals_apply_file_by_file(kind, options, key_file):
    prot = build_defense(defense_config(key_file, {"type": kind, **OPTION_SETS[options]})).derive(3, 8000)
    items = chunk()
    batched = worker.protect_batch(prot, items)
    assert len(batched) == len(items)
    for (data, c), out in zip(items, batched):
        assert out.shape == data.shape
        assert np.array_equal(out, worker.protect_samples(prot, data, c)), (kind, data.shape)
    files = [(c, d.shape[0]) for d, c in items]
    assert worker.patches_of_files(prot, files) == [worker.patches_of(prot, c, n) for c, n in files]
