"""ipywidgets panels that connect controls to library calls and plotly FigureWidgets.

Each panel is an `ipywidgets.VBox`: display it as the last expression of a cell. Sliders apply on
release (`continuous_update=False`), figures update in place inside `batch_update()`, results are
memoised by their settings (work starts only when inputs change), and long work shows progress.

    TriggerDesigner(data)            -> .trigger
    AttackPanel(data, trigger)       -> .run   (Train button; cached runs open at once)
    SmoothnessExplorer(run, data)    -> .comparison (.clean)
    LandscapeExplorer(run, data)     -> .landscapes

The explorers take a run trained here or a model trained elsewhere (`workbench.open_model`'s
`OpenedRun`, with `run.data` as its data). An opened run without a trigger is shown in a
clean-only mode (`clean_only`): the W_σ curves of clean test inputs and landscapes along random
and gradient directions, with a note saying why the paired views are disabled. AttackPanel
trains here only: it refuses an opened run, its test-only data and its trigger.

InputAware (Nguyen & Tran, NeurIPS 2020) is chosen in the TriggerDesigner like any trigger, but
its trigger is learnt together with the model: the designer holds its generator settings, the
AttackPanel's Train trains it (`workbench.input_aware.train_input_aware`, through the run cache)
and the designer then shows the trained trigger on its preview images; the explorers take the
InputAwareRun like any run (its triggered pairs carry each image's own trigger).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import math

import numpy as np
import plotly.graph_objects as go
import ipywidgets as W
import traitlets

from ..training import crafting
from ..reports import plots
from ..base._validate import check_choice, check_int, check_seed, check_sigmas
from ..base.data import DATASETS, Dataset, load_dataset
from ..studies.experiments import default_sigmas
from ..estimator.landscape import DIRECTIONS, landscape_2d
from ..base.models import MODELS
from ..attacks.poison import DEFAULT_EPSILON, POISONING_MODES, TARGET_MODES
from ..estimator.comparison import compare_smoothness
from ..estimator.smoothness import estimate_smoothness
from ..estimator.stats import t_interval
from ..training.input_aware import (ATTACK_DEFAULTS as IA_DEFAULTS, InputAwareRun, is_input_aware_cached,
                                    train_input_aware)
from ..training.opened import NO_TRIGGER, OpenedRun
from ..training.train import BackdoorRun, is_cached, predict, train_backdoor
from ..attacks.triggers import (CORNERS, CRAFTED, FTROJAN_PAPER_MAGNITUDE, FTROJAN_SMALL_SIDE, TRIGGERS,
                                FunctionTrigger, PairedTrigger, Trigger, ftrojan_default_magnitude,
                                trigger_from_config)

SAMPLE_CHOICES = (16, 32, 64, 128, 256, 512)  # SmoothnessExplorer's samples per input and σ
_SLIDER = dict(continuous_update=False, style={"description_width": "initial"})


class LiveFigure(go.FigureWidget):
    """A plotly FigureWidget that replaces itself when its browser side stops taking updates.

    anywidget (which runs plotly's FigureWidget in the browser) waits at most 2 s for a widget's
    JavaScript to load; past that, the model's `ready` promise is rejected and every later message
    to it is dropped, while the figure it has already drawn stays on the page. Loading plotly's
    5 MB module for the six figures of a page takes longer than that on a busy 2-core machine, so
    the kernel would hold the new figure and the page show the old one, with no error anywhere
    (found by the classroom browser test: the σ slider moved, the curves did not).

    A browser view answers every edit with the edit's number. After an update, the kernel checks
    (when idle, `ACK_SECONDS` later) that the answer came; where it did not, a fresh copy of the
    figure, with all its data, takes this one's place in `owner` (the panel holding it), at most
    `MAX_SWAPS` times. Nothing is checked before a browser has drawn the figure once (no browser,
    as in a headless notebook run: nothing to check)."""

    ACK_SECONDS = 4.0
    MAX_SWAPS = 3

    def __init__(self, *args, owner: W.Widget | None = None, swaps: int = 0, **kw):
        super().__init__(*args, **kw)
        self._owner, self._swaps, self._acked, self._drawn = owner, swaps, 0, False

    @traitlets.observe("_js2py_traceDeltas")
    def _note_ack(self, change):
        msg = change["new"]
        if msg and "trace_edit_id" in msg:
            self._drawn = True
            self._acked = max(self._acked, msg["trace_edit_id"])

    @contextlib.contextmanager
    def batch_update(self):
        """plotly's batch_update, then a check that the browser took the batch (see `watch`)."""
        with super().batch_update():
            yield
        self.watch()

    def watch(self) -> None:
        """Check, once the kernel is idle, that the browser took the edits sent so far."""
        if not self._drawn or self._owner is None or self._swaps >= self.MAX_SWAPS:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not inside a kernel's event loop
            return
        loop.call_later(self.ACK_SECONDS, self._check, self._last_trace_edit_id)

    def _check(self, sent: int) -> None:
        if self._acked >= sent or self._last_trace_edit_id != sent or self.comm is None:
            return  # taken, or a later edit has its own check, or closed
        fresh = LiveFigure(self, owner=self._owner, swaps=self._swaps + 1)
        fresh._drawn = True  # a page is open: watch the copy as well
        for w in descendants(self._owner):
            if self in getattr(w, "children", ()):
                w.children = tuple(fresh if c is self else c for c in w.children)
        for name, value in list(vars(self._owner).items()):
            if value is self:
                setattr(self._owner, name, fresh)
        self.close()


def descendants(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from descendants(child)


def _replace(target: go.FigureWidget, new: go.Figure, **grid) -> None:
    """Swap a FigureWidget's traces and layout for a new figure's, in one message."""
    with target.batch_update():
        target.data = []
        target.add_traces(list(new.data), **grid)
        target.layout = new.layout


def _status(text: str = "") -> W.HTML:
    return W.HTML(value=text, layout=W.Layout(min_height="1.6em"))


def _show(wdg: W.Widget, on: bool) -> None:
    wdg.layout.display = None if on else "none"


def _error(text) -> str:
    return f"<span style='color:#D55E00'>{html.escape(str(text))}</span>"


def _layout():
    return W.Layout(width="21em")


def _check_run(run) -> bool:
    """An explorer's `run`: trained here or opened (`open_model`). True for an opened run without
    a trigger (the explorers' clean-only mode)."""
    if not isinstance(run, (BackdoorRun, OpenedRun)):
        raise TypeError(f"`run` must be a BackdoorRun (train_backdoor, AttackPanel.run) or an "
                        f"OpenedRun (workbench.open_model); got {type(run).__name__}.")
    return isinstance(run, OpenedRun) and not run.has_trigger


def _clean_only_note(what: str) -> W.HTML:
    """Why an explorer shows clean inputs only: the opened run's NO_TRIGGER message."""
    note = W.HTML(f"<div style='color:#555;max-width:60em'><b>{html.escape(what)}</b> "
                  f"{html.escape(NO_TRIGGER)}</div>")
    note.add_class("workbench-clean-only-note")
    return note


OPENED_RUN_NOTE = ("AttackPanel trains models here (poisoning a training split, through the run "
                   "cache); a model opened with workbench.open_model was trained elsewhere and "
                   "has no training split. Explore it with SmoothnessExplorer(run, run.data) and "
                   "LandscapeExplorer(run, run.data), or train one here with "
                   "AttackPanel(load_dataset(name), trigger).")


# TriggerDesigner: which controls each trigger has (attribute names, in display order)
TRIGGER_CONTROLS = {
    "Patch": ("size", "position", "value"),
    "Checkerboard": ("size", "position", "value"),
    "Pixel": ("position", "value"),
    "Blend": ("alpha", "seed"),
    "Sinusoid": ("delta", "frequency"),
    "Warp": ("strength", "grid", "seed"),
    "BPP": ("bits", "dither"),
    "FTrojan": ("block", "magnitude"),
    "AdaptiveBlend": ("alpha", "test_alpha", "pieces", "mask_rate", "conservatism", "seed"),
    "LowFrequency": ("craft_target", "epsilon", "lf_steps", "seed", "craft_button",
                     "craft_progress"),
    "TrojanNN": ("size", "position", "neurons", "tn_steps", "seed", "craft_button",
                 "craft_progress"),
    "InputAware": ("cross_rate", "gen_width", "mask_epochs", "mask_density", "seed", "ia_note"),
}
INPUT_AWARE = "InputAware"  # learnt with the model: trained by AttackPanel, not made here
# what InputAware allows of AttackPanel's modes (train_input_aware poisons dirty-label, one target)
INPUT_AWARE_MODES = {"poisoning": "dirty-label", "target_mode": "all-to-one"}


class TriggerDesigner(W.VBox):
    """Choose a trigger and see it on clean images; `.trigger` is the current trigger object
    (None while the chosen settings give no trigger: an error shown in the panel, or a crafted
    trigger not crafted yet, or InputAware not trained yet).

    Every trigger of `workbench.triggers` (but PatternPatch, which takes a user's array) has its
    own controls, and only the chosen trigger's are shown (`TRIGGER_CONTROLS`). The crafted
    triggers (LowFrequency, Zeng et al. 2021; TrojanNN, Liu et al. 2018) are optimised on the
    workbench's cached clean model for the data (`workbench.crafting`, the model trained with the
    crafting seed): press **Craft** (or call `craft()`); the clean model's training and the
    optimisation show their progress, the controls are disabled meanwhile, and each crafted
    trigger is kept by its settings, so going back to settings crafted before is instant (and
    crafting again gives the same trigger: it is deterministic by seed).

    InputAware (Nguyen & Tran, NeurIPS 2020) is a trigger learnt together with the model (a
    generator makes each image's own trigger), so it has no preview before training: its controls
    are the generators' settings (`input_aware_settings()`: cross rate, generator width, mask
    generator epochs and mask area, seed), an AttackPanel built on this designer trains it, and
    the trained trigger is then shown on the preview images (and kept by its settings, as the
    crafted ones)."""

    def __init__(self, data: Dataset | None = None, n_preview: int = 6,
                 clean_epochs: int | None = None):
        """clean_epochs: the epochs of the clean model crafted triggers are optimised on (None:
        the dataset's default, as `workbench.crafting`)."""
        n_preview = check_int("n_preview", n_preview, low=1)
        if clean_epochs is not None:
            clean_epochs = check_int("clean_epochs", clean_epochs, 1, 10_000)
        self.clean_epochs = clean_epochs
        self.data = data or load_dataset("digits")
        c, h, w = self.data.image_shape
        g = math.gcd(h, w)
        blocks = [b for b in (2, 4, 7, 8, 14, 16) if g % b == 0] or [1]
        self.kind = W.Dropdown(options=[k for k in TRIGGERS if k != "PatternPatch"] + [INPUT_AWARE],
                               value="Patch", description="trigger")
        self.size = W.IntSlider(value=3, min=1, max=max(2, min(h, w) // 2), description="size", **_SLIDER, layout=_layout())
        self.position = W.Dropdown(options=list(CORNERS), value="bottom-right",
                                   description="position", layout=_layout())
        self.value = W.FloatSlider(value=1.0, min=0.0, max=1.0, step=0.05, description="value", **_SLIDER, layout=_layout())
        self.alpha = W.FloatSlider(value=0.15, min=0.01, max=1.0, step=0.01, description="alpha", **_SLIDER, layout=_layout())
        self.delta = W.FloatSlider(value=0.08, min=0.01, max=0.5, step=0.01, description="delta", **_SLIDER, layout=_layout())
        self.frequency = W.FloatSlider(value=6.0, min=0.5, max=16.0, step=0.5,
                                       description="frequency", **_SLIDER, layout=_layout())
        self.strength = W.FloatSlider(value=0.5, min=0.05, max=5.0, step=0.05,
                                      description="strength", **_SLIDER, layout=_layout())
        self.grid = W.IntSlider(value=4, min=2, max=max(3, min(h, w) // 2), description="grid", **_SLIDER, layout=_layout())
        self.seed = W.IntText(value=0, description="seed", layout=W.Layout(width="12em"))
        self.bits = W.IntSlider(value=3, min=1, max=8, description="bits per channel", **_SLIDER, layout=_layout())
        self.dither = W.Checkbox(value=True, description="Floyd–Steinberg dithering")
        self.block = W.Dropdown(options=blocks, value=4 if 4 in blocks else blocks[0],
                                description="DCT block", layout=_layout())
        # FTrojan's default for this image size (the paper's 30/255 is not learnt on 16x16 digits)
        self.magnitude = W.FloatSlider(value=ftrojan_default_magnitude(h, w), min=0.01, max=1.0,
                                       step=0.01,
                                       description="magnitude", readout_format=".3f", **_SLIDER, layout=_layout())
        self.test_alpha = W.FloatSlider(value=0.2, min=0.01, max=1.0, step=0.01,
                                        description="test alpha", **_SLIDER, layout=_layout())
        self.pieces = W.Dropdown(options=[1, 4, 9, 16, 25, 36], value=16, description="pieces",
                                 layout=_layout())
        self.mask_rate = W.FloatSlider(value=0.5, min=0.0, max=0.95, step=0.05,
                                       description="masked share", **_SLIDER, layout=_layout())
        self.conservatism = W.FloatSlider(value=0.5, min=0.0, max=0.95, step=0.05,
                                          description="conservatism", **_SLIDER, layout=_layout())
        self.craft_target = W.Dropdown(options=[(f"{i}: {n}", i) for i, n in
                                                enumerate(self.data.classes)],
                                       value=0, description="towards class", layout=_layout())
        self.epsilon = W.FloatSlider(value=0.2, min=0.01, max=1.0, step=0.01,
                                     description="epsilon (L∞)", **_SLIDER, layout=_layout())
        self.lf_steps = W.IntSlider(value=200, min=10, max=2000, step=10, description="steps", **_SLIDER, layout=_layout())
        self.tn_steps = W.IntSlider(value=1000, min=10, max=5000, step=10, description="steps", **_SLIDER, layout=_layout())
        self.neurons = W.IntSlider(value=2, min=1, max=16, description="neurons", **_SLIDER, layout=_layout())
        self.craft_button = W.Button(description="Craft", icon="cogs", button_style="primary",
                                     tooltip="optimise the trigger on the cached clean model")
        self.craft_progress = W.IntProgress(value=0, min=0, max=1, description="crafting")
        self.craft_button.on_click(lambda _b: self.craft())
        # InputAware: the generators' settings (train_input_aware); joint epochs are the panel's
        self.cross_rate = W.FloatSlider(value=IA_DEFAULTS["cross_rate"], min=0.0, max=0.8, step=0.05,
                                        description="cross rate", **_SLIDER, layout=_layout())
        self.gen_width = W.Dropdown(options=[4, 8, 16, 32], value=IA_DEFAULTS["width"],
                                    description="generator width", layout=_layout(),
                                    style={"description_width": "initial"})
        self.mask_epochs = W.IntSlider(value=IA_DEFAULTS["mask_epochs"], min=1, max=50,
                                       description="mask epochs", **_SLIDER, layout=_layout())
        # the library's default area: 0.032 (the paper's), or 25 pixels' worth on smaller images
        self.mask_density = W.FloatSlider(value=max(0.032, 25 / (h * w)), min=0.005, max=0.5,
                                          step=0.001, readout_format=".3f",
                                          description="mask area", **_SLIDER, layout=_layout())
        self.ia_note = W.HTML(
            "<small>Input-Aware (Nguyen &amp; Tran, NeurIPS 2020): a generator makes each image's "
            "own trigger and is <b>learnt together with the model</b>, so there is nothing to "
            "preview before training. Press <b>Train</b> in the Attack panel (dirty-label, "
            "all-to-one; its rate is the backdoor share, its epochs the joint epochs); the trained "
            "trigger is then shown here. Cross rate: images stamped with another image's trigger "
            "and kept at their label; mask area: the share of pixels a trigger may cover "
            "freely; seed: the training's (generators, classifier, sample draws).</small>", layout=W.Layout(width="100%"))
        self.message = _status()
        self._preview_x = self.data.x_test[:n_preview]
        self._crafted: dict = {}
        self._trained: dict = {}  # InputAware: generator settings -> the run trained with them
        self._crafting = False
        self.trigger = trigger_from_config({"type": "Patch", "size": 3})
        self.figure = LiveFigure(plots.image_pairs(self._preview_x, self.trigger(self._preview_x),
                                                   n=n_preview), owner=self)
        names = list(dict.fromkeys(n for ctl in TRIGGER_CONTROLS.values() for n in ctl))
        self._controls = {n: getattr(self, n) for n in names}
        for n, wdg in self._controls.items():
            if n not in ("craft_button", "craft_progress", "ia_note"):
                wdg.observe(self._changed, names="value")
        self.kind.observe(self._changed, names="value")
        box = W.Box(list(self._controls.values()),
                    layout=W.Layout(display="flex", flex_flow="row wrap", align_items="center"))
        super().__init__([self.kind, box, self.figure, self.message])
        self.add_class("workbench-panel")  # a handle for styling and browser tests
        self._sync_visibility()
        self.message.value = f"<code>{html.escape(repr(self.trigger))}</code>"

    def _config(self) -> dict:
        """The chosen (not crafted) trigger's configuration, from the controls."""
        k = self.kind.value
        if k in ("Patch", "Checkerboard"):
            return {"type": k, "size": self.size.value, "position": self.position.value,
                    "value": self.value.value}
        if k == "Pixel":
            return {"type": k, "position": self.position.value, "value": self.value.value}
        if k == "Blend":
            return {"type": k, "alpha": self.alpha.value, "seed": self.seed.value}
        if k == "Sinusoid":
            return {"type": k, "delta": self.delta.value, "frequency": self.frequency.value}
        if k == "Warp":
            return {"type": k, "strength": self.strength.value, "grid": self.grid.value,
                    "seed": self.seed.value}
        if k == "BPP":
            return {"type": k, "bits": self.bits.value, "dither": self.dither.value}
        if k == "FTrojan":
            b = self.block.value
            pos = [(1, 1), (b - 1, b - 1)] if b > 2 else [(b - 1, b - 1)]
            return {"type": k, "block_size": b, "positions": pos, "magnitude": self.magnitude.value}
        if k == "AdaptiveBlend":
            return {"type": k, "alpha": self.alpha.value, "test_alpha": self.test_alpha.value,
                    "pieces": self.pieces.value, "mask_rate": self.mask_rate.value,
                    "conservatism": self.conservatism.value, "seed": self.seed.value}
        if k == INPUT_AWARE:
            raise ValueError(f"{k} is learnt with the model: press Train in the Attack panel")
        raise ValueError(f"{k} is crafted on a clean model: press Craft")

    def input_aware_settings(self) -> dict:
        """The generator settings of InputAware, keyword arguments of
        `workbench.input_aware.train_input_aware` (the AttackPanel adds rate, target, model and
        epochs)."""
        return {"cross_rate": self.cross_rate.value, "width": self.gen_width.value,
                "mask_epochs": self.mask_epochs.value, "mask_density": self.mask_density.value,
                "seed": self.seed.value}

    def _ia_key(self) -> tuple:
        return tuple(sorted(self.input_aware_settings().items()))

    def show_trained(self, run: InputAwareRun) -> None:
        """Show an InputAware run's trained trigger on the preview images and keep it as the
        trigger of its generator settings (AttackPanel calls this after training). A run whose
        settings are not the designer's current ones is kept for them, not shown."""
        if not isinstance(run, InputAwareRun):
            raise TypeError(f"`run` must be an InputAwareRun (from train_input_aware); got "
                            f"{type(run).__name__}.")
        key = tuple(sorted((k, run.config[k]) for k in self.input_aware_settings()))
        self._trained[key] = run
        if self.kind.value == INPUT_AWARE and not self._crafting:
            self._changed()

    def craft_settings(self) -> dict:
        """The keyword arguments of `workbench.crafting.craft` for the chosen crafted trigger."""
        k = self.kind.value
        if k == "LowFrequency":
            return {"target": self.craft_target.value, "epsilon": self.epsilon.value,
                    "steps": self.lf_steps.value, "seed": self.seed.value}
        if k == "TrojanNN":
            return {"size": self.size.value, "position": self.position.value,
                    "neurons": self.neurons.value, "steps": self.tn_steps.value,
                    "seed": self.seed.value}
        raise ValueError(f"`kind` must be a crafted trigger ({', '.join(CRAFTED)}) to craft; "
                         f"got {k!r}.")

    def _craft_key(self):
        return (self.kind.value, *sorted(self.craft_settings().items()))

    def _sync_visibility(self):
        shown = TRIGGER_CONTROLS[self.kind.value]
        for n, wdg in self._controls.items():
            _show(wdg, n in shown)

    def _preview(self, triggered) -> None:
        n = len(self._preview_x)
        with self.figure.batch_update():
            for i in range(n):
                self.figure.data[n + i].z = plots.to_rgb_uint8(triggered[i])

    def _use(self, trig) -> None:
        try:
            triggered = trig(self._preview_x)
        except (ValueError, TypeError) as exc:  # e.g. a trigger that does not fit the image
            self.trigger = None
            self.message.value = _error(exc)
            return
        self.trigger = trig
        self.message.value = f"<code>{html.escape(repr(trig))}</code>"
        self._preview(triggered)

    def _changed(self, _change=None):
        if self._crafting:
            return
        self._sync_visibility()
        k = self.kind.value
        if k == INPUT_AWARE:
            self._show_input_aware()
            return
        if k in CRAFTED:
            try:
                key = self._craft_key()
            except (ValueError, TypeError) as exc:
                self.trigger, self.message.value = None, _error(exc)
                return
            if key in self._crafted:
                self._use(self._crafted[key])
                return
            self.trigger = None
            self._preview(self._preview_x)  # nothing stamped until it is crafted
            self.message.value = (f"{k} is optimised on the workbench's clean model for "
                                  f"{self.data.name}: press <b>Craft</b>.")
            return
        try:
            trig = trigger_from_config(self._config())
        except (ValueError, TypeError) as exc:
            self.trigger, self.message.value = None, _error(exc)
            return
        self._use(trig)
        if k == "FTrojan" and self.trigger is not None:
            self.message.value += "<br>" + self._ftrojan_note()

    def _ftrojan_note(self) -> str:
        """What FTrojan's magnitude needs on these images (its default depends on their size)."""
        _, h, w = self.data.image_shape
        m = ftrojan_default_magnitude(h, w)
        text = f"FTrojan's default magnitude for {h}×{w} images: {m:.3g}"
        if min(h, w) < FTROJAN_SMALL_SIDE:
            text += (f" (the paper's 30/255 = {FTROJAN_PAPER_MAGNITUDE:.3f}, for larger images, "
                     "is not learnt on 16×16 digits up to a 20% poisoning rate)")
        if self.magnitude.value < m - 1e-9:
            text += ". Below it the backdoor may not be learnt: raise the magnitude or the rate"
        return f"<small>{text}.</small>"

    def _show_input_aware(self) -> None:
        run = self._trained.get(self._ia_key())
        if run is None:
            self.trigger = None
            self._preview(self._preview_x)  # nothing to stamp before training
            self.message.value = (f"{INPUT_AWARE}'s trigger is learnt together with the model: "
                                  "no preview before training. Press <b>Train</b> in the Attack "
                                  "panel; the trained trigger is then shown here.")
            return
        c = run.config
        if list(c["image_shape"]) != list(self.data.image_shape):
            self.trigger = None
            self._preview(self._preview_x)
            self.message.value = _error(
                f"The last InputAware run with these settings was trained on {c['dataset']} "
                f"(images {tuple(c['image_shape'])}); this designer previews {self.data.name} "
                f"(images {self.data.image_shape}): no preview. Use run.trigger directly.")
            return
        self._use(run.trigger)
        if self.trigger is not None:
            self.message.value = (f"<code>{html.escape(repr(run.trigger))}</code><br>trained with "
                                  f"the model ({c['dataset']}, rate {c['rate']}, target "
                                  f"{c['target']}, {c['epochs']} epochs): each image gets its own "
                                  f"trigger (ASR {run.attack_success_rate:.3f}, cross accuracy "
                                  f"{run.cross_accuracy:.3f}).")

    def craft(self):
        """Craft the chosen LowFrequency or TrojanNN trigger on the cached clean model (trained
        first if needed), with progress; returns the trigger (None, with a message, on bad
        settings). Settings crafted before give their trigger at once."""
        k = self.kind.value
        if k not in CRAFTED:
            how = (" It is learnt with the model: press Train in the Attack panel."
                   if k == INPUT_AWARE else "")
            self.message.value = _error(f"{k} is not crafted: only {', '.join(CRAFTED)} are.{how}")
            return None
        try:
            settings = self.craft_settings()
            key = self._craft_key()
        except (ValueError, TypeError) as exc:
            self.message.value = _error(exc)
            return None
        if key in self._crafted:
            self._use(self._crafted[key])
            return self.trigger
        saved = {w: w.disabled for w in (self.kind, *self._controls.values())
                 if hasattr(w, "disabled") and not isinstance(w, W.IntProgress)}
        for w in saved:
            w.disabled = True
        self._crafting = True
        bar = self.craft_progress
        try:
            net = self._clean_model(settings["seed"])
            bar.description = "crafting"
            bar.value, bar.max = 0, settings["steps"]
            every = max(1, settings["steps"] // 50)  # at most ~50 updates sent to the browser

            def tick(step, total):
                if step % every == 0 or step == total:
                    bar.max, bar.value = total, step
                    self.message.value = f"crafting {k}: step {step} of {total}…"

            trig = crafting.craft(k, self.data, model=net, progress=tick, **settings)
            # = crafting.craft(k, self.data, epochs=self.clean_epochs, **settings): the same model
        except (ValueError, TypeError, FloatingPointError) as exc:
            self.message.value = _error(exc)
            return None
        finally:
            self._crafting = False
            for w, was in saved.items():
                w.disabled = was
        self._crafted[key] = trig
        self._use(trig)
        return trig

    def _clean_model(self, seed: int):
        """The clean model `workbench.crafting` crafts on by default (the same run, so crafting
        here gives the trigger `crafting.craft(kind, data, seed=seed, ...)` gives), with the
        training's progress on the bar when it is not cached yet."""
        kw = dict(rate=0.0, model="small-cnn", epochs=self.clean_epochs, seed=seed)
        bar = self.craft_progress
        if is_cached(self.data, **kw):
            return train_backdoor(self.data, progress=False, **kw).model
        bar.description, bar.value = "clean model", 0

        def epoch(e, _model, _entry):
            bar.max, bar.value = max(bar.max, e), e
            self.message.value = f"training the clean model for crafting: epoch {e}…"

        self.message.value = "training the clean model for crafting…"
        return train_backdoor(self.data, progress=False, callbacks=[epoch], **kw).model


# Shown beside the poisoning mode when it is clean-label (figures: issue 22, 0.005, and a rerun,
# seed 0, target 0: ASR 0.000, accuracy 0.978; the rest benchmarks/RESULTS.md, "Attack atlas")
CLEAN_LABEL_NOTE = (
    "<small style='display:block;line-height:1.3;padding:2px 6px;border-left:3px solid #E69F00'>"
    "<b>Clean-label needs a stronger trigger.</b> The labels stay true, so the model can learn the "
    "target-class images from their content and ignore a small patch: on digits a 3×3 "
    "checkerboard at 8% gave ASR ≤ 0.005, a 3×3 patch on all of class 0 (9.9%) 0.15, a 5×5 patch "
    "there 0.42. Use a larger, stronger trigger, or <b>label-consistent</b> poisoning, whose "
    "small adversarial perturbation makes those images hard to learn without the trigger (5×5 "
    "patch, ε 0.3, digits at 4.9%: ASR 0.86–0.93 over two seeds).</small>")


def _check_attack_args(data, trigger) -> None:
    """AttackPanel's data and trigger, before any widget: a Dataset with a training split and a
    trigger the run cache can name. An opened run (workbench.open_model), its test-only data and
    its trigger (images given, a function) are refused saying what to do instead."""
    if isinstance(data, OpenedRun) or isinstance(trigger, OpenedRun):
        raise TypeError(f"{OPENED_RUN_NOTE} Got an OpenedRun as "
                        f"`{'data' if isinstance(data, OpenedRun) else 'trigger'}`.")
    if data is not None:
        if not isinstance(data, Dataset):
            raise TypeError(f"`data` must be a workbench Dataset (load_dataset) or None; got "
                            f"{type(data).__name__}.")
        if not len(data.y_train):
            raise ValueError(f"`data` must have a training split for AttackPanel to poison and "
                             f"train on; {data.name!r} has none (test images only"
                             f"{', as open_model makes' if data.info.get('test_only') else ''}). "
                             f"{OPENED_RUN_NOTE}")
    if trigger is None or isinstance(trigger, TriggerDesigner):
        return
    if isinstance(trigger, (PairedTrigger, FunctionTrigger)):
        why = ("it holds triggered test images and triggers only those, not training images"
               if isinstance(trigger, PairedTrigger) else
               "the run cache names a trigger by its settings, and a function's are only its name "
               "(two functions of one name would share a cached model)")
        raise ValueError(f"`trigger` must be a trigger AttackPanel can train with (a workbench "
                         f"trigger such as Patch(size=3), or a TriggerDesigner); got {trigger!r}: "
                         f"{why}. A model trained elsewhere with it is explored with "
                         "workbench.open_model(model, data, trigger=..., target=...).")
    if not isinstance(trigger, Trigger):
        raise TypeError(f"`trigger` must be None, a TriggerDesigner or a workbench trigger (e.g. "
                        f"Patch(size=3)); got {type(trigger).__name__}.")


class AttackPanel(W.VBox):
    """Poison, train and evaluate; `.run` is the last trained (or cached) run.

    It trains here only: a model trained elsewhere (`workbench.open_model`'s OpenedRun), as its
    data or trigger, its test-only data and its trigger (triggered images given, a function) are
    refused with a message saying to explore it with the explorers instead.

    poisoning: dirty-label (BadNets, Gu et al. 2017), clean-label (Barni et al. 2019) or
    label-consistent (Turner et al. 2019, with its PGD radius `epsilon`); target mode: all-to-one
    (every triggered input to the target class) or all-to-all (class y to (y + 1) mod K; the ASR
    is then the share of triggered inputs sent to their own shifted label). See
    `workbench.train.train_backdoor`.

    With a TriggerDesigner set to InputAware (Nguyen & Tran, NeurIPS 2020), Train trains the
    classifier and the trigger's generators together (`workbench.input_aware.train_input_aware`,
    through the run cache; the panel's epoch bar follows its joint epochs):
    the designer's generator settings, this panel's rate (the backdoor share), target, model and
    epochs (the joint epochs; 0 = the attack's default). It poisons dirty-label, all-to-one only:
    other poisoning or target modes are refused with a message before any work."""

    def __init__(self, data: Dataset | None = None, trigger=None, epochs: int | None = None):
        if epochs is not None:  # the slider's range; 0 = the dataset's default, as None
            epochs = check_int("epochs", epochs, 0, 60)
        _check_attack_args(data, trigger)
        self.data = data or load_dataset("digits")
        self.designer = trigger if isinstance(trigger, TriggerDesigner) else None
        self._trigger = trigger if trigger is not None and self.designer is None else None
        self._datasets = {self.data.name: self.data}
        self.dataset = W.Dropdown(options=sorted(set(DATASETS) | {self.data.name}),
                                  value=self.data.name, description="dataset")
        self.dataset.observe(self._dataset_changed, names="value")
        k = self.data.num_classes
        self.rate = W.FloatLogSlider(value=0.05, base=10, min=-3, max=-0.5, step=0.25,
                                     description="poisoning rate", readout_format=".3f", **_SLIDER)
        self.target = W.Dropdown(options=[(f"{i}: {c}", i) for i, c in enumerate(self.data.classes)],
                                 value=0, description="target")
        self.poisoning = W.Dropdown(options=list(POISONING_MODES), value="dirty-label",
                                    description="poisoning", style={"description_width": "initial"})
        self.target_mode = W.Dropdown(options=list(TARGET_MODES), value="all-to-one",
                                      description="target mode",
                                      style={"description_width": "initial"})
        self.epsilon = W.FloatSlider(value=round(DEFAULT_EPSILON, 3), min=0.005, max=0.5,
                                     step=0.005, readout_format=".3f",
                                     description="PGD epsilon (L∞)", **_SLIDER)
        # said where the mode is chosen: clean-label with a weak trigger trains without a backdoor
        self.mode_note = W.HTML(CLEAN_LABEL_NOTE, layout=W.Layout(max_width="30em"))
        self.mode_note.add_class("workbench-mode-note")
        self.model = W.Dropdown(options=[m for m in MODELS if m != "resnet18" or self.data.image_shape[0] == 3],
                                value="small-cnn", description="model")
        self.epochs = W.IntSlider(value=epochs or 0, min=0, max=60, description="epochs (0 = default)",
                                  **_SLIDER)
        self.train_button = W.Button(description="Train", button_style="primary", icon="play")
        self.progress = W.IntProgress(value=0, min=0, max=1, description="epochs")
        self.result = _status("Set the attack and press <b>Train</b>.")
        self._a2a_figure = False
        self.confusion = LiveFigure(self._confusion_figure(np.zeros((k, k)), np.zeros(k)), owner=self)
        self.train_button.on_click(lambda _b: self.train())
        self.poisoning.observe(self._modes_changed, names="value")
        self.target_mode.observe(self._modes_changed, names="value")
        if self.designer is not None:
            self.designer.kind.observe(self._modes_changed, names="value")
        self._mode_message = None
        self.run: BackdoorRun | None = None
        super().__init__([W.HBox([W.VBox([self.dataset, self.rate, self.target, self.model]),
                                  W.VBox([self.poisoning, self.mode_note, self.target_mode,
                                          self.epsilon, self.epochs])]),
                          W.HBox([self.train_button, self.progress]), self.result,
                          self.confusion])
        self.add_class("workbench-panel")  # a handle for styling and browser tests
        self._modes_changed()

    @property
    def input_aware(self) -> bool:
        """Whether Train trains InputAware (the designer is set to it)."""
        return self.designer is not None and self.designer.kind.value == INPUT_AWARE

    def _input_aware_problem(self) -> str | None:
        """Why the chosen modes cannot train InputAware (None: they can)."""
        bad = {n: getattr(self, n).value for n, ok in INPUT_AWARE_MODES.items()
               if getattr(self, n).value != ok}
        if not bad:
            return None
        got = ", ".join(f"{n.replace('_', ' ')} {v}" for n, v in bad.items())
        return (f"InputAware (Nguyen & Tran 2020) trains dirty-label, all-to-one only: its "
                f"backdoor images are relabelled to the one target class. Set poisoning to "
                f"dirty-label and target mode to all-to-one (got {got}).")

    def _modes_changed(self, _change=None):
        """Show epsilon for label-consistent poisoning only; all-to-all has no target class.
        Say at once when the modes cannot be trained (all-to-all with clean labels; InputAware
        with any mode but dirty-label, all-to-one)."""
        _show(self.epsilon, self.poisoning.value == "label-consistent")
        _show(self.target, self.target_mode.value == "all-to-one")
        _show(self.mode_note, self.poisoning.value == "clean-label" and not self.input_aware)
        message = None
        if self.input_aware:
            message = self._input_aware_problem()
        elif self.target_mode.value == "all-to-all" and self.poisoning.value != "dirty-label":
            message = (f"all-to-all needs dirty-label poisoning (an image of class y is relabelled "
                       f"to (y + 1) mod K); {self.poisoning.value} keeps the labels. Choose one or "
                       f"the other.")
        if message is not None:
            self.result.value = self._mode_message = _error(message)
        elif self._mode_message is not None and self.result.value == self._mode_message:
            self.result.value = "Set the attack and press <b>Train</b>."  # the problem is gone
            self._mode_message = None

    def settings(self) -> dict:
        """The keyword arguments `train` passes to `train_backdoor` (less the trigger), or, with
        the designer set to InputAware, to `train_input_aware` (less data and progress)."""
        if self.input_aware:
            return dict(rate=self.rate.value, target=self.target.value, model=self.model.value,
                        epochs=self.epochs.value or None, **self.designer.input_aware_settings())
        a2a = self.target_mode.value == "all-to-all"
        lc = self.poisoning.value == "label-consistent"
        return dict(rate=self.rate.value, target=0 if a2a else self.target.value,
                    model=self.model.value, epochs=self.epochs.value or None,
                    poisoning=self.poisoning.value, target_mode=self.target_mode.value,
                    epsilon=self.epsilon.value if lc else None)

    def _dataset_changed(self, change):
        """Load the chosen dataset (offline: a clear message if its files are missing)."""
        name = change["new"]
        try:
            data = self._datasets.get(name) or load_dataset(name, download=False)
        except (FileNotFoundError, ValueError) as exc:
            self.result.value = _error(exc)
            return
        self._datasets[name] = self.data = data
        k = data.num_classes
        self.target.options = [(f"{i}: {c}", i) for i, c in enumerate(data.classes)]
        self.target.value = 0
        self.model.options = [m for m in MODELS if m != "resnet18" or data.image_shape[0] == 3]
        self._a2a_figure = False
        _replace(self.confusion, self._confusion_figure(np.zeros((k, k)), np.zeros(k)),
                 rows=[1, 1], cols=[1, 2])
        self.result.value = f"{data!r}: set the attack and press <b>Train</b>."

    @property
    def trigger(self):
        if self.designer is not None:
            return self.designer.trigger
        return self._trigger or trigger_from_config({"type": "Patch", "size": 3})

    def _confusion_figure(self, cm, trig_hist, all_to_all: bool = False):
        names = list(self.data.classes)
        k = len(names)
        right = ("triggered inputs sent to y + 1 (share per true class y)" if all_to_all
                 else "predictions on triggered inputs")
        fig = plots.make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.15,
                                  subplot_titles=("confusion matrix (clean test set)", right))
        fig.add_trace(go.Heatmap(z=cm, x=names, y=names, colorscale="Blues", showscale=False,
                                 hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>"),
                      row=1, col=1)
        if all_to_all:
            x = [f"{names[i]}→{names[(i + 1) % k]}" for i in range(k)]
            fig.add_trace(go.Bar(x=x, y=trig_hist, marker_color=plots.TRIGGERED,
                                 hovertemplate="%{x}: %{y:.3f}<extra></extra>"), row=1, col=2)
            fig.update_xaxes(title_text="true class → attack's label", row=1, col=2)
            fig.update_yaxes(title_text="attack success rate", range=[0, 1], row=1, col=2)
        else:
            fig.add_trace(go.Bar(x=names, y=trig_hist, marker_color=plots.TRIGGERED,
                                 hovertemplate="%{x}: %{y}<extra></extra>"), row=1, col=2)
            fig.update_xaxes(title_text="predicted class", row=1, col=2)
            fig.update_yaxes(title_text="count", row=1, col=2)
        fig.update_yaxes(autorange="reversed", title_text="true class", row=1, col=1)
        fig.update_xaxes(title_text="predicted class", row=1, col=1)
        fig.update_layout(template=plots.TEMPLATE, height=360, showlegend=False,
                          margin=dict(t=50, b=40))
        return fig

    def train(self) -> BackdoorRun | None:
        """Train (or open from the cache) the chosen attack and show it; returns the run, or None
        with the reason in the panel when the settings are refused (before any work)."""
        if self.input_aware:
            return self._train_input_aware()
        trigger = self.trigger
        if trigger is None:
            self.result.value = _error(
                "No trigger: the trigger designer shows an error, or its crafted trigger is not "
                "crafted yet (press Craft there first).")
            return None
        kw = dict(self.settings(), trigger=trigger, progress=False)
        epochs = kw["epochs"]
        self.train_button.disabled = True
        self.progress.value = 0
        self.progress.max = epochs or 1
        self.result.value = "training…"

        def tick(epoch, _model, entry):
            self.progress.max = max(self.progress.max, epoch)
            self.progress.value = epoch
            self.result.value = (f"epoch {epoch}: clean accuracy {entry['clean_accuracy']:.3f}, "
                                 f"ASR {entry['attack_success_rate']:.3f}")

        try:
            # a configuration trained before opens from the cache; otherwise train with progress
            cached = is_cached(self.data, **{k: v for k, v in kw.items() if k != "progress"})
            if not cached and kw["poisoning"] == "label-consistent":
                self.result.value = "training (label-consistent: the clean model and PGD first)…"
            run = train_backdoor(self.data, callbacks=None if cached else [tick], **kw)
        except (ValueError, TypeError) as exc:
            self.result.value = _error(exc)
            return None
        finally:
            self.train_button.disabled = False
        for entry in run.history:
            tick(entry["epoch"], None, entry)
        self.run = run
        self._show(run)
        return run

    def _train_input_aware(self) -> InputAwareRun | None:
        problem = self._input_aware_problem()
        if problem is not None:
            self.result.value = _error(problem)
            return None
        kw = self.settings()
        try:  # every setting checked (and the cache looked up) before any work
            cached = is_input_aware_cached(self.data, **kw)
        except (ValueError, TypeError) as exc:
            self.result.value = _error(exc)
            return None
        self.train_button.disabled = True
        self.progress.value = 0
        self.progress.max = kw["epochs"] or 1

        def tick(epoch, _model, entry):  # the panel's own bar, per joint epoch
            self.progress.max = max(self.progress.max, epoch)
            self.progress.value = epoch
            self.result.value = (f"InputAware, epoch {epoch}: clean accuracy "
                                 f"{entry['clean_accuracy']:.3f}, ASR "
                                 f"{entry['attack_success_rate']:.3f}, cross accuracy "
                                 f"{entry['cross_accuracy']:.3f}")

        try:
            if not cached:
                self.result.value = (
                    f"training InputAware: the mask generator for {kw['mask_epochs']} epochs, then "
                    f"the classifier and the pattern generator together for "
                    f"{kw['epochs'] or 'the default number of'} epochs (progress above)…")
            run = train_input_aware(self.data, progress=False, callbacks=None if cached else [tick],
                                    **kw)
        except (ValueError, TypeError, FloatingPointError) as exc:
            self.result.value = _error(exc)
            return None
        finally:
            self.train_button.disabled = False
        self.progress.max = max(1, len(run.history))
        self.progress.value = len(run.history)
        self.run = run
        self._show(run)
        self.designer.show_trained(run)
        return run

    def _show(self, run: BackdoorRun):
        k = self.data.num_classes
        pred = predict(run.model, self.data.x_test).numpy()
        cm = np.zeros((k, k), dtype=int)
        np.add.at(cm, (self.data.y_test.numpy(), pred), 1)
        pairs = run.triggered_pairs(self.data.x_test, self.data.y_test)
        tp = predict(run.model, pairs.triggered).numpy()
        a2a = run.target_mode == "all-to-all"
        if a2a:  # per true class: the share sent to its own shifted label
            hit = tp == pairs.targets.numpy()
            lab = pairs.labels.numpy()
            right = np.array([hit[lab == c].mean() if (lab == c).any() else np.nan
                              for c in range(k)])
        else:
            right = np.bincount(tp, minlength=k)
        if a2a != self._a2a_figure:
            self._a2a_figure = a2a
            _replace(self.confusion, self._confusion_figure(cm, right, a2a), rows=[1, 1],
                     cols=[1, 2])
        else:
            with self.confusion.batch_update():
                self.confusion.data[0].z = cm
                self.confusion.data[1].y = right
        how = {"dirty-label": "relabelled", "clean-label": "of the target class, labels kept",
               "label-consistent": "of the target class, PGD-perturbed, labels kept"}
        extra = f", {len(run.cover_indices)} more triggered with true labels (conservatism)" \
            if getattr(run, "cover_indices", None) else ""
        if isinstance(run, InputAwareRun):
            self.result.value = (
                f"<b>clean accuracy</b> {run.clean_accuracy:.4f} · <b>attack success rate</b> "
                f"{run.attack_success_rate:.4f} · <b>cross accuracy</b> {run.cross_accuracy:.4f} "
                f"(inputs with another input's trigger keep their label) · InputAware: "
                f"{len(run.poison_indices)} images with their own trigger relabelled each epoch "
                f"(redrawn every epoch), {run.config['epochs']} joint epochs after "
                f"{run.config['mask_epochs']} of the mask generator · trained in "
                f"{run.train_seconds:.1f} s")
            return
        asr_note = (" (all-to-all: triggered inputs sent to their own label y + 1 mod "
                    f"{k})" if a2a else "")
        self.result.value = (f"<b>clean accuracy</b> {run.clean_accuracy:.4f} · "
                             f"<b>attack success rate</b> {run.attack_success_rate:.4f}{asr_note} · "
                             f"{len(run.poison_indices)} poisoned images "
                             f"({run.poisoning}: {how[run.poisoning]}{extra}) · "
                             f"trained in {run.train_seconds:.1f} s")


SUMMARY_LABELS = {"mean": "mean W over the σ grid", "radius": "smoothness radius (σ)"}


class SmoothnessExplorer(W.VBox):
    """W_σ curves of clean vs triggered inputs with bands, summaries, and the gap's test.

    `run` is a run trained here or an opened one (`workbench.open_model`). An opened run without a
    trigger has no triggered twins: the explorer then shows the W_σ curves of `n_inputs` random
    clean test inputs (`run.clean_inputs`, seed `seed`) and their per-input summaries, with the
    summaries' mean and its t-interval over inputs and no gap (`clean_only` True, `clean` the
    SmoothnessResult, `comparison` None), and a note saying why the paired view is disabled (the
    opened run's NO_TRIGGER message). In the paired view `clean` is `comparison.clean`."""

    def __init__(self, run: BackdoorRun | OpenedRun, data: Dataset, n_inputs: int = 16,
                 n_samples: int = 64, seed: int = 0, sigmas=None):
        """sigmas: the starting σ grid (None: the dataset's default; needed for datasets
        without one, as a user's own data opened with open_model)."""
        self.clean_only = _check_run(run)
        n_inputs = check_int("n_inputs", n_inputs, 2, 200)  # the slider's range
        n_samples = check_choice("n_samples", check_int("n_samples", n_samples, low=1),
                                 SAMPLE_CHOICES)
        seed = check_seed("seed", seed, generator=False)
        self.run, self.data, self.seed = run, data, seed
        sig = default_sigmas(data.name) if sigmas is None else check_sigmas("sigmas", sigmas)
        self.sigma_max = W.FloatSlider(value=sig[-1], min=0.05, max=2.0, step=0.05,
                                       description="largest σ", **_SLIDER)
        self.n_sigmas = W.IntSlider(value=len(sig), min=3, max=24, description="σ points", **_SLIDER)
        self.n_samples = W.Dropdown(options=list(SAMPLE_CHOICES), value=n_samples,
                                    description="samples")
        self.mode = W.ToggleButtons(options=["hard", "soft"], value="hard", description="mode")
        self.n_inputs = W.IntSlider(value=n_inputs, min=2, max=200, description="inputs", **_SLIDER)
        self.per_input = W.Checkbox(value=False, description="per-input curves")
        self.summary = W.Dropdown(options=[(SUMMARY_LABELS["mean"], "mean"),
                                           (SUMMARY_LABELS["radius"], "radius")],
                                  value="mean", description="summary")
        self.note = _clean_only_note("Clean inputs only: the smoothing gap and the triggered "
                                     "curves are disabled, because")
        _show(self.note, self.clean_only)
        self.message = _status()
        self.curves = LiveFigure(owner=self)
        self.distribution = LiveFigure(owner=self)
        self._cache: dict = {}
        self.comparison = None
        self.clean = None
        for wdg in (self.sigma_max, self.n_sigmas, self.n_samples, self.mode, self.n_inputs,
                    self.per_input, self.summary):
            wdg.observe(self.update, names="value")
        controls = W.HBox([W.VBox([self.sigma_max, self.n_sigmas, self.n_samples]),
                           W.VBox([self.mode, self.n_inputs, W.HBox([self.summary, self.per_input])])])
        super().__init__([controls, self.note, self.message, self.curves, self.distribution])
        self.add_class("workbench-panel")  # a handle for styling and browser tests
        self.update()

    def sigmas(self) -> list[float]:
        lo = min(0.05, self.sigma_max.value / 2)
        return [float(s) for s in np.round(np.linspace(lo, self.sigma_max.value, self.n_sigmas.value), 4)]

    def _compute(self):
        key = (tuple(self.sigmas()), self.n_samples.value, self.mode.value, self.n_inputs.value,
               self.summary.value)
        if key not in self._cache:
            if self.clean_only:  # no twins: the clean inputs' curves (the summary is per input)
                x, _, _ = self.run.clean_inputs(n=self.n_inputs.value, seed=self.seed)
                self._cache[key] = estimate_smoothness(self.run.model, x, key[0], key[1],
                                                       mode=key[2], seed=self.seed)
            else:
                pairs = self.run.triggered_pairs(self.data.x_test, self.data.y_test,
                                                 n=self.n_inputs.value, seed=self.seed)
                self._cache[key] = compare_smoothness(self.run.model, pairs.clean, pairs.triggered,
                                                      key[0], key[1], mode=key[2], summary=key[4],
                                                      seed=self.seed)
        return self._cache[key]

    def update(self, _change=None):
        self.message.value = "computing…"
        per_input = self.n_inputs.value if self.per_input.value else 0
        if self.clean_only:
            self._update_clean(per_input)
            return
        cmp = self.comparison = self._compute()
        self.clean = cmp.clean
        curves = plots.smoothness_curves(cmp.clean, cmp.triggered, per_input=per_input)
        dist = plots.summary_distribution(cmp)
        _replace(self.curves, curves)
        _replace(self.distribution, dist)
        lo, hi = cmp.gap_ci
        pairs = ("pairs of every class (all-to-all)" if self.run.target_mode == "all-to-all"
                 else "pairs")
        self.message.value = (f"<b>smoothing gap</b> {cmp.gap:.4f} (95% CI [{lo:.4f}, {hi:.4f}]) · "
                              f"Wilcoxon signed-rank p = {cmp.p_value:.2g} · {cmp.n_pairs} {pairs} · "
                              f"{self.n_samples.value} samples per input and σ")

    def _update_clean(self, per_input: int) -> None:
        res = self.clean = self._compute()
        kind = self.summary.value
        values = res.summary(kind)
        curves = plots.smoothness_curves(
            res, None, per_input=per_input,
            title="Smoothness curves: W<sub>σ</sub> around clean inputs (no trigger given)")
        mean, _se, lo, hi = t_interval(values)
        dist = go.Figure(go.Box(y=values, name="clean", marker_color=plots.CLEAN, boxpoints="all",
                                jitter=0.4, pointpos=0, line_width=1.5))
        dist.update_layout(template=plots.TEMPLATE, height=380, showlegend=False,
                           yaxis_title=SUMMARY_LABELS[kind],
                           title=f"Per-input summaries of clean inputs: mean {mean:.3f} "
                                 f"[{lo:.3f}, {hi:.3f}]")
        _replace(self.curves, curves)
        _replace(self.distribution, dist)
        self.message.value = (f"<b>clean inputs only</b> · {SUMMARY_LABELS[kind]}: mean {mean:.4f} "
                              f"(95% t-interval over inputs [{lo:.4f}, {hi:.4f}]) · "
                              f"{len(values)} random test inputs · {self.n_samples.value} samples "
                              f"per input and σ")


def _landscape_figure(land, colour_by: str, class_names) -> go.Figure:
    """One landscape, around a clean input (the clean-only mode's map; `plots.landscape_pair`
    draws a clean input beside its triggered twin)."""
    k = max(int(land.predicted.max()) + 1, len(class_names), 2)
    fig = go.Figure(list(plots.landscape_traces(land, colour_by, list(class_names), k)))
    what = "predicted class" if colour_by == "class" else "local W<sub>σ</sub>"
    fig.update_xaxes(title_text=f"{land.directions[0]} direction (L2)")
    fig.update_yaxes(title_text=f"{land.directions[1]} direction (L2)")
    fig.update_layout(template=plots.TEMPLATE, height=430,
                      title=f"Uncertainty landscape around the clean input: {what}")
    return fig


class LandscapeExplorer(W.VBox):
    """Landscapes around one input, clean and triggered side by side, plus its 1-D W_σ view.

    `run` is a run trained here or an opened one (`workbench.open_model`). An opened run without a
    trigger has neither a trigger direction nor triggered twins: the explorer then maps random
    clean test inputs (`run.clean_inputs`) along the 'random' and 'gradient' directions only,
    draws the clean map and the clean W_σ curve alone (`clean_only` True, `landscapes` a
    one-element tuple, `pairs` None, `inputs` the (x, y, indices) mapped), and says why in a
    note (the opened run's NO_TRIGGER message)."""

    def __init__(self, run: BackdoorRun | OpenedRun, data: Dataset, resolution: int = 21,
                 n_samples: int = 16, seed: int = 0, sigmas=None):
        """sigmas: the σ grid of the 1-D W_σ view (None: the dataset's default)."""
        self.clean_only = _check_run(run)
        resolution = check_int("resolution", resolution, 3, 201)
        self.sigmas = default_sigmas(data.name) if sigmas is None else check_sigmas("sigmas", sigmas)
        n_samples = check_int("n_samples", n_samples, low=1)
        seed = check_seed("seed", seed, generator=False)
        self.run, self.data, self.seed = run, data, seed
        if self.clean_only:
            self.pairs = None
            self.inputs = run.clean_inputs(n=50, seed=seed)
            n, directions, first = len(self.inputs[0]), [d for d in DIRECTIONS if d != "trigger"], \
                ("random", "gradient")
        else:
            self.pairs = run.triggered_pairs(data.x_test, data.y_test, n=50, seed=seed)
            self.inputs = None
            n, directions, first = len(self.pairs.clean), list(DIRECTIONS), ("trigger", "random")
        self.index = W.IntSlider(value=0, min=0, max=n - 1, description="input", **_SLIDER)
        self.dir1 = W.Dropdown(options=directions, value=first[0], description="direction 1")
        self.dir2 = W.Dropdown(options=directions, value=first[1], description="direction 2")
        self.extent = W.FloatSlider(value=3.0, min=0.25, max=10.0, step=0.25, description="scale (L2)",
                                    **_SLIDER)
        self.colour = W.ToggleButtons(options=[("class", "class"), ("local W_σ", "entropy")],
                                      value="class", description="colour")
        self.sigma = W.FloatSlider(value=0.3, min=0.02, max=1.0, step=0.02, description="σ for W",
                                   **_SLIDER)
        self.resolution, self.n_samples = resolution, n_samples
        self.note = _clean_only_note("Clean inputs only: the trigger direction and the triggered "
                                     "twin are disabled, because")
        _show(self.note, self.clean_only)
        self.message = _status()
        self.plane = LiveFigure(owner=self)
        self.curve = LiveFigure(owner=self)
        self._cache: dict = {}
        self.landscapes = None
        self.colour.observe(self._sync_controls, names="value")  # before update: see below
        for wdg in (self.index, self.dir1, self.dir2, self.extent, self.colour, self.sigma):
            wdg.observe(self.update, names="value")
        controls = W.HBox([W.VBox([self.index, self.dir1, self.dir2]),
                           W.VBox([self.extent, self.colour, self.sigma])])
        super().__init__([controls, self.note, self.message, self.plane, self.curve])
        self.add_class("workbench-panel")  # a handle for styling and browser tests
        self._sync_controls()
        self.update()

    def _sync_controls(self, _change=None):
        """σ for W only sets the local-W_σ colouring: disabled while the map is coloured by class,
        where moving it would change nothing."""
        by_class = self.colour.value != "entropy"
        self.sigma.disabled = by_class
        self.sigma.tooltip = ("used when the colour is local W_σ" if by_class
                              else "the noise level of the local W_σ colouring")

    def _compute(self):
        key = (self.index.value, self.dir1.value, self.dir2.value, self.extent.value,
               self.colour.value == "entropy" and self.sigma.value)
        if key not in self._cache:
            j = self.index.value
            sigma = self.sigma.value if self.colour.value == "entropy" else None
            kw = dict(directions=(self.dir1.value, self.dir2.value), extent=self.extent.value,
                      resolution=self.resolution, sigma=sigma, n_samples=self.n_samples,
                      seed=self.seed)
            if self.clean_only:
                self._cache[key] = (landscape_2d(self.run.model, self.inputs[0][j], **kw),)
            else:
                clean, trig = self.pairs.clean[j], self.pairs.triggered[j]
                kw["trigger"] = self.run.trigger
                self._cache[key] = (landscape_2d(self.run.model, clean, **kw),
                                    landscape_2d(self.run.model, trig, clean=clean, **kw))
        return self._cache[key]

    def _curve(self):
        key = ("curve", self.index.value)
        if key not in self._cache:
            j = self.index.value
            sig = self.sigmas
            if self.clean_only:
                x = self.inputs[0][j:j + 1]
                self._cache[key] = (estimate_smoothness(self.run.model, x, sig, 128,
                                                        seed=self.seed), None)
            else:
                x = self.pairs.clean[j:j + 1]
                self._cache[key] = (
                    estimate_smoothness(self.run.model, x, sig, 128, seed=self.seed),
                    estimate_smoothness(self.run.model, self.pairs.triggered[j:j + 1], sig, 128,
                                        seed=self.seed))
        return self._cache[key]

    def update(self, _change=None):
        if self.dir1.value == self.dir2.value:
            self.message.value = "<span style='color:#D55E00'>choose two different directions</span>"
            return
        self.message.value = "computing…"
        self.landscapes = self._compute()
        names = list(self.data.classes)
        if self.clean_only:
            fig = _landscape_figure(self.landscapes[0], self.colour.value, names)
        else:
            fig = plots.landscape_pair(*self.landscapes, colour_by=self.colour.value,
                                       class_names=names)
        rc, rt = self._curve()
        curve = plots.smoothness_curves(rc, rt, title="W<sub>σ</sub> against σ for this input")
        _replace(self.plane, fig)
        _replace(self.curve, curve)
        j = self.index.value
        mid = self.resolution // 2
        if self.clean_only:
            lab = int(self.inputs[1][j])
            self.message.value = (f"input {j} (test image {int(self.inputs[2][j])}): true class "
                                  f"{names[lab]} · predicted "
                                  f"{names[int(self.landscapes[0].predicted[mid, mid])]}")
            return
        lab, want = int(self.pairs.labels[j]), int(self.pairs.targets[j])
        self.message.value = (f"input {j}: true class {names[lab]} · "
                              f"clean → {names[int(self.landscapes[0].predicted[mid, mid])]} · "
                              f"triggered → {names[int(self.landscapes[1].predicted[mid, mid])]} "
                              f"(the attack's label: {names[want]})")
