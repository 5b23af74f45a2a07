"""``em-noise`` and ``robust-em``: error-minimising noise (Huang et al., "Unlearnable Examples", ICLR 2021) and its
robust variant (Fu et al., "Robust Unlearnable Examples", ICLR 2022), on the waveform.

The noise is optimised by min-min (defenses/_minmin.py) against a surrogate: the recipe's own model on its own
features by default (``surrogate`` changes them, e.g. ``{model: {type: lstm}}``), trained by the defense itself on the
perturbed clips while the noise is pushed to make the surrogate's loss small. The gradient reaches the waveform
through the recipe's differentiable front-end (torchaudio MFCC / log-mel, or the raw waveform).

- ``mode``: ``sample-wise`` (default: every training clip its own noise, the paper's strongest form) or
  ``class-wise`` (one noise pattern per class, added to every clip of the class).
- The budget, per clip, in the data owner's terms (``snr_db`` and/or ``linf``):

  * ``snr_db`` (default 30): every clip's SNR (its real audio against the noise, float64) is at least ``snr_db``.
    Sample-wise: the noise of clip n is kept inside the L2 ball of radius ``|x_n| 10^(-snr_db/20)`` (projected after
    every step; descent steps are normalised-gradient steps of ``step_size`` times that radius). Class-wise: the
    class pattern (unit RMS) is scaled, clip by clip, to exactly ``snr_db``, as ``classwise-noise`` does.
  * ``linf`` (waveform units, full scale 1.0): |noise| <= ``linf`` on every sample (clipped after the SNR scaling, so
    both hold). With ``linf`` alone the sample-wise steps are signed-gradient steps of ``step_size * linf``.

  * ``masking_margin_db`` (off by default): the ``masking`` budget (docs/masking.md): the noise's power in every
    frame and bin at most the clean clip's masking threshold plus the margin. Sample-wise: a projection
    (lab.masking.limit_to_threshold, with the clips' thresholds computed once) after every step, after the L2 and
    L-infinity ones, so the stored noise meets it; class-wise: the scaled class pattern shaped the same way inside
    the optimised function (differentiable), and whenever it is applied. Alone (no ``snr_db``, no ``linf``) the
    sample-wise steps are normalised-gradient steps of ``step_size`` times the L2 norm of noise that fills each
    clip's threshold.

  Noise goes only into each clip's real audio, never its zero padding. Silent clips get none.
- Stop rule (the paper's): the surrogate's accuracy on the perturbed training clips reaches ``stop_accuracy``
  (default 0.99), checked after every round; at most ``max_rounds`` rounds (the record says whether the rule was met
  and how long it took). ``steps`` descent steps per batch per round, ``train_batches`` surrogate batches per round.
- ``robust-em`` is the same with ``rho`` > 0 (default 0.001, L-infinity): each batch is first moved adversarially
  within +-``rho`` (``rho_steps`` PGD steps) before the surrogate trains on it and before the noise descends on it.
  Fu et al. keep the adversarial radius below the noise's own (their 4/255 against 8/255): ``rho`` should be smaller
  than the noise's typical amplitude (at 30 dB on FSDD about 0.0015 RMS).

Everything random (the surrogate's weights, batch order, the start of the noise) comes from a seed derived from the
key (HMAC, "em-noise/v1/surrogate"): the same key and data give the same noise in one process (tested). Across
processes it is floating-point arithmetic and not guaranteed bit-identical: two 2-thread runs of the CI positive
control differed from round 1 (surrogate accuracy 0.792 vs 0.799). Reproduce a run from its RECORD, which is exact.
Only the key's fingerprint is recorded.

What is recorded, and where: sample-wise noise is one tensor per training clip, stored as float16 in the run's
``protection.pt`` (:meth:`Protection.arrays`; the values applied are exactly these float16 values), with the SHA-256
of each clip's real samples in ``protection.json`` to find its noise again. Applied to a clip it was not optimised
for (the test set, a new file), sample-wise noise changes nothing: it exists only for the training clips, so its
``protected_test`` equals ``clean_test``. Class-wise noise applies to any clip of a known class. The noise is as
secret as the key: it never goes into a folder meant for publishing.

``lab protect`` optimises it on a collection's own files (mono working clips at one rate, see
lab/protect/optimise.py) and writes it onto each file at the file's own rate and length
(:class:`defenses._samplewise.EMNoiseFiles`, :data:`defenses._samplewise.MAPPING`): class-wise, the class pattern
resampled, repeated over the file and scaled per channel to ``snr_db``; sample-wise, the noise of the file's own
working clip resampled and added to the part of the file the clip came from, then held to the budget per channel. A
long file is written a block at a time with the very bytes of the whole file (the block hooks of EMNoiseFiles; not
with a masking budget), see docs/protect.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, SecretStr, model_validator

from defenses._minmin import ClassPatterns, MinMinSettings, OptimisedDefense
from defenses._samplewise import EMNoiseProtection, SampleNoise, clip_hash
from defenses.base import DEFENSES, TrainingSet
from lab.config import PluginConfig
from lab.keys import fingerprint
from lab.masking import MaskingBudget, check_budget


class EMNoiseConfig(PluginConfig, MinMinSettings, MaskingBudget):
    type: Literal["em-noise"] = "em-noise"
    key: SecretStr | None = None
    key_file: Path | None = None
    mode: Literal["sample-wise", "class-wise"] = "sample-wise"
    snr_db: float | None = 30.0
    linf: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _a_budget(self):
        check_budget(self.snr_db, self.linf, self.masking_margin_db)
        return self


class RobustEMConfig(EMNoiseConfig):
    type: Literal["robust-em"] = "robust-em"  # type: ignore[assignment]
    rho: float = Field(0.001, gt=0)


class RobustEMProtection(EMNoiseProtection):
    name = "robust-em"


@DEFENSES.register("em-noise")
class EMNoise(OptimisedDefense):
    """Error-minimising noise (sample- or class-wise), optimised on a surrogate within a per-clip budget."""

    Config = EMNoiseConfig
    record_type = EMNoiseProtection
    additive = True
    seed_label = "em-noise/v1/surrogate"
    cache_sources = (SampleNoise,)  # defenses/_samplewise.py: its code makes the noise (the cache's name)

    def derive_from(self, data: TrainingSet) -> EMNoiseProtection:
        cfg: EMNoiseConfig = self.config
        key = self._key()
        seed = self.surrogate_seed()
        gen = torch.Generator().manual_seed(seed)
        kind = SampleNoise if cfg.mode == "sample-wise" else ClassPatterns
        pert = kind(data, cfg.snr_db, cfg.linf, cfg.step_size, gen, cfg.masking_margin_db)
        budget = [f"SNR >= {cfg.snr_db:g} dB" if cfg.snr_db is not None else "",
                  f"|noise| <= {cfg.linf:g}" if cfg.linf is not None else "",
                  f"masking threshold {cfg.masking_margin_db:+g} dB" if cfg.masking_margin_db is not None else ""]
        data.log(f"{cfg.type}: optimising {cfg.mode} noise on {len(data.labels)} clips against a "
                 f"{data.description} surrogate (budget: {', '.join(b for b in budget if b)})")
        record = cfg.run(data, pert, seed)
        params = cfg.model_dump(exclude={"key", "key_file", "type"}, mode="json")
        if cfg.mode == "class-wise":
            return self.record_type(params, fingerprint(key), data.sample_rate, data.num_classes, record,
                                    patterns=pert.patterns.float())
        hashes = [clip_hash(w, int(n)) for w, n in zip(data.waveforms, data.lengths)]
        noise = pert.noise.to(torch.float16)
        return self.record_type(params, fingerprint(key), data.sample_rate, data.num_classes, record,
                                noise=noise, hashes=hashes)


@DEFENSES.register("robust-em")
class RobustEM(EMNoise):
    """Robust error-minimising noise: min-min with an adversarial inner step of radius ``rho``."""

    Config = RobustEMConfig
    record_type = RobustEMProtection
