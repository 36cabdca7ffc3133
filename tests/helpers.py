"""Tiny models and on-disk dataset writers for the tests."""

from __future__ import annotations

import csv
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn


class Linear2(nn.Module):
    """Two-class linear model on flattened images: logits = [0, w·x + b].

    Under Gaussian noise of scale σ, P(class 1) = Φ((w·x + b) / (σ‖w‖)) exactly.
    """

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w = nn.Parameter(w.flatten().clone(), requires_grad=False)
        self.b = nn.Parameter(torch.tensor(float(b)), requires_grad=False)

    def forward(self, x):
        z = x.flatten(1) @ self.w + self.b  # (N,)
        return torch.stack([torch.zeros_like(z), z], dim=1)


class LinearK(nn.Module):
    """K-class linear model: logits = W x + b."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.lin = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.lin.weight.copy_(weight)
            self.lin.bias.copy_(bias)

    def forward(self, x):
        return self.lin(x.flatten(1))


class Constant(nn.Module):
    """Ignores its input: the same logits for everything."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float32), requires_grad=False)

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def write_idx(root: Path, folder: str, n_train=30, n_test=12, seed=0, gz=False) -> None:
    """MNIST-style IDX files in torchvision's raw folder layout."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        blobs = {f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 2051, n, 28, 28) + imgs.tobytes(),
                 f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 2049, n) + labels.tobytes()}
        for name, blob in blobs.items():
            if gz:
                with gzip.open(raw / f"{name}.gz", "wb") as f:
                    f.write(blob)
            else:
                (raw / name).write_bytes(blob)


def write_cifar(root: Path, n_per_batch=6, seed=0) -> None:
    """CIFAR-10 python pickle batches in torchvision's layout."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(i % 10) for i in range(n_per_batch)]
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)  # keys as the py2 files load
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                     "frog", "horse", "ship", "truck"]}, f)


def write_gtsrb(root: Path, classes=(0, 1, 2), per_class=3, n_test=4, seed=0) -> None:
    """GTSRB folders (PPM images of varying size) and the final-test CSV, torchvision's layout."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = root / "gtsrb"
    for c in classes:
        d = base / "GTSRB" / "Training" / f"{c:05d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = int(rng.integers(25, 40))
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i:05d}.ppm")
    test = base / "GTSRB" / "Final_Test" / "Images"
    test.mkdir(parents=True, exist_ok=True)
    with open(base / "GT-final_test.csv", "w", newline="") as f:
        w = csv.writer(f, delimiter=";")
        w.writerow(["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"])
        for i in range(n_test):
            name = f"{i:05d}.ppm"
            Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(test / name)
            w.writerow([name, 30, 30, 0, 0, 29, 29, classes[i % len(classes)]])
