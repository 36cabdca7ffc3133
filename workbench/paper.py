"""The paper's findings on real data, assembled into `reports/paper.html`:
attack strength (sweep table, ASR vs gap, Spearman), training dynamics, artificial patterns on a
clean model, and detection (STRIP, SCALE-UP, TeCo, IBD-PSC and W_σ scores; the full detection
study, every detector on every attack: `detection_report`, `python -m workbench.detection`)."""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import atlas as _atlas, detection, plots
from ._validate import check_choice, check_int
from .data import DATASET_SHAPES, DATASETS, load_dataset
from .detection import METHODS, compare_detectors
from .experiments import default_sigmas, smoothing_dynamics
from .fileio import write_json
from .models import MODELS, build_model
from .patterns import measure_patterns, pattern_table, random_patches, universal_patch
from .poison import triggered_pairs
from .report import Raw, ci, percent, pval, table_html, write_report
from .stats import spearman_ci
from .sweep import (ROW_FORMAT, RUN_COLUMNS, check_table, current_rows,  # noqa: F401
                    latest_per_run, read_table)
from .train import environment, train_backdoor
from .triggers import TRIGGERS, Patch


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


# --- Detection (issue 12): every detector on every attack -------------------------------------

# Every attack of the atlas (`workbench.atlas.ATTACKS`, in its display order).
DETECTION_ATTACKS = tuple(_atlas.ATTACKS)
# The study's first six attacks keep the runs of its first table (benchmarks/RESULTS.md): the
# trigger class with its default parameters, trained by `train_backdoor` on the whole training
# set at DETECTION_RATES. Every other attack is `atlas.train_attack` at the atlas's strong rate.
DETECTION_ORIGINAL = ("Patch", "Checkerboard", "Pixel", "Blend", "Sinusoid", "Warp")
DETECTION_MODEL = "small-cnn-bn"  # BatchNorm, so that IBD-PSC applies
# Each original attack (the trigger with its default parameters, target 0, seed 0) at its strong
# rate on the detection model: the lowest of 5%, 10%, 20% at which it reaches ASR >= 0.9, measured
# on 2 CPU cores (benchmarks/RESULTS.md). An original attack without an entry here uses 10%.
DETECTION_RATES = {
    "digits": {"Patch": 0.05, "Checkerboard": 0.05, "Pixel": 0.05, "Blend": 0.05,
               "Sinusoid": 0.05, "Warp": 0.2},
    "fashion-mnist": {"Patch": 0.05, "Checkerboard": 0.05, "Pixel": 0.05, "Blend": 0.05,
                      "Sinusoid": 0.05, "Warp": 0.05},
}
REPORT_DETECTION_ATTACKS = ("Patch",)  # `paper_report`'s share of the study: the full one is long


def detection_trigger(attack: str, data=None):
    """The trigger of an attack of the detection study. An original attack (DETECTION_ORIGINAL):
    its class with default parameters (Patch and Checkerboard 3×3 at the bottom right, Blend
    α = 0.1, …; `data` not needed). Another atlas attack: `atlas.attack_trigger(attack, data)`
    (seed 0, target 0; the crafted ones are crafted on `data`'s clean model). InputAware has no
    trigger without its training: use `detection_run`."""
    check_choice("attack", attack, DETECTION_ATTACKS)
    if attack in DETECTION_ORIGINAL:
        return TRIGGERS[attack]()
    if _atlas.ATTACKS[attack].trigger.get("type") == "InputAware":
        raise ValueError("`attack` 'InputAware' has no trigger without its training (the "
                         "generators are trained with the model): use `detection_run`.")
    if data is None:
        raise TypeError(f"`data` must be a Dataset for the atlas attack {attack!r}; got None.")
    return _atlas.attack_trigger(attack, data, seed=0, target=0)


def detection_rate(dataset: str, attack: str) -> float:
    """The poisoning rate of `attack`'s model on `dataset`: DETECTION_RATES for the original
    attacks (10% without an entry), the atlas's strong rate for the others."""
    if attack in DETECTION_ORIGINAL:
        return DETECTION_RATES.get(dataset, {}).get(attack, 0.1)
    return float(_atlas.attack_rates(attack, dataset)[1])


def detection_run(data, attack: str, model: str = DETECTION_MODEL, progress: bool = False):
    """The backdoored model of `attack` in the detection study (a cached run; target 0, seed 0):
    an original attack through `train_backdoor` at `detection_rate`, any other through
    `atlas.train_attack` at its strong rate (crafted triggers crafted on the clean model,
    InputAware trained jointly, Fashion-MNIST on the atlas's training subset)."""
    check_choice("attack", attack, DETECTION_ATTACKS)
    if attack in DETECTION_ORIGINAL:
        return train_backdoor(data, trigger=detection_trigger(attack),
                              rate=detection_rate(data.name, attack), target=0, model=model,
                              progress=progress)
    return _atlas.train_attack(data, attack, rate=None, seed=0, model=model, progress=progress)


def detection_attack(run) -> str:
    """The atlas's name of the attack a run implements (e.g. "Patch/all-to-all" for a Patch
    run in all-to-all mode), from its trigger's class, poisoning and target mode."""
    name = type(run.trigger).__name__
    if run.target_mode == "all-to-all":
        return f"{name}/all-to-all"
    if run.poisoning != "dirty-label":
        return f"{name}/{run.poisoning}"
    return name


def _check_detection_args(dataset, attacks, n, seed, n_samples, methods, model, n_boot):
    check_choice("dataset", dataset, DATASETS)
    for a in attacks:
        check_choice("attack", a, DETECTION_ATTACKS)
    check_int("n", n, low=2)
    check_int("seed", seed, low=0)
    check_int("n_samples", n_samples, low=1)
    check_int("n_boot", n_boot, low=0)
    check_choice("model", model, MODELS)
    methods = detection._check_methods(methods)
    if "ibd-psc" in methods:  # before any training: the architecture decides it
        shape = DATASET_SHAPES[dataset][0]
        detection._check_batchnorm(build_model(model, shape[0], 2, tuple(shape[1:])))
    return methods


def detection_measure(data, run, attack: str, n: int = 200, seed: int = 0, n_samples: int = 64,
                      methods=METHODS, n_boot: int = 1000) -> dict:
    """Every detector in `methods` on `run`'s model: `n` clean test inputs the attack applies to
    (`run.triggered_pairs`: classes other than the target, or every class for an all-to-all run)
    against their triggered twins; the held-out rest of the test set is the clean pool. Returns
    the study's entry for it (the run's settings, clean accuracy, ASR, "results")."""
    check_choice("attack", attack, DETECTION_ATTACKS)
    check_int("n", n, low=2)
    check_int("seed", seed, low=0)
    methods = detection._check_methods(methods)
    t0 = time.perf_counter()
    # (every target mode: an all-to-all run has no single target; pairs.targets has each one's)
    pairs = run.triggered_pairs(data.x_test, data.y_test, n=n, seed=seed)
    # held-out clean test images not among the evaluated inputs: STRIP's blend partners, IBD-PSC's
    # layer selection, the clean W_σ curve of w-knee and w-class
    mask = np.ones(len(data.y_test), bool)
    mask[pairs.indices.numpy()] = False
    results = compare_detectors(run.model, pairs.clean, pairs.triggered, data.x_test[mask],
                                default_sigmas(data.name), n_samples=n_samples, seed=seed,
                                methods=methods, n_boot=n_boot)
    a = _atlas.ATTACKS.get(attack)
    return {"dataset": data.name, "attack": attack, "family": a.family if a else "",
            "poisoning": run.poisoning, "target_mode": run.target_mode,
            "trigger": repr(run.trigger), "rate": run.config["rate"],
            "model": run.config["model"], "clean_accuracy": run.clean_accuracy,
            "attack_success_rate": run.attack_success_rate, "n": len(pairs.clean),
            "results": results, "seconds": time.perf_counter() - t0}


def _detection_entry(data, attack, n, seed, n_samples, methods, model, n_boot, progress):
    t0 = time.perf_counter()
    run = detection_run(data, attack, model, progress)
    entry = detection_measure(data, run, attack, n, seed, n_samples, methods, n_boot)
    entry["detect_seconds"] = entry["seconds"]  # the detectors only
    entry["seconds"] = time.perf_counter() - t0  # training (or loading) included
    return entry, run


def detection_study(dataset: str = "digits", n: int = 200, seed: int = 0, n_samples: int = 64,
                    attack: str = "Patch", methods=METHODS, model: str = DETECTION_MODEL,
                    n_boot: int = 1000):
    """One attack of the detection study (any of DETECTION_ATTACKS, the atlas's attacks): its
    backdoored model (`detection_run`: a cached run, target 0, at the attack's strong rate) and
    every detector in `methods` on `n` clean vs `n` triggered test inputs (`detection_measure`,
    `workbench.detection.compare_detectors`). Returns (run, [DetectionResult, ...])."""
    methods = _check_detection_args(dataset, (attack,), n, seed, n_samples, methods, model, n_boot)
    entry, run = _detection_entry(load_dataset(dataset), attack, n, seed, n_samples, methods, model,
                                  n_boot, False)
    return run, entry["results"]


def detection_atlas(datasets=("digits",), attacks=DETECTION_ATTACKS, n: int = 200, seed: int = 0,
                    n_samples: int = 64, methods=METHODS, model: str = DETECTION_MODEL,
                    n_boot: int = 1000, progress: bool = False) -> list[dict]:
    """Every detector on every attack of every dataset (default: every attack of the atlas): one
    entry per (dataset, attack) with the attack's family, poisoning and target mode, the run's
    clean accuracy and ASR and its `DetectionResult`s ("results"); "seconds" includes training
    or loading the model, "detect_seconds" is the detectors' alone. Models come from the run
    cache (trained on first use: minutes per Fashion-MNIST model on 2 CPU cores)."""
    if isinstance(datasets, str) or isinstance(attacks, str):
        raise TypeError("`datasets` and `attacks` must be tuples of names; got a str.")
    if not datasets or not attacks:
        raise ValueError("`datasets` and `attacks` must each name at least one; got none.")
    for ds in datasets:
        methods = _check_detection_args(ds, attacks, n, seed, n_samples, methods, model, n_boot)
    out = []
    for ds in datasets:
        data = load_dataset(ds)
        for attack in attacks:
            entry, _ = _detection_entry(data, attack, n, seed, n_samples, methods, model, n_boot,
                                        progress)
            if progress:
                print(f"{ds:>13} {attack:<22} ASR {entry['attack_success_rate']:.3f}  " + "  ".join(
                    f"{r.method} {r.auc:.3f}" for r in entry["results"]) +
                    f"  ({entry['seconds']:.0f} s)", flush=True)
            out.append(entry)
    return out


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


def detection_explorer(dataset: str = "digits", n: int = 200, n_samples: int = 64, seed: int = 0,
                       methods=METHODS, study: tuple | None = None):
    """A panel to pick an attack and detectors: ROC curves and the table of AUC and TPRs with
    intervals. The attacks are the atlas's (DETECTION_ATTACKS). Each attack's study runs
    (training on first use) when it is first picked and is kept; `study`, a (run, results) pair of `detection_study` with these settings, is reused for
    its attack. Returns an ipywidgets VBox."""
    import ipywidgets as W
    import plotly.graph_objects as go

    from .report import table_html as _table

    methods = _check_detection_args(dataset, DETECTION_ATTACKS, n, seed, n_samples, methods,
                                    DETECTION_MODEL, 1000)
    cache: dict = {}
    start = "Patch"
    if study is not None and detection_attack(study[0]) in DETECTION_ATTACKS:
        start = detection_attack(study[0])
        cache[start] = study
    attack = W.Dropdown(options=DETECTION_ATTACKS, value=start, description="attack")
    chosen = W.SelectMultiple(options=methods, value=tuple(methods), rows=len(methods),
                              description="detectors")
    status, table = W.HTML(), W.HTML()
    fig = go.FigureWidget()

    def update(*_):
        a = attack.value
        if a not in cache:
            status.value = f"<i>{a}: loading or training its model, running the detectors…</i>"
            cache[a] = detection_study(dataset, n, seed, n_samples, attack=a, methods=methods)
        run, results = cache[a]
        picked = [r for r in results if r.method in chosen.value]
        new = detection_roc(picked, title=f"{dataset} · {a}")
        with fig.batch_update():
            fig.data = []
            fig.add_traces(list(new.data))
            fig.layout = new.layout
        table.value = _table([r.row() | {"detector": r.label} for r in picked])
        status.value = (f"{run.trigger!r}, rate {run.config['rate']}, clean accuracy "
                        f"{run.clean_accuracy:.3f}, ASR {run.attack_success_rate:.3f}; {n} clean "
                        f"vs {n} triggered inputs")

    attack.observe(update, "value")
    chosen.observe(update, "value")
    update()
    return W.VBox([W.HBox([attack, chosen]), status, fig, table])


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


def _clean_model_run(data):
    """The unpoisoned model the pattern studies craft on (the rate-0 control of the sweeps)."""
    return train_backdoor(data, trigger=Patch(size=3), rate=0.0, target=0, progress=False)


def _measure_patterns_of_size(data, clean_run, size: int, n_random: int, seed: int, n_pairs: int,
                              n_samples: int):
    uap = universal_patch(clean_run.model, data.x_train, data.y_train, target=0, size=size,
                          position="center", seed=seed)
    pats = {"universal patch": uap, "white patch": Patch(size=size, position="center")}
    for i, p in enumerate(random_patches(n_random, size, data.image_shape[0], "center", seed=seed + 1)):
        pats[f"random patch {i + 1}"] = p
    return measure_patterns(clean_run.model, data.x_test, data.y_test, 0, pats,
                            default_sigmas(data.name), n_pairs, n_samples, seed)


def pattern_study(dataset: str = "digits", size: int = 4, n_random: int = 4, seed: int = 0,
                  n_pairs: int = 100, n_samples: int = 64):
    data = load_dataset(dataset)
    clean_run = _clean_model_run(data)
    return clean_run, _measure_patterns_of_size(data, clean_run, size, n_random, seed, n_pairs,
                                                n_samples)


def pattern_sizes(dataset: str = "digits", sizes=None, n_random: int = 2, seed: int = 0,
                  n_pairs: int = 100, n_samples: int = 64) -> dict[int, list]:
    """Claim 5 as a function of the pattern's size: for each size (default: a quarter, three
    eighths and half of the image side, e.g. 4, 6, 8 on 16×16 digits), a universal patch, the
    white patch and `n_random` random patches at the centre of a clean model's inputs.
    Returns {size: [PatternMeasurement, ...]}."""
    check_choice("dataset", dataset, DATASETS)
    side = DATASET_SHAPES[dataset][0][1]
    sizes = tuple(sizes) if sizes is not None else tuple(max(1, round(side * f)) for f in (0.25, 0.375, 0.5))
    for s in sizes:
        check_int("sizes", s, low=1, high=side - 2)
    data = load_dataset(dataset)  # loaded and the clean model opened once for every size
    clean_run = _clean_model_run(data)
    return {size: _measure_patterns_of_size(data, clean_run, size, n_random, seed, n_pairs, n_samples)
            for size in sizes}


def size_table(by_size: dict[int, list]) -> list[dict]:
    """One row per pattern of `pattern_sizes`' result: size, kind, success rate, gap, interval."""
    rows = []
    for size, measurements in by_size.items():
        for m in measurements:
            c = m.comparison
            rows.append({"size": size, "pattern": m.name, "kind": m.name.rstrip(" 0123456789"),
                         "success rate": round(m.success_rate, 4), "smoothing gap": round(c.gap, 4),
                         "gap_ci_low": round(c.gap_ci[0], 4), "gap_ci_high": round(c.gap_ci[1], 4),
                         "Wilcoxon p": float(f"{c.p_value:.3g}")})
    return rows


def pattern_size_study(dataset: str = "digits", sizes=None, n_random: int = 2, seed: int = 0,
                       n_pairs: int = 100, n_samples: int = 64) -> list[dict]:
    """`size_table(pattern_sizes(...))`: the rows `plots.pattern_sizes` draws."""
    return size_table(pattern_sizes(dataset, sizes, n_random, seed, n_pairs, n_samples))


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


def _verdict(text: str, tone: str) -> Raw:
    """A verdict cell; tone: "yes" (as the paper says), "no" (against it), "mixed", "none"."""
    return Raw(f"<span class='verdict {tone}'>{html.escape(text)}</span>")


def _direction(lo: np.ndarray, hi: np.ndarray) -> tuple[str, str, str]:
    """(counts, verdict, tone) of gap intervals: above 0 (smoother), below 0, or including 0."""
    n, above, below = len(lo), int((lo > 0).sum()), int((hi < 0).sum())
    counts = f"{above} of {n} intervals above 0, {below} below"
    if n == 0:
        return "no such run", "not measured", "none"
    if above == n:
        return counts, "smoother", "yes"
    if below == n:
        return counts, "less smooth", "no"
    if above == below == 0:
        return counts, "no measurable effect", "none"
    return counts, "mixed", "mixed"


def _runs(n: int, what: str = "run") -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


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
            measured, verdict, tone = (f"{_runs(e['runs'])}: a correlation needs at least 4 runs "
                                       "with different ASR", "not measured", "none")
        else:
            measured = (f"Spearman ρ(ASR, mean-W gap) {ci(c['rho'], c['ci'], 2)}, p = "
                        f"{pval(c['p_value'])}, {e['runs']} runs"
                        + (f"; with the radius gap {ci(r['rho'], r['ci'], 2)}" if r else ""))
            verdict, tone = (("reproduces", "yes") if c["ci"][0] > 0 else
                             ("reverses", "no") if c["ci"][1] < 0 else
                             ("inconclusive: the interval includes 0", "mixed"))
        out.append({"finding": f"Smoothing grows with the attack's success (claim 4), {ds}",
                    "measured": measured, "verdict": _verdict(verdict, tone)})
        for label, sel in (
                ("Successful attacks (ASR ≥ 0.9): triggered inputs smoother", 
                 (g["rate"] > 0) & (g["attack_success_rate"] >= 0.9)),
                ("Unsuccessful attacks (ASR < 0.5)", (g["rate"] > 0) & (g["attack_success_rate"] < 0.5)),
                ("Control: the trigger on a clean model (rate 0)", g["rate"] == 0)):
            sub = g[sel]
            counts, verdict, tone = _direction(sub["gap_ci_low"].to_numpy(),
                                               sub["gap_ci_high"].to_numpy())
            if not label.startswith("Successful"):
                tone = "none" if tone in ("yes", "no") else tone  # descriptive, not a claim
            measured = f"{_runs(len(sub))}: {_gap_range(sub)}; {counts}" if len(sub) else "no such run"
            out.append({"finding": f"{label}, {ds}", "measured": measured,
                        "verdict": _verdict(verdict, tone)})
    return out


def _first_epochs(dyn: list[dict]) -> tuple[int | None, int | None]:
    first_asr = next((r["epoch"] for r in dyn if r["attack_success_rate"] >= 0.9), None)
    first_gap = next((r["epoch"] for r in dyn if r["gap_ci"][0] > 0), None)
    return first_asr, first_gap


def dynamics_finding(dyn: list[dict], dataset: str) -> dict:
    a, g = _first_epochs(dyn)
    last = dyn[-1]
    measured = (f"ASR first ≥ 0.9 at epoch {a if a is not None else '–'}; the gap's interval first "
                f"above 0 at epoch {g if g is not None else '–'}; after epoch {last['epoch']}: gap "
                f"{ci(last['gap'], last['gap_ci'])}")
    if a is None:
        verdict = "not measured: ASR never reached 0.9"
    elif g is None:
        verdict = "no smoothing during training"
    elif g == a:
        verdict = "together with the attack"
    elif g > a:
        verdict = f"after the attack succeeds ({g - a} epochs later)"
    else:
        verdict = f"before the attack succeeds ({a - g} epochs earlier)"
    return {"finding": f"When smoothing appears during training, {dataset}", "measured": measured,
            "verdict": _verdict(verdict, "none")}


def pattern_findings(by_size: dict[int, list], dataset: str) -> list[dict]:
    """Claim 5 (universal patches on a clean model) and its controls (white and random patches)."""
    uni = [(s, m) for s, ms in sorted(by_size.items()) for m in ms if m.name == "universal patch"]
    measured = "; ".join(f"{s}×{s}: success {m.success_rate:.0%}, gap "
                         f"{ci(m.comparison.gap, m.comparison.gap_ci)}" for s, m in uni)
    smooth = [s for s, m in uni if m.comparison.gap_ci[0] > 0]
    if smooth:
        verdict = _verdict("reproduces for the " + ", ".join(f"{s}×{s}" for s in smooth)
                           + " pattern" + ("s" if len(smooth) > 1 else ""),
                           "yes" if len(smooth) == len(uni) else "mixed")
    else:
        verdict = _verdict("not reproduced: no universal patch is smoother", "no")
    ctrl = [m for ms in by_size.values() for m in ms if m.name != "universal patch"]
    lo = np.array([m.comparison.gap_ci[0] for m in ctrl])
    hi = np.array([m.comparison.gap_ci[1] for m in ctrl])
    counts, _, _ = _direction(lo, hi)
    above, below = int((lo > 0).sum()), int((hi < 0).sum())
    v = (f"never smoother ({below} less smooth)" if not above else
         f"{above} of {len(ctrl)} smoother: not specific to crafted patterns")
    return [{"finding": f"Artificial patterns without poisoning (claim 5): universal patches on a "
                        f"clean model, {dataset}", "measured": measured, "verdict": verdict},
            {"finding": f"Controls: white and random patches of the same sizes, {dataset}",
             "measured": f"{_runs(len(ctrl), 'pattern')}: {counts}",
             "verdict": _verdict(v, "none" if not above else "mixed")}]


def detection_finding(dets: list, dataset: str, attack: str) -> dict:
    best = max(dets, key=lambda d: d.auc)
    w = [d for d in dets if d.method.startswith("w-")]
    measured = f"best: {best.method} AUC {ci(best.auc, best.auc_ci, signed=False)}"
    if not w:
        verdict = _verdict("no W_σ score measured", "none")
    else:
        bw = max(w, key=lambda d: d.auc)
        measured += f"; best W_σ score: {bw.method} {ci(bw.auc, bw.auc_ci, signed=False)}"
        if bw is best:
            verdict = _verdict(f"a W_σ score detects best ({bw.method})", "yes")
        elif bw.auc_ci[1] >= best.auc_ci[0]:
            verdict = _verdict(f"W_σ on par with {best.method} (intervals overlap)", "mixed")
        else:
            verdict = _verdict(f"{best.method} beats every W_σ score", "no")
    return {"finding": f"Detecting triggered inputs by smoothness, {dataset}, {attack}",
            "measured": measured, "verdict": verdict}


def dynamics_heatmap(dyn: list[dict]):
    """Per epoch (x) and σ (y): the gap of the mean curves, mean W_σ(clean) − mean W_σ(triggered)
    (nats; red: triggered inputs smoother), with both curves' values in the hover text and a line
    at the first epoch whose ASR reaches 0.9."""
    import plotly.graph_objects as go

    ep = [r["epoch"] for r in dyn]
    sig = np.asarray(dyn[0]["sigmas"], float)
    clean = np.array([r["clean_curve"] for r in dyn]).T  # (σ, epoch)
    trig = np.array([r["triggered_curve"] for r in dyn]).T
    z = clean - trig
    lim = float(np.nanmax(np.abs(z))) or 1.0
    text = [[f"epoch {e}, σ {s:g}<br>clean {c:.3f}, triggered {t:.3f}<br>difference {d:+.3f}"
             for e, c, t, d in zip(ep, cr, tr, dr)] for s, cr, tr, dr in zip(sig, clean, trig, z)]
    fig = go.Figure(go.Heatmap(
        x=ep, y=[f"{s:g}" for s in sig], z=z, text=text, hoverinfo="text", colorscale="RdBu_r",
        zmid=0, zmin=-lim, zmax=lim,
        colorbar=dict(title=dict(text="W<sub>σ</sub> clean −<br>triggered (nats)"), thickness=14)))
    a, _ = _first_epochs(dyn)
    if a is not None:  # the line, and its label above the plot (on the cells it would hide them)
        fig.add_vline(x=a - 0.5, line=dict(color="#222", dash="dash", width=1))
        fig.add_annotation(x=a - 0.5, y=1, yref="paper", yanchor="bottom", xanchor="left",
                           text=f" ASR ≥ 0.9 from epoch {a}", showarrow=False, font=dict(size=11))
    fig.update_layout(template=plots.TEMPLATE, height=400, margin=dict(t=80, r=20),
                      title="Where smoothing appears: the W<sub>σ</sub> gap by epoch and noise scale",
                      xaxis=dict(title="epoch", dtick=1 if len(ep) <= 15 else 5),
                      yaxis_title="noise scale σ")
    return fig


def pattern_size_rows(by_size: dict[int, list]) -> list[dict]:
    """`pattern_sizes`' measurements for people: one row per pattern, sorted by size."""
    return [{"size": f"{s}×{s}", "pattern": m.name, "success rate": f"{m.success_rate:.3f}",
             "smoothing gap, nats [95% CI]": ci(m.comparison.gap, m.comparison.gap_ci),
             "p": pval(m.comparison.p_value)}
            for s, ms in sorted(by_size.items()) for m in ms]


def detection_rows(dets: list) -> list[dict]:
    """Detectors for people, best AUC first."""
    f = lambda v, c: ci(v, c, signed=False)  # noqa: E731
    return [{"detector": d.label, "AUC [95% CI]": f(d.auc, d.auc_ci),
             "TPR at 1% FPR [95% CI]": f(d.tpr_at_1_fpr, d.tpr_at_1_fpr_ci),
             "TPR at 5% FPR [95% CI]": f(d.tpr_at_5_fpr, d.tpr_at_5_fpr_ci),
             "ms per input": f"{1000 * d.seconds_per_input:.2f}"}
            for d in sorted(dets, key=lambda d: -d.auc)]


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


def _has_atlas(rows: pd.DataFrame) -> bool:
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
    if not _has_atlas(rows):
        return []
    out = [{"finding": f"Attack atlas: {v['family']} ({', '.join(v['attacks'])}) at the strong "
                       "rate: triggered inputs smoother on every seed?",
            "measured": v["measured"], "verdict": _verdict(v["verdict"], v["tone"])}
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
                    "verdict": _verdict(verdict, "none")})
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
    if not _has_atlas(rows):
        return None
    verdicts = atlas_verdicts(rows)
    corr = atlas_correlations(rows)
    summary = [{"family": v["family"], "attacks": ", ".join(v["attacks"]),
                "at the strong rate": v["measured"], "verdict": _verdict(v["verdict"], v["tone"])}
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


def write_paper(table: pd.DataFrame, out: str | Path = "reports/paper.html", *,
                dynamics: list[dict] | None = None, patterns: dict[int, list] | None = None,
                detection: tuple | None = None, dataset: str = "digits",
                provenance: dict | None = None, atlas: pd.DataFrame | None = None) -> dict:
    """Write the paper report to `out` (offline HTML) and `out` with .json (the summary) from a
    sweep table (`read_table`'s DataFrame: only rows of this row format are used, one per trained
    run) and the studies' results on `dataset`: `dynamics` (`smoothing_dynamics`' rows),
    `patterns` (`pattern_sizes`' {size: measurements}), `detection` (`detection_study`'s (run,
    DetectionResults)); a study left None is left out. `provenance`: the command, seeds and
    settings that made it (versions are added). `atlas`: the attack atlas's table (`read_table`
    of `python -m workbench sweep --atlas`'s CSV) for the "Attack atlas" section
    (`attack_atlas_section`), its findings and summary["atlas"]; None leaves the section out. An
    `atlas` without rows of at least two attacks of this row format is refused. Returns the
    summary."""
    check_table("table", table)
    if not isinstance(out, (str, Path)):
        raise TypeError(f"`out` must be a str or a Path; got {out!r}.")
    for name, v, kind in (("dynamics", dynamics, list), ("patterns", patterns, dict),
                          ("detection", detection, tuple), ("provenance", provenance, dict)):
        if v is not None and not isinstance(v, kind):
            raise TypeError(f"`{name}` must be None or a {kind.__name__}; got {type(v).__name__}.")
    if atlas is not None:
        check_table("atlas", atlas)
        atlas_used, atlas_counts = atlas_rows(atlas)
        if not _has_atlas(atlas_used):
            raise ValueError(f"`atlas` must hold rows of at least two attacks (column `attack`) of "
                             f"this version's row format ({ROW_FORMAT}); its {len(atlas)} rows hold "
                             f"{atlas_used['attack'].nunique() if len(atlas_used) else 0}. Run "
                             "`python -m workbench sweep --atlas` (trained runs come from the cache).")
    rows, counts = report_rows(table)
    if not len(rows):
        raise ValueError(f"`table` must hold rows of row format {ROW_FORMAT} (this version's); it "
                         f"holds {len(table)} rows of older formats, which are never used: run the "
                         "sweep again (trained runs come from the cache).")
    head = headline(rows)
    findings = sweep_findings(rows, head)
    summary: dict = {"correlations": head, "sweep_rows_superseded": counts["superseded"],
                     "sweep_rows_stale": counts["stale"]}
    stale_note = "".join([
        f" Left out: {_runs(counts['superseded'], 'older measurement')} of the same runs."
        if counts["superseded"] else "",
        f" Ignored: {_runs(counts['stale'], 'row')} of an older row format (written by an earlier "
        "workbench)." if counts["stale"] else ""])
    sections = [("Attack strength", [
        "<p class='note'>Claim 4: smoothing grows with the attack's success. Each row is one "
        f"trained run ({run_settings(rows)}). Rate-0 rows are clean-model controls: the trigger "
        "on a model trained without poisoning. The smoothing gap is mean W<sub>σ</sub>(clean) − "
        "mean W<sub>σ</sub>(triggered) over the σ grid (> 0: triggered inputs smoother); the "
        "radius gap is the shift of the σ at which W<sub>σ</sub> first exceeds 10% of log K. "
        "Intervals: 95% t-intervals over pairs; p: Wilcoxon signed-rank." + stale_note + "</p>",
        table_html(attack_strength_table(rows)),
        "<h3>Correlation across runs</h3>", table_html(correlation_table(head)),
        "<p class='note'>Spearman's ρ over distinct runs, 95% Fisher-z interval.</p>",
        plots.attack_strength(rows), plots.rate_curves(rows)])]
    atlas_section = attack_atlas_section(atlas_used) if atlas is not None else None
    if atlas_section is not None:
        sections.append(atlas_section)
        findings.extend(atlas_findings(atlas_used))
        summary["atlas"] = {"runs": len(atlas_used), "rows_read": atlas_counts["read"],
                            "families": [{k: v for k, v in e.items() if k != "measured"}
                                         for e in atlas_verdicts(atlas_used)],
                            "correlations": atlas_correlations(atlas_used)}
    if dynamics:
        a, g = _first_epochs(dynamics)
        summary["dynamics"] = {"first_epoch_asr_ge_0.9": a, "first_epoch_gap_ci_above_0": g}
        findings.append(dynamics_finding(dynamics, dataset))
        sections.append(("Training dynamics", [
            f"<p class='note'>A backdoor (3×3 patch, 5%, target 0) trained on {dataset} while the "
            "clean/triggered comparison is measured on fixed test pairs after every epoch. First "
            f"epoch with ASR ≥ 0.9: {a if a is not None else 'none'}; first epoch whose gap "
            f"interval lies above 0: {g if g is not None else 'none'}.</p>",
            plots.dynamics(dynamics), dynamics_heatmap(dynamics)]))
    if patterns:
        by_size = size_table(patterns)
        largest = max(patterns)
        summary.update({"patterns_size": largest, "patterns": pattern_table(patterns[largest]),
                        "patterns_by_size": by_size})
        findings.extend(pattern_findings(patterns, dataset))
        sections.append(("Artificial patterns without poisoning", [
            "<p class='note'>Claim 5: patterns crafted on a clean model (no poisoning), at the "
            "centre of the image: a universal adversarial patch per size, with the white patch and "
            "random patches of the same size as controls. Success rate: the share of non-target "
            "test inputs the pattern sends to class 0.</p>",
            table_html(pattern_size_rows(patterns)), plots.pattern_sizes(by_size),
            f"<h3>The {largest}×{largest} patterns in detail</h3>",
            plots.patterns_figure(patterns[largest])]))
    if detection:
        det_run, detection = detection
        attack = type(det_run.trigger).__name__
        summary["detection"] = [{"method": d.label, "name": d.method, "auc": round(d.auc, 4),
                                 "auc_ci": [round(v, 4) for v in d.auc_ci],
                                 "tpr_at_1_fpr": round(d.tpr_at_1_fpr, 4),
                                 "tpr_at_5_fpr": round(d.tpr_at_5_fpr, 4),
                                 "ms_per_input": round(1000 * d.seconds_per_input, 3)}
                                for d in detection]
        findings.append(detection_finding(detection, dataset, attack))
        cfg = det_run.config
        sections.append(("Detection", [
            f"<p class='note'>One attack: {html.escape(repr(det_run.trigger))} at "
            f"{percent(cfg['rate'])}, target {cfg['target']}, model {html.escape(cfg['model'])} "
            f"(clean accuracy {det_run.clean_accuracy:.3f}, ASR {det_run.attack_success_rate:.3f}); "
            f"{len(detection[0].clean_scores)} clean vs {len(detection[0].triggered_scores)} "
            "triggered test inputs; intervals: bootstrap 95%. Every detector on every attack: "
            "<code>python -m workbench.detection</code> (reports/detection.html).</p>",
            table_html(detection_rows(detection)),
            detection_roc(detection, title=f"Detecting triggered inputs: {dataset}, {attack}")]))
    summary["findings"] = [{k: html.unescape(re.sub("<[^>]+>", "", str(v))) for k, v in f.items()}
                           for f in findings]
    sections.insert(0, ("Summary of findings", [
        table_html(findings, classes="findings"),
        "<p class='note'>Verdicts are read from the 95% intervals: “smoother” when every interval "
        "lies above 0, “less smooth” when every one lies below, “mixed” otherwise. Green: as the "
        "paper (Grosse et al. 2022) says; red: against it.</p>"]))
    datasets = ", ".join(sorted(rows["dataset"].unique()))
    meta = dict(provenance or {})
    meta["sweep rows"] = {"read": len(table), "used (one per run)": len(rows),
                          "older row format, ignored": counts["stale"],
                          "superseded measurements": counts["superseded"],
                          "row format": ROW_FORMAT,
                          "sweep seeds": sorted(int(s) for s in rows["seed"].unique()),
                          "made with workbench": sorted(rows["workbench"].unique().tolist()),
                          "made with torch": sorted(rows["torch"].unique().tolist())}
    if atlas_section is not None:
        meta["atlas rows"] = {"read": atlas_counts["read"], "used (one per run)": len(atlas_used),
                              "attacks": atlas_used["attack"].nunique(),
                              "seeds": sorted(int(v) for v in atlas_used["seed"].unique())}
    meta["versions"] = environment()
    command = meta.get("command")
    write_report(out, "Backdoor smoothing: the paper's findings, reproduced", sections,
                 metadata=meta,
                 subtitle=f"{len(rows)} sweep runs on {html.escape(datasets)}"
                          + (f"; studies on {html.escape(dataset)}" if dynamics or patterns or detection else "")
                          + (f". Made by <code>{html.escape(command)}</code>" if command else "")
                          + f" on {time.strftime('%Y-%m-%d %H:%M %Z')}.")
    write_json(Path(out).with_suffix(".json"), summary, default=str)
    return summary


def paper_report(sweep_csv: str | Path = "reports/sweep.csv", out: str | Path = "reports/paper.html",
                 dataset: str = "digits", seed: int = 0, n_pairs: int | None = None,
                 n_samples: int | None = None, command: str | None = None,
                 atlas: str | Path | pd.DataFrame | None = None) -> dict:
    """Write `out` (offline HTML) and `out` with .json (the summary) from a sweep's CSV and the
    dynamics, pattern and detection studies on `dataset` (`write_paper`).

    n_pairs, n_samples: None keeps each study's default (dynamics 40 pairs × 32 samples, patterns
    100 × 64, detection 200 clean and 200 triggered inputs × 64); a number sets all three
    (smaller is faster, with wider intervals). command: how it was called, for the provenance
    (default: this call, in Python). Only rows of this version's row format are used: a CSV of
    older rows only is refused before any study runs.

    atlas: the attack atlas for its section, a CSV path (`python -m workbench sweep --atlas`
    writes `workbench.atlas.ATLAS_CSV`, reports/atlas.csv) or its `read_table` DataFrame; None
    leaves the section out. A path that does not
    exist, or a table without rows of at least two attacks of this row format, is refused before
    any study runs.
    """
    t0 = time.perf_counter()
    check_choice("dataset", dataset, DATASETS)
    check_int("seed", seed, low=0)
    for name, v in (("n_pairs", n_pairs), ("n_samples", n_samples)):
        if v is not None:
            check_int(name, v, low=4)
    if command is not None and not isinstance(command, str):
        raise TypeError(f"`command` must be None or a str; got {command!r}.")
    atlas_source, atlas_is_path = None, isinstance(atlas, (str, Path))
    if atlas_is_path:
        atlas_source = str(atlas)
        if not Path(atlas).is_file():
            raise FileNotFoundError(f"`atlas` {atlas} does not exist: run `python -m workbench sweep "
                                    f"--atlas --out {atlas}` first, or leave `atlas` None.")
        atlas = read_table(atlas)
    elif atlas is not None and not isinstance(atlas, pd.DataFrame):
        raise TypeError("`atlas` must be None, a path to an atlas CSV or its `read_table` "
                        f"DataFrame; got {type(atlas).__name__}.")
    elif atlas is not None:
        atlas_source = "a DataFrame"
    if atlas is not None:  # refused now, not after the studies
        check_table("atlas", atlas)
        if not _has_atlas(atlas_rows(atlas)[0]):
            raise ValueError(f"`atlas` ({atlas_source}) must hold rows of at least two attacks "
                             f"(column `attack`) of this version's row format ({ROW_FORMAT}); it "
                             f"holds {len(atlas)} rows and no such atlas. Run `python -m workbench "
                             "sweep --atlas` (trained runs come from the cache).")
    table = read_table(sweep_csv)
    rows, counts = report_rows(table)
    if not len(rows):
        if len(table):
            raise ValueError(f"`sweep_csv` {sweep_csv} must hold rows of this version's row format "
                             f"({ROW_FORMAT}); its {len(table)} rows were written by an older "
                             "workbench and are never used. Run the same `python -m workbench "
                             f"sweep --out {sweep_csv}` again (trained runs come from the cache).")
        raise FileNotFoundError(f"`sweep_csv` {sweep_csv} holds no rows: run `python -m workbench "
                                "sweep` first.")
    data = load_dataset(dataset)
    settings = {"dynamics": {"pairs": n_pairs or 40, "samples": n_samples or 32},
                "patterns": {"pairs": n_pairs or 100, "samples": n_samples or 64},
                "detection": {"inputs": n_pairs or 200, "samples": n_samples or 64}}
    dyn = smoothing_dynamics(data, n_pairs=settings["dynamics"]["pairs"],
                             n_samples=settings["dynamics"]["samples"], seed=seed)
    measured = pattern_sizes(dataset, seed=seed, n_pairs=settings["patterns"]["pairs"],
                             n_samples=settings["patterns"]["samples"])
    # the detection study's Patch attack, every detector (the full study: `detection_report`)
    dets = detection_study(dataset, seed=seed, n=settings["detection"]["inputs"],
                           n_samples=settings["detection"]["samples"],
                           attack=REPORT_DETECTION_ATTACKS[0])
    if command is None:
        command = (f"workbench.paper.paper_report({str(sweep_csv)!r}, {str(out)!r}, "
                   f"dataset={dataset!r}, seed={seed}, n_pairs={n_pairs}, n_samples={n_samples}"
                   + (f", atlas={atlas_source!r})" if atlas_is_path else ")"))
    provenance = {"command": command, "sweep table": str(sweep_csv)}
    if atlas_source is not None:
        provenance["atlas table"] = atlas_source
    return write_paper(table, out, dynamics=dyn, patterns=measured, detection=dets,
                       dataset=dataset, atlas=atlas, provenance={
                           **provenance,
                           "study seed": seed, "study dataset": dataset,
                           "study settings": settings,
                           "seconds": round(time.perf_counter() - t0, 1)})
