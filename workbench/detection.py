"""Detecting triggered inputs: STRIP (reference implementation) and W_σ-based scores.

STRIP (Gao et al., ACSAC 2019), as implemented here and as the paper describes it: each input x is
superimposed on N random held-out clean images by a 50/50 blend, x' = 0.5·x + 0.5·x_clean (pixel
values stay in [0, 1]); the score is the mean over the N copies of the Shannon entropy (nats) of
the model's softmax for each copy. A trojaned input keeps its target prediction under blending,
so its entropy is low. Existing toolboxes disagree (additive α = 1 without averaging, entropy taken
over the wrong axis); this one follows the paper's per-copy entropy, averaged.

Scores are oriented so that **higher = more likely triggered** (ROC convention): −entropy for
STRIP, −mean W_σ for the smoothness score, the smoothness radius as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from ._validate import check_choice, check_forwards, check_images, check_int, check_seed, check_sigmas
from .poison import make_generator
from .models import preserve_model
from .sampling import check_model as _check_model, check_model_input, model_device as _model_device
from .smoothness import estimate_smoothness


@torch.inference_mode()
def strip_entropy(model: nn.Module, inputs: torch.Tensor, clean_pool: torch.Tensor,
                  n_blend: int = 64, seed: int = 0, batch_size: int = 2048) -> np.ndarray:
    """(N,) STRIP score: mean per-copy softmax entropy (nats) over `n_blend` 50/50 blends."""
    _check_model(model)
    check_images("inputs", inputs)
    check_images("clean_pool", clean_pool)
    check_int("n_blend", n_blend, low=1)
    check_int("batch_size", batch_size, low=1)
    if not len(clean_pool):
        raise ValueError("`clean_pool` must hold at least one image to blend with; got none.")
    if inputs.shape[1:] != clean_pool.shape[1:]:
        raise ValueError(f"`clean_pool` images must have the shape of `inputs` {tuple(inputs.shape[1:])}; "
                         f"got {tuple(clean_pool.shape[1:])}.")
    dev = _model_device(model)
    check_model_input(model, inputs, "inputs")
    inputs, clean_pool = inputs.float(), clean_pool.float()  # float64 too (the models are float32)
    g = make_generator(seed)
    # the same blend partners for every input: a paired design, and reproducible
    idx = torch.randint(0, len(clean_pool), (n_blend,), generator=g)
    partners = clean_pool[idx].to(dev)  # (B, C, H, W)
    out = []
    with preserve_model(model):
        per_chunk = max(1, batch_size // n_blend)
        for i in range(0, len(inputs), per_chunk):
            x = inputs[i:i + per_chunk].to(dev)  # (n, C, H, W)
            blends = 0.5 * x[:, None] + 0.5 * partners[None]  # (n, B, C, H, W)
            p = model(blends.flatten(0, 1)).softmax(-1).double()  # (n·B, K)
            h = torch.special.entr(p).sum(-1).view(len(x), n_blend)
            out.append(h.mean(1).cpu())
    return torch.cat(out).numpy()


def smoothness_score(model: nn.Module, inputs: torch.Tensor, sigmas, n_samples: int = 64,
                     summary: str = "mean", seed: int = 0, **kwargs) -> np.ndarray:
    """(N,) W_σ-based score, higher = smoother = more likely triggered."""
    check_choice("summary", summary, ("mean", "radius"))
    res = estimate_smoothness(model, inputs, sigmas, n_samples, seed=seed, **kwargs)
    return -res.mean_entropy() if summary == "mean" else res.smoothness_radius()


@dataclass(frozen=True)
class DetectionResult:
    """ROC analysis of one score separating triggered (positive) from clean inputs."""

    method: str
    clean_scores: np.ndarray  # (N,) higher = more likely triggered
    triggered_scores: np.ndarray  # (M,)
    fpr: np.ndarray  # ROC curve
    tpr: np.ndarray
    auc: float  # area under the ROC curve
    tpr_at_5_fpr: float  # true-positive rate at 5% false-positive rate (interpolated)


def _as_scores(name: str, values) -> np.ndarray:
    """Scores as a flat float array (at least one, finite: checked by the caller)."""
    try:
        a = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be an array of numbers (one score per input); got "
                        f"{type(values).__name__}.") from None
    if a.ndim == 0:  # a number (or None) where one per input is needed
        raise TypeError(f"`{name}` must be an array of numbers (one score per input); got "
                        f"{values!r}.")
    return a.ravel()


def roc_analysis(method: str, clean_scores, triggered_scores) -> DetectionResult:
    if not isinstance(method, str):
        raise TypeError(f"`method` must be a str naming the detector; got {method!r}.")
    c, t = _as_scores("clean_scores", clean_scores), _as_scores("triggered_scores", triggered_scores)
    for name, v in (("clean_scores", c), ("triggered_scores", t)):
        if not len(v):
            raise ValueError(f"`{name}` must hold at least one score; got none.")
        if not np.isfinite(v).all():
            raise ValueError(f"`{name}` must hold finite values; got "
                             f"{int((~np.isfinite(v)).sum())} NaN or infinite.")
    y = np.r_[np.zeros(len(c)), np.ones(len(t))]
    s = np.r_[c, t]
    fpr, tpr, _ = roc_curve(y, s)
    return DetectionResult(method, c, t, fpr, tpr, float(roc_auc_score(y, s)),
                           float(np.interp(0.05, fpr, tpr)))


def compare_detectors(model: nn.Module, clean: torch.Tensor, triggered: torch.Tensor,
                      clean_pool: torch.Tensor, sigmas, n_samples: int = 64, n_blend: int = 64,
                      seed: int = 0) -> list[DetectionResult]:
    """STRIP, mean-W and radius scores on the same model and inputs (all checked first)."""
    _check_model(model)
    for name, x in (("clean", clean), ("triggered", triggered), ("clean_pool", clean_pool)):
        check_images(name, x)
        check_model_input(model, x, name)
    # float64 images too, as the estimator takes them (the models are float32)
    clean, triggered, clean_pool = clean.float(), triggered.float(), clean_pool.float()
    sig = check_sigmas("sigmas", sigmas)
    check_int("n_samples", n_samples, low=1)
    # the W_σ estimates come after other detectors' work: refuse an impossible one now
    n_est = max(len(clean), len(triggered))
    check_forwards(n_est * len(sig) * n_samples,
                   f"{n_est} inputs × {len(sig)} σ × {n_samples} samples")
    check_int("n_blend", n_blend, low=1)
    check_seed("seed", seed, generator=False)
    out = [roc_analysis("STRIP (50/50 blend, mean entropy)",
                        -strip_entropy(model, clean, clean_pool, n_blend, seed),
                        -strip_entropy(model, triggered, clean_pool, n_blend, seed))]
    for summary, name in (("mean", "W_σ (−mean over σ grid)"), ("radius", "W_σ smoothness radius")):
        out.append(roc_analysis(name, smoothness_score(model, clean, sigmas, n_samples, summary, seed),
                                smoothness_score(model, triggered, sigmas, n_samples, summary, seed)))
    return out
