"""Uncertainty landscapes around one input (no plotting here).

A 2-D landscape evaluates the model on the plane x + a·u + b·v through the input x, spanned by
two unit directions u, v (Gram–Schmidt orthonormalised):

    "trigger"   the trigger's own direction, trigger(x) − x (for a triggered centre, the same
                vector: the plane then holds the clean twin at a = −‖trigger(x) − x‖)
    "random"    a seeded Gaussian direction
    "gradient"  the input gradient of the loss of the predicted class (an adversarial direction)

Each grid point is coloured by the predicted class and, optionally, by the local W_σ there.
Grid points are clipped to [0, 1] (valid images), so far from the centre the plane bends along
the box's faces; the extent is in L2 units of pixel values. The grid is exactly symmetric: with
an odd resolution its middle point is the input itself.

The local W_σ is the W_σ of every curve, sweep and detection score: `estimate_smoothness` with
its defaults (hard votes, Gaussian noise left unclipped, iid draws, no bias correction), at one σ.
A noisy copy of a grid point is not clipped to [0, 1] (only the grid point is); an earlier
version clipped the noise too, a different statistic under the same name (issue 18: on a digits
Patch model at σ 0.4 a map's centre read 0.66 where the curve of the same input read 0.89).
The centre of an odd-resolution map is estimated first, so it sees the draws of input 0: its
value, standard error and interval are those of `estimate_smoothness(model, x[None], [sigma],
n_samples, seed=seed)`, to the bit, with common noise or without.

The local W_σ uses common noise by default: every grid point sees the same n draws (those of
`seed`), so neighbouring points differ by the model, not by the dice. Each point's estimate has
the same distribution as with independent draws (same bias and Monte-Carlo variance, so its
`entropy_se`, `ci_low` and `ci_high` hold point by point); what changes is that errors are shared
across the map instead of being independent speckle (roughness against independent draws:
benchmarks/RESULTS.md, "Widgets"), so the errors of two points of one map are correlated: the
SE of their difference is not the root sum of their squared SEs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..base._validate import (check_choice, check_float, check_forwards, check_images, check_int,
                              check_seed)
from ..base.models import preserve_model
from .sampling import check_model as _check_model, check_model_input, model_device as _model_device
from .smoothness import estimate_smoothness
from ..attacks.triggers import Trigger, as_trigger

DIRECTIONS = ("trigger", "random", "gradient")
CONFIDENCE = 0.95  # level of the local W_σ's intervals (estimate_smoothness's default)


@dataclass(frozen=True)
class Landscape:
    """Predictions (and local W_σ, with its uncertainty) on a plane through an input."""

    alphas: np.ndarray  # (R,) coordinates along the first direction
    betas: np.ndarray  # (R,) coordinates along the second direction
    predicted: np.ndarray  # (R, R) predicted class at (beta_i, alpha_j): rows follow betas
    confidence: np.ndarray  # (R, R) top softmax probability at the point
    entropy: np.ndarray | None  # (R, R) local W_σ at the point, nats (None if sigma was None)
    directions: tuple[str, str]  # names of the two directions
    markers: dict  # named points in (alpha, beta) coordinates, e.g. {"input": (0, 0)}
    # extent, resolution, sigma, n_samples, seed, common_noise, confidence; "estimator": the
    # settings of the W_σ estimate (those of SmoothnessResult.settings; None without sigma)
    settings: dict
    entropy_se: np.ndarray | None = None  # (R, R) standard error of `entropy` (None: no sigma)
    ci_low: np.ndarray | None = None  # (R, R) lower end of the `confidence` interval
    ci_high: np.ndarray | None = None  # (R, R) upper end (one-class points: Clopper–Pearson)


def _unit(v: torch.Tensor) -> torch.Tensor:
    n = v.norm()
    return v / n if n > 0 else v


def _check_trigger(trigger, needed: bool) -> Trigger | None:
    """The trigger as a Trigger (a workbench Trigger, or any function on image batches), or
    None."""
    if needed and trigger is None:
        raise ValueError("`trigger` must be given for the 'trigger' direction.")
    return None if trigger is None else as_trigger(trigger)


def _check_clean(clean, x: torch.Tensor) -> None:
    """`clean`: None or one image of the shape of `x` (C, H, W), as (C, H, W) or (1, C, H, W)."""
    if clean is None:
        return
    if not isinstance(clean, torch.Tensor):
        raise TypeError(f"`clean` must be None or one image, a torch.Tensor of the shape of `x` "
                        f"{tuple(x.shape)}; got {type(clean).__name__}.")
    if clean.reshape(-1).shape != x.reshape(-1).shape:
        raise ValueError(f"`clean` must be one image of the shape of `x` {tuple(x.shape)}; got "
                         f"{tuple(clean.shape)}.")
    check_images("clean", clean.reshape(1, *x.shape))


def _check_image(x, four_d: bool) -> torch.Tensor:
    """One image `x` (C, H, W) (or (1, C, H, W) where `four_d`), checked, as (C, H, W) float32."""
    shapes = "(C, H, W) or (1, C, H, W)" if four_d else "(C, H, W)"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`x` must be one image, a torch.Tensor of shape {shapes}; got "
                        f"{type(x).__name__}.")
    if four_d and x.ndim == 4 and len(x) == 1:
        x = x[0]
    if x.ndim != 3:
        raise ValueError(f"`x` must be one image, of shape {shapes}; got shape {tuple(x.shape)}.")
    check_images("x", x[None])
    return x.float()  # float64 too, as the estimator takes it (the models are float32)


def direction(model: nn.Module, x: torch.Tensor, kind: str, trigger: Trigger | None = None,
              seed: int = 0, clean: torch.Tensor | None = None) -> torch.Tensor:
    """One unnormalised direction (C, H, W) at input x (C, H, W)."""
    check_choice("kind", kind, DIRECTIONS)
    _check_model(model)
    x = _check_image(x, four_d=False)
    seed = check_seed("seed", seed, generator=False)
    trigger = _check_trigger(trigger, kind == "trigger")
    _check_clean(clean, x)
    if clean is not None:
        clean = clean.reshape(x.shape).float()
    return _direction(model, x, kind, trigger, seed, clean)


def _direction(model, x, kind, trigger, seed, clean) -> torch.Tensor:
    if kind == "trigger":
        base = x if clean is None else clean
        return (trigger(base[None])[0] - base[None][0]).detach()
    if kind == "random":
        g = torch.Generator().manual_seed(seed)
        return torch.randn(x.shape, generator=g).to(x.device)
    xg = x[None].clone().requires_grad_(True)
    with preserve_model(model), torch.enable_grad():
        logits = model(xg)
        loss = nn.functional.cross_entropy(logits, logits.argmax(1).detach())
        (grad,) = torch.autograd.grad(loss, xg)
    return grad[0].detach()


def landscape_2d(model: nn.Module, x: torch.Tensor, directions=("trigger", "random"),
                 trigger: Trigger | None = None, extent: float = 3.0, resolution: int = 25,
                 sigma: float | None = None, n_samples: int = 32, seed: int = 0,
                 clean: torch.Tensor | None = None, common_noise: bool = True) -> Landscape:
    """Predicted class (and local W_σ) on the plane through `x` spanned by two directions.

    x: one image (C, H, W) or (1, C, H, W) in [0, 1]. clean: for a triggered centre, its clean
    twin (the trigger direction is then trigger(clean) − clean, and the twin is marked).
    extent: half-width of the square in L2 units. resolution: points per side (odd: the
    input is the middle point). sigma: also compute W_σ at every point (`estimate_smoothness`'s
    estimator and defaults, unclipped noise: the W_σ of the curves), with its standard error and
    95% interval. common_noise: True (default) uses the same noise draws at every grid point (a
    smooth map); False gives each point its own draws (independent errors: speckle at small
    n_samples). Either way the centre's value is `estimate_smoothness(model, x[None], [sigma],
    n_samples, seed=seed)`'s.
    """
    _check_model(model)
    x = _check_image(x, four_d=True)
    if isinstance(directions, str) or not isinstance(directions, (tuple, list)):
        raise TypeError(f"`directions` must be a pair of different names from {DIRECTIONS}; "
                        f"got {directions!r}.")
    if len(directions) != 2 or directions[0] == directions[1]:
        raise ValueError(f"`directions` must be two different names from {DIRECTIONS}; "
                         f"got {directions!r}.")
    for d in directions:
        check_choice("directions", d, DIRECTIONS)
    extent = check_float("extent", extent, 0.0, None, low_open=True)
    resolution = check_int("resolution", resolution, 3, 201)
    if sigma is not None:
        sigma = check_float("sigma", sigma, 0.0, None, low_open=True)
    n_samples = check_int("n_samples", n_samples, low=1)
    seed = check_seed("seed", seed, generator=False)
    if not isinstance(common_noise, bool):
        raise TypeError(f"`common_noise` must be a bool; got {common_noise!r}.")
    trigger = _check_trigger(trigger, "trigger" in directions)
    _check_clean(clean, x)
    if sigma is not None:
        check_forwards(resolution**2 * n_samples, f"{resolution}² grid points × n_samples "
                                                  f"{n_samples}")
    dev = _model_device(model)
    check_model_input(model, x[None], "x")
    with preserve_model(model):
        x = x.to(dev)
        c_ = None if clean is None else clean.reshape(x.shape).to(dev, torch.float32)
        raw = [_direction(model, x, d, trigger, seed + i, c_) for i, d in enumerate(directions)]
        u = _unit(raw[0])
        v = raw[1] - (raw[1] * u).sum() * u  # Gram–Schmidt: v ⟂ u
        v = _unit(v)
        # exactly symmetric, 0 in the middle (torch.linspace's middle value is not exactly 0)
        half = (resolution - 1) / 2
        axis = extent * ((np.arange(resolution) - half) / half)
        grid = torch.tensor(axis, dtype=torch.float32, device=dev)
        bb, aa = torch.meshgrid(grid, grid, indexing="ij")  # rows: beta, cols: alpha
        pts = (x[None] + aa.reshape(-1, 1, 1, 1) * u + bb.reshape(-1, 1, 1, 1) * v).clamp(0, 1)
        with torch.inference_mode():
            logits = torch.cat([model(pts[i:i + 1024]) for i in range(0, len(pts), 1024)])
        if not bool(torch.isfinite(logits).all()):  # argmax of NaN would paint class 0
            raise FloatingPointError("The model returned NaN or infinite logits on the plane "
                                     "through `x`; the landscape would be meaningless.")
        probs = logits.softmax(-1)
        pred = probs.argmax(-1).reshape(resolution, resolution).cpu().numpy()
        conf = probs.max(-1).values.reshape(resolution, resolution).cpu().numpy()
        ent = se = lo = hi = estimator = None
        if sigma is not None:
            # the centre first: input 0's draws, those of the same input estimated on its own
            order = np.arange(resolution * resolution)
            if resolution % 2:
                mid = (resolution // 2) * resolution + resolution // 2
                order = np.concatenate([[mid], np.delete(order, mid)])
            res = estimate_smoothness(model, pts[torch.as_tensor(order, device=dev)], [sigma],
                                      n_samples, seed=seed, common_inputs=common_noise,
                                      confidence=CONFIDENCE)
            estimator = dict(res.settings)

            def grid_of(a):
                out = np.empty(resolution * resolution, dtype=a.dtype)
                out[order] = a[:, 0]
                return out.reshape(resolution, resolution)

            ent, se = grid_of(res.entropy), grid_of(res.entropy_se)
            lo, hi = grid_of(res.ci_low), grid_of(res.ci_high)
    markers = {"input": (0.0, 0.0)}
    if "trigger" in directions and trigger is not None:
        d = raw[directions.index("trigger")]
        coords = (float((d * u).sum()), float((d * v).sum()))
        if clean is None:
            markers["triggered twin"] = coords
        else:
            markers["clean twin"] = (-coords[0], -coords[1])
    settings = {"extent": extent, "resolution": resolution, "sigma": sigma,
                "n_samples": n_samples, "seed": seed, "common_noise": common_noise,
                "confidence": CONFIDENCE, "estimator": estimator}
    return Landscape(axis.copy(), axis.copy(), pred, conf, ent, tuple(directions), markers,
                     settings, se, lo, hi)
