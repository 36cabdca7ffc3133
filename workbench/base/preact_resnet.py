"""PreAct-ResNet-18, the default model of BackdoorBench, with BackdoorBench's parameter names.

Pre-activation residual network (He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual
Networks", ECCV 2016): each block computes BN → ReLU → conv → BN → ReLU → conv and adds a
shortcut taken after the first BN-ReLU where the shape changes (a 1x1 convolution), or the
block's input where it does not.

Written for the workbench so that a state dict saved by BackdoorBench's attack scripts
(`models/preact_resnet.py` of github.com/SCLBD/BackdoorBench, itself from WaNet's code) loads into
it by name: `conv1`, `layer{1-4}.{0,1}.{bn1,conv1,bn2,conv2}`, `layer{2-4}.0.shortcut.0` and
`linear`, with the same shapes. Differences from the paper, kept because BackdoorBench's reference
code has them (the weights were trained with them): a 3x3 stride-1 stem without max-pooling (the
CIFAR form, for 32x32 images), no final BN-ReLU after the last block (the paper's pre-activation
network ends with one), and adaptive average pooling to 1x1 (any image size). Differences from
BackdoorBench's code, none of which changes a name, a shape or an output: `in_channels` is a
parameter (theirs is fixed at 3), and their blocks' `ind` attribute (used by a pruning defence to
keep a subset of channels) is left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PreActBlock(nn.Module):
    """One pre-activation basic block (two 3x3 convolutions)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            # a Sequential of one convolution: the name `shortcut.0.weight` is BackdoorBench's
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet(nn.Module):
    """A pre-activation ResNet of basic blocks, `num_blocks` per stage (64, 128, 256, 512 wide)."""

    def __init__(self, num_blocks=(2, 2, 2, 2), num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(64, num_blocks[0], 1)
        self.layer2 = self._make_layer(128, num_blocks[1], 2)
        self.layer3 = self._make_layer(256, num_blocks[2], 2)
        self.layer4 = self._make_layer(512, num_blocks[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = self.avgpool(out)  # (N, 512, 1, 1)
        return self.linear(out.flatten(1))  # (N, K)


def preact_resnet18(num_classes: int = 10, in_channels: int = 3) -> PreActResNet:
    """PreAct-ResNet-18 as BackdoorBench builds it (`generate_cls_model('preactresnet18', K)`)."""
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels)


__all__ = ["PreActBlock", "PreActResNet", "preact_resnet18"]
