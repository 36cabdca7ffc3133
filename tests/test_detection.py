import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage, stats
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from workbench.reports import detection_report
import workbench as wb
from workbench import detection as D
from workbench.detection import compare_detectors, roc_analysis, strip_entropy
from helpers import Constant, LinearK

SIGMAS = [0.01, 0.02]  # small enough that the gate models' triggers survive every noisy copy


class Gate(nn.Module):
    """A backdoored model with a known answer: target 0 with logit 50 whenever the image's mean
    brightness exceeds 0.5 (the "trigger"), otherwise a BatchNorm + linear classifier of the
    pixels. The trigger (a bright image) survives every corruption, blend and scaling used here.
    """

    def __init__(self, side: int = 8, k: int = 4, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.bn = nn.BatchNorm2d(1)
        with torch.no_grad():
            self.bn.weight.copy_(torch.tensor([1.3]))
            self.bn.bias.copy_(torch.tensor([0.2]))
            self.bn.running_mean.fill_(0.15)
            self.bn.running_var.fill_(0.01)
        self.lin = nn.Linear(side * side, k)
        with torch.no_grad():
            self.lin.weight.copy_(0.2 * torch.randn(k, side * side, generator=g))
            self.lin.bias.copy_(torch.randn(k, generator=g))
        self.k = k

    def forward(self, x):
        z = self.lin(torch.relu(self.bn(x)).flatten(1))
        fire = x.mean((1, 2, 3)) > 0.5
        return torch.where(fire[:, None], torch.tensor([50.0] + [0.0] * (self.k - 1)), z)


class ConstantBN(nn.Module):
    """Ignores its input, through a BatchNorm layer (so IBD-PSC can amplify something)."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(3)
        with torch.no_grad():
            self.bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
            self.bn.bias.copy_(torch.tensor([0.1, -0.3, 0.2]))
        self.c = nn.Parameter(torch.tensor([[0.5, 0.2, -0.1]]), requires_grad=False)

    def forward(self, x):
        return self.bn(self.c.expand(len(x), 3))


def _gate_data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(n, 1, 8, 8, generator=g) * 0.5  # mean ≈ 0.25: the gate stays shut
    triggered = 0.9 + 0.1 * torch.rand(n, 1, 8, 8, generator=g)  # mean ≈ 0.95: it fires
    pool = torch.rand(30, 1, 8, 8, generator=g) * 0.5
    return clean, triggered, pool


def test_roc_analysis_matches_scikit_learn():
    rng = np.random.default_rng(0)
    c, t = rng.normal(0, 1, 300), rng.normal(1, 1, 200)
    r = roc_analysis("x", c, t)
    y = np.r_[np.zeros(300), np.ones(200)]
    assert r.auc == pytest.approx(roc_auc_score(y, np.r_[c, t]))
    # TPR at a% FPR: the threshold just above the clean score ranked floor(a·N) + 1 from the top
    cs = np.sort(c)[::-1]
    assert r.tpr_at_5_fpr == (t > cs[15]).mean() and r.tpr_at_1_fpr == (t > cs[3]).mean()
    for v, ci in ((r.auc, r.auc_ci), (r.tpr_at_1_fpr, r.tpr_at_1_fpr_ci),
                  (r.tpr_at_5_fpr, r.tpr_at_5_fpr_ci)):
        assert ci[0] <= v <= ci[1] and ci[1] - ci[0] > 0
    # the interval of the AUC agrees with the normal approximation of Hanley & McNeil (1982)
    a, q1, q2 = r.auc, r.auc / (2 - r.auc), 2 * r.auc ** 2 / (1 + r.auc)
    se = math.sqrt((a * (1 - a) + 199 * (q1 - a * a) + 299 * (q2 - a * a)) / (300 * 200))
    assert r.auc_ci[1] - r.auc_ci[0] == pytest.approx(2 * 1.96 * se, rel=0.15)
    # the fast ROC of the bootstrap is sklearn's, ties included
    ci, ti = rng.integers(0, 5, 40).astype(float), rng.integers(2, 8, 30).astype(float)
    f, tp = D._roc(ci, ti)
    f2, t2, _ = roc_curve(np.r_[np.zeros(40), np.ones(30)], np.r_[ci, ti], drop_intermediate=False)
    assert np.allclose(f, f2) and np.allclose(tp, t2)
    assert roc_analysis("x", c, t, seed=1).auc_ci == roc_analysis("x", c, t, seed=1).auc_ci
    with pytest.raises(ValueError, match="`clean_scores` must hold finite values"):
        roc_analysis("x", np.r_[c[:-1], np.nan], t)


def test_strip_is_the_mean_per_copy_entropy():
    torch.manual_seed(0)
    model = LinearK(torch.randn(3, 4), torch.zeros(3))
    x = torch.rand(2, 1, 2, 2)
    pool = torch.rand(10, 1, 2, 2)
    # the earlier design: one shared draw of partners, 50/50 blends
    h = strip_entropy(model, x, pool, n_blend=5, seed=3, superimpose="mean", partners="shared")
    idx = torch.randint(0, 10, (5,), generator=torch.Generator().manual_seed(3))
    for j in range(2):
        with torch.no_grad():
            p = model(0.5 * x[j] + 0.5 * pool[idx]).softmax(-1)
        ref = float((-(p * p.log()).sum(-1)).mean())
        assert h[j] == pytest.approx(ref, rel=1e-6)
    # the authors' (default): a row of partners per input, plain sums
    h = strip_entropy(model, x, pool, n_blend=5, seed=3)
    rows = torch.randint(0, 10, (2, 5), generator=torch.Generator().manual_seed(3))
    for j in range(2):
        with torch.no_grad():
            p = model(x[j] + pool[rows[j]]).softmax(-1)
        assert h[j] == pytest.approx(float((-(p * p.log()).sum(-1)).mean()), rel=1e-6)
    assert np.allclose(strip_entropy(Constant([0.0, 0.0]), x, pool, 4), np.log(2))
    with pytest.raises(ValueError, match="`clean_pool` images must have the shape"):
        strip_entropy(model, x, torch.rand(3, 1, 3, 3))
    with pytest.raises(ValueError, match="`superimpose` must be one of 'sum', 'mean'; got 'max'"):
        strip_entropy(model, x, pool, superimpose="max")


class MeanLogit(nn.Module):
    """Two classes, logits (m, 0) with m the mean pixel value: p = sigmoid(m)."""

    def forward(self, x):
        m = x.flatten(1).mean(1)
        return torch.stack([m, torch.zeros_like(m)], 1)


def _bits(p):
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def test_strip_superimposes_as_the_authors_notebook():
    """Notes section 8.1: x ≡ 0.6 on a partner ≡ 0.7. The notebook's cv2.addWeighted(x, 1, x_c,
    1, 0) on float32 is the unclipped sum: m = 1.3 (H = 0.749369 bits); a clipped sum would give
    m = 1.0 (0.839942 bits), the 50/50 blend m = 0.65 (0.927651 bits)."""
    x = torch.full((1, 1, 4, 4), 0.6)
    one = torch.full((1, 1, 4, 4), 0.7)
    sig = lambda m: 1 / (1 + math.exp(-m))  # noqa: E731
    h = strip_entropy(MeanLogit(), x, one, n_blend=3) / math.log(2)  # nats to bits
    assert _bits(sig(1.3)) == pytest.approx(0.749369, abs=1e-6)
    assert h[0] == pytest.approx(0.749369, abs=1e-5)  # not 0.839942 (clipped), not 0.927651
    hm = strip_entropy(MeanLogit(), x, one, n_blend=3, superimpose="mean") / math.log(2)
    assert hm[0] == pytest.approx(0.927651, abs=1e-5)
    # partners ≡ 0.7 and ≡ 0.1 drawn with replacement: the mean of the per-copy entropies,
    # (0.749369 + 0.916767) / 2 = 0.833068 bits in expectation (SE 0.0013 with 4,000 copies)
    two = torch.cat([one, torch.full((1, 1, 4, 4), 0.1)])
    assert (_bits(sig(1.3)) + _bits(sig(0.7))) / 2 == pytest.approx(0.833068, abs=1e-6)
    h2 = strip_entropy(MeanLogit(), x, two, n_blend=4000, seed=1) / math.log(2)
    assert h2[0] == pytest.approx(0.833068, abs=0.006)
    # a fresh draw per input (the same rows for twins): identical inputs get different partners;
    # "shared" gives every input the same ones
    xs = x.expand(6, -1, -1, -1)
    per_input = strip_entropy(MeanLogit(), xs, two, n_blend=5, seed=2)
    shared = strip_entropy(MeanLogit(), xs, two, n_blend=5, seed=2, partners="shared")
    assert np.ptp(per_input) > 0.01 and np.ptp(shared) == 0
    assert np.array_equal(per_input, strip_entropy(MeanLogit(), xs, two, n_blend=5, seed=2))


def test_scale_up_uses_backdoorbox_scales():
    """Notes section 8.2: class 1 iff mean pixel > 0.5; x ≡ 0.12 scaled by 3, 5, 7, 9, 11 gives
    0.36, 0.60, 0.84, 1.0, 1.0 → classes 0, 1, 1, 1, 1: SPC = 1/5 (the study's 2…11: 0.3)."""

    class Half(nn.Module):
        def forward(self, x):
            m = x.flatten(1).mean(1) - 0.5
            return torch.stack([-m, m], 1)

    assert D.DEFAULT_SCALES == (3, 5, 7, 9, 11)
    x = torch.cat([torch.full((1, 1, 2, 2), 0.12), torch.full((1, 1, 2, 2), 0.6)])
    assert np.allclose(D.scale_up_score(Half(), x), [0.2, 1.0])
    assert np.allclose(D.scale_up_score(Half(), x, scales=D.STUDY_SCALES), [0.3, 1.0])


def test_a_model_that_ignores_its_input_gives_every_detector_auc_one_half():
    clean, triggered, pool = _gate_data()
    for model, methods in ((Constant([0.3, 1.0, -0.2]), ("strip", "scale-up", "teco", "w-mean",
                                                         "w-radius", "w-consistency", "w-knee",
                                                         "w-class")),
                           (ConstantBN(), ("ibd-psc",))):
        res = compare_detectors(model, clean, triggered, pool, SIGMAS, n_samples=16, n_blend=8,
                                methods=methods, n_boot=50)
        assert [r.method for r in res] == list(methods)
        for r in res:
            assert np.ptp(np.r_[r.clean_scores, r.triggered_scores]) < 1e-9, r.method
            assert r.auc == 0.5 and r.tpr_at_1_fpr == 0 and r.tpr_at_5_fpr == 0, r.method
            assert r.seconds_per_input > 0 and r.label.split()[0] in r.label


def test_a_model_that_answers_the_target_on_triggered_inputs():
    """Each detector on the gate model, whose triggered inputs always get the target: the known
    part of every answer, and the rest against an independent computation."""
    model = Gate().eval()
    clean, triggered, pool = _gate_data()
    # TeCo as the study ran it before: CIFAR-10-C strengths, each corruption on the pristine
    # input, floats (ImageNet-C's motion blur drops the weights of shifts past an 8-pixel side,
    # darkening the image enough to shut the gate)
    res = {r.method: r for r in compare_detectors(
        model, clean, triggered, pool, SIGMAS, 32, 16, methods=D.METHODS, n_boot=100,
        strengths="cifar10-c", application="independent", quantize=False)}
    # STRIP: copies of a triggered input keep the target (entropy ≈ 0); 50/50 blends of clean
    # inputs do not; plain sums of a clean input (mean ≈ 0.25) and a partner (≈ 0.25) sometimes
    # open the gate too (mean > 0.5), so the authors' STRIP separates less well on this model
    for m in ("strip", "strip-mean"):
        assert (res[m].triggered_scores > -1e-12).all(), m
    assert res["strip-mean"].auc == 1.0 and 0.5 < res["strip"].auc <= 1.0
    assert np.allclose(res["strip"].clean_scores, -strip_entropy(model, clean, pool, 16, 0))
    assert res["strip"].settings["superimpose"] == "sum" and res["strip-mean"].settings[
        "superimpose"] == "mean"
    # the study's earlier STRIP exactly: 50/50 blends, one shared draw of 64 partners
    old = compare_detectors(model, clean, triggered, pool, SIGMAS, 8, 64, methods=("strip-mean",),
                            n_boot=0, strip_partners="shared")[0]
    assert np.array_equal(old.clean_scores, -strip_entropy(model, clean, pool, 64, 0,
                                                           superimpose="mean", partners="shared"))
    # SCALE-UP: every scaled copy of a triggered input keeps the target: SPC = 1
    su = res["scale-up"]
    assert (su.triggered_scores == 1).all()
    with torch.no_grad():
        p0 = model(clean).argmax(1)
        ref = torch.stack([model((clean * s).clamp(0, 1)).argmax(1) == p0
                           for s in D.DEFAULT_SCALES]).double().mean(0).numpy()
    assert np.allclose(su.clean_scores, ref)
    assert su.auc == pytest.approx(1 - 0.5 * (ref == 1).mean())
    # TeCo: the trigger survives every corruption, so no severity flips it: deviation 0, and
    # TeCo flags nothing (its blind spot: a fully robust trigger looks like a robust clean input)
    assert (res["teco"].triggered_scores == 0).all() and res["teco"].auc <= 0.5
    # IBD-PSC: the gate's logit bypasses BatchNorm, so amplified models stay sure of the target
    assert np.allclose(res["ibd-psc"].triggered_scores, 1.0) and res["ibd-psc"].auc == 1.0
    # W_σ: every noisy copy of a triggered input votes the target
    assert (res["w-mean"].triggered_scores == 0).all()
    assert (res["w-consistency"].triggered_scores == 1).all()
    assert (res["w-radius"].triggered_scores == SIGMAS[-1]).all()
    assert (res["w-knee"].triggered_scores == 0).all()
    w = wb.estimate_smoothness(model, clean, SIGMAS, 32, seed=0)
    assert np.allclose(res["w-mean"].clean_scores, -w.mean_entropy())
    assert np.allclose(res["w-radius"].clean_scores, w.smoothness_radius())
    kept = w.frequencies[np.arange(len(clean)), :, model(clean).argmax(1).numpy()]
    assert np.allclose(res["w-consistency"].clean_scores, kept.mean(1))


def test_teco_is_the_deviation_of_the_first_flipping_severity():
    """teco_score against a direct per-input computation from `corrupt`: each corruption on the
    pristine input (independent), and TeCo's chain (cumulative: every step corrupts the previous
    step's 8-bit output, across severities and corruption types)."""
    torch.manual_seed(1)
    model = LinearK(torch.randn(5, 64) * 3, torch.randn(5))
    x = torch.rand(12, 1, 8, 8)
    names, sev = ("gaussian_noise", "contrast", "pixelate", "jpeg"), (1, 3, 5)
    with torch.no_grad():
        p0 = model(x).argmax(1)
        preds = {(c, s): model(D.corrupt(x, c, s, seed=4)).argmax(1) for c in names for s in sev}
        chained, y = {}, x
        for c in names:
            for s in sev:
                y = D.corrupt(y, c, s, seed=4, quantize=True)
                chained[c, s] = model(y).argmax(1)
    for how, got_preds in (("independent", preds), ("cumulative", chained)):
        ref = np.empty((12, len(names)))
        for i in range(12):
            for j, c in enumerate(names):
                ref[i, j] = next((s for s in sev if got_preds[c, s][i] != p0[i]), 6)
        q = how == "cumulative"
        got = D.teco_severities(model, x, names, sev, seed=4, batch_size=5, application=how,
                                quantize=q)
        assert np.array_equal(got, ref), how
        assert np.allclose(D.teco_score(model, x, names, sev, seed=4, application=how,
                                        quantize=q), ref.std(1))
    assert not np.array_equal(D.teco_severities(model, x, names, sev, seed=4),
                              D.teco_severities(model, x, names, sev, seed=4,
                                                application="independent"))


def test_teco_score_of_fixed_flip_indices():
    """Notes section 8.4: NumPy's population std of the flip indices (6 = never flips)."""
    for idx, want in (([1, 1, 6, 6], 2.5), ([2, 2, 2], 0.0), ([6] * 15, 0.0),
                      ([1] * 6 + [6] * 6, 2.5), ([1, 2, 3, 4, 5, 6], 1.707825)):
        assert np.std(idx) == pytest.approx(want, abs=1e-6)


def test_teco_applies_the_corruptions_cumulatively_as_its_code():
    """Notes section 8.4, imagecorruptions' values (uint8): contrast on a 32×32×3 image, left
    half 0, right half 255: independently (76, 178), (89, 165), (102, 153), (114, 140), (121, 133);
    cumulatively (TeCo) (76, 178), (111, 142), (123, 129), (125, 126), (125, 125). Brightness on
    a constant grey 100: independently 125, 151, 176, 202, 227; cumulatively 125, 176, 252, 255,
    255; with "class 1 iff mean > 200/255" the first flip is severity 4 independently, 3
    cumulatively."""
    img = torch.zeros(1, 3, 32, 32)
    img[..., 16:] = 1.0
    for how, want in (("independent", [(76, 178), (89, 165), (102, 153), (114, 140), (121, 133)]),
                      ("cumulative", [(76, 178), (111, 142), (123, 129), (125, 126), (125, 125)])):
        got = [(round(float(y[0, 0, 0, 0]) * 255), round(float(y[0, 0, 0, 31]) * 255))
               for _, _, y in D.teco_corruptions(img, ("contrast",), application=how)]
        assert got == want, how
    grey = torch.full((1, 3, 4, 4), 100 / 255)
    for how, want in (("independent", [125, 151, 176, 202, 227]),
                      ("cumulative", [125, 176, 252, 255, 255])):
        got = [round(float(y.mean()) * 255)
               for _, _, y in D.teco_corruptions(grey, ("brightness",), application=how)]
        assert got == want, how

    class Bright(nn.Module):
        def forward(self, x):
            m = x.flatten(1).mean(1) - 200 / 255
            return torch.stack([-m, m], 1)

    assert D.teco_severities(Bright(), grey, ("brightness",), application="independent")[0, 0] == 4
    assert D.teco_severities(Bright(), grey, ("brightness",))[0, 0] == 3
    # a colour pixel keeps hue and saturation: (200, 100, 50) → (225, 112, 56)
    px = torch.tensor([200.0, 100.0, 50.0]).view(1, 3, 1, 1) / 255
    y = D.corrupt(px, "brightness", 1, quantize=True)
    assert [round(v * 255) for v in y.flatten().tolist()] == [225, 112, 56]
    with pytest.raises(ValueError, match="`application` must be one of 'cumulative', 'independent'"):
        D.teco_corruptions(img, application="chained")


def test_cifar10_c_corruptions_match_reference_implementations():
    """The study's earlier corruptions, kept by name: strengths="cifar10-c"."""
    cc = dict(strengths="cifar10-c")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 16, 16, generator=g)
    for s, sigma in enumerate((0.4, 0.6, 0.7, 0.8, 1.0), 1):  # CIFAR-10-C's σ, 16 px: unscaled
        ref = np.stack([ndimage.gaussian_filter(im[0].double().numpy(), sigma, mode="nearest",
                                                truncate=4.0) for im in x])
        assert np.allclose(D.corrupt(x, "gaussian_blur", s, **cc)[:, 0].numpy(), ref, atol=1e-5)
    for s, c in enumerate((0.75, 0.5, 0.4, 0.3, 0.15), 1):
        m = x.mean((2, 3), keepdim=True)
        assert torch.allclose(D.corrupt(x, "contrast", s, **cc), ((x - m) * c + m).clamp(0, 1))
    for s, c in enumerate((0.05, 0.1, 0.15, 0.2, 0.3), 1):  # grey images: V + c is x + c
        assert torch.allclose(D.corrupt(x, "brightness", s, **cc), (x + c).clamp(0, 1), atol=1e-6)
    big = torch.full((1, 1, 200, 200), 0.5)
    d = D.corrupt(big, "gaussian_noise", 5, seed=1, **cc) - big
    assert float(d.std()) == pytest.approx(0.10, rel=0.03)
    y = D.corrupt(big, "impulse_noise", 5, seed=1, **cc)
    assert float((y != 0.5).double().mean()) == pytest.approx(0.07, rel=0.1)
    y = D.corrupt(big, "shot_noise", 5, seed=1, **cc) * 50  # Poisson(0.5·50): variance = mean = 25
    assert float(y.mean()) == pytest.approx(25, rel=0.02) and float(y.var()) == pytest.approx(25, rel=0.05)
    # JPEG at CIFAR-10-C's quality 40 for severity 5, as PIL writes it
    import io

    from PIL import Image

    u8 = (x[0, 0] * 255).round().to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, "JPEG", quality=40)
    pil = np.asarray(Image.open(buf), dtype=np.float64) / 255
    assert np.abs(D.corrupt(x[:1], "jpeg", 5, **cc)[0, 0].double().numpy() - pil).max() <= 2 / 255
    # every corruption: same shape, values in [0, 1], seeded, stronger with severity on average
    # (on smooth images: shuffling white noise and blurring it again can lower the difference)
    x = torch.from_numpy(ndimage.gaussian_filter(x.numpy(), (0, 0, 2, 2)))
    x = (x - x.amin((2, 3), keepdim=True)) / (x.amax((2, 3), keepdim=True) - x.amin((2, 3), keepdim=True))
    for strengths in D.STRENGTHS:
        for name in D.CORRUPTIONS:
            y = [D.corrupt(x, name, s, seed=3, strengths=strengths) for s in (1, 5)]
            assert all(v.shape == x.shape and v.min() >= 0 and v.max() <= 1 for v in y), name
            assert torch.equal(y[1], D.corrupt(x, name, 5, seed=3, strengths=strengths)), name
            assert (y[1] - x).abs().mean() >= (y[0] - x).abs().mean() - 1e-6, (strengths, name)


# --- TeCo's corruptions: imagecorruptions' strengths and algorithms (issue 20) ------------------
# Each check is derived from the package's formulas (bethgelab/imagecorruptions 1.1.2,
# corruptions.py; notes in docs/detection-references.md, section 5), computed here with NumPy,
# SciPy (which the package calls for its blurs, zoom and elastic map) and PIL, not with its code.

def test_imagenet_c_strengths_are_the_packages():
    P = D.IMAGENET_C
    assert P["gaussian_noise"] == (0.08, 0.12, 0.18, 0.26, 0.38)
    assert P["shot_noise"] == (60, 25, 12, 5, 3)
    assert P["impulse_noise"] == (0.03, 0.06, 0.09, 0.17, 0.27)
    assert P["speckle_noise"] == (0.15, 0.2, 0.35, 0.45, 0.6)
    assert P["gaussian_blur"] == (1, 2, 3, 4, 6)
    assert P["glass_blur"] == ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))
    assert P["defocus_blur"] == ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))
    assert P["motion_blur"] == ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))
    assert [len(np.arange(*a)) for a in P["zoom_blur"]] == [12, 16, 11, 13, 11]  # 1 included
    assert P["brightness"] == (0.1, 0.2, 0.3, 0.4, 0.5)
    assert P["contrast"] == (0.4, 0.3, 0.2, 0.1, 0.05)
    assert [250 * c for c in P["elastic"]] == pytest.approx([12.5, 16.25, 21.25, 25.0, 30.0])
    assert P["pixelate"] == (0.6, 0.5, 0.4, 0.3, 0.25)
    assert P["jpeg"] == (25, 18, 15, 10, 7)
    assert set(P) == set(D.CORRUPTIONS) == set(D.CIFAR10_C)


def _clipped_sd(c, half=0.5):
    """SD of clip(c·Z, −half, half), Z standard normal: the noise left after clipping at 0 and 1
    of a constant 0.5 image."""
    a = half / c
    inner = (2 * stats.norm.cdf(a) - 1) - 2 * a * stats.norm.pdf(a)
    return math.sqrt(c * c * inner + half * half * 2 * stats.norm.sf(a))


def test_imagenet_c_noise_corruptions():
    grey = torch.full((1, 1, 200, 200), 0.5)
    for s, c in enumerate(D.IMAGENET_C["gaussian_noise"], 1):  # x + N(0, c²), clipped
        d = D.corrupt(grey, "gaussian_noise", s, seed=s) - grey
        assert float(d.std()) == pytest.approx(_clipped_sd(c), rel=0.02), s
    assert _clipped_sd(0.08) == pytest.approx(0.08, rel=1e-4)  # sev 1: std 0.08, as the issue says
    # Poisson(x·c)/c: on white at c = 3, the values 0, 1/3, 2/3 and ≥ 1 (clipped) with Poisson(3)'s
    # probabilities
    y = D.corrupt(torch.ones(1, 1, 200, 200), "shot_noise", 5, seed=1).flatten().numpy()
    pm = stats.poisson(3).pmf([0, 1, 2])
    for v, want in zip((0, 1 / 3, 2 / 3, 1), (*pm, 1 - pm.sum())):
        assert np.isclose(y, v, atol=1e-6).mean() == pytest.approx(want, abs=0.01)
    y = D.corrupt(grey, "shot_noise", 1, seed=2)  # c = 60 on 0.5: mean 0.5, variance 0.5/60
    assert float(y.mean()) == pytest.approx(0.5, abs=0.002)
    assert float(y.var()) == pytest.approx(0.5 / 60, rel=0.03)
    # salt and pepper on a share c of the elements, 1:1
    y = D.corrupt(grey, "impulse_noise", 5, seed=1)
    assert float((y == 1).double().mean()) == pytest.approx(0.135, abs=0.006)
    assert float((y == 0).double().mean()) == pytest.approx(0.135, abs=0.006)
    assert float(((y != 0) & (y != 1) & (y != 0.5)).double().sum()) == 0
    d = D.corrupt(grey, "speckle_noise", 1, seed=3) - grey  # x + x·N(0, c²): SD 0.5·0.15
    assert float(d.std()) == pytest.approx(0.075, rel=0.02)


def test_imagenet_c_blurs():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 16, 16, generator=g, dtype=torch.float64)
    # gaussian blur: scikit-image's `gaussian` = scipy's gaussian_filter, edges "nearest", 4σ
    for s, sigma in enumerate(D.IMAGENET_C["gaussian_blur"], 1):
        ref = np.stack([ndimage.gaussian_filter(im[0].numpy(), sigma, mode="nearest", truncate=4.0)
                        for im in x])
        assert np.allclose(D.corrupt(x, "gaussian_blur", s)[:, 0].numpy(), ref, atol=1e-12)
    # defocus: the disk on the grid −8…8 (−r…r above 8), normalised, smoothed by OpenCV's
    # GaussianBlur (3×3, 5×5 above 8: weights exp(−t²/2σ²), reflect-101 edges = NumPy's
    # "reflect" pad); then OpenCV's filter2D with reflect-101 edges (scipy's "mirror")
    for s, (r, alias) in enumerate(D.IMAGENET_C["defocus_blur"], 1):
        half, size = (8, 3) if r <= 8 else (r, 5)
        t = np.arange(-half, half + 1)
        disk = ((t[:, None] ** 2 + t[None] ** 2) <= r * r).astype(float)
        disk /= disk.sum()
        w = np.exp(-((np.arange(size) - size // 2) ** 2) / (2 * alias ** 2))
        w /= w.sum()
        padded = np.pad(disk, size // 2, mode="reflect")
        kern = np.array([[np.sum(padded[i:i + size, j:j + size] * np.outer(w, w))
                          for j in range(len(t))] for i in range(len(t))])
        assert np.allclose(D.defocus_kernel(r, alias), kern, atol=1e-12), s
        ref = np.stack([ndimage.correlate(im[0].numpy(), kern, mode="mirror") for im in x])
        assert np.allclose(D.corrupt(x, "defocus_blur", s)[:, 0].numpy(), ref, atol=1e-12), s
    k1 = D.defocus_kernel(3, 0.1)  # severity 1: σ 0.1 leaves the 29-pixel disk of radius 3
    assert (k1 > 1e-9).sum() == 29 and np.allclose(k1[k1 > 1e-9], 1 / 29)
    # zoom blur: (x + Σ_z clipped_zoom(x, z)) / (n + 1) over np.arange(…) (1 included), each a
    # central crop of ceil(side/z) zoomed by scipy.ndimage.zoom (order 1), first `side` kept
    for s, args in enumerate(D.IMAGENET_C["zoom_blur"], 1):
        acc = []
        for im in x[:, 0].numpy():
            out = im.copy()
            for z in np.arange(*args):
                ch = int(np.ceil(16 / z))
                top = (16 - ch) // 2
                out += ndimage.zoom(im[top:top + ch, top:top + ch], z, order=1)[:16, :16]
            acc.append(out / (len(np.arange(*args)) + 1))
        assert np.allclose(D.corrupt(x, "zoom_blur", s)[:, 0].numpy(), np.stack(acc), atol=1e-12)
    # motion blur at 0° and −45°, by hand: Σ_i k_i x[r − dy_i, c − dx_i] (edges repeated), k ∝
    # exp(−i²/2σ²) over i = 0…2r, stopping at the first shift of a whole side (weights dropped)
    for radius, sigma in D.IMAGENET_C["motion_blur"][:2]:
        width = 2 * radius + 1
        k = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2))
        k /= k.sum()
        for angle in (0.0, -45.0):
            im = x[0, 0].numpy()
            ref = np.zeros_like(im)
            for i in range(width):
                dy = -math.ceil(i * math.sin(math.radians(angle)) - 0.5)
                dx = -math.ceil(i * math.cos(math.radians(angle)) - 0.5)
                if abs(dy) >= 16 or abs(dx) >= 16:
                    break
                rows = np.clip(np.arange(16) - dy, 0, 15)
                cols = np.clip(np.arange(16) - dx, 0, 15)
                ref += k[i] * im[rows][:, cols]
            got = D.motion_blur_imagenet_c(x[:1], radius, sigma, torch.tensor([angle]))
            assert np.allclose(got[0, 0].numpy(), ref, atol=1e-12), (radius, angle)
    # radius 10 on 16 pixels at 0°: shifts 0…15 only, so the weights of 16…20 are lost
    flat = D.motion_blur_imagenet_c(torch.ones(1, 1, 16, 16), 10, 3, torch.tensor([0.0]))
    k = np.exp(-np.arange(21) ** 2 / 18)
    assert float(flat.mean()) == pytest.approx(k[:16].sum() / k.sum(), abs=1e-6)


def test_imagenet_c_glass_blur_copies_pixels_in_the_packages_order():
    """For each iteration, h = H−δ…δ+1, w = W−δ…δ+1 (descending), pixel (h, w) takes the value
    at (h + dy, w + dx): the package's tuple "swap" of two RGB pixel views copies one way."""
    x = np.arange(3 * 6 * 6, dtype=float).reshape(1, 3, 6, 6)
    v = x[0].transpose(1, 2, 0).copy()  # HWC, as the package sees an RGB image
    v[0, 0], v[1, 1] = v[1, 1], v[0, 0]
    assert (v[0, 0] == v[1, 1]).all()  # NumPy: the "swap" copied (1, 1) onto (0, 0)
    delta, iterations = 2, 2
    positions = [(h, w) for h in range(6 - delta, delta, -1) for w in range(6 - delta, delta, -1)]
    rng = np.random.default_rng(0)
    u = rng.random((iterations, len(positions), 1, 2))
    ref = x[0].copy()
    for it in range(iterations):
        for k, (h, w) in enumerate(positions):
            dx, dy = (np.floor(u[it, k, 0] * 2 * delta) - delta).astype(int)
            assert -delta <= dx < delta and -delta <= dy < delta
            ref[:, h, w] = ref[:, h + dy, w + dx]
    got = D._glass_copies(torch.from_numpy(x), delta, iterations,
                          lambda *shape: torch.from_numpy(u).reshape(shape))
    assert np.array_equal(got[0].numpy(), ref)
    const = torch.full((1, 1, 16, 16), 100 / 255)
    for s in range(1, 6):  # blur, 8-bit truncation, copies, blur: a constant stays (one level)
        y = D.corrupt(const, "glass_blur", s, seed=s)
        assert float((y - 100 / 255).abs().max()) <= 1 / 255 + 1e-6


def test_imagenet_c_elastic_pixelate_jpeg():
    import io

    from PIL import Image

    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 32, 32, generator=g, dtype=torch.float64)
    # elastic: α·gaussian_filter(U(−0.005·H, 0.005·H), 0.01·side, "reflect", truncate 3), then
    # map_coordinates(order 1, "reflect") at (row + dy, col + dx)
    ux = torch.rand(2, 1, 32, 32, generator=g, dtype=torch.float64)
    uy = torch.rand(2, 1, 32, 32, generator=g, dtype=torch.float64)
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    for c in D.IMAGENET_C["elastic"]:
        dx, dy = D.elastic_fields(ux, uy, c)
        for i in range(2):
            for f, u in ((dx, ux), (dy, uy)):
                ref = ndimage.gaussian_filter(u[i, 0].numpy() * 0.32 - 0.16, 0.32, mode="reflect",
                                              truncate=3.0) * 250 * c
                assert np.allclose(f[i].numpy(), ref, atol=1e-12)
        got = D.elastic_imagenet_c(x, dx, dy)
        for i in range(2):
            ref = ndimage.map_coordinates(x[i, 0].numpy(),
                                          [rows + dy[i].numpy(), cols + dx[i].numpy()],
                                          order=1, mode="reflect")
            assert np.allclose(got[i, 0].numpy(), ref, atol=1e-12)
        assert float(dx.abs().max()) <= 0.16 * 250 * c  # displacements up to ±2 … ±4.8 pixels
    # pixelate: PIL's BOX down to int(c·side), NEAREST back up (PIL on float images, mode "F")
    for side in (16, 32):
        im = torch.rand(1, 1, side, side, generator=g)
        for s, c in enumerate(D.IMAGENET_C["pixelate"], 1):
            n = int(side * c)
            pil = Image.fromarray(im[0, 0].numpy()).resize((n, n), Image.BOX)
            ref = np.asarray(pil.resize((side, side), Image.NEAREST))
            assert np.allclose(D.corrupt(im, "pixelate", s)[0, 0].numpy(), ref, atol=1e-6), (side, s)
    # one white pixel at (0, 0) of a black 32×32: severity 2 (16×16) averages 2×2 blocks → 1/4;
    # severity 5 (8×8) 4×4 blocks → 1/16
    dot = torch.zeros(1, 1, 32, 32)
    dot[..., 0, 0] = 1
    assert float(D.corrupt(dot, "pixelate", 2)[0, 0, :2, :2].min()) == pytest.approx(0.25)
    assert float(D.corrupt(dot, "pixelate", 5)[0, 0, :4, :4].max()) == pytest.approx(1 / 16)
    # JPEG at the package's qualities, as PIL writes it
    u8 = (x[0, 0] * 255).round().to(torch.uint8).numpy()
    for s, q in enumerate(D.IMAGENET_C["jpeg"], 1):
        buf = io.BytesIO()
        Image.fromarray(u8).save(buf, "JPEG", quality=q)
        ref = np.asarray(Image.open(buf), dtype=np.float64) / 255
        assert np.array_equal(D.corrupt(x[:1], "jpeg", s)[0, 0].numpy(), ref)


def test_ibd_psc_against_a_hand_amplified_model():
    torch.manual_seed(0)
    model = wb.build_model("small-cnn-bn", 1, 10, (16, 16))
    for bn in D.batchnorm_layers(model):  # trained-looking statistics
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.2, 0.2)
    x = torch.rand(20, 1, 16, 16)
    model.train()  # the caller's mode must come back
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = D.ibd_psc_score(model, x, layers=[1, 2], amplification=1.5)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    ref = []
    for k in (1, 2):
        m = wb.build_model("small-cnn-bn", 1, 10, (16, 16))
        m.load_state_dict(before)
        m.eval()
        with torch.no_grad():
            for bn in [m.features[1], m.features[5], m.features[9]][3 - k:]:
                bn.weight *= 1.5
                bn.bias *= 1.5
            p0 = model.eval()(x).argmax(1)
            ref.append(m(x).softmax(1)[torch.arange(20), p0])
    model.train()
    assert np.allclose(got, torch.stack(ref).mean(0).numpy(), atol=1e-6)
    with torch.no_grad():
        labels = model.eval()(x).argmax(1)
    model.train()
    sel = D.ibd_psc_selection(model, x, labels, n_models=5)
    assert model.training
    if sel.fallback:
        assert sel.layers == (3,) * 5
    else:
        assert sel.layers == tuple(min(sel.xi + i, 3) for i in range(1, 6))
    assert D.ibd_psc_layers(model, x, labels) == list(sel.layers)
    old = D.ibd_psc_layers(model, x, selection="agreement")
    assert old == list(range(old[0], 4)) and 1 <= old[0] <= 3


class BNChain(nn.Module):
    """Notes section 8.3: BatchNorm2d(1, eps=0) layers with γ = 1, β = betas[i], running mean 0,
    running var 1 (each adds β), then logits (h, −h): class 0 iff h > 0, on (N, 1, 1, 1) inputs."""

    def __init__(self, betas):
        super().__init__()
        self.bns = nn.Sequential(*[nn.BatchNorm2d(1, eps=0.0) for _ in betas])
        self.lin = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            for bn, b in zip(self.bns, betas):
                bn.weight.fill_(1.0)
                bn.bias.fill_(b)
            self.lin.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        self.eval()

    def forward(self, x):
        return self.lin(self.bns(x).flatten(1))


def _chain_prob(x, betas, k, pred, omega=1.5):
    """Softmax probability of class `pred` when the last k layers have γ, β times ω, by hand."""
    h = x
    for i, b in enumerate(betas):
        g = omega if i >= len(betas) - k else 1.0
        h = g * h + g * b
    p0 = 1 / (1 + math.exp(-2 * h))
    return p0 if pred == 0 else 1 - p0


def _pool(*values):
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1)


def test_ibd_psc_selects_layers_as_backdoorbox():
    """The three-layer toy of the notes: h = x − 0.6; amplified k = 1: 1.5x − 0.9, k = 2:
    2.25x − 1.2, k = 3: 3.375x − 1.425. BackdoorBox takes the first k with error vs labels > ξ
    and amplifies ξ + 1, …, ξ + 5 layers, the all-layer model repeated."""
    model = BNChain([-0.2] * 3)
    x = _pool(0.70, 0.55)
    assert [_chain_prob(0.70, [-0.2] * 3, 3, 0), _chain_prob(0.55, [-0.2] * 3, 3, 1)] == \
        pytest.approx([0.867036, 0.296817], abs=1e-6)
    # pool A: 7 × 0.55 (class 1) and 3 × 0.70 (class 0), labels = predictions: error 0 at k = 1,
    # 0.7 at k = 2 → ξ = 2 → models {3, 3, 3, 3, 3}
    pool = _pool(*[0.55] * 7, *[0.70] * 3)
    labels = torch.tensor([1] * 7 + [0] * 3)
    sel = D.ibd_psc_selection(model, pool, labels)
    assert sel.xi == 2 and sel.layers == (3,) * 5 and sel.rates == pytest.approx((0.0, 0.7))
    assert sel.labels == "given" and not sel.fallback
    assert D.ibd_psc_score(model, x, pool, pool_labels=labels) == pytest.approx(
        [0.867036, 0.296817], abs=1e-6)
    # the study's earlier rule: agreement 0.3 < 0.6 at k = 2 → models {2, 3}
    old = D.ibd_psc_selection(model, pool, selection="agreement")
    assert old.layers == (2, 3) and old.labels == "none"
    assert D.ibd_psc_score(model, x, pool, selection="agreement") == pytest.approx(
        [0.773107, 0.389038], abs=1e-6)
    # pool B: 5 and 5: the error at k = 2 is 0.5, not > 0.6: BackdoorBox finds no ξ (and
    # fails); here every model amplifies all three layers, with a warning
    pool_b = _pool(*[0.55] * 5, *[0.70] * 5)
    with pytest.warns(UserWarning, match="no k in 1…2 amplified layers gave an error rate above"):
        sel = D.ibd_psc_selection(model, pool_b, torch.tensor([1] * 5 + [0] * 5))
    assert sel.fallback and sel.xi is None and sel.layers == (3,) * 5
    assert D.ibd_psc_layers(model, pool_b, selection="agreement") == [2, 3]
    # pool C: 10 × 0.70 labelled 7 × class 1, 3 × class 0: the model is wrong on 70% at k = 1
    # already → ξ = 1 → {2, 3, 3, 3, 3}: labels, not predictions, decide
    pool_c = _pool(*[0.70] * 10)
    labels_c = torch.tensor([1] * 7 + [0] * 3)
    sel = D.ibd_psc_selection(model, pool_c, labels_c)
    assert sel.xi == 1 and sel.layers == (2, 3, 3, 3, 3)
    want = (0.679179 + 4 * 0.867036) / 5
    assert want == pytest.approx(0.829464, abs=1e-6)
    assert D.ibd_psc_score(model, x[:1], pool_c, pool_labels=labels_c)[0] == pytest.approx(want, abs=1e-6)
    assert D.ibd_psc_layers(model, pool_c, selection="agreement") == [3]  # predictions never change
    # no labels: the predictions stand in for them, with a warning
    with pytest.warns(UserWarning, match="predictions stand in"):
        assert D.ibd_psc_selection(model, pool).labels == "predictions"
    with pytest.raises(ValueError, match=r"`labels` must have shape \(10,\)"):
        D.ibd_psc_selection(model, pool, labels[:3])


def test_ibd_psc_on_a_deeper_model():
    """Six BatchNorm layers with β = −0.1: h = x − 0.6; amplifying the last k flips class-1
    inputs above x*_k = 0.9 − 0.1k − 0.3/1.5^k (0.6, 0.567, 0.511, 0.441, 0.361). A pool of
    8 × 0.52 (class 1) and 2 × 0.70: error 0, 0, 0.8 at k = 1, 2, 3 → ξ = 3 → the models amplify
    4, 5, 6, 6, 6 layers (the study's earlier rule: 3, 4, 5, 6)."""
    betas = [-0.1] * 6
    model = BNChain(betas)
    pool = _pool(*[0.52] * 8, *[0.70] * 2)
    labels = torch.tensor([1] * 8 + [0] * 2)
    sel = D.ibd_psc_selection(model, pool, labels)
    assert sel.xi == 3 and sel.rates == pytest.approx((0.0, 0.0, 0.8))
    assert sel.layers == (4, 5, 6, 6, 6)
    assert D.ibd_psc_layers(model, pool, selection="agreement") == [3, 4, 5, 6]
    x = _pool(0.45, 0.58, 0.66, 0.9)
    pred = [1, 1, 0, 0]
    want = [np.mean([_chain_prob(float(v), betas, k, c) for k in sel.layers])
            for v, c in zip(x.flatten(), pred)]
    assert D.ibd_psc_score(model, x, pool, pool_labels=labels) == pytest.approx(want, abs=1e-6)
    assert D.ibd_psc_score(model, x, layers=[4, 5, 6, 6, 6]) == pytest.approx(want, abs=1e-6)
    # n_models = 2: ξ + 1, ξ + 2
    assert D.ibd_psc_layers(model, pool, labels, n_models=2) == [4, 5]




def test_w_knee_takes_the_sigma_where_the_clean_curve_reaches_half_its_maximum():
    from types import SimpleNamespace

    pool = SimpleNamespace(entropy=np.array([[0.0, 0.2, 0.9, 1.0, 0.7], [0.0, 0.4, 1.1, 1.2, 0.9]]))
    assert D.knee_index(pool) == 2  # means 0, 0.3, 1.0, 1.1, 0.8: the first >= 0.55
    assert D.knee_index(pool, 0.2) == 1 and D.knee_index(pool, 1.0) == 3
    with pytest.raises(ValueError, match=r"`fraction` must be a float in \(0, 1\]"):
        D.knee_index(pool, 0)


def test_w_class_standardises_per_predicted_class():
    s = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([0, 0, 1, 2])
    pool_s = np.r_[np.full(5, 1.0) + np.arange(5), np.arange(6) * 2.0, [7.0]]
    pool_p = np.r_[np.zeros(5), np.ones(6), [2]]
    out = D.class_calibrated(s, pred, pool_s, pool_p)
    z0 = (s[:2] - pool_s[:5].mean()) / pool_s[:5].std(ddof=1)
    z1 = (3.0 - pool_s[5:11].mean()) / pool_s[5:11].std(ddof=1)
    z2 = (4.0 - pool_s.mean()) / pool_s.std(ddof=1)  # one pool input of class 2: the whole pool
    assert np.allclose(out, np.r_[z0, z1, z2])


def test_bad_arguments_fail_before_any_work():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(64, 3)

        def forward(self, x):  # the checks run one image through the model; work runs more
            if len(x) > 1:
                raise AssertionError("the model ran")
            return self.lin(x.flatten(1))

    clean, triggered, pool = _gate_data(4)
    call = lambda **kw: compare_detectors(Boom(), clean, triggered, pool, SIGMAS, 8, 4, **kw)  # noqa: E731
    with pytest.raises(ValueError, match="`methods` must be one of 'strip', 'strip-mean', 'scale-up'.*got 'neural-cleanse'"):
        call(methods=("strip", "neural-cleanse"))
    with pytest.raises(TypeError, match="`methods` must be a tuple"):
        call(methods="strip")
    with pytest.raises(ValueError, match="`methods` must not repeat"):
        call(methods=("strip", "strip"))
    with pytest.raises(ValueError, match="`model` must have BatchNorm layers .* 'ibd-psc'"):
        call(methods=("strip", "ibd-psc"))
    with pytest.raises(ValueError, match=r"`scales` must be a sequence of floats in \(1, inf\); got \(1, 2\)"):
        call(methods=("scale-up",), scales=(1, 2))
    with pytest.raises(ValueError, match=r"`scales` must be a sequence of floats in \(1, inf\)"):
        call(methods=("scale-up",), scales=(0.5,))
    with pytest.raises(ValueError, match=r"`severities` must be a sequence of ints in \[1, 5\]; got \(1, 6\)"):
        call(methods=("teco",), severities=(1, 6))
    with pytest.raises(ValueError, match=r"`severities` must be a sequence of ints in \[1, 5\]"):
        call(methods=("teco",), severities=(0, 1))
    with pytest.raises(ValueError, match="`corruptions` must be one of"):
        call(methods=("teco",), corruptions=("fog",))
    with pytest.raises(ValueError, match=r"`amplification` must be a float in \(1, inf\]; got 1.0"):
        call(methods=("strip",), amplification=1.0)
    with pytest.raises(ValueError, match="`clean_pool` must hold at least one image"):
        compare_detectors(Boom(), clean, triggered, pool[:0], SIGMAS, methods=("strip",))
    with pytest.raises(ValueError, match=r"`n_boot` must be an int in \[0, inf\]; got -1"):
        call(n_boot=-1)
    with pytest.raises(ValueError, match="`triggered` must hold at least one image"):
        compare_detectors(Boom(), clean, triggered[:0], pool, SIGMAS)
    for f in (lambda: D.scale_up_score(Boom(), clean, scales=(2, 0.9)),
              lambda: D.teco_score(Boom(), clean, severities=(2, 1)),
              lambda: D.ibd_psc_score(Boom(), clean, pool),
              lambda: D.corrupt(clean, "jpeg", 6)):
        with pytest.raises(ValueError):
            f()


def test_detectors_separate_triggered_inputs(digits, digits_run):
    pairs = wb.triggered_pairs(digits.x_test, digits.y_test, digits_run.trigger, 0, n=60, seed=0)
    pool = digits.x_test[:100]
    res = compare_detectors(digits_run.model, pairs.clean, pairs.triggered, pool,
                            wb.default_sigmas("digits"), n_samples=32, n_blend=32)
    assert [r.method for r in res] == ["strip", "w-mean", "w-radius"]  # the default methods
    assert res[0].auc > 0.8  # STRIP finds a BadNets patch
    # AUC = P(triggered score > clean score) + ½·P(tie): the Mann–Whitney U statistic / (n·m)
    for r in res:
        u = stats.mannwhitneyu(r.triggered_scores, r.clean_scores).statistic
        assert r.auc == pytest.approx(u / (len(r.triggered_scores) * len(r.clean_scores)))
    # the W_σ scores are the estimator's own summaries, oriented higher = more triggered
    sig = wb.default_sigmas("digits")
    w = wb.estimate_smoothness(digits_run.model, pairs.triggered, sig, 32, seed=0)
    assert np.allclose(res[1].triggered_scores, -w.mean_entropy())
    assert np.allclose(res[2].triggered_scores, w.smoothness_radius())


def test_small_cnn_bn_learns_digits_and_a_patch_backdoor(digits):
    run = wb.train_backdoor(digits, trigger=wb.triggers.Patch(size=3), rate=0.05, target=0,
                            model="small-cnn-bn", progress=False)
    assert len(D.batchnorm_layers(run.model)) == 3
    assert run.clean_accuracy >= 0.95 and run.attack_success_rate >= 0.9


def test_detection_study_every_detector_on_one_attack(digits, tmp_path):
    from workbench import paper

    run, res = paper.detection_study("digits", n=40, n_samples=8, n_boot=100, attack="Patch")
    assert run.config["model"] == "small-cnn-bn" and [r.method for r in res] == list(D.METHODS)
    assert res[0].auc > 0.8  # STRIP finds the patch
    ibd = res[D.METHODS.index("ibd-psc")]
    assert ibd.setup_seconds > 0 and 1 <= ibd.settings["layers"][0] <= 3
    atlas = [{"dataset": "digits", "attack": "Patch", "rate": 0.05, "model": "small-cnn-bn",
              "clean_accuracy": run.clean_accuracy, "attack_success_rate": run.attack_success_rate,
              "n": 40, "results": res, "seconds": 1.0}]
    row = paper.detection_table(atlas)[0]
    assert row["strip"] == f"{res[0].auc:.3f} [{res[0].auc_ci[0]:.3f}, {res[0].auc_ci[1]:.3f}]"
    out = paper.write_detection_report(atlas, tmp_path / "d.html")
    summary = json.loads(out.with_suffix(".json").read_text())
    assert [s["method"] for s in summary] == list(D.METHODS)
    assert summary[0]["auc"] == round(res[0].auc, 4) and summary[0]["ms_per_input"] > 0
    assert "plotly" in out.read_text()[:10_000_000]
    assert len(paper.detection_heatmap(atlas).data[0].x) == len(D.METHODS)


def test_detection_study_refuses_bad_choices_before_training(monkeypatch):
    from workbench import paper

    def no_training(*a, **k):
        raise AssertionError("trained")

    from workbench.studies import detection_study

    monkeypatch.setattr(detection_study, "train_backdoor", no_training)
    with pytest.raises(ValueError, match="`attack` must be one of 'Patch'"):
        paper.detection_study(attack="WaNet")
    with pytest.raises(ValueError, match="`model` must have BatchNorm layers"):
        paper.detection_study(model="small-cnn", methods=("strip", "ibd-psc"))
    with pytest.raises(ValueError, match="`methods` must be one of"):
        paper.detection_study(methods=("strip", "spectral"))
    assert detection_report.main(["--attacks", "Patch", "--n", "1"]) == 2  # n >= 2: an error line, no work


def test_detection_command_writes_the_report(tmp_path, capsys):
    out = tmp_path / "det.html"
    assert detection_report.main(["--attacks", "Patch", "--methods", "strip", "scale-up", "--n", "20",
                   "--samples", "4", "--boot", "20", "--out", str(out), "--quiet"]) == 0
    assert out.exists() and len(json.loads(out.with_suffix(".json").read_text())) == 2
    assert "strip" in capsys.readouterr().out


# --- the study covers every attack of the atlas (issue 12) -------------------------------------

def test_the_detection_study_covers_every_attack_of_the_atlas():
    from workbench import atlas, paper

    assert paper.DETECTION_ATTACKS == tuple(atlas.ATTACKS)
    assert set(paper.DETECTION_ORIGINAL) < set(paper.DETECTION_ATTACKS)
    for ds in ("digits", "fashion-mnist"):
        for a in paper.DETECTION_ATTACKS:
            rate = paper.detection_rate(ds, a)
            want = (paper.DETECTION_RATES[ds][a] if a in paper.DETECTION_ORIGINAL
                    else atlas.attack_rates(a, ds)[1])
            assert rate == want and 0 < rate <= 1, (ds, a)
    # the command offers every attack: a new one passes argparse and is stopped by the n check
    assert detection_report.main(["--attacks", "Patch/all-to-all", "InputAware", "--n", "1"]) == 2
    with pytest.raises(ValueError, match="no trigger without its training"):
        paper.detection_trigger("InputAware")
    with pytest.raises(ValueError, match="`attack` must be one of 'Patch'"):
        paper.detection_measure(None, None, "WaNet")


# runs the session shares with test_poisoning_modes.py and test_input_aware.py (run cache)
_A2A = dict(rate=0.3, target=0, epochs=10, seed=0, target_mode="all-to-all")
_IA = dict(rate=0.3, cross_rate=0.3, target=0, epochs=16, mask_epochs=4, seed=0)
_FAST = dict(n=30, n_samples=8, n_boot=50, methods=("strip", "scale-up", "w-mean", "w-consistency"))


def _one_thread(train, *args, **kwargs):
    """Train on one torch thread: two spin-wait on a loaded 2-core machine (benchmarks/RESULTS.md)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(*args, **kwargs)
    finally:
        torch.set_num_threads(n)


def test_detection_entry_of_an_all_to_all_run_takes_every_class(digits):
    from workbench import paper

    run = _one_thread(wb.train_backdoor, digits, trigger=wb.triggers.Patch(size=3),
                      progress=False, **_A2A)
    assert paper.detection_attack(run) == "Patch/all-to-all"
    e = paper.detection_measure(digits, run, "Patch/all-to-all", **_FAST)
    assert e["target_mode"] == "all-to-all" and e["family"] == "all-to-all" and e["n"] == 30
    pairs = run.triggered_pairs(digits.x_test, digits.y_test, n=30, seed=0)
    assert (pairs.labels == 0).any()  # the target class of all-to-one is attacked too
    assert torch.equal(pairs.targets, (pairs.labels + 1) % 10)
    # the scores are those of the pairs: SCALE-UP's by hand, W_σ's from the estimator
    scale = D.scale_up_score(run.model, pairs.triggered)
    assert np.array_equal(e["results"][1].triggered_scores, scale)
    w = wb.estimate_smoothness(run.model, pairs.clean, wb.default_sigmas("digits"), 8, seed=0)
    assert np.allclose(e["results"][2].clean_scores, -w.mean_entropy())
    assert e["rate"] == 0.3 and e["attack_success_rate"] == run.attack_success_rate


def test_detection_entry_of_an_input_aware_run_uses_its_per_image_triggers(digits):
    from workbench import paper
    from workbench.input_aware import train_input_aware

    run = _one_thread(train_input_aware, digits, progress=False, **_IA)
    assert paper.detection_attack(run) == "InputAware"
    e = paper.detection_measure(digits, run, "InputAware", **_FAST)
    assert e["target_mode"] == "all-to-one" and e["family"] == "sample-specific"
    pairs = wb.triggered_pairs(digits.x_test, digits.y_test, run.trigger, 0, n=30, seed=0)
    assert (pairs.labels != 0).all()
    # each triggered input carries its own trigger: scores are those of run.trigger(clean)
    stamped = run.trigger(pairs.clean)
    pattern, _ = run.trigger.pattern_and_mask(pairs.clean[:2])
    assert not torch.equal(pattern[0], pattern[1])  # not one pattern for all
    scale = D.scale_up_score(run.model, stamped)
    assert np.array_equal(e["results"][1].triggered_scores, scale)
    w = wb.estimate_smoothness(run.model, stamped, wb.default_sigmas("digits"), 8, seed=0)
    assert np.allclose(e["results"][2].triggered_scores, -w.mean_entropy())


# --- the bootstrap intervals resample twins as pairs (issue 18, item 5) ------------------------

def _twin_scores(rng, rho, n, reps, delta=1.0):
    """`reps` draws of n twin scores: (clean, triggered) bivariate normal, unit variances,
    correlation `rho`, means 0 and `delta`. Arrays (reps, n) each."""
    z1, z2 = rng.standard_normal((2, reps, n))
    return z1, delta + rho * z1 + math.sqrt(1 - rho * rho) * z2


def _coverage(rho, reps=400, n=100, n_boot=200, seed=0, **kw):
    """Coverage and mean width of roc_analysis's 95% AUC interval over `reps` simulated studies,
    and the AUC's true sampling SD there. The true AUC compares independent draws of the two
    marginals, P(T > C) = Φ(Δ / √2) whatever the twins' correlation."""
    truth = stats.norm.cdf(1 / math.sqrt(2))
    cs, ts = _twin_scores(np.random.default_rng(seed), rho, n, reps)
    res = [roc_analysis("sim", c, t, n_boot=n_boot, seed=i, **kw) for i, (c, t) in enumerate(zip(cs, ts))]
    lo, hi = np.array([r.auc_ci for r in res]).T
    return (float(((lo <= truth) & (truth <= hi)).mean()), float((hi - lo).mean()),
            float(np.std([r.auc for r in res])), res)


@pytest.mark.parametrize("rho", [-0.8, 0.8])
def test_intervals_of_twin_scores_cover_the_true_auc(rho):
    """Clean and triggered scores of twins are correlated: resampling each set on its own gave
    coverage 0.83 at ρ = −0.8 (intervals too narrow) and 0.99 at +0.8 (too wide). Resampling
    pairs covers near 95% at both, with the width of the AUC's true sampling spread."""
    cover, width, sd, res = _coverage(rho)
    assert {r.bootstrap for r in res} == {"pairs"} and res[0].settings["bootstrap"] == "pairs"
    assert 0.88 <= cover <= 0.98, cover  # 400 studies: a binomial SE of 0.011 at 0.95
    assert width == pytest.approx(2 * 1.96 * sd, rel=0.15)  # independent: −24% / +62%


def test_independent_samples_of_different_sizes_are_resampled_each_on_its_own():
    rng = np.random.default_rng(1)
    truth = stats.norm.cdf(1 / math.sqrt(2))
    hits = []
    for i in range(300):
        c, t = rng.standard_normal(120), 1 + rng.standard_normal(80)
        r = roc_analysis("sim", c, t, n_boot=200, seed=i)
        assert r.bootstrap == "stratified"
        hits.append(r.auc_ci[0] <= truth <= r.auc_ci[1])
    assert 0.88 <= np.mean(hits) <= 0.99
    c, t = rng.standard_normal(50), rng.standard_normal(50)
    assert roc_analysis("x", c, t, paired=False, n_boot=20).bootstrap == "stratified"
    assert roc_analysis("x", c, t, paired=True, n_boot=20).bootstrap == "pairs"
    assert roc_analysis("x", c, t, paired=None, n_boot=20).bootstrap == "pairs"
    r0 = roc_analysis("x", c, t, n_boot=0)
    assert r0.bootstrap == "none" and math.isnan(r0.auc_ci[0])
    with pytest.raises(ValueError, match=r"`paired` must be False or None for scores of different "
                                         r"lengths \(50 clean, 49 triggered\); got True"):
        roc_analysis("x", c, t[:49], paired=True)
    with pytest.raises(TypeError, match=r"`paired` must be True, False or None; got 'yes'"):
        roc_analysis("x", c, t, paired="yes")


def test_the_vectorised_bootstrap_is_the_operating_points_of_each_resample():
    """Every resample's AUC and TPRs at 1% and 5% FPR, from counts, against `_operating_points`
    on the resampled arrays: ties included, pairs and independent resamples."""
    rng = np.random.default_rng(2)
    for c, t in ((rng.integers(0, 6, 230).astype(float), rng.integers(2, 9, 230).astype(float)),
                 (rng.normal(0, 1, 150), rng.normal(1, 1, 90))):
        ic = rng.integers(0, len(c), (25, len(c)))
        it = ic if len(c) == len(t) else rng.integers(0, len(t), (25, len(t)))
        got = D._boot_operating_points(c, t, D._counts(ic, len(c)), D._counts(it, len(t)))
        ref = np.array([D._operating_points(c[a], t[b]) for a, b in zip(ic, it)])
        assert np.allclose(got, ref, rtol=0, atol=1e-12)


def test_the_bootstrap_in_chunks_is_the_bootstrap_at_once(monkeypatch):
    rng = np.random.default_rng(3)
    c, t = rng.normal(0, 1, 200), rng.normal(1, 1, 200)
    whole = roc_analysis("x", c, t, n_boot=300, seed=4)
    monkeypatch.setattr(D, "_BOOT_CELLS", 4000)  # 10 resamples per chunk
    chunked = roc_analysis("x", c, t, n_boot=300, seed=4)
    assert (whole.auc_ci, whole.tpr_at_5_fpr_ci, whole.tpr_at_1_fpr_ci) == \
        (chunked.auc_ci, chunked.tpr_at_5_fpr_ci, chunked.tpr_at_1_fpr_ci)


def test_compare_detectors_resamples_twins_as_pairs():
    clean, triggered, pool = _gate_data(12)
    kw = dict(methods=("scale-up", "w-mean"), n_boot=60, seed=3)
    for r in compare_detectors(Constant([0.3, 1.0, -0.2]), clean, triggered, pool, SIGMAS, 8, 4, **kw):
        assert r.bootstrap == "pairs"
    model = Gate().eval()
    for r in compare_detectors(model, clean, triggered, pool, SIGMAS, 8, 4, **kw):
        ref = roc_analysis(r.method, r.clean_scores, r.triggered_scores, paired=True, n_boot=60, seed=3)
        assert r.bootstrap == "pairs" and r.auc_ci == ref.auc_ci
        assert r.tpr_at_5_fpr_ci == ref.tpr_at_5_fpr_ci
    # inputs that are not twins (different numbers): each set is resampled on its own
    for r in compare_detectors(model, clean, triggered[:7], pool, SIGMAS, 8, 4, **kw):
        assert r.bootstrap == "stratified"


def test_roc_analysis_keeps_its_own_copy_of_the_scores():
    """The result's scores were a view of the caller's array: changing the array afterwards
    changed the result (its scores no longer gave its AUC)."""
    rng = np.random.default_rng(0)
    c, t = rng.normal(0, 1, 40), rng.normal(1, 1, 40)
    keep_c, keep_t = c.copy(), t.copy()
    r = roc_analysis("x", c, t, n_boot=10)
    c[:], t[:] = 0.0, 0.0
    assert np.array_equal(r.clean_scores, keep_c) and np.array_equal(r.triggered_scores, keep_t)
    with pytest.raises(ValueError):  # a frozen result: its arrays are read-only too
        r.clean_scores[0] = 1.0


def test_an_interval_at_the_boundary_is_not_zero_wide():
    """A perfect separation in the sample (AUC 1) or no triggered input above the threshold (TPR
    0) gives the same value in every resample: the percentile interval was [1, 1] or [0, 0],
    certainty where 200 inputs leave room. Here the truths are AUC 0.99 and TPR at 5% FPR 0.01
    (rare outliers that 13% of samples of 200 miss): the zero-wide intervals made the coverage
    0.84 (AUC) and 0.91 (TPR); the exact bounds at the boundary bring it to 0.99 and 0.96–0.97
    (benchmarks/detection_intervals.py: 0.996 and 0.939 at full size)."""
    rng = np.random.default_rng(5)
    hits, bounds = np.zeros(2), set()
    reps = 300
    for i in range(reps):
        # AUC: clean U(0, 1), with 1% far above every triggered score U(1, 2): AUC = 0.99
        c = np.where(rng.random(200) < 0.01, rng.uniform(2, 3, 200), rng.uniform(0, 1, 200))
        r = roc_analysis("x", c, rng.uniform(1, 2, 200), n_boot=200, seed=i)
        hits[0] += r.auc_ci[0] <= 0.99 <= r.auc_ci[1]
        # TPR at 5% FPR: 10% of clean scores at 5 (no threshold below it keeps FPR <= 5%); 1% of
        # triggered at 10, the rest U(1, 2): the true TPR at 5% FPR is 0.01
        c = np.where(rng.random(200) < 0.1, 5.0, 0.0)
        t = np.where(rng.random(200) < 0.01, 10.0, rng.uniform(1, 2, 200))
        r2 = roc_analysis("x", c, t, n_boot=200, seed=i)
        hits[1] += r2.tpr_at_5_fpr_ci[0] <= 0.01 <= r2.tpr_at_5_fpr_ci[1]
        bounds.update(r.settings["exact_bounds"] + r2.settings["exact_bounds"])
    assert hits[0] / reps >= 0.95 and hits[1] / reps >= 0.92, hits / reps  # SE ≈ 0.01
    assert bounds == {"auc", "tpr_at_5_fpr", "tpr_at_1_fpr"}
    # the exact bounds: Clopper–Pearson's for a TPR of 0 or 1 out of M; for an AUC of 1, 1 − ε_N
    # − ε_M, with (1 − ε_k)^k = α/4: the clean mass above the largest clean score and the
    # triggered mass below the smallest triggered one, each at most ε with confidence 1 − α/4
    c, t = np.arange(50.0), 100 + np.arange(80.0)
    r = roc_analysis("x", c, t, n_boot=50)
    assert r.auc == 1 and r.tpr_at_5_fpr == 1 and r.settings["exact_bounds"] == [
        "auc", "tpr_at_5_fpr", "tpr_at_1_fpr"]
    eps = lambda k: 1 - 0.0125 ** (1 / k)  # noqa: E731
    assert r.auc_ci == pytest.approx((1 - eps(50) - eps(80), 1.0))
    assert r.tpr_at_5_fpr_ci == pytest.approx((0.025 ** (1 / 80), 1.0))
    assert stats.beta.ppf(0.025, 80, 1) == pytest.approx(r.tpr_at_5_fpr_ci[0])  # Clopper–Pearson
    r = roc_analysis("x", t, c, n_boot=50)  # reversed: AUC 0, TPR 0
    assert r.auc_ci == pytest.approx((0.0, eps(80) + eps(50)))
    assert r.tpr_at_1_fpr_ci == pytest.approx((0.0, 1 - 0.025 ** (1 / 50)))
    # where the bootstrap spreads, the percentile interval stays
    rng = np.random.default_rng(0)
    r = roc_analysis("x", rng.normal(0, 1, 100), rng.normal(1, 1, 100), n_boot=100)
    assert r.settings["exact_bounds"] == [] and r.auc_ci[1] < 1


# --- both evaluation sets: all inputs, and the toolboxes' filtered set (issue 20) ---------------

def test_compare_detectors_reports_both_evaluation_sets_with_their_counts():
    """With labels, each method is evaluated on every input and on the toolboxes' set: clean
    inputs the model gets right, triggered inputs the backdoor fires on."""
    model = Gate().eval()
    clean, triggered, pool = _gate_data(30)
    triggered = triggered.clone()
    triggered[:6] = clean[:6]  # six "triggered" inputs the backdoor misses (the gate stays shut)
    with torch.no_grad():
        labels = model(clean).argmax(1)
    labels[[2, 5, 11]] = (labels[[2, 5, 11]] + 1) % 4  # three clean inputs the model gets wrong
    targets = torch.zeros(30, dtype=torch.long)
    methods = ("scale-up", "w-mean")
    res = compare_detectors(model, clean, triggered, pool, SIGMAS, 8, 4, methods=methods,
                            n_boot=200, clean_labels=labels, target_labels=targets)
    assert [(r.method, r.evaluation) for r in res] == [
        ("scale-up", "all"), ("w-mean", "all"), ("scale-up", "filtered"), ("w-mean", "filtered")]
    plain = compare_detectors(model, clean, triggered, pool, SIGMAS, 8, 4, methods=methods,
                              n_boot=200)
    keep_c = np.setdiff1d(np.arange(30), [2, 5, 11])
    with torch.no_grad():  # the gate fires on 6…29; of the first six, those the model calls 0
        keep_t = np.flatnonzero(model(triggered).argmax(1).numpy() == 0)
    assert set(range(6, 30)) <= set(keep_t) and len(keep_t) < 30
    nt = len(keep_t)
    for a, p, f in zip(res[:2], plain, res[2:]):
        assert (a.n_clean, a.n_triggered, a.clean_index) == (30, 30, None)
        assert a.auc == p.auc and a.auc_ci == p.auc_ci and a.bootstrap == "pairs"
        assert (f.n_clean, f.n_triggered, f.n_clean_total, f.n_triggered_total) == (27, nt, 30, 30)
        assert np.array_equal(f.clean_index, keep_c) and np.array_equal(f.triggered_index, keep_t)
        assert np.array_equal(f.clean_scores, a.clean_scores[keep_c])
        assert np.array_equal(f.triggered_scores, a.triggered_scores[keep_t])
        y = np.r_[np.zeros(27), np.ones(nt)]
        assert f.auc == pytest.approx(roc_auc_score(y, np.r_[f.clean_scores, f.triggered_scores]))
        assert f.bootstrap == "pairs-filtered" and 0 < f.settings["n_boot_used"] <= 200
        assert f.settings["evaluation_set"] == "correct clean, successful triggered"
        row = f.row()
        assert list(row)[:5] == ["method", "AUC [95% CI]", "TPR@1%FPR", "TPR@5%FPR", "ms per input"]
        assert (row["evaluation"], row["n clean"], row["n triggered"]) == ("filtered", "27 of 30",
                                                                            f"{nt} of 30")
        assert a.row()["n clean"] == "30"
    only = compare_detectors(model, clean, triggered, pool, SIGMAS, 8, 4, methods=methods,
                             n_boot=200, clean_labels=labels, target_labels=targets,
                             evaluation="filtered")
    assert [r.evaluation for r in only] == ["filtered"] * 2 and only[0].auc == res[2].auc
    # a side with nothing left: NaN numbers and a warning, not an error
    with pytest.warns(UserWarning, match="the backdoor fires on no triggered input"):
        empty = compare_detectors(model, clean, _gate_data(30)[1], pool, SIGMAS, 8, 4,
                                  methods=("scale-up",), n_boot=20, clean_labels=labels,
                                  target_labels=torch.full((30,), 3))  # the gate answers 0
    assert math.isnan(empty[1].auc) and empty[1].n_triggered == 0 and empty[1].n_clean == 27
    with pytest.raises(ValueError, match="`clean_labels` and `target_labels` must be given together"):
        compare_detectors(model, clean, triggered, pool, SIGMAS, methods=methods, clean_labels=labels)
    with pytest.raises(ValueError, match="`evaluation` 'filtered' needs `clean_labels`"):
        compare_detectors(model, clean, triggered, pool, SIGMAS, methods=methods,
                          evaluation="filtered")
    with pytest.raises(ValueError, match=r"`target_labels` must have shape \(30,\)"):
        compare_detectors(model, clean, triggered, pool, SIGMAS, methods=methods,
                          clean_labels=labels, target_labels=targets[:3])


def test_the_filtered_bootstrap_is_the_operating_points_of_each_resample():
    """Sources resampled as pairs, each twin counted where its side keeps it: every resample's
    numbers equal `_operating_points` on the kept members of the resampled arrays."""
    rng = np.random.default_rng(4)
    c, t = rng.integers(0, 6, 120).astype(float), rng.integers(2, 9, 120).astype(float)
    kc, kt = rng.random(120) < 0.8, rng.random(120) < 0.6
    idx = rng.integers(0, 120, (30, 120))
    w = D._counts(idx, 120)
    got = D._boot_operating_points(c, t, w * kc, w * kt)
    ref = np.array([D._operating_points(c[i][kc[i]], t[i][kt[i]]) for i in idx])
    assert np.allclose(got, ref, rtol=0, atol=1e-12)


def test_intervals_of_filtered_twins_cover_the_true_auc():
    """Twin scores with correlation −0.8 (where resampling each set on its own is too narrow),
    80% of clean and 60% of triggered inputs kept at random: the pairs-filtered interval covers
    the AUC of the populations, Φ(1/√2), near 95% of the time."""
    truth = stats.norm.cdf(1 / math.sqrt(2))
    rng = np.random.default_rng(7)
    cs, ts = _twin_scores(rng, -0.8, 100, 300)
    hits = []
    for i, (c, t) in enumerate(zip(cs, ts)):
        r = roc_analysis("sim", c, t, n_boot=200, seed=i, keep_clean=rng.random(100) < 0.8,
                         keep_triggered=rng.random(100) < 0.6)
        assert r.bootstrap == "pairs-filtered" and r.evaluation == "filtered"
        hits.append(r.auc_ci[0] <= truth <= r.auc_ci[1])
    assert 0.88 <= np.mean(hits) <= 0.98, np.mean(hits)  # 300 studies: SE 0.013 at 0.95
    with pytest.raises(ValueError, match="`keep_clean` must keep at least one input"):
        roc_analysis("x", c, t, keep_clean=np.zeros(100, bool))
    with pytest.raises(TypeError, match="`keep_triggered` must be a boolean array of 100 entries"):
        roc_analysis("x", c, t, keep_triggered=np.ones(99, bool))


# --- "is this model backdoored?": model-level scores (issue 20) ---------------------------------

class MeanThreshold(nn.Module):
    """Two classes: class 1 iff the mean pixel exceeds 0.5 (logits (−(m − ½), m − ½))."""

    def forward(self, x):
        m = x.flatten(1).mean(1) - 0.5
        return torch.stack([-m, m], 1)


class NoiseSink(nn.Module):
    """K classes on 1×4×4 images: a constant image of value c/(K−1) is class c; a copy whose
    pixel variance exceeds `tau` (noise) goes to class 0 ("dominant", as to a backdoor's target)
    or to the argmax of zero-sum random projections of the pixels (roughly uniform: "balanced")."""

    def __init__(self, dominant: bool, k: int = 4, tau: float = 0.01):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        w = torch.randn(k, 16, generator=g)
        self.register_buffer("w", w - w.mean(1, keepdim=True))
        self.dominant, self.k, self.tau = dominant, k, tau

    def forward(self, x):
        f = x.flatten(1)
        clean = (f.mean(1) * (self.k - 1)).round().clamp(0, self.k - 1).long()
        noise = torch.zeros_like(clean) if self.dominant else (f @ self.w.T).argmax(1)
        cls = torch.where(f.var(1) > self.tau, noise, clean)
        return 10.0 * nn.functional.one_hot(cls, self.k).float()


def _sink_data(k=4, per_class=3):
    x = torch.arange(k).repeat_interleave(per_class).float().div(k - 1).view(-1, 1, 1, 1)
    return x.expand(-1, 1, 4, 4).contiguous(), torch.arange(k).repeat_interleave(per_class)


def test_cbd_statistic_from_fixed_votes():
    """Notes section 8.5: q₀ = (0.9, 0.05, 0.05), q₁ = (0.2, 0.7, 0.1), q₂ = (0.5, 0.1, 0.4) →
    q̄ = (0.533333, 0.283333, 0.183333): LDP 0.533333, suspected target 0."""
    ldp, t, mean = D.cbd_statistic([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4]])
    assert ldp == pytest.approx(0.533333, abs=1e-6) and t == 0
    assert mean == pytest.approx([0.533333, 0.283333, 0.183333], abs=1e-6)
    assert D.cbd_statistic(np.tile([1.0, 0, 0], (3, 1)))[0] == 1.0  # every vote to class 0


def test_cbd_score_of_a_model_with_known_votes():
    """K = 2 on 1×4×4 images (d = 16), "class 1 iff mean > 0.5", σ = 1: P(class 1 | x ≡ a) =
    Φ((a − 0.5)·√d/σ). Images ≡ 0 (class 0) and ≡ 0.75 (class 1): q̄₀ = (1 − Φ(−2) + 1 − Φ(1))/2
    = 0.567952 = E[LDP], target 0; 1,024 votes each: SE ≈ 0.0062."""
    x = torch.cat([torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.75)])
    y = torch.tensor([0, 1])
    want = (1 - stats.norm.cdf(-2) + 1 - stats.norm.cdf(1)) / 2
    assert want == pytest.approx(0.567952, abs=1e-6)
    se = math.sqrt(stats.norm.cdf(-2) * stats.norm.sf(-2) / 1024
                   + stats.norm.cdf(1) * stats.norm.sf(1) / 1024) / 2
    for seed in (0, 1):
        r = D.model_scores(MeanThreshold(), (x, y), ("cbd",), sigma=1.0, seed=seed)
        assert r.targets["cbd"] == 0 and r.standard_errors["cbd"] == pytest.approx(se, rel=0.1)
        assert abs(r.scores["cbd"] - want) < 4 * se
        assert list(r.image_indices) == [0, 1] and r.settings["sigma"] == 1.0
    again = D.model_scores(MeanThreshold(), (x, y), ("cbd",), sigma=1.0, seed=1)
    assert again.scores == r.scores  # seeded


def test_w_gap_statistic_from_fixed_entropies():
    """Four images of classes 0, 0, 1, 2 (K = 3), two σ; votes pooled: class 1 most voted; W of
    class 1's image 0.1 and 0.3, of the others 0.5…1.0: gap = (0.6833 − 0.2) / log 3."""
    h = np.array([[0.5, 0.7], [0.6, 0.8], [0.1, 0.3], [0.5, 1.0]])
    f = np.zeros((4, 2, 3))
    f[..., 1] = 0.6
    f[..., 0] = 0.3
    f[..., 2] = 0.1
    gap, t, pooled = D.w_gap_statistic(h, [0, 0, 1, 2], f, 3)
    assert t == 1 and pooled == pytest.approx([0.3, 0.6, 0.1])
    assert gap == pytest.approx((np.mean([0.5, 0.7, 0.6, 0.8, 0.5, 1.0]) - 0.2) / math.log(3))
    with pytest.raises(ValueError, match="most-voted class 1 and of another class; got none of it"):
        D.w_gap_statistic(h, [0, 0, 2, 2], f, 3)


def test_w_gap_of_a_model_with_known_votes():
    """The K = 2 toy above at σ = 1 and 2: W of the class-0 image H(Φ(−2)), H(Φ(−1)); of the
    class-1 image H(Φ(1)), H(Φ(0.5)); class 0 gets 0.5715 of the votes: gap = (mean W(x₁) −
    mean W(x₀)) / log 2 = 0.368."""
    x = torch.cat([torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.75)])
    y = torch.tensor([0, 1])
    H = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))  # noqa: E731
    w0 = [H(stats.norm.cdf(-4 * 0.5 / s)) for s in (1, 2)]
    w1 = [H(stats.norm.cdf(4 * 0.25 / s)) for s in (1, 2)]
    want = (np.mean(w1) - np.mean(w0)) / math.log(2)
    assert want == pytest.approx(0.368, abs=1e-3)
    r = D.model_scores(MeanThreshold(), (x, y), ("w-gap",), w_sigmas=(1.0, 2.0), w_samples=4096)
    assert r.targets["w-gap"] == 0
    assert abs(r.scores["w-gap"] - want) < 4 * r.standard_errors["w-gap"] + 0.002  # + plug-in bias
    assert 0 < r.standard_errors["w-gap"] < 0.02


def test_a_model_that_sends_noise_to_one_class_scores_higher():
    """A model that sends noisy copies to class 0 (as a backdoor's target draws noise) against
    one that spreads them over the classes: both model scores are higher for the first."""
    x, y = _sink_data()
    kw = dict(sigma=0.1, n_samples=512, w_sigmas=(0.08, 0.1, 0.12), w_samples=256, seed=3)
    dom = D.model_scores(NoiseSink(True), (x, y), **kw)
    bal = D.model_scores(NoiseSink(False), (x, y), **kw)
    assert dom.targets == {"cbd": 0, "w-gap": 0}
    for m in D.MODEL_METHODS:
        gap = dom.scores[m] - bal.scores[m]
        assert gap > 5 * math.hypot(dom.standard_errors[m], bal.standard_errors[m]), (m, gap)
    assert dom.scores["cbd"] > 0.5 > bal.scores["cbd"]
    assert dom.class_votes["cbd"].sum() == pytest.approx(1.0)
    assert set(dom.row()) == {"cbd", "w-gap"}


def test_model_scores_refuses_bad_input_with_a_clear_error():
    x, y = _sink_data()
    with pytest.raises(ValueError, match=r"`data` must hold at least 1 correctly classified image "
                                         r"of every class of the model \(0…3\); class 3 has 0"):
        D.model_scores(NoiseSink(True), (x[:9], y[:9]))
    with pytest.raises(ValueError, match="at least 4 correctly classified images .* class 0 has 3 \\(of 3\\)"):
        D.model_scores(NoiseSink(True), (x, y), n_per_class=4)
    with pytest.raises(ValueError, match="`methods` must be one of 'cbd', 'w-gap'; got 'strip'"):
        D.model_scores(NoiseSink(True), (x, y), ("strip",))
    with pytest.raises(TypeError, match="`data` must be a workbench Dataset"):
        D.model_scores(NoiseSink(True), x)
    with pytest.raises(ValueError, match=r"`data labels` must have shape \(12,\)"):
        D.model_scores(NoiseSink(True), (x, y[:3]))
    with pytest.raises(ValueError, match=r"`sigma` must be a float in \(0, inf\]"):
        D.model_scores(NoiseSink(True), (x, y), sigma=0)
    with pytest.raises(ValueError, match=r"`data labels` must be classes of the model \(0…3\); got 7"):
        D.model_scores(NoiseSink(True), (x, torch.full((12,), 7)))


def test_every_public_scorer_takes_float64_images_as_compare_detectors_does():
    """scale_up_score, teco_score and ibd_psc_score failed on float64 images ("expected scalar
    type Double but found Float"); now each gives the float32 images' scores."""
    torch.manual_seed(0)
    model = wb.build_model("small-cnn-bn", 1, 10, (16, 16)).eval()
    g = torch.Generator().manual_seed(1)
    x32 = torch.rand(6, 1, 16, 16, generator=g)
    pool = torch.rand(30, 1, 16, 16, generator=g)
    x64, pool64 = x32.double(), pool.double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # IBD-PSC's all-layer fallback on an untrained model
        np.testing.assert_array_equal(D.scale_up_score(model, x64),
                                      D.scale_up_score(model, x32))
        np.testing.assert_array_equal(D.teco_score(model, x64, corruptions=("gaussian_noise", "jpeg")),
                                      D.teco_score(model, x32, corruptions=("gaussian_noise", "jpeg")))
        np.testing.assert_allclose(D.ibd_psc_score(model, x64, pool64),
                                   D.ibd_psc_score(model, x32, pool), rtol=1e-6)
        np.testing.assert_allclose(D.strip_entropy(model, x64, pool64, n_blend=4),
                                   D.strip_entropy(model, x32, pool, n_blend=4), rtol=1e-6)
    assert D.model_dtype(model) == torch.float32
    assert D.model_dtype(torch.nn.ReLU()) == torch.float32
