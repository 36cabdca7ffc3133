"""One call from a trained run to its backdoor-smoothing analysis (used by the demo, the
notebooks and the widgets)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..base._validate import check_forwards, check_int, check_sigmas
from ..base.data import Dataset
from ..attacks.poison import TriggeredPairs, triggered_pairs
from ..estimator.comparison import ComparisonResult, compare_smoothness
from ..attacks.triggers import Patch
from ..training.opened import NO_TRIGGER, OpenedRun
from ..training.train import BackdoorRun, predict, prepare_run, train_backdoor

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


def _check_dataset(data) -> None:
    if not isinstance(data, Dataset):
        raise TypeError(f"`data` must be a workbench Dataset (see load_dataset); got "
                        f"{type(data).__name__}.")


def default_sigmas(dataset: str) -> list[float]:
    """The default σ grid for a dataset (12 scales). `dataset`: a name of DATASETS, or a run's
    config name for a truncated dataset ("digits[300,None]")."""
    allowed = (f"one of {', '.join(repr(d) for d in DEFAULT_SIGMAS)} (for another dataset, pass "
               "your own grid as `sigmas=`)")
    if not isinstance(dataset, str):
        raise TypeError(f"`dataset` must be a dataset name, {allowed}; got {dataset!r}.")
    if dataset.split("[")[0] not in DEFAULT_SIGMAS:
        raise ValueError(f"`dataset` must be {allowed}; got {dataset!r}.")
    return [float(s) for s in DEFAULT_SIGMAS[dataset.split("[")[0]]]


@dataclass(frozen=True)
class SmoothingAnalysis:
    """Clean/triggered test pairs of a run and their paired smoothness comparison."""

    pairs: TriggeredPairs  # the inputs compared
    comparison: ComparisonResult  # curves, per-pair summaries, gap, test
    triggered_predictions: np.ndarray  # (N,) the model's labels for the triggered inputs


def check_run(run) -> None:
    """`run` is a run trained here (BackdoorRun, InputAwareRun) or a model opened from elsewhere
    with its trigger (`open_model`); an opened run without a trigger is refused saying why (its
    triggered views have nothing to pair)."""
    if not isinstance(run, (BackdoorRun, OpenedRun)):
        raise TypeError(f"`run` must be a BackdoorRun (from train_backdoor or load_run) or an "
                        f"OpenedRun (from open_model); got {type(run).__name__}.")
    if isinstance(run, OpenedRun) and not run.has_trigger:
        raise ValueError(NO_TRIGGER)


def smoothing_analysis(run: BackdoorRun | OpenedRun, data: Dataset, sigmas=None,
                       n_pairs: int = 100, n_samples: int = 128, seed: int = 0,
                       summary: str = "mean", **kwargs) -> SmoothingAnalysis:
    """Pick `n_pairs` random test inputs the attack applies to (non-target ones; every class for
    an all-to-all run), trigger them, and compare their W_σ curves. `run`: trained here, or opened
    with its trigger (`open_model`; `data` is then its test data, `run.data`, and `sigmas` must be
    given for data without a default grid)."""
    check_run(run)
    _check_dataset(data)
    fp = run.config.get("data_fingerprint")
    if fp and fp != data.fingerprint:  # 1 ms on digits, 0.1 s on Fashion-MNIST
        raise ValueError(f"`data` must be the dataset the run was trained on: its content differs "
                         f"from the run's ({run.config.get('dataset')!r}, fingerprint {fp[:12]}…).")
    sig = check_sigmas("sigmas", default_sigmas(data.name) if sigmas is None else sigmas)
    check_int("n_pairs", n_pairs, low=2)
    # the inputs the attack applies to, in the run's target mode (all-to-all: every class)
    pairs = run.triggered_pairs(data.x_test, data.y_test, n=n_pairs, seed=seed)
    cmp = compare_smoothness(run.model, pairs.clean, pairs.triggered, sig, n_samples,
                             summary=summary, seed=seed, **kwargs)
    return SmoothingAnalysis(pairs, cmp, predict(run.model, pairs.triggered).numpy())


def smoothing_dynamics(data: Dataset, trigger=None, rate: float = 0.05, target: int = 0,
                       epochs: int | None = None, sigmas=None, n_pairs: int = 40,
                       n_samples: int = 64, seed: int = 0, model: str = "small-cnn",
                       progress: bool = False) -> list[dict]:
    """Train with a callback that measures the clean/triggered comparison after every epoch.

    Returns one row per epoch: epoch, loss, clean_accuracy, attack_success_rate, gap, gap_ci,
    p_value, and the mean W_σ curves of clean and triggered inputs (on the same fixed pairs).
    """
    # everything is checked here, before training: the measurements run in a callback after the
    # first epoch, which is too late to find out that one of their settings is wrong
    _check_dataset(data)
    trigger = Patch(size=3) if trigger is None else trigger
    prepare_run(data, trigger, rate, target, model, epochs, seed, None, None, 0.0, None)
    sig = check_sigmas("sigmas", default_sigmas(data.name) if sigmas is None else sigmas)
    check_int("n_pairs", n_pairs, low=2)
    check_int("n_samples", n_samples, low=1)
    if not isinstance(progress, bool):
        raise TypeError(f"`progress` must be a bool; got {progress!r}.")
    pairs = triggered_pairs(data.x_test, data.y_test, trigger, target, n=n_pairs, seed=seed)
    check_forwards(len(pairs.clean) * len(sig) * n_samples,
                   f"{len(pairs.clean)} pairs × {len(sig)} σ × {n_samples} samples, every epoch")
    rows: list[dict] = []

    def measure(epoch, net, entry):
        cmp = compare_smoothness(net, pairs.clean, pairs.triggered, sig, n_samples, seed=seed)
        rows.append({**entry, "gap": cmp.gap, "gap_ci": cmp.gap_ci, "p_value": cmp.p_value,
                     "clean_curve": cmp.clean.entropy.mean(0), "triggered_curve":
                     cmp.triggered.entropy.mean(0), "sigmas": np.asarray(sig)})

    train_backdoor(data, trigger=trigger, rate=rate, target=target, model=model, epochs=epochs,
                   seed=seed, callbacks=[measure], cache=False, progress=progress)
    return rows
