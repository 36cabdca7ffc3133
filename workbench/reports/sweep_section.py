"""The attack-strength section of the paper report: the sweep's runs, ASR against the gap,
Spearman's correlation, the findings."""

from __future__ import annotations


import numpy as np
import pandas as pd

from . import plots
from .report import ci, percent, pval
from ..estimator.stats import spearman_ci
from ..studies.sweep import (check_table, current_rows,
                             latest_per_run)
from .report import direction, runs_phrase, verdict_span


# A trained run is named by `sweep.RUN_COLUMNS` (dataset, attack, trigger, poisoning, target mode,
# rate, target, seed, model, epochs, training subset) and counted once by `sweep.latest_per_run`:
# the one definition, shared with the atlas's figures (both names are kept here as they were).


def report_rows(table: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The rows a report uses: those of this version's row format (`sweep.current_rows`: rows of
    older tables are set apart, never mixed in), one per trained run (`latest_per_run`: rows of
    different attacks are different runs), sorted by dataset, trigger, attack, rate, target and
    seed. Returns (rows, {"stale": n, "superseded": m})."""
    current, stale = current_rows(table)
    latest, superseded = latest_per_run(current)
    latest = latest.sort_values(["dataset", "trigger_type", "trigger_size", "attack", "poisoning",
                                 "target_mode", "max_train", "rate", "target", "seed"],
                                kind="stable").reset_index(drop=True)
    return latest, {"stale": stale, "superseded": superseded}


def headline(table: pd.DataFrame) -> dict:
    """Spearman correlations of ASR with the mean-W gap and with the radius gap, per dataset,
    over distinct runs (`latest_per_run`): "runs" is the n of the intervals."""
    check_table("table", table)
    table, _ = latest_per_run(table)
    out = {}
    for ds, rows in table.groupby("dataset", sort=True):
        asr = rows["attack_success_rate"].to_numpy()
        entry = {"runs": len(rows)}
        for col in ("gap", "radius_gap"):
            if len(rows) >= 4 and np.ptp(asr) > 0:
                s = spearman_ci(asr, rows[col].to_numpy())
                entry[col] = {"rho": round(s["rho"], 3), "ci": [round(c, 3) for c in s["ci"]],
                              "p_value": float(f"{s['p_value']:.3g}")}
        out[str(ds)] = entry
    return out


# --- The paper report (reports/paper.html) -----------------------------------------------------

def attack_strength_table(rows: pd.DataFrame) -> pd.DataFrame:
    """A sweep's rows for people (`report_rows`' order): human headers, the trigger named with
    its attack where that is not the plain trigger (`plots.sweep_series`: "Patch/all-to-all:
    Patch 3×3") and the training subset where limited, rates as percentages, accuracies to 3
    decimals, each gap with its 95% interval in one column, p-values to 2 digits; target, seed,
    model and epochs only where they vary (else `run_settings` says). The radius gap's p-value
    stays in the CSV (its interval is shown)."""
    check_table("rows", rows)
    vary = [c for c in ("model", "epochs", "target", "seed") if rows[c].nunique() > 1]
    out = []
    for r in rows.to_dict("records"):
        row = {"dataset": r["dataset"], "trigger": plots.sweep_series(r),
               "poisoning rate": "0 (control)" if r["rate"] == 0 else percent(r["rate"])}
        row.update({c: r[c] for c in vary})
        row.update({
            "clean accuracy": f"{r['clean_accuracy']:.3f}", "ASR": f"{r['attack_success_rate']:.3f}",
            "smoothing gap, nats [95% CI]": ci(r["gap"], (r["gap_ci_low"], r["gap_ci_high"])),
            "p": pval(r["p_value"]),
            "radius gap, σ [95% CI]": ci(r["radius_gap"], (r["radius_gap_ci_low"],
                                                          r["radius_gap_ci_high"]))})
        out.append(row)
    return pd.DataFrame(out)


def run_settings(rows: pd.DataFrame) -> str:
    """One sentence with what every row shares (model, epochs, target, seed, pairs, samples, σ)."""
    def one(col, fmt="{}"):
        vals = sorted(rows[col].unique().tolist())
        return fmt.format(vals[0]) if len(vals) == 1 else "/".join(fmt.format(v) for v in vals)

    return (f"model {one('model')}, {one('epochs')} epochs, target {one('target')}, seed "
            f"{one('seed')}; {one('n_pairs')} clean/triggered test pairs × {one('n_samples')} noisy "
            f"samples per σ, σ from {one('sigma_min', '{:g}')} to {one('sigma_max', '{:g}')}")


def correlation_table(head: dict) -> list[dict]:
    """`headline`'s correlations per dataset, each ρ with its 95% interval in one column."""
    rows = []
    for ds, e in head.items():
        row = {"dataset": ds, "runs": e["runs"]}
        for col, what in (("gap", "mean-W gap"), ("radius_gap", "radius gap")):
            c = e.get(col)
            row[f"Spearman ρ (ASR, {what}) [95% CI]"] = (
                ci(c["rho"], c["ci"], digits=2) if c else "n/a (needs ≥ 4 runs)")
            row[f"p ({what})"] = pval(c["p_value"]) if c else "n/a"
        rows.append(row)
    return rows


def _gap_range(g: pd.DataFrame) -> str:
    if len(g) == 1:
        r = g.iloc[0]
        return "gap " + ci(r["gap"], (r["gap_ci_low"], r["gap_ci_high"]))
    return f"gaps {g['gap'].min():+.3f} to {g['gap'].max():+.3f}"


def sweep_findings(rows: pd.DataFrame, head: dict) -> list[dict]:
    """The sweep's findings per dataset, each with what was measured and a verdict: claim 4 (the
    correlation of ASR and gap), successful and unsuccessful attacks, and the clean-model control."""
    out = []
    for ds, e in head.items():
        g = rows[rows["dataset"] == ds]
        c, r = e.get("gap"), e.get("radius_gap")
        if c is None:
            measured, verdict, tone = (f"{runs_phrase(e['runs'])}: a correlation needs at least 4 runs "
                                       "with different ASR", "not measured", "none")
        else:
            measured = (f"Spearman ρ(ASR, mean-W gap) {ci(c['rho'], c['ci'], 2)}, p = "
                        f"{pval(c['p_value'])}, {e['runs']} runs"
                        + (f"; with the radius gap {ci(r['rho'], r['ci'], 2)}" if r else ""))
            verdict, tone = (("reproduces", "yes") if c["ci"][0] > 0 else
                             ("reverses", "no") if c["ci"][1] < 0 else
                             ("inconclusive: the interval includes 0", "mixed"))
        out.append({"finding": f"Smoothing grows with the attack's success (claim 4), {ds}",
                    "measured": measured, "verdict": verdict_span(verdict, tone)})
        for label, sel in (
                ("Successful attacks (ASR ≥ 0.9): triggered inputs smoother", 
                 (g["rate"] > 0) & (g["attack_success_rate"] >= 0.9)),
                ("Unsuccessful attacks (ASR < 0.5)", (g["rate"] > 0) & (g["attack_success_rate"] < 0.5)),
                ("Control: the trigger on a clean model (rate 0)", g["rate"] == 0)):
            sub = g[sel]
            counts, verdict, tone = direction(sub["gap_ci_low"].to_numpy(),
                                               sub["gap_ci_high"].to_numpy())
            if not label.startswith("Successful"):
                tone = "none" if tone in ("yes", "no") else tone  # descriptive, not a claim
            measured = f"{runs_phrase(len(sub))}: {_gap_range(sub)}; {counts}" if len(sub) else "no such run"
            out.append({"finding": f"{label}, {ds}", "measured": measured,
                        "verdict": verdict_span(verdict, tone)})
    return out
