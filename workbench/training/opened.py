"""A model trained elsewhere, opened for every panel and study: `open_model`.

    run = open_model("resnet18_cifar.pt", "cifar10", trigger=my_patch, target=0,
                     architecture="resnet18")

returns an `OpenedRun`, which the panels and studies take in place of a `BackdoorRun`: the same
`model`, `data`, `trigger`, `target`, `target_mode`, `num_classes`, `config`,
`clean_accuracy`, `attack_success_rate`, `triggered_pairs(x, y, n, seed)`, `target_labels(y)` and
`measure_asr(x, y)`, with `trained_here = False` and no training record (`history`,
`poison_indices`, `cover_indices` and `train_seconds` are None: nobody here saw it trained). Its
metrics are measured on open, on the test split of `data`.

What `model` may be:
    an nn.Module (a TorchScript module too) mapping (N, C, H, W) images to logits; it is used as it
        is, never copied nor changed (every workbench call lends it and gives it back as it was),
        so later changes you make to it show in the run, while its metrics stay those measured
        on open;
    a file, opened by `workbench.base.checkpoints` without running code from it: a state dict
        (with `architecture`: a name of the zoo, "preactresnet18", "torchvision:NAME", or an
        nn.Module of that architecture), a TorchScript file (`trust_torchscript=True`: such a
        file is a program), or BackdoorBench's `attack_result.pt` (its model, its backdoored test
        images as the trigger, its target, and its dataset's normalisation as `preprocess`).

What `data` may be (its test split is what the run is measured and explored on):
    a workbench Dataset or a dataset name ("cifar10", ...);
    (x_test, y_test): numpy arrays or tensors, images (N, H, W), (N, C, H, W) or (N, H, W, C)
        (`layout` when the shape does not tell: a side of 1 or 3 is taken for the channels),
        uint8 in [0, 255] or floats in [0, 1]; labels (N,) ints;
    a folder in torchvision's ImageFolder layout (one sub-folder per class, named by it, read in
        sorted order), images decoded as PNG, JPEG, BMP, PPM or WebP only (Pillow picks a decoder
        by a file's content, and some decoders are interpreters), `channels` 3 (RGB, default) or
        1 (grayscale);
    None, for a BackdoorBench file whose dataset the workbench has (cifar10, mnist, gtsrb).
Images are scaled into [0, 1] (uint8 / 255) and, with `image_size`, resized (bilinear, with
antialiasing); the run's `data.info` records the shape they had and the shape they have. Floats
outside [0, 1] are refused: images below 0 look normalised (give the normalisation as
`preprocess`), above 1 look like 0-255 values. A user's data is a test split only: the run's
`data` has an empty training split.

What is checked on open, before the metrics: one forward of one test image through the model (the
channels and image size it takes: a clear error naming what its first layer takes), that its output
is (1, K) finite logits with K >= 2, that K agrees with the data's classes and labels, that the
trigger maps a test batch to images of the same shape in [0, 1], and, for paired images, that they
pair with the test set (BackdoorBench's: each backdoored image's recorded true label equals the test
label at its index). After the metrics: a clean accuracy within a tenth of the way from chance (the
most common test label's share) to 1 raises a warning naming the usual causes (normalisation,
channel order, architecture, data).

`preprocess`: for a model that expects inputs other than images in [0, 1] (normalised by a mean
and std, as torchvision's and BackdoorBench's training scripts do): a (mean, std) pair of
per-channel sequences, or any nn.Module or function on (N, C, H, W) batches. The run's model is
then `Preprocessed(model, preprocess)`, which takes images in [0, 1] like every model of the
workbench, so noise scales σ, triggers and landscapes stay in pixel units. None: nothing, except
for BackdoorBench files (their dataset's normalisation).

`trigger`: a workbench Trigger, any function on (N, C, H, W) batches in [0, 1]
(`FunctionTrigger`: its output is checked on every call), or a tensor/array of triggered test
images paired with `data`'s test images (`PairedTrigger`: triggered[i] is test image i with the
trigger; converted like the data, resized with it). `target`: the attacker's class (int) or
"all-to-all" (BadNets: y goes to (y + 1) mod K). Without a trigger, the views that need one (its
pairs, ASR, the landscape's trigger direction) refuse, saying why; the clean ones work.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections.abc import Callable
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import nn
from torchvision.datasets import ImageFolder

from ..base._validate import (check_choice, check_device, check_images, check_int, check_labels,
                              check_seed)
from ..base.checkpoints import (BackdoorBenchResult, LoadedModel, check_torch_version,
                                is_backdoorbench, is_torchscript, load_backdoorbench,
                                load_model_file, read_checkpoint)
from ..base.data import DATASETS, Dataset, load_dataset
from ..base.models import check_model_input, default_device, model_device
from ..attacks.poison import TriggeredPairs, attack_targets, make_generator, triggered_pairs
from .train import attack_success_rate, clean_accuracy, environment
from ..attacks.triggers import FunctionTrigger, PairedTrigger, Trigger  # noqa: F401 (their home: attacks)

# Decoders a folder's images may reach (Pillow goes by content, not by the file's name), and the
# file names read as images.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "PPM", "WEBP")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".pbm", ".webp")
LAYOUTS = ("NCHW", "NHWC")
# A clean accuracy below chance + this share of (1 - chance) raises a warning on open.
NEAR_CHANCE = 0.1


# --- preprocessing ------------------------------------------------------------------------------

class Normalize(nn.Module):
    """(x − mean) / std per channel, for models trained on normalised inputs (torchvision's
    `Normalize`, as a module whose buffers follow the model's device)."""

    def __init__(self, mean, std):
        super().__init__()
        m, s = _floats("preprocess mean", mean), _floats("preprocess std", std)
        if len(m) != len(s):
            raise ValueError(f"`preprocess` must be a (mean, std) pair of one value per channel "
                             f"each; got {len(m)} means and {len(s)} stds.")
        if any(v <= 0 for v in s):
            raise ValueError(f"`preprocess` std must hold values > 0; got {s!r}.")
        self.register_buffer("mean", torch.tensor(m, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(s, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return (f"mean={[round(v, 4) for v in self.mean.flatten().tolist()]}, "
                f"std={[round(v, 4) for v in self.std.flatten().tolist()]}")


def _floats(name: str, v) -> list[float]:
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or not len(v):
        raise TypeError(f"`{name}` must be a non-empty sequence of floats; got {v!r}.")
    out = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, Real) or not math.isfinite(float(x)):
            raise TypeError(f"`{name}` must be a non-empty sequence of finite floats; got {v!r}.")
        out.append(float(x))
    return out


class _Function(nn.Module):
    """A plain function as a module (so that it travels inside `Preprocessed`)."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__qualname__", type(self.fn).__name__)


class Preprocessed(nn.Module):
    """`model(preprocess(x))`: a model on images in [0, 1] from one that expects preprocessed
    inputs. Its parameters are the model's (the workbench's device and BatchNorm logic see them)."""

    def __init__(self, model: nn.Module, preprocess: nn.Module | Callable):
        super().__init__()
        self.preprocess = preprocess if isinstance(preprocess, nn.Module) else _Function(preprocess)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x))


def as_preprocess(preprocess) -> nn.Module:
    """`preprocess` as a new module: a (mean, std) pair → `Normalize`, a module → a copy of it
    (the caller's is never moved), a function → wrapped."""
    if isinstance(preprocess, (tuple, list)) and len(preprocess) == 2 and all(
            isinstance(p, (tuple, list)) for p in preprocess):
        return Normalize(*preprocess)
    if isinstance(preprocess, nn.Module):  # a copy: it is moved to the model's device
        return copy.deepcopy(preprocess)
    if callable(preprocess) and not isinstance(preprocess, (torch.Tensor, np.ndarray)):
        return _Function(preprocess)
    raise TypeError("`preprocess` must be None, a (mean, std) pair of per-channel sequences, or an "
                    "nn.Module or function on (N, C, H, W) batches; got "
                    f"{type(preprocess).__name__}.")


# --- data ---------------------------------------------------------------------------------------

def _check_image_size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, Integral) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    allowed = "None, an int or a (height, width) pair of ints >= 1"
    if not isinstance(image_size, (tuple, list)) or len(image_size) != 2 or not all(
            isinstance(s, Integral) and not isinstance(s, bool) for s in image_size):
        raise TypeError(f"`image_size` must be {allowed}; got {image_size!r}.")
    if min(image_size) < 1:
        raise ValueError(f"`image_size` must be {allowed}; got {tuple(image_size)!r}.")
    return int(image_size[0]), int(image_size[1])


def _resize(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] resized to `size` (bilinear, antialiased), still in [0, 1]."""
    if size is None or tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                         antialias=True).clamp_(0.0, 1.0)


def as_images(name: str, x, layout: str | None = None,
              image_size: tuple[int, int] | None = None) -> tuple[torch.Tensor, dict]:
    """Images from an array or tensor, as a new float32 tensor (N, C, H, W) in [0, 1], and what
    was done to them. (N, H, W) is one channel; (N, C, H, W) or (N, H, W, C) as `layout` says
    (None: the side of 1 or 3 is the channels; neither or both is refused as ambiguous)."""
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise TypeError(f"`{name}` must be a numeric array of images; got an object array.")
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, torch.Tensor):
        t = x.detach().cpu()
    else:
        raise TypeError(f"`{name}` must be a numpy array or torch tensor of images; got "
                        f"{type(x).__name__}.")
    shape = tuple(t.shape)
    if t.ndim == 3:
        t, how = t[:, None], "(N, H, W)"
    elif t.ndim == 4:
        if layout is None:
            first, last = shape[1] in (1, 3), shape[3] in (1, 3)
            if first == last:
                raise ValueError(f"`{name}` has shape {shape}: its layout is ambiguous (channels "
                                 "first or last?); pass layout='NCHW' or 'NHWC'.")
            layout = "NCHW" if first else "NHWC"
        check_choice("layout", layout, LAYOUTS)
        if layout == "NHWC":
            t = t.permute(0, 3, 1, 2)
        how = f"({', '.join('NCHW' if layout == 'NCHW' else 'NHWC')})"
    else:
        raise ValueError(f"`{name}` must have shape (N, H, W), (N, C, H, W) or (N, H, W, C); got "
                         f"{shape}.")
    if not len(t):
        raise ValueError(f"`{name}` must hold at least one image; got shape {shape}.")
    if t.dtype == torch.uint8:
        t, scale = t.to(torch.float32).div_(255.0), "uint8 / 255"
    elif t.is_floating_point():
        t, scale = t.to(torch.float32, copy=True), "floats"
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            raise ValueError(f"`{name}` must hold finite values; got {int((~finite).sum())} NaN or "
                             "infinite values.")
        lo, hi = float(t.min()), float(t.max())
        if lo < 0:
            raise ValueError(f"`{name}` must hold images in [0, 1] (or uint8); got values down to "
                             f"{lo:.3g}: these look normalised. Pass the images in [0, 1] and the "
                             "normalisation as preprocess=(mean, std).")
        if hi > 1:
            raise ValueError(f"`{name}` must hold images in [0, 1] (or uint8); got values up to "
                             f"{hi:.3g}: for 0-255 values pass uint8 or divide by 255.")
    else:
        raise TypeError(f"`{name}` must be uint8 (0-255) or floating point in [0, 1]; got "
                        f"{t.dtype}.")
    t = _resize(t.contiguous(), image_size)
    return t, {"given_shape": list(shape), "layout": how, "scaled": scale,
               "shape": list(t.shape[1:])}


def as_labels(name: str, y, n: int) -> torch.Tensor:
    """Labels (n,) as a new int64 tensor."""
    if isinstance(y, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(y)) if y.dtype != object else None
    elif isinstance(y, torch.Tensor):
        t = y.detach().cpu()
    elif isinstance(y, (list, tuple)):
        try:
            t = torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError):
            t = None
    else:
        t = None
    if t is None:
        raise TypeError(f"`{name}` must be an array or tensor of int labels; got {type(y).__name__}.")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"`{name}` must hold int labels; got {t.dtype}.")
    t = t.to(torch.int64, copy=True)
    check_labels(name, t, n)
    return t


def _open_image(channels: int):
    mode = "L" if channels == 1 else "RGB"

    def load(path: str):
        try:
            with Image.open(path, formats=list(IMAGE_FORMATS)) as im:
                return im.convert(mode)
        except UnidentifiedImageError:
            raise ValueError(f"Image {path} is not a {', '.join(IMAGE_FORMATS)} image (its content "
                             "decides, not its name); no other format is decoded.") from None
        except OSError as exc:
            raise ValueError(f"Image {path} cannot be read ({exc}).") from None

    return load


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def read_image_folder(root: str | os.PathLike, channels: int = 3,
                      image_size: tuple[int, int] | None = None):
    """(x (N, C, H, W) float32 in [0, 1], y (N,), classes, info) from a folder in torchvision's
    ImageFolder layout: one sub-folder per class (sorted by name), images inside it."""
    channels = check_choice("channels", channels, (1, 3))
    root = Path(root)
    try:
        folder = ImageFolder(str(root), loader=_open_image(channels), is_valid_file=_is_image)
    except FileNotFoundError as exc:
        raise ValueError(f"`data` {root} must be a folder in ImageFolder's layout (one sub-folder "
                         f"per class holding {', '.join(IMAGE_EXTENSIONS)} images): "
                         f"{exc}") from None
    images, sizes = [], {}
    to_array = lambda im: np.array(im, dtype=np.uint8)
    for path, _ in folder.samples:
        arr = to_array(folder.loader(path))
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)
        sizes.setdefault(arr.shape[1:], path)
        images.append(arr)
    if image_size is None and len(sizes) > 1:
        seen = "; ".join(f"{h}x{w} ({p})" for (h, w), p in list(sizes.items())[:3])
        raise ValueError(f"`data` {root} holds images of {len(sizes)} sizes ({seen}...); pass "
                         "image_size=(height, width) to resize them all.")
    x = torch.stack([_resize(torch.from_numpy(a)[None].float().div_(255.0), image_size)[0]
                     for a in images])
    y = torch.tensor(folder.targets, dtype=torch.int64)
    given = [list(s) for s in sizes]
    return x, y, tuple(folder.classes), {"source": f"ImageFolder {root}", "given_sizes": given,
                                         "scaled": "uint8 / 255", "shape": list(x.shape[1:]),
                                         "channels": "grayscale" if channels == 1 else "RGB"}


def _user_dataset(name: str, x: torch.Tensor, y: torch.Tensor, classes, info: dict) -> Dataset:
    empty = torch.empty((0, *x.shape[1:]), dtype=torch.float32)
    return Dataset(name, empty, torch.empty(0, dtype=torch.int64), x, y, tuple(classes),
                   {**info, "test_only": True})


def _truncate(data: Dataset, max_test: int | None) -> Dataset:
    if max_test is None or max_test >= len(data.y_test):
        return data
    return Dataset(data.name, data.x_train, data.y_train, data.x_test[:max_test],
                   data.y_test[:max_test], data.classes, {**data.info, "max_test": max_test})


def as_test_data(data, *, image_size=None, channels: int = 3, layout: str | None = None,
                 max_test: int | None = None, name: str | None = None):
    """`data` (see the module docstring) as (Dataset, classes given or None). Classes of arrays
    are named after the model's outputs later (`_name_classes`)."""
    size = _check_image_size(image_size)
    if isinstance(data, Dataset):
        if size is not None and tuple(data.image_shape[1:]) != size:
            raise ValueError(f"`image_size` must be None for a workbench Dataset (its images are "
                             f"{data.image_shape}); got {size}.")
        return _truncate(data, max_test), True
    if isinstance(data, str) and data in DATASETS:
        if size is not None:
            raise ValueError(f"`image_size` must be None for dataset {data!r}; got {size}.")
        return load_dataset(data, max_test=max_test), True
    if isinstance(data, (str, os.PathLike)):
        if not Path(data).is_dir():
            raise ValueError(f"`data` must be a Dataset, a dataset name (one of "
                             f"{', '.join(map(repr, DATASETS))}), (x_test, y_test) or an "
                             f"ImageFolder folder; got {str(data)!r}, which is neither a known name "
                             "nor a folder.")
        x, y, classes, info = read_image_folder(data, channels, size)
        ds = _user_dataset(name or Path(data).name, x, y, classes, info)
        return _truncate(ds, max_test), True
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, info = as_images("data[0] (x_test)", data[0], layout, size)
        y = as_labels("data[1] (y_test)", data[1], len(x))
        ds = _user_dataset(name or "arrays", x, y, (), {"source": "arrays", **info})
        return _truncate(ds, max_test), False
    raise TypeError(f"`data` must be a workbench Dataset, a dataset name, (x_test, y_test) arrays "
                    f"or tensors, or an ImageFolder folder; got {type(data).__name__}.")


def _name_classes(data: Dataset, classes, k: int) -> Dataset:
    if classes is None:
        classes = tuple(str(i) for i in range(k))
    else:
        if isinstance(classes, (str, bytes)) or not all(isinstance(c, str) for c in classes):
            raise TypeError(f"`classes` must be a sequence of class names (str); got {classes!r}.")
        classes = tuple(classes)
        if len(classes) != k:
            raise ValueError(f"`classes` must name the model's {k} classes; got {len(classes)}.")
    return Dataset(data.name, data.x_train, data.y_train, data.x_test, data.y_test, classes,
                   data.info)


# --- the opened run -----------------------------------------------------------------------------

NO_TRIGGER = ("this model was opened without a trigger: there are no triggered inputs to pair "
              "with clean ones, no attack success rate and no trigger direction. The clean views "
              "work (estimate_smoothness on clean test inputs, `clean_inputs()`, landscapes along "
              "'random' and 'gradient' directions, model-level detection); for the paired ones "
              "open it again with trigger= (a workbench Trigger, a function on image batches, or "
              "triggered test images) and target=.")


class OpenedRun:
    """A model trained elsewhere with its test data: what `open_model` returns (see the module
    docstring). Panels and studies take it in place of a `BackdoorRun`; `trained_here` is
    False, and there is no training record (`history`, `poison_indices`, `cover_indices`,
    `train_seconds` are None)."""

    trained_here = False
    history = None  # nobody here saw it trained
    poison_indices = None
    cover_indices = None
    train_seconds = None
    poisoning = None  # how it was poisoned is not known here

    def __init__(self, model: nn.Module, data: Dataset, trigger: Trigger | None,
                 target: int | None, target_mode: str | None, num_classes: int, *, source: str,
                 format: str, architecture: str, path: str | None, preprocess: nn.Module | None,
                 info: dict):
        self.model, self.data, self._trigger = model, data, trigger
        self._target, self.target_mode, self.num_classes = target, target_mode, num_classes
        self.source, self.format, self.architecture, self.path = source, format, architecture, path
        self.preprocess, self.info = preprocess, info
        self.environment = environment()
        self.clean_accuracy = clean_accuracy(model, data.x_test, data.y_test)
        self.attack_success_rate = (None if trigger is None
                                    else self.measure_asr(data.x_test, data.y_test))
        self.config = {"dataset": data.name, "model": architecture, "format": format,
                       "source": source,
                       "trigger": None if trigger is None else trigger.to_config(),
                       "target": target, "target_mode": target_mode, "poisoning": None,
                       "rate": None, "num_classes": num_classes,
                       "image_shape": list(data.image_shape), "data_fingerprint": data.fingerprint,
                       "preprocess": None if preprocess is None else repr(preprocess),
                       "n_test": len(data.y_test), "trained_here": False}

    # what BackdoorRun offers, for a model with or without a trigger

    @property
    def trigger(self) -> Trigger:
        if self._trigger is None:
            raise ValueError(NO_TRIGGER)
        return self._trigger

    @property
    def has_trigger(self) -> bool:
        return self._trigger is not None

    @property
    def target(self) -> int:
        """The target class (all-to-one). All-to-all has none, and neither has a run opened
        without a trigger: asking is an error saying so."""
        if self._trigger is None:
            raise ValueError(NO_TRIGGER)
        if self.target_mode == "all-to-all":
            raise ValueError("This run's target_mode is 'all-to-all': each class y goes to "
                             "(y + 1) mod K, so it has no single `target`. Use "
                             "run.target_labels(y), run.triggered_pairs(x, y) or "
                             "run.measure_asr(x, y), which handle every target mode.")
        return int(self._target)

    @property
    def metrics(self) -> dict:
        """What was measured on open, on `data`'s test split."""
        return {"clean_accuracy": self.clean_accuracy,
                "attack_success_rate": self.attack_success_rate, "n_test": len(self.data.y_test)}

    def _target_arg(self):
        return None if self.target_mode == "all-to-all" else self._target

    def target_labels(self, y: torch.Tensor) -> torch.Tensor:
        """The label the attacker wants for inputs of true labels `y` (either target mode)."""
        if self._trigger is None:
            raise ValueError(NO_TRIGGER)
        check_labels("y", y, y.shape[0] if isinstance(y, torch.Tensor) and y.ndim else 1)
        return attack_targets(y, self._target_arg(), self.target_mode, self.num_classes)

    def _covered(self, x: torch.Tensor, y: torch.Tensor):
        """The rows of (x, y) the trigger can be applied to: all of them, or for paired images
        those among the pairs; (x, y, their indices)."""
        check_images("x", x)
        check_labels("y", y, len(x))
        if not isinstance(self._trigger, PairedTrigger):
            return x, y, None
        rows = torch.nonzero(self._trigger.index_of(x) >= 0).flatten()
        if not len(rows):
            raise ValueError(f"None of the {len(x)} images of `x` has a triggered twin: this run's "
                             f"trigger is {self._trigger!r}, known on those images only (pass "
                             "the run's own data.x_test).")
        return x[rows], y[rows], rows

    def triggered_pairs(self, x: torch.Tensor, y: torch.Tensor, n: int | None = None,
                        seed: int | torch.Generator = 0) -> TriggeredPairs:
        """`workbench.poison.triggered_pairs` for this run's trigger and target mode: up to `n`
        test inputs the attack applies to and their triggered twins. With paired images, the
        inputs are drawn among those that have a twin (indices still index `x`)."""
        if self._trigger is None:
            raise ValueError(NO_TRIGGER)
        xs, ys, rows = self._covered(x, y)
        pairs = triggered_pairs(xs, ys, self._trigger, self._target_arg(), n, seed,
                                target_mode=self.target_mode, num_classes=self.num_classes)
        if rows is None:
            return pairs
        return TriggeredPairs(pairs.clean, pairs.triggered, pairs.labels, rows[pairs.indices],
                              pairs.targets)

    def measure_asr(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """`attack_success_rate` of the model and trigger on (x, y) in this run's target mode
        (with paired images: on the inputs that have a twin)."""
        if self._trigger is None:
            raise ValueError(NO_TRIGGER)
        xs, ys, _ = self._covered(x, y)
        return attack_success_rate(self.model, xs, ys, self._trigger, self._target_arg(),
                                   target_mode=self.target_mode)

    def clean_inputs(self, n: int | None = None, seed: int | torch.Generator = 0):
        """Up to `n` random clean test inputs (all if None), for the clean views: (x, y, indices
        into the test split), in test-set order."""
        check_seed("seed", seed)
        m = len(self.data.y_test)
        idx = torch.arange(m)
        if n is not None and check_int("n", n, low=1) < m:
            idx = torch.randperm(m, generator=make_generator(seed))[:n].sort().values
        return self.data.x_test[idx], self.data.y_test[idx], idx

    def __repr__(self) -> str:
        c, h, w = self.data.image_shape
        if self._trigger is None:
            attack = "no trigger"
        else:
            mode = "all-to-all" if self.target_mode == "all-to-all" else f"target={self._target}"
            attack = f"{self._trigger!r}, {mode}"
        asr = ("" if self.attack_success_rate is None
               else f", attack_success_rate={self.attack_success_rate:.4f}")
        pre = f", preprocess={self.preprocess!r}" if self.preprocess is not None else ""
        return (f"OpenedRun({self.source}: {self.format} {self.architecture}{pre}; data "
                f"{self.data.name!r} {c}x{h}x{w}, {len(self.data.y_test)} test images; {attack}: "
                f"clean_accuracy={self.clean_accuracy:.4f}{asr})")


# --- open_model ---------------------------------------------------------------------------------

def _check_target(target, k: int) -> tuple[int | None, str]:
    if isinstance(target, str):
        check_choice("target", target, ("all-to-all",))
        if k < 2:
            raise ValueError("`target` 'all-to-all' needs K >= 2 classes.")
        return None, "all-to-all"
    if target is None:
        raise ValueError(f"`target` must be the attacker's class (an int in [0, {k - 1}]) or "
                         "'all-to-all' when a trigger is given; got None.")
    return check_int("target", target, 0, k - 1), "all-to-one"


def _check_trigger_arg(trigger) -> None:
    if trigger is None or isinstance(trigger, (Trigger, torch.Tensor, np.ndarray)):
        return
    if not callable(trigger):
        raise TypeError("`trigger` must be None, a workbench Trigger, a function on (N, C, H, W) "
                        "image batches in [0, 1], or a tensor/array of triggered test images; got "
                        f"{type(trigger).__name__}.")


def _bb_target(res: BackdoorBenchResult, k: int) -> tuple[int | None, str]:
    """The target mode BackdoorBench's backdoor labels show: one class for all (all-to-one) or
    (y + 1) mod K for each (all-to-all)."""
    t, y = res.targets, res.labels
    if bool((t == t[0]).all()):
        return int(t[0]), "all-to-one"
    if bool((t == (y + 1) % k).all()):
        return None, "all-to-all"
    raise ValueError(f"{res.path}: the backdoored test images' labels are neither one class "
                     "(all-to-one) nor (y + 1) mod K (all-to-all); the workbench knows these two "
                     "target modes only.")


def _pair_backdoorbench(res: BackdoorBenchResult,
                        data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, triggered) twins: the test images at the file's indices and its backdoored
    images, after checking that they are the same test set (true labels equal at every index)."""
    if tuple(data.image_shape) != tuple(res.image_shape):
        raise ValueError(f"`data` must have the images the attack used, {res.image_shape} "
                         f"({res.clean_data!r}, from the file's img_size); got {data.image_shape}.")
    keep = res.indices < len(data.y_test)  # `max_test` may have cut the test split
    if not bool(keep.any()):
        raise ValueError(f"`data` has {len(data.y_test)} test images; the backdoored ones of "
                         f"{res.path} index from {int(res.indices.min())}.")
    idx, labels = res.indices[keep], res.labels[keep]
    wrong = int((data.y_test[idx] != labels).sum())
    if wrong:
        raise ValueError(f"`data` must be the test set the attack used, in its order: "
                         f"{res.path} pairs each backdoored image with a test index, and at "
                         f"{wrong} of {len(idx)} of them the true label it recorded differs "
                         f"from data.y_test ({res.clean_data!r}'s test split in BackdoorBench's "
                         f"order; got {data.name!r}).")
    return idx, res.triggered[keep]


def open_model(model, data, trigger=None, target=None, architecture=None, *, preprocess=None,
               classes=None, image_size=None, channels: int = 3, layout: str | None = None,
               max_test: int | None = None, num_classes: int | None = None,
               trust_torchscript: bool = False, device: str | torch.device | None = None,
               name: str | None = None) -> OpenedRun:
    """Open a model trained elsewhere with its test data, for every panel and study (see the
    module docstring for what each argument may be and what is checked).

    model: an nn.Module, or a file (state dict with `architecture`, TorchScript with
        `trust_torchscript=True`, or BackdoorBench's attack_result.pt).
    data: a Dataset, a dataset name, (x_test, y_test), an ImageFolder folder, or None for a
        BackdoorBench file whose dataset the workbench has.
    trigger, target: the attack, if known (BackdoorBench files bring theirs).
    architecture: for a state dict: a name ("small-cnn", "resnet18", "preactresnet18",
        "torchvision:resnet18", ...) or an nn.Module of that architecture (copied).
    preprocess: (mean, std) or a module/function applied before the model (module docstring).
    classes: class names for arrays (default "0", "1", ...). image_size: resize arrays and
        folders to (H, W). channels: a folder's images as 3 (RGB) or 1 (grayscale) channels.
    layout: "NCHW" or "NHWC" where an array's shape is ambiguous. max_test: keep the first so many
        test images. num_classes: for a state dict whose output layer cannot tell.
    device: where a model read from a file goes (default: cuda, then mps, then cpu); must be
        None for an nn.Module, which stays where it is.
    name: the data's name in the run (default: the dataset's, the folder's, or "arrays").
    """
    # every argument's type first, before any file or data is read
    if isinstance(model, (str, os.PathLike)):
        check_torch_version()
    elif not isinstance(model, nn.Module):
        raise TypeError("`model` must be an nn.Module (TorchScript too) or the path of a model file "
                        f"(state dict, TorchScript or BackdoorBench's attack_result.pt); got "
                        f"{type(model).__name__}.")
    elif architecture is not None:
        raise ValueError("`architecture` must be None when `model` is an nn.Module (it names the "
                         f"architecture of a state dict file); got {architecture!r}.")
    if isinstance(model, nn.Module) and device is not None:
        raise ValueError("`device` must be None when `model` is an nn.Module: the workbench never "
                         "moves a caller's model (each call lends it to the device it is asked "
                         f"for); got {device!r}.")
    dev = check_device("device", device) if device is not None else None
    _check_trigger_arg(trigger)
    if not (target is None or target == "all-to-all" or (isinstance(target, Integral)
                                                          and not isinstance(target, bool))):
        raise TypeError("`target` must be None, the attacker's class (an int) or 'all-to-all'; "
                        f"got {target!r}.")
    if not isinstance(trust_torchscript, bool):
        raise TypeError(f"`trust_torchscript` must be a bool; got {trust_torchscript!r}.")
    if max_test is not None:
        check_int("max_test", max_test, low=1)
    if name is not None and not isinstance(name, str):
        raise TypeError(f"`name` must be a str; got {name!r}.")
    pre = None if preprocess is None else as_preprocess(preprocess)

    loaded = None
    if isinstance(model, (str, os.PathLike)):
        if data is None:  # only a BackdoorBench file names its own dataset
            content = None if is_torchscript(model) else read_checkpoint(model)
            if not is_backdoorbench(content):
                raise ValueError("`data` must be given (a Dataset, a dataset name, (x_test, "
                                 "y_test) or an ImageFolder folder); None is only for a "
                                 "BackdoorBench file whose dataset the workbench has.")
            loaded = load_backdoorbench(model, architecture, content=content)
            if loaded.clean_data not in DATASETS:
                raise ValueError(f"`data` must be given for {loaded.path}: its dataset "
                                 f"{loaded.clean_data!r} is not one the workbench loads "
                                 f"({', '.join(map(repr, DATASETS))}); pass its test split as "
                                 "(x_test, y_test) in BackdoorBench's order.")
            ds, named = load_dataset(loaded.clean_data, max_test=max_test), True
        else:
            ds, named = as_test_data(data, image_size=image_size, channels=channels,
                                     layout=layout, max_test=max_test, name=name)
            loaded = load_model_file(model, architecture, ds.image_shape, num_classes,
                                     trust_torchscript=trust_torchscript)
        dev = default_device() if dev is None else dev
        net, path = loaded.model.to(dev), loaded.path
    else:
        ds, named = as_test_data(data, image_size=image_size, channels=channels, layout=layout,
                                 max_test=max_test, name=name)
        net, path = model, None

    info: dict = {}
    source = path if path is not None else f"{type(model).__name__} given"
    if loaded is None:
        fmt = "module"
    else:
        fmt = "backdoorbench" if isinstance(loaded, BackdoorBenchResult) else loaded.format
    arch = (type(model).__name__ if loaded is None else
            (loaded.info.get("architecture", loaded.model_name)
             if isinstance(loaded, BackdoorBenchResult) else loaded.architecture))
    if fmt == "torchscript":  # the class it was scripted or traced from, as TorchScript records it
        arch = getattr(loaded.model, "original_name", None) or arch
    if isinstance(loaded, BackdoorBenchResult):
        if trigger is not None:
            raise ValueError(f"`trigger` must be None for BackdoorBench file {loaded.path}: it "
                             f"brings its own backdoored test images ({len(loaded.indices)}).")
        if pre is None:
            if loaded.normalization is None:
                raise ValueError(f"`preprocess` must be given for {loaded.path}: BackdoorBench "
                                 f"trains on normalised inputs, and the normalisation of dataset "
                                 f"{loaded.clean_data!r} is not one the workbench knows; pass "
                                 "preprocess=(mean, std).")
            pre = Normalize(*loaded.normalization)
        info.update(loaded.info, backdoorbench_version=loaded.version,
                    clean_data=loaded.clean_data, data_path=loaded.data_path)
    elif isinstance(loaded, LoadedModel):
        info.update(loaded.info)
    if isinstance(pre, Normalize) and len(pre.mean) not in (1, ds.image_shape[0]):
        raise ValueError(f"`preprocess` must give 1 or {ds.image_shape[0]} values per statistic for "
                         f"the data's {ds.image_shape[0]}-channel images; got {len(pre.mean)}.")
    if pre is not None:  # our own module (as_preprocess): it goes where the model is
        net = Preprocessed(net, pre.to(model_device(net)))

    # one forward of one test image: the channels and size the model takes, its classes
    try:
        k = check_model_input(net, ds.x_test, "data")
    except ValueError as exc:
        raise ValueError(f"The model cannot take the data's images ({ds.image_shape}, in [0, 1]): "
                         f"{exc} For a folder pass channels=1 or 3 and image_size=(H, W); resize "
                         "or convert arrays before.") from None
    if named:
        if ds.num_classes != k:
            raise ValueError(f"The model has {k} outputs; the data has {ds.num_classes} classes "
                             f"({ds.name!r}). They must agree.")
        if classes is not None:
            ds = _name_classes(ds, classes, k)
    else:
        ds = _name_classes(ds, classes, k)
    if int(ds.y_test.max()) >= k:
        raise ValueError(f"`data` labels must be classes of the model, in [0, {k - 1}]; got "
                         f"{int(ds.y_test.max())}.")

    # the trigger, checked on a test batch before the metrics
    if isinstance(loaded, BackdoorBenchResult):
        tgt, mode = _bb_target(loaded, k)
        if target is not None and _check_target(target, k) != (tgt, mode):
            raise ValueError(f"`target` must agree with {loaded.path}, whose backdoor labels say "
                             f"{'all-to-all' if tgt is None else tgt}; got {target!r}.")
        idx, twins = _pair_backdoorbench(loaded, ds)
        trig: Trigger | None = PairedTrigger(ds.x_test[idx], twins, f"BackdoorBench {loaded.path}")
    elif trigger is None:
        if target is not None:
            raise ValueError(f"`target` must be None without a trigger (there is no attack to aim); "
                             f"got {target!r}.")
        trig, tgt, mode = None, None, None
    else:
        tgt, mode = _check_target(target, k)
        if isinstance(trigger, Trigger):
            trig = trigger.resolve(ds.image_shape)
        elif isinstance(trigger, (torch.Tensor, np.ndarray)):
            twins, tinfo = as_images("trigger", trigger, layout, _check_image_size(image_size))
            n_full = len(twins)
            twins = twins[:len(ds.y_test)] if max_test is not None else twins
            if tuple(twins.shape) != tuple(ds.x_test.shape):
                raise ValueError(f"`trigger` as images must hold one triggered twin per test image, "
                                 f"of shape {tuple(ds.x_test.shape)}; got {n_full} of shape "
                                 f"{tuple(tinfo['shape'])}.")
            trig = PairedTrigger(ds.x_test, twins, "triggered test images given")
        else:
            trig = FunctionTrigger(trigger)
        probe = ds.x_test[:2]
        if isinstance(trig, PairedTrigger):
            probe = probe[trig.index_of(probe) >= 0][:2] if len(probe) else probe
        try:
            if len(probe):
                trig(probe)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"`trigger` does not apply to the data's images "
                             f"{ds.image_shape}: {exc}") from None
    run = OpenedRun(net, ds, trig, tgt, mode, k, source=str(source), format=fmt,
                    architecture=str(arch), path=path, preprocess=pre, info=info)
    _warn_near_chance(run)
    return run


def _warn_near_chance(run: OpenedRun) -> None:
    y = run.data.y_test
    chance = float(torch.bincount(y).max()) / len(y)
    if run.clean_accuracy < chance + NEAR_CHANCE * (1 - chance):
        warnings.warn(f"The opened model's clean accuracy is {run.clean_accuracy:.3f}, near chance "
                      f"({chance:.3f}, the most common test label's share): the usual causes are "
                      "inputs it expects normalised (pass preprocess=(mean, std)), another channel "
                      "order or image size, a different architecture whose weights happen to fit "
                      "(layers without weights, such as a max-pool, are not in a state dict), or "
                      "test data that is not the model's. Every number measured on it would be "
                      "about a model that does not work.", UserWarning, stacklevel=3)


__all__ = ["FunctionTrigger", "Normalize", "OpenedRun", "PairedTrigger", "Preprocessed",
           "as_images", "as_labels", "as_preprocess", "as_test_data", "open_model",
           "read_image_folder"]
