"""Backdoor Smoothing Workbench: study backdoor attacks through the smoothness of a classifier's
decision function around triggered inputs (Grosse et al., Computers & Security 2022).

    import workbench as wb
    data = wb.load_dataset("digits")
    run = wb.train_backdoor(data, trigger=wb.triggers.Patch(size=3), rate=0.05, target=0)
    res = wb.estimate_smoothness(run.model, inputs, sigmas=[0.05, 0.1, 0.2], n_samples=256)

The package is a stack of layers (docs/architecture.md): `base`, `attacks`, `training`,
`estimator`, `studies`, `reports`, `ui`; this module holds the public names. The flat module
names of 0.1 (`workbench.smoothness`, `workbench.sweep`, ...) stay importable (`_compat`).
"""

import importlib

from . import _compat
from ._version import __version__

_compat.install()  # before anything else: `workbench.<old name>` resolves to the module's home

from .attacks import triggers  # noqa: E402
from .base.data import DATASETS, Dataset, data_dir, load_dataset  # noqa: E402
from .base.models import MODELS, build_model, default_device  # noqa: E402
from .attacks.poison import (PoisonedSet, TriggeredPairs, poison_dataset,  # noqa: E402
                             triggered_pairs)
from .estimator.smoothness import SmoothnessResult, estimate_smoothness  # noqa: E402
from .estimator.comparison import ComparisonResult, compare_smoothness, paired_gap  # noqa: E402
from .training.train import (BackdoorRun, TrainConfig, attack_success_rate,  # noqa: E402
                             clean_accuracy, is_cached, load_run, predict, train_backdoor)
from .studies.experiments import default_sigmas, smoothing_analysis  # noqa: E402
from .estimator.landscape import landscape_2d  # noqa: E402
from .training import crafting  # noqa: E402
from .training.crafting import craft, craft_low_frequency, craft_trojannn  # noqa: E402
from .training.input_aware import (InputAware, InputAwareRun, load_input_aware_run,  # noqa: E402
                                   train_input_aware)
from .training.opened import OpenedRun, open_model  # noqa: E402


def __getattr__(name):
    # the flat names of 0.1 (wb.plots, wb.widgets, wb.sweep, ...), loaded on first use: plotly and
    # ipywidgets are heavy
    if name in _compat.ALIASES:
        return importlib.import_module(f"workbench.{name}")
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


__all__ = [
    "__version__", "triggers", "DATASETS", "Dataset", "data_dir", "load_dataset", "MODELS",
    "build_model", "default_device", "PoisonedSet", "TriggeredPairs", "poison_dataset",
    "triggered_pairs", "ComparisonResult", "SmoothnessResult", "compare_smoothness",
    "estimate_smoothness", "paired_gap", "BackdoorRun", "TrainConfig", "attack_success_rate",
    "clean_accuracy", "is_cached", "load_run", "predict", "train_backdoor", "default_sigmas",
    "smoothing_analysis", "landscape_2d", "crafting", "craft", "craft_low_frequency",
    "InputAware", "InputAwareRun", "train_input_aware", "load_input_aware_run",
    "craft_trojannn", "open_model", "OpenedRun",
]
