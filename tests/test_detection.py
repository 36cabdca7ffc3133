import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

import workbench as wb
from workbench.detection import compare_detectors, roc_analysis, strip_entropy
from helpers import Constant, LinearK


def test_roc_analysis_matches_scikit_learn():
    rng = np.random.default_rng(0)
    c, t = rng.normal(0, 1, 300), rng.normal(1, 1, 200)
    r = roc_analysis("x", c, t)
    assert r.auc == pytest.approx(roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[c, t]))
    # TPR at 5% FPR against the empirical definition
    thr = np.quantile(c, 0.95)
    assert r.tpr_at_5_fpr == pytest.approx((t > thr).mean(), abs=0.03)


def test_strip_is_the_mean_per_copy_entropy():
    torch.manual_seed(0)
    model = LinearK(torch.randn(3, 4), torch.zeros(3))
    x = torch.rand(2, 1, 2, 2)
    pool = torch.rand(10, 1, 2, 2)
    h = strip_entropy(model, x, pool, n_blend=5, seed=3)
    idx = torch.randint(0, 10, (5,), generator=torch.Generator().manual_seed(3))
    for j in range(2):
        with torch.no_grad():
            p = model(0.5 * x[j] + 0.5 * pool[idx]).softmax(-1)
        ref = float((-(p * p.log()).sum(-1)).mean())
        assert h[j] == pytest.approx(ref, rel=1e-6)
    assert np.allclose(strip_entropy(Constant([0.0, 0.0]), x, pool, 4), np.log(2))
    with pytest.raises(ValueError, match="`clean_pool` images must have the shape"):
        strip_entropy(model, x, torch.rand(3, 1, 3, 3))


def test_detectors_separate_triggered_inputs(digits, digits_run):
    pairs = wb.triggered_pairs(digits.x_test, digits.y_test, digits_run.trigger, 0, n=60, seed=0)
    pool = digits.x_test[:100]
    res = compare_detectors(digits_run.model, pairs.clean, pairs.triggered, pool,
                            wb.default_sigmas("digits"), n_samples=32, n_blend=32)
    assert [r.method.split()[0] for r in res] == ["STRIP", "W_σ", "W_σ"]
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
