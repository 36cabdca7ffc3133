"""Poisoned training sets and triggered test pairs.

Poisoning modes (`poisoning=`), each from its paper:

    "dirty-label"       BadNets (Gu et al. 2017): a fraction `rate` of the *whole* training set is
                        chosen uniformly at random among the images whose true class is not the
                        target (relabelling a target-class image would change nothing), stamped
                        with the trigger and relabelled to the target.
    "clean-label"       SIG's original setting (Barni, Kallas & Tondi, "A new backdoor attack in
                        CNNs by training set corruption without label poisoning", ICIP 2019): the
                        images are chosen among the *target class* only, stamped, and keep their
                        (correct) labels. `rate` is still a fraction of the whole training set, so
                        it can be at most the target class's share of it.
    "label-consistent"  Turner, Tsipras & Madry, "Label-consistent backdoor attacks" (arXiv
                        1912.02771, 2019): as clean-label, but each chosen target-class image is
                        first moved by an untargeted PGD attack (Madry et al. 2018) within an L∞
                        ball of radius `epsilon` on a clean model, so that its own content is hard
                        to learn and the model leans on the trigger instead; then stamped. Labels
                        unchanged. (Turner et al. craft the perturbation on an adversarially
                        trained model; here it is the workbench's cached clean model, see
                        `workbench.train.train_backdoor`.)

Target modes (`target_mode=`):

    "all-to-one"  every poisoned image is labelled `target` (BadNets' single-target attack).
    "all-to-all"  an image of class y is labelled (y + 1) mod K (BadNets' all-to-all attack, Gu et
                  al. 2017); every class is eligible and there is no single target (`target` must
                  be None where a function takes it, 0 in `train_backdoor`). Dirty-label only.

Triggers may shape their own poisoning (Adaptive-Blend, Qi et al. ICLR 2023): a trigger with a
`poison_apply(x, generator)` method is applied through it to the training images (e.g. a random
subset of its pieces per image, drawn from the poisoning generator; test images still get
`trigger(x)`), and a trigger with a `conservatism` c in [0, 1) keeps the true label of
round(c · P) of the P triggered training images ("regularization samples"), chosen at random;
their indices are `PoisonedSet.cover_indices`. Both are looked up with getattr, so every other
trigger poisons exactly as before.

The attack success rate (ASR, `workbench.train.attack_success_rate`) is measured on the test
inputs the attack applies to: those whose true class is not the target (all-to-one), or all of
them, each against its own shifted label (all-to-all).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..base._validate import (check_choice, check_float, check_images, check_int, check_labels,
                              check_seed)
from ..base.models import check_model, check_model_input, model_device, preserve_model
from .triggers import Trigger, as_trigger

POISONING_MODES = ("dirty-label", "clean-label", "label-consistent")
TARGET_MODES = ("all-to-one", "all-to-all")

# Label-consistent poisoning's PGD, when not given: radius 16/255 (the largest L∞ budget of
# Turner et al. 2019), 20 steps of 2.5·ε/steps (Madry et al. 2018's rule: the walk can cross the
# ball and back), from a seeded uniform random start in the ball.
DEFAULT_EPSILON = 16 / 255
DEFAULT_PGD_STEPS = 20


def default_pgd_step_size(epsilon: float, steps: int) -> float:
    """Madry et al. (2018)'s step: 2.5 · ε / steps."""
    return 2.5 * epsilon / steps


def make_generator(seed: int | torch.Generator, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator from an int seed (or the generator itself)."""
    check_seed("seed", seed)
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator(device=device).manual_seed(int(seed))


def _empty_index() -> torch.Tensor:
    return torch.empty(0, dtype=torch.int64)


@dataclass(frozen=True)
class PoisonedSet:
    """A training set with some images stamped (and, dirty-label, relabelled)."""

    x: torch.Tensor  # (N, C, H, W) training images, the poisoned ones triggered
    y: torch.Tensor  # (N,) labels: the poisoned ones relabelled (dirty-label) or unchanged
    poison_indices: torch.Tensor  # (P,) indices into the training set that were triggered
    target: int | None  # the target class (None for all-to-all)
    rate: float
    poisoning: str = "dirty-label"
    target_mode: str = "all-to-one"
    # (Q,) the triggered indices that kept their true label through the trigger's conservatism
    # (dirty-label only; in the clean-label modes every triggered image keeps its label)
    cover_indices: torch.Tensor = field(default_factory=_empty_index)


def _check_trigger(trigger) -> None:
    if not isinstance(trigger, Trigger):
        raise TypeError(f"`trigger` must be a workbench.triggers.Trigger (e.g. Patch(size=3)); "
                        f"got {type(trigger).__name__}.")


def check_attack(poisoning, target_mode) -> tuple[str, str]:
    """Validated (poisoning, target_mode): known names, and a combination that means something."""
    for name, value, choices in (("poisoning", poisoning, POISONING_MODES),
                                 ("target_mode", target_mode, TARGET_MODES)):
        if not isinstance(value, str):
            allowed = ", ".join(repr(c) for c in choices)
            raise TypeError(f"`{name}` must be one of {allowed}; got {value!r}.")
        check_choice(name, value, choices)
    if target_mode == "all-to-all" and poisoning != "dirty-label":
        raise ValueError(f"`target_mode` must be 'all-to-one' with poisoning={poisoning!r}: an "
                         "all-to-all attack relabels y to (y + 1) mod K, which needs "
                         "poisoning='dirty-label'; got 'all-to-all'.")
    return poisoning, target_mode


def check_pgd(poisoning: str, epsilon, steps, step_size) -> tuple:
    """Validated (epsilon, steps, step_size): the defaults resolved for label-consistent
    poisoning, all None for the other modes (where giving one is an error, not ignored)."""
    if poisoning != "label-consistent":
        for name, v in (("epsilon", epsilon), ("pgd_steps", steps), ("pgd_step_size", step_size)):
            if v is not None:
                raise ValueError(f"`{name}` must be None unless poisoning='label-consistent' (it "
                                 f"sets that mode's adversarial perturbation); got {v!r} with "
                                 f"poisoning={poisoning!r}.")
        return None, None, None
    epsilon = DEFAULT_EPSILON if epsilon is None else check_float("epsilon", epsilon, 0.0, 1.0,
                                                                  low_open=True)
    steps = DEFAULT_PGD_STEPS if steps is None else check_int("pgd_steps", steps, 1, 1000)
    step_size = (default_pgd_step_size(epsilon, steps) if step_size is None
                 else check_float("pgd_step_size", step_size, 0.0, 1.0, low_open=True))
    return epsilon, steps, step_size


def _check_num_classes(num_classes, y: torch.Tensor, name_y: str) -> int:
    """K for an all-to-all attack: given (labels cannot tell it: a split without the last class
    would shift K-2 to 0 instead of K-1), at least 2 and above every label."""
    if num_classes is None:
        raise ValueError("`num_classes` must be given with target_mode='all-to-all' (labels y go "
                         "to (y + 1) mod num_classes); got None.")
    k = check_int("num_classes", num_classes, low=2)
    if int(y.max()) >= k:
        raise ValueError(f"`num_classes` must exceed every label of `{name_y}` (largest "
                         f"{int(y.max())}); got {k}.")
    return k


def _check_target(target, target_mode: str, high: int) -> int | None:
    if target_mode == "all-to-all":
        if target is not None:
            raise ValueError("`target` must be None with target_mode='all-to-all' (each label y "
                             f"goes to (y + 1) mod K: there is no single target); got {target!r}.")
        return None
    if target is None:
        raise TypeError(f"`target` must be an int in [0, {high}] (None only with "
                        "target_mode='all-to-all'); got None.")
    return check_int("target", target, 0, high)


def shifted_labels(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """All-to-all targets (BadNets, Gu et al. 2017): (y + 1) mod num_classes."""
    return (y + 1) % num_classes


def attack_targets(y: torch.Tensor, target: int | None, target_mode: str = "all-to-one",
                   num_classes: int | None = None) -> torch.Tensor:
    """The label the attacker wants for each input of true label `y`: `target` for every input
    (all-to-one) or (y + 1) mod num_classes (all-to-all)."""
    check_attack("dirty-label", target_mode)
    if target_mode == "all-to-all":
        return shifted_labels(y, _check_num_classes(num_classes, y, "y"))
    return torch.full_like(y, int(target))


def eligible_indices(y: torch.Tensor, target: int | None, poisoning: str = "dirty-label",
                     target_mode: str = "all-to-one") -> torch.Tensor:
    """Training indices a poisoning mode may choose: non-target images (dirty-label,
    all-to-one), every image (all-to-all), or target-class images (clean-label modes)."""
    if target_mode == "all-to-all":
        return torch.arange(len(y))
    if poisoning == "dirty-label":
        return torch.nonzero(y != target).flatten()
    return torch.nonzero(y == target).flatten()


def max_rate(y: torch.Tensor, target: int | None, poisoning: str = "dirty-label",
             target_mode: str = "all-to-one") -> float:
    """The largest `rate` a poisoning mode allows on labels `y` (floored to 4 decimals, so the
    stated figure is itself accepted)."""
    n = len(eligible_indices(y, target, poisoning, target_mode))
    return math.floor(n / len(y) * 1e4) / 1e4


def check_rate(y: torch.Tensor, rate: float, target: int | None, poisoning: str,
               target_mode: str) -> int:
    """The number of images to poison, round(rate · N); a clear error when the mode has fewer
    images to choose from."""
    eligible = len(eligible_indices(y, target, poisoning, target_mode))
    n_poison = int(round(rate * len(y)))
    if n_poison <= eligible:
        return n_poison
    top = max_rate(y, target, poisoning, target_mode)
    if poisoning == "dirty-label":
        why = (f"`rate` must leave enough non-target images to poison: at most {top:.4f} here "
               f"({eligible} of {len(y)} training images are not of class {target})")
    else:
        why = (f"`rate` must be at most {top:.4f} for poisoning={poisoning!r} (a clean-label "
               "rate larger than the target class allows): the rate is a fraction of the whole "
               f"training set, and only {eligible} of its {len(y)} images are of the target "
               f"class {target}")
    raise ValueError(f"{why}; got {rate}.")


def adversarial_perturbation(model, x: torch.Tensor, y: torch.Tensor, epsilon: float = DEFAULT_EPSILON,
                             steps: int = DEFAULT_PGD_STEPS, step_size: float | None = None,
                             seed: int | torch.Generator = 0, batch_size: int = 256) -> torch.Tensor:
    """Untargeted L∞ PGD (Madry et al. 2018), as label-consistent poisoning uses it (Turner et
    al. 2019): from a seeded uniform start in the ball, `steps` signed-gradient ascent steps of
    `step_size` on the cross-entropy of the true labels `y`, each projected back into
    {x' : |x' - x|∞ <= epsilon} ∩ [0, 1]. Returns the perturbed images (same shape and dtype as
    `x`, on the CPU). The model is given back unchanged (workbench.models.preserve_model)."""
    check_model(model)
    check_images("x", x)
    if not len(x):
        raise ValueError(f"`x` must hold at least one image; got shape {tuple(x.shape)}.")
    k = check_model_input(model, x, "x")
    check_labels("y", y, len(x))
    if int(y.max()) >= k:
        raise ValueError(f"`y` must hold classes of the model, in [0, {k - 1}]; got {int(y.max())}.")
    epsilon = check_float("epsilon", epsilon, 0.0, 1.0, low_open=True)
    steps = check_int("steps", steps, 1, 1000)
    step_size = (default_pgd_step_size(epsilon, steps) if step_size is None
                 else check_float("step_size", step_size, 0.0, 1.0, low_open=True))
    batch_size = check_int("batch_size", batch_size, low=1)
    g = make_generator(seed)
    dev = model_device(model)
    x32 = x.float()
    start = (torch.rand(x32.shape, generator=g) * 2 - 1) * epsilon  # drawn on the CPU: seeded
    out = []
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    with preserve_model(model, requires_grad=False):  # eval mode; the caller's model comes back
        for i in range(0, len(x32), batch_size):
            x0 = x32[i:i + batch_size].to(dev)
            yb = y[i:i + batch_size].to(dev)
            lo, hi = (x0 - epsilon).clamp(0, 1), (x0 + epsilon).clamp(0, 1)
            xa = torch.max(torch.min(x0 + start[i:i + batch_size].to(dev), hi), lo)
            for _ in range(steps):
                xa.requires_grad_(True)
                with torch.enable_grad():
                    logits = model(xa)
                    if not bool(torch.isfinite(logits).all()):
                        raise FloatingPointError("The model returned NaN or infinite logits during "
                                                 "the PGD attack; it cannot guide a perturbation.")
                    (grad,) = torch.autograd.grad(loss_fn(logits, yb), xa)
                xa = torch.max(torch.min(xa.detach() + step_size * grad.sign(), hi), lo)
            out.append(xa.detach().cpu())
    return torch.cat(out).to(x.dtype)


def poison_dataset(x: torch.Tensor, y: torch.Tensor, trigger: Trigger, rate: float,
                   target: int | None, seed: int | torch.Generator = 0, *,
                   poisoning: str = "dirty-label", target_mode: str = "all-to-one",
                   num_classes: int | None = None, model=None, epsilon: float | None = None,
                   pgd_steps: int | None = None, pgd_step_size: float | None = None) -> PoisonedSet:
    """Stamp `trigger` on round(rate·N) training images chosen by the poisoning mode (see the
    module's docstring for the modes and their papers).

    target: the target class (all-to-one), None for all-to-all.
    num_classes: K, needed for all-to-all (labels go to (y + 1) mod K).
    model, epsilon, pgd_steps, pgd_step_size: label-consistent poisoning only: the clean model
        the PGD perturbation is crafted on and its settings (defaults: DEFAULT_EPSILON,
        DEFAULT_PGD_STEPS, 2.5·ε/steps).
    seed: one generator stream draws, in order, the chosen images, the conservatism's covers,
    the PGD start and the trigger's own per-image choices (poison_apply).
    """
    _check_trigger(trigger)
    check_images("x", x)
    if not len(x):
        raise ValueError(f"`x` must hold at least one image; got shape {tuple(x.shape)}.")
    check_labels("y", y, len(x))
    rate = check_float("rate", rate, 0.0, 1.0)
    poisoning, target_mode = check_attack(poisoning, target_mode)
    if target_mode == "all-to-all":
        k = _check_num_classes(num_classes, y, "y")
    else:
        k = int(y.max().item()) + 1 if num_classes is None else check_int(
            "num_classes", num_classes, low=int(y.max().item()) + 1)
    target = _check_target(target, target_mode, max(k - 1, 0))
    epsilon, pgd_steps, pgd_step_size = check_pgd(poisoning, epsilon, pgd_steps, pgd_step_size)
    if poisoning == "label-consistent" and model is None:
        raise TypeError("`model` must be the clean torch.nn.Module that label-consistent poisoning "
                        "crafts its perturbation on; got None.")
    if poisoning != "label-consistent" and model is not None:
        raise ValueError(f"`model` must be None unless poisoning='label-consistent'; got a model "
                         f"with poisoning={poisoning!r}.")
    g = make_generator(seed)
    conservatism = _conservatism(trigger)
    n_poison = check_rate(y, rate, target, poisoning, target_mode)  # before any random draw
    eligible = eligible_indices(y, target, poisoning, target_mode)
    order = eligible[torch.randperm(len(eligible), generator=g)[:n_poison]]
    chosen = order.sort().values
    n_cover = int(round(conservatism * n_poison)) if poisoning == "dirty-label" else 0
    cover = order[:n_cover].sort().values
    x_p, y_p = x.clone(), y.clone()
    if n_poison:
        src = x[chosen]
        if poisoning == "label-consistent":
            src = adversarial_perturbation(model, src, y[chosen], epsilon, pgd_steps,
                                           pgd_step_size, seed=g)
        apply = getattr(trigger, "poison_apply", None)
        x_p[chosen] = apply(src, g) if callable(apply) else trigger(src)
        if poisoning == "dirty-label":
            y_p[chosen] = attack_targets(y[chosen], target, target_mode, k)
            y_p[cover] = y[cover]
    return PoisonedSet(x_p, y_p, chosen, target, rate, poisoning, target_mode, cover)


def _conservatism(trigger: Trigger) -> float:
    """The trigger's share of triggered training images that keep their true label (Qi et al.
    2023's conservatism; 0 for triggers without one)."""
    c = getattr(trigger, "conservatism", 0.0)
    if c is None:
        return 0.0
    return check_float("trigger.conservatism", c, 0.0, 1.0, high_open=True)


@dataclass(frozen=True)
class TriggeredPairs:
    """Test inputs the attack applies to, with and without the trigger, index-aligned."""

    clean: torch.Tensor  # (N, C, H, W)
    triggered: torch.Tensor  # (N, C, H, W): trigger(clean)
    labels: torch.Tensor  # (N,) true labels of the clean inputs
    indices: torch.Tensor  # (N,) indices into the test set
    targets: torch.Tensor | None = None  # (N,) the label the attacker wants for each input


def triggered_pairs(x_test: torch.Tensor, y_test: torch.Tensor, trigger: Trigger,
                    target: int | None, n: int | None = None, seed: int | torch.Generator = 0, *,
                    target_mode: str = "all-to-one", num_classes: int | None = None) -> TriggeredPairs:
    """Up to `n` random test inputs the attack applies to (all if n is None) and their triggered
    twins: inputs of classes other than `target` (all-to-one), or inputs of every class
    (all-to-all: `target` None and `num_classes` given; each pair's target is (y + 1) mod K).
    trigger: a workbench Trigger, or any function on (N, C, H, W) batches in [0, 1] (a model
    opened from elsewhere: `triggers.as_trigger`)."""
    trigger = as_trigger(trigger)
    check_images("x_test", x_test)
    if not len(x_test):
        raise ValueError(f"`x_test` must hold at least one image; got shape {tuple(x_test.shape)}.")
    check_labels("y_test", y_test, len(x_test))
    check_attack("dirty-label", target_mode)
    if target_mode == "all-to-all":
        k = _check_num_classes(num_classes, y_test, "y_test")
    elif num_classes is not None:
        k = check_int("num_classes", num_classes, low=int(y_test.max()) + 1)
    else:  # the labels only tell the largest class present; a target beyond it is no class
        k = int(y_test.max()) + 1
    target = _check_target(target, target_mode, k - 1)
    if n is not None:
        check_int("n", n, low=1)
    check_seed("seed", seed)  # even where n leaves nothing to draw: a bad seed is never silent
    eligible = eligible_indices(y_test, target, "dirty-label", target_mode)
    if not len(eligible):
        raise ValueError(f"`y_test` must hold inputs of classes other than `target` {target}; "
                         "every label is the target.")
    if n is not None and n < len(eligible):
        g = make_generator(seed)
        eligible = eligible[torch.randperm(len(eligible), generator=g)[:n]].sort().values
    clean = x_test[eligible]
    labels = y_test[eligible]
    return TriggeredPairs(clean, trigger(clean), labels, eligible,
                          attack_targets(labels, target, target_mode, k))
