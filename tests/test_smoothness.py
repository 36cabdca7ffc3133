"""Reference tests for the W_σ estimator: closed forms, SciPy, a plain loop, repeated simulation."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

import workbench as wb
from workbench import smoothness as sm
from helpers import Constant, Linear2, LinearK


def _binary_entropy(p):
    return -sum(q * math.log(q) for q in (p, 1 - p) if q > 0)


@pytest.fixture()
def linear():
    torch.manual_seed(0)
    w = torch.randn(1, 4, 4) * 0.5
    x = torch.full((1, 1, 4, 4), 0.5)
    margin = float((x.flatten() * w.flatten()).sum())
    return Linear2(w, b=-margin + 0.3), x, float(w.norm())  # margin at x is 0.3


def test_hard_votes_match_the_gaussian_closed_form(linear):
    model, x, wnorm = linear
    sigmas = [0.1, 0.3, 0.6, 1.2]
    n = 4000
    res = wb.estimate_smoothness(model, x.expand(3, -1, -1, -1).contiguous(), sigmas, n, seed=1)
    for s_i, s in enumerate(sigmas):
        p1 = stats.norm.cdf(0.3 / (s * wnorm))
        for j in range(3):
            f = res.frequencies[j, s_i, 1]
            assert abs(f - p1) < 4 * math.sqrt(p1 * (1 - p1) / n) + 1e-9
            h_true = _binary_entropy(p1)
            assert abs(res.entropy[j, s_i] - h_true) < 4 * res.entropy_se[j, s_i] + 1e-3


def test_soft_mode_matches_numerical_integration(linear):
    model, x, wnorm = linear
    sigmas = [0.2, 0.8]
    res = wb.estimate_smoothness(model, x, sigmas, 6000, mode="soft", seed=2)
    for s_i, s in enumerate(sigmas):
        # E[sigmoid(m + s‖w‖Z)], Z ~ N(0, 1)
        p1 = integrate.quad(lambda z: stats.norm.pdf(z) / (1 + math.exp(-(0.3 + s * wnorm * z))),
                            -12, 12)[0]
        assert res.frequencies[0, s_i, 1] == pytest.approx(p1, abs=4 * 0.5 / math.sqrt(6000))
        assert abs(res.entropy[0, s_i] - _binary_entropy(p1)) < 4 * res.entropy_se[0, s_i] + 1e-3
    assert res.counts is None and res.settings["mode"] == "soft"


def test_uniform_noise_matches_its_closed_form():
    # one pixel: P(class 1) = P(w(x + σu) + b > 0), u ~ U[-1, 1]
    model = Linear2(torch.tensor([[[2.0]]]), b=-0.8)
    x = torch.full((1, 1, 1, 1), 0.5)  # margin 0.2
    res = wb.estimate_smoothness(model, x, [0.2, 0.5], 5000, noise="uniform", seed=0)
    for s_i, s in enumerate([0.2, 0.5]):
        p1 = min(1.0, max(0.0, (1 + 0.2 / (2.0 * s)) / 2))
        assert res.frequencies[0, s_i, 1] == pytest.approx(p1, abs=4 * math.sqrt(p1 * (1 - p1) / 5000) + 1e-9)


def test_constant_model_has_zero_entropy():
    model = Constant([0.0, 2.0, -1.0])
    x = torch.rand(5, 1, 6, 6)
    res = wb.estimate_smoothness(model, x, [0.1, 1.0, 5.0], 100, seed=0)
    assert np.all(res.entropy == 0) and np.all(res.top_class == 1)
    soft = wb.estimate_smoothness(model, x, [0.1, 1.0], 100, mode="soft")
    p = torch.softmax(torch.tensor([0.0, 2.0, -1.0]), 0).numpy()
    assert np.allclose(soft.entropy, -(p * np.log(p)).sum(), atol=1e-9)


def test_batch_size_does_not_change_results(digits_run, digits):
    x = digits.x_test[:7]
    sig = [0.1, 0.3, 0.5]
    ref = wb.estimate_smoothness(digits_run.model, x, sig, 150, seed=5)
    for bs in (7, 37, 64, 500, 5000):
        r = wb.estimate_smoothness(digits_run.model, x, sig, 150, seed=5, batch_size=bs)
        assert np.array_equal(r.counts, ref.counts), bs
    soft_ref = wb.estimate_smoothness(digits_run.model, x, sig, 100, mode="soft", seed=5)
    soft = wb.estimate_smoothness(digits_run.model, x, sig, 100, mode="soft", seed=5, batch_size=33)
    assert np.allclose(soft.frequencies, soft_ref.frequencies, atol=1e-6)


@pytest.mark.parametrize("common_noise", [False, True])
def test_agrees_with_a_plain_per_input_loop(digits_run, digits, common_noise):
    """The reference pattern of research code: one batch of n noisy copies per input and σ."""
    model, x, sig, n, seed = digits_run.model, digits.x_test[:4], [0.05, 0.4], 100, 11
    res = wb.estimate_smoothness(model, x, sig, n, seed=seed, common_noise=common_noise)
    for j in range(len(x)):
        for s_i, s in enumerate(sig):
            blocks = []
            for b in range(math.ceil(n / sm.NOISE_BLOCK)):
                words = (seed, j, b) if common_noise else (seed, j, b, s_i + 1)
                g = torch.Generator().manual_seed(sm.mix_seed(*words))
                blocks.append(torch.randn((sm.NOISE_BLOCK, *x.shape[1:]), generator=g))
            eps = torch.cat(blocks)[:n]
            with torch.no_grad():
                pred = model(x[j] + s * eps).argmax(1)
            counts = torch.bincount(pred, minlength=10).numpy()
            assert np.array_equal(res.counts[j, s_i], counts)
            p = counts / n
            h = -sum(q * math.log(q) for q in p if q > 0)
            assert res.entropy[j, s_i] == pytest.approx(h, abs=1e-12)


def test_confidence_intervals_cover_at_the_nominal_rate():
    # 3 classes, probabilities known by a one-pixel linear model with Gaussian noise
    w = torch.tensor([[1.0], [0.0], [-1.0]])
    model = LinearK(w, torch.tensor([0.0, 0.25, 0.0]))
    x = torch.full((1, 1, 1, 1), 0.1)
    sigma = 0.6
    # truth by the exact class probabilities: class c wins where its logit is largest
    z = np.linspace(-10, 10, 400001)
    xv = 0.1 + sigma * z
    logits = np.stack([xv, np.full_like(xv, 0.25), -xv])
    win = logits.argmax(0)
    pdf = stats.norm.pdf(z)
    p = np.array([np.trapezoid(pdf * (win == c), z) for c in range(3)])
    h_true = -(p * np.log(p)).sum()
    reps, n = 400, 300
    # each copy of the input gets its own noise: 400 independent replications in one call
    res = wb.estimate_smoothness(model, x.expand(reps, -1, -1, -1).contiguous(), [sigma], n, seed=9)
    cover = np.mean((res.ci_low[:, 0] <= h_true) & (h_true <= res.ci_high[:, 0]))
    assert 0.91 <= cover <= 0.985, cover
    # the standard error predicts the spread across replications
    assert res.entropy[:, 0].std() == pytest.approx(res.entropy_se[:, 0].mean(), rel=0.15)
    # Miller–Madow removes most of the (K−1)/(2n) downward bias of the plug-in entropy
    mm = wb.estimate_smoothness(model, x.expand(reps, -1, -1, -1).contiguous(), [sigma], n, seed=9,
                                bias_correction="miller-madow")
    assert abs(mm.entropy.mean() - h_true) < abs(res.entropy.mean() - h_true)


def test_soft_jackknife_intervals_cover():
    model = Linear2(torch.tensor([[[1.5]]]), b=-0.6)
    x = torch.full((1, 1, 1, 1), 0.5)
    reps = 300
    res = wb.estimate_smoothness(model, x.expand(reps, -1, -1, -1).contiguous(), [0.5], 200,
                                 mode="soft", seed=4)
    p1 = integrate.quad(lambda z: stats.norm.pdf(z) / (1 + math.exp(-(0.15 + 0.75 * z))), -12, 12)[0]
    h_true = _binary_entropy(p1)
    cover = np.mean((res.ci_low[:, 0] <= h_true) & (h_true <= res.ci_high[:, 0]))
    assert 0.88 <= cover <= 0.99, cover


def test_certified_radius_is_cohen_certify(digits_run, digits):
    """CERTIFY (Cohen et al. 2019): class picked on the selection votes, bounded on the others;
    checked against scipy's exact binomial interval (an independent implementation)."""
    sig = [0.1, 0.25]
    res = wb.estimate_smoothness(digits_run.model, digits.x_test[:6], sig, 200, seed=0)
    assert (res.selection_counts.sum(-1) == 20).all()  # samples 0, 10, ..., 190: a tenth
    assert (res.selection_counts <= res.counts).all()
    r = res.certified_radius(alpha=0.001)
    for j in range(6):
        for s_i, s in enumerate(sig):
            top = res.selection_counts[j, s_i].argmax()
            rest = res.counts[j, s_i] - res.selection_counts[j, s_i]
            # one-sided 1 − α lower bound = lower end of the two-sided 1 − 2α exact interval
            p_low = stats.binomtest(int(rest[top]), int(rest.sum())).proportion_ci(
                confidence_level=1 - 2 * 0.001, method="exact").low
            expect = s * stats.norm.ppf(p_low) if p_low > 0.5 else 0.0
            assert r[j, s_i] == pytest.approx(expect, rel=1e-6, abs=1e-9)
    assert (r[:, 0] > 0).any()
    # the maximum over σ spends alpha / S on each scale (Bonferroni), so it is never larger
    # than the per-σ radii at alpha and equals their maximum at alpha / S
    m = res.max_certified_radius(alpha=0.001)
    assert np.allclose(m, res.certified_radius(alpha=0.001 / 2).max(1))
    assert (m <= r.max(1) + 1e-12).all()
    assert np.array_equal(res.summary("certified"), res.max_certified_radius())
    with pytest.raises(ValueError, match="mode='hard'"):
        wb.estimate_smoothness(digits_run.model, digits.x_test[:2], [0.1], 20, mode="soft").certified_radius()


def test_certified_radius_holds_at_its_level():
    """Simulation: for a linear two-class model the smoothed classifier's true top-class
    probability is Φ(margin/σ); a certified radius claims p_A >= Φ(R/σ). The claim must hold in
    at least 1 − α of repetitions (here it should fail in about α of them: not more)."""
    model = Linear2(torch.ones(1, 2, 2) / 2, b=-0.9)  # ‖w‖ = 1: margin = w·x + b
    x = torch.full((400, 1, 2, 2), 0.5)  # w·x + b = 0.1: true p_A = Φ(0.1 / σ)
    sigma, alpha = 0.1, 0.05
    res = wb.estimate_smoothness(model, x, [sigma], 64, seed=7)
    r = res.certified_radius(alpha=alpha)[:, 0]
    p_true = stats.norm.cdf(0.1 / sigma)
    claims = r > 0
    wrong = claims & (stats.norm.cdf(r / sigma) > p_true + 1e-12)
    assert claims.mean() > 0.5 and wrong.mean() <= alpha + 0.03, (claims.mean(), wrong.mean())


def test_summaries():
    sig = np.array([0.1, 0.2, 0.3, 0.4])
    h = np.array([[0.0, 0.1, 0.3, 0.5], [0.0, 0.0, 0.0, 0.0], [0.5, 0.6, 0.7, 0.7]])
    res = sm.SmoothnessResult(sig, h, h * 0, h, h, np.zeros((3, 4, 10)), None, np.full((3, 4), 10),
                              10, {"mode": "hard"})
    assert np.allclose(res.mean_entropy(), np.trapezoid(h, sig, axis=1) / 0.3)
    r = res.smoothness_radius(threshold=0.2)
    assert r[0] == pytest.approx(0.25)  # between 0.2 (0.1) and 0.3 (0.3)
    assert r[1] == pytest.approx(0.4)  # never exceeds: censored at the last σ
    assert r[2] == pytest.approx(0.1 * 0.2 / 0.5)  # hard mode: interpolated from W_0 = 0


def test_adaptive_sampling_reaches_the_target(digits_run, digits):
    x = digits.x_test[:6]
    res = wb.estimate_smoothness(digits_run.model, x, [0.2, 0.5, 0.8], 64, seed=0,
                                 target_se=0.03, max_samples=1024)
    z = stats.norm.ppf(0.975)
    uncertainty = np.maximum(res.entropy_se, (res.ci_high - res.ci_low) / (2 * z))
    assert ((uncertainty <= 0.03) | (res.n_samples == 1024)).all()
    assert res.n_samples.min() < 1024 and res.n_samples.max() > 64  # stopped where precise enough
    # extra samples continue the same noise stream: a cell's first 64 draws are the fixed run's
    fixed = wb.estimate_smoothness(digits_run.model, x, [0.2, 0.5, 0.8], 1024, seed=0)
    full = res.n_samples == 1024
    assert np.array_equal(res.counts[full], fixed.counts[full])


def test_adaptive_sampling_does_not_stop_on_a_one_class_cell():
    # every vote in one class: SE 0 at the first round, but W is only known to be below the
    # one-class bound; the old rule (SE <= target) stopped here at 64 samples
    res = wb.estimate_smoothness(Constant([0.0, 1.0]), torch.rand(2, 1, 4, 4), [0.1], 64,
                                 target_se=0.01, max_samples=8192)
    assert (res.entropy_se == 0).all() and (res.entropy == 0).all()
    z = stats.norm.ppf(0.975)
    assert (res.n_samples > 64).all()
    assert ((res.ci_high - res.ci_low) / (2 * z) <= 0.01).all()


def test_one_class_interval_bound_is_clopper_pearson():
    n, k = 50, 10
    res = wb.estimate_smoothness(Constant(torch.arange(k, dtype=torch.float32)),
                                 torch.rand(1, 1, 4, 4), [0.2], n)
    # the other classes' mass is at most the exact (Clopper–Pearson) upper bound for 0 of n,
    # and W is largest with that mass spread evenly over the other k − 1 classes
    q = stats.binomtest(0, n).proportion_ci(0.95, method="exact").high
    p = np.r_[1 - q, np.full(k - 1, q / (k - 1))]
    assert res.ci_high[0, 0] == pytest.approx(stats.entropy(p), rel=1e-9)
    assert res.ci_low[0, 0] == 0 and res.entropy[0, 0] == 0


def test_miller_madow_stays_in_range_and_inside_its_interval():
    # K = 2, n = 4: the plug-in is log 2 at a 2/2 split, and + (m − 1)/(2n) = 1/8 went above log K
    model = Linear2(torch.ones(1, 2, 2), b=-2.0)
    x = torch.full((200, 1, 2, 2), 0.5)  # on the boundary: p = 1/2
    res = wb.estimate_smoothness(model, x, [1.0], 4, bias_correction="miller-madow", seed=0)
    h = res.entropy[:, 0]
    assert (h <= math.log(2) + 1e-12).all() and (h >= 0).all()
    assert ((res.ci_low[:, 0] <= h + 1e-12) & (h <= res.ci_high[:, 0] + 1e-12)).all()
    assert np.isclose(h, math.log(2)).any()  # clipped there, where the old code gave log 2 + 1/8


def test_jackknife_bias_correction_reduces_the_bias():
    # P(class 1) = Φ((w·x + b) / (σ‖w‖)) exactly; at n = 20 the plug-in is biased low
    model = Linear2(torch.ones(1, 2, 2), b=-2.2)
    x = torch.full((300, 1, 2, 2), 0.5)
    sigma = 0.5
    p1 = stats.norm.cdf(-0.2 / (sigma * 2.0))
    h_true = _binary_entropy(p1)
    plug = wb.estimate_smoothness(model, x, [sigma], 20, seed=0).entropy[:, 0]
    jk = wb.estimate_smoothness(model, x, [sigma], 20, seed=0, bias_correction="jackknife").entropy[:, 0]
    assert abs(jk.mean() - h_true) < 0.5 * abs(plug.mean() - h_true)
    assert (jk >= 0).all() and (jk <= math.log(2)).all()


def test_results_do_not_depend_on_memory_budget_batch_size_or_precision(digits_run, digits):
    x = digits.x_test[:5]
    base = wb.estimate_smoothness(digits_run.model, x, [0.1, 0.4], 200, seed=3)
    small = wb.estimate_smoothness(digits_run.model, x, [0.1, 0.4], 200, seed=3,
                                   memory_budget=2**20, batch_size=7)
    assert np.array_equal(base.counts, small.counts)
    # bf16 autocast on the CPU: votes may differ only near decision boundaries
    bf = wb.estimate_smoothness(digits_run.model, x, [0.1, 0.4], 200, seed=3, precision="bf16")
    assert bf.settings["precision"] == "bf16"
    assert np.abs(bf.counts - base.counts).sum() / base.counts.sum() < 0.05


def test_soft_mode_radius_starts_at_the_first_sigma():
    sig = np.array([0.1, 0.2, 0.3])
    h = np.array([[0.5, 0.6, 0.7], [0.0, 0.1, 0.3]])
    res = sm.SmoothnessResult(sig, h, h * 0, h, h, np.zeros((2, 3, 10)), None, np.full((2, 3), 10),
                              10, {"mode": "soft"})
    r = res.smoothness_radius(threshold=0.2)
    assert r[0] == pytest.approx(0.1)  # soft W never starts at 0: above already at the first σ
    assert r[1] == pytest.approx(0.25)
    with pytest.raises(ValueError, match=r"`threshold` must be a float in \(0, 2.30"):
        res.smoothness_radius(threshold=5.0)


def test_common_random_numbers(digits_run, digits):
    x = digits.x_test[:3]
    a = wb.estimate_smoothness(digits_run.model, x, [0.3], 128, seed=1)
    b = wb.estimate_smoothness(digits_run.model, x.clone(), [0.3], 128, seed=1)
    c = wb.estimate_smoothness(digits_run.model, x, [0.3], 128, seed=2)
    assert np.array_equal(a.counts, b.counts) and not np.array_equal(a.counts, c.counts)
    g = wb.estimate_smoothness(digits_run.model, x, [0.3], 64, seed=torch.Generator().manual_seed(3))
    assert g.entropy.shape == (3, 1) and isinstance(g.settings["seed"], int)


def test_clip_normalize_and_settings():
    seen = {}

    class Spy(Constant):
        def forward(self, x):
            seen["min"], seen["max"] = float(x.min()), float(x.max())
            return super().forward(x)

    m = Spy([0.0, 1.0])
    wb.estimate_smoothness(m, torch.rand(2, 1, 4, 4), [2.0], 64, clip=True)
    assert seen["min"] >= 0 and seen["max"] <= 1
    wb.estimate_smoothness(m, torch.rand(2, 1, 4, 4), [2.0], 64)
    assert seen["min"] < 0 and seen["max"] > 1
    model = Linear2(torch.ones(1, 2, 2), b=-2.0)
    raw = wb.estimate_smoothness(model, torch.full((4, 1, 2, 2), 0.5), [1.0], 256, seed=0)
    norm = wb.estimate_smoothness(model, torch.full((4, 1, 2, 2), 0.5), [1.0], 256, seed=0,
                                  normalize=True)
    assert np.allclose(norm.entropy, raw.entropy / math.log(2)) and norm.units == "fraction of log K"
    assert raw.settings["seed"] == 0 and raw.settings["n_samples"] == 256


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(sigmas=[0.3, 0.1]), ValueError, "`sigmas` must be strictly increasing"),
    (dict(sigmas=[]), ValueError, "`sigmas` must be a non-empty"),
    (dict(sigmas=[-0.1]), ValueError, "`sigmas` must hold finite floats >= 0"),
    (dict(n_samples=0), ValueError, r"`n_samples` must be an int in \[1, inf\]; got 0"),
    (dict(mode="fuzzy"), ValueError, "`mode` must be one of 'hard', 'soft'; got 'fuzzy'"),
    (dict(noise="laplace"), ValueError, "`noise` must be one of"),
    (dict(clip=(1, 0)), ValueError, "`clip` must be"),
    (dict(seed=-1), ValueError, r"`seed` must be an int in \[0, "),
    (dict(seed=2**64), ValueError, r"`seed` must be an int in \[0, "),
    (dict(clip=(float("nan"), 1)), ValueError, "`clip` must be"),
    (dict(mode="soft", n_samples=5), ValueError, r"`n_samples` must be >= 10"),
    (dict(bias_correction="jackknife", n_samples=5), ValueError, r"`n_samples` must be >= 10"),
    (dict(inputs=torch.rand(0, 1, 4, 4)), ValueError, "`inputs` must hold at least one image"),
    (dict(inputs=torch.full((2, 1, 4, 4), float("nan"))), ValueError, "`inputs` must hold finite"),
    (dict(inputs=torch.full((2, 1, 4, 4), float("inf"))), ValueError, "`inputs` must hold finite"),
    (dict(n_samples=10**12), ValueError, "`n_samples` asks for up to"),
    (dict(device="nonsense"), ValueError, "`device` must be a device of this machine, one of cpu"),
    (dict(confidence=float("nan")), ValueError, "`confidence`"),
    (dict(confidence=1.0), ValueError, "`confidence`"),
    (dict(mode="soft", bias_correction="miller-madow"), ValueError, "mode='hard' only"),
    (dict(max_samples=10), ValueError, "`max_samples`"),
])
def test_bad_arguments(kwargs, exc, match):
    args = dict(model=Constant([0.0, 1.0]), inputs=torch.rand(2, 1, 4, 4), sigmas=[0.1],
                n_samples=64)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        wb.estimate_smoothness(**args)


def test_bad_inputs_and_model():
    with pytest.raises(ValueError, match="`inputs` must hold values in \\[0, 1\\]"):
        wb.estimate_smoothness(Constant([0.0, 1.0]), torch.full((1, 1, 2, 2), 3.0), [0.1])
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module"):
        wb.estimate_smoothness(lambda x: x, torch.rand(1, 1, 2, 2), [0.1])


def test_compare_smoothness_statistics(digits_run, digits):
    pairs = wb.triggered_pairs(digits.x_test, digits.y_test, digits_run.trigger, 0, n=30, seed=0)
    sig = [0.05, 0.15, 0.3, 0.45, 0.6]
    cmp = wb.compare_smoothness(digits_run.model, pairs.clean, pairs.triggered, sig, 64, seed=0)
    d = cmp.clean.mean_entropy() - cmp.triggered.mean_entropy()
    assert np.allclose(cmp.differences, d) and cmp.gap == pytest.approx(d.mean())
    w = stats.wilcoxon(d)
    assert cmp.p_value == pytest.approx(w.pvalue) and cmp.wilcoxon_statistic == pytest.approx(w.statistic)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    assert cmp.gap_ci == pytest.approx((d.mean() - half, d.mean() + half))
    assert cmp.gap > 0 and cmp.p_value < 0.01  # backdoor smoothing on the demo's model
    rad = wb.compare_smoothness(digits_run.model, pairs.clean, pairs.triggered, sig, 64,
                                summary="radius", seed=0)
    assert np.allclose(rad.differences, rad.triggered_summary - rad.clean_summary)
    with pytest.raises(ValueError, match="`triggered` must have the shape"):
        wb.compare_smoothness(digits_run.model, pairs.clean, pairs.triggered[:3], sig)
