"""Small image classifiers by name. Each maps (N, C, H, W) in [0, 1] to logits (N, K); they are
built for the image size of their dataset (`build_model(..., image_size)`)."""

from __future__ import annotations

from contextlib import contextmanager
from numbers import Integral
from typing import Iterator

import torch
from torch import nn

from ._validate import check_choice, check_int

MODELS = ("small-cnn", "mlp", "lenet5", "resnet18", "small-cnn-bn")


class SmallCNN(nn.Module):
    """Two conv blocks and a two-layer head: the default, fast enough for live widgets on a CPU."""

    def __init__(self, in_channels: int, num_classes: int, image_size=(28, 28), width: int = 16,
                 hidden: int = 128):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        # the full feature map feeds the head: pooling it further cost Fashion-MNIST ~4 points
        h, w = image_size[0] // 4, image_size[1] // 4
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * h * w, hidden),
                                  nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


class SmallCNNBN(nn.Module):
    """The small CNN with BatchNorm after each convolution and a third conv block at a quarter of
    the resolution: three BatchNorm layers, for detectors that scale BatchNorm parameters
    (IBD-PSC, `workbench.detection`). Costs about 1.4x the small CNN's forward pass.

    BatchNorm2d only (none in the head): BatchNorm1d fails on a last minibatch of one image.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size=(28, 28), width: int = 16,
                 hidden: int = 128):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
        )
        h, w = image_size[0] // 4, image_size[1] // 4
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * h * w, hidden),
                                  nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, hidden // 2), nn.ReLU(inplace=True),
                                 nn.Linear(hidden // 2, num_classes))

    def forward(self, x):
        return self.net(x)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU; padding 2 so 28x28 inputs match the original 32x32."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(inplace=True), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.AvgPool2d(2),
            nn.AdaptiveAvgPool2d(5),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(400, 120), nn.ReLU(inplace=True),
                                  nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Linear(84, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


def resnet18_small(in_channels: int, num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool) for 32x32."""
    from torchvision.models import resnet18

    net = resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


# The smallest image side each architecture's layers leave a feature map of (measured): smaller
# images fail in the first forward pass, or give a model with an empty layer.
MIN_IMAGE_SIZE = {"small-cnn": 4, "small-cnn-bn": 4, "lenet5": 12}


def build_model(name: str, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    """A fresh, randomly initialised model (uses torch's global RNG: seed it with fork_rng)."""
    check_choice("name", name, MODELS)
    check_int("in_channels", in_channels, low=1)
    check_int("num_classes", num_classes, low=2)
    low = MIN_IMAGE_SIZE.get(name, 1)
    allowed = f"a (height, width) pair of ints >= {low} for {name!r}"
    if not isinstance(image_size, (tuple, list)) or not all(
            isinstance(s, Integral) and not isinstance(s, bool) for s in image_size):
        raise TypeError(f"`image_size` must be {allowed}; got {image_size!r}.")
    if len(image_size) != 2 or min(image_size) < low:
        raise ValueError(f"`image_size` must be {allowed}; got {tuple(image_size)!r}.")
    h, w = int(image_size[0]), int(image_size[1])
    if name == "small-cnn":
        net = SmallCNN(in_channels, num_classes, (h, w))
    elif name == "mlp":
        net = MLP(in_channels * h * w, num_classes)
    elif name == "lenet5":
        net = LeNet5(in_channels, num_classes)
    elif name == "small-cnn-bn":
        net = SmallCNNBN(in_channels, num_classes, (h, w))
    else:
        net = resnet18_small(in_channels, num_classes)
    # the image shape it was built for (not state: messages name it when inputs do not fit)
    net.image_shape = (in_channels, h, w)
    return net


def default_device() -> torch.device:
    """cuda, then mps, then cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@contextmanager
def preserve_model(model: nn.Module, *, train: bool = False,
                   requires_grad: bool | None = None) -> Iterator[nn.Module]:
    """Lend a caller's model to library code and give it back exactly as it was.

    Inside the block the model is in eval mode (`train=False`) and, with `requires_grad` set, its
    parameters' `requires_grad` flags are set to that value. On exit, however the block ends, every
    submodule's train/eval mode, every parameter (the object registered under each name), its
    `requires_grad` and `.grad`, and every parameter's and buffer's tensor (so its device, dtype and
    memory format: `.to(device)` and channels-last conversions inside the block are undone) are
    restored to what they were on entry. Values written in place into the original tensors
    (training) are not undone: the guard is for calls that only read the model. Every public
    function of the workbench that takes a model uses it.

    Inference tensors (parameters or buffers created or converted under `torch.inference_mode()`,
    e.g. `model.to(memory_format=torch.channels_last)` inside it) cannot take part in autograd nor
    have `requires_grad` set outside inference mode: the block gets ordinary copies of them (the
    same values, device, dtype and strides; memory for one copy of those tensors while lent), and
    the originals come back on exit. An error while lending or while restoring restores every
    other part before it is raised.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; got {type(model).__name__}.")
    modes = [(m, m.training) for m in model.modules()]
    slots = [(m, name, p) for m in model.modules() for name, p in m._parameters.items()]
    params = [(p, p.data, p.requires_grad, p.grad) for p in model.parameters()]
    buffers = [(m, name, b) for m in model.modules() for name, b in m._buffers.items()]
    try:
        for p in model.parameters():
            # `.to()` inside the block would convert a set `.grad` in place (the very tensor kept
            # above) and then refuse it back: lend the parameters without their gradients
            p.grad = None
            if p.is_inference():  # an ordinary copy, with the same strides
                p.data = p.data.clone()
        for m, name, b in buffers:
            if b is not None and b.is_inference():
                m._buffers[name] = b.clone()
        model.train(train)
        if requires_grad is not None:
            for p in model.parameters():
                p.requires_grad_(requires_grad)
        yield model
    finally:
        _restore(modes, slots, params, buffers)


def _restore(modes, slots, params, buffers) -> None:
    """Put back what `preserve_model` recorded; every part is tried, the first error raised."""
    errors = []

    def attempt(fn, *args):
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - raised below, after the other parts
            errors.append(exc)

    def put_param(p, data, flag, grad):
        if p.requires_grad != flag:  # set while p is still an ordinary tensor (inference
            p.requires_grad_(flag)  # tensors refuse the flag outside inference mode)
        p.data = data
        if p.grad is not grad:
            p.grad = grad

    for m, name, p in slots:
        attempt(m._parameters.__setitem__, name, p)
    for p, data, flag, grad in params:
        attempt(put_param, p, data, flag, grad)
    for m, name, b in buffers:
        attempt(m._buffers.__setitem__, name, b)
    for m, mode in modes:
        attempt(setattr, m, "training", mode)
    if errors:
        raise errors[0]


# ---- checks of a model given by a user (every layer above uses them) ----

def check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module mapping (N, C, H, W) to logits; got "
                        f"{type(model).__name__}.")


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _first_layer(model: nn.Module) -> str:
    shape = getattr(model, "image_shape", None)
    built = (f"; it was built for {shape[1]}x{shape[2]} images with {shape[0]} channel(s)"
             if isinstance(shape, tuple) and len(shape) == 3 else "")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return f"its first layer, a Conv2d, takes {m.in_channels}-channel images{built}"
        if isinstance(m, nn.Linear):
            return f"its first layer, a Linear, takes {m.in_features} values per image{built}"
    return "see the model's first layer" + built


def check_model_input(model: nn.Module, x: torch.Tensor, name: str = "inputs") -> int:
    """Run the model on one image of `x` and return its number of classes K; a shape the model
    cannot take, or an output that is not (1, K) logits with K >= 2, raises ValueError naming
    `name` and what the model expects (instead of torch's own message from deep inside)."""
    check_model(model)
    if not len(x):
        raise ValueError(f"`{name}` must hold at least one image; got shape {tuple(x.shape)}.")
    with preserve_model(model), torch.inference_mode():
        try:
            out = model(x[:1].to(model_device(model), torch.float32))
        except RuntimeError as exc:
            msg = str(exc).splitlines()[0][:200]
            raise ValueError(f"`{name}` has images of shape {tuple(x.shape[1:])}, which the model "
                             f"cannot take ({_first_layer(model)}; torch says: {msg}).") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1 or out.shape[1] < 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"`model` must map `{name}` (N, C, H, W) to logits of shape (N, K) with "
                         f"K >= 2 classes; got output {shape} for one image.")
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError(f"The model returned NaN or infinite logits for `{name}`; "
                                 "nothing it computes from them would be meaningful.")
    return int(out.shape[1])
