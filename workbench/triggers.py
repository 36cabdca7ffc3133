"""Backdoor triggers, shaped like torchvision v2 transforms.

A trigger validates its parameters in `__init__`, draws any randomness from its own `seed`, applies
itself deterministically to a (N, C, H, W) float tensor in [0, 1] (same shape, device and dtype
out) and has a readable `repr`. `to_config()` / `trigger_from_config()` round-trip through JSON,
which is how runs record and cache their trigger.

    Patch         solid square (BadNets, Gu et al. 2017)
    Checkerboard  black/white checkerboard square
    Pixel         a single pixel
    Blend         a fixed random-noise pattern or a user image mixed in with weight alpha
                  (Chen et al. 2017)
    Sinusoid      horizontal sinusoidal signal added to the whole image (SIG, Barni et al. 2019)
    Warp          a smooth, fixed warping field (WaNet, Nguyen & Tran 2021)
    PatternPatch  a square of arbitrary content (crafted or random artificial patterns)
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ._validate import check_choice, check_float, check_images, check_int, check_seed

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right", "center")


def _check_position(position: Any) -> str | tuple[int, int]:
    if isinstance(position, str):
        check_choice("position", position, CORNERS)
        return position
    allowed = f"one of {', '.join(map(repr, CORNERS))} or a (row, col) pair of ints >= 0"
    if not isinstance(position, (tuple, list)) or not all(
            isinstance(p, Integral) and not isinstance(p, bool) for p in position):
        raise TypeError(f"`position` must be {allowed}; got {position!r}.")
    if len(position) != 2 or min(position) < 0:
        raise ValueError(f"`position` must be {allowed}; got {position!r}.")
    return (int(position[0]), int(position[1]))


def _as_image_tensor(name: str, value: Any, shapes: str) -> torch.Tensor:
    """A float32 tensor from a tensor, an array or nested lists of numbers."""
    if value is None or isinstance(value, (str, bytes)):
        raise TypeError(f"`{name}` must be a tensor of shape {shapes} with values in [0, 1]; got "
                        f"{value!r}.")
    try:
        return torch.as_tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"`{name}` must be a tensor of shape {shapes} with values in [0, 1]; got "
                        f"{type(value).__name__}.") from None


def _check_value(value: Any) -> float | tuple[float, ...]:
    if isinstance(value, Real) and not isinstance(value, bool):
        return check_float("value", value, 0.0, 1.0)
    if isinstance(value, (tuple, list)) and value:
        return tuple(check_float("value", v, 0.0, 1.0) for v in value)
    raise TypeError(f"`value` must be a float in [0, 1] or a tuple of them (one per channel); "
                    f"got {value!r}.")


def _top_left(position, size: int, h: int, w: int, margin: int) -> tuple[int, int]:
    if size + margin > min(h, w) and isinstance(position, str):
        raise ValueError(f"`size` must fit the image with its `margin`: size + margin <= "
                         f"{min(h, w)}; got size={size}, margin={margin}.")
    if isinstance(position, tuple):
        r, c = position
        if r + size > h or c + size > w:
            raise ValueError(f"`position` must keep the trigger inside the {h}x{w} image; "
                             f"got {position} with size {size}.")
        return r, c
    return {
        "top-left": (margin, margin),
        "top-right": (margin, w - size - margin),
        "bottom-left": (h - size - margin, margin),
        "bottom-right": (h - size - margin, w - size - margin),
        "center": ((h - size) // 2, (w - size) // 2),
    }[position]


def _channel_values(value, c: int, device, dtype) -> torch.Tensor:
    if isinstance(value, tuple):
        if len(value) not in (1, c):
            raise ValueError(f"`value` must have 1 or {c} entries for {c}-channel images; "
                             f"got {len(value)}.")
        v = torch.tensor(value, device=device, dtype=dtype)
        return v.expand(c) if len(value) == 1 else v
    return torch.full((c,), float(value), device=device, dtype=dtype)


class Trigger:
    """Base class: subclasses implement `_apply(x)` on a validated (N, C, H, W) tensor."""

    _params: tuple[str, ...] = ()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        check_images("images", images)
        return self._apply(images)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_config(self) -> dict:
        cfg = {"type": type(self).__name__}
        for p in self._params:
            v = getattr(self, p)
            cfg[p] = list(v) if isinstance(v, tuple) else v
        return cfg

    def __repr__(self) -> str:
        args = ", ".join(f"{p}={getattr(self, p)!r}" for p in self._params
                         if not (p == "image" and getattr(self, p) is None))
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.to_config() == other.to_config()

    def __hash__(self) -> int:
        return hash(repr(self))


class _MaskTrigger(Trigger):
    """A trigger that stamps `pattern` where `mask` is set: x' = (1 - m)·x + m·p."""

    def mask_and_pattern(self, shape, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError  # pragma: no cover

    def _apply(self, x):
        m, p = self.mask_and_pattern(x.shape[1:], x.device, x.dtype)  # (1|C, H, W), (C, H, W)
        return x * (1 - m) + m * p


class Patch(_MaskTrigger):
    """A solid `size`×`size` square of colour `value` at `position` (BadNets)."""

    _params = ("size", "position", "value", "margin")

    def __init__(self, size: int = 3, position: str | tuple[int, int] = "bottom-right",
                 value: float | Sequence[float] = 1.0, margin: int = 1):
        self.size = check_int("size", size, low=1)
        self.position = _check_position(position)
        self.value = _check_value(value)
        self.margin = check_int("margin", margin, low=0)

    def _square(self, shape, device, dtype):
        c, h, w = shape
        r0, c0 = _top_left(self.position, self.size, h, w, self.margin)
        m = torch.zeros((1, h, w), device=device, dtype=dtype)
        m[:, r0:r0 + self.size, c0:c0 + self.size] = 1
        return m, r0, c0

    def mask_and_pattern(self, shape, device, dtype):
        m, _, _ = self._square(shape, device, dtype)
        p = _channel_values(self.value, shape[0], device, dtype)[:, None, None].expand(shape)
        return m, p


class Checkerboard(Patch):
    """A `size`×`size` checkerboard alternating `value` and `1 - value`, top-left cell = value."""

    def mask_and_pattern(self, shape, device, dtype):
        m, r0, c0 = self._square(shape, device, dtype)
        c, h, w = shape
        rows = torch.arange(h, device=device)[:, None] - r0
        cols = torch.arange(w, device=device)[None, :] - c0
        on = ((rows + cols) % 2 == 0).to(dtype)  # (H, W)
        v = _channel_values(self.value, c, device, dtype)[:, None, None]
        p = on * v + (1 - on) * (1 - v)  # (C, H, W)
        return m, p


class Pixel(Patch):
    """A single pixel of colour `value` at `position` (a 1×1 patch)."""

    _params = ("position", "value", "margin")

    def __init__(self, position: str | tuple[int, int] = "bottom-right",
                 value: float | Sequence[float] = 1.0, margin: int = 1):
        super().__init__(1, position, value, margin)


class PatternPatch(Patch):
    """A square patch with arbitrary content `pattern` (C, s, s) in [0, 1]: the form of crafted
    artificial patterns (universal adversarial patches) and of random-patch controls."""

    _params = ("pattern", "position", "margin")

    def __init__(self, pattern, position: str | tuple[int, int] = "bottom-right", margin: int = 1):
        pattern = _as_image_tensor("pattern", pattern, "(C, s, s)").detach().cpu()
        if pattern.ndim != 3 or pattern.shape[1] != pattern.shape[2]:
            raise ValueError(f"`pattern` must have shape (C, s, s); got {tuple(pattern.shape)}.")
        check_images("pattern", pattern[None])
        super().__init__(pattern.shape[1], position, 1.0, margin)
        self.pattern = pattern

    def to_config(self) -> dict:
        return {"type": "PatternPatch", "pattern": self.pattern.tolist(), "position":
                list(self.position) if isinstance(self.position, tuple) else self.position,
                "margin": self.margin}

    def __repr__(self) -> str:
        c, s, _ = self.pattern.shape
        return f"PatternPatch(pattern=<{c}x{s}x{s}>, position={self.position!r}, margin={self.margin})"

    def mask_and_pattern(self, shape, device, dtype):
        m, r0, c0 = self._square(shape, device, dtype)
        c = shape[0]
        pat = self.pattern.to(device=device, dtype=dtype)
        if pat.shape[0] != c:
            pat = pat.mean(0, keepdim=True).expand(c, -1, -1) if pat.shape[0] > 1 else pat.expand(c, -1, -1)
        p = torch.zeros(shape, device=device, dtype=dtype)
        p[:, r0:r0 + self.size, c0:c0 + self.size] = pat
        return m, p


class Blend(_MaskTrigger):
    """Mix the whole image with a fixed pattern: x' = (1 − alpha)·x + alpha·pattern.

    pattern: None for uniform random noise drawn once from `seed` at the image's shape, or a user
    image as a tensor (C, H, W) or (H, W) in [0, 1] (resized bilinearly to the input's size).
    """

    _params = ("alpha", "seed", "image")

    def __init__(self, alpha: float = 0.1, seed: int = 0, image: torch.Tensor | None = None):
        self.alpha = check_float("alpha", alpha, 0.0, 1.0, low_open=True)
        self.seed = check_seed("seed", seed, generator=False)
        if image is not None:
            image = _as_image_tensor("image", image, "(C, H, W) or (H, W)")
            if image.ndim == 2:
                image = image[None]
            if image.ndim != 3:
                raise ValueError(f"`image` must have shape (C, H, W) or (H, W); got "
                                 f"{tuple(image.shape)}.")
            check_images("image", image[None])
        self.image = image

    def to_config(self) -> dict:
        cfg = super().to_config()
        cfg["image"] = None if self.image is None else self.image.tolist()
        return cfg

    def __repr__(self) -> str:
        img = "" if self.image is None else f", image=<{'x'.join(map(str, self.image.shape))}>"
        return f"Blend(alpha={self.alpha!r}, seed={self.seed!r}{img})"

    def pattern(self, shape, device=None, dtype=torch.float32) -> torch.Tensor:
        c, h, w = shape
        if self.image is None:
            g = torch.Generator().manual_seed(self.seed)  # CPU draw: identical on every device
            p = torch.rand((c, h, w), generator=g)
        else:
            p = self.image
            if p.shape[1:] != (h, w):
                p = F.interpolate(p[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            if p.shape[0] != c:
                p = p.mean(0, keepdim=True).expand(c, h, w) if c in (1, 3) else p[:1].expand(c, h, w)
        return p.to(device=device, dtype=dtype)

    def mask_and_pattern(self, shape, device, dtype):
        m = torch.full((1, 1, 1), self.alpha, device=device, dtype=dtype)
        return m, self.pattern(shape, device, dtype)


class Sinusoid(Trigger):
    """Add a horizontal sinusoid: x' = clip(x + delta·sin(2π·col·frequency / W)) (SIG)."""

    _params = ("delta", "frequency")

    def __init__(self, delta: float = 20 / 255, frequency: float = 6):
        self.delta = check_float("delta", delta, 0.0, 1.0, low_open=True)
        self.frequency = check_float("frequency", frequency, 0.0, None, low_open=True)

    def _apply(self, x):
        w = x.shape[-1]
        cols = torch.arange(w, device=x.device, dtype=x.dtype)
        signal = self.delta * torch.sin(2 * math.pi * cols * self.frequency / w)  # (W,)
        return (x + signal).clamp(0.0, 1.0)


class Warp(Trigger):
    """A fixed smooth warp (WaNet): a random k×k field, normalised, upsampled and scaled by
    `strength` (in pixels' units of the half image), applied with `grid_sample`."""

    _params = ("strength", "grid", "seed")

    def __init__(self, strength: float = 0.5, grid: int = 4, seed: int = 0):
        self.strength = check_float("strength", strength, 0.0, None, low_open=True)
        self.grid = check_int("grid", grid, low=2)
        self.seed = check_seed("seed", seed, generator=False)

    def flow(self, h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """The sampling grid (1, H, W, 2) in grid_sample's [-1, 1] coordinates."""
        g = torch.Generator().manual_seed(self.seed)
        field = torch.rand((1, 2, self.grid, self.grid), generator=g) * 2 - 1
        field = field / field.abs().mean()  # WaNet normalises the field by its mean magnitude
        field = F.interpolate(field, size=(h, w), mode="bicubic", align_corners=True)
        field = field.permute(0, 2, 3, 1)  # (1, H, W, 2)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        identity = torch.stack([xs, ys], dim=-1)[None]  # (1, H, W, 2), x first as grid_sample wants
        grid = identity + self.strength * field / torch.tensor([w, h]).to(field)
        return grid.clamp(-1, 1).to(device=device, dtype=dtype)

    def _apply(self, x):
        n, _, h, w = x.shape
        grid = self.flow(h, w, x.device, x.dtype).expand(n, h, w, 2)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                             align_corners=True).clamp(0.0, 1.0)


TRIGGERS = {cls.__name__: cls for cls in (Patch, Checkerboard, Pixel, Blend, Sinusoid, Warp,
                                          PatternPatch)}


def trigger_from_config(config: dict) -> Trigger:
    """Rebuild a trigger from `Trigger.to_config()`."""
    if not isinstance(config, dict) or "type" not in config:
        raise TypeError(f"`config` must be a dict with a 'type' key; got {config!r}.")
    kind = check_choice("config['type']", config["type"], tuple(TRIGGERS))
    unknown = [k for k in config if k != "type" and k not in TRIGGERS[kind]._params]
    if unknown:
        raise ValueError(f"`config` must hold only the parameters of {kind} "
                         f"({', '.join(TRIGGERS[kind]._params)}); got {', '.join(map(repr, unknown))}.")
    kwargs = {k: (tuple(v) if isinstance(v, list) and k not in ("image", "pattern") else v)
              for k, v in config.items() if k != "type"}
    if kind == "Blend" and kwargs.get("image") is not None:
        kwargs["image"] = torch.tensor(kwargs["image"], dtype=torch.float32)
    return TRIGGERS[kind](**kwargs)
