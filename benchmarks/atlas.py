"""The attack atlas's tables for benchmarks/RESULTS.md, from its CSV.

    python -m workbench sweep --atlas --workers 2          # reports/atlas.csv (resumable)
    python benchmarks/atlas.py [--csv reports/atlas.csv] [--noise-fires]   # markdown tables

One row per attack, dataset and rate: ASR, clean accuracy and the mean-W gap with its 95% CI for
each seed, the radius gap, the trigger's mean L2 / L∞ norm; then Spearman correlations of the gap
with ASR and with the trigger's L2 norm (Fisher-z intervals, `workbench.stats.spearman_ci`), over
all rows and within each dataset, and the share of rows whose gap CI lies above / below zero.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench import atlas  # noqa: E402
from workbench.stats import spearman_ci  # noqa: E402
from workbench.sweep import current_rows, read_table  # noqa: E402


def _gap(r) -> str:
    return f"{r['gap']:+.3f} [{r['gap_ci_low']:+.3f}, {r['gap_ci_high']:+.3f}]"


def _sign(r) -> str:
    return "+" if r["gap_ci_low"] > 0 else "−" if r["gap_ci_high"] < 0 else "0"


def _norms(rs) -> str:
    """L2 / L∞ once when every seed's trigger is the same size, else per seed (crafted and
    generated triggers differ by seed)."""
    cells = [f"{r['trigger_l2']:.2f} / {r['trigger_linf']:.2f}" for r in rs]
    return cells[0] if len(set(cells)) == 1 else " · ".join(cells)


def tables(t) -> str:
    out = []
    order = {a: i for i, a in enumerate(atlas.ATTACKS)}
    for d, g in t.groupby("dataset", sort=False):
        out.append(f"\n**{d}** (seed 0 / seed 1; gap in nats, mean W over σ, clean − triggered)\n")
        out.append("| attack | family | rate | ASR | clean acc. | gap [95% CI] | radius gap (σ) | "
                   "L2 / L∞ |")
        out.append("|---|---|---|---|---|---|---|---|")
        g = g.assign(_o=g["attack"].map(order)).sort_values(["_o", "rate", "seed"])
        for (a, rate), h in g.groupby(["attack", "rate"], sort=False):
            rs = h.to_dict("records")
            out.append(f"| {a} | {rs[0]['family']} | {rate:g} | "
                       + " / ".join(f"{r['attack_success_rate']:.3f}" for r in rs) + " | "
                       + " / ".join(f"{r['clean_accuracy']:.3f}" for r in rs) + " | "
                       + " / ".join(_gap(r) for r in rs) + " | "
                       + " / ".join(f"{r['radius_gap']:+.3f}" for r in rs) + " | "
                       + _norms(rs) + " |")
    return "\n".join(out)


def correlations(t) -> str:
    out = ["\n| rows | n | ρ(gap, ASR) [95% CI] | ρ(gap, trigger L2) [95% CI] | gap CI > 0 | "
           "gap CI < 0 |", "|---|---|---|---|---|---|"]
    groups = [("all", t)] + [(d, g) for d, g in t.groupby("dataset", sort=False)]
    strong = t[t.apply(lambda r: r["rate"] == max(atlas.attack_rates(r["attack"], r["dataset"])),
                       axis=1)]
    groups += [("strong rate, ASR ≥ 0.9", strong[strong["attack_success_rate"] >= 0.9])]
    for name, g in groups:
        cells = []
        for col in ("attack_success_rate", "trigger_l2"):
            c = spearman_ci(g[col].to_numpy(), g["gap"].to_numpy())
            cells.append(f"{c['rho']:+.2f} [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}]")
        pos = int((g["gap_ci_low"] > 0).sum())
        neg = int((g["gap_ci_high"] < 0).sum())
        out.append(f"| {name} | {len(g)} | {cells[0]} | {cells[1]} | {pos} | {neg} |")
    return "\n".join(out)


def families(t) -> str:
    """Per family and dataset at the strong rate: rows with the gap CI above / within / below 0."""
    out = ["\n| family | dataset | runs at the strong rate | ASR ≥ 0.9 | gap CI > 0 | straddles 0 | "
           "gap CI < 0 | mean gap |", "|---|---|---|---|---|---|---|---|"]
    t = t[t.apply(lambda r: r["rate"] == max(atlas.attack_rates(r["attack"], r["dataset"])), axis=1)]
    for fam in atlas.FAMILIES:
        for d, g in t[t["family"] == fam].groupby("dataset", sort=False):
            s = g.apply(_sign, axis=1)
            out.append(f"| {fam} | {d} | {len(g)} | {int((g['attack_success_rate'] >= 0.9).sum())} "
                       f"| {int((s == '+').sum())} | {int((s == '0').sum())} | "
                       f"{int((s == '−').sum())} | {np.mean(g['gap']):+.3f} |")
    return "\n".join(out)


def noise_fires(t, n: int = 300) -> str:
    """Does Gaussian noise alone fire the backdoor? `atlas.noise_to_target` of each strong-rate
    model (first n test inputs the attack applies to, one draw each, seed 0, not clipped) at the
    middle and the largest σ of the dataset's grid, beside the run's gap."""
    from workbench.data import load_dataset

    out = ["\n| dataset | attack | rate | seed | gap [95% CI] | noisy clean → target at σ mid / max |",
           "|---|---|---|---|---|---|"]
    for d, g in t.groupby("dataset", sort=False):
        data = load_dataset(d)
        for r in g.sort_values(["attack", "seed"]).to_dict("records"):
            a = atlas.ATTACKS[r["attack"]]
            if r["rate"] != atlas.attack_rates(a.name, d)[1]:
                continue
            run = atlas.train_attack(data, a.name, rate=r["rate"], seed=r["seed"])
            sig = r["sigmas"]
            at = atlas.noise_to_target(run, data, (sig[len(sig) // 2], sig[-1]), n=n, seed=0)
            out.append(f"| {d} | {a.name} | {r['rate']:g} | {r['seed']} | {_gap(r)} | "
                       + " / ".join(f"{v:.2f}" for v in at.values())
                       + f" (σ {sig[len(sig) // 2]:g} / {sig[-1]:g}) |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", default=atlas.ATLAS_CSV)
    p.add_argument("--noise-fires", action="store_true",
                   help="also: the share of noisy clean inputs each strong-rate model sends to the "
                   "target (loads every run from the run cache)")
    args = p.parse_args(argv)
    t, stale = current_rows(read_table(args.csv))
    t = t[t["attack"].isin(list(atlas.ATTACKS)) & (t["poisoning"] != "")]
    print(f"{len(t)} rows of row format {int(t['row_format'].iloc[0])} ({stale} older ones left out)")
    print(tables(t))
    print(families(t))
    print(correlations(t))
    if args.noise_fires:
        print(noise_fires(t))
    return 0


if __name__ == "__main__":
    sys.exit(main())
