"""Interactivity: time from a slider change to the redrawn figure, on a cached digits run with
default settings (the callback runs synchronously in plain Python, as it does in a kernel).

    python benchmarks/widgets.py
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import torch

import workbench as wb
from workbench import widgets as wbw


def timed(set_value, reps=5):
    out = []
    for i in range(reps):
        t = time.perf_counter()
        set_value(i)
        out.append(time.perf_counter() - t)
    return statistics.median(out), max(out)


def main():
    os.environ.setdefault("TQDM_DISABLE", "1")
    print(json.dumps({"machine": platform.platform(), "cpu_threads": torch.get_num_threads()}))
    data = wb.load_dataset("digits")
    run = wb.train_backdoor(data, progress=False)
    ex = wbw.SmoothnessExplorer(run, data)
    vals = [0.5, 0.55, 0.65, 0.7, 0.75]
    med, worst = timed(lambda i: setattr(ex.sigma_max, "value", vals[i]))
    print(f"SmoothnessExplorer, largest-σ slider (new computation): median {med:.3f} s, max {worst:.3f} s")
    med2, worst2 = timed(lambda i: setattr(ex.sigma_max, "value", vals[i]))
    print(f"SmoothnessExplorer, same values again (memoised): median {med2:.3f} s, max {worst2:.3f} s")
    lx = wbw.LandscapeExplorer(run, data)
    med3, worst3 = timed(lambda i: setattr(lx.index, "value", i + 1))
    print(f"LandscapeExplorer, input slider (new landscape pair + curve): median {med3:.3f} s, "
          f"max {worst3:.3f} s")
    td = wbw.TriggerDesigner(data)
    med4, worst4 = timed(lambda i: setattr(td.size, "value", 2 + i % 4))
    print(f"TriggerDesigner, size slider: median {med4:.3f} s, max {worst4:.3f} s")


if __name__ == "__main__":
    main()
