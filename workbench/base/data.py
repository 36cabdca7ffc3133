"""Datasets as in-memory tensors: images (N, C, H, W) float32 in [0, 1], labels (N,) int64.

`digits` (scikit-learn's handwritten digits) is embedded and works offline everywhere. The others
look for files in torchvision's layout, in order: under the data folder (`data/` or
`$WORKBENCH_DATA`), for Fashion-MNIST in Debian's `/usr/share/datasets/fashion-mnist`, else a
download through torchvision when `download=True` (or `download=None` and the host is reachable),
else a clear error saying how to get them.

No file in a data folder can run code. CIFAR-10's pickled batches are checked against their
published MD5s and read by an unpickler that builds numpy arrays and plain values only (never by
torchvision's `pickle.load`), within a memory budget of a small multiple of the file's size; MNIST and Fashion-MNIST come from the raw IDX files only (never from
torchvision's old pickled `processed/*.pt` cache); GTSRB images are decoded as PPM only.
"""

from __future__ import annotations

import contextvars
import functools
import gzip
import hashlib
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ._validate import check_choice, check_int
from .fileio import atomic_write

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

    @property
    def fingerprint(self) -> str:
        """SHA-256 hex digest of the dataset's content, the same in every process for the same data.

        It covers, in order, x_train, y_train, x_test and y_test (each one's dtype, shape and
        bytes in memory order; native byte order, little-endian on the platforms torch ships for),
        then the class names. Not the name nor `info`: the same tensors under another name or from
        another folder give the same fingerprint, while one changed pixel or label, or a truncation
        (`max_train`), gives another. Hashed on every access (1 ms for digits, 0.1 s for
        Fashion-MNIST's 220 MB on a CPU with SHA instructions): tensors can be changed in place
        in ways torch does not count (through `.numpy()` or `.data`), so a kept digest could go
        stale; callers that need it several times keep it themselves.
        """
        return self._hash_content()

    def _hash_content(self) -> str:
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
    return Path(__file__).resolve().parents[2] / "data"  # the repository's data/ (workbench/base/data.py)


def load_dataset(name: str = "digits", root: str | os.PathLike | None = None, *,
                 download: bool | None = None, max_train: int | None = None,
                 max_test: int | None = None, verify_checksums: bool = True) -> Dataset:
    """Load a dataset by name as tensors in [0, 1].

    name: one of "digits", "fashion-mnist", "mnist", "cifar10", "gtsrb".
    root: folder holding the files in torchvision's layout (default: `data_dir()`).
    download: True downloads missing files, False never does, None tries only if files are missing.
    max_train, max_test: keep only the first so many images of each split (for quick experiments).
    verify_checksums: for "cifar10", check each file against its published MD5 before reading it
        (the default). Pass False for batches you built yourself in the same pickle format: they
        are read all the same with an unpickler that builds numpy arrays and plain values only, so
        no file can run code either way, and a file that would make it build far more memory
        than the file's own size (CIFAR_BUILT_PER_FILE_BYTE) is refused. Other datasets ignore it.
    """
    check_choice("name", name, DATASETS)
    if max_train is not None:
        check_int("max_train", max_train, low=1)
    if max_test is not None:
        check_int("max_test", max_test, low=1)
    if download not in (None, True, False):
        raise TypeError(f"`download` must be True, False or None; got {download!r}.")
    if not isinstance(verify_checksums, bool):
        raise TypeError(f"`verify_checksums` must be True or False; got {verify_checksums!r}.")
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"`root` must be None, a str or an os.PathLike folder; got {root!r}.")
    root = Path(root) if root is not None else data_dir()
    loader = {"digits": _load_digits, "fashion-mnist": _load_fashion_mnist, "mnist": _load_mnist,
              "cifar10": _load_cifar10, "gtsrb": _load_gtsrb}[name]
    if name == "digits":
        ds = loader()
    elif name == "cifar10":
        ds = loader(root, download, verify_checksums)
    else:
        ds = loader(root, download)
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


def _raw_idx_only(cls):
    """torchvision's MNIST-style class `cls` that reads the raw IDX files and nothing else.

    When `<root>/<class>/processed/{training,test}.pt` (torchvision's old cache format) exist,
    torchvision loads those instead of the raw files, with `torch.load`: in torchvision 0.17
    without `weights_only`, which on torch < 2.6 unpickles anything (code included), and even
    `weights_only=True` could run code on torch <= 2.5.1 (CVE-2025-32434). The raw IDX files are
    a header and bytes (torchvision's reader unpickles nothing), so only they are read.
    """
    # Same class name: torchvision names the folder after it (<root>/MNIST/raw).
    return type(cls.__name__, (cls,), {"_check_legacy_exist": lambda self: False})


def _idx_dataset(cls, name: str, root: Path, download: bool | None, classes, how: str) -> Dataset:
    cls = _raw_idx_only(cls)
    if (root / cls.__name__ / "processed").is_dir():
        how += (f" (Files under {root / cls.__name__ / 'processed'} are not read: they are "
                "torchvision's old pickled cache.)")
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
        # atomic_write: a temporary file of this process's own, then a rename, so an interrupted
        # unpack leaves no half file and processes unpacking at once (a sweep's workers) never
        # share a file; identical content whoever renames last (at most 47 MB in memory)
        with gzip.open(DEBIAN_FASHION_MNIST / f"{n}.gz", "rb") as src:
            atomic_write(raw / n, src.read())


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
#
# The python version of CIFAR-10 (https://www.cs.toronto.edu/~kriz/cifar.html) is six pickled
# batches and a pickled batches.meta, written by Python 2's cPickle (protocol 2). Unpickling runs
# whatever a file names, so torchvision's own reader (plain `pickle.load`) would run a crafted
# batch's code. Here each file's MD5 is checked first (opt out for batches built locally), then it
# is read with an unpickler that resolves only the few numpy globals an array needs.

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_IMAGE_BYTES = 3 * 32 * 32
# MD5 of each file of the official cifar-10-python.tar.gz (the site publishes the archive's MD5,
# c58f30108f718f92721af3b95e74349a), as torchvision.datasets.CIFAR10 lists them in train_list,
# test_list and meta (a test checks that the two agree).
CIFAR10_TRAIN_FILES = (("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                       ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                       ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                       ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                       ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"))
CIFAR10_TEST_FILES = (("test_batch", "40351d587109b95175f43aff81a1287e"),)
CIFAR10_META_FILE = ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888")


# Memory a CIFAR-10 file may make the reader build, against its own size. Unpickling can build far
# more than it reads: the pickle memo lets a 7-byte call stamp out another copy of a large object
# (`_codecs.encode(<a 1 MiB string>, 'latin1')` or an array's state, again and again: a 1 MiB file
# asked for 200 MiB in benchmarks/cifar_memory.py), and each one-byte opcode that makes an empty
# list or dict builds 72 bytes or more (a 1 MiB file: 73 MiB). A batch holds each image once, so
# its arrays and bytes built by the allowed calls never exceed twice the file (protocol 2 writes
# bytes as a latin-1 string that `_codecs.encode` turns back, then the array copies them), and
# everything else it builds is a few words per opcode. Files asking for more are refused.
CIFAR_BUILT_PER_FILE_BYTE = 2  # arrays and bytes the allowed calls build, per byte of the file
CIFAR_OBJECTS_PER_FILE_BYTE = 2  # the estimate of everything else, per byte of the file
CIFAR_MEMORY_SLACK = 16 << 20  # on top of both: small files are never refused for their size
_OPCODE_OBJECT_BYTES = 128  # the most one opcode builds besides its argument (a list, a dict
# entry, a float, an int, a reference in a container), rounded up


class _MemoryBudget:
    """Bytes the allowed calls of one CIFAR-10 file may still build (see CIFAR_BUILT_PER_FILE_BYTE)."""

    def __init__(self, file_bytes: int):
        self.file_bytes = file_bytes
        self.left = CIFAR_BUILT_PER_FILE_BYTE * file_bytes + CIFAR_MEMORY_SLACK
        self.refused: str | None = None

    def spend(self, nbytes: int, what: str) -> None:
        if nbytes > self.left:
            self.refused = (f"{what} would take the arrays and bytes it builds past "
                            f"{CIFAR_BUILT_PER_FILE_BYTE}x the file's {self.file_bytes:,} bytes "
                            f"(+{CIFAR_MEMORY_SLACK / 2**20:g} MiB)")
            raise pickle.UnpicklingError(self.refused)
        self.left -= nbytes


_BUDGET: "contextvars.ContextVar[_MemoryBudget | None]" = contextvars.ContextVar(
    "workbench_cifar_budget", default=None)


def _spend(nbytes: int, what: str) -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.spend(nbytes, what)


def _array_bytes(shape, dtype) -> int:
    """Bytes of an array of `shape` and `dtype` (as a pickle names them), before building it."""
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or not all(
            isinstance(v, (int, np.integer)) and v >= 0 for v in shape):
        raise pickle.UnpicklingError(f"an array's shape must be a tuple of ints >= 0; got "
                                     f"{shape!r:.80}")
    return int(np.prod([int(v) for v in shape], dtype=object)) * np.dtype(dtype).itemsize


class _CifarArray(np.ndarray):
    """`numpy.ndarray` as a CIFAR-10 pickle names it: the bytes an array's state (a BUILD) asks
    for are counted against the file's budget before numpy copies them in."""

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) in (4, 5):
            _spend(_array_bytes(state[-4], state[-3]), "an array's state")
        return super().__setstate__(state)


def _latin1_encode(obj, encoding="utf-8", errors="strict"):
    """`_codecs.encode` as Python 3's pickle protocol 2 uses it for bytes, and nothing more."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError("`_codecs.encode` is allowed only to rebuild bytes from a "
                                     f"latin-1 string; got encoding {encoding!r}.")
    _spend(len(obj), "`_codecs.encode`")
    return obj.encode("latin1")


@functools.lru_cache(maxsize=None)
def _cifar_pickle_globals() -> dict:
    """The only globals a CIFAR-10 pickle may name, each mapped to the object it stands for.

    The official files need three: `numpy.core.multiarray._reconstruct`, `numpy.ndarray` and
    `numpy.dtype` (the data array; labels and names are plain lists, ints and strings). Batches
    written by Python 3's pickle name `numpy._core.multiarray` under numpy 2, `_codecs.encode`
    for bytes under protocol 2, and `numpy._core.numeric._frombuffer` under protocol 5. Each
    call that builds an array or bytes counts them against the file's memory budget first.
    """
    try:  # numpy >= 2 moved numpy.core to numpy._core
        from numpy._core import multiarray, numeric
    except ImportError:
        from numpy.core import multiarray, numeric

    def reconstruct(subtype, shape, dtype):
        if subtype is not _CifarArray:
            raise pickle.UnpicklingError("`_reconstruct` is allowed for numpy.ndarray only")
        _spend(_array_bytes(shape, dtype), "`_reconstruct`")
        return multiarray._reconstruct(subtype, shape, dtype)

    def frombuffer(buf, dtype, shape, order):
        _spend(_array_bytes(shape, dtype), "`_frombuffer`")
        return numeric._frombuffer(buf, dtype, shape, order)

    allowed = {("numpy", "ndarray"): _CifarArray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _latin1_encode}
    for pkg in ("numpy.core", "numpy._core"):
        allowed[(f"{pkg}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{pkg}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 file, refusing every global outside `_cifar_pickle_globals()`.

    Nothing is imported on the file's say: the allowed objects are looked up in a fixed table, so
    a file can build numpy arrays, lists, dicts, strings and numbers, and run no other code.
    """

    def __init__(self, file):
        super().__init__(file, encoding="latin1")  # Python 2 `str` (names, array bytes) as str
        self.refused: str | None = None

    def find_class(self, module: str, name: str):
        obj = _cifar_pickle_globals().get((module, name))
        if obj is None:
            self.refused = f"{module}.{name}"
            raise pickle.UnpicklingError(f"global `{self.refused}` is not allowed")
        return obj


def _estimate_objects(path: Path) -> int:
    """An upper bound of the bytes unpickling `path` builds besides what the allowed calls count:
    each opcode's argument (strings and bytes at their size in memory) plus
    _OPCODE_OBJECT_BYTES per opcode. Read opcode by opcode (pickletools), building nothing; a
    file pickletools cannot parse is left to the unpickler's own error."""
    import pickletools
    import sys

    total = 0
    try:
        with open(path, "rb") as f:
            for _op, arg, _pos in pickletools.genops(f):
                total += _OPCODE_OBJECT_BYTES
                if isinstance(arg, (str, bytes, bytearray)):
                    total += sys.getsizeof(arg)
    except OSError:
        raise
    except Exception:  # malformed: the unpickler says what is wrong
        pass
    return total


def _read_cifar_pickle(path: Path, prescan: bool = True) -> dict:
    """The dict pickled in CIFAR-10 file `path`, keys as str; ValueError naming the file if not.

    A file that would build much more memory than its size is refused (see
    CIFAR_BUILT_PER_FILE_BYTE): before reading, by an estimate of its opcodes (`prescan`; the
    loader skips it for files whose published MD5 it has checked: the official files are known),
    and while reading, by counting the arrays and bytes the allowed calls build."""
    size = path.stat().st_size
    estimate = _estimate_objects(path) if prescan else 0
    limit = CIFAR_OBJECTS_PER_FILE_BYTE * size + CIFAR_MEMORY_SLACK
    if estimate > limit:
        raise ValueError(
            f"The workbench refuses to load CIFAR-10 file {path}: unpickling its {size:,} bytes "
            f"could build about {estimate:,} bytes of objects, more than "
            f"{CIFAR_OBJECTS_PER_FILE_BYTE}x its size (+{CIFAR_MEMORY_SLACK / 2**20:g} MiB); a "
            "CIFAR-10 batch holds each image once. Nothing was read from it; delete it and get "
            "the official files again.")
    unpickler, budget = None, _MemoryBudget(size)
    token = _BUDGET.set(budget)
    try:
        with open(path, "rb") as f:
            unpickler = _CifarUnpickler(f)
            obj = unpickler.load()
    except OSError:
        raise
    # A malformed pickle can fail with almost any exception type; all mean a damaged file.
    except Exception as exc:
        if unpickler is not None and unpickler.refused:
            raise ValueError(
                f"The workbench refuses to load CIFAR-10 file {path}: it references "
                f"`{unpickler.refused}`, which a CIFAR-10 batch never contains (nothing in it was "
                "run). Delete it and get the official files again.") from None
        if budget.refused:
            raise ValueError(
                f"The workbench refuses to load CIFAR-10 file {path}: {budget.refused}; a "
                "CIFAR-10 batch holds each image once (reading stopped there). Delete it and get "
                "the official files again.") from None
        raise ValueError(f"CIFAR-10 file {path} is not a readable pickle ({type(exc).__name__}: "
                         f"{exc}); delete it and get the official files again.") from exc
    finally:
        _BUDGET.reset(token)
    del unpickler  # its memo holds every object it built
    if not isinstance(obj, dict):
        raise ValueError(f"CIFAR-10 file {path} must hold a dict; got {type(obj).__name__}.")
    return {(k.decode("latin1") if isinstance(k, bytes) else k):
            (v.view(np.ndarray) if isinstance(v, _CifarArray) else v) for k, v in obj.items()}


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return "nothing" if value is None else type(value).__name__


def _read_cifar_batch(path: Path, prescan: bool = True) -> tuple[np.ndarray, list[int]]:
    """Images (N, 3072) uint8 and labels of one batch, checked against the format on the site."""
    batch = _read_cifar_pickle(path, prescan)
    data, labels = batch.get("data"), batch.get("labels")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[0] >= 1 and data.shape[1] == CIFAR10_IMAGE_BYTES):
        raise ValueError(f"CIFAR-10 batch {path}: `data` must be a uint8 array of shape "
                         f"(N, {CIFAR10_IMAGE_BYTES}) with N >= 1; got {_describe(data)}.")
    if not isinstance(labels, list) or any(type(v) is not int for v in labels):
        raise ValueError(f"CIFAR-10 batch {path}: `labels` must be a list of ints; "
                         f"got {_describe(labels)}.")
    if len(labels) != len(data):
        raise ValueError(f"CIFAR-10 batch {path}: `labels` must hold one label per image "
                         f"({len(data)}); got {len(labels)}.")
    bad = [v for v in labels if not 0 <= v < len(CIFAR10_CLASSES)]
    if bad:
        raise ValueError(f"CIFAR-10 batch {path}: labels must be in [0, 9]; got {bad[0]} "
                         f"({len(bad)} out of range).")
    return data, labels


def _read_cifar_meta(path: Path, prescan: bool = True) -> tuple[str, ...]:
    names = _read_cifar_pickle(path, prescan).get("label_names")
    if isinstance(names, list):
        names = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
    if (not isinstance(names, list) or len(names) != len(CIFAR10_CLASSES)
            or not all(isinstance(n, str) for n in names)):
        raise ValueError(f"CIFAR-10 file {path}: `label_names` must be a list of "
                         f"{len(CIFAR10_CLASSES)} strings; got {names!r:.200}.")
    return tuple(names)


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)  # a published checksum, compared; not a secret
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_cifar_checksums(base: Path) -> None:
    wrong = [(base / f, want, got) for f, want in
             CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES + (CIFAR10_META_FILE,)
             if (got := _md5(base / f)) != want]
    if wrong:
        path, want, got = wrong[0]
        more = f" ({len(wrong) - 1} more files differ too)" if len(wrong) > 1 else ""
        raise ValueError(
            f"CIFAR-10 file {path} has MD5 {got}, not the published {want}{more}: it is not the "
            f"official file (damaged, or built locally). Delete {base} and load again with "
            "download=True; or, for batches you built yourself, pass verify_checksums=False "
            "(they are still read without running anything from them).")


def _load_cifar10(root: Path, download: bool | None, verify_checksums: bool = True) -> Dataset:
    base = root / CIFAR10_DIR
    names = [f for f, _ in CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES + (CIFAR10_META_FILE,)]
    how = ("Run once online with download=True, or unpack cifar-10-python.tar.gz into "
           f"{root}.")
    if not all((base / f).is_file() for f in names):
        if not _try_download(download):
            raise _missing("cifar10", root, how)
        from torchvision.datasets import CIFAR10
        from torchvision.datasets import utils as tv_utils

        try:  # torchvision's download: fetches the archive, checks its published MD5, unpacks it
            tv_utils.download_and_extract_archive(CIFAR10.url, str(root),
                                                  filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
        except Exception as exc:  # network errors come in many types
            raise _missing("cifar10", root, how) from exc
        if not all((base / f).is_file() for f in names):
            raise _missing("cifar10", root, how)
    if verify_checksums:
        _check_cifar_checksums(base)

    def split(files):
        parts = [_read_cifar_batch(base / f, prescan=not verify_checksums) for f, _ in files]
        # row = 1024 red, 1024 green, 1024 blue values, each 32x32 in row-major order
        x = torch.from_numpy(np.concatenate([d for d, _ in parts]))
        x = x.reshape(-1, 3, 32, 32).float().div_(255.0)
        return x, torch.tensor([v for _, ys in parts for v in ys], dtype=torch.int64)

    x_train, y_train = split(CIFAR10_TRAIN_FILES)
    x_test, y_test = split(CIFAR10_TEST_FILES)
    classes = _read_cifar_meta(base / CIFAR10_META_FILE[0], prescan=not verify_checksums)
    return Dataset("cifar10", x_train, y_train, x_test, y_test, classes,
                   {"source": "CIFAR-10 python batches, https://www.cs.toronto.edu/~kriz/cifar.html",
                    "root": str(root), "checksums_verified": verify_checksums})


# --- GTSRB ---------------------------------------------------------------------------------------

GTSRB_SIZE = 32  # images come in many sizes; resized to 32x32 like CIFAR-10
GTSRB_CLASSES = 43


def _gtsrb_class():
    """torchvision's GTSRB reading PPM images inside its own image folders only.

    torchvision opens each image with `PIL.Image.open`, which goes by the file's content, not its
    name: a PostScript file named 00000.ppm would go to Ghostscript, an interpreter (with a
    history of sandbox escapes). GTSRB ships PPM only, so nothing else is decoded. The final-test
    CSV names its images; a name that leaves the image folder ("../...", "/...") is refused.
    """
    from PIL import Image, UnidentifiedImageError
    from torchvision.datasets import GTSRB

    class _GTSRB(GTSRB):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            folder = Path(self._target_folder)
            # training images come from walking the class folders; test images from the CSV
            for path, _ in self._samples if self._split == "test" else ():
                p = Path(path)
                if p.parent != folder or p.name in ("", ".", ".."):
                    raise ValueError(f"GTSRB: {self._base_folder / 'GT-final_test.csv'} names "
                                     f"an image outside {folder}: {path!r}.")

        def __getitem__(self, index: int):
            path, target = self._samples[index]
            try:
                with Image.open(path, formats=["PPM"]) as img:
                    sample = img.convert("RGB")
            except UnidentifiedImageError:
                raise ValueError(f"GTSRB image {path} is not a PPM image; GTSRB ships PPM only, "
                                 "and no other format is decoded.") from None
            if self.transform is not None:
                sample = self.transform(sample)
            if self.target_transform is not None:
                target = self.target_transform(target)
            return sample, target

    return _GTSRB


def _load_gtsrb(root: Path, download: bool | None) -> Dataset:
    from torchvision import transforms

    GTSRB = _gtsrb_class()
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


def as_dataset(data) -> Dataset:
    """`data` itself when it is a Dataset, the dataset of that name when it is a name (loaded by
    `load_dataset`); anything else is a TypeError naming the parameter `data`."""
    if isinstance(data, str):
        check_choice("data", data, DATASETS)
        return load_dataset(data)
    if not isinstance(data, Dataset):
        raise TypeError(f"`data` must be a workbench Dataset or a dataset name; got "
                        f"{type(data).__name__}.")
    return data
