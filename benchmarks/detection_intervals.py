"""Coverage of the detection intervals (`workbench.detection.roc_analysis`) on twin scores with a
known answer: the pair bootstrap against resampling the clean and the triggered scores each on
its own, side by side on the same simulated studies.

    nice -n 10 python benchmarks/detection_intervals.py [--reps 1000] [--n 200] [--boot 1000]
        [--delta 1.0] [--rhos -0.8 -0.4 0 0.4 0.8] [--seed 0] [--real] [--json FILE]

Each simulated study draws `n` twins (clean score C, triggered score T), bivariate normal with
unit variances, means 0 and Δ (`--delta`) and correlation ρ (twins share their input: ρ is how a
detector's score of the triggered input follows that of its clean twin). The truths compare
independent draws of the marginals whatever ρ:
    AUC = P(T > C) = Φ(Δ / √2),    TPR at a% FPR = Φ(Δ − z_{1−a})
(the population TPR at the threshold that flags a share a of clean inputs). For each study,
`roc_analysis(paired=True)` and `roc_analysis(paired=False)` run with the same seed; the table
gives, per ρ, each interval's coverage of the truth (its Monte-Carlo SE: √(p(1−p)/reps)), its
mean width, and the ideal width 2·1.96·SD, the SD of the point estimate over the studies.

Then, at the boundary (`boundary`): two cases with rare outliers, where many samples give AUC 1
or TPR 0 in every resample, with the exact bounds `roc_analysis` uses there against the
zero-width percentile interval they replace.

`--real` adds the digits Patch 5% detection study of `python -m workbench.detection` (small-cnn-bn,
200 twins, 64 samples, 1,000 resamples, seed 0; trains the model on first use, then cached in
$WORKBENCH_DATA): each detector's AUC interval width with the pair bootstrap and with the old
independent one, from the same scores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import numpy as np
from scipy.stats import norm

from workbench.detection import roc_analysis

STATS = ("auc", "tpr5", "tpr1")


def truths(delta: float) -> dict:
    return {"auc": norm.cdf(delta / math.sqrt(2)), "tpr5": norm.cdf(delta - norm.ppf(0.95)),
            "tpr1": norm.cdf(delta - norm.ppf(0.99))}


def simulate(rho: float, reps: int, n: int, n_boot: int, delta: float, seed: int) -> dict:
    """Coverage, mean width and the ideal width of both bootstraps at twin correlation `rho`."""
    rng = np.random.default_rng([seed, int(round(1000 * (rho + 1)))])
    truth = truths(delta)
    est = {s: [] for s in STATS}
    out = {mode: {s: {"hits": 0, "widths": []} for s in STATS} for mode in ("pairs", "stratified")}
    for i in range(reps):
        z1, z2 = rng.standard_normal((2, n))
        c, t = z1, delta + rho * z1 + math.sqrt(1 - rho * rho) * z2
        for paired in (True, False):
            r = roc_analysis("sim", c, t, paired=paired, n_boot=n_boot, seed=i)
            for s, v, ci in (("auc", r.auc, r.auc_ci), ("tpr5", r.tpr_at_5_fpr, r.tpr_at_5_fpr_ci),
                             ("tpr1", r.tpr_at_1_fpr, r.tpr_at_1_fpr_ci)):
                cell = out[r.bootstrap][s]
                cell["hits"] += ci[0] <= truth[s] <= ci[1]
                cell["widths"].append(ci[1] - ci[0])
                if paired:
                    est[s].append(v)
    row = {"rho": rho}
    for s in STATS:
        row[f"{s}_ideal_width"] = 2 * 1.96 * float(np.std(est[s]))
        row[f"{s}_bias"] = float(np.mean(est[s]) - truth[s])
        for mode, cells in out.items():
            row[f"{s}_{mode}_coverage"] = cells[s]["hits"] / reps
            row[f"{s}_{mode}_width"] = float(np.mean(cells[s]["widths"]))
    return row


def boundary(reps: int, n: int, n_boot: int, seed: int) -> list[dict]:
    """Coverage where samples of `n` often miss rare outliers, so that every resample gives AUC 1
    or TPR 0: the exact bounds against the zero-width percentile interval they replace.

    auc:  clean U(0, 1) with 1% at U(2, 3), triggered U(1, 2): true AUC 0.99.
    tpr5: clean 0 with 10% at 5 (no threshold below 5 keeps FPR <= 5%), triggered U(1, 2) with
          1% at 10: true TPR at 5% FPR 0.01.
    """
    rng = np.random.default_rng([seed, 99])
    rows = {s: {"exact": 0, "percentile": 0, "used": 0, "width": []} for s in ("auc", "tpr5")}
    for i in range(reps):
        c = np.where(rng.random(n) < 0.01, rng.uniform(2, 3, n), rng.uniform(0, 1, n))
        r = roc_analysis("sim", c, rng.uniform(1, 2, n), n_boot=n_boot, seed=i)
        c = np.where(rng.random(n) < 0.1, 5.0, 0.0)
        t = np.where(rng.random(n) < 0.01, 10.0, rng.uniform(1, 2, n))
        r2 = roc_analysis("sim", c, t, n_boot=n_boot, seed=i)
        for s, res, v, ci, truth, key in (("auc", r, r.auc, r.auc_ci, 0.99, "auc"),
                                          ("tpr5", r2, r2.tpr_at_5_fpr, r2.tpr_at_5_fpr_ci, 0.01,
                                           "tpr_at_5_fpr")):
            used = key in res.settings["exact_bounds"]
            old = (v, v) if used else ci  # the percentile interval: every resample at v
            rows[s]["exact"] += ci[0] <= truth <= ci[1]
            rows[s]["percentile"] += old[0] <= truth <= old[1]
            rows[s]["used"] += used
            rows[s]["width"].append(ci[1] - ci[0])
    return [{"stat": s, "exact_coverage": r["exact"] / reps,
             "percentile_coverage": r["percentile"] / reps, "share_exact": r["used"] / reps,
             "width": float(np.mean(r["width"]))} for s, r in rows.items()]


def real_study(n_boot: int, seed: int) -> list[dict]:
    """digits Patch 5%: every detector's AUC interval, pair bootstrap vs independent."""
    from workbench import paper

    _, res = paper.detection_study("digits", n=200, seed=seed, n_samples=64, attack="Patch",
                                   n_boot=n_boot)
    rows = []
    for r in res:
        ind = roc_analysis(r.method, r.clean_scores, r.triggered_scores, paired=False,
                           n_boot=n_boot, seed=seed)
        rho = float(np.corrcoef(r.clean_scores, r.triggered_scores)[0, 1]) \
            if np.ptp(r.clean_scores) > 0 and np.ptp(r.triggered_scores) > 0 else math.nan
        rows.append({"method": r.method, "bootstrap": r.bootstrap, "auc": r.auc,
                     "twin_correlation": rho, "auc_ci_pairs": list(r.auc_ci),
                     "auc_ci_stratified": list(ind.auc_ci),
                     "width_pairs": r.auc_ci[1] - r.auc_ci[0],
                     "width_stratified": ind.auc_ci[1] - ind.auc_ci[0]})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=1000, help="simulated studies per ρ")
    p.add_argument("--n", type=int, default=200, help="twins per study")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--delta", type=float, default=1.0, help="mean shift of the triggered scores")
    p.add_argument("--rhos", type=float, nargs="+", default=[-0.8, -0.4, 0.0, 0.4, 0.8])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--real", action="store_true", help="add the digits Patch 5%% study")
    p.add_argument("--json", help="also write the rows here")
    a = p.parse_args(argv)
    t0 = time.time()
    tr = truths(a.delta)
    print(f"# {a.reps} studies per ρ, {a.n} twins, {a.boot} resamples, Δ = {a.delta}: true AUC "
          f"{tr['auc']:.4f}, TPR@5%FPR {tr['tpr5']:.4f}, TPR@1%FPR {tr['tpr1']:.4f}; "
          f"coverage MC SE at 0.95: {math.sqrt(0.95 * 0.05 / a.reps):.3f}")
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    rows = []
    for s, name in (("auc", "AUC"), ("tpr5", "TPR@5%FPR"), ("tpr1", "TPR@1%FPR")):
        print(f"\n{name}: 95% interval coverage and mean width, pairs vs each set on its own")
        print("   ρ   cover pairs  cover indep   width pairs  width indep  ideal   indep/pairs  "
              "bias of the estimate")
        for rho in a.rhos:
            if s == "auc":
                rows.append(simulate(rho, a.reps, a.n, a.boot, a.delta, a.seed))
            r = next(x for x in rows if x["rho"] == rho)
            wp, wi = r[f"{s}_pairs_width"], r[f"{s}_stratified_width"]
            print(f"{rho:+5.1f}  {r[f'{s}_pairs_coverage']:10.3f}  {r[f'{s}_stratified_coverage']:11.3f}"
                  f"   {wp:11.3f}  {wi:11.3f}  {r[f'{s}_ideal_width']:5.3f}   "
                  f"{wi / wp if wp else math.nan:10.2f}   {r[f'{s}_bias']:+.4f}")
    out = {"simulation": rows, "settings": vars(a), "seconds": time.time() - t0}
    print(f"\nAt the boundary ({a.reps} studies of {a.n} + {a.n}, {a.boot} resamples): coverage of "
          "the 95% interval with the exact bounds and with the zero-width percentile one")
    print("statistic  truth  share at the boundary  cover exact  cover percentile  mean width")
    out["boundary"] = boundary(a.reps, a.n, a.boot, a.seed)
    for r in out["boundary"]:
        print(f"{r['stat']:9s}  {0.99 if r['stat'] == 'auc' else 0.01:5.2f}  {r['share_exact']:21.3f}"
              f"  {r['exact_coverage']:11.3f}  {r['percentile_coverage']:16.3f}  {r['width']:10.3f}")
    if a.real:
        t1 = time.time()
        real = real_study(a.boot, a.seed)
        print("\ndigits Patch 5% (small-cnn-bn, 200 twins): AUC 95% interval width")
        print("method         AUC    twin corr.  pairs [CI]              indep [CI]              indep/pairs")
        for r in real:
            print(f"{r['method']:13s}  {r['auc']:.3f}  {r['twin_correlation']:+9.2f}   "
                  f"{r['width_pairs']:.3f} [{r['auc_ci_pairs'][0]:.3f}, {r['auc_ci_pairs'][1]:.3f}]"
                  f"   {r['width_stratified']:.3f} [{r['auc_ci_stratified'][0]:.3f}, "
                  f"{r['auc_ci_stratified'][1]:.3f}]   "
                  f"{r['width_stratified'] / r['width_pairs'] if r['width_pairs'] else math.nan:.2f}")
        out["real"] = real
        out["real_seconds"] = time.time() - t1
        print(f"# real study: {out['real_seconds']:.0f} s")
    print(f"\n# {time.time() - t0:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
