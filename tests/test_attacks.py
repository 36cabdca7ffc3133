"""The attack atlas's new triggers (BPP, FTrojan, AdaptiveBlend, LowFrequency, TrojanNN) and the
crafting of the last two: shape, range, determinism by seed, round trip through the config,
bad input, independent computations (numpy Floyd–Steinberg, scipy DCT and Gaussian filter), and
small trainings on digits that learn each trigger."""

import numpy as np
import pytest
import scipy.fft
import scipy.ndimage
import torch

import workbench as wb
from workbench.crafting import (craft, craft_low_frequency, craft_trojannn, gaussian_lowpass,
                                neuron_activation)
from workbench.triggers import (BPP, AdaptiveBlend, FTrojan, LowFrequency, TrojanNN, block_dct,
                                block_idct, dct_matrix, trigger_from_config)

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models and batches are tiny: one torch thread is faster than two contending for the
    shared cores (measured: crafting 10x slower with 2 threads on a loaded 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


G = torch.Generator().manual_seed(0)
FIXED_V = torch.rand((1, 16, 16), generator=G) * 0.2 - 0.1
FIXED_MASK = torch.zeros(16, 16)
FIXED_MASK[11:15, 11:15] = 1
FIXED_PATTERN = torch.rand((1, 16, 16), generator=G) * FIXED_MASK


def _triggers(c, h, w):
    """One of each new trigger for (c, h, w) images (crafted ones with fixed tensors)."""
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(h, w)
    mask[h - 5:h - 1, w - 5:w - 1] = 1
    return [BPP(), BPP(bits=1, dither=False), FTrojan(), FTrojan(block_size=8, positions=[(7, 7)],
                                                                 yuv=False),
            AdaptiveBlend(seed=3), AdaptiveBlend(pieces=4, mask_rate=0.25, conservatism=0.0),
            LowFrequency(torch.rand((c, h, w), generator=g) * 0.2 - 0.1),
            TrojanNN(mask, torch.rand((c, h, w), generator=g))]


@pytest.mark.parametrize("shape", [(5, 1, 16, 16), (3, 3, 32, 32)])
def test_shape_range_determinism_and_config(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    for trig in _triggers(*shape[1:]):
        y = trig(x)
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device, trig
        assert y.min() >= 0 and y.max() <= 1
        assert not torch.equal(y, x)
        assert torch.equal(trig(x), y)  # deterministic
        assert torch.equal(x, torch.rand(shape, generator=torch.Generator().manual_seed(0)))
        again = trigger_from_config(trig.to_config())
        assert again == trig and torch.equal(again(x), y)
        import json
        assert trigger_from_config(json.loads(json.dumps(trig.to_config()))) == trig  # JSON-safe
        assert repr(trig).startswith(type(trig).__name__ + "(")
        # the training form: same shape and range, a function of the seed
        p1, p2 = trig.poison_apply(x, 5), trig.poison_apply(x, 5)
        assert p1.shape == x.shape and p1.dtype == x.dtype and 0 <= p1.min() and p1.max() <= 1
        assert torch.equal(p1, p2)
        assert torch.equal(trig.poison_apply(x, torch.Generator().manual_seed(5)), p1)
        if not isinstance(trig, AdaptiveBlend):
            assert torch.equal(p1, y)  # the others poison with the trigger itself
        assert trig.conservatism == (trig.conservatism if isinstance(trig, AdaptiveBlend) else 0.0)
    y64 = BPP()(x.double())
    assert y64.dtype == torch.float64


def _numpy_floyd_steinberg(img: np.ndarray, levels: int) -> np.ndarray:
    """The textbook error diffusion, pixel by pixel (Floyd & Steinberg 1976)."""
    a = img.astype(np.float64).copy()
    h, w = a.shape
    for y in range(h):
        for x in range(w):
            old = a[y, x]
            new = min(max(np.round(old * levels), 0), levels) / levels
            a[y, x] = new
            e = old - new
            if x + 1 < w:
                a[y, x + 1] += e * 7 / 16
            if y + 1 < h:
                if x > 0:
                    a[y + 1, x - 1] += e * 3 / 16
                a[y + 1, x] += e * 5 / 16
                if x + 1 < w:
                    a[y + 1, x + 1] += e * 1 / 16
    return a


@pytest.mark.parametrize("bits", [1, 3])
def test_bpp_equals_a_pixel_by_pixel_floyd_steinberg(digits, bits):
    x = torch.cat([digits.x_test[:3], torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))])
    y = BPP(bits=bits)(x.double())
    levels = 2 ** bits - 1
    for i in range(len(x)):
        ref = _numpy_floyd_steinberg(x[i, 0].numpy(), levels)
        np.testing.assert_allclose(y[i, 0].numpy(), ref, rtol=0, atol=1e-12)
    # every value is one of the 2**bits levels; without dithering, the nearest one
    assert torch.allclose(y * levels, torch.round(y * levels), atol=1e-9)
    plain = BPP(bits=bits, dither=False)(x)
    assert torch.allclose(plain, torch.from_numpy(np.round(x.numpy() * levels) / levels))
    # dithering keeps the local mean: 4x4 block means move far less than plain rounding's pixels
    pool = torch.nn.functional.avg_pool2d
    assert (pool(y.float(), 4) - pool(x, 4)).abs().mean() < (plain - x).abs().mean()


def test_block_dct_against_scipy():
    x = torch.rand(2, 3, 16, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for b in (4, 2):
        c = block_dct(x, b).numpy()
        xn = x.numpy()
        for r in range(0, 16, b):
            for s in range(0, 12, b):
                ref = scipy.fft.dctn(xn[..., r:r + b, s:s + b], type=2, norm="ortho", axes=(-2, -1))
                np.testing.assert_allclose(c[..., r:r + b, s:s + b], ref, atol=1e-12)
        assert torch.allclose(block_idct(block_dct(x, b), b), x, atol=1e-12)
    d = dct_matrix(8)
    assert torch.allclose(d @ d.T, torch.eye(8, dtype=torch.float64), atol=1e-12)


def test_ftrojan_against_an_independent_scipy_computation(digits):
    trig = FTrojan(block_size=4, positions=((1, 1), (3, 3)), magnitude=0.1)
    x = digits.x_test[:4].double()
    ref = x.numpy().copy()
    for r in range(0, 16, 4):
        for s in range(0, 16, 4):
            blk = scipy.fft.dctn(ref[..., r:r + 4, s:s + 4], norm="ortho", axes=(-2, -1))
            blk[..., 1, 1] += 0.1
            blk[..., 3, 3] += 0.1
            ref[..., r:r + 4, s:s + 4] = scipy.fft.idctn(blk, norm="ortho", axes=(-2, -1))
    np.testing.assert_allclose(trig(x).numpy(), np.clip(ref, 0, 1), atol=1e-12)
    # linear before the clip: one fixed additive pattern
    assert torch.allclose(trig(x), (x + trig.pattern((1, 16, 16))).clamp(0, 1), atol=1e-12)
    # RGB with yuv=True changes the chroma only: the BT.601 luma is unchanged (where nothing clips)
    rgb = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 0.5 + 0.25
    luma = lambda t: 0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2]  # noqa: E731
    out = FTrojan(magnitude=0.05)(rgb)
    assert torch.allclose(luma(out), luma(rgb), atol=1e-9) and not torch.allclose(out, rgb)
    assert not torch.allclose(luma(FTrojan(magnitude=0.05, yuv=False)(rgb)), luma(rgb), atol=1e-6)


def test_adaptive_blend_pieces_and_test_time():
    trig = AdaptiveBlend(alpha=0.15, test_alpha=0.2, pieces=16, mask_rate=0.5, seed=1)
    x = torch.full((6, 1, 16, 16), 0.5)
    p = trig.pattern((1, 16, 16))
    assert torch.allclose(trig(x), 0.8 * x + 0.2 * p)  # test time: the whole pattern
    pm = trig.piece_map(16, 16)
    assert sorted(pm.unique().tolist()) == list(range(16))
    assert all(int((pm == i).sum()) == 16 for i in range(16))  # 4x4 tiles of a 16x16 image
    y = trig.poison_apply(x, 7)
    expected_on = 0.85 * x + 0.15 * p
    subsets = []
    for i in range(len(x)):
        on = {int(k) for k in pm.unique() if torch.allclose(y[i, 0][pm == k], expected_on[i, 0][pm == k])}
        off = {int(k) for k in pm.unique() if torch.equal(y[i, 0][pm == k], x[i, 0][pm == k])}
        assert len(on) == 8 and len(off) == 8 and not on & off  # half the pieces, as mask_rate says
        subsets.append(frozenset(on))
    assert len(set(subsets)) > 1  # a random subset per image
    assert not torch.equal(trig.poison_apply(x, 8), y)
    assert torch.equal(trig.poison_apply(x[:3], 7), y[:3])  # a function of seed and input order
    assert AdaptiveBlend().conservatism == 0.5 and AdaptiveBlend(conservatism=0.2).conservatism == 0.2
    # an uneven grid still covers the whole image: 3x3 pieces of a 28x28 image
    pm = AdaptiveBlend(pieces=9).piece_map(28, 28)
    assert pm.shape == (28, 28) and sorted(pm.unique().tolist()) == list(range(9))


def test_poisoning_honours_conservatism_and_random_pieces(digits):
    trig = AdaptiveBlend(conservatism=0.25)
    ps = wb.poison_dataset(digits.x_train, digits.y_train, trig, 0.1, 0, seed=3)
    chosen = ps.poison_indices
    changed = (ps.x[chosen] != digits.x_train[chosen]).flatten(1).any(1)
    assert changed.all()
    kept = ps.y[chosen] == digits.y_train[chosen]
    assert int(kept.sum()) == round(0.25 * len(chosen))  # the covers keep their label
    # training images carry partial patterns, never the test-time form
    assert not torch.allclose(ps.x[chosen], trig(digits.x_train[chosen]))


def test_gaussian_lowpass_against_scipy():
    v = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for sigma in (0.7, 3.0):
        ref = np.stack([scipy.ndimage.gaussian_filter(v[i, 0].numpy(), sigma, mode="constant",
                                                      truncate=4.0) for i in range(2)])
        np.testing.assert_allclose(gaussian_lowpass(v, sigma)[:, 0].numpy(), ref, atol=1e-12)


@pytest.fixture(scope="module")
def clean10(digits):
    """A clean small CNN on digits, 10 epochs (about 3 s), for crafting."""
    return wb.train_backdoor(digits, rate=0.0, epochs=10, progress=False)


def _state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, model.training,
            [p.requires_grad for p in model.parameters()])


def _low_share(v, k=4):
    """Share of the energy of v (1, H, W) in its k x k lowest 2-D DCT frequencies."""
    c = scipy.fft.dctn(v[0].double().numpy(), norm="ortho")
    return float((c[:k, :k] ** 2).sum() / (c ** 2).sum())


def test_craft_low_frequency(digits, clean10):
    before = _state(clean10.model)
    calls = []
    lf = craft_low_frequency(digits, 0, model=clean10.model, epsilon=0.1, steps=20, seed=1,
                             progress=lambda i, n: calls.append((i, n)))
    assert isinstance(lf, LowFrequency) and lf.perturbation.shape == (1, 16, 16)
    assert float(lf.perturbation.abs().max()) == pytest.approx(0.1)
    assert calls == [(i, 20) for i in range(1, 21)]
    again = craft_low_frequency(digits, 0, model=clean10.model, epsilon=0.1, steps=20, seed=1)
    assert again == lf  # deterministic given the seed
    assert craft_low_frequency(digits, 0, model=clean10.model, steps=20, seed=2) != lf
    after = _state(clean10.model)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0]) and before[1:] == after[1:]
    # low-pass: nearly all energy in the 4x4 lowest DCT frequencies (uniform noise: ~6%)
    assert _low_share(lf.perturbation) > 0.9
    assert _low_share(torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(0)) - 0.5) < 0.2
    # optimised towards the target: on the clean model it moves more inputs to class 0 than
    # random smooth fields of the same size
    keep = digits.y_test != 0
    m = clean10.model
    logp = lambda t: m(t(digits.x_test[keep])).log_softmax(-1)[:, 0].mean().item()  # noqa: E731
    with torch.no_grad():
        rand = [LowFrequency(0.1 * (s := gaussian_lowpass(torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(i)), 3.0)) / s.abs().max())
                for i in range(3)]
        assert logp(lf) > max(logp(r) for r in rand)
    assert trigger_from_config(lf.to_config()) == lf


def test_craft_trojannn(digits, clean10):
    before = _state(clean10.model)
    tj = craft_trojannn(digits, model=clean10.model, neurons=2, steps=150, seed=0)
    assert isinstance(tj, TrojanNN)
    assert torch.equal(tj.mask, FIXED_MASK)  # a 4x4 square at the bottom right, margin 1
    assert (tj.pattern[:, tj.mask == 0] == 0).all()
    after = _state(clean10.model)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0]) and before[1:] == after[1:]
    assert craft_trojannn(digits, model=clean10.model, neurons=2, steps=150, seed=0) == tj
    # the chosen neuron is driven above what any of 200 random patterns in the same mask reach
    # (uniform or black-and-white: the optimum of a box-constrained, nearly linear response lies
    # near a corner of the box)
    one = craft_trojannn(digits, model=clean10.model, neurons=1, steps=150, seed=0)
    act = float(neuron_activation(clean10.model, one, neurons=1))
    g = torch.Generator().manual_seed(9)
    rand = [float(neuron_activation(clean10.model, TrojanNN(FIXED_MASK, pat), neurons=1))
            for pat in [torch.rand(1, 16, 16, generator=g) for _ in range(100)]
            + [(torch.rand(1, 16, 16, generator=g) > 0.5).float() for _ in range(100)]]
    assert act > max(rand)
    # explicit neurons in a convolution layer (channels summed over space)
    tc = craft_trojannn(digits, model=clean10.model, layer="features.3", neurons=[0, 5], steps=20)
    assert isinstance(tc, TrojanNN)
    assert isinstance(craft("TrojanNN", digits, target=3, model=clean10.model, steps=5), TrojanNN)


@pytest.mark.parametrize("make, match", [
    (lambda: BPP(bits=0), r"`bits` must be an int in \[1, 8\]"),
    (lambda: BPP(bits=9), r"`bits` must be an int in \[1, 8\]"),
    (lambda: BPP(dither="yes"), "`dither` must be a bool"),
    (lambda: FTrojan(block_size=0), "`block_size` must be an int"),
    (lambda: FTrojan(block_size=4, positions=[(4, 0)]), r"`positions` must be .* in \[0, 3\]"),
    (lambda: FTrojan(positions=[]), "`positions` must be a non-empty"),
    (lambda: FTrojan(positions=[(1, 1), (1, 1)]), "distinct"),
    (lambda: FTrojan(magnitude=0), r"`magnitude` must be a float in \(0, 1\]"),
    (lambda: AdaptiveBlend(pieces=15), "`pieces` must be a perfect square"),
    (lambda: AdaptiveBlend(mask_rate=1.0), r"`mask_rate` must be a float in \[0, 1\)"),
    (lambda: AdaptiveBlend(pieces=4, mask_rate=0.9), "at least one of the 4 pieces"),
    (lambda: AdaptiveBlend(conservatism=1.0), r"`conservatism` must be a float in \[0, 1\)"),
    (lambda: AdaptiveBlend(test_alpha=0), r"`test_alpha` must be a float in \(0, 1\]"),
    (lambda: LowFrequency(torch.full((1, 4, 4), 1.5)), r"`perturbation` must hold finite values in \[-1, 1\]"),
    (lambda: LowFrequency(torch.zeros(4, 4)), r"`perturbation` must have shape \(C, H, W\)"),
    (lambda: LowFrequency("noise"), "`perturbation` must be a tensor"),
    (lambda: TrojanNN(torch.zeros(4, 4), torch.zeros(1, 4, 4)), "`mask` must select at least one"),
    (lambda: TrojanNN(torch.ones(4, 4), torch.zeros(1, 5, 5)), "`pattern` must have shape"),
    (lambda: TrojanNN(torch.ones(4, 4), torch.full((1, 4, 4), -0.1)), r"`pattern` must hold finite values in \[0, 1\]"),
])
def test_bad_parameters_fail_in_init(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


@pytest.mark.parametrize("trig, shape, match", [
    (FTrojan(block_size=3, positions=[(2, 2)]), (1, 1, 16, 16), "`block_size` must divide .* 3 does not fit 16x16"),
    (FTrojan(block_size=8), (1, 1, 28, 28), "allowed here: 1, 2, 4, 7, 14, 28"),
    (AdaptiveBlend(pieces=25), (1, 1, 4, 4), "a 5x5 grid of pieces needs images of at least 5x5"),
    (LowFrequency(torch.zeros(1, 16, 16)), (1, 1, 28, 28), "crafted for 16x16 images does not fit 28x28"),
    (LowFrequency(torch.zeros(3, 8, 8)), (1, 1, 8, 8), "3 channels and does not fit 1-channel"),
    (TrojanNN(FIXED_MASK, FIXED_PATTERN), (1, 1, 28, 28), "crafted for 16x16 images does not fit 28x28"),
])
def test_a_trigger_that_does_not_fit_the_image(trig, shape, match):
    with pytest.raises(ValueError, match=match):
        trig(torch.rand(shape))
    with pytest.raises(ValueError, match=match):
        trig.poison_apply(torch.rand(shape), 0)


def test_bad_crafting_input_fails_before_any_training(digits, clean10):
    probe = dict(architecture="mlp", epochs=1, seed=987654)  # a clean model nobody has trained
    bad = [
        (lambda: craft_low_frequency(digits, 10, **probe), r"`target` must be an int in \[0, 9\]"),
        (lambda: craft_low_frequency(digits, 0, epsilon=0, **probe), "`epsilon`"),
        (lambda: craft_low_frequency(digits, 0, sigma=-1.0, **probe), "`sigma`"),
        (lambda: craft_low_frequency(digits, 0, steps=0, **probe), "`steps`"),
        (lambda: craft_low_frequency(digits, 0, progress="yes", **probe), "`progress` must be a bool"),
        (lambda: craft_low_frequency("svhn", 0, **probe), "`data` must be one of"),
        (lambda: craft_low_frequency(digits, 0, architecture="vgg"), "`architecture` must be one of"),
        (lambda: craft_trojannn(digits, layer="head.9", **probe), "`layer` must be one of"),
        (lambda: craft_trojannn(digits, neurons=1000, **probe), r"`neurons` must be an int in \[1, 128\]"),
        (lambda: craft_trojannn(digits, neurons=[0, 0], **probe), "distinct"),
        (lambda: craft_trojannn(digits, mask=torch.ones(8, 8), **probe), r"`mask` must have the images' shape \(16, 16\)"),
        (lambda: craft_trojannn(digits, size=20, **probe), r"`size` must be an int in \[1, 16\]"),
        (lambda: craft_trojannn(digits, position="middle", **probe), "`position` must be one of"),
        (lambda: craft_trojannn(digits, target_value=-1, **probe), "`target_value`"),
        (lambda: craft("Patch", digits), "`name` must be one of 'LowFrequency', 'TrojanNN'"),
        (lambda: craft_low_frequency(digits, 0, model=torch.nn.Linear(3, 2)), "`data.x_test` has images"),
    ]
    for call, match in bad:
        with pytest.raises((ValueError, TypeError), match=match):
            call()
    assert not wb.is_cached(digits, rate=0.0, model="mlp", epochs=1, seed=987654)


# Settings each learnt within 10 epochs (the measured full-training rates with the defaults are
# in benchmarks/RESULTS.md, "Attack atlas: triggers"): digits' 17 grey levels hide a 3-bit BPP,
# and a 4x4-block FTrojan at the paper's 30/255 needs 30 epochs and more poison.
SMALL = {"BPP": (lambda d, m: BPP(bits=1), 0.05),
         "FTrojan": (lambda d, m: FTrojan(magnitude=0.5), 0.05),
         "AdaptiveBlend": (lambda d, m: AdaptiveBlend(alpha=0.3, test_alpha=0.4), 0.1),
         "LowFrequency": (lambda d, m: craft_low_frequency(d, 0, model=m, steps=100), 0.1),
         "TrojanNN": (lambda d, m: craft_trojannn(d, model=m, steps=300), 0.05)}


@pytest.mark.parametrize("name", list(SMALL))
def test_a_small_training_learns_each_trigger(digits, clean10, name):
    """10 epochs on digits (about 3 s each on an idle core): the backdoor is learnt far above
    chance (what the clean model does with triggered inputs)."""
    make, rate = SMALL[name]
    trig = make(digits, clean10.model)
    run = wb.train_backdoor(digits, trigger=trig, rate=rate, epochs=10, progress=False)
    chance = wb.attack_success_rate(clean10.model, digits.x_test, digits.y_test, trig, 0)
    assert chance < 0.2
    assert run.attack_success_rate > max(0.75, chance + 0.5), run
    assert run.clean_accuracy > clean10.clean_accuracy - 0.05, run


def test_a_crafted_config_without_its_tensor_is_refused_clearly():
    with pytest.raises(ValueError, match=r"`config` for LowFrequency must hold 'perturbation' "
                                         r"\(a crafted trigger: make it with workbench.crafting"):
        trigger_from_config({"type": "LowFrequency"})
    with pytest.raises(ValueError, match="`config` for TrojanNN must hold 'mask', 'pattern'"):
        trigger_from_config({"type": "TrojanNN"})
