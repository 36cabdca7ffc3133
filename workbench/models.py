"""Small image classifiers by name. Each maps (N, C, H, W) in [0, 1] to logits (N, K); they are
built for the image size of their dataset (`build_model(..., image_size)`)."""

from __future__ import annotations

import torch
from torch import nn

from ._validate import check_choice, check_int

MODELS = ("small-cnn", "mlp", "lenet5", "resnet18")


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


def build_model(name: str, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    """A fresh, randomly initialised model (uses torch's global RNG: seed it with fork_rng)."""
    check_choice("model", name, MODELS)
    check_int("in_channels", in_channels, low=1)
    check_int("num_classes", num_classes, low=2)
    h, w = image_size
    if name == "small-cnn":
        return SmallCNN(in_channels, num_classes, (h, w))
    if name == "mlp":
        return MLP(in_channels * h * w, num_classes)
    if name == "lenet5":
        return LeNet5(in_channels, num_classes)
    return resnet18_small(in_channels, num_classes)


def default_device() -> torch.device:
    """cuda, then mps, then cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
