"""The artificial-patterns study on a clean model (Grosse et al. 2022, section 6): universal and
random patches of several sizes, measured with the paired gap."""

from __future__ import annotations



from ..base._validate import check_choice, check_int
from ..base.data import DATASET_SHAPES, DATASETS, load_dataset
from .experiments import default_sigmas
from .patterns import measure_patterns, random_patches, universal_patch
from ..training.train import train_backdoor
from ..attacks.triggers import Patch



def _clean_model_run(data):
    """The unpoisoned model the pattern studies craft on (the rate-0 control of the sweeps)."""
    return train_backdoor(data, trigger=Patch(size=3), rate=0.0, target=0, progress=False)


def _measure_patterns_of_size(data, clean_run, size: int, n_random: int, seed: int, n_pairs: int,
                              n_samples: int):
    uap = universal_patch(clean_run.model, data.x_train, data.y_train, target=0, size=size,
                          position="center", seed=seed)
    pats = {"universal patch": uap, "white patch": Patch(size=size, position="center")}
    for i, p in enumerate(random_patches(n_random, size, data.image_shape[0], "center", seed=seed + 1)):
        pats[f"random patch {i + 1}"] = p
    return measure_patterns(clean_run.model, data.x_test, data.y_test, 0, pats,
                            default_sigmas(data.name), n_pairs, n_samples, seed)


def pattern_study(dataset: str = "digits", size: int = 4, n_random: int = 4, seed: int = 0,
                  n_pairs: int = 100, n_samples: int = 64):
    data = load_dataset(dataset)
    clean_run = _clean_model_run(data)
    return clean_run, _measure_patterns_of_size(data, clean_run, size, n_random, seed, n_pairs,
                                                n_samples)


def pattern_sizes(dataset: str = "digits", sizes=None, n_random: int = 2, seed: int = 0,
                  n_pairs: int = 100, n_samples: int = 64) -> dict[int, list]:
    """Claim 5 as a function of the pattern's size: for each size (default: a quarter, three
    eighths and half of the image side, e.g. 4, 6, 8 on 16×16 digits), a universal patch, the
    white patch and `n_random` random patches at the centre of a clean model's inputs.
    Returns {size: [PatternMeasurement, ...]}."""
    check_choice("dataset", dataset, DATASETS)
    side = DATASET_SHAPES[dataset][0][1]
    sizes = tuple(sizes) if sizes is not None else tuple(max(1, round(side * f)) for f in (0.25, 0.375, 0.5))
    for s in sizes:
        check_int("sizes", s, low=1, high=side - 2)
    data = load_dataset(dataset)  # loaded and the clean model opened once for every size
    clean_run = _clean_model_run(data)
    return {size: _measure_patterns_of_size(data, clean_run, size, n_random, seed, n_pairs, n_samples)
            for size in sizes}


def size_table(by_size: dict[int, list]) -> list[dict]:
    """One row per pattern of `pattern_sizes`' result: size, kind, success rate, gap, interval."""
    rows = []
    for size, measurements in by_size.items():
        for m in measurements:
            c = m.comparison
            rows.append({"size": size, "pattern": m.name, "kind": m.name.rstrip(" 0123456789"),
                         "success rate": round(m.success_rate, 4), "smoothing gap": round(c.gap, 4),
                         "gap_ci_low": round(c.gap_ci[0], 4), "gap_ci_high": round(c.gap_ci[1], 4),
                         "Wilcoxon p": float(f"{c.p_value:.3g}")})
    return rows


def pattern_size_study(dataset: str = "digits", sizes=None, n_random: int = 2, seed: int = 0,
                       n_pairs: int = 100, n_samples: int = 64) -> list[dict]:
    """`size_table(pattern_sizes(...))`: the rows `plots.pattern_sizes` draws."""
    return size_table(pattern_sizes(dataset, sizes, n_random, seed, n_pairs, n_samples))
