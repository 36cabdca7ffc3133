"""Artificial patterns made without poisoning (claim 5 of the paper).

On a model trained on clean data, a *universal adversarial patch* is optimised to send clean
inputs to one class: a square of the trigger's size and place whose content maximises the mean
log-probability of `target` over clean inputs of other classes (Brown et al. 2017's adversarial
patch, fixed location). Random patches of the same size and place are the controls.

Where: the default is a 4×4 patch at the image centre. On a clean digits model a corner patch
cannot flip predictions at all (measured: 0% success for 3×3 to 5×5 corner patches, 1.5% at
6×6; benchmarks/RESULTS.md), because the clean model never learnt to read the empty corners. Each pattern
is then measured like a trigger: its success rate and the smoothing gap of patched vs clean inputs.
Size matters (`paper.pattern_size_study`, benchmarks/RESULTS.md): on digits, 4×4 and 6×6 universal
patches move 20% and 63% of inputs and are *less* smooth than clean inputs; an 8×8 one moves all of
them and is smoother, as a backdoor trigger is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..base._validate import (check_float, check_forwards, check_images, check_int, check_labels,
                              check_seed, check_sigmas)
from ..attacks.poison import make_generator, triggered_pairs
from ..estimator.comparison import ComparisonResult, compare_smoothness
from ..base.models import preserve_model
from ..estimator.sampling import check_model as _check_model, check_model_input, model_device as _model_device
from ..training.train import attack_success_rate
from ..attacks.triggers import PatternPatch, Trigger


def universal_patch(model: nn.Module, x_clean: torch.Tensor, y_clean: torch.Tensor, target: int,
                    size: int = 4, position="center", margin: int = 1, steps: int = 300,
                    lr: float = 0.3, batch_size: int = 256, seed: int = 0,
                    progress: bool = False) -> PatternPatch:
    """Optimise a patch's content (Adam on logits of the pixels) to push inputs to `target`."""
    _check_model(model)
    check_images("x_clean", x_clean)
    k = check_model_input(model, x_clean, "x_clean")
    check_labels("y_clean", y_clean, len(x_clean))
    target = check_int("target", target, 0, k - 1)
    size = check_int("size", size, low=1, high=min(x_clean.shape[2:]))
    # the patch's place (position, margin) must fit the images: fails now, not after optimising
    PatternPatch(torch.full((x_clean.shape[1], size, size), 0.5), position, margin)(x_clean[:1])
    steps = check_int("steps", steps, low=1)
    lr = check_float("lr", lr, 0.0, None, low_open=True)
    batch_size = check_int("batch_size", batch_size, low=1)
    check_seed("seed", seed)
    if not isinstance(progress, bool):
        raise TypeError(f"`progress` must be a bool; got {progress!r}.")
    dev = _model_device(model)
    keep = y_clean != target
    x = x_clean[keep].to(dev, torch.float32)
    if not len(x):
        raise ValueError("`x_clean` must hold inputs of classes other than `target`.")
    g = make_generator(seed)
    c = x.shape[1]
    theta = (torch.randn((c, size, size), generator=g) * 0.1).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    # where the patch goes (the trigger's own placement rule), found once
    m, _ = PatternPatch(torch.sigmoid(theta).detach(), position, margin).mask_and_pattern(
        x.shape[1:], dev, x.dtype)
    r0, c0 = (int(v) for v in torch.nonzero(m[0])[0])
    with preserve_model(model, requires_grad=False):  # the caller's model comes back unchanged
        for _ in tqdm(range(steps), desc="universal patch", disable=not progress, leave=False):
            idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=g).to(dev)
            xb = x[idx].clone()
            xb[:, :, r0:r0 + size, c0:c0 + size] = torch.sigmoid(theta)  # differentiable stamp
            loss = -model(xb).log_softmax(-1)[:, target].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return PatternPatch(torch.sigmoid(theta).detach().cpu(), position, margin)


def random_patches(n: int, size: int, channels: int = 1, position="center", margin: int = 1,
                   seed: int = 0) -> list[PatternPatch]:
    """`n` patches of uniform random content: controls for crafted patterns."""
    check_int("n", n, low=1)
    size = check_int("size", size, low=1)
    channels = check_int("channels", channels, low=1)
    g = make_generator(seed)
    return [PatternPatch(torch.rand((channels, size, size), generator=g), position, margin)
            for _ in range(n)]


@dataclass(frozen=True)
class PatternMeasurement:
    name: str  # "universal patch", "random patch 1", ...
    trigger: PatternPatch
    success_rate: float  # fraction of non-target test inputs the pattern sends to the target
    comparison: ComparisonResult  # clean vs patched W_σ (gap, CI, test)


def measure_patterns(model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, target: int,
                     patterns: dict[str, PatternPatch], sigmas, n_pairs: int = 100,
                     n_samples: int = 64, seed: int = 0) -> list[PatternMeasurement]:
    """Success rate and smoothing gap of each pattern, on the same test pairs (everything is
    checked before the first pattern is measured)."""
    _check_model(model)
    check_images("x_test", x_test)
    k = check_model_input(model, x_test, "x_test")
    check_labels("y_test", y_test, len(x_test))
    target = check_int("target", target, 0, k - 1)
    if not isinstance(patterns, dict):
        raise TypeError(f"`patterns` must be a dict of name -> Trigger; got "
                        f"{type(patterns).__name__}.")
    if not patterns:
        raise ValueError("`patterns` must hold at least one pattern; got an empty dict.")
    for name, trig in patterns.items():
        if not isinstance(trig, Trigger):
            raise TypeError(f"`patterns` must map names to workbench.triggers.Trigger objects; "
                            f"got {type(trig).__name__} for {name!r}.")
        trig(x_test[:1])  # each pattern must fit the images
    sig = check_sigmas("sigmas", sigmas)
    n_pairs = check_int("n_pairs", n_pairs, low=2)
    n_samples = check_int("n_samples", n_samples, low=1)
    check_seed("seed", seed, generator=False)
    pairs = min(n_pairs, int((y_test != target).sum()))
    check_forwards(pairs * len(sig) * n_samples,
                   f"{pairs} pairs × {len(sig)} σ × {n_samples} samples")
    out = []
    for name, trig in patterns.items():
        success = attack_success_rate(model, x_test, y_test, trig, target)
        pairs = triggered_pairs(x_test, y_test, trig, target, n=n_pairs, seed=seed)
        cmp = compare_smoothness(model, pairs.clean, pairs.triggered, sigmas, n_samples, seed=seed)
        out.append(PatternMeasurement(name, trig, success, cmp))
    return out


def pattern_table(measurements: list[PatternMeasurement]) -> list[dict]:
    return [{"pattern": m.name, "success rate": round(m.success_rate, 4),
             "smoothing gap": round(m.comparison.gap, 4),
             "gap 95% CI": f"[{m.comparison.gap_ci[0]:.4f}, {m.comparison.gap_ci[1]:.4f}]",
             "Wilcoxon p": float(f"{m.comparison.p_value:.3g}")} for m in measurements]
