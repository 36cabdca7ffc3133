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


@pytest.mark.parametrize("common", [True, False], ids=["common-noise", "own-noise"])
def test_the_maps_centre_is_the_curves_w(digits_run, digits, common):
    """Issue 18: the landscape's local W_σ used clipped noise where every curve, sweep and score
    uses unclipped noise (at σ 0.4 the centre read 0.66 where the curve read 0.89). The centre of
    the map is now estimate_smoothness of the same input at the same σ, n and seed, to the bit,
    with its standard error and interval."""
    model, trigger = digits_run.model, digits_run.trigger
    pairs = wb.triggered_pairs(digits.x_test, digits.y_test, trigger, 0, n=3, seed=0)
    inputs = [(pairs.clean[j], None) for j in range(3)] + [(pairs.triggered[0], pairs.clean[0])]
    lands = [wb.landscape_2d(model, x, ("trigger", "random"), trigger, extent=3.0, resolution=5,
                             sigma=0.4, n_samples=64, seed=0, clean=clean, common_noise=common)
             for x, clean in inputs]
    curves = [wb.estimate_smoothness(model, x[None], [0.4], 64, seed=0) for x, _ in inputs]
    assert [land.entropy[2, 2] for land in lands] == [r.entropy[0, 0] for r in curves]
    for land, r in zip(lands, curves):
        assert land.entropy_se[2, 2] == r.entropy_se[0, 0]
        assert (land.ci_low[2, 2], land.ci_high[2, 2]) == (r.ci_low[0, 0], r.ci_high[0, 0])
    assert land.settings["estimator"]["clip"] is None
    assert land.settings["estimator"]["common_inputs"] is common


def test_local_w_carries_its_uncertainty():
    """Every point's W_σ comes with its standard error and confidence interval (those of the
    estimator); a point whose votes all fell in one class has SE 0 but a one-sided interval."""
    model = Linear2(torch.ones(1, 2, 2), b=-2.0)
    land = wb.landscape_2d(model, torch.full((1, 2, 2), 0.5), ("random", "gradient"), extent=2.0,
                           resolution=7, sigma=0.3, n_samples=64)
    for a in (land.entropy_se, land.ci_low, land.ci_high):
        assert a.shape == (7, 7) and np.isfinite(a).all()
    assert (land.ci_low <= land.entropy + 1e-12).all() and (land.entropy <= land.ci_high + 1e-12).all()
    assert (land.entropy_se > 0).any() and (land.ci_high > 0).all()
    assert land.settings["confidence"] == 0.95
    plain = wb.landscape_2d(model, torch.full((1, 2, 2), 0.5), ("random", "gradient"), resolution=3)
    assert plain.entropy is None and plain.entropy_se is None and plain.ci_low is None


@pytest.mark.parametrize("extent", [0.3, 0.7, 2.9, 9.75])
def test_the_grid_is_symmetric_with_the_input_at_its_centre(extent):
    """torch.linspace(-0.3, 0.3, 13)'s middle value is 7e-9, not 0: the map's centre was not
    exactly the input. The grid is now exactly symmetric, 0 in the middle of an odd resolution."""
    model = Linear2(torch.ones(1, 2, 2), 0.0)
    for r in (5, 13, 31):
        land = wb.landscape_2d(model, torch.rand(1, 2, 2), ("random", "gradient"), extent=extent,
                               resolution=r)
        assert land.alphas[r // 2] == 0 and (land.alphas == -land.alphas[::-1]).all()
        assert land.alphas[0] == -extent and land.alphas[-1] == extent


def test_landscape_leaves_the_callers_inputs_alone(digits_run, digits):
    pairs = wb.triggered_pairs(digits.x_test, digits.y_test, digits_run.trigger, 0, n=1, seed=0)
    clean, trig = pairs.clean[0].clone(), pairs.triggered[0].clone()
    c0, t0 = clean.clone(), trig.clone()
    wb.landscape_2d(digits_run.model, trig, ("trigger", "gradient"), digits_run.trigger,
                    resolution=3, sigma=0.2, n_samples=16, clean=clean)
    assert torch.equal(clean, c0) and torch.equal(trig, t0)


def test_too_much_work_is_refused_before_any():
    model = Linear2(torch.ones(1, 2, 2), 0.0)
    with pytest.raises(ValueError, match="noisy forward passes.*201² grid points"):
        wb.landscape_2d(model, torch.rand(1, 2, 2), ("random", "gradient"), resolution=201,
                        sigma=0.1, n_samples=10**5)
