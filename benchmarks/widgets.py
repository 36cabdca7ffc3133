"""Interactivity: time from a slider change to the redrawn figure, on cached runs with default
settings (the callback runs synchronously in plain Python, as it does in a kernel), on digits
(16×16) and Fashion-MNIST (28×28); and the roughness of local-W landscapes with common noise
across the grid points against independent draws at equal samples.

    python benchmarks/widgets.py [--datasets digits fashion-mnist] [--only panels landscape]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

import workbench as wb
from workbench import widgets as wbw


def timed(set_value, reps=5):
    """(median, max, min) wall seconds of `reps` slider changes, and the median CPU seconds of
    this process (steadier on a shared machine: other sessions' load stretches the wall time;
    with one torch thread, CPU time is the wall time an idle machine would show)."""
    out, cpu = [], []
    for i in range(reps):
        t, c = time.perf_counter(), time.process_time()
        set_value(i)
        out.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(out), max(out), min(out), statistics.median(cpu)


def _line(label, t):
    print(f"{label}: median {t[0]:.3f} s, max {t[1]:.3f} s, min {t[2]:.3f} s; CPU median "
          f"{t[3]:.3f} s", flush=True)


def panels(name, results):
    data = wb.load_dataset(name)
    run = wb.train_backdoor(data, progress=False)
    top = wb.default_sigmas(name)[-1]
    ex = wbw.SmoothnessExplorer(run, data)
    s = ex.comparison.clean.settings
    print(f"[{name}] SmoothnessExplorer defaults: {ex.n_inputs.value} pairs x {ex.n_sigmas.value} σ "
          f"x {ex.n_samples.value} samples, noise_design={s.get('noise_design', 'iid')}, "
          f"batch {s['batch_size']}")
    vals = [top + 0.05 * k for k in (-2, -1, 1, 2, 3)]
    t1 = timed(lambda i: setattr(ex.sigma_max, "value", round(vals[i], 2)))
    _line(f"[{name}] SmoothnessExplorer, largest-σ slider (new computation)", t1)
    t2 = timed(lambda i: setattr(ex.sigma_max, "value", round(vals[i], 2)))
    _line(f"[{name}] SmoothnessExplorer, same values again (memoised)", t2)
    lx = wbw.LandscapeExplorer(run, data)
    t3 = timed(lambda i: setattr(lx.index, "value", i + 1))
    _line(f"[{name}] LandscapeExplorer (resolution {lx.resolution}), input slider", t3)
    row = {"dataset": name, "explorer_new": t1, "explorer_memo": t2, "landscape_21": t3}
    for res in (41,):
        for colour in ("class", "entropy"):
            lx = wbw.LandscapeExplorer(run, data, resolution=res)
            lx.colour.value = colour
            t = timed(lambda i: setattr(lx.index, "value", i + 1))
            _line(f"[{name}] LandscapeExplorer resolution {res}, colour {colour}, input slider", t)
            row[f"landscape_{res}_{colour}"] = t
    if name == "digits":
        td = wbw.TriggerDesigner(data)
        t4 = timed(lambda i: setattr(td.size, "value", 2 + i % 4))
        _line(f"[{name}] TriggerDesigner, size slider", t4)
        row["trigger_designer"] = t4
    results.setdefault("panels", []).append(row)


def roughness(m: np.ndarray) -> float:
    """Mean absolute difference between horizontal and vertical neighbours of a map."""
    return float(np.concatenate([np.abs(np.diff(m, axis=0)).ravel(),
                                 np.abs(np.diff(m, axis=1)).ravel()]).mean())


def landscape(name, results, n_inputs=3, resolution=41, n=16, sigma=0.3, ref_samples=256):
    """Local-W maps (LandscapeExplorer's settings: trigger × random plane, extent 3, σ 0.3, 16
    samples) with common vs independent draws; a 256-sample map (independent draws) is the
    reference for the maps' error (its own Monte-Carlo error is a quarter of theirs)."""
    data = wb.load_dataset(name)
    run = wb.train_backdoor(data, progress=False)
    pairs = wb.triggered_pairs(data.x_test, data.y_test, run.trigger, run.target, n=n_inputs)
    rows = []
    for j in range(n_inputs):
        for which, x in (("clean", pairs.clean[j]), ("triggered", pairs.triggered[j])):
            kw = dict(directions=("trigger", "random"), trigger=run.trigger, extent=3.0,
                      resolution=resolution, sigma=sigma, seed=0,
                      clean=pairs.clean[j] if which == "triggered" else None)
            ref = wb.landscape_2d(run.model, x, n_samples=ref_samples, common_noise=False,
                                  **kw).entropy
            row = {"input": j, "which": which, "reference": roughness(ref)}
            for common in (True, False):
                t = time.perf_counter()
                m = wb.landscape_2d(run.model, x, n_samples=n, common_noise=common, **kw).entropy
                key = "common" if common else "independent"
                row[key] = roughness(m)
                row[key + "_mae"] = float(np.abs(m - ref).mean())
                row[key + "_seconds"] = time.perf_counter() - t
            rows.append(row)
    summary = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("input", "which")}
    print(f"[{name}] local-W landscape {resolution}x{resolution}, σ {sigma}, {n} samples per point, "
          f"{len(rows)} maps: roughness common {summary['common']:.4f}, independent "
          f"{summary['independent']:.4f}, reference ({ref_samples} samples) {summary['reference']:.4f}; mean "
          f"|error| vs reference: common {summary['common_mae']:.4f}, independent "
          f"{summary['independent_mae']:.4f}; seconds per map: common "
          f"{summary['common_seconds']:.3f}, independent {summary['independent_seconds']:.3f}",
          flush=True)
    results.setdefault("landscape", []).append({"dataset": name, **summary, "maps": len(rows)})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["digits", "fashion-mnist"])
    ap.add_argument("--only", nargs="+", default=["panels", "landscape"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    print(json.dumps({"machine": platform.platform(), "cpu_threads": torch.get_num_threads(),
                      "load_average": os.getloadavg()}))
    results: dict = {}
    for name in args.datasets:
        if "panels" in args.only:
            panels(name, results)
        if "landscape" in args.only:
            landscape(name, results)
    print(json.dumps({"load_average_after": os.getloadavg()}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
