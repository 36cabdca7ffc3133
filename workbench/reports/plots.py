"""Pure functions returning plotly figures: usable without widgets, exportable with
`fig.write_html(...)` or `save_png(fig, path)` (kaleido with the system Chromium).

Colours are the Okabe–Ito palette (safe for the common colour-vision deficiencies): clean inputs
are blue, triggered inputs vermillion, everywhere.
"""

from __future__ import annotations

import os
from numbers import Real
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..base._validate import check_choice, check_float, check_int
from ..studies.atlas import ATTACKS, FAMILIES
from ..estimator.stats import t_interval
from ..studies.sweep import RUN_COLUMNS, SIZED, current_rows, latest_per_run

COLOUR_BY = ("class", "entropy")  # what a landscape's heatmap shows

OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#56B4E9", "#CC79A7", "#F0E442", "#000000")
CLEAN, TRIGGERED = OKABE_ITO[0], OKABE_ITO[1]
TEMPLATE = "plotly_white"


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def to_rgb_uint8(img) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    a = np.asarray(img, dtype=float)
    a = np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a[:3]
    return (np.clip(a, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)


def image_pairs(clean, triggered, labels: Sequence[int] | None = None,
                class_names: Sequence[str] | None = None, n: int = 8,
                predictions: Sequence[int] | None = None) -> go.Figure:
    """Two rows of images: clean on top, their triggered twins below."""
    n = min(check_int("n", n, low=1), len(clean))
    titles = []
    for row in ("clean", "triggered"):
        for i in range(n):
            t = row if i == 0 else ""
            if labels is not None and row == "clean":
                lab = int(labels[i])
                t = f"{t} · {class_names[lab] if class_names else lab}".strip(" ·")
            if predictions is not None and row == "triggered":
                p = int(predictions[i])
                t = f"{t} → {class_names[p] if class_names else p}".strip()
            titles.append(t)
    fig = make_subplots(rows=2, cols=n, subplot_titles=titles, horizontal_spacing=0.01,
                        vertical_spacing=0.08)
    for r, imgs in enumerate((clean, triggered), start=1):
        for i in range(n):
            fig.add_trace(go.Image(z=to_rgb_uint8(imgs[i]), hoverinfo="skip"), row=r, col=i + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=11)
    fig.update_layout(template=TEMPLATE, height=260, width=max(400, 95 * n),
                      margin=dict(l=10, r=10, t=40, b=10),
                      title="Test inputs without and with the trigger")
    return fig


def training_curves(history: Sequence[dict]) -> go.Figure:
    """Loss, clean accuracy and attack success rate per epoch."""
    ep = [h["epoch"] for h in history]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=ep, y=[h["clean_accuracy"] for h in history], name="clean accuracy",
                             mode="lines+markers", line_color=CLEAN), secondary_y=False)
    fig.add_trace(go.Scatter(x=ep, y=[h["attack_success_rate"] for h in history],
                             name="attack success rate", mode="lines+markers",
                             line_color=TRIGGERED), secondary_y=False)
    fig.add_trace(go.Scatter(x=ep, y=[h["loss"] for h in history], name="training loss",
                             mode="lines", line=dict(color=OKABE_ITO[7], dash="dot")),
                  secondary_y=True)
    fig.update_yaxes(title_text="rate", range=[0, 1.02], secondary_y=False)
    fig.update_yaxes(title_text="cross-entropy loss (nats)", secondary_y=True, rangemode="tozero")
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(template=TEMPLATE, title="Training", height=360,
                      legend=dict(orientation="h", y=-0.25))
    return fig


def mean_band(values: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over inputs (axis 0) with a t-interval: the band says how well the mean is known."""
    confidence = check_float("confidence", confidence, 0.0, 1.0, low_open=True, high_open=True)
    v = np.asarray(values, dtype=float)
    m = v.mean(0)
    if len(v) < 2:
        return m, m, m
    # per column, the same Student interval as the gap's (workbench.stats.t_interval)
    bands = [t_interval(col, confidence) for col in v.T]
    return m, np.array([b[2] for b in bands]), np.array([b[3] for b in bands])


def _band_traces(fig, x, m, lo, hi, colour, name, **kw):
    fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([hi, lo[::-1]]),
                             fill="toself", fillcolor=_rgba(colour, 0.2), line=dict(width=0),
                             hoverinfo="skip", showlegend=False, legendgroup=name), **kw)
    fig.add_trace(go.Scatter(x=x, y=m, name=name, mode="lines+markers", line_color=colour,
                             legendgroup=name), **kw)


def smoothness_curves(clean, triggered=None, per_input: int = 0, confidence: float = 0.95,
                      title: str = "Smoothness curves: W<sub>σ</sub> around clean and triggered inputs"
                      ) -> go.Figure:
    """Mean W_σ over inputs against σ, with a `confidence` band; optionally `per_input` thin
    curves of the first inputs. clean/triggered: SmoothnessResult."""
    per_input = check_int("per_input", per_input, low=0)
    confidence = check_float("confidence", confidence, 0.0, 1.0, low_open=True, high_open=True)
    fig = go.Figure()
    for res, colour, name in ((clean, CLEAN, "clean"), (triggered, TRIGGERED, "triggered")):
        if res is None:
            continue
        for j in range(min(per_input, len(res.entropy))):
            fig.add_trace(go.Scatter(x=res.sigmas, y=res.entropy[j], mode="lines",
                                     line=dict(color=_rgba(colour, 0.25), width=1),
                                     showlegend=False, hoverinfo="skip", legendgroup=name))
        _band_traces(fig, res.sigmas, *mean_band(res.entropy, confidence), colour,
                     f"{name} (mean, {confidence:.0%} CI)")
    units = clean.units
    fig.update_layout(template=TEMPLATE, title=title, height=420,
                      xaxis_title="noise scale σ (pixel units, images in [0, 1])",
                      yaxis_title=f"W<sub>σ</sub> ({units}; lower = smoother)",
                      legend=dict(orientation="h", y=-0.2))
    return fig


def summary_distribution(comparison, title: str | None = None) -> go.Figure:
    """Per-input summaries of clean vs triggered curves (box + points), from compare_smoothness."""
    label = {"mean": "mean W over the σ grid", "radius": "smoothness radius (σ)",
             "certified": "certified L2 radius"}[comparison.summary]
    fig = go.Figure()
    for vals, colour, name in ((comparison.clean_summary, CLEAN, "clean"),
                               (comparison.triggered_summary, TRIGGERED, "triggered")):
        fig.add_trace(go.Box(y=vals, name=name, marker_color=colour, boxpoints="all", jitter=0.4,
                             pointpos=0, line_width=1.5))
    lo, hi = comparison.gap_ci
    fig.update_layout(template=TEMPLATE, height=380, yaxis_title=label, showlegend=False,
                      title=title or (f"Per-input summaries: gap {comparison.gap:.3f} "
                                      f"[{lo:.3f}, {hi:.3f}], Wilcoxon p = {comparison.p_value:.2g}"))
    return fig


def save_png(fig: go.Figure, path, scale: float = 2.0) -> None:
    """Write a static PNG with kaleido (needs Chrome/Chromium: /usr/bin/chromium or BROWSER_PATH)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or an os.PathLike; got {path!r}.")
    scale = check_float("scale", scale, 0.0, None, low_open=True)
    try:
        import kaleido  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("PNG export needs kaleido: pip install 'workbench[export]'") from exc
    fig.write_image(str(path), scale=scale)


def _class_colourscale(k: int):
    cols = [OKABE_ITO[i % len(OKABE_ITO)] for i in range(k)]
    scale = []
    for i, c in enumerate(cols):
        scale += [(i / k, c), ((i + 1) / k, c)]
    return scale


def landscape_traces(land, colour_by: str, class_names=None, k: int = 10, showscale=True):
    """The heatmap and marker traces of a landscape (shared by figures and widgets)."""
    check_choice("colour_by", colour_by, COLOUR_BY)
    k = check_int("k", k, low=2)
    if colour_by == "class":
        names = class_names or [str(i) for i in range(k)]
        text = [[names[c] for c in row] for row in land.predicted]
        heat = go.Heatmap(x=land.alphas, y=land.betas, z=land.predicted, zmin=-0.5, zmax=k - 0.5,
                          colorscale=_class_colourscale(k), text=text, showscale=showscale,
                          hovertemplate="a=%{x:.2f}, b=%{y:.2f}<br>class %{text}<extra></extra>",
                          colorbar=dict(title="class", tickvals=list(range(k)), ticktext=list(names)))
    else:
        z = land.entropy if land.entropy is not None else np.zeros_like(land.confidence)
        heat = go.Heatmap(x=land.alphas, y=land.betas, z=z, colorscale="Cividis", zmin=0,
                          showscale=showscale, colorbar=dict(title="W<sub>σ</sub> (nats)"),
                          hovertemplate="a=%{x:.2f}, b=%{y:.2f}<br>W=%{z:.3f}<extra></extra>")
    names = list(land.markers)
    marks = go.Scatter(x=[land.markers[m][0] for m in names], y=[land.markers[m][1] for m in names],
                       mode="markers+text", text=names,
                       # labels on opposite sides of their markers (the input and its twin are often
                       # close), with a halo so they read on any colour
                       textposition=["bottom left" if i % 2 == 0 else "top right" for i in range(len(names))],
                       textfont=dict(color="black", size=12, shadow="0px 0px 3px white"),
                       marker=dict(symbol="x", size=11, color="white", line=dict(width=2, color="black")),
                       showlegend=False, hoverinfo="text")
    return heat, marks


def landscape_pair(clean_land, triggered_land, colour_by: str = "class",
                   class_names: Sequence[str] | None = None) -> go.Figure:
    """Clean and triggered landscapes side by side, on the same axes and colours."""
    check_choice("colour_by", colour_by, COLOUR_BY)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("around the clean input",
                                                        "around the triggered input"),
                        shared_yaxes=True, horizontal_spacing=0.06)
    k = max(int(max(clean_land.predicted.max(), triggered_land.predicted.max())) + 1,
            len(class_names) if class_names else 0, 2)
    for col, land in ((1, clean_land), (2, triggered_land)):
        for tr in landscape_traces(land, colour_by, class_names, k, showscale=col == 2):
            fig.add_trace(tr, row=1, col=col)
    what = "predicted class" if colour_by == "class" else "local W<sub>σ</sub>"
    fig.update_xaxes(title_text=f"{clean_land.directions[0]} direction (L2)")
    fig.update_yaxes(title_text=f"{clean_land.directions[1]} direction (L2)", col=1)
    fig.update_layout(template=TEMPLATE, height=430, title=f"Uncertainty landscape: {what}")
    return fig


def _sweep_rows(table) -> list[dict]:
    """The rows of a sweep table: a DataFrame (`read_table`, `run_sweep`) or a list of dicts."""
    if hasattr(table, "to_dict") and hasattr(table, "columns"):
        return table.to_dict("records")
    return list(table)


def _text(row, column: str) -> str:
    """A text cell of a sweep row, "" where missing (None, NaN, <NA>) or absent."""
    v = row.get(column)
    return "" if v is None or pd.isna(v) else str(v)


def sweep_series(row) -> str:
    """The series a sweep row belongs to (one attack on one dataset, every rate, target and seed),
    for people: its trigger ("Patch 3×3", "Blend"), after the attack's name where the attack is
    not the plain trigger (an atlas attack: "Patch/all-to-all: Patch 3×3", "Patch/clean-label:
    Patch 5×5"), with the training subset where it was limited (", first 20,000 training
    images"). Rows of different series are different runs (`sweep.RUN_COLUMNS`) at any rate,
    target and seed. row: a dict (or pandas Series) of a sweep row; the attack's columns may be
    missing (a plain sweep)."""
    kind = _text(row, "trigger_type")
    size = row.get("trigger_size")
    name = f"{kind} {size}×{size}" if kind in SIZED else kind
    attack = _text(row, "attack")
    if attack and (attack != kind or _text(row, "poisoning") not in ("", "dirty-label")
                   or _text(row, "target_mode") not in ("", "all-to-one")):
        name = f"{attack}: {name}"
    limit = row.get("max_train")
    if limit is not None and not pd.isna(limit):
        name += f", first {int(limit):,} training images"
    return name


def _series_key(row) -> tuple:
    return (_text(row, "dataset"), sweep_series(row))


def attack_strength(table, x: str = "attack_success_rate", title: str | None = None) -> go.Figure:
    """Smoothing gap (with its CI) against ASR (or another column), one colour per series (an
    attack's trigger on a dataset: `sweep_series`, so two attacks sharing a trigger stay apart);
    rate-0 (clean) controls drawn as open symbols. table: a sweep DataFrame or a list of rows."""
    rows = _sweep_rows(table)
    if rows:  # x: a numeric column of the table
        check_choice("x", x, list(dict.fromkeys(k for r in rows for k, v in r.items()
                                                if isinstance(v, Real) and not isinstance(v, bool))))
    fig = go.Figure()
    groups = sorted({_series_key(r) for r in rows})  # one attack on one dataset: its runs
    for i, (ds, series) in enumerate(groups):
        g = [r for r in rows if _series_key(r) == (ds, series)]
        colour = OKABE_ITO[i % len(OKABE_ITO)]
        fig.add_trace(go.Scatter(
            x=[r[x] for r in g], y=[r["gap"] for r in g], mode="markers",
            name=f"{ds} · {series}",
            marker=dict(color=colour, size=10, symbol=["circle-open" if r["rate"] == 0 else "circle" for r in g]),
            error_y=dict(type="data", symmetric=False, array=[r["gap_ci_high"] - r["gap"] for r in g],
                         arrayminus=[r["gap"] - r["gap_ci_low"] for r in g], thickness=1),
            text=[f"rate {r['rate']}" for r in g],
            hovertemplate="%{text}<br>ASR %{x:.3f}<br>gap %{y:.3f}<extra></extra>"))
    fig.add_hline(y=0, line=dict(color="#888", dash="dot"))
    xt = {"attack_success_rate": "attack success rate", "rate": "poisoning rate"}.get(x, x)
    fig.update_layout(template=TEMPLATE, height=420, title=title or f"Smoothing gap against {xt}",
                      xaxis_title=xt, yaxis_title="smoothing gap (nats; > 0: triggered smoother)",
                      legend=dict(orientation="h", y=-0.25))
    return fig


def rate_curves(table) -> go.Figure:
    """ASR and smoothing gap against the poisoning rate (rate 0 plotted at the axis' left end),
    one line per series (`sweep_series`). table: a sweep DataFrame or a list of rows."""
    rows = _sweep_rows(table)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("attack success rate", "smoothing gap"))
    groups = sorted({_series_key(r) for r in rows})  # one attack on one dataset: its runs
    positive = [r["rate"] for r in rows if r["rate"] > 0]
    floor = min(positive) / 3 if positive else 1e-4
    for i, key in enumerate(groups):
        g = sorted((r for r in rows if _series_key(r) == key), key=lambda r: r["rate"])
        xs = [r["rate"] if r["rate"] > 0 else floor for r in g]
        colour = OKABE_ITO[i % len(OKABE_ITO)]
        name = f"{key[0]} · {key[1]}"
        fig.add_trace(go.Scatter(x=xs, y=[r["attack_success_rate"] for r in g], name=name,
                                 line_color=colour, legendgroup=name), row=1, col=1)
        fig.add_trace(go.Scatter(x=xs, y=[r["gap"] for r in g], name=name, line_color=colour,
                                 legendgroup=name, showlegend=False,
                                 error_y=dict(type="data", symmetric=False,
                                              array=[r["gap_ci_high"] - r["gap"] for r in g],
                                              arrayminus=[r["gap"] - r["gap_ci_low"] for r in g])),
                      row=1, col=2)
    fig.update_xaxes(type="log", title_text="poisoning rate (leftmost point: rate 0)")
    fig.update_yaxes(title_text="ASR", range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(title_text="gap (nats)", row=1, col=2)
    fig.update_layout(template=TEMPLATE, height=400, legend=dict(orientation="h", y=-0.3))
    return fig


def dynamics(rows: Sequence[dict]) -> go.Figure:
    """Per epoch: ASR, clean accuracy and the smoothing gap (with CI) on one time axis."""
    ep = [r["epoch"] for r in rows]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=ep, y=[r["attack_success_rate"] for r in rows], name="ASR",
                             line_color=TRIGGERED), secondary_y=False)
    fig.add_trace(go.Scatter(x=ep, y=[r["clean_accuracy"] for r in rows], name="clean accuracy",
                             line_color=CLEAN), secondary_y=False)
    fig.add_trace(go.Scatter(x=ep, y=[r["gap"] for r in rows], name="smoothing gap",
                             line=dict(color=OKABE_ITO[2], width=3),
                             error_y=dict(type="data", symmetric=False,
                                          array=[r["gap_ci"][1] - r["gap"] for r in rows],
                                          arrayminus=[r["gap"] - r["gap_ci"][0] for r in rows])),
                  secondary_y=True)
    fig.update_yaxes(title_text="rate", range=[0, 1.02], secondary_y=False)
    fig.update_yaxes(title_text="smoothing gap (nats)", secondary_y=True)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(template=TEMPLATE, height=400, title="Smoothing during training",
                      legend=dict(orientation="h", y=-0.25))
    return fig


def dynamics_curves(rows: Sequence[dict], every: int = 1) -> go.Figure:
    """Mean W_σ curves of clean (blue) and triggered (vermillion) inputs after chosen epochs,
    darker for later epochs."""
    every = check_int("every", every, low=1)
    fig = go.Figure()
    pick = [r for i, r in enumerate(rows) if i % every == 0 or i == len(rows) - 1]
    for i, r in enumerate(pick):
        a = 0.25 + 0.75 * (i + 1) / len(pick)
        for key, colour, name in (("clean_curve", CLEAN, "clean"), ("triggered_curve", TRIGGERED, "triggered")):
            fig.add_trace(go.Scatter(x=r["sigmas"], y=r[key], mode="lines", name=f"{name}, epoch {r['epoch']}",
                                     line=dict(color=_rgba(colour, a))))
    fig.update_layout(template=TEMPLATE, height=420, title="W<sub>σ</sub> curves after each epoch",
                      xaxis_title="noise scale σ", yaxis_title="mean W<sub>σ</sub> (nats)")
    return fig


def patterns_figure(measurements) -> go.Figure:
    """Success rate and smoothing gap (with CI) per artificial pattern."""
    names = [m.name for m in measurements]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("success rate (to the target)",
                                                        "smoothing gap (nats)"))
    colours = [TRIGGERED if "universal" in n or "trigger" in n else OKABE_ITO[7] for n in names]
    fig.add_trace(go.Bar(x=names, y=[m.success_rate for m in measurements], marker_color=colours,
                         showlegend=False), row=1, col=1)
    fig.add_trace(go.Bar(x=names, y=[m.comparison.gap for m in measurements], marker_color=colours,
                         showlegend=False,
                         error_y=dict(type="data", symmetric=False,
                                      array=[m.comparison.gap_ci[1] - m.comparison.gap for m in measurements],
                                      arrayminus=[m.comparison.gap - m.comparison.gap_ci[0] for m in measurements])),
                  row=1, col=2)
    fig.update_yaxes(range=[0, 1.02], row=1, col=1)
    fig.update_layout(template=TEMPLATE, height=380, title="Artificial patterns on a clean model")
    return fig


def pattern_sizes(rows: Sequence[dict]) -> go.Figure:
    """Smoothing gap (with CI) against success rate for artificial patterns of several sizes
    (rows of `paper.pattern_size_study`): one colour per kind, the size as the label
    of universal patches (and in every point's hover)."""
    fig = go.Figure()
    colours = {"universal patch": TRIGGERED, "white patch": OKABE_ITO[7], "random patch": OKABE_ITO[2]}
    for i, kind in enumerate(dict.fromkeys(r["kind"] for r in rows)):
        g = [r for r in rows if r["kind"] == kind]
        fig.add_trace(go.Scatter(
            x=[r["success rate"] for r in g], y=[r["smoothing gap"] for r in g],
            # sizes written next to universal patches only: the controls crowd x = 0
            mode="markers+text" if "universal" in kind else "markers", name=kind,
            text=[f"{r['size']}×{r['size']}" for r in g],
            textposition="top center", marker=dict(color=colours.get(kind, OKABE_ITO[i % 8]), size=10),
            error_y=dict(type="data", symmetric=False,
                         array=[r["gap_ci_high"] - r["smoothing gap"] for r in g],
                         arrayminus=[r["smoothing gap"] - r["gap_ci_low"] for r in g], thickness=1),
            hovertemplate="%{text}<br>success %{x:.3f}<br>gap %{y:.3f}<extra></extra>"))
    fig.add_hline(y=0, line=dict(color="#888", dash="dot"))
    fig.update_layout(template=TEMPLATE, height=420, title="Artificial patterns by size (clean model)",
                      xaxis_title="success rate (to the target)", xaxis_range=[-0.03, 1.05],
                      yaxis_title="smoothing gap (nats; > 0: patched smoother)")
    return fig


def roc_figure(results) -> go.Figure:
    """ROC curves of detectors (DetectionResult list), AUC and TPR at 5% FPR in the legend."""
    fig = go.Figure()
    for i, r in enumerate(results):
        fig.add_trace(go.Scatter(x=r.fpr, y=r.tpr, mode="lines", line=dict(color=OKABE_ITO[i], width=2),
                                 name=f"{r.method}: AUC {r.auc:.3f}, TPR@5%FPR {r.tpr_at_5_fpr:.2f}"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#aaa", dash="dot"),
                             showlegend=False, hoverinfo="skip"))
    fig.add_vline(x=0.05, line=dict(color="#aaa", dash="dash"))
    fig.update_layout(template=TEMPLATE, height=440, title="Detecting triggered inputs",
                      xaxis_title="false-positive rate (clean flagged)",
                      yaxis_title="true-positive rate (triggered flagged)",
                      legend=dict(orientation="h", y=-0.25))
    return fig


# --- The attack atlas (issue 11): every attack family side by side --------------------------------

# the columns an atlas row has beyond a plain sweep row's (sweep row format 4, workbench.atlas)
ATLAS_COLUMNS = ("attack", "family", "poisoning", "target_mode", "trigger_l2", "trigger_linf",
                 "sigmas", "clean_curve", "triggered_curve")
# the columns that name one trained run: the sweep's one definition (`sweep.RUN_COLUMNS`; the
# trigger's repr alone does not: Patch and Patch/clean-label share it), under its former name
ATLAS_RUN_COLUMNS = RUN_COLUMNS
NORMS = {"trigger_l2": "mean L2 norm of the trigger (x′ − x)",
         "trigger_linf": "mean L∞ norm of the trigger (x′ − x)"}
_DATASET_DASH = ("solid", "dash", "dot", "dashdot")
_DATASET_SYMBOL = ("circle", "square", "diamond", "triangle-up")
# one colour per family, in workbench.atlas.FAMILIES order (yellow last: it reads poorly on white)
_FAMILY_COLOURS = OKABE_ITO[:6] + (OKABE_ITO[7], OKABE_ITO[6])


def _display_order() -> tuple[tuple, tuple]:
    """(families, attacks) in the atlas's display order (workbench.atlas)."""
    return tuple(FAMILIES), tuple(ATTACKS)


def _ordered(values, reference) -> list:
    """`values` (distinct) in `reference` order, any others after them by name."""
    ref = {v: i for i, v in enumerate(reference)}
    return sorted(dict.fromkeys(values), key=lambda v: (ref.get(v, len(ref)), str(v)))


def atlas_frame(table, allow_empty: bool = False):
    """The atlas rows of a sweep table, ready to draw: a copy holding only rows of this version's
    row format (`sweep.current_rows`) whose `attack` is set, one per trained run
    (`sweep.latest_per_run`: the last of rows equal on `sweep.RUN_COLUMNS`), sorted by family and
    attack (display order), dataset, rate and seed. table: `read_table`'s DataFrame (or a list of
    its rows as dicts). Raises ValueError when a column is missing, when an attack holds several
    settings on one dataset (triggers, poisoning, target modes or training subsets), or when no
    atlas row is left unless `allow_empty`."""
    if isinstance(table, list):
        table = pd.DataFrame(table)
    if not isinstance(table, pd.DataFrame):
        raise TypeError("`table` must be a pandas DataFrame of atlas rows (as `read_table` returns) "
                        f"or a list of row dicts; got {type(table).__name__}.")
    missing = [c for c in ATLAS_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"`table` must have the atlas columns ({', '.join(ATLAS_COLUMNS)}); it "
                         f"lacks {', '.join(missing)}: is it a sweep table of an older row format? "
                         "Run `python -m workbench sweep --atlas` (trained runs come from the cache).")
    rows, _ = current_rows(table)
    attack = rows["attack"].fillna("").astype(str).str.strip()
    rows = rows[attack != ""]
    rows, _ = latest_per_run(rows)
    kinds = rows.groupby(["attack", "dataset"])[["trigger_type", "trigger_size", "poisoning",
                                                 "target_mode", "max_train"]].nunique(dropna=False)
    several = kinds[(kinds > 1).any(axis=1)]
    if len(several):
        attack, ds = several.index[0]
        raise ValueError(f"`table`'s rows of attack {attack!r} on {ds!r} hold several triggers, "
                         "poisoning settings or training subsets (e.g. a plain sweep of trigger "
                         "sizes, or one on the whole training set beside the atlas's): an atlas "
                         "names each setting as its own attack. Keep one setting per attack.")
    if not len(rows) and allow_empty:
        return rows.reset_index(drop=True)
    if not len(rows):
        raise ValueError(f"`table` must hold atlas rows (column `attack` set) of this version's row "
                         f"format; it holds none of its {len(table)} rows.")
    families, attacks = _display_order()
    fam = {f: i for i, f in enumerate(_ordered(rows["family"], families))}
    att = {a: i for i, a in enumerate(_ordered(rows["attack"], attacks))}
    rows = rows.assign(_f=rows["family"].map(fam), _a=rows["attack"].map(att))
    rows = rows.sort_values(["_f", "_a", "dataset", "rate", "seed"], kind="stable")
    return rows.drop(columns=["_f", "_a"]).reset_index(drop=True)


def strong_rate_rows(rows):
    """The rows of `atlas_frame(rows)` at each (attack, dataset)'s strong rate: the largest rate
    of that attack on that dataset in the table."""
    rows = atlas_frame(rows)
    strong = rows.groupby(["attack", "dataset"])["rate"].transform("max")
    return rows[rows["rate"] == strong].reset_index(drop=True)


def _family_colours(rows) -> dict:
    families, _ = _display_order()
    order = _ordered(rows["family"], families)
    ref = {f: i for i, f in enumerate(families)}
    out, extra = {}, len(families)
    for f in order:
        i = ref.get(f)
        if i is None:
            i, extra = extra, extra + 1
        out[f] = _FAMILY_COLOURS[i % len(_FAMILY_COLOURS)]
    return out


def _atlas_scatter(rows, x: str, x_title: str, title: str, log_x: bool = False) -> go.Figure:
    """Gap (with its 95% interval) against column `x`, one panel per dataset, one colour per
    family (legend once per family), filled markers at each attack's strong rate and open ones
    at its weaker rates; the hover names attack, dataset, rate and seed."""
    datasets = sorted(rows["dataset"].unique())
    colours = _family_colours(rows)
    strong = rows.groupby(["attack", "dataset"])["rate"].transform("max")
    rows = rows.assign(_strong=rows["rate"] == strong)
    fig = make_subplots(rows=1, cols=len(datasets), subplot_titles=datasets,
                        horizontal_spacing=0.08 if len(datasets) > 1 else 0.0)
    shown = set()
    for c, ds in enumerate(datasets, start=1):
        for fam, colour in colours.items():
            g = rows[(rows["dataset"] == ds) & (rows["family"] == fam)]
            if not len(g):
                continue
            fig.add_trace(go.Scatter(
                x=g[x], y=g["gap"], mode="markers", name=fam, legendgroup=fam,
                showlegend=fam not in shown,
                marker=dict(color=colour, size=9, line=dict(width=1.5, color=colour),
                            symbol=["circle" if s else "circle-open" for s in g["_strong"]]),
                error_y=dict(type="data", symmetric=False, array=g["gap_ci_high"] - g["gap"],
                             arrayminus=g["gap"] - g["gap_ci_low"], thickness=1, width=0,
                             color=_rgba(colour, 0.6)),
                customdata=np.stack([g["attack"], g["dataset"], [f"{100 * r:.4g}%" for r in g["rate"]],
                                     g["seed"], g["gap_ci_low"], g["gap_ci_high"]], axis=-1),
                hovertemplate="<b>%{customdata[0]}</b> · %{customdata[1]}<br>rate %{customdata[2]}, "
                              "seed %{customdata[3]}<br>" + x_title.split(" (")[0] + " %{x:.3g}<br>"
                              "gap %{y:+.3f} [%{customdata[4]:+.3f}, %{customdata[5]:+.3f}]"
                              f"<extra>{fam}</extra>"), row=1, col=c)
            shown.add(fam)
        fig.add_hline(y=0, line=dict(color="#888", dash="dot"), row=1, col=c)
    fig.update_xaxes(title_text=x_title, type="log" if log_x else None)
    fig.update_yaxes(title_text="smoothing gap (nats; > 0: triggered smoother)", col=1)
    fig.update_annotations(font_size=12)
    fig.update_layout(template=TEMPLATE, height=440, width=min(1200, 180 + 470 * len(datasets)),
                      title=dict(text=title, font_size=15),
                      margin=dict(l=60, r=20, t=60, b=60),
                      legend=dict(orientation="h", y=-0.22, font_size=11, itemwidth=30,
                                  title_text="family (filled: strong rate, open: weak)"))
    return fig


def atlas_gap_vs_asr(table) -> go.Figure:
    """The attack atlas: smoothing gap (95% interval as error bars) against the attack success
    rate, one panel per dataset, one colour per attack family (Okabe–Ito), filled markers at an
    attack's strong rate and open ones at its weak rate; the hover names attack, dataset, rate
    and seed. table: `read_table`'s DataFrame of atlas rows (`atlas_frame` picks them)."""
    rows = atlas_frame(table)
    return _atlas_scatter(rows, "attack_success_rate", "attack success rate",
                          "Which backdoors make the decision function smoother? Gap against ASR")


def atlas_gap_vs_norm(table, norm: str = "trigger_l2") -> go.Figure:
    """Smoothing gap (95% interval) against the trigger's size, the mean norm of x′ − x over the
    evaluated inputs (`norm`: "trigger_l2" or "trigger_linf"; log x axis), one colour per family,
    one panel per dataset: does the trigger's size explain the effect? Rows without a positive,
    finite norm cannot sit on a log axis: they are left out and counted in the title."""
    check_choice("norm", norm, tuple(NORMS))
    rows = atlas_frame(table)
    ok = np.isfinite(rows[norm].to_numpy(float)) & (rows[norm].to_numpy(float) > 0)
    if not ok.any():
        raise ValueError(f"`table` must hold rows with a positive `{norm}` to draw against it; "
                         f"none of its {len(rows)} atlas rows has one.")
    left = int((~ok).sum())
    what = "L2" if norm == "trigger_l2" else "L∞"
    title = f"Does the trigger's size explain it? Gap against the trigger's {what} norm"
    if left:
        title += f" ({left} row{'s' if left > 1 else ''} without a norm left out)"
    return _atlas_scatter(rows[ok].reset_index(drop=True), norm, NORMS[norm] + " (log)", title,
                          log_x=True)


def atlas_curves(table, dataset: str | None = None, cols: int = 5) -> go.Figure:
    """Small multiples, one panel per attack: the mean W_σ curve of clean inputs (blue) and of
    their triggered twins (vermillion) at the attack's strong rate (the largest of its rates in
    the table), averaged over seeds; one line style per dataset, or only `dataset`'s. The seeds
    averaged must share one σ grid (a ValueError names the attack otherwise)."""
    cols = check_int("cols", cols, low=1)
    rows = strong_rate_rows(table)
    if dataset is not None:
        check_choice("dataset", dataset, sorted(rows["dataset"].unique()))
        rows = rows[rows["dataset"] == dataset]
    _, reference = _display_order()
    attacks = _ordered(rows["attack"], reference)
    datasets = sorted(rows["dataset"].unique())
    cols = min(cols, len(attacks))
    nrows = -(-len(attacks) // cols)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=attacks, shared_yaxes=True,
                        horizontal_spacing=0.025, vertical_spacing=min(0.12, 0.35 / nrows))
    shown = set()
    for i, attack in enumerate(attacks):
        r, c = divmod(i, cols)
        for j, ds in enumerate(datasets):
            g = rows[(rows["attack"] == attack) & (rows["dataset"] == ds)]
            if not len(g):
                continue
            grids = {tuple(np.round(np.asarray(s, float), 12)) for s in g["sigmas"]}
            if len(grids) > 1:
                raise ValueError(f"`table`'s rows of {attack!r} on {ds!r} at rate {g['rate'].iloc[0]} "
                                 f"have {len(grids)} different σ grids; their curves cannot be "
                                 "averaged: keep the rows of one grid.")
            sig = np.asarray(g["sigmas"].iloc[0], float)
            for key, colour, what in (("clean_curve", CLEAN, "clean"),
                                      ("triggered_curve", TRIGGERED, "triggered")):
                curves = np.array([np.asarray(v, float) for v in g[key]])
                if curves.shape[1:] != sig.shape:
                    raise ValueError(f"`table`'s `{key}` of {attack!r} on {ds!r} must have one "
                                     f"value per σ ({len(sig)}); got {curves.shape[1:]}.")
                name = f"{what} · {ds}" if len(datasets) > 1 else what
                fig.add_trace(go.Scatter(
                    x=sig, y=curves.mean(0), mode="lines", name=name, legendgroup=name,
                    showlegend=name not in shown,
                    line=dict(color=colour, width=2, dash=_DATASET_DASH[j % len(_DATASET_DASH)]),
                    hovertemplate=f"{attack} · {ds}, rate {100 * g['rate'].iloc[0]:.4g}%, "
                                  f"{len(g)} seed{'s' if len(g) > 1 else ''}<br>{what}: σ %{{x:g}}, "
                                  "W %{y:.3f}<extra></extra>"), row=r + 1, col=c + 1)
                shown.add(name)
    fig.update_annotations(font_size=11)
    fig.update_xaxes(tickfont_size=9)
    fig.update_yaxes(tickfont_size=9, rangemode="tozero")
    fig.update_xaxes(title_text="σ", title_font_size=10, row=nrows)
    fig.update_yaxes(title_text="mean W<sub>σ</sub> (nats)", title_font_size=10, col=1)
    where = f" on {dataset}" if dataset is not None else ""
    fig.update_layout(template=TEMPLATE, width=min(1200, 140 + 215 * cols), height=120 + 200 * nrows,
                      title=dict(text=f"W<sub>σ</sub> around clean and triggered inputs, per attack"
                                      f"{where} (strong rate, mean over seeds)", font_size=15),
                      margin=dict(l=60, r=20, t=70, b=50),
                      legend=dict(orientation="h", y=-0.4 / nrows, font_size=11))
    return fig
