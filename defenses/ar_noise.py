"""``ar-noise``: autoregressive perturbations (after Sandoval-Segura et al., NeurIPS 2022, "Autoregressive
Perturbations for Data Poisoning") carried to 1-D audio: every clip of class c gets additive noise drawn from the
class's own stable all-pole (AR) process. No surrogate model is trained: the whole defense is derived from the key.

For audio the AR process is class-wise *coloured noise*: white Gaussian innovation filtered by ``1/A_c(z)``, with
``A_c(z) = 1 + a_1 z^-1 + ... + a_p z^-p``. The class is carried by the noise's power-spectrum shape
``1/|A_c(e^jw)|^2``, which a network picks up far more easily than the digits themselves.

- ``key`` / ``key_file``: the private key. Class c's reflection coefficients come from a generator seeded with
  HMAC-SHA256(key, "ar-noise/v1/class/<c>"); its noise seeds come from a per-class salt HMAC-SHA256(key,
  "ar-noise/v1/noise/<c>"). Only the key's fingerprint is recorded.
- ``order``: the AR order p (default 8). At 8 kHz, order 8 is the classic LPC order for speech: up to four
  resonances, enough for ten clearly different spectral envelopes, while the spectra stay smooth (broadband noise,
  not tones) and filtering costs 8 multiply-adds per sample.
- ``reflection_max``: the p reflection coefficients are drawn i.i.d. from U(-r, r) with r = ``reflection_max`` < 1 and
  turned into direct-form coefficients by the Levinson step-up recursion; |k_m| < 1 for every m is exactly the
  condition for ``1/A(z)`` to be stable (all poles inside the unit circle). Larger r: more pronounced spectra.
- ``pole_radius_max``: stable is not enough: uniform reflection coefficients put poles very near the unit circle at
  order 8 (median radius 0.98 for r = 0.7), i.e. narrow resonances (whistles) and transients that take thousands of
  samples to die out. Where a class's largest pole radius exceeds ``pole_radius_max`` its coefficients are
  bandwidth-expanded, a_i <- a_i g^i with g = pole_radius_max / radius, which moves every pole towards the origin by
  g: the resonances keep their frequencies and widen. The defaults (order 8, r = 0.7, 0.95) give spectral envelopes
  with a median 23 dB between their highest and lowest point and nearly uncorrelated between classes (median
  correlation of the log spectra about 0.03 over random draws). The drawn reflection coefficients, the expansion g,
  the final coefficients and each class's largest pole radius are recorded.
- ``noise``: ``per-clip`` (default) or ``classwise``.

  * ``per-clip``, as in the paper: every clip gets its own draw of its class's process. The innovation is seeded with
    HMAC(salt_c, "clip/<sha256 of the clean clip's real samples>"): deterministic, independent of the batch and of the
    clip's place in it, and derivable file by file from key + label + the file itself. This is the default for a
    data owner because the protection then has no fixed waveform: averaging many protected clips of one class does
    not reveal a pattern that could be subtracted; only the spectral envelope is shared, and taking it out (a
    per-class inverse filter) also filters the speech.
  * ``classwise``: one fixed AR sequence per class (the same samples for every clip of the class), derivable from key
    + label alone (no content hash), like ``classwise-noise`` but coloured.

- ``snr_db`` (default 30) and ``linf`` (off by default): the budget, see below. ``linf_mode``: ``scale`` (default)
  or ``clip``.
- ``span``: ``audio`` (default) or ``clip``, where the noise goes (below).
- ``masking_margin_db`` (off by default): the ``masking`` budget (docs/masking.md): after the budget below, the
  noise is shaped so that its power in every frame and bin is at most the clean clip's masking threshold plus the
  margin, on the clip's span (lab.masking.limit_to_threshold: the SNR and |d| bounds still hold); alone
  (``snr_db: null``, no ``linf``) the noise fills the threshold.

Where the noise goes (``span``): ``audio`` (default): only into each clip's real audio, never into its zero padding
(noise in the padding would be a shortcut no real recording has, and would not be there when the owner's files
are protected one by one). ``clip``: over the whole row, padding included, as ``classwise-noise`` does (for
comparisons with it). Without ``lengths`` both are the whole row. With ``lengths`` (N,) it is ``lengths[n]`` samples starting at 0 (``pad: right``); if the clip has
non-zero samples at or after ``lengths[n]`` (impossible with right padding) the audio must be centred
(``pad: both``) and the span starts at ``(T - lengths[n]) // 2``, where lab.data.audio puts it.

How the budget is met, clip by clip (computed in float64 over the clip's span; ``x`` the clean span, ``d`` the noise):

- ``snr_db`` alone: ``d`` is scaled so that 10 log10(sum x^2 / sum d^2) = ``snr_db`` exactly (up to float32
  rounding of the result, far below 0.001 dB); every non-silent clip meets the target, not just the average.
- ``linf`` alone (``snr_db: null``): ``d`` is scaled so that max |d| = ``linf`` (waveform units, full scale 1.0).
- both: ``d`` is first scaled to ``snr_db``; where its peak then exceeds ``linf`` it is scaled down to peak at
  ``linf`` (``scale``: the spectrum shape is kept, the clip's SNR rises above the target) or clipped to
  [-linf, linf] (``clip``: the loud samples are cut, which whitens the noise a little; SNR also rises). Either way
  every clip has SNR >= ``snr_db`` and |d| <= ``linf``.
- silent clips (all-zero spans) get no noise in every mode (their SNR is undefined; noise alone would be a pure
  shortcut, and there is nothing to protect).

The process is run for a warm-up of ``warmup_samples`` (recorded) before the clip's first sample, so the noise is
stationary: the warm-up is the number of samples after which the slowest pole's transient has decayed to 1e-6.
Samples pushed past full scale are kept (float audio), as PosCUDA's ``output: none``.

``lab protect`` / ``lab verify`` handle a long file a block at a time (the block hooks below, docs/protect.md "Long
files in bounded memory"), with the very bytes of the whole file; the energies are summed by ``lab.dsp.ENERGY_CHUNK``
in both paths.

The record (``to_dict``) holds the coefficients and the per-class salts, so it reproduces the noise exactly without
the key, and cannot be used to recover the key. Like PosCUDA's filters it is the owner's record: whoever holds it
can regenerate the noise (it is not published with the protected data).
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, SecretStr, model_validator

from defenses.base import DEFENSES, Defense, Protection
from lab import dsp
from lab.config import PluginConfig
from lab.dsp import add_energy
from lab.keys import derive_seed, fingerprint, resolve_key
from lab.masking import MaskingBudget, check_budget, limit_to_threshold


def lfilter(b, a, x, **kwargs):
    """scipy.signal.lfilter, imported when AR noise is drawn: scipy.signal takes about a second to import, which
    every `lab` command (even `lab list`) paid when this module imported it at the top."""
    from scipy.signal import lfilter as scipy_lfilter
    return scipy_lfilter(b, a, x, **kwargs)


WARMUP_TOLERANCE = 1e-6  # the warm-up lets the slowest transient decay to this fraction


class ARNoiseConfig(PluginConfig, MaskingBudget):
    type: Literal["ar-noise"] = "ar-noise"
    key: SecretStr | None = None
    key_file: Path | None = None
    order: int = Field(8, ge=1, le=64)
    reflection_max: float = Field(0.7, gt=0, lt=1)
    pole_radius_max: float = Field(0.95, gt=0, le=0.999)
    noise: Literal["per-clip", "classwise"] = "per-clip"
    snr_db: float | None = 30.0
    linf: float | None = Field(None, gt=0)
    linf_mode: Literal["scale", "clip"] = "scale"
    span: Literal["audio", "clip"] = "audio"

    @model_validator(mode="after")
    def _a_budget(self):
        check_budget(self.snr_db, self.linf, self.masking_margin_db)
        return self


def step_up(reflection: np.ndarray) -> np.ndarray:
    """Direct-form coefficients [1, a_1, ..., a_p] of A(z) from reflection coefficients k_1..k_p (Levinson step-up:
    a^(m)_i = a^(m-1)_i + k_m a^(m-1)_(m-i), a^(m)_m = k_m). ``1/A(z)`` is stable iff every |k_m| < 1."""
    a = np.ones(1)
    for k in np.asarray(reflection, dtype=np.float64):
        ext = np.concatenate([a, [0.0]])
        a = ext + k * ext[::-1]
    return a


def pole_radius(coefficients: np.ndarray) -> float:
    """The largest pole radius of ``1/A(z)`` (the roots of z^p + a_1 z^(p-1) + ... + a_p)."""
    return float(np.abs(np.roots(coefficients)).max()) if len(coefficients) > 1 else 0.0


def ar_power_spectrum(coefficients: np.ndarray, n_fft: int) -> np.ndarray:
    """The AR power spectrum 1/|A(e^jw)|^2 at the ``n_fft // 2 + 1`` frequencies of an ``n_fft``-point rFFT
    (unit innovation variance)."""
    return 1.0 / np.abs(np.fft.rfft(coefficients, n_fft)) ** 2


def spans(waveforms: torch.Tensor, lengths: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    """Start and length (N,) of each clip's real audio (see the module docstring)."""
    n, t = waveforms.shape
    if lengths is None:
        return np.zeros(n, dtype=np.int64), np.full(n, t, dtype=np.int64)
    length = lengths.detach().cpu().long().clamp(0, t)
    past = ((waveforms.detach().cpu() != 0) & (torch.arange(t)[None, :] >= length[:, None])).any(dim=1)
    start = torch.where(past, (t - length) // 2, torch.zeros_like(length))
    return start.numpy().astype(np.int64), length.numpy().astype(np.int64)


def row_energy(x: np.ndarray) -> np.ndarray:
    """(N,) float64: the sum of squares of each row of ``x`` (N, T), grouped as lab.dsp.energy groups it (by
    ``ENERGY_CHUNK``), so that a long file summed a block at a time gets the same sums."""
    return dsp.energy(torch.from_numpy(x))[:, 0].numpy()


class ARStream:
    """Rows of AR noise drawn and filtered a piece at a time: row i is ``lfilter([1], a, innovation)`` with the
    innovation ``Generator(PCG64(seeds[i])).standard_normal(warmup + n)``, warm-up dropped, exactly as one draw and
    one filter give it (numpy draws normals one after the other; lfilter's state ``zi`` carries the filter from one
    piece to the next). One seed and ``rows`` > 1: every row is that one sequence (``classwise``)."""

    def __init__(self, coefficients: np.ndarray, seeds: list[int], warmup: int, rows: int | None = None):
        self.a = coefficients
        self.rows = rows or len(seeds)
        self.gens = [np.random.Generator(np.random.PCG64(s)) for s in seeds]
        self.zi = np.zeros((len(seeds), len(coefficients) - 1))
        self._run(warmup)

    def _run(self, n: int) -> np.ndarray:
        e = np.stack([g.standard_normal(n) for g in self.gens])
        y, self.zi = lfilter([1.0], self.a, e, axis=-1, zi=self.zi)
        return y

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` samples (rows, n) float64."""
        y = self._run(n)
        return np.repeat(y, self.rows, axis=0) if len(y) != self.rows else y


class ARNoiseProtection(Protection):
    """Per-class AR coefficients and noise salts derived from a key, and how to add the noise to clips."""

    name = "ar-noise"
    file_by_file = True

    def __init__(self, params: dict, key_fingerprint: str, sample_rate: int, reflection: np.ndarray,
                 expansion: np.ndarray, coefficients: np.ndarray, salts: list[str], warmup: int):
        self.params = params  # the recipe's parameters, key excluded
        self.key_fingerprint = key_fingerprint
        self.sample_rate = sample_rate
        self.reflection = np.asarray(reflection, dtype=np.float64)  # (C, p) as drawn
        self.expansion = np.asarray(expansion, dtype=np.float64)  # (C,) bandwidth expansion g (1: none)
        self.coefficients = np.asarray(coefficients, dtype=np.float64)  # (C, p + 1), leading 1
        self.salts = list(salts)  # (C,) per-class noise salts (derived from the key by HMAC)
        self.warmup = int(warmup)
        self._classwise: dict[int, np.ndarray] = {}  # per class, its longest sequence drawn so far

    @property
    def num_classes(self) -> int:
        return self.coefficients.shape[0]

    def clip_seed(self, cls: int, clean: np.ndarray) -> int:
        """The innovation seed of one clip of class ``cls`` whose real samples are ``clean`` (hashed as float32)."""
        return self.seed_of(cls, hashlib.sha256(np.ascontiguousarray(clean, dtype="<f4").tobytes()).hexdigest())

    def seed_of(self, cls: int, digest: str) -> int:
        """:meth:`clip_seed` from the sha256 ``digest`` (hex) of the clip's float32 samples."""
        return derive_seed(self.salts[cls], "clip", digest)

    def class_seed(self, cls: int) -> int:
        return derive_seed(self.salts[cls], "classwise")

    def _run(self, cls: int, innovation: np.ndarray) -> np.ndarray:
        """The AR process of class ``cls`` driven by ``innovation`` (rows), warm-up dropped."""
        return lfilter([1.0], self.coefficients[cls], innovation, axis=-1)[..., self.warmup:]

    def class_sequence(self, cls: int, length: int) -> np.ndarray:
        """Class ``cls``'s fixed AR sequence (``classwise`` mode); a longer one starts with the shorter one (the
        draws and the causal filter are sequential), so one sequence per class is kept, the longest asked for: a
        collection of files of many lengths does not grow the cache with each length."""
        have = self._classwise.get(cls)
        if have is None or len(have) < length:
            e = np.random.Generator(np.random.PCG64(self.class_seed(cls))).standard_normal(self.warmup + length)
            have = self._classwise[cls] = self._run(cls, e)
        return have[:length]

    def raw_noise(self, waveforms: torch.Tensor, classes: np.ndarray, start: np.ndarray,
                  length: np.ndarray) -> np.ndarray:
        """Unscaled AR noise (N, T) in float64, zero outside each clip's span."""
        n, t = waveforms.shape
        noise = np.zeros((n, t))
        clean = waveforms.detach().cpu().float().numpy()
        if self.params["noise"] == "classwise":
            for i in range(n):
                if length[i]:
                    noise[i, start[i]:start[i] + length[i]] = self.class_sequence(int(classes[i]), t)[:length[i]]
            return noise
        for c in np.unique(classes):
            rows = np.flatnonzero(classes == c)
            longest = int(length[rows].max()) if len(rows) else 0
            e = np.zeros((len(rows), self.warmup + longest))
            for j, i in enumerate(rows):  # zeros after a shorter clip's end do not reach back (causal filter)
                s, m = start[i], length[i]
                seed = self.clip_seed(int(c), clean[i, s:s + m])
                e[j, :self.warmup + m] = np.random.Generator(np.random.PCG64(seed)).standard_normal(self.warmup + m)
            y = self._run(int(c), e)
            for j, i in enumerate(rows):
                noise[i, start[i]:start[i] + length[i]] = y[j, :length[i]]
        return noise

    def apply(self, waveforms: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor | None = None,
              filter_classes: torch.Tensor | None = None, **ablation) -> torch.Tensor:
        """``waveforms`` (N, T) plus their class's AR noise at the recorded budget (see the module docstring).

        ``lengths`` (N,): the clips' real lengths (the noise stays inside them). ``filter_classes`` gives a clip
        another class's AR process (an ablation); other ablation arguments (positions) do not apply and are ignored.
        """
        if waveforms.dim() != 2:
            raise ValueError(f"expected waveforms of shape (N, T), got {tuple(waveforms.shape)}")
        classes = (labels if filter_classes is None else filter_classes).detach().cpu().long().numpy()
        start, length = spans(waveforms, lengths if self.params.get("span", "audio") == "audio" else None)
        noise = self.raw_noise(waveforms, classes, start, length)
        x = waveforms.detach().cpu().double().numpy()
        inside = (np.arange(x.shape[1])[None, :] >= start[:, None]) & \
                 (np.arange(x.shape[1])[None, :] < (start + length)[:, None])
        budget = self.budget(row_energy(np.where(inside, x, 0.0)), row_energy(noise), np.abs(noise).max(axis=1))
        added = torch.from_numpy(self.scaled(noise, budget))
        if self.params.get("masking_margin_db") is not None:
            snr_db, linf = self.params["snr_db"], self.params["linf"]
            added = limit_to_threshold(torch.from_numpy(x), added, self.sample_rate,
                                       self.params["masking_margin_db"], support=torch.from_numpy(inside),
                                       snr_db=snr_db, linf=linf, fill=snr_db is None and linf is None)
        added = added.to(dtype=waveforms.dtype, device=waveforms.device)
        return waveforms + added

    def budget(self, energy: np.ndarray, power: np.ndarray, peak: np.ndarray) -> tuple:
        """How each row's raw noise is scaled, from the rows' clean ``energy``, the raw noise's ``power`` and its
        ``peak`` (N,) float64: the gain (N,) (0: no noise), and for ``linf_mode: scale`` the rows (N,) bool whose
        scaled peak still exceeds ``linf`` with the factor (N,) that scales them down (else None, None)."""
        live = (energy > 0) & (power > 0)
        snr_db, linf = self.params["snr_db"], self.params["linf"]
        over = factor = None
        with np.errstate(divide="ignore", invalid="ignore"):
            if snr_db is not None:
                gain = np.sqrt(energy / (power * 10.0 ** (snr_db / 10.0)))
            elif linf is not None:
                gain = linf / peak
            else:  # the masking budget alone: limit_to_threshold fills the threshold
                gain = np.ones_like(peak)
            gain = np.where(live, gain, 0.0)
            if linf is not None and self.params["linf_mode"] == "scale":
                over, factor = peak * gain > linf, linf / (peak * gain)
        return gain, over, factor

    def scaled(self, noise: np.ndarray, budget: tuple) -> np.ndarray:
        """The raw ``noise`` (N, n) (any frames of the rows) scaled as :meth:`budget` says: the change added."""
        gain, over, factor = budget
        delta = noise * gain[:, None]
        linf = self.params["linf"]
        if linf is not None:
            if over is not None:
                delta[over] *= factor[over][:, None]
            delta = np.clip(delta, -linf, linf)  # in scale mode this only removes float rounding past linf
        return delta

    # --- lab protect's block hook (a long file in bounded memory, docs/protect.md). A file is one clip per channel,
    # its span the whole row. First pass (block_stats): the clean energy, summed as apply sums it (lab.dsp.add_energy)
    # and, per-clip, each channel's float32 samples hashed (the innovation's seed). At the first block: the noise is
    # run once over the file, a block at a time (its power, grouped the same way, and its peak), then run again from
    # its start beside the blocks. The innovation is drawn and filtered in pieces (same Generator, lfilter's state
    # carried): the very numbers of one draw and one filter (the contract tests check it bit for bit)
    block_first_pass = True

    def block_plan(self, cls, frames, channels):
        if type(self).apply is not ARNoiseProtection.apply or self.params.get("masking_margin_db") is not None:
            return None  # a subclass that changes apply, or noise shaped by a masking budget: protected whole
        per_clip = self.params["noise"] != "classwise"
        return {"cls": cls, "frames": frames, "rows": channels, "signal": None, "budget": None, "stream": None,
                "hashes": [hashlib.sha256() for _ in range(channels)] if per_clip else None}

    def block_stats(self, plan, x, start):
        plan["signal"] = add_energy(plan["signal"], x)
        if plan["hashes"] is not None:
            clean = x.detach().cpu().float().numpy()
            for h, row in zip(plan["hashes"], clean):
                h.update(np.ascontiguousarray(row, dtype="<f4").tobytes())

    def _stream(self, plan) -> "ARStream":
        """The file's raw noise from its first frame on (rows = channels)."""
        cls = plan["cls"]
        if plan["hashes"] is None:
            return ARStream(self.coefficients[cls], [self.class_seed(cls)], self.warmup, plan["rows"])
        seeds = [self.seed_of(cls, h.hexdigest()) for h in plan["hashes"]]
        return ARStream(self.coefficients[cls], seeds, self.warmup)

    def apply_block(self, plan, x, lo, a, b):
        if plan["budget"] is None:  # blocks after the first are a multiple of ENERGY_CHUNK (blocks.py): so are these
            step = -(-(b - a) // dsp.ENERGY_CHUNK) * dsp.ENERGY_CHUNK
            stream, power, peak = self._stream(plan), None, np.zeros(plan["rows"])
            for p in range(0, plan["frames"], step):
                noise = stream.take(min(step, plan["frames"] - p))
                power = add_energy(power, torch.from_numpy(noise))
                peak = np.maximum(peak, np.abs(noise).max(axis=1))
            energy = plan["signal"][:, 0].numpy()
            plan["budget"] = self.budget(energy, power[:, 0].numpy(), peak)
        if a == 0:  # every pass over the blocks runs the noise again from its start
            plan["stream"] = self._stream(plan)
        delta = self.scaled(plan["stream"].take(b - a), plan["budget"])
        return x + torch.from_numpy(delta).to(dtype=x.dtype, device=x.device)

    def to_dict(self) -> dict:
        return {
            "defense": self.name,
            "params": self.params,
            "key_fingerprint": self.key_fingerprint,
            "sample_rate": self.sample_rate,
            "num_classes": self.num_classes,
            "reflection": self.reflection.tolist(),
            "bandwidth_expansion": self.expansion.tolist(),
            "coefficients": self.coefficients.tolist(),
            "pole_radius": [pole_radius(a) for a in self.coefficients],
            "warmup_samples": self.warmup,
            "noise_salts": self.salts,
        }

    @classmethod
    def from_dict(cls, record: dict) -> "ARNoiseProtection":
        return cls(record["params"], record["key_fingerprint"], record["sample_rate"],
                   np.array(record["reflection"], dtype=np.float64),
                   np.array(record["bandwidth_expansion"], dtype=np.float64),
                   np.array(record["coefficients"], dtype=np.float64), record["noise_salts"], record["warmup_samples"])


@DEFENSES.register("ar-noise")
class ARNoise(Defense):
    """Class-wise stable AR (coloured) noise from key-derived coefficients, at a per-clip SNR and/or L-inf budget."""

    Config = ARNoiseConfig
    matched_baseline = 4  # in lab attack --type all, after the classwise-noise baseline
    takes_snr = True
    additive = True

    @classmethod
    def example_config(cls, key):
        return {"key": key, "snr_db": 25.0}  # not the default 30 dB

    def derive(self, num_classes: int, sample_rate: int) -> ARNoiseProtection:
        cfg: ARNoiseConfig = self.config
        key = resolve_key(cfg.key, cfg.key_file)
        reflection, expansion, coefficients, salts = [], [], [], []
        for c in range(num_classes):
            gen = torch.Generator().manual_seed(derive_seed(key, "ar-noise/v1/class", c))
            k = (cfg.reflection_max * (2.0 * torch.rand(cfg.order, generator=gen, dtype=torch.float64) - 1.0)).numpy()
            a = step_up(k)
            radius = pole_radius(a)
            g = cfg.pole_radius_max / radius if radius > cfg.pole_radius_max else 1.0
            reflection.append(k)
            expansion.append(g)
            coefficients.append(a * g ** np.arange(len(a)))
            salts.append(f"{derive_seed(key, 'ar-noise/v1/noise', c):016x}")
        radius = max(pole_radius(a) for a in coefficients)
        warmup = max(cfg.order, math.ceil(math.log(WARMUP_TOLERANCE) / math.log(radius))) if radius > 0 else cfg.order
        params = cfg.model_dump(exclude={"key", "key_file", "type"}, mode="json")
        return ARNoiseProtection(params, fingerprint(key), sample_rate, np.stack(reflection), np.array(expansion),
                                 np.stack(coefficients), salts, warmup)
