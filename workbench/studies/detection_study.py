"""The detection study: every detector of `workbench.detection` on the atlas's attacks, one
trained model per (dataset, attack, seed) (`detection_study`, `detection_atlas`)."""

from __future__ import annotations

import time

import numpy as np

from . import atlas as _atlas, detection
from .attack_registry import training_args
from ..base._validate import check_choice, check_int
from ..base.data import DATASET_SHAPES, DATASETS, load_dataset
from .detection import METHODS, compare_detectors
from .experiments import default_sigmas
from ..base.models import MODELS, build_model
from ..training.train import train_backdoor
from ..attacks.triggers import TRIGGERS


# --- Detection (issue 12): every detector on every attack -------------------------------------

# Every attack of the atlas (`workbench.atlas.ATTACKS`, in its display order).
DETECTION_ATTACKS = tuple(_atlas.ATTACKS)
# The study's first six attacks keep the runs of its first table (benchmarks/RESULTS.md): the
# trigger class with its default parameters, trained by `train_backdoor` on the whole training
# set at DETECTION_RATES. Every other attack is `atlas.train_attack` at the atlas's strong rate.
DETECTION_ORIGINAL = ("Patch", "Checkerboard", "Pixel", "Blend", "Sinusoid", "Warp")
DETECTION_MODEL = "small-cnn-bn"  # BatchNorm, so that IBD-PSC applies
# Each original attack (the trigger with its default parameters, target 0, seed 0) at its strong
# rate on the detection model: the lowest of 5%, 10%, 20% at which it reaches ASR >= 0.9, measured
# on 2 CPU cores (benchmarks/RESULTS.md). An original attack without an entry here uses 10%.
DETECTION_RATES = {
    "digits": {"Patch": 0.05, "Checkerboard": 0.05, "Pixel": 0.05, "Blend": 0.05,
               "Sinusoid": 0.05, "Warp": 0.2},
    "fashion-mnist": {"Patch": 0.05, "Checkerboard": 0.05, "Pixel": 0.05, "Blend": 0.05,
                      "Sinusoid": 0.05, "Warp": 0.05},
}
REPORT_DETECTION_ATTACKS = ("Patch",)  # `paper_report`'s share of the study: the full one is long


def detection_trigger(attack: str, data=None):
    """The trigger of an attack of the detection study. An original attack (DETECTION_ORIGINAL):
    its class with default parameters (Patch and Checkerboard 3×3 at the bottom right, Blend
    α = 0.1, …; `data` not needed). Another atlas attack: `atlas.attack_trigger(attack, data)`
    (seed 0, target 0; the crafted ones are crafted on `data`'s clean model). InputAware has no
    trigger without its training: use `detection_run`."""
    check_choice("attack", attack, DETECTION_ATTACKS)
    if attack in DETECTION_ORIGINAL:
        return TRIGGERS[attack]()
    if _atlas.ATTACKS[attack].trigger.get("type") == "InputAware":
        raise ValueError("`attack` 'InputAware' has no trigger without its training (the "
                         "generators are trained with the model): use `detection_run`.")
    if data is None:
        raise TypeError(f"`data` must be a Dataset for the atlas attack {attack!r}; got None.")
    return _atlas.attack_trigger(attack, data, seed=0, target=0)


def detection_rate(dataset: str, attack: str) -> float:
    """The poisoning rate of `attack`'s model on `dataset`: DETECTION_RATES for the original
    attacks (10% without an entry), the atlas's strong rate for the others."""
    if attack in DETECTION_ORIGINAL:
        return DETECTION_RATES.get(dataset, {}).get(attack, 0.1)
    return float(_atlas.attack_rates(attack, dataset)[1])


def detection_run(data, attack: str, model: str = DETECTION_MODEL, progress: bool = False,
                  seed: int = 0):
    """The backdoored model of `attack` in the detection study (a cached run; target 0): an
    original attack through `train_backdoor` at `detection_rate`, any other through
    `atlas.train_attack` at its strong rate (crafted triggers crafted on the clean model of the
    same seed, InputAware trained jointly). `seed`: the model's (initialisation, poisoned
    images, data order, crafting). Every model trains with the atlas's budget for the dataset
    (`atlas.training_args`: Fashion-MNIST on the first 20,000 training images; until issue 20 the
    original six trained on all 60,000 there), the budget of the clean models the model-level
    test compares them with (`workbench.detection_seeds`)."""
    check_choice("attack", attack, DETECTION_ATTACKS)
    seed = check_int("seed", seed, low=0)
    if attack in DETECTION_ORIGINAL:
        return train_backdoor(data, trigger=detection_trigger(attack),
                              rate=detection_rate(data.name, attack), target=0, model=model,
                              seed=seed, max_train=training_args(data.name).get("max_train"),
                              progress=progress)
    return _atlas.train_attack(data, attack, rate=None, seed=seed, model=model, progress=progress)


def detection_attack(run) -> str:
    """The atlas's name of the attack a run implements (e.g. "Patch/all-to-all" for a Patch
    run in all-to-all mode), from its trigger's class, poisoning and target mode."""
    name = type(run.trigger).__name__
    if run.target_mode == "all-to-all":
        return f"{name}/all-to-all"
    if run.poisoning != "dirty-label":
        return f"{name}/{run.poisoning}"
    return name


def check_detection_args(dataset, attacks, n, seed, n_samples, methods, model, n_boot):
    check_choice("dataset", dataset, DATASETS)
    for a in attacks:
        check_choice("attack", a, DETECTION_ATTACKS)
    check_int("n", n, low=2)
    check_int("seed", seed, low=0)
    check_int("n_samples", n_samples, low=1)
    check_int("n_boot", n_boot, low=0)
    check_choice("model", model, MODELS)
    methods = detection.check_methods(methods)
    if "ibd-psc" in methods:  # before any training: the architecture decides it
        shape = DATASET_SHAPES[dataset][0]
        detection.check_batchnorm(build_model(model, shape[0], 2, tuple(shape[1:])))
    return methods


def detection_measure(data, run, attack: str, n: int = 200, seed: int = 0, n_samples: int = 64,
                      methods=METHODS, n_boot: int = 1000, evaluation: str = "all") -> dict:
    """Every detector in `methods` on `run`'s model: `n` clean test inputs the attack applies to
    (`run.triggered_pairs`: classes other than the target, or every class for an all-to-all run)
    against their triggered twins; the held-out rest of the test set is the clean pool (its
    labels go to IBD-PSC's layer selection, as BackdoorBox's). `evaluation`: "all" (every input:
    one result per method), "filtered" (correct clean, successful triggered: the toolboxes' set)
    or "both" (the "all" results, then the "filtered" ones; each says its set and counts).
    Returns the study's entry for it (the run's settings, clean accuracy, ASR, "results")."""
    check_choice("attack", attack, DETECTION_ATTACKS)
    check_int("n", n, low=2)
    check_int("seed", seed, low=0)
    methods = detection.check_methods(methods)
    t0 = time.perf_counter()
    # (every target mode: an all-to-all run has no single target; pairs.targets has each one's)
    pairs = run.triggered_pairs(data.x_test, data.y_test, n=n, seed=seed)
    # held-out clean test images not among the evaluated inputs: STRIP's blend partners, IBD-PSC's
    # layer selection, the clean W_σ curve of w-knee and w-class
    mask = np.ones(len(data.y_test), bool)
    mask[pairs.indices.numpy()] = False
    results = compare_detectors(run.model, pairs.clean, pairs.triggered, data.x_test[mask],
                                default_sigmas(data.name), n_samples=n_samples, seed=seed,
                                methods=methods, n_boot=n_boot, pool_labels=data.y_test[mask],
                                clean_labels=pairs.labels, target_labels=pairs.targets,
                                evaluation=evaluation)
    a = _atlas.ATTACKS.get(attack)
    return {"dataset": data.name, "attack": attack, "family": a.family if a else "",
            "poisoning": run.poisoning, "target_mode": run.target_mode,
            "trigger": repr(run.trigger), "rate": run.config["rate"],
            "model": run.config["model"], "clean_accuracy": run.clean_accuracy,
            "attack_success_rate": run.attack_success_rate, "n": len(pairs.clean),
            "results": results, "seconds": time.perf_counter() - t0}


def _detection_entry(data, attack, n, seed, n_samples, methods, model, n_boot, progress,
                     evaluation="all"):
    t0 = time.perf_counter()
    run = detection_run(data, attack, model, progress)
    entry = detection_measure(data, run, attack, n, seed, n_samples, methods, n_boot, evaluation)
    entry["detect_seconds"] = entry["seconds"]  # the detectors only
    entry["seconds"] = time.perf_counter() - t0  # training (or loading) included
    return entry, run


def detection_study(dataset: str = "digits", n: int = 200, seed: int = 0, n_samples: int = 64,
                    attack: str = "Patch", methods=METHODS, model: str = DETECTION_MODEL,
                    n_boot: int = 1000, evaluation: str = "all"):
    """One attack of the detection study (any of DETECTION_ATTACKS, the atlas's attacks): its
    backdoored model (`detection_run`: a cached run, target 0, seed 0, at the attack's strong
    rate) and every detector in `methods` on `n` clean vs `n` triggered test inputs
    (`detection_measure`, `workbench.detection.compare_detectors`); `evaluation` "all",
    "filtered" or "both" (`detection_measure`). Returns (run, [DetectionResult, ...]). One model:
    for conclusions, see the multi-seed study (`workbench.studies.detection_seeds`)."""
    methods = check_detection_args(dataset, (attack,), n, seed, n_samples, methods, model, n_boot)
    check_choice("evaluation", evaluation, ("all", "filtered", "both"))
    entry, run = _detection_entry(load_dataset(dataset), attack, n, seed, n_samples, methods, model,
                                  n_boot, False, evaluation)
    return run, entry["results"]


def detection_atlas(datasets=("digits",), attacks=DETECTION_ATTACKS, n: int = 200, seed: int = 0,
                    n_samples: int = 64, methods=METHODS, model: str = DETECTION_MODEL,
                    n_boot: int = 1000, progress: bool = False) -> list[dict]:
    """Every detector on every attack of every dataset (default: every attack of the atlas): one
    entry per (dataset, attack) with the attack's family, poisoning and target mode, the run's
    clean accuracy and ASR and its `DetectionResult`s ("results"); "seconds" includes training
    or loading the model, "detect_seconds" is the detectors' alone. Models come from the run
    cache (trained on first use: minutes per Fashion-MNIST model on 2 CPU cores)."""
    if isinstance(datasets, str) or isinstance(attacks, str):
        raise TypeError("`datasets` and `attacks` must be tuples of names; got a str.")
    if not datasets or not attacks:
        raise ValueError("`datasets` and `attacks` must each name at least one; got none.")
    for ds in datasets:
        methods = check_detection_args(ds, attacks, n, seed, n_samples, methods, model, n_boot)
    out = []
    for ds in datasets:
        data = load_dataset(ds)
        for attack in attacks:
            entry, _ = _detection_entry(data, attack, n, seed, n_samples, methods, model, n_boot,
                                        progress)
            if progress:
                print(f"{ds:>13} {attack:<22} ASR {entry['attack_success_rate']:.3f}  " + "  ".join(
                    f"{r.method} {r.auc:.3f}" for r in entry["results"]) +
                    f"  ({entry['seconds']:.0f} s)", flush=True)
            out.append(entry)
    return out
