"""The backdoor-smoothing measure W_σ(x): the estimator and its result (no plotting, no widgets).

For a classifier f, an input x, a noise scale σ and n samples (method.md; Grosse et al.,
Computers & Security 2022):

    x_i = x + σ·ε_i,  ε_i ~ N(0, I)  (or U[-1, 1]^d: the L∞ ball of radius σ)
    p̂_c = (1/n)·#{i : argmax f(x_i) = c}    ("hard" votes; "soft": mean softmax over the x_i)
    W_σ(x) = −Σ_c p̂_c log p̂_c               (nats; / log K when normalised)

The work is split in three modules: `workbench.sampling` draws the noise and counts the votes
(reproducible by seed, independent of batch size, bounded memory), `workbench.stats` turns one
result's votes into entropies, standard errors, intervals and certified radii, and
`workbench.comparison` compares clean inputs with their triggered twins. This module holds the
estimator, `estimate_smoothness`, and its result, `SmoothnessResult`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..base._validate import (MAX_FORWARDS, check_choice, check_device, check_float, check_images,
                              check_int, check_seed, check_sigmas)
from ..base.models import preserve_model
from .sampling import (DEFAULT_MEMORY_BUDGET, DESIGN_UNIT, GROUPS, NOISE_BLOCK, NOISE_DESIGNS,
                       SOBOL_MAX_DIM, Engine, check_model, check_model_input, default_batch_size,
                       mix_seed, model_batch_size, model_device)
from .stats import (cell_statistics, certified_radii, critical_value, paired_jackknife_variance,
                    precision_reached)

# Version of the estimator's results: bump whenever a change can move any number it returns (noise
# streams, statistics, defaults), so that stored results (sweep rows) made by older code are never
# reused as if they were current. 3: Miller–Madow clipped to [0, log K], one-class bound for tiny
# n, adaptive sampling stops on the interval, certified radius from a separate selection sample.
# 4: noise designs (`noise_design`, recorded in every result's settings; a change of its default
# must bump this too), jackknife SEs over the non-empty groups only (soft mode with n < 10).
# 5: estimate_pair's pilot only allocates (own draws; no longer kept in the estimate), Neyman
# allocation for the mean summary only; hard-mode intervals with the second-order variance term,
# the plug-in's bias allowance on the upper end and a floor under dependent designs' jackknife;
# Miller–Madow refused under dependent designs.
ESTIMATOR_VERSION = 5
JACKKNIFE_GROUPS = GROUPS  # groups of the delete-a-group jackknife (soft mode, jackknife bias fix)
SUMMARIES = ("mean", "radius", "certified")  # per-input summaries of a curve (SmoothnessResult.summary)
# how estimate_pair spreads the samples over the (input, σ) cells of the twins
ALLOCATIONS = ("equal", "neyman", "neyman-sigma")
ALLOCATION_STEP = 8  # allocated samples per cell are multiples of this (and of the design's unit)
PILOT_STREAM = 0x50494C4F54  # mixed into the seed for estimate_pair's pilot draws ("PILOT")
# estimate_pair's noise design for the gap. Iid draws: their plug-in biases cancel between the
# twins to first order, so the gap is unbiased without a correction (exact-gap simulation in the
# tests and benchmarks/RESULTS.md, "Allocation without bias"). The antithetic design of
# ESTIMATOR_VERSION 4 moved the gap by +7 Monte-Carlo SEs; a dependent design now needs
# bias_correction="jackknife" for a gap (check_gap_design).
GAP_NOISE_DESIGN = "iid"


def check_gap_design(noise_design: str, bias_correction) -> None:
    """A gap under a dependent noise design needs the jackknife's bias correction: the design
    changes each twin's vote variances, so the plug-in biases (−½ Σ_c Var(p̂_c)/p_c) no longer
    cancel between the twins as they do for iid draws (measured on a linear model with an exact
    gap: +7 Monte-Carlo SEs with antithetic pairs; −0.8 with the jackknife)."""
    if noise_design != "iid" and bias_correction != "jackknife":
        raise ValueError(f"`bias_correction` must be 'jackknife' for a smoothing gap with "
                         f"noise_design={noise_design!r}; got {bias_correction!r}. Under a "
                         "dependent design the twins' plug-in biases differ and do not cancel "
                         "in the gap; the delete-a-group jackknife removes them (or use "
                         "noise_design='iid').")


@dataclass(frozen=True)
class SmoothnessResult:
    """W_σ for N inputs on a grid of S noise scales, with its Monte-Carlo uncertainty."""

    sigmas: np.ndarray  # (S,) noise scales σ
    entropy: np.ndarray  # (N, S) W_σ(x) in nats, or as a fraction of log K if normalised
    entropy_se: np.ndarray  # (N, S) standard error of `entropy`
    ci_low: np.ndarray  # (N, S) lower end of the `confidence` interval
    ci_high: np.ndarray  # (N, S) upper end
    frequencies: np.ndarray  # (N, S, K) hard: vote frequencies p̂_c; soft: mean softmax
    counts: np.ndarray | None  # (N, S, K) hard-mode vote counts (None in soft mode)
    n_samples: np.ndarray  # (N, S) noisy samples used per cell (varies with adaptive sampling)
    num_classes: int  # K
    settings: dict = field(default_factory=dict)  # every option and the seed it came from
    # (N, S, K) hard-mode votes of the selection sample (samples i ≡ 0 mod JACKKNIFE_GROUPS, part
    # of `counts`): the certified radius picks its class on these and bounds it on the rest
    selection_counts: np.ndarray | None = None
    # (N, S, K) under a dependent noise design: the votes the certified radius bounds its class on
    # (the first draw of every unit outside the selection group: independent); None for "iid"
    # (there: counts − selection_counts)
    certify_counts: np.ndarray | None = None

    @property
    def units(self) -> str:
        return "fraction of log K" if self.settings.get("normalize") else "nats"

    @property
    def top_class(self) -> np.ndarray:
        """(N, S) the most frequent class."""
        return self.frequencies.argmax(-1)

    def mean_entropy(self) -> np.ndarray:
        """(N,) area under the W_σ curve divided by the σ range (lower = smoother)."""
        if len(self.sigmas) == 1:
            return self.entropy[:, 0].copy()
        area = np.trapezoid(self.entropy, self.sigmas, axis=1) if hasattr(np, "trapezoid") \
            else np.trapz(self.entropy, self.sigmas, axis=1)
        return area / (self.sigmas[-1] - self.sigmas[0])

    def smoothness_radius(self, threshold: float | None = None) -> np.ndarray:
        """(N,) the smallest σ at which W_σ exceeds `threshold` (linear interpolation).

        threshold: in the result's units, in (0, log K] (or (0, 1] normalised); default 0.1·log K
        (10% of the maximal entropy). Inputs whose curve never exceeds it get the last σ (a lower
        bound: censored). In hard mode W_0 = 0, so a curve already above at the first σ is
        interpolated from (0, 0); in soft mode it gets the first σ.
        """
        top = 1.0 if self.settings.get("normalize") else math.log(self.num_classes)
        t = self._default_threshold() if threshold is None else check_float(
            "threshold", threshold, 0.0, top, low_open=True)
        s, h = self.sigmas, self.entropy
        out = np.full(len(h), s[-1], dtype=float)
        hard = self.settings.get("mode") == "hard"
        for j, row in enumerate(h):
            above = np.nonzero(row > t)[0]
            if not len(above):
                continue
            k = above[0]
            s0, h0 = (s[k - 1], row[k - 1]) if k else ((0.0, 0.0) if hard else (s[0], t))
            out[j] = s0 + (s[k] - s0) * (t - h0) / (row[k] - h0) if row[k] != h0 else s[k]
        return out

    def _default_threshold(self) -> float:
        return 0.1 if self.settings.get("normalize") else 0.1 * math.log(self.num_classes)

    def certified_radius(self, alpha: float = 0.001) -> np.ndarray:
        """(N, S) certified L2 radius of randomized smoothing at each σ (Cohen et al. 2019).

        CERTIFY per cell: the top class is chosen on the selection sample (a tenth of the votes,
        samples i ≡ 0 mod 10) and its probability bounded on the other nine tenths with a
        one-sided (1 − alpha) Clopper–Pearson bound p̲; R = σ·Φ⁻¹(p̲), or 0 (abstain) where
        p̲ <= 1/2. Guarantee: for each cell separately, with probability >= 1 − alpha over the
        noise, the smoothed classifier g at that σ predicts the chosen class everywhere within
        R of the input. Gaussian noise and hard votes only. With adaptive sampling (`target_se`)
        alpha is split over the rounds it could have stopped at (Bonferroni), since the stop
        depends on the votes.
        """
        alpha = check_float("alpha", alpha, 0.0, 1.0, low_open=True, high_open=True)
        self._check_certifiable()
        return certified_radii(self.counts, self.selection_counts, self.n_samples, self.sigmas,
                               alpha / self._sampling_rounds(), self.certify_counts)[0]

    def max_certified_radius(self, alpha: float = 0.001) -> np.ndarray:
        """(N,) the largest certified radius over the σ grid, with alpha split over the S scales
        (Bonferroni): with probability >= 1 − alpha, every per-σ radius holds at once, so the
        largest does too (each smoothed classifier g_σ is certified within its own radius)."""
        alpha = check_float("alpha", alpha, 0.0, 1.0, low_open=True, high_open=True)
        self._check_certifiable()
        return certified_radii(self.counts, self.selection_counts, self.n_samples, self.sigmas,
                               alpha / (len(self.sigmas) * self._sampling_rounds()),
                               self.certify_counts)[0].max(1)

    def _sampling_rounds(self) -> int:
        """How many sample sizes adaptive sampling could have stopped at (1 without it). The
        stopping rule looks at the votes, so a fixed-n bound on them needs alpha split over the
        possible stops (a union bound) to keep its level."""
        if self.settings.get("target_se") is None:
            return 1
        first, most = self.settings["n_samples"], self.settings["max_samples"]
        return 1 + max(0, math.ceil(math.log2(most / first)))

    def _check_certifiable(self) -> None:
        if self.counts is None or self.settings.get("noise") != "gaussian" \
                or self.selection_counts is None or (self.certify_counts is None and
                                                     self.settings.get("noise_unit", 1) > 1):
            raise ValueError("a certified radius needs mode='hard' and noise='gaussian'; this "
                             f"result has mode={self.settings.get('mode')!r}, "
                             f"noise={self.settings.get('noise')!r}.")

    def summary(self, kind: str = "mean", threshold: float | None = None) -> np.ndarray:
        """(N,) one number per input: "mean" (mean W over the grid), "radius" (smoothness radius
        at `threshold`), "certified" (`max_certified_radius()`, at 1 − 0.001 over the grid)."""
        check_choice("kind", kind, SUMMARIES)
        if kind == "mean":
            return self.mean_entropy()
        if kind == "radius":
            return self.smoothness_radius(threshold)
        return self.max_certified_radius()

    def __repr__(self) -> str:
        n, s = self.entropy.shape
        return (f"SmoothnessResult(N={n}, sigmas={np.round(self.sigmas, 4).tolist()}, "
                f"mode={self.settings.get('mode')!r}, mean W={self.entropy.mean():.4f} {self.units})")


def estimate_smoothness(model: nn.Module, inputs: torch.Tensor, sigmas: Sequence[float],
                        n_samples: int = 256, mode: str = "hard", noise: str = "gaussian",
                        clip: tuple[float, float] | bool | None = None, normalize: bool = False,
                        seed: int | torch.Generator = 0, batch_size: int | None = None,
                        device: str | torch.device | None = None, progress: bool = False, *,
                        bias_correction: str | None = None, confidence: float = 0.95,
                        target_se: float | None = None, max_samples: int | None = None,
                        common_noise: bool = False, noise_design: str = "iid",
                        common_inputs: bool = False, precision: str = "fp32",
                        channels_last: bool | None = None,
                        memory_budget: int = DEFAULT_MEMORY_BUDGET,
                        max_forwards: int = MAX_FORWARDS) -> SmoothnessResult:
    """Estimate W_σ(x) for every input and σ.

    model: any nn.Module mapping (N, C, H, W) in [0, 1] to logits; run in eval mode, and given
        back exactly as it was (mode, device, memory format, flags: `models.preserve_model`).
    inputs: (N, C, H, W) float tensor of finite values in [0, 1], N >= 1.
    sigmas: increasing noise scales (pixel units; the noise std for Gaussian, the L∞ radius for
        uniform).
    n_samples: noisy copies per input and σ (the first round, with adaptive sampling); soft mode
        and the jackknife need at least JACKKNIFE_GROUPS (10).
    mode: "hard" (entropy of vote frequencies, method.md's definition) or "soft" (entropy of the
        mean softmax: smoother, never exactly 0, not comparable to hard values).
    noise: "gaussian" (N(0, σ²I)) or "uniform" (uniform in the L∞ ball of radius σ).
    clip: None/False to leave noisy copies as they are; True or (lo, hi) finite with lo < hi to
        clamp them (True means (0, 1)).
    normalize: divide entropies by log K so curves of datasets with different K compare.
    seed: int or torch.Generator; results are identical for the same seed on the same device,
        whatever `batch_size`.
    batch_size: rows per forward pass; None (default): on a CPU, the batch whose widest
        activation holds about 8 MiB (the zoo's measured optima; the widest activation is
        measured once per architecture and image shape: `sampling.model_batch_size`), within
        `memory_budget`; on a GPU, from the budget.
    device: where to compute (the model is lent there and moved back); None = the model's device.
    progress: show a tqdm bar.
    bias_correction: None, "miller-madow" ((m−1)/(2n), hard mode) or "jackknife"; corrected
        values are clipped to [0, log K].
    confidence: level of the confidence intervals.
    target_se: adaptive sampling: keep doubling the samples of cells whose uncertainty is above
        this (in the result's units) until it is reached or `max_samples` (default 16·n_samples).
        A cell's uncertainty is read from its interval (half-width / z), so a cell whose votes all
        fell in one class (SE 0, but a wide one-class interval) is not taken as done.
    common_noise: True reuses the same noise draws at every σ (smooth, monotone-looking curves for
        plots and landscapes); False (default) draws fresh noise per σ, which gives the mean-W
        summary and the smoothing gap 3-6x less Monte-Carlo variance (benchmarks/RESULTS.md).
        Either way, two input sets estimated with the same seed see the same draws (pairs).
    noise_design: how the n draws of a cell are laid out (`workbench.sampling`): "iid"
        (independent), "antithetic" (pairs ε, −ε), "lhs" (Latin hypercubes of 8), "antithetic-lhs"
        (symmetric Latin hypercubes of 8), "sobol" (scrambled Sobol points, 8 per scrambling) or
        "radial" (the radius ‖ε‖ stratified; Gaussian only). Every draw is still N(0, σ²I) (or
        uniform) on its own; draws are dependent inside a unit and independent between units.
        Under a design other than "iid" the standard errors are jackknife SEs over groups of
        whole units (t quantiles), and the certified radius bounds its class on one draw per
        unit. Samples for equal variance of each design: benchmarks/RESULTS.md, section 3.
    common_inputs: give every input the same draws (those of input 0): for landscapes, where
        neighbouring grid points should differ by the model, not by the noise.
    precision: "fp32", or "bf16"/"fp16" autocast (GPU speed; votes may differ near boundaries).
    channels_last: run the model in channels-last memory format; None (default) does so for
        models with 2-D convolutions (2.7x faster for the digits CNN on 2 CPU cores).
    memory_budget: bytes of working memory for the noisy chunks and the forward's activations.
        The vote accumulators and the returned arrays (about 3·N·S·K·8 bytes) come on top.
    max_forwards: refuse (before any work) a call that may run more noisy forward passes than
        this (N·S·n_samples, or N·S·max_samples with adaptive sampling); see MAX_FORWARDS.
    """
    opts = _check_options(model, inputs, sigmas, n_samples, mode, noise, clip, normalize, seed,
                          batch_size, device, bias_correction, confidence, target_se, max_samples,
                          common_noise, precision, channels_last, memory_budget, max_forwards,
                          noise_design, common_inputs)
    run = _Run(model, inputs, opts, n_samples, mode, noise, normalize, bias_correction, confidence,
               target_se, common_noise, noise_design, common_inputs, precision, channels_last,
               memory_budget)
    with preserve_model(model):
        model.to(run.dev)
        engine = run.engine(model, inputs)
        n_used = _sample(engine, len(inputs), n_samples, target_se, opts["max_samples"],
                         mode, normalize, bias_correction, confidence, progress)
    return run.result(engine, n_used)


class _Run:
    """The resolved settings of one estimation: builds its engine and its result."""

    def __init__(self, model, inputs, opts, n_samples, mode, noise, normalize, bias_correction,
                 confidence, target_se, common_noise, noise_design, common_inputs, precision,
                 channels_last, memory_budget, groups: bool = False, seed=None):
        self.opts, self.mode, self.normalize = opts, mode, normalize
        self.bias_correction, self.confidence = bias_correction, confidence
        self.dev = opts["device"] or model_device(model)
        seed = opts["seed"] if seed is None else seed
        self.seed = (int(torch.randint(0, 2**62, (1,), generator=seed).item())
                     if isinstance(seed, torch.Generator) else seed)
        self.batch_size = opts["batch_size"]  # None: from the model's footprint (self.engine)
        self.image_shape, self.memory_budget = tuple(inputs.shape[1:]), memory_budget
        self.channels_last = (any(isinstance(m, nn.Conv2d) for m in model.modules())
                              if channels_last is None else channels_last)
        self.unit = DESIGN_UNIT[noise_design]
        self.groups = groups or mode == "soft" or bias_correction == "jackknife" or self.unit > 1
        self.engine_args = [mode, noise, opts["clip"], self.seed, self.batch_size, self.dev,
                            common_noise, precision, self.channels_last, memory_budget, self.groups,
                            noise_design, common_inputs]
        self.settings = {"mode": mode, "noise": noise, "clip": opts["clip"], "normalize": normalize,
                         "seed": self.seed, "n_samples": n_samples, "batch_size": self.batch_size,
                         "device": str(self.dev), "bias_correction": bias_correction,
                         "confidence": confidence, "target_se": target_se,
                         "max_samples": opts["max_samples"], "common_noise": common_noise,
                         "noise_design": noise_design, "noise_unit": self.unit,
                         "common_inputs": common_inputs, "precision": precision,
                         "channels_last": self.channels_last, "noise_block": NOISE_BLOCK,
                         "estimator_version": ESTIMATOR_VERSION, "torch": torch.__version__,
                         "numpy": np.__version__}

    def engine(self, model, inputs) -> Engine:
        """The engine, the model already on its device (inside `preserve_model`)."""
        if self.batch_size is None:
            self.batch_size = model_batch_size(model, self.image_shape, self.dev,
                                               self.memory_budget)
            self.engine_args[4] = self.settings["batch_size"] = self.batch_size
        return Engine(model, inputs, self.opts["sigmas"], *self.engine_args)

    def result(self, engine: Engine, n_used: np.ndarray, selection=None, certify=None,
               **extra) -> SmoothnessResult:
        """The result; selection/certify replace the certified radius's votes (allocation)."""
        entropy, se, lo, hi, freq = _statistics(engine, n_used, self.mode, self.normalize,
                                                self.bias_correction, self.confidence)
        hard = self.mode == "hard"
        if selection is None and hard:
            selection = engine.select_counts.cpu().numpy()
            certify = (engine.certify_counts.cpu().numpy()
                       if engine.certify_counts is not None else None)
        return SmoothnessResult(np.asarray(self.opts["sigmas"], dtype=float), entropy, se, lo, hi,
                                freq, engine.counts.cpu().numpy() if hard else None, n_used,
                                engine.num_classes, {**self.settings, **extra},
                                selection if hard else None, certify if hard else None)


def _check_options(model, inputs, sigmas, n_samples, mode, noise, clip, normalize, seed,
                   batch_size, device, bias_correction, confidence, target_se, max_samples,
                   common_noise, precision, channels_last, memory_budget, max_forwards,
                   noise_design="iid", common_inputs=False) -> dict:
    """Every argument checked before any work; returns the resolved values."""
    check_model(model)
    check_images("inputs", inputs)
    sig = check_sigmas("sigmas", sigmas)
    n_samples = check_int("n_samples", n_samples, low=1)
    check_choice("mode", mode, ("hard", "soft"))
    check_choice("noise", noise, ("gaussian", "uniform"))
    if clip is True:
        clip = (0.0, 1.0)
    elif clip is False:
        clip = None
    if clip is not None:
        allowed = "None, True, False or a (low, high) pair of finite floats with low < high"
        if not isinstance(clip, (tuple, list)) or not all(
                isinstance(c, (int, float, np.integer, np.floating)) and not isinstance(c, bool)
                for c in clip):
            raise TypeError(f"`clip` must be {allowed}; got {clip!r}.")
        if len(clip) != 2 or not all(math.isfinite(c) for c in clip) or clip[0] >= clip[1]:
            raise ValueError(f"`clip` must be {allowed}; got {clip!r}.")
        clip = (float(clip[0]), float(clip[1]))
    for name, flag in (("normalize", normalize), ("common_noise", common_noise),
                       ("common_inputs", common_inputs)):
        if not isinstance(flag, bool):
            raise TypeError(f"`{name}` must be a bool; got {flag!r}.")
    check_choice("noise_design", noise_design, NOISE_DESIGNS)
    if noise_design == "radial" and noise != "gaussian":
        raise ValueError("`noise_design` 'radial' stratifies a Gaussian radius: it needs "
                         f"noise='gaussian'; got noise={noise!r}.")
    if noise_design == "sobol" and int(np.prod(inputs.shape[1:])) > SOBOL_MAX_DIM:
        raise ValueError(f"`noise_design` 'sobol' works up to {SOBOL_MAX_DIM} values per image "
                         f"(scipy's Sobol direction numbers); got images of shape "
                         f"{tuple(inputs.shape[1:])}. Use 'lhs' or 'antithetic'.")
    if noise_design != "iid" and bias_correction == "miller-madow":
        raise ValueError(f"`bias_correction` 'miller-madow' assumes independent votes, so it "
                         f"over-corrects under noise_design={noise_design!r} (measured: +0.007 to "
                         "+0.01 nats, 3-4 Monte-Carlo SEs); use 'jackknife' (over groups of whole "
                         "units: valid under every design) or noise_design='iid'.")
    if noise_design != "iid" and n_samples < 2 * DESIGN_UNIT[noise_design]:
        raise ValueError(f"`n_samples` must be >= {2 * DESIGN_UNIT[noise_design]} (two units of "
                         f"{DESIGN_UNIT[noise_design]}, for a standard error) with "
                         f"noise_design={noise_design!r}; got {n_samples}.")
    if channels_last is not None and not isinstance(channels_last, bool):
        raise TypeError(f"`channels_last` must be None or a bool; got {channels_last!r}.")
    seed = check_seed("seed", seed)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, low=1)
    dev = check_device("device", device) if device is not None else None
    check_choice("bias_correction", bias_correction, (None, "miller-madow", "jackknife"))
    if bias_correction == "miller-madow" and mode != "hard":
        raise ValueError("`bias_correction` 'miller-madow' applies to mode='hard' only; "
                         "use 'jackknife' in soft mode.")
    if (mode == "soft" or bias_correction == "jackknife") and n_samples < JACKKNIFE_GROUPS:
        raise ValueError(f"`n_samples` must be >= {JACKKNIFE_GROUPS} (one per jackknife group) "
                         f"with mode={mode!r} and bias_correction={bias_correction!r}; got "
                         f"{n_samples}.")
    confidence = check_float("confidence", confidence, 0.0, 1.0, low_open=True, high_open=True)
    if target_se is not None:
        target_se = check_float("target_se", target_se, 0.0, None, low_open=True)
    max_samples = 16 * n_samples if max_samples is None else check_int(
        "max_samples", max_samples, low=n_samples)
    check_choice("precision", precision, ("fp32", "bf16", "fp16"))
    check_int("memory_budget", memory_budget, low=1)
    max_forwards = check_int("max_forwards", max_forwards, low=1)
    per_cell = max_samples if target_se is not None else n_samples
    total = len(inputs) * len(sig) * per_cell
    if total > max_forwards:
        raise ValueError(f"`n_samples` asks for up to {total:.3g} noisy forward passes "
                         f"({len(inputs)} inputs × {len(sig)} σ × {per_cell} samples), more than "
                         f"`max_forwards` = {max_forwards:.3g}: the work must stay within it "
                         "(about 6 h on 2 CPU cores per 10^9 forwards for the small CNN). Use "
                         "fewer, or raise `max_forwards`.")
    check_model_input(model, inputs, "inputs")
    return {"sigmas": sig, "clip": clip, "seed": seed, "batch_size": batch_size, "device": dev,
            "confidence": confidence, "max_samples": max_samples}


def _sample(engine: Engine, n_inputs: int, n_samples: int, target_se, max_samples, mode,
            normalize, bias_correction, confidence, progress) -> np.ndarray:
    """Run the first round on every cell, then (adaptive sampling) double the samples of cells
    whose uncertainty is still above `target_se`. Returns (N, S) samples used per cell."""
    n_used = np.full((n_inputs, len(engine.sig)), n_samples, dtype=np.int64)
    with tqdm(total=n_used.size * n_samples, desc="W_σ", unit="fwd", disable=not progress,
              leave=False) as bar:
        engine.run(np.ones_like(n_used, dtype=bool), 0, n_samples, bar)
        while target_se is not None:
            _, se, lo, hi, _ = _statistics(engine, n_used, mode, normalize, bias_correction,
                                           confidence)
            z = _z(mode, confidence, n_used, engine.unit)
            active = ~precision_reached(se, lo, hi, target_se, z) & (n_used < max_samples)
            if not active.any():
                break
            # double the samples of unfinished cells (geometric rounds: few passes, small waste)
            stop = int(min(max_samples, 2 * n_used[active].max()))
            start = int(n_used[active].min())
            bar.total += int(active.sum()) * (stop - start)
            engine.run(active, start, stop, bar)
            n_used[active] = stop
    return n_used


def _z(mode: str, confidence: float, n_used: np.ndarray, unit: int = 1):
    """The cells' interval multipliers (normal, or t on the non-empty groups' count − 1)."""
    units = -(-n_used // unit)  # whole and partial units per cell
    return critical_value(mode, confidence, np.minimum(units, JACKKNIFE_GROUPS), unit)


STATS_BLOCK = 1024  # inputs per block of the statistics: bounds numpy's temporaries


def _statistics(engine: Engine, n_used: np.ndarray, mode, normalize, bias_correction, confidence):
    """Entropy, SE, CI and frequencies, computed in blocks of inputs (bounded temporaries)."""
    n_in, s_n = n_used.shape
    k = engine.num_classes
    h = np.empty((n_in, s_n))
    se, lo, hi = np.empty_like(h), np.empty_like(h), np.empty_like(h)
    freq = np.empty((n_in, s_n, k))
    for a in range(0, n_in, STATS_BLOCK):
        b = min(n_in, a + STATS_BLOCK)
        g = engine.group_sums[a:b].cpu().numpy() if engine.group_sums is not None else None
        h[a:b], se[a:b], lo[a:b], hi[a:b], freq[a:b] = cell_statistics(
            engine.counts[a:b].cpu().double().numpy(), g, n_used[a:b], k, mode, normalize,
            bias_correction, confidence, JACKKNIFE_GROUPS, engine.unit)
    return h, se, lo, hi, freq


def estimate_pair(model: nn.Module, clean: torch.Tensor, triggered: torch.Tensor,
                  sigmas: Sequence[float], n_samples: int = 256, *, allocation: str = "equal",
                  pilot: int | None = None, summary: str = "mean", seed: int = 0,
                  paired_noise: bool = True, progress: bool = False,
                  **kwargs) -> tuple[SmoothnessResult, SmoothnessResult]:
    """W_σ of clean inputs and of their triggered twins, with the samples spread over the
    (input, σ) cells for the smoothing gap: the twins' results, for `comparison.paired_gap`.

    The mean-W gap is a weighted sum over cells of the pairs' differences D_js = W_clean − W_trig
    (trapezoid weights w_s of the σ grid); its Monte-Carlo variance Σ w_s² Var(D_js) / n_js is
    smallest for a fixed total with n_js ∝ w_s·SD(D_js) (Neyman allocation; Neyman 1934,
    Cochran 1977 §5.5). Two phases: a pilot of `pilot` samples per cell on both twins (shared
    draws) estimates SD(D_js) by the jackknife over groups of whole units, and *only* allocates;
    the estimate then uses n_js fresh draws per cell (the main stream, the draws
    `estimate_smoothness` with the same seed uses), never the pilot's votes. Given the pilot,
    each cell is a fixed-n estimate on draws independent of the allocation, so the allocation
    cannot bias the gap (keeping the pilot's votes, as the estimator did up to
    ESTIMATOR_VERSION 4, is a data-dependent stopping rule: measured on a linear model with an
    exact gap, −11 Monte-Carlo SEs and 91% coverage of the 95% interval; benchmarks/RESULTS.md,
    "Allocation without bias"). The pilot counts in the budget: the N·S·n_samples forwards per
    twin are the pilot's N·S·pilot plus N·S·(n_samples − pilot) allocated, each cell between
    the design's minimum and 16·n_samples.
    allocation: "equal" (default: n_samples everywhere, exactly the two `estimate_smoothness`
        calls that `compare_smoothness` makes, no pilot), "neyman" (per cell, each cell's
        variance shrunk half-way to its σ's mean over the inputs, which steadies the pilot's
        noisy estimates) or "neyman-sigma" (per σ: all inputs get the same samples at a σ).
        Measured on digits (60 pairs, 12 σ, n = 64, pilot 16; benchmarks/RESULTS.md), an honest
        pilot costs more than the allocation saves: Neyman per cell needs 1.05 [0.995, 1.11] of
        equal allocation's samples for the same gap variance, per σ 1.10, hence the default.
        Neyman allocation needs
        summary="mean": the radius summaries are not weighted sums of cells, and a certified
        radius is a lower confidence bound whose value grows with the cell's n, so spreading n
        unevenly changes what is measured (measured: +25% on the certified gap); they are
        refused with an allocation other than "equal".
    pilot: samples per cell of the pilot (default n_samples // 4, at least two units of the
        noise design and 10; at most n_samples minus the minimum a cell is given).
    summary: "mean", "radius" or "certified" (the summary the gap is for).
    noise_design (a keyword for `estimate_smoothness`): default GAP_NOISE_DESIGN ("iid"). Under
        a dependent design (antithetic, Latin hypercubes, ...) the twins' plug-in biases differ
        (the design changes each vote frequency's variance, and the bias is −½ Σ_c Var(p̂_c)/p_c),
        so they no longer cancel in the gap as they do for iid draws: such a design is refused
        without bias_correction="jackknife" (`check_gap_design`; measured in RESULTS).
    Results are reproducible by seed: the allocation is a function of the pilot, whose draws
    come from their own stream (seed mixed with PILOT_STREAM).
    Other keyword arguments go to `estimate_smoothness` (adaptive sampling excluded: the
    allocation replaces it); `paired_noise=False` gives the twins independent draws.
    """
    import inspect

    check_images("clean", clean)
    check_images("triggered", triggered)
    if clean.shape != triggered.shape:
        raise ValueError(f"`triggered` must have the shape of `clean` {tuple(clean.shape)}; got "
                         f"{tuple(triggered.shape)}.")
    check_choice("summary", summary, SUMMARIES)
    check_choice("allocation", allocation, ALLOCATIONS)
    if allocation != "equal" and summary != "mean":
        raise ValueError(f"`allocation` must be 'equal' with summary={summary!r}; got "
                         f"{allocation!r}. Neyman allocation is derived for the mean-W gap (a "
                         "weighted sum of cells); a radius is not one, and a certified radius is "
                         "a lower bound that grows with a cell's n, so uneven n changes the "
                         "number itself.")
    seed = check_seed("seed", seed, generator=False)
    if not isinstance(paired_noise, bool):
        raise TypeError(f"`paired_noise` must be a bool; got {paired_noise!r}.")
    seed_t = seed if paired_noise else mix_seed(seed, 0x7269)  # as compare_smoothness
    if allocation != "equal" and (kwargs.get("target_se") is not None
                                  or kwargs.get("max_samples") is not None):
        raise ValueError(f"`allocation` {allocation!r} replaces adaptive sampling: pass no "
                         "`target_se` or `max_samples` with it.")
    params = inspect.signature(estimate_smoothness).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise TypeError(f"`{unknown[0]}` is not an option of estimate_smoothness.")
    a = {k: v.default for k, v in params.items() if v.default is not inspect.Parameter.empty}
    a["noise_design"] = "iid" if summary == "certified" else GAP_NOISE_DESIGN
    a.update(kwargs, n_samples=n_samples, seed=seed, progress=progress)
    names = ("sigmas", "n_samples", "mode", "noise", "clip", "normalize", "seed", "batch_size",
             "device", "bias_correction", "confidence", "target_se", "max_samples",
             "common_noise", "precision", "channels_last", "memory_budget", "max_forwards",
             "noise_design", "common_inputs")
    a["sigmas"] = sigmas
    opts = [_check_options(model, x, *(a[k] for k in names)) for x in (clean, triggered)]
    if summary != "certified":
        check_gap_design(a["noise_design"], a["bias_correction"])
    if allocation == "equal":
        if pilot is not None:
            raise ValueError(f"`pilot` applies to Neyman allocation only; got pilot={pilot!r} "
                             "with allocation='equal'.")
        extra = {"allocation": "equal", "pilot": 0, "allocation_summary": summary}
        return tuple(_with_settings(estimate_smoothness(model, x, **{**a, "seed": sd}), extra)
                     for x, sd in ((clean, seed), (triggered, seed_t)))
    unit = DESIGN_UNIT[a["noise_design"]]
    low = max(2 * unit, JACKKNIFE_GROUPS)  # the jackknife's groups, whole units
    step = max(unit, ALLOCATION_STEP)
    least = -(-low // step) * step  # the fewest samples a cell of the main phase gets
    most_pilot = n_samples - least
    if most_pilot < low:
        raise ValueError(f"`n_samples` must be >= {low + least} with allocation={allocation!r} "
                         f"and noise_design={a['noise_design']!r} (a pilot of {low} and at "
                         f"least {least} fresh samples per cell); got {n_samples}.")
    pilot = (min(most_pilot, max(low, -(-(n_samples // 4) // unit) * unit)) if pilot is None
             else check_int("pilot", pilot, low=low, high=most_pilot))
    # the pilot's own draws: a different stream, so the estimate's draws are those of
    # estimate_smoothness with the same seed, and independent of the allocation
    pilots = [_Run(model, x, o, pilot, a["mode"], a["noise"], a["normalize"], None,
                   a["confidence"], None, a["common_noise"], a["noise_design"],
                   a["common_inputs"], a["precision"], a["channels_last"], a["memory_budget"],
                   groups=True, seed=mix_seed(sd, PILOT_STREAM))
              for x, o, sd in ((clean, opts[0], seed), (triggered, opts[1], seed_t))]
    runs = [_Run(model, x, o, n_samples, a["mode"], a["noise"], a["normalize"],
                 a["bias_correction"], a["confidence"], None, a["common_noise"],
                 a["noise_design"], a["common_inputs"], a["precision"], a["channels_last"],
                 a["memory_budget"], seed=sd)
            for x, o, sd in ((clean, opts[0], seed), (triggered, opts[1], seed_t))]
    sig = np.asarray(opts[0]["sigmas"], float)
    n_in, s_n = len(clean), len(sig)
    every = np.ones((n_in, s_n), dtype=bool)
    with preserve_model(model), tqdm(total=2 * n_in * s_n * n_samples, desc="W_σ pair",
                                     unit="fwd", disable=not progress, leave=False) as bar:
        model.to(runs[0].dev)
        pe = [r.engine(model, x) for r, x in ((pilots[0], clean), (pilots[1], triggered))]
        for e in pe:
            e.run(every, 0, pilot, bar)
        n_pilot = np.full((n_in, s_n), pilot, dtype=np.int64)
        var = paired_jackknife_variance(
            *(t.cpu().double().numpy() for t in (pe[0].counts, pe[0].group_sums,
                                                 pe[1].counts, pe[1].group_sums)),
            n_pilot, JACKKNIFE_GROUPS, unit) * pilot  # per-sample variance of D_js
        del pe
        weights = _summary_weights(sig)
        n_used = neyman_allocation(var, weights, n_samples - pilot, least, unit, allocation,
                                   16 * n_samples)
        engines = [r.engine(model, x) for r, x in ((runs[0], clean), (runs[1], triggered))]
        for e in engines:
            e.run(every, 0, n_used, bar)
    extra = {"allocation": allocation, "pilot": pilot, "allocation_summary": summary,
             "pilot_stream": PILOT_STREAM}
    out = [r.result(e, n_used, **extra) for r, e in zip(runs, engines)]
    return out[0], out[1]


def _with_settings(result: SmoothnessResult, extra: dict) -> SmoothnessResult:
    """The result with `extra` added to its settings (a new object: results are frozen)."""
    return dataclasses.replace(result, settings={**result.settings, **extra})


def _summary_weights(sigmas: np.ndarray) -> np.ndarray:
    """(S,) weights of the mean-W summary: trapezoid rule over the grid / its range."""
    if len(sigmas) == 1:
        return np.ones(1)
    w = np.zeros(len(sigmas))
    d = np.diff(sigmas)
    w[:-1] += d / 2
    w[1:] += d / 2
    return w / (sigmas[-1] - sigmas[0])


def neyman_allocation(variance: np.ndarray, weights: np.ndarray, n_samples: int, pilot: int,
                      unit: int = 1, allocation: str = "neyman",
                      cap: int | None = None) -> np.ndarray:
    """(N, S) samples per cell ∝ weight × SD (Neyman allocation) for a budget of n_samples per
    cell on average, each cell between `pilot` and `cap`, in multiples of `unit`.

    variance: (N, S) per-sample variances (from a pilot); "neyman" shrinks each cell's half-way
    to its σ's mean over inputs, "neyman-sigma" uses that mean alone."""
    check_choice("allocation", allocation, ALLOCATIONS)
    v = np.asarray(variance, float)
    n_in, s_n = v.shape
    if allocation == "equal":
        return np.full(v.shape, n_samples, dtype=np.int64)
    v_sigma = np.broadcast_to(v.mean(0, keepdims=True), v.shape)
    v = v_sigma if allocation == "neyman-sigma" else 0.5 * (v + v_sigma)
    score = np.asarray(weights, float)[None, :] * np.sqrt(np.maximum(v, 0))
    cap = cap or 16 * n_samples
    total = n_in * s_n * n_samples
    if not score.any():
        return np.full(v.shape, n_samples, dtype=np.int64)
    lo, hi = 0.0, cap / score[score > 0].min()  # c·score for the water level c
    for _ in range(100):
        c = 0.5 * (lo + hi)
        lo, hi = (c, hi) if np.clip(c * score, pilot, cap).sum() < total else (lo, c)
    n = np.clip(hi * score, pilot, cap)
    step = max(unit, ALLOCATION_STEP)  # few distinct sample ranges per noise block: fast chunks
    return np.maximum(pilot, np.round(n / step) * step).astype(np.int64)


__all__ = ["SmoothnessResult", "estimate_smoothness", "estimate_pair", "neyman_allocation",
           "ALLOCATIONS", "GAP_NOISE_DESIGN", "check_gap_design", "default_batch_size", "ESTIMATOR_VERSION",
           "MAX_FORWARDS", "JACKKNIFE_GROUPS", "check_model_input", "mix_seed"]
