"""The multi-seed detection study in tables (`workbench.detection_seeds`): per-seed spread, family
verdicts that hold on every seed or depend on it, rankings, and "is this model backdoored?" over
models; as rows (for notebooks), Markdown (for RESULTS and README) and an offline HTML report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..base.fileio import read_json, write_json
from ..studies.detection import LABELS, MODEL_LABELS
from ..studies.detection_seeds import (code_versions, family_verdicts, model_level, rankings,
                                       seed_summary, study_times)
from ..training.train import environment
from .report import ci, table_html, verdict_span, write_report


def _f(v: float, digits: int = 2) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def spread_rows(study: dict, evaluation: str = "all", metric: str = "auc",
                methods=None) -> list[dict]:
    """One row per (dataset, attack): each detector's `metric` as "mean ± sd [min, max]" over
    the seeds (the per-seed values in `seed_summary`)."""
    rows: dict[tuple, dict] = {}
    for s in seed_summary(study, evaluation, metric):
        if methods is not None and s["method"] not in methods:
            continue
        row = rows.setdefault((s["dataset"], s["attack"]), {
            "dataset": s["dataset"], "attack": s["attack"], "family": s["family"],
            "seeds": len(s["seeds"]), "mean ASR": _f(s["asr"], 3)})
        row[s["method"]] = (f"{_f(s['mean'])} ± {_f(s['sd'])} [{_f(s['min'])}, {_f(s['max'])}]"
                            if s["n"] > 1 else _f(s["mean"]))
    return list(rows.values())


def per_seed_rows(study: dict, evaluation: str = "all", metric: str = "auc",
                  methods=None, digits: int = 2) -> list[dict]:
    """One row per (dataset, attack): each detector's `metric` as "mean (seed 0/seed 1/…)",
    every seed's value shown (the per-seed table of benchmarks/RESULTS.md)."""
    rows: dict[tuple, dict] = {}
    for s in seed_summary(study, evaluation, metric):
        if methods is not None and s["method"] not in methods:
            continue
        row = rows.setdefault((s["dataset"], s["attack"]), {
            "dataset": s["dataset"], "attack": s["attack"], "ASR": _f(s["asr"], 2)})
        row[s["method"]] = (f"{_f(s['mean'], digits)} ("
                            + "/".join(_f(v, digits) for v in s["values"]) + ")")
    return list(rows.values())


def verdict_rows(study: dict, evaluation: str = "all") -> list[dict]:
    """One row per (dataset, family): each detector's verdict ("holds on every seed: detects",
    "… partial", "… misses", or "depends on the seed") with the family's AUC per seed."""
    rows: dict[tuple, dict] = {}
    for v in family_verdicts(study, evaluation):
        row = rows.setdefault((v["dataset"], v["family"]),
                              {"dataset": v["dataset"], "family": v["family"]})
        aucs = "/".join(_f(x) for x in v["per_seed"].values())
        short = v["verdict"].replace("holds on every seed: ", "")
        row[v["method"]] = f"{short} ({aucs})"
    return list(rows.values())


def ranking_rows(study: dict, evaluation: str = "all", methods=None) -> list[dict]:
    """One row per (dataset, family): the detectors above every other on every seed ("best"),
    or that no ranking holds; the order of the mean AUCs for reference."""
    out = []
    for r in rankings(study, evaluation, methods):
        best = ", ".join(r["best"]) if r["best"] else "none holds on every seed"
        top = sorted(r["mean"].items(), key=lambda kv: -kv[1])[:3]
        out.append({"dataset": r["dataset"], "family": r["family"],
                    "best on every seed": best, "seeds": len(r["seeds"]),
                    "top 3 by mean AUC": ", ".join(f"{m} {_f(v)}" for m, v in top)})
    return out


def model_level_rows(study: dict, negatives: str = "all") -> list[dict]:
    """One row per (dataset, model statistic): AUC over models [95% CI], TPR at 5% of the clean
    models flagged, counts, and the attacks that escape (seeds at or below the threshold)."""
    out = []
    for r in model_level(study, negatives=negatives):
        esc = "; ".join(f"{a} ({len(s)} of {r['models_per_attack'][a]})"
                        for a, s in r["escapes"].items()) or "none"
        stat = r["statistic"] + (" (chosen σ)" if r["chosen"] else "")
        out.append({"dataset": r["dataset"], "statistic": stat,
                    "AUC over models [95% CI]": ci(r["auc"], r["auc_ci"], signed=False),
                    "TPR at 5% FPR": _f(r["tpr_at_5_fpr"]),
                    "backdoored / clean": f"{r['n_backdoored']} / {r['n_clean']}",
                    "target named": f"{r['target_named']} of {r['target_models']}",
                    "escape (seeds)": esc})
    return out


def seeds_tables(study: dict) -> dict:
    """Every table of the report as rows (what `write_seeds_report` keeps in its .json and
    `read_seeds_tables` gives back): verdicts, rankings and spreads per evaluation set, the
    model-level AUC (all clean models, and the detection architecture's only), times."""
    t = {}
    for ev in ("all", "filtered"):
        t[f"verdicts {ev}"] = verdict_rows(study, ev)
        t[f"rankings {ev}"] = ranking_rows(study, ev)
        t[f"auc {ev}"] = spread_rows(study, ev)
        t[f"tpr1 {ev}"] = spread_rows(study, ev, "tpr1")
        t[f"tpr5 {ev}"] = spread_rows(study, ev, "tpr5")
        t[f"per seed auc {ev}"] = per_seed_rows(study, ev)
    t["model level"] = model_level_rows(study)
    t["model level same architecture"] = model_level_rows(study, "same-architecture")
    t["times"] = [{k: (round(v) if isinstance(v, float) else v) for k, v in r.items()}
                  for r in study_times(study)]
    return t


# The study's summary as measured for benchmarks/RESULTS.md (`write_seeds_report`'s .json, kept
# in the repository so that notebook 07 shows it without the two-hour study).
RECORDED_SUMMARY = Path(__file__).resolve().parents[2] / "benchmarks" / "detection-seeds.json"


def read_seeds_tables(path: str | Path | None = None) -> dict:
    """The tables of a written study (`write_seeds_report`'s .json: `path`; default the
    recorded one, RECORDED_SUMMARY) as {"tables": {name: rows}, "rankings", "verdicts",
    "model_level", "settings", "by_dataset", "jobs", "missing", "versions", "environment"}. Plain
    JSON: nothing in the file runs. A summary written by other code versions (`code_versions`)
    is refused."""
    path = Path(path) if path is not None else RECORDED_SUMMARY
    if not path.exists():
        raise FileNotFoundError(f"no written detection-seeds study at {path}: run "
                                "`python -m workbench.detection --seeds 0 1 2 --workers 2`.")
    data = read_json(path, "detection-seeds summary")
    if not isinstance(data, dict) or not isinstance(data.get("tables"), dict):
        raise ValueError(f"{path} is not a detection-seeds summary (no 'tables'); got "
                         f"{type(data).__name__}.")
    if data.get("versions") != code_versions():
        raise ValueError(f"{path} was written by other code (versions {data.get('versions')}; "
                         f"this code: {code_versions()}): its numbers may not be this code's. "
                         "Recompute it: `python -m workbench.detection --seeds 0 1 2 --workers 2` "
                         "(finished jobs of this code are kept).")
    return data


def _md_table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def seeds_markdown(study: dict, methods=None) -> str:
    """The study as Markdown: verdicts and rankings on both evaluation sets, model-level AUC,
    per-seed spreads (all inputs), and the missing jobs."""
    parts = []
    if study["missing"]:
        parts.append(f"**{len(study['missing'])} job(s) not finished**: the tables below are "
                     "partial.\n")
    for ev in ("all", "filtered"):
        parts += [f"#### Family verdicts, {ev} inputs\n", _md_table(verdict_rows(study, ev)),
                  f"#### Rankings that hold on every seed, {ev} inputs\n",
                  _md_table(ranking_rows(study, ev, methods))]
    parts += ["#### Is this model backdoored? (AUC over models)\n",
              _md_table(model_level_rows(study)),
              "Same architecture only (the detection model's clean models as negatives):\n",
              _md_table(model_level_rows(study, "same-architecture")),
              "#### AUC per attack and seed, all inputs: mean (seed 0/1/2)\n",
              _md_table(per_seed_rows(study, "all", "auc", methods)),
              "#### AUC per attack and seed, filtered inputs\n",
              _md_table(per_seed_rows(study, "filtered", "auc", methods)),
              "#### TPR at 1% FPR per attack and seed, all inputs\n",
              _md_table(per_seed_rows(study, "all", "tpr1", methods)),
              "#### TPR at 5% FPR per attack and seed, all inputs\n",
              _md_table(per_seed_rows(study, "all", "tpr5", methods)),
              "#### Wall time and memory\n", _md_table([
                  {k: (round(v) if isinstance(v, float) else v) for k, v in r.items()}
                  for r in study_times(study)])]
    return "\n".join(parts)


def write_seeds_report(study: dict, out: str | Path = "reports/detection-seeds.html",
                       seconds: float | None = None) -> Path:
    """The study as offline HTML at `out`, its Markdown beside it (.md) and the summary rows as
    JSON (.json)."""
    if not study["records"]:
        raise ValueError("`study` must hold at least one finished job; got none.")
    out = Path(out)
    labels = "".join(f"<li><b>{m}</b>: {LABELS.get(m, m)}</li>" for m in study["settings"]["methods"])
    mlabels = "".join(f"<li><b>{m}</b>: {t}</li>" for m, t in MODEL_LABELS.items())
    st = study["settings"]
    per = study.get("by_dataset") or {"every dataset": st}
    inputs = "; ".join(f"{d}: {v['n']} clean vs {v['n']} triggered test inputs per model, W_σ "
                       f"with {v['n_samples']} samples per σ" for d, v in per.items())
    note = (f"<p class='note'>{inputs} (classes other than the target; every class for "
            f"all-to-all); intervals: bootstrap over inputs, {st['n_boot']} "
            "resamples. A verdict holds only if the family's mean AUC falls in the same band "
            "(detects ≥ 0.9 > partial ≥ 0.6 > misses) on every seed. The filtered set: clean "
            "inputs the model classifies correctly, triggered inputs the backdoor fires on.</p>")
    missing = ([verdict_span(f"{len(study['missing'])} job(s) not finished: partial tables",
                             "mixed")] if study["missing"] else [])
    sections = [("Detectors", [f"<ul>{labels}</ul>", note] + missing)]
    for ev in ("all", "filtered"):
        sections.append((f"Verdicts per family ({ev} inputs)", [
            table_html(verdict_rows(study, ev)), "<h3>Rankings that hold on every seed</h3>",
            table_html(ranking_rows(study, ev))]))
        sections.append((f"AUC per attack over seeds ({ev} inputs)", [
            table_html(spread_rows(study, ev)), "<h3>TPR at 1% FPR</h3>",
            table_html(spread_rows(study, ev, "tpr1")), "<h3>TPR at 5% FPR</h3>",
            table_html(spread_rows(study, ev, "tpr5"))]))
    sections.append(("Is this model backdoored?", [
        f"<ul>{mlabels}</ul>", table_html(model_level_rows(study)),
        "<h3>Clean models of the detection architecture only</h3>",
        table_html(model_level_rows(study, "same-architecture"))]))
    sections.append(("Wall time and memory", [table_html(study_times(study))]))
    write_report(out, "Detection over seeds: which conclusions hold on every trained model",
                 sections, metadata={"settings": st, "by_dataset": study.get("by_dataset"),
                                     "environment": environment(),
                                     "seconds": None if seconds is None else round(seconds, 1),
                                     "jobs": len(study["records"]),
                                     "missing": [j.slug for j in study["missing"]]})
    out.with_suffix(".md").write_text(seeds_markdown(study))
    write_json(out.with_suffix(".json"), {
        "settings": st, "by_dataset": study.get("by_dataset"), "jobs": len(study["records"]),
        "versions": code_versions(),
        "missing": [j.slug for j in study["missing"]], "tables": seeds_tables(study),
        "verdicts": {ev: family_verdicts(study, ev) for ev in ("all", "filtered")},
        "rankings": {ev: rankings(study, ev) for ev in ("all", "filtered")},
        "model_level": model_level(study), "environment": environment()}, default=str)
    return out


__all__ = ["per_seed_rows", "RECORDED_SUMMARY", "read_seeds_tables", "seeds_tables", "model_level_rows", "ranking_rows", "seeds_markdown", "spread_rows", "verdict_rows",
           "write_seeds_report"]
