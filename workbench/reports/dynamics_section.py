"""The training-dynamics section of the paper report."""

from __future__ import annotations


import numpy as np

from . import plots
from .report import ci, verdict_span


def first_epochs(dyn: list[dict]) -> tuple[int | None, int | None]:
    first_asr = next((r["epoch"] for r in dyn if r["attack_success_rate"] >= 0.9), None)
    first_gap = next((r["epoch"] for r in dyn if r["gap_ci"][0] > 0), None)
    return first_asr, first_gap


def dynamics_finding(dyn: list[dict], dataset: str) -> dict:
    a, g = first_epochs(dyn)
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
            "verdict": verdict_span(verdict, "none")}


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
    a, _ = first_epochs(dyn)
    if a is not None:  # the line, and its label above the plot (on the cells it would hide them)
        fig.add_vline(x=a - 0.5, line=dict(color="#222", dash="dash", width=1))
        fig.add_annotation(x=a - 0.5, y=1, yref="paper", yanchor="bottom", xanchor="left",
                           text=f" ASR ≥ 0.9 from epoch {a}", showarrow=False, font=dict(size=11))
    fig.update_layout(template=plots.TEMPLATE, height=400, margin=dict(t=80, r=20),
                      title="Where smoothing appears: the W<sub>σ</sub> gap by epoch and noise scale",
                      xaxis=dict(title="epoch", dtick=1 if len(ep) <= 15 else 5),
                      yaxis_title="noise scale σ")
    return fig
