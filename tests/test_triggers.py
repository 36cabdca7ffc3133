import pytest
import torch

import workbench as wb
from workbench.triggers import (Blend, Checkerboard, Patch, Pixel, Sinusoid, Warp,
                                trigger_from_config)

ALL = [Patch(size=3), Checkerboard(size=4, position="top-left"), Pixel(position=(2, 5)),
       Blend(alpha=0.2, seed=1), Sinusoid(), Warp(strength=1.0, seed=2)]


@pytest.mark.parametrize("trigger", ALL, ids=repr)
@pytest.mark.parametrize("shape", [(5, 1, 16, 16), (3, 3, 32, 32)])
def test_shape_range_determinism_and_config(trigger, shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    y = trigger(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1
    assert not torch.equal(y, x)
    assert torch.equal(trigger(x), y)  # deterministic
    again = trigger_from_config(trigger.to_config())
    assert again == trigger and torch.equal(again(x), y)
    assert repr(trigger).startswith(type(trigger).__name__ + "(")


def test_patch_stamps_exactly_its_square():
    x = torch.zeros(2, 1, 16, 16)
    y = Patch(size=3, position="bottom-right", value=1.0, margin=1)(x)
    assert y[:, :, 12:15, 12:15].eq(1).all()
    assert y.sum() == 2 * 9
    y = Patch(size=2, position=(0, 0), value=0.5)(x)
    assert y[0, 0, :2, :2].eq(0.5).all() and y.sum() == 2 * 4 * 0.5


def test_colour_patch_on_rgb_and_checkerboard_pattern():
    x = torch.zeros(1, 3, 8, 8)
    y = Patch(size=2, position="top-left", value=(1.0, 0.0, 0.5), margin=0)(x)
    assert y[0, :, 0, 0].tolist() == [1.0, 0.0, 0.5]
    c = Checkerboard(size=2, position="top-left", margin=0, value=1.0)(torch.full((1, 1, 4, 4), 0.3))
    assert c[0, 0, :2, :2].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert c[0, 0, 3, 3] == pytest.approx(0.3)


def test_blend_is_the_convex_mix():
    x = torch.rand(4, 1, 8, 8)
    b = Blend(alpha=0.25, seed=7)
    p = b.pattern((1, 8, 8))
    assert torch.allclose(b(x), 0.75 * x + 0.25 * p)
    img = torch.rand(16, 16)
    bi = Blend(alpha=0.5, image=img)
    assert bi(x).shape == x.shape and "image=<1x16x16>" in repr(bi)


def test_sinusoid_adds_the_signal():
    x = torch.full((1, 1, 4, 8), 0.5)
    y = Sinusoid(delta=0.1, frequency=1)(x)
    assert torch.allclose(y[0, 0, 0], 0.5 + 0.1 * torch.sin(2 * torch.pi * torch.arange(8) / 8))


@pytest.mark.parametrize("make, match", [
    (lambda: Patch(size=0), "`size` must be an int in"),
    (lambda: Patch(position="middle"), "`position` must be one of"),
    (lambda: Patch(value=1.5), r"`value` must be a float in \[0, 1\]; got 1.5"),
    (lambda: Blend(alpha=0), r"`alpha` must be a float in \(0, 1\]"),
    (lambda: Warp(grid=1), "`grid`"),
])
def test_bad_parameters_fail_in_init(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_bad_images_and_fit():
    with pytest.raises(ValueError, match="values in \\[0, 1\\]"):
        Patch()(torch.full((1, 1, 8, 8), 2.0))
    with pytest.raises(ValueError, match="shape \\(N, C, H, W\\)"):
        Patch()(torch.rand(8, 8))
    with pytest.raises(ValueError, match="`size` must fit"):
        Patch(size=9)(torch.rand(1, 1, 8, 8))


# --- FTrojan's default magnitude, resolved from the image size (issue 22) ------------------------

# What the atlas's FTrojan configurations meant before FTrojan's default became size-dependent:
# their keys (cache and sweep rows) must not move. The digits one gives its magnitude; the
# Fashion-MNIST one takes the default, which on 28x28 images must stay the paper's 30/255.
ATLAS_FTROJAN = {
    "digits": {"type": "FTrojan", "block_size": 4, "positions": [[1, 1], [3, 3]],
               "magnitude": 0.5, "yuv": True},
    "fashion-mnist": {"type": "FTrojan", "block_size": 4, "positions": [[1, 1], [3, 3]],
                      "magnitude": 0.11764705882352941, "yuv": True},
}
# Computed at 268f811 (before the change), with every version field set to "PIN" so that a version
# bump elsewhere does not move them: the run-cache key of the atlas's digits FTrojan (rate 0.02,
# target 0, small-cnn, seed 0) and the sweep-row keys of atlas_grid(("digits",), ("FTrojan",),
# seeds=(0,)) at its rates 0.01 and 0.02.
PINNED_TRAIN_KEY = "dc203d3a01f67408"
PINNED_SWEEP_KEYS = {0.01: "67f845645fdf", 0.02: "2e3c577b69d7"}
# The same for Fashion-MNIST, on a stand-in dataset (all-zero 28x28 images, labels i mod 10; the
# real files are not here): rates 0.01 and 0.05
PINNED_FASHION_SWEEP_KEYS = {0.01: "f0fb7a6e1780", 0.05: "29bd03167687"}


def test_ftrojan_default_magnitude_comes_from_the_image_size():
    from workbench.triggers import FTrojan, ftrojan_default_magnitude

    t = FTrojan()
    assert t.magnitude is None and t.to_config()["magnitude"] is None
    assert "magnitude=None (by image size: 0.5 below 28x28, 30/255 from 28x28)" in repr(t)
    assert ftrojan_default_magnitude(16, 16) == 0.5 == t.magnitude_for(16, 16)
    assert ftrojan_default_magnitude(28, 28) == 30 / 255 == t.magnitude_for(32, 32)
    assert ftrojan_default_magnitude(16, 32) == 0.5  # the smaller side decides
    small, large = t.resolve((1, 16, 16)), t.resolve((3, 32, 32))
    assert small == FTrojan(magnitude=0.5) and large == FTrojan(magnitude=30 / 255)
    assert "by image size" not in repr(small) and "magnitude=0.5" in repr(small)
    assert t.magnitude is None  # the caller's trigger is not changed
    # applied, the default is the resolved trigger at each size
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t(x), small(x)) and not torch.equal(t(x), FTrojan(magnitude=30 / 255)(x))
    assert torch.equal(t.pattern((1, 16, 16)), small.pattern((1, 16, 16)))
    rgb = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(t(rgb), large(rgb))
    # a magnitude given is used as given, at every size
    given = FTrojan(magnitude=0.2)
    assert given.resolve((1, 16, 16)) is given and given.magnitude_for(16, 16) == 0.2
    # round trip through a config, unresolved and resolved
    assert trigger_from_config(t.to_config()) == t
    assert trigger_from_config(small.to_config()) == small
    # triggers without a size-dependent default resolve to themselves
    p = Patch(size=3)
    assert p.resolve((1, 16, 16)) is p


@pytest.mark.parametrize("shape, err, match", [
    ((16, 16), ValueError, r"`image_shape` must be a \(C, H, W\) triple of ints >= 1; got \(16, 16\)\."),
    ((1, 0, 16), ValueError, r"`image_shape` must be .*; got \(1, 0, 16\)\."),
    ("1x16x16", TypeError, r"`image_shape` must be .*; got '1x16x16'\."),
])
def test_resolve_refuses_a_bad_image_shape(shape, err, match):
    from workbench.triggers import FTrojan

    with pytest.raises(err, match=match):
        FTrojan().resolve(shape)
    with pytest.raises(err, match=match):
        Patch().resolve(shape)


def _pin_versions(point):
    return dict(point, versions={k: "PIN" for k in point["versions"]})


def test_atlas_ftrojan_configs_and_digits_keys_are_unchanged(digits):
    """The atlas's FTrojan runs keep their run-cache and sweep-row keys."""
    import dataclasses

    from workbench import sweep, train
    from workbench.atlas import ATTACKS, atlas_grid

    a = ATTACKS["FTrojan"]
    digits_trig = trigger_from_config(a.trigger_config("digits"))
    assert digits_trig.to_config() == ATLAS_FTROJAN["digits"]  # explicit: as given
    assert digits_trig.resolve(digits.image_shape).to_config() == ATLAS_FTROJAN["digits"]
    fashion = trigger_from_config(a.trigger_config("fashion-mnist")).resolve((1, 28, 28))
    assert fashion.to_config() == ATLAS_FTROJAN["fashion-mnist"]  # the default, resolved
    _, _, cfg = train.prepare_run(digits, digits_trig, 0.02, 0, "small-cnn", None, 0, None, None,
                               0.0, None)
    assert dataclasses.replace(cfg, workbench="PIN", cache_format=3).key() == PINNED_TRAIN_KEY
    points = atlas_grid(datasets=("digits",), attacks=("FTrojan",), seeds=(0,)).points()
    assert {p["rate"]: sweep.point_key(_pin_versions(p)) for p in points} == PINNED_SWEEP_KEYS


def _fashion_stand_in():
    n = 2000
    x, y = torch.zeros((n, 1, 28, 28)), torch.arange(n) % 10
    return wb.data.Dataset("fashion-mnist", x, y, x[:200].clone(), y[:200].clone(),
                           tuple(f"c{i}" for i in range(10)))


def test_atlas_ftrojan_fashion_sweep_keys_are_unchanged(monkeypatch):
    from workbench import sweep
    from workbench.atlas import atlas_grid

    stand_in = _fashion_stand_in()
    real = sweep._dataset
    monkeypatch.setattr(sweep, "_dataset",
                        lambda name: stand_in if name == "fashion-mnist" else real(name))
    points = atlas_grid(datasets=("fashion-mnist",), attacks=("FTrojan",), seeds=(0,)).points()
    assert [p["trigger"] for p in points] == [ATLAS_FTROJAN["fashion-mnist"]] * 2
    assert {p["rate"]: sweep.point_key(_pin_versions(p)) for p in points} == \
        PINNED_FASHION_SWEEP_KEYS


def test_a_default_resolved_from_the_image_size_is_in_the_run_key(digits):
    from workbench import train
    from workbench.triggers import FTrojan

    _, trig, cfg = train.prepare_run(digits, FTrojan(), 0.1, 1, "small-cnn", None, 0, None, None,
                                  0.0, None)
    assert cfg.trigger["magnitude"] == 0.5 and trig == FTrojan(magnitude=0.5)
    _, _, explicit = train.prepare_run(digits, FTrojan(magnitude=0.5), 0.1, 1, "small-cnn", None, 0,
                                    None, None, 0.0, None)
    assert cfg.key() == explicit.key()  # one run: what was asked, written out


@pytest.mark.slow
def test_ftrojan_defaults_learn_on_digits(digits):
    """The issue's case: FTrojan() at its defaults, digits, rate 0.10, target 1 (at the old
    default 30/255: clean accuracy 0.958, ASR 0.04)."""
    from workbench.triggers import FTrojan

    run = wb.train_backdoor(digits, trigger=FTrojan(), rate=0.10, target=1, progress=False)
    assert run.attack_success_rate >= 0.9
    assert run.clean_accuracy >= 0.95
