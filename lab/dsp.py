"""Signal helpers shared by the defenses, the attacks and the data loader: plain functions on tensors, no plugin
knowledge (part of the plugin interface, docs/extending.md).

Waveforms are ``(N, T)`` batches, one clip per row, unless a function says otherwise. Power sums and gains are
computed in float64 and every function here is bit-for-bit what the lab computed before it was gathered here:
results and protected audio do not move when a plugin switches to these helpers (one exception: a row longer than
:data:`ENERGY_CHUNK` samples, 24 s at 44.1 kHz, is summed by chunks since long files are protected in blocks).

- energies and SNR: :func:`energy` (and :func:`add_energy`, a block at a time), :func:`snr_gain`,
  :func:`scale_to_snr` (noise scaled so that a clip's SNR is exactly a target), :func:`snr_radius` (the largest L2
  norm of a change that keeps a target SNR), :func:`limit_change` (a change scaled DOWN to an SNR budget, clipped to
  an L-infinity one; a block at a time: :func:`change_scale` and :func:`scaled_change`), :class:`EnergySum` (sums
  of rows given in pieces of any length, grouped as :func:`energy` groups them);
- lengths: :func:`fit_length` (crop or zero-pad the last dimension);
- moving and filtering: :func:`circular_shift`, :func:`convolve_patches` (class filters convolved in patches),
  :func:`convolve_same` (a filter over whole rows by FFT, on a grid of :data:`ENERGY_CHUNK` samples that a block of
  a long file reproduces: :func:`grid_window`);
- reading at other times and keeping bands (the batch attacks'): :func:`read_at` (rows read at fractional positions
  by linear interpolation: speed changes and time warps), :func:`zero_shift` (a shift that drops what leaves the
  clip), :func:`band_limit` (an ideal FFT-domain band per row);
- differentiable stand-ins for the attacks' transformations (what an optimised defense puts in its expectation over
  transformations): :func:`zero_span` (a span of samples per row set to zero, a SpecAugment time mask on the
  waveform), :func:`quantise_ste` (uniform quantisation with a straight-through gradient), :func:`tile_rows` (short
  per-row tiles repeated over a clip from a per-row offset).
"""
from __future__ import annotations

import torch


# --- energies and SNR ---------------------------------------------------------------------------------------------

ENERGY_CHUNK = 1 << 20
"""Rows are summed :data:`ENERGY_CHUNK` samples at a time (a row no longer than that: in one sum, as always), the
chunks' sums added in order: a long file protected a block at a time (lab/protect/blocks.py, blocks a multiple of
this) then gets the very same sums as the whole file, bit for bit (:func:`add_energy`), and no float64 copy of a
whole long row is ever made."""


def energy(x: torch.Tensor) -> torch.Tensor:
    """(N, 1) float64: the sum of squares of each row of ``x`` (N, T) (by chunks, see :data:`ENERGY_CHUNK`)."""
    return add_energy(None, x)


def add_energy(total: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """``total`` (N, 1) float64 (None: nothing yet) plus the sum of squares of each row of ``x`` (N, n), whose first
    sample is at a multiple of :data:`ENERGY_CHUNK` in its row: :func:`energy` of a long row, a block at a time."""
    for a in range(0, max(x.shape[1], 1), ENERGY_CHUNK):
        part = x[:, a:a + ENERGY_CHUNK].double().pow(2).sum(dim=1, keepdim=True)
        total = part if total is None else total + part
    return total


def snr_gain(clean: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """(N, 1) float64: the factor that scales each row of ``noise`` so that 10 log10(|clean|^2 / |gain * noise|^2)
    is ``snr_db``; 0 for a row of silent noise (and, since its clean energy is 0, for a silent clip)."""
    return gain_for(energy(clean), energy(noise), snr_db)


def gain_for(signal: torch.Tensor, power: torch.Tensor, snr_db: float) -> torch.Tensor:
    """:func:`snr_gain` from the rows' energies (N, 1) float64: the clean ``signal`` and the noise ``power``."""
    gain = torch.sqrt(signal / (power.clamp(min=1e-30) * 10 ** (snr_db / 10)))
    return torch.where(power > 0, gain, torch.zeros_like(gain))


def scale_to_snr(clean: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """``noise`` (N, T) scaled per row so that 10 log10(|clean|^2 / |scaled|^2) = snr_db (silent rows: no noise),
    scaled in float64 and returned in ``clean``'s dtype."""
    return (noise.double() * snr_gain(clean, noise, snr_db)).to(clean.dtype)


def snr_radius(x: torch.Tensor, snr_db: float) -> torch.Tensor:
    """(N, 1) float64: the largest L2 norm of a change to each row of ``x`` that keeps its SNR >= ``snr_db``."""
    return energy(x).sqrt() * 10 ** (-snr_db / 20)


def limit_change(clean: torch.Tensor, protected: torch.Tensor, snr_db: float | None = None,
                 linf: float | None = None) -> torch.Tensor:
    """``protected`` (N, T) with its change from ``clean`` limited per row: SNR >= ``snr_db`` (the change is scaled
    down where the SNR is lower, never up; a silent clip gets no change) and |change| <= ``linf`` (clipped after
    the scaling). Differentiable (an optimised defense optimises through it). A long file a block at a time: the
    scale from :func:`change_scale` of the whole file's sums, then :func:`scaled_change` block by block."""
    change = protected - clean
    scale = change_scale(energy(clean), energy(change), snr_db) if snr_db is not None else None
    return scaled_change(clean, protected, scale, linf, change)


def change_scale(signal: torch.Tensor, power: torch.Tensor, snr_db: float) -> torch.Tensor:
    """(N, 1) float64: :func:`limit_change`'s factor on each row's change, from the rows' energies (N, 1) float64:
    the clean ``signal`` and the change's ``power`` (1 where the SNR is already met, 0 for a silent clip)."""
    allowed = signal / 10 ** (snr_db / 10)
    scale = torch.sqrt(allowed / power.clamp(min=1e-30)).clamp(max=1.0)
    return torch.where(signal > 0, scale, torch.zeros_like(scale))


def scaled_change(clean: torch.Tensor, protected: torch.Tensor, scale: torch.Tensor | None, linf: float | None,
                  change: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`limit_change` with its ``scale`` (:func:`change_scale`, None: no SNR budget) given: element-wise, so
    a block of a long file gets the whole file's values. ``change``: ``protected - clean``, where already made."""
    change = protected - clean if change is None else change
    if scale is not None:
        change = change * scale.to(change.dtype)
    if linf is not None:
        change = change.clamp(-linf, linf)
    return clean + change


class EnergySum:
    """:func:`energy` of rows given in consecutive pieces of any lengths (e.g. the protected frames a first pass
    gives out as soon as they are complete): the pieces are kept until a whole :data:`ENERGY_CHUNK` is there, so
    the sums are grouped exactly as :func:`energy` of the whole rows groups them. Holds at most one chunk."""

    def __init__(self):
        self.total: torch.Tensor | None = None
        self.held: list[torch.Tensor] = []
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        while x.shape[1]:
            take = min(ENERGY_CHUNK - self.count, x.shape[1])
            self.held.append(x[:, :take])
            self.count += take
            x = x[:, take:]
            if self.count == ENERGY_CHUNK:
                self._flush()

    def result(self) -> torch.Tensor:
        """(N, 1) float64: the rows' energy so far (what :func:`energy` of everything added gives)."""
        if self.held or self.total is None:
            self._flush()
        return self.total

    def _flush(self) -> None:
        part = torch.cat(self.held, dim=1) if len(self.held) != 1 else self.held[0]
        self.total = add_energy(self.total, part)
        self.held, self.count = [], 0


# --- lengths -------------------------------------------------------------------------------------------------------

def fit_length(x: torch.Tensor, total: int, crop: str = "left", pad: str = "right") -> torch.Tensor:
    """``x`` (..., T) cropped or zero-padded along its last dimension to ``total`` samples. ``crop``: ``left`` keeps
    the start, ``center`` the middle; ``pad``: ``right`` appends zeros, ``both`` splits them between start and end
    (the start gets the smaller half). A view when cropped."""
    n = x.shape[-1]
    if n >= total:
        start = (n - total) // 2 if crop == "center" else 0
        return x[..., start:start + total]
    missing = total - n
    before = missing // 2 if pad == "both" else 0
    return torch.nn.functional.pad(x, (before, missing - before))


# --- moving and filtering --------------------------------------------------------------------------------------

def circular_shift(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Row n of ``x`` (N, T) rolled right by ``shifts[n]`` samples (what leaves one end comes back at the other)."""
    t = x.shape[1]
    idx = (torch.arange(t, device=x.device)[None, :] - shifts[:, None]) % t
    return x.gather(1, idx)


def convolve_patches(x: torch.Tensor, starts: torch.Tensor, filters: torch.Tensor, patch_len: int,
                     clip: bool = False, ends: torch.Tensor | None = None) -> torch.Tensor:
    """Convolve, in every row of ``x`` (N, T), the patches ``[starts[n, j], starts[n, j] + patch_len)`` with
    ``filters[n, j]`` (N, P, k); patches are applied in order j = 0..P-1. Batched: no Python loop over clips.

    Only patch samples change. The convolution is "same"-aligned, reads the real neighbours around each patch
    (zeros only beyond the clip's ends) and is computed tap by tap with element-wise operations, so a clip's result
    does not depend on which other clips share its batch. ``clip``: patch samples are clipped to [-1, 1]. ``ends``
    (N,): where each row's clip ends (a padded batch of whole files): a patch is cut there, so the padding stays
    zero and a later patch reads the same zeros the file alone has.
    """
    n, t = x.shape
    k = filters.shape[-1]
    left = (k - 1) // 2
    out = x.clone()
    window = torch.arange(patch_len + k - 1, device=x.device)
    patch = torch.arange(patch_len, device=x.device)
    for j in range(starts.shape[1]):
        # the patch and its k-1 real neighbours; indices outside the clip read as zero
        idx = starts[:, j:j + 1] - left + window
        inside = (idx >= 0) & (idx < t)
        seg = out.gather(1, idx.clamp(0, t - 1)) * inside
        taps = filters[:, j].flip(-1).to(x.dtype)
        y = torch.zeros(n, patch_len, dtype=x.dtype, device=x.device)
        for i in range(k):  # element-wise, so a clip's result never depends on its batch
            y.addcmul_(taps[:, i:i + 1], seg[:, i:i + patch_len])
        if clip:
            y.clamp_(-1.0, 1.0)
        where = starts[:, j:j + 1] + patch
        end = t if ends is None else ends[:, None].clamp(max=t)
        # under autograd, out of place: the next patch's gather keeps ``out`` for its gradient
        graph = out.requires_grad and torch.is_grad_enabled()
        if bool((where < end).all()):
            out = out.scatter(1, where, y) if graph else out.scatter_(1, where, y)
        else:  # a patch longer than what is left of the clip is cut at the clip's end
            keep = where < end
            rows = torch.arange(n, device=x.device)[:, None].expand(n, patch_len)
            put = (rows[keep], where[keep])
            out = out.index_put(put, y[keep]) if graph else out.index_put_(put, y[keep])
    return out


def convolve_same(x: torch.Tensor, taps: torch.Tensor, lo: int = 0, a: int = 0, b: int | None = None,
                  total: int | None = None) -> torch.Tensor:
    """Samples ``[a, b)`` (N, b - a) of the "same"-aligned convolution (torchaudio's ``fftconvolve(mode="same")``:
    output sample p reads input p - (k - 1 - (k - 1) // 2) .. p + (k - 1) // 2, zeros beyond the row's ends) of
    rows ``total`` samples long (default: ``x`` whole) with ``taps`` (N, k), from ``x`` (N, n): their samples
    ``[lo, lo + n)``, which must cover :func:`grid_window` of ``[a, b)``.

    A row no longer than :data:`ENERGY_CHUNK` is convolved in one FFT exactly as torchaudio does (every clip an
    experiment uses: the same bits as ``fftconvolve``). A longer row is convolved on a fixed grid: each output chunk
    ``[m * ENERGY_CHUNK, (m + 1) * ENERGY_CHUNK)`` from its own input window (the chunk and the filter's reach, cut
    at the row's ends) in an FFT of a fast length, one chunk at a time, each window a fresh contiguous copy (the
    FFT's last bits may depend on the batch and layout): a block of a long file computes the very same chunks,
    whatever its size, and gets the very same bits."""
    n = x.shape[1]
    total = lo + n if total is None else total
    b = total if b is None else b
    k = taps.shape[-1]
    left = (k - 1) // 2
    if total <= ENERGY_CHUNK:  # torchaudio's fftconvolve (same operations)
        full = torch.fft.irfft(torch.fft.rfft(x, n=n + k - 1) * torch.fft.rfft(taps, n=n + k - 1), n=n + k - 1)
        return full[:, left + a - lo:left + b - lo]
    spectra: dict[int, torch.Tensor] = {}
    first = a // ENERGY_CHUNK * ENERGY_CHUNK
    parts = []
    for c in range(first, b, ENERGY_CHUNK):
        e = min(total, c + ENERGY_CHUNK)
        w_lo, w_hi = grid_window(c, e, total, k)
        window = x[:, w_lo - lo:w_hi - lo].clone(memory_format=torch.contiguous_format)
        size = fast_length(w_hi - w_lo + k - 1)
        if size not in spectra:
            spectra[size] = torch.fft.rfft(taps, n=size)
        full = torch.fft.irfft(torch.fft.rfft(window, n=size) * spectra[size], n=size)
        parts.append(full[:, c + left - w_lo:e + left - w_lo])
    return torch.cat(parts, dim=1)[:, a - first:b - first]


def grid_window(a: int, b: int, total: int, k: int) -> tuple[int, int]:
    """The input samples ``[lo, hi)`` that :func:`convolve_same` with ``k`` taps reads to give samples ``[a, b)``
    of rows ``total`` long: the whole row up to :data:`ENERGY_CHUNK` samples, else the grid's chunks that overlap
    ``[a, b)`` and the filter's reach around them, cut at the row's ends."""
    if total <= ENERGY_CHUNK:
        return 0, total
    c0, c1 = a // ENERGY_CHUNK * ENERGY_CHUNK, min(total, -(-b // ENERGY_CHUNK) * ENERGY_CHUNK)
    return max(0, c0 - (k - 1 - (k - 1) // 2)), min(total, c1 + (k - 1) // 2)


def fast_length(n: int) -> int:
    """The smallest length >= ``n`` whose only prime factors are 2, 3 and 5 (a fast FFT size)."""
    best = 1 << max(0, (n - 1).bit_length())
    p3 = 1
    while p3 < best:
        p5 = p3
        while p5 < best:
            m = p5
            while m < n:
                m *= 2
            best = min(best, m)
            p5 *= 5
        p3 *= 3
    return best


# --- reading at other times, keeping bands ---------------------------------------------------------------------------

def read_at(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Row n of ``x`` (N, T) read at the fractional sample positions ``positions[n]`` (N, T') by linear interpolation
    between the two neighbouring samples; a position outside [0, T-1] reads zeros beyond the clip's ends. Batched
    (two gathers): positions ``s * arange(T')`` play a row ``s`` times faster; a monotone warp moves its timing."""
    t = x.shape[1]
    lo = positions.floor()
    frac = (positions - lo).to(x.dtype)
    lo = lo.long()

    def at(i: torch.Tensor) -> torch.Tensor:
        return x.gather(1, i.clamp(0, t - 1)) * ((i >= 0) & (i < t)).to(x.dtype)
    return at(lo) * (1 - frac) + at(lo + 1) * frac


def zero_shift(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Row n of ``x`` (N, T) moved right by ``shifts[n]`` samples (left where negative); what leaves the clip is
    dropped and zeros come in (unlike :func:`circular_shift`)."""
    t = x.shape[1]
    idx = torch.arange(t, device=x.device)[None, :] - shifts[:, None].to(x.device)
    return x.gather(1, idx.clamp(0, t - 1)) * ((idx >= 0) & (idx < t)).to(x.dtype)


def band_limit(x: torch.Tensor, sr: int, low_hz: torch.Tensor | float, high_hz: torch.Tensor | float) -> torch.Tensor:
    """Rows of ``x`` (N, T) with only the frequencies in [low_hz, high_hz] kept (per row where they are (N,)
    tensors): an ideal FFT-domain band-pass (``low_hz`` 0: a low-pass; ``high_hz`` at or above sr/2: a high-pass)."""
    n, t = x.shape
    low = torch.as_tensor(low_hz, dtype=torch.float64).reshape(-1, 1)
    high = torch.as_tensor(high_hz, dtype=torch.float64).reshape(-1, 1)
    freqs = torch.fft.rfftfreq(t, 1 / sr, dtype=torch.float64)[None, :]
    mask = ((freqs >= low) & (freqs <= high)).to(x.device)
    return torch.fft.irfft(torch.fft.rfft(x) * mask, n=t).to(x.dtype)


# --- differentiable stand-ins for attacks --------------------------------------------------------------------------

def zero_span(x: torch.Tensor, start: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Row n of ``x`` (N, T) with samples ``start[n] <= i < start[n] + width[n]`` set to zero (width 0: unchanged);
    differentiable in ``x`` (the gradient is zero on the span)."""
    pos = torch.arange(x.shape[1], device=x.device)[None, :]
    lo, hi = start[:, None].to(x.device), (start + width)[:, None].to(x.device)
    return x * ((pos < lo) | (pos >= hi)).to(x.dtype)


def quantise_ste(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``x`` rounded to ``bits`` bits (2**(bits-1) levels per unit of amplitude, as the ``codec`` attack's ``bits``
    step) in the forward pass, with the identity's gradient (a straight-through estimator): rounding has a zero
    gradient almost everywhere, so the optimiser sees the quantisation's output but descends as if it were not there."""
    levels = 2 ** (bits - 1)
    return x + (torch.round(x * levels) / levels - x).detach()


def tile_rows(tiles: torch.Tensor, offsets: torch.Tensor, total: int) -> torch.Tensor:
    """(N, total): row n is ``tiles[n]`` (N, L) repeated end to end, read from sample ``offsets[n]`` of the tile
    (``out[n, i] = tiles[n, (i + offsets[n]) % L]``): a periodic signal of period L whatever the offset.
    Differentiable in ``tiles``."""
    length = tiles.shape[1]
    pos = (torch.arange(total, device=tiles.device)[None, :] + offsets[:, None].to(tiles.device)) % length
    return tiles.gather(1, pos)
