"""Backdoor Smoothing Workbench: study backdoor attacks through the smoothness of a classifier's
decision function around triggered inputs (Grosse et al., Computers & Security 2022).

    import workbench as wb
    data = wb.load_dataset("digits")
    run = wb.train_backdoor(data, trigger=wb.triggers.Patch(size=3), rate=0.05, target=0)
    res = wb.estimate_smoothness(run.model, inputs, sigmas=[0.05, 0.1, 0.2], n_samples=256)
"""

from ._version import __version__  # noqa: E402, F401

from . import triggers  # noqa: E402
from .data import DATASETS, Dataset, data_dir, load_dataset  # noqa: E402
from .models import MODELS, build_model, default_device  # noqa: E402
from .poison import PoisonedSet, TriggeredPairs, poison_dataset, triggered_pairs  # noqa: E402
from .smoothness import SmoothnessResult, estimate_smoothness  # noqa: E402
from .comparison import ComparisonResult, compare_smoothness, paired_gap  # noqa: E402
from .train import (BackdoorRun, TrainConfig, attack_success_rate, clean_accuracy,  # noqa: E402
                    is_cached, load_run, predict, train_backdoor)
from .experiments import default_sigmas, smoothing_analysis  # noqa: E402
from .landscape import landscape_2d  # noqa: E402
from . import crafting  # noqa: E402
from .crafting import craft, craft_low_frequency, craft_trojannn  # noqa: E402
from .input_aware import (InputAware, InputAwareRun, load_input_aware_run,  # noqa: E402
                          train_input_aware)

# plotly / ipywidgets are heavy: their modules load on first use (wb.plots, wb.widgets, ...)
_LAZY = ("plots", "widgets", "report", "cli")


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")

__all__ = [
    "__version__", "triggers", "DATASETS", "Dataset", "data_dir", "load_dataset", "MODELS",
    "build_model", "default_device", "PoisonedSet", "TriggeredPairs", "poison_dataset",
    "triggered_pairs", "ComparisonResult", "SmoothnessResult", "compare_smoothness",
    "estimate_smoothness", "paired_gap", "BackdoorRun", "TrainConfig", "attack_success_rate",
    "clean_accuracy", "is_cached", "load_run", "predict", "train_backdoor", "default_sigmas",
    "smoothing_analysis", "landscape_2d", "crafting", "craft", "craft_low_frequency",
    "InputAware", "InputAwareRun", "train_input_aware", "load_input_aware_run",
    "craft_trojannn",
]
