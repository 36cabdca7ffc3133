"""Poisoned training sets and triggered test pairs.

Poisoning (a "dirty-label" backdoor, BadNets style): a fraction `rate` of the *whole* training set
is chosen uniformly at random among the images whose true class is not the target (relabelling a
target-class image would change nothing), stamped with the trigger and relabelled to `target`.
The chosen indices are recorded. The attack success rate (ASR) is measured on test images whose
true class is not the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._validate import check_float, check_images, check_int, check_labels, check_seed
from .triggers import Trigger


def make_generator(seed: int | torch.Generator, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator from an int seed (or the generator itself)."""
    check_seed("seed", seed)
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator(device=device).manual_seed(int(seed))


@dataclass(frozen=True)
class PoisonedSet:
    """A training set with some images stamped and relabelled."""

    x: torch.Tensor  # (N, C, H, W) training images, the poisoned ones triggered
    y: torch.Tensor  # (N,) labels, the poisoned ones set to `target`
    poison_indices: torch.Tensor  # (P,) indices into the training set that were poisoned
    target: int
    rate: float


def _check_trigger(trigger) -> None:
    if not isinstance(trigger, Trigger):
        raise TypeError(f"`trigger` must be a workbench.triggers.Trigger (e.g. Patch(size=3)); "
                        f"got {type(trigger).__name__}.")


def poison_dataset(x: torch.Tensor, y: torch.Tensor, trigger: Trigger, rate: float, target: int,
                   seed: int | torch.Generator = 0) -> PoisonedSet:
    """Stamp `trigger` on round(rate·N) training images of classes other than `target`."""
    _check_trigger(trigger)
    check_images("x", x)
    if not len(x):
        raise ValueError(f"`x` must hold at least one image; got shape {tuple(x.shape)}.")
    check_labels("y", y, len(x))
    rate = check_float("rate", rate, 0.0, 1.0)
    num_classes = int(y.max().item()) + 1
    target = check_int("target", target, 0, max(num_classes - 1, 0))
    eligible = torch.nonzero(y != target).flatten()  # (E,)
    n_poison = int(round(rate * len(y)))
    if n_poison > len(eligible):
        raise ValueError(f"`rate` must leave enough non-target images to poison: at most "
                         f"{len(eligible) / len(y):.4f} here; got {rate}.")
    g = make_generator(seed)
    chosen = eligible[torch.randperm(len(eligible), generator=g)[:n_poison]].sort().values
    x_p, y_p = x.clone(), y.clone()
    if n_poison:
        x_p[chosen] = trigger(x[chosen])
        y_p[chosen] = target
    return PoisonedSet(x_p, y_p, chosen, target, rate)


@dataclass(frozen=True)
class TriggeredPairs:
    """Test inputs (true class != target) with and without the trigger, index-aligned."""

    clean: torch.Tensor  # (N, C, H, W)
    triggered: torch.Tensor  # (N, C, H, W): trigger(clean)
    labels: torch.Tensor  # (N,) true labels of the clean inputs
    indices: torch.Tensor  # (N,) indices into the test set


def triggered_pairs(x_test: torch.Tensor, y_test: torch.Tensor, trigger: Trigger, target: int,
                    n: int | None = None, seed: int | torch.Generator = 0) -> TriggeredPairs:
    """Up to `n` random non-target test inputs (all if n is None) and their triggered twins."""
    _check_trigger(trigger)
    check_images("x_test", x_test)
    if not len(x_test):
        raise ValueError(f"`x_test` must hold at least one image; got shape {tuple(x_test.shape)}.")
    check_labels("y_test", y_test, len(x_test))
    # the labels only tell the largest class present; a target beyond it is no class of the data
    target = check_int("target", target, 0, int(y_test.max()))
    if n is not None:
        check_int("n", n, low=1)
    check_seed("seed", seed)  # even where n leaves nothing to draw: a bad seed is never silent
    eligible = torch.nonzero(y_test != target).flatten()
    if not len(eligible):
        raise ValueError(f"`y_test` must hold inputs of classes other than `target` {target}; "
                         "every label is the target.")
    if n is not None and n < len(eligible):
        g = make_generator(seed)
        eligible = eligible[torch.randperm(len(eligible), generator=g)[:n]].sort().values
    clean = x_test[eligible]
    return TriggeredPairs(clean, trigger(clean), y_test[eligible], eligible)
