"""The defense interface. Like an audiomentations transform, a defense has two halves:

1. ``derive``: draw everything random (per-class positions, filters, ...) from the private key and RECORD it in a
   :class:`Protection` (serialisable, testable, key-free);
2. ``Protection.apply``: apply what was recorded to a batch of waveforms, with no randomness of its own.

A protection can therefore be re-applied to other clips (the protected test set, position ablations) and reloaded
from ``results.json`` to reproduce an experiment exactly.

A defense also says what it can do, so that the lab's code never has to ask which defense it holds (every capability
has a default in the base classes; a plugin overrides only what it has, see docs/extending.md):

- on the :class:`Protection`: ``file_by_file`` (``lab protect`` may protect a collection one file at a time),
  ``ablation_variants`` (the position ablation's test sets), ``patch_spans`` (where it changed each clip: the
  spectrogram plot, attacks that check what they found), ``class_filters`` (the class-wise filters it convolved
  with);
- on the :class:`Defense`: ``check_fits`` (does a configuration fit the recipe's clips), ``matched_baseline`` and
  ``takes_snr`` with ``matched_config`` (how ``lab attack`` sets it up as a baseline next to the recipe's defense),
  ``additive`` (it adds noise, and takes the masking budget of lab/masking.py),
  ``example_config`` (the configuration the contract tests run it with).
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from lab.config import PluginConfig
from lab.errors import LabError
from lab.registry import Registry

DEFENSES: Registry = Registry("defense", package="defenses")

SHIFTS_MS = (-100, -50, -10, 10, 50, 100)  # the position ablation's shifts of a patch (milliseconds)
# the most taps a filter may have (0.5 s at 8 kHz): the tap-by-tap convolution's memory and time grow with it, and
# a larger value (a typo, or an edited private record) would exhaust the machine instead of protecting anything
MAX_TAPS = 4096


def other_classes(labels: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """For each clip, a class drawn uniformly from the OTHER classes (the position ablation's mixed variants)."""
    gen = torch.Generator().manual_seed(seed)
    return (labels + torch.randint(1, num_classes, labels.shape, generator=gen)) % num_classes


@dataclass
class TrainingSet:
    """What the lab hands a defense that is optimised on the data it protects (``Defense.needs_training_set``):
    the clean training clips and a way to make surrogate models, so that the plugin never imports the code that
    trains the lab's models.

    ``waveforms`` (N, T), ``labels`` (N,), ``lengths`` (N,) real clip lengths; ``new_surrogate()`` a freshly
    initialised classifier of WAVEFORMS (``model(waveforms) -> logits``, differentiable through the recipe's feature
    front-end, standardised on the clean training features), built from the recipe's model and features with the
    defense's :meth:`Defense.surrogate_overrides` applied, seeded with ``seed`` (each call draws new weights from
    torch's generator as seeded); ``lr``, ``weight_decay`` and ``batch_size`` the surrogate recipe's training
    settings; ``log`` progress messages; ``description`` the surrogate in words (model, features), for the record;
    ``device`` where the surrogate trains (``cuda`` when the recipe's accelerator is a GPU and one is here, else
    ``cpu``; the clips and the perturbation stay on the CPU).

    For a caller that must survive an interruption (``lab protect``): ``checkpoint``, when given, is called after
    every round of the optimisation with its whole state (a dict of tensors and plain values that ``torch.save``
    writes and ``torch.load(weights_only=True)`` reads back); ``resume``, when given, is such a state: the
    optimisation continues after that round exactly as it would have gone on (see ``defenses._minmin.min_min``).

    For a defense optimised against several surrogates (``ensemble-em``): ``surrogate_with(overrides)``, when given,
    is the same training set with the surrogate the recipe changed by ``overrides`` (the recipe sections ``model``,
    ``features``, ``train``, as a defense's ``surrogate`` field) instead: its own ``new_surrogate``, ``lr``,
    ``batch_size``, ``description``. None (a caller that builds surrogates itself, as the contract tests do): such a
    defense uses ``new_surrogate`` for every member and says so in its record.
    """

    waveforms: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor
    sample_rate: int
    num_classes: int
    new_surrogate: Callable[[], torch.nn.Module]
    lr: float
    weight_decay: float
    batch_size: int
    log: Callable[[str], None] = print
    description: str = ""
    device: str = "cpu"
    checkpoint: Callable[[dict], None] | None = None
    resume: dict | None = None
    surrogate_with: Callable[[dict], "TrainingSet"] | None = None


def samples_hash(samples: torch.Tensor) -> str:
    """SHA-256 of a whole file's decoded samples (channels, frames), as float32, with the shape: how a protection
    optimised on a collection finds the file a training clip came from (:class:`WorkingClips`)."""
    x = samples.detach().cpu().to(torch.float32).contiguous()
    digest = samples_hasher(x.shape[0], x.shape[1])
    digest.update(x.numpy().tobytes())
    return digest.hexdigest()


def samples_hasher(channels: int, frames: int):
    """:func:`samples_hash` a piece at a time: a SHA-256 object that has seen the shape; feed it channel 0's float32
    samples from its first frame to its last, then channel 1's, ... (the bytes of the (channels, frames) array in
    row order): a long file is hashed one pass per channel (:meth:`Protection.block_passes`)."""
    return hashlib.sha256(f"{channels}x{frames}:".encode())


@dataclass(frozen=True)
class WorkingClips:
    """How ``lab protect`` made the training clips of a defense that ``needs_training_set`` out of a collection's
    files, so that what was optimised on them can be written onto the files themselves
    (:meth:`Protection.files_at`): every file decoded, its channels averaged (mono), resampled to ``sample_rate``,
    its first ``clip_samples`` kept (a shorter one zero-padded at its end). Training row ``i`` came from the file
    whose decoded samples hash to ``sources[i]`` (:func:`samples_hash`). ``arrays``: the private file where lab
    protect keeps the protection's :meth:`Protection.arrays` (``torch.save`` of that dict, beside the record), so
    that a file-level protection sent to worker processes may load large tensors from it (memory-mapped) instead
    of carrying them; None: carry them."""

    sample_rate: int
    clip_samples: int
    sources: tuple[str, ...]
    arrays: str | None = None


class Protection(ABC):
    """What a defense applied, with everything needed to apply it again (and no key)."""

    name: ClassVar[str]
    types: ClassVar[dict[str, type["Protection"]]] = {}
    file_by_file: ClassVar[bool] = False
    """True when ``apply`` can protect one real file on its own (rows = the file's channels, one label, lengths = its
    frames): ``lab protect`` (which writes files one by one) applies only such protections, and refuses the others
    naming the ones it can apply. True when the protection of a clip is a function of that clip alone (its samples, real length, label and
    sample rate) and of what ``derive`` drew from the key, never of the other clips of the set. A collection can then
    be protected one file at a time (each at its own sample rate: derive once per rate), and the owner can re-derive
    any file's protection from the key and the file's label. False for a protection that needs the whole set (e.g.
    noise optimised on the data) and for ``none`` (nothing to write)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            Protection.types[cls.name] = cls

    @classmethod
    def from_dict(cls, record: dict, arrays: dict[str, torch.Tensor] | None = None) -> "Protection":
        """Rebuild a protection from its ``to_dict`` record (dispatching on ``record['defense']``) and, for one
        that has them, its :meth:`arrays`."""
        if cls is Protection:
            if record.get("defense") not in Protection.types:
                DEFENSES.discover()  # the record may come from a plugin not imported yet
            try:
                kind = Protection.types[record["defense"]]
            except KeyError:
                raise ValueError(f"unknown protection record {record.get('defense')!r}; "
                                 f"known: {', '.join(sorted(Protection.types))}") from None
            return kind.from_dict(record, arrays) if arrays else kind.from_dict(record)
        raise LabError(f"a {cls.name} protection cannot be rebuilt from its record: the record keeps the key's "
                       f"fingerprint, not what was drawn from the key; derive it again from the recipe with its key")

    def arrays(self) -> dict[str, torch.Tensor]:
        """Large tensors of the record that do not belong in JSON (e.g. optimised per-clip noise), name -> tensor;
        a run keeps them in ``protection.pt`` beside ``protection.json`` and passes them back to ``from_dict``.
        As secret as the record. Empty by default."""
        return {}

    @abstractmethod
    def apply(self, waveforms: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor | None = None,
              **ablation: Any) -> torch.Tensor:
        """Protected copies of ``waveforms`` (N, T); the input is never modified in place."""

    @abstractmethod
    def to_dict(self) -> dict:
        """JSON-serialisable record (parameters, derived values, key fingerprint; never the key)."""

    # --- capabilities (defaults: a protection without positions or filters) -------------------------------------

    def ablation_variants(self, waveforms: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor | None,
                          sample_rate: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """The position ablation's test sets, name -> waveforms (N, T): the same clips protected in different ways
        (see lab/ablation.py). Always ``clean`` (unprotected) and ``true`` (protected as the training data was);
        a protection with positions adds its own (PosCUDA: mixed positions, mixed filters, shifts, ...).
        ``seed`` draws any randomness (e.g. which other class a clip takes)."""
        return {"clean": waveforms, "true": self.apply(waveforms, labels, lengths)}

    def patch_spans(self, labels: torch.Tensor, total: int,
                    lengths: torch.Tensor | None = None) -> list[list[tuple[int, int]]] | None:
        """Where the protection changes clips of classes ``labels`` (N,) and padded length ``total``: for each clip
        one ``(start, stop)`` sample span per patch (``stop`` may pass ``total``: the patch is cut there). None for
        a protection without patches (it changes the whole clip)."""
        return None

    def class_filters(self) -> torch.Tensor | None:
        """The class-wise filters the protection convolves with, (C, k) (for several patches per class: the first
        patch's), for attacks that measure how well they recovered them; None when it convolves with none."""
        return None

    # --- lab protect's hooks (for a protection that is ``file_by_file``) ----------------------------------------

    def apply_files(self, files: list[tuple[torch.Tensor, int]]) -> list[torch.Tensor]:
        """Several whole files, each ``(samples (channels, frames), class)``, protected exactly as :meth:`apply`
        protects that file alone (rows = its channels, all of its class, lengths = its frames), bit for bit.
        Default: one :meth:`apply` per file. A protection that can take several files in one padded batch overrides
        it (PosCUDA: one batched convolution for a chunk of files); the contract tests check the equality."""
        return [self.apply(x, torch.full((x.shape[0],), c, dtype=torch.long),
                           torch.full((x.shape[0],), x.shape[1], dtype=torch.long)) for x, c in files]

    # --- lab protect's block hooks: a long file in bounded memory (see lab/protect/blocks.py) ---------------------

    def block_plan(self, cls: int, frames: int, channels: int) -> Any | None:
        """How to protect one file of class ``cls``, ``frames`` long with ``channels`` channels, a block at a time
        (whatever per-file state :meth:`block_window` and :meth:`apply_block` need), or None when this protection
        cannot (the default): lab protect then decodes such a long file whole, and its summary says so. A protection
        that returns a plan promises that the blocks it gives equal :meth:`apply` of the whole file, bit for bit,
        whatever the block size (the contract tests check it)."""
        return None

    block_first_pass: ClassVar[bool] = False
    """True: a plan needs one pass over the whole file before any block is protected (:meth:`block_stats`), e.g.
    to scale noise to the file's energy, or to scale the protected file by its peak (:class:`InOrder` gives the
    first pass the protected samples). May be a property of the protection's parameters."""

    def block_passes(self, plan: Any) -> int:
        """How many first passes over the whole file the plan needs (only where ``block_first_pass``), one after the
        other, each from frame 0 (e.g. one per channel, to hash the file's samples in channel order); default 1."""
        return 1

    def block_stats(self, plan: Any, x: torch.Tensor, start: int) -> None:
        """First pass (only where ``block_first_pass``): add the file's samples ``x`` (channels, n), which begin at
        frame ``start``, to the plan. Blocks come in order, each a multiple of ``lab.dsp.ENERGY_CHUNK`` frames long
        (the last apart), so that sums over the file are grouped as :meth:`apply` groups them. With several passes
        (:meth:`block_passes`) each begins again at ``start`` 0."""

    def block_window(self, plan: Any, a: int, b: int) -> tuple[int, int]:
        """The frames ``[lo, hi)`` of the file that :meth:`apply_block` must read to protect frames ``[a, b)``
        (those and the context a filter reads around them). Default: ``[a, b)``."""
        return a, b

    def apply_block(self, plan: Any, x: torch.Tensor, lo: int, a: int, b: int) -> torch.Tensor:
        """Protected frames ``[a, b)`` (channels, b - a) of the planned file, from its samples ``x``
        (channels, hi - lo) that begin at frame ``lo`` (the window :meth:`block_window` asked for)."""
        raise NotImplementedError(f"a {type(self).__name__} has no block hook")

    on_collection: ClassVar[bool] = False
    """True for a protection optimised on a collection (its defense ``needs_training_set``) that ``lab protect`` can
    write onto the collection's own files, each at its own sample rate and length, through :meth:`files_at`."""

    def files_at(self, sample_rate: int, working: WorkingClips) -> "Protection":
        """For a protection that is ``on_collection``, optimised on the :class:`WorkingClips` ``working``: the
        ``file_by_file`` protection lab protect applies to the collection's files of ``sample_rate`` (rows = one
        file's channels, lengths = its frames), with everything it needs to say in its ``to_dict`` how it maps what
        was optimised onto a file (lab verify compares it). It must be a function of this protection, the rate
        and ``working`` alone (verify rebuilds it from the private record)."""
        raise NotImplementedError(f"a {type(self).__name__} cannot be written onto a collection's files")

    def file_patches(self, files: list[tuple[int, int]]) -> list[list[dict] | None]:
        """For files ``(class, frames)``: where the protection puts its patches in each, as the private record
        writes them (per patch: its pattern ``class/patch``, first start sample, spacing and count of repeats,
        length in samples); ``lab verify`` re-derives and compares them. None per file for a protection that
        changes the whole file (the default)."""
        return [None] * len(files)


class InOrder:
    """For a first pass that needs the protected samples themselves (e.g. the peak of the protected file): the first
    pass's blocks come in order but without the context a filter reads around them, so this keeps the frames still
    to be read and gives out protected frames as soon as everything they read has been seen.

    ``window(a, b)`` names the frames ``[lo, hi)`` that protecting ``[a, b)`` reads (``block_window``; the larger
    ``[a, b)``, the wider) and ``protect(x, lo, a, b)`` protects ``[a, b)`` from them (``apply_block`` before any
    scale that waits for the first pass). Holds about one block and one window."""

    def __init__(self, frames: int, window: Callable[[int, int], tuple[int, int]],
                 protect: Callable[[torch.Tensor, int, int, int], torch.Tensor]):
        self.frames, self.window, self.protect = frames, window, protect
        self.kept: torch.Tensor | None = None  # frames [kept_lo, seen) of the file
        self.kept_lo = self.done = 0  # protected frames [0, done) have been given out

    def feed(self, x: torch.Tensor, start: int) -> torch.Tensor | None:
        """Take the file's frames ``x`` (channels, n) beginning at ``start`` (right after the previous ones);
        the protected frames ``[done, new done)`` that are now complete, or None."""
        self.kept = x if self.kept is None else torch.cat([self.kept, x], dim=1)
        seen = start + x.shape[1]
        end = self.frames if seen >= self.frames else self._ready(seen)
        if end <= self.done:
            return None
        lo, hi = self.window(self.done, end)
        out = self.protect(self.kept[:, lo - self.kept_lo:hi - self.kept_lo], lo, self.done, end)
        self.done = end
        keep = self.window(end, self.frames)[0] if end < self.frames else seen
        self.kept, self.kept_lo = self.kept[:, keep - self.kept_lo:], keep
        return out

    def _ready(self, seen: int) -> int:
        """The largest ``end`` (``done`` if none) whose window ``[done, end)`` reads nothing past ``seen``."""
        lo, hi = self.done, seen  # window(done, lo) is complete (or empty); bisect for the last complete end
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.window(self.done, mid)[1] <= seen:
                lo = mid
            else:
                hi = mid - 1
        return lo


class Defense(ABC):
    Config: ClassVar[type[PluginConfig]]

    matched_baseline: ClassVar[int | None] = None
    """Not None: ``lab attack --type all`` puts this defense in its table next to the recipe's own, configured by
    :meth:`matched_config`; baselines come in increasing order of this number (ties by name)."""

    needs_training_set: ClassVar[bool] = False
    """True: the protection is optimised on the data it protects (e.g. error-minimising noise): the lab calls
    :meth:`derive_from` with the clean training set and a surrogate factory instead of :meth:`derive`."""

    additive: ClassVar[bool] = False
    """True: the protection ADDS a change to each clip (noise) and its Config takes the ``masking`` budget
    (``masking_margin_db``, from :class:`lab.masking.MaskingBudget`): with it set, the change's power in every frame
    and bin is at most the clean clip's masking threshold plus the margin (the contract tests measure it)."""

    takes_snr: ClassVar[bool] = False
    """True: the defense can be set to a target SNR (:meth:`matched_config` uses ``snr_db``): ``lab attack`` then
    measures the SNR of the recipe's defense on the training set and sets this one to it (equal distortion)."""

    def __init__(self, config: PluginConfig):
        self.config = config

    @classmethod
    def matched_config(cls, reference: PluginConfig, snr_db: float | None = None) -> dict:
        """The fields (``type`` apart) that configure this defense like ``reference``, the recipe's defense, for a
        comparison next to it; ``snr_db``: the reference's SNR (None when it was not measured), for a defense that
        ``takes_snr`` to set itself to. By default: the reference's ``key`` and ``key_file``, where both have them,
        and ``snr_db`` for a defense that takes an SNR."""
        out = {k: getattr(reference, k) for k in ("key", "key_file")
               if k in cls.Config.model_fields and getattr(reference, k, None) is not None}
        if cls.takes_snr and snr_db is not None:
            out["snr_db"] = snr_db
        return out

    @classmethod
    def example_config(cls, key: str) -> dict:
        """A small, quick configuration of this defense (its fields, ``type`` apart) that protects with ``key``:
        what the contract tests (tests/test_contracts.py) derive and apply, and what lab protect's test passes as
        ``--option`` (``key`` apart). By default the key alone, where the Config has a ``key`` field (a defense
        without one is keyless: the contract then skips "another key gives another protection"). Override it to
        give a field a non-default value worth seeing at work, to fill a field that has no default, or to keep an
        optimisation short."""
        return {"key": key} if "key" in cls.Config.model_fields else {}

    @classmethod
    def check_fits(cls, config: PluginConfig, clip_seconds: float) -> None:
        """Raise ValueError (one line, naming the field) when ``config`` cannot protect clips of ``clip_seconds``
        (the recipe's validation calls it); by default everything fits."""

    @abstractmethod
    def derive(self, num_classes: int, sample_rate: int) -> Protection:
        """Draw the protection for ``num_classes`` classes at ``sample_rate`` (from the key, where there is one)."""

    def derive_from(self, data: TrainingSet) -> Protection:
        """The protection of a defense that ``needs_training_set``, optimised on ``data``."""
        raise NotImplementedError(f"defense {self.config.type!r} is not optimised on data")

    def surrogate_overrides(self) -> dict:
        """Recipe sections (``model``, ``features``, ``train``) to change for the surrogate of a defense that
        ``needs_training_set`` (default: none, the recipe's own model and features)."""
        return {}

    def surrogate_variants(self) -> list[dict]:
        """Every set of surrogate overrides this defense will ask for (the recipe validates each at the door): by
        default its one :meth:`surrogate_overrides`; a defense with several surrogates lists them all."""
        return [self.surrogate_overrides()]

    def surrogate_seed(self) -> int:
        """The seed of the surrogate's weights and batch order (default 0; a keyed defense derives it from its
        key, so that the same key always gives the same protection)."""
        return 0


def build_defense(config: PluginConfig) -> Defense:
    return DEFENSES.get(config.type)(config)
