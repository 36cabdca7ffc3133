"""Grids of runs: dataset × trigger (type, size) × poisoning rate × target × seed.

Each grid point trains (through the run cache) and measures clean accuracy, ASR and the smoothing
gap, giving one row. Rows are appended to a CSV file as they finish, so an interrupted sweep
continues where it stopped (`resume=True`). Points run on any `concurrent.futures.Executor`:
local processes by default, a Dask cluster with `distributed.Client(...).get_executor()`.

A row is reused only when its key matches: the key covers everything its numbers depend on (the
run's settings with the dataset's defaults resolved, the resolved σ grid, the estimator's settings,
ESTIMATOR_VERSION, the training cache format and KEY_FORMAT), so rows made under other settings or
by older code never match and are computed again. Several sweeps may share one CSV: appends hold an
flock on `.NAME.lock` next to it, and a sweep holds a claim (`.NAME.claims/KEY.lock`, flocked) on
each point it computes, so the others skip it and read its row when it is done; a claim dies with
its process. A torn last line (a write interrupted by a crash) is moved to `NAME.torn` before the
next append.

The table comes back as a pandas DataFrame (`read_table`, `run_sweep`): one row per key, columns
`COLUMNS` typed (`COLUMN_TYPES`). Every row says which `row_format` made it; `current_rows` keeps
those of this version. Tables written before row format 3 (no `row_format` column) are read with
`row_format` missing (<NA>), and the first sweep that appends to one rewrites its header, keeping
their rows (unused: their keys never match). Rows of row format 4 lack only `max_train`: their
keys are those of this version, and a sweep that reuses one completes it from its grid point.

A trained run is named by `RUN_COLUMNS` (its identity: dataset, attack, trigger, poisoning, target
mode, rate, target, seed, model, epochs, training subset); one run measured under several keys
(other pairs, samples, σ grid, estimator) is counted once by `latest_per_run`. Every module that
tells runs apart (the paper report, the atlas's figures) uses these two.

An atlas grid (`SweepGrid(attacks=...)`) writes to `workbench.atlas.ATLAS_CSV` (reports/atlas.csv)
by default, any other grid to reports/sweep.csv (`default_table`), as the command line does.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import ctypes
import dataclasses
import hashlib
import io
import itertools
import json
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
from tqdm.auto import tqdm

from ._validate import check_choice, check_float, check_int, check_seed, check_sigmas
from .atlas import ATLAS_CSV
from .data import DATASET_SHAPES, DATASETS
from .fileio import atomic_write
from .models import MODELS
from .stats import spearman_ci  # noqa: F401 - re-exported: it used to live here
from .triggers import CRAFTED, TRIGGERS

try:  # Linux and macOS; elsewhere sweeps sharing one CSV are not coordinated
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

# Version of the rows' content and of what their keys cover: bump whenever a change in this module
# can move a number in a row or changes the key, so that rows made by older code never match.
# 2: keys cover the resolved σ grid and training defaults, the estimator's settings and versions.
# 3: rows carry their row format (a `row_format` column), so readers can tell stale rows apart,
#    and the radius gap's interval (radius_gap_ci_low, radius_gap_ci_high).
# 4: attacks (the atlas, `workbench.atlas`): attack, family, poisoning, target_mode columns, the
#    trigger's size (trigger_l2, trigger_linf) and the mean W_σ curves (sigmas, clean_curve,
#    triggered_curve); pairs drawn by the run's `triggered_pairs` (every target mode).
# 5: the training subset (`max_train`: None = the whole training set), a column of the run's
#    identity (RUN_COLUMNS). Its numbers are computed as format 4's and its keys are format 4's
#    (KEY_FORMAT): a row of format 4 whose key matches a grid point is completed from the point
#    (`_COMPLETABLE`), not computed again.
ROW_FORMAT = 5
# The version of what keys cover and of how a row's numbers are computed: bump it (and ROW_FORMAT)
# whenever a change in this module can move a number in a row or changes the key; bump ROW_FORMAT
# alone for a column whose value a grid point gives (then list it in _COMPLETABLE).
KEY_FORMAT = 4

# The estimator settings every row is measured with: passed explicitly to the estimator by
# `run_point` and part of every key, so a change here can never reuse rows made with the old ones.
ESTIMATOR_SETTINGS = {
    "mode": "hard", "noise": "gaussian", "common_noise": False, "clip": None, "normalize": False,
    "bias_correction": None, "target_se": None, "precision": "fp32", "paired_noise": True,
    "summary": "mean", "confidence": 0.95,
    "radius_threshold": 0.1,  # the radius gap's threshold, as a fraction of log K
}
# Each column and its type in `read_table`'s DataFrame: "str" ("" where empty or missing), "int"
# (int64; a row without one is damaged), "float" (float64, NaN where empty), "Int64" (nullable int:
# rows of older tables have no row format; max_train is <NA> for the whole training set), "floats"
# (a tuple of floats, stored as ";"-joined numbers; () where empty).
COLUMN_TYPES = {
    "key": "str", "row_format": "Int64", "dataset": "str", "attack": "str", "family": "str",
    "trigger": "str", "trigger_type": "str", "trigger_size": "int", "trigger_l2": "float",
    "trigger_linf": "float", "poisoning": "str", "target_mode": "str",
    "rate": "float", "target": "int", "seed": "int", "model": "str",
    "epochs": "int", "max_train": "Int64", "clean_accuracy": "float",
    "attack_success_rate": "float", "gap": "float",
    "gap_ci_low": "float", "gap_ci_high": "float", "p_value": "float", "radius_gap": "float",
    "radius_gap_ci_low": "float", "radius_gap_ci_high": "float", "radius_p_value": "float",
    "clean_mean_W": "float", "triggered_mean_W": "float", "n_pairs": "int", "n_samples": "int", "sigma_min": "float", "sigma_max": "float",
    "sigmas": "floats", "clean_curve": "floats", "triggered_curve": "floats",
    "train_seconds": "float", "torch": "str", "workbench": "str"}
COLUMNS = list(COLUMN_TYPES)
# The header of row formats 1 and 2. Tables with an older header are read (the columns it lacks are
# missing values: NaN, <NA>, or "" for text) and upgraded to `COLUMNS` by the next sweep into them.
# When COLUMNS changes, add the header it had to _OLDER_COLUMNS (and bump ROW_FORMAT).
_LEGACY_COLUMNS = ["key", "dataset", "trigger", "trigger_type", "trigger_size", "rate", "target",
                   "seed", "model", "epochs", "clean_accuracy", "attack_success_rate", "gap",
                   "gap_ci_low", "gap_ci_high", "p_value", "radius_gap", "radius_p_value",
                   "clean_mean_W", "triggered_mean_W", "n_pairs", "n_samples", "sigma_min",
                   "sigma_max", "train_seconds", "torch", "workbench"]
_FORMAT3_COLUMNS = (_LEGACY_COLUMNS[:17] + ["radius_gap_ci_low", "radius_gap_ci_high"]
                    + _LEGACY_COLUMNS[17:])
_FORMAT3_COLUMNS.insert(1, "row_format")
_FORMAT4_COLUMNS = [c for c in COLUMNS if c != "max_train"]
_OLDER_COLUMNS = [_FORMAT4_COLUMNS, _FORMAT3_COLUMNS, _LEGACY_COLUMNS]
# Older row formats whose rows are completed when a sweep reuses them (their keys are this
# version's: KEY_FORMAT): format -> the columns they lack, each the grid point's value.
_COMPLETABLE = {4: ("max_train",)}
# a column an older table lacks must have a "missing" value: not an int
assert all(COLUMN_TYPES[c] != "int" for old in _OLDER_COLUMNS for c in COLUMNS if c not in old)
# A grid names triggers by type and size: those whose content must be given (a crafted pattern)
# cannot be swept.
# Triggers a sweep builds from parameters: not PatternPatch (a user's array) nor the crafted ones
# (LowFrequency, TrojanNN: optimised on a clean model; craft them, then train_backdoor).
SWEEPABLE = tuple(k for k in TRIGGERS if k != "PatternPatch" and k not in CRAFTED)
SIZED = tuple(k for k in SWEEPABLE if "size" in TRIGGERS[k]._params)

# The identity of a trained run: the columns that name it. Rows equal on these measure the same
# model (measured again under another key: other pairs, samples, σ grid, estimator or versions);
# rows that differ on any of them are different models: the attack (Patch and Patch/all-to-all
# share trigger, rate and seed), its poisoning and target mode, the training subset (the atlas
# trains Fashion-MNIST on its first 20,000 images). The one definition: `latest_per_run`, the
# paper report and the atlas's figures use it.
RUN_COLUMNS = ("dataset", "attack", "trigger", "trigger_type", "trigger_size", "poisoning",
               "target_mode", "rate", "target", "seed", "model", "epochs", "max_train")
assert set(RUN_COLUMNS) <= set(COLUMN_TYPES)


def trigger_config(kind: str, size: int) -> dict:
    """A trigger config from (type, size); size is ignored by triggers without one."""
    check_choice("trigger type", kind, SWEEPABLE)
    check_int("trigger size", size, low=1)
    return {"type": kind, "size": size} if kind in SIZED else {"type": kind}


@dataclass(frozen=True)
class SweepGrid:
    """The grid; every combination of the tuples is one run.

    attacks: None (default) for a grid of triggers (`trigger_types` × `trigger_sizes`, dirty-label,
    all-to-one), or a tuple of attack names of `workbench.atlas.ATTACKS` (each a trigger with its
    poisoning and target mode: the attack atlas; `trigger_types` and `trigger_sizes` are then not
    used). With attacks, `rates` may also be None (each attack's weak and strong rate on each
    dataset), "weak" or "strong"; the atlas's training settings apply (`atlas.ATLAS_TRAINING`).
    """

    datasets: tuple = ("digits",)  # dataset names
    trigger_types: tuple = ("Patch",)  # trigger class names
    trigger_sizes: tuple = (2, 3)  # patch sides (for sized triggers)
    rates: tuple | str | None = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1)  # 0 = clean control
    targets: tuple = (0,)  # target classes
    seeds: tuple = (0,)  # training seeds
    model: str = "small-cnn"  # architecture
    epochs: int | None = None  # None = the dataset's default
    n_pairs: int = 50  # clean/triggered test pairs per run
    n_samples: int = 64  # noisy samples per input and σ
    sigmas: tuple | None = None  # None = the dataset's default grid
    attacks: tuple | None = None  # atlas attack names (see above)

    def __post_init__(self):
        # checked, and kept as tuples of plain Python values (numpy scalars and arrays are
        # accepted: the points' keys are JSON)
        def put(name, value):
            object.__setattr__(self, name, value)

        put("datasets", _check_values("datasets", self.datasets, "dataset names",
                                      lambda d: check_choice("datasets", d, DATASETS)))
        put("trigger_types", _check_values("trigger_types", self.trigger_types, "trigger names",
                                           lambda t: check_choice("trigger_types", t, SWEEPABLE)))
        put("trigger_sizes", _check_values("trigger_sizes", self.trigger_sizes, "ints >= 1",
                                           lambda s: check_int("trigger_sizes", s, low=1)))
        if self.attacks is not None:
            from .atlas import ATTACKS

            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for name in ("trigger_types", "trigger_sizes"):
                if getattr(self, name) != defaults[name]:
                    raise ValueError(f"`{name}` does not apply with `attacks` (each attack names "
                                     f"its trigger); leave it at its default; got "
                                     f"{getattr(self, name)!r}.")

            put("attacks", _check_values("attacks", self.attacks, "attack names",
                                         lambda a: check_choice("attacks", a, tuple(ATTACKS))))
        if not (self.attacks is not None and (self.rates is None or self.rates in ("weak", "strong"))):
            if self.rates is None or isinstance(self.rates, str):
                # a wrong type without attacks; a string other than weak/strong with them
                raise (ValueError if self.attacks is not None else TypeError)(
                    "`rates` must be a tuple of floats in [0, 1]"
                                 + (", None (each attack's two rates), 'weak' or 'strong'"
                                    if self.attacks is not None else
                                    " (None, 'weak' and 'strong' need `attacks`)")
                                 + f"; got {self.rates!r}.")
            put("rates", _check_values("rates", self.rates, "floats in [0, 1]",
                                       lambda r: check_float("rates", r, 0.0, 1.0)))
        put("targets", _check_values("targets", self.targets, "ints >= 0",
                                     lambda t: check_int("targets", t, low=0)))
        put("seeds", _check_values("seeds", self.seeds, "seeds (ints >= 0)",
                                   lambda s: check_seed("seeds", s, generator=False)))
        if self.epochs is not None:
            put("epochs", check_int("epochs", self.epochs, low=1))
        check_choice("model", self.model, MODELS)
        if self.attacks is not None:
            self._check_attacks()
        else:
            self._check_fit()
        put("n_pairs", check_int("n_pairs", self.n_pairs, low=2))
        put("n_samples", check_int("n_samples", self.n_samples, low=1))
        if self.sigmas is not None:
            put("sigmas", tuple(check_sigmas("sigmas", self.sigmas)))

    def _check_fit(self) -> None:
        """Every trigger fits every dataset's images and every target is one of its classes:
        checked here, before any run starts, rather than in a worker minutes later."""
        import torch

        from .triggers import trigger_from_config

        for d in self.datasets:
            shape, n_classes = DATASET_SHAPES[d]
            for t in self.targets:
                if t >= n_classes:
                    raise ValueError(f"`targets` must be classes of {d!r}: ints in [0, "
                                     f"{n_classes - 1}]; got {t}.")
            blank = torch.zeros((1, *shape))
            for cfg in self._trigger_configs():
                try:
                    trigger_from_config(cfg)(blank)
                except ValueError as exc:
                    raise ValueError(f"`trigger_sizes`: a {cfg['type']} of size {cfg.get('size', 1)} "
                                     f"does not fit the {shape[1]}x{shape[2]} images of {d!r} "
                                     f"({exc})") from None

    def _attack_rates(self, attack, dataset: str) -> tuple:
        if self.rates is None or isinstance(self.rates, str):
            from .atlas import attack_rates

            attack_rates(attack.name, dataset)  # refuses a dataset without measured rates
        if self.rates is None:
            return tuple(dict.fromkeys(attack.rates[dataset]))
        if self.rates in ("weak", "strong"):
            return (attack.rates[dataset][self.rates == "strong"],)
        return self.rates

    def _check_attacks(self) -> None:
        """Every attack's settings on every dataset, rate, target and seed, checked as
        `train_backdoor` (or `train_input_aware`) checks them, before any run starts: a trigger
        that does not fit, a clean-label rate beyond the target class's share, an all-to-all
        attack on one class, ..."""
        import torch

        from .atlas import ATTACKS, training_args
        from .input_aware import ATTACK_DEFAULTS
        from .input_aware import prepare_input_aware_run as prepare_input_aware
        from .train import prepare_run as _prepare
        from .triggers import Patch, trigger_from_config

        ia_defaults = [ATTACK_DEFAULTS[k] for k in ("lr_generator", "lambda_div", "lambda_norm",
                                                    "mask_density", "mask_epochs", "width")]
        for d in self.datasets:
            for name in self.attacks:  # rates measured for this dataset, before loading it
                self._attack_rates(ATTACKS[name], d)
            full = _dataset(d)
            # the checks need the labels (a rate's limits) and the images' shape, not every pixel:
            # checking and hashing Fashion-MNIST's 60,000 images for each attack took 15 s
            data = dataclasses.replace(full, x_train=full.x_train[:1], x_test=full.x_test[:1])
            extra = training_args(d)
            blank = torch.zeros((1, *data.image_shape))
            for name in self.attacks:
                a = ATTACKS[name]
                crafted = a.kind in CRAFTED or a.kind == "InputAware"
                trig = Patch(size=1) if crafted else trigger_from_config(a.trigger_config(d))
                if not crafted:
                    try:
                        trig(blank)
                    except ValueError as exc:
                        raise ValueError(f"`attacks`: {name} does not fit the "
                                         f"{data.image_shape[1]}x{data.image_shape[2]} images of "
                                         f"{d!r} ({exc})") from None
                # each limit on a rate is monotone in it (at least one image; at most the images
                # of the classes it may take): checking the smallest and largest rate covers all;
                # seeds do not change them (all were checked above)
                rates = sorted(self._attack_rates(a, d))
                seed = self.seeds[0]
                for rate, target in itertools.product(dict.fromkeys((rates[0], rates[-1])),
                                                      self.targets):
                    try:
                        if a.kind == "InputAware":
                            prepare_input_aware(data, rate, rate, target, self.model, self.epochs,
                                                seed, None, None, 0.0, *ia_defaults,
                                                extra.get("max_train"))
                        else:
                            _prepare(data, trig, rate, target, self.model, self.epochs, seed,
                                     None, None, 0.0, extra.get("max_train"),
                                     poisoning=a.poisoning, target_mode=a.target_mode,
                                     epsilon=a.epsilon)
                    except ValueError as exc:
                        raise ValueError(f"`attacks`: {name} on {d!r} at rate {rate}, target "
                                         f"{target}: {exc}") from None

    def _trigger_configs(self) -> list[dict]:
        """One config per trigger type and size (one per type for triggers without a size)."""
        return [trigger_config(kind, size) for kind in self.trigger_types
                for size in (self.trigger_sizes if kind in SIZED else (1,))]

    def points(self) -> list[dict]:
        """One dict per run, with every default resolved (a dataset's σ grid, epochs, batch size,
        learning rate) and its `key`: a later change of a default gives other keys, never a stale
        row."""
        from . import __version__
        from .experiments import default_sigmas
        from .smoothness import ESTIMATOR_VERSION
        from .train import CACHE_FORMAT, DEFAULTS

        from .triggers import trigger_from_config

        from .atlas import ATTACKS, training_args
        from .crafting import CRAFT_VERSION
        from .input_aware import ATTACK_DEFAULTS as IA_DEFAULTS
        from .poison import check_pgd
        from .input_aware import CACHE_FORMAT as IA_CACHE_FORMAT
        from .input_aware import EPOCHS as IA_EPOCHS

        pts, seen = [], set()
        # the data's content, not only its name: other files under one name are another
        # experiment (each dataset loaded once per process, hashed once here: 0.1 s for Fashion)
        fingerprints = {d: _dataset(d).fingerprint for d in self.datasets}
        if self.attacks is None:  # (dataset, attack, trigger config, rate) of a trigger grid
            runs = [(d, None, trig, rate) for d, trig, rate in itertools.product(
                self.datasets, self._trigger_configs(), self.rates)]
        else:
            runs = [(d, ATTACKS[a], ATTACKS[a].trigger_config(d), rate)
                    for d in self.datasets for a in self.attacks
                    for rate in self._attack_rates(ATTACKS[a], d)]
        for (d, attack, trig, rate), target, seed in itertools.product(runs, self.targets,
                                                                       self.seeds):
            train = DEFAULTS.get(d, DEFAULTS["digits"])
            sig = self.sigmas if self.sigmas is not None else default_sigmas(d)
            epochs = self.epochs if self.epochs is not None else train["epochs"]
            if attack is None or attack.kind not in CRAFTED + ("InputAware",):
                # every trigger parameter, defaults included (position, value, margin, ...): a
                # changed default is another trigger, so another key
                trig = trigger_from_config(trig).to_config()
            elif attack.kind == "InputAware":  # its settings, with their defaults, as used
                trig = dict(trig, **IA_DEFAULTS, cache_format=IA_CACHE_FORMAT)
                trig.pop("rate")
                trig["cross_rate"] = float(rate)  # the paper's cross samples, at the same rate
                epochs = self.epochs if self.epochs is not None else IA_EPOCHS.get(
                    d, 2 * train["epochs"])
            else:  # crafted on the clean model of the same settings and seed (see _train_point),
                # with every crafting argument resolved: a changed default is another trigger
                trig = dict(_craft_defaults(attack.kind), **trig,
                            crafted_on="clean model of this point's training settings")
            extra = training_args(d) if attack is not None else {}
            poisoning = attack.poisoning if attack else "dirty-label"
            # label-consistent poisoning's PGD settings, defaults resolved (None for other modes)
            eps, pgd_steps, pgd_step_size = check_pgd(poisoning,
                                                      attack.epsilon if attack else None, None, None)
            p = {"dataset": d, "attack": attack.name if attack else trig["type"],
                 "family": attack.family if attack else _family(trig["type"]),
                 "trigger": trig, "poisoning": poisoning,
                 "target_mode": attack.target_mode if attack else "all-to-one",
                 "epsilon": eps, "pgd_steps": pgd_steps, "pgd_step_size": pgd_step_size,
                 "rate": float(rate), "target": int(target),
                 "seed": int(seed), "model": self.model, "epochs": int(epochs),
                 "batch_size": int(train["batch_size"]), "lr": float(train["lr"]),
                 "weight_decay": 0.0,  # train_backdoor's defaults, as used
                 "max_train": extra.get("max_train"),
                 "n_pairs": self.n_pairs, "n_samples": self.n_samples,
                 "sigmas": [float(x) for x in sig], "estimator": dict(ESTIMATOR_SETTINGS),
                 "versions": {"row_format": KEY_FORMAT, "estimator": ESTIMATOR_VERSION,
                              "train_cache": CACHE_FORMAT, "craft": CRAFT_VERSION,
                              "workbench": __version__},
                 "data": fingerprints[d]}
            p["key"] = point_key(p)
            if p["key"] not in seen:
                seen.add(p["key"])
                pts.append(p)
        return pts


def _craft_defaults(kind: str) -> dict:
    """The crafting function's own arguments with their defaults (not the data, model, seed,
    target or progress, which the point gives)."""
    import inspect

    from .crafting import CRAFTERS

    skip = {"data", "model", "seed", "target", "progress", "architecture", "epochs"}
    out = {}
    for name, p in inspect.signature(CRAFTERS[kind]).parameters.items():
        if name in skip or p.default is inspect.Parameter.empty:
            continue
        v = p.default
        out[name] = list(v) if isinstance(v, tuple) else v
    return out


def _family(trigger_type: str) -> str:
    """The atlas family of a trigger type swept on its own (dirty-label, all-to-one)."""
    from .atlas import ATTACKS

    a = ATTACKS.get(trigger_type)
    return a.family if a is not None and a.poisoning == "dirty-label" else ""


def _check_values(name: str, values, what: str, check: Callable) -> tuple:
    """A non-empty tuple (or list, array, ...) of values, each checked; as a tuple."""
    if isinstance(values, (str, bytes, dict)) or not isinstance(values, Iterable):
        raise TypeError(f"`{name}` must be a tuple of {what}; got {values!r}.")
    out = tuple(check(v) for v in values)
    if not out:
        raise ValueError(f"`{name}` must hold at least one of {what}; got none.")
    return out


def point_key(point: dict) -> str:
    """A hash of everything in the point (see `SweepGrid.points`) but its key."""
    blob = json.dumps({k: v for k, v in point.items() if k != "key"}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@lru_cache(maxsize=4)
def _dataset(name: str):
    from .data import load_dataset

    return load_dataset(name)


def run_point(point: dict) -> dict:
    """Train (or load) one grid point's run and measure it: one table row. Runs in workers.

    point: one of `SweepGrid.points()` (its settings are used as they are: nothing is defaulted).
    """
    import torch

    from . import __version__
    from .experiments import smoothing_analysis
    from .atlas import trigger_norms
    from .comparison import paired_gap

    data = _dataset(point["dataset"])
    if "data" in point and data.fingerprint != point["data"]:
        raise ValueError(f"The {point['dataset']!r} files this worker loaded differ from the ones "
                         "the sweep's grid was made from (their fingerprints differ); was the "
                         "dataset folder changed during the sweep?")
    run = _train_point(point, data)
    trig = run.trigger
    sig = point["sigmas"]
    est = dict(point["estimator"])
    threshold = est.pop("radius_threshold")
    an = smoothing_analysis(run, data, sig, n_pairs=point["n_pairs"], n_samples=point["n_samples"],
                            seed=point["seed"], **est)
    c = an.comparison
    l2, linf = trigger_norms(trig, data.x_test)
    scale = 1.0 if est["normalize"] else math.log(c.clean.num_classes)
    r_c = c.clean.smoothness_radius(threshold * scale)
    r_t = c.triggered.smoothness_radius(threshold * scale)
    rad = paired_gap(r_c, r_t, "radius", est["confidence"])
    return {"key": point["key"], "row_format": ROW_FORMAT, "dataset": data.name,
            "attack": point["attack"], "family": point["family"],
            "trigger": repr(trig), "trigger_type": point["trigger"]["type"],
            "trigger_size": point["trigger"].get("size", 1), "trigger_l2": l2,
            "trigger_linf": linf, "poisoning": point["poisoning"],
            "target_mode": point["target_mode"],
            "rate": point["rate"], "target": point["target"], "seed": point["seed"],
            "model": point["model"], "epochs": run.config["epochs"],
            "max_train": point["max_train"], "clean_accuracy": run.clean_accuracy,
            "attack_success_rate": run.attack_success_rate,
            "gap": c.gap, "gap_ci_low": c.gap_ci[0], "gap_ci_high": c.gap_ci[1],
            "p_value": c.p_value, "radius_gap": rad["gap"], "radius_gap_ci_low": rad["gap_ci"][0],
            "radius_gap_ci_high": rad["gap_ci"][1], "radius_p_value": rad["p_value"],
            "clean_mean_W": float(c.clean_summary.mean()),
            "triggered_mean_W": float(c.triggered_summary.mean()), "n_pairs": c.n_pairs,
            "n_samples": point["n_samples"], "sigma_min": sig[0], "sigma_max": sig[-1],
            "sigmas": tuple(float(x) for x in sig),
            "clean_curve": tuple(float(x) for x in c.clean.entropy.mean(axis=0)),
            "triggered_curve": tuple(float(x) for x in c.triggered.entropy.mean(axis=0)),
            "train_seconds": run.train_seconds, "torch": torch.__version__,
            "workbench": __version__}


def _train_point(point: dict, data):
    """The run of a grid point (run cache): a trigger (crafted on the clean model of the same
    training settings and seed for LowFrequency and TrojanNN) poisoned with the point's poisoning
    and target mode, or the input-aware backdoor trained with its generator."""
    from .crafting import craft
    from .train import train_backdoor
    from .triggers import trigger_from_config

    common = dict(target=point["target"], model=point["model"], epochs=point["epochs"],
                  seed=point["seed"], batch_size=point["batch_size"], lr=point["lr"],
                  weight_decay=point["weight_decay"], max_train=point["max_train"], progress=False)
    cfg = dict(point["trigger"])
    kind = cfg.pop("type")
    if kind == "InputAware":
        from .input_aware import train_input_aware

        cfg.pop("cache_format", None)
        return train_input_aware(data, rate=point["rate"], **cfg, **common)
    if kind in CRAFTED:
        cfg.pop("crafted_on")
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
        clean = train_backdoor(data, rate=0.0, **dict(common, target=0))
        trig = craft(kind, data, target=point["target"], model=clean.model, seed=point["seed"],
                     **cfg)
    else:
        trig = trigger_from_config(point["trigger"])
    return train_backdoor(data, trigger=trig, rate=point["rate"], poisoning=point["poisoning"],
                          target_mode=point["target_mode"], epsilon=point["epsilon"],
                          pgd_steps=point.get("pgd_steps"), pgd_step_size=point.get("pgd_step_size"),
                          **common)


def _missing(v) -> bool:
    """A cell's missing value: None, pd.NA, NaN (not a tuple of a "floats" column)."""
    return v is None or v is pd.NA or (isinstance(v, float) and v != v)


def _frame(rows: list[dict]) -> pd.DataFrame:
    """Rows (dicts of `COLUMNS`) as a DataFrame with `COLUMN_TYPES` (also when there are none)."""
    df = pd.DataFrame([[r.get(c) for c in COLUMNS] for r in rows], columns=COLUMNS)
    for c, kind in COLUMN_TYPES.items():
        if kind == "float":
            df[c] = pd.to_numeric(df[c]).astype("float64")
        elif kind == "int":
            df[c] = df[c].astype("int64")
        elif kind == "Int64":
            df[c] = pd.array([None if _missing(v) else int(v) for v in df[c]], dtype="Int64")
        elif kind == "floats":
            df[c] = pd.Series([_floats(c, v) for v in df[c]], index=df.index, dtype=object)
        else:  # a missing text value is "", as a CSV's empty field reads (never "nan")
            df[c] = pd.Series(["" if _missing(v) else v for v in df[c]], index=df.index,
                              dtype=object).astype(str)
    return df


def _floats(column: str, value) -> tuple:
    """A "floats" cell as a tuple of floats: a tuple, list or 1-d array of numbers; None or a
    lone NaN (a cell pandas filled in) or "" (the CSV's missing value) is empty."""
    import numbers

    import numpy as np

    if value is None or (isinstance(value, float) and value != value) or (
            isinstance(value, str) and value == ""):
        return ()
    items = value.tolist() if isinstance(value, np.ndarray) and value.ndim == 1 else value
    if not isinstance(items, (tuple, list)) or not all(
            isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_)) for x in items):
        raise TypeError(f"`{column}` must hold tuples of floats (one per σ); got {value!r}.")
    return tuple(float(x) for x in items)


def _records(table: pd.DataFrame) -> list[dict]:
    """The rows of a table as dicts of plain Python values (None where missing: NaN in a text or
    integer column, e.g. one pandas filled in when concatenating tables, is missing, not "nan")."""
    out = []
    for r in table[COLUMNS].to_dict("records"):
        out.append({k: (_floats(k, v) if COLUMN_TYPES.get(k) == "floats" else
                        None if _missing(v) else
                        v.item() if hasattr(v, "item") else v)
                    for k, v in r.items()})
    return out


def run_identity(table: pd.DataFrame) -> pd.DataFrame:
    """The `RUN_COLUMNS` of `table`'s rows (same index), each missing value made one value: "" in
    a text column, <NA> in a number column (Float64). A column the table lacks (a table built by
    hand, or of an older layout) is missing in every row: rows of older row formats have a
    well-defined identity, and one without an attack never equals one with."""
    if not isinstance(table, pd.DataFrame):
        raise TypeError("`table` must be a pandas DataFrame of sweep rows (as `read_table` "
                        f"returns); got {type(table).__name__}.")
    out = {}
    for c in RUN_COLUMNS:
        values = table[c].tolist() if c in table.columns else [None] * len(table)
        if COLUMN_TYPES[c] == "str":
            out[c] = pd.Series(["" if _missing(v) else str(v) for v in values], index=table.index,
                               dtype=object)
        else:
            out[c] = pd.Series([pd.NA if _missing(v) else float(v) for v in values],
                               index=table.index, dtype="Float64")
    return pd.DataFrame(out, index=table.index)


def latest_per_run(table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One row per trained run (`run_identity`): the last one in the table, and how many rows were
    left out.

    A CSV can hold a run twice under different keys (measured again after a change of settings
    or of the estimator); both rows come from one model, so a correlation over runs counts it
    once. Rows of different attacks, poisoning or target modes, or training subsets are different
    runs, whatever else they share.
    """
    later = run_identity(table).duplicated(keep="last").to_numpy()
    return table[~later], int(later.sum())


def current_rows(table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The rows of `table` made by this version's row format, and how many others it held (rows of
    older tables, or of another version of the workbench): those are never mixed into a result."""
    _check_table("table", table)
    keep = (table["row_format"] == ROW_FORMAT).fillna(False).astype(bool)
    return table[keep], int((~keep).sum())


def write_table(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a sweep table (a DataFrame with `COLUMNS`, e.g. a filtered `read_table`) to `path` as
    a sweep CSV, atomically; `read_table` reads it back equal."""
    _check_table("table", table)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or an os.PathLike; got {path!r}.")
    return atomic_write(path, (_HEADER + b"".join(_csv_line(r) for r in _records(table))).decode())


def _check_table(name: str, table) -> None:
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"`{name}` must be a pandas DataFrame of sweep rows (as `read_table` returns); "
                        f"got {type(table).__name__}.")
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"`{name}` must have every sweep column; it lacks {', '.join(missing)}.")


class SweepFileError(ValueError):
    """A sweep CSV that cannot be appended to safely: not a sweep table, or rows written to it
    could not be read back."""


def _csv_line(row: dict) -> bytes:
    """One CSV record, on one physical line: the torn-tail repair relies on it."""
    values = ["" if row.get(c) is None else
              ";".join(repr(x) for x in _floats(c, row[c])) if COLUMN_TYPES[c] == "floats" else
              row.get(c) for c in COLUMNS]
    for c, v in zip(COLUMNS, values):
        if isinstance(v, str) and ("\n" in v or "\r" in v):
            raise ValueError(f"`row[{c!r}]` must be one line of text; got {v!r}.")
    buf = io.StringIO()
    csv.writer(buf).writerow(values)
    return buf.getvalue().encode("utf-8")


def _fields(line: bytes) -> list[str] | None:
    """The fields of one physical line, or None when it is not one whole record (a torn quote)."""
    text = line.decode("utf-8", errors="replace").rstrip("\r")
    try:
        return next(csv.reader([text], strict=True))
    except (csv.Error, StopIteration):
        return None


def _csv_record(fields: list[str]) -> bytes:
    """One CSV record as the csv module writes it (quoted where needed, CRLF)."""
    buf = io.StringIO()
    csv.writer(buf).writerow(fields)
    return buf.getvalue().encode("utf-8")


_HEADER = _csv_record(COLUMNS)


def _layout(line: bytes) -> list[str] | None:
    """The columns of a table whose first line (without its newline) is `line`: `COLUMNS` for this
    version's header or a proper beginning of it (a crash while the file was created, after which
    older versions appended rows), an older header's columns for that header (or a beginning of
    it only), None when it is not a sweep table."""
    text = line.rstrip(b"\r")
    fields = _fields(line)
    if fields == COLUMNS or _HEADER.startswith(text):
        return COLUMNS
    for old in _OLDER_COLUMNS:
        if fields == old or _csv_record(old).startswith(text):
            return old
    return None


def _not_a_table(path: Path) -> SweepFileError:
    return SweepFileError(f"`path` {path} is not a sweep table of this workbench (its first line is "
                          f"not the header {','.join(COLUMNS[:3])},...): choose another path "
                          "(nothing was changed).")


def _parse_value(kind: str, text: str):
    """One field's value; ValueError when it cannot be one of `kind`."""
    if kind == "str":
        return text
    if kind == "floats":  # repr of each float: read back exactly
        return tuple(float(x) for x in text.split(";")) if text else ()
    if text == "":
        if kind in ("float", "Int64"):
            return None
        raise ValueError("missing")
    if kind == "float":
        return float(text)
    try:  # "int", "Int64"
        return int(text)
    except ValueError:
        v = float(text)  # "3.0" is accepted, "3.5" is not
        if not v.is_integer():
            raise
        return int(v)


def _parse(data: bytes, path: Path) -> list[dict]:
    """Every complete row of a sweep CSV's bytes, in file order, duplicates included, each value
    of its column's type (`COLUMN_TYPES`); rows of a legacy table have row_format None.

    Each physical line is parsed on its own, so a line torn inside a quoted field (by older
    versions, which appended after it) cannot swallow the rows after it; the text after the last
    newline is a torn write and is left out, and so is a line with a value its column cannot hold.
    """
    lines = data.split(b"\n")[:-1]
    if not lines:
        return []
    columns = _layout(lines[0])
    if columns is None:
        raise _not_a_table(path)
    rows = []
    for line in lines[1:]:
        vals = _fields(line)
        if vals is None or len(vals) != len(columns) or not vals[0]:
            continue  # torn by an interrupted write
        try:
            r = {k: _parse_value(COLUMN_TYPES[k], v) for k, v in zip(columns, vals)}
        except ValueError:
            continue
        # a row of an older table lacks the newer columns: missing values
        rows.append({c: r.get(c, _MISSING.get(COLUMN_TYPES[c])) for c in COLUMNS})
    return rows


_MISSING = {"str": "", "floats": ()}  # a column an older table lacks; None for the others


def _latest_by_key(rows: list[dict]) -> dict[str, dict]:
    """One row per key: the last complete one (two sweeps, or older versions, may have written a
    key twice; counting both would weigh that point twice)."""
    out: dict[str, dict] = {}
    for r in rows:
        out.pop(r["key"], None)
        out[r["key"]] = r
    return out


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """The rows of a sweep CSV as a pandas DataFrame: one row per key (the last complete one), the
    columns `COLUMNS` with their types (`COLUMN_TYPES`), in file order. Damaged lines (interrupted
    writes) are skipped; a missing file gives an empty table. Rows of every row format are read:
    `current_rows` keeps this version's. Raises SweepFileError when the file is not a sweep table."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or an os.PathLike; got {path!r}.")
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return _frame([])
    return _frame(list(_latest_by_key(_parse(data, path)).values()))


class _Store:
    """The CSV of a sweep with its lock and claims (see the module's docstring)."""

    def __init__(self, path: Path):
        self.path = path
        self.lock_path = path.with_name(f".{path.name}.lock")
        self.claims = path.with_name(f".{path.name}.claims")
        self.torn_path = path.with_name(f"{path.name}.torn")
        self._seen: tuple | None = None  # (inode, size, mtime) of the last parse
        self._rows: list[dict] = []
        self._written: dict[str, bytes] = {}  # key -> the line this sweep appended

    @contextmanager
    def locked(self):
        if fcntl is None:  # pragma: no cover - Windows
            yield
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _read(self) -> list[dict]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._seen, self._rows = None, []
            return self._rows
        seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        if seen != self._seen:
            self._rows, self._seen = _parse(self.path.read_bytes(), self.path), seen
        return self._rows

    def finished(self) -> dict[str, dict]:
        """key -> row of every point finished so far, after repairing a torn tail: rows of this
        row format, and of the older formats a sweep completes (`_COMPLETABLE`, where no row of
        this format has the key)."""
        with self.locked():
            self._repair()
            rows = self._read()
            older = _latest_by_key([r for r in rows if r["row_format"] in _COMPLETABLE])
            return {**older, **_latest_by_key([r for r in rows if r["row_format"] == ROW_FORMAT])}

    def _repair(self) -> None:
        """Make the file end with a complete record, the lock held. A torn tail (a write cut by a
        crash) would otherwise glue the next row onto it, or, torn inside a quoted field, swallow
        it; a torn header would hide every row. Fragments go to NAME.torn, never deleted."""
        try:
            with open(self.path, "rb") as f:  # the usual case, a sound file, without reading it all
                head = f.read(len(_HEADER))
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - 1))
                if not size or (head == _HEADER and f.read(1) == b"\n"):
                    return
        except FileNotFoundError:
            return
        data = self.path.read_bytes()
        first = data.find(b"\n") + 1  # 0: no complete line
        line = data[:first - 1] if first else data  # one line without newline: all of the file
        columns = _layout(line)
        if columns is None:
            raise _not_a_table(self.path)
        if columns is not COLUMNS:
            self._upgrade(data, first, columns)
            return
        header_ok = first > 0 and _fields(line) == COLUMNS
        end = data.rfind(b"\n") + 1
        if header_ok and end == len(data):
            return
        fragments = [data[end:]] if end < len(data) else []
        if header_ok:
            self._set_aside(fragments)
            os.truncate(self.path, end)
        else:  # the header was torn: no complete row can precede it, so rewrite it in place
            body = _HEADER + (data[first:end] if first else b"")
            self._set_aside(([data[:first]] if first else []) + fragments)
            atomic_write(self.path, body)
        warnings.warn(f"{self.path}: an interrupted write was repaired (the torn text is kept in "
                      f"{self.torn_path}); its row will be computed again.", stacklevel=4)

    def _upgrade(self, data: bytes, first: int, columns: list[str]) -> None:
        """Rewrite a table with an older header, `columns` (the lock held), with this version's
        header: its complete rows keep their values, the columns they lack left empty (their row
        format is older or empty: they are read, never reused), every other line is kept as it was;
        a torn header or tail goes to NAME.torn."""
        end = data.rfind(b"\n") + 1
        torn = [] if first and _fields(data[:first - 1]) == columns else [data[:first or None]]
        if end < len(data) and first:
            torn.append(data[end:])
        out, n = [], 0
        for ln in (data[first:end].split(b"\n")[:-1] if first else []):
            vals = _fields(ln)
            if vals is not None and len(vals) == len(columns) and vals[0]:
                old = dict(zip(columns, vals))
                ln, n = _csv_record([old.get(c, "") for c in COLUMNS]).rstrip(b"\r\n"), n + 1
            out.append(ln.rstrip(b"\r") + b"\r\n")
        if torn:
            self._set_aside(torn)
        atomic_write(self.path, _HEADER + b"".join(out))
        completable = ", ".join(map(str, sorted(_COMPLETABLE)))
        warnings.warn(f"{self.path} is a sweep table of an older workbench (row format before "
                      f"{ROW_FORMAT}): its header was upgraded to row format {ROW_FORMAT}; its {n} "
                      "rows are kept with their older or an empty row_format (rows of row format "
                      f"{completable} are completed from the sweep's grid points where their keys "
                      "match, with no training or measuring; older ones are never reused: they "
                      "are computed again)"
                      + (f", and torn text was moved to {self.torn_path}" if torn else "") + ".",
                      stacklevel=4)

    def _set_aside(self, fragments: list[bytes]) -> None:
        with open(self.torn_path, "ab") as f:
            for frag in fragments:
                f.write(frag if frag.endswith(b"\n") else frag + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def append(self, row: dict) -> None:
        """Append one row, then check that every row this sweep wrote reads back."""
        line = _csv_line(row)
        with self.locked():
            self._repair()
            new = not self.path.exists() or self.path.stat().st_size == 0
            with open(self.path, "ab") as f:  # one write per row: earlier rows are never rewritten
                f.write((_HEADER if new else b"") + line)
                f.flush()
                os.fsync(f.fileno())
            self._written[row["key"]] = line.rstrip(b"\r\n")
            data = self.path.read_bytes()
            lines = {ln.rstrip(b"\r") for ln in data.split(b"\n")[:-1]}
            keys = {r["key"] for r in _parse(data, self.path)}
            lost = [k for k, ln in self._written.items() if ln not in lines or k not in keys]
            if lost:
                raise SweepFileError(
                    f"{self.path}: {len(lost)} of the {len(self._written)} rows this sweep wrote "
                    f"do not read back (first: key {lost[0]}); something else changed the file. "
                    "Run the sweep again to recompute the missing rows.")

    def claim(self, key: str) -> int | None:
        """An flocked claim file for `key`'s point, or None when another sweep holds it."""
        if fcntl is None:  # pragma: no cover - Windows
            return -1
        self.claims.mkdir(exist_ok=True)
        p = self.claims / f"{key}.lock"
        while True:
            fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:  # its last holder may have removed it between our open and our lock
                current = os.stat(p).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                os.write(fd, f"{os.getpid()}\n".encode())  # for a person looking: who computes it
                return fd
            os.close(fd)

    def release(self, key: str, fd: int | None) -> None:
        if fd is None or fd < 0:
            return
        try:
            (self.claims / f"{key}.lock").unlink(missing_ok=True)  # while still held: see claim
        finally:
            os.close(fd)


def _init_worker(threads: int, parent: int | None = None) -> None:
    """Set up a worker: torch's threads; with `parent` (the sweep's process id), ignore Ctrl-C
    (the sweep stops its workers itself) and exit when the parent dies."""
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    if parent is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _exit_with_parent(parent)
        # tqdm's default lock is a multiprocessing semaphore, which a worker stopped by Ctrl-C
        # cannot release: the resource tracker would then warn of a leak. Workers draw no bars.
        from tqdm import tqdm as _tqdm

        _tqdm.set_lock(threading.RLock())


def _exit_with_parent(parent: int) -> None:
    """A worker whose sweep was killed would otherwise finish its run (minutes, hundreds of MB)
    for nobody: Linux kills it with the parent (PR_SET_PDEATHSIG); elsewhere a thread notices the
    new parent within a second."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the thread below
            pass
    if os.getppid() != parent:  # died before the line above
        os._exit(1)

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="workbench-exit-with-parent", daemon=True).start()


def local_executor(max_workers: int | None = None) -> cf.Executor:
    """A process pool (spawned, so no forked torch threads), threads shared fairly. Its workers
    ignore Ctrl-C and exit when this process dies."""
    n = max_workers or max(1, (os.cpu_count() or 1) // 2)
    threads = max(1, (os.cpu_count() or 1) // n)
    return cf.ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                  initargs=(threads, os.getpid()))


def _stop_workers(ex: cf.ProcessPoolExecutor) -> None:
    """End a pool's workers now, running points included (an interrupted sweep must not wait for
    them; exiting would, in concurrent.futures' exit handler)."""
    terminate = getattr(ex, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    procs = list((getattr(ex, "_processes", None) or {}).values())  # shutdown() forgets them
    for p in procs:
        p.terminate()
    ex.shutdown(wait=True, cancel_futures=True)  # quick: the pool sees its workers gone


class _Inline(cf.Executor):
    """Runs each point in this process when it is submitted."""

    def submit(self, fn, /, *args, **kwargs):
        f = cf.Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - reported with its point by SweepError
            f.set_exception(exc)
        return f


def dask_executor(client, threads_per_worker: int | None = None) -> cf.Executor:
    """A concurrent.futures view of a Dask `distributed.Client`, with torch's thread count set on
    every worker (default: the worker's cores / its number of worker processes on that host) so
    that workers do not oversubscribe the cores (measured: 2 unpinned workers on 2 cores ran the
    default sweep 2.1x slower than 2 pinned local processes)."""
    info = client.scheduler_info()["workers"]
    per_host: dict[str, int] = {}
    for w in info.values():
        host = w.get("host", "")
        per_host[host] = per_host.get(host, 0) + 1

    def pin(dask_worker=None):
        n = threads_per_worker or max(1, (os.cpu_count() or 1) // max(1, max(per_host.values(), default=1)))
        _init_worker(n)
        return n

    client.run(pin)
    return client.get_executor()


_POLL = 0.5  # seconds between looks at points another sweep is computing
SWEEP_CSV = "reports/sweep.csv"  # the default table of a grid of triggers


def default_table(grid: SweepGrid) -> str:
    """Where `run_sweep` writes `grid`'s rows unless told: `workbench.atlas.ATLAS_CSV`
    (reports/atlas.csv) for a grid of attacks (`SweepGrid(attacks=...)`, `atlas_grid`), SWEEP_CSV
    (reports/sweep.csv) for a grid of triggers: the command line's defaults (`sweep --atlas`,
    `sweep`) and the tables `paper_report` reads."""
    if not isinstance(grid, SweepGrid):
        raise TypeError(f"`grid` must be a SweepGrid; got {type(grid).__name__}.")
    return ATLAS_CSV if grid.attacks is not None else SWEEP_CSV


class _DefaultTable:
    """`run_sweep`'s default `path`: `default_table(grid)`."""

    def __repr__(self) -> str:
        return "default_table(grid)"


_DEFAULT_TABLE = _DefaultTable()


def _complete(row: dict, point: dict) -> dict:
    """A row of an older format of `_COMPLETABLE` (its key is `point`'s) as this format: the
    columns it lacks take the point's values."""
    return dict(row, row_format=ROW_FORMAT,
                **{c: point[c] for c in _COMPLETABLE[row["row_format"]]})


def run_sweep(grid: SweepGrid, path: str | os.PathLike | None = _DEFAULT_TABLE,
              executor: cf.Executor | None = None, max_workers: int | None = None,
              resume: bool = True, progress: bool = True) -> pd.DataFrame:
    """Run every grid point not already in `path`; return all rows of the grid as a DataFrame
    (as `read_table`'s, in the grid's order); `.attrs["computed"]` lists the keys this call
    computed itself (the others were read back from `path`).

    path: the CSV (default `default_table(grid)`: reports/atlas.csv for a grid of attacks,
    reports/sweep.csv otherwise), or None for no file. A row of row format 4 (before `max_train`)
    whose key is a grid point's is completed from the point and appended, not computed again.

    executor: any concurrent.futures.Executor (None: a local process pool of `max_workers`,
    or in-process when max_workers == 1). Rows are appended to `path` as they finish.
    Other sweeps may use `path` at the same time: a point one of them is computing is not
    computed again here; its row is read back when it is done. Ctrl-C (KeyboardInterrupt) stops
    the local workers at once; finished rows stay in `path`. Raises SweepFileError when `path` is
    not a sweep table or a row written to it does not read back, SweepError when runs failed.
    """
    if not isinstance(grid, SweepGrid):
        raise TypeError(f"`grid` must be a SweepGrid; got {type(grid).__name__}.")
    if path is _DEFAULT_TABLE:
        path = default_table(grid)
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be None, a str or an os.PathLike; got {path!r}.")
    if executor is not None and not isinstance(executor, cf.Executor):
        raise TypeError(f"`executor` must be None or a concurrent.futures.Executor; got "
                        f"{type(executor).__name__}.")
    if max_workers is not None:
        check_int("max_workers", max_workers, low=1)
    for name, flag in (("resume", resume), ("progress", progress)):
        if not isinstance(flag, bool):
            raise TypeError(f"`{name}` must be a bool; got {flag!r}.")
    points = grid.points()
    store = None
    done: dict[str, dict] = {}
    if path is not None:
        path = Path(path)
        if not resume and path.exists():
            raise FileExistsError(f"`path` {path} exists; pass resume=True to continue it or "
                                  "choose another path (nothing was overwritten).")
        path.parent.mkdir(parents=True, exist_ok=True)
        store = _Store(path)
        done = store.finished()

    def reuse(p: dict, row: dict) -> dict:
        """A finished row of point `p`: completed (and appended) when of an older format."""
        if row["row_format"] != ROW_FORMAT:
            row = _complete(row, p)
            store.append(row)
        done[p["key"]] = row
        return row

    for p in points:
        if p["key"] in done:
            reuse(p, done[p["key"]])
    waiting = [p for p in points if p["key"] not in done]
    bar = tqdm(total=len(points), initial=len(points) - len(waiting), desc="sweep", unit="run",
               disable=not progress)
    own = executor is None and (max_workers or 0) != 1 and len(waiting) > 1
    ex = local_executor(max_workers) if own else (executor or _Inline())
    # claim no more points than can run at once, so that other sweeps can take the rest
    if isinstance(ex, _Inline):
        limit = 1
    else:
        limit = max_workers or getattr(ex, "_max_workers", None) or max(1, len(waiting))
    failures: list[tuple[dict, BaseException]] = []
    computed: list[str] = []
    running: dict[cf.Future, tuple[dict, int | None]] = {}
    finished_ok = False
    try:
        while waiting or running:
            for p in list(waiting):
                if len(running) >= limit:
                    break
                claim = store.claim(p["key"]) if store is not None else None
                if store is not None and claim is None:
                    continue  # another sweep is computing it
                waiting.remove(p)
                submitted = False
                try:
                    row = store.finished().get(p["key"]) if store is not None else None
                    if row is not None:  # another sweep finished it since we looked
                        reuse(p, row)
                        bar.update(1)
                        continue
                    try:
                        running[ex.submit(run_point, p)] = (p, claim)
                        submitted = True
                    except Exception as exc:  # noqa: BLE001 - e.g. a pool broken by a lost worker
                        failures.append((p, exc))
                        bar.update(1)
                finally:
                    if not submitted and store is not None:
                        store.release(p["key"], claim)
            if not running:
                if waiting:  # every point left is another sweep's: look again soon
                    bar.set_postfix(waiting_for_other_sweep=len(waiting))
                    time.sleep(_POLL)
                continue
            ready, _ = cf.wait(running, timeout=_POLL if waiting else None,
                               return_when=cf.FIRST_COMPLETED)
            for f in ready:
                point, claim = running.pop(f)
                try:
                    try:
                        row = f.result()
                    except Exception as exc:  # noqa: BLE001 - a run's error, or a lost worker
                        failures.append((point, exc))  # one failed run does not stop the others
                        bar.set_postfix(failed=len(failures))
                        row = None
                    if row is not None and store is not None:
                        store.append(row)
                finally:
                    if store is not None:
                        store.release(point["key"], claim)
                if row is not None:
                    done[row["key"]] = row
                    computed.append(row["key"])
                bar.update(1)
        finished_ok = True
    finally:
        for point, claim in running.values():
            if store is not None:
                store.release(point["key"], claim)
        bar.close()
        if own:
            if finished_ok:
                ex.shutdown(wait=True, cancel_futures=True)
            else:
                _stop_workers(ex)
    table = _frame([_normalise(done[p["key"]]) for p in points if p["key"] in done])
    table.attrs["computed"] = computed
    if failures:
        raise SweepError(failures, table, path)
    return table


class SweepError(RuntimeError):
    """Some runs of a sweep failed. The others finished and were saved; `table` holds them and
    `failures` the (grid point, exception) pairs. Running the sweep again retries only the
    failed points (the finished ones are read back from the CSV)."""

    def __init__(self, failures: list[tuple[dict, BaseException]], table: pd.DataFrame,
                 path: Path | None):
        self.failures, self.table, self.path = failures, table, path
        lines = [f"  {_describe(p)}: {type(e).__name__}: {e}" for p, e in failures[:10]]
        if len(failures) > 10:
            lines.append(f"  … and {len(failures) - 10} more")
        saved = f"saved in {path}" if path is not None else "in `.table`"
        super().__init__(f"{len(failures)} of {len(failures) + len(table)} runs failed "
                         f"({len(table)} finished, {saved}; run the sweep again to retry the "
                         "failed ones):\n" + "\n".join(lines))


def _describe(point: dict) -> str:
    trig = point["trigger"]
    size = f" {trig['size']}" if "size" in trig else ""
    return (f"{point['dataset']} {trig['type']}{size} rate {point['rate']} target "
            f"{point['target']} seed {point['seed']}")


def _normalise(row: dict) -> dict:
    return {k: row.get(k) for k in COLUMNS}


_MOVED = {
    "SweepTable": "SweepTable was replaced by a pandas DataFrame: `read_table` and `run_sweep` return "
                  "one. table.rows -> df.to_dict('records'); table.column(c) -> df[c].to_numpy(); "
                  "table.filter(rate=0) -> df[df.rate == 0]; table.sort(c) -> df.sort_values(c); "
                  "table.computed -> df.attrs['computed']; table.to_csv(p) -> "
                  "workbench.sweep.write_table(df, p); current rows only -> current_rows(df).",
}


def __getattr__(name: str):
    if name in _MOVED:
        raise AttributeError(f"workbench.sweep.{name} no longer exists. {_MOVED[name]}")
    raise AttributeError(f"module 'workbench.sweep' has no attribute {name!r}")


__all__ = ["SweepGrid", "SweepError", "SweepFileError", "run_sweep", "read_table", "write_table",
           "current_rows", "latest_per_run", "run_identity", "default_table", "run_point",
           "point_key", "spearman_ci", "local_executor", "dask_executor", "trigger_config",
           "COLUMNS", "COLUMN_TYPES", "ROW_FORMAT", "KEY_FORMAT", "RUN_COLUMNS", "SWEEP_CSV",
           "ESTIMATOR_SETTINGS"]
