"""Widget callbacks in plain pytest: setting a control's value changes the figures' data."""


import numpy as np
import pytest

import workbench as wb
from workbench import widgets as wbw


def test_trigger_designer_updates_preview(digits):
    d = wbw.TriggerDesigner(digits, n_preview=4)
    clean_row = np.array(d.figure.data[0].z)
    before = np.array(d.figure.data[4].z)
    d.size.value = 5
    after = np.array(d.figure.data[4].z)
    assert not np.array_equal(before, after) and d.trigger == wb.triggers.Patch(size=5)
    d.kind.value = "Blend"
    assert isinstance(d.trigger, wb.triggers.Blend) and d.size.layout.display == "none"
    # the clean row never changes; the triggered row shows the blend
    np.testing.assert_array_equal(np.array(d.figure.data[0].z), clean_row)
    assert not np.array_equal(np.array(d.figure.data[4].z), after)


def test_attack_panel_trains_and_shows_metrics(digits, digits_run):
    p = wbw.AttackPanel(digits)
    p.train_button.click()  # same configuration as digits_run: opens from the cache
    assert p.run is not None and p.run.config == digits_run.config
    assert "attack success rate" in p.result.value
    cm = np.array(p.confusion.data[0].z)
    assert cm.sum() == len(digits.y_test) and np.trace(cm) / cm.sum() == pytest.approx(
        digits_run.clean_accuracy)
    assert np.array(p.confusion.data[1].y)[0] > 0.9 * sum(p.confusion.data[1].y)


def test_attack_panel_switches_dataset(digits):
    p = wbw.AttackPanel(digits)
    p.dataset.value = "cifar10"  # not on disk here: a message, the panel keeps digits
    assert "download=True" in p.result.value and p.data.name == "digits"
    p.dataset.value = "digits"
    assert p.data is digits


def test_attack_panel_progress_on_fresh_training(digits):
    small = wb.load_dataset("digits", max_train=200)
    p = wbw.AttackPanel(small, epochs=2)
    p.rate.value = 0.1
    p.train()
    assert p.progress.value == 2 and p.run.config["epochs"] == 2


def test_smoothness_explorer_reacts_to_controls(digits, digits_run):
    ex = wbw.SmoothnessExplorer(digits_run, digits, n_inputs=6, n_samples=32)
    x_before = list(ex.curves.data[1].x)
    assert "smoothing gap" in ex.message.value
    ex.n_sigmas.value = 5
    assert len(ex.curves.data[1].x) == 5 and list(ex.curves.data[1].x) != x_before
    ex.mode.value = "soft"
    assert ex.comparison.clean.settings["mode"] == "soft"
    n_traces = len(ex.curves.data)
    ex.per_input.value = True
    assert len(ex.curves.data) == n_traces + 2 * 6
    # unchanged settings come from the memo, not a recomputation (its speed: benchmarks/widgets.py)
    shown = ex.comparison
    ex.per_input.value = False
    assert ex.comparison is shown and len(ex._cache) == 3


def test_landscape_explorer_reacts_to_controls(digits, digits_run):
    lx = wbw.LandscapeExplorer(digits_run, digits, resolution=9, n_samples=8)
    z0 = np.array(lx.plane.data[0].z)
    lx.index.value = 3
    assert not np.array_equal(np.array(lx.plane.data[0].z), z0)
    lx.colour.value = "entropy"
    assert lx.landscapes[0].entropy is not None
    lx.dir2.value = "trigger"  # same as direction 1: a message, no crash
    assert "different directions" in lx.message.value


def test_live_figure_replaces_itself_when_the_browser_stops_answering():
    """anywidget drops every message to a model whose JavaScript took over 2 s to load; the
    browser then never answers the edits. LiveFigure puts a fresh copy with the same data in its
    place (children and attribute), and leaves a figure alone whose edits were answered."""
    import ipywidgets as W
    import plotly.graph_objects as go
    from workbench.widgets import LiveFigure

    box = W.VBox()
    fig = LiveFigure(go.Figure(go.Scatter(x=[1, 2], y=[3, 4])), owner=box)
    box.fig = fig
    box.children = (W.HTML("x"), W.HBox([fig]))
    fig._js2py_traceDeltas = {"trace_deltas": [], "trace_edit_id": 0}  # a browser drew it
    with fig.batch_update():
        fig.data[0].y = [5, 6]
    sent = fig._last_trace_edit_id
    fig._js2py_traceDeltas = {"trace_deltas": [], "trace_edit_id": sent}  # answered: kept
    fig._check(sent)
    assert box.fig is fig and box.children[1].children[0] is fig
    with fig.batch_update():
        fig.data[0].y = [7, 8]
    fig._check(fig._last_trace_edit_id)  # not answered: swapped for a copy
    fresh = box.fig
    assert fresh is not fig and isinstance(fresh, LiveFigure) and fig.comm is None
    assert box.children[1].children[0] is fresh and fresh._owner is box and fresh._swaps == 1
    assert list(fresh.data[0].y) == [7, 8] and list(fresh.data[0].x) == [1, 2]
