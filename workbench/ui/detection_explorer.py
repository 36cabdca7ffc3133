"""A panel over the detection study: pick an attack and detectors, see ROC curves and the table."""

from __future__ import annotations



import ipywidgets as W
import plotly.graph_objects as go

from ..reports.report import table_html as _table
from ..studies.detection import METHODS
from ..reports.detection_report import detection_roc
from ..studies.detection_study import (DETECTION_ATTACKS, DETECTION_MODEL, check_detection_args,
                                       detection_attack, detection_study)


def detection_explorer(dataset: str = "digits", n: int = 200, n_samples: int = 64, seed: int = 0,
                       methods=METHODS, study: tuple | None = None):
    """A panel to pick an attack and detectors: ROC curves and the table of AUC and TPRs with
    intervals. The attacks are the atlas's (DETECTION_ATTACKS). Each attack's study runs
    (training on first use) when it is first picked and is kept; `study`, a (run, results) pair of `detection_study` with these settings, is reused for
    its attack. Returns an ipywidgets VBox."""
    methods = check_detection_args(dataset, DETECTION_ATTACKS, n, seed, n_samples, methods,
                                    DETECTION_MODEL, 1000)
    cache: dict = {}
    start = "Patch"
    if study is not None and detection_attack(study[0]) in DETECTION_ATTACKS:
        start = detection_attack(study[0])
        cache[start] = study
    attack = W.Dropdown(options=DETECTION_ATTACKS, value=start, description="attack")
    chosen = W.SelectMultiple(options=methods, value=tuple(methods), rows=len(methods),
                              description="detectors")
    status, table = W.HTML(), W.HTML()
    fig = go.FigureWidget()

    def update(*_):
        a = attack.value
        if a not in cache:
            status.value = f"<i>{a}: loading or training its model, running the detectors…</i>"
            cache[a] = detection_study(dataset, n, seed, n_samples, attack=a, methods=methods)
        run, results = cache[a]
        picked = [r for r in results if r.method in chosen.value]
        new = detection_roc(picked, title=f"{dataset} · {a}")
        with fig.batch_update():
            fig.data = []
            fig.add_traces(list(new.data))
            fig.layout = new.layout
        table.value = _table([r.row() | {"detector": r.label} for r in picked])
        status.value = (f"{run.trigger!r}, rate {run.config['rate']}, clean accuracy "
                        f"{run.clean_accuracy:.3f}, ASR {run.attack_success_rate:.3f}; {n} clean "
                        f"vs {n} triggered inputs")

    attack.observe(update, "value")
    chosen.observe(update, "value")
    update()
    return W.VBox([W.HBox([attack, chosen]), status, fig, table])
