"""The paired comparison of clean inputs and their triggered twins: the smoothing gap.

The smoothing gap of a model (method.md; Grosse et al., Computers & Security 2022) is the mean over
paired test inputs of (summary of the clean curve − summary of the triggered curve), oriented so
that positive means the triggered input is smoother: for the mean-W summary (lower = smoother)
clean − triggered; for radii (larger = smoother) triggered − clean. Its interval is Student's
t-interval over pairs (`stats.t_interval`); its test Wilcoxon's signed-rank test (Wilcoxon 1945).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn

from . import smoothness as _sm
from ..base._validate import check_choice, check_float, check_images, check_seed
from .sampling import check_model_input, mix_seed
from .stats import t_interval


@dataclass(frozen=True)
class ComparisonResult:
    """Paired comparison of clean inputs and their triggered twins."""

    clean: "_sm.SmoothnessResult"  # W_σ of the clean inputs
    triggered: "_sm.SmoothnessResult"  # W_σ of the triggered inputs (same noise draws)
    summary: str  # "mean", "radius" or "certified"
    clean_summary: np.ndarray  # (N,) per-input summary of the clean curves
    triggered_summary: np.ndarray  # (N,) per-input summary of the triggered curves
    differences: np.ndarray  # (N,) per-pair gap: positive = triggered is smoother
    gap: float  # smoothing gap: mean of `differences`
    gap_se: float  # standard error of the gap over pairs
    gap_ci: tuple[float, float]  # t-interval at `confidence`
    wilcoxon_statistic: float  # Wilcoxon signed-rank statistic of `differences`
    p_value: float  # two-sided p-value of the signed-rank test (1.0 when all differences are 0)
    confidence: float

    @property
    def n_pairs(self) -> int:
        return len(self.differences)

    def __repr__(self) -> str:
        return (f"ComparisonResult(pairs={self.n_pairs}, summary={self.summary!r}, gap={self.gap:.4f} "
                f"[{self.gap_ci[0]:.4f}, {self.gap_ci[1]:.4f}], Wilcoxon p={self.p_value:.3g})")


def paired_gap(clean_summary, triggered_summary, summary: str, confidence: float = 0.95) -> dict:
    """Gap statistics from per-pair summaries (positive = triggered smoother).

    summary: "mean" (lower = smoother) or "radius"/"certified" (larger = smoother): it decides
    the sign, so it is checked. At least 2 pairs, finite values.
    """
    check_choice("summary", summary, _sm.SUMMARIES)
    confidence = check_float("confidence", confidence, 0.0, 1.0, low_open=True, high_open=True)
    c = _as_summaries("clean_summary", clean_summary)
    t = _as_summaries("triggered_summary", triggered_summary)
    if c.shape != t.shape:
        raise ValueError(f"`triggered_summary` must have the shape of `clean_summary` {c.shape}; "
                         f"got {t.shape}.")
    if len(c) < 2:
        raise ValueError(f"`clean_summary` must hold at least 2 pairs for an interval and a test; "
                         f"got {len(c)}.")
    d = c - t if summary == "mean" else t - c
    gap, se, lo, hi = t_interval(d, confidence)
    if np.any(d != 0):
        w = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        w_stat, p = float(w.statistic), float(w.pvalue)
    else:  # every pair equal: no evidence of a difference
        w_stat, p = 0.0, 1.0
    return {"differences": d, "gap": gap, "gap_se": se, "gap_ci": (lo, hi),
            "wilcoxon_statistic": w_stat, "p_value": p}


def _as_summaries(name: str, values) -> np.ndarray:
    try:
        a = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a 1-D array of numbers; got {type(values).__name__}.") from None
    if a.ndim == 0:  # a number (or None) where one per pair is needed
        raise TypeError(f"`{name}` must be a 1-D array of numbers; got {values!r}.")
    if a.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D array (one number per pair); got shape {a.shape}.")
    if not np.isfinite(a).all():
        raise ValueError(f"`{name}` must hold finite numbers; got {int((~np.isfinite(a)).sum())} "
                         "NaN or infinite.")
    return a


def compare_smoothness(model: nn.Module, clean: torch.Tensor, triggered: torch.Tensor,
                       sigmas: Sequence[float], n_samples: int = 256, *, summary: str = "mean",
                       threshold: float | None = None, confidence: float = 0.95,
                       seed: int = 0, paired_noise: bool = True, **kwargs) -> ComparisonResult:
    """Paired comparison of W_σ curves of clean inputs and their triggered twins.

    Both sets are estimated with the same seed, so pair j sees the same noise draws (common random
    numbers; `paired_noise=False` gives the twins independent draws). Passing common_noise=True
    also shares draws across σ: smoother curves, but 3-6x more Monte-Carlo variance in the
    mean-W gap (benchmarks/RESULTS.md, section 3).
    summary: "mean" (mean W over the σ grid), "radius" (smoothness radius at `threshold`) or
    "certified" (largest certified L2 radius over the grid, alpha split over σ: see
    `SmoothnessResult.max_certified_radius`; needs mode="hard" and noise="gaussian"). The gap's
    interval is a t-interval over pairs; the test is Wilcoxon's signed-rank test. Other keyword
    arguments go to `estimate_smoothness`. Everything is checked before either estimation runs.
    """
    check_images("clean", clean)
    check_images("triggered", triggered)
    if clean.shape != triggered.shape:
        raise ValueError(f"`triggered` must have the shape of `clean` {tuple(clean.shape)}; got "
                         f"{tuple(triggered.shape)}.")
    if len(clean) < 2:
        raise ValueError(f"`clean` must hold at least 2 pairs for an interval and a test; got "
                         f"{len(clean)}.")
    check_choice("summary", summary, _sm.SUMMARIES)
    if summary == "certified" and (kwargs.get("mode", "hard") != "hard"
                                   or kwargs.get("noise", "gaussian") != "gaussian"):
        raise ValueError("`summary` 'certified' needs mode='hard' and noise='gaussian'; got "
                         f"mode={kwargs.get('mode', 'hard')!r}, "
                         f"noise={kwargs.get('noise', 'gaussian')!r}.")
    if threshold is not None:
        if summary != "radius":
            raise ValueError(f"`threshold` applies to summary='radius' only; got summary={summary!r}.")
        k = check_model_input(model, clean, "clean")
        check_float("threshold", threshold, 0.0, 1.0 if kwargs.get("normalize") else math.log(k),
                    low_open=True)
    if summary != "certified":
        _sm.check_gap_design(kwargs.get("noise_design", "iid"), kwargs.get("bias_correction"))
    seed = check_seed("seed", seed, generator=False)
    if not isinstance(paired_noise, bool):
        raise TypeError(f"`paired_noise` must be a bool; got {paired_noise!r}.")
    r_c = _sm.estimate_smoothness(model, clean, sigmas, n_samples, seed=seed,
                                  confidence=confidence, **kwargs)
    seed_t = seed if paired_noise else mix_seed(seed, 0x7269)
    r_t = _sm.estimate_smoothness(model, triggered, sigmas, n_samples, seed=seed_t,
                                  confidence=confidence, **kwargs)
    s_c, s_t = r_c.summary(summary, threshold), r_t.summary(summary, threshold)
    return ComparisonResult(r_c, r_t, summary, s_c, s_t, confidence=confidence,
                            **paired_gap(s_c, s_t, summary, confidence))


__all__ = ["ComparisonResult", "paired_gap", "compare_smoothness"]
