"""Backdoor Smoothing Workbench: study backdoor attacks through the smoothness of a classifier's
decision function around triggered inputs (Grosse et al., Computers & Security 2022).

    import workbench as wb
    data = wb.load_dataset("digits")
    run = wb.train_backdoor(data, trigger=wb.triggers.Patch(size=3), rate=0.05, target=0)
    res = wb.estimate_smoothness(run.model, inputs, sigmas=[0.05, 0.1, 0.2], n_samples=256)
"""

__version__ = "0.1.0"

from . import triggers  # noqa: E402
from .data import DATASETS, Dataset, data_dir, load_dataset  # noqa: E402
from .models import MODELS, build_model, default_device  # noqa: E402
from .poison import PoisonedSet, TriggeredPairs, poison_dataset, triggered_pairs  # noqa: E402
from .smoothness import (ComparisonResult, SmoothnessResult, compare_smoothness,  # noqa: E402
                         estimate_smoothness, paired_gap)
from .train import (BackdoorRun, TrainConfig, attack_success_rate, clean_accuracy,  # noqa: E402
                    load_run, predict, train_backdoor)

__all__ = [
    "__version__", "triggers", "DATASETS", "Dataset", "data_dir", "load_dataset", "MODELS",
    "build_model", "default_device", "PoisonedSet", "TriggeredPairs", "poison_dataset",
    "triggered_pairs", "ComparisonResult", "SmoothnessResult", "compare_smoothness",
    "estimate_smoothness", "paired_gap", "BackdoorRun", "TrainConfig", "attack_success_rate",
    "clean_accuracy", "load_run", "predict", "train_backdoor",
]
