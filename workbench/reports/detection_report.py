"""The detection study's report: tables, families, ROC curves, the heatmap, `reports/detection.html`,
and its command line, `python -m workbench.detection`."""

from __future__ import annotations

import argparse
import sys

import time
from pathlib import Path

import numpy as np

from ..studies import atlas as _atlas, detection
from . import plots
from ..base._validate import check_choice
from ..studies.detection import METHODS
from ..base.data import DATASETS
from ..base.fileio import write_json
from .report import ci, table_html, write_report
from ..training.train import environment
from ..studies.detection_study import DETECTION_ATTACKS, DETECTION_MODEL, detection_atlas
from .report import verdict_span
from ..studies.detection_seeds import CLEAN_MODELS, DEFAULT_OUT, load_study, run_study
from .detection_seeds_section import write_seeds_report

DATASETS_STUDIED = ("digits", "fashion-mnist")  # the multi-seed study's default datasets


def detection_table(atlas: list[dict], metric: str = "auc") -> list[dict]:
    """One row per (dataset, attack): the run, then each detector's `metric` ("auc",
    "tpr_at_1_fpr" or "tpr_at_5_fpr") with its bootstrap 95% interval, as "0.978 [0.961, 0.991]"."""
    check_choice("metric", metric, ("auc", "tpr_at_1_fpr", "tpr_at_5_fpr"))
    rows = []
    for e in atlas:
        row = {"dataset": e["dataset"], "attack": e["attack"], "rate": e["rate"],
               "clean acc.": round(e["clean_accuracy"], 3), "ASR": round(e["attack_success_rate"], 3)}
        for r in e["results"]:
            ci = getattr(r, f"{metric}_ci")
            row[r.method] = f"{getattr(r, metric):.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
        rows.append(row)
    return rows


def _family(e: dict) -> str:
    """An entry's attack family (entries made before the atlas carry none: looked up)."""
    a = _atlas.ATTACKS.get(e["attack"])
    return e.get("family") or (a.family if a else "")


def detection_families(atlas: list[dict]) -> list[dict]:
    """One row per (dataset, attack family, in `atlas.FAMILIES`' order): its attacks and each
    detector's mean AUC over them, with the lowest in brackets when there are several."""
    groups: dict[tuple, list] = {}
    for e in atlas:
        groups.setdefault((e["dataset"], _family(e)), []).append(e)
    order = {f: i for i, f in enumerate(_atlas.FAMILIES)}
    rows = []
    for (ds, fam), es in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99))):
        row = {"dataset": ds, "family": fam, "attacks": ", ".join(e["attack"] for e in es)}
        aucs: dict[str, list] = {}
        for e in es:
            for r in e["results"]:
                aucs.setdefault(r.method, []).append(r.auc)
        for m, v in aucs.items():
            row[m] = f"{np.mean(v):.2f}" + (f" ({min(v):.2f})" if len(v) > 1 else "")
        rows.append(row)
    return rows


def detection_costs(atlas: list[dict]) -> list[dict]:
    """Per detector: median milliseconds per input and one-off seconds over the atlas's entries."""
    by: dict[str, list] = {}
    for e in atlas:
        for r in e["results"]:
            by.setdefault(r.method, []).append(r)
    return [{"method": m, "detector": detection.LABELS.get(m, m),
             "ms per input (median)": round(1000 * float(np.median([r.seconds_per_input for r in rs])), 2),
             "setup s (median)": round(float(np.median([r.setup_seconds for r in rs])), 2),
             "mean AUC": round(float(np.mean([r.auc for r in rs])), 3)}
            for m, rs in by.items()]


def detection_summary(atlas: list[dict]) -> list[dict]:
    """The atlas as JSON-ready records (no score arrays): per entry and detector, the AUC and TPRs
    with their intervals, the time per input and the settings."""
    out = []
    for e in atlas:
        for r in e["results"]:
            out.append({"dataset": e["dataset"], "attack": e["attack"], "family": _family(e),
                        "poisoning": e.get("poisoning", "dirty-label"),
                        "target_mode": e.get("target_mode", "all-to-one"), "rate": e["rate"],
                        "clean_accuracy": round(e["clean_accuracy"], 4),
                        "attack_success_rate": round(e["attack_success_rate"], 4), "n": e["n"],
                        "method": r.method, "auc": round(r.auc, 4),
                        "auc_ci": [round(v, 4) for v in r.auc_ci],
                        "tpr_at_1_fpr": round(r.tpr_at_1_fpr, 4),
                        "tpr_at_1_fpr_ci": [round(v, 4) for v in r.tpr_at_1_fpr_ci],
                        "tpr_at_5_fpr": round(r.tpr_at_5_fpr, 4),
                        "tpr_at_5_fpr_ci": [round(v, 4) for v in r.tpr_at_5_fpr_ci],
                        "ms_per_input": round(1000 * r.seconds_per_input, 3),
                        "setup_seconds": round(r.setup_seconds, 2),
                        "settings": {k: v for k, v in r.settings.items() if k != "corruptions"}})
    return out


_DETECTOR_COLOURS = plots.OKABE_ITO + ("#999999", "#882255", "#44AA99")


def detection_roc(results, methods=None, title: str = "Detecting triggered inputs"):
    """ROC curves of `results` (DetectionResult list; `methods` picks some by name), with AUC and
    its interval and TPR at 1% FPR in the legend, and the 1% and 5% FPR lines."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, r in enumerate(results):
        if methods is not None and r.method not in methods:
            continue
        k = METHODS.index(r.method) if r.method in METHODS else i  # one colour per detector
        fig.add_trace(go.Scatter(
            x=r.fpr, y=r.tpr, mode="lines",
            line=dict(color=_DETECTOR_COLOURS[k % len(_DETECTOR_COLOURS)], width=2),
            name=f"{r.method}: AUC {r.auc:.3f} [{r.auc_ci[0]:.2f}, {r.auc_ci[1]:.2f}], "
                 f"TPR@1% {r.tpr_at_1_fpr:.2f}"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#aaa", dash="dot"),
                             showlegend=False, hoverinfo="skip"))
    for x in (0.01, 0.05):
        fig.add_vline(x=x, line=dict(color="#bbb", dash="dash"))
    fig.update_layout(template=plots.TEMPLATE, height=460, title=title,
                      xaxis_title="false-positive rate (clean flagged)",
                      yaxis_title="true-positive rate (triggered flagged)",
                      legend=dict(orientation="h", y=-0.25))
    return fig


def detection_heatmap(atlas: list[dict], metric: str = "auc"):
    """Attack × detector heatmap of `metric` (default AUC), its interval in the hover text."""
    import plotly.graph_objects as go

    check_choice("metric", metric, ("auc", "tpr_at_1_fpr", "tpr_at_5_fpr"))
    methods = list(dict.fromkeys(r.method for e in atlas for r in e["results"]))
    rows = [f"{e['dataset']} · {e['attack']}" for e in atlas]
    z = np.full((len(atlas), len(methods)), np.nan)
    text = [["" for _ in methods] for _ in atlas]
    for i, e in enumerate(atlas):
        for r in e["results"]:
            j = methods.index(r.method)
            ci = getattr(r, f"{metric}_ci")
            z[i, j] = getattr(r, metric)
            text[i][j] = f"{z[i, j]:.2f}<br>[{ci[0]:.2f}, {ci[1]:.2f}]"
    fig = go.Figure(go.Heatmap(z=z, x=methods, y=rows, text=text, texttemplate="%{text}",
                               colorscale="RdBu", zmin=0, zmax=1, colorbar=dict(title=metric)))
    fig.update_layout(template=plots.TEMPLATE, height=120 + 46 * len(rows),
                      title=f"{metric.upper() if metric == 'auc' else metric} by attack and detector "
                            "(95% bootstrap interval)", yaxis=dict(autorange="reversed"))
    return fig


def detection_report(out: str | Path = "reports/detection.html", datasets=("digits",),
                     attacks=DETECTION_ATTACKS, n: int = 200, seed: int = 0, n_samples: int = 64,
                     methods=METHODS, model: str = DETECTION_MODEL, n_boot: int = 1000,
                     progress: bool = True) -> list[dict]:
    """The full detection study (`detection_atlas`) written to `out` (offline HTML: the AUC
    heatmap, tables of AUC and TPR at 1% and 5% FPR with intervals, costs, one ROC figure per
    attack) and `out` with .json (`detection_summary`). Returns the atlas.

    Command line: `python -m workbench.detection [--datasets digits fashion-mnist] [--attacks …]`.
    """
    t0 = time.perf_counter()
    atlas = detection_atlas(datasets, attacks, n, seed, n_samples, methods, model, n_boot, progress)
    write_detection_report(atlas, out, seconds=time.perf_counter() - t0)
    return atlas


def write_detection_report(atlas: list[dict], out: str | Path = "reports/detection.html",
                           seconds: float | None = None) -> Path:
    """Write a detection atlas (`detection_atlas`'s entries, possibly gathered from several
    calls) to `out` (offline HTML) and `out` with .json (`detection_summary`)."""
    if not atlas:
        raise ValueError("`atlas` must hold at least one entry; got none.")
    summary = detection_summary(atlas)
    methods = list(dict.fromkeys(r.method for e in atlas for r in e["results"]))
    first = atlas[0]["results"][0].settings
    w = next((r.settings for e in atlas for r in e["results"] if "n_samples" in r.settings), {})
    labels = "".join(f"<li><b>{m}</b>: {detection.LABELS.get(m, m)}</li>" for m in methods)
    models = ", ".join(sorted({e["model"] for e in atlas}))
    write_report(out, "Detecting triggered inputs: every detector on every attack", [
        ("Detectors", [f"<ul>{labels}</ul><p class='note'>{atlas[0]['n']} clean vs "
                       f"{atlas[0]['n']} triggered test inputs per attack (classes other than the "
                       f"target; every class for all-to-all), model {models}, target 0, each "
                       "attack at its strong rate; W_σ "
                       f"with {w.get('n_samples', '–')} samples per σ on the dataset's default "
                       "grid. Intervals: percentile bootstrap over inputs, "
                       f"{first.get('n_boot')} resamples. Higher score = flagged.</p>"]),
        ("AUC", [detection_heatmap(atlas), table_html(detection_table(atlas)),
                 "<h3>By attack family</h3>", table_html(detection_families(atlas)),
                 "<p class='note'>Mean AUC over the family's attacks (the lowest in "
                 "brackets).</p>"]),
        ("TPR at 1% and 5% FPR", [table_html(detection_table(atlas, "tpr_at_1_fpr")),
                                  table_html(detection_table(atlas, "tpr_at_5_fpr"))]),
        ("Cost", [table_html(detection_costs(atlas)),
                  "<p class='note'>Wall time of each score over the evaluated inputs, per input "
                  "(the W_σ estimate counted in full for each w-* score); setup: one-off work on "
                  "the clean pool (IBD-PSC's layer selection, the pool's W_σ curve).</p>"]),
        ("ROC curves", [detection_roc(e["results"], title=f"{e['dataset']} · {e['attack']} "
                                      f"(rate {e['rate']}, ASR {e['attack_success_rate']:.3f})")
                        for e in atlas]),
    ], metadata={"environment": environment(),
                 "seconds": None if seconds is None else round(seconds, 1),
                 "entries": [{k: v for k, v in e.items() if k != "results"} for e in atlas]})
    write_json(Path(out).with_suffix(".json"), summary, default=str)
    return Path(out)


def detection_finding(dets: list, dataset: str, attack: str, seeds: dict | None = None) -> dict:
    """The report's finding on detection. `dets`: one model's results (seed 0): measured, never
    ranked. The verdict comes from the multi-seed study (`seeds`: `read_seeds_tables`' summary,
    its structured rankings on all inputs): the detectors that beat every other on every seed for the attack's family on `dataset`, or
    that no ranking holds; without a study, no verdict."""
    dets = [d for d in dets if getattr(d, "evaluation", "all") == "all"]
    best = max(dets, key=lambda d: d.auc)
    w = [d for d in dets if d.method.startswith("w-")]
    measured = f"one model: best {best.method} AUC {ci(best.auc, best.auc_ci, signed=False)}"
    if w:
        bw = max(w, key=lambda d: d.auc)
        measured += f"; best W_σ score {bw.method} {ci(bw.auc, bw.auc_ci, signed=False)}"
    a = _atlas.ATTACKS.get(attack)
    family = a.family if a else None
    rows = [] if seeds is None else [r for r in seeds["rankings"]["all"]
                                     if r["dataset"] == dataset and r["family"] == family]
    if not rows:
        verdict = verdict_span("no ranking: one model (run the multi-seed study, "
                               "python -m workbench.detection --seeds 0 1 2)", "none")
    else:
        row = rows[0]
        best, n = row["best"], len(row["seeds"])
        if not best:
            verdict = verdict_span(f"no detector is best on all {n} seeds ({family})", "mixed")
        elif any(m.startswith("w-") for m in best):
            verdict = verdict_span(f"{', '.join(best)} best on all {n} seeds ({family})", "yes")
        else:
            verdict = verdict_span(f"{', '.join(best)} best on all {n} seeds ({family}): "
                                   "not a W_σ score", "no")
        top = sorted(row["mean"].items(), key=lambda kv: -kv[1])[:3]
        measured += "; over seeds: top " + ", ".join(f"{m} {v:.2f}" for m, v in top)
    return {"finding": f"Detecting triggered inputs by smoothness, {dataset}, {attack}",
            "measured": measured, "verdict": verdict}


def detection_rows(dets: list) -> list[dict]:
    """Detectors for people, best AUC first."""
    f = lambda v, c: ci(v, c, signed=False)  # noqa: E731
    return [{"detector": d.label, "AUC [95% CI]": f(d.auc, d.auc_ci),
             "TPR at 1% FPR [95% CI]": f(d.tpr_at_1_fpr, d.tpr_at_1_fpr_ci),
             "TPR at 5% FPR [95% CI]": f(d.tpr_at_5_fpr, d.tpr_at_5_fpr_ci),
             "ms per input": f"{1000 * d.seconds_per_input:.2f}"}
            for d in sorted(dets, key=lambda d: -d.auc)]


def main(argv=None) -> int:
    """`python -m workbench.detection`: the full detection study (`detection_report`), or with
    `--seeds`, the multi-seed study (`workbench.detection_seeds`, resumable) and its report."""
    p = argparse.ArgumentParser(prog="python -m workbench.detection",
                                description="Every detector on every attack: "
                                            "reports/detection.html and .json; with --seeds, "
                                            "several trained models per attack and clean models "
                                            "(reports/detection-seeds.html, .md, .json)")
    p.add_argument("--datasets", nargs="+", default=None, choices=DATASETS,
                   help="default: digits; with --seeds: digits fashion-mnist")
    p.add_argument("--attacks", nargs="+", default=list(DETECTION_ATTACKS),
                   choices=DETECTION_ATTACKS, metavar="ATTACK",
                   help="attacks of the atlas (default: all): " + ", ".join(DETECTION_ATTACKS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--model", default=DETECTION_MODEL)
    p.add_argument("--n", type=int, default=200, help="clean and triggered inputs per attack")
    p.add_argument("--samples", type=int, default=64, help="W_σ samples per input and σ")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="the inputs' and detectors' draws "
                   "(one model per attack, seed 0)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED",
                   help="the multi-seed study: one model per attack and seed (e.g. 0 1 2), the "
                        "detectors' draws seeded alike, plus clean models for the model-level "
                        "test; resumable (finished jobs are kept in --study-dir)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (--seeds)")
    p.add_argument("--no-clean", action="store_true", help="no clean models (--seeds)")
    p.add_argument("--study-dir", type=Path, default=DEFAULT_OUT,
                   help=f"the multi-seed study's jobs (default {DEFAULT_OUT})")
    p.add_argument("--report-only", action="store_true",
                   help="write the multi-seed report from the finished jobs, computing nothing")
    p.add_argument("--out", type=Path, default=None,
                   help="default reports/detection.html; with --seeds "
                        "reports/detection-seeds.html")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.seeds is not None:
        return _seeds_main(args)
    out = args.out or Path("reports/detection.html")
    atlas, code = _guarded(lambda: detection_report(
        out, tuple(args.datasets or ["digits"]), tuple(args.attacks), args.n, args.seed,
        args.samples, tuple(args.methods), args.model, args.boot, progress=not args.quiet),
        "interrupted: the detection study stopped (trained models stay cached)")
    if code:
        return code
    for row in detection_table(atlas):
        print("  ".join(f"{k} {v}" for k, v in row.items()))
    print(f"report               {out}")
    return 0


def _guarded(work, interrupted: str, more_errors=()):
    """(work(), 0), or (None, exit status) with one line on stderr: 2 for a refused argument or a
    missing file, 130 for Ctrl-C (`interrupted` says what is kept)."""
    try:
        return work(), 0
    except (ValueError, TypeError, FileNotFoundError, *more_errors) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None, 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return None, 130


def _seeds_main(args) -> int:
    out = args.out or Path("reports/detection-seeds.html")
    kw = dict(datasets=tuple(args.datasets or DATASETS_STUDIED), attacks=tuple(args.attacks),
              seeds=tuple(args.seeds), clean_models=() if args.no_clean else CLEAN_MODELS,
              n=args.n, n_samples=args.samples, methods=tuple(args.methods),
              n_boot=args.boot, model=args.model)
    t0 = time.perf_counter()

    def study_and_report():
        study = (load_study(args.study_dir, **kw) if args.report_only else
                 run_study(args.study_dir, workers=args.workers, progress=not args.quiet, **kw))
        write_seeds_report(study, out, seconds=time.perf_counter() - t0)
        return study

    study, code = _guarded(study_and_report, "interrupted: finished jobs are kept; run the same "
                           "command again to resume", (RuntimeError,))
    if code:
        return code
    print(f"jobs finished        {len(study['records'])} ({len(study['missing'])} missing)")
    print(f"report               {out} (and .md, .json)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
