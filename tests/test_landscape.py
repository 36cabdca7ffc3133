import numpy as np
import pytest
import torch

import workbench as wb
from helpers import Linear2


def test_landscape_of_a_linear_model_is_a_half_plane():
    w = torch.zeros(1, 4, 4)
    w[0, 0, 0] = 1.0
    model = Linear2(w, b=-0.5)  # class 1 iff pixel (0, 0) > 0.5
    x = torch.full((1, 4, 4), 0.25)
    land = wb.landscape_2d(model, x, directions=("gradient", "random"), extent=0.5, resolution=11)
    assert land.predicted.shape == (11, 11) and land.predicted[5, 5] == 0
    # along the gradient direction (pixel (0, 0)), the class flips where a > 0.25 (or a < -0.25)
    flips = land.predicted[5] != 0
    assert flips.any() and not flips[5]


def test_trigger_plane_holds_the_triggered_twin(digits_run, digits):
    pairs = wb.triggered_pairs(digits.x_test, digits.y_test, digits_run.trigger, 0, n=3, seed=0)
    clean, trig = pairs.clean[0], pairs.triggered[0]
    lc = wb.landscape_2d(digits_run.model, clean, ("trigger", "random"), digits_run.trigger,
                         extent=4.0, resolution=17, sigma=0.3, n_samples=16)
    lt = wb.landscape_2d(digits_run.model, trig, ("trigger", "random"), digits_run.trigger,
                         extent=4.0, resolution=17, clean=clean)
    a, b = lc.markers["triggered twin"]
    assert a == pytest.approx(float((trig - clean).norm()), rel=1e-5) and b == pytest.approx(0, abs=1e-5)
    assert lt.markers["clean twin"][0] == pytest.approx(-a, rel=1e-5)
    assert lt.predicted[8, 8] == 0  # the triggered centre is sent to the target
    assert lc.entropy.shape == (17, 17) and (lc.entropy >= 0).all()


def test_bad_directions():
    model = Linear2(torch.ones(1, 2, 2), 0.0)
    with pytest.raises(ValueError, match="`directions` must be two different"):
        wb.landscape_2d(model, torch.rand(1, 2, 2), ("random", "random"))
    with pytest.raises(ValueError, match="`trigger` must be given"):
        wb.landscape_2d(model, torch.rand(1, 2, 2), ("trigger", "random"))


def test_local_w_uses_common_noise_across_the_grid(digits_run, digits):
    """Every grid point sees the same draws: neighbouring points differ by the model, not by the
    dice. The map is far less rough than with independent draws at the same samples."""
    x = digits.x_test[0]
    kw = dict(directions=("trigger", "random"), trigger=digits_run.trigger, extent=3.0,
              resolution=13, sigma=0.3, n_samples=16)
    common = wb.landscape_2d(digits_run.model, x, **kw)
    own = wb.landscape_2d(digits_run.model, x, common_noise=False, **kw)
    assert common.settings["common_noise"] and not own.settings["common_noise"]

    def rough(m):
        return np.concatenate([np.abs(np.diff(m, axis=0)).ravel(), np.abs(np.diff(m, axis=1)).ravel()]).mean()

    assert rough(common.entropy) < 0.5 * rough(own.entropy)
    # the same draws everywhere: identical points get identical local W
    model = Linear2(torch.ones(1, 2, 2), b=-2.0)
    flat = wb.landscape_2d(model, torch.full((1, 2, 2), 0.5), ("random", "gradient"), extent=1e-6,
                           resolution=3, sigma=0.5, n_samples=64)
    assert np.ptp(flat.entropy) < 1e-9
    with pytest.raises(TypeError, match="`common_noise` must be a bool"):
        wb.landscape_2d(model, torch.full((1, 2, 2), 0.5), ("random", "gradient"), common_noise=1)
