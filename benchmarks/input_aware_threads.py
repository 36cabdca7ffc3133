"""Applying an InputAware trigger (two tiny generator networks) to a few images: torch's default
thread count against one thread, by batch size, and what `InputAware.__call__` does now.

A small op run in parallel waits for every worker thread at each of the generators' ~20 layers; on
a loaded machine a descheduled worker stalls them all (issue 22: 0.7 s for 3 images with 2 threads,
1.3 ms with 1). `InputAware` runs batches of up to `input_aware.ONE_THREAD_MAX_PIXELS` pixels on one
thread (restored after); this script measures the side-by-side times that threshold rests on. Run
it on a quiet and on a loaded machine: one thread wins everywhere under load, and loses on a quiet
machine as batches grow.

    python benchmarks/input_aware_threads.py [--sizes 1 3 16 64 256 1024 4096] [--reps 15]

Random (untrained) generator weights: the time does not depend on them. Prints, per batch size,
the median wall time with the default threads, with one thread, their ratio, and the time of the
trigger's own call (which picks one or the other).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from workbench import input_aware as ia


def _median_seconds(fn, reps: int) -> float:
    fn()  # warm-up: first-call allocations and the thread pool's start
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def _with_threads(n: int, fn):
    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            fn()
        finally:
            torch.set_num_threads(before)
    return run


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="benchmarks/input_aware_threads.py")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 3, 16, 64, 256, 1024, 4096])
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--shape", type=int, nargs=3, default=[1, 16, 16], metavar=("C", "H", "W"))
    a = p.parse_args(argv)
    shape = tuple(a.shape)
    torch.manual_seed(0)
    trig = ia.InputAware(ia.TriggerNets(shape[0], 8).state_dict(), shape, 8)
    default = torch.get_num_threads()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, default threads {default}, "
          f"load average {load}, {platform.processor() or platform.machine()}; images {shape}, "
          f"threshold {ia.ONE_THREAD_MAX_PIXELS} pixels", flush=True)
    print(f"{'images':>7} {'default threads':>16} {'1 thread':>10} {'ratio':>7} "
          f"{'trigger call':>13} {'call uses':>10}", flush=True)
    for n in a.sizes:
        x = torch.rand((n, *shape), generator=torch.Generator().manual_seed(n))
        raw = lambda: trig._stamp_own(x)  # noqa: E731  the forward on the threads set now
        t_def = _median_seconds(_with_threads(default, raw), a.reps)
        t_one = _median_seconds(_with_threads(1, raw), a.reps)
        t_call = _median_seconds(lambda: trig(x), a.reps)
        uses = "1 thread" if x[0].numel() * n <= ia.ONE_THREAD_MAX_PIXELS else "default"
        print(f"{n:>7} {t_def * 1e3:>13.2f} ms {t_one * 1e3:>7.2f} ms {t_def / t_one:>6.1f}x "
              f"{t_call * 1e3:>10.2f} ms {uses:>10}", flush=True)
    assert torch.get_num_threads() == default


if __name__ == "__main__":
    main()
