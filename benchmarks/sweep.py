"""Sweeps: the table's store (CSV before issue 19, SQLite now) and the throughput of whole sweeps.

    python benchmarks/sweep.py --store [--rows 200] [--read-rows 2000] [--writers 4]
    python benchmarks/sweep.py [--rates 0 0.05]   # whole sweeps; fewer rates for a quick look

--store: rows written and read per second by the sweep table's store, side by side: the CSV store
of commit d3b9045 (the last before SQLite: an flock'ed append, fsync'ed, then the whole file read
back and parsed to check that every row this sweep wrote is there; claim files) and
`workbench.sweepstore.SweepStore` (one SQLite transaction per row, synchronous=FULL, the rows this
store wrote looked up by their ids; claims as rows), on made-up rows (no training):
  - one writer appending `--rows` rows, and the same with the CSV export a sweep now writes after
    each row (`SweepStore.export(full=False)`: the row appended to the CSV beside the store);
  - `--writers` processes appending `--rows` rows each to one table at once (every row checked to
    read back once);
  - `read_table` of a table of `--read-rows` rows (CSV parsed vs SQLite read);
  - a claim and its release per point (claim files vs rows), and the lookup of one finished row
    among `--read-rows` (the old store re-parsed a changed file; the new one asks the index).
The old store is loaded from git (`git show d3b9045:workbench/sweep.py`): run it in a checkout.
Whole sweeps (no --store): the default grid (digits, Patch 2 and 3, 7 rates: 14 runs) trained from
a cold run cache, on 1 and 2 local worker processes and on a local Dask cluster of 2 workers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from workbench import sweepstore
from workbench.sweep import COLUMN_TYPES, ROW_FORMAT, SweepGrid, dask_executor, run_sweep

OLD = "d3b9045"  # the last commit with the CSV store
ROOT = Path(__file__).resolve().parent.parent


def old_source() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD}:workbench/sweep.py"],
                          check=True, capture_output=True, text=True).stdout


def load_old(path: str):
    """The sweep module of commit OLD, as `workbench._sweep_csv_store` (its relative imports
    resolve in today's package; only its store is used)."""
    spec = importlib.util.spec_from_file_location("workbench._sweep_csv_store", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def made_up_row(key: str) -> dict:
    """A whole row of made-up values, as wide as a real one (9 σ per curve)."""
    kinds = {"str": "x" * 8, "int": 1, "float": 0.123456789, "Int64": None,
             "floats": tuple(0.05 * i + 0.001 for i in range(9))}
    row = {c: kinds[t] for c, t in COLUMN_TYPES.items()}
    row.update(key=key, row_format=ROW_FORMAT, torch=torch.__version__,
               trigger="Patch(size=3, position='bottom-right', value=1.0, margin=1)")
    return row


# one writer process: append argv[3] rows with keys argv[4]-i to table argv[2] with store argv[1]
# (csv, sqlite), once every writer is ready (imports done, store open: "ready", then a line "go")
WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[6])
from sweep import load_old, made_up_row
from workbench import sweepstore
kind, path, n, who, old = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
store = load_old(old)._Store(Path(path)) if kind == "csv" else sweepstore.SweepStore(path)
rows = [made_up_row(f"{who}-{i}") for i in range(n)]
print("ready", flush=True)
sys.stdin.readline()
for r in rows:
    store.append(r)
print("done", flush=True)
"""


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def bench_store(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sweep-store-bench-"))
    old_file = tmp / "old_sweep.py"
    old_file.write_text(old_source())
    old = load_old(str(old_file))
    n = args.rows
    out = {}

    # one writer, n appends; the three stores interleaved row by row, so that a change of the
    # machine's load (other processes' disk writes) weighs on each alike
    paths = {k: tmp / f"one-{k}.csv" for k in ("csv", "sqlite", "sqlite+export")}
    stores = {"csv": old._Store(paths["csv"]), "sqlite": sweepstore.SweepStore(paths["sqlite"]),
              "sqlite+export": sweepstore.SweepStore(paths["sqlite+export"])}
    spent = dict.fromkeys(stores, 0.0)
    for i in range(n):
        for k, store in stores.items():
            t = time.perf_counter()
            store.append(made_up_row(f"k{i}"))
            if k == "sqlite+export":
                store.export(full=False)  # as run_sweep does after each row
            spent[k] += time.perf_counter() - t
    for k, path in paths.items():
        assert len(sweepstore.read_table(path)) == n, k
    out["append, 1 writer"] = (rate(n, spent["csv"]), rate(n, spent["sqlite"]))
    out["append + the sweep's CSV export, 1 writer"] = (rate(n, spent["csv"]),
                                                        rate(n, spent["sqlite+export"]))

    # several writers at once
    def writers(kind: str) -> float:
        path = Path(tempfile.mkdtemp(dir=tmp)) / "many.csv"
        procs = [subprocess.Popen([sys.executable, "-c", WRITER, kind, str(path), str(n), f"w{w}",
                                   str(old_file), str(Path(__file__).parent)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                 for w in range(args.writers)]
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        t = time.perf_counter()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:  # the last row written, not the interpreter's exit
            assert p.stdout.readline().strip() == "done"
        dt = time.perf_counter() - t
        for p in procs:
            assert p.wait() == 0
        keys = sweepstore.read_table(path)["key"]
        assert len(keys) == n * args.writers and keys.is_unique
        return rate(n * args.writers, dt)

    best = {"csv": 0.0, "sqlite": 0.0}
    for _ in range(2):  # alternated, the best of two each
        for kind in best:
            best[kind] = max(best[kind], writers(kind))
    out[f"append, {args.writers} writer processes at once (best of 2)"] = (best["csv"],
                                                                           best["sqlite"])

    # reading a table of m rows
    m = args.read_rows
    csv_path = tmp / "read.csv"
    csv_path.write_bytes(sweepstore.CSV_HEADER + b"".join(
        sweepstore.csv_line(made_up_row(f"r{i}")) for i in range(m)))
    sqlite_path = tmp / "read.sqlite"
    with sweepstore.SweepStore(sqlite_path) as s:
        s._insert([made_up_row(f"r{i}") for i in range(m)])  # one transaction (set-up only)

    def read(path, reader) -> float:
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            assert len(reader(path)) == m
            best = min(best, time.perf_counter() - t)
        return rate(m, best)

    out[f"read_table, {m} rows (best of 3)"] = (read(csv_path, old.read_table),
                                                read(sqlite_path, sweepstore.read_table))

    # a claim and its release per point; one finished row looked up
    k = 200
    old_store = old._Store(csv_path)
    new_store = sweepstore.SweepStore(sqlite_path)
    t = time.perf_counter()
    for i in range(k):
        old_store.release(f"p{i}", old_store.claim(f"p{i}"))
    csv_claims = rate(k, time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(k):
        new_store.release(f"p{i}", new_store.claim(f"p{i}"))
    out["claim + release"] = (csv_claims, rate(k, time.perf_counter() - t))

    def lookups(fn) -> float:
        t = time.perf_counter()
        for i in range(20):
            fn(i)
        return rate(20, time.perf_counter() - t)

    def old_lookup(i):  # as the old run_sweep did per point: the table changed since (an append)
        old_store._seen = None
        return old_store.finished().get(f"r{i}")

    out[f"finished row of one key, table of {m} rows"] = (
        lookups(old_lookup), lookups(lambda i: new_store.finished_row(f"r{i}")))
    new_store.close()

    print(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                      "python": platform.python_version(), "load": os.getloadavg()[0],
                      "rows": n, "read_rows": m, "writers": args.writers, "old": OLD}))
    print(f"{'operation':<62} {'CSV rows/s':>11} {'SQLite rows/s':>14} {'SQLite/CSV':>11}")
    for name, (c, s) in out.items():
        print(f"{name:<62} {c:11.1f} {s:14.1f} {s / c:10.2f}x")


def timed_sweep(grid, **kw):
    with tempfile.TemporaryDirectory() as d:
        os.environ["WORKBENCH_DATA"] = d  # cold cache: every run trains; workers inherit it
        t = time.perf_counter()
        table = run_sweep(grid, os.path.join(d, "sweep.csv"), progress=False, **kw)
        return time.perf_counter() - t, len(table)


def bench_sweeps(args) -> None:
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", action="store_true", help="the table's store, CSV vs SQLite")
    ap.add_argument("--rows", type=int, default=200, help="rows each writer appends")
    ap.add_argument("--read-rows", type=int, default=2000, help="rows of the table read back")
    ap.add_argument("--writers", type=int, default=4, help="writer processes at once")
    ap.add_argument("--rates", nargs="+", type=float, default=None)
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.store:
        bench_store(args)
    else:
        bench_sweeps(args)


if __name__ == "__main__":
    main()
