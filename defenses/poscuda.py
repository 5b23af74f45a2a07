"""PosCUDA: position-based convolution for unlearnable audio datasets (Gokul & Dubnov, arXiv 2401.02135).

For a clip of class ``i``, the patch of ``patch_seconds`` that starts at the key-derived position ``pos(i)`` is
convolved with the class-wise filter ``f_i`` (taps drawn from U(0, blur)); everything outside the patch is left
bit-identical. The paper publishes no code and leaves most details open, so each one is a named, recorded parameter:

- ``key`` / ``key_file``: the private key. Per-class positions and filters come from a generator seeded with
  HMAC-SHA256(key, "poscuda/v1/class/<i>"): the same key always gives the same protection, another key another one,
  and nothing about the key can be read back from them. Results record only the key's fingerprint.
- ``patch_seconds``: length of each blurred patch.
- ``filter_length``: number of taps k of each class filter.
- ``blur``: the blur factor b; taps are drawn i.i.d. from U(0, b).
- ``one_tap``: as in CUDA, one randomly chosen tap is set to 1.0 (keeps the patch recognisable as the original).
- ``filter_norm``: ``none`` (CUDA's choice), ``sum`` (taps scaled to sum 1: no gain change at low frequencies) or
  ``peak`` (largest tap scaled to 1).
- ``patches_per_class``: how many patches each clip of a class gets (each with its own position and filter).
- ``position_mode`` / ``position_range``: where patch starts may fall. ``absolute``: seconds from the clip start,
  the same for every clip of a class. ``relative``: fractions of each clip's own length (its real audio, before
  padding), so the patch follows the clip.
- ``output``: what happens to samples pushed past full scale. ``none`` leaves them (float audio; writing to 16-bit
  would clip them later), ``clip`` clips the patch samples to [-1, 1], ``normalize`` divides any clip whose peak
  exceeds 1 by that peak (the only mode that touches samples outside the patch).
- ``repeat_seconds`` (off by default): for long recordings (music, podcasts). Each patch ``j`` is applied again
  every ``repeat_seconds`` along the clip, at every start ``s_j + m * repeat`` (m any integer, negative included)
  whose patch lies inside the clip, so every stretch of ``repeat_seconds + patch_seconds`` seconds holds one full
  copy of every patch. Must be longer than ``patch_seconds``. Positions and filters are derived exactly as without
  it; only the number of places they are applied changes.

Rules at the edges: the convolution is "same"-aligned and reads the real neighbouring samples on both sides of the
patch (there is no artificial zero edge inside a clip; only beyond the clip's own ends are samples zero). A patch whose
start would leave it hanging past the end of the clip is moved left to end at the clip's end; a clip shorter than a
patch is convolved as a whole.

This module registers the defense; its configuration, key derivation and protection are in defenses/_patches.py,
which poscuda-opt (the same protection with optimised filters) and noise-patch (noise in the same patches) share.
"""
from __future__ import annotations

from defenses._patches import PosCUDAConfig, PosCUDAProtection, check_patches_fit, derive_poscuda
from defenses.base import DEFENSES, Defense


@DEFENSES.register("poscuda")
class PosCUDA(Defense):
    Config = PosCUDAConfig

    @classmethod
    def example_config(cls, key):
        return {"key": key, "patches_per_class": 2}  # two patches per clip: their order and positions at work

    @classmethod
    def check_fits(cls, config, clip_seconds):
        check_patches_fit(config, clip_seconds)

    def derive(self, num_classes: int, sample_rate: int) -> PosCUDAProtection:
        return derive_poscuda(self.config, num_classes, sample_rate)
