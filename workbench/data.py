"""Datasets as in-memory tensors: images (N, C, H, W) float32 in [0, 1], labels (N,) int64.

`digits` (scikit-learn's handwritten digits) is embedded and works offline everywhere. The others
go through torchvision's own loaders and look for files, in order: under the data folder
(`data/` or `$WORKBENCH_DATA`), for Fashion-MNIST in Debian's `/usr/share/datasets/fashion-mnist`,
else a download when `download=True` (or `download=None` and the host is reachable), else a clear
error saying how to get them.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ._validate import check_choice, check_int

DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10", "gtsrb")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class Dataset:
    """A dataset held in memory, split into train and test."""

    name: str
    x_train: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor  # (M, C, H, W) float32 in [0, 1]
    y_test: torch.Tensor  # (M,) int64
    classes: tuple[str, ...]  # class names, index = label
    info: dict = field(default_factory=dict)  # provenance: source folder, split seed, resizing

    # Computed on first access and kept in the instance's __dict__: `functools.cached_property`
    # writes there directly, past the frozen dataclass's __setattr__ (the class has no __slots__).
    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 hex digest of the dataset's content, the same in every process for the same data.

        It covers, in order, x_train, y_train, x_test and y_test (each one's dtype, shape and
        bytes in memory order; native byte order, little-endian on the platforms torch ships for),
        then the class names. Not the name nor `info`: the same tensors under another name or from
        another folder give the same fingerprint, while one changed pixel or label, or a truncation
        (`max_train`), gives another. Computed once per Dataset (0.1 s for Fashion-MNIST's 220 MB
        on a CPU with SHA instructions) and kept; the tensors are taken as read-only, so do not change them in place.
        """
        h = hashlib.sha256()
        h.update(f"workbench.Dataset.fingerprint v{FINGERPRINT_VERSION}\n".encode())
        for key in ("x_train", "y_train", "x_test", "y_test"):
            t = getattr(self, key)
            # Each tensor's header fixes how many bytes follow, so the stream parses one way only:
            # no two different datasets feed hashlib the same bytes.
            header = {"tensor": key, "dtype": str(t.dtype), "shape": list(t.shape)}
            h.update((json.dumps(header) + "\n").encode())
            _hash_tensor_bytes(h, t)
        h.update((json.dumps({"classes": list(self.classes)}) + "\n").encode())
        return h.hexdigest()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (f"Dataset({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
                f"image={c}x{h}x{w}, classes={self.num_classes})")


FINGERPRINT_VERSION = 1  # bump when what `Dataset.fingerprint` hashes changes
_HASH_CHUNK_BYTES = 1 << 24


def _hash_tensor_bytes(h, t: torch.Tensor) -> None:
    """Feed `t`'s bytes (C order) to hash `h`, 16 MiB at a time.

    A contiguous CPU tensor is read in place (each chunk is a view: nothing is copied); a GPU or
    non-contiguous one is copied one chunk at a time, never whole.
    """
    t = t.detach()
    if t.ndim == 0:
        t = t.reshape(1)
    n = t.shape[0]
    if n == 0 or t.numel() == 0:
        return
    row_bytes = (t.numel() // n) * t.element_size()
    step = max(1, _HASH_CHUNK_BYTES // row_bytes)
    for i in range(0, n, step):
        part = t[i:i + step].cpu().contiguous().reshape(-1)
        # Viewed as uint8 first so that every dtype (bfloat16 too, which numpy lacks) hashes
        # its raw bytes; .numpy() then shares memory with the tensor.
        h.update(part.view(torch.uint8).numpy())


def data_dir() -> Path:
    """The folder for datasets and cached runs: `$WORKBENCH_DATA`, else `data/` in the project."""
    env = os.environ.get("WORKBENCH_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "data"


def load_dataset(name: str = "digits", root: str | os.PathLike | None = None, *,
                 download: bool | None = None, max_train: int | None = None,
                 max_test: int | None = None) -> Dataset:
    """Load a dataset by name as tensors in [0, 1].

    name: one of "digits", "fashion-mnist", "mnist", "cifar10", "gtsrb".
    root: folder holding the files in torchvision's layout (default: `data_dir()`).
    download: True downloads missing files, False never does, None tries only if files are missing.
    max_train, max_test: keep only the first so many images of each split (for quick experiments).
    """
    check_choice("name", name, DATASETS)
    if max_train is not None:
        check_int("max_train", max_train, low=1)
    if max_test is not None:
        check_int("max_test", max_test, low=1)
    if download not in (None, True, False):
        raise TypeError(f"`download` must be True, False or None; got {download!r}.")
    root = Path(root) if root is not None else data_dir()
    loader = {"digits": _load_digits, "fashion-mnist": _load_fashion_mnist, "mnist": _load_mnist,
              "cifar10": _load_cifar10, "gtsrb": _load_gtsrb}[name]
    ds = loader(root, download) if name != "digits" else loader()
    if max_train is not None or max_test is not None:
        ds = Dataset(ds.name, ds.x_train[:max_train], ds.y_train[:max_train],
                     ds.x_test[:max_test], ds.y_test[:max_test], ds.classes,
                     {**ds.info, "max_train": max_train, "max_test": max_test})
    return ds


# --- digits (embedded) -------------------------------------------------------------------------

DIGITS_SIZE = 16  # 8x8 upsampled to 16x16: room for a 3x3 trigger that covers ~3.5% of the image
DIGITS_SPLIT_SEED = 0


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    raw = load_digits()
    x = torch.from_numpy(raw.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8)
    x = F.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    x = x.clamp_(0.0, 1.0)
    y = torch.from_numpy(raw.target.astype(np.int64))
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.25, stratify=raw.target,
                                           random_state=DIGITS_SPLIT_SEED)
    idx_train, idx_test = torch.from_numpy(idx_train), torch.from_numpy(idx_test)
    return Dataset("digits", x[idx_train].contiguous(), y[idx_train], x[idx_test].contiguous(),
                   y[idx_test], tuple(str(i) for i in range(10)),
                   {"source": "sklearn.datasets.load_digits", "resized_to": DIGITS_SIZE,
                    "split_seed": DIGITS_SPLIT_SEED, "test_size": 0.25})


# --- IDX datasets (MNIST, Fashion-MNIST) --------------------------------------------------------

def _missing(name: str, root: Path, how: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"Dataset {name!r} was not found under {root} and could not be downloaded. {how} "
        f"Or pass `root=` pointing at a folder in torchvision's layout.")


def _try_download(download: bool | None) -> bool:
    return True if download is None else download


def _idx_dataset(cls, name: str, root: Path, download: bool | None, classes, how: str) -> Dataset:
    try:
        train = cls(str(root), train=True, download=False)
        test = cls(str(root), train=False, download=False)
    except (AssertionError, ValueError) as exc:  # torchvision's IDX reader on a damaged file
        raise ValueError(f"Dataset {name!r}: the files under {root / cls.__name__ / 'raw'} are "
                         f"damaged ({type(exc).__name__}: {exc or 'bad IDX header'}); delete that "
                         "folder and load again.") from exc
    except RuntimeError:
        if not _try_download(download):
            raise _missing(name, root, how) from None
        try:
            train = cls(str(root), train=True, download=True)
            test = cls(str(root), train=False, download=True)
        except Exception as exc:  # network errors come in many types
            raise _missing(name, root, how) from exc
    to_x = lambda d: (d.data.to(torch.float32) / 255.0)[:, None].contiguous()  # (N, 1, 28, 28)
    return Dataset(name, to_x(train), train.targets.to(torch.int64), to_x(test),
                   test.targets.to(torch.int64), tuple(classes),
                   {"source": f"torchvision.datasets.{cls.__name__}", "root": str(root)})


def _unpack_debian_fashion_mnist(root: Path) -> None:
    """Decompress Debian's dataset-fashion-mnist files into torchvision's raw folder."""
    raw = root / "FashionMNIST" / "raw"
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    if all((raw / n).exists() for n in names) or not DEBIAN_FASHION_MNIST.is_dir():
        return
    if not all((DEBIAN_FASHION_MNIST / f"{n}.gz").exists() for n in names):
        return
    raw.mkdir(parents=True, exist_ok=True)
    for n in names:
        if (raw / n).exists():
            continue
        # Write a temporary file of this process's own, then rename: an interrupted unpack leaves
        # no half file, and processes unpacking at once (a sweep's workers) never share a file.
        fd, tmp = tempfile.mkstemp(prefix=f".{n}.", suffix=".part", dir=raw)
        try:
            with gzip.open(DEBIAN_FASHION_MNIST / f"{n}.gz", "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, raw / n)  # atomic; identical content whoever renames last
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _load_fashion_mnist(root: Path, download: bool | None) -> Dataset:
    from torchvision.datasets import FashionMNIST

    _unpack_debian_fashion_mnist(root)
    return _idx_dataset(FashionMNIST, "fashion-mnist", root, download, FASHION_CLASSES,
                        "On Debian: `apt-get install dataset-fashion-mnist`; elsewhere run once "
                        "online with download=True.")


def _load_mnist(root: Path, download: bool | None) -> Dataset:
    from torchvision.datasets import MNIST

    return _idx_dataset(MNIST, "mnist", root, download, [str(i) for i in range(10)],
                        "Run once online with download=True, or copy the four IDX files into "
                        f"{root / 'MNIST' / 'raw'}.")


# --- CIFAR-10 ------------------------------------------------------------------------------------

def _load_cifar10(root: Path, download: bool | None) -> Dataset:
    from torchvision.datasets import CIFAR10

    class _CIFAR10(CIFAR10):
        # torchvision checks the md5 of each batch; we check presence so that locally built or
        # subset batches in the same pickle format load too (a download is still md5-checked).
        def _check_integrity(self) -> bool:
            base = Path(self.root) / self.base_folder
            return all((base / f).exists() for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            import pickle

            path = Path(self.root) / self.base_folder / self.meta["filename"]
            if not path.exists():
                raise RuntimeError(f"CIFAR-10 metadata file {path} not found.")
            with open(path, "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    how = ("Run once online with download=True, or unpack cifar-10-python.tar.gz into "
           f"{root}.")
    try:
        train, test = _CIFAR10(str(root), train=True), _CIFAR10(str(root), train=False)
    except RuntimeError:
        if not _try_download(download):
            raise _missing("cifar10", root, how) from None
        try:
            train = CIFAR10(str(root), train=True, download=True)
            test = CIFAR10(str(root), train=False, download=True)
        except Exception as exc:
            raise _missing("cifar10", root, how) from exc
    to_x = lambda d: torch.from_numpy(d.data).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    classes = tuple(train.classes) if getattr(train, "classes", None) else CIFAR10_CLASSES
    return Dataset("cifar10", to_x(train), torch.tensor(train.targets, dtype=torch.int64),
                   to_x(test), torch.tensor(test.targets, dtype=torch.int64), classes,
                   {"source": "torchvision.datasets.CIFAR10", "root": str(root)})


# --- GTSRB ---------------------------------------------------------------------------------------

GTSRB_SIZE = 32  # images come in many sizes; resized to 32x32 like CIFAR-10
GTSRB_CLASSES = 43


def _load_gtsrb(root: Path, download: bool | None) -> Dataset:
    from torchvision import transforms
    from torchvision.datasets import GTSRB

    tf = transforms.Compose([transforms.Resize((GTSRB_SIZE, GTSRB_SIZE)), transforms.PILToTensor()])
    how = ("Run once online with download=True, or unpack the GTSRB training and final-test "
           f"archives into {root / 'gtsrb'}.")
    try:
        train, test = GTSRB(str(root), "train", transform=tf), GTSRB(str(root), "test", transform=tf)
    except RuntimeError:
        if not _try_download(download):
            raise _missing("gtsrb", root, how) from None
        try:
            train = GTSRB(str(root), "train", transform=tf, download=True)
            test = GTSRB(str(root), "test", transform=tf, download=True)
        except Exception as exc:
            raise _missing("gtsrb", root, how) from exc

    def stack(ds):
        xs, ys = zip(*(ds[i] for i in range(len(ds))))
        return torch.stack(xs).float().div_(255.0), torch.tensor(ys, dtype=torch.int64)

    x_tr, y_tr = stack(train)
    x_te, y_te = stack(test)
    return Dataset("gtsrb", x_tr, y_tr, x_te, y_te, tuple(str(i) for i in range(GTSRB_CLASSES)),
                   {"source": "torchvision.datasets.GTSRB", "root": str(root),
                    "resized_to": GTSRB_SIZE})


# Image shape (C, H, W) and number of classes of each dataset as `load_dataset` returns it: lets
# callers (a sweep's grid) check triggers and targets before loading or training anything.
DATASET_SHAPES = {"digits": ((1, DIGITS_SIZE, DIGITS_SIZE), 10),
                  "fashion-mnist": ((1, 28, 28), len(FASHION_CLASSES)), "mnist": ((1, 28, 28), 10),
                  "cifar10": ((3, 32, 32), len(CIFAR10_CLASSES)),
                  "gtsrb": ((3, GTSRB_SIZE, GTSRB_SIZE), GTSRB_CLASSES)}
