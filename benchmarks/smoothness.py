"""Benchmarks of the W_σ estimator, measured side by side in one run, printed as ratios.

    python benchmarks/smoothness.py [--quick] [--device cuda]

1. estimator throughput / raw forward throughput of the same model (best batch size and format)
2. speed-up over a plain per-input loop (one batch of n noisy copies per input and σ)
3. noisy samples needed for a given Monte-Carlo variance of the smoothing gap and of single
   curves, per noise design (iid, antithetic, Latin hypercube, scrambled Sobol, radial strata),
   with Neyman allocation over the (input, σ) cells, and (--old-designs) the CRN / adaptive rows
   of the first recording
3a. time per noisy sample of each design relative to iid (interleaved rounds, 16×16 and 28×28)
3b. interval widths per design; 3c. coverage of the cells' intervals and the certified radius's
   level per design on a model with an exact answer (and, in 3, against a reference W on digits)
4. peak memory for 10,000 inputs × 12 σ against the configured budget (CPU: RSS in a subprocess)
5. interactivity: 16 inputs × 12 σ × 64 samples on the default digits model
6. on a GPU: noisy forwards per second for the small CNN at 28×28 and ResNet-18 at 32×32
7. local-W landscapes (41×41): roughness with common vs independent noise across grid points
8. panels (benchmarks/widgets.py): SmoothnessExplorer and LandscapeExplorer (resolution 21 and
   41) redraw times on digits and Fashion-MNIST

The issue-13 figures in one command:
    python benchmarks/smoothness.py --only throughput cost variance coverage landscape widgets
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
from workbench.smoothness import estimate_pair


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


def walls_and_cpu(fn, dev):
    """(wall seconds, process CPU seconds) of one call: on a shared machine the CPU time of
    this process is far steadier than the wall time (other sessions' load stretches the wall)."""
    _sync(dev)
    t, c = time.perf_counter(), time.process_time()
    fn()
    _sync(dev)
    return time.perf_counter() - t, time.process_time() - c


def raw_throughput(model, shape, dev, sizes=(64, 128, 256, 512, 1024, 2048, 4096), reps=5):
    """Best forwards/s over batch sizes and memory formats (argmax included, as votes need it),
    best of `reps` interleaved passes (the machine is shared). On a CPU the best configuration
    is chosen by forwards per CPU second of this process (steadier than wall time under other
    sessions' load); returns (wall fwd/s of that configuration, its key, fwd per CPU second)."""
    rate, cpu_rate = {}, {}
    formats = (False, True) if any(isinstance(m, torch.nn.Conv2d) for m in model.modules()) \
        else (False,)
    xs = {bs: torch.rand(bs, *shape, device=dev) for bs in sizes}
    for _ in range(reps):
        for cl in formats:
            m = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            for bs in sizes:
                x = xs[bs].contiguous(memory_format=torch.channels_last) if cl else xs[bs]
                k = max(1, 2048 // bs)
                with torch.inference_mode():  # (parameters converted outside it: not inference tensors)
                    [m(x).argmax(1) for _ in range(k)]  # warm-up
                    w, c = walls_and_cpu(lambda: [m(x).argmax(1) for _ in range(k)], dev)
                key = (bs, "channels_last" if cl else "contiguous")
                rate[key] = max(rate.get(key, 0.0), bs * k / w)
                cpu_rate[key] = max(cpu_rate.get(key, 0.0), bs * k / max(c, 1e-9))
    model.to(memory_format=torch.contiguous_format)
    best = max(cpu_rate if dev.type == "cpu" else rate,
               key=(cpu_rate if dev.type == "cpu" else rate).get)
    return rate[best], best, cpu_rate[best]


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
                     sizes=(64, 128, 256, 512, 1024, 2048, 4096), reps=5, pairs=15):
    """Estimator throughput as a fraction of the raw forward's at its best batch and format.

    The machine is shared (other work comes and goes within seconds), so the ratio is measured
    in `pairs` back-to-back pairs (the raw forward over as many rows as the estimator's call,
    then the estimator): both members of a pair see about the same load, and the median of the
    pairs' ratios is reported with its interquartile range."""
    fwd = n_inputs * n_sig * n
    x = torch.rand(n_inputs, *shape)
    sig = list(np.linspace(0.05, 0.5, n_sig))
    from workbench import sampling

    sampling._FOOTPRINT.clear()  # the defaults' first use measures the widest activation
    t0 = time.perf_counter()
    tuned = wb.estimate_smoothness(model, x[:1], sig[:1], 8, device=dev).settings["batch_size"]
    t_tune = time.perf_counter() - t0
    raw, (bs, fmt), raw_cpu = raw_throughput(model, shape, dev, sizes, reps)
    cl = fmt == "channels_last"
    kw = dict(device=dev, channels_last=cl, batch_size=bs)
    m = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
    xb = torch.rand(bs, *shape, device=dev)
    xb = xb.contiguous(memory_format=torch.channels_last) if cl else xb

    def raw_run():
        with torch.inference_mode():
            for _ in range(-(-fwd // bs)):
                m(xb).argmax(1)

    calls = {"best batch": lambda: wb.estimate_smoothness(model, x, sig, n, **kw),
             "defaults": lambda: wb.estimate_smoothness(model, x, sig, n, device=dev),
             "defaults + antithetic": lambda: wb.estimate_smoothness(
                 model, x, sig, n, device=dev, noise_design="antithetic")}
    ratios = {k: [] for k in calls}
    cpu_ratios = {k: [] for k in calls}
    for f in calls.values():
        f()  # warm-up
    raw_run()
    for _ in range(pairs):
        for k, f in calls.items():
            w_raw, c_raw = walls_and_cpu(raw_run, dev)
            model.to(memory_format=torch.contiguous_format)
            w_est, c_est = walls_and_cpu(f, dev)
            m = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            ratios[k].append(w_raw / w_est)
            cpu_ratios[k].append(c_raw / c_est)
    model.to(memory_format=torch.contiguous_format)
    t_loop = timeit(lambda: per_input_loop(model, x.to(dev), sig, n, dev), dev, reps=1)
    t_est = timeit(calls["best batch"], dev, reps=1)
    q = {k: np.quantile(v, [0.25, 0.5, 0.75]).round(3).tolist() for k, v in ratios.items()}
    qc = {k: round(float(np.median(v)), 3) for k, v in cpu_ratios.items()}
    rows.append({"model": label, "raw fwd/s (best)": round(raw),
                 "raw fwd per CPU s (best)": round(raw_cpu), "best batch": f"{bs} {fmt}",
                 "ratio to raw, best batch [q25, median, q75]": q["best batch"],
                 "CPU-time ratio, best batch (median)": qc["best batch"],
                 "default batch (from the widest activation)": tuned,
                 "first use incl. the measurement (s)": round(t_tune, 2),
                 "ratio to raw, defaults": q["defaults"],
                 "CPU-time ratio, defaults (median)": qc["defaults"],
                 "ratio to raw, defaults + antithetic": q["defaults + antithetic"],
                 "CPU-time ratio, defaults + antithetic (median)": qc["defaults + antithetic"],
                 "speed-up over per-input loop": round(t_loop / t_est, 2)})
    print("  ", rows[-1], flush=True)


def _gap_run(model, pairs, sig, n, seed, design):
    """One gap estimate under `design` (a dict: estimator options plus "allocation" and "unit",
    the samples per unit of the design when not its default)."""
    if "unit" in design:
        from workbench import sampling

        old = sampling.DESIGN_UNIT[design["noise_design"]]
        sampling.DESIGN_UNIT[design["noise_design"]] = design["unit"]
        try:
            return _gap_run(model, pairs, sig, n, seed, {k: v for k, v in design.items()
                                                         if k != "unit"})
        finally:
            sampling.DESIGN_UNIT[design["noise_design"]] = old
    kw = {k: v for k, v in design.items() if k not in ("label", "allocation")}
    if kw.get("noise_design", "iid") != "iid" and "target_se" not in kw:
        # a gap under a dependent design needs the jackknife's bias correction (check_gap_design)
        kw.setdefault("bias_correction", "jackknife")
    alloc = design.get("allocation", "equal")
    if alloc == "equal" and "target_se" not in kw:
        r_c, r_t = estimate_pair(model, pairs.clean, pairs.triggered, sig, n, seed=seed,
                                 allocation="equal", **kw)
    elif alloc == "equal":  # adaptive sampling (the first recording's rows)
        c = wb.compare_smoothness(model, pairs.clean, pairs.triggered, sig, n, seed=seed, **kw)
        r_c, r_t = c.clean, c.triggered
    else:
        r_c, r_t = estimate_pair(model, pairs.clean, pairs.triggered, sig, n, seed=seed,
                                 allocation=alloc, **kw)
    return r_c, r_t


def design_variance(model, pairs, sig, n, reps, design, ref=None):
    """Per-pair gap differences, per-input mean-W summaries and W cells over `reps` seeds; with
    `ref` ((2N, S) reference W of the cells), the share of cell intervals that cover it and the
    cells' mean SE over their SD across seeds (1 = honest SEs)."""
    d, mc, mt, cells, used, cover, ses = [], [], [], [], [], [], []
    cpu0 = time.process_time()
    for r in range(reps):
        r_c, r_t = _gap_run(model, pairs, sig, n, 1000 + r, design)
        d.append(r_c.mean_entropy() - r_t.mean_entropy())
        mc.append(r_c.mean_entropy())
        mt.append(r_t.mean_entropy())
        cells.append(np.concatenate([r_c.entropy, r_t.entropy]))
        ses.append(np.concatenate([r_c.entropy_se, r_t.entropy_se]))
        # the pilot's samples only allocate (estimate_pair), but they are paid for
        used.append(sum(r.n_samples.sum() + r.settings.get("pilot", 0) * r.n_samples.size
                        for r in (r_c, r_t)))
        if ref is not None:
            lo = np.concatenate([r_c.ci_low, r_t.ci_low])
            hi = np.concatenate([r_c.ci_high, r_t.ci_high])
            cover.append((lo <= ref) & (ref <= hi))
    cells = np.array(cells)
    extra = {"cpu_seconds": time.process_time() - cpu0}
    if ref is not None:
        sd = cells.std(0, ddof=1)
        ok = sd > 0
        extra.update({"coverage": float(np.mean(cover)),
                      "se_over_sd": float(np.sqrt((np.array(ses) ** 2).mean(0))[ok].mean() / sd[ok].mean())})
    return np.array(d), np.concatenate([np.array(mc), np.array(mt)], 1), cells, \
        float(np.mean(used)), extra


def _variances(d, m, cells):
    """Monte-Carlo variances over seeds. The pairs' noise is independent (draws are seeded per
    input), so Var(gap) = Σ_j Var(d_j) / N²: pooling the per-pair variances (19 d.f. each, 60
    pairs) measures it far more precisely than the variance of the 20 gaps (19 d.f.)."""
    n_pairs = d.shape[1]
    return {"gap": float(d.var(0, ddof=1).sum() / n_pairs**2),
            "gap_direct": float(d.mean(1).var(ddof=1)),
            "single": float(m.var(0, ddof=1).mean()), "cell": float(cells.var(0, ddof=1).mean())}


def _ratio_ci(d, d0, rel_samples, rng, draws=2000):
    """Bootstrap over pairs (same pairs in both designs) of the gap's samples-for-equal-variance
    ratio: a 95% interval."""
    v, v0 = d.var(0, ddof=1), d0.var(0, ddof=1)
    idx = rng.integers(0, len(v), (draws, len(v)))
    r = rel_samples * v[idx].sum(1) / v0[idx].sum(1)
    return [round(float(q), 3) for q in np.quantile(r, [0.025, 0.975])]


DESIGNS = [
    {"label": "iid draws, paired twins (the default until now)", "noise_design": "iid"},
    {"label": "antithetic pairs (ε, −ε)", "noise_design": "antithetic"},
    {"label": "Latin hypercube, units of 8", "noise_design": "lhs"},
    {"label": "antithetic Latin hypercube, units of 8", "noise_design": "antithetic-lhs"},
    {"label": "scrambled Sobol (Owen), units of 8", "noise_design": "sobol"},
    {"label": "radius stratified (χ strata), units of 8", "noise_design": "radial"},
    {"label": "iid + Neyman allocation per σ (pilot 16)", "noise_design": "iid",
     "allocation": "neyman-sigma"},
    {"label": "iid + Neyman allocation per cell (pilot 16)", "noise_design": "iid",
     "allocation": "neyman"},
    {"label": "antithetic + Neyman per cell (pilot 16)", "noise_design": "antithetic",
     "allocation": "neyman"},
    {"label": "antithetic + jackknife bias correction", "noise_design": "antithetic",
     "bias_correction": "jackknife"},
    {"label": "antithetic + jackknife + Neyman per cell (pilot 16)", "noise_design": "antithetic",
     "bias_correction": "jackknife", "allocation": "neyman"},
    {"label": "iid + jackknife bias correction", "noise_design": "iid",
     "bias_correction": "jackknife"},
    {"label": "antithetic LHS + Neyman per cell (pilot 16)", "noise_design": "antithetic-lhs",
     "allocation": "neyman"},
    {"label": "Latin hypercube + Neyman per cell (pilot 16)", "noise_design": "lhs",
     "allocation": "neyman"},
    {"label": "Latin hypercube, units of 16", "noise_design": "lhs", "unit": 16},
    {"label": "Latin hypercube, units of 32", "noise_design": "lhs", "unit": 32},
]
OLD_DESIGNS = [
    {"label": "independent noise everywhere", "paired_noise": False},
    {"label": "shared across σ, paired twins (common_noise=True)", "common_noise": True,
     "noise_design": "iid"},
    {"label": "paired, fresh per σ, adaptive target_se=0.05 (start n/2)", "target_se": 0.05,
     "max_samples": 512, "start": 0.5, "noise_design": "iid"},
]


def _run_hash(run) -> str:
    import hashlib

    blob = json.dumps(run.config, sort_keys=True, default=str) + torch.__version__ + \
        str(torch.get_num_threads())
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def bench_variance(run, data, quick, rows, only=None, old=False, raw=None, ref_samples=4096):
    pairs = wb.triggered_pairs(data.x_test, data.y_test, run.trigger, run.target, n=40 if quick else 60)
    sig = default_sigmas("digits")
    reps, n = (6, 32) if quick else (20, 64)
    ref_samples = 512 if quick else ref_samples
    designs = [DESIGNS[0]] + [d for d in DESIGNS[1:] if only is None or d["label"] in only
                              or d.get("noise_design") in only] + (OLD_DESIGNS if old else [])
    # reference W of every cell (iid, ref_samples draws, another seed): what the intervals of the
    # 64-sample runs should cover (its own SE is a 1/8 of theirs; the plug-in bias of n = 64 is
    # not removed, as a user's interval would not remove it either)
    t = time.perf_counter()
    cache = os.path.join(os.environ.get("TMPDIR", "/tmp"),
                         f"wb-bench-ref-{_run_hash(run)}-{len(pairs.clean)}-{ref_samples}.npy")
    if os.path.exists(cache):  # the same model, pairs and samples: computed by an earlier run
        ref = np.load(cache)
    else:
        ref = np.concatenate([wb.estimate_smoothness(run.model, x, sig, ref_samples,
                                                     seed=77).entropy
                              for x in (pairs.clean, pairs.triggered)])
        np.save(cache, ref)
    print(f"   reference W of {ref.size} cells at {ref_samples} samples: "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    from workbench.smoothness import _summary_weights

    ref_mean = (ref * _summary_weights(np.asarray(sig, float))).sum(1)
    ref_gap = float((ref_mean[:len(pairs.clean)] - ref_mean[len(pairs.clean):]).mean())
    base = None
    rng = np.random.default_rng(0)
    for design in designs:
        t = time.perf_counter()
        dd = dict(design)
        n_d = int(n * dd.pop("start", 1))
        if "paired_noise" in dd:  # independent twins: two estimates with different seeds
            dd = {"label": dd["label"], "allocation": "equal"}
            d, m, cells, used = _independent_twins(run.model, pairs, sig, n, reps)
            extra = {}
        else:
            d, m, cells, used, extra = design_variance(run.model, pairs, sig, n_d, reps, dd, ref)
        v = _variances(d, m, cells)
        if base is None:
            base = (d, v, used, extra.get("cpu_seconds"))
        rel = used / base[2]
        cpu_rel = (extra["cpu_seconds"] / base[3]) if extra.get("cpu_seconds") and base[3] else np.nan
        row = {"design": design["label"], "noise_design": design.get("noise_design", "iid"),
               "allocation": design.get("allocation", "equal"), "samples per gap": round(used),
               "MC var of gap": f"{v['gap']:.3g}", "(var of the gaps over seeds)": f"{v['gap_direct']:.3g}",
               "gap: samples for equal variance": round(rel * v["gap"] / base[1]["gap"], 3),
               "gap 95% CI (bootstrap over pairs)": _ratio_ci(d, base[0], rel, rng),
               "single curves (mean W): samples for equal variance":
                   round(rel * v["single"] / base[1]["single"], 3),
               "curve cells (W_σ): samples for equal variance":
                   round(rel * v["cell"] / base[1]["cell"], 3),
               "cell 95% intervals: coverage of the reference": round(extra.get("coverage", np.nan), 3),
               "cell SEs: RMS SE / SD over seeds": round(extra.get("se_over_sd", np.nan), 3),
               # the designs must not move the gap's expectation (plug-in bias aside)
               "mean gap over seeds": round(float(d.mean()), 4), "reference gap": round(ref_gap, 4),
               "CPU time per gap / iid's": round(cpu_rel, 3),
               "gap: CPU time for equal variance": round(cpu_rel * rel * v["gap"] / base[1]["gap"], 3),
               "single curves: CPU time for equal variance":
                   round(cpu_rel * rel * v["single"] / base[1]["single"], 3),
               "seconds": round(time.perf_counter() - t)}
        rows.append(row)
        print("  ", row, flush=True)
        if raw is not None:
            raw[design["label"]] = {"d": d.tolist(), "used": used}


def bench_design_cost(run, dev, rows, rounds=7):
    """Time per noisy sample of each design relative to iid draws, same workload (16 inputs x
    12 σ x 64 samples, default batch), in interleaved rounds (the machine is shared): the median
    over rounds of t(design) / t(iid) of the same round, in wall time and in this process's CPU
    time (steadier under other sessions' load)."""
    from workbench.sampling import NOISE_DESIGNS

    for label, model, shape in (("small CNN digits 16x16 (trained)", run.model, (1, 16, 16)),
                                ("small CNN 28x28", model_for("small-cnn", (1, 28, 28), dev),
                                 (1, 28, 28))):
        x = torch.rand(16, *shape)
        sig = list(np.linspace(0.05, 0.5, 12))
        wall = {d: [] for d in NOISE_DESIGNS}
        cpu = {d: [] for d in NOISE_DESIGNS}
        for d in NOISE_DESIGNS:
            wb.estimate_smoothness(model, x, sig, 64, device=dev, noise_design=d)  # warm-up
        for _ in range(rounds):
            for d in NOISE_DESIGNS:
                w, c = walls_and_cpu(lambda: wb.estimate_smoothness(
                    model, x, sig, 64, device=dev, noise_design=d), dev)
                wall[d].append(w)
                cpu[d].append(c)
        iw, ic = np.array(wall["iid"]), np.array(cpu["iid"])
        row = {"model": label, "iid fwd/s (wall, median)": round(16 * 12 * 64 / float(np.median(iw))),
               "iid fwd/s per CPU second": round(16 * 12 * 64 / float(np.median(ic)))}
        for d in NOISE_DESIGNS[1:]:
            row[f"{d}: time per sample / iid"] = round(float(np.median(np.array(wall[d]) / iw)), 3)
            row[f"{d}: CPU time per sample / iid"] = round(float(np.median(np.array(cpu[d]) / ic)), 3)
        rows.append(row)
        print("  ", row, flush=True)


class _LinearVotes(torch.nn.Module):
    """Two classes, logits [0, w·x + b] on flattened images: under Gaussian noise of scale σ,
    P(class 1) = Φ((w·x + b) / (σ‖w‖)) exactly (‖w‖ = 1 here)."""

    def __init__(self, w, b):
        super().__init__()
        self.w = torch.nn.Parameter(w.flatten() / w.norm(), requires_grad=False)
        self.b = torch.nn.Parameter(torch.tensor(float(b)), requires_grad=False)

    def forward(self, x):
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], 1)


def bench_coverage(rows, quick, reps=2000):
    """Coverage of the cells' 95% intervals for the exact entropy, per design, on a linear
    two-class model in the digits' dimension (1x16x16; P(class 1) = Φ(margin / σ) exactly), and
    the level of the certified radius (alpha 0.05: the share of radii that claim more than the
    truth must stay <= 0.05)."""
    from scipy import stats as st

    from workbench.sampling import NOISE_DESIGNS
    from workbench.stats import certified_radii

    reps = 400 if quick else reps
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 16, 16, generator=g)
    x = torch.full((reps, 1, 16, 16), 0.5)
    sigma = 0.3
    for p in (0.7, 0.9, 0.97):
        margin = sigma * st.norm.ppf(p)
        model = _LinearVotes(w, -float((x[0].flatten() * w.flatten() / w.norm()).sum()) + margin)
        h_true = float(-(p * np.log(p) + (1 - p) * np.log(1 - p)))
        for n in (64, 256):
            row = {"P(top class)": p, "samples": n}
            for d in NOISE_DESIGNS:
                r = wb.estimate_smoothness(model, x, [sigma], n, seed=3, noise_design=d)
                h = r.entropy[:, 0]
                row[f"{d}: coverage"] = round(float(np.mean((r.ci_low[:, 0] <= h_true)
                                                            & (h_true <= r.ci_high[:, 0]))), 3)
                row[f"{d}: SD"] = round(float(h.std()), 4)
                rad, cls = certified_radii(r.counts, r.selection_counts, r.n_samples, r.sigmas,
                                           0.05, r.certify_counts)
                rad, cls = rad[:, 0], cls[:, 0]  # wrong: a radius for class 0, or beyond the truth
                row[f"{d}: radius over-claims"] = round(float(np.mean(
                    (rad > 0) & ((cls == 0) | (rad > margin + 1e-9)))), 3)
            rows.append(row)
            print("  ", row, flush=True)


def bench_widths(run, data, quick, rows):
    """Mean width of the cells' 95% intervals (clean and triggered curves, one seed) per design,
    relative to iid draws: lower variance does not mean narrower honest intervals (dependent
    designs use jackknife SEs with t quantiles, and one-class bounds on one draw per unit)."""
    pairs = wb.triggered_pairs(data.x_test, data.y_test, run.trigger, run.target,
                               n=40 if quick else 60)
    sig = default_sigmas("digits")
    n = 32 if quick else 64
    base = None
    for design in ("iid", "antithetic", "lhs", "antithetic-lhs", "sobol", "radial"):
        w, w_one, w_rest, one = [], [], [], []
        for x in (pairs.clean, pairs.triggered):
            r = wb.estimate_smoothness(run.model, x, sig, n, seed=1000, noise_design=design)
            width = r.ci_high - r.ci_low
            oc = (r.frequencies > 0).sum(-1) == 1
            w.append(width.ravel())
            w_one.append(width[oc])
            w_rest.append(width[~oc])
            one.append(oc.ravel())
        w, w_one, w_rest = (np.concatenate(a) for a in (w, w_one, w_rest))
        base = base or w.mean()
        rows.append({"design": design, "mean 95% interval width (nats)": round(float(w.mean()), 3),
                     "rel. to iid": round(float(w.mean() / base), 2),
                     "one-class cells": round(float(np.concatenate(one).mean()), 2),
                     "width at one-class cells": round(float(w_one.mean()), 3),
                     "width elsewhere": round(float(w_rest.mean()), 3)})
        print("  ", rows[-1], flush=True)


def _independent_twins(model, pairs, sig, n, reps):
    d, m, cells, used = [], [], [], []
    for r in range(reps):
        r_c = wb.estimate_smoothness(model, pairs.clean, sig, n, seed=1000 + r)
        r_t = wb.estimate_smoothness(model, pairs.triggered, sig, n, seed=5000 + r)
        d.append(r_c.mean_entropy() - r_t.mean_entropy())
        m.append(np.concatenate([r_c.mean_entropy(), r_t.mean_entropy()]))
        cells.append(np.concatenate([r_c.entropy, r_t.entropy]))
        # the pilot's samples only allocate (estimate_pair), but they are paid for
        used.append(sum(r.n_samples.sum() + r.settings.get("pilot", 0) * r.n_samples.size
                        for r in (r_c, r_t)))
    return np.array(d), np.array(m), np.array(cells), float(np.mean(used))


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
    ap.add_argument("--only", nargs="+", default=["throughput", "cost", "variance", "coverage",
                                                  "widths", "landscape", "widgets", "memory",
                                                  "interactive", "gpu"],
                    help="sections to run")
    ap.add_argument("--designs", nargs="+", default=None,
                    help="variance section: only these designs (labels or noise_design names)")
    ap.add_argument("--old-designs", action="store_true",
                    help="variance section: also the first recording's CRN / adaptive rows")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's); 1 makes CPU-time ratios steady "
                         "on a loaded machine (no thread barriers waiting on a descheduled peer)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device) if args.device else wb.default_device()
    os.environ.setdefault("TQDM_DISABLE", "1")
    facts = {"machine": platform.platform(), "processor": platform.processor() or platform.machine(),
             "cpu_threads": torch.get_num_threads(), "device": str(dev),
             "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None,
             "torch": torch.__version__}
    print(json.dumps(facts))
    print(json.dumps({"load_average_at_start": os.getloadavg()}), flush=True)
    data = wb.load_dataset("digits")
    run = wb.train_backdoor(data, progress=False)
    results = {"facts": facts}

    q = args.quick
    big = dev.type == "cuda"
    if "throughput" in args.only:
        print("\n1-2. throughput (forwards/s) and ratios")
        rows = []
        # 16 inputs x 12 σ x 64 samples per call (the explorer's workload), 15 pairs of calls
        w = dict(n_inputs=8 if q else 16, n_sig=12, n=32 if q else 64, rows=rows,
                 pairs=5 if q else 15)
        bench_throughput("small-cnn digits 16x16 (trained)",
                         model_for("small-cnn", (1, 16, 16), dev, run.model), (1, 16, 16), dev, **w)
        for name in ("small-cnn", "mlp", "lenet5"):
            for hw in (16, 28):
                if (name, hw) != ("small-cnn", 16):
                    bench_throughput(f"{name} {hw}x{hw}", model_for(name, (1, hw, hw), dev),
                                     (1, hw, hw), dev, **w)
        bench_throughput("resnet18 32x32", model_for("resnet18", (3, 32, 32), dev), (3, 32, 32), dev,
                         64 if big else 2, 12 if big else 2, 256 if big else 64, rows,
                         sizes=(128, 256, 512, 1024, 2048) if big else (32, 64, 128), reps=2,
                         pairs=5 if big else 3)
        results["throughput"] = rows

    if "cost" in args.only:
        print("\n3a. time per noisy sample of each design relative to iid (interleaved rounds)")
        results["design_cost"] = []
        bench_design_cost(run, dev, results["design_cost"], rounds=3 if q else 7)

    if "variance" in args.only:
        vrows, raw = [], {}
        print("\n3. samples for a given Monte-Carlo variance of the smoothing gap and of curves")
        bench_variance(run, data, q, vrows, args.designs, args.old_designs, raw)
        results["variance"] = vrows
        results["variance_raw"] = raw
    if "coverage" in args.only:
        print("\n3c. coverage of the cells' 95% intervals (exact answer: linear model, 1x16x16)")
        results["coverage"] = []
        bench_coverage(results["coverage"], q)
    if "widths" in args.only:
        print("\n3b. interval widths per design (60 pairs, 12 σ, 64 samples, one seed)")
        results["widths"] = []
        bench_widths(run, data, q, results["widths"])

    if "landscape" in args.only or "widgets" in args.only:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import widgets as wbench  # benchmarks/widgets.py

        if "landscape" in args.only:
            print("\n7. local-W landscapes: common vs independent noise across grid points")
            wbench.landscape("digits", results, n_inputs=2 if q else 3)
        if "widgets" in args.only:
            print("\n8. panels: slider change to redrawn figure")
            for name in ("digits", "fashion-mnist"):
                wbench.panels(name, results)
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
    if "variance" in results:
        summary(results)
    print(json.dumps({"load_average_at_end": os.getloadavg()}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def summary(results):
    """The design table side by side: samples for equal variance (gap, single curves), CPU time
    per gap relative to iid (this run's 20 seeds, one thread: noise generation, allocation
    rounds), CPU time for equal variance, coverage of the reference, SE calibration."""
    print("\nDesigns side by side (relative to iid draws with paired twins; < 1 is better)")
    print(f"{'design':52s} {'samples: gap':>12s} {'single':>7s} {'cells':>6s} {'CPU/gap':>8s} "
          f"{'time: gap':>9s} {'single':>7s} {'cover':>6s} {'SE/SD':>6s}")
    cpu_key = "CPU time per gap / iid's"
    for r in results["variance"]:
        print(f"{r['design'][:52]:52s} {r['gap: samples for equal variance']:12.3f} "
              f"{r['single curves (mean W): samples for equal variance']:7.3f} "
              f"{r['curve cells (W_σ): samples for equal variance']:6.3f} "
              f"{r.get(cpu_key, float('nan')):8.3f} "
              f"{r.get('gap: CPU time for equal variance', float('nan')):9.3f} "
              f"{r.get('single curves: CPU time for equal variance', float('nan')):7.3f} "
              f"{r['cell 95% intervals: coverage of the reference']:6.3f} "
              f"{r['cell SEs: RMS SE / SD over seeds']:6.3f}")


if __name__ == "__main__":
    main()
