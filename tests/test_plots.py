import re
import shutil
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest

import workbench as wb
from workbench import plots
from workbench.report import write_report


@pytest.fixture(scope="module")
def cmp(digits_run, digits):
    pairs = wb.triggered_pairs(digits.x_test, digits.y_test, digits_run.trigger, 0, n=12, seed=0)
    return pairs, wb.compare_smoothness(digits_run.model, pairs.clean, pairs.triggered,
                                        [0.1, 0.3, 0.5], 32)


def test_figures_have_titles_units_and_data(cmp, digits_run):
    pairs, c = cmp
    figs = [plots.smoothness_curves(c.clean, c.triggered, per_input=3), plots.summary_distribution(c),
            plots.training_curves(digits_run.history), plots.image_pairs(pairs.clean, pairs.triggered)]
    for fig in figs:
        assert isinstance(fig, go.Figure) and len(fig.data) > 0
    curves = figs[0]
    assert "σ" in curves.layout.xaxis.title.text and "nats" in curves.layout.yaxis.title.text
    means = [t for t in curves.data if t.mode == "lines+markers"]
    assert np.allclose(means[0].y, c.clean.entropy.mean(0)) and np.allclose(means[1].y, c.triggered.entropy.mean(0))
    assert means[0].line.color == plots.CLEAN and means[1].line.color == plots.TRIGGERED


def test_offline_html_report(tmp_path, cmp):
    _, c = cmp
    out = write_report(tmp_path / "r.html", "t", [("s", [plots.summary_distribution(c), "<p>x</p>"])],
                       metadata={"a": 1})
    html = out.read_text()
    assert not re.search(r"<script[^>]+src=[\"']?https?://", html)  # nothing loads from the web
    assert len(html) > 1_000_000 and "Plotly.newPlot" in html  # the bundle is inlined
    assert "&quot;a&quot;: 1" in html  # provenance, HTML-escaped
    assert out.stat().st_mode & 0o044  # readable by others


@pytest.mark.skipif(not (shutil.which("chromium") or Path("/usr/bin/chromium").exists()),
                    reason="PNG export needs Chromium (apt-get install chromium); .ci/run installs it")
def test_png_export_with_kaleido(tmp_path, cmp):
    _, c = cmp
    path = tmp_path / "curves.png"
    plots.save_png(plots.smoothness_curves(c.clean, c.triggered), path, scale=1)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_pattern_sizes_figure():
    rows = [{"size": s, "pattern": name, "kind": name.rstrip(" 0123456789"), "success rate": succ,
             "smoothing gap": gap, "gap_ci_low": gap - 0.05, "gap_ci_high": gap + 0.1}
            for s, name, succ, gap in [(4, "universal patch", 0.2, -0.08), (4, "white patch", 0.0, -0.1),
                                       (4, "random patch 1", 0.0, -0.06), (8, "universal patch", 1.0, 0.16),
                                       (8, "random patch 1", 0.09, -0.37)]]
    fig = plots.pattern_sizes(rows)
    assert [t.name for t in fig.data] == ["universal patch", "white patch", "random patch"]
    uni = fig.data[0]
    assert list(uni.x) == [0.2, 1.0] and list(uni.y) == [-0.08, 0.16] and list(uni.text) == ["4×4", "8×8"]
    assert np.allclose(uni.error_y.array, [0.1, 0.1]) and np.allclose(uni.error_y.arrayminus, [0.05, 0.05])
    assert uni.marker.color == plots.TRIGGERED and fig.data[2].mode == "markers"
    assert "nats" in fig.layout.yaxis.title.text
