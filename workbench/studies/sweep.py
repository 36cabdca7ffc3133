"""Grids of runs: dataset × trigger (type, size) or attack × poisoning rate × target × seed.

Each grid point trains (through the run cache, by the one training path of every attack:
`attack_registry.train_from_config`) and measures clean accuracy, ASR and the smoothing gap,
giving one row. Rows go into a sweep table (`workbench.sweepstore`: a SQLite store beside the CSV
path users give, `reports/sweep.csv` -> `reports/sweep.sqlite`, whose CSV export the sweep
rewrites after each row) as they finish, one transaction per row, so an interrupted sweep
continues where it stopped (`resume=True`). Points run on any `concurrent.futures.Executor`: local processes
by default, a Dask cluster with `distributed.Client(...).get_executor()`.

A row is reused only when its key matches: the key covers everything its numbers depend on (the
run's settings with the dataset's defaults resolved, the resolved σ grid, the estimator's settings,
ESTIMATOR_VERSION, the training cache format and KEY_FORMAT), so rows made under other settings or
by older code never match and are computed again. Several sweeps may share one table: a sweep
claims each point it computes (a row of the store's claims, which dies with its process), so the
others skip it and read its row when it is done.

The table comes back as a pandas DataFrame (`read_table`, `run_sweep`): one row per key, columns
`COLUMNS` typed (`COLUMN_TYPES`). Every row says which `row_format` made it; `current_rows` keeps
those of this version. Rows of row format 4 lack only `max_train`: their keys are those of this
version, and a sweep that reuses one completes it from its grid point. `RUN_COLUMNS`,
`run_identity` and `latest_per_run` name a trained run. These names live in
`workbench.sweepstore` and are re-exported here, where users have always found them.

An atlas grid (`SweepGrid(attacks=...)`) writes to `ATLAS_CSV` (reports/atlas.csv) by default, any
other grid to `SWEEP_CSV` (reports/sweep.csv) (`default_table`), as the command line does.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import dataclasses
import hashlib
import inspect
import itertools
import json
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
import torch
from tqdm import tqdm as tqdm_std
from tqdm.auto import tqdm

from ..estimator import smoothness
from ..base._validate import check_choice, check_float, check_int, check_seed, check_sigmas
from .._version import __version__
from .attack_registry import ATTACKS, attack_rates, train_from_config, training_args, trigger_norms
from ..estimator.comparison import paired_gap
from ..training.crafting import CRAFT_VERSION, CRAFTERS
from ..base.data import DATASET_SHAPES, DATASETS, load_dataset
from .experiments import default_sigmas, smoothing_analysis
from ..training.input_aware import ATTACK_DEFAULTS as IA_DEFAULTS
from ..training.input_aware import CACHE_FORMAT as IA_CACHE_FORMAT
from ..training.input_aware import EPOCHS as IA_EPOCHS
from ..training.input_aware import prepare_input_aware_run
from ..base.models import MODELS
from ..attacks.poison import check_pgd
from ..estimator.stats import spearman_ci  # noqa: F401 - re-exported: it used to live here
# re-exported: users have always found the table's names here
from ..base.sweepstore import (COLUMN_TYPES, COLUMNS, COMPLETABLE, CSV_HEADER,  # noqa: F401
                               FORMAT3_COLUMNS, FORMAT4_COLUMNS, ROW_FORMAT, RUN_COLUMNS, SweepFileError,
                               SweepStore, check_table, csv_line, current_rows, export_csv,
                               latest_per_run, normalise_row, read_table, rows_frame, run_identity,
                               table_exists, write_table)
from ..training.train import CACHE_FORMAT as TRAIN_CACHE_FORMAT
from ..training.train import DEFAULTS as TRAIN_DEFAULTS
from ..training.train import prepare_run
from ..attacks.triggers import CRAFTED, TRIGGERS, Patch, trigger_from_config

# The version of what keys cover and of how a row's numbers are computed: bump it (and
# sweepstore.ROW_FORMAT) whenever a change in this module can move a number in a row or changes
# the key; bump ROW_FORMAT alone for a column whose value a grid point gives (then list it in
# sweepstore.COMPLETABLE). 2: keys cover the resolved σ grid and training defaults, the estimator's
# settings and versions; 3: row formats 3; 4: attacks (row format 4 and 5; see sweepstore).
KEY_FORMAT = 4

# The estimator settings every row is measured with: passed explicitly to the estimator by
# `run_point` and part of every key, so a change here can never reuse rows made with the old ones.
ESTIMATOR_SETTINGS = {
    "mode": "hard", "noise": "gaussian", "common_noise": False, "clip": None, "normalize": False,
    "bias_correction": None, "target_se": None, "precision": "fp32", "paired_noise": True,
    "summary": "mean", "confidence": 0.95,
    "radius_threshold": 0.1,  # the radius gap's threshold, as a fraction of log K
}
# Triggers a sweep builds from parameters: not PatternPatch (a user's array) nor the crafted ones
# (LowFrequency, TrojanNN: optimised on a clean model; sweep them as attacks of the atlas).
SWEEPABLE = tuple(k for k in TRIGGERS if k != "PatternPatch" and k not in CRAFTED)
SIZED = tuple(k for k in SWEEPABLE if "size" in TRIGGERS[k]._params)

SWEEP_CSV = "reports/sweep.csv"  # the default table of a grid of triggers
ATLAS_CSV = "reports/atlas.csv"  # the default table of a grid of attacks (`workbench.atlas`)


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
        ia_defaults = [IA_DEFAULTS[k] for k in ("lr_generator", "lambda_div", "lambda_norm",
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
                            prepare_input_aware_run(data, rate, rate, target, self.model, self.epochs,
                                                seed, None, None, 0.0, *ia_defaults,
                                                extra.get("max_train"))
                        else:
                            prepare_run(data, trig, rate, target, self.model, self.epochs, seed,
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
            train = TRAIN_DEFAULTS.get(d, TRAIN_DEFAULTS["digits"])
            sig = self.sigmas if self.sigmas is not None else default_sigmas(d)
            epochs = self.epochs if self.epochs is not None else train["epochs"]
            if attack is None or attack.kind not in CRAFTED + ("InputAware",):
                # every trigger parameter, defaults included (position, value, margin, ...): a
                # changed default is another trigger, so another key
                # (a default that follows the image size, FTrojan's magnitude, written out)
                trig = trigger_from_config(trig).resolve(_dataset(d).image_shape).to_config()
            elif attack.kind == "InputAware":  # its settings, with their defaults, as used
                trig = dict(trig, **IA_DEFAULTS, cache_format=IA_CACHE_FORMAT)
                trig.pop("rate")
                trig["cross_rate"] = float(rate)  # the paper's cross samples, at the same rate
                epochs = self.epochs if self.epochs is not None else IA_EPOCHS.get(
                    d, 2 * train["epochs"])
            else:  # crafted on the clean model of the same settings and seed (train_from_config),
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
                 "versions": {"row_format": KEY_FORMAT,
                              # read when the grid is made: a test may change it
                              "estimator": smoothness.ESTIMATOR_VERSION,
                              "train_cache": TRAIN_CACHE_FORMAT, "craft": CRAFT_VERSION,
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
    return load_dataset(name)


def run_point(point: dict) -> dict:
    """Train (or load) one grid point's run and measure it: one table row. Runs in workers.

    point: one of `SweepGrid.points()` (its settings are used as they are: nothing is defaulted).
    """
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
    """The run of a grid point (run cache), through the one training path of every attack
    (`attack_registry.train_from_config`): the point's trigger config less what only its key
    holds (`crafted_on`, InputAware's `cache_format`), JSON's lists as the crafting functions'
    tuples, with every training setting of the point given as resolved."""
    trig = {k: v for k, v in point["trigger"].items() if k not in ("crafted_on", "cache_format")}
    if trig["type"] in CRAFTED:
        trig = {k: tuple(v) if isinstance(v, list) else v for k, v in trig.items()}
    poison = {} if trig["type"] == "InputAware" else dict(
        poisoning=point["poisoning"], target_mode=point["target_mode"], epsilon=point["epsilon"],
        pgd_steps=point.get("pgd_steps"), pgd_step_size=point.get("pgd_step_size"))
    return train_from_config(data, trig, point["rate"], point["target"], point["model"],
                             point["epochs"], point["seed"], batch_size=point["batch_size"],
                             lr=point["lr"], weight_decay=point["weight_decay"],
                             max_train=point["max_train"], progress=False, **poison)


def _init_worker(threads: int, parent: int | None = None) -> None:
    """Set up a worker: torch's threads; with `parent` (the sweep's process id), ignore Ctrl-C
    (the sweep stops its workers itself) and exit when the parent dies."""
    torch.set_num_threads(threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    if parent is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _exit_with_parent(parent)
        # tqdm's default lock is a multiprocessing semaphore, which a worker stopped by Ctrl-C
        # cannot release: the resource tracker would then warn of a leak. Workers draw no bars.
        tqdm_std.set_lock(threading.RLock())


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
        except Exception as exc:
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


def default_table(grid: SweepGrid) -> str:
    """Where `run_sweep` writes `grid`'s rows unless told: ATLAS_CSV (reports/atlas.csv) for a
    grid of attacks (`SweepGrid(attacks=...)`, `atlas.atlas_grid`), SWEEP_CSV (reports/sweep.csv)
    for a grid of triggers: the command line's defaults (`sweep --atlas`, `sweep`) and the tables
    `paper_report` reads."""
    if not isinstance(grid, SweepGrid):
        raise TypeError(f"`grid` must be a SweepGrid; got {type(grid).__name__}.")
    return ATLAS_CSV if grid.attacks is not None else SWEEP_CSV


class _DefaultTable:
    """`run_sweep`'s default `path`: `default_table(grid)`."""

    def __repr__(self) -> str:
        return "default_table(grid)"


_DEFAULT_TABLE = _DefaultTable()


def _complete(row: dict, point: dict) -> dict:
    """A row of an older format of `COMPLETABLE` (its key is `point`'s) as this format: the
    columns it lacks take the point's values."""
    return dict(row, row_format=ROW_FORMAT,
                **{c: point[c] for c in COMPLETABLE[row["row_format"]]})


def run_sweep(grid: SweepGrid, path: str | os.PathLike | None = _DEFAULT_TABLE,
              executor: cf.Executor | None = None, max_workers: int | None = None,
              resume: bool = True, progress: bool = True) -> pd.DataFrame:
    """Run every grid point not already in table `path`; return all rows of the grid as a
    DataFrame (as `read_table`'s, in the grid's order); `.attrs["computed"]` lists the keys this
    call computed itself (the others were read back from the table).

    path: the table (default `default_table(grid)`: reports/atlas.csv for a grid of attacks,
    reports/sweep.csv otherwise), or None for no file. A path `NAME.csv` keeps its rows in the
    store `NAME.sqlite` (made on first use, importing `NAME.csv` if it exists, which is kept) and
    rewrites `NAME.csv` from the store after each row and when the sweep ends (finished, failed
    or interrupted): the CSV always holds the rows finished so far; a path `NAME.sqlite` is the
    store alone (see `workbench.sweepstore`). A row of row format 4
    (before `max_train`) whose key is a grid point's is completed from the point and appended,
    not computed again.

    executor: any concurrent.futures.Executor (None: a local process pool of `max_workers`,
    or in-process when max_workers == 1). Rows are appended to the store as they finish, one
    transaction each. Other sweeps may use the table at the same time: a point one of them is
    computing is not computed again here; its row is read back when it is done. Ctrl-C
    (KeyboardInterrupt) stops the local workers at once; finished rows stay in the table. Raises
    SweepFileError when `path` is not a sweep table or a row written to it does not read back,
    SweepError when runs failed.
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
    if path is not None:
        path = Path(path)
        if not resume and table_exists(path):
            raise FileExistsError(f"`path` {path} exists (or its store); pass resume=True to "
                                  "continue it or choose another path (nothing was overwritten).")
        store = SweepStore(path)
    try:
        table, computed, failures = _run(points, store, executor, max_workers, progress)
    finally:
        if store is not None:
            try:
                store.export()  # the CSV beside the store, rewritten: every row so far
            finally:
                store.close()
    table.attrs["computed"] = computed
    if failures:
        raise SweepError(failures, table, path)
    return table


def _run(points: list[dict], store: SweepStore | None, executor, max_workers, progress):
    """The sweep's loop: (the grid's rows as a DataFrame, keys computed here, failures)."""
    done = store.finished() if store is not None else {}

    def reuse(p: dict, row: dict) -> dict:
        """A finished row of point `p`: completed (and appended) when of an older format."""
        if row["row_format"] != ROW_FORMAT:
            row = _complete(row, p)
            store.append(row)
            store.export(full=False)
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
    running: dict[cf.Future, tuple[dict, str | None]] = {}
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
                    row = store.finished_row(p["key"]) if store is not None else None
                    if row is not None:  # another sweep finished it since we looked
                        reuse(p, row)
                        bar.update(1)
                        continue
                    try:
                        running[ex.submit(run_point, p)] = (p, claim)
                        submitted = True
                    except Exception as exc:
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
                    except Exception as exc:
                        failures.append((point, exc))  # one failed run does not stop the others
                        bar.set_postfix(failed=len(failures))
                        row = None
                    if row is not None and store is not None:
                        store.append(row)
                        store.export(full=False)  # the CSV beside the store follows it
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
    table = rows_frame([normalise_row(done[p["key"]]) for p in points if p["key"] in done])
    return table, computed, failures


class SweepError(RuntimeError):
    """Some runs of a sweep failed. The others finished and were saved; `table` holds them and
    `failures` the (grid point, exception) pairs. Running the sweep again retries only the
    failed points (the finished ones are read back from the table)."""

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


_MOVED = {
    "SweepTable": "SweepTable was replaced by a pandas DataFrame: `read_table` and `run_sweep` return "
                  "one. table.rows -> df.to_dict('records'); table.column(c) -> df[c].to_numpy(); "
                  "table.filter(rate=0) -> df[df.rate == 0]; table.sort(c) -> df.sort_values(c); "
                  "table.computed -> df.attrs['computed']; table.to_csv(p) -> "
                  "workbench.sweep.write_table(df, p); current rows only -> current_rows(df).",
    "_Store": "The sweep's CSV store with its lock and claim files was replaced by a SQLite store: "
              "workbench.sweepstore.SweepStore(path) (one transaction per row, claims as rows).",
}


def __getattr__(name: str):
    if name in _MOVED:
        raise AttributeError(f"workbench.sweep.{name} no longer exists. {_MOVED[name]}")
    raise AttributeError(f"module 'workbench.sweep' has no attribute {name!r}")


__all__ = ["SweepGrid", "SweepError", "SweepFileError", "run_sweep", "read_table", "write_table",
           "export_csv", "current_rows", "latest_per_run", "run_identity", "default_table",
           "run_point", "point_key", "spearman_ci", "local_executor", "dask_executor",
           "trigger_config", "COLUMNS", "COLUMN_TYPES", "ROW_FORMAT", "KEY_FORMAT", "RUN_COLUMNS",
           "SWEEP_CSV", "ATLAS_CSV", "ESTIMATOR_SETTINGS"]
