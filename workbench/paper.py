"""The paper's findings on real data, assembled into `reports/paper.html`:
attack strength (sweep table, ASR vs gap, Spearman), training dynamics, artificial patterns on a
clean model, and detection (STRIP, SCALE-UP, TeCo, IBD-PSC and W_σ scores; the full detection
study, every detector on every attack: `detection_report`, `python -m workbench.detection`)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import detection, plots
from ._validate import check_choice, check_int
from .data import DATASET_SHAPES, DATASETS, load_dataset
from .detection import METHODS, compare_detectors
from .experiments import default_sigmas, smoothing_dynamics
from .fileio import write_json
from .models import MODELS, build_model
from .patterns import measure_patterns, pattern_table, random_patches, universal_patch
from .poison import triggered_pairs
from .report import table_html, write_report
from .stats import spearman_ci
from .sweep import SweepTable, read_table
from .train import environment, train_backdoor
from .triggers import TRIGGERS, Patch


# the columns that name one trained run: rows equal on these measure the same model
RUN_COLUMNS = ("dataset", "trigger", "rate", "target", "seed", "model", "epochs")


def latest_per_run(table: SweepTable) -> tuple[SweepTable, int]:
    """One row per trained run (the last one in the table) and how many rows were left out.

    A CSV can hold a run twice under different keys (measured again after a change of settings
    or of the estimator); both rows come from one model, so a correlation over runs counts it
    once.
    """
    latest: dict[tuple, dict] = {}
    for r in table.rows:
        k = tuple(r[c] for c in RUN_COLUMNS)
        latest.pop(k, None)
        latest[k] = r
    return SweepTable(list(latest.values())), len(table) - len(latest)


def headline(table: SweepTable) -> dict:
    """Spearman correlations of ASR with the mean-W gap and with the radius gap, per dataset,
    over distinct runs (`latest_per_run`): "runs" is the n of the intervals."""
    table, _ = latest_per_run(table)
    out = {}
    for ds in sorted({r["dataset"] for r in table.rows}):
        rows = table.filter(dataset=ds)
        asr = rows.column("attack_success_rate")
        entry = {"runs": len(rows)}
        for col in ("gap", "radius_gap"):
            if len(rows) >= 4 and np.ptp(asr) > 0:
                s = spearman_ci(asr, rows.column(col))
                entry[col] = {"rho": round(s["rho"], 3), "ci": [round(c, 3) for c in s["ci"]],
                              "p_value": float(f"{s['p_value']:.3g}")}
        out[ds] = entry
    return out


# --- Detection (issue 12): every detector on every attack -------------------------------------

DETECTION_ATTACKS = ("Patch", "Checkerboard", "Pixel", "Blend", "Sinusoid", "Warp")
DETECTION_MODEL = "small-cnn-bn"  # BatchNorm, so that IBD-PSC applies
# Each attack (the trigger with its default parameters, target 0, seed 0) at its strong rate on the
# detection model: the lowest of 5%, 10%, 20% at which it reaches ASR >= 0.9, measured on 2 CPU
# cores (benchmarks/RESULTS.md). An attack without an entry here uses 10%.
DETECTION_RATES = {
    "digits": {"Patch": 0.05, "Checkerboard": 0.05, "Pixel": 0.05, "Blend": 0.05,
               "Sinusoid": 0.05, "Warp": 0.2},
    "fashion-mnist": {"Patch": 0.05, "Checkerboard": 0.05, "Pixel": 0.05, "Blend": 0.05,
                      "Sinusoid": 0.05, "Warp": 0.05},
}
REPORT_DETECTION_ATTACKS = ("Patch",)  # `paper_report`'s share of the study: the full one is long


def detection_trigger(attack: str):
    """The trigger of an attack of the detection study: `attack`'s class with default parameters
    (Patch and Checkerboard 3×3 at the bottom right, Blend α = 0.1, …)."""
    check_choice("attack", attack, DETECTION_ATTACKS)
    return TRIGGERS[attack]()


def detection_rate(dataset: str, attack: str) -> float:
    return DETECTION_RATES.get(dataset, {}).get(attack, 0.1)


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


def _detection_entry(data, attack, n, seed, n_samples, methods, model, n_boot, progress):
    t0 = time.perf_counter()
    trigger, rate = detection_trigger(attack), detection_rate(data.name, attack)
    run = train_backdoor(data, trigger=trigger, rate=rate, target=0, model=model, progress=progress)
    pairs = triggered_pairs(data.x_test, data.y_test, run.trigger, run.target, n=n, seed=seed)
    # held-out clean test images not among the evaluated inputs: STRIP's blend partners, IBD-PSC's
    # layer selection, the clean W_σ curve of w-knee and w-class
    mask = np.ones(len(data.y_test), bool)
    mask[pairs.indices.numpy()] = False
    results = compare_detectors(run.model, pairs.clean, pairs.triggered, data.x_test[mask],
                                default_sigmas(data.name), n_samples=n_samples, seed=seed,
                                methods=methods, n_boot=n_boot)
    return {"dataset": data.name, "attack": attack, "trigger": repr(run.trigger), "rate": rate,
            "model": model, "clean_accuracy": run.clean_accuracy,
            "attack_success_rate": run.attack_success_rate, "n": len(pairs.clean),
            "results": results, "seconds": time.perf_counter() - t0}, run


def detection_study(dataset: str = "digits", n: int = 200, seed: int = 0, n_samples: int = 64,
                    attack: str = "Patch", methods=METHODS, model: str = DETECTION_MODEL,
                    n_boot: int = 1000):
    """One attack of the detection study: its backdoored model (a cached run, target 0, at the
    attack's strong rate) and every detector in `methods` on `n` clean vs `n` triggered test
    inputs (`workbench.detection.compare_detectors`). Returns (run, [DetectionResult, ...])."""
    methods = _check_detection_args(dataset, (attack,), n, seed, n_samples, methods, model, n_boot)
    entry, run = _detection_entry(load_dataset(dataset), attack, n, seed, n_samples, methods, model,
                                  n_boot, False)
    return run, entry["results"]


def detection_atlas(datasets=("digits",), attacks=DETECTION_ATTACKS, n: int = 200, seed: int = 0,
                    n_samples: int = 64, methods=METHODS, model: str = DETECTION_MODEL,
                    n_boot: int = 1000, progress: bool = False) -> list[dict]:
    """Every detector on every attack of every dataset: one entry per (dataset, attack) with the
    run's clean accuracy and ASR and its `DetectionResult`s ("results"). Models come from the run
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
                print(f"{ds:>13} {attack:<12} ASR {entry['attack_success_rate']:.3f}  " + "  ".join(
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
            out.append({"dataset": e["dataset"], "attack": e["attack"], "rate": e["rate"],
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
    intervals. Each attack's study runs (training on first use) when it is first picked and is
    kept; `study`, a (run, results) pair of `detection_study` with these settings, is reused for
    its attack. Returns an ipywidgets VBox."""
    import ipywidgets as W
    import plotly.graph_objects as go

    from .report import table_html as _table

    methods = _check_detection_args(dataset, DETECTION_ATTACKS, n, seed, n_samples, methods,
                                    DETECTION_MODEL, 1000)
    cache: dict = {}
    start = "Patch"
    if study is not None and type(study[0].trigger).__name__ in DETECTION_ATTACKS:
        start = type(study[0].trigger).__name__
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
                       f"target), model {models}, target 0, each attack at its strong rate; W_σ "
                       f"with {w.get('n_samples', '–')} samples per σ on the dataset's default "
                       "grid. Intervals: percentile bootstrap over inputs, "
                       f"{first.get('n_boot')} resamples. Higher score = flagged.</p>"]),
        ("AUC", [detection_heatmap(atlas), table_html(detection_table(atlas))]),
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


def paper_report(sweep_csv: str | Path = "reports/sweep.csv", out: str | Path = "reports/paper.html",
                 dataset: str = "digits", seed: int = 0, n_pairs: int | None = None,
                 n_samples: int | None = None) -> dict:
    """Write `out` (offline HTML) and `out` with .json (the summary) from a sweep's CSV and the
    dynamics, pattern and detection studies on `dataset`.

    n_pairs, n_samples: None keeps each study's default (dynamics 40 pairs × 32 samples, patterns
    100 × 64, detection 200 clean and 200 triggered inputs × 64); a number sets all three
    (smaller is faster, with wider intervals).
    """
    t0 = time.perf_counter()
    check_choice("dataset", dataset, DATASETS)
    check_int("seed", seed, low=0)
    for name, v in (("n_pairs", n_pairs), ("n_samples", n_samples)):
        if v is not None:
            check_int(name, v, low=4)
    table, superseded = latest_per_run(read_table(sweep_csv))
    if not len(table):
        raise FileNotFoundError(f"`sweep_csv` {sweep_csv} holds no rows: run `python -m workbench "
                                "sweep` first.")
    head = headline(table)
    data = load_dataset(dataset)
    dyn = smoothing_dynamics(data, n_pairs=n_pairs or 40, n_samples=n_samples or 32, seed=seed)
    measured = pattern_sizes(dataset, seed=seed, n_pairs=n_pairs or 100, n_samples=n_samples or 64)
    by_size = size_table(measured)
    largest = max(measured)  # the detailed view: the size at which the effect can appear
    pats = measured[largest]
    # the detection study's Patch attack, every detector (the full study: `detection_report`)
    _, dets = detection_study(dataset, seed=seed, n=n_pairs or 200, n_samples=n_samples or 64,
                              attack=REPORT_DETECTION_ATTACKS[0])
    first_asr = next((r["epoch"] for r in dyn if r["attack_success_rate"] >= 0.9), None)
    first_gap = next((r["epoch"] for r in dyn if r["gap_ci"][0] > 0), None)
    summary = {"correlations": head, "sweep_rows_superseded": superseded, "dynamics": {"first_epoch_asr_ge_0.9": first_asr,
                                                  "first_epoch_gap_ci_above_0": first_gap},
               "patterns_size": largest, "patterns": pattern_table(pats), "patterns_by_size": by_size,
               "detection": [{"method": d.label, "name": d.method, "auc": round(d.auc, 4),
                              "auc_ci": [round(v, 4) for v in d.auc_ci],
                              "tpr_at_1_fpr": round(d.tpr_at_1_fpr, 4),
                              "tpr_at_5_fpr": round(d.tpr_at_5_fpr, 4),
                              "ms_per_input": round(1000 * d.seconds_per_input, 3)}
                             for d in dets]}
    corr_rows = [{"dataset": ds, "runs": e["runs"],
                  "Spearman ρ (ASR, mean-W gap)": f"{e['gap']['rho']} {e['gap']['ci']}" if "gap" in e else "n/a",
                  "p": e.get("gap", {}).get("p_value", "n/a"),
                  "Spearman ρ (ASR, radius gap)": f"{e['radius_gap']['rho']} {e['radius_gap']['ci']}" if "radius_gap" in e else "n/a"}
                 for ds, e in head.items()]
    cols = ["dataset", "trigger_type", "trigger_size", "rate", "clean_accuracy",
            "attack_success_rate", "gap", "gap_ci_low", "gap_ci_high", "p_value", "radius_gap"]
    write_report(out, "Backdoor smoothing: the paper's findings, reproduced", [
        ("Attack strength", [table_html([{k: r[k] for k in cols} for r in table.rows]),
                             table_html(corr_rows),
                             "<p class='note'>Claim 4: smoothing grows with the attack's success. "
                             "Rate 0 rows are clean-model controls. Intervals: 95% t-intervals over "
                             "pairs (gap), Fisher-z (Spearman). One row per trained run"
                             + (f" ({superseded} older measurements of the same runs left out)"
                                if superseded else "") + ".</p>",
                             plots.attack_strength(table), plots.rate_curves(table)]),
        ("Training dynamics", [plots.dynamics(dyn), plots.dynamics_curves(dyn, every=max(1, len(dyn) // 6)),
                               f"<p class='note'>First epoch with ASR ≥ 0.9: {first_asr}; first epoch "
                               f"whose gap CI excludes 0: {first_gap}.</p>"]),
        ("Artificial patterns without poisoning", [
            "<p class='note'>Claim 5: patterns crafted on a clean model, at the centre of the image: "
            "a universal adversarial patch per size, with the white patch and random patches of the "
            "same size as controls.</p>",
            table_html(by_size), plots.pattern_sizes(by_size),
            f"<p class='note'>The {largest}×{largest} patterns in detail:</p>",
            plots.patterns_figure(pats)]),
        ("Detection", [table_html([d.row() | {"detector": d.label} for d in dets]),
                       detection_roc(dets, title=f"Detecting triggered inputs: {dataset}, "
                                     f"{REPORT_DETECTION_ATTACKS[0]}, {DETECTION_MODEL}"),
                       "<p class='note'>One attack (3×3 patch, 5%) on the BatchNorm CNN, 200 "
                       "clean vs 200 triggered inputs; intervals: bootstrap 95%. Every attack: "
                       "<code>python -m workbench.detection</code> (reports/detection.html).</p>"]),
    ], metadata={"summary": summary, "sweep_csv": str(sweep_csv), "environment": environment(),
                 "seconds": round(time.perf_counter() - t0, 1)})
    write_json(Path(out).with_suffix(".json"), summary, default=str)
    return summary
