"""Foundation figures: clean accuracy, ASR, training time and the smoothing gap per dataset.

    python benchmarks/training.py [--datasets digits fashion-mnist] [--json out.json]

Trains fresh (no cache), then measures the gap on 100 clean/triggered test pairs over the
dataset's default σ grid (mean-W summary) and the smoothness radius, 128 samples per cell.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

import workbench as wb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["digits", "fashion-mnist"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    print(json.dumps({"machine": platform.platform(), "cpu_threads": torch.get_num_threads(),
                      "device": str(wb.default_device()), "torch": torch.__version__}))
    rows = []
    for name in args.datasets:
        data = wb.load_dataset(name)
        run = wb.train_backdoor(data, trigger=wb.triggers.Patch(size=3), rate=0.05, target=0,
                                cache=False, progress=False)
        t = time.perf_counter()
        an = wb.smoothing_analysis(run, data, n_pairs=100, n_samples=128)
        rad = wb.smoothing_analysis(run, data, n_pairs=100, n_samples=128, summary="radius")
        c, r = an.comparison, rad.comparison
        row = {"dataset": name, "epochs": run.config["epochs"],
               "clean_accuracy": round(run.clean_accuracy, 4),
               "attack_success_rate": round(run.attack_success_rate, 4),
               "train_seconds": round(run.train_seconds, 1),
               "sigmas": f"{wb.default_sigmas(name)[0]}..{wb.default_sigmas(name)[-1]} (12)",
               "gap_mean_W": f"{c.gap:.4f} [{c.gap_ci[0]:.4f}, {c.gap_ci[1]:.4f}] p={c.p_value:.2g}",
               "gap_radius": f"{r.gap:.4f} [{r.gap_ci[0]:.4f}, {r.gap_ci[1]:.4f}] p={r.p_value:.2g}",
               "analysis_seconds": round(time.perf_counter() - t, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
