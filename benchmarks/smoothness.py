"""Benchmarks of the W_σ estimator, measured side by side in one run, printed as ratios.

    python benchmarks/smoothness.py [--quick] [--device cuda]

1. estimator throughput / raw forward throughput of the same model (best batch size and format)
2. speed-up over a plain per-input loop (one batch of n noisy copies per input and σ)
3. noisy samples needed for a given Monte-Carlo SE of the smoothing gap: with vs without common
   random numbers (CRN) and adaptive sampling
4. peak memory for 10,000 inputs × 12 σ against the configured budget (CPU: RSS in a subprocess)
5. interactivity: 16 inputs × 12 σ × 64 samples on the default digits model
6. on a GPU: noisy forwards per second for the small CNN at 28×28 and ResNet-18 at 32×32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch

import workbench as wb
from workbench.experiments import default_sigmas


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, dev, reps=2):
    fn()  # warm-up
    _sync(dev)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        _sync(dev)
        best = min(best, time.perf_counter() - t)
    return best


@torch.inference_mode()
def raw_throughput(model, shape, dev, sizes=(128, 256, 512, 1024, 2048, 4096)):
    """Best forwards/s over batch sizes and memory formats (argmax included, as votes need it)."""
    best = (0.0, None)
    for cl in (False, True):
        m = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        for bs in sizes:
            x = torch.rand(bs, *shape, device=dev)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            dt = timeit(lambda: m(x).argmax(1), dev)
            best = max(best, (bs / dt, (bs, "channels_last" if cl else "contiguous")),
                       key=lambda t: t[0])
    model.to(memory_format=torch.contiguous_format)
    return best


@torch.inference_mode()
def per_input_loop(model, x, sigmas, n, dev):
    """The pattern of common research code: one batch of n noisy copies per input and σ."""
    g = torch.Generator(device=dev).manual_seed(0)
    out = []
    for xi in x:
        for s in sigmas:
            noisy = xi + s * torch.randn((n, *xi.shape), generator=g, device=dev)
            counts = torch.bincount(model(noisy).argmax(1), minlength=10).cpu().numpy()
            p = counts / n
            out.append(-(p[p > 0] * np.log(p[p > 0])).sum())
    return out


def model_for(name, shape, dev, trained=None):
    if trained is not None:
        return trained.to(dev).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return wb.build_model(name, shape[0], 10, shape[1:]).to(dev).eval()


def bench_throughput(label, model, shape, dev, n_inputs, n_sig, n, rows,
                     sizes=(128, 256, 512, 1024, 2048, 4096)):
    fwd = n_inputs * n_sig * n
    x = torch.rand(n_inputs, *shape)
    sig = list(np.linspace(0.05, 0.5, n_sig))
    raw, (bs, fmt) = raw_throughput(model, shape, dev, sizes)
    kw = dict(device=dev, channels_last=fmt == "channels_last", batch_size=bs)
    t_est = timeit(lambda: wb.estimate_smoothness(model, x, sig, n, **kw), dev)
    t_def = timeit(lambda: wb.estimate_smoothness(model, x, sig, n, device=dev), dev)
    t_loop = timeit(lambda: per_input_loop(model, x.to(dev), sig, n, dev), dev, reps=1)
    rows.append({"model": label, "raw fwd/s (best)": round(raw), "best batch": f"{bs} {fmt}",
                 "estimator fwd/s": round(fwd / t_est), "ratio to raw": round(fwd / t_est / raw, 3),
                 "estimator fwd/s, defaults": round(fwd / t_def),
                 "ratio to raw, defaults": round(fwd / t_def / raw, 3),
                 "per-input loop fwd/s": round(fwd / t_loop),
                 "speed-up over loop": round(t_loop / t_est, 2)})


def gap_variance(model, pairs, sig, n, reps, crn, paired, adaptive_se=None):
    """Monte-Carlo variance of the gap estimate over seeds (pairs fixed), and samples used."""
    gaps, used = [], []
    for r in range(reps):
        kw = dict(common_noise=crn, paired_noise=paired)
        if adaptive_se is not None:
            kw.update(target_se=adaptive_se, max_samples=16 * n)
        c = wb.compare_smoothness(model, pairs.clean, pairs.triggered, sig, n, seed=1000 + r, **kw)
        gaps.append(c.gap)
        used.append(c.clean.n_samples.sum() + c.triggered.n_samples.sum())
    return float(np.var(gaps, ddof=1)), float(np.mean(used))


def bench_variance(run, data, quick, rows):
    pairs = wb.triggered_pairs(data.x_test, data.y_test, run.trigger, run.target, n=40 if quick else 60)
    sig = default_sigmas("digits")
    reps, n = (8, 32) if quick else (20, 64)
    designs = [("independent noise (baseline)", False, False, None),
               ("paired twins, fresh noise per σ", False, True, None),
               ("shared across σ, independent twins", True, False, None),
               ("shared across σ and twins (CRN, default)", True, True, None),
               ("paired twins, fresh per σ, adaptive target_se=0.05", False, True, 0.05),
               ("CRN + adaptive target_se=0.05", True, True, 0.05)]
    v0 = s0 = None
    for name, crn, paired, ad in designs:
        v, s = gap_variance(run.model, pairs, sig, n if ad is None else n // 2, reps, crn, paired, ad)
        if v0 is None:
            v0, s0 = v, s
        # variance ∝ 1/samples: samples needed for the baseline's variance, relative to baseline
        rows.append({"design": name, "samples per gap": round(s), "MC var of gap": f"{v:.3g}",
                     "samples for equal variance (rel. to baseline)": round((s / s0) * (v / v0), 3)})


def bench_memory(budget_mib, n_inputs=10_000, n_sig=12, n=4):
    """Peak RSS growth during the estimate (sampled every 2 ms from /proc) in a fresh process."""
    code = f"""
import threading, time, torch, workbench as wb
def rss():
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) for l in f if l.startswith('VmRSS')) / 1024
run = wb.train_backdoor('digits', progress=False)
x = torch.rand({n_inputs}, 1, 16, 16)
wb.estimate_smoothness(run.model, x[:8], [0.1], 4)  # warm-up: kernels, allocator
base, peak, stop = rss(), [0.0], [False]
def watch():
    while not stop[0]:
        peak[0] = max(peak[0], rss()); time.sleep(0.002)
t = threading.Thread(target=watch); t.start()
res = wb.estimate_smoothness(run.model, x, [0.05 * (i + 1) for i in range({n_sig})], {n},
                             memory_budget={budget_mib} * 2**20)
stop[0] = True; t.join()
print(peak[0] - base, res.settings['batch_size'])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    extra_mib, bs = out.stdout.split()
    return float(extra_mib), int(bs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller workloads (a smoke run)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--only", nargs="+", default=["throughput", "variance", "memory", "interactive", "gpu"],
                    help="sections to run")
    args = ap.parse_args()
    dev = torch.device(args.device) if args.device else wb.default_device()
    os.environ.setdefault("TQDM_DISABLE", "1")
    facts = {"machine": platform.platform(), "processor": platform.processor() or platform.machine(),
             "cpu_threads": torch.get_num_threads(), "device": str(dev),
             "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None,
             "torch": torch.__version__}
    print(json.dumps(facts))
    data = wb.load_dataset("digits")
    run = wb.train_backdoor(data, progress=False)
    results = {"facts": facts}

    q = args.quick
    big = dev.type == "cuda"
    if "throughput" in args.only:
        rows = []
        bench_throughput("small-cnn digits 16x16 (trained)",
                         model_for("small-cnn", (1, 16, 16), dev, run.model), (1, 16, 16), dev,
                         16 if q else 64, 12, 64 if q else 128, rows)
        bench_throughput("small-cnn 28x28", model_for("small-cnn", (1, 28, 28), dev), (1, 28, 28),
                         dev, 16 if q else 32, 12, 64 if q else 128, rows)
        bench_throughput("resnet18 32x32", model_for("resnet18", (3, 32, 32), dev), (3, 32, 32), dev,
                         64 if big else 2, 12 if big else 2, 256 if big else 64, rows,
                         sizes=(128, 256, 512, 1024, 2048) if big else (32, 64, 128))
        results["throughput"] = rows
        print("\n1-2. throughput (forwards/s) and ratios")
        for r in rows:
            print("  ", r)

    if "variance" in args.only:
        vrows = []
        bench_variance(run, data, q, vrows)
        results["variance"] = vrows
        print("\n3. samples for a given Monte-Carlo variance of the smoothing gap")
        for r in vrows:
            print("  ", r)

    if "memory" in args.only and dev.type == "cpu":
        for budget in (16, 64, 256):
            extra, bs = bench_memory(budget, n=2 if q else 4)
            results.setdefault("memory", []).append(
                {"inputs": 10_000, "sigmas": 12, "budget_mib": budget,
                 "peak_rss_growth_mib": round(extra, 1), "batch_size": bs})
            print(f"\n4. memory: 10,000 inputs x 12 sigmas, budget {budget} MiB -> peak RSS growth "
                  f"{extra:.1f} MiB (batch {bs})")
    elif "memory" in args.only:
        torch.cuda.reset_peak_memory_stats()
        x = torch.rand(10_000, 1, 16, 16)
        base = torch.cuda.memory_allocated()
        wb.estimate_smoothness(run.model.to(dev), x, default_sigmas("digits"), 16,
                               memory_budget=256 * 2**20)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        results["memory"] = {"budget_mib": 256, "peak_cuda_mib": round(peak, 1)}
        print(f"\n4. memory: peak CUDA {peak:.1f} MiB with a 256 MiB budget")

    sig = default_sigmas("digits")
    if "interactive" in args.only:
        x16 = data.x_test[:16]
        m = run.model.to(dev)
        t = timeit(lambda: wb.estimate_smoothness(m, x16, sig, 64), dev, reps=5)
        results["interactive_seconds"] = round(t, 3)
        print(f"\n5. interactivity: 16 inputs x 12 sigmas x 64 samples on the digits model: {t:.3f} s "
              f"(goal < 1 s)")

    if "gpu" in args.only and dev.type == "cuda":
        g = []
        for label, name, shape, n_in in (("small-cnn 28x28", "small-cnn", (1, 28, 28), 2048),
                                         ("resnet18 32x32", "resnet18", (3, 32, 32), 256)):
            mm = model_for(name, shape, dev)
            x = torch.rand(n_in, *shape)
            for prec, cl in (("fp32", False), ("bf16", True)):
                fwd = n_in * 12 * 256
                tt = timeit(lambda: wb.estimate_smoothness(mm, x, sig, 256, precision=prec,
                                                           channels_last=cl), dev)
                g.append({"model": label, "precision": prec, "channels_last": cl,
                          "fwd/s": round(fwd / tt)})
        results["gpu"] = g
        print("\n6. GPU throughput")
        for r in g:
            print("  ", r)
    elif "gpu" in args.only:
        print("\n6. GPU throughput: not measured (no GPU on this machine)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
