"""Models from files written elsewhere, opened without running code from them.

Three formats, each checked before anything is returned (a bad file raises `CheckpointError`, a
ValueError naming the file and what was expected):

    state dict      a file written by `torch.save(model.state_dict(), path)` (or a dict holding
                    one under "state_dict", "model_state_dict", "model", "net" or "weights", as
                    training scripts save checkpoints), plus an architecture by name (below) or
                    an `nn.Module` of the right architecture (copied; the caller's is unchanged).
                    Read with `torch.load(weights_only=True)`, PyTorch's restricted unpickler: a
                    file that asks for any Python object other than tensors, containers, numbers,
                    strings and numpy arrays is refused, naming what it asks for, and nothing in it
                    runs. The weights' names, shapes and finiteness are checked against the
                    architecture: every missing and unexpected name and every shape mismatch is
                    listed. A "module." prefix on every name (nn.DataParallel) is removed.
    TorchScript     a file written by `torch.jit.save` (`torch.jit.load`). A TorchScript file is a
                    program: PyTorch's security policy says to treat it "the same way as locally
                    executable code from an unknown source" (its code runs in TorchScript's
                    interpreter on load and in every forward). It is opened only with `trust=True`.
    BackdoorBench   `attack_result.pt` of BackdoorBench's attack scripts (github.com/SCLBD/
                    BackdoorBench, `utils/save_load_attack.py`): a dict with `model_name`,
                    `num_classes`, `model` (the state dict), `data_path`, `img_size` ([H, W, C]),
                    `clean_data` (the dataset's name), `bd_train` and `bd_test`. Version 2 keeps
                    the backdoored test set as an index (`original_index_array`,
                    `poison_indicator`) and PNG files in the folder `bd_test_dataset/<true
                    label>/<test index>.png` beside the file, each entry of `data_dict` holding
                    {"path", "other_info": [backdoor label, true label]}; version 1 keeps it as
                    arrays (`x`, `y`, `original_index`, `original_targets`, `poison_indicator`).
                    Read with `weights_only=True` and numpy's array and scalar constructors allowed
                    (the index arrays are numpy). A file holding pickled PIL images (BackdoorBench
                    1's default, and version 2 run with `save_folder_path=None`) is refused: only
                    a full unpickler builds them, and a full unpickler runs whatever a file names.
                    The PNGs are decoded as PNG only (Pillow picks a decoder by content: a file
                    named .png could otherwise reach another decoder).

Architectures by name (`build_architecture`):

    the workbench's zoo  `workbench.models.MODELS` ("small-cnn", "resnet18", ...), built for the
                         data's channels, classes and image size. The zoo's "resnet18" is
                         torchvision's ResNet-18 adapted to 32x32 images the usual way for CIFAR
                         (conv1 a 3x3 stride-1 convolution, maxpool an Identity): a torchvision
                         ResNet-18 adapted that way by your own code has the same names and shapes
                         and loads as "resnet18".
    "preactresnet18"     BackdoorBench's PreAct-ResNet-18 (`workbench.base.preact_resnet`).
    "torchvision:NAME"   `torchvision.models.NAME(weights=None, num_classes=K)`, unmodified (the
                         ImageNet stem: a 7x7 stride-2 convolution and a max-pool), as BackdoorBench
                         builds "resnet18", "resnet34" and "resnet50". NAME is any classification
                         model torchvision lists.

A state dict cannot tell layers without parameters apart: a ResNet-18 whose conv1 was adapted
but whose max-pool was kept loads into the zoo's "resnet18" with every name and shape right, and
computes something else. `workbench.training.opened.open_model` measures clean accuracy on open
and warns when it is near chance, which is how such a mistake shows.

Opening files from elsewhere needs torch >= 2.6: `weights_only=True` could run code on torch up
to 2.5.1 (CVE-2025-32434). Older versions are refused here.
"""

from __future__ import annotations

import copy
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import torch
import torchvision
import torchvision.models as tv_models
from PIL import Image, UnidentifiedImageError
from torch import nn

from ._validate import check_int
from .models import MODELS, build_model
from .preact_resnet import preact_resnet18

try:  # numpy >= 2 moved numpy.core to numpy._core
    from numpy._core import multiarray as _np_multiarray
except ImportError:  # pragma: no cover - numpy < 2
    from numpy.core import multiarray as _np_multiarray

TORCHVISION_PREFIX = "torchvision:"
OWN_ARCHITECTURES = ("preactresnet18",)
# keys under which training scripts commonly keep the state dict inside a checkpoint dict
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
BACKDOORBENCH_KEYS = ("model_name", "num_classes", "model", "data_path", "img_size", "clean_data",
                      "bd_train", "bd_test")
# BackdoorBench's `generate_cls_model` names this loader builds, and what it builds for each
BACKDOORBENCH_MODELS = {"preactresnet18": "preactresnet18", "resnet18": "torchvision:resnet18",
                        "resnet34": "torchvision:resnet34", "resnet50": "torchvision:resnet50"}
# BackdoorBench's `get_dataset_normalization` (utils/aggregate_block/
# dataset_and_transform_generate.py): its models take (x - mean) / std of images in [0, 1]
BACKDOORBENCH_NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.5,), (0.5,)),
    "tiny": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
    "gtsrb": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "celeba": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
MIN_TORCH = (2, 6)  # weights_only=True could run code up to 2.5.1 (CVE-2025-32434)


class CheckpointError(ValueError):
    """A model file is damaged, in an unexpected format, or does not fit the architecture."""


@dataclass(frozen=True)
class LoadedModel:
    """A model read from a file, in eval mode on the CPU."""

    model: nn.Module
    format: str  # "state dict" or "torchscript"
    architecture: str  # the architecture's name ("torchscript" for a TorchScript file)
    path: str  # the file it came from
    info: dict = field(default_factory=dict)  # how it was read: checkpoint key, prefix removed


@dataclass(frozen=True)
class BackdoorBenchResult:
    """BackdoorBench's `attack_result.pt`: its model and backdoored test set."""

    model: nn.Module  # in eval mode on the CPU; takes normalised inputs (see `normalization`)
    model_name: str  # BackdoorBench's name ("preactresnet18", ...)
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W), from the file's img_size [H, W, C]
    clean_data: str  # the dataset's name in BackdoorBench ("cifar10", "gtsrb", ...)
    data_path: str  # where the attack read the clean data (on the machine that ran it)
    triggered: torch.Tensor  # (P, C, H, W) float32 in [0, 1]: the backdoored test images
    indices: torch.Tensor  # (P,) int64: each one's index into the clean test set
    targets: torch.Tensor  # (P,) int64: the label the attacker wants for each
    labels: torch.Tensor  # (P,) int64: each one's true label
    # the (mean, std) BackdoorBench normalises inputs with, None for a dataset it does not list
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None
    path: str
    version: int  # 2: index + PNG folder; 1: arrays in the file
    info: dict = field(default_factory=dict)


# --- reading files ------------------------------------------------------------------------------

def check_torch_version() -> None:
    """Refuse to open files from elsewhere on a torch whose restricted unpickler is not safe."""
    parts = []
    for p in torch.__version__.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    if tuple(parts) < MIN_TORCH:
        raise RuntimeError(f"Opening model files from elsewhere needs torch >= "
                           f"{MIN_TORCH[0]}.{MIN_TORCH[1]}: torch.load(weights_only=True) could run "
                           f"code from a crafted file up to torch 2.5.1 (CVE-2025-32434); this is "
                           f"torch {torch.__version__}. Upgrade torch.")


def _check_path(name: str, path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{name}` must be a str or os.PathLike file; got {type(path).__name__}.")
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"`{name}` {path} is a folder; a model file was expected (for a run "
                              "saved by the workbench, use workbench.load_run(path)).")
    if not path.is_file():
        raise FileNotFoundError(f"`{name}` {path} does not exist.")
    return path


def is_torchscript(path: str | os.PathLike) -> bool:
    """Whether `path` is a TorchScript archive (a zip holding `code/` or `constants.pkl`; a
    `torch.save` zip holds `data.pkl` and `data/` only). Reads the zip's directory, nothing else."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n or n.endswith("/constants.pkl") for n in names)


def _numpy_globals() -> list:
    """The numpy constructors a file may use to build arrays, dtypes and scalars (under both of
    their module names: numpy 1 wrote `numpy.core`, numpy 2 writes `numpy._core`). They build
    numbers only; object arrays' elements are unpickled by the same restricted unpickler."""
    multiarray = _np_multiarray
    out = [np.ndarray, np.dtype]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out += [(multiarray._reconstruct, f"{mod}._reconstruct"),
                (multiarray.scalar, f"{mod}.scalar")]
    # numpy >= 1.25 pickles a dtype through its class (numpy.dtypes.Int64DType, ...)
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")
                and isinstance(getattr(dtypes, n), type)]
    return out


def _global_names(objs) -> set[str]:
    names = set()
    for o in objs:
        if isinstance(o, tuple):
            names.add(o[1])
        else:
            names.add(f"{o.__module__}.{o.__qualname__}")
    return names


def _unsafe_globals(path: Path, allowed) -> list[str]:
    """The Python objects the pickle of `path` names beyond `allowed` (read from its opcodes:
    nothing is built, nothing runs); empty where torch cannot tell."""
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if finder is None:
        return []
    try:
        found = finder(str(path))
    except Exception:  # noqa: BLE001 - a legacy or damaged file: the caller's message stands
        return []
    ok = _global_names(allowed)
    return sorted(g for g in found if g not in ok)


def read_checkpoint(path: str | os.PathLike, *, numpy: bool = True):
    """The object saved in `path` by `torch.save`, read with `torch.load(weights_only=True)` on
    the CPU (numpy arrays and scalars allowed with `numpy`). A file that asks for any other Python
    object is refused with a `CheckpointError` naming what it asks for; nothing in it runs."""
    check_torch_version()
    path = _check_path("path", path)
    if is_torchscript(path):
        raise CheckpointError(f"{path} is a TorchScript archive (torch.jit.save), not a "
                              "torch.save file: open it with load_torchscript(path, trust=True).")
    allowed = _numpy_globals() if numpy else []
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        bad = _unsafe_globals(path, allowed)
        if not bad and "Unsupported global" not in str(exc) and "GLOBAL" not in str(exc):
            raise CheckpointError(f"{path} is not a readable torch.save file "
                                  f"({_first_line(exc)}).") from None
        raise CheckpointError(_refusal(path, bad, exc)) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, KeyError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise CheckpointError(f"{path} is not a readable torch.save file ({type(exc).__name__}: "
                              f"{_first_line(exc)}).") from None


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:  # torch's weights_only message: the line that names the global
        if "Unsupported global" in ln or "WeightsUnpickler error" in ln:
            return ln[:300]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _refusal(path: Path, bad: list[str], exc: BaseException) -> str:
    what = ", ".join(f"`{g}`" for g in bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6
                                                   else "") if bad else _first_line(exc)
    hint = ""
    if any(g.startswith("PIL.") for g in bad):
        hint = (" It holds pickled PIL images: BackdoorBench keeps its backdoored images so in "
                "version 1, and in version 2 when an attack runs with save_folder_path=None. "
                "Re-run the attack with BackdoorBench 2's default (images saved as PNG files beside "
                "attack_result.pt), or convert the images to uint8 arrays in a trusted session.")
    elif any(g.startswith("torch.nn.modules.") for g in bad):
        hint = (" A whole model saved with torch.save(model) is pickled Python objects: save "
                "model.state_dict() instead (and name its architecture), or save it with "
                "torch.jit.save.")
    elif bad and not any(g.startswith(("builtins.", "os.", "posix.", "subprocess.", "nt."))
                         for g in bad):
        hint = (" A checkpoint that keeps other Python objects beside the weights (training "
                "arguments, an optimizer's class) cannot be read without a full unpickler: save the "
                "state dict alone, torch.save(model.state_dict(), path).")
    return (f"The workbench refuses to open {path}: its pickle asks for {what}, Python objects "
            "that only a full unpickler builds, and a full unpickler runs whatever code a file "
            "names. Nothing in it was run. Expected a file of tensors (a state dict), numbers, "
            f"strings, containers and numpy arrays.{hint}")


# --- architectures ------------------------------------------------------------------------------

def torchvision_architectures() -> tuple[str, ...]:
    """The classification models torchvision lists, as "torchvision:NAME"."""
    return tuple(TORCHVISION_PREFIX + n for n in tv_models.list_models(module=tv_models))


def build_architecture(name: str, image_shape, num_classes: int) -> nn.Module:
    """A fresh model of architecture `name` (see the module docstring) for images of
    `image_shape` (C, H, W) and `num_classes` classes."""
    if not isinstance(name, str):
        raise TypeError(f"`architecture` must be a name (one of the workbench's "
                        f"{', '.join(map(repr, MODELS + OWN_ARCHITECTURES))}, or "
                        f"'torchvision:NAME') or an nn.Module; got {type(name).__name__}.")
    c, h, w = _check_image_shape(image_shape)
    k = check_int("num_classes", num_classes, low=2)
    if name in MODELS:
        return build_model(name, c, k, (h, w))
    if name == "preactresnet18":
        return preact_resnet18(k, c)
    if name.startswith(TORCHVISION_PREFIX):
        tv = name[len(TORCHVISION_PREFIX):]
        if name not in torchvision_architectures():
            raise ValueError(f"`architecture` {name!r} names no classification model of "
                             f"torchvision {torchvision.__version__} (see "
                             "torchvision.models.list_models(); e.g. 'torchvision:resnet18').")
        return tv_models.get_model(tv, weights=None, num_classes=k)
    allowed = ", ".join(repr(n) for n in MODELS + OWN_ARCHITECTURES)
    raise ValueError(f"`architecture` must be one of {allowed} or 'torchvision:NAME' (a "
                     f"torchvision classification model); got {name!r}.")


def _check_image_shape(image_shape) -> tuple[int, int, int]:
    allowed = "a (C, H, W) triple of ints >= 1"
    if not isinstance(image_shape, (tuple, list)) or len(image_shape) != 3 or not all(
            isinstance(s, Integral) and not isinstance(s, bool) for s in image_shape):
        raise TypeError(f"`image_shape` must be {allowed}; got {image_shape!r}.")
    if min(image_shape) < 1:
        raise ValueError(f"`image_shape` must be {allowed}; got {tuple(image_shape)!r}.")
    return int(image_shape[0]), int(image_shape[1]), int(image_shape[2])


def infer_num_classes(state: dict) -> int | None:
    """The number of classes a state dict's output layer gives: rows of its last 2-D weight (the
    final Linear of every architecture above); None where it has none."""
    for name in reversed(list(state)):
        v = state[name]
        if name.endswith("weight") and isinstance(v, torch.Tensor) and v.ndim == 2:
            return int(v.shape[0])
    return None


# --- state dicts --------------------------------------------------------------------------------

def _is_state(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _describe(obj) -> str:
    if isinstance(obj, dict):
        keys = list(obj)
        shown = ", ".join(repr(k) for k in keys[:8]) + (", ..." if len(keys) > 8 else "")
        return f"a dict with keys {shown}"
    return f"a {type(obj).__name__}"


def extract_state_dict(obj, path: Path) -> tuple[dict, dict]:
    """(state dict, how it was found) from what a checkpoint file holds: the state dict itself
    or one under a usual key (STATE_DICT_KEYS); a "module." prefix on every name is removed."""
    info: dict = {}
    if _is_state(obj):
        state = obj
    else:
        key = next((k for k in STATE_DICT_KEYS if isinstance(obj, dict) and _is_state(obj.get(k))),
                   None)
        if key is None:
            raise CheckpointError(f"{path} holds {_describe(obj)}; expected a state dict (names -> "
                                  "tensors, as torch.save(model.state_dict(), path) writes) or a "
                                  f"dict holding one under {', '.join(map(repr, STATE_DICT_KEYS))}.")
        state, info["checkpoint_key"] = obj[key], key
    if all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
        info["removed_prefix"] = "module."
    return state, info


def check_state_dict(path, state: dict, model: nn.Module, architecture: str) -> None:
    """`state` holds exactly `model`'s weights (names and shapes), all finite; otherwise a
    CheckpointError naming the file, the architecture, and every missing and unexpected name and
    every shape mismatch (the first 8 of each, with their counts)."""
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [f"{k}: file {tuple(state[k].shape)}, architecture {tuple(want[k].shape)}"
              for k in want if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected),
                             ("shape mismatches", shapes)):
            if items:
                more = f", ... ({len(items)} in all)" if len(items) > 8 else ""
                parts.append(f"{label}: {'; '.join(items[:8])}{more}")
        raise CheckpointError(f"{path} does not hold the weights of architecture {architecture!r} "
                              f"({len(state)} tensors in the file, {len(want)} in the "
                              f"architecture). {' | '.join(parts)}. Name the architecture the "
                              "weights were trained with.")
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{path}: weight {k!r} holds NaN or infinite values.")


def _fill(path, state: dict, model: nn.Module, architecture: str) -> nn.Module:
    check_state_dict(path, state, model, architecture)
    model.load_state_dict(state)  # copies into the model's own tensors
    return model.eval()


def _architecture_model(architecture, image_shape, num_classes) -> tuple[nn.Module, str]:
    if isinstance(architecture, nn.Module):  # the caller's model is never filled: a copy is
        if isinstance(architecture, torch.jit.ScriptModule):
            raise TypeError("`architecture` must be a name or a Python nn.Module (a TorchScript "
                            "module carries its own weights: open it as it is); got a "
                            "ScriptModule.")
        return copy.deepcopy(architecture).cpu(), type(architecture).__name__
    if image_shape is None:
        raise ValueError(f"`image_shape` must be given with architecture {architecture!r} (the "
                         "data's (C, H, W): layers are built for it); got None.")
    return build_architecture(architecture, image_shape, num_classes), architecture


def load_state_dict_file(path: str | os.PathLike, architecture: str | nn.Module,
                         image_shape=None, num_classes: int | None = None, *,
                         content=None) -> LoadedModel:
    """The model of `architecture` (a name, see the module docstring, or an nn.Module, copied)
    with the weights of the state dict in `path`, checked (names, shapes, finite values) before
    they are loaded. image_shape: (C, H, W) of the images it takes (needed for a name);
    num_classes: None to read it off the file's output layer (`infer_num_classes`). content:
    what `read_checkpoint(path)` returned, if the caller has it already."""
    if architecture is None:
        raise ValueError(f"`architecture` must name the architecture of the weights in {path} "
                         f"(one of {', '.join(map(repr, MODELS + OWN_ARCHITECTURES))}, "
                         "'torchvision:NAME', or an nn.Module): a state dict holds weights only; "
                         "got None.")
    obj = read_checkpoint(path) if content is None else content
    path = Path(path)
    state, info = extract_state_dict(obj, path)
    if num_classes is None and not isinstance(architecture, nn.Module):
        num_classes = infer_num_classes(state)
        if num_classes is None or num_classes < 2:
            raise CheckpointError(f"{path}: its number of classes cannot be read off an output "
                                  "layer (no 2-D weight with at least 2 rows); pass num_classes.")
        info["num_classes_from"] = "the file's output layer"
    model, name = _architecture_model(architecture, image_shape, num_classes)
    return LoadedModel(_fill(path, state, model, name), "state dict", name, str(path), info)


# --- TorchScript --------------------------------------------------------------------------------

def load_torchscript(path: str | os.PathLike, *, trust: bool = False) -> LoadedModel:
    """The TorchScript module saved in `path` (torch.jit.save), on the CPU in eval mode.

    trust: must be True. A TorchScript file is a program: PyTorch's security policy asks to treat
    it "the same way as locally executable code from an unknown source" (its code runs in
    TorchScript's interpreter on load and in every forward, and introspection tools may run it
    too). Pass True for files whose maker you trust; for others, ask for the state dict."""
    if not isinstance(trust, bool):
        raise TypeError(f"`trust` must be a bool; got {trust!r}.")
    check_torch_version()
    path = _check_path("path", path)
    if not trust:
        raise CheckpointError(f"{path} is a TorchScript file, which is a program: opening it runs "
                              "the code it holds (PyTorch's security policy: treat it as locally "
                              "executable code from its maker). Pass trust=True (open_model: "
                              "trust_torchscript=True) if you trust who made it; otherwise ask "
                              "for its state dict, which opens without running anything.")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a TorchScript archive (not a zip file); expected a "
                              "file written by torch.jit.save.")
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad archive
        raise CheckpointError(f"{path} is not a readable TorchScript archive ({type(exc).__name__}: "
                              f"{_first_line(exc)}); expected a file written by torch.jit.save."
                              ) from None
    for k, v in model.state_dict().items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{path}: weight {k!r} holds NaN or infinite values.")
    return LoadedModel(model.eval(), "torchscript", "torchscript", str(path), {})


# --- BackdoorBench ------------------------------------------------------------------------------

def is_backdoorbench(obj) -> bool:
    """Whether a checkpoint's content is BackdoorBench's attack result (all its keys present)."""
    return isinstance(obj, dict) and all(k in obj for k in BACKDOORBENCH_KEYS)


def load_backdoorbench(path: str | os.PathLike, architecture: str | nn.Module | None = None,
                       *, content=None) -> BackdoorBenchResult:
    """BackdoorBench's `attack_result.pt` at `path`: its model (with the weights checked against
    the architecture) and its backdoored test images with their test-set indices, targets and
    true labels (see the module docstring for the format).

    architecture: None to build the file's `model_name` (one of BACKDOORBENCH_MODELS), or a name
        or nn.Module (copied) for another model. content: what `read_checkpoint(path)` returned,
        if the caller has it already.
    The model takes BackdoorBench's normalised inputs: `normalization` is the (mean, std) of the
    dataset it names (BACKDOORBENCH_NORMALIZATION), which `open_model` applies before it.
    """
    path = _check_path("path", path)
    obj = read_checkpoint(path) if content is None else content
    if not is_backdoorbench(obj):
        missing = [k for k in BACKDOORBENCH_KEYS if not (isinstance(obj, dict) and k in obj)]
        raise CheckpointError(f"{path} is not BackdoorBench's attack result: it lacks "
                              f"{', '.join(map(repr, missing))} (it holds {_describe(obj)}).")
    name, k = obj["model_name"], obj["num_classes"]
    if not isinstance(name, str):
        raise CheckpointError(f"{path}: `model_name` must be a string; got {name!r}.")
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 2:
        raise CheckpointError(f"{path}: `num_classes` must be an int >= 2; got {k!r}.")
    size = obj["img_size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 3 or not all(
            isinstance(s, Integral) and not isinstance(s, bool) and s >= 1 for s in size)):
        raise CheckpointError(f"{path}: `img_size` must be [height, width, channels]; got "
                              f"{size!r}.")
    shape = (int(size[2]), int(size[0]), int(size[1]))
    for key in ("clean_data", "data_path"):
        if not isinstance(obj[key], str):
            raise CheckpointError(f"{path}: `{key}` must be a string; got {obj[key]!r}.")
    if not _is_state(obj["model"]):
        raise CheckpointError(f"{path}: `model` must be a state dict (names -> tensors); got "
                              f"{_describe(obj['model'])}.")
    state, info = extract_state_dict(obj["model"], path)
    if architecture is None:
        if name not in BACKDOORBENCH_MODELS:
            raise CheckpointError(f"{path}: BackdoorBench model {name!r} is not one the workbench "
                                  f"builds ({', '.join(map(repr, BACKDOORBENCH_MODELS))}); pass "
                                  "`architecture` (a name or an nn.Module of that architecture).")
        architecture = BACKDOORBENCH_MODELS[name]
    model, arch = _architecture_model(architecture, shape, int(k))
    model = _fill(path, state, model, arch)
    bd = obj["bd_test"]
    if isinstance(bd, dict) and "bd_data_container" in bd:
        triggered, idx, targets, labels, bd_info = _bd_test_v2(path, bd, shape)
        version = 2
    elif isinstance(bd, dict) and "x" in bd:
        triggered, idx, targets, labels, bd_info = _bd_test_v1(path, bd, shape)
        version = 1
    else:
        raise CheckpointError(f"{path}: `bd_test` must be BackdoorBench's backdoored test set (a "
                              "dict with 'bd_data_container' (version 2) or 'x' (version 1)); got "
                              f"{_describe(bd)}.")
    if int(targets.max()) >= k or int(labels.max()) >= k or int(targets.min()) < 0 \
            or int(labels.min()) < 0:
        raise CheckpointError(f"{path}: the backdoored test set's labels must be classes in "
                              f"[0, {k - 1}].")
    extra = sorted(str(key) for key in obj if key not in BACKDOORBENCH_KEYS)
    return BackdoorBenchResult(model, name, int(k), shape, obj["clean_data"], obj["data_path"],
                               triggered, idx, targets, labels,
                               BACKDOORBENCH_NORMALIZATION.get(obj["clean_data"]), str(path),
                               version, {**info, **bd_info, "architecture": arch,
                                         "other_keys": extra})


def _as_int(path, what: str, v) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (Integral, np.integer)):
        raise CheckpointError(f"{path}: {what} must be an int; got {v!r}"[:300] + ".")
    return int(v)


def _int_array(path, what: str, v) -> np.ndarray:
    arr = np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer)
                             or np.issubdtype(arr.dtype, np.floating) and bool(
                                 np.all(arr == np.round(arr)))):
        raise CheckpointError(f"{path}: `bd_test.{what}` must be a 1-D array of integers; got "
                              f"{arr.dtype} of shape {arr.shape}.")
    return arr.astype(np.int64)


def _bd_test_v2(path: Path, bd: dict, shape) -> tuple:
    """Version 2: index arrays in the file, images in PNG files beside it."""
    cont = bd["bd_data_container"]
    if not isinstance(cont, dict) or not all(k in cont for k in ("data_dict", "save_folder_path",
                                                                  "save_file_format")):
        raise CheckpointError(f"{path}: `bd_test.bd_data_container` must hold 'data_dict', "
                              "'save_folder_path' and 'save_file_format'.")
    for key in ("original_index_array", "poison_indicator"):
        if key not in bd:
            raise CheckpointError(f"{path}: `bd_test` lacks {key!r}.")
    order = _int_array(path, "original_index_array", bd["original_index_array"])
    flags = _int_array(path, "poison_indicator", bd["poison_indicator"])
    if len(order) and (order.min() < 0 or order.max() >= len(flags)):
        raise CheckpointError(f"{path}: `bd_test.original_index_array` must index "
                              f"`poison_indicator` ({len(flags)} entries).")
    folder, fmt = cont["save_folder_path"], cont["save_file_format"]
    if not isinstance(folder, str):
        raise CheckpointError(f"{path}: the backdoored test images were kept inside the file "
                              "(save_folder_path=None), not as PNG files; expected BackdoorBench "
                              "2's default, PNG files in bd_test_dataset/ beside attack_result.pt.")
    if fmt != ".png":
        raise CheckpointError(f"{path}: `save_file_format` must be '.png' (the only format "
                              f"BackdoorBench writes, and the only one decoded here); got {fmt!r}.")
    entries = {}
    for key, v in cont["data_dict"].items():
        entries[_as_int(path, "a `data_dict` key", key)] = v
    base = path.parent / _last_part(path, folder)
    chosen = [int(i) for i in order if flags[i] == 1]
    if not chosen:
        raise CheckpointError(f"{path}: its backdoored test set is empty (no index of "
                              "`original_index_array` has poison_indicator 1).")
    images, targets, labels = [], [], []
    resized = 0
    for i in chosen:
        e = entries.get(i)
        if not (isinstance(e, dict) and isinstance(e.get("path"), str)
                and isinstance(e.get("other_info"), (list, tuple)) and len(e["other_info"]) >= 2):
            raise CheckpointError(f"{path}: `data_dict[{i}]` must be {{'path': str, 'other_info': "
                                  f"[backdoor label, true label]}}; got {e!r}"[:300] + ".")
        sub, fname = _tail(e["path"])
        if fname != f"{i}{fmt}" or sub in ("", ".", ".."):
            raise CheckpointError(f"{path}: `data_dict[{i}]['path']` must end in "
                                  f"<label>/{i}{fmt}; got {e['path']!r}.")
        img, was_resized = _read_png(base / sub / fname, shape, path, folder)
        resized += was_resized
        images.append(img)
        targets.append(_as_int(path, f"data_dict[{i}]'s backdoor label", e["other_info"][0]))
        labels.append(_as_int(path, f"data_dict[{i}]'s true label", e["other_info"][1]))
    x = torch.from_numpy(np.stack(images)).float().div_(255.0)  # (P, C, H, W)
    return (x, torch.tensor(chosen, dtype=torch.int64), torch.tensor(targets, dtype=torch.int64),
            torch.tensor(labels, dtype=torch.int64),
            {"images_folder": str(base), "images_resized": resized})


def _last_part(path: Path, folder: str) -> str:
    """The folder's own name, from a path written on any system."""
    name = PureWindowsPath(folder).name if "\\" in folder else PurePosixPath(folder).name
    if name in ("", ".", ".."):
        raise CheckpointError(f"{path}: `save_folder_path` must name a folder; got {folder!r}.")
    return name


def _tail(p: str) -> tuple[str, str]:
    parts = (PureWindowsPath(p) if "\\" in p else PurePosixPath(p)).parts
    return (parts[-2], parts[-1]) if len(parts) >= 2 else ("", parts[-1] if parts else "")


def _read_png(file: Path, shape, path: Path, folder: str) -> tuple[np.ndarray, bool]:
    """One backdoored image (C, H, W) uint8, decoded as PNG only, resized to (H, W) as
    BackdoorBench's test transform does (bilinear) when its size differs."""
    c, h, w = shape
    try:
        with Image.open(file, formats=["PNG"]) as im:
            im = im.convert("L" if c == 1 else "RGB")
            resized = im.size != (w, h)
            if resized:
                im = im.resize((w, h), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: backdoored test image {file} is missing. BackdoorBench "
                              f"saves them as PNG files in {file.parent.parent.name}/ beside "
                              f"attack_result.pt (it recorded {folder!r}); copy the whole record "
                              "folder.") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise CheckpointError(f"{path}: backdoored test image {file} is not a readable PNG "
                              f"({_first_line(exc)}); only PNG is decoded.") from None
    if c not in (1, 3):
        raise CheckpointError(f"{path}: `img_size` gives {c} channels; BackdoorBench's images have "
                              "1 or 3.")
    return (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)), resized


def _bd_test_v1(path: Path, bd: dict, shape) -> tuple:
    """Version 1: the backdoored images as arrays in the file (uint8 (H, W, C) each, or one
    array), their labels `y`, and the test-set indices: `original_index` of the same length, or
    of the whole test set with `poison_indicator` marking the backdoored ones."""
    x = bd["x"]
    if x is None:
        raise CheckpointError(f"{path}: `bd_test.x` is None: the file holds no backdoored test "
                              "images.")
    if isinstance(x, (list, tuple)):
        try:
            x = np.stack([v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for v in x])
        except ValueError:
            raise CheckpointError(f"{path}: `bd_test.x` must hold images of one shape.") from None
    x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    c, h, w = shape
    if x.ndim == 3 and c == 1:
        x = x[:, None]
    if x.ndim == 4 and x.shape[1:] == (h, w, c):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1:] != (c, h, w):
        raise CheckpointError(f"{path}: `bd_test.x` must hold images of shape ({h}, {w}, {c}) or "
                              f"({c}, {h}, {w}) (the file's img_size); got {x.shape}.")
    if x.dtype == np.uint8:
        xt = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)
    elif np.issubdtype(x.dtype, np.floating) and x.size and 0 <= x.min() and x.max() <= 1:
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    else:
        raise CheckpointError(f"{path}: `bd_test.x` must be uint8 or floats in [0, 1]; got "
                              f"{x.dtype}.")
    n = len(xt)
    y = _int_array(path, "y", bd.get("y"))
    index = _int_array(path, "original_index", bd.get("original_index"))
    flags = bd.get("poison_indicator")
    if len(index) != n:
        flags = None if flags is None else _int_array(path, "poison_indicator", flags)
        if flags is None or len(flags) != len(index) or int(flags.sum()) != n:
            raise CheckpointError(f"{path}: `bd_test.original_index` must give one index per "
                                  f"image ({n}), or one per test image with `poison_indicator` "
                                  f"marking the {n} backdoored ones.")
        keep = flags == 1
    else:
        keep = None
    labels = bd.get("original_targets")
    labels = None if labels is None else _int_array(path, "original_targets", labels)
    idx = index if keep is None else index[keep]
    if labels is not None and keep is not None and len(labels) == len(keep):
        labels = labels[keep]
    if len(y) != n or (labels is not None and len(labels) != n):
        raise CheckpointError(f"{path}: `bd_test.y` and `original_targets` must give one label "
                              f"per backdoored image ({n}).")
    if labels is None:
        raise CheckpointError(f"{path}: `bd_test.original_targets` is missing: the true labels "
                              "of the backdoored images are needed to pair them with the test set.")
    return (xt, torch.from_numpy(idx), torch.from_numpy(y), torch.from_numpy(labels), {})


# --- one entry point ----------------------------------------------------------------------------

def load_model_file(path: str | os.PathLike, architecture: str | nn.Module | None = None,
                    image_shape=None, num_classes: int | None = None, *,
                    trust_torchscript: bool = False) -> LoadedModel | BackdoorBenchResult:
    """Open a model file in whichever format it is: a TorchScript archive
    (`load_torchscript`, with `trust_torchscript`), BackdoorBench's attack result (recognised by
    its keys: `load_backdoorbench`), or a state dict (`load_state_dict_file`, with
    `architecture`)."""
    path = _check_path("model", path)
    if is_torchscript(path):
        if architecture is not None:
            raise ValueError(f"`architecture` must be None for TorchScript file {path} (it carries "
                             f"its own); got {architecture!r}.")
        return load_torchscript(path, trust=trust_torchscript)
    obj = read_checkpoint(path)
    if is_backdoorbench(obj):
        return load_backdoorbench(path, architecture, content=obj)
    if architecture is None:
        state, _ = extract_state_dict(obj, path)  # a clear error if it is no state dict either
        raise ValueError(f"`architecture` must name the architecture of the weights in {path} "
                         f"({len(state)} tensors, first {next(iter(state))!r}): one of "
                         f"{', '.join(map(repr, MODELS + OWN_ARCHITECTURES))}, 'torchvision:NAME', "
                         "or an nn.Module; a state dict holds weights only. Got None.")
    return load_state_dict_file(path, architecture, image_shape, num_classes, content=obj)


__all__ = ["BACKDOORBENCH_MODELS", "BACKDOORBENCH_NORMALIZATION", "BackdoorBenchResult",
           "CheckpointError", "LoadedModel", "build_architecture", "check_state_dict",
           "check_torch_version", "extract_state_dict", "infer_num_classes", "is_backdoorbench",
           "is_torchscript", "load_backdoorbench", "load_model_file", "load_state_dict_file",
           "load_torchscript", "read_checkpoint", "torchvision_architectures"]
