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
    BPP           colour-depth reduction with Floyd–Steinberg dithering (Wang et al. 2022)
    FTrojan       fixed perturbation of chosen block-DCT coefficients (Wang et al. 2022)
    AdaptiveBlend a blend pattern in pieces, a random subset per poisoned image, plus
                  conservatism (Qi et al. 2023)
    LowFrequency  a crafted, low-pass universal adversarial perturbation (Zeng et al. 2021);
                  made by `workbench.crafting.craft_low_frequency`
    TrojanNN      a crafted mask-shaped pattern that excites chosen neurons (Liu et al. 2018);
                  made by `workbench.crafting.craft_trojannn`

Poisoning contract (for `workbench.poison`): every trigger has `poison_apply(images, seed)`, what
a poisoned *training* image gets (the trigger itself, except AdaptiveBlend's random pieces), and
`conservatism`, the share of triggered training images that keep their true label (0 except for
AdaptiveBlend). Calling the trigger is what a *test* input gets.
"""

from __future__ import annotations

import hashlib
import math
from numbers import Integral, Real
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..base._validate import check_choice, check_float, check_images, check_int, check_seed

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


def _check_image_shape(image_shape: Any) -> tuple[int, int, int]:
    allowed = "a (C, H, W) triple of ints >= 1"
    if not isinstance(image_shape, (tuple, list, torch.Size)) or not all(
            isinstance(v, Integral) and not isinstance(v, bool) for v in image_shape):
        raise TypeError(f"`image_shape` must be {allowed}; got {image_shape!r}.")
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"`image_shape` must be {allowed}; got {tuple(image_shape)!r}.")
    return tuple(int(v) for v in image_shape)  # type: ignore[return-value]


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
    # share of the triggered training images that keep their true label (AdaptiveBlend's
    # "conservatism"); 0 for every other trigger: all of them are relabelled
    conservatism: float = 0.0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        check_images("images", images)
        return self._apply(images)

    def poison_apply(self, images: torch.Tensor, seed: int | torch.Generator = 0) -> torch.Tensor:
        """The trigger as a poisoned *training* image gets it. The same as calling the trigger
        (what test inputs get) except for triggers whose training form is random per image
        (AdaptiveBlend), which draw from `seed` (an int or a CPU torch.Generator): the result is
        a function of the seed and of the images in their order."""
        check_images("images", images)
        check_seed("seed", seed)
        return self._apply(images)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def resolve(self, image_shape) -> "Trigger":
        """This trigger with every default that depends on the image size resolved for images of
        `image_shape` (C, H, W): the trigger that is applied to such images, as a trigger whose
        `to_config()` names what is applied (a run's cache key must). Triggers without such a
        default return themselves; the caller's trigger is never changed (FTrojan with
        `magnitude=None` returns a new FTrojan with its magnitude for that size)."""
        _check_image_shape(image_shape)
        return self

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


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool (True or False); got {value!r}.")
    return value


def floyd_steinberg(images: torch.Tensor, levels: int) -> torch.Tensor:
    """Quantise each channel of `images` (N, C, H, W) in [0, 1] to `levels` + 1 evenly spaced
    values 0, 1/levels, ..., 1 with Floyd–Steinberg error diffusion (Floyd & Steinberg 1976):
    pixels are visited row by row, left to right; each takes the nearest level (round half to
    even, clamped to [0, 1]) and passes its error on: 7/16 to the right, 3/16 below left, 5/16
    below, 1/16 below right. Computed in float64 and returned as float64 (the caller casts).

    The rows' sequential dependence stays; each pixel is processed for all images and channels at
    once, and the next row receives its errors as three vector additions made in the order a
    pixel-by-pixel implementation makes them (so the result equals it bit for bit).
    """
    n, c, h, w = images.shape
    buf = images.detach().to(torch.float64).reshape(n * c, h, w).clone()
    out = torch.empty_like(buf)
    err = torch.empty((n * c, w), dtype=torch.float64, device=buf.device)
    for r in range(h):
        row = buf[:, r]  # a view: the carried 7/16 lands in it
        for col in range(w):
            old = row[:, col]
            new = torch.round(old * levels).clamp_(0, levels) / levels
            e = old - new
            out[:, r, col] = new
            err[:, col] = e
            if col + 1 < w:
                row[:, col + 1] += e * 0.4375
        if r + 1 < h:
            nxt = buf[:, r + 1]
            nxt[:, 1:] += err[:, :-1] * 0.0625  # from the pixel above left (its 1/16)
            nxt += err * 0.3125  # from the pixel above (5/16)
            nxt[:, :-1] += err[:, 1:] * 0.1875  # from the pixel above right (3/16)
    return out.reshape(n, c, h, w)


class BPP(Trigger):
    """BppAttack (Wang, Zhai & Ma, CVPR 2022, "BppAttack: Stealthy and Efficient Trojan Attacks
    against Deep Neural Networks via Image Quantization and Contrastive Adversarial Learning"):
    the trigger is the image itself at a reduced colour depth, `bits` per channel (2**bits
    levels, the reference code's `squeeze_num`; its CIFAR-10 default 8 levels is bits=3), with
    Floyd–Steinberg dithering (`dither=False`: plain rounding to the nearest level).
    Deterministic: no randomness. The paper's training additionally uses adversarially perturbed
    "negative" samples (contrastive adversarial learning; BackdoorBench keeps them too, with
    `neg_ratio` 0.1 and no dithering by default); here the trigger is used as a plain data
    poisoning trigger like any other, without that step.
    """

    _params = ("bits", "dither")

    def __init__(self, bits: int = 3, dither: bool = True):
        self.bits = check_int("bits", bits, 1, 8)
        self.dither = _check_bool("dither", dither)

    def _apply(self, x):
        levels = 2 ** self.bits - 1
        if not self.dither:
            return (torch.round(x.to(torch.float64) * levels) / levels).to(x.dtype)
        return floyd_steinberg(x, levels).to(x.dtype)


def dct_matrix(n: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """The orthonormal DCT-II matrix D (n, n): coefficients c = D @ x (scipy's `norm="ortho"`,
    OpenCV's cv2.dct); D is orthogonal, so the inverse (DCT-III) is D.T @ c."""
    n = check_int("n", n, low=1)
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(device=device, dtype=dtype)


def _blocks_fit(h: int, w: int, block: int) -> None:
    if h % block or w % block:
        g = math.gcd(h, w)
        ok = [d for d in range(1, g + 1) if g % d == 0]
        raise ValueError(f"`block_size` must divide the image's height and width: {block} does "
                         f"not fit {h}x{w} images (the trigger does not fit the image); allowed "
                         f"here: {', '.join(map(str, ok))}.")


def block_dct(x: torch.Tensor, block: int) -> torch.Tensor:
    """2-D orthonormal DCT-II of each `block`×`block` tile of x (..., H, W), coefficients in
    place of their tile (block (a, b)'s coefficient (k, l) at row a·block + k, column
    b·block + l). H and W must be multiples of `block`."""
    *lead, h, w = x.shape
    _blocks_fit(h, w, block)
    d = dct_matrix(block, x.dtype, x.device)
    tiles = x.reshape(*lead, h // block, block, w // block, block)
    return torch.einsum("ki,...aibj,lj->...akbl", d, tiles, d).reshape(*lead, h, w)


def block_idct(c: torch.Tensor, block: int) -> torch.Tensor:
    """The inverse of `block_dct`."""
    *lead, h, w = c.shape
    _blocks_fit(h, w, block)
    d = dct_matrix(block, c.dtype, c.device)
    tiles = c.reshape(*lead, h // block, block, w // block, block)
    return torch.einsum("ki,...akbl,lj->...aibj", d, tiles, d).reshape(*lead, h, w)


# RGB -> YCbCr (ITU-R BT.601, full range as in JPEG and OpenCV's COLOR_RGB2YCrCb), on [0, 1]
_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
_YCBCR_OFFSET = (0.0, 0.5, 0.5)


def _to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(_YCBCR, dtype=x.dtype, device=x.device)
    off = torch.tensor(_YCBCR_OFFSET, dtype=x.dtype, device=x.device)[:, None, None]
    return torch.einsum("dc,nchw->ndhw", m, x) + off


def _from_ycbcr(y: torch.Tensor) -> torch.Tensor:
    m = torch.linalg.inv(torch.tensor(_YCBCR, dtype=torch.float64)).to(y.dtype).to(y.device)
    off = torch.tensor(_YCBCR_OFFSET, dtype=y.dtype, device=y.device)[:, None, None]
    return torch.einsum("cd,ndhw->nchw", m, y - off)


def _check_positions(positions: Any, block: int) -> tuple[tuple[int, int], ...]:
    allowed = (f"a non-empty sequence of distinct (row, col) pairs of ints in [0, {block - 1}] "
               f"(coefficients of a {block}x{block} block)")
    if isinstance(positions, (str, bytes)) or not isinstance(positions, (tuple, list)):
        raise TypeError(f"`positions` must be {allowed}; got {positions!r}.")
    out = []
    for p in positions:
        if (not isinstance(p, (tuple, list)) or len(p) != 2
                or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in p)):
            raise TypeError(f"`positions` must be {allowed}; got {positions!r}.")
        if not (0 <= p[0] < block and 0 <= p[1] < block):
            raise ValueError(f"`positions` must be {allowed}; got {tuple(p)!r}.")
        out.append((int(p[0]), int(p[1])))
    if not out or len(set(out)) != len(out):
        raise ValueError(f"`positions` must be {allowed}; got {positions!r}.")
    return tuple(out)


# FTrojan's default magnitude, by image size (see FTrojan; measured in benchmarks/RESULTS.md,
# "Attack atlas: triggers"): the paper's 30/255 from 28x28 on, 0.5 on smaller images
FTROJAN_PAPER_MAGNITUDE = 30 / 255
FTROJAN_SMALL_MAGNITUDE = 0.5
FTROJAN_SMALL_SIDE = 28  # images with a side below this get FTROJAN_SMALL_MAGNITUDE


def ftrojan_default_magnitude(h: int, w: int) -> float:
    """FTrojan's default `magnitude` for h×w images: 0.5 when a side is below 28 pixels (the
    workbench's 16×16 digits), else the paper's 30/255."""
    h, w = check_int("h", h, low=1), check_int("w", w, low=1)
    return FTROJAN_SMALL_MAGNITUDE if min(h, w) < FTROJAN_SMALL_SIDE else FTROJAN_PAPER_MAGNITUDE


class FTrojan(Trigger):
    """FTrojan (Wang et al., ECCV 2022, "An Invisible Black-Box Backdoor Attack Through Frequency
    Domain"): split each channel into `block_size`×`block_size` blocks, take each block's
    orthonormal DCT-II, add `magnitude` to the coefficients at `positions` (row, col) in every
    block, transform back and clip to [0, 1].

    On RGB images with `yuv=True` (the paper's setting) the change is made to the chroma channels
    (Cb, Cr of BT.601 YCbCr: the reference code's `channel_list = [1, 2]`) and converted back;
    grayscale images have one channel, which gets it (`yuv` then has no effect).

    Units: `magnitude` is a DCT coefficient on the [0, 1] pixel scale; the paper's 30 on 0–255
    images is 30/255 (its default, with a 32×32 window and coefficients (15, 15) and (31, 31), a
    mid and a high frequency). The defaults here scale that choice to 4×4 blocks, which fit the
    workbench's 16×16 digits and 28×28 Fashion-MNIST: (1, 1) and (3, 3), the highest. A smaller
    block spreads the same coefficient over fewer pixels, so the per-pixel change is larger: at
    most magnitude × (largest product of two basis values), 0.43 × magnitude for a 4×4 block's
    (3, 3) coefficient, 2/32 × magnitude in the paper's 32×32 window.

    `magnitude=None` (the default) is resolved from the size of the images it is applied to
    (`ftrojan_default_magnitude`): the paper's 30/255 on images of 28×28 and larger, 0.5 on
    smaller ones. Measured (benchmarks/RESULTS.md, "Attack atlas: triggers"): at 30/255 a
    small CNN on Fashion-MNIST (28×28, 60,000 images) learns the backdoor at a 1% rate (ASR
    0.97), but on the 16×16 digits (1,347 images) not up to a 20% rate (ASR 0.025 at 10%, 0.69
    at 20%), while 0.5, still a fixed frequency pattern (L∞ 0.25), is learnt at 2% (ASR 0.96). The
    rule is that measurement on the workbench's two small datasets, not a law: the paper itself
    tunes the magnitude per dataset. `resolve(image_shape)` gives the FTrojan with the magnitude
    written out, and training records that one (a cached run is the run of exactly that
    magnitude); an explicit `magnitude` is used as given at every size.

    Every step is linear before the final clip, so the trigger adds one fixed pattern to every
    image (then clips): `pattern(shape)` returns it.
    """

    _params = ("block_size", "positions", "magnitude", "yuv")

    def __init__(self, block_size: int = 4, positions: Sequence[tuple[int, int]] = ((1, 1), (3, 3)),
                 magnitude: float | None = None, yuv: bool = True):
        self.block_size = check_int("block_size", block_size, low=1)
        self.positions = _check_positions(positions, self.block_size)
        self.magnitude = (None if magnitude is None
                          else check_float("magnitude", magnitude, 0.0, 1.0, low_open=True))
        self.yuv = _check_bool("yuv", yuv)

    def to_config(self) -> dict:
        return {"type": "FTrojan", "block_size": self.block_size,
                "positions": [list(p) for p in self.positions], "magnitude": self.magnitude,
                "yuv": self.yuv}

    def __repr__(self) -> str:
        text = super().__repr__()
        if self.magnitude is None:
            text = text.replace(
                "magnitude=None", f"magnitude=None (by image size: {FTROJAN_SMALL_MAGNITUDE:g} "
                f"below {FTROJAN_SMALL_SIDE}x{FTROJAN_SMALL_SIDE}, 30/255 from "
                f"{FTROJAN_SMALL_SIDE}x{FTROJAN_SMALL_SIDE})")
        return text

    def magnitude_for(self, h: int, w: int) -> float:
        """The magnitude applied to h×w images: `magnitude`, or its default for that size."""
        return self.magnitude if self.magnitude is not None else ftrojan_default_magnitude(h, w)

    def resolve(self, image_shape) -> "FTrojan":
        c, h, w = _check_image_shape(image_shape)
        if self.magnitude is not None:
            return self
        return FTrojan(self.block_size, self.positions, self.magnitude_for(h, w), self.yuv)

    def _perturb(self, z: torch.Tensor) -> torch.Tensor:
        """The DCT-domain change, on float64 images (N, C, H, W) (no clipping)."""
        b = self.block_size
        _blocks_fit(z.shape[2], z.shape[3], b)
        magnitude = self.magnitude_for(z.shape[2], z.shape[3])
        rgb = z.shape[1] == 3 and self.yuv
        if rgb:
            z = _to_ycbcr(z)
        chans = [1, 2] if rgb else list(range(z.shape[1]))
        coef = block_dct(z, b)
        for r, c in self.positions:
            coef[:, chans, r::b, c::b] += magnitude
        z = block_idct(coef, b)
        return _from_ycbcr(z) if rgb else z

    def pattern(self, shape, device=None) -> torch.Tensor:
        """The additive pattern (C, H, W), float64: trigger(x) = clip(x + pattern)."""
        c, h, w = shape
        return self._perturb(torch.zeros((1, c, h, w), dtype=torch.float64, device=device))[0]

    def _apply(self, x):
        return self._perturb(x.to(torch.float64)).clamp(0.0, 1.0).to(x.dtype)


class AdaptiveBlend(Trigger):
    """Adaptive-Blend (Qi, Xie, Li, Mahloujifar & Mittal, ICLR 2023, "Revisiting the Assumption of
    Latent Separability for Backdoor Defenses"): a blend trigger x' = x + a·m·(p − x) whose
    pattern p is cut into `pieces` (a √pieces × √pieces grid of near-equal tiles).

    Training (`poison_apply`): each poisoned image gets its own random subset of the pieces,
    leaving out round(mask_rate · pieces) of them (mask m), blended with weight `alpha`.
    Test (calling the trigger): the whole pattern, blended with weight `test_alpha`. The paper's
    reference code (backdoor-toolbox) uses alpha 0.15 for training and 0.2 at test time, 16
    pieces, mask rate 0.5, and equal poison and cover rates (conservatism 0.5): the defaults.

    Conservatism: a share `conservatism` of the triggered training images keep their true label
    (the paper's "regularization samples", its code's cover images); the others are relabelled to
    the target ("payload samples"). The poisoning code reads `trigger.conservatism`.

    pattern: uniform noise drawn once from `seed` (as Blend's; the paper blends a Hello Kitty
    image), or a user image `image` (C, H, W) or (H, W) in [0, 1], resized to the input's size.
    """

    _params = ("alpha", "test_alpha", "pieces", "mask_rate", "conservatism", "seed", "image")

    def __init__(self, alpha: float = 0.15, test_alpha: float = 0.2, pieces: int = 16,
                 mask_rate: float = 0.5, conservatism: float = 0.5, seed: int = 0,
                 image: torch.Tensor | None = None):
        self.alpha = check_float("alpha", alpha, 0.0, 1.0, low_open=True)
        self.test_alpha = check_float("test_alpha", test_alpha, 0.0, 1.0, low_open=True)
        self.pieces = check_int("pieces", pieces, low=1)
        grid = math.isqrt(self.pieces)
        if grid * grid != self.pieces:
            raise ValueError(f"`pieces` must be a perfect square (the pattern is cut into a "
                             f"square grid): 1, 4, 9, 16, 25, ...; got {pieces!r}.")
        self.mask_rate = check_float("mask_rate", mask_rate, 0.0, 1.0, high_open=True)
        if round(self.mask_rate * self.pieces) >= self.pieces:
            raise ValueError(f"`mask_rate` must leave at least one of the {self.pieces} pieces "
                             f"applied: round(mask_rate * pieces) < pieces; got {mask_rate!r}.")
        self.conservatism = check_float("conservatism", conservatism, 0.0, 1.0, high_open=True)
        self._blend = Blend(self.test_alpha, seed, image)  # validates seed and image
        self.seed = self._blend.seed
        self.image = self._blend.image

    @property
    def grid(self) -> int:
        """Pieces per side."""
        return math.isqrt(self.pieces)

    @property
    def masked_pieces(self) -> int:
        """Pieces left out of each poisoned training image."""
        return round(self.mask_rate * self.pieces)

    def to_config(self) -> dict:
        cfg = super().to_config()
        cfg["image"] = None if self.image is None else self.image.tolist()
        return cfg

    def __repr__(self) -> str:
        img = "" if self.image is None else f", image=<{'x'.join(map(str, self.image.shape))}>"
        return (f"AdaptiveBlend(alpha={self.alpha!r}, test_alpha={self.test_alpha!r}, "
                f"pieces={self.pieces!r}, mask_rate={self.mask_rate!r}, "
                f"conservatism={self.conservatism!r}, seed={self.seed!r}{img})")

    def pattern(self, shape, device=None, dtype=torch.float32) -> torch.Tensor:
        return self._blend.pattern(shape, device, dtype)

    def piece_map(self, h: int, w: int) -> torch.Tensor:
        """(H, W) int64: the piece each pixel belongs to, row-major over the grid."""
        g = self.grid
        if g > min(h, w):
            raise ValueError(f"`pieces` must fit the image: a {g}x{g} grid of pieces needs images "
                             f"of at least {g}x{g} pixels (the trigger does not fit the image); "
                             f"got {h}x{w}.")
        rows = torch.arange(h) * g // h
        cols = torch.arange(w) * g // w
        return rows[:, None] * g + cols[None, :]

    def piece_masks(self, n: int, h: int, w: int, seed: int | torch.Generator = 0) -> torch.Tensor:
        """(n, H, W) float masks of n poisoned training images, 1 on the pieces applied: each
        leaves out `masked_pieces` pieces, a uniformly random subset drawn from `seed`."""
        check_int("n", n, low=0)
        pmap = self.piece_map(h, w)
        g = _cpu_generator(seed)
        scores = torch.rand((n, self.pieces), generator=g)
        keep = torch.ones((n, self.pieces))
        keep.scatter_(1, scores.argsort(dim=1)[:, :self.masked_pieces], 0.0)
        return keep[:, pmap]

    def _apply(self, x):
        self.piece_map(x.shape[2], x.shape[3])  # the same fit at test time as in training
        p = self.pattern(x.shape[1:], x.device, x.dtype)
        return (x + self.test_alpha * (p - x)).clamp(0.0, 1.0)

    def poison_apply(self, images: torch.Tensor, seed: int | torch.Generator = 0) -> torch.Tensor:
        check_images("images", images)
        check_seed("seed", seed)
        n, c, h, w = images.shape
        m = self.piece_masks(n, h, w, seed).to(device=images.device, dtype=images.dtype)[:, None]
        p = self.pattern((c, h, w), images.device, images.dtype)
        return (images + self.alpha * m * (p - images)).clamp(0.0, 1.0)


def _cpu_generator(seed: int | torch.Generator) -> torch.Generator:
    seed = check_seed("seed", seed)
    if isinstance(seed, torch.Generator):
        if seed.device.type != "cpu":
            raise ValueError(f"`seed` must be an int or a CPU torch.Generator (draws are made on "
                             f"the CPU so they are the same on every device); got a generator "
                             f"on {seed.device}.")
        return seed
    return torch.Generator().manual_seed(seed)


def _as_float_tensor(name: str, value: Any, shapes: str, low: float, high: float) -> torch.Tensor:
    t = _as_image_tensor(name, value, shapes).detach().cpu().clone()
    if not bool(torch.isfinite(t).all()) or (t.numel() and (t.min() < low or t.max() > high)):
        raise ValueError(f"`{name}` must hold finite values in [{low:g}, {high:g}].")
    return t


def _fit_size(kind: str, have: tuple[int, int], x: torch.Tensor) -> None:
    if tuple(x.shape[2:]) != tuple(have):
        raise ValueError(f"a {kind} trigger crafted for {have[0]}x{have[1]} images does not fit "
                         f"{x.shape[2]}x{x.shape[3]} images (the trigger does not fit the image); "
                         "craft one for this data.")


def _fit_channels(kind: str, name: str, have: int, c: int) -> None:
    if have not in (1, c):
        raise ValueError(f"a {kind} trigger's `{name}` has {have} channels and does not fit "
                         f"{c}-channel images (the trigger does not fit the image).")


class LowFrequency(Trigger):
    """Low-frequency trigger (Zeng, Park, Mao & Jia, ICCV 2021, "Rethinking the Backdoor Attacks'
    Triggers: A Frequency Perspective", its "smooth trigger"): x' = clip(x + v) with v a fixed
    perturbation (C, H, W) (values in [-1, 1]; one channel is added to every channel).

    v is crafted on a clean model as a targeted universal adversarial perturbation kept in the low
    frequencies by a Gaussian low-pass filter: `workbench.crafting.craft_low_frequency` returns
    this trigger. The perturbation is stored in `to_config`, so runs using it are cached by its
    content.
    """

    _params = ("perturbation",)

    def __init__(self, perturbation):
        v = _as_float_tensor("perturbation", perturbation, "(C, H, W)", -1.0, 1.0)
        if v.ndim != 3 or not v.numel():
            raise ValueError(f"`perturbation` must have shape (C, H, W); got {tuple(v.shape)}.")
        self.perturbation = v

    def to_config(self) -> dict:
        return {"type": "LowFrequency", "perturbation": self.perturbation.tolist()}

    def __repr__(self) -> str:
        c, h, w = self.perturbation.shape
        return (f"LowFrequency(perturbation=<{c}x{h}x{w}, max |v| "
                f"{float(self.perturbation.abs().max()):.3g}>)")

    def _apply(self, x):
        _fit_size("LowFrequency", tuple(self.perturbation.shape[1:]), x)
        _fit_channels("LowFrequency", "perturbation", self.perturbation.shape[0], x.shape[1])
        return (x + self.perturbation.to(device=x.device, dtype=x.dtype)).clamp(0.0, 1.0)


class TrojanNN(_MaskTrigger):
    """TrojanNN trigger (Liu, Ma, Aafer, Lee, Zhai, Wang & Zhang, NDSS 2018, "Trojaning Attack on
    Neural Networks"): a pattern stamped where `mask` is set, x' = (1 − m)·x + m·p, its content
    optimised so that it drives chosen internal neurons of a clean model to a high target value.

    mask: (H, W) values in [0, 1] (1 = trigger pixel; a square, or any shape such as a logo),
    not all zero. pattern: (C, H, W) in [0, 1] (one channel is used for every channel).
    `workbench.crafting.craft_trojannn` crafts it; both tensors are stored in `to_config`, so
    runs using it are cached by content.
    """

    _params = ("mask", "pattern")

    def __init__(self, mask, pattern):
        m = _as_float_tensor("mask", mask, "(H, W)", 0.0, 1.0)
        if m.ndim != 2 or not m.numel():
            raise ValueError(f"`mask` must have shape (H, W); got {tuple(m.shape)}.")
        if not bool((m > 0).any()):
            raise ValueError("`mask` must select at least one pixel; got an all-zero mask.")
        p = _as_float_tensor("pattern", pattern, "(C, H, W)", 0.0, 1.0)
        if p.ndim != 3 or tuple(p.shape[1:]) != tuple(m.shape):
            raise ValueError(f"`pattern` must have shape (C, H, W) with (H, W) the mask's "
                             f"{tuple(m.shape)}; got {tuple(p.shape)}.")
        self.mask, self.pattern = m, p

    def to_config(self) -> dict:
        return {"type": "TrojanNN", "mask": self.mask.tolist(), "pattern": self.pattern.tolist()}

    def __repr__(self) -> str:
        h, w = self.mask.shape
        return (f"TrojanNN(mask=<{h}x{w}, {int((self.mask > 0).sum())} px>, "
                f"pattern=<{'x'.join(map(str, self.pattern.shape))}>)")

    def mask_and_pattern(self, shape, device, dtype):
        c, h, w = shape
        if (h, w) != tuple(self.mask.shape):
            raise ValueError(f"a TrojanNN trigger crafted for {self.mask.shape[0]}x"
                             f"{self.mask.shape[1]} images does not fit {h}x{w} images (the "
                             "trigger does not fit the image); craft one for this data.")
        _fit_channels("TrojanNN", "pattern", self.pattern.shape[0], c)
        m = self.mask.to(device=device, dtype=dtype)[None]
        p = self.pattern.to(device=device, dtype=dtype).expand(c, h, w)
        return m, p


# --- triggers that are not workbench triggers: a user's function, or triggered images ---------

class FunctionTrigger(Trigger):
    """A trigger from any function on image batches: fn((N, C, H, W) in [0, 1]) must return a
    tensor of the same shape with finite values in [0, 1] (checked on every call). The function
    gets a copy of the images, so it may change them in place."""

    def __init__(self, fn: Callable, name: str | None = None):
        if not callable(fn) or isinstance(fn, (torch.Tensor, np.ndarray, Trigger)):
            raise TypeError(f"`fn` must be a function on (N, C, H, W) image batches; got "
                            f"{type(fn).__name__}.")
        self.fn = fn
        self.name = name if name is not None else getattr(fn, "__qualname__", type(fn).__name__)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fn(x.clone())
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"The trigger function {self.name} must return a torch.Tensor; got "
                            f"{type(out).__name__}.")
        if tuple(out.shape) != tuple(x.shape):
            raise ValueError(f"The trigger function {self.name} must return images of the shape it "
                             f"is given, {tuple(x.shape)}; got {tuple(out.shape)}.")
        check_images(f"the output of trigger function {self.name}", out)
        return out.to(device=x.device, dtype=x.dtype)

    def to_config(self) -> dict:
        return {"type": "FunctionTrigger", "function": self.name}

    def __repr__(self) -> str:
        return f"FunctionTrigger({self.name})"

    # its identity is its function, which its config only names: equal only to itself
    __eq__ = object.__eq__
    __hash__ = object.__hash__


def _row_digest(row: np.ndarray) -> bytes:
    return hashlib.blake2b(row.tobytes(), digest_size=16).digest()


class PairedTrigger(Trigger):
    """Triggered images given as images: `triggered[i]` is `clean[i]` with the trigger. Applied
    to a batch, it returns the twin of each image, found by its exact pixel values (float32);
    an image that is not among `clean` is refused (the trigger is known on these images only)."""

    def __init__(self, clean: torch.Tensor, triggered: torch.Tensor, source: str = "paired images"):
        check_images("clean", clean)
        check_images("triggered", triggered)
        if tuple(clean.shape) != tuple(triggered.shape) or not len(clean):
            raise ValueError(f"`triggered` must hold one image per clean image, of its shape "
                             f"{tuple(clean.shape)}; got {tuple(triggered.shape)}.")
        # only the clean images' digests are kept (BLAKE2b, 128 bits), not the images
        self.n = len(clean)
        self.triggered = triggered.detach().cpu().float().contiguous()
        self.source = source
        self._index: dict[bytes, int] = {}
        for i, row in enumerate(clean.detach().cpu().float().contiguous().numpy()):
            self._index.setdefault(_row_digest(row), i)  # an exact duplicate keeps its first twin

    def index_of(self, images: torch.Tensor) -> torch.Tensor:
        """(N,) the index into `clean` of each image, −1 where it is not there."""
        rows = images.detach().cpu().float().contiguous().numpy()
        return torch.tensor([self._index.get(_row_digest(r), -1) for r in rows], dtype=torch.int64)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        idx = self.index_of(x)
        missing = int((idx < 0).sum())
        if missing:
            first = int(torch.nonzero(idx < 0)[0])
            raise ValueError(f"This trigger is {self.n} triggered images given as images "
                             f"({self.source}): it can trigger only their clean twins; {missing} of "
                             f"the {len(x)} images given are not among them (the first at row "
                             f"{first}).")
        return self.triggered[idx].to(device=x.device, dtype=x.dtype)

    def to_config(self) -> dict:
        return {"type": "PairedTrigger", "n": self.n, "source": self.source}

    def __repr__(self) -> str:
        return f"PairedTrigger({self.n} images, {self.source})"

    # its identity is its images, which its config does not hold: equal only to itself
    __eq__ = object.__eq__
    __hash__ = object.__hash__


def as_trigger(trigger, name: str = "trigger") -> Trigger:
    """`trigger` as a Trigger: a workbench Trigger as it is, any other callable on (N, C, H, W)
    batches as a FunctionTrigger (its output checked on every call)."""
    if isinstance(trigger, Trigger):
        return trigger
    if callable(trigger) and not isinstance(trigger, (torch.Tensor, np.ndarray, type)):
        return FunctionTrigger(trigger)
    raise TypeError(f"`{name}` must be a workbench.triggers.Trigger (e.g. Patch(size=3)) or a "
                    f"function on (N, C, H, W) image batches in [0, 1]; got "
                    f"{type(trigger).__name__}.")


# triggers that exist only as the output of a crafting function (workbench.crafting): they have
# no default construction, so sweeps and widgets craft them (crafting.craft) instead
CRAFTED = ("LowFrequency", "TrojanNN")
# configuration entries that hold tensors (as nested lists), passed to the constructor as they are
_TENSOR_PARAMS = ("image", "pattern", "perturbation", "mask", "positions")


TRIGGERS = {cls.__name__: cls for cls in (Patch, Checkerboard, Pixel, Blend, Sinusoid, Warp,
                                          PatternPatch, BPP, FTrojan, AdaptiveBlend, LowFrequency,
                                          TrojanNN)}


# trigger kinds defined above this layer (InputAware trains its generator with the classifier:
# workbench.input_aware), registered by their module when it is imported (the package's
# __init__ imports them all): name -> (class, from_config)
REGISTERED: dict[str, tuple[type, Callable[[dict], Trigger]]] = {}


def register_trigger(cls: type, from_config: Callable[[dict], Trigger]) -> None:
    """Let `trigger_from_config` rebuild `cls` (a Trigger subclass defined in a higher layer)
    with `from_config`, and `triggers.<name>` find it."""
    if not (isinstance(cls, type) and issubclass(cls, Trigger)):
        raise TypeError(f"`cls` must be a Trigger subclass; got {cls!r}.")
    if cls.__name__ in TRIGGERS:
        raise ValueError(f"`cls` must not shadow a built-in trigger; got {cls.__name__!r}.")
    REGISTERED[cls.__name__] = (cls, from_config)


def trigger_from_config(config: dict) -> Trigger:
    """Rebuild a trigger from `Trigger.to_config()`."""
    if not isinstance(config, dict) or "type" not in config:
        raise TypeError(f"`config` must be a dict with a 'type' key; got {config!r}.")
    if config["type"] in REGISTERED:  # e.g. InputAware: trained generators, stored by digest
        return REGISTERED[config["type"]][1](config)
    kind = check_choice("config['type']", config["type"], tuple(TRIGGERS) + tuple(REGISTERED))
    unknown = [k for k in config if k != "type" and k not in TRIGGERS[kind]._params]
    if unknown:
        raise ValueError(f"`config` must hold only the parameters of {kind} "
                         f"({', '.join(TRIGGERS[kind]._params)}); got {', '.join(map(repr, unknown))}.")
    import inspect

    required = [name for name, p in inspect.signature(TRIGGERS[kind]).parameters.items()
                if p.default is inspect.Parameter.empty and name not in config]
    if required:
        how = (" (a crafted trigger: make it with workbench.crafting.craft("
               f"{kind!r}, data, ...))" if kind in CRAFTED else "")
        raise ValueError(f"`config` for {kind} must hold {', '.join(map(repr, required))}{how}; "
                         f"got {', '.join(map(repr, config))}.")
    kwargs = {k: (tuple(v) if isinstance(v, list) and k not in _TENSOR_PARAMS else v)
              for k, v in config.items() if k != "type"}
    if kind in ("Blend", "AdaptiveBlend") and kwargs.get("image") is not None:
        kwargs["image"] = torch.tensor(kwargs["image"], dtype=torch.float32)
    return TRIGGERS[kind](**kwargs)


def __getattr__(name: str):
    """`triggers.InputAware` and other registered kinds (`register_trigger`): they live in the
    layer that defines them (workbench.input_aware)."""
    if name in REGISTERED:
        return REGISTERED[name][0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
