"""The statistics of the workbench: W_σ of one cell with its uncertainty, the certified radius,
and the interval and correlation statistics the studies report (no sampling, no plotting).

Entropy of one cell (method.md): W = −Σ_c p̂_c log p̂_c (nats), p̂ the vote frequencies (hard mode)
or the mean softmax (soft mode) of n noisy copies.
- Hard mode standard error: the delta method for the multinomial plug-in entropy,
  Var(Ĥ) ≈ (Σ p (log p)² − H²)/n (Basharin 1959).
- Soft mode, and the jackknife bias correction: a delete-a-group jackknife over G groups of
  samples (Efron & Stein 1981), with t quantiles on G − 1 degrees of freedom.
- Bias: the plug-in entropy is biased low by ≈ (K−1)/(2n); Miller (1955)–Madow add (m−1)/(2n),
  m = classes seen. Every corrected estimate is clipped to [0, log K], the range of an entropy.
- A cell whose votes all fell in one class has delta-method SE 0, yet its entropy is only known to
  be below the entropy of the distribution that puts the Clopper–Pearson upper bound
  q = 1 − (α/2)^(1/n) on the other classes (spread evenly over them): its interval's upper end.
- Dependent noise designs (antithetic pairs, Latin hypercubes, scrambled Sobol points: see
  `workbench.sampling`): votes inside a unit of U samples are not independent, so the delta
  method (which assumes iid votes) does not apply. Groups hold whole units and are independent
  replicates: the standard error is the delete-a-group jackknife over the non-empty groups, with
  t quantiles on (groups − 1) degrees of freedom, in hard mode too. The one-class bound counts
  one vote per unit (n/U independent first draws: if all n votes fell in one class, so did those).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special, stats

from ..base._validate import check_float


def entropy(p: np.ndarray) -> np.ndarray:
    """−Σ p log p over the last axis (nats), with 0·log 0 = 0 (scipy.special.entr)."""
    return special.entr(p).sum(-1)


def group_sizes(n_used: np.ndarray, groups: int, unit: int = 1) -> np.ndarray:
    """(..., G) samples per group when sample i belongs to unit i // unit and unit u to group
    u mod G (unit 1: sample i in group i mod G)."""
    g = np.arange(groups)
    n_used = np.asarray(n_used)
    full, rem = n_used // unit, n_used % unit  # whole units, samples of the partial last unit
    size = ((full[..., None] - 1 - g) // groups + 1).clip(min=0) * unit
    size = size + np.where((full[..., None] % groups == g) & (rem[..., None] > 0), rem[..., None], 0)
    return size.astype(float)


def one_class_upper(n: np.ndarray, k: int, confidence: float) -> np.ndarray:
    """Upper bound on W for a cell of n votes that all fell in one class of k.

    The other classes' total mass q is below the Clopper–Pearson upper bound 1 − (α/2)^(1/n)
    (α = 1 − confidence); the entropy is largest when q is spread evenly over the k − 1 others.
    """
    q = 1 - ((1 - confidence) / 2) ** (1 / np.asarray(n, float))
    q = np.minimum(q, (k - 1) / k)  # beyond the uniform distribution the bound is log k
    return -(1 - q) * np.log1p(-q) - q * np.log(q / (k - 1))


def cell_statistics(sums: np.ndarray, group_sums: np.ndarray | None, n_used: np.ndarray, k: int,
                    mode: str, normalize: bool, bias_correction: str | None, confidence: float,
                    groups: int, unit: int = 1):
    """Entropy, standard error, interval and frequencies of cells (..., K) of summed votes.

    sums: (N, S, K) vote counts (hard) or softmax sums (soft); group_sums: (N, S, G, K) the same
    per sample group (soft mode, jackknife correction, dependent designs) or None; n_used: (N, S)
    samples per cell; unit: samples per unit of the noise design (1: iid votes, delta method in
    hard mode; > 1: jackknife SEs over the groups of whole units in both modes).
    Returns (h, se, lo, hi, p), each (N, S) but p (N, S, K); all in nats, or fractions of log K.
    """
    n = n_used[..., None].astype(float)
    p = sums / n
    h = entropy(p)
    log_k = math.log(k)
    g_eff = np.full(n_used.shape, float(groups))
    if group_sums is not None:
        sizes = group_sizes(n_used, groups, unit)  # (N, S, G)
        filled = sizes > 0
        g_eff = filled.sum(-1).astype(float)  # fewer groups than G when there are fewer units
        with np.errstate(invalid="ignore", divide="ignore"):
            loo = (sums[:, :, None] - group_sums) / (n[:, :, None] - sizes[..., None])
        h_loo = np.where(filled, entropy(np.nan_to_num(loo)), 0.0)  # (N, S, G) leave-one-out
        loo_mean = h_loo.sum(-1) / g_eff
        dev2 = np.where(filled, (h_loo - loo_mean[..., None]) ** 2, 0.0).sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            se_jk = np.where(g_eff > 1, np.sqrt((g_eff - 1) / g_eff * dev2), np.inf)
    seen = (p > 0).sum(-1)  # m: classes seen
    n_units = np.ceil(n[..., 0] / unit)  # independent units (samples, for iid)
    # the plug-in entropy's second-order variance (m − 1)/(2n²) (Harris 1975; Paninski 2003,
    # eq. 10): the whole variance where the first-order (delta-method) term vanishes, at the
    # uniform distribution over the classes seen
    second = np.where(seen > 1, (seen - 1) / (2 * n[..., 0] ** 2), 0.0)
    if mode == "hard" and unit == 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            log_p = np.where(p > 0, np.log(p), 0.0)
        se = np.sqrt(np.maximum((p * log_p**2).sum(-1) - h**2, 0.0) / n[..., 0] + second)
    elif mode == "hard":
        # a floor under the groups' jackknife: near maximum entropy every antithetic pair can
        # split its votes, every group then holds the same counts and the jackknife SE is 0
        # (measured: 20-46% coverage at p ≈ 0.51, n = 24-64); the floor is iid's second-order
        # term: it only binds where the groups cannot see the spread
        se = np.maximum(se_jk, np.sqrt(second))
    else:
        se = se_jk
    if bias_correction == "miller-madow":
        h = h + ((p > 0).sum(-1) - 1) / (2 * n[..., 0])
    elif bias_correction == "jackknife":
        h = np.where(g_eff > 1, g_eff * h - (g_eff - 1) * loo_mean, h)
    h = np.clip(h, 0.0, log_k)  # a corrected estimate can leave the entropy's range
    # jackknife SEs rest on G − 1 degrees of freedom: t quantiles, not normal ones, or the
    # intervals undercover (measured: 86% for a nominal 95% with G = 10)
    z = critical_value(mode, confidence, g_eff, unit)
    # the plug-in is biased low by about (m − 1)/(2n) (Miller 1955): without a bias correction
    # the upper end adds it, so the interval holds both the plug-in's and Miller–Madow's (at
    # p = 1/2 a symmetric one covers 90%, not 95%, at any n)
    allowance = (np.where(seen > 1, (seen - 1) / (2 * n[..., 0]), 0.0)
                 if mode == "hard" and bias_correction is None else 0.0)
    with np.errstate(invalid="ignore"):
        lo, hi = np.clip(h - z * se, 0, log_k), np.clip(h + z * se + allowance, 0, log_k)
    if mode == "hard":
        one_class = seen == 1
        # one independent vote per unit (a unit's first draw): n / unit of them, rounded up
        hi = np.where(one_class, np.maximum(hi, one_class_upper(n_units, k, confidence)), hi)
    if normalize:
        h, se, lo, hi = h / log_k, se / log_k, lo / log_k, hi / log_k
    return h, se, lo, hi, p


def paired_jackknife_variance(sums_a: np.ndarray, group_sums_a: np.ndarray, sums_b: np.ndarray,
                              group_sums_b: np.ndarray, n_used: np.ndarray, groups: int,
                              unit: int = 1) -> np.ndarray:
    """(N, S) delete-a-group jackknife variance of H_a − H_b, the entropy difference of two cells
    that share their noise draws (a clean input and its triggered twin): groups hold whole units,
    so they are independent replicates under every noise design."""
    n = n_used[..., None].astype(float)
    sizes = group_sizes(n_used, groups, unit)
    filled = sizes > 0
    g_eff = filled.sum(-1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = (entropy(np.nan_to_num((sums_a[:, :, None] - group_sums_a) / (n[:, :, None] - sizes[..., None])))
             - entropy(np.nan_to_num((sums_b[:, :, None] - group_sums_b) / (n[:, :, None] - sizes[..., None]))))
        d = np.where(filled, d, 0.0)
        mean = d.sum(-1) / g_eff
        dev2 = np.where(filled, (d - mean[..., None]) ** 2, 0.0).sum(-1)
        return np.where(g_eff > 1, (g_eff - 1) / g_eff * dev2, 0.0)


def critical_value(mode: str, confidence: float, groups, unit: int = 1):
    """The interval's multiplier of the SE: normal for the delta method (hard mode, iid votes),
    Student's t on (groups − 1) degrees of freedom for jackknife SEs (soft mode, dependent
    designs); `groups` may be an array (the non-empty groups of each cell)."""
    if mode == "hard" and unit == 1:
        return stats.norm.ppf(0.5 + confidence / 2)
    g = np.asarray(groups, float)
    return np.where(g > 1, stats.t.ppf(0.5 + confidence / 2, np.maximum(g - 1, 1)), np.inf)


def precision_reached(se: np.ndarray, lo: np.ndarray, hi: np.ndarray, target_se: float,
                      z: float) -> np.ndarray:
    """(N, S) bool: cells whose uncertainty is at most `target_se`, read from the interval.

    The interval's half-width over z is the SE where the normal interval applies, and the honest
    uncertainty where it does not: a one-class cell (delta-method SE 0, interval up to the
    one-class bound) and cells clipped at 0 or log K are not "done" merely because their SE is
    small."""
    return np.maximum(se, (hi - lo) / (2 * z)) <= target_se


def clopper_pearson_lower(successes: np.ndarray, n: np.ndarray, alpha: float) -> np.ndarray:
    """One-sided (1 − alpha) Clopper–Pearson lower bound on a binomial proportion (0 where no
    successes)."""
    successes, n = np.asarray(successes), np.asarray(n)
    with np.errstate(invalid="ignore"):
        low = stats.beta.ppf(alpha, successes, n - successes + 1)
    return np.where(successes > 0, low, 0.0)


def certified_radii(counts: np.ndarray, select_counts: np.ndarray, n_used: np.ndarray,
                    sigmas: np.ndarray, alpha: float,
                    certify_counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cohen, Rosenfeld & Kolter (ICML 2019) CERTIFY on each cell: ((N, S) radii, (N, S) classes).

    The top class ĉ is chosen on the selection votes (`select_counts`, group 0); its probability
    is bounded on the other votes only (counts − select_counts), with a one-sided (1 − alpha)
    Clopper–Pearson bound p̲; R = σ·Φ⁻¹(p̲) where p̲ > 1/2, else 0 (abstain). Each radius holds
    with probability at least 1 − alpha over the noise. certify_counts: under a dependent noise
    design, the votes to bound on instead (one independent draw per unit outside group 0).
    """
    top = select_counts.argmax(-1)  # (N, S)
    est = counts - select_counts if certify_counts is None else certify_counts
    n_est = est.sum(-1)
    n_a = np.take_along_axis(est, top[..., None], -1)[..., 0]
    p_low = clopper_pearson_lower(n_a, n_est, alpha)
    radius = sigmas[None, :] * stats.norm.ppf(np.clip(p_low, 1e-300, 1.0))
    return np.where(p_low > 0.5, radius, 0.0), top


def t_interval(d, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, standard error, low, high): Student's t-interval of the mean of `d` (n >= 2)."""
    d = np.asarray(d, float)
    if len(d) < 2:
        raise ValueError(f"`d` must hold at least 2 values for an interval; got {len(d)}.")
    if not np.isfinite(d).all():
        raise ValueError(f"`d` must hold finite values; got {int((~np.isfinite(d)).sum())} NaN "
                         "or infinite.")
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(len(d)))
    if se == 0:  # scipy's t-test is undefined for constant data: the interval is the point
        return mean, 0.0, mean, mean
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(confidence)
    return mean, se, float(ci.low), float(ci.high)


def spearman_ci(x, y, confidence: float = 0.95) -> dict:
    """Spearman's rank correlation with a Fisher-z interval (SE = sqrt(1.06 / (n − 3)), Fieller,
    Hartley & Pearson 1957). Needs n >= 4 points."""
    confidence = check_float("confidence", confidence, 0.0, 1.0, low_open=True, high_open=True)
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n < 4:
        raise ValueError(f"`x` must have at least 4 points for a correlation interval; got {n}.")
    if len(y) != n:
        raise ValueError(f"`y` must have as many points as `x` ({n}); got {len(y)}.")
    for name, v in (("x", x), ("y", y)):
        if not np.isfinite(v).all():
            raise ValueError(f"`{name}` must hold finite values; got {int((~np.isfinite(v)).sum())} "
                             "NaN or infinite.")
    res = stats.spearmanr(x, y)
    rho = float(res.statistic)
    z = math.atanh(max(min(rho, 0.999999), -0.999999))
    half = stats.norm.ppf(0.5 + confidence / 2) * math.sqrt(1.06 / (n - 3))
    return {"rho": rho, "p_value": float(res.pvalue), "ci": (math.tanh(z - half), math.tanh(z + half)),
            "n": n}


__all__ = ["entropy", "cell_statistics", "one_class_upper", "precision_reached", "critical_value",
           "paired_jackknife_variance",
           "clopper_pearson_lower", "certified_radii", "t_interval", "spearman_ci", "group_sizes"]
