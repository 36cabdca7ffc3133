"""Widget callbacks in plain pytest: setting a control's value changes the figures' data."""


import numpy as np
import pytest
import torch

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


def test_landscape_sigma_is_disabled_while_the_map_is_coloured_by_class(digits, digits_run):
    """σ for W only sets the local-W_σ colouring: by class, moving it would change nothing."""
    lx = wbw.LandscapeExplorer(digits_run, digits, resolution=5, n_samples=4)
    assert lx.colour.value == "class" and lx.sigma.disabled
    assert "local W_σ" in lx.sigma.tooltip
    lx.colour.value = "entropy"
    assert not lx.sigma.disabled and lx.landscapes[0].entropy is not None
    lx.sigma.value = 0.5  # live here: the map is recomputed at the new σ
    assert any(k[-1] == 0.5 for k in lx._cache if k[0] != "curve")
    lx.colour.value = "class"
    assert lx.sigma.disabled


def test_attack_panel_says_clean_label_needs_a_stronger_trigger(digits):
    """Where the poisoning mode is chosen: a clean-label patch trains no backdoor (issue 22)."""
    p = wbw.AttackPanel(digits)
    box = next(b for b in p.children[0].children if p.poisoning in b.children)
    assert box.children.index(p.mode_note) == box.children.index(p.poisoning) + 1  # beside it
    assert p.mode_note.layout.display == "none"  # dirty-label: nothing to say
    p.poisoning.value = "clean-label"
    assert p.mode_note.layout.display is None
    note = p.mode_note.value
    assert "Clean-label needs a stronger trigger" in note and "label-consistent" in note
    assert "ASR ≤ 0.005" in note
    p.poisoning.value = "label-consistent"
    assert p.mode_note.layout.display == "none"
    p.poisoning.value = "clean-label"
    d = wbw.TriggerDesigner(digits, n_preview=2)
    q = wbw.AttackPanel(digits, d)
    q.poisoning.value = "clean-label"
    assert q.mode_note.layout.display is None
    d.kind.value = "InputAware"  # refused in any mode but dirty-label: that message instead
    assert q.mode_note.layout.display == "none" and "dirty-label" in q.result.value


def test_trigger_designer_ftrojan_magnitude_starts_at_the_default_for_the_images(digits):
    """FTrojan's 30/255 is not learnt on 16x16 digits; the designer starts at the default
    for the image size (0.5 here) and says so (issue 22)."""
    d = wbw.TriggerDesigner(digits, n_preview=2)
    assert d.magnitude.value == 0.5
    d.kind.value = "FTrojan"
    assert d.trigger == wb.triggers.FTrojan(magnitude=0.5)
    assert d.trigger == wb.triggers.FTrojan().resolve(digits.image_shape)
    assert "default magnitude for 16×16 images: 0.5" in d.message.value
    assert "not learnt on 16×16 digits" in d.message.value and "may not" not in d.message.value
    d.magnitude.value = 0.12
    assert "Below it the backdoor may not be learnt" in d.message.value
    x = torch.zeros((20, 1, 28, 28))
    y = torch.arange(20) % 10
    big = wb.data.Dataset("stand-in", x, y, x[:4].clone(), y[:4].clone(),
                          tuple(str(i) for i in range(10)))
    d28 = wbw.TriggerDesigner(big, n_preview=2)
    assert d28.magnitude.value == pytest.approx(30 / 255)
    d28.kind.value = "FTrojan"
    assert "default magnitude for 28×28 images: 0.118" in d28.message.value
    assert "not learnt" not in d28.message.value


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


# --- the attack atlas in the widgets -------------------------------------------------------------

def _shown(d):
    return {n for n, w in d._controls.items() if w.layout.display != "none"}


def test_trigger_designer_offers_every_trigger_with_its_own_controls(digits):
    d = wbw.TriggerDesigner(digits, n_preview=3)
    assert set(d.kind.options) == set(wb.triggers.TRIGGERS) - {"PatternPatch"} | {"InputAware"}
    for kind in d.kind.options:
        d.kind.value = kind
        assert _shown(d) == set(wbw.TRIGGER_CONTROLS[kind]), kind
        if kind == "InputAware":  # learnt with the model: nothing before training
            assert d.trigger is None and "no preview before training" in d.message.value
        elif kind in wb.triggers.CRAFTED:
            assert d.trigger is None and "Craft" in d.message.value
        else:
            assert type(d.trigger).__name__ == kind and kind in d.message.value
    d.kind.value = "BPP"
    d.bits.value = 1
    assert d.trigger == wb.triggers.BPP(bits=1)
    assert np.array(d.figure.data[3].z).max() == 255  # one bit: black and white only
    assert set(np.unique(np.array(d.figure.data[3].z))) <= {0, 255}
    d.kind.value = "FTrojan"
    d.magnitude.value = 0.5
    d.block.value = 8
    assert d.trigger == wb.triggers.FTrojan(block_size=8, positions=((1, 1), (7, 7)), magnitude=0.5)
    d.kind.value = "AdaptiveBlend"
    d.pieces.value, d.conservatism.value, d.alpha.value = 9, 0.25, 0.3
    assert d.trigger == wb.triggers.AdaptiveBlend(alpha=0.3, pieces=9, conservatism=0.25)
    # settings no trigger accepts: the message in the panel, no trigger, and no training with it
    d.pieces.value, d.mask_rate.value = 4, 0.95
    assert d.trigger is None and "mask_rate" in d.message.value
    p = wbw.AttackPanel(digits, d)
    assert p.train() is None and "No trigger" in p.result.value
    d.seed.value = -1  # a bad seed, for a crafted trigger: refused before any work
    d.kind.value = "LowFrequency"
    assert d.craft() is None and "seed" in d.message.value and d.trigger is None


def test_trigger_designer_crafts_with_progress_and_caches(digits):
    """LowFrequency and TrojanNN are optimised on the cached clean model, with progress, the
    controls disabled meanwhile; each crafted trigger is kept by its settings, and crafting is
    deterministic by seed (the same trigger as workbench.crafting gives)."""
    from workbench.crafting import craft

    d = wbw.TriggerDesigner(digits, n_preview=3, clean_epochs=10)
    d.kind.value = "LowFrequency"
    d.lf_steps.value, d.epsilon.value, d.craft_target.value = 20, 0.3, 2
    seen = []
    d.craft_progress.observe(lambda c: seen.append((c["new"], d.kind.value and d.kind.disabled,
                                                    d.epsilon.disabled)), names="value")
    lf = d.craft()
    steps = [v for v, *_ in seen if v]
    assert steps and steps[-1] == 20 == d.craft_progress.max and all(a and b for _, a, b in seen)
    assert not d.kind.disabled and not d.craft_button.disabled and d.trigger is lf
    assert lf == craft("LowFrequency", digits, target=2, epsilon=0.3, steps=20, seed=0, epochs=10)
    assert not np.array_equal(np.array(d.figure.data[3].z), np.array(d.figure.data[0].z))
    seen.clear()
    d.epsilon.value = 0.2  # new settings: not crafted yet
    assert d.trigger is None
    d.epsilon.value = 0.3  # back: the kept trigger, at once
    assert d.trigger is lf and d.craft() is lf and not seen
    d.kind.value = "TrojanNN"
    d.tn_steps.value, d.size.value = 20, 4
    tj = d.craft()
    assert isinstance(tj, wb.triggers.TrojanNN) and d.trigger is tj
    assert tj == craft("TrojanNN", digits, size=4, steps=20, seed=0, epochs=10)
    d.kind.value = "Patch"
    assert d.trigger == wb.triggers.Patch(size=4)
    assert d.craft() is None and "not crafted" in d.message.value


def test_attack_panel_poisoning_and_target_modes(digits):
    p = wbw.AttackPanel(digits, wb.triggers.Patch(size=5), epochs=3)
    assert p.poisoning.options == wb.poison.POISONING_MODES
    assert p.target_mode.options == wb.poison.TARGET_MODES
    assert p.epsilon.layout.display == "none"
    p.poisoning.value = "label-consistent"
    assert p.epsilon.layout.display != "none" and p.settings()["epsilon"] == p.epsilon.value
    p.target_mode.value = "all-to-all"  # not with clean labels: said at once, refused on Train
    assert "dirty-label" in p.result.value and p.target.layout.display == "none"
    assert p.train() is None and "target_mode" in p.result.value
    p.rate.value = 0.5
    p.target_mode.value, p.poisoning.value = "all-to-one", "clean-label"
    assert p.train() is None and "at most" in p.result.value  # more than the target class holds
    # clean-label (test_poisoning_modes trains the same run)
    p.rate.value = 0.09
    run = p.train()
    assert run.poisoning == "clean-label" and run.target == 0
    assert "clean-label: of the target class, labels kept" in p.result.value
    assert (digits.y_train[run.poison_indices] == 0).all()
    assert np.array(p.confusion.data[1].y).sum() == int((digits.y_test != 0).sum())


def test_attack_panel_and_explorers_all_to_all(digits):
    """All-to-all: the ASR is the share of triggered inputs sent to their own label y + 1; the
    figure shows it per class; the explorers take pairs of every class."""
    p = wbw.AttackPanel(digits, wb.triggers.Patch(size=3), epochs=10)
    p.target_mode.value = "all-to-all"
    p.rate.value = 0.3  # test_poisoning_modes trains the same run
    run = p.train()
    assert run.target_mode == "all-to-all" and "all-to-all" in p.result.value
    per_class = np.array(p.confusion.data[1].y, dtype=float)
    assert len(per_class) == 10 and "→" in p.confusion.data[1].x[0]
    counts = np.bincount(digits.y_test.numpy(), minlength=10)
    assert (per_class * counts).sum() / counts.sum() == pytest.approx(run.attack_success_rate)
    ex = wbw.SmoothnessExplorer(run, digits, n_inputs=6, n_samples=16)
    assert "every class" in ex.message.value and ex.comparison.n_pairs == 6
    lx = wbw.LandscapeExplorer(run, digits, resolution=5, n_samples=4)
    j = lx.index.value
    want = digits.classes[(int(lx.pairs.labels[j]) + 1) % 10]
    assert f"the attack's label: {want}" in lx.message.value
    assert (lx.pairs.targets == (lx.pairs.labels + 1) % 10).all()
    assert 0 in lx.pairs.labels.tolist()  # every class is attacked, the old target 0 as well
    # back to all-to-one: the figure returns to predictions on triggered inputs
    p.target_mode.value = "all-to-one"
    p.rate.value = 0.05
    p.epochs.value = 0
    p.train()
    assert list(p.confusion.data[1].x) == list(digits.classes)


# --- InputAware (Nguyen & Tran 2020): learnt with the model, trained by the panel ----------------

# test_input_aware.py's shared run (`SMALL`): through the run cache, trained once per session
IA_SMALL = dict(rate=0.3, cross_rate=0.3, target=0, epochs=16, mask_epochs=4, seed=0)


def _ia_panel(data, epochs, rate, cross_rate, mask_epochs, seed=0):
    d = wbw.TriggerDesigner(data, n_preview=3)
    d.kind.value = "InputAware"
    d.cross_rate.value, d.mask_epochs.value, d.seed.value = cross_rate, mask_epochs, seed
    p = wbw.AttackPanel(data, d, epochs=epochs)
    p.rate.value = rate
    return d, p


def test_input_aware_in_the_designer_the_panel_and_the_explorers(digits):
    from workbench.input_aware import InputAwareRun, is_input_aware_cached

    d, p = _ia_panel(digits, IA_SMALL["epochs"], IA_SMALL["rate"], IA_SMALL["cross_rate"],
                     IA_SMALL["mask_epochs"])
    # its own controls, an explanation, and no preview: the triggered row shows the clean images
    assert _shown(d) == {"cross_rate", "gen_width", "mask_epochs", "mask_density", "seed", "ia_note"}
    assert "learnt together with the model" in d.ia_note.value and d.trigger is None
    for i in range(3):
        np.testing.assert_array_equal(np.array(d.figure.data[3 + i].z), np.array(d.figure.data[i].z))
    # the panel trains train_input_aware with the designer's settings (the library's defaults
    # for the rest: mask area 25 pixels' worth on 16x16 digits, generator width 8)
    assert p.settings() == dict(IA_SMALL, model="small-cnn", width=8, mask_density=25 / 256)
    assert d.craft() is None and "press Train in the Attack panel" in d.message.value
    # modes InputAware does not have: said at once, and Train refuses before any work
    p.target_mode.value = "all-to-all"
    assert "dirty-label, all-to-one only" in p.result.value and "target mode all-to-all" in p.result.value
    d.seed.value = 7  # an untrained configuration: a refusal must leave it untrained
    assert p.train() is None and p.run is None and "all-to-one only" in p.result.value
    p.target_mode.value, p.poisoning.value = "all-to-one", "label-consistent"
    assert p.train() is None and "poisoning label-consistent" in p.result.value
    p.poisoning.value = "dirty-label"
    assert "Set the attack" in p.result.value  # the problem is gone, so is its message
    d.cross_rate.value = 0.8  # rate 0.3 + 0.8 > 1: train_input_aware's own check, before work
    assert p.train() is None and "cross_rate" in p.result.value
    assert not is_input_aware_cached(digits, **dict(p.settings(), cross_rate=0.3))
    d.cross_rate.value, d.seed.value = IA_SMALL["cross_rate"], 0
    run = p.train()
    assert isinstance(run, InputAwareRun) and p.run is run and run.input_aware is run.trigger
    assert {k: run.config[k] for k in IA_SMALL} == IA_SMALL
    assert "cross accuracy" in p.result.value and p.progress.value == IA_SMALL["epochs"]
    assert np.trace(np.array(p.confusion.data[0].z)) / len(digits.y_test) == pytest.approx(
        run.clean_accuracy)
    # the designer now shows the trained trigger on its images (each image its own trigger)
    assert d.trigger is run.trigger and "trained with the model" in d.message.value
    shown = np.array([np.array(d.figure.data[3 + i].z) for i in range(3)])
    want = wb.plots.to_rgb_uint8(run.trigger(digits.x_test[:3])[0])
    np.testing.assert_array_equal(shown[0], want)
    assert not np.array_equal(shown, np.array([np.array(d.figure.data[i].z) for i in range(3)]))
    d.gen_width.value = 16  # other settings: not trained; back: the kept trigger at once
    assert d.trigger is None
    d.gen_width.value = 8
    assert d.trigger is run.trigger
    # the explorers take the run's per-image triggered pairs and redraw on their controls
    ex = wbw.SmoothnessExplorer(run, digits, n_inputs=6, n_samples=16)
    assert "smoothing gap" in ex.message.value and ex.comparison.n_pairs == 6
    pairs = run.triggered_pairs(digits.x_test, digits.y_test, n=6, seed=0)
    assert torch.equal(pairs.triggered, run.trigger(pairs.clean))
    x_before = list(ex.curves.data[1].x)
    ex.n_sigmas.value = 4
    assert len(ex.curves.data[1].x) == 4 and list(ex.curves.data[1].x) != x_before
    lx = wbw.LandscapeExplorer(run, digits, resolution=5, n_samples=4)
    assert torch.equal(lx.pairs.triggered, run.trigger(lx.pairs.clean))
    z0 = np.array(lx.plane.data[0].z)
    lx.index.value = 2  # the trigger direction of another image: its own trigger
    assert not np.array_equal(np.array(lx.plane.data[0].z), z0)
    assert "the attack's label: 0" in lx.message.value


def test_input_aware_panel_trains_fresh_with_progress_then_opens_from_the_cache(
        digits, tmp_path, monkeypatch):
    """Not cached: trained with the panel's own epoch bar following it; the same settings
    again open from the run cache (the same trigger)."""
    from workbench.input_aware import is_input_aware_cached

    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path))  # an empty cache: a fresh training
    small = wb.load_dataset("digits", max_train=200)
    d, p = _ia_panel(small, epochs=2, rate=0.2, cross_rate=0.2, mask_epochs=1)
    d.gen_width.value = 4
    assert not is_input_aware_cached(small, **p.settings())
    seen, bar = [], []
    p.result.observe(lambda c: seen.append(c["new"]), names="value")
    p.progress.observe(lambda c: bar.append((c["new"], p.train_button.disabled)), names="value")
    run = p.train()
    assert any("training InputAware" in str(v) for v in seen)
    # the panel's own epoch bar follows the joint epochs (train_input_aware's callbacks), with
    # each epoch's figures, while Train is disabled
    assert (1, True) in bar and (2, True) in bar
    assert any("InputAware, epoch 1: clean accuracy" in str(v) and "cross accuracy" in str(v)
               for v in seen)
    assert p.progress.layout.display is None and not p.train_button.disabled
    assert run.config["epochs"] == 2 and run.config["width"] == 4 and p.progress.value == 2
    assert is_input_aware_cached(small, **p.settings()) and d.trigger is run.trigger
    seen.clear()
    again = p.train()
    assert again.trigger.weights_sha256 == run.trigger.weights_sha256
    assert not any("training InputAware" in str(v) for v in seen)
