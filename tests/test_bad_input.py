"""Generated bad-input battery (issue "Faults and bad input", items 8 and 9).

Modelled on scikit-learn's common parameter-validation tests: every public function and class
constructor of the library API has a table of its parameters, with a valid base call (tiny
tensors, `LinearK` on 1x4x4 images, the session's `digits` / `digits_run`), and bad values are
generated per parameter from its kind: wrong types (a str for a number, a list for a tensor, None
where not allowed, a bool for an int), values out of range (negative, zero where > 0 is needed,
huge), NaN and infinities, empty sequences and tensors, wrong shapes (3-D tensors, wrong channel
count or image size for the model), wrong dtypes (integer images, float labels), unknown names for
choices. Good numpy scalars (np.int64, np.float32) are generated too, and must be accepted.

Each bad value must be refused

* with ValueError (out of range) or TypeError (wrong type), never a torch, Key-, Attribute- or
  IndexError from deep inside;
* with a message naming the parameter in backticks and saying what is allowed ("must ...");
* before any work: the models are wrapped in a spy that records every forward pass (only the
  one-image shape probes of `sampling.check_model_input` may run), training and sweep points are
  replaced by functions that raise `WorkStarted` (a BaseException, so no `except Exception` in the
  library can swallow it), and every case runs in its own tmp_path (its working directory) whose
  files, saved runs and sweep tables included, must read back byte for byte unchanged.

How fast a refusal is (well under a second: none does any work) is measured by benchmarks, not
asserted here. Left out, on purpose: `estimate_smoothness(progress=)` (a display flag that
`smoothness._check_options` does not receive), and the result records (`SmoothnessResult`,
`ComparisonResult`, `PoisonedSet`, `TriggeredPairs`, `BackdoorRun`, `TrainConfig`, `Dataset`)
whose constructors the library calls itself; the data they carry is checked where it enters a
public function (`train_backdoor` checks `data.x_train`, ...).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench.base import sweepstore
import workbench as wb
from workbench import detection, experiments, landscape, patterns, poison, sweep, train, triggers
from workbench.triggers import Blend, Checkerboard, PatternPatch, Patch, Pixel, Sinusoid, Warp
from helpers import LinearK

NAN, INF = float("nan"), float("inf")


class WorkStarted(BaseException):
    """Raised by the spies when the work a check must come before begins."""


class Spy(nn.Module):
    """A model wrapper that records the number of images of every forward pass (and, where the
    case says so, stops the call after its first real forward: the values were taken)."""

    def __init__(self, inner: nn.Module, env: "Env"):
        super().__init__()
        self.inner = inner
        self.env = env

    def forward(self, x):
        self.env.forwards.append(len(x))
        out = self.inner(x)
        if self.env.stop_at_work and len(x) > 1:
            raise WorkStarted("a forward pass on a batch ran")
        return out


# --- tiny, deterministic inputs --------------------------------------------------------------

_G = torch.Generator().manual_seed(0)
X = torch.rand(4, 1, 4, 4, generator=_G)  # four 1x4x4 images
Y = torch.tensor([0, 1, 2, 1])  # their labels (3 classes)
X6 = torch.rand(6, 1, 4, 4, generator=_G)
Y6 = torch.tensor([0, 1, 2, 1, 2, 1])
_W3 = torch.randn(3, 16, generator=_G)


def tiny() -> nn.Module:
    """A 3-class linear model on 1x4x4 images: a Linear first layer taking 16 values."""
    return LinearK(_W3, torch.zeros(3))


@lru_cache(maxsize=None)
def result() -> wb.SmoothnessResult:
    return wb.estimate_smoothness(tiny(), X, [0.1, 0.2], 20)


@lru_cache(maxsize=None)
def land():
    return wb.landscape_2d(tiny(), X[0], ("random", "gradient"), resolution=3)


def sweep_rows() -> list[dict]:
    return [{"dataset": "digits", "trigger_type": "Patch", "trigger_size": 2, "rate": r,
             "attack_success_rate": a, "clean_accuracy": 0.9, "gap": 0.1, "gap_ci_low": 0.0,
             "gap_ci_high": 0.2} for r, a in ((0.0, 0.1), (0.05, 0.9))]


def dynamics_rows() -> list[dict]:
    return [{"epoch": e, "sigmas": np.array([0.1, 0.2]), "clean_curve": np.array([0.1, 0.3]),
             "triggered_curve": np.array([0.0, 0.1])} for e in (1, 2, 3)]


SMALL_GRID = dict(datasets=("digits",), trigger_types=("Patch",), trigger_sizes=(2,),
                  rates=(0.05,), targets=(0,), seeds=(0,), epochs=1, n_pairs=4, n_samples=16,
                  sigmas=(0.1, 0.2))


class Env:
    """What a case runs with: session data, spied models, its own tmp_path."""

    def __init__(self, digits, run, tmp: Path):
        self.digits, self.tmp = digits, tmp
        self.forwards: list[int] = []
        self.stop_at_work = False
        self.plain_run = dataclasses.replace(run)  # `save` records its path: not the session's
        self.run = dataclasses.replace(run, model=self.spy(run.model))

    def spy(self, model: nn.Module) -> Spy:
        return Spy(model, self)

    def model(self) -> Spy:
        return self.spy(tiny())

    def saved_run(self) -> Path:
        p = self.tmp / "saved-run"
        if not p.exists():
            self.plain_run.save(p)
        return p

    def sweep_csv(self) -> Path:
        p = self.tmp / "sweep.csv"
        if not p.exists():
            row = {c: "" for c in sweep.COLUMNS}
            row.update(key="0123456789ab", dataset="digits", rate=0.05)
            p.write_bytes(sweepstore.CSV_HEADER + sweepstore.csv_line(row))
        return p


@pytest.fixture
def env(digits, digits_run, tmp_path, monkeypatch):
    def no_training(*a, **k):
        raise WorkStarted("training started")

    def no_point(*a, **k):
        raise WorkStarted("a sweep point started")

    monkeypatch.setattr(train, "_train", no_training)
    monkeypatch.setattr(sweep, "run_point", no_point)
    monkeypatch.chdir(tmp_path)
    return Env(digits, digits_run, tmp_path)


# --- parameter kinds and their generated values ----------------------------------------------

GOOD = "accepted"
BOTH = (ValueError, TypeError)  # a value of another type for a choice: either is fine


@dataclasses.dataclass(frozen=True)
class Derive:
    """A value computed from the case's env and the parameter's base value."""

    fn: Callable[[Env, Any], Any]


@dataclasses.dataclass(frozen=True)
class Val:
    label: str
    value: Any
    expect: Any  # TypeError, ValueError, BOTH or GOOD
    match: str | None = None  # a regex the message must also match
    name: str | None = None  # the parameter the message names, when not the one changed


@dataclasses.dataclass
class P:
    name: str
    vals: list
    ctx: dict = dataclasses.field(default_factory=dict)  # base arguments changed for these cases


def _np_int(env, b):
    return np.int64(b)


def _np_float(env, b):
    return np.float32(b)


def int_p(name, low=None, high=None, *, none_ok=False, huge=None, good="base", ctx=None):
    v = [Val("str", "3", TypeError), Val("float", 2.5, TypeError), Val("bool", True, TypeError)]
    if not none_ok:
        v.append(Val("None", None, TypeError))
    if low is not None:
        v.append(Val(f"below-{low}", low - 1, ValueError))
    if high is not None:
        v.append(Val(f"above-{high}", high + 1, ValueError))
    if huge is not None:
        v.append(Val("huge", huge, ValueError))
    if good is not None:
        v.append(Val("np.int64", Derive(_np_int) if good == "base" else np.int64(good), GOOD))
    return P(name, v, ctx or {})


def float_p(name, low=None, high=None, low_open=False, high_open=False, *, none_ok=False,
            good="base", ctx=None):
    v = [Val("str", "0.5", TypeError), Val("bool", True, TypeError), Val("nan", NAN, ValueError),
         Val("inf", INF, ValueError), Val("-inf", -INF, ValueError)]
    if not none_ok:
        v.append(Val("None", None, TypeError))
    if low is not None:
        v.append(Val("below", float(low) if low_open else low - 1.0, ValueError))
    if high is not None:
        v.append(Val("above", float(high) if high_open else high + 1.0, ValueError))
    if good is not None:
        v.append(Val("np.float32", Derive(_np_float) if good == "base" else np.float32(good), GOOD))
    return P(name, v, ctx or {})


def seed_p(name="seed", generator=False, ctx=None):
    v = [Val("str", "0", TypeError), Val("float", 1.5, TypeError), Val("bool", True, TypeError),
         Val("None", None, TypeError), Val("negative", -1, ValueError),
         Val("2**64", 2**64, ValueError), Val("np.int64", np.int64(7), GOOD)]
    if generator:
        v.append(Val("generator", Derive(lambda e, b: torch.Generator().manual_seed(1)), GOOD))
    return P(name, v, ctx or {})


def choice_p(name, choices, *, none_ok=False, ctx=None):
    v = [Val("unknown", "nonsense", ValueError), Val("int", 3, BOTH)]
    if isinstance(choices[0], str) and choices[0].upper() != choices[0]:
        v.append(Val("upper-case", choices[0].upper(), ValueError))
    if not none_ok:
        v.append(Val("None", None, BOTH))
    return P(name, v, ctx or {})


def bool_p(name, *, none_ok=False, ctx=None):
    v = [Val("str", "yes", TypeError), Val("list", [True], TypeError)]
    if not none_ok:
        v.append(Val("None", None, TypeError))
    return P(name, v, ctx or {})


def _with(x, index, value):
    x = x.clone()
    x.view(-1)[index] = value
    return x


def images_p(name, *, model=True, empty_ok=False, ctx=None, empty_name=None):
    """(N, C, H, W) float images in [0, 1]; `model`: the spec's model fixes C, H and W."""
    v = [Val("list", Derive(lambda e, b: b.tolist()), TypeError),
         Val("ndarray", Derive(lambda e, b: b.numpy()), TypeError),
         Val("None", None, TypeError),
         Val("3-D", Derive(lambda e, b: b[0]), ValueError),
         Val("uint8", Derive(lambda e, b: (b * 255).to(torch.uint8)), TypeError),
         Val("nan", Derive(lambda e, b: _with(b, 3, NAN)), ValueError),
         Val("inf", Derive(lambda e, b: _with(b, 0, INF)), ValueError),
         Val("above-1", Derive(lambda e, b: b * 255), ValueError)]
    if not empty_ok:
        v.append(Val("empty", Derive(lambda e, b: b[:0]), ValueError, name=empty_name))
    if model:
        v += [Val("3-channels", Derive(lambda e, b: b.repeat(1, 3, 1, 1)), ValueError,
                  match=r"shape \(3, \d+, \d+\)|must have the shape"),
              Val("wrong-size", Derive(lambda e, b: F.pad(b, (0, 2, 0, 2))), ValueError,
                  match=r"shape \(1, \d+, \d+\)|must have the shape")]
    v.append(Val("float64", Derive(lambda e, b: b.double()), GOOD))
    return P(name, v, ctx or {})


def labels_p(name, ctx=None):
    return P(name, [
        Val("list", Derive(lambda e, b: b.tolist()), TypeError),
        Val("None", None, TypeError),
        Val("float32", Derive(lambda e, b: b.float()), TypeError),
        Val("float64", Derive(lambda e, b: b.double()), TypeError),
        Val("bool", Derive(lambda e, b: b > 0), TypeError),
        Val("short", Derive(lambda e, b: b[:-1]), ValueError),
        Val("2-D", Derive(lambda e, b: b[:, None]), ValueError),
        Val("negative", Derive(lambda e, b: _with(b, 1, -1)), ValueError),
        Val("int32", Derive(lambda e, b: b.to(torch.int32)), GOOD),
    ], ctx or {})


def sigmas_p(name="sigmas", *, none_ok=False, ctx=None):
    v = [Val("empty", [], ValueError), Val("str", "abc", TypeError),
         Val("digit-str", "1", TypeError), Val("scalar", 0.1, TypeError),
         Val("nan", [0.1, NAN], ValueError), Val("inf", [0.1, INF], ValueError),
         Val("negative", [-0.1, 0.1], ValueError), Val("decreasing", [0.2, 0.1], ValueError),
         Val("np.float32", [np.float32(0.1), np.float64(0.2)], GOOD),
         Val("ndarray", np.array([0.1, 0.2], dtype=np.float32), GOOD)]
    if not none_ok:
        v.append(Val("None", None, TypeError))
    return P(name, v, ctx or {})


def model_p(name="model", ctx=None):
    return P(name, [Val("str", "small-cnn", TypeError), Val("None", None, TypeError),
                    Val("function", lambda x: x, TypeError)], ctx or {})


def trigger_p(name="trigger", *, none_ok=False, ctx=None):
    v = [Val("str", "Patch", TypeError), Val("config", {"type": "Patch", "size": 2}, TypeError),
         Val("class", Patch, TypeError)]
    if not none_ok:
        v.append(Val("None", None, BOTH))
    return P(name, v, ctx or {})


def device_p(name="device", *, none_ok=True):
    cuda = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    v = [Val("unknown", "nonsense", ValueError, match="one of cpu"),
         Val("no-gpu", cuda, ValueError, match="one of cpu"),
         Val("int", 3, TypeError, match="one of cpu"),
         Val("torch.device", torch.device("cpu"), GOOD)]
    if not none_ok:
        v.append(Val("None", None, TypeError))
    return P(name, v)


def path_p(name="path", *, none_ok=False, ctx=None):
    v = [Val("int", 3, TypeError), Val("list", ["a"], TypeError)]
    if not none_ok:
        v.append(Val("None", None, TypeError))
    return P(name, v, ctx or {})


def scores_p(name, *, flattened=False):
    """One number per input; `flattened`: arrays of any shape are read flat (roc_analysis)."""
    return P(name, [Val("str", "abc", TypeError), Val("None", None, TypeError),
                    Val("scalar", 0.5, TypeError), Val("empty", [], ValueError),
                    Val("nan", [0.1, NAN, 0.3], ValueError), Val("inf", [0.1, INF, 0.3], ValueError),
                    Val("2-D", [[0.1, 0.2], [0.3, 0.4]], GOOD if flattened else ValueError),
                    Val("np.float32", np.array([0.1, 0.2, 0.3], dtype=np.float32), GOOD)])


def position_p(ctx=None):
    return P("position", [Val("unknown", "middle", ValueError), Val("int", 3, TypeError),
                          Val("None", None, TypeError), Val("negative", (-1, 0), ValueError),
                          Val("triple", (0, 0, 0), ValueError), Val("floats", (0.5, 1.0), TypeError),
                          Val("bools", (True, False), TypeError),
                          Val("np.int64", (np.int64(0), np.int64(1)), GOOD)], ctx or {})


def seq_p(name, items, *, good, none_ok=False, str_is_bad=True):
    """A tuple of values: generated bad container values, then each bad item in a 1-tuple."""
    v = [Val("scalar", 3.5, TypeError), Val("empty", (), ValueError)]
    if str_is_bad:
        v.append(Val("str", "digits", TypeError))
    if not none_ok:
        v.append(Val("None", None, TypeError))
    v += [Val(f"item-{lab}", (val,), exc) for lab, val, exc in items]
    v += [Val(f"good-{lab}", val, GOOD) for lab, val in good]
    return P(name, v)


# --- the specs: every public function and constructor, a valid base call, its parameters -----

@dataclasses.dataclass
class Spec:
    name: str
    fn: Callable  # the function or class tested (its signature gives the parameters' defaults)
    base: Callable[[Env], dict]  # a valid call's arguments
    params: list
    call: Callable[[Env, dict], Any] | None = None  # how to call it, when not fn(**kwargs)
    probes: int = 1  # one-image shape probes allowed before a refusal
    good: bool = True  # run the accepted cases (False: they would need kaleido)
    # accepted cases stop at the first forward pass on a batch (the checks are behind them; the
    # full computation is slow, and tested elsewhere)
    stop_at_work: bool = False

    def run(self, env: Env, kw: dict):
        return self.call(env, kw) if self.call is not None else self.fn(**kw)

    def default(self, name: str):
        p = inspect.signature(self.fn).parameters[name]
        assert p.default is not inspect.Parameter.empty, f"{self.name}: give `{name}` a base value"
        return p.default


LC = {"poisoning": "label-consistent"}
# one class only: an all-to-all attack (y -> (y + 1) mod K) means nothing on it
ONE_CLASS = wb.Dataset("one-class", torch.rand(8, 1, 8, 8, generator=_G),
                       torch.zeros(8, dtype=torch.int64), torch.rand(4, 1, 8, 8, generator=_G),
                       torch.zeros(4, dtype=torch.int64), ("only",))

TRAIN_PARAMS = [
    P("data", [Val("unknown", "nonsense", ValueError), Val("int", 3, TypeError),
               Val("None", None, TypeError), Val("upper-case", "DIGITS", ValueError)]),
    trigger_p(none_ok=True), float_p("rate", 0, 1), int_p("target", 0, 9),
    choice_p("model", wb.MODELS), int_p("epochs", 1, 10_000, none_ok=True, good="base"),
    seed_p(), int_p("batch_size", 1, none_ok=True, good=32),
    float_p("lr", 0, 10, low_open=True, none_ok=True, good=1e-3),
    float_p("weight_decay", 0, 10), int_p("max_train", 1, none_ok=True, good=100),
    # the attack atlas's poisoning and target modes (workbench.poison)
    choice_p("poisoning", poison.POISONING_MODES), choice_p("target_mode", poison.TARGET_MODES),
    float_p("epsilon", 0, 1, low_open=True, none_ok=True, good=0.1, ctx=LC),
    int_p("pgd_steps", 1, 1000, none_ok=True, good=5, ctx=LC),
    float_p("pgd_step_size", 0, 1, low_open=True, none_ok=True, good=0.01, ctx=LC),
    # digits' class 0 holds 133 of 1347 training images: a clean-label rate can be 0.0987 at most
    P("rate", [Val("clean-label-above-target-share", 0.2, ValueError, match=r"at most 0\.0987"),
               Val("clean-label-at-target-share", 0.0987, GOOD)], ctx={"poisoning": "clean-label"}),
    P("rate", [Val("label-consistent-above-target-share", 0.11, ValueError,
                   match=r"at most 0\.0987")], ctx=LC),
    P("epsilon", [Val("with-dirty-label", 0.1, ValueError, match="label-consistent")]),
    P("pgd_steps", [Val("with-clean-label", 5, ValueError, match="label-consistent")],
      ctx={"poisoning": "clean-label"}),
    P("target", [Val("all-to-all-not-0", 3, ValueError, match="all-to-all")],
      ctx={"target_mode": "all-to-all"}),
    P("target_mode", [Val("all-to-all-clean-label", "all-to-all", ValueError, match="dirty-label")],
      ctx={"poisoning": "clean-label"}),
    P("target_mode", [Val("all-to-all-one-class", "all-to-all", ValueError, match="2 classes")],
      ctx={"data": ONE_CLASS}),
]


def _train_base(env):
    return dict(data=env.digits, trigger=Patch(size=3), rate=0.05, target=0, epochs=1)


def _smoothness_base(env):
    return dict(model=env.model(), inputs=X, sigmas=[0.1, 0.2], n_samples=16)


def _compare_base(env):
    return dict(model=env.model(), clean=X, triggered=X.flip(-1), sigmas=[0.1, 0.2], n_samples=16)


def _patterns_base(env):
    return dict(model=env.model(), x_test=X6, y_test=Y6, target=0,
                patterns={"p": PatternPatch(torch.full((1, 2, 2), 0.5))}, sigmas=[0.1, 0.2],
                n_pairs=3, n_samples=16)


SPECS = [
    Spec("estimate_smoothness", wb.estimate_smoothness, _smoothness_base, [
        model_p(), images_p("inputs"), sigmas_p(),
        int_p("n_samples", 1, huge=10**12), choice_p("mode", ("hard", "soft")),
        choice_p("noise", ("gaussian", "uniform")),
        P("clip", [Val("str", "yes", TypeError), Val("strs", ("a", "b"), TypeError),
                   Val("scalar", 0.5, TypeError), Val("triple", (0.0, 0.5, 1.0), ValueError),
                   Val("nan", (0.0, NAN), ValueError), Val("reversed", (1.0, 0.0), ValueError),
                   Val("np", (np.float32(0), np.float64(1)), GOOD), Val("True", True, GOOD)]),
        bool_p("normalize"), seed_p(generator=True), int_p("batch_size", 1, none_ok=True, good=8),
        device_p(), choice_p("bias_correction", (None, "miller-madow", "jackknife"), none_ok=True),
        float_p("confidence", 0, 1, True, True),
        float_p("target_se", 0, None, True, none_ok=True, good=0.5),
        int_p("max_samples", 16, none_ok=True, good=32), bool_p("common_noise"),
        choice_p("precision", ("fp32", "bf16", "fp16")), bool_p("channels_last", none_ok=True),
        int_p("memory_budget", 1, good=2**24), int_p("max_forwards", 1, good=10**6),
    ]),
    Spec("compare_smoothness", wb.compare_smoothness, _compare_base, [
        model_p(), images_p("clean"), images_p("triggered", empty_name="triggered"),
        sigmas_p(), int_p("n_samples", 1, huge=10**12),
        choice_p("summary", ("mean", "radius", "certified")),
        float_p("threshold", 0, math.log(3), low_open=True, none_ok=True, good=0.5,
                ctx={"summary": "radius"}),
        float_p("confidence", 0, 1, True, True), seed_p(), bool_p("paired_noise"),
        choice_p("mode", ("hard", "soft")),
    ]),
    Spec("paired_gap", wb.paired_gap,
         lambda e: dict(clean_summary=[0.1, 0.2, 0.3], triggered_summary=[0.0, 0.1, 0.1],
                        summary="mean"), [
        scores_p("clean_summary"), scores_p("triggered_summary"),
        choice_p("summary", ("mean", "radius", "certified")),
        float_p("confidence", 0, 1, True, True),
    ]),
    Spec("train_backdoor", wb.train_backdoor,
         lambda e: {**_train_base(e), "cache": False, "progress": False}, TRAIN_PARAMS + [
        bool_p("cache"), device_p(), bool_p("progress"),
        P("callbacks", [Val("function", lambda epoch, model, entry: None, TypeError),
                        Val("str", "print", TypeError), Val("not-callable", ["x"], TypeError),
                        Val("tuple", (lambda epoch, model, entry: None,), GOOD)]),
    ]),
    Spec("is_cached", wb.is_cached, _train_base, TRAIN_PARAMS),
    Spec("load_run", wb.load_run, lambda e: dict(path=e.saved_run()),
         [path_p(), device_p()]),
    Spec("BackdoorRun.save", train.BackdoorRun.save,
         lambda e: dict(path=e.saved_run(), overwrite=True),
         [path_p(), bool_p("overwrite")], call=lambda e, kw: e.plain_run.save(**kw)),
    Spec("predict", wb.predict, lambda e: dict(model=e.model(), x=X),
         [model_p(), images_p("x"), int_p("batch_size", 1)]),
    Spec("clean_accuracy", wb.clean_accuracy,
         lambda e: dict(model=e.model(), x=X, y=Y), [model_p(), images_p("x"), labels_p("y")]),
    Spec("attack_success_rate", wb.attack_success_rate,
         lambda e: dict(model=e.model(), x=X, y=Y, trigger=Patch(size=2), target=0),
         [model_p(), images_p("x"), labels_p("y"), trigger_p(), int_p("target", 0, 2),
          choice_p("target_mode", poison.TARGET_MODES),
          P("target", [Val("with-all-to-all", 0, ValueError, match="None")],
            ctx={"target_mode": "all-to-all"})]),
    Spec("poison_dataset", wb.poison_dataset,
         lambda e: dict(x=X, y=Y, trigger=Patch(size=2), rate=0.25, target=0),
         [images_p("x", model=False), labels_p("y"), trigger_p(), float_p("rate", 0, 1),
          int_p("target", 0, 2), seed_p(generator=True),
          choice_p("poisoning", poison.POISONING_MODES),
          choice_p("target_mode", poison.TARGET_MODES),
          P("rate", [Val("clean-label-above-target-share", 0.5, ValueError, match="at most 0.25")],
            ctx={"poisoning": "clean-label"}),
          P("epsilon", [Val("with-dirty-label", 0.1, ValueError)]),
          P("model", [Val("None-label-consistent", None, TypeError)], ctx=LC),
          P("num_classes", [Val("None-all-to-all", None, ValueError),
                            Val("below-labels", 2, ValueError), Val("good", 4, GOOD)],
            ctx={"target_mode": "all-to-all", "target": None}),
          P("target", [Val("with-all-to-all", 0, ValueError, match="None")],
            ctx={"target_mode": "all-to-all", "num_classes": 3})]),
    Spec("triggered_pairs", wb.triggered_pairs,
         lambda e: dict(x_test=X, y_test=Y, trigger=Patch(size=2), target=0, n=2),
         [images_p("x_test", model=False), labels_p("y_test"), trigger_p(), int_p("target", 0, 2),
          int_p("n", 1, none_ok=True), seed_p(generator=True),
          choice_p("target_mode", poison.TARGET_MODES),
          P("num_classes", [Val("None-all-to-all", None, ValueError),
                            Val("below-labels", 2, ValueError), Val("good", 3, GOOD)],
            ctx={"target_mode": "all-to-all", "target": None})]),
    Spec("poison.adversarial_perturbation", poison.adversarial_perturbation,
         lambda e: dict(model=e.model(), x=X, y=Y, epsilon=0.1, steps=2),
         [model_p(), images_p("x"), labels_p("y"), float_p("epsilon", 0, 1, low_open=True),
          int_p("steps", 1, 1000), float_p("step_size", 0, 1, low_open=True, none_ok=True,
                                           good=0.01),
          seed_p(generator=True), int_p("batch_size", 1),
          P("y", [Val("above-classes", torch.tensor([0, 1, 3, 1]), ValueError)])],
         stop_at_work=True),
    Spec("build_model", wb.build_model,
         lambda e: dict(name="small-cnn", in_channels=1, num_classes=10, image_size=(16, 16)), [
        choice_p("name", wb.MODELS), int_p("in_channels", 1), int_p("num_classes", 2),
        P("image_size", [Val("int", 16, TypeError), Val("None", None, TypeError),
                         Val("str", "16x16", TypeError), Val("floats", (16.0, 16.0), TypeError),
                         Val("single", (16,), ValueError), Val("zero", (0, 16), ValueError),
                         Val("too-small", (2, 2), ValueError),
                         Val("np.int64", (np.int64(16), np.int64(16)), GOOD)]),
    ]),
    Spec("load_dataset", wb.load_dataset, lambda e: dict(name="digits"), [
        choice_p("name", wb.DATASETS), path_p("root", none_ok=True),
        P("download", [Val("str", "yes", TypeError), Val("list", [True], TypeError)]),
        int_p("max_train", 1, none_ok=True, good=100), int_p("max_test", 1, none_ok=True, good=50),
        bool_p("verify_checksums"),
    ]),
    Spec("default_sigmas", wb.default_sigmas, lambda e: dict(dataset="digits"),
         [P("dataset", [Val("unknown", "nonsense", ValueError), Val("int", 3, TypeError),
                        Val("None", None, TypeError)])]),
    Spec("smoothing_analysis", wb.smoothing_analysis,
         lambda e: dict(run=e.run, data=e.digits, sigmas=[0.1, 0.2], n_pairs=4, n_samples=16), [
        P("run", [Val("str", "run", TypeError), Val("None", None, TypeError),
                  Val("model", Derive(lambda e, b: e.run.model), TypeError)]),
        P("data", [Val("name", "digits", TypeError), Val("None", None, TypeError),
                   Val("run", Derive(lambda e, b: e.run), TypeError)]),
        sigmas_p(none_ok=True), int_p("n_pairs", 2), int_p("n_samples", 1, huge=10**12),
        seed_p(), choice_p("summary", ("mean", "radius", "certified")),
    ]),
    Spec("smoothing_dynamics", experiments.smoothing_dynamics,
         lambda e: dict(data=e.digits, epochs=1, sigmas=[0.1, 0.2], n_pairs=4, n_samples=16), [
        P("data", [Val("name", "digits", TypeError), Val("None", None, TypeError),
                   Val("int", 3, TypeError)]),
        trigger_p(none_ok=True), float_p("rate", 0, 1), int_p("target", 0, 9),
        int_p("epochs", 1, 10_000, none_ok=True), sigmas_p(none_ok=True), int_p("n_pairs", 2),
        int_p("n_samples", 1, huge=10**12), seed_p(), choice_p("model", wb.MODELS),
        bool_p("progress"),
    ]),
    Spec("strip_entropy", detection.strip_entropy,
         lambda e: dict(model=e.model(), inputs=X, clean_pool=X6, n_blend=4), [
        model_p(), images_p("inputs"), images_p("clean_pool"), int_p("n_blend", 1),
        seed_p(generator=True), int_p("batch_size", 1),
    ]),
    Spec("smoothness_score", detection.smoothness_score,
         lambda e: dict(model=e.model(), inputs=X, sigmas=[0.1, 0.2], n_samples=16), [
        model_p(), images_p("inputs"), sigmas_p(), int_p("n_samples", 1, huge=10**12),
        choice_p("summary", ("mean", "radius")), seed_p(generator=True),
    ]),
    Spec("compare_detectors", detection.compare_detectors,
         lambda e: dict(model=e.model(), clean=X, triggered=X.flip(-1), clean_pool=X6,
                        sigmas=[0.1, 0.2], n_samples=16, n_blend=4), [
        model_p(), images_p("clean"), images_p("triggered"), images_p("clean_pool"), sigmas_p(),
        int_p("n_samples", 1, huge=10**12), int_p("n_blend", 1), seed_p(),
    ], probes=3),
    Spec("roc_analysis", detection.roc_analysis,
         lambda e: dict(method="m", clean_scores=[0.1, 0.2, 0.3], triggered_scores=[0.5, 0.6, 0.2]), [
        P("method", [Val("int", 3, TypeError), Val("None", None, TypeError)]),
        scores_p("clean_scores", flattened=True), scores_p("triggered_scores", flattened=True),
    ]),
    Spec("landscape_2d", wb.landscape_2d,
         lambda e: dict(model=e.model(), x=X[0], directions=("trigger", "random"),
                        trigger=Patch(size=2), extent=1.0, resolution=3), [
        model_p(),
        P("x", [Val("list", X[0].tolist(), TypeError), Val("None", None, TypeError),
                Val("ndarray", X[0].numpy(), TypeError), Val("2-D", X[0, 0], ValueError),
                Val("batch-of-2", X[:2], ValueError), Val("uint8", (X[0] * 255).to(torch.uint8), TypeError),
                Val("nan", _with(X[0], 2, NAN), ValueError),
                Val("3-channels", X[0].repeat(3, 1, 1), ValueError, match=r"shape \(3, 4, 4\)"),
                Val("batch-of-1", X[:1], GOOD)]),
        P("directions", [Val("None", None, TypeError), Val("str", "ab", BOTH),
                         Val("int", 3, TypeError), Val("one", ("random",), ValueError),
                         Val("same-twice", ("random", "random"), ValueError),
                         Val("unknown", ("random", "nope"), ValueError),
                         Val("list", ["random", "gradient"], GOOD)]),
        P("trigger", [Val("str", "Patch", TypeError), Val("None", None, ValueError)],
          ctx={"directions": ("gradient", "trigger")}),
        float_p("extent", 0, None, True), int_p("resolution", 3, 201),
        float_p("sigma", 0, None, True, none_ok=True, good=0.1), int_p("n_samples", 1),
        seed_p(),
        P("clean", [Val("str", "x", TypeError), Val("list", X[1].tolist(), TypeError),
                    Val("wrong-shape", torch.rand(1, 5, 5), ValueError),
                    Val("nan", _with(X[1], 0, NAN), ValueError),
                    Val("uint8", (X[1] * 255).to(torch.uint8), TypeError),
                    Val("batch-of-1", X[1:2], GOOD)]),
    ]),
    Spec("direction", landscape.direction,
         lambda e: dict(model=e.model(), x=X[0], kind="random"), [
        model_p(ctx={"kind": "gradient"}),
        P("x", [Val("list", X[0].tolist(), TypeError), Val("None", None, TypeError),
                Val("4-D", X[:1], ValueError), Val("nan", _with(X[0], 2, NAN), ValueError),
                Val("uint8", (X[0] * 255).to(torch.uint8), TypeError)]),
        choice_p("kind", landscape.DIRECTIONS),
        P("trigger", [Val("str", "Patch", TypeError), Val("None", None, ValueError)],
          ctx={"kind": "trigger"}),
        seed_p(),
        P("clean", [Val("str", "x", TypeError), Val("wrong-shape", torch.rand(1, 5, 5), ValueError),
                    Val("nan", _with(X[1], 0, NAN), ValueError)],
          ctx={"kind": "trigger", "trigger": Patch(size=2)}),
    ]),
    Spec("universal_patch", patterns.universal_patch,
         lambda e: dict(model=e.model(), x_clean=X, y_clean=Y, target=0, size=2, steps=1), [
        model_p(), images_p("x_clean"), labels_p("y_clean"), int_p("target", 0, 2),
        int_p("size", 1, 4), position_p(), int_p("margin", 0, huge=100), int_p("steps", 1),
        float_p("lr", 0, None, True), int_p("batch_size", 1), seed_p(generator=True),
        bool_p("progress"),
    ]),
    Spec("random_patches", patterns.random_patches,
         lambda e: dict(n=2, size=2), [
        int_p("n", 1), int_p("size", 1), int_p("channels", 1), position_p(), int_p("margin", 0),
        seed_p(generator=True),
    ]),
    Spec("measure_patterns", patterns.measure_patterns, _patterns_base, [
        model_p(), images_p("x_test"), labels_p("y_test"), int_p("target", 0, 2),
        P("patterns", [Val("str", "p", TypeError), Val("None", None, TypeError),
                       Val("list", [Patch(size=2)], TypeError), Val("empty", {}, ValueError),
                       Val("not-a-trigger", {"p": "Patch"}, TypeError)]),
        sigmas_p(), int_p("n_pairs", 2), int_p("n_samples", 1, huge=10**12), seed_p(),
    ]),
    # triggers: constructors, the call, and configs
    *[Spec(cls.__name__, cls, lambda e: dict(size=2), [
        int_p("size", 1), position_p(),
        P("value", [Val("str", "1", TypeError), Val("None", None, TypeError),
                    Val("nan", NAN, ValueError), Val("above", 1.5, ValueError),
                    Val("empty", (), TypeError), Val("nan-item", (0.5, NAN), ValueError),
                    Val("str-item", ("a",), TypeError),
                    Val("np.float32", np.float32(0.5), GOOD),
                    Val("np-items", (np.float32(0.5), np.float64(1.0)), GOOD)]),
        int_p("margin", 0),
    ]) for cls in (Patch, Checkerboard)],
    Spec("Pixel", Pixel, lambda e: dict(), [position_p(), int_p("margin", 0)]),
    Spec("PatternPatch", PatternPatch,
         lambda e: dict(pattern=torch.full((1, 2, 2), 0.5)), [
        P("pattern", [Val("str", "x", TypeError), Val("None", None, TypeError),
                      Val("not-square", torch.rand(1, 2, 3), ValueError),
                      Val("2-D", torch.rand(2, 2), ValueError),
                      Val("nan", torch.full((1, 2, 2), NAN), ValueError),
                      Val("above-1", torch.full((1, 2, 2), 2.0), ValueError),
                      Val("list", [[[0.5, 0.5], [0.5, 0.5]]], GOOD)]),
        position_p(), int_p("margin", 0),
    ]),
    Spec("Blend", Blend, lambda e: dict(alpha=0.2), call=lambda e, kw: Blend(**kw)(X), params=[
        float_p("alpha", 0, 1, low_open=True), seed_p(),
        P("image", [Val("str", "x", TypeError), Val("4-D", torch.rand(1, 1, 4, 4), ValueError),
                    Val("nan", torch.full((4, 4), NAN), ValueError),
                    Val("above-1", torch.full((4, 4), 2.0), ValueError),
                    Val("2-D", torch.rand(4, 4), GOOD)]),
    ]),
    Spec("Sinusoid", Sinusoid, lambda e: dict(delta=0.1, frequency=6.0),
         [float_p("delta", 0, 1, low_open=True), float_p("frequency", 0, None, low_open=True)]),
    Spec("Warp", Warp, lambda e: dict(strength=0.5, grid=4),
         [float_p("strength", 0, None, low_open=True), int_p("grid", 2), seed_p()],
         call=lambda e, kw: Warp(**kw)(X)),
    Spec("Trigger.__call__", triggers.Trigger.__call__, lambda e: dict(images=X),
         [images_p("images", model=False, empty_ok=True)], call=lambda e, kw: Patch(size=2)(**kw)),
    Spec("trigger_from_config", triggers.trigger_from_config,
         lambda e: dict(config={"type": "Patch", "size": 2}), [
        P("config", [Val("str", "Patch", TypeError), Val("None", None, TypeError),
                     Val("no-type", {"size": 2}, TypeError),
                     Val("unknown-type", {"type": "Nope"}, ValueError, name="config['type']"),
                     Val("unknown-key", {"type": "Patch", "bogus": 1}, ValueError),
                     Val("bad-size", {"type": "Patch", "size": 0}, ValueError, name="size"),
                     Val("np.int64", {"type": "Patch", "size": np.int64(2)}, GOOD)]),
    ]),
    # sweeps
    Spec("SweepGrid", sweep.SweepGrid, lambda e: dict(SMALL_GRID),
         call=lambda e, kw: sweep.SweepGrid(**kw).points(), params=[
        seq_p("datasets", [("unknown", "imagenet", ValueError), ("int", 3, BOTH)],
              good=[("list", ["digits"])]),
        seq_p("trigger_types", [("unknown", "Nope", ValueError),
                                ("unsweepable", "PatternPatch", ValueError)],
              good=[("list", ["Patch"])]),
        seq_p("trigger_sizes", [("zero", 0, ValueError), ("float", 2.5, TypeError),
                                ("bool", True, TypeError), ("too-big", 100, ValueError)],
              good=[("np.int64", (np.int64(2),))]),
        seq_p("rates", [("nan", NAN, ValueError), ("above", 1.5, ValueError),
                        ("str", "0.1", TypeError)],
              good=[("np.float32", (np.float32(0.05),)), ("ndarray", np.array([0.05]))]),
        seq_p("targets", [("negative", -1, ValueError), ("not-a-class", 10, ValueError),
                          ("str", "0", TypeError), ("bool", True, TypeError)],
              good=[("np.int64", (np.int64(1),))]),
        seq_p("seeds", [("negative", -1, ValueError), ("2**64", 2**64, ValueError),
                        ("float", 1.5, TypeError)],
              good=[("np.int64", (np.int64(3),))]),
        choice_p("model", wb.MODELS), int_p("epochs", 1, none_ok=True),
        int_p("n_pairs", 2), int_p("n_samples", 1), sigmas_p(none_ok=True),
    ]),
    Spec("run_sweep", sweep.run_sweep,
         lambda e: dict(grid=sweep.SweepGrid(**SMALL_GRID), path=e.sweep_csv(), max_workers=1,
                        progress=False), [
        P("grid", [Val("str", "grid", TypeError), Val("None", None, TypeError),
                   Val("dict", dict(SMALL_GRID), TypeError)]),
        path_p(none_ok=True),
        P("executor", [Val("str", "local", TypeError), Val("int", 2, TypeError)]),
        int_p("max_workers", 1, none_ok=True), bool_p("resume"), bool_p("progress"),
    ]),
    Spec("read_table", sweep.read_table, lambda e: dict(path=e.sweep_csv()),
         [path_p()]),
    # results' methods that take values
    Spec("SmoothnessResult.smoothness_radius", wb.SmoothnessResult.smoothness_radius,
         lambda e: dict(), [float_p("threshold", 0, math.log(3), low_open=True, none_ok=True,
                                    good=0.5)],
         call=lambda e, kw: result().smoothness_radius(**kw)),
    Spec("SmoothnessResult.certified_radius", wb.SmoothnessResult.certified_radius,
         lambda e: dict(alpha=0.01), [float_p("alpha", 0, 1, True, True)],
         call=lambda e, kw: result().certified_radius(**kw)),
    Spec("SmoothnessResult.summary", wb.SmoothnessResult.summary,
         lambda e: dict(kind="mean"), [choice_p("kind", ("mean", "radius", "certified"))],
         call=lambda e, kw: result().summary(**kw)),
]


def _plot_specs():
    from workbench import plots

    return [
        Spec("plots.image_pairs", plots.image_pairs,
             lambda e: dict(clean=X, triggered=X.flip(-1), n=2), [int_p("n", 1)]),
        Spec("plots.smoothness_curves", plots.smoothness_curves,
             lambda e: dict(clean=result(), triggered=result()),
             [int_p("per_input", 0, good=2), float_p("confidence", 0, 1, True, True, good=0.9)]),
        Spec("plots.mean_band", plots.mean_band,
             lambda e: dict(values=result().entropy), [float_p("confidence", 0, 1, True, True,
                                                               good=0.9)]),
        Spec("plots.landscape_pair", plots.landscape_pair,
             lambda e: dict(clean_land=land(), triggered_land=land()),
             [choice_p("colour_by", ("class", "entropy"))]),
        Spec("plots.landscape_traces", plots.landscape_traces,
             lambda e: dict(land=land(), colour_by="class", k=3),
             [choice_p("colour_by", ("class", "entropy")), int_p("k", 2)]),
        Spec("plots.attack_strength", plots.attack_strength,
             lambda e: dict(table=sweep_rows()),
             [P("x", [Val("unknown", "nonsense", ValueError), Val("int", 3, BOTH),
                      Val("text-column", "dataset", ValueError), Val("rate", "rate", GOOD)])]),
        Spec("plots.dynamics_curves", plots.dynamics_curves,
             lambda e: dict(rows=dynamics_rows(), every=1), [int_p("every", 1)]),
        Spec("plots.save_png", plots.save_png,
             lambda e: dict(fig=plots.dynamics_curves(dynamics_rows()), path=e.tmp / "f.png"),
             [path_p(), float_p("scale", 0, None, True)], good=False),
    ]


def _widget_specs():
    from workbench import widgets

    return [
        Spec("widgets.TriggerDesigner", widgets.TriggerDesigner,
             lambda e: dict(data=e.digits, n_preview=2), [int_p("n_preview", 1)]),
        Spec("widgets.AttackPanel", widgets.AttackPanel,
             lambda e: dict(data=e.digits), [int_p("epochs", 0, 60, none_ok=True, good=3)]),
        Spec("widgets.SmoothnessExplorer", widgets.SmoothnessExplorer,
             lambda e: dict(run=e.run, data=e.digits, n_inputs=2, n_samples=16), [
            int_p("n_inputs", 2, 200),
            P("n_samples", [Val("str", "16", TypeError), Val("bool", True, TypeError),
                            Val("None", None, TypeError), Val("zero", 0, ValueError),
                            Val("not-offered", 100, ValueError), Val("np.int64", np.int64(16), GOOD)]),
            seed_p()], stop_at_work=True),
        Spec("widgets.LandscapeExplorer", widgets.LandscapeExplorer,
             lambda e: dict(run=e.run, data=e.digits, resolution=3, n_samples=4),
             [int_p("resolution", 3, 201), int_p("n_samples", 1), seed_p()], stop_at_work=True),
    ]


SPECS += _plot_specs() + _widget_specs()


# --- the cases ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    spec: Spec
    param: P | None
    val: Val

    @property
    def id(self) -> str:
        return f"{self.spec.name}-{self.param.name}-{self.val.label}" if self.param else \
            f"{self.spec.name}-base"

    def kwargs(self, env: Env) -> dict:
        kw = self.spec.base(env)
        if self.param is not None:
            kw.update(self.param.ctx)
            v = self.val.value
            if isinstance(v, Derive):
                name = self.param.name
                v = v.fn(env, kw[name] if name in kw else self.spec.default(name))
            kw[self.param.name] = v
        return kw


def _cases():
    for spec in SPECS:
        yield Case(spec, None, Val("base", None, GOOD))
        for p in spec.params:
            for v in p.vals:
                yield Case(spec, p, v)


ALL = list(_cases())
BAD = [c for c in ALL if c.val.expect is not GOOD]
ACCEPTED = [c for c in ALL if c.val.expect is GOOD and c.spec.good]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(root.rglob("*"))}


def test_the_battery_is_large_and_its_ids_unique():
    assert len(BAD) >= 150
    assert len({c.id for c in ALL}) == len(ALL)


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_bad_input_is_refused_up_front(case, env):
    kw = case.kwargs(env)
    before = _files(env.tmp)
    env.forwards.clear()
    try:
        case.spec.run(env, kw)
    except WorkStarted as exc:
        pytest.fail(f"accepted: {exc}")
    except BaseException as exc:  # noqa: BLE001 - the point is to look at what came out
        error = exc
    else:
        pytest.fail("accepted: no error")
    name = case.val.name or case.param.name
    msg = str(error)
    expect = case.val.expect if isinstance(case.val.expect, tuple) else (case.val.expect,)
    assert type(error) in expect or (isinstance(error, expect) and not isinstance(
        error, (KeyError, IndexError))), f"{type(error).__name__}: {msg}"
    assert f"`{name}`" in msg, f"the message does not name `{name}`: {msg}"
    assert re.search(r"\bmust\b|\btakes\b", msg), f"the message does not say what is allowed: {msg}"
    if case.val.match:
        assert re.search(case.val.match, msg), msg
    # before any work: at most the one-image shape probes ran, and nothing saved changed
    assert all(n == 1 for n in env.forwards) and len(env.forwards) <= case.spec.probes, \
        f"forward passes of {env.forwards} images ran before the refusal"
    assert _files(env.tmp) == before, "files under the working directory changed"


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda c: c.id)
def test_good_values_are_accepted(case, env):
    kw = case.kwargs(env)
    env.stop_at_work = case.spec.stop_at_work
    try:
        case.spec.run(env, kw)
    except WorkStarted:
        pass  # every check passed: the work they guard (training, a sweep point) was reached


# --- the issue's own examples, spelled out ------------------------------------------------------

def _est(model, x, **kw):
    return wb.estimate_smoothness(model, x, [0.1], 16, **kw)


@pytest.mark.parametrize("call, exc, match", [
    (lambda e: _est(e.run.model, torch.rand(2, 3, 16, 16)), ValueError,
     r"`inputs` has images of shape \(3, 16, 16\), which the model cannot take \(its first layer, "
     r"a Conv2d, takes 1-channel images"),
    (lambda e: _est(e.run.model, torch.rand(2, 1, 20, 20)), ValueError,
     r"`inputs` has images of shape \(1, 20, 20\), which the model cannot take"),
    (lambda e: _est(e.spy(nn.Flatten(0)), torch.rand(2, 1, 4, 4)), ValueError,
     r"`model` must map `inputs` \(N, C, H, W\) to logits of shape \(N, K\).*got output \(16,\)"),
    (lambda e: wb.predict(e.run.model, torch.rand(2, 3, 16, 16)), ValueError,
     r"`x` has images of shape \(3, 16, 16\).*takes 1-channel images"),
    (lambda e: wb.train_backdoor(e.digits, seed=2**64, progress=False), ValueError,
     r"`seed` must be an int in \[0, 9223372036854775806\]; got 18446744073709551616\."),
    (lambda e: wb.train_backdoor(e.digits, lr=INF, progress=False), ValueError,
     r"`lr` must be a float in \(0, 10\]; got inf\."),
    (lambda e: wb.train_backdoor(e.digits, callbacks=print, progress=False), TypeError,
     r"`callbacks` must be a list of callables"),
    (lambda e: _est(e.model(), X, device="nonsense"), ValueError,
     r"`device` must be a device of this machine, one of cpu.*; got 'nonsense'\."),
    (lambda e: _est(e.model(), X, device="cuda" if not torch.cuda.is_available() else "cuda:99"),
     ValueError, r"`device` must be a device of this machine, one of cpu"),
    (lambda e: wb.train_backdoor(e.digits, device="nonsense", progress=False), ValueError,
     r"`device` must be a device of this machine, one of cpu"),
    (lambda e: wb.estimate_smoothness(e.model(), X, [0.1, 0.2], 10**12), ValueError,
     r"`n_samples` asks for up to 8e\+12 noisy forward passes \(4 inputs × 2 σ × 1000000000000 "
     r"samples\), more than `max_forwards`"),
], ids=["channels", "image-size", "output-shape", "predict-channels", "seed-2**64", "lr-inf",
        "callbacks-function", "device-nonsense", "device-cuda", "train-device", "n_samples-1e12"])
def test_the_issues_examples(call, exc, match, env):
    with pytest.raises(exc, match=match):
        call(env)
    assert all(n == 1 for n in env.forwards) and len(env.forwards) <= 1


def test_compare_smoothness_accepts_a_numpy_seed(env):
    a = wb.compare_smoothness(tiny(), X, X.flip(-1), [0.1, 0.2], 16, seed=np.int64(0))
    b = wb.compare_smoothness(tiny(), X, X.flip(-1), [0.1, 0.2], 16, seed=0)
    assert a.gap == b.gap and np.array_equal(a.differences, b.differences)
