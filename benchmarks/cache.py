"""What the run cache's checks cost: fingerprinting the data, loading a checked run, training.

    python benchmarks/cache.py [--datasets digits fashion-mnist]

Side by side in one run, per dataset: the time to fingerprint the data (SHA-256 of its tensors,
once per loaded Dataset), to load a cached run with every check (config vs request, weights
checksum, names, shapes, finiteness), and to train the same run (1 epoch, in a fresh cache
folder), with their ratios. Timings moved here from the tests (speed is benchmarked, not
asserted in timed tests).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["digits", "fashion-mnist"])
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ["WORKBENCH_DATA"] = tempfile.mkdtemp(prefix="wb-cache-bench-")
    import workbench as wb

    print(json.dumps({"machine": platform.platform(), "cpu_threads": torch.get_num_threads(),
                      "torch": torch.__version__}))
    for name in args.datasets:
        data = wb.load_dataset(name)
        t = time.perf_counter()
        fp = data.fingerprint
        t_fp = time.perf_counter() - t
        t = time.perf_counter()
        again = data.fingerprint  # kept: no rehash while the tensors are unchanged
        t_kept = time.perf_counter() - t
        assert again is fp
        kw = dict(trigger=wb.triggers.Patch(size=3), rate=0.05, target=0, epochs=1, progress=False)
        t = time.perf_counter()
        run = wb.train_backdoor(data, **kw)
        t_train = time.perf_counter() - t
        loads = []
        for _ in range(5):
            t = time.perf_counter()
            wb.train_backdoor(data, **kw)
            loads.append(time.perf_counter() - t)
        t_load = min(loads)
        print(json.dumps({
            "dataset": name, "bytes": sum(x.numel() * x.element_size() for x in
                                          (data.x_train, data.y_train, data.x_test, data.y_test)),
            "fingerprint_s": round(t_fp, 4), "fingerprint_again_s": round(t_kept, 6),
            "train_1_epoch_and_save_s": round(t_train, 3), "checked_load_s": round(t_load, 4),
            "train_over_load": round(t_train / t_load, 1),
            "fingerprint_over_load": round(t_fp / t_load, 2), "run": run.path}))


if __name__ == "__main__":
    main()
