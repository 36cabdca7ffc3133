"""Input-Aware Dynamic Backdoor Attack (Nguyen & Tran, "Input-Aware Dynamic Backdoor Attack",
NeurIPS 2020; reference code github.com/VinAIResearch/input-aware-backdoor-attack-release).

A small generator network makes a different trigger for every image: a pattern p = G(x) and a mask
m = M(x), and the triggered image is x' = x + (p − x)·m. The classifier is trained jointly with
the pattern generator on three kinds of training samples:

    backdoor  x with its own trigger (G(x), M(x))               → label `target`
    cross     x with the trigger made for another image x2      → x's true label (the "noise"
              (G(x2), M(x2))                                       mode: a trigger only works on
                                                                   the image it was made for)
    clean     x unchanged                                       → x's true label

plus the paper's diversity loss on the generator, L_div = ‖x − x2‖ / ‖G(x) − G(x2)‖ (per-pixel
RMS distances, averaged over pairs), which keeps G from collapsing to one fixed pattern. As in the
paper, the mask generator M is trained first, alone, with the same diversity loss on masks and a
norm loss λ_norm·relu(area(m) − mask_density) that keeps masks sparse, and is then frozen. Masks
are M's output passed through the paper's steep threshold, tanh(20m − 10)/2 + 0.5.

    run = train_input_aware("digits", rate=0.2, cross_rate=0.2, target=0)
    run.trigger                                 # an InputAware, a Trigger like any other
    x_triggered = run.trigger(x)                # each image gets its own trigger
    x_cross = run.trigger.cross(x, others)      # the triggers made for `others`, stamped on x

Simplifications and changes, all deliberate (measured where it matters: benchmarks/RESULTS.md,
"Attack atlas: InputAware"):

* Generators: the paper's MNIST encoder–decoder (two 3x3 conv blocks per scale, two max-pool
  downsamplings, bilinear upsampling, tanh/2 + 0.5 output) at half its width (8 channels at the
  first scale instead of 16), with a per-image normalisation (GroupNorm with one group) in place
  of BatchNorm. With BatchNorm a generator in training mode makes batch-dependent patterns and,
  after a short training, its running statistics lag, so the triggers of training and test
  differ; with none at all (tried first) the pattern generator's tanh saturated, its output
  became one constant pattern for every image and the diversity loss went to 1e6. Per-image
  normalisation keeps the paper's role of the normalisation and a trigger depends on its own
  image only, in every mode. Upsampling goes back to the exact skip size, so any image of at
  least 4x4 works.
* The classifier is trained with the workbench's optimiser (Adam, the dataset's default lr, no
  augmentation) rather than the paper's SGD with random crops and rotations; the generators use
  the paper's Adam(lr=0.01, betas=(0.5, 0.9)). Schedules, scaled to a short training: the mask
  generator's lr x0.1 after 40% and 80% of `mask_epochs` (the paper: epochs 10 and 20 of 25);
  classifier and pattern generator x0.1 once, after 75% of `epochs` (the paper: four steps over
  600 epochs). The reference never zeroes the pattern generator's gradients (they accumulate over
  steps); here both are zeroed every step. The diversity loss takes the square root of the mean
  square plus 1e-14 (the derivative of sqrt at 0 is infinite: identical saturated masks gave NaN).
* The mask norm loss: the paper's λ_norm·mean(relu(m − mask_density)) over pixels is, for
  near-binary masks, a penalty on the mask's whole area (each pixel that is on costs 1 −
  density); the area is then set by the tug of war with the diversity loss alone, and on digits
  it came out anywhere from 0 to 13% of the image across seeds 0-3 (with 0.032 and 0.1). Here
  each mask's mean above `mask_density` is penalised, λ_norm·relu(mean(m) − mask_density), so
  masks grow to about that area or somewhat beyond (7-14% for 0.1 across seeds 0-3). Default `mask_density`: the
  paper's 0.032, or 25 pixels' worth (the paper's area on 28x28 MNIST) on smaller images: 0.098
  on 16x16 digits.
* Sample roles: the paper takes the first p_attack·B and p_cross·B images of every shuffled batch;
  here every epoch draws round(rate·N) backdoor images (among images not of the target class, as
  `poison_dataset` does) and round(cross_rate·N) cross images among the rest, so small rates are
  exact. Each backdoor or cross image has a partner (another training image, redrawn every epoch):
  the cross image takes its partner's trigger, and the diversity loss compares each image with its
  partner. `BackdoorRun.poison_indices` holds the last epoch's backdoor draw.
* Defaults: rate = cross_rate = 0.2 and 60 joint epochs on digits (the paper: 0.1 and 0.1 over 600
  epochs of MNIST; at 0.1 the attack had not converged in 60 epochs on digits' 1,347 images).
* Training runs on one CPU thread (restored after): see `_train`; so does applying the trigger to
  a batch of up to ONE_THREAD_MAX_PIXELS pixels (see `_few_threads`).

The trigger is a trained network, so its configuration (`to_config()`) names its weights by their
SHA-256 (of names, dtypes, shapes and bytes) rather than holding them: `InputAware.save()` stores
them, content-addressed, in `data_dir()/triggers/input-aware/<digest>/` (a run folder written by
`workbench.runstore`: atomic, checksummed), and `input_aware_from_config(config)` loads them back,
refusing a folder whose weights do not hash to the digest the configuration names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..base import runstore
from .._version import __version__
from ..base._validate import (check_choice, check_device, check_float, check_images, check_int,
                              check_labels, check_seed)
from ..base.data import Dataset, as_dataset, data_dir, load_dataset
from ..base.models import MODELS, build_model, default_device
from ..attacks.poison import make_generator
from .train import (DEFAULTS, BackdoorRun, attack_success_rate, check_cached, clean_accuracy,
                    environment, train_backdoor)
from ..attacks.triggers import Trigger, register_trigger

# Bump when the training code changes results, so old cached runs are not reused.
CACHE_FORMAT = 1
ATTACK = "InputAware"
_EPS = 1e-7  # the reference's EPSILON (diversity-loss denominator, tanh scaling)
MIN_IMAGE_SIZE = 4  # two 2x2 max-pool downsamplings must leave at least one pixel

# Settings of the attack with their defaults: the paper's (lambda_div = 1, lambda_norm = 100,
# mask_density = 0.032, generator lr 0.01) except where noted.
ATTACK_DEFAULTS = {"rate": 0.2, "cross_rate": 0.2,  # the paper: 0.1 and 0.1 (benchmarks/RESULTS.md:
                   # on digits in 60 epochs 0.1/0.1 reached ASR 0.73, cross accuracy 0.57)
                   "lr_generator": 1e-2, "lambda_div": 1.0, "lambda_norm": 100.0,
                   "mask_density": None,  # the paper: 0.032 (of 28x28 MNIST: 25 pixels); None:
                   # 0.032, or 25 pixels' worth on smaller images (0.098 of 16x16 digits)
                   "mask_epochs": 10,  # the paper: 25 (of a 600-epoch schedule)
                   "width": 8}  # the paper's MNIST generator: 16
# Joint epochs by dataset (measured on digits, benchmarks/RESULTS.md); elsewhere twice the
# dataset's clean-training epochs (workbench.train.DEFAULTS), not measured.
EPOCHS = {"digits": 60}


# --- the generator networks ---------------------------------------------------------------------

class _Block(nn.Sequential):
    """The paper's Conv2dBlock (3x3 conv, normalisation, ReLU) with a per-image normalisation
    (GroupNorm with one group: every image normalised over its channels and positions) in place
    of BatchNorm."""

    def __init__(self, c_in: int, c_out: int, relu: bool = True):
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(1, c_out),
                         *([nn.ReLU()] if relu else []))


class Generator(nn.Module):
    """The paper's MNIST generator (two scales), per-image normalisation instead of BatchNorm:
    x (N, C, H, W) in [0, 1] to (N, out_channels, H, W) in (0, 1)."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 8):
        super().__init__()
        w1, w2 = width, 2 * width
        self.down1 = nn.Sequential(_Block(in_channels, w1), _Block(w1, w1))
        self.down2 = nn.Sequential(_Block(w1, w2), _Block(w2, w2))
        self.middle = _Block(w2, w2)
        self.up2 = nn.Sequential(_Block(w2, w2), _Block(w2, w1))
        self.up1 = nn.Sequential(_Block(w1, w1), _Block(w1, out_channels, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1, s2 = x.shape[-2:], (x.shape[-2] // 2, x.shape[-1] // 2)
        h = F.max_pool2d(self.down1(x), 2)
        h = F.max_pool2d(self.down2(h), 2)
        h = self.middle(h)
        h = self.up2(F.interpolate(h, size=s2, mode="bilinear", align_corners=False))
        h = self.up1(F.interpolate(h, size=s1, mode="bilinear", align_corners=False))
        return torch.tanh(h) / (2 + _EPS) + 0.5


def _threshold(m: torch.Tensor) -> torch.Tensor:
    """The paper's near-binary mask: tanh(20m − 10)/2 + 0.5."""
    return torch.tanh(m * 20 - 10) / (2 + _EPS) + 0.5


class TriggerNets(nn.Module):
    """The pattern generator G (C channels out) and the mask generator M (1 channel out)."""

    def __init__(self, channels: int, width: int = 8):
        super().__init__()
        self.pattern = Generator(channels, channels, width)
        self.mask = Generator(channels, 1, width)

    def masks(self, x: torch.Tensor) -> torch.Tensor:
        return _threshold(self.mask(x))


def _stamp(x: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x + (pattern - x) * mask).clamp(0.0, 1.0)


def weights_digest(state: dict) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and bytes (independent of how torch
    serialises it): the identity of an InputAware trigger."""
    h = hashlib.sha256(b"workbench.InputAware weights v1\n")
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update((json.dumps({"name": name, "dtype": str(t.dtype), "shape": list(t.shape)})
                  + "\n").encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _check_shape(name: str, shape: Any) -> tuple[int, int, int]:
    allowed = f"a (C, H, W) triple of ints with C >= 1 and H, W >= {MIN_IMAGE_SIZE}"
    if not isinstance(shape, (tuple, list)) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise TypeError(f"`{name}` must be {allowed}; got {shape!r}.")
    if len(shape) != 3 or shape[0] < 1 or min(shape[1:]) < MIN_IMAGE_SIZE:
        raise ValueError(f"`{name}` must be {allowed}; got {tuple(shape)!r}.")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


# --- the trigger --------------------------------------------------------------------------------

# Batches of at most this many pixels (N·C·H·W: 64 digits, 20 Fashion-MNIST images) run the
# generators on one CPU thread: each of their ~20 small layers is a parallel region whose threads
# all wait for the slowest, and on a loaded machine a descheduled thread stalls every one of them
# (issue 22: 3 digits took 0.7 s on 2 threads, 1.3 ms on 1). benchmarks/input_aware_threads.py,
# 2 cores, median of 9 calls, 1 / 3 / 16 / 64 / 256 / 1,024 digits: at load 9 one thread was
# 28 / 2.4 / 2.1 / 2.1 / 3.8 / 4.4x faster; at load 1.2 it was 1.1 / 1.0 / 0.8 / 0.9 / 0.6 /
# 0.7x as fast. Up to 64 images a quiet machine loses at most a millisecond; larger batches keep
# torch's threads, which a quiet machine uses (as every other op of the workbench does).
ONE_THREAD_MAX_PIXELS = 64 * 16 * 16


@contextlib.contextmanager
def _few_threads(x: torch.Tensor):
    """One torch thread (restored after) while a small CPU batch goes through the generators.

    torch's thread count is process-wide: code on other Python threads that runs torch meanwhile
    runs on one thread too, for the ~1 ms this takes."""
    if x.device.type != "cpu" or x.numel() > ONE_THREAD_MAX_PIXELS or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class InputAware(Trigger):
    """A per-image trigger made by trained generators (Nguyen & Tran, NeurIPS 2020):
    x' = x + (G(x) − x)·M(x), clamped to [0, 1].

    Deterministic (a trigger depends on its own image only), same shape, dtype and device out as
    in; the generators are frozen copies (no gradient reaches them, the caller's tensors are never
    changed; gradients with respect to the input flow as through any other trigger). Images must
    have the shape the generators were trained on.

    state: the state dict of a `TriggerNets(channels, width)`; image_shape: (C, H, W) it was
    trained on. Usually made by `train_input_aware` or loaded by `input_aware_from_config`.
    """

    _params = ("weights_sha256", "image_shape", "width")

    def __init__(self, state: dict, image_shape, width: int = 8):
        self.image_shape = _check_shape("image_shape", image_shape)
        self.width = check_int("width", width, low=1, high=1024)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise TypeError("`state` must be a state dict (name -> tensor) of TriggerNets; got "
                            f"{type(state).__name__}.")
        nets = TriggerNets(self.image_shape[0], self.width)
        want = nets.state_dict()
        if set(state) != set(want) or any(state[k].shape != want[k].shape for k in want):
            raise ValueError(f"`state` must hold the weights of TriggerNets({self.image_shape[0]}, "
                             f"width={self.width}) (names and shapes); it does not.")
        if not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
            raise ValueError("`state` must hold finite weights; got NaN or infinite values.")
        nets.load_state_dict({k: v.detach().cpu().clone() for k, v in state.items()})
        nets.eval().requires_grad_(False)
        self._nets = {torch.device("cpu"): nets}
        self.weights_sha256 = weights_digest(nets.state_dict())

    # the trigger's identity is its weights: config and repr name their digest
    def to_config(self) -> dict:
        return {"type": ATTACK, "weights_sha256": self.weights_sha256,
                "image_shape": list(self.image_shape), "width": self.width}

    def __repr__(self) -> str:
        return (f"InputAware(weights_sha256={self.weights_sha256[:12]!r}…, "
                f"image_shape={self.image_shape}, width={self.width})")

    def state_dict(self) -> dict:
        """A copy of the generators' weights (CPU)."""
        return {k: v.clone() for k, v in self._nets[torch.device("cpu")].state_dict().items()}

    def _nets_on(self, device: torch.device) -> TriggerNets:
        if device not in self._nets:
            import copy

            self._nets[device] = copy.deepcopy(self._nets[torch.device("cpu")]).to(device)
        return self._nets[device]

    def _check(self, name: str, x: torch.Tensor) -> None:
        check_images(name, x)
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"`{name}` must have shape (N, {', '.join(map(str, self.image_shape))})"
                             f", the image shape the generators were trained on; got "
                             f"{tuple(x.shape)}.")

    def pattern_and_mask(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's pattern (N, C, H, W) and mask (N, 1, H, W), in [0, 1], as `images`' dtype
        and device."""
        self._check("images", images)
        nets = self._nets_on(images.device)
        x = images.float()
        with _few_threads(x):
            return nets.pattern(x).to(images.dtype), nets.masks(x).to(images.dtype)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self._check("images", images)
        return self._apply(images)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        with _few_threads(x):
            return self._stamp_own(x)

    def _stamp_own(self, x: torch.Tensor) -> torch.Tensor:
        """Each image with its own trigger, on the threads set now (benchmarks time this)."""
        nets = self._nets_on(x.device)
        xf = x.float()
        return _stamp(xf, nets.pattern(xf), nets.masks(xf)).to(x.dtype)

    def cross(self, images: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
        """`images` stamped with the triggers made for `others` (index-aligned, same shape): the
        paper's cross ("noise") samples, which a well-trained backdoor ignores."""
        self._check("images", images)
        self._check("others", others)
        if others.shape != images.shape:
            raise ValueError(f"`others` must have the shape of `images` {tuple(images.shape)}; "
                             f"got {tuple(others.shape)}.")
        nets = self._nets_on(images.device)
        o = others.to(images.device).float()
        with _few_threads(o):
            return _stamp(images.float(), nets.pattern(o), nets.masks(o)).to(images.dtype)

    # --- storage: content-addressed run folders -------------------------------------------------

    @property
    def store_path(self) -> Path:
        """Where `save()` puts the weights (under the workbench's data folder)."""
        return trigger_store() / self.weights_sha256[:32]

    def save(self) -> Path:
        """Store the weights (once: a folder already holding them is left alone) so that
        `input_aware_from_config(self.to_config())` finds them. Returns the folder."""
        path = self.store_path
        with runstore.locked(path):
            runstore.recover(path)
            try:
                if _load_store(path, self.to_config()).weights_sha256 == self.weights_sha256:
                    return path
            except (OSError, ValueError):
                pass  # missing or damaged: (re)write it
            meta = {"config": self.to_config(), "attack": ATTACK}
            runstore.write_run(path, self.state_dict(), meta, overwrite=True)
        return path


def trigger_store() -> Path:
    """The folder of stored InputAware generators: `data_dir()/triggers/input-aware`."""
    return data_dir() / "triggers" / "input-aware"


def _check_trigger_config(config: Any) -> tuple[str, tuple[int, int, int], int]:
    if not isinstance(config, dict) or config.get("type") != ATTACK:
        raise TypeError(f"`config` must be a dict from InputAware.to_config() (type {ATTACK!r}); "
                        f"got {config!r}"[:300] + ".")
    unknown = sorted(set(config) - {"type", *InputAware._params})
    missing = [k for k in InputAware._params if k not in config]
    if unknown or missing:
        raise ValueError(f"`config` must hold exactly type, {', '.join(InputAware._params)}; "
                         f"unknown: {unknown}, missing: {missing}.")
    sha = config["weights_sha256"]
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"`config['weights_sha256']` must be a SHA-256 hex digest; got {sha!r}.")
    return sha, _check_shape("config['image_shape']", config["image_shape"]), \
        check_int("config['width']", config["width"], low=1, high=1024)


def _load_store(path: Path, config: dict) -> InputAware:
    sha, shape, width = _check_trigger_config(config)
    meta, blob = runstore.read_run_files(path)
    stored = meta.get("config")
    if stored != config:
        raise runstore.RunFileError(f"{path / 'run.json'}: it holds the trigger {stored!r}"[:300]
                                    + f", not the one asked for ({sha[:12]}…).")
    state = runstore.load_state(path / "model.pt", blob, meta.get("weights_sha256") or "",
                                TriggerNets(shape[0], width))
    trig = InputAware(state, shape, width)
    if trig.weights_sha256 != sha:
        raise runstore.RunFileError(f"{path / 'model.pt'}: its weights hash to "
                                    f"{trig.weights_sha256[:12]}…, not {sha[:12]}… as recorded.")
    return trig


def input_aware_from_config(config: dict) -> InputAware:
    """The InputAware trigger of `config` (from `InputAware.to_config()`), loaded from the store.

    Raises FileNotFoundError when its weights were never saved here (`InputAware.save()`;
    `train_input_aware` saves them), `runstore.RunFileError` (a ValueError) when the stored files
    are damaged or their weights do not hash to the recorded digest."""
    sha, _, _ = _check_trigger_config(config)
    path = trigger_store() / sha[:32]
    if not path.exists():
        raise FileNotFoundError(f"The InputAware generator {sha[:12]}… is not stored in "
                                f"{trigger_store()}: train it with train_input_aware (cache=True) "
                                "or save the trigger with InputAware.save() (WORKBENCH_DATA must "
                                "point at the data folder it was saved in).")
    return _load_store(path, config)


# --- training -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class InputAwareConfig:
    """Everything that determines an InputAware run (its hash is the cache key)."""

    dataset: str
    rate: float  # fraction of the training set drawn as backdoor samples each epoch
    cross_rate: float  # fraction drawn as cross ("noise") samples each epoch
    target: int
    model: str
    epochs: int  # joint epochs of classifier and pattern generator
    batch_size: int
    lr: float  # classifier's Adam learning rate
    weight_decay: float  # classifier's Adam weight decay
    lr_generator: float  # generators' Adam learning rate (betas 0.5, 0.9)
    lambda_div: float  # weight of the diversity loss
    lambda_norm: float  # weight of the mask norm loss
    mask_density: float  # the mask norm loss's allowance: mask area free of penalty
    mask_epochs: int  # epochs of the mask generator before joint training
    width: int  # generators' channels at the first scale
    seed: int
    max_train: int | None = None
    data_fingerprint: str = ""
    max_test: int | None = None
    workbench: str = ""
    attack: str = ATTACK
    cache_format: int = CACHE_FORMAT

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return "input-aware-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(repr=False, eq=False)
class InputAwareRun(BackdoorRun):
    """A BackdoorRun whose `.trigger` is its trained InputAware trigger."""

    input_aware: InputAware | None = None

    @property
    def trigger(self) -> InputAware:  # type: ignore[override]
        return self.input_aware

    @property
    def cross_accuracy(self) -> float:
        """Accuracy on test images stamped with another test image's trigger (last epoch)."""
        return float(self.history[-1]["cross_accuracy"])

    def save(self, path, overwrite: bool = False) -> Path:
        """As BackdoorRun.save, and the trigger's weights go to the store (see InputAware.save):
        the run folder names them by their digest."""
        if not (isinstance(path, (str, os.PathLike)) and isinstance(overwrite, bool)
                and (overwrite or not Path(path).exists())):
            return super().save(path, overwrite)  # refuses, as BackdoorRun does, storing nothing
        self.input_aware.save()
        return super().save(path, overwrite)


def cross_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, trigger: InputAware,
                   seed: int = 0) -> float:
    """Fraction of `x` still labelled `y` after each image is stamped with the trigger made for
    another image of `x` (a seeded random partner, never itself): the paper's cross accuracy."""
    if not isinstance(trigger, InputAware):
        raise TypeError(f"`trigger` must be an InputAware; got {type(trigger).__name__}.")
    trigger._check("x", x)
    if len(x) < 2:
        raise ValueError(f"`x` must hold at least two images (each needs a partner); got {len(x)}.")
    check_labels("y", y, len(x))
    seed = check_seed("seed", seed, generator=False)
    g = torch.Generator().manual_seed(seed)
    partner = (torch.arange(len(x)) + torch.randint(1, len(x), (len(x),), generator=g)) % len(x)
    return clean_accuracy(model, trigger.cross(x, x[partner.to(x.device)]), y)


def _diversity(a: torch.Tensor, b: torch.Tensor, pa: torch.Tensor, pb: torch.Tensor) -> torch.Tensor:
    """The paper's diversity loss: mean over pairs of rms(a − b) / (rms(G(a) − G(b)) + eps)."""
    # sqrt(0) has an infinite derivative: identical outputs (saturated masks) would give NaN
    # gradients, so the square root is taken of the mean plus eps² (a change below 1e-7)
    d_in = ((a - b) ** 2).mean(dim=(1, 2, 3)).sqrt()
    d_out = (((pa - pb) ** 2).mean(dim=(1, 2, 3)) + _EPS ** 2).sqrt()
    return (d_in / (d_out + _EPS)).mean()


def _partners(n: int, g: torch.Generator) -> torch.Tensor:
    """For each of n images another one (uniform among the other n − 1)."""
    return (torch.arange(n) + torch.randint(1, n, (n,), generator=g)) % n


def prepare_input_aware_run(data, rate, cross_rate, target, model, epochs, seed, batch_size, lr,
                            weight_decay, lr_generator, lambda_div, lambda_norm, mask_density,
                            mask_epochs, width, max_train) -> tuple[Dataset, InputAwareConfig]:
    """Validate everything and build the configuration (before any work): `train_input_aware`'s
    arguments (None for a dataset default) -> (data, InputAwareConfig, whose `key()` names the run
    in the cache). A sweep's grid calls it to check its points before any run starts."""
    data = as_dataset(data)
    rate = check_float("rate", rate, 0.0, 1.0, low_open=True)
    cross_rate = check_float("cross_rate", cross_rate, 0.0, 1.0)
    target = check_int("target", target, 0, data.num_classes - 1)
    check_choice("model", model, MODELS)
    seed = check_seed("seed", seed, generator=False)
    d = DEFAULTS.get(data.name, DEFAULTS["digits"])
    if epochs is None:
        epochs = EPOCHS.get(data.name, 2 * d["epochs"])
    epochs = check_int("epochs", epochs, low=1, high=10_000)
    batch_size = check_int("batch_size", d["batch_size"] if batch_size is None else batch_size, low=1)
    lr = check_float("lr", d["lr"] if lr is None else lr, 0.0, 10.0, low_open=True)
    weight_decay = check_float("weight_decay", weight_decay, 0.0, 10.0)
    lr_generator = check_float("lr_generator", lr_generator, 0.0, 10.0, low_open=True)
    lambda_div = check_float("lambda_div", lambda_div, 0.0, 1e6)
    lambda_norm = check_float("lambda_norm", lambda_norm, 0.0, 1e6)
    if mask_density is not None:
        mask_density = check_float("mask_density", mask_density, 0.0, 1.0, low_open=True)
    mask_epochs = check_int("mask_epochs", mask_epochs, low=1, high=10_000)
    width = check_int("width", width, low=1, high=1024)
    if max_train is not None:
        max_train = check_int("max_train", max_train, low=2)
    for name in ("x_train", "x_test"):
        check_images(f"data.{name}", getattr(data, name))
    c, h, w = data.image_shape
    if min(h, w) < MIN_IMAGE_SIZE:
        raise ValueError(f"`data` must have images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} "
                         f"(the generators downsample twice); got {h}x{w}.")
    if mask_density is None:
        mask_density = max(0.032, 25 / (h * w))
    y = data.y_train[:max_train]
    n = len(y)
    n_bd, n_cross = int(round(rate * n)), int(round(cross_rate * n))
    n_other = int((y != target).sum())
    if n_bd < 1:
        raise ValueError(f"`rate` must give at least one backdoor image per epoch: >= "
                         f"{0.5 / n:.4g} for {n} training images; got {rate}.")
    if n_bd > n_other:
        raise ValueError(f"`rate` must leave enough non-target images to poison: at most "
                         f"{n_other / n:.4f} here; got {rate}.")
    if n_bd + n_cross > n:
        raise ValueError(f"`cross_rate` must leave room beside the backdoor images: rate + "
                         f"cross_rate <= 1; got cross_rate={cross_rate} with rate={rate}.")
    build_model(model, c, data.num_classes, (h, w))  # refuses an image too small for the model
    name = data.name
    if data.info.get("max_train") or data.info.get("max_test"):
        name = f"{data.name}[{data.info.get('max_train')},{data.info.get('max_test')}]"
    cfg = InputAwareConfig(name, rate, cross_rate, target, model, epochs, batch_size, lr,
                           weight_decay, lr_generator, lambda_div, lambda_norm, mask_density,
                           mask_epochs, width, seed, max_train, data.fingerprint,
                           data.info.get("max_test"), __version__)
    return data, cfg


def train_input_aware(data: Dataset | str = "digits", rate: float = ATTACK_DEFAULTS["rate"],
                      cross_rate: float = ATTACK_DEFAULTS["cross_rate"], target: int = 0,
                      model: str = "small-cnn", epochs: int | None = None, seed: int = 0, *,
                      batch_size: int | None = None, lr: float | None = None,
                      weight_decay: float = 0.0,
                      lr_generator: float = ATTACK_DEFAULTS["lr_generator"],
                      lambda_div: float = ATTACK_DEFAULTS["lambda_div"],
                      lambda_norm: float = ATTACK_DEFAULTS["lambda_norm"],
                      mask_density: float = ATTACK_DEFAULTS["mask_density"],
                      mask_epochs: int = ATTACK_DEFAULTS["mask_epochs"],
                      width: int = ATTACK_DEFAULTS["width"], max_train: int | None = None,
                      cache: bool = True, progress: bool = True,
                      device: str | torch.device | None = None,
                      callbacks: list[Callable] | None = None) -> InputAwareRun:
    """Train a classifier with the Input-Aware Dynamic Backdoor (Nguyen & Tran, NeurIPS 2020) and
    return the run; its `.trigger` is the trained per-image trigger.

    rate: fraction of the training set drawn (among non-target images) as backdoor samples each
        epoch, in (0, 1]; cross_rate: fraction drawn as cross samples, rate + cross_rate <= 1.
    epochs, batch_size, lr: None for the dataset's defaults (`workbench.train.DEFAULTS`); the
        generators' settings default to the paper's (see ATTACK_DEFAULTS; the module docstring
        lists what is simplified).
    cache: reuse a run trained before with exactly these settings, data and versions (under
        `data_dir()/runs/input-aware-<hash>/`, its trigger's weights in the store); an entry that
        fails a check is reported with a warning and retrained.
    History entries per epoch: loss, clean_accuracy, attack_success_rate, cross_accuracy
    (see `cross_accuracy`), seconds; `train_seconds` includes the mask generator's epochs.
    callbacks: functions called as cb(epoch, model, entry) after each joint epoch (epoch from 1,
        the classifier, the epoch's history entry), as `workbench.train_backdoor`'s; with
        callbacks the run is always trained (so they see it happen) and then saved to the cache
        like any other. They run inside the training's one-thread section (see `_train`).
    """
    data, cfg = prepare_input_aware_run(data, rate, cross_rate, target, model, epochs, seed,
                                        batch_size, lr, weight_decay, lr_generator, lambda_div,
                                        lambda_norm, mask_density, mask_epochs, width, max_train)
    if not isinstance(cache, bool):
        raise TypeError(f"`cache` must be a bool; got {cache!r}.")
    if not isinstance(progress, bool):
        raise TypeError(f"`progress` must be a bool; got {progress!r}.")
    if callbacks is not None and (not isinstance(callbacks, (list, tuple))
                                  or not all(callable(cb) for cb in callbacks)):
        raise TypeError("`callbacks` must be a list of callables cb(epoch, model, entry); got "
                        f"{callbacks!r}.")
    callbacks = list(callbacks or [])
    device = check_device("device", device) if device is not None else default_device()
    if not cache:
        return _train(data, cfg, device, progress, callbacks)
    path = data_dir() / "runs" / cfg.key()
    if not callbacks:  # callbacks must see the training happen: they always train (and save)
        run = _load_cached(path, cfg, data, device, warn=False)
        if run is not None:
            return run
    with runstore.locked(path):  # one trainer per configuration; the others wait, then load
        runstore.recover(path)
        if not callbacks:
            run = _load_cached(path, cfg, data, device, warn=True)
            if run is not None:
                return run
        run = _train(data, cfg, device, progress, callbacks)
        run.input_aware.save()  # the trigger first: a run folder never names missing weights
        run._write(path, overwrite=True)
    return run


def is_input_aware_cached(data: Dataset | str = "digits", rate: float = ATTACK_DEFAULTS["rate"],
                          cross_rate: float = ATTACK_DEFAULTS["cross_rate"], target: int = 0,
                          model: str = "small-cnn", epochs: int | None = None, seed: int = 0, *,
                          batch_size: int | None = None, lr: float | None = None,
                          weight_decay: float = 0.0,
                          lr_generator: float = ATTACK_DEFAULTS["lr_generator"],
                          lambda_div: float = ATTACK_DEFAULTS["lambda_div"],
                          lambda_norm: float = ATTACK_DEFAULTS["lambda_norm"],
                          mask_density: float = ATTACK_DEFAULTS["mask_density"],
                          mask_epochs: int = ATTACK_DEFAULTS["mask_epochs"],
                          width: int = ATTACK_DEFAULTS["width"],
                          max_train: int | None = None) -> bool:
    """Whether `train_input_aware` with these arguments would load a cached run."""
    data, cfg = prepare_input_aware_run(data, rate, cross_rate, target, model, epochs, seed,
                                        batch_size, lr, weight_decay, lr_generator, lambda_div,
                                        lambda_norm, mask_density, mask_epochs, width, max_train)
    return _load_cached(data_dir() / "runs" / cfg.key(), cfg, data, torch.device("cpu"),
                        warn=False) is not None


def load_input_aware_run(path: str | os.PathLike,
                         device: str | torch.device | None = None) -> InputAwareRun:
    """Load a run saved by `train_input_aware` (cache) or `InputAwareRun.save`, with every check
    of `workbench.load_run` and its trigger's weights from the store (their digest checked)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike; got {type(path).__name__}.")
    dev = check_device("device", device) if device is not None else default_device()
    path = Path(path)
    if not path.exists() and path.with_name(f".{path.name}.old").is_dir():
        with runstore.locked(path):
            runstore.recover(path)
    meta, blob = runstore.read_run_files(path)
    runstore.check_meta(path / "run.json", meta)
    cfg = meta["config"]
    if cfg.get("attack") != ATTACK:
        raise runstore.RunFileError(f"{path / 'run.json'}: not an InputAware run (attack "
                                    f"{cfg.get('attack')!r}); load it with workbench.load_run.")
    check_choice("model", cfg["model"], MODELS)
    try:
        trigger = input_aware_from_config(cfg["trigger"])
    except (TypeError, FileNotFoundError) as exc:
        raise runstore.RunFileError(f"{path / 'run.json'}: its trigger cannot be loaded "
                                    f"({exc}).") from None
    shape = cfg["image_shape"]
    if list(trigger.image_shape) != list(shape):
        raise runstore.RunFileError(f"{path / 'run.json'}: its trigger is for images of shape "
                                    f"{trigger.image_shape}, its model for {tuple(shape)}.")
    net = build_model(cfg["model"], shape[0], cfg["num_classes"], tuple(shape[1:]))
    if meta.get("weights_sha256") is None:
        raise runstore.RunFileError(f"{path / 'run.json'} records no weights checksum.")
    net.load_state_dict(runstore.load_state(path / "model.pt", blob, meta["weights_sha256"], net))
    net.eval().to(dev)
    return InputAwareRun(net, cfg, float(meta["clean_accuracy"]),
                         float(meta["attack_success_rate"]), meta["history"],
                         meta["poison_indices"], float(meta["train_seconds"]),
                         meta["environment"], str(path), input_aware=trigger)


def _load_cached(path: Path, cfg: InputAwareConfig, data: Dataset, device,
                 warn: bool) -> InputAwareRun | None:
    if not path.exists():
        return None
    try:
        run = load_input_aware_run(path, device)
        check_cached(run, cfg, data)  # exactly the run asked for, as train_backdoor's cache
        return run
    except (OSError, ValueError) as exc:
        if warn:
            warnings.warn(f"Cached run {path} is not usable ({exc}); retraining it and replacing "
                          "the entry.", RuntimeWarning, stacklevel=3)
        return None


def _train(data: Dataset, cfg: InputAwareConfig, device, progress: bool,
           callbacks: list[Callable] = ()) -> InputAwareRun:
    """Train on one CPU thread (restored after): the generators' many small operations run
    faster on one thread than on two, 10-50x faster on a loaded machine, where every parallel
    region of a tiny op waits for a descheduled thread (measured: benchmarks/RESULTS.md); and the
    run is then bit-identical whatever the machine's thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_single(data, cfg, device, progress, callbacks)
    finally:
        torch.set_num_threads(threads)


def _train_single(data: Dataset, cfg: InputAwareConfig, device, progress: bool,
                  callbacks: list[Callable] = ()) -> InputAwareRun:
    x_all = data.x_train[:cfg.max_train].to(device)
    y_all = data.y_train[:cfg.max_train].to(device)
    n = len(y_all)
    c = data.image_shape[0]
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        net = build_model(cfg.model, c, data.num_classes, data.image_shape[1:])
        nets = TriggerNets(c, cfg.width)
    net.to(device)
    nets.to(device)
    g = make_generator(cfg.seed + 1)  # every draw of the data order, roles and partners
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()

    # 1. the mask generator alone (the paper's train_mask_step), then frozen
    opt_m = torch.optim.Adam(nets.mask.parameters(), lr=cfg.lr_generator, betas=(0.5, 0.9))
    # the paper's schedule (x0.1 after epochs 10 and 20 of 25), scaled to mask_epochs: the
    # tug of war between the norm and diversity losses settles only as the step shrinks
    milestones = sorted({max(1, round(0.4 * cfg.mask_epochs)), max(1, round(0.8 * cfg.mask_epochs))})
    sched_m = torch.optim.lr_scheduler.MultiStepLR(opt_m, milestones, 0.1)
    for _ in range(cfg.mask_epochs):
        perm, partner = torch.randperm(n, generator=g), _partners(n, g)
        for i in range(0, n, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size].to(device)
            a, b = x_all[idx], x_all[partner.to(device)[idx]]
            ma, mb = nets.masks(torch.cat([a, b])).chunk(2)
            loss = (cfg.lambda_norm * F.relu(ma.mean(dim=(1, 2, 3)) - cfg.mask_density).mean()
                    + cfg.lambda_div * _diversity(a, b, ma, mb))
            opt_m.zero_grad(set_to_none=True)
            loss.backward()
            opt_m.step()
        sched_m.step()
    nets.mask.requires_grad_(False)
    with torch.no_grad():
        masks_all = torch.cat([nets.masks(x_all[i:i + 1024]) for i in range(0, n, 1024)])

    # 2. classifier and pattern generator together (the paper's train_step)
    opt_c = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    opt_g = torch.optim.Adam(nets.pattern.parameters(), lr=cfg.lr_generator, betas=(0.5, 0.9))
    # the paper divides both rates by 10 at several milestones of its 600 epochs; over a short
    # training one step after 3/4 of the epochs lets the classifier settle on the final triggers
    # (constant rates leave ASR and cross accuracy trading places from epoch to epoch)
    late = [max(1, round(0.75 * cfg.epochs))]
    sched_c = torch.optim.lr_scheduler.MultiStepLR(opt_c, late, 0.1)
    sched_g = torch.optim.lr_scheduler.MultiStepLR(opt_g, late, 0.1)
    n_bd, n_cross = int(round(cfg.rate * n)), int(round(cfg.cross_rate * n))
    others = torch.nonzero(y_all.cpu() != cfg.target).flatten()
    history: list[dict] = []
    bd_idx = torch.empty(0, dtype=torch.int64)
    bar = tqdm(range(cfg.epochs), desc=f"InputAware: {cfg.model} on {cfg.dataset}",
               disable=not progress, leave=False)
    for epoch in bar:
        te = time.perf_counter()
        net.train()
        # roles: 0 clean, 1 backdoor (non-target images), 2 cross (any of the rest)
        bd_idx = others[torch.randperm(len(others), generator=g)[:n_bd]].sort().values
        role = torch.zeros(n, dtype=torch.int64)
        role[bd_idx] = 1
        rest = torch.nonzero(role == 0).flatten()
        role[rest[torch.randperm(len(rest), generator=g)[:n_cross]]] = 2
        partner = _partners(n, g)
        perm = torch.randperm(n, generator=g)
        role, partner, perm = role.to(device), partner.to(device), perm.to(device)
        total = 0.0
        for i in range(0, n, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            xb, yb, rb = x_all[idx], y_all[idx].clone(), role[idx]
            sel = torch.nonzero(rb > 0).flatten()
            loss_div = torch.zeros((), device=device)
            if len(sel):
                a, pidx = xb[sel], partner[idx[sel]]
                b = x_all[pidx]
                pa, pb = nets.pattern(torch.cat([a, b])).chunk(2)
                is_bd = (rb[sel] == 1)[:, None, None, None]
                stamped = torch.where(is_bd, _stamp(a, pa, masks_all[idx[sel]]),
                                      _stamp(a, pb, masks_all[pidx]))
                xb = xb.index_put((sel,), stamped)
                yb[rb == 1] = cfg.target
                loss_div = _diversity(a, b, pa, pb)
            loss = loss_fn(net(xb), yb) + cfg.lambda_div * loss_div
            opt_c.zero_grad(set_to_none=True)
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_c.step()
            opt_g.step()
            total += loss.item() * len(idx)
        sched_c.step()
        sched_g.step()
        net.eval()
        params = list(net.parameters()) + list(nets.parameters())
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise FloatingPointError(
                f"Training diverged: the weights hold NaN or infinite values after epoch "
                f"{epoch + 1} (lr={cfg.lr}, lr_generator={cfg.lr_generator}); lower them. "
                "Nothing was saved.")
        trig = InputAware({k: v.detach().cpu() for k, v in nets.state_dict().items()},
                          data.image_shape, cfg.width)
        entry = {"epoch": epoch + 1, "loss": total / n,
                 "clean_accuracy": clean_accuracy(net, data.x_test, data.y_test),
                 "attack_success_rate": attack_success_rate(net, data.x_test, data.y_test, trig,
                                                            cfg.target),
                 "cross_accuracy": cross_accuracy(net, data.x_test, data.y_test, trig, cfg.seed),
                 "seconds": time.perf_counter() - te}
        history.append(entry)
        bar.set_postfix(acc=f"{entry['clean_accuracy']:.3f}",
                        asr=f"{entry['attack_success_rate']:.3f}",
                        cross=f"{entry['cross_accuracy']:.3f}")
        for cb in callbacks:
            cb(epoch + 1, net, entry)
    seconds = time.perf_counter() - t0
    config = {**asdict(cfg), "trigger": trig.to_config(), "image_shape": list(data.image_shape),
              "num_classes": data.num_classes}
    return InputAwareRun(net.eval(), config, history[-1]["clean_accuracy"],
                         history[-1]["attack_success_rate"], history, bd_idx.tolist(), seconds,
                         environment(), input_aware=trig)


def _measure(argv: list[str] | None = None) -> None:
    """`python -m workbench.input_aware [--rates ...] [--seeds ...]`: the figures of
    benchmarks/RESULTS.md ("Attack atlas: InputAware") on digits: a clean model, then the attack at
    each rate (cross_rate = rate), fresh (no cache), with wall time."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m workbench.input_aware")
    p.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=None)
    a = p.parse_args(argv)
    data = load_dataset("digits")
    t0 = time.perf_counter()
    clean = wb_train_clean(data, a.epochs)
    print(f"clean model ({clean.config['epochs']} epochs): accuracy {clean.clean_accuracy:.4f}, "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    for seed in a.seeds:
        for rate in a.rates:
            t, cpu = time.perf_counter(), time.process_time()
            run = train_input_aware(data, rate=rate, cross_rate=rate, epochs=a.epochs, seed=seed,
                                    cache=False, progress=False)
            wall, cpu = time.perf_counter() - t, time.process_time() - cpu
            _, m = run.trigger.pattern_and_mask(data.x_test)
            print(json.dumps({"rate": rate, "cross_rate": rate, "seed": seed,
                              "epochs": run.config["epochs"],
                              "clean_accuracy": round(run.clean_accuracy, 4),
                              "drop_points": round(100 * (clean.clean_accuracy - run.clean_accuracy), 2),
                              "asr": round(run.attack_success_rate, 4),
                              "cross_accuracy": round(run.cross_accuracy, 4),
                              "mask_area": round(float((m > 0.5).float().mean()), 4),
                              "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}),
                  flush=True)


def wb_train_clean(data: Dataset, epochs: int | None):
    return train_backdoor(data, rate=0.0, epochs=epochs, progress=False)  # the cached clean run


# trigger_from_config (attacks layer) rebuilds InputAware configs through its registry
register_trigger(InputAware, input_aware_from_config)

__all__ = ["InputAware", "InputAwareConfig", "InputAwareRun", "TriggerNets", "Generator",
           "ATTACK_DEFAULTS", "train_input_aware", "is_input_aware_cached",
           "load_input_aware_run", "input_aware_from_config", "cross_accuracy", "trigger_store",
           "weights_digest"]


if __name__ == "__main__":
    _measure()
