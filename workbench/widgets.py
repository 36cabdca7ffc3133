"""ipywidgets panels that connect controls to library calls and plotly FigureWidgets.

Each panel is an `ipywidgets.VBox`: display it as the last expression of a cell. Sliders apply on
release (`continuous_update=False`), figures update in place inside `batch_update()`, results are
memoised by their settings (work starts only when inputs change), and long work shows progress.

    TriggerDesigner(data)            -> .trigger
    AttackPanel(data, trigger)       -> .run   (Train button; cached runs open at once)
    SmoothnessExplorer(run, data)    -> .comparison
    LandscapeExplorer(run, data)     -> .landscapes
"""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import plotly.graph_objects as go
import ipywidgets as W
import traitlets

from . import plots
from ._validate import check_choice, check_int, check_seed, check_sigmas
from .data import DATASETS, Dataset, load_dataset
from .experiments import default_sigmas
from .landscape import DIRECTIONS, landscape_2d
from .models import MODELS
from .poison import triggered_pairs
from .comparison import compare_smoothness
from .smoothness import estimate_smoothness
from .train import BackdoorRun, is_cached, predict, train_backdoor
from .triggers import CORNERS, TRIGGERS, trigger_from_config

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
        for w in _descendants(self._owner):
            if self in getattr(w, "children", ()):
                w.children = tuple(fresh if c is self else c for c in w.children)
        for name, value in list(vars(self._owner).items()):
            if value is self:
                setattr(self._owner, name, fresh)
        self.close()


def _descendants(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _descendants(child)


def _replace(target: go.FigureWidget, new: go.Figure, **grid) -> None:
    """Swap a FigureWidget's traces and layout for a new figure's, in one message."""
    with target.batch_update():
        target.data = []
        target.add_traces(list(new.data), **grid)
        target.layout = new.layout


def _status(text: str = "") -> W.HTML:
    return W.HTML(value=text, layout=W.Layout(min_height="1.6em"))


class TriggerDesigner(W.VBox):
    """Choose a trigger and see it on clean images; `.trigger` is the current trigger object."""

    def __init__(self, data: Dataset | None = None, n_preview: int = 6):
        n_preview = check_int("n_preview", n_preview, low=1)
        self.data = data or load_dataset("digits")
        c, h, w = self.data.image_shape
        self.kind = W.Dropdown(options=[k for k in TRIGGERS if k != "PatternPatch"], value="Patch",
                               description="trigger")
        self.size = W.IntSlider(value=3, min=1, max=max(2, min(h, w) // 2), description="size", **_SLIDER)
        self.position = W.Dropdown(options=list(CORNERS), value="bottom-right", description="position")
        self.value = W.FloatSlider(value=1.0, min=0.0, max=1.0, step=0.05, description="value", **_SLIDER)
        self.alpha = W.FloatSlider(value=0.15, min=0.01, max=1.0, step=0.01, description="alpha / strength",
                                   **_SLIDER)
        self.seed = W.IntText(value=0, description="seed", layout=W.Layout(width="10em"))
        self.message = _status()
        self._preview_x = self.data.x_test[:n_preview]
        self.trigger = trigger_from_config({"type": "Patch", "size": 3})
        self.figure = LiveFigure(plots.image_pairs(self._preview_x, self.trigger(self._preview_x),
                                                n=n_preview), owner=self)
        for wdg in (self.kind, self.size, self.position, self.value, self.alpha, self.seed):
            wdg.observe(self._changed, names="value")
        controls = W.HBox([W.VBox([self.kind, self.size, self.position]),
                           W.VBox([self.value, self.alpha, self.seed])])
        super().__init__([controls, self.figure, self.message])
        self.add_class("workbench-panel")  # a handle for styling and browser tests
        self._sync_visibility()

    def _config(self) -> dict:
        k = self.kind.value
        if k in ("Patch", "Checkerboard"):
            return {"type": k, "size": self.size.value, "position": self.position.value,
                    "value": self.value.value}
        if k == "Pixel":
            return {"type": k, "position": self.position.value, "value": self.value.value}
        if k == "Blend":
            return {"type": k, "alpha": self.alpha.value, "seed": self.seed.value}
        if k == "Sinusoid":
            return {"type": k, "delta": self.alpha.value, "frequency": 6}
        return {"type": k, "strength": self.alpha.value * 10, "seed": self.seed.value}

    def _sync_visibility(self):
        k = self.kind.value
        show = lambda wdg, on: setattr(wdg.layout, "display", None if on else "none")
        show(self.size, k in ("Patch", "Checkerboard"))
        show(self.position, k in ("Patch", "Checkerboard", "Pixel"))
        show(self.value, k in ("Patch", "Checkerboard", "Pixel"))
        show(self.alpha, k in ("Blend", "Sinusoid", "Warp"))
        show(self.seed, k in ("Blend", "Warp"))

    def _changed(self, _change=None):
        self._sync_visibility()
        try:
            trig = trigger_from_config(self._config())
            triggered = trig(self._preview_x)
        except (ValueError, TypeError) as exc:
            self.message.value = f"<span style='color:#D55E00'>{exc}</span>"
            return
        self.trigger = trig
        self.message.value = f"<code>{trig!r}</code>"
        n = len(self._preview_x)
        with self.figure.batch_update():
            for i in range(n):
                self.figure.data[n + i].z = plots._to_rgb_uint8(triggered[i])


class AttackPanel(W.VBox):
    """Poison, train and evaluate; `.run` is the last trained (or cached) run."""

    def __init__(self, data: Dataset | None = None, trigger=None, epochs: int | None = None):
        if epochs is not None:  # the slider's range; 0 = the dataset's default, as None
            epochs = check_int("epochs", epochs, 0, 60)
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
        self.model = W.Dropdown(options=[m for m in MODELS if m != "resnet18" or self.data.image_shape[0] == 3],
                                value="small-cnn", description="model")
        self.epochs = W.IntSlider(value=epochs or 0, min=0, max=60, description="epochs (0 = default)",
                                  **_SLIDER)
        self.train_button = W.Button(description="Train", button_style="primary", icon="play")
        self.progress = W.IntProgress(value=0, min=0, max=1, description="epochs")
        self.result = _status("Set the attack and press <b>Train</b>.")
        self.confusion = LiveFigure(self._confusion_figure(np.zeros((k, k)), np.zeros(k)), owner=self)
        self.train_button.on_click(lambda _b: self.train())
        self.run: BackdoorRun | None = None
        super().__init__([W.HBox([W.VBox([self.dataset, self.rate, self.target]),
                                  W.VBox([self.model, self.epochs])]),
                          W.HBox([self.train_button, self.progress]), self.result, self.confusion])
        self.add_class("workbench-panel")  # a handle for styling and browser tests

    def _dataset_changed(self, change):
        """Load the chosen dataset (offline: a clear message if its files are missing)."""
        name = change["new"]
        try:
            data = self._datasets.get(name) or load_dataset(name, download=False)
        except (FileNotFoundError, ValueError) as exc:
            self.result.value = f"<span style='color:#D55E00'>{exc}</span>"
            return
        self._datasets[name] = self.data = data
        k = data.num_classes
        self.target.options = [(f"{i}: {c}", i) for i, c in enumerate(data.classes)]
        self.target.value = 0
        self.model.options = [m for m in MODELS if m != "resnet18" or data.image_shape[0] == 3]
        _replace(self.confusion, self._confusion_figure(np.zeros((k, k)), np.zeros(k)),
                 rows=[1, 1], cols=[1, 2])
        self.result.value = f"{data!r}: set the attack and press <b>Train</b>."

    @property
    def trigger(self):
        if self.designer is not None:
            return self.designer.trigger
        return self._trigger or trigger_from_config({"type": "Patch", "size": 3})

    def _confusion_figure(self, cm, trig_hist):
        names = list(self.data.classes)
        fig = plots.make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.15,
                                  subplot_titles=("confusion matrix (clean test set)",
                                                  "predictions on triggered inputs"))
        fig.add_trace(go.Heatmap(z=cm, x=names, y=names, colorscale="Blues", showscale=False,
                                 hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>"),
                      row=1, col=1)
        fig.add_trace(go.Bar(x=names, y=trig_hist, marker_color=plots.TRIGGERED,
                             hovertemplate="%{x}: %{y}<extra></extra>"), row=1, col=2)
        fig.update_yaxes(autorange="reversed", title_text="true class", row=1, col=1)
        fig.update_xaxes(title_text="predicted class", row=1, col=1)
        fig.update_xaxes(title_text="predicted class", row=1, col=2)
        fig.update_yaxes(title_text="count", row=1, col=2)
        fig.update_layout(template=plots.TEMPLATE, height=360, showlegend=False,
                          margin=dict(t=50, b=40))
        return fig

    def train(self) -> BackdoorRun | None:
        epochs = self.epochs.value or None
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
            kw = dict(trigger=self.trigger, rate=self.rate.value, target=self.target.value,
                      model=self.model.value, epochs=epochs, progress=False)
            # a configuration trained before opens from the cache; otherwise train with progress
            cached = is_cached(self.data, **{k: v for k, v in kw.items() if k != "progress"})
            run = train_backdoor(self.data, callbacks=None if cached else [tick], **kw)
        except (ValueError, TypeError) as exc:
            self.result.value = f"<span style='color:#D55E00'>{exc}</span>"
            return None
        finally:
            self.train_button.disabled = False
        for entry in run.history:
            tick(entry["epoch"], None, entry)
        self.run = run
        self._show(run)
        return run

    def _show(self, run: BackdoorRun):
        k = self.data.num_classes
        pred = predict(run.model, self.data.x_test).numpy()
        cm = np.zeros((k, k), dtype=int)
        np.add.at(cm, (self.data.y_test.numpy(), pred), 1)
        keep = self.data.y_test != run.target
        tp = predict(run.model, run.trigger(self.data.x_test[keep])).numpy()
        with self.confusion.batch_update():
            self.confusion.data[0].z = cm
            self.confusion.data[1].y = np.bincount(tp, minlength=k)
        self.result.value = (f"<b>clean accuracy</b> {run.clean_accuracy:.4f} · "
                             f"<b>attack success rate</b> {run.attack_success_rate:.4f} · "
                             f"{len(run.poison_indices)} poisoned images · "
                             f"trained in {run.train_seconds:.1f} s")


class SmoothnessExplorer(W.VBox):
    """W_σ curves of clean vs triggered inputs with bands, summaries, and the gap's test."""

    def __init__(self, run: BackdoorRun, data: Dataset, n_inputs: int = 16, n_samples: int = 64,
                 seed: int = 0, sigmas=None):
        """sigmas: the starting σ grid (None: the dataset's default; needed for datasets
        without one)."""
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
        self.summary = W.Dropdown(options=[("mean W over σ", "mean"), ("smoothness radius", "radius")],
                                  value="mean", description="summary")
        self.message = _status()
        self.curves = LiveFigure(owner=self)
        self.distribution = LiveFigure(owner=self)
        self._cache: dict = {}
        self.comparison = None
        for wdg in (self.sigma_max, self.n_sigmas, self.n_samples, self.mode, self.n_inputs,
                    self.per_input, self.summary):
            wdg.observe(self.update, names="value")
        controls = W.HBox([W.VBox([self.sigma_max, self.n_sigmas, self.n_samples]),
                           W.VBox([self.mode, self.n_inputs, W.HBox([self.summary, self.per_input])])])
        super().__init__([controls, self.message, self.curves, self.distribution])
        self.add_class("workbench-panel")  # a handle for styling and browser tests
        self.update()

    def sigmas(self) -> list[float]:
        lo = min(0.05, self.sigma_max.value / 2)
        return [float(s) for s in np.round(np.linspace(lo, self.sigma_max.value, self.n_sigmas.value), 4)]

    def _compute(self):
        key = (tuple(self.sigmas()), self.n_samples.value, self.mode.value, self.n_inputs.value,
               self.summary.value)
        if key not in self._cache:
            pairs = triggered_pairs(self.data.x_test, self.data.y_test, self.run.trigger,
                                    self.run.target, n=self.n_inputs.value, seed=self.seed)
            self._cache[key] = compare_smoothness(self.run.model, pairs.clean, pairs.triggered,
                                                  key[0], key[1], mode=key[2], summary=key[4],
                                                  seed=self.seed)
        return self._cache[key]

    def update(self, _change=None):
        self.message.value = "computing…"
        cmp = self.comparison = self._compute()
        curves = plots.smoothness_curves(cmp.clean, cmp.triggered,
                                         per_input=self.n_inputs.value if self.per_input.value else 0)
        dist = plots.summary_distribution(cmp)
        _replace(self.curves, curves)
        _replace(self.distribution, dist)
        lo, hi = cmp.gap_ci
        self.message.value = (f"<b>smoothing gap</b> {cmp.gap:.4f} (95% CI [{lo:.4f}, {hi:.4f}]) · "
                              f"Wilcoxon signed-rank p = {cmp.p_value:.2g} · {cmp.n_pairs} pairs · "
                              f"{self.n_samples.value} samples per input and σ")


class LandscapeExplorer(W.VBox):
    """Landscapes around one input, clean and triggered side by side, plus its 1-D W_σ view."""

    def __init__(self, run: BackdoorRun, data: Dataset, resolution: int = 21, n_samples: int = 16,
                 seed: int = 0, sigmas=None):
        """sigmas: the σ grid of the 1-D W_σ view (None: the dataset's default)."""
        resolution = check_int("resolution", resolution, 3, 201)
        self.sigmas = default_sigmas(data.name) if sigmas is None else check_sigmas("sigmas", sigmas)
        n_samples = check_int("n_samples", n_samples, low=1)
        seed = check_seed("seed", seed, generator=False)
        self.run, self.data, self.seed = run, data, seed
        self.pairs = triggered_pairs(data.x_test, data.y_test, run.trigger, run.target, n=50, seed=seed)
        self.index = W.IntSlider(value=0, min=0, max=len(self.pairs.clean) - 1, description="input",
                                 **_SLIDER)
        self.dir1 = W.Dropdown(options=list(DIRECTIONS), value="trigger", description="direction 1")
        self.dir2 = W.Dropdown(options=list(DIRECTIONS), value="random", description="direction 2")
        self.extent = W.FloatSlider(value=3.0, min=0.25, max=10.0, step=0.25, description="scale (L2)",
                                    **_SLIDER)
        self.colour = W.ToggleButtons(options=[("class", "class"), ("local W_σ", "entropy")],
                                      value="class", description="colour")
        self.sigma = W.FloatSlider(value=0.3, min=0.02, max=1.0, step=0.02, description="σ for W",
                                   **_SLIDER)
        self.resolution, self.n_samples = resolution, n_samples
        self.message = _status()
        self.plane = LiveFigure(owner=self)
        self.curve = LiveFigure(owner=self)
        self._cache: dict = {}
        self.landscapes = None
        for wdg in (self.index, self.dir1, self.dir2, self.extent, self.colour, self.sigma):
            wdg.observe(self.update, names="value")
        controls = W.HBox([W.VBox([self.index, self.dir1, self.dir2]),
                           W.VBox([self.extent, self.colour, self.sigma])])
        super().__init__([controls, self.message, self.plane, self.curve])
        self.add_class("workbench-panel")  # a handle for styling and browser tests
        self.update()

    def _compute(self):
        key = (self.index.value, self.dir1.value, self.dir2.value, self.extent.value,
               self.colour.value == "entropy" and self.sigma.value)
        if key not in self._cache:
            j = self.index.value
            clean, trig = self.pairs.clean[j], self.pairs.triggered[j]
            sigma = self.sigma.value if self.colour.value == "entropy" else None
            kw = dict(directions=(self.dir1.value, self.dir2.value), trigger=self.run.trigger,
                      extent=self.extent.value, resolution=self.resolution, sigma=sigma,
                      n_samples=self.n_samples, seed=self.seed)
            self._cache[key] = (landscape_2d(self.run.model, clean, **kw),
                                landscape_2d(self.run.model, trig, clean=clean, **kw))
        return self._cache[key]

    def _curve(self):
        key = ("curve", self.index.value)
        if key not in self._cache:
            j = self.index.value
            x = self.pairs.clean[j:j + 1]
            sig = self.sigmas
            self._cache[key] = (estimate_smoothness(self.run.model, x, sig, 128, seed=self.seed),
                                estimate_smoothness(self.run.model, self.pairs.triggered[j:j + 1],
                                                    sig, 128, seed=self.seed))
        return self._cache[key]

    def update(self, _change=None):
        if self.dir1.value == self.dir2.value:
            self.message.value = "<span style='color:#D55E00'>choose two different directions</span>"
            return
        self.message.value = "computing…"
        self.landscapes = self._compute()
        fig = plots.landscape_pair(*self.landscapes, colour_by=self.colour.value,
                                   class_names=list(self.data.classes))
        rc, rt = self._curve()
        curve = plots.smoothness_curves(rc, rt, title="W<sub>σ</sub> against σ for this input")
        _replace(self.plane, fig)
        _replace(self.curve, curve)
        j = self.index.value
        lab = int(self.pairs.labels[j])
        self.message.value = (f"input {j}: true class {self.data.classes[lab]} · "
                              f"clean → {self.data.classes[int(self.landscapes[0].predicted[self.resolution // 2, self.resolution // 2])]}"
                              f" · triggered → {self.data.classes[int(self.landscapes[1].predicted[self.resolution // 2, self.resolution // 2])]}")
