"""Long files in blocks (lab/protect/blocks.py), checked over the registry: for every defense lab protect can apply
whose protection has a block hook, a file protected block by block (tiny blocks, so that patches and their filters'
context straddle block boundaries) gives the very bytes the whole-file path gives, for several channel counts and
subtypes; a defense without one is protected whole and its record says so. No list of defense names here."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf

from defenses.base import build_defense
from lab.protect import blocks, worker
from lab.protect.audiofile import decode, encode
from lab.protect.protector import defense_config, defense_fields_of, file_by_file_defenses

SR = 8000
OPTION_SETS = {"defaults": {}, "wide-filter-clipped": {"patches_per_class": 3, "filter_length": 65, "output": "clip"},
               "repeats": {"patches_per_class": 2, "repeat_seconds": 0.13}}
CASES = [(kind, name) for kind in file_by_file_defenses() for name, opts in OPTION_SETS.items()
         if set(opts) <= set(defense_fields_of(kind))]


def source(frames: int, channels: int, subtype: str, seed: int = 0) -> bytes:
    """A WAV file of loud noise and a tone (some protected samples go past full scale)."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None] / SR
    data = 0.6 * np.sin(2 * np.pi * 300 * t * (1 + np.arange(channels))) + 0.3 * rng.standard_normal((frames, channels))
    buf = io.BytesIO()
    sf.write(buf, np.clip(data, -1, 1).astype(np.float32), SR, subtype=subtype, format="WAV")
    return buf.getvalue()


@pytest.mark.parametrize("kind, options", CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_streamed_output_equals_the_whole_file_bit_for_bit(kind, options, key_file):
    prot = build_defense(defense_config(key_file, {"type": kind, **OPTION_SETS[options]})).derive(3, SR)
    if prot.block_plan(1, 20000, 1) is None:
        pytest.skip(f"{kind} ({options}) has no block hook: protected whole (test_a_long_file_without_a_hook...)")
    for frames, channels, subtype, cls, block in [(20011, 1, "PCM_16", 1, 997), (16000, 2, "FLOAT", 2, 1000),
                                                  (12345, 3, "PCM_24", 0, 4096)]:
        blob = source(frames, channels, subtype, seed=frames)
        dec = decode(blob)
        whole, whole_over = encode(worker.protect_samples(prot, dec.data, cls), dec)
        like, n, ch = blocks.header(io.BytesIO(blob))
        assert (n, ch) == (frames, channels)
        out = io.BytesIO()
        over = blocks.stream_protect(prot, prot.block_plan(cls, n, ch), io.BytesIO(blob), like, cls, out, block)
        assert out.getvalue() == whole, (kind, options, subtype, channels)
        assert over == whole_over
        assert whole != encode(dec.data, dec)[0]  # the protection changed something


def run_protect(cli, src, out, key_file, kind, options=()):
    return cli("protect", str(src), str(out), "--key-file", str(key_file), "--defense", kind, "--workers", "0",
               *[a for k, v in options for a in ("--option", f"{k}={v}")])
