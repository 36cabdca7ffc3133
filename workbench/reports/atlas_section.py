"""The attack atlas's section of the paper report: per-family verdicts, Spearman intervals and a
readable table."""

from __future__ import annotations


import numpy as np
import pandas as pd

from . import plots
from .report import ci, percent, pval, table_html
from ..estimator.stats import spearman_ci
from ..studies.sweep import (check_table)
from .report import verdict_span
from .sweep_section import run_settings


# --- The attack atlas (issue 11) ----------------------------------------------------------------

def atlas_rows(table: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The atlas rows a report uses: rows of this version's row format whose `attack` is set, one
    per trained run (`plots.atlas_frame`: runs are named by `sweep.RUN_COLUMNS`, which tell
    Patch from Patch/clean-label), sorted by family and attack (display order), dataset, rate and
    seed. Returns (rows, {"read": n, "used": m}); rows is empty (never an error) when `table`
    holds no atlas rows of this row format."""
    check_table("table", table)
    missing = [c for c in plots.ATLAS_COLUMNS if c not in table.columns]
    if missing:
        return table.iloc[:0], {"read": len(table), "used": 0}
    rows = plots.atlas_frame(table, allow_empty=True)
    return rows, {"read": len(table), "used": len(rows)}


def has_atlas(rows: pd.DataFrame) -> bool:
    """An atlas worth a section: more than one distinct attack."""
    return len(rows) > 0 and rows["attack"].nunique() > 1


def _cell_state(g: pd.DataFrame) -> str:
    """One (attack, dataset) at its strong rate over its seeds: "smoother" when every seed's gap
    interval lies above 0, "reversed" when every one lies below, else "not shown"."""
    if (g["gap_ci_low"] > 0).all():
        return "smoother"
    if (g["gap_ci_high"] < 0).all():
        return "reversed"
    return "not shown"


def atlas_verdicts(rows: pd.DataFrame) -> list[dict]:
    """Per attack family (display order), at each attack's strong rate (the larger of its rates
    on a dataset in the table): does smoothing appear? Each (attack, dataset) is "smoother" when
    the gap's 95% interval lies above 0 on every seed, "reversed" when below 0 on every seed,
    "not shown" otherwise; a family is "smoother" or "reversed" when all its attacks are, "not
    shown" when none is either, "mixed" otherwise. Rows: {"family", "attacks", "cells" (per
    attack and dataset: rate, seeds, gaps, state), "measured", "verdict", "tone"}."""
    rows, _ = atlas_rows(rows)
    strong = plots.strong_rate_rows(rows) if len(rows) else rows
    out = []
    for fam in dict.fromkeys(strong["family"]):
        f = strong[strong["family"] == fam]
        cells = []
        for (attack, ds), g in f.groupby(["attack", "dataset"], sort=False):
            g = g.sort_values("seed")
            cells.append({"attack": attack, "dataset": ds, "rate": float(g["rate"].iloc[0]),
                          "seeds": [int(s) for s in g["seed"]],
                          "gaps": [float(v) for v in g["gap"]],
                          "gap_ci": [[float(a), float(b)]
                                     for a, b in zip(g["gap_ci_low"], g["gap_ci_high"])],
                          "asr": [float(v) for v in g["attack_success_rate"]],
                          "state": _cell_state(g)})
        states = [c["state"] for c in cells]
        n_seeds = sorted({len(c["seeds"]) for c in cells})
        if all(s == "smoother" for s in states):
            verdict, tone = "smoother", "yes"
        elif all(s == "reversed" for s in states):
            verdict, tone = "reversed", "no"
        elif all(s == "not shown" for s in states):
            verdict, tone = "not shown", "none"
        else:
            verdict = (f"mixed: {states.count('smoother')} smoother, {states.count('reversed')} "
                       f"reversed, {states.count('not shown')} not shown (of {len(cells)} attack × "
                       "dataset pairs)")
            tone = "mixed"
        if n_seeds == [1]:
            verdict += " (one seed only)"
        measured = "; ".join(
            f"{c['attack']}, {c['dataset']}, {percent(c['rate'])}: {c['state']} (gap "
            + ", ".join(f"{v:+.3f}" for v in c["gaps"])
            + (f" on seeds {', '.join(map(str, c['seeds']))}" if len(c["seeds"]) > 1 else
               f" on seed {c['seeds'][0]}") + ")"
            for c in cells)
        out.append({"family": fam, "attacks": list(dict.fromkeys(c["attack"] for c in cells)),
                     "cells": cells, "measured": measured, "verdict": verdict, "tone": tone})
    return out


def atlas_correlations(rows: pd.DataFrame) -> dict:
    """Spearman's ρ of the gap with the ASR and with the trigger's mean L2 norm over the atlas's
    runs (`atlas_rows`: one per run), with a 95% Fisher-z interval (`stats.spearman_ci`): per
    dataset and over all datasets pooled. {scope: {"runs": n, "asr": {...} or None, "l2": {...}
    or None}}; None where fewer than 4 runs or a constant column leave no correlation. Runs of
    one attack (seeds, rates) are not independent draws of attacks: read the interval as a
    description of these runs, not of attacks at large."""
    rows, _ = atlas_rows(rows)
    scopes = [(str(ds), g) for ds, g in rows.groupby("dataset", sort=True)]
    if len(scopes) > 1:
        scopes.append(("all datasets", rows))
    out = {}
    for scope, g in scopes:
        entry: dict = {"runs": len(g)}
        for key, col in (("asr", "attack_success_rate"), ("l2", "trigger_l2")):
            x, y = g[col].to_numpy(float), g["gap"].to_numpy(float)
            ok = np.isfinite(x) & np.isfinite(y)
            entry[key] = None
            if ok.sum() >= 4 and np.ptp(x[ok]) > 0 and np.ptp(y[ok]) > 0:
                s = spearman_ci(x[ok], y[ok])
                entry[key] = {"rho": round(s["rho"], 3), "ci": [round(c, 3) for c in s["ci"]],
                              "p_value": float(f"{s['p_value']:.3g}"), "n": int(s["n"])}
        out[scope] = entry
    return out


def _rho_text(c: dict | None) -> str:
    if c is None:
        return "n/a (needs ≥ 4 runs that differ)"
    p = pval(c["p_value"])
    return f"ρ {ci(c['rho'], c['ci'], 2)}, p {p if p.startswith('<') else '= ' + p}, {c['n']} runs"


def atlas_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The atlas for people, one row per run sorted by family, attack, dataset, rate and seed:
    Attack, Family, Dataset, Rate, Seed, Clean acc., ASR, Gap [95% CI] ("+0.236 [+0.114,
    +0.359]", nats), Radius gap [95% CI] (σ), Trigger L2 / L∞ (mean norms of x′ − x)."""
    rows, _ = atlas_rows(rows)

    def norms(r):
        f = lambda v: "n/a" if v is None or not np.isfinite(v) else f"{v:.3g}"  # noqa: E731
        return f"{f(r['trigger_l2'])} / {f(r['trigger_linf'])}"

    return pd.DataFrame([{
        "Attack": r["attack"], "Family": r["family"], "Dataset": r["dataset"],
        "Rate": percent(r["rate"]), "Seed": int(r["seed"]),
        "Clean acc.": f"{r['clean_accuracy']:.3f}", "ASR": f"{r['attack_success_rate']:.3f}",
        "Gap [95% CI]": ci(r["gap"], (r["gap_ci_low"], r["gap_ci_high"])),
        "Radius gap [95% CI]": ci(r["radius_gap"], (r["radius_gap_ci_low"], r["radius_gap_ci_high"])),
        "Trigger L2 / L∞": norms(r)} for r in rows.to_dict("records")],
        columns=["Attack", "Family", "Dataset", "Rate", "Seed", "Clean acc.", "ASR", "Gap [95% CI]",
                 "Radius gap [95% CI]", "Trigger L2 / L∞"])


def atlas_findings(rows: pd.DataFrame) -> list[dict]:
    """The atlas's lines of the report's summary of findings: one per family (`atlas_verdicts`)
    and one per dataset for the correlations (gap vs ASR, gap vs trigger L2). Empty without an
    atlas (fewer than two attacks)."""
    rows, _ = atlas_rows(rows)
    if not has_atlas(rows):
        return []
    out = [{"finding": f"Attack atlas: {v['family']} ({', '.join(v['attacks'])}) at the strong "
                       "rate: triggered inputs smoother on every seed?",
            "measured": v["measured"], "verdict": verdict_span(v["verdict"], v["tone"])}
           for v in atlas_verdicts(rows)]
    for scope, e in atlas_correlations(rows).items():
        a, l2 = e["asr"], e["l2"]
        if a is None and l2 is None:
            continue
        tone = lambda c: "none" if c is None or c["ci"][0] <= 0 <= c["ci"][1] else (  # noqa: E731
            "yes" if c["ci"][0] > 0 else "no")
        verdict = (("gap grows with ASR" if tone(a) == "yes" else "gap falls with ASR"
                    if tone(a) == "no" else "no clear link to ASR") + "; " +
                   ("grows with the trigger's L2" if tone(l2) == "yes" else "falls with the "
                    "trigger's L2" if tone(l2) == "no" else "no clear link to the trigger's L2"))
        out.append({"finding": f"Attack atlas: does the gap follow the ASR or the trigger's size? "
                               f"({scope})",
                    "measured": f"gap vs ASR: {_rho_text(a)}; gap vs trigger L2: {_rho_text(l2)}",
                    "verdict": verdict_span(verdict, "none")})
    return out


def attack_atlas_section(rows: pd.DataFrame) -> tuple[str, list] | None:
    """The attack atlas's section of the report (issue 11: every attack family side by side): a
    summary of findings per family (`atlas_verdicts`) with the Spearman correlations of the gap
    with ASR and with the trigger's L2 norm (`atlas_correlations`), the table of runs
    (`atlas_table`), the gap against ASR and against the trigger's L2 norm, and the W_σ curves
    per attack (one figure per dataset). rows: a sweep table (`read_table`); only its atlas rows
    of this row format are used (`atlas_rows`). Returns (heading, [HTML and figures]), or None
    to leave the section out when the table holds rows of fewer than two attacks."""
    rows, counts = atlas_rows(rows)
    if not has_atlas(rows):
        return None
    verdicts = atlas_verdicts(rows)
    corr = atlas_correlations(rows)
    summary = [{"family": v["family"], "attacks": ", ".join(v["attacks"]),
                "at the strong rate": v["measured"], "verdict": verdict_span(v["verdict"], v["tone"])}
               for v in verdicts]
    corr_rows = [{"datasets": scope, "runs": e["runs"],
                  "Spearman ρ (gap, ASR) [95% CI]": ci(e["asr"]["rho"], e["asr"]["ci"], 2)
                  if e["asr"] else "n/a", "p (ASR)": pval(e["asr"]["p_value"]) if e["asr"] else "n/a",
                  "Spearman ρ (gap, trigger L2) [95% CI]": ci(e["l2"]["rho"], e["l2"]["ci"], 2)
                  if e["l2"] else "n/a", "p (L2)": pval(e["l2"]["p_value"]) if e["l2"] else "n/a"}
                 for scope, e in corr.items()]
    n_att, n_fam = rows["attack"].nunique(), rows["family"].nunique()
    seeds = sorted(int(s) for s in rows["seed"].unique())
    n_rates = sorted(rows.groupby(["attack", "dataset"])["rate"].nunique().unique())
    rates = "–".join(map(str, (n_rates[0], n_rates[-1]) if len(n_rates) > 1 else n_rates))
    parts = [
        "<p class='note'>Which backdoors make the decision function smoother, and does the "
        f"trigger's size explain it? {n_att} attacks of {n_fam} families, each at {rates} "
        f"poisoning rate{'s' if n_rates != [1] else ''} per dataset, seed"
        f"{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} ({len(rows)} runs: "
        f"{run_settings(rows)}). An attack's strong rate is the larger of its rates in the table. "
        "Verdicts per family at the strong rate: “smoother” when the gap's 95% interval lies above "
        "0 on every seed for every attack of the family, “reversed” when below 0 on every seed, "
        "“not shown” when neither holds for any, “mixed” otherwise. The trigger's size is the mean "
        "L2 (and L∞) norm of x′ − x over the evaluated inputs. The ASR of all-to-all attacks is "
        "measured against each input's own shifted label.</p>",
        table_html(summary, classes="findings"),
        "<h3>Does the gap follow the ASR, or the trigger's size?</h3>", table_html(corr_rows),
        "<p class='note'>Spearman's ρ over the runs (one per trained model), 95% Fisher-z "
        "interval. The runs of one attack (two rates, several seeds) are not independent draws of "
        "attacks, and pooled datasets mix norm scales: read these as descriptions of the runs "
        "above.</p>",
        "<h3>Every run</h3>", table_html(atlas_table(rows)),
        plots.atlas_gap_vs_asr(rows), plots.atlas_gap_vs_norm(rows)]
    parts += [plots.atlas_curves(rows, dataset=ds) for ds in sorted(rows["dataset"].unique())]
    for p in parts:  # in the report, figures take the page's width (write_report: responsive)
        if not isinstance(p, str):
            p.update_layout(width=None)
    return "Attack atlas", parts
