"""``strong-augment``: a strong random augmentation chain on every training batch, UEraser-style (Qin et al., ICCVW
2023: its "Lite" form, a strong random chain, restores near-clean accuracy against image poisons; its "Max" form
trains on the worst of K augmentations).

Every clip of every batch goes through these steps in order, each applied to a clip with its probability ``p`` and
with the clip's own parameters (all drawn from the attack's generator, recorded as ``batch_seed``):

- ``speed``: played ``s`` times faster, ``s`` in [min_factor, max_factor] (pitch and tempo together; linear interpolation);
- ``pitch``: the STFT magnitudes moved along the frequency axis by 2**(semitones / 12), semitones in [min, max],
  the phases kept (a crude, cheap, batched pitch/formant warp; not a phase vocoder);
- ``shift``: moved by up to ``max_seconds`` either way; what leaves the clip is dropped and zeros come in;
- ``crop``: up to ``max_fraction`` of the clip silenced at its start and, independently, at its end;
- ``reverb``: convolved with a synthetic room: an exponentially decaying white-noise impulse response with a
  60 dB decay time (RT60) in [min_rt60, max_rt60] s, a direct path of 1 and a tail of relative energy ``wet`` in
  [min_wet, max_wet]; the result is scaled back to the clip's energy;
- ``low_pass``: an ideal FFT low-pass at a cut-off in [min_hz, max_hz];
- ``high_pass``: an ideal FFT high-pass at a cut-off in [min_hz, max_hz] (with ``low_pass``: a band-pass);
- ``spec_mask``: SpecAugment on the waveform's STFT (the attack interface acts on waveforms, before the recipe's
  front-end): ``freq_masks`` bands of up to ``max_freq_fraction`` of the bins and ``time_masks`` spans of up to
  ``max_time_fraction`` of the frames set to zero, then back to a waveform;
- ``gain``: multiplied by a gain in [min_db, max_db] dB;
- ``noise``: white noise added at a per-clip SNR in [min_snr_db, max_snr_db] dB (over the whole clip).

The defaults hold the outside trainer's audiomentations chain (time shift up to +-0.15 s, low-pass 1.5-3.5 kHz,
gain, noise), which lifted class-wise EM noise at 20 dB to 0.617, at its ranges, with the other steps on top; shift,
low-pass and noise apply to every clip (p 1.0): with p 0.8/0.7/0.6 the chain reached 0.553 on that protection, with
1.0 0.628 (docs/attacks.md). Each step is batched over the clips that draw it (no loop over clips).

``k`` > 1 is the "Max" form: K augmentations of the batch are drawn and each clip keeps the one on which the model
being trained has the highest cross-entropy (scored without gradients, the model in eval mode); K forward passes
more per batch.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from attacks.base import ATTACKS, Attack
from lab.augment import StrongChain, augment_chain
from lab.config import PluginConfig


class StrongAugmentConfig(StrongChain, PluginConfig):
    type: Literal["strong-augment"] = "strong-augment"
    k: int = Field(1, ge=1, le=16)


@ATTACKS.register("strong-augment")
class StrongAugment(Attack):
    """A strong random augmentation chain per clip and batch (UEraser-Lite); ``k`` > 1: the worst of K per clip
    by the model's loss (UEraser-Max)."""

    Config = StrongAugmentConfig
    per_batch = True
    draws_per_batch = True

    def transform_batch(self, waveforms, labels, module=None):
        sr = self.sample_rate or 8000
        if self.config.k == 1:
            return augment_chain(waveforms, sr, self.config, self.gen)
        if module is None or not hasattr(module, "features"):
            raise ValueError("strong-augment with k > 1 scores its augmentations with the model being trained: "
                             "it needs a module with a waveform front-end")
        candidates = [augment_chain(waveforms, sr, self.config, self.gen) for _ in range(self.config.k)]
        was_training = module.training
        module.eval()
        with torch.no_grad():
            losses = torch.stack([F.cross_entropy(module(module.features(c)), labels, reduction="none")
                                  for c in candidates])  # (K, B)
        module.train(was_training)
        pick = losses.argmax(dim=0)
        return torch.stack(candidates)[pick, torch.arange(len(labels), device=pick.device)]
