import pytest
import torch

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
