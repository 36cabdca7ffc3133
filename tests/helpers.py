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


def py2_pickle(obj) -> bytes:
    """`obj` as Python 2's cPickle.dump(obj, f, 2) wrote the official CIFAR-10 files.

    Python 2 `str` become (SHORT_)BINSTRING; a numpy array is rebuilt through
    `numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), 'b')` and a BUILD with state
    (1, shape, numpy.dtype('u1', 0, 1) + its state, fortran=False, raw bytes), numpy 1.x's
    `ndarray.__reduce__`. Handles dict, list, tuple, str, bytes, int, None and arrays of a
    1-byte dtype.
    """
    out = bytearray(b"\x80\x02")

    def string(v):
        b = v.encode("latin1") if isinstance(v, str) else bytes(v)
        out.extend((b"U" + bytes([len(b)])) if len(b) < 256 else b"T" + struct.pack("<i", len(b)))
        out.extend(b)

    def integer(v):
        if 0 <= v < 256:
            out.extend(b"K" + bytes([v]))
        elif 0 <= v < 65536:
            out.extend(b"M" + struct.pack("<H", v))
        else:
            out.extend(b"J" + struct.pack("<i", v))

    def save(o):
        if isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                save(k)
                save(v)
            out.extend(b"u")
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                save(v)
            out.extend(b"e")
        elif isinstance(o, tuple):
            out.extend(b"(" if not 1 <= len(o) <= 3 else b"")
            for v in o:
                save(v)
            out.extend(b"t" if not 1 <= len(o) <= 3 else b"\x85\x86\x87"[len(o) - 1:len(o)])
        elif isinstance(o, (str, bytes)):
            string(o)
        elif o is None:
            out.extend(b"N")
        elif isinstance(o, (int, np.integer)):
            integer(int(o))
        elif isinstance(o, np.ndarray):
            assert o.dtype.itemsize == 1, "only 1-byte dtypes (no byte order) are written"
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            out.extend(b"K\x00\x85U\x01b\x87R(K\x01")
            save(tuple(o.shape))
            out.extend(b"cnumpy\ndtype\n")
            string(o.dtype.str[1:])  # "u1"
            out.extend(b"K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
            out.extend(b"\x89")  # not Fortran order
            string(np.ascontiguousarray(o).tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(f"py2_pickle cannot write {type(o).__name__}")

    save(obj)
    out.extend(b".")
    return bytes(out)


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]


def write_cifar(root: Path, n_per_batch=6, seed=0, protocol=None) -> None:
    """CIFAR-10 python pickle batches in torchvision's layout, with random images.

    protocol: None writes each file as the official ones are written (Python 2 cPickle, protocol
    2, with their keys: see `py2_pickle`); an int writes Python 3 pickles of that protocol, as a
    user building batches locally would. Not the official data: load with verify_checksums=False.
    """
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    dump = py2_pickle if protocol is None else (lambda o: pickle.dumps(o, protocol=protocol))
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(i % 10) for i in range(n_per_batch)]
        batch = {"data": data, "labels": labels}
        if protocol is None:
            batch.update({"batch_label": f"batch {k + 1} of 6",
                          "filenames": [f"img_{k}_{i:05d}.png" for i in range(n_per_batch)]})
        (base / name).write_bytes(dump(batch))
    meta = {"label_names": CIFAR_NAMES}
    if protocol is None:
        meta.update({"num_cases_per_batch": n_per_batch, "num_vis": 3072})
    (base / "batches.meta").write_bytes(dump(meta))


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
