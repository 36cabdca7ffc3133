"""No silent wrong answer: non-finite pixels, unchecked choices and borrowed models.

Each test here failed on the code before the "Trustworthy results" issue (the issue's items 3, 7
and 9): NaN pixels gave W = 0 ("perfectly smooth"), unknown choices were silently read as
something else, and library calls left the caller's model changed.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

import workbench as wb
from workbench.detection import compare_detectors, smoothness_score, strip_entropy
from workbench.models import preserve_model
from workbench.patterns import measure_patterns, universal_patch
from helpers import Constant


def _nan_images(n=4, shape=(1, 16, 16)):
    x = torch.rand(n, *shape)
    x[1, 0, 3, 3] = float("nan")
    return x


@pytest.fixture(scope="module")
def nan_x():
    return _nan_images()


@pytest.mark.parametrize("call", [
    lambda m, x, ok: wb.estimate_smoothness(m, x, [0.1], 16),
    lambda m, x, ok: wb.compare_smoothness(m, x, ok, [0.1], 16),
    lambda m, x, ok: wb.compare_smoothness(m, ok, x, [0.1], 16),
    lambda m, x, ok: wb.landscape_2d(m, x[1], ("random", "gradient")),
    lambda m, x, ok: strip_entropy(m, x, ok),
    lambda m, x, ok: strip_entropy(m, ok, x),
    lambda m, x, ok: smoothness_score(m, x, [0.1], 16),
    lambda m, x, ok: compare_detectors(m, ok, x, ok, [0.1], 16),
    lambda m, x, ok: wb.predict(m, x),
    lambda m, x, ok: wb.triggered_pairs(x, torch.arange(4) % 2, wb.triggers.Patch(size=2), 0),
    lambda m, x, ok: universal_patch(m, x, torch.arange(4) % 2, target=0, steps=1),
], ids=["estimate", "compare-clean", "compare-triggered", "landscape", "strip-inputs",
        "strip-pool", "score", "detectors", "predict", "pairs", "universal-patch"])
def test_non_finite_pixels_are_refused(call, nan_x, digits_run):
    with pytest.raises(ValueError, match=r"must hold finite values"):
        call(digits_run.model, nan_x, torch.rand(4, 1, 16, 16))


def test_estimate_refuses_nan_logits():
    class NaNModel(nn.Module):
        def forward(self, x):
            return torch.full((len(x), 3), float("nan"))

    with pytest.raises(FloatingPointError, match="NaN or infinite logits"):
        wb.estimate_smoothness(NaNModel(), torch.rand(2, 1, 4, 4), [0.1], 16)


class _Counting(Constant):
    """Counts forward passes: "before any work" means none ran."""

    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


@pytest.mark.parametrize("call, match", [
    (lambda: wb.paired_gap([1.0, 2.0], [0.5, 1.0], "Mean"), "`summary` must be one of"),
    (lambda: wb.paired_gap([], [], "mean"), "at least 2 pairs"),
    (lambda: wb.paired_gap([1.0], [0.0], "mean"), "at least 2 pairs"),
    (lambda: wb.paired_gap([1.0, np.nan], [0.0, 0.0], "mean"), "finite"),
    (lambda: wb.default_sigmas("nope"), "`dataset` must be one of"),
    (lambda: wb.triggered_pairs(torch.rand(6, 1, 8, 8), torch.arange(6) % 3,
                                wb.triggers.Patch(size=2), target=99), r"`target` must be an int in \[0, 2\]"),
    (lambda: wb.compare_smoothness(_Counting([0.0, 1.0]), torch.rand(4, 1, 4, 4),
                                   torch.rand(4, 1, 4, 4), [0.1], 16, summary="certified",
                                   mode="soft"), "'certified' needs mode='hard'"),
    (lambda: wb.compare_smoothness(_Counting([0.0, 1.0]), torch.rand(4, 1, 4, 4),
                                   torch.rand(4, 1, 4, 4), [0.1], 16, summary="mean",
                                   threshold=0.2), "`threshold` applies to summary='radius'"),
    (lambda: wb.compare_smoothness(_Counting([0.0, 1.0]), torch.rand(4, 1, 4, 4),
                                   torch.rand(4, 1, 4, 4), [0.1], 16, summary="radius",
                                   threshold=2.0), r"`threshold` must be a float in \(0, 0.69"),
    (lambda: wb.compare_smoothness(_Counting([0.0, 1.0]), torch.rand(1, 1, 4, 4),
                                   torch.rand(1, 1, 4, 4), [0.1], 16), "at least 2 pairs"),
    (lambda: wb.compare_smoothness(_Counting([0.0, 1.0]), torch.rand(0, 1, 4, 4),
                                   torch.rand(0, 1, 4, 4), [0.1], 16), "at least 2 pairs"),
    (lambda: wb.estimate_smoothness(_Counting([0.0, 1.0]), torch.rand(2, 1, 4, 4), [0.1], 4,
                                    mode="soft"), r"`n_samples` must be >= 10"),
])
def test_unchecked_choices_fail_fast(call, match):
    _Counting.calls = 0
    with pytest.raises((ValueError, TypeError), match=match):
        call()
    assert _Counting.calls <= 1  # at most the one-image shape probe: no estimation ran


def test_compare_smoothness_accepts_numpy_seeds(digits_run, digits):
    x = digits.x_test[:4]
    a = wb.compare_smoothness(digits_run.model, x, x.flip(-1), [0.1, 0.3], 32, seed=np.int64(3))
    b = wb.compare_smoothness(digits_run.model, x, x.flip(-1), [0.1, 0.3], 32, seed=3)
    assert a.gap == b.gap


def test_wrong_input_shapes_name_the_parameter(digits_run):
    with pytest.raises(ValueError, match=r"`inputs` has images of shape \(3, 16, 16\).*1-channel"):
        wb.estimate_smoothness(digits_run.model, torch.rand(2, 3, 16, 16), [0.1], 16)
    with pytest.raises(ValueError, match=r"`inputs` has images of shape \(1, 20, 20\)"):
        wb.estimate_smoothness(digits_run.model, torch.rand(2, 1, 20, 20), [0.1], 16)

    class Flat(nn.Module):
        def forward(self, x):
            return x.flatten()

    with pytest.raises(ValueError, match=r"logits of shape \(N, K\)"):
        wb.estimate_smoothness(Flat(), torch.rand(2, 1, 4, 4), [0.1], 16)


# --- borrowed models come back unchanged ----------------------------------------------------------

def _snapshot(model: nn.Module) -> dict:
    return {"modes": [m.training for m in model.modules()],
            "grad": [p.requires_grad for p in model.parameters()],
            "device": {str(p.device) for p in model.parameters()},
            "contiguous": [p.is_contiguous() for p in model.parameters()],
            "values": [p.detach().clone() for p in model.parameters()]}


def _same(a: dict, b: dict) -> bool:
    return (a["modes"] == b["modes"] and a["grad"] == b["grad"] and a["device"] == b["device"]
            and a["contiguous"] == b["contiguous"]
            and all(torch.equal(x, y) for x, y in zip(a["values"], b["values"])))


@pytest.mark.parametrize("call", [
    lambda m, d: wb.estimate_smoothness(m, d.x_test[:3], [0.1], 16, device="cpu",
                                        channels_last=True),
    lambda m, d: wb.compare_smoothness(m, d.x_test[:3], d.x_test[3:6], [0.1], 16),
    lambda m, d: wb.landscape_2d(m, d.x_test[0], ("gradient", "random"), resolution=5,
                                 sigma=0.1, n_samples=8),
    lambda m, d: strip_entropy(m, d.x_test[:3], d.x_test[10:20], n_blend=4),
    lambda m, d: compare_detectors(m, d.x_test[:3], d.x_test[3:6], d.x_test[10:20], [0.1], 8, 4),
    lambda m, d: universal_patch(m, d.x_train[:64], d.y_train[:64], target=0, steps=2),
    lambda m, d: measure_patterns(m, d.x_test, d.y_test, 0, {"w": wb.triggers.Patch(size=3)},
                                  [0.1], n_pairs=3, n_samples=8),
    lambda m, d: wb.predict(m, d.x_test[:5]),
    lambda m, d: wb.attack_success_rate(m, d.x_test[:20], d.y_test[:20],
                                        wb.triggers.Patch(size=3), 0),
], ids=["estimate", "compare", "landscape", "strip", "detectors", "universal-patch",
        "measure-patterns", "predict", "asr"])
def test_public_functions_give_the_model_back_unchanged(call, digits, digits_run):
    model = wb.build_model("small-cnn", 1, 10, (16, 16))
    model.load_state_dict(digits_run.model.state_dict())
    model.train()  # a caller's model in train mode, every parameter trainable
    model.head[1].eval()  # and one submodule in another mode than its parent
    before = _snapshot(model)
    call(model, digits)
    assert _same(before, _snapshot(model))


def test_preserve_model_restores_what_the_block_changed():
    m = wb.build_model("small-cnn", 1, 10, (16, 16)).train()
    before = _snapshot(m)
    with pytest.raises(RuntimeError, match="boom"):
        with preserve_model(m, requires_grad=False):
            assert not m.training and not any(p.requires_grad for p in m.parameters())
            m.to(memory_format=torch.channels_last).double()
            raise RuntimeError("boom")
    after = _snapshot(m)
    assert _same(before, after) and all(p.dtype == torch.float32 for p in m.parameters())


def test_mean_gap_is_bounded_by_log_k(digits_run, digits):
    pairs = wb.triggered_pairs(digits.x_test, digits.y_test, digits_run.trigger, 0, n=10, seed=0)
    cmp = wb.compare_smoothness(digits_run.model, pairs.clean, pairs.triggered, [0.2, 0.6], 32)
    assert (np.abs(cmp.differences) <= math.log(10) + 1e-12).all()


def test_preserve_model_gives_back_gradients_after_a_move():
    m = wb.build_model("small-cnn", 1, 10, (16, 16)).train()
    m(torch.rand(2, 1, 16, 16)).sum().backward()
    grads = [p.grad.clone() for p in m.parameters()]
    strides = [p.grad.stride() for p in m.parameters()]
    with preserve_model(m):
        m.double().to(memory_format=torch.channels_last)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in m.parameters())
    assert [p.grad.stride() for p in m.parameters()] == strides
    assert all(torch.equal(p.grad, g) for p, g in zip(m.parameters(), grads)) and m.training
    wb.estimate_smoothness(m, torch.rand(2, 1, 16, 16), [0.1], 16, channels_last=True)
    assert [p.grad.stride() for p in m.parameters()] == strides


def test_nan_logits_are_refused_wherever_predictions_are_made(digits):
    class NaNModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.full((len(x), 10), float("nan")) + self.w

    m, x = NaNModel(), digits.x_test[:20]
    for call in (lambda: wb.predict(m, x), lambda: wb.clean_accuracy(m, x, digits.y_test[:20]),
                 lambda: wb.attack_success_rate(m, x, digits.y_test[:20], wb.triggers.Patch(size=3), 0),
                 lambda: wb.landscape_2d(m, x[0], ("random", "gradient"))):
        with pytest.raises(FloatingPointError, match="NaN or infinite logits"):
            call()


def test_diverged_training_is_refused_not_cached(digits, monkeypatch):
    class Exploding(torch.optim.Adam):  # fault injection: an update that overflows
        def step(self, closure=None):
            super().step(closure)
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.mul_(float("inf"))

    monkeypatch.setattr(wb.train.torch.optim, "Adam", Exploding)
    kw = dict(trigger=wb.triggers.Patch(size=2), rate=0.1, epochs=1, max_train=200, seed=1)
    with pytest.raises(FloatingPointError, match="Training diverged.*epoch 1"):
        wb.train_backdoor(digits, progress=False, **kw)
    monkeypatch.undo()
    assert not wb.is_cached(digits, **kw)


def test_training_with_callbacks_fills_the_cache(digits):
    seen = []
    kw = dict(trigger=wb.triggers.Patch(size=2), rate=0.1, target=2, epochs=1, max_train=200, seed=9)
    run = wb.train_backdoor(digits, progress=False, callbacks=[lambda e, m, entry: seen.append(e)],
                            **kw)
    assert seen == [1] and wb.is_cached(digits, **kw)
    assert wb.train_backdoor(digits, progress=False, **kw).train_seconds == run.train_seconds


def test_analysis_refuses_data_the_run_was_not_trained_on(digits_run):
    other = wb.load_dataset("digits", max_test=200)  # another test split: other content
    with pytest.raises(ValueError, match="`data` must be the dataset the run was trained on"):
        wb.smoothing_analysis(digits_run, other, n_pairs=4, n_samples=8)


def test_certified_radius_pays_for_adaptive_stopping(digits_run, digits):
    x = digits.x_test[:4]
    fixed = wb.estimate_smoothness(digits_run.model, x, [0.1, 0.3], 64, seed=0)
    adaptive = wb.estimate_smoothness(digits_run.model, x, [0.1, 0.3], 64, seed=0,
                                      target_se=1e-9, max_samples=256)
    assert (adaptive.n_samples == 256).all()  # every cell went to the end: 3 possible stops
    # the same votes as a fixed run of 256, bounded at alpha / 3
    ref = wb.estimate_smoothness(digits_run.model, x, [0.1, 0.3], 256, seed=0)
    assert np.allclose(adaptive.certified_radius(0.003), ref.certified_radius(0.001))
    assert fixed.settings["target_se"] is None


def test_statistics_refuse_non_finite_values():
    from workbench.stats import spearman_ci, t_interval

    with pytest.raises(ValueError, match="`d` must hold finite values"):
        t_interval([1.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match="`y` must hold finite values"):
        spearman_ci([1, 2, 3, 4], [1, 2, float("inf"), 4])
