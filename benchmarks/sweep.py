"""Sweep throughput: the default grid (digits, Patch 2 and 3, 7 rates: 14 runs) trained from a
cold run cache, on 1 and 2 local worker processes and on a local Dask cluster of 2 workers.

    python benchmarks/sweep.py [--rates 0 0.05]   # fewer rates for a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import torch

from workbench.sweep import SweepGrid, dask_executor, run_sweep


def timed_sweep(grid, **kw):
    with tempfile.TemporaryDirectory() as d:
        os.environ["WORKBENCH_DATA"] = d  # cold cache: every run trains; workers inherit it
        t = time.perf_counter()
        table = run_sweep(grid, os.path.join(d, "sweep.csv"), progress=False, **kw)
        return time.perf_counter() - t, len(table)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", nargs="+", type=float, default=None)
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    grid = SweepGrid() if args.rates is None else SweepGrid(rates=tuple(args.rates))
    print(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                      "torch": torch.__version__, "runs": len(grid.points())}))
    rows = {}
    only_dask = os.environ.get("SWEEP_BENCH_ONLY_DASK") == "1"
    if not only_dask:
        rows["1 process (in-process)"] = timed_sweep(grid, max_workers=1)
        rows["2 local processes"] = timed_sweep(grid, max_workers=2)
    from distributed import Client, LocalCluster

    with tempfile.TemporaryDirectory() as d:
        os.environ["WORKBENCH_DATA"] = d
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            t = time.perf_counter()
            table = run_sweep(grid, os.path.join(d, "sweep.csv"), executor=dask_executor(client),
                              progress=False)
            rows["Dask LocalCluster, 2 workers"] = (time.perf_counter() - t, len(table))
    base = rows.get("1 process (in-process)", (float("nan"),))[0]
    local2 = rows.get("2 local processes", (float("nan"),))[0]
    for name, (sec, n) in rows.items():
        print(f"{name:<32} {sec:7.1f} s  {n} runs  {3600 * n / sec:6.0f} runs/h  "
              f"speed-up vs 1 process {base / sec:.2f}x  vs 2 local processes {local2 / sec:.2f}x")


if __name__ == "__main__":
    main()
