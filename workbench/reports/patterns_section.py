"""The artificial-patterns section of the paper report."""

from __future__ import annotations


import numpy as np

from .report import ci, pval
from .report import direction, runs_phrase, verdict_span


def pattern_findings(by_size: dict[int, list], dataset: str) -> list[dict]:
    """Claim 5 (universal patches on a clean model) and its controls (white and random patches)."""
    uni = [(s, m) for s, ms in sorted(by_size.items()) for m in ms if m.name == "universal patch"]
    measured = "; ".join(f"{s}×{s}: success {m.success_rate:.0%}, gap "
                         f"{ci(m.comparison.gap, m.comparison.gap_ci)}" for s, m in uni)
    smooth = [s for s, m in uni if m.comparison.gap_ci[0] > 0]
    if smooth:
        verdict = verdict_span("reproduces for the " + ", ".join(f"{s}×{s}" for s in smooth)
                           + " pattern" + ("s" if len(smooth) > 1 else ""),
                           "yes" if len(smooth) == len(uni) else "mixed")
    else:
        verdict = verdict_span("not reproduced: no universal patch is smoother", "no")
    ctrl = [m for ms in by_size.values() for m in ms if m.name != "universal patch"]
    lo = np.array([m.comparison.gap_ci[0] for m in ctrl])
    hi = np.array([m.comparison.gap_ci[1] for m in ctrl])
    counts, _, _ = direction(lo, hi)
    above, below = int((lo > 0).sum()), int((hi < 0).sum())
    v = (f"never smoother ({below} less smooth)" if not above else
         f"{above} of {len(ctrl)} smoother: not specific to crafted patterns")
    return [{"finding": f"Artificial patterns without poisoning (claim 5): universal patches on a "
                        f"clean model, {dataset}", "measured": measured, "verdict": verdict},
            {"finding": f"Controls: white and random patches of the same sizes, {dataset}",
             "measured": f"{runs_phrase(len(ctrl), 'pattern')}: {counts}",
             "verdict": verdict_span(v, "none" if not above else "mixed")}]


def pattern_size_rows(by_size: dict[int, list]) -> list[dict]:
    """`pattern_sizes`' measurements for people: one row per pattern, sorted by size."""
    return [{"size": f"{s}×{s}", "pattern": m.name, "success rate": f"{m.success_rate:.3f}",
             "smoothing gap, nats [95% CI]": ci(m.comparison.gap, m.comparison.gap_ci),
             "p": pval(m.comparison.p_value)}
            for s, ms in sorted(by_size.items()) for m in ms]
