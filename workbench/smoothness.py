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

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ._validate import (check_choice, check_device, check_float, check_images, check_int,
                        check_seed, check_sigmas)
from .models import preserve_model
from .sampling import (DEFAULT_MEMORY_BUDGET, GROUPS, NOISE_BLOCK, Engine, check_model,
                       check_model_input, default_batch_size, mix_seed, model_device)
from .stats import cell_statistics, certified_radii, precision_reached

# Version of the estimator's results: bump whenever a change can move any number it returns (noise
# streams, statistics, defaults), so that stored results (sweep rows) made by older code are never
# reused as if they were current. 3: Miller–Madow clipped to [0, log K], one-class bound for tiny
# n, adaptive sampling stops on the interval, certified radius from a separate selection sample.
ESTIMATOR_VERSION = 3
JACKKNIFE_GROUPS = GROUPS  # groups of the delete-a-group jackknife (soft mode, jackknife bias fix)
# Refused above this many noisy forward passes in one call (N inputs × S scales × samples per
# cell, at most): 10^9 forwards take about 6 hours on 2 CPU cores and 20 minutes on a fast GPU
# for the small CNN. Split larger jobs, or pass max_forwards= explicitly.
MAX_FORWARDS = 10**9
SUMMARIES = ("mean", "radius", "certified")  # per-input summaries of a curve (SmoothnessResult.summary)


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
                               alpha / self._sampling_rounds())[0]

    def max_certified_radius(self, alpha: float = 0.001) -> np.ndarray:
        """(N,) the largest certified radius over the σ grid, with alpha split over the S scales
        (Bonferroni): with probability >= 1 − alpha, every per-σ radius holds at once, so the
        largest does too (each smoothed classifier g_σ is certified within its own radius)."""
        alpha = check_float("alpha", alpha, 0.0, 1.0, low_open=True, high_open=True)
        self._check_certifiable()
        return certified_radii(self.counts, self.selection_counts, self.n_samples, self.sigmas,
                               alpha / (len(self.sigmas) * self._sampling_rounds()))[0].max(1)

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
                or self.selection_counts is None:
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
                        common_noise: bool = False, precision: str = "fp32",
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
    batch_size: rows per forward pass; None picks one from `memory_budget`.
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
                          common_noise, precision, channels_last, memory_budget, max_forwards)
    dev = opts["device"] or model_device(model)
    seed = opts["seed"]
    base_seed = (int(torch.randint(0, 2**62, (1,), generator=seed).item())
                 if isinstance(seed, torch.Generator) else seed)
    batch_size = opts["batch_size"] or default_batch_size(inputs.shape[1:], memory_budget, dev)
    channels_last = (any(isinstance(m, nn.Conv2d) for m in model.modules())
                     if channels_last is None else channels_last)
    groups = mode == "soft" or bias_correction == "jackknife"
    with preserve_model(model):
        model.to(dev)
        engine = Engine(model, inputs, opts["sigmas"], mode, noise, opts["clip"], base_seed,
                        batch_size, dev, common_noise, precision, channels_last, memory_budget,
                        groups)
        n_used = _sample(engine, len(inputs), n_samples, target_se, opts["max_samples"],
                         mode, normalize, bias_correction, confidence, progress)
    entropy, se, lo, hi, freq = _statistics(engine, n_used, mode, normalize, bias_correction,
                                            confidence)
    settings = {"mode": mode, "noise": noise, "clip": opts["clip"], "normalize": normalize,
                "seed": base_seed, "n_samples": n_samples, "batch_size": batch_size,
                "device": str(dev), "bias_correction": bias_correction, "confidence": confidence,
                "target_se": target_se, "max_samples": opts["max_samples"],
                "common_noise": common_noise, "precision": precision,
                "channels_last": channels_last, "noise_block": NOISE_BLOCK,
                "estimator_version": ESTIMATOR_VERSION, "torch": torch.__version__,
                "numpy": np.__version__}
    hard = mode == "hard"
    return SmoothnessResult(np.asarray(opts["sigmas"], dtype=float), entropy, se, lo, hi, freq,
                            engine.counts.cpu().numpy() if hard else None, n_used,
                            engine.num_classes, settings,
                            engine.select_counts.cpu().numpy() if hard else None)


def _check_options(model, inputs, sigmas, n_samples, mode, noise, clip, normalize, seed,
                   batch_size, device, bias_correction, confidence, target_se, max_samples,
                   common_noise, precision, channels_last, memory_budget, max_forwards) -> dict:
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
    for name, flag in (("normalize", normalize), ("common_noise", common_noise)):
        if not isinstance(flag, bool):
            raise TypeError(f"`{name}` must be a bool; got {flag!r}.")
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
            z = _z(mode, confidence)
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


def _z(mode: str, confidence: float) -> float:
    from scipy import stats

    return float(stats.norm.ppf(0.5 + confidence / 2) if mode == "hard"
                 else stats.t.ppf(0.5 + confidence / 2, JACKKNIFE_GROUPS - 1))


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
            bias_correction, confidence, JACKKNIFE_GROUPS)
    return h, se, lo, hi, freq


def __getattr__(name):
    # the paired comparison lives in workbench.comparison; these names stay importable from here
    if name in ("ComparisonResult", "compare_smoothness", "paired_gap"):
        from . import comparison

        return getattr(comparison, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SmoothnessResult", "estimate_smoothness", "default_batch_size", "ESTIMATOR_VERSION",
           "MAX_FORWARDS", "JACKKNIFE_GROUPS", "check_model_input", "mix_seed",
           "ComparisonResult", "compare_smoothness", "paired_gap"]
