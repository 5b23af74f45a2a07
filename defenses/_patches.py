"""PosCUDA's patch machinery, shared by three defenses: ``poscuda`` (defenses/poscuda.py, where the parameters and
the edge rules are documented), ``poscuda-opt`` (the same protection with optimised filters) and ``noise-patch``
(class-wise noise in PosCUDA's patches). A plugin never imports another plugin's module; what they share lives here.
This module registers nothing (the contract tests' guard skips modules whose name starts with ``_``).

- where patches go: :func:`class_generator` and :func:`draw_positions` (the key-derived per-class positions: the
  same key and position parameters give every one of these defenses the same places), :class:`PatchPlaces` (from
  positions to patch start samples in a clip, repeats, spans, the private record's description), and the checks
  of a patch configuration (:func:`check_position_range`, :func:`check_patches_fit`);
- PosCUDA's protection: :class:`PosCUDAConfig`, :func:`derive_poscuda` (positions and class filters from the key)
  and :class:`PosCUDAProtection` (the filters convolved in the patches, with lab.dsp.convolve_patches).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, SecretStr, model_serializer, model_validator

from defenses.base import MAX_TAPS, SHIFTS_MS, InOrder, Protection, other_classes
from lab.config import PluginConfig
from lab.dsp import convolve_patches
from lab.keys import derive_seed, fingerprint, resolve_key

PLACES_LABEL = "poscuda/v1/class"  # HMAC context of a class's generator: its positions, then PosCUDA's filters


def class_generator(key: str, c: int) -> torch.Generator:
    """The generator of class ``c``'s patches, seeded with HMAC-SHA256(key, "poscuda/v1/class/<c>"): it draws the
    class's positions first (:func:`draw_positions`), then PosCUDA's filters (:func:`derive_poscuda`)."""
    return torch.Generator().manual_seed(derive_seed(key, PLACES_LABEL, c))


def draw_positions(gen: torch.Generator, patches_per_class: int, position_range) -> torch.Tensor:
    """(patches_per_class,) float64 positions drawn uniformly in ``position_range`` (seconds, or fractions of the
    clip in relative mode)."""
    lo, hi = position_range
    return lo + (hi - lo) * torch.rand(patches_per_class, generator=gen, dtype=torch.float64)


def check_position_range(position_range, position_mode: str) -> None:
    """ValueError unless 0 <= start <= end, and end <= 1 in relative mode (a fraction of the clip)."""
    lo, hi = position_range
    if not 0 <= lo <= hi:
        raise ValueError(f"position_range must satisfy 0 <= start <= end (got {list(position_range)})")
    if position_mode == "relative" and hi > 1:
        raise ValueError(f"position_range is a fraction of the clip in relative mode: end must be <= 1 (got {hi})")


class PosCUDAConfig(PluginConfig):
    type: Literal["poscuda"] = "poscuda"
    key: SecretStr | None = None
    key_file: Path | None = None
    patch_seconds: float = Field(0.1, gt=0, le=60)
    filter_length: int = Field(31, ge=1, le=MAX_TAPS)
    blur: float = Field(0.3, ge=0)
    one_tap: bool = True
    filter_norm: Literal["none", "sum", "peak"] = "none"
    patches_per_class: int = Field(1, ge=1, le=64)
    position_mode: Literal["absolute", "relative"] = "absolute"
    position_range: tuple[float, float] = (0.0, 0.5)
    output: Literal["none", "clip", "normalize"] = "none"
    repeat_seconds: float | None = Field(None, gt=0)

    @model_serializer(mode="wrap")
    def _omit_repeat_when_off(self, handler):
        # records written before repeat_seconds existed stay byte-identical when it is off
        data = handler(self)
        if isinstance(data, dict) and data.get("repeat_seconds", 0) is None:
            del data["repeat_seconds"]
        return data

    @model_validator(mode="after")
    def _check_range(self):
        if self.repeat_seconds is not None and self.repeat_seconds <= self.patch_seconds:
            raise ValueError(f"repeat_seconds ({self.repeat_seconds}) must be longer than patch_seconds "
                             f"({self.patch_seconds}): repeated patches may not overlap")
        check_position_range(self.position_range, self.position_mode)
        return self


def derive_poscuda(cfg: PosCUDAConfig, num_classes: int, sample_rate: int) -> PosCUDAProtection:
    """PosCUDA's protection from the key of ``cfg``: per class, its positions, then its filters' taps (U(0, blur),
    one set to 1.0 with ``one_tap``, normalised as ``filter_norm`` says), all from :func:`class_generator`."""
    key = resolve_key(cfg.key, cfg.key_file)
    positions, filters = [], []
    for c in range(num_classes):
        gen = class_generator(key, c)
        pos = draw_positions(gen, cfg.patches_per_class, cfg.position_range)
        taps = cfg.blur * torch.rand(cfg.patches_per_class, cfg.filter_length, generator=gen, dtype=torch.float64)
        if cfg.one_tap:
            which = torch.randint(cfg.filter_length, (cfg.patches_per_class,), generator=gen)
            taps[torch.arange(cfg.patches_per_class), which] = 1.0
        if cfg.filter_norm == "sum":
            taps = taps / taps.sum(-1, keepdim=True).clamp(min=1e-12)
        elif cfg.filter_norm == "peak":
            taps = taps / taps.amax(-1, keepdim=True).clamp(min=1e-12)
        positions.append(pos)
        filters.append(taps.float())
    params = cfg.model_dump(exclude={"key", "key_file", "type"}, mode="json")
    return PosCUDAProtection(params, fingerprint(key), sample_rate, torch.stack(positions), torch.stack(filters))


def check_patches_fit(cfg, clip_seconds: float) -> None:
    """ValueError when a configuration with ``patch_seconds``, ``position_mode`` and ``position_range`` (PosCUDA's,
    noise-patch's) puts a patch past the end of ``clip_seconds`` clips."""
    if cfg.patch_seconds > clip_seconds:
        raise ValueError(f"defense.patch_seconds ({cfg.patch_seconds}) is longer than data.clip_seconds "
                         f"({clip_seconds})")
    if cfg.position_mode == "absolute" and cfg.position_range[1] + cfg.patch_seconds > clip_seconds:
        raise ValueError(f"defense.position_range ends at {cfg.position_range[1]} s: a patch of "
                         f"{cfg.patch_seconds} s there passes the clip's end ({clip_seconds} s)")


def padded(files: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Files ``(samples (channels, frames), class)`` as one zero-padded batch: (rows, labels, lengths), a row per
    channel."""
    rows = sum(x.shape[0] for x, _ in files)
    x = torch.zeros(rows, max(x.shape[1] for x, _ in files), dtype=files[0][0].dtype)
    labels = torch.empty(rows, dtype=torch.long)
    lengths = torch.empty(rows, dtype=torch.long)
    r = 0
    for data, c in files:
        ch, n = data.shape
        x[r:r + ch, :n] = data
        labels[r:r + ch] = c
        lengths[r:r + ch] = n
        r += ch
    return x, labels, lengths


def unpadded(out: torch.Tensor, files: list[tuple[torch.Tensor, int]]) -> list[torch.Tensor]:
    """The rows of a :func:`padded` batch back as one tensor per file, each cut to its own length."""
    results, r = [], 0
    for data, _ in files:
        ch, n = data.shape
        results.append(out[r:r + ch, :n])
        r += ch
    return results


@dataclass
class PatchOps:
    """One file's patches for :meth:`PosCUDAProtection.apply_block`, in the order they are applied: pattern
    ``patch`` (index j), first sample ``start``, the frames each writes ``[write_lo, write_hi)`` and reads
    ``[read_lo, read_hi)`` (the filter's context, cut at the file's ends); for ``output: normalize``, each channel's
    peak after the patches (the first pass's, None until then)."""

    cls: int
    frames: int
    patch: np.ndarray
    start: np.ndarray
    write_hi: np.ndarray
    read_lo: np.ndarray
    read_hi: np.ndarray
    peak: torch.Tensor | None = None
    first: InOrder | None = None

    @property
    def write_lo(self) -> np.ndarray:
        return self.start

    def window(self, a: int, b: int) -> tuple[int, int]:
        """The frames to read to protect ``[a, b)`` exactly: grown until every patch that writes into it reads
        only inside it (a patch's input may hold an earlier patch's output: that one is then inside too)."""
        lo, hi = a, b
        while True:
            hit = (self.write_lo < hi) & (self.write_hi > lo)
            if not hit.any():
                return lo, hi
            new_lo, new_hi = min(lo, int(self.read_lo[hit].min())), max(hi, int(self.read_hi[hit].max()))
            if (new_lo, new_hi) == (lo, hi):
                return lo, hi
            lo, hi = new_lo, new_hi


class PatchPlaces:
    """Where the patches of key-derived ``positions`` (C, P) go in a clip (the edge rules of defenses/poscuda.py).

    ``params`` holds ``patch_seconds``, ``position_mode`` (``absolute``: positions in seconds; ``relative``:
    fractions of each clip's real length) and, where repeats are on, ``repeat_seconds``."""

    def __init__(self, params: dict, sample_rate: int, positions: torch.Tensor):
        self.params = params  # the recipe's parameters, key excluded
        self.sample_rate = sample_rate
        self.positions = positions  # (C, P) seconds (absolute) or fractions (relative)
        self.patch_len = max(1, round(params["patch_seconds"] * sample_rate))

    @property
    def num_classes(self) -> int:
        return self.positions.shape[0]

    def starts(self, position_classes: torch.Tensor, total: int, lengths: torch.Tensor | None = None,
               shift_samples: int = 0, ends: torch.Tensor | None = None) -> torch.Tensor:
        """Patch start samples (N, P) for clips of length ``total`` that take the positions of ``position_classes``."""
        return self.starts_at(self.positions[position_classes], total, lengths, shift_samples, ends)

    def starts_at(self, pos: torch.Tensor, total: int, lengths: torch.Tensor | None = None,
                  shift_samples: int = 0, ends: torch.Tensor | None = None) -> torch.Tensor:
        """Patch start samples (N, P) for per-clip positions ``pos`` (seconds, or fractions in relative mode),
        moved by ``shift_samples`` and kept inside the clip (the edge rules of defenses/poscuda.py).
        ``ends`` (N,): each row is a whole file padded to ``total`` and ends there (its patches are kept inside
        it, as in the file alone); by default every clip is ``total`` long (the recipe's padded clips)."""
        n = pos.shape[0]
        if self.params["position_mode"] == "relative":
            span = (lengths if lengths is not None else torch.full((n,), total)).to(pos.dtype)
            starts = torch.round(pos * span[:, None]).long()
            limit = span.long()[:, None]
        else:
            starts = torch.round(pos * self.sample_rate).long()
            limit = torch.full_like(starts, total) if ends is None else ends.long()[:, None].expand_as(starts)
        starts = starts + shift_samples
        return torch.minimum(starts.clamp(min=0), (limit.clamp(max=total) - self.patch_len).clamp(min=0))

    def patch_spans(self, labels, total, lengths=None):
        """Each clip's patches where :meth:`starts` puts them (with ``repeat_seconds``, copies of each also lie
        every ``repeat_seconds`` along the clip, see :meth:`repeat_starts`)."""
        starts = self.starts(labels.long(), total, lengths)
        return [[(s, s + self.patch_len) for s in row] for row in starts.tolist()]

    def describe_patches(self, files: list[tuple[int, int]], word: str) -> list[list[dict]]:
        """``Protection.file_patches`` for files ``(class, frames)``, all in one call; ``word`` names the pattern
        (``filter`` for PosCUDA, ``noise`` for noise-patch)."""
        if not files:
            return []
        labels = torch.tensor([c for c, _ in files], dtype=torch.long)
        frames = torch.tensor([n for _, n in files], dtype=torch.long)
        total = int(frames.max())
        starts = self.repeat_starts(self.starts(labels, total, frames, ends=frames), total, frames, ends=frames)
        every = self.repeat_samples
        described = []
        for (c, n), rows in zip(files, starts.tolist()):
            patches = []
            for j, row in enumerate(rows):
                s = [v for v in row if v >= 0]
                patches.append({word: f"{c}/{j}", "start": s[0], "every": every if len(s) > 1 else None,
                                "count": len(s), "length": min(self.patch_len, n)})
            described.append(patches)
        return described

    @property
    def repeat_samples(self) -> int | None:
        """Spacing of repeated patches in samples, or None when ``repeat_seconds`` is off."""
        repeat = self.params.get("repeat_seconds")
        return None if repeat is None else max(self.patch_len + 1, round(repeat * self.sample_rate))

    def repeat_starts(self, starts: torch.Tensor, total: int, lengths: torch.Tensor | None = None,
                      ends: torch.Tensor | None = None) -> torch.Tensor:
        """All start samples (N, P, M) of the repeated patches, -1 where a row has fewer than M repeats.

        ``starts`` (N, P) are the patch starts from :meth:`starts`; ``total`` is the clips' padded length and
        ``lengths`` (N,) their real lengths (relative mode), which bound where repeats may go. With
        ``repeat_seconds`` off, M is 1 and the result is ``starts`` itself.
        """
        spacing = self.repeat_samples
        if spacing is None:
            return starts[:, :, None]
        if self.params["position_mode"] == "relative" and lengths is not None:
            limit = lengths.long().clamp(max=total)
        elif ends is not None:
            limit = ends.long().clamp(max=total)
        else:
            limit = torch.full((starts.shape[0],), total, dtype=torch.long)
        first = starts % spacing
        count = total // spacing + 2
        cand = first[:, :, None] + spacing * torch.arange(count)
        fits = cand + self.patch_len <= limit[:, None, None]
        alone = ~fits.any(-1)  # a clip shorter than a patch keeps its single (clamped) patch, as without repeats
        cand[:, :, 0] = torch.where(alone, starts, cand[:, :, 0])
        fits[:, :, 0] |= alone
        cand = torch.where(fits, cand, torch.full_like(cand, -1))
        used = int(fits.any(0).any(0).nonzero().max()) + 1
        return cand[:, :, :used]


class PosCUDAProtection(PatchPlaces, Protection):
    """Per-class positions and filters derived from a key, and how to apply them."""

    name = "poscuda"
    file_by_file = True  # positions and filters per class from the key; a clip's patch depends on it alone

    def __init__(self, params: dict, key_fingerprint: str, sample_rate: int, positions: torch.Tensor,
                 filters: torch.Tensor):
        super().__init__(params, sample_rate, positions)
        self.key_fingerprint = key_fingerprint
        self.filters = filters  # (C, P, k)

    def apply(self, waveforms: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor | None = None,
              position_classes: torch.Tensor | None = None, filter_classes: torch.Tensor | None = None,
              shift_samples: int = 0, positions: torch.Tensor | None = None,
              whole_clip: bool = False, ends: torch.Tensor | None = None) -> torch.Tensor:
        """Protect ``waveforms`` (N, T) of classes ``labels`` (N,).

        ``lengths`` (N,) are the clips' real lengths before padding (used by relative positions). The ablation
        arguments let a clip take the position of another class (``position_classes``), the filter of another class
        (``filter_classes``), a position moved by ``shift_samples``, explicit per-clip ``positions`` (N, P), or the
        filter over the whole clip with no position at all (``whole_clip``). ``ends``: rows are whole files padded
        to one length, each ending there (see :meth:`starts_at`; :meth:`apply_files`).
        """
        if waveforms.dim() != 2:
            raise ValueError(f"expected waveforms of shape (N, T), got {tuple(waveforms.shape)}")
        if self.repeat_samples is not None and positions is None and not whole_clip:
            return self._apply_repeated(waveforms, labels, lengths, position_classes, filter_classes, shift_samples,
                                        ends)
        labels = labels.long()
        pos_cls = labels if position_classes is None else position_classes.long()
        filt_cls = labels if filter_classes is None else filter_classes.long()
        filters = self.filters[filt_cls].to(waveforms.device)
        if whole_clip:
            starts, patch_len = torch.zeros(len(labels), 1, dtype=torch.long), waveforms.shape[1]
            filters = filters[:, :1]
        else:
            pos = self.positions[pos_cls] if positions is None else positions
            starts, patch_len = self.starts_at(pos, waveforms.shape[1], lengths, shift_samples, ends), self.patch_len
        out = convolve_patches(waveforms, starts.to(waveforms.device), filters, patch_len,
                               clip=self.params["output"] == "clip",
                               ends=None if ends is None else ends.to(waveforms.device))
        if self.params["output"] == "normalize":
            peak = out.abs().amax(dim=1, keepdim=True)
            out = torch.where(peak > 1.0, out / peak, out)
        return out

    def ablation_variants(self, waveforms, labels, lengths, sample_rate, seed=0):
        """``clean`` and ``true``, then each clip's own filter at another class's position (``mixed_positions``),
        its own position with another class's filter (``mixed_filters``), its own filter at a random position of
        the position range (``random_positions``), its own position moved by each of ``SHIFTS_MS`` milliseconds
        (``shift_<+-ms>ms``) and its own filter over the whole clip (``filter_whole_clip``)."""
        w, y = waveforms, labels
        out = {"clean": w, "true": self.apply(w, y, lengths)}
        c = self.num_classes
        out["mixed_positions"] = self.apply(w, y, lengths, position_classes=other_classes(y, c, seed))
        out["mixed_filters"] = self.apply(w, y, lengths, filter_classes=other_classes(y, c, seed + 1))
        gen = torch.Generator().manual_seed(seed + 2)
        lo, hi = self.params["position_range"]
        random_pos = lo + (hi - lo) * torch.rand(len(y), self.positions.shape[1], generator=gen, dtype=torch.float64)
        out["random_positions"] = self.apply(w, y, lengths, positions=random_pos)
        for ms in SHIFTS_MS:
            out[f"shift_{ms:+d}ms"] = self.apply(w, y, lengths, shift_samples=round(ms * sample_rate / 1000))
        out["filter_whole_clip"] = self.apply(w, y, lengths, whole_clip=True)
        return out

    def class_filters(self):
        return self.filters[:, 0]

    def apply_files(self, files):
        """A chunk of whole files in one padded batch (one batched convolution), each row's patches kept inside its
        own file (``ends``): bit-identical to :meth:`apply` on each file alone (the convolution is element-wise,
        and beyond a file's end it reads zeros either way)."""
        if len(files) <= 1:
            return super().apply_files(files)
        x, labels, lengths = padded(files)
        out = self.apply(x, labels, lengths, ends=lengths)
        return unpadded(out, files)

    def file_patches(self, files):
        return self.describe_patches(files, "filter")

    def block_plan(self, cls, frames, channels):
        """A long file a block at a time (see :meth:`Protection.block_plan`): every patch the whole file gets, in
        the order :meth:`apply` applies them, with the span it writes and the span its filter reads. With
        ``output: normalize`` a first pass finds the protected file's peak (:meth:`block_stats`). Not for a
        subclass that changes :meth:`apply` (e.g. poscuda-opt's budget over the whole file): protected whole."""
        if type(self).apply is not PosCUDAProtection.apply:
            return None
        return self.patch_ops(cls, frames)

    def patch_ops(self, cls: int, frames: int) -> PatchOps:
        """The :class:`PatchOps` of a file of class ``cls``, ``frames`` long (:meth:`block_plan`'s plan, also for a
        subclass that limits the patched file afterwards, e.g. poscuda-opt's budget)."""
        labels, lengths = torch.tensor([cls]), torch.tensor([frames])
        starts = self.starts(labels, frames, lengths)
        every = starts[0, :, None] if self.repeat_samples is None else self.repeat_starts(starts, frames, lengths)[0]
        ops = [(s, j) for j in range(every.shape[0]) for s in every[j].tolist() if s >= 0]  # apply's order
        k = self.filters.shape[-1]
        left = (k - 1) // 2
        at = np.array([s for s, _ in ops], dtype=np.int64).reshape(-1)
        return PatchOps(cls, frames, np.array([j for _, j in ops], dtype=np.int64), at,
                        np.minimum(at + self.patch_len, frames), np.maximum(at - left, 0),
                        np.minimum(at + self.patch_len + k - 1 - left, frames))

    @property
    def block_first_pass(self) -> bool:
        return self.params["output"] == "normalize"  # the protected file's peak, before any block is written

    def block_window(self, plan, a, b):
        return plan.window(a, b)

    def block_stats(self, plan, x, start):
        """First pass of ``output: normalize``: the file patched block by block (:class:`InOrder` keeps what a
        patch straddling two blocks reads), each channel's peak kept."""
        if plan.first is None:
            plan.first = InOrder(plan.frames, plan.window, partial(self._patched, plan))
        out = plan.first.feed(x, start)
        if out is not None and out.shape[1]:
            peak = out.abs().amax(dim=1, keepdim=True)
            plan.peak = peak if plan.peak is None else torch.maximum(plan.peak, peak)

    def apply_block(self, plan, x, lo, a, b):
        """Every patch that writes into the window, replayed in :meth:`apply`'s order on the window (each on the
        span its filter reads, as :meth:`_convolve_repeated` does): element-wise, so equal to the whole file's;
        with ``output: normalize``, divided by the file's peak where it passes 1, as :meth:`apply` divides."""
        out = self._patched(plan, x, lo, a, b)
        if self.params["output"] == "normalize":
            out = torch.where(plan.peak > 1.0, out / plan.peak, out)
        return out

    def _patched(self, plan, x, lo, a, b):
        out = x.clone()
        clip = self.params["output"] == "clip"
        hi = lo + x.shape[1]
        for i in np.flatnonzero((plan.write_lo < hi) & (plan.write_hi > lo)).tolist():
            r0, r1, s, j = int(plan.read_lo[i]) - lo, int(plan.read_hi[i]) - lo, int(plan.start[i]), int(plan.patch[i])
            n = x.shape[0]
            out[:, r0:r1] = convolve_patches(out[:, r0:r1], torch.full((n, 1), s - lo - r0),
                                             self.filters[plan.cls, j][None, None].expand(n, 1, -1), self.patch_len,
                                             clip=clip)
        return out[:, a - lo:b - lo]

    def to_dict(self) -> dict:
        return {
            "defense": self.name,
            "params": self.params,
            "key_fingerprint": self.key_fingerprint,
            "sample_rate": self.sample_rate,
            "patch_samples": self.patch_len,
            "positions": self.positions.tolist(),
            "filters": self.filters.tolist(),
        }

    @classmethod
    def from_dict(cls, record: dict) -> "PosCUDAProtection":
        return cls(record["params"], record["key_fingerprint"], record["sample_rate"],
                   torch.tensor(record["positions"], dtype=torch.float64),
                   torch.tensor(record["filters"], dtype=torch.float32))

    def _convolve_repeated(self, x: torch.Tensor, all_starts: torch.Tensor, filters: torch.Tensor,
                           ends: torch.Tensor | None = None) -> torch.Tensor:
        """Apply every repeated patch of ``all_starts`` (N, P, M), one (patch, repeat) at a time on a small
        window around it, so that a long clip is never copied once per repeat."""
        k = filters.shape[-1]
        left, right = (k - 1) // 2, k - 1 - (k - 1) // 2
        out = x.clone()
        t = x.shape[1]
        clip = self.params["output"] == "clip"
        for j in range(all_starts.shape[1]):
            for m in range(all_starts.shape[2]):
                s = all_starts[:, j, m]
                rows = (s >= 0).nonzero().flatten()
                if rows.numel() == 0:
                    continue
                a = max(0, int(s[rows].min()) - left)
                b = min(t, int(s[rows].max()) + self.patch_len + right)
                window = out[rows, a:b]
                done = convolve_patches(window, (s[rows] - a)[:, None].to(x.device),
                                        filters[rows, j:j + 1].to(x.device), self.patch_len, clip=clip,
                                        ends=None if ends is None else (ends[rows] - a).to(x.device))
                out[rows, a:b] = done
        return out

    def _apply_repeated(self, waveforms: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor | None = None,
                        position_classes: torch.Tensor | None = None, filter_classes: torch.Tensor | None = None,
                        shift_samples: int = 0, ends: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`apply` with ``repeat_seconds`` on: the same arguments and edge rules, with every patch repeated
        along the clip (see :meth:`repeat_starts`). Explicit ``positions`` and ``whole_clip`` ablations are applied
        without repeats."""
        labels = labels.long()
        pos_cls = labels if position_classes is None else position_classes.long()
        filt_cls = labels if filter_classes is None else filter_classes.long()
        starts = self.starts(pos_cls, waveforms.shape[1], lengths, shift_samples, ends)
        out = self._convolve_repeated(waveforms, self.repeat_starts(starts, waveforms.shape[1], lengths, ends),
                                      self.filters[filt_cls], ends)
        if self.params["output"] == "normalize":
            peak = out.abs().amax(dim=1, keepdim=True)
            out = torch.where(peak > 1.0, out / peak, out)
        return out


