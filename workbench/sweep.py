"""Grids of runs: dataset × trigger (type, size) × poisoning rate × target × seed.

Each grid point trains (through the run cache) and measures clean accuracy, ASR and the smoothing
gap, giving one row. Rows are appended to a CSV file as they finish, so an interrupted sweep
continues where it stopped (`resume=True`). Points run on any `concurrent.futures.Executor`:
local processes by default, a Dask cluster with `distributed.Client(...).get_executor()`.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import hashlib
import io
import itertools
import json
import math
import multiprocessing as mp
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from ._validate import check_choice, check_float, check_int, check_sigmas
from .data import DATASET_SHAPES, DATASETS
from .models import MODELS

COLUMNS = ["key", "dataset", "trigger", "trigger_type", "trigger_size", "rate", "target", "seed",
           "model", "epochs", "clean_accuracy", "attack_success_rate", "gap", "gap_ci_low",
           "gap_ci_high", "p_value", "radius_gap", "radius_p_value", "clean_mean_W",
           "triggered_mean_W", "n_pairs", "n_samples", "sigma_min", "sigma_max",
           "train_seconds", "torch", "workbench"]
_NUMERIC = {"trigger_size", "rate", "target", "seed", "epochs", "clean_accuracy",
            "attack_success_rate", "gap", "gap_ci_low", "gap_ci_high", "p_value", "radius_gap",
            "radius_p_value", "clean_mean_W", "triggered_mean_W", "n_pairs", "n_samples",
            "sigma_min", "sigma_max", "train_seconds"}
SIZED = ("Patch", "Checkerboard", "PatternPatch")


def trigger_config(kind: str, size: int) -> dict:
    """A trigger config from (type, size); size is ignored by triggers without one."""
    kinds = ("Patch", "Checkerboard", "Pixel", "Blend", "Sinusoid", "Warp")
    check_choice("trigger type", kind, kinds)
    check_int("trigger size", size, low=1)
    return {"type": kind, "size": size} if kind in SIZED else {"type": kind}


@dataclass(frozen=True)
class SweepGrid:
    """The grid; every combination of the tuples is one run."""

    datasets: tuple = ("digits",)  # dataset names
    trigger_types: tuple = ("Patch",)  # trigger class names
    trigger_sizes: tuple = (2, 3)  # patch sides (for sized triggers)
    rates: tuple = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1)  # rate 0 = clean control
    targets: tuple = (0,)  # target classes
    seeds: tuple = (0,)  # training seeds
    model: str = "small-cnn"  # architecture
    epochs: int | None = None  # None = the dataset's default
    n_pairs: int = 50  # clean/triggered test pairs per run
    n_samples: int = 64  # noisy samples per input and σ
    sigmas: tuple | None = None  # None = the dataset's default grid

    def __post_init__(self):
        for d in self.datasets:
            check_choice("datasets", d, DATASETS)
        for r in self.rates:
            check_float("rates", r, 0.0, 1.0)
        for s in self.trigger_sizes:
            check_int("trigger_sizes", s, low=1)
        for t in self.trigger_types:
            trigger_config(t, 1)
        for t in self.targets:
            check_int("targets", t, low=0)
        for s in self.seeds:
            check_int("seeds", s, low=0)
        if self.epochs is not None:
            check_int("epochs", self.epochs, low=1)
        check_choice("model", self.model, MODELS)
        self._check_fit()
        check_int("n_pairs", self.n_pairs, low=2)
        check_int("n_samples", self.n_samples, low=1)
        if self.sigmas is not None:
            check_sigmas("sigmas", self.sigmas)

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

    def _trigger_configs(self) -> list[dict]:
        """One config per trigger type and size (one per type for triggers without a size)."""
        return [trigger_config(kind, size) for kind in self.trigger_types
                for size in (self.trigger_sizes if kind in SIZED else (1,))]

    def points(self) -> list[dict]:
        pts, seen = [], set()
        for d, trig, rate, target, seed in itertools.product(
                self.datasets, self._trigger_configs(), self.rates, self.targets, self.seeds):
            p = {"dataset": d, "trigger": dict(trig), "rate": float(rate), "target": int(target),
                 "seed": int(seed), "model": self.model, "epochs": self.epochs,
                 "n_pairs": self.n_pairs, "n_samples": self.n_samples,
                 "sigmas": list(self.sigmas) if self.sigmas else None}
            p["key"] = point_key(p)
            if p["key"] not in seen:
                seen.add(p["key"])
                pts.append(p)
        return pts


def point_key(point: dict) -> str:
    blob = json.dumps({k: v for k, v in point.items() if k != "key"}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@lru_cache(maxsize=4)
def _dataset(name: str):
    from .data import load_dataset

    return load_dataset(name)


def run_point(point: dict) -> dict:
    """Train (or load) one grid point's run and measure it: one table row. Runs in workers."""
    import torch

    from . import __version__
    from .experiments import default_sigmas, smoothing_analysis
    from .smoothness import paired_gap
    from .train import train_backdoor
    from .triggers import trigger_from_config

    data = _dataset(point["dataset"])
    trig = trigger_from_config(point["trigger"])
    run = train_backdoor(data, trigger=trig, rate=point["rate"], target=point["target"],
                         model=point["model"], epochs=point["epochs"], seed=point["seed"],
                         progress=False)
    sig = point["sigmas"] or default_sigmas(data.name)
    an = smoothing_analysis(run, data, sig, n_pairs=point["n_pairs"], n_samples=point["n_samples"],
                            seed=point["seed"])
    c = an.comparison
    r_c = c.clean.smoothness_radius()
    r_t = c.triggered.smoothness_radius()
    rad = paired_gap(r_c, r_t, "radius")
    return {"key": point["key"], "dataset": data.name, "trigger": repr(trig),
            "trigger_type": point["trigger"]["type"], "trigger_size": point["trigger"].get("size", 1),
            "rate": point["rate"], "target": point["target"], "seed": point["seed"],
            "model": point["model"], "epochs": run.config["epochs"],
            "clean_accuracy": run.clean_accuracy, "attack_success_rate": run.attack_success_rate,
            "gap": c.gap, "gap_ci_low": c.gap_ci[0], "gap_ci_high": c.gap_ci[1],
            "p_value": c.p_value, "radius_gap": rad["gap"], "radius_p_value": rad["p_value"],
            "clean_mean_W": float(c.clean_summary.mean()),
            "triggered_mean_W": float(c.triggered_summary.mean()), "n_pairs": c.n_pairs,
            "n_samples": point["n_samples"], "sigma_min": sig[0], "sigma_max": sig[-1],
            "train_seconds": run.train_seconds, "torch": torch.__version__,
            "workbench": __version__}


@dataclass
class SweepTable:
    """Rows of a sweep: sort, filter, save as CSV, or hand to pandas."""

    rows: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> np.ndarray:
        return np.array([r[name] for r in self.rows])

    def sort(self, by: str, descending: bool = False) -> "SweepTable":
        check_choice("by", by, COLUMNS)
        return SweepTable(sorted(self.rows, key=lambda r: r[by], reverse=descending))

    def filter(self, predicate: Callable[[dict], bool] | None = None, **equals) -> "SweepTable":
        """Rows where predicate(row) holds and every column named in `equals` has that value."""
        for k in equals:
            check_choice("column", k, COLUMNS)
        keep = [r for r in self.rows if (predicate is None or predicate(r))
                and all(r[k] == v for k, v in equals.items())]
        return SweepTable(keep)

    def to_csv(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, COLUMNS)
            w.writeheader()
            w.writerows(self.rows)
        tmp.replace(path)
        return path

    def to_pandas(self):
        import pandas as pd  # optional

        return pd.DataFrame(self.rows, columns=COLUMNS)

    def _repr_html_(self) -> str:
        from .report import table_html

        show = ["dataset", "trigger_type", "trigger_size", "rate", "clean_accuracy",
                "attack_success_rate", "gap", "gap_ci_low", "gap_ci_high", "p_value"]
        return table_html([{k: r[k] for k in show} for r in self.rows])


def read_table(path: str | os.PathLike) -> SweepTable:
    """Rows from a sweep CSV; a damaged last line (an interrupted write) is skipped."""
    path = Path(path)
    if not path.exists():
        return SweepTable([])
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if None in r or any(r.get(c) is None for c in COLUMNS):
                continue  # torn line
            try:
                rows.append({k: (float(v) if k in _NUMERIC and v != "" else v) for k, v in r.items()})
            except ValueError:
                continue
    for r in rows:
        for k in ("trigger_size", "target", "seed", "epochs", "n_pairs", "n_samples"):
            if isinstance(r[k], float) and math.isfinite(r[k]):
                r[k] = int(r[k])
    return SweepTable(rows)


def _append_row(path: Path, row: dict) -> None:
    new = not path.exists() or path.stat().st_size == 0
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS)
    if new:
        w.writeheader()
    w.writerow(row)
    torn = False
    if not new:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"  # an interrupted write: start the row on a line of its own
    with open(path, "a", newline="") as f:  # one write per row: earlier rows are never rewritten
        f.write(("\n" if torn else "") + buf.getvalue())
        f.flush()
        os.fsync(f.fileno())


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("TQDM_DISABLE", "1")


def local_executor(max_workers: int | None = None) -> cf.Executor:
    """A process pool (spawned, so no forked torch threads), threads shared fairly."""
    n = max_workers or max(1, (os.cpu_count() or 1) // 2)
    threads = max(1, (os.cpu_count() or 1) // n)
    return cf.ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                  initargs=(threads,))


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


def run_sweep(grid: SweepGrid, path: str | os.PathLike | None = "reports/sweep.csv",
              executor: cf.Executor | None = None, max_workers: int | None = None,
              resume: bool = True, progress: bool = True) -> SweepTable:
    """Run every grid point not already in `path`; return all rows of the grid.

    executor: any concurrent.futures.Executor (None: a local process pool of `max_workers`,
    or in-process when max_workers == 1). Rows are appended to `path` as they finish.
    """
    if not isinstance(grid, SweepGrid):
        raise TypeError(f"`grid` must be a SweepGrid; got {type(grid).__name__}.")
    if max_workers is not None:
        check_int("max_workers", max_workers, low=1)
    points = grid.points()
    path = Path(path) if path is not None else None
    done: dict[str, dict] = {}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume:
            done = {r["key"]: r for r in read_table(path).rows}
        elif path.exists():
            raise FileExistsError(f"`path` {path} exists; pass resume=True to continue it or "
                                  "choose another path (nothing was overwritten).")
    todo = [p for p in points if p["key"] not in done]
    bar = tqdm(total=len(points), initial=len(points) - len(todo), desc="sweep", unit="run",
               disable=not progress)
    own = executor is None and (max_workers or 0) != 1 and len(todo) > 1
    ex = local_executor(max_workers) if own else executor
    failures: list[tuple[dict, BaseException]] = []
    try:
        for point, outcome in _outcomes(todo, ex):
            if isinstance(outcome, BaseException):  # one failed run does not stop the others
                failures.append((point, outcome))
                bar.set_postfix(failed=len(failures))
            else:
                done[outcome["key"]] = outcome
                if path is not None:
                    _append_row(path, outcome)
            bar.update(1)
    finally:
        bar.close()
        if own:
            ex.shutdown(wait=True, cancel_futures=True)
    table = SweepTable([_normalise(done[p["key"]]) for p in points if p["key"] in done])
    if failures:
        raise SweepError(failures, table, path)
    return table


def _outcomes(todo: list[dict], ex: cf.Executor | None) -> Iterator[tuple[dict, object]]:
    """(point, row or the exception it raised) for each point, in order of completion."""
    if ex is None:
        for p in todo:
            try:
                yield p, run_point(p)
            except Exception as exc:  # noqa: BLE001 - reported with its point by SweepError
                yield p, exc
        return
    futures = {ex.submit(run_point, p): p for p in todo}
    for f in cf.as_completed(futures):
        try:
            yield futures[f], f.result()
        except Exception as exc:  # noqa: BLE001 - a worker's error, or a lost worker
            yield futures[f], exc


class SweepError(RuntimeError):
    """Some runs of a sweep failed. The others finished and were saved; `table` holds them and
    `failures` the (grid point, exception) pairs. Running the sweep again retries only the
    failed points (the finished ones are read back from the CSV)."""

    def __init__(self, failures: list[tuple[dict, BaseException]], table: SweepTable,
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


def spearman_ci(x, y, confidence: float = 0.95) -> dict:
    """Spearman's rank correlation with a Fisher-z interval (SE = sqrt(1.06 / (n − 3)), Fieller,
    Hartley & Pearson 1957). Needs n >= 4 points."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n < 4:
        raise ValueError(f"`x` must have at least 4 points for a correlation interval; got {n}.")
    res = stats.spearmanr(x, y)
    rho = float(res.statistic)
    z = math.atanh(max(min(rho, 0.999999), -0.999999))
    half = stats.norm.ppf(0.5 + confidence / 2) * math.sqrt(1.06 / (n - 3))
    return {"rho": rho, "p_value": float(res.pvalue), "ci": (math.tanh(z - half), math.tanh(z + half)),
            "n": n}


__all__ = ["SweepGrid", "SweepTable", "run_sweep", "read_table", "run_point", "spearman_ci",
           "local_executor", "dask_executor", "trigger_config"]
