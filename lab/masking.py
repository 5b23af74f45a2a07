"""A psychoacoustic masking model and the ``masking`` budget built on it (issue 23; docs/masking.md).

**The threshold** (:func:`masking_threshold`) is Qin et al.'s simplification (ICML 2019, "Imperceptible, Robust, and
Targeted Adversarial Examples for Automatic Speech Recognition", appendix) of MPEG-1 psychoacoustic model 1, computed
frame by frame, vectorised over clips and frames, in float64:

1. the power spectrum of every frame (:func:`frame_power_db`): Hann window of :func:`frame_size` samples (the power
   of two nearest 32 ms: 256 at 8 kHz, 512 at 16 kHz, 1024 at 44.1 kHz), hop a quarter of it, frames centred on
   ``t * hop`` with zeros beyond the clip's ends. **Calibration**: a full-scale sine (amplitude 1.0) centred on a bin
   reads :data:`FULL_SCALE_DB` (96 dB, the level MPEG-1 and Qin et al. give the loudest component) in that bin;
   every other level is relative to it (dB SPL-like). It is a fixed calibration, not a per-clip normalisation, so
   scaling a clip by g dB moves its spectrum by exactly g dB;
2. maskers: the bins that are local maxima of the frame's spectrum (above both neighbours) and above the absolute
   threshold of hearing (:func:`absolute_threshold`, Terhardt's formula); a masker's power is the sum of its bin and
   its two neighbours (a Hann-windowed sine spreads over three bins);
3. of maskers closer than 0.5 Bark (:func:`bark`, Zwicker's formula) only the strongest is kept;
4. each masker i at Bark z_i with power P_i masks bin j at z_j with P_i - 6.025 - 0.275 z_i + SF(z_j - z_i), the
   two-slope spreading function SF(dz) = 27 dz below the masker (dz < 0) and (-27 + 0.37 max(P_i - 40, 0)) dz above
   it (``level_dependent=False``: -27 dz, the same slope at every level);
5. the threshold of a bin is the power sum of the absolute threshold and every masker's contribution.

MPEG-1's separate noise maskers (the power of each critical band outside tonal peaks) are not modelled: as in Qin et
al., every local maximum is a masker, which in noisy bands plays their part.

**Scaling.** With a fixed calibration the threshold is equivariant to the signal's level except for two documented,
level-dependent parts of the model: the absolute threshold (where the maskers' contribution is near it) and, with
``level_dependent=True`` (the default, Qin et al.'s), the upper slope: a masker g dB louder masks dz Bark above
itself by g (1 + 0.37 dz) dB more (while above 40 dB), below itself by exactly g dB.

**The budget** (:func:`limit_to_threshold`): a change is shaped so that its power, in every frame and bin of the
same analysis, is at most the clean clip's threshold plus ``margin_db``; see the function.
"""
from __future__ import annotations

import math

import torch
from pydantic import Field, model_serializer

from lab.config import Section

FULL_SCALE_DB = 96.0  # the level of a full-scale sine in the bin it is centred on
FRAME_SECONDS = 0.032  # frames of about 32 ms: 256 samples at 8 kHz
MIN_HZ = 100.0  # below this the absolute threshold is held at its value here (23 dB), see absolute_threshold
MASKER_SPACING_BARK = 0.5  # of maskers closer than this, only the strongest is kept
SHAPING_ITERATIONS = 12  # rounds of alternating projection in limit_to_threshold (then one uniform shrink)
SHAPING_HEADROOM_DB = 0.5  # the rounds aim this far under the bound, so that the final shrink is small
SHAPING_REACH = (1, 1)  # the rounds aim at the lowest bound within this many (frames, bins) of each cell
CLIPS_AT_ONCE = 64  # masking_threshold works through a large batch this many clips at a time
_CHUNK = 1 << 22  # elements of one (rows, bins, bins) block of the spreading sum


def frame_size(sample_rate: int) -> int:
    """Frame length (samples) of the analysis at ``sample_rate``: the power of two nearest :data:`FRAME_SECONDS`."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive (got {sample_rate})")
    return 2 ** max(4, round(math.log2(FRAME_SECONDS * sample_rate)))


def _spectrum(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Complex STFT (N, frames, bins) of rows ``x`` (N, T), float64 (complex128): frames every ``n_fft // 4`` samples,
    the first centred half a frame before the clip's first sample, the last half a frame or more after its last
    (zeros beyond the clip's ends), so that every sample of the clip lies under four whole frames."""
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64, device=x.device)
    padded = torch.nn.functional.pad(x.double(), (n_fft // 2, n_fft // 2))
    spec = torch.stft(padded, n_fft, n_fft // 4, window=window, center=True, pad_mode="constant",
                      return_complex=True)
    return spec.transpose(1, 2)


def _inverse(spec: torch.Tensor, n_fft: int, length: int) -> torch.Tensor:
    """Rows (N, length) from an STFT (N, frames, bins) of :func:`_spectrum` (least-squares inverse)."""
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64, device=spec.device)
    padded = torch.istft(spec.transpose(1, 2), n_fft, n_fft // 4, window=window, center=True,
                         length=length + 2 * (n_fft // 2))
    return padded[:, n_fft // 2:n_fft // 2 + length]


def _power(spec: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Calibrated linear power (1.0 = :data:`FULL_SCALE_DB`) of an STFT: |X|^2 / (sum(window) / 2)^2."""
    return (spec.real ** 2 + spec.imag ** 2) / (n_fft / 4) ** 2


def frame_power_db(x: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """(N, frames, bins) float64: the calibrated power spectrum (dB, module docstring) of every frame of rows ``x``
    (N, T) (or one clip (T,), then (frames, bins)). A silent bin reads -inf."""
    rows = x.reshape(-1, x.shape[-1])
    n_fft = frame_size(sample_rate)
    db = 10 * torch.log10(_power(_spectrum(rows, n_fft), n_fft)) + FULL_SCALE_DB
    return db.reshape(*x.shape[:-1], *db.shape[1:])


def bin_frequencies(sample_rate: int) -> torch.Tensor:
    """(bins,) float64: the centre frequency (Hz) of each bin of the analysis at ``sample_rate``."""
    n_fft = frame_size(sample_rate)
    return torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft


def bark(hz: torch.Tensor) -> torch.Tensor:
    """Zwicker's critical-band rate (Bark) of frequencies ``hz``: 13 atan(0.00076 f) + 3.5 atan((f / 7500)^2)."""
    hz = hz.double()
    return 13 * torch.atan(0.00076 * hz) + 3.5 * torch.atan((hz / 7500) ** 2)


def absolute_threshold(hz: torch.Tensor) -> torch.Tensor:
    """Terhardt's absolute threshold of hearing (dB SPL, taken on the calibrated scale) at ``hz``:
    3.64 f^-0.8 - 6.5 exp(-0.6 (f - 3.3)^2) + 0.001 f^4 (f in kHz, at least :data:`MIN_HZ`), capped at
    :data:`FULL_SCALE_DB` (no budget lets a change exceed a full-scale sine, e.g. near 20 kHz)."""
    f = hz.double().clamp(min=MIN_HZ) / 1000
    ath = 3.64 * f ** -0.8 - 6.5 * torch.exp(-0.6 * (f - 3.3) ** 2) + 1e-3 * f ** 4
    return ath.clamp(max=FULL_SCALE_DB)


def _maskers(db: torch.Tensor, z: torch.Tensor, ath: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masker powers (rows, bins) in dB (-inf where a bin is no masker) and the active mask, from spectra ``db``
    (rows, bins): local maxima above the absolute threshold, three-bin power, 0.5-Bark decimation."""
    k = db.shape[-1]
    peak = torch.zeros_like(db, dtype=torch.bool)
    peak[:, 1:-1] = (db[:, 1:-1] > db[:, :-2]) & (db[:, 1:-1] > db[:, 2:]) & (db[:, 1:-1] > ath[1:-1])
    lin = torch.pow(10.0, (db - FULL_SCALE_DB) / 10)
    three = lin.clone()
    three[:, 1:] = three[:, 1:] + lin[:, :-1]
    three[:, :-1] = three[:, :-1] + lin[:, 1:]
    power = torch.where(peak, 10 * torch.log10(three) + FULL_SCALE_DB, torch.full_like(db, -math.inf))
    # decimation: a masker is dropped where a stronger one (or an equal one at a lower bin) lies within 0.5 Bark
    keep = peak.clone()
    for off in range(1, k):
        near = (z[off:] - z[:-off]).abs() < MASKER_SPACING_BARK  # (k - off,): bins i and i + off are near
        if not bool(near.any()):
            break
        lo, hi = power[:, :-off], power[:, off:]
        keep[:, :-off] &= ~(near & (hi > lo))  # the upper one is stronger
        keep[:, off:] &= ~(near & (lo >= hi) & peak[:, :-off])  # the lower one is stronger or equal
    return torch.where(keep, power, torch.full_like(power, -math.inf)), keep


def _spread(power: torch.Tensor, z: torch.Tensor, level_dependent: bool) -> torch.Tensor:
    """(rows, bins) linear power (1.0 = full scale) of all maskers' individual thresholds summed at every bin;
    ``power`` (rows, bins): masker powers in dB, -inf where a bin is no masker."""
    rows, k = power.shape
    active = torch.isfinite(power)
    m = int(active.sum(dim=1).max()) if rows else 0
    out = torch.zeros(rows, k, dtype=torch.float64, device=power.device)
    if m == 0:
        return out
    # each row's maskers gathered first (at most one per 0.5 Bark), so the sum runs over (rows, maskers, bins)
    order = torch.sort(active.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :m]
    p = power.gather(1, order)
    zi = z[order]
    amp = torch.pow(10.0, (p - 6.025 - 0.275 * zi - FULL_SCALE_DB) / 10)  # 0 for padding (-inf)
    up = torch.full_like(p, -27.0)
    if level_dependent:
        up = (-27.0 + 0.37 * (p - 40).clamp(min=0)).clamp(max=0.0)  # flat, never rising, for a very loud masker
    up = torch.where(torch.isfinite(p), up, torch.full_like(up, -27.0))
    step = max(1, _CHUNK // (m * k))
    for a in range(0, rows, step):
        dz = z[None, None, :] - zi[a:a + step, :, None]  # (r, masker, maskee)
        slope = torch.where(dz < 0, torch.full_like(dz, 27.0), up[a:a + step, :, None])
        out[a:a + step] = torch.einsum("ri,rij->rj", amp[a:a + step], torch.pow(10.0, slope * dz / 10))
    return out


def masking_threshold(x: torch.Tensor, sample_rate: int, level_dependent: bool = True) -> torch.Tensor:
    """(N, frames, bins) float64: the masking threshold (dB, calibrated as :func:`frame_power_db`) of every frame of
    rows ``x`` (N, T) (or one clip (T,): (frames, bins)); see the module docstring. A silent frame's threshold is
    the absolute threshold of hearing."""
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] > CLIPS_AT_ONCE:  # bounded memory for a whole training set
        parts = [masking_threshold(r, sample_rate, level_dependent) for r in rows.split(CLIPS_AT_ONCE)]
        return torch.cat(parts).reshape(*x.shape[:-1], *parts[0].shape[1:])
    db = frame_power_db(rows, sample_rate)
    n, f, k = db.shape
    hz = bin_frequencies(sample_rate).to(db.device)
    z, ath = bark(hz), absolute_threshold(hz)
    power, _ = _maskers(db.reshape(n * f, k), z, ath)
    total = _spread(power, z, level_dependent) + torch.pow(10.0, (ath - FULL_SCALE_DB) / 10)
    thr = 10 * torch.log10(total) + FULL_SCALE_DB
    return thr.reshape(*x.shape[:-1], f, k)


def threshold_excess_db(clean: torch.Tensor, change: torch.Tensor, sample_rate: int, margin_db: float = 0.0,
                        threshold_db: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) float64: for each row, the largest amount (dB) by which the change's power exceeds the clean row's
    threshold plus ``margin_db``, over every frame and bin (negative: under it everywhere; -inf: no change)."""
    thr = masking_threshold(clean, sample_rate) if threshold_db is None else threshold_db
    over = frame_power_db(change, sample_rate) - (thr + margin_db)
    return over.flatten(1).amax(dim=1)


def _lowest_near(bound: torch.Tensor, frames: int, bins: int) -> torch.Tensor:
    """(N, frames, bins): each cell's lowest ``bound`` within ``frames`` frames and ``bins`` bins of it."""
    padded = torch.nn.functional.pad(bound[:, None], (bins, bins, frames, frames), mode="replicate")
    return -torch.nn.functional.max_pool2d(-padded, (2 * frames + 1, 2 * bins + 1), 1)[:, 0]


def limit_to_threshold(clean: torch.Tensor, change: torch.Tensor, sample_rate: int, margin_db: float = 0.0, *,
                       support: torch.Tensor | None = None, snr_db: float | None = None, linf: float | None = None,
                       fill: bool = False, threshold_db: torch.Tensor | None = None,
                       iterations: int = SHAPING_ITERATIONS) -> torch.Tensor:
    """``change`` (N, T) shaped so that in every frame and bin of the analysis its power is at most the threshold of
    ``clean`` (N, T) plus ``margin_db`` (the ``masking`` budget), in ``change``'s dtype; differentiable.

    - The change is only kept on ``support`` (N, T) (default: where it is non-zero: a change confined to a clip's
      audio or to patches stays there).
    - ``fill``: first set every bin of the change to the bound, keeping its phase (the budget alone, no SNR: noise
      as loud as the threshold allows).
    - Then up to ``iterations`` (:data:`SHAPING_ITERATIONS`) rounds of alternating projection, for every row not yet
      within its bound (a row within it is left as it is, so a row's result never depends on the rows beside it):
      each bin's magnitude is scaled down (never up) to a target where it exceeds it, back to a waveform
      (least-squares inverse STFT), zero off the support.
      The inverse's overlap-add lets neighbouring frames and bins leak into each other (the windows' resolution),
      so a round may leave a cell over its bound, most of all where the threshold falls fast (a clip's onset or
      end, a valley between harmonics); the target is therefore the lowest bound within
      :data:`SHAPING_REACH` (one frame, one bin) of the cell, less :data:`SHAPING_HEADROOM_DB`. On harmonic
      test clips this leaves the filled noise a median 10 dB under the bound, where white noise scaled as a whole
      to the bound sits 30 dB or more under it (tests/defenses/test_masking.py).
    - Last, each row is scaled by one factor <= 1, the largest that meets every bound at once: the threshold in
      every frame and bin (a uniform scale moves every bin's power by the same dB), ``snr_db`` (the row's SNR
      against the change, float64, at least this) and ``linf`` (|change| at most this). The bound therefore holds
      exactly in float64; a silent clip gets no change when ``snr_db`` is set.

    ``threshold_db``: the clean rows' :func:`masking_threshold`, when the caller has it already (an optimisation
    projects after every step). A large batch is worked through :data:`CLIPS_AT_ONCE` rows at a time (the same
    result: rows are independent)."""
    if change.shape[0] > CLIPS_AT_ONCE:
        parts = []
        for rows in torch.arange(change.shape[0]).split(CLIPS_AT_ONCE):
            parts.append(limit_to_threshold(
                clean[rows], change[rows], sample_rate, margin_db, support=None if support is None else support[rows],
                snr_db=snr_db, linf=linf, fill=fill, threshold_db=None if threshold_db is None else threshold_db[rows],
                iterations=iterations))
        return torch.cat(parts)
    n_fft = frame_size(sample_rate)
    t = change.shape[-1]
    thr = masking_threshold(clean, sample_rate) if threshold_db is None else threshold_db.to(torch.float64)
    bound = torch.pow(10.0, (thr + margin_db - FULL_SCALE_DB) / 10)  # linear calibrated power
    inner = _lowest_near(bound, *SHAPING_REACH) * 10 ** (-SHAPING_HEADROOM_DB / 10)
    keep = (change != 0) if support is None else (support != 0)
    keep = keep.to(torch.float64)
    d = change.double() * keep
    if fill:
        spec = _spectrum(d, n_fft)
        gain = torch.sqrt(inner / _power(spec, n_fft).clamp(min=1e-300))
        d = _inverse(spec * torch.where(_power(spec, n_fft) > 0, gain, torch.zeros_like(gain)), n_fft, t) * keep
    for _ in range(iterations):
        spec = _spectrum(d, n_fft)
        power = _power(spec, n_fft)
        done = (power <= bound).flatten(1).all(dim=1, keepdim=True)  # a row within its bound is left as it is
        if bool(done.all()):
            break
        gain = torch.sqrt(inner / power.clamp(min=1e-300)).clamp(max=1.0)
        d = torch.where(done, d, _inverse(spec * gain, n_fft, t) * keep)
    over = (_power(_spectrum(d, n_fft), n_fft) / bound).flatten(1).amax(dim=1, keepdim=True)
    scale = torch.where(over > 1, over.clamp(min=1e-300).rsqrt(), torch.ones_like(over))
    if snr_db is not None:
        signal, power = clean.double().pow(2).sum(1, keepdim=True), d.pow(2).sum(1, keepdim=True)
        allowed = torch.sqrt(signal / 10 ** (snr_db / 10) / power.clamp(min=1e-300)).clamp(max=1.0)
        scale = torch.minimum(scale, torch.where(signal > 0, allowed, torch.zeros_like(allowed)))
    if linf is not None:
        peak = d.abs().amax(dim=1, keepdim=True)
        scale = torch.minimum(scale, (linf / peak.clamp(min=1e-300)).clamp(max=1.0))
    return (d * scale).to(change.dtype)


class MaskingBudget(Section):
    """The ``masking`` budget's field, shared by the config of every additive defense (``Defense.additive``):
    ``masking_margin_db`` (None: off, the default) holds the protection's change, frame by frame and bin by bin, at
    or under the clean clip's masking threshold plus this many dB (0: at the threshold; negative: under it), alone
    or together with the defense's other budgets (``snr_db``, ``linf``), through :func:`limit_to_threshold`. Left
    out of the dumped config (and so of the protection's record) while off, so that records made before it existed
    stay byte-identical (lab verify compares them)."""

    masking_margin_db: float | None = Field(None, ge=-60, le=60)

    @model_serializer(mode="wrap")
    def _omit_masking_when_off(self, handler):
        data = handler(self)
        if isinstance(data, dict) and "masking_margin_db" in data and data["masking_margin_db"] is None:
            del data["masking_margin_db"]
        return data


def check_budget(snr_db: float | None, linf: float | None, margin_db: float | None) -> None:
    """ValueError (one line) unless at least one budget is given."""
    if snr_db is None and linf is None and margin_db is None:
        raise ValueError("give a budget: snr_db, linf, or both, or masking_margin_db (with or without them)")
