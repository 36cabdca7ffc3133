"""The attack atlas: every attack of the workbench, side by side, as one sweep axis.

The atlas sweep (`python -m workbench sweep --atlas`, `run_sweep(atlas_grid())`) measures clean
accuracy, ASR, the smoothing gap and the trigger's size for each attack of the registry, at its
weak and strong rate, on digits and Fashion-MNIST, two seeds each: the workbench's answer to
"which backdoors make the decision function smoother, and why?". Its rows go to `ATLAS_CSV`
(reports/atlas.csv, a table of `workbench.sweepstore`).

    atlas_grid       the atlas as a `SweepGrid`; quick_grid: a small one for notebooks
    noise_to_target  does Gaussian noise alone fire the backdoor? (a diagnostic of the gap's sign)

and, from the attack registry (`workbench.attack_registry`, where they are defined and documented
with their papers, below the sweep, which builds its attack grids from them):

    ATTACKS        name -> Attack (family, paper, trigger, poisoning, target mode, rates)
    train_attack   train (or load from the run cache) one attack's model
    attack_trigger, clean_model_run, attack_rates, training_args, trigger_norms
"""

from __future__ import annotations

import torch

from ..base._validate import check_int, check_seed, check_sigmas
from .attack_registry import (ATLAS_DATASETS, ATLAS_MODEL, ATLAS_TRAINING,  # noqa: F401
                              ATTACKS, FAMILIES, Attack, attack_rates, attack_trigger,
                              clean_model_run, train_attack, train_from_config, training_args,
                              trigger_norms)
from ..base.data import as_dataset
from ..base.models import model_device, preserve_model
from .sweep import ATLAS_CSV, SweepGrid
from .experiments import check_run


def noise_to_target(run, data, sigmas, n: int = 300, seed: int = 0) -> dict[float, float]:
    """Does Gaussian noise alone fire the backdoor? For each σ, the share of noisy clean test
    inputs that the run's model sends to the attacker's label: up to `n` test inputs the attack
    applies to (`run.triggered_pairs`: non-target classes; every class, each to its own shifted
    label, for all-to-all), each with one draw of N(0, σ²I) (seed `seed`, not clipped: the noise
    of the W_σ estimator). A diagnostic of the atlas (benchmarks/RESULTS.md, "The attack atlas"):
    where noise fires the backdoor, triggered inputs stay at the target under noise and look
    smoother; where it does not, noise drowns a faint trigger and they look less smooth. The model
    is given back as it was (`models.preserve_model`). `run`: trained here, or opened with its
    trigger (`open_model`)."""
    check_run(run)
    data = as_dataset(data)
    sig = check_sigmas("sigmas", sigmas)
    check_int("n", n, low=1)
    seed = check_seed("seed", seed, generator=False)
    pairs = run.triggered_pairs(data.x_test, data.y_test, n=n, seed=seed)
    g = torch.Generator().manual_seed(seed)
    out = {}
    with preserve_model(run.model) as net, torch.no_grad():
        dev = model_device(net)
        for s in sig:
            x = pairs.clean + s * torch.randn(pairs.clean.shape, generator=g)
            hits = net(x.to(dev)).argmax(1).cpu() == pairs.targets
            out[float(s)] = float(hits.float().mean())
    return out


def atlas_grid(datasets=("digits", "fashion-mnist"), attacks=None, seeds=(0, 1), rates=None,
               n_pairs: int = 50, n_samples: int = 64, targets=(0,)) -> SweepGrid:
    """The atlas as a `workbench.sweep.SweepGrid`: every attack (or those named) on each dataset,
    at each attack's two rates (rates None), its weak or strong one ("weak", "strong"), or the
    `rates` given (a tuple), for each seed."""
    return SweepGrid(datasets=tuple(datasets) if not isinstance(datasets, str) else datasets,
                     attacks=tuple(ATTACKS) if attacks is None else attacks, rates=rates,
                     seeds=seeds, targets=targets, n_pairs=n_pairs, n_samples=n_samples)


QUICK_ATTACKS = ("Patch", "Blend", "FTrojan", "TrojanNN", "Patch/all-to-all")


def quick_grid() -> SweepGrid:
    """A small atlas for a notebook's default (digits, five attacks of five families, one seed,
    their strong rates, 30 pairs × 32 samples): a few minutes on 2 cores from an empty cache."""
    return SweepGrid(datasets=("digits",), attacks=QUICK_ATTACKS, rates="strong", seeds=(0,),
                     n_pairs=30, n_samples=32)


__all__ = ["ATTACKS", "ATLAS_CSV", "ATLAS_DATASETS", "ATLAS_TRAINING", "ATLAS_MODEL", "Attack",
           "FAMILIES", "QUICK_ATTACKS", "atlas_grid", "attack_rates", "attack_trigger",
           "clean_model_run", "noise_to_target", "quick_grid", "train_attack",
           "train_from_config", "training_args", "trigger_norms"]
