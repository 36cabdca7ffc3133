"""One call from a trained run to its backdoor-smoothing analysis (used by the demo, the
notebooks and the widgets)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._validate import check_int, check_sigmas
from .data import Dataset
from .poison import TriggeredPairs, triggered_pairs
from .smoothness import ComparisonResult, compare_smoothness
from .train import BackdoorRun, predict

# Default σ grids, chosen from measured curves (benchmarks/RESULTS.md, "σ grids"): they end where
# clean inputs' W_σ nears its plateau, before the noise drowns the trigger, so the mean-W summary
# does not flip sign through the grid's far end (method.md). Easy to change: pass `sigmas=`.
DEFAULT_SIGMAS = {
    "digits": tuple(np.round(np.linspace(0.05, 0.6, 12), 3)),
    "fashion-mnist": tuple(np.round(np.linspace(0.02, 0.4, 12), 3)),
    "mnist": tuple(np.round(np.linspace(0.02, 0.4, 12), 3)),
    "cifar10": tuple(np.round(np.linspace(0.02, 0.3, 12), 3)),
    "gtsrb": tuple(np.round(np.linspace(0.02, 0.3, 12), 3)),
}


def default_sigmas(dataset: str) -> list[float]:
    """The default σ grid for a dataset (12 scales)."""
    return [float(s) for s in DEFAULT_SIGMAS.get(dataset.split("[")[0], DEFAULT_SIGMAS["digits"])]


@dataclass(frozen=True)
class SmoothingAnalysis:
    """Clean/triggered test pairs of a run and their paired smoothness comparison."""

    pairs: TriggeredPairs  # the inputs compared
    comparison: ComparisonResult  # curves, per-pair summaries, gap, test
    triggered_predictions: np.ndarray  # (N,) the model's labels for the triggered inputs


def smoothing_analysis(run: BackdoorRun, data: Dataset, sigmas=None, n_pairs: int = 100,
                       n_samples: int = 128, seed: int = 0, summary: str = "mean",
                       **kwargs) -> SmoothingAnalysis:
    """Pick `n_pairs` random non-target test inputs, trigger them, and compare their W_σ curves."""
    sig = check_sigmas("sigmas", default_sigmas(data.name) if sigmas is None else sigmas)
    check_int("n_pairs", n_pairs, low=2)
    pairs = triggered_pairs(data.x_test, data.y_test, run.trigger, run.target, n=n_pairs, seed=seed)
    cmp = compare_smoothness(run.model, pairs.clean, pairs.triggered, sig, n_samples,
                             summary=summary, seed=seed, **kwargs)
    return SmoothingAnalysis(pairs, cmp, predict(run.model, pairs.triggered).numpy())
