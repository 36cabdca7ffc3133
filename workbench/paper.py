"""The paper's findings on real data, assembled into `reports/paper.html`:
attack strength (sweep table, ASR vs gap, Spearman), training dynamics, artificial patterns on a
clean model, and detection (STRIP vs W_σ scores)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import plots
from ._validate import check_choice, check_int
from .data import DATASET_SHAPES, DATASETS, load_dataset
from .detection import compare_detectors
from .experiments import default_sigmas, smoothing_dynamics
from .fileio import write_json
from .patterns import measure_patterns, pattern_table, random_patches, universal_patch
from .poison import triggered_pairs
from .report import table_html, write_report
from .stats import spearman_ci
from .sweep import SweepTable, read_table
from .train import environment, train_backdoor
from .triggers import Patch


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


def detection_study(dataset: str = "digits", n: int = 200, seed: int = 0, n_samples: int = 64):
    data = load_dataset(dataset)
    run = train_backdoor(data, trigger=Patch(size=3), rate=0.05, target=0, progress=False)
    pairs = triggered_pairs(data.x_test, data.y_test, run.trigger, run.target, n=n, seed=seed)
    # STRIP's blend partners: held-out clean test images not among the evaluated inputs
    mask = np.ones(len(data.y_test), bool)
    mask[pairs.indices.numpy()] = False
    pool = data.x_test[mask]
    return run, compare_detectors(run.model, pairs.clean, pairs.triggered, pool,
                                  default_sigmas(dataset), n_samples=n_samples, seed=seed)


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
    _, dets = detection_study(dataset, seed=seed, n=n_pairs or 200, n_samples=n_samples or 64)
    first_asr = next((r["epoch"] for r in dyn if r["attack_success_rate"] >= 0.9), None)
    first_gap = next((r["epoch"] for r in dyn if r["gap_ci"][0] > 0), None)
    summary = {"correlations": head, "sweep_rows_superseded": superseded, "dynamics": {"first_epoch_asr_ge_0.9": first_asr,
                                                  "first_epoch_gap_ci_above_0": first_gap},
               "patterns_size": largest, "patterns": pattern_table(pats), "patterns_by_size": by_size,
               "detection": [{"method": d.method, "auc": round(d.auc, 4),
                              "tpr_at_5_fpr": round(d.tpr_at_5_fpr, 4)} for d in dets]}
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
        ("Detection", [table_html(summary["detection"]), plots.roc_figure(dets)]),
    ], metadata={"summary": summary, "sweep_csv": str(sweep_csv), "environment": environment(),
                 "seconds": round(time.perf_counter() - t0, 1)})
    write_json(Path(out).with_suffix(".json"), summary, default=str)
    return summary
