"""The min-min (error-minimising) optimisation shared by the optimised defenses (em-noise, robust-em, poscuda-opt;
ensemble-em runs its own loop over several surrogates with this module's parts).

Huang et al., "Unlearnable Examples" (ICLR 2021): find a perturbation that makes the training loss as SMALL as
possible, alternating with training a surrogate on the perturbed data, so that the perturbation becomes the easiest
thing to learn:

    repeat (a "round"):
        train the surrogate for ``train_batches`` batches on the perturbed clips
        for every batch of clips: ``steps`` descent steps of the perturbation on the surrogate's loss (projected
            to the budget after each)
        stop when the surrogate's accuracy on the perturbed training clips reaches ``stop_accuracy``
    (at least ``min_rounds``, at most ``max_rounds`` rounds)

Robust error-minimising noise (Fu et al., ICLR 2022) puts an adversarial step inside: with ``rho > 0`` every
perturbed batch, for training and for the noise's descent steps alike, is first pushed within +-``rho``
(L-infinity, waveform units) towards a HIGHER loss by ``rho_steps`` signed-gradient steps, so the noise must keep the
loss low even for a trainer who trains adversarially with a radius up to ``rho``. It costs about ``rho_steps + 1``
times as much.

What is optimised is the defense's :class:`Perturbation` (per-clip noise, class noise, class filters); this module
only runs the loop, and is the same for all of them. Everything is drawn from one seed (the defense derives it from
its key), so the same key and data give the same protection.

Class-wise noise (one pattern per class) is added by :func:`add_class_patterns`, and written onto lab protect's whole
files at their own rate and length by :class:`ClassPatternsOnFiles` (:func:`class_patterns_mapping` says how, in
words): ensemble-em uses them; em-noise's class-wise ``EMNoiseFiles`` does the same operations (tested bit for bit).
"""
from __future__ import annotations

import hashlib
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from pydantic import Field, model_serializer

from defenses.base import Defense, TrainingSet
from lab.config import Section
from lab.dsp import add_energy, gain_for, snr_gain
from lab.keys import derive_seed, resolve_key
from lab.masking import limit_to_threshold, masking_threshold


class OptimisedDefense(Defense):
    """What every defense optimised by min-min shares: it needs the training set, its surrogate's seed comes from
    its key (HMAC under ``seed_label``), its config's ``surrogate`` changes the surrogate, and it cannot be derived
    from the key alone."""

    needs_training_set = True
    takes_snr = True
    seed_label = ""  # e.g. "em-noise/v1/surrogate"

    @classmethod
    def example_config(cls, key):
        """One short round of min-min (the contract tests optimise it several times on a few clips)."""
        return {"key": key, "max_rounds": 1, "train_batches": 2, "steps": 2}

    def _key(self) -> str:
        return resolve_key(self.config.key, self.config.key_file)

    def surrogate_seed(self) -> int:
        return derive_seed(self._key(), self.seed_label, 0) % (2 ** 31)

    def surrogate_overrides(self) -> dict:
        return self.config.surrogate.model_dump()

    def derive(self, num_classes, sample_rate):
        raise ValueError(f"defense {self.config.type!r} is optimised on the training data: it is derived by the "
                         f"lab from a recipe (lab run, lab attack), not from the key alone")


class SurrogateConfig(Section):
    """An optimised defense's ``surrogate:``: the recipe sections its surrogate changes, each a mapping of that
    section's fields (``model: {type: lstm}``, ``features: {type: logmel}``, ``train: {lr: 0.01}``). A misspelt
    section is refused here with a did-you-mean; the fields inside are checked against the recipe when the recipe is
    validated (``lab.recipe.surrogate_recipe``), so any typo fails before the data is loaded. Dumped with the
    sections given only (``{}`` for none), as the untyped mapping it replaces was."""

    model: dict[str, Any] | None = None
    features: dict[str, Any] | None = None
    train: dict[str, Any] | None = None

    @model_serializer(mode="wrap")
    def _given(self, handler) -> dict:
        return {k: v for k, v in handler(self).items() if v is not None}


class MinMinSettings(Section):
    """The min-min loop's settings, shared by the optimised defenses' configs (each may change a default)."""

    steps: int = Field(10, ge=1)
    step_size: float = Field(0.25, gt=0)
    train_batches: int = Field(10, ge=1)
    stop_accuracy: float = Field(0.99, gt=0, le=1)
    max_rounds: int = Field(10, ge=1)
    min_rounds: int = Field(1, ge=1)
    rho: float = Field(0.0, ge=0)
    rho_steps: int = Field(3, ge=1)
    surrogate: SurrogateConfig = Field(default_factory=SurrogateConfig)

    def run(self, data: TrainingSet, pert: "Perturbation", seed: int) -> dict:
        """:func:`min_min` on ``pert`` with these settings."""
        return min_min(data, pert, seed, steps=self.steps, train_batches=self.train_batches,
                       stop_accuracy=self.stop_accuracy, max_rounds=self.max_rounds, min_rounds=self.min_rounds,
                       rho=self.rho, rho_steps=self.rho_steps)


class Perturbation:
    """What min-min optimises. ``x``, ``y``, ``lengths``: a batch's clean clips, labels and real lengths; ``idx``
    their indices in the training set."""

    def variable(self, idx: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A detached copy of the part of the perturbation this batch uses (optimised for ``steps`` steps)."""
        raise NotImplementedError

    def perturbed(self, var: torch.Tensor, idx: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                  lengths: torch.Tensor) -> torch.Tensor:
        """The batch as protected with ``var`` (differentiable with respect to ``var``), within the budget."""
        raise NotImplementedError

    def descend(self, var: torch.Tensor, grad: torch.Tensor, idx: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One descent step of ``var`` along ``-grad``, projected back to the constraints."""
        raise NotImplementedError

    def store(self, var: torch.Tensor, idx: torch.Tensor, y: torch.Tensor) -> None:
        """Keep the optimised ``var`` as the perturbation's current state."""
        raise NotImplementedError

    def state(self) -> dict[str, torch.Tensor]:
        """The perturbation's current state (what :meth:`store` keeps), name -> tensor, for a checkpoint."""
        raise NotImplementedError

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        """Put back a :meth:`state` (a resumed optimisation)."""
        raise NotImplementedError

    def current(self, idx, x, y, lengths) -> torch.Tensor:
        with torch.no_grad():
            return self.perturbed(self.variable(idx, y), idx, x, y, lengths)


def span_mask(waveforms: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """(N, T) 1.0 on each clip's real audio, 0.0 on its zero padding (right padding, or centred when a clip has
    samples past its length)."""
    n, t = waveforms.shape
    if lengths is None:
        return torch.ones_like(waveforms)
    length = lengths.long().clamp(0, t)
    pos = torch.arange(t)[None, :]
    past = ((waveforms != 0) & (pos >= length[:, None])).any(dim=1)
    start = torch.where(past, (t - length) // 2, torch.zeros_like(length))
    return ((pos >= start[:, None]) & (pos < (start + length)[:, None])).to(waveforms.dtype)


def add_class_patterns(x: torch.Tensor, patterns: torch.Tensor, mask: torch.Tensor, snr_db: float | None,
                       linf: float | None = None, masking: tuple | None = None,
                       optimising: bool = False) -> torch.Tensor:
    """``x`` plus each row's class pattern on its real audio (``mask``), scaled to ``snr_db`` exactly (else left as
    it is; a silent row gets none), clipped to ``linf``; ``masking``: ``(sample_rate, margin_db, thresholds or
    None)``, then shaped to the masking budget (lab.masking.limit_to_threshold; ``optimising``: the cheaper
    :func:`shaped_straight_through`, what an optimisation uses). Differentiable. The class-wise
    noise of the optimised defenses, in their optimisation, on clips and on a collection's files alike."""
    noise = patterns * mask
    if snr_db is not None:
        noise = noise * snr_gain(x, noise, snr_db).to(x.dtype)
    if linf is not None:
        noise = noise.clamp(-linf, linf)
    if masking is not None:
        sample_rate, margin, thresholds = masking
        if not optimising:
            noise = limit_to_threshold(x, noise, sample_rate, margin, support=mask, snr_db=snr_db, linf=linf,
                                       threshold_db=thresholds)
        else:
            noise = shaped_straight_through(x, noise, mask, sample_rate, margin, snr_db, linf, thresholds)
    return x + noise


OPTIMISATION_SHAPING_ITERATIONS = 4  # the masking projection's rounds inside an optimisation (its own default: 12)


def shaped_straight_through(x, noise, mask, sample_rate, margin, snr_db, linf, thresholds) -> torch.Tensor:
    """``noise`` shaped to the masking budget the cheap way an optimisation takes it, hundreds of times a round: the
    projection (:data:`OPTIMISATION_SHAPING_ITERATIONS` rounds, within the budget all the same) runs without
    gradient, and the gradient passes straight through it (BPDA, Athalye et al. 2018), weighted per clip by the share
    of the noise's norm the projection kept. Differentiating through the projection's twelve float64 STFT rounds
    cost about 350x the unshaped step (3.6 s a batch of 64 one-second clips at one thread, against 0.01 s);
    this costs about 40x. The value is a projection onto the budget; only the direction of the step is estimated."""
    with torch.no_grad():
        shaped = limit_to_threshold(x, noise.detach(), sample_rate, margin, support=mask, snr_db=snr_db, linf=linf,
                                    threshold_db=thresholds, iterations=OPTIMISATION_SHAPING_ITERATIONS)
        kept = (shaped.norm(dim=1, keepdim=True) / noise.detach().norm(dim=1, keepdim=True).clamp(min=1e-30))
    return kept * noise + (shaped - kept * noise).detach()


class MaskedNoise:
    """The masking budget of an optimisation on ``data`` (nothing when ``margin_db`` is None): the training clips'
    thresholds, computed once, and the projection onto the budget."""

    ITERATIONS = OPTIMISATION_SHAPING_ITERATIONS  # the noise is projected again after every step, so they add up

    def __init__(self, data: TrainingSet, margin_db: float | None, linf: float | None):
        self.margin, self.linf, self.sample_rate, self.clean = margin_db, linf, data.sample_rate, data.waveforms
        self.thresholds = None if margin_db is None else masking_threshold(data.waveforms, data.sample_rate).float()

    def limit(self, d: torch.Tensor, idx: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        if self.margin is None:
            return d
        return limit_to_threshold(self.clean[idx], d, self.sample_rate, self.margin, support=support, linf=self.linf,
                                  threshold_db=self.thresholds[idx], iterations=self.ITERATIONS)

    def filled(self, d: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        return limit_to_threshold(self.clean, d, self.sample_rate, self.margin, support=support, fill=True,
                                  threshold_db=self.thresholds)

    def at(self, idx: torch.Tensor) -> tuple | None:
        """What :func:`add_class_patterns` takes for the clips ``idx``."""
        return None if self.margin is None else (self.sample_rate, self.margin, self.thresholds[idx])


class ClassPatterns(Perturbation):
    """Class-wise noise, the perturbation of em-noise (``mode: class-wise``) and ensemble-em: one unit-RMS pattern
    per class (C, T), added to each clip's real audio by :func:`add_class_patterns` (scaled per clip to the SNR
    target, clipped to ``linf``, shaped to the masking budget with the training clips' thresholds computed once, the
    cheap way in the optimisation: :func:`shaped_straight_through`); a descent step is the class's gradient
    normalised, ``step_size`` times the pattern's norm, then the pattern normalised again."""

    def __init__(self, data: TrainingSet, snr_db, linf, step_size, gen: torch.Generator, margin_db=None):
        self.snr_db, self.linf, self.step = snr_db, linf, step_size
        self.masking = MaskedNoise(data, margin_db, linf)
        self.mask = span_mask(data.waveforms, data.lengths)
        self.patterns = self.normalise(self.start(data, gen))

    def start(self, data: TrainingSet, gen: torch.Generator) -> torch.Tensor:
        """The patterns before normalising, drawn from ``gen``: white noise, a row per class."""
        return torch.randn(data.num_classes, data.waveforms.shape[1], generator=gen).to(data.waveforms)

    @staticmethod
    def normalise(p):
        return p / p.pow(2).mean(dim=1, keepdim=True).sqrt().clamp(min=1e-30)

    def variable(self, idx, y):
        return self.patterns.clone()

    def rows(self, var, idx, y, t):
        """Each clip's pattern (B, t) from the patterns ``var``."""
        return var[y]

    def perturbed(self, var, idx, x, y, lengths):
        return add_class_patterns(x, self.rows(var, idx, y, x.shape[1]), self.mask[idx], self.snr_db, self.linf,
                                  masking=self.masking.at(idx), optimising=True)

    def descend(self, var, grad, idx, y):
        norm = grad.norm(dim=1, keepdim=True)
        used = norm > 0  # classes in this batch
        step = self.step * var.norm(dim=1, keepdim=True) * grad / norm.clamp(min=1e-30)
        return self.normalise(torch.where(used, var - step, var))

    def store(self, var, idx, y):
        self.patterns = var.detach()

    def state(self):
        return {"patterns": self.patterns}

    def restore(self, state):
        self.patterns = state["patterns"].to(self.patterns)


def clip_noise(waveforms: torch.Tensor, lengths: torch.Tensor, salt: str) -> torch.Tensor:
    """Each clip's white noise (N, T), zero outside its real audio (:func:`span_mask`: right padding, or centred): a
    draw seeded by HMAC(``salt``, "clip/<sha256 of the clip's real samples as float32>"), so the same clip always
    gets the same noise."""
    n, t = waveforms.shape
    out = torch.zeros(n, t)
    for i, row in enumerate(span_mask(waveforms, lengths)):
        where = torch.nonzero(row).flatten()
        if len(where) == 0:
            continue
        a, b = int(where[0]), int(where[-1]) + 1
        digest = hashlib.sha256(waveforms[i, a:b].detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()
        gen = torch.Generator().manual_seed(derive_seed(salt, "clip", digest) % (2 ** 63))
        out[i, a:b] = torch.randn(b - a, generator=gen)
    return out


def filtered(noise: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Rows of ``noise`` (N, T) convolved with the rows of ``filters`` (N, L), "same" alignment (output sample t is
    centred on input sample t), by FFT; differentiable in both."""
    t, taps = noise.shape[1], filters.shape[1]
    n = t + taps - 1
    size = 1 << (n - 1).bit_length()
    full = torch.fft.irfft(torch.fft.rfft(noise, size) * torch.fft.rfft(filters.to(noise.dtype), size), size)
    return full[:, (taps - 1) // 2:(taps - 1) // 2 + t]


class ClassFilters(ClassPatterns):
    """The optimised variable: one unit-RMS FIR filter per class (C, ``taps``), applied to each training clip's own
    white noise (:func:`clip_noise`, drawn once)."""

    def __init__(self, data: TrainingSet, snr_db, linf, step_size, gen, margin_db, taps: int, salt: str):
        self.taps, self.salt = taps, salt
        super().__init__(data, snr_db, linf, step_size, gen, margin_db)
        self.noise = clip_noise(data.waveforms, data.lengths, salt).to(data.waveforms)

    def start(self, data, gen):
        return torch.randn(data.num_classes, self.taps, generator=gen).to(data.waveforms)

    def rows(self, var, idx, y, t):
        return filtered(self.noise[idx], var[y])


def masking_of(params: dict, sample_rate: int) -> tuple | None:
    """:func:`add_class_patterns`'s ``masking`` for a record's ``params`` (None: no masking budget)."""
    margin = params.get("masking_margin_db")
    return None if margin is None else (sample_rate, margin, None)


def class_patterns_mapping(budget: str = "") -> str:
    """What :class:`ClassPatternsOnFiles` does to a file, in words (a ``files_at`` protection's ``mapping``, which
    lab verify compares); ``budget``: the defense's own limits after the SNR scaling (", clipped to linf")."""
    return ("the file's class pattern (arrays 'patterns', a row per class, at working_rate) resampled to the file's "
            "sample_rate (torchaudio.functional.resample), repeated to the file's length, scaled per channel to "
            f"snr_db exactly (silent channels get none){budget}, added to every channel")


class ClassPatternsOnFiles:
    """Class patterns (C, T) optimised on lab protect's working clips at ``working_rate``, written onto whole files
    at ``sample_rate``: each pattern resampled once (torchaudio.functional.resample), then for a file (its channels
    as rows, all of one class) the class's pattern repeated to the file's length and added to every channel by
    :func:`add_class_patterns` (per channel: scaled to ``snr_db`` exactly, clipped to ``linf``, shaped to the
    masking budget when ``margin_db`` is set, the thresholds the file's own)."""

    def __init__(self, patterns: torch.Tensor, working_rate: int, sample_rate: int, snr_db: float | None,
                 linf: float | None = None, margin_db: float | None = None):
        import torchaudio.functional as AF
        self.sample_rate, self.snr_db, self.linf, self.margin = sample_rate, snr_db, linf, margin_db
        p = patterns.float()
        self.patterns = AF.resample(p, working_rate, sample_rate) if sample_rate != working_rate else p

    def apply(self, waveforms: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One file, ``waveforms`` (channels, frames), protected (``labels``: its class, one per channel)."""
        n = waveforms.shape[1]
        reps = -(-n // self.patterns.shape[1])
        pattern = self.patterns.repeat(1, reps)[:, :n][labels.long()].to(waveforms.dtype)
        masking = None if self.margin is None else (self.sample_rate, self.margin, None)
        return add_class_patterns(waveforms, pattern, torch.ones_like(waveforms), self.snr_db, self.linf, masking)

    # --- a long file a block at a time (the block hooks of a files_at protection delegate here; see
    # defenses.base.Protection.block_plan): with snr_db, a first pass sums each channel's energy and the tiled
    # pattern's (lab.dsp.add_energy, as add_class_patterns sums them); then the pattern is tiled block by block,
    # never over the whole file, scaled and clipped. Not with a masking budget (shaped against the whole file)

    @property
    def first_pass(self) -> bool:
        return self.snr_db is not None

    def block_plan(self, cls: int, frames: int, channels: int) -> dict | None:
        if self.margin is not None:
            return None
        return {"cls": cls, "frames": frames, "channels": channels, "signal": None, "power": None, "gain": None}

    def block_stats(self, plan: dict, x: torch.Tensor, start: int) -> None:
        plan["signal"] = add_energy(plan["signal"], x)
        plan["power"] = add_energy(plan["power"], self.tiled(plan, start, start + x.shape[1], x.dtype))

    def tiled(self, plan: dict, a: int, b: int, dtype: torch.dtype) -> torch.Tensor:
        """Frames [a, b) of the class pattern repeated over the file, a row per channel, as :meth:`apply` has them."""
        period = self.patterns[plan["cls"]]
        return period[torch.arange(a, b) % len(period)].to(dtype)[None].repeat(plan["channels"], 1)

    def apply_block(self, plan: dict, x: torch.Tensor, a: int, b: int) -> torch.Tensor:
        """Frames [a, b) of the file, ``x`` (channels, b - a), protected as :meth:`apply` protects them."""
        noise = self.tiled(plan, a, b, x.dtype)
        if self.snr_db is not None:
            if plan["gain"] is None:
                plan["gain"] = gain_for(plan["signal"], plan["power"], self.snr_db)
            noise = noise * plan["gain"].to(x.dtype)
        return x + (noise.clamp(-self.linf, self.linf) if self.linf is not None else noise)


FILTERED_NOISE_MAPPING = (
    "each channel's own white noise (torch.randn from a generator seeded by HMAC of the record's noise salt and "
    "'clip/<SHA-256 of the channel's samples as float32>', see defenses._minmin.clip_noise) convolved ('same' "
    "alignment, by FFT) with the file's class filter (arrays 'filters' or 'patterns', a row per class, at "
    "working_rate) resampled to the file's sample_rate (torchaudio.functional.resample), scaled per channel to snr_db "
    "exactly (silent channels get none), clipped to linf, shaped to the masking budget when masking_margin_db is set")


class FilteredNoiseOnFiles:
    """Class filters (C, taps) optimised on lab protect's working clips at ``working_rate``, written onto whole files
    at ``sample_rate`` (:data:`FILTERED_NOISE_MAPPING`): each filter's impulse response resampled once, then for a
    file (its channels as rows, all of one class) every channel gets its own white noise (:func:`clip_noise` over
    the whole channel, from ``salt``: as secret as the key) through the class's filter, added by
    :func:`add_class_patterns` (per channel: scaled to ``snr_db`` exactly, clipped to ``linf``, shaped to the masking
    budget when ``margin_db`` is set). No block hooks: the noise is drawn and filtered over the whole channel, so a
    long file is decoded whole (its record says so)."""

    first_pass = False

    def __init__(self, filters: torch.Tensor, salt: str, working_rate: int, sample_rate: int, snr_db: float | None,
                 linf: float | None = None, margin_db: float | None = None):
        import torchaudio.functional as AF
        self.salt, self.sample_rate, self.snr_db, self.linf, self.margin = salt, sample_rate, snr_db, linf, margin_db
        f = filters.float()
        self.filters = AF.resample(f, working_rate, sample_rate) if sample_rate != working_rate else f

    def apply(self, waveforms: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One file, ``waveforms`` (channels, frames), protected (``labels``: its class, one per channel)."""
        channels, n = waveforms.shape
        noise = clip_noise(waveforms, torch.full((channels,), n, dtype=torch.long), self.salt).to(waveforms.dtype)
        rows = filtered(noise, self.filters[labels.long()].to(waveforms.dtype))
        masking = None if self.margin is None else (self.sample_rate, self.margin, None)
        return add_class_patterns(waveforms, rows, torch.ones_like(waveforms), self.snr_db, self.linf, masking)

    def block_plan(self, cls: int, frames: int, channels: int) -> None:
        return None


def _on(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` on the device of ``model`` (differentiable: gradients flow back to ``x``'s device). The perturbation
    and the clips stay where they are (the CPU); only the surrogate's forward and backward pass run on the
    recipe's device."""
    device = next(model.parameters()).device
    return x if x.device == device else x.to(device)


def adversarial(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, rho: float, steps: int,
                gen: torch.Generator) -> torch.Tensor:
    """A change within +-rho (L-infinity) of ``x`` that raises ``model``'s loss (PGD from a random start); the
    robust inner step. Returned detached: it is held fixed while the perturbation descends."""
    delta = (2 * torch.rand(x.shape, generator=gen) - 1).to(x) * rho
    step = 2.5 * rho / steps
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(_on(model, x + delta)), _on(model, y))
        (g,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step * g.sign()).clamp(-rho, rho)
    return delta.detach()


@torch.no_grad()
def accuracy(model: torch.nn.Module, pert: Perturbation, data: TrainingSet, batch: int = 256) -> float:
    """The surrogate's accuracy on the whole perturbed training set (the paper's stop rule)."""
    model.eval()
    correct = 0
    for idx in torch.arange(len(data.labels)).split(batch):
        x, y, ln = data.waveforms[idx], data.labels[idx], data.lengths[idx]
        correct += int((model(_on(model, pert.current(idx, x, y, ln))).argmax(1).cpu() == y).sum())
    return correct / len(data.labels)


def min_min(data: TrainingSet, pert: Perturbation, seed: int, steps: int = 10, train_batches: int = 10,
            stop_accuracy: float = 0.99, max_rounds: int = 10, min_rounds: int = 1, rho: float = 0.0,
            rho_steps: int = 3, batch_size: int | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Run the min-min loop (module docstring) on ``pert``; returns what happened (rounds, accuracy per round,
    seconds, whether the stop rule was met), for the protection's record.

    After every round ``data.checkpoint`` (when given) receives the loop's whole state (:func:`round_state`: the
    perturbation, the surrogate's weights and optimiser, the generators, the batch order, the history); with
    ``data.resume`` set to such a state the loop continues after its round: in one process, an interrupted
    optimisation resumed from its last checkpoint ends exactly where an uninterrupted one does (tested)."""
    log = log or data.log
    n = len(data.labels)
    bs = batch_size or data.batch_size
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = data.new_surrogate().to(data.device)
    opt = torch.optim.Adam(model.parameters(), lr=data.lr, weight_decay=data.weight_decay)
    loop = {"round": 0, "order": torch.randperm(n, generator=gen), "cursor": 0, "history": [], "stopped": False,
            "seconds": 0.0}
    if data.resume is not None:
        loop = resume_state(data.resume, model, opt, gen, pert)
    started = time.perf_counter() - loop["seconds"]
    for round_ in range(loop["round"] + 1, max_rounds + 1):
        if loop["stopped"]:
            break
        train_surrogate(model, opt, pert, data, loop, gen, train_batches, bs, rho, rho_steps)
        descend_all(model, pert, data, gen, bs, steps, rho, rho_steps)
        acc = accuracy(model, pert, data)
        loop["seconds"] = time.perf_counter() - started
        loop["history"].append({"round": round_, "train_accuracy": round(acc, 4),
                                "seconds": round(loop["seconds"], 1)})
        log(f"  min-min round {round_}: surrogate accuracy on the perturbed training clips {acc:.3f} "
            f"({loop['seconds']:.0f} s)")
        loop["round"] = round_
        loop["stopped"] = acc >= stop_accuracy and round_ >= min_rounds
        if data.checkpoint is not None:
            data.checkpoint(round_state(loop, model, opt, gen, pert))
    return {"rounds": loop["history"], "stop_rule_met": loop["stopped"],
            "seconds": round(time.perf_counter() - started, 1), "surrogate": data.description,
            "seed_source": "key", "device": str(data.device)}


def train_surrogate(model, opt, pert: Perturbation, data: TrainingSet, loop: dict, gen: torch.Generator,
                    train_batches: int, bs: int, rho: float, rho_steps: int) -> None:
    """A round's first half: the surrogate learns the currently perturbed data for ``train_batches`` batches (the
    batch order and its cursor live in ``loop``, across rounds)."""
    n = len(data.labels)
    model.train()
    for _ in range(train_batches):
        if loop["cursor"] + bs > n:
            loop["order"], loop["cursor"] = torch.randperm(n, generator=gen), 0
        idx = loop["order"][loop["cursor"]:loop["cursor"] + bs]
        loop["cursor"] += bs
        x, y, ln = data.waveforms[idx], data.labels[idx], data.lengths[idx]
        xp = pert.current(idx, x, y, ln)
        if rho > 0:
            xp = xp + adversarial(model, xp, y, rho, rho_steps, gen)
        loss = F.cross_entropy(model(_on(model, xp)), _on(model, y))
        opt.zero_grad()
        loss.backward()
        opt.step()


def descend_all(model, pert: Perturbation, data: TrainingSet, gen: torch.Generator, bs: int, steps: int,
                rho: float, rho_steps: int) -> None:
    """A round's second half: for every batch, ``steps`` descent steps of the perturbation on the surrogate's
    loss."""
    model.eval()
    for idx in torch.randperm(len(data.labels), generator=gen).split(bs):
        x, y, ln = data.waveforms[idx], data.labels[idx], data.lengths[idx]
        var = pert.variable(idx, y)
        for _ in range(steps):
            v = var.detach().requires_grad_(True)
            xp = pert.perturbed(v, idx, x, y, ln)
            if rho > 0:
                xp = xp + adversarial(model, xp.detach(), y, rho, rho_steps, gen)
            loss = F.cross_entropy(model(_on(model, xp)), _on(model, y))
            (g,) = torch.autograd.grad(loss, v)
            var = pert.descend(v.detach(), g, idx, y)
        pert.store(var, idx, y)


def round_state(loop: dict, model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                pert: Perturbation) -> dict:
    """Everything the loop needs to go on after this round, as tensors and plain values (on the CPU)."""
    state = {"round": loop["round"], "stopped": loop["stopped"], "seconds": loop["seconds"],
             "history": [dict(h) for h in loop["history"]], "cursor": loop["cursor"],
             "order": loop["order"].clone(), "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
             "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
             "optimizer": _on_cpu(opt.state_dict()), "perturbation": {k: v.detach().cpu().clone()
                                                                      for k, v in pert.state().items()}}
    if next(model.parameters()).is_cuda:
        state["cuda_rng"] = torch.cuda.get_rng_state()
    return state


def _on_cpu(obj):
    """``obj`` (nested dicts, lists, tuples) with every tensor copied to the CPU: a checkpoint loads anywhere."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


def resume_state(state: dict, model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                 pert: Perturbation) -> dict:
    """Put the surrogate, its optimiser, the generators and the perturbation back as :func:`round_state` saw them;
    returns the loop's own state."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"])
    pert.restore(state["perturbation"])
    return {"round": int(state["round"]), "order": state["order"], "cursor": int(state["cursor"]),
            "history": [dict(h) for h in state["history"]], "stopped": bool(state["stopped"]),
            "seconds": float(state["seconds"])}
