"""Detecting backdoors from the model's behaviour: test-time detectors of triggered inputs (STRIP,
SCALE-UP, TeCo, IBD-PSC, as their authors ran them, and scores built on W_σ) with one ROC
analysis, and model-level scores ("is this model backdoored?": CBD and a W_σ statistic).

Every input-level detector asks how the model's answer survives a perturbation of the input or of
the model, and every score is oriented so that **higher = more likely triggered** (ROC convention):

    strip          −mean softmax entropy over plain sums x + x_c with clean images (Gao et al. 2019)
    strip-mean     the same over 50/50 blends (the study's earlier STRIP; not the authors')
    scale-up       share of pixel-scaled copies (×3, 5, 7, 9, 11) that keep the prediction
                   (Guo et al. 2023)
    teco           std over corruption types of the severity that first flips the prediction
                   (Liu et al. 2023; imagecorruptions' strengths, applied cumulatively)
    ibd-psc        mean confidence in the prediction under amplified BatchNorm parameters
                   (Hou et al. 2024; needs a model with BatchNorm, e.g. "small-cnn-bn")
    w-mean         −mean W_σ over the σ grid (Grosse et al. 2022's measure)
    w-radius       the smoothness radius: first σ at which W_σ exceeds 10% of log K
    w-consistency  share of noisy votes that keep the unperturbed prediction, mean over σ
    w-knee         −W_σ at one σ: where the clean pool's mean W_σ first reaches half its maximum
    w-class        −mean W_σ standardised by the clean pool's inputs of the same predicted class

`compare_detectors` runs any of them and returns one `DetectionResult` per method: ROC curve,
AUC and the true-positive rates at 1% and 5% false positives, each with a bootstrap interval
(over twin pairs: a clean input and its triggered twin are resampled together), and the time per
input; with labels, on every input and on the toolboxes' filtered set (correct clean, successful
triggered), each result saying its set and counts. `corrupt` exposes TeCo's corruptions.
`model_scores` gives one suspicion score per model (higher = more suspicious): "cbd" (Xiang,
Xiong, Li, NeurIPS 2023) and "w-gap" (the workbench's).

Reference implementations read (docs/detection-references.md has the file and line of each
statement): garrisongys/STRIP @ 6588a38 (notebook), THUYimingLi/BackdoorBox @ af3afd1
(SCALE_UP.py, IBD_PSC.py), CGCL-codes/TeCo @ 4eacfaf (teco.py), bethgelab/imagecorruptions 1.1.2,
zhenxianglance/CBD @ c100ee3. Remaining differences from them, detector by detector (each
function's docstring has the details):

    strip      partners from the caller's held-out pool, seeded (the notebook: training images,
               unseeded); nats (bits: ROC-invariant); no normal-fit 1% threshold
    scale-up   no data-limited standardisation (a positive affine map: ROC-invariant); no T = 0.5
    teco       12 of 15 corruptions (no snow, frost, fog); float arithmetic with 8-bit truncation
               after each step (pixelate: no rounding between its resizes); seeded draws shared
               by twins (unseeded per image there); one channel kept as one (RGB there)
    ibd-psc    every affine BatchNorm type (BatchNorm2d only there); a warned all-layer fallback
               where BackdoorBox finds no ξ and fails; no T = 0.9
    all        which inputs are scored is the caller's; `compare_detectors` reports both sets
    cbd        seeded image choice; no shadow-model calibration or certification
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_curve
from torch import nn

from ..base._validate import (check_choice, check_float, check_forwards, check_images, check_int,
                              check_labels, check_seed, check_sigmas)
from ..base.models import preserve_model
from ..attacks.poison import make_generator
from ..estimator.sampling import (check_model as _check_model, check_model_input, mix_seed,
                                  model_device as _model_device)
from ..estimator.smoothness import estimate_smoothness

# Bump when a detector's or model statistic's scores change for the same inputs and settings
# (results of the multi-seed study record it: `workbench.detection_seeds`).
DETECTION_VERSION = 1
METHODS = ("strip", "strip-mean", "scale-up", "teco", "ibd-psc", "w-mean", "w-radius", "w-consistency",
           "w-knee", "w-class")
DEFAULT_METHODS = ("strip", "w-mean", "w-radius")  # compare_detectors' methods before `methods=`
LABELS = {"strip": "STRIP (Gao et al. 2019)",
          "strip-mean": "STRIP with 50/50 blends (the study's earlier variant)", "scale-up": "SCALE-UP (Guo et al. 2023)",
          "teco": "TeCo (Liu et al. 2023)", "ibd-psc": "IBD-PSC (Hou et al. 2024)",
          "w-mean": "W_σ mean over σ grid", "w-radius": "W_σ smoothness radius",
          "w-consistency": "W_σ votes kept (consistency)",
          "w-knee": "W_σ at the clean curve's half-rise σ",
          "w-class": "W_σ mean, per-class calibrated"}
W_METHODS = ("w-mean", "w-radius", "w-consistency", "w-knee", "w-class")
EVALUATIONS = ("all", "filtered", "both")  # compare_detectors' evaluation sets
POOL_METHODS = ("strip", "strip-mean", "ibd-psc", "w-knee", "w-class")  # those that use the held-out clean pool
KNEE_FRACTION = 0.5  # w-knee's σ: where the clean pool's mean W first reaches this share of its max

# SCALE-UP's amplification factors: BackdoorBox's `scale_set` default (core/defenses/SCALE_UP.py).
# The study's earlier factors, 2…11, are STUDY_SCALES (pass them as `scales`).
DEFAULT_SCALES = (3, 5, 7, 9, 11)
STUDY_SCALES = tuple(range(2, 12))

# STRIP's superimposition: "sum" (the authors': x + x_c unclipped) or "mean" (0.5·x + 0.5·x_c)
STRIP_SUPERIMPOSE = ("sum", "mean")
STRIP_PARTNERS = ("per-input", "shared")

# TeCo: 12 of the 15 ImageNet-C corruptions (Hendrycks & Dietterich 2019) that TeCo's released code
# applies, in its order (snow, frost and fog are left out: frost needs the package's texture
# photographs; snow and fog are not implemented here). Names: "elastic" and "jpeg" are
# imagecorruptions' "elastic_transform" and "jpeg_compression".
TECO_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
                    "motion_blur", "zoom_blur", "brightness", "contrast", "elastic", "pixelate",
                    "jpeg")
CORRUPTIONS = TECO_CORRUPTIONS + ("speckle_noise", "gaussian_blur")
TECO_SEVERITIES = (1, 2, 3, 4, 5)
MAX_SEVERITY = 5
PACKAGE_NAMES = {"elastic": "elastic_transform", "jpeg": "jpeg_compression"}  # ours: the package's
# "imagenet-c": the `imagecorruptions` package's strengths (bethgelab/imagecorruptions 1.1.2,
# imagecorruptions/corruptions.py; the constants are unchanged since its first commit), which
# TeCo's code calls: sizes in pixels, applied unscaled whatever the image size, as TeCo does on
# 32x32 images. "cifar10-c": CIFAR-10-C's (hendrycks/robustness, make_cifar_c.py), the study's
# earlier strengths, with its own earlier algorithms (see `corrupt`).
STRENGTHS = ("imagenet-c", "cifar10-c")
TECO_APPLICATIONS = ("cumulative", "independent")
IMAGENET_C = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),  # std, added
    "shot_noise": (60, 25, 12, 5, 3),  # c: Poisson(x·c) / c
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),  # share of elements set to 0 or 1 (1:1)
    "speckle_noise": (0.15, 0.20, 0.35, 0.45, 0.60),  # std of the multiplicative noise
    "gaussian_blur": (1, 2, 3, 4, 6),  # σ in pixels
    "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),  # σ, δ, iterations
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),  # disk radius, alias σ
    "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),  # kernel radius, σ (pixels)
    "zoom_blur": ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02),
                  (1, 1.31, 0.03)),  # np.arange(start, stop, step): the zoom factors, 1 included
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),  # added to the HSV value
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),  # factor towards the per-channel mean
    "elastic": (0.05, 0.065, 0.085, 0.1, 0.12),  # α = 250 · this
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),  # side of the coarse image, share of the side
    "jpeg": (25, 18, 15, 10, 7),  # JPEG quality
}
CIFAR10_C = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # std
    "shot_noise": (500, 250, 100, 75, 50),  # Poisson rate per unit intensity
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # share of salt-and-pepper pixels
    "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),  # std of the multiplicative noise
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # σ in pixels of a 32-pixel image
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),  # disk r, alias σ
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),  # σ, δ, it.
    "motion_blur": (1.0, 1.5, 2.0, 2.5, 3.0),  # σ in pixels along a random direction
    "zoom_blur": (0.06, 0.11, 0.16, 0.21, 0.26),  # zooms 1, 1.01, … below 1 + this
    "brightness": (0.05, 0.10, 0.15, 0.20, 0.30),  # added to the HSV value
    "contrast": (0.75, 0.50, 0.40, 0.30, 0.15),  # factor towards the image mean
    "elastic": (0.03, 0.05, 0.07, 0.09, 0.11),  # largest displacement, share of the image side
    "pixelate": (0.95, 0.90, 0.85, 0.75, 0.65),  # side of the coarse image, share of the side
    "jpeg": (80, 65, 58, 50, 40),  # JPEG quality
}
_PARAMS = CIFAR10_C  # the earlier name
_STRENGTH_TABLES = {"imagenet-c": IMAGENET_C, "cifar10-c": CIFAR10_C}


# --- shared checks ---------------------------------------------------------------------------

def check_methods(methods) -> tuple[str, ...]:
    if isinstance(methods, str) or not isinstance(methods, (tuple, list)):
        raise TypeError(f"`methods` must be a tuple of names from {', '.join(map(repr, METHODS))}; "
                        f"got {methods!r}.")
    if not methods:
        raise ValueError(f"`methods` must name at least one of {', '.join(map(repr, METHODS))}; "
                         "got none.")
    for m in methods:
        check_choice("methods", m, METHODS)
    if len(set(methods)) != len(methods):
        raise ValueError(f"`methods` must not repeat a name; got {tuple(methods)!r}.")
    return tuple(methods)


def check_scales(name: str, scales) -> tuple[float, ...]:
    """A non-empty sequence of finite amplification factors, each > 1."""
    if isinstance(scales, (str, bytes)) or not hasattr(scales, "__iter__"):
        raise TypeError(f"`{name}` must be a sequence of floats in (1, inf); got {scales!r}.")
    vals = list(scales)
    if not vals:
        raise ValueError(f"`{name}` must be a non-empty sequence of floats in (1, inf); got "
                         f"{scales!r}.")
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, Real):
            raise TypeError(f"`{name}` must be a sequence of floats in (1, inf); got {scales!r}.")
        if not math.isfinite(float(v)) or float(v) <= 1:
            raise ValueError(f"`{name}` must be a sequence of floats in (1, inf); got {scales!r}.")
    return tuple(float(v) for v in vals)


def check_severities(name: str, severities) -> tuple[int, ...]:
    """A non-empty, strictly increasing sequence of ints in [1, 5]."""
    if isinstance(severities, (str, bytes)) or not hasattr(severities, "__iter__"):
        raise TypeError(f"`{name}` must be a sequence of ints in [1, {MAX_SEVERITY}]; got "
                        f"{severities!r}.")
    vals = list(severities)
    if not vals:
        raise ValueError(f"`{name}` must be a non-empty sequence of ints in [1, {MAX_SEVERITY}]; "
                         f"got {severities!r}.")
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, Integral):
            raise TypeError(f"`{name}` must be a sequence of ints in [1, {MAX_SEVERITY}]; got "
                            f"{severities!r}.")
        if not 1 <= v <= MAX_SEVERITY:
            raise ValueError(f"`{name}` must be a sequence of ints in [1, {MAX_SEVERITY}]; got "
                             f"{severities!r}.")
    if any(b <= a for a, b in zip(vals, vals[1:])):
        raise ValueError(f"`{name}` must be strictly increasing; got {severities!r}.")
    return tuple(int(v) for v in vals)


def _check_corruptions(corruptions) -> tuple[str, ...]:
    if isinstance(corruptions, str) or not isinstance(corruptions, (tuple, list)):
        raise TypeError(f"`corruptions` must be a tuple of names from "
                        f"{', '.join(map(repr, CORRUPTIONS))}; got {corruptions!r}.")
    if not corruptions:
        raise ValueError("`corruptions` must name at least one corruption; got none.")
    for c in corruptions:
        check_choice("corruptions", c, CORRUPTIONS)
    if len(set(corruptions)) != len(corruptions):
        raise ValueError(f"`corruptions` must not repeat a name; got {tuple(corruptions)!r}.")
    return tuple(corruptions)


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The model's BatchNorm layers with affine parameters, in module order (the order of the
    forward pass for sequential models such as the workbench's)."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]


def check_batchnorm(model: nn.Module) -> int:
    """The number of BatchNorm layers IBD-PSC can amplify; a clear error where there are none,
    or where the model is (or holds) TorchScript, whose compiled layers are not nn.BatchNorm
    modules and whose weights IBD-PSC cannot rescale."""
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        raise ValueError(f"`model` must be a Python nn.Module for 'ibd-psc'; got a TorchScript "
                         f"model ({type(model).__name__}). IBD-PSC needs a Python module: it "
                         "finds the BatchNorm layers and rescales their weights, which TorchScript "
                         "holds compiled. Open the model's state dict with its architecture "
                         "instead (open_model(path, data, architecture=...), the file saved by "
                         "torch.save(model.state_dict(), path)), or leave 'ibd-psc' out of "
                         "`methods`.")
    n = len(batchnorm_layers(model))
    if not n:
        raise ValueError(f"`model` must have BatchNorm layers with affine parameters for "
                         f"'ibd-psc' (it amplifies them); {type(model).__name__} has none. Train "
                         "model='small-cnn-bn', or leave 'ibd-psc' out of `methods`.")
    return n


def _check_pool(clean_pool, inputs_shape) -> None:
    if not len(clean_pool):
        raise ValueError("`clean_pool` must hold at least one image; got none.")
    if tuple(inputs_shape) != tuple(clean_pool.shape[1:]):
        raise ValueError(f"`clean_pool` images must have the shape of `inputs` "
                         f"{tuple(inputs_shape)}; got {tuple(clean_pool.shape[1:])}.")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of `model`'s first floating parameter or buffer (float32 without one):
    the dtype images are given to it in, so that float64 images work with float32 models (as
    the estimator takes them) and the reverse."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _logits(model, x, dev, batch_size):
    """Logits of `x` (already on `dev`), in chunks of `batch_size`."""
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]) \
        if len(x) else torch.empty(0)


# --- STRIP -------------------------------------------------------------------------------------

@torch.inference_mode()
def strip_entropy(model: nn.Module, inputs: torch.Tensor, clean_pool: torch.Tensor,
                  n_blend: int = 100, seed: int = 0, batch_size: int = 2048, *,
                  superimpose: str = "sum", partners: str = "per-input") -> np.ndarray:
    """(N,) STRIP score: the mean over `n_blend` superimposed copies of the Shannon entropy
    (nats) of the model's softmax on each copy. Low entropy = flagged (the ROC score is −H).

    STRIP (Gao, Xu, Wang, Chen, Ranasinghe, Nepal: "STRIP: a defence against trojan attacks on
    deep neural networks", ACSAC 2019): each input x is superimposed on N clean images drawn with
    replacement; a trojaned input keeps its target prediction on every copy, so its entropy is
    low. H = (1/N) Σ_n H_n with H_n = −Σ_i p_i log p_i (the paper's Eq. 2–4).

    superimpose: "sum" (default, the authors' computation): x + x_c, not clipped. The paper's
        footnote names `cv2.addWeighted`, and the authors' notebook (garrisongys/STRIP,
        `STRIP_CIFAR10DeepArchit_Tb.ipynb`, `superimpose`) calls it with weights 1 and 1 on
        float32 images in [0, 1]; OpenCV saturates integer types only, so the copies are the plain
        sum with pixels up to 2. "mean": 0.5·x + 0.5·x_c, pixels in [0, 1] (the workbench's
        earlier STRIP, kept as the detector "strip-mean"; not the paper's: the model is
        nonlinear, so it is another detector, not a rescaling).
    partners: "per-input" (default, as the notebook's `entropyCal`): every input gets its own
        `n_blend` partners, drawn uniformly with replacement from `clean_pool`; the draw is an
        (N, n_blend) index array seeded by `seed`, so inputs[i] of two calls with the same seed
        and N (a clean input and its triggered twin) get the same partners. "shared": one draw of
        `n_blend` partners for every input (the workbench's earlier design).

    Remaining differences from the notebook: the partners come from the caller's held-out
    `clean_pool` (the notebook draws from training images 40000–49998 of the model's own
    training set) with a seeded draw (the notebook's is unseeded); the entropy is in nats (the
    notebook: bits; the base multiplies every score by one positive constant: ROC-invariant);
    no decision threshold (the notebook flags entropies below the 1% quantile of a normal fit
    to clean entropies: the workbench reports the whole ROC instead); 0·log 0 counts 0, as
    NumPy's `nansum` there.
    """
    _check_model(model)
    check_images("inputs", inputs)
    check_images("clean_pool", clean_pool)
    check_int("n_blend", n_blend, low=1)
    check_int("batch_size", batch_size, low=1)
    check_choice("superimpose", superimpose, STRIP_SUPERIMPOSE)
    check_choice("partners", partners, STRIP_PARTNERS)
    if not len(clean_pool):
        raise ValueError("`clean_pool` must hold at least one image to blend with; got none.")
    if inputs.shape[1:] != clean_pool.shape[1:]:
        raise ValueError(f"`clean_pool` images must have the shape of `inputs` {tuple(inputs.shape[1:])}; "
                         f"got {tuple(clean_pool.shape[1:])}.")
    dev = _model_device(model)
    check_model_input(model, inputs, "inputs")
    inputs, clean_pool = inputs.float(), clean_pool.float()  # float64 too (the models are float32)
    g = make_generator(seed)
    if partners == "shared":  # one draw for every input (the earlier design; same draws as then)
        idx = torch.randint(0, len(clean_pool), (n_blend,), generator=g).expand(len(inputs), -1)
    else:  # a row of partners per input, the same rows for twins
        idx = torch.randint(0, len(clean_pool), (len(inputs), n_blend), generator=g)
    w = 1.0 if superimpose == "sum" else 0.5
    out = []
    with preserve_model(model):
        per_chunk = max(1, batch_size // n_blend)
        for i in range(0, len(inputs), per_chunk):
            x = inputs[i:i + per_chunk].to(dev)  # (n, C, H, W)
            partners_x = clean_pool[idx[i:i + per_chunk]].to(dev)  # (n, B, C, H, W)
            blends = w * x[:, None] + w * partners_x  # not clipped
            p = model(blends.flatten(0, 1)).softmax(-1).double()  # (n·B, K)
            h = torch.special.entr(p).sum(-1).view(len(x), n_blend)
            out.append(h.mean(1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


# --- SCALE-UP ----------------------------------------------------------------------------------

@torch.inference_mode()
def scale_up_score(model: nn.Module, inputs: torch.Tensor, scales=DEFAULT_SCALES,
                   batch_size: int = 2048) -> np.ndarray:
    """(N,) scaled prediction consistency (SPC): the share of the copies clip(n·x, 0, 1), n in
    `scales`, that keep the model's prediction on x (the original not counted). Higher = flagged.

    SCALE-UP (Guo, Li, Chen, Jia, Xia: "SCALE-UP: an efficient black-box input-level backdoor
    detection via analyzing scaled prediction consistency", ICLR 2023), data-free version: a
    backdoored model's answer on a triggered input survives amplifying every pixel value, a
    clean input's answer does not. As BackdoorBox's `SCALE_UP` (THUYimingLi/BackdoorBox,
    core/defenses/SCALE_UP.py): scales 3, 5, 7, 9, 11 by default, pixels scaled in [0, 1] image
    space and clipped, SPC = (1/|S|) Σ_n 1[argmax f(clip(n·x)) = argmax f(x)].

    Remaining differences: no data-limited standardisation (BackdoorBox's optional `valset`
    divides every SPC minus the val set's mean SPC by its std: a positive affine map, the same
    ROC) and no threshold T = 0.5 (the workbench reports the ROC). The authors' own scorer
    (JunfengGo/SCALE-UP, test.py) counts the original too, (1 + kept)/(1 + |S|): an increasing
    affine map of SPC, the same ROC. The study's earlier factors 2…11 are STUDY_SCALES.
    """
    _check_model(model)
    check_images("inputs", inputs)
    scales = check_scales("scales", scales)
    check_int("batch_size", batch_size, low=1)
    check_model_input(model, inputs, "inputs")
    inputs = inputs.to(model_dtype(model))
    dev = _model_device(model)
    s = torch.tensor(scales, dtype=inputs.dtype, device=dev).view(1, -1, 1, 1, 1)
    out = []
    with preserve_model(model):
        per_chunk = max(1, batch_size // (len(scales) + 1))
        for i in range(0, len(inputs), per_chunk):
            x = inputs[i:i + per_chunk].to(dev)
            pred = model(x).argmax(-1)  # (n,)
            scaled = (x[:, None] * s).clamp_(0.0, 1.0).flatten(0, 1)  # (n·S, C, H, W)
            kept = model(scaled).argmax(-1).view(len(x), len(scales)) == pred[:, None]
            out.append(kept.double().mean(1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


# --- TeCo: corruptions and the score -----------------------------------------------------------

def _gaussian_kernel1d(sigma: float, dtype, device) -> torch.Tensor:
    r = max(1, int(4.0 * sigma + 0.5))  # scipy/skimage's truncate=4
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(device=device, dtype=dtype)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur per channel, edges extended ("nearest", as skimage's default)."""
    if sigma <= 0:
        return x
    k = _gaussian_kernel1d(sigma, x.dtype, x.device)
    r = (len(k) - 1) // 2
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def _filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """2-D filter (same kernel for every channel), edges extended."""
    n, c, h, w = x.shape
    r0, r1 = (kernel.shape[0] - 1) // 2, (kernel.shape[1] - 1) // 2
    y = F.pad(x.reshape(n * c, 1, h, w), (r1, r1, r0, r0), mode="replicate")
    return F.conv2d(y, kernel[None, None].to(x)).reshape(n, c, h, w)


def _sample_grid(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _identity_grid(n, h, w, dtype, device) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, dtype=dtype, device=device),
                            torch.linspace(-1, 1, w, dtype=dtype, device=device), indexing="ij")
    return torch.stack([xs, ys], -1)[None].expand(n, h, w, 2)


def _shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """x sampled at (row + dy, col + dx) in pixels (per image dy, dx of shape (N,)), bilinear."""
    n, _, h, w = x.shape
    grid = _identity_grid(n, h, w, x.dtype, x.device).clone()
    grid[..., 0] += (2 * dx / max(w - 1, 1))[:, None, None]
    grid[..., 1] += (2 * dy / max(h - 1, 1))[:, None, None]
    return _sample_grid(x, grid)


def corrupt(images: torch.Tensor, corruption: str, severity: int, seed: int = 0, *,
            strengths: str = "imagenet-c", quantize: bool = False) -> torch.Tensor:
    """`images` (N, C, H, W) in [0, 1] under one corruption of the ImageNet-C family at
    `severity` 1…5, in [0, 1]; random corruptions draw from `seed` (the same draws for every
    input set of the same shape: clean inputs and their triggered twins see the same noise).

    The corruptions of Hendrycks & Dietterich ("Benchmarking neural network robustness to common
    corruptions and perturbations", ICLR 2019), in torch.

    strengths="imagenet-c" (default): the parameters and algorithms of the `imagecorruptions`
        package (bethgelab/imagecorruptions 1.1.2) that TeCo's code calls (`IMAGENET_C`; sizes in
        pixels, unscaled whatever the image size, as TeCo applies them to 32x32 images):
        gaussian_noise x + N(0, c²); shot_noise Poisson(x·c)/c; impulse_noise a share c of the
        elements set to 0 or 1 (1:1, scikit-image's s&p); speckle_noise x + x·N(0, c²);
        gaussian_blur σ = c pixels (edges extended, truncated at 4σ); glass_blur: blur, truncate
        to 8 bits, then for each iteration and each pixel (h, w) from the far corner down to δ + 1
        (rows, then columns) copy the pixel at (h + dy, w + dx), dx, dy uniform in −δ…δ−1, then
        blur again (the package's tuple "swap" of NumPy views of an RGB image copies one way;
        it is reproduced); defocus_blur a disk of radius r on a 17×17 grid (2r+1 above r = 8)
        smoothed by a 3×3 (5×5) Gaussian of σ = alias, as OpenCV's GaussianBlur, applied with
        reflected edges (OpenCV's reflect-101); motion_blur: weights ∝ exp(−i²/2σ²), i = 0…2r,
        the image shifted by (−ceil(i·sin θ − ½), −ceil(i·cos θ − ½)) with edge replication, θ
        uniform in ±45° per image, the sum stopped (not renormalised) where a shift leaves the
        image; zoom_blur: the mean of the image and its central crops zoomed by every factor of
        np.arange(…) (1 included, so the image counts twice), linear interpolation as
        scipy.ndimage.zoom; brightness: HSV value + c (hue and saturation kept: each channel
        times V′/V; a grey image gets x + c); contrast (x − mean)·c + mean per channel; elastic:
        displacements α·G_σ ∗ U(±0.005·H) per axis, σ = 0.01·side (reflected edges, truncated
        at 3σ; on 16–32 pixels nearly no smoothing), α = 250·c, bilinear sampling with reflected
        edges; pixelate: PIL's BOX down to int(c·side), nearest back up; jpeg: PIL at quality c.
    strengths="cifar10-c": the study's earlier corruptions: CIFAR-10-C's strengths (`CIFAR10_C`;
        spatial sizes for 32x32 images, scaled up by H/32 for larger images) with own algorithms:
        glass_blur (per-pixel random displacement instead of sequential copies), motion_blur (a
        one-sided Gaussian streak at a random angle in ±45°, bilinear), zoom_blur (factors from
        1.01), elastic (a smooth random displacement field; not CIFAR-10-C's parameters),
        pixelate (box down, nearest up), replicated edges.
    quantize: truncate the result to 8 bits (floor(255·y)/255; a guard of 10⁻³ of a level keeps
        float rounding from losing one), as the package's `corrupt` returns `np.uint8(...)`.

    Remaining differences from imagecorruptions: float images throughout (the package takes and
    gives 8-bit images; its blurs run in float32, and pixelate rounds to 8 bits between the two
    resizes); one draw per pixel of each channel from a torch generator seeded by (seed,
    corruption, severity), the same for every input set of the same shape (the package: NumPy's
    global generator, unseeded, independent per image); images of one channel are corrupted as
    they are (the package's `corrupt` turns them into RGB, so its noise differs per channel and
    its JPEG is a colour one); images smaller than 32×32 are accepted (the package refuses them);
    pixelate keeps at least one pixel per side.
    """
    check_images("images", images)
    check_choice("corruption", corruption, CORRUPTIONS)
    check_int("severity", severity, low=1, high=MAX_SEVERITY)
    check_seed("seed", seed, generator=False)
    check_choice("strengths", strengths, STRENGTHS)
    if not isinstance(quantize, (bool, np.bool_)):
        raise TypeError(f"`quantize` must be True or False; got {quantize!r}.")
    y = _corrupt(images, corruption, severity, seed, strengths)
    return _quantize(y) if quantize else y


def _brightness(x: torch.Tensor, c: float) -> torch.Tensor:
    """Brightness as both strength sets define it: c added to the HSV value (clipped at 1), hue
    and saturation kept."""
    v = x.amax(1, keepdim=True)  # HSV value
    v2 = (v + c).clamp(max=1.0)
    return torch.where(v > 0, x * v2 / v.clamp(min=1e-12), v2.expand_as(x))


def _contrast(x: torch.Tensor, c: float) -> torch.Tensor:
    """Contrast as both strength sets define it: each image's deviation from its mean scaled by c."""
    m = x.mean((2, 3), keepdim=True)
    return (x - m) * c + m


def _quantize(y: torch.Tensor) -> torch.Tensor:
    """8-bit truncation, as np.uint8 of 255·y (a guard of 10⁻³ of a level: float rounding of a
    value that is an exact level, e.g. 175.99998 for 176, must not lose the level)."""
    return torch.floor(y * 255 + 1e-3).clamp_(0, 255) / 255


def _corrupt(x: torch.Tensor, name: str, severity: int, seed: int,
             strengths: str = "cifar10-c") -> torch.Tensor:
    if strengths == "imagenet-c":
        return _corrupt_imagenet_c(x, name, severity, seed)
    return _corrupt_cifar10_c(x, name, severity, seed)


# --- imagecorruptions' algorithms, from their formulas (not the package's code) ---

def _border_index(n: int, before: int, after: int, mode: str, device=None) -> torch.Tensor:
    """Indices of a length-n axis padded by `before` and `after`: "nearest" (edge repeated),
    "reflect101" (d c b | a b c d | c b a: OpenCV's default) or "symmetric" (c b a | a b c d |
    d c b: scipy's "reflect"), any pad width."""
    i = torch.arange(-before, n + after, device=device)
    if mode == "nearest" or n == 1:
        return i.clamp(0, n - 1)
    if mode == "reflect101":
        period = 2 * (n - 1)
        m = i % period
        return torch.where(m < n, m, period - m)
    m = i % (2 * n)
    return torch.where(m < n, m, 2 * n - 1 - m)


def _pad(x: torch.Tensor, rh: int, rw: int, mode: str) -> torch.Tensor:
    h, w = x.shape[-2:]
    return x.index_select(-2, _border_index(h, rh, rh, mode, x.device)) \
        .index_select(-1, _border_index(w, rw, rw, mode, x.device))


def _correlate(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """2-D correlation of every channel with `kernel` (odd sides), edges by `mode`."""
    n, c, h, w = x.shape
    rh, rw = (kernel.shape[0] - 1) // 2, (kernel.shape[1] - 1) // 2
    y = _pad(x.reshape(n * c, 1, h, w), rh, rw, mode)
    return F.conv2d(y, kernel[None, None].to(x)).reshape(n, c, h, w)


def _gauss1d(sigma: float, truncate: float) -> torch.Tensor:
    """scipy.ndimage's Gaussian: radius int(truncate·σ + ½), weights exp(−t²/2σ²) normalised."""
    r = int(truncate * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _gauss_filter(x: torch.Tensor, sigma_h: float, sigma_w: float, truncate: float,
                  mode: str) -> torch.Tensor:
    """Separable Gaussian filter per channel, as scipy.ndimage.gaussian_filter (σ per axis)."""
    kh, kw = _gauss1d(sigma_h, truncate), _gauss1d(sigma_w, truncate)
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    y = F.conv2d(_pad(y, 0, (len(kw) - 1) // 2, mode), kw.view(1, 1, 1, -1).to(x))
    y = F.conv2d(_pad(y, (len(kh) - 1) // 2, 0, mode), kh.view(1, 1, -1, 1).to(x))
    return y.reshape(n, c, h, w)


def defocus_kernel(radius: int, alias_blur: float) -> np.ndarray:
    """imagecorruptions' `disk`: the indicator of X² + Y² ≤ r² on the grid −8…8 (−r…r above
    r = 8), normalised, then smoothed by a Gaussian of σ = `alias_blur` with a 3×3 (5×5 above
    r = 8) kernel, reflect-101 edges, as OpenCV's GaussianBlur."""
    half = 8 if radius <= 8 else radius
    size = 3 if radius <= 8 else 5
    t = np.arange(-half, half + 1)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    g = np.exp(-((np.arange(size) - (size - 1) / 2) ** 2) / (2 * alias_blur ** 2))
    g /= g.sum()
    k = torch.from_numpy(g)
    out = _correlate(torch.from_numpy(disk)[None, None], k[:, None] * k[None, :], "reflect101")
    return out[0, 0].numpy()


def _glass_copies(y: torch.Tensor, delta: int, iterations: int, rand) -> torch.Tensor:
    """imagecorruptions' glass-blur shuffle: for each iteration, for h = H−δ … δ+1 and
    w = W−δ … δ+1 (descending), pixel (h, w) takes the value at (h + dy, w + dx), dx and dy
    uniform in −δ…δ−1, a new pair per image and position (its tuple swap of RGB pixel views
    copies one way)."""
    n, _, h, w = y.shape
    hs, ws = range(h - delta, delta, -1), range(w - delta, delta, -1)
    positions = [(a, b) for a in hs for b in ws]
    if not positions:
        return y
    y = y.clone()
    d = (rand(iterations, len(positions), n, 2) * (2 * delta)).floor().long() - delta
    d = d.to(y.device)
    ar = torch.arange(n, device=y.device)
    for it in range(iterations):
        for k, (a, b) in enumerate(positions):
            dx, dy = d[it, k, :, 0], d[it, k, :, 1]
            y[:, :, a, b] = y[ar, :, a + dy, b + dx]
    return y


def _shift_clamped(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """out[b, :, r, c] = x[b, :, clamp(r − dy_b), clamp(c − dx_b)] (integer shifts per image,
    edges repeated: imagecorruptions' `shift`)."""
    n, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device)[None] - dy[:, None]).clamp(0, h - 1)  # (n, h)
    cols = (torch.arange(w, device=x.device)[None] - dx[:, None]).clamp(0, w - 1)  # (n, w)
    idx = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return x.flatten(2).gather(2, idx).view(n, c, h, w)


def motion_blur_imagenet_c(x: torch.Tensor, radius: int, sigma: float,
                           angles: torch.Tensor) -> torch.Tensor:
    """imagecorruptions' `_motion_blur` with one angle (degrees) per image: Σ_i k_i ·
    shift(x, dx_i, dy_i), k ∝ exp(−i²/2σ²) over i = 0…2r (normalised over all 2r + 1), shifts
    dy_i = −ceil(i·sin θ − ½), dx_i = −ceil(i·cos θ − ½), the sum stopping at the first shift of
    a full side or more (the remaining weights are dropped, not renormalised)."""
    n, _, h, w = x.shape
    width = 2 * int(radius) + 1
    k = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    theta = np.deg2rad(angles.double().cpu().numpy())
    py, px = width * np.sin(theta), width * np.cos(theta)
    hyp = np.hypot(py, px)
    y = torch.zeros_like(x)
    active = np.ones(n, bool)
    for i in range(width):
        dy = -np.ceil(i * py / hyp - 0.5)
        dx = -np.ceil(i * px / hyp - 0.5)
        active &= (np.abs(dy) < h) & (np.abs(dx) < w)
        if not active.any():
            break
        sh = _shift_clamped(x, torch.from_numpy(dy).long().to(x.device),
                            torch.from_numpy(dx).long().to(x.device))
        y += float(k[i]) * torch.from_numpy(active).to(x)[:, None, None, None] * sh
    return y


def zoom_matrix(n: int, factor: float) -> np.ndarray:
    """(n, n) linear map of imagecorruptions' `clipped_zoom` along one axis: the central
    ceil(n / z) pixels (from (n − ceil(n/z)) // 2) zoomed by z as scipy.ndimage.zoom with order
    1 (output length round(ch·z), output o at input o·(ch − 1)/(out − 1)), first n kept."""
    ch = math.ceil(n / float(factor))
    top = (n - ch) // 2
    out = round(ch * factor)  # Python's round, as scipy's zoom sizes its output
    step = (ch - 1) / (out - 1) if out > 1 else 0.0
    m = np.zeros((n, n))
    for o in range(n):
        p = o * step
        i0 = math.floor(p)
        f = p - i0
        m[o, top + i0] += 1 - f
        if f > 0:
            m[o, top + min(i0 + 1, ch - 1)] += f
    return m


def box_matrix(n: int, m: int) -> np.ndarray:
    """(m, n) PIL's BOX resampling from n to m pixels: output o averages the inputs whose centre
    i + ½ lies in (o·s, (o + 1)·s], s = n/m (PIL's box filter on (x − centre)/s in (−½, ½])."""
    s = n / m
    out = np.zeros((m, n))
    for o in range(m):
        centre = (o + 0.5) * s
        lo, hi = max(int(centre - s / 2 + 0.5), 0), min(int(centre + s / 2 + 0.5), n)
        for i in range(lo, hi):
            t = (i + 0.5 - centre) / s
            out[o, i] = 1.0 if -0.5 < t <= 0.5 else 0.0
        out[o] /= out[o].sum()
    return out


def _bilinear_symmetric(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """x sampled at (rows, cols) (n, h, w) by linear interpolation, the image extended by
    half-sample reflection (scipy.ndimage.map_coordinates, order 1, mode "reflect")."""
    n, c, h, w = x.shape
    r0, c0 = rows.floor(), cols.floor()
    fr, fc = (rows - r0).to(x), (cols - c0).to(x)
    r0, c0 = r0.long(), c0.long()

    def refl(i, size):
        m = i % (2 * size)
        return torch.where(m < size, m, 2 * size - 1 - m)

    flat = x.flatten(2)
    out = 0
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            idx = refl(r0 + dr, h) * w + refl(c0 + dc, w)
            v = flat.gather(2, idx.view(n, 1, -1).expand(n, c, -1)).view(n, c, h, w)
            out = out + (wr * wc)[:, None] * v
    return out


def elastic_fields(u_x: torch.Tensor, u_y: torch.Tensor, c: float):
    """imagecorruptions' elastic displacements (n, h, w) from uniform [0, 1) draws (n, 1, h, w)
    (x first, as the package draws them): α·G_σ ∗ U(−m, m), m = 0.005·H for both axes, σ =
    0.01·(H, W) per axis, scipy's "reflect" edges, truncated at 3σ, α = 250·c."""
    h, w = u_x.shape[-2:]
    top = h * 0.005
    return tuple(_gauss_filter((u * 2 - 1) * top, 0.01 * h, 0.01 * w, 3.0, "symmetric")[:, 0]
                 * (250 * c) for u in (u_x, u_y))


def elastic_imagenet_c(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """imagecorruptions' elastic transform given its displacement fields (n, h, w): each pixel
    (r, c) samples the image at (r + dy, c + dx), bilinear, reflected edges."""
    h, w = x.shape[-2:]
    rows = torch.arange(h, dtype=torch.float64, device=x.device)[None, :, None] + dy.double()
    cols = torch.arange(w, dtype=torch.float64, device=x.device)[None, None, :] + dx.double()
    return _bilinear_symmetric(x, rows, cols)


def _corrupt_imagenet_c(x: torch.Tensor, name: str, severity: int, seed: int) -> torch.Tensor:
    c = IMAGENET_C[name][severity - 1]
    n, _, h, w = x.shape
    g = make_generator(mix_seed(seed, CORRUPTIONS.index(name), severity))
    # draws on the CPU from a CPU generator: the same on every device
    rand = lambda *shape: torch.rand(shape, generator=g, dtype=torch.float64)  # noqa: E731
    randn = lambda *shape: torch.randn(shape, generator=g).to(x)  # noqa: E731
    if name == "gaussian_noise":
        y = x + c * randn(*x.shape)
    elif name == "shot_noise":
        y = torch.poisson((x * c).double().cpu(), generator=g).to(x) / c
    elif name == "impulse_noise":
        u = rand(*x.shape).to(x)
        y = torch.where(u < c / 2, torch.ones_like(x), torch.where(u < c, torch.zeros_like(x), x))
    elif name == "speckle_noise":
        y = x + x * c * randn(*x.shape)
    elif name == "gaussian_blur":
        y = _gauss_filter(x, c, c, 4.0, "nearest")
    elif name == "glass_blur":
        sigma, delta, iterations = c
        y = _quantize(_gauss_filter(x, sigma, sigma, 4.0, "nearest"))
        y = _gauss_filter(_glass_copies(y, delta, iterations, rand), sigma, sigma, 4.0, "nearest")
    elif name == "defocus_blur":
        y = _correlate(x, torch.from_numpy(defocus_kernel(*c)), "reflect101")
    elif name == "motion_blur":
        y = motion_blur_imagenet_c(x, c[0], c[1], rand(n) * 90 - 45)
    elif name == "zoom_blur":
        factors = np.arange(*c)
        y = x + sum(torch.einsum("ij,ncjk,lk->ncil", torch.from_numpy(zoom_matrix(h, z)).to(x), x,
                                 torch.from_numpy(zoom_matrix(w, z)).to(x)) for z in factors)
        y = y / (len(factors) + 1)
    elif name == "brightness":
        y = _brightness(x, c)
    elif name == "contrast":
        y = _contrast(x, c)
    elif name == "elastic":
        dx, dy = elastic_fields(rand(n, 1, h, w), rand(n, 1, h, w), c)
        y = elastic_imagenet_c(x, dx.to(x.device), dy.to(x.device))
    elif name == "pixelate":
        nh, nw = max(1, int(h * c)), max(1, int(w * c))
        a = torch.from_numpy(box_matrix(h, nh)).to(x)
        b = torch.from_numpy(box_matrix(w, nw)).to(x)
        small = torch.einsum("ij,ncjk,lk->ncil", a, x, b)
        rows = torch.floor((torch.arange(h, dtype=torch.float64) + 0.5) * nh / h).long()
        cols = torch.floor((torch.arange(w, dtype=torch.float64) + 0.5) * nw / w).long()
        y = small[:, :, rows.to(x.device)][:, :, :, cols.to(x.device)]
    else:  # jpeg, through PIL's libjpeg
        y = _jpeg(x, int(c))
    return y.clamp(0.0, 1.0)


def _corrupt_cifar10_c(x: torch.Tensor, name: str, severity: int, seed: int) -> torch.Tensor:
    c = CIFAR10_C[name][severity - 1]
    n, ch, h, w = x.shape
    # CIFAR-10-C's sizes in pixels, for 32-pixel images: kept as they are on smaller images (a
    # 16-pixel digit is an upsampled 8-pixel one; halving a 1.5-pixel disk would leave one
    # pixel), scaled up on larger ones
    f = max(1.0, h / 32.0)
    g = make_generator(mix_seed(seed, CORRUPTIONS.index(name), severity))
    # draws on the CPU from a CPU generator: the same on every device
    rand = lambda *shape: torch.rand(shape, generator=g).to(x)  # noqa: E731
    randn = lambda *shape: torch.randn(shape, generator=g).to(x)  # noqa: E731
    if name == "gaussian_noise":
        y = x + c * randn(*x.shape)
    elif name == "shot_noise":
        y = torch.poisson((x * c).double().cpu(), generator=g).to(x) / c
    elif name == "impulse_noise":
        u = rand(*x.shape)
        y = torch.where(u < c / 2, torch.ones_like(x), torch.where(u < c, torch.zeros_like(x), x))
    elif name == "speckle_noise":
        y = x + x * c * randn(*x.shape)
    elif name == "gaussian_blur":
        y = _blur(x, c * f)
    elif name == "defocus_blur":
        radius, alias = c[0] * f, c[1] * f
        r = max(1, math.ceil(radius))
        t = torch.arange(-r, r + 1, dtype=torch.float64)
        disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= max(radius, 0.5) ** 2).double()
        y = _blur(_filter(x, (disk / disk.sum()).to(x)), alias)
    elif name == "glass_blur":
        sigma, delta, iterations = c[0] * f, c[1], c[2]
        y = _blur(x, sigma)
        rows = torch.arange(h, device=x.device)[:, None].expand(h, w)
        cols = torch.arange(w, device=x.device)[None, :].expand(h, w)
        for _ in range(iterations):
            dy = (rand(n, h, w) * (2 * delta + 1)).floor().long() - delta
            dx = (rand(n, h, w) * (2 * delta + 1)).floor().long() - delta
            src = ((rows + dy).clamp(0, h - 1) * w + (cols + dx).clamp(0, w - 1)).view(n, 1, -1)
            y = y.flatten(2).gather(2, src.expand(n, ch, -1)).view(n, ch, h, w)
        y = _blur(y, sigma)
    elif name == "motion_blur":
        sigma = c * f
        angle = (rand(n) * 2 - 1) * math.pi / 4
        steps = torch.arange(0, math.ceil(3 * sigma) + 1, dtype=torch.float64)
        wts = torch.exp(-0.5 * (steps / sigma) ** 2)
        wts = (wts / wts.sum()).tolist()
        y = sum(wk * _shift(x, k * torch.sin(angle), k * torch.cos(angle))
                for k, wk in zip(steps.tolist(), wts))
    elif name == "zoom_blur":
        zooms = np.arange(1.0, 1.0 + c, 0.01)[1:]
        base = _identity_grid(n, h, w, x.dtype, x.device)
        y = (x + sum(_sample_grid(x, base / float(z)) for z in zooms)) / (len(zooms) + 1)
    elif name == "brightness":
        y = _brightness(x, c)
    elif name == "contrast":
        y = _contrast(x, c)
    elif name == "elastic":
        field = _blur(rand(n, 2, h, w) * 2 - 1, h / 8)
        field = field / field.flatten(1).abs().amax(1).clamp(min=1e-12).view(n, 1, 1, 1)
        grid = _identity_grid(n, h, w, x.dtype, x.device) + 2 * c * field.permute(0, 2, 3, 1)
        y = _sample_grid(x, grid)
    elif name == "pixelate":
        small = (max(1, int(h * c)), max(1, int(w * c)))
        y = F.interpolate(F.adaptive_avg_pool2d(x, small), size=(h, w), mode="nearest")
    else:  # jpeg, through PIL's libjpeg (torchvision's encoder is deprecated)
        y = _jpeg(x, int(c))
    return y.clamp(0.0, 1.0)


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    import io

    from PIL import Image

    u8 = (x.detach().cpu() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = np.empty(u8.shape, dtype=np.uint8)
    for i, im in enumerate(u8):
        buf = io.BytesIO()
        Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(buf, "JPEG", quality=quality)
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf)).reshape(im.shape)
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(x) / 255.0


def _check_teco_options(strengths, application, quantize):
    check_choice("strengths", strengths, STRENGTHS)
    check_choice("application", application, TECO_APPLICATIONS)
    if not isinstance(quantize, (bool, np.bool_)):
        raise TypeError(f"`quantize` must be True or False; got {quantize!r}.")


def teco_corruptions(images: torch.Tensor, corruptions=TECO_CORRUPTIONS,
                     severities=TECO_SEVERITIES, seed: int = 0, *, strengths: str = "imagenet-c",
                     application: str = "cumulative", quantize: bool = True):
    """The corrupted images TeCo evaluates, in its order: an iterator of (corruption, severity,
    images) over `corruptions` and, within each, `severities`. Arguments are checked now.

    application="cumulative" (default, TeCo's released code: CGCL-codes/TeCo,
        BackdoorBench-v1.0-merge/defense/teco/teco.py, lines 201–209 and 258–266, overwrites each
        image of its list with its corrupted version inside both loops): each step corrupts the
        previous step's output, across severities *and* across corruption types, so the image for
        corruption j at severity s is C_{j,s} ∘ … ∘ C_{j,1} ∘ C_{j−1,5} ∘ … ∘ C_{1,1}(x) (60 steps
        for the last of the 12 here; 75 there, with snow, frost and fog). The order of
        `corruptions` matters.
    application="independent" (the paper's description, and the study's earlier computation):
        each (corruption, severity) corrupts the pristine input.
    quantize: truncate every step to 8 bits (default; TeCo's steps go through imagecorruptions'
        `corrupt`, which returns np.uint8, truncating), or keep floats.
    strengths: `corrupt`'s ("imagenet-c", TeCo's, by default; or "cifar10-c").
    The study's earlier TeCo is strengths="cifar10-c", application="independent", quantize=False.
    """
    check_images("images", images)
    corruptions = _check_corruptions(corruptions)
    severities = check_severities("severities", severities)
    check_seed("seed", seed, generator=False)
    _check_teco_options(strengths, application, quantize)
    return _teco_chain(images, corruptions, severities, seed, strengths, application, quantize)


def _teco_chain(x, corruptions, severities, seed, strengths, application, quantize):
    y = x
    for name in corruptions:
        for s in severities:
            out = _corrupt(x if application == "independent" else y, name, s, seed, strengths)
            if quantize:
                out = _quantize(out)
            if application == "cumulative":
                y = out
            yield name, s, out


@torch.inference_mode()
def teco_severities(model: nn.Module, inputs: torch.Tensor, corruptions=TECO_CORRUPTIONS,
                    severities=TECO_SEVERITIES, seed: int = 0, batch_size: int = 2048, *,
                    strengths: str = "imagenet-c", application: str = "cumulative",
                    quantize: bool = True) -> np.ndarray:
    """(N, T) for each input and corruption type, the first severity in `severities` at which the
    prediction on the corrupted image (`teco_corruptions`) differs from the prediction on the
    uncorrupted input; max(severities) + 1 where it never does (TeCo's `max` = 6)."""
    _check_model(model)
    check_images("inputs", inputs)
    corruptions = _check_corruptions(corruptions)
    severities = check_severities("severities", severities)
    check_seed("seed", seed, generator=False)
    check_int("batch_size", batch_size, low=1)
    _check_teco_options(strengths, application, quantize)
    check_model_input(model, inputs, "inputs")
    inputs = inputs.to(model_dtype(model))
    dev = _model_device(model)
    first = np.full((len(inputs), len(corruptions)), max(severities) + 1, dtype=float)
    flipped = np.zeros(first.shape, bool)
    with preserve_model(model):
        x = inputs.to(dev)
        pred = _logits(model, x, dev, batch_size).argmax(-1).cpu()
        for name, s, y in _teco_chain(x, corruptions, severities, seed, strengths, application,
                                      quantize):
            j = corruptions.index(name)
            p = _logits(model, y, dev, batch_size).argmax(-1).cpu()
            new = (p != pred).numpy() & ~flipped[:, j]
            first[new, j] = s
            flipped[:, j] |= new
    return first


def teco_score(model: nn.Module, inputs: torch.Tensor, corruptions=TECO_CORRUPTIONS,
               severities=TECO_SEVERITIES, seed: int = 0, batch_size: int = 2048, *,
               strengths: str = "imagenet-c", application: str = "cumulative",
               quantize: bool = True) -> np.ndarray:
    """(N,) TeCo score: the standard deviation (ddof 0) over corruption types of the severity at
    which the prediction first changes (`teco_severities`). Higher = flagged.

    TeCo (Liu, Fang, Jiang, Zhang, Ren, Liu: "Detecting backdoors during the inference stage
    based on corruption robustness consistency", CVPR 2023): a clean input's prediction breaks at
    similar severities whatever the corruption; a triggered input's survives some corruptions
    (noise: the trigger stays) and breaks early under others (blur: the trigger goes), so the
    severities spread. A triggered input that survives every corruption scores 0, like a robust
    clean input. By default as TeCo's released code: imagecorruptions' (ImageNet-C) strengths,
    applied cumulatively, 8-bit steps (`teco_corruptions`), flip index 1…5 or 6, NumPy's std.

    Remaining differences from the released code: 12 of its 15 corruptions (no snow, frost, fog:
    its chain has three steps more between zoom blur and brightness); the corruptions are this
    module's torch versions of imagecorruptions' (`corrupt`: float arithmetic, seeded draws
    shared by twins, one channel kept as one channel); the pristine input is not quantised to 8
    bits first (TeCo's images are 8-bit already); no decision threshold (TeCo reports the ROC and
    the best F1 over thresholds); which inputs are scored is the caller's (TeCo: every image of
    the clean test set, the target class included, and every non-target image with the trigger).
    """
    return teco_severities(model, inputs, corruptions, severities, seed, batch_size,
                           strengths=strengths, application=application,
                           quantize=quantize).std(1)


# --- IBD-PSC -----------------------------------------------------------------------------------

def _amplified(model: nn.Module, k: int, amplification: float) -> nn.Module:
    """A copy of `model` (eval mode) whose last `k` BatchNorm layers have γ and β times
    `amplification`."""
    m = copy.deepcopy(model).eval()
    for bn in batchnorm_layers(m)[len(batchnorm_layers(m)) - k:]:
        with torch.no_grad():
            bn.weight.mul_(amplification)
            bn.bias.mul_(amplification)
    return m


IBD_SELECTIONS = ("labels", "agreement")


@dataclass(frozen=True)
class IBDPSCSelection:
    """IBD-PSC's choice of amplified models (`ibd_psc_selection`)."""

    layers: tuple  # per amplified model, how many of the last BatchNorm layers it amplifies
    xi: int | None  # the layer count the rule picked (BackdoorBox's start index); None: none did
    rates: tuple  # per k tried (1, 2, …): the error vs labels ("labels") or agreement ("agreement")
    selection: str  # "labels" (BackdoorBox's rule) or "agreement" (the study's earlier rule)
    labels: str  # "given" (the pool's labels), "predictions" (none given) or "none" (agreement)
    fallback: bool  # no k in 1…L−1 qualified: every model amplifies all L layers


@torch.inference_mode()
def ibd_psc_selection(model: nn.Module, clean_pool: torch.Tensor, labels: torch.Tensor | None = None,
                      amplification: float = 1.5, n_models: int = 5, xi: float = 0.6,
                      batch_size: int = 2048, *, selection: str = "labels",
                      agreement: float = 0.6) -> IBDPSCSelection:
    """IBD-PSC's adaptive layer selection (Hou et al., ICML 2024), with what it saw.

    selection="labels" (default), as BackdoorBox's `IBD_PSC` (THUYimingLi/BackdoorBox,
        core/defenses/IBD_PSC.py, `prob_start` and `_test`): for k = 1, 2, …, L − 1 amplify the
        last k BatchNorm layers (γ, β × `amplification`) and take the first k whose error rate
        on the pool against `labels` is > `xi` (strict); that k is ξ. The `n_models` models then
        amplify the last ξ + 1, ξ + 2, …, ξ + n layers; a count beyond L is the all-layer model
        again (BackdoorBox's slicing), so the score always averages n terms (L = 3, ξ = 1:
        [2, 3, 3, 3, 3]). `labels` None: the model's own predictions stand in for them (then the
        rule reads "more than `xi` of the predictions change"), with a warning.
    selection="agreement" (the study's earlier rule): the first k whose share of unchanged
        predictions is < `agreement`; models k, k + 1, …, up to L (fewer than n where L is
        reached).
    When no k qualifies BackdoorBox fails (its `prob_start` returns None); here every model is
        the all-layer one, with a warning and `fallback=True`.

    Remaining differences from BackdoorBox: every BatchNorm layer with affine parameters counts
    (`batchnorm_layers`: 1d, 2d and 3d; BackdoorBox: `BatchNorm2d` only; the workbench's models
    have BatchNorm2d only); the pool is the caller's (BackdoorBox's tests: 2,000 labelled test
    images), and the fallback above.
    """
    _check_model(model)
    check_images("clean_pool", clean_pool)
    if not len(clean_pool):
        raise ValueError("`clean_pool` must hold at least one image; got none.")
    if labels is not None:
        check_labels("labels", labels, len(clean_pool))
    amplification = check_float("amplification", amplification, 1.0, None, low_open=True)
    check_int("n_models", n_models, low=1)
    xi = check_float("xi", xi, 0.0, 1.0, high_open=True)
    agreement = check_float("agreement", agreement, 0.0, 1.0, low_open=True, high_open=True)
    check_int("batch_size", batch_size, low=1)
    check_choice("selection", selection, IBD_SELECTIONS)
    n_bn = check_batchnorm(model)
    check_model_input(model, clean_pool, "clean_pool")
    dev = _model_device(model)
    if selection == "labels" and labels is None:
        warnings.warn("ibd-psc: no labels for the layer-selection pool; the model's predictions "
                      "stand in for them (BackdoorBox takes the error against the pool's labels).",
                      stacklevel=2)
    rates, start = [], None
    with preserve_model(model):
        x = clean_pool.to(dev, model_dtype(model))
        pred = _logits(model, x, dev, batch_size).argmax(-1)
        ref = labels.to(dev) if (selection == "labels" and labels is not None) else pred
        for k in range(1, n_bn):
            p = _logits(_amplified(model, k, amplification), x, dev, batch_size).argmax(-1)
            if selection == "labels":
                rate = float((p != ref).double().mean())
                hit = rate > xi
            else:
                rate = float((p == pred).double().mean())
                hit = rate < agreement
            rates.append(rate)
            if hit:
                start = k
                break
    fallback = start is None
    if fallback:
        warnings.warn((f"ibd-psc: no k in 1…{n_bn - 1} amplified layers " if n_bn > 1 else
                       "ibd-psc: the model has one BatchNorm layer, no k < L to try, nor a k that ")
                      + (f"gave an error rate above xi = {xi:g}" if selection == "labels"
                         else f"kept fewer than {agreement:g} of the predictions")
                      + f"; every amplified model amplifies all {n_bn} BatchNorm layers "
                      "(BackdoorBox has no fallback).", stacklevel=3)
    if selection == "labels":
        first = n_bn if fallback else start
        layers = tuple(min(first + i, n_bn) for i in range(1, n_models + 1))
    else:
        first = n_bn if fallback else start
        layers = tuple(range(first, min(first + n_models, n_bn + 1)))
    return IBDPSCSelection(layers, start, tuple(rates), selection,
                           "none" if selection == "agreement" else
                           "given" if labels is not None else "predictions", fallback)


def ibd_psc_layers(model: nn.Module, clean_pool: torch.Tensor, labels: torch.Tensor | None = None,
                   amplification: float = 1.5, n_models: int = 5, xi: float = 0.6,
                   batch_size: int = 2048, *, selection: str = "labels",
                   agreement: float = 0.6) -> list[int]:
    """IBD-PSC's layer selection: for each amplified model, how many of the last BatchNorm layers
    it scales (a count may repeat: BackdoorBox repeats the all-layer model to keep n models).
    `labels`: the pool's labels, as BackdoorBox takes them. See `ibd_psc_selection`."""
    return list(ibd_psc_selection(model, clean_pool, labels, amplification, n_models, xi,
                                  batch_size, selection=selection, agreement=agreement).layers)


@torch.inference_mode()
def ibd_psc_score(model: nn.Module, inputs: torch.Tensor, clean_pool: torch.Tensor | None = None,
                  amplification: float = 1.5, n_models: int = 5, agreement: float = 0.6,
                  layers: list[int] | None = None, batch_size: int = 2048, *,
                  pool_labels: torch.Tensor | None = None, xi: float = 0.6,
                  selection: str = "labels") -> np.ndarray:
    """(N,) parameter-oriented scaling consistency (PSC): the mean over the amplified models of
    the softmax probability of the class the unmodified model predicts. Higher = flagged.

    IBD-PSC (Hou, Guo, Li, Wang, Wu, Wang: "IBD-PSC: input-level backdoor detection via
    parameter-oriented scaling consistency", ICML 2024): amplifying the BatchNorm parameters
    (γ, β times ω = `amplification`) of a model's last layers leaves its confident answer on
    triggered inputs in place while its confidence on clean inputs drops. White-box: needs the
    model's BatchNorm layers. The layers come from `ibd_psc_selection(model, clean_pool,
    pool_labels, ..., selection=selection)` unless `layers` (numbers of last BatchNorm layers,
    one per model; repeats count as often as they appear, as BackdoorBox's average) is given.
    Amplified copies keep the running statistics and run in eval mode, as BackdoorBox's. No
    threshold (BackdoorBox flags PSC ≥ 0.9; the workbench reports the ROC). The caller's model is
    not changed.
    """
    _check_model(model)
    check_images("inputs", inputs)
    check_int("batch_size", batch_size, low=1)
    n_bn = check_batchnorm(model)
    amplification = check_float("amplification", amplification, 1.0, None, low_open=True)
    if layers is None:
        if clean_pool is None:
            raise ValueError("`clean_pool` must be given to choose the layers, or `layers`; got "
                             "neither.")
        _check_pool(clean_pool, inputs.shape[1:])
        layers = ibd_psc_layers(model, clean_pool, pool_labels, amplification, n_models, xi,
                                batch_size, selection=selection, agreement=agreement)
    else:
        if not isinstance(layers, (list, tuple)) or not layers:
            raise TypeError(f"`layers` must be a non-empty list of ints in [1, {n_bn}]; got "
                            f"{layers!r}.")
        layers = [check_int("layers", k, low=1, high=n_bn) for k in layers]
    check_model_input(model, inputs, "inputs")
    dev = _model_device(model)
    with preserve_model(model):
        x = inputs.to(dev, model_dtype(model))
        pred = _logits(model, x, dev, batch_size).argmax(-1)
        conf = torch.zeros(len(x), dtype=torch.float64, device=dev)
        for k in sorted(set(layers)):  # each distinct model once, weighted by its repeats
            p = _logits(_amplified(model, k, amplification), x, dev, batch_size).softmax(-1)
            conf += layers.count(k) * p.double().gather(1, pred[:, None])[:, 0] if len(x) else 0
    return (conf / len(layers)).cpu().numpy()


# --- W_σ-based scores --------------------------------------------------------------------------

def smoothness_score(model: nn.Module, inputs: torch.Tensor, sigmas, n_samples: int = 64,
                     summary: str = "mean", seed: int = 0, **kwargs) -> np.ndarray:
    """(N,) W_σ-based score, higher = smoother = more likely triggered: "mean" (−mean W over the
    grid), "radius" (smoothness radius), "consistency" (share of noisy votes that keep the
    unperturbed prediction, mean over σ)."""
    check_choice("summary", summary, ("mean", "radius", "consistency"))
    res = estimate_smoothness(model, inputs, sigmas, n_samples, seed=seed, **kwargs)
    return _w_summary(res, summary, model, inputs)


def _predict(model, inputs, batch_size=2048) -> torch.Tensor:
    dev = _model_device(model)
    with preserve_model(model), torch.inference_mode():
        return _logits(model, inputs.to(dev), dev, batch_size).argmax(-1).cpu()


def _w_summary(res, summary: str, model=None, inputs=None, pred=None) -> np.ndarray:
    if summary == "mean":
        return -res.mean_entropy()
    if summary == "radius":
        return res.smoothness_radius()
    pred = _predict(model, inputs) if pred is None else pred
    kept = np.take_along_axis(res.frequencies, pred.numpy()[:, None, None], 2)[..., 0]  # (N, S)
    return kept.mean(1)


def knee_index(pool_result, fraction: float = KNEE_FRACTION) -> int:
    """Index of w-knee's σ in a clean pool's `SmoothnessResult`: the first σ of the grid at which
    the pool's mean W_σ reaches `fraction` of its largest value over the grid.

    Why there: at smaller σ clean inputs are still certain (nothing to tell apart), at larger σ the
    noise drowns the trigger too (on digits, triggered inputs become *less* smooth than clean ones
    beyond σ ≈ 0.3, which is what pulls the mean over the grid down). The rule uses clean data
    only, as a defender would.
    """
    fraction = check_float("fraction", fraction, 0.0, 1.0, low_open=True)
    m = pool_result.entropy.mean(0)
    return int(np.argmax(m >= fraction * m.max()))


def class_calibrated(scores, predictions, pool_scores, pool_predictions,
                     min_per_class: int = 5) -> np.ndarray:
    """(N,) scores standardised per predicted class: (s − mean_c) / std_c over the clean pool's
    inputs predicted c; classes with fewer than `min_per_class` pool inputs use the whole pool.
    """
    s, p = np.asarray(scores, float), np.asarray(predictions)
    ps, pp = np.asarray(pool_scores, float), np.asarray(pool_predictions)
    mu_all, sd_all = ps.mean(), ps.std(ddof=1) if len(ps) > 1 else 0.0
    out = np.empty_like(s)
    for c in np.unique(p):
        ref = ps[pp == c]
        mu, sd = (ref.mean(), ref.std(ddof=1)) if len(ref) >= min_per_class else (mu_all, sd_all)
        out[p == c] = (s[p == c] - mu) / max(sd, 1e-12)
    return out


# --- ROC analysis ------------------------------------------------------------------------------

@dataclass(frozen=True)
class DetectionResult:
    """ROC analysis of one score separating triggered (positive) from clean inputs."""

    method: str  # the detector's name in METHODS (or the caller's label)
    clean_scores: np.ndarray  # (N,) higher = more likely triggered
    triggered_scores: np.ndarray  # (M,)
    fpr: np.ndarray  # ROC curve
    tpr: np.ndarray
    auc: float  # area under the ROC curve (ties count ½)
    tpr_at_5_fpr: float  # true-positive rate at the threshold flagging at most 5% of clean inputs
    auc_ci: tuple = (math.nan, math.nan)  # bootstrap percentile interval at `settings["confidence"]`
    tpr_at_5_fpr_ci: tuple = (math.nan, math.nan)
    tpr_at_1_fpr: float = math.nan  # at most 1% of clean inputs flagged
    tpr_at_1_fpr_ci: tuple = (math.nan, math.nan)
    seconds_per_input: float = math.nan  # wall time of the scores / (N + M)
    setup_seconds: float = 0.0  # one-off work (layer selection, calibration on the clean pool)
    settings: dict = field(default_factory=dict)
    # what the intervals resampled: "pairs" (clean[i] with its twin triggered[i], one index for
    # both), "pairs-filtered" (the same, each twin counted where its side's filter keeps it:
    # `roc_analysis`), "stratified" (each set on its own) or "none" (n_boot = 0: no intervals)
    bootstrap: str = "none"
    # which inputs were scored: "all" of them, or "filtered": the toolboxes' set (BackdoorBox,
    # backdoor-toolbox), clean inputs the model classifies correctly and triggered inputs the
    # backdoor fires on (`compare_detectors` with labels)
    evaluation: str = "all"
    n_clean: int | None = None  # clean inputs in the ROC (None: filled in, len(clean_scores))
    n_triggered: int | None = None  # triggered inputs in the ROC
    n_clean_total: int | None = None  # clean inputs before the filter (= n_clean for "all")
    n_triggered_total: int | None = None
    clean_index: np.ndarray | None = None  # (n_clean,) positions kept among the inputs; None: all
    triggered_index: np.ndarray | None = None

    def __post_init__(self):
        for name, scores in (("n_clean", self.clean_scores), ("n_triggered", self.triggered_scores)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, len(scores))
            if getattr(self, name + "_total") is None:
                object.__setattr__(self, name + "_total", getattr(self, name))

    @property
    def label(self) -> str:
        """A readable name with the paper it comes from."""
        return LABELS.get(self.method, self.method)

    def row(self, digits: int = 3) -> dict:
        """One row for a table: method, AUC [CI], TPR at 1% and 5% FPR [CI], ms per input, the
        evaluation set and its numbers of clean and triggered inputs (of how many)."""
        f = lambda v, ci: f"{v:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"  # noqa: E731
        n = lambda k, tot: f"{k}" if k == tot else f"{k} of {tot}"  # noqa: E731
        return {"method": self.method, "AUC [95% CI]": f(self.auc, self.auc_ci),
                "TPR@1%FPR": f(self.tpr_at_1_fpr, self.tpr_at_1_fpr_ci),
                "TPR@5%FPR": f(self.tpr_at_5_fpr, self.tpr_at_5_fpr_ci),
                "ms per input": round(1000 * self.seconds_per_input, 2),
                "evaluation": self.evaluation,
                "n clean": n(self.n_clean, self.n_clean_total),
                "n triggered": n(self.n_triggered, self.n_triggered_total)}


def _roc(c: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold, from (0, 0), as sklearn's roc_curve without
    dropping intermediate points."""
    s = np.r_[t, c]
    y = np.r_[np.ones(len(t)), np.zeros(len(c))]
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    return np.r_[0.0, fps / len(c)], np.r_[0.0, tps / len(t)]


def _operating_points(c: np.ndarray, t: np.ndarray) -> tuple[float, float, float]:
    fpr, tpr = _roc(c, t)
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    at = lambda a: float(tpr[fpr <= a + 1e-12].max())  # noqa: E731
    return auc, at(0.01), at(0.05)


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(B, n) how often each of n items appears in each row of resampled indices (B, k)."""
    b = len(idx)
    return np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)


def _boot_operating_points(c: np.ndarray, t: np.ndarray, wc: np.ndarray,
                           wt: np.ndarray) -> np.ndarray:
    """(B, 3) AUC, TPR at 1% and at 5% FPR of B resamples given as counts: wc (B, N) of the clean
    scores, wt (B, M) of the triggered ones (row b holding n_b = Σ wc[b] ≥ 1 clean and m_b ≥ 1
    triggered scores: N and M for a plain resample, fewer where a filter zeroes some counts).
    The same numbers as `_operating_points` on the resampled arrays, in O(B·(N + M)) without
    building them.

    AUC = Σ_j wt_j · (#clean < t_j + ½ #clean = t_j) / (n_b·m_b) (Mann–Whitney with ties ½).
    TPR at a% FPR flags the scores above the (k+1)-th largest resampled clean score, k =
    floor(a·n_b) (the lowest threshold that flags at most k clean inputs; see `roc_analysis`).
    """
    n = wc.sum(1).astype(float)  # (B,) clean scores in each resample
    m = wt.sum(1).astype(float)
    oc, ot = np.argsort(c, kind="mergesort"), np.argsort(t, kind="mergesort")
    cs, ts = c[oc], t[ot]
    cum_c = np.c_[np.zeros(len(wc)), np.cumsum(wc[:, oc], 1)]  # (B, N+1) resampled clean ≤ cs[i-1]
    cum_t = np.c_[np.zeros(len(wt)), np.cumsum(wt[:, ot], 1)]  # (B, M+1)
    below = cum_c[:, np.searchsorted(cs, t, "left")]  # (B, M) resampled clean < t_j
    upto = cum_c[:, np.searchsorted(cs, t, "right")]  # (B, M) resampled clean ≤ t_j
    out = [(wt * (below + upto)).sum(1) / (2 * n * m)]
    for a in (0.01, 0.05):
        k = np.floor(n * (a + 1e-12))  # (B,) clean inputs allowed above the threshold
        # the (k+1)-th largest resampled clean score: the first cs[i] with ≥ n − k at or below it
        i = np.argmax(cum_c[:, 1:] >= (n - k)[:, None], axis=1)  # (B,)
        above = m - cum_t[np.arange(len(wt)), np.searchsorted(ts, cs[i], "right")]
        out.append(np.where(k >= n, 1.0, above / m))  # k ≥ n: every input may be flagged
    return np.stack(out, 1)


def _as_scores(name: str, values) -> np.ndarray:
    """Scores as a flat float array of our own (at least one, finite: checked by the caller)."""
    try:
        a = np.array(values, dtype=float)  # a copy: the caller's array stays the caller's
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be an array of numbers (one score per input); got "
                        f"{type(values).__name__}.") from None
    if a.ndim == 0:  # a number (or None) where one per input is needed
        raise TypeError(f"`{name}` must be an array of numbers (one score per input); got "
                        f"{values!r}.")
    return a.ravel()


_STAT_ORDER = ("auc", "tpr_at_5_fpr", "tpr_at_1_fpr")  # as DetectionResult's fields


def _boundary_interval(j: int, value: float, n: int, m: int, alpha: float) -> tuple:
    """The interval of statistic j (0: AUC, 1, 2: TPR at 1%, 5% FPR) whose every bootstrap
    resample equals `value`, 0 or 1 (n clean, m triggered scores, level 1 − alpha).

    TPR (x = 0 or m of the m triggered inputs above the threshold): Clopper–Pearson's exact
    binomial bound (Clopper & Pearson 1934, Biometrika 26:404), [(α/2)^(1/m), 1] or
    [0, 1 − (α/2)^(1/m)], given the threshold (the resamples showed it moves nothing).
    AUC = 1 (every clean score below every triggered one): distribution-free, from the order
    statistics (Wilks 1941, Ann. Math. Stat. 12:91): the clean mass above the largest clean
    score exceeds ε_n with probability (1 − ε_n)^n, the triggered mass below the smallest
    triggered one ε_m likewise, and AUC ≥ 1 − ε_n − ε_m; with (1 − ε_k)^k = α/4 each (Bonferroni
    over the two tails; the interval is one-sided, so α/2 in all): [1 − ε_n − ε_m, 1]. AUC = 0:
    the mirror image, [0, ε_n + ε_m]. Valid whatever the twins' correlation (each tail uses one
    sample alone).
    """
    if j == 0:
        eps = sum(1 - (alpha / 4) ** (1 / k) for k in (n, m))
        return (max(0.0, 1 - eps), 1.0) if value == 1 else (0.0, min(1.0, eps))
    bound = (alpha / 2) ** (1 / m)
    return (bound, 1.0) if value == 1 else (0.0, 1 - bound)


_BOOT_CELLS = 4_000_000  # resamples × (N + M) per chunk of the bootstrap: ~100 MB of float64


def roc_analysis(method: str, clean_scores, triggered_scores, *, paired: bool | None = None,
                 n_boot: int = 1000, seed: int = 0, confidence: float = 0.95,
                 seconds_per_input: float = math.nan, setup_seconds: float = 0.0,
                 settings: dict | None = None, keep_clean=None,
                 keep_triggered=None) -> DetectionResult:
    """ROC, AUC and TPR at 1% and 5% FPR of scores (higher = triggered), with percentile
    bootstrap intervals over `n_boot` resamples (seeded by `seed`; `n_boot=0` skips them).

    paired: how the bootstrap resamples (Efron & Tibshirani 1993, "An introduction to the
        bootstrap", ch. 6 and 13: resample the units that were drawn independently).
        True: the scores are twins, clean_scores[i] and triggered_scores[i] from one input with
        and without the trigger (as `compare_detectors` and `triggered_pairs` give them): each
        resample draws N pair indices and takes both scores of each, so the twins' correlation
        is in the interval. Refused for scores of different lengths.
        False: two independent samples: each is resampled on its own (stratified bootstrap).
        None (default): pairs when the lengths are equal, each on its own otherwise. Pairs are
        right for independent samples too (any pairing of two independent samples is a sample of
        independent pairs), while resampling twins on their own is not: with twin correlation
        −0.8 its 95% AUC interval covered the true AUC 82% of the time, and at +0.8 99%, too wide
        by half (tests/test_detection.py, benchmarks/detection_intervals.py).
    keep_clean, keep_triggered: boolean masks (one per score) of the inputs to evaluate, e.g.
        the toolboxes' set: clean inputs the model classifies correctly, triggered inputs the
        backdoor fires on (`compare_detectors` with labels); the result is "filtered" and holds
        the kept scores, their positions and how many of how many. The filters break pairs (a
        correct clean input whose twin the backdoor misses), so twins are resampled as pairs
        over all N sources, each twin counted where its side keeps it ("pairs-filtered": the
        numbers kept vary between resamples, as they would between samples of sources); only
        resamples with at least one clean and one triggered input count (settings["n_boot_used"]).
        Unpaired scores: each kept set on its own ("stratified").
    The result's `bootstrap` (and settings["bootstrap"]) says which: "pairs", "pairs-filtered",
    "stratified" or "none".

    Where every resample gives the same 0 or 1 (a perfect separation in the sample, no triggered
    input above the threshold, all of them), the percentile interval would have zero width: that
    statistic gets an exact bound instead (`_boundary_interval`: Clopper–Pearson for a TPR, an
    order-statistic bound for the AUC; with 200 and 200 inputs at 95%, TPR 1 reads [0.982, 1]
    and AUC 1 [0.957, 1]), named in settings["exact_bounds"]. The AUC is the Mann–Whitney statistic over all N·M clean–triggered comparisons, twins
    included (the population AUC compares independent draws; the N twin comparisons move it by
    O(1/N)).

    TPR at a% FPR is the largest true-positive rate of a threshold that flags at most a% of the
    clean inputs (no interpolation between thresholds): with 200 clean inputs, 1% allows 2
    (with fewer than 100, none: TPR at 1% FPR is then the TPR at 0% FPR). As an estimate of the
    population's TPR at a% FPR it runs high: the threshold above the (k+1)-th largest of N clean
    scores flags (k+1)/(N+1) of the clean population on average (1.5% for "1%" with N = 200).
    benchmarks/detection_intervals.py measures +0.024 at a true TPR of 0.092 (1% FPR, N = 200),
    +0.012 at 0.26 (5%), and 95% intervals covering 0.91–0.93 (1%) and 0.95 (5%).
    """
    if not isinstance(method, str):
        raise TypeError(f"`method` must be a str naming the detector; got {method!r}.")
    c, t = _as_scores("clean_scores", clean_scores), _as_scores("triggered_scores", triggered_scores)
    for name, v in (("clean_scores", c), ("triggered_scores", t)):
        if not len(v):
            raise ValueError(f"`{name}` must hold at least one score; got none.")
        if not np.isfinite(v).all():
            raise ValueError(f"`{name}` must hold finite values; got "
                             f"{int((~np.isfinite(v)).sum())} NaN or infinite.")
    if paired is not None and not isinstance(paired, (bool, np.bool_)):
        raise TypeError(f"`paired` must be True, False or None; got {paired!r}.")
    keep_c, keep_t = _as_mask("keep_clean", keep_clean, len(c)), \
        _as_mask("keep_triggered", keep_triggered, len(t))
    filtered = keep_clean is not None or keep_triggered is not None
    if paired and len(c) != len(t):
        raise ValueError(f"`paired` must be False or None for scores of different lengths "
                         f"({len(c)} clean, {len(t)} triggered); got True. Twins come in equal "
                         "numbers: clean_scores[i] and triggered_scores[i] from one input.")
    n_boot = check_int("n_boot", n_boot, low=0)
    seed = check_seed("seed", seed, generator=False)
    confidence = check_float("confidence", confidence, 0.0, 1.0, low_open=True, high_open=True)
    if settings is not None and not isinstance(settings, dict):
        raise TypeError(f"`settings` must be a dict or None; got {type(settings).__name__}.")
    own = ("n_boot", "confidence", "seed", "bootstrap", "exact_bounds")
    clash = [k for k in (settings or {}) if k in own]
    if clash:
        raise ValueError(f"`settings` must not hold the bootstrap's own keys {own}; got "
                         f"{clash}.")
    pairs = len(c) == len(t) if paired is None else bool(paired)
    bootstrap = "none" if not n_boot else "stratified" if not pairs else \
        "pairs-filtered" if filtered else "pairs"
    c_all, t_all = c, t
    c, t = c_all[keep_c], t_all[keep_t]
    c.flags.writeable = t.flags.writeable = False  # the frozen result's scores
    y = np.r_[np.zeros(len(c)), np.ones(len(t))]
    s = np.r_[c, t]
    fpr, tpr, _ = roc_curve(y, s)
    # the sample's AUC (Mann–Whitney, = sklearn's roc_auc_score) and TPRs: the resample with
    # every count 1, the bootstrap's own arithmetic (exact: sums of integers)
    auc, tpr1, tpr5 = map(float, _boot_operating_points(c, t, np.ones((1, len(c))),
                                                        np.ones((1, len(t))))[0])
    cis, exact, used = [(math.nan, math.nan)] * 3, [], 0
    if n_boot:
        rng = np.random.default_rng(seed)
        chunk = max(1, _BOOT_CELLS // (len(c_all) + len(t_all)))
        boot = []
        for b in range(0, n_boot, chunk):
            size = min(chunk, n_boot - b)
            if bootstrap == "pairs-filtered":  # sources resampled, each twin where kept
                w = _counts(rng.integers(0, len(c_all), (size, len(c_all))), len(c_all))
                wc, wt = w * keep_c, w * keep_t
                ok = (wc.sum(1) > 0) & (wt.sum(1) > 0)
                boot.append(_boot_operating_points(c_all, t_all, wc[ok], wt[ok]))
                continue
            ic = rng.integers(0, len(c), (size, len(c)))
            wc = _counts(ic, len(c))
            wt = wc if pairs else _counts(rng.integers(0, len(t), (size, len(t))), len(t))
            boot.append(_boot_operating_points(c, t, wc, wt))
        boot = np.concatenate(boot)
        used = len(boot)
    if used:
        q = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2], axis=0)
        cis = [(float(q[0, j]), float(q[1, j])) for j in range(3)]
        for j, v in enumerate((auc, tpr1, tpr5)):
            if v in (0.0, 1.0) and (boot[:, j] == v).all():  # every resample at the boundary
                cis[j] = _boundary_interval(j, v, len(c), len(t), 1 - confidence)
                exact.append(("auc", "tpr_at_1_fpr", "tpr_at_5_fpr")[j])
    extra = {"n_boot_used": used} if bootstrap == "pairs-filtered" else {}
    return DetectionResult(method, c, t, fpr, tpr, auc, tpr5, cis[0], cis[2], tpr1, cis[1],
                           float(seconds_per_input), float(setup_seconds),
                           {**(settings or {}), "n_boot": n_boot, "confidence": confidence,
                            "seed": seed, "bootstrap": bootstrap, **extra,
                            "exact_bounds": sorted(exact, key=_STAT_ORDER.index)},
                           bootstrap, "filtered" if filtered else "all", len(c), len(t),
                           len(c_all), len(t_all),
                           np.flatnonzero(keep_c) if filtered else None,
                           np.flatnonzero(keep_t) if filtered else None)


def _as_mask(name: str, mask, n: int) -> np.ndarray:
    """A boolean mask of n entries keeping at least one (None: keep all)."""
    if mask is None:
        return np.ones(n, bool)
    m = mask.numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.dtype != bool or m.shape != (n,):
        raise TypeError(f"`{name}` must be a boolean array of {n} entries, one per score; got "
                        f"{m.dtype} of shape {m.shape}.")
    if not m.any():
        raise ValueError(f"`{name}` must keep at least one input; got none.")
    return m.copy()


# --- everything side by side -------------------------------------------------------------------

def compare_detectors(model: nn.Module, clean: torch.Tensor, triggered: torch.Tensor,
                      clean_pool: torch.Tensor, sigmas, n_samples: int = 64, n_blend: int = 100,
                      seed: int = 0, *, methods=DEFAULT_METHODS, scales=DEFAULT_SCALES,
                      corruptions=TECO_CORRUPTIONS, severities=TECO_SEVERITIES,
                      amplification: float = 1.5, n_models: int = 5, agreement: float = 0.6,
                      n_calibration: int = 500, n_boot: int = 1000, confidence: float = 0.95,
                      batch_size: int = 2048, pool_labels: torch.Tensor | None = None,
                      xi: float = 0.6, ibd_selection: str = "labels",
                      strengths: str = "imagenet-c", application: str = "cumulative",
                      quantize: bool = True, clean_labels: torch.Tensor | None = None,
                      target_labels: torch.Tensor | None = None,
                      evaluation: str | None = None,
                      strip_partners: str = "per-input") -> list[DetectionResult]:
    """The detectors in `methods` (names from METHODS; default: STRIP, W_σ mean, W_σ radius) on
    the same model and inputs, one `DetectionResult` each, in the order asked (twice with
    evaluation="both": see below). Every argument is checked before any work.

    clean, triggered: the negatives and the positives (N, C, H, W) in [0, 1].
    clean_pool: held-out clean images, none of them in `clean` (STRIP's blend partners; its first
        `n_calibration` images: IBD-PSC's layer selection and the clean W_σ curve that w-knee
        takes its σ from and w-class calibrates with).
    sigmas, n_samples: the W_σ grid and samples per input and σ (one estimate per input set,
        shared by the w-* scores). n_blend, strip_partners: STRIP's copies per input and their
        draw ("per-input", the notebook's; "shared": one draw for every input, the study's
        earlier design: with n_blend=64 and method "strip-mean", its earlier STRIP exactly). scales: SCALE-UP's factors
        (each > 1). corruptions, severities: TeCo's (severities in [1, 5]). amplification,
        n_models, agreement: IBD-PSC's ω (> 1), number of amplified models and layer-selection
        threshold. pool_labels: the labels of `clean_pool` (IBD-PSC's layer selection takes the
        error against them, as BackdoorBox; without them the model's predictions stand in, with
        a warning). xi, ibd_selection: IBD-PSC's rule, "labels" (BackdoorBox's: error > xi) or
        "agreement" (the study's earlier rule: agreement < `agreement`; `ibd_psc_selection`).
        strengths, application, quantize: TeCo's corruptions (`teco_corruptions`; by default
        imagecorruptions' strengths, cumulative, 8-bit steps, as TeCo's code; the study's earlier
        TeCo: "cifar10-c", "independent", False).
    clean_labels, target_labels: the clean inputs' true labels and the attacker's label for each
        triggered input (both or neither). With them, each method is also evaluated on the set
        BackdoorBox (SCALE-UP, IBD-PSC) and backdoor-toolbox score: the clean inputs the model
        classifies correctly and the triggered inputs the backdoor fires on (prediction =
        target), from the same scores (no detector runs twice).
    evaluation: "all" (every input), "filtered" (the set above) or "both" (the "all" results
        first, in `methods` order, then the "filtered" ones); None: "both" with labels, "all"
        without. Each result says its set (`evaluation`) and its numbers of inputs (`n_clean` of
        `n_clean_total`, …). A filtered set with no clean or no triggered input left gets NaN
        numbers and a warning. The filtered intervals resample twins as pairs over all sources,
        each twin counted where its side's filter keeps it ("pairs-filtered", `roc_analysis`).
    n_boot, confidence: the bootstrap intervals (`roc_analysis`: pairs
        (clean[i], triggered[i]) are resampled together where the two sets have the same length,
        as twins do; each set on its own otherwise: then the W_σ estimates and TeCo's corruptions,
        seeded alike for both sets, may still tie clean[i] to triggered[i] through shared noise
        draws, which that resampling leaves out). The intervals are conditional
        on the clean pool: they cover the draw of the test inputs, not of STRIP's blend partners,
        IBD-PSC's layers or w-knee's σ and w-class's calibration. seed: every random choice.

    seconds_per_input is each score's wall time over clean and triggered inputs divided by their
    number (the W_σ estimate is counted in full for each w-* score, as it would be alone);
    one-off work on the clean pool is in setup_seconds.
    """
    _check_model(model)
    methods = check_methods(methods)
    for name, x in (("clean", clean), ("triggered", triggered), ("clean_pool", clean_pool)):
        check_images(name, x)
        check_model_input(model, x, name)
    # float64 images too, as the estimator takes them (the models are float32)
    dt = model_dtype(model)
    clean, triggered, clean_pool = clean.to(dt), triggered.to(dt), clean_pool.to(dt)
    for name, x in (("clean", clean), ("triggered", triggered)):
        if not len(x):
            raise ValueError(f"`{name}` must hold at least one image; got none.")
    if any(m in POOL_METHODS for m in methods):
        _check_pool(clean_pool, clean.shape[1:])
    sig = check_sigmas("sigmas", sigmas)
    check_int("n_samples", n_samples, low=1)
    # the W_σ estimates come after other detectors' work: refuse an impossible one now
    n_est = max(len(clean), len(triggered))
    check_forwards(n_est * len(sig) * n_samples,
                   f"{n_est} inputs × {len(sig)} σ × {n_samples} samples")
    check_int("n_blend", n_blend, low=1)
    check_choice("strip_partners", strip_partners, STRIP_PARTNERS)
    seed = check_seed("seed", seed, generator=False)
    scales = check_scales("scales", scales)
    corruptions = _check_corruptions(corruptions)
    severities = check_severities("severities", severities)
    _check_teco_options(strengths, application, quantize)
    amplification = check_float("amplification", amplification, 1.0, None, low_open=True)
    check_int("n_models", n_models, low=1)
    agreement = check_float("agreement", agreement, 0.0, 1.0, low_open=True, high_open=True)
    xi = check_float("xi", xi, 0.0, 1.0, high_open=True)
    check_choice("ibd_selection", ibd_selection, IBD_SELECTIONS)
    if pool_labels is not None:
        check_labels("pool_labels", pool_labels, len(clean_pool))
    check_int("n_calibration", n_calibration, low=2)
    check_int("n_boot", n_boot, low=0)
    confidence = check_float("confidence", confidence, 0.0, 1.0, low_open=True, high_open=True)
    check_int("batch_size", batch_size, low=1)
    if (clean_labels is None) != (target_labels is None):
        raise ValueError("`clean_labels` and `target_labels` must be given together (the filtered "
                         "set keeps correct clean inputs and triggered inputs the backdoor fires "
                         f"on); got only `{'clean_labels' if target_labels is None else 'target_labels'}`.")
    if clean_labels is not None:
        check_labels("clean_labels", clean_labels, len(clean))
        check_labels("target_labels", target_labels, len(triggered))
    if evaluation is not None:
        check_choice("evaluation", evaluation, EVALUATIONS)
        if evaluation != "all" and clean_labels is None:
            raise ValueError(f"`evaluation` {evaluation!r} needs `clean_labels` and "
                             "`target_labels`; got neither.")
    evaluation = evaluation or ("both" if clean_labels is not None else "all")
    if "ibd-psc" in methods:
        check_batchnorm(model)
    n_in = len(clean) + len(triggered)
    keep = None
    if evaluation != "all":
        keep = ((_predict(model, clean, batch_size) == clean_labels.cpu()).numpy(),
                (_predict(model, triggered, batch_size) == target_labels.cpu()).numpy())
    boot = dict(n_boot=n_boot, seed=seed, confidence=confidence)
    w_cache: dict = {}

    def w_pool():  # the clean pool's W_σ: one-off work of w-knee and w-class (setup_seconds)
        if "pool" not in w_cache:
            t0 = time.perf_counter()
            pool = clean_pool[:n_calibration]
            w_cache["pool"] = estimate_smoothness(model, pool, sigmas, n_samples, seed=seed + 1)
            w_cache["pool_pred"] = _predict(model, pool, batch_size)
            w_cache["pool_seconds"] = time.perf_counter() - t0
        return w_cache

    def w_results():
        if "clean" not in w_cache:
            t0 = time.perf_counter()
            w_cache["clean"] = estimate_smoothness(model, clean, sigmas, n_samples, seed=seed)
            w_cache["triggered"] = estimate_smoothness(model, triggered, sigmas, n_samples, seed=seed)
            w_cache["pred"] = (_predict(model, clean, batch_size), _predict(model, triggered, batch_size))
            w_cache["seconds"] = time.perf_counter() - t0
        return w_cache

    out, filt = [], []
    for m in methods:
        setup, settings = 0.0, {}
        t0 = time.perf_counter()
        if m in ("strip", "strip-mean"):
            how = "sum" if m == "strip" else "mean"
            kw = dict(superimpose=how, partners=strip_partners)
            sc = -strip_entropy(model, clean, clean_pool, n_blend, seed, batch_size, **kw)
            st = -strip_entropy(model, triggered, clean_pool, n_blend, seed, batch_size, **kw)
            settings = {"n_blend": n_blend, **kw}
        elif m == "scale-up":
            sc = scale_up_score(model, clean, scales, batch_size)
            st = scale_up_score(model, triggered, scales, batch_size)
            settings = {"scales": list(scales)}
        elif m == "teco":
            how = dict(strengths=strengths, application=application, quantize=quantize)
            sc = teco_score(model, clean, corruptions, severities, seed, batch_size, **how)
            st = teco_score(model, triggered, corruptions, severities, seed, batch_size, **how)
            settings = {"corruptions": list(corruptions), "severities": list(severities), **how}
        elif m == "ibd-psc":
            sel = ibd_psc_selection(
                model, clean_pool[:n_calibration],
                None if pool_labels is None else pool_labels[:n_calibration], amplification,
                n_models, xi, batch_size, selection=ibd_selection, agreement=agreement)
            layers = list(sel.layers)
            setup = time.perf_counter() - t0
            t0 = time.perf_counter()
            sc = ibd_psc_score(model, clean, None, amplification, layers=layers,
                               batch_size=batch_size)
            st = ibd_psc_score(model, triggered, None, amplification, layers=layers,
                               batch_size=batch_size)
            settings = {"amplification": amplification, "layers": layers,
                        "selection": sel.selection, "selection_labels": sel.labels,
                        "xi": sel.xi, "selection_rates": list(sel.rates),
                        "fallback": sel.fallback,
                        ("threshold_xi" if ibd_selection == "labels" else "agreement"):
                            xi if ibd_selection == "labels" else agreement}
        else:
            w = w_results()
            summary = m[2:]
            if m in ("w-knee", "w-class"):
                p = w_pool()
                setup = p["pool_seconds"]
                settings = {"n_calibration": len(p["pool_pred"])}
            if m == "w-knee":
                j = knee_index(p["pool"])
                sc, st = -w["clean"].entropy[:, j], -w["triggered"].entropy[:, j]
                settings["sigma"] = float(w["clean"].sigmas[j])
            elif m == "w-class":
                ref, ref_pred = -p["pool"].mean_entropy(), p["pool_pred"]
                sc = class_calibrated(-w["clean"].mean_entropy(), w["pred"][0], ref, ref_pred)
                st = class_calibrated(-w["triggered"].mean_entropy(), w["pred"][1], ref, ref_pred)
            else:
                sc = _w_summary(w["clean"], summary, pred=w["pred"][0])
                st = _w_summary(w["triggered"], summary, pred=w["pred"][1])
            settings.update({"sigmas": [float(s) for s in sigmas], "n_samples": n_samples})
        # a W_σ score's time is its estimate's, in full (as it would be alone)
        elapsed = w_cache["seconds"] if m in W_METHODS else time.perf_counter() - t0
        common = dict(seconds_per_input=elapsed / n_in, setup_seconds=setup, **boot)
        if evaluation != "filtered":
            out.append(roc_analysis(m, sc, st, settings=settings, **common))
        if keep is not None:
            filt.append(_filtered_result(m, sc, st, keep, settings, common))
    return out + filt


def _filtered_result(method, sc, st, keep, settings, common) -> DetectionResult:
    """The toolboxes' evaluation set of one method's scores: correct clean inputs, triggered
    inputs the backdoor fires on. NaN numbers (and a warning) where a side keeps nothing."""
    settings = {**settings, "evaluation_set": "correct clean, successful triggered"}
    kc, kt = keep
    if kc.any() and kt.any():
        return roc_analysis(method, sc, st, settings=settings, keep_clean=kc, keep_triggered=kt,
                            **common)
    what = "no clean input is classified correctly" if not kc.any() else \
        "the backdoor fires on no triggered input"
    warnings.warn(f"{method}: {what}: the filtered evaluation set has no ROC (NaN).",
                  stacklevel=3)
    nan2 = (math.nan, math.nan)
    c, t = np.asarray(sc, float)[kc], np.asarray(st, float)[kt]
    c.flags.writeable = t.flags.writeable = False
    return DetectionResult(method, c, t, np.zeros(0), np.zeros(0), math.nan, math.nan, nan2,
                           nan2, math.nan, nan2, common["seconds_per_input"],
                           common["setup_seconds"], {**settings, "empty": what, "n_boot": 0},
                           "none", "filtered", len(c), len(t), len(kc), len(kt),
                           np.flatnonzero(kc), np.flatnonzero(kt))


# --- "is this model backdoored?": model-level scores -----------------------------------------

MODEL_METHODS = ("cbd", "w-gap")
MODEL_LABELS = {"cbd": "CBD: local dominant probability (Xiang, Xiong, Li, NeurIPS 2023)",
                "w-gap": "W_σ gap: the most-voted class's images smoother than the others'"}
CBD_SIGMA = 2.0  # CBD's --sigma default (get_stats.py); its README's CIFAR-10 example uses 1.14
CBD_SAMPLES = 1024  # noisy copies per image (get_stats.py)
W_GAP_SIGMAS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)  # w-gap's grid (pixel units; pass the dataset's)


@dataclass(frozen=True)
class ModelScores:
    """Model-level suspicion scores of one model (`model_scores`): higher = more suspicious."""

    scores: dict  # method -> score
    standard_errors: dict  # method -> Monte-Carlo standard error of the score (noise draws only)
    targets: dict  # method -> the suspected target class (the most-voted class)
    class_votes: dict  # method -> (K,) mean vote share of each class under noise
    image_indices: np.ndarray  # positions in `data` of the images used, class by class
    settings: dict = field(default_factory=dict)

    def row(self, digits: int = 3) -> dict:
        """One row for a table: each method's score ± SE and suspected target."""
        return {m: f"{v:.{digits}f} ± {self.standard_errors[m]:.{digits}f} (class "
                   f"{self.targets[m]})" for m, v in self.scores.items()}


def cbd_statistic(frequencies) -> tuple[float, int, np.ndarray]:
    """CBD's local dominant probability from per-image vote shares (n_images, K) under noise:
    q̄ = the mean of the rows, LDP = max_k q̄_k, the suspected target argmax_k q̄_k. Returns
    (LDP, target, q̄). (Xiang, Xiong, Li: "CBD: a certified backdoor detector based on local
    dominant probability", NeurIPS 2023; zhenxianglance/CBD, get_stats.py.)"""
    q = np.asarray(frequencies, dtype=float)
    if q.ndim != 2 or not len(q) or not np.isfinite(q).all():
        raise ValueError(f"`frequencies` must be a finite (n_images, K) array; got shape {q.shape}.")
    mean = q.mean(0)
    k = int(np.argmax(mean))
    return float(mean[k]), k, mean


def w_gap_statistic(entropy, labels, frequencies, num_classes: int) -> tuple[float, int, np.ndarray]:
    """The workbench's W_σ model statistic: t̂ = the class with the most noisy votes over every
    image and σ (frequencies (N, S, K) averaged), then (mean W_σ of the images of other classes −
    mean W_σ of the images of class t̂) / log K, over the σ grid (entropy (N, S), nats).
    Returns (gap, t̂, pooled votes). In [−1, 1]; higher: the most-voted class's region holds its
    own images more firmly than the other classes' regions hold theirs, as around a backdoor's
    target class, into which noise drifts (Grosse et al. 2022: triggered inputs are smoother).
    Needs images of t̂ and of at least one other class."""
    h = np.asarray(entropy, dtype=float)
    y = np.asarray(labels)
    f = np.asarray(frequencies, dtype=float)
    pooled = f.mean((0, 1))
    t = int(np.argmax(pooled))
    own, other = y == t, y != t
    if not own.any() or not other.any():
        raise ValueError(f"`labels` must hold images of the most-voted class {t} and of another "
                         "class; got " + ("none of it." if not own.any() else "no other class."))
    gap = (h[other].mean() - h[own].mean()) / math.log(num_classes)
    return float(gap), t, pooled


def _check_data(data):
    """(images, labels) from a workbench Dataset (its test split) or an (images, labels) pair."""
    if hasattr(data, "x_test") and hasattr(data, "y_test"):
        x, y = data.x_test, data.y_test
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    else:
        raise TypeError("`data` must be a workbench Dataset (its test split is used) or an "
                        f"(images, labels) pair of tensors; got {type(data).__name__}.")
    check_images("data images", x)
    if not len(x):
        raise ValueError("`data` must hold at least one image; got none.")
    check_labels("data labels", y, len(x))
    return x, y


def model_scores(model: nn.Module, data, methods=MODEL_METHODS, *, sigma: float = CBD_SIGMA,
                 n_samples: int = CBD_SAMPLES, n_per_class: int = 1, w_sigmas=W_GAP_SIGMAS,
                 w_samples: int = 256, seed: int = 0, batch_size: int | None = None) -> ModelScores:
    """"Is this model backdoored?": one score per method for the whole model, from its votes on
    Gaussian-noised copies of correctly classified clean images; higher = more suspicious.
    Compare scores over models (clean ones as negatives): no threshold here.

    data: labelled clean images the model was not trained on, a workbench Dataset (its test
        split) or (images (N, C, H, W) in [0, 1], labels (N,)). For each of the model's K classes
        `n_per_class` images the model classifies correctly are drawn (seeded by `seed`); a class
        with fewer is refused (CBD's code fails there too).
    methods:
      "cbd": CBD's statistic (Xiang, Xiong, Li: "CBD: a certified backdoor detector based on
        local dominant probability", NeurIPS 2023; zhenxianglance/CBD, get_stats.py): each image
        x_c gets `n_samples` copies x_c + N(0, σ²I), not clipped; q_c = the shares of the hard
        predictions (`estimate_smoothness(..., mode="hard")` frequencies); the local dominant
        probability LDP = max_k (1/K) Σ_c q_c[k] (`cbd_statistic`). As the reference: one image
        per class (n_per_class=1), σ = 2.0 (its `--sigma` default), 1,024 copies, eval mode.
        Differences: the images are drawn with a seed (the reference: unseeded, from the first
        half of each class of the test set); n_per_class > 1 averages more images (the
        reference: 1); the Monte-Carlo SE is reported (√(Σ_c q_c[k](1 − q_c[k])/n) / K for the
        chosen k); no calibration (the reference flags LDP above a conformal threshold from 100
        shadow models; an AUC over models needs the scores only), no certification.
      "w-gap": the workbench's W_σ statistic (`w_gap_statistic`): at each σ of `w_sigmas`
        (`w_samples` copies each), W_σ of the same images; t̂ = the most-voted class; score =
        (mean W of the other classes' images − mean W of class t̂'s) / log K. SE: from the cells'
        own standard errors (`estimate_smoothness`), cells independent.
    Noise: `seed` for CBD's estimate, seed + 1 for w-gap's. The model is given back as it was.
    """
    _check_model(model)
    if isinstance(methods, str) or not isinstance(methods, (tuple, list)) or not methods:
        raise TypeError(f"`methods` must be a non-empty tuple of names from "
                        f"{', '.join(map(repr, MODEL_METHODS))}; got {methods!r}.")
    for m in methods:
        check_choice("methods", m, MODEL_METHODS)
    if len(set(methods)) != len(methods):
        raise ValueError(f"`methods` must not repeat a name; got {tuple(methods)!r}.")
    x, y = _check_data(data)
    sigma = check_float("sigma", sigma, 0.0, None, low_open=True)
    check_int("n_samples", n_samples, low=1)
    check_int("n_per_class", n_per_class, low=1)
    w_sig = check_sigmas("w_sigmas", w_sigmas)
    check_int("w_samples", w_samples, low=1)
    seed = check_seed("seed", seed, generator=False)
    if batch_size is not None:
        check_int("batch_size", batch_size, low=1)
    check_model_input(model, x, "data images")
    pred = _predict(model, x.float(), batch_size or 2048)
    with preserve_model(model), torch.inference_mode():
        k = int(model(x[:1].float().to(_model_device(model))).shape[-1])
    if int(y.max()) >= k:
        raise ValueError(f"`data labels` must be classes of the model (0…{k - 1}); got "
                         f"{int(y.max())}.")
    correct = (pred == y.cpu()).numpy()
    labels = y.cpu().numpy()
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(k):
        cand = np.flatnonzero(correct & (labels == c))
        if len(cand) < n_per_class:
            raise ValueError(f"`data` must hold at least {n_per_class} correctly classified "
                             f"image{'s' if n_per_class > 1 else ''} of every class of the model "
                             f"(0…{k - 1}); class {c} has {len(cand)} (of "
                             f"{int((labels == c).sum())}).")
        chosen.append(rng.permutation(cand)[:n_per_class])
    idx = np.concatenate(chosen)
    imgs, img_labels = x[torch.from_numpy(idx)].float(), labels[idx]
    scores, ses, targets, votes = {}, {}, {}, {}
    settings = {"methods": list(methods), "n_per_class": n_per_class, "seed": seed,
                "num_classes": k}
    for m in methods:
        if m == "cbd":
            res = estimate_smoothness(model, imgs, [sigma], n_samples, mode="hard", clip=None,
                                      seed=seed, batch_size=batch_size)
            q = res.frequencies[:, 0, :]
            ldp, t, mean = cbd_statistic(q)
            n = res.n_samples[:, 0]
            ses[m] = float(math.sqrt(float((q[:, t] * (1 - q[:, t]) / n).sum())) / len(q))
            settings.update({"sigma": sigma, "n_samples": n_samples})
            scores[m], targets[m], votes[m] = ldp, t, mean
        else:
            res = estimate_smoothness(model, imgs, w_sig, w_samples, mode="hard", clip=None,
                                      seed=seed + 1, batch_size=batch_size)
            gap, t, pooled = w_gap_statistic(res.entropy, img_labels, res.frequencies, k)
            se2 = res.entropy_se ** 2
            own, other = img_labels == t, img_labels != t
            ses[m] = float(math.sqrt(se2[own].sum() / se2[own].size ** 2
                                     + se2[other].sum() / se2[other].size ** 2) / math.log(k))
            settings.update({"w_sigmas": list(w_sig), "w_samples": w_samples})
            scores[m], targets[m], votes[m] = gap, t, pooled
    return ModelScores(scores, ses, targets, votes, idx, settings)
