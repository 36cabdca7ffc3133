"""Up-front argument checks with one message format:

    "`rate` must be a float in [0, 1]; got 1.5."

ValueError for a value out of range, TypeError for a value of the wrong type. Never `assert`.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Iterable, Sequence


# Refused above this many noisy forward passes in one W_σ estimate (N inputs × S scales × samples
# per cell, at most): 10^9 forwards take about 6 hours on 2 CPU cores and 20 minutes on a fast GPU
# for the small CNN. Split larger jobs, or pass max_forwards= explicitly (estimate_smoothness).
# It lives here, in the ground floor, because the checks of every layer use it.
MAX_FORWARDS = 10**9

def _interval(low, high, low_open, high_open) -> str:
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    lo_v = "-inf" if low is None else f"{low:g}"
    hi_v = "inf" if high is None else f"{high:g}"
    return f"{lo}{lo_v}, {hi_v}{hi}"


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """An int (numpy integers accepted, bools refused) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"`{name}` must be an int in {_interval(low, high, False, False)}; "
                        f"got {value!r}.")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"`{name}` must be an int in {_interval(low, high, False, False)}; "
                         f"got {value!r}.")
    return int(value)


def check_float(name: str, value: Any, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> float:
    """A finite real (numpy floats and ints accepted, bools refused) in the interval; NaN and
    infinities are refused whatever the bounds."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"`{name}` must be a float in "
                        f"{_interval(low, high, low_open, high_open)}; got {value!r}.")
    v = float(value)
    bad = not math.isfinite(v)
    if low is not None:
        bad |= v <= low if low_open else v < low
    if high is not None:
        bad |= v >= high if high_open else v > high
    if bad:
        raise ValueError(f"`{name}` must be a float in "
                         f"{_interval(low, high, low_open, high_open)}; got {value!r}.")
    return v


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"`{name}` must be one of {allowed}; got {value!r}.")
    return value


def check_sigmas(name: str, values: Iterable[Any]) -> list[float]:
    """A non-empty, strictly increasing sequence of non-negative finite floats."""
    if isinstance(values, (str, bytes)):  # iterable, but "0.5" is not a grid of noise scales
        raise TypeError(f"`{name}` must be a sequence of floats >= 0; got {values!r}.")
    try:
        vals = [float(v) for v in values]
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a sequence of floats >= 0; got {values!r}.") from None
    if not vals:
        raise ValueError(f"`{name}` must be a non-empty sequence of floats >= 0; got {values!r}.")
    if any(not math.isfinite(v) or v < 0 for v in vals):
        raise ValueError(f"`{name}` must hold finite floats >= 0; got {vals!r}.")
    if any(b <= a for a, b in zip(vals, vals[1:])):
        raise ValueError(f"`{name}` must be strictly increasing; got {vals!r}.")
    return vals


def check_images(name: str, x: Any) -> None:
    """A float tensor of shape (N, C, H, W) with finite values in [0, 1] (NaN fails: `nan < 0` is
    false, so a range check alone would let it through)."""
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape (N, C, H, W); "
                        f"got {type(x).__name__}.")
    if x.ndim != 4:
        raise ValueError(f"`{name}` must have shape (N, C, H, W); got shape {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor in [0, 1]; got dtype {x.dtype}.")
    if not x.numel():
        return
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"`{name}` must hold finite values in [0, 1]; got {bad} NaN or infinite "
                         f"value{'s' if bad != 1 else ''}.")
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > 1:
        raise ValueError(f"`{name}` must hold values in [0, 1]; got range [{lo:.3g}, {hi:.3g}].")


SEED_MAX = 2**63 - 2  # seeds feed torch generators (int64), and derived streams use seed + 1


def check_seed(name: str, seed: Any, generator: bool = True):
    """An int in [0, SEED_MAX] (numpy integers accepted) or, where `generator`, a torch.Generator.

    Returns the seed as a Python int (or the generator)."""
    import torch

    allowed = f"an int in [0, {SEED_MAX}]" + (" or a torch.Generator" if generator else "")
    if generator and isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise TypeError(f"`{name}` must be {allowed}; got {seed!r}.")
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"`{name}` must be {allowed}; got {seed!r}.")
    return int(seed)


def available_devices() -> list[str]:
    """Device names torch can use on this machine: "cpu", "cuda:0", ..., "mps"."""
    import torch

    out = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def check_device(name: str, device: Any):
    """A torch.device that exists on this machine (a str such as "cpu", "cuda", "cuda:1", or a
    torch.device), named with what is available when it does not."""
    import torch

    avail = available_devices()
    if isinstance(device, bool) or not isinstance(device, (str, torch.device)):
        raise TypeError(f"`{name}` must be a str or torch.device, one of {', '.join(avail)}; "
                        f"got {device!r}.")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"`{name}` must be a device of this machine, one of {', '.join(avail)}; "
                         f"got {device!r}.") from None
    ok = (dev.type == "cpu"
          or (dev.type == "cuda" and torch.cuda.is_available()
              and (dev.index is None or dev.index < torch.cuda.device_count()))
          or (dev.type == "mps" and "mps" in avail))
    if not ok:
        raise ValueError(f"`{name}` must be a device of this machine, one of {', '.join(avail)}; "
                         f"got {device!r}.")
    return dev


def check_labels(name: str, y: Any, n: int) -> None:
    """An integer label tensor of shape (n,), n >= 1: one label per image."""
    import torch

    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() \
            or y.dtype == torch.bool:
        raise TypeError(f"`{name}` must be an integer torch.Tensor of labels; got "
                        f"{getattr(y, 'dtype', type(y).__name__)}.")
    if tuple(y.shape) != (n,):
        raise ValueError(f"`{name}` must have shape ({n},), one label per image; got "
                         f"{tuple(y.shape)}.")
    if n == 0:
        raise ValueError(f"`{name}` must hold at least one label; got none.")
    if int(y.min()) < 0:
        raise ValueError(f"`{name}` must hold class indices >= 0; got {int(y.min())}.")


def check_forwards(total: int, detail: str) -> None:
    """Refuse, before any work, a call whose W_σ estimates would each run more noisy forward
    passes than MAX_FORWARDS (each estimate would refuse it, but only when its turn comes,
    after the work before it). `detail`: how `total` was counted."""
    if total > MAX_FORWARDS:
        raise ValueError(f"`n_samples` asks for up to {total:.3g} noisy forward passes per estimate "
                         f"({detail}): the work must stay within {MAX_FORWARDS:.3g} (see "
                         "estimate_smoothness's `max_forwards`). Use fewer.")
