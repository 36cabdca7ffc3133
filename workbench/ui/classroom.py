"""The classroom app: the workbench's four panels on one page, in the order a lesson runs.

    Classroom(data)   -> one ipywidgets page: trigger, poison and train, smoothness, landscape

`notebooks/classroom.ipynb` shows it; `make app` serves that notebook with Voilà (no code on the
page, one kernel per visitor). Each step has a short explanation beside it (what to look at, what
to try next). Long work disables every control and says what it is doing until it finishes; a
configuration trained before (by anyone: runs are cached on disk by configuration) opens at once.
"""

from __future__ import annotations

import ipywidgets as W

from ..base.data import Dataset, load_dataset
from ..attacks.poison import POISONING_MODES  # noqa: F401  (re-exported: the page's poisoning modes)
from ..training.train import BackdoorRun, is_cached
from .widgets import (AttackPanel, LandscapeExplorer, LiveFigure, SmoothnessExplorer, TriggerDesigner,
                      descendants)


EXPLAIN = {
    "trigger": """
<h4>What to look at</h4>
<p>Top row: clean test images. Bottom row: the same images with the <b>trigger</b> stamped on.
The attacker will teach the model: <i>whenever you see this, answer the target class</i>.</p>
<h4>Try next</h4>
<ul><li>Make the patch smaller (size 1–2): is it still visible to you?</li>
<li>Switch to <b>Blend</b> with a small alpha, or <b>BPP</b> / <b>FTrojan</b>: almost invisible
triggers.</li>
<li><b>LowFrequency</b> and <b>TrojanNN</b> are optimised on a clean model: press <b>Craft</b>.</li>
<li>Predict: which trigger will the model learn most easily?</li></ul>""",
    "attack": """
<h4>What to look at</h4>
<p><b>Clean accuracy</b>: how good the model still is on normal images (the attack should not
hurt it). <b>Attack success rate</b> (ASR): the share of triggered images, from other classes,
that the model sends to the target. Right plot: where triggered images go.</p>
<p><b>Poisoning</b>: <b>dirty-label</b> images get the trigger <i>and</i> the target label;
<b>clean-label</b> only triggers images that already are of the target class (labels look
right); <b>label-consistent</b> first makes those images hard to learn (a small adversarial
change, size epsilon). <b>Target mode</b> <b>all-to-all</b>: every class y is sent to y + 1.</p>
<h4>Try next</h4>
<ul><li>Halve the poisoning rate and train again: does the ASR halve?</li>
<li>Switch to clean-label (read the note beside it), then to label-consistent: which one
learns the patch?</li>
<li>Change the target class: does anything else change?</li></ul>""",
    "smoothness": """
<h4>What to look at</h4>
<p>We add Gaussian noise of size σ to each input many times and measure how much the
predictions disagree (W<sub>σ</sub>, in nats; 0 = always the same answer). Orange: triggered
inputs; blue: the same images clean. A <b>lower orange curve</b> means the model is
<i>smoother</i> (more stable) around triggered inputs: <b>backdoor smoothing</b>.</p>
<p>The line above the plots gives the <b>smoothing gap</b> with its 95% interval and a paired
test (p-value).</p>
<h4>Try next</h4>
<ul><li>Move <b>largest σ</b>: where do the curves separate most?</li>
<li>Train with a weaker attack (step 2): does the gap shrink?</li></ul>""",
    "landscape": """
<h4>What to look at</h4>
<p>A slice of input space around <b>one</b> image: each pixel of the map is an image on the
plane through the input (×, "input") and its triggered twin, coloured by the predicted class.
Around the triggered twin the target class fills a wide region: the backdoor is a large,
flat basin.</p>
<h4>Try next</h4>
<ul><li>Pick other inputs with the <b>input</b> slider.</li>
<li>Colour by <b>local W<sub>σ</sub></b>: dark means stable (the <b>σ for W</b> slider, off
while colouring by class, sets its noise).</li>
<li>Use the <b>gradient</b> direction: the adversarial way out.</li></ul>""",
}

_BUSY_STYLE = "padding:4px 8px;border-radius:4px;background:#FFF3CD;color:#664D03"


def _fresh_figures(panel, *names):
    """Swap a panel's figure widgets for new ones holding their current data (updates sent to a
    figure before Voila's page connected never reach the browser)."""
    for name in names:
        old = getattr(panel, name)
        fresh = LiveFigure(old, owner=panel)
        panel.children = tuple(fresh if c is old else c for c in panel.children)
        setattr(panel, name, fresh)
        old.close()  # before the page connects: the browser never builds it


def _step(number: int, title: str, explain: str, body: W.Widget) -> W.VBox:
    head = W.HTML(f"<h3 style='margin:0.6em 0 0.2em'>{number}. {title}</h3>")
    note = W.HTML(explain, layout=W.Layout(width="27%", min_width="16em", padding="0 1em 0 0"))
    body.layout.width = "73%"
    box = W.VBox([head, W.HBox([note, body])])
    box.add_class(f"classroom-step-{number}")
    return box


class _Attack(AttackPanel):
    """The attack panel, with the page's busy state around training and the later steps."""

    def __init__(self, page: "Classroom", *args, **kw):
        self._page = page
        super().__init__(*args, **kw)

    def train(self) -> BackdoorRun | None:
        with self._page.busy("training the model (progress below)…"):
            run = super().train()
            if run is not None:
                if run.target_mode == "all-to-all":
                    self.result.value += " · backdoor targets: each class y → y + 1"
                else:
                    self.result.value += (f" · backdoor target class "
                                          f"<b>{self.data.classes[run.target]}</b>")
                self._page._trained(run)
        return run

    def _show(self, run: BackdoorRun):
        # A fresh figure view with the run's data: updates sent to a figure before the page had
        # drawn it (a cached run opened while Voila renders) would be lost in the browser.
        super()._show(run)
        if not self._page._shown:
            _fresh_figures(self, "confusion")


class _Designer(TriggerDesigner):
    """The trigger designer, with the page's busy state while a crafted trigger is optimised."""

    def __init__(self, page: "Classroom", *args, **kw):
        self._page = page
        super().__init__(*args, **kw)

    def craft(self):
        with self._page.busy("crafting the trigger on a clean model (progress in step 1)…"):
            return super().craft()


class _Smoothness(SmoothnessExplorer):
    def __init__(self, page: "Classroom", *args, **kw):
        self._page = page
        super().__init__(*args, **kw)

    def update(self, _change=None):
        with self._page.busy("computing the smoothness curves…", pause=False):
            super().update(_change)


class _Landscape(LandscapeExplorer):
    def __init__(self, page: "Classroom", *args, **kw):
        self._page = page
        super().__init__(*args, **kw)

    def update(self, _change=None):
        with self._page.busy("computing the landscape…", pause=False):
            super().update(_change)


class _Busy:
    def __init__(self, page: "Classroom", what: str, pause: bool):
        self.page, self.what, self.pause = page, what, pause

    def __enter__(self):
        p = self.page
        p._depth += 1
        if self.pause and not p._saved:
            p._saved = {}
            for w in descendants(p):
                if hasattr(w, "disabled") and not isinstance(w, W.IntProgress):
                    p._saved[w] = w.disabled
                    w.disabled = True
        paused = " The controls are paused until it finishes." if p._saved else ""
        p.status.value = f"<span style='{_BUSY_STYLE}'>⏳ {self.what}{paused}</span>"
        return self

    def __exit__(self, *exc):
        p = self.page
        p._depth -= 1
        if p._depth == 0:
            alive = {id(w) for w in descendants(p)}  # views replaced meanwhile are closed
            for w, was in p._saved.items():
                if id(w) in alive:
                    w.disabled = was
            p._saved = {}
            p.status.value = p._idle_text()
        return False


class Classroom(W.VBox):
    """The whole lesson on one page; `.run` is the current trained (or cached) run.

    Defaults stay small so that a page opens and trains in seconds on 2 CPU cores: digits, the
    dataset's default epochs (a configuration trained before opens from the cache), 12 input pairs
    with 32 noise samples for the curves, a 15×15 landscape."""

    def __init__(self, data: Dataset | None = None, n_inputs: int = 12, n_samples: int = 32,
                 resolution: int = 15, open_cached: bool = True):
        self.data = data or load_dataset("digits")
        self.n_inputs, self.n_samples, self.resolution = n_inputs, n_samples, resolution
        self._depth, self._saved, self._shown = 0, {}, False
        self.run: BackdoorRun | None = None
        self.smoothness: SmoothnessExplorer | None = None
        self.landscape: LandscapeExplorer | None = None
        self.status = W.HTML(layout=W.Layout(min_height="1.8em"))
        self.status.add_class("classroom-status")
        self.designer = _Designer(self, self.data)
        self.attack = _Attack(self, self.data, self.designer)
        self.attack.dataset.layout.display = "none"  # the lesson runs offline on the embedded digits
        self.mode = self.attack.poisoning  # the panel's poisoning mode (POISONING_MODES)
        waiting = "<i>Train a model in step 2 first.</i>"
        self._smooth_box = W.VBox([W.HTML(waiting)])
        self._land_box = W.VBox([W.HTML(waiting)])
        super().__init__([
            self.status,
            _step(1, "Design a trigger", EXPLAIN["trigger"], self.designer),
            _step(2, "Poison the training set and train", EXPLAIN["attack"], self.attack),
            _step(3, "Backdoor smoothing: clean vs triggered", EXPLAIN["smoothness"], self._smooth_box),
            _step(4, "A landscape around one input", EXPLAIN["landscape"], self._land_box),
        ])
        self.add_class("classroom")
        self.status.value = self._idle_text()
        if open_cached and is_cached(self.data, trigger=self.designer.trigger,
                                     **self.attack.settings()):
            self.attack.train()  # opens at once from the cache
        self._shown = True

    def busy(self, what: str, pause: bool = True) -> _Busy:
        """A context manager: a notice shown while the block runs and, with `pause` (training),
        every control disabled until the outermost block ends.

        Redraws (a slider moved) do not pause the controls: disabling a slider while the change
        it sent is being computed made the browser drop a second key press or show the handle at
        its old value beside the new readout; a second change now simply queues behind the first."""
        return _Busy(self, what, pause)

    def _idle_text(self) -> str:
        if self.run is None:
            return "Ready. Start with step 1, then press <b>Train</b> in step 2."
        return (f"Ready. Current model: attack success rate {self.run.attack_success_rate:.3f}, "
                f"clean accuracy {self.run.clean_accuracy:.3f}.")

    def _trained(self, run: BackdoorRun) -> None:
        """A new (or cached) run: point steps 3 and 4 at it (their figures update in place: new
        figure widgets created and updated at once after the page is drawn upset the browser)."""
        self.run = run
        if self.smoothness is not None:
            ex, lx = self.smoothness, self.landscape
            ex.run, lx.run = run, run
            lx.pairs = run.triggered_pairs(self.data.x_test, self.data.y_test, n=50, seed=lx.seed)
            lx.index.max = len(lx.pairs.clean) - 1
            ex._cache.clear()
            lx._cache.clear()
            ex.update()
            lx.update()
            return
        self.smoothness = _Smoothness(self, run, self.data, n_inputs=self.n_inputs,
                                      n_samples=self.n_samples)
        self._smooth_box.children = (self.smoothness,)
        self.landscape = _Landscape(self, run, self.data, resolution=self.resolution)
        self._land_box.children = (self.landscape,)
        if not self._shown:  # see _Attack._show: figures filled before the page drew them
            _fresh_figures(self.smoothness, "curves", "distribution")
            _fresh_figures(self.landscape, "plane", "curve")
