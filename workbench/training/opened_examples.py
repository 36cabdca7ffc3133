"""Material for trying `open_model` offline: a colour dataset made from a seed, and BackdoorBench's
record format written from any model.

    shapes = coloured_shapes(n_train=1200, n_test=200, seed=0)  # a workbench Dataset, 32x32 RGB
    path = write_backdoorbench_record(folder, model, x_test, y_test, triggered, target=0,
                                      model_name="resnet18", clean_data="coloured-shapes")
    run = open_model(path, (x_test, y_test), preprocess=(mean, std))

`coloured_shapes` stands in for a user's own colour data (notebook 09, the tests): one filled
shape per image (a square, a disc, a triangle or a cross: the class) in a random bright colour,
at a random place and size, on a random dark background with pixel noise. The colour carries no
information about the class; the shape does. Nothing is downloaded and the same seed gives the
same images on every machine (numpy's PCG64 generator, float64 arithmetic, rounded to uint8).

`write_backdoorbench_record` writes what BackdoorBench's `save_attack_result` writes
(github.com/SCLBD/BackdoorBench, `utils/save_load_attack.py` and `utils/bd_dataset_v2.py`):
`<folder>/attack_result.pt` and, for version 2, the backdoored test images as PNG files in
`<folder>/bd_test_dataset/<true label>/<test index>.png`. It is how the tests and notebook 09
make a file in that format without BackdoorBench; a record written by BackdoorBench itself opens
the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..attacks.triggers import FunctionTrigger, Trigger
from ..base._validate import check_choice, check_int, check_seed
from ..base.checkpoints import infer_num_classes
from ..base.data import Dataset
from .opened import as_images, as_labels

SHAPES = ("square", "disc", "triangle", "cross")


# --- a colour dataset ---------------------------------------------------------------------------

def _shape_mask(kind: int, size: int, cy: float, cx: float, r: float) -> np.ndarray:
    """(size, size) bool: a filled shape of half-width `r` centred at (cy, cx)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dy, dx = yy - cy, xx - cx
    if kind == 0:  # square
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if kind == 1:  # disc
        return dy ** 2 + dx ** 2 <= r ** 2
    if kind == 2:  # triangle, apex up: below the two slanted sides, above the base
        return (dy <= r * 0.8) & (2 * np.abs(dx) - r <= dy + 0.2 * r)
    arm = max(r * 0.35, 1.0)  # cross (a plus sign)
    return ((np.abs(dy) <= arm) & (np.abs(dx) <= r)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= r))


def _draw(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    n = len(labels)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        background = rng.uniform(0.0, 0.45, 3)
        hue = rng.uniform(0, 1)  # a bright, saturated colour (HSV with S, V near 1)
        fg = np.clip(np.abs((hue * 6 + np.array([0, 4, 2])) % 6 - 3) - 1, 0, 1)
        fg = 0.55 + 0.45 * fg * rng.uniform(0.8, 1.0)
        r = rng.uniform(0.22, 0.36) * size
        cy, cx = rng.uniform(r + 1, size - r - 1, 2)
        mask = _shape_mask(int(labels[i]), size, cy, cx, r)
        img = np.where(mask[..., None], fg, background)
        img = img + rng.normal(0.0, 0.04, img.shape)
        out[i] = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return out


def coloured_shapes(n_train: int = 1200, n_test: int = 200, size: int = 32,
                    seed: int = 0) -> Dataset:
    """A small colour dataset made offline: `size`×`size` RGB images of one filled shape each
    (class = shape: SHAPES), random bright colour, place and size on a random dark background with
    Gaussian pixel noise (σ 0.04), as a workbench Dataset (images float32 in [0, 1], (N, 3, H, W);
    classes balanced, in random order). The training and test images come from independent
    streams of `seed` (numpy's SeedSequence), so n_test does not change the training images.

    Not a benchmark: a stand-in for a user's own colour data, to train a model outside the
    workbench in seconds and open it with `open_model`.
    """
    n_train = check_int("n_train", n_train, low=1)
    n_test = check_int("n_test", n_test, low=1)
    size = check_int("size", size, low=8)
    seed = check_seed("seed", seed, generator=False)
    k = len(SHAPES)
    train_ss, test_ss = np.random.SeedSequence(seed).spawn(2)
    splits = []
    for ss, n in ((train_ss, n_train), (test_ss, n_test)):
        rng = np.random.default_rng(ss)
        y = rng.permutation(np.arange(n) % k)
        x = _draw(rng, y, size)
        splits.append((torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255.0).contiguous(),
                       torch.from_numpy(y.astype(np.int64))))
    (x_train, y_train), (x_test, y_test) = splits
    return Dataset("coloured-shapes", x_train, y_train, x_test, y_test, SHAPES,
                   {"source": f"workbench.training.opened_examples.coloured_shapes(seed={seed})",
                    "size": size, "seed": seed})


# --- BackdoorBench's record ---------------------------------------------------------------------

def _state_of(model) -> dict:
    if isinstance(model, nn.Module):
        if isinstance(model, torch.jit.ScriptModule):
            raise TypeError("`model` must be a Python nn.Module or a state dict: BackdoorBench "
                            "records hold a state dict; got a TorchScript module.")
        state = model.state_dict()
    elif isinstance(model, dict) and model and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        state = model
    else:
        raise TypeError("`model` must be an nn.Module or a state dict (names -> tensors); got "
                        f"{type(model).__name__}.")
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (N, H, W, C) uint8, rounded (what a PNG holds)."""
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_backdoorbench_record(folder: str | os.PathLike, model, x_test, y_test, trigger,
                               target: int | str = 0, *, model_name: str = "preactresnet18",
                               clean_data: str = "cifar10", data_path: str | None = None,
                               num_classes: int | None = None, version: int = 2,
                               state_prefix: str = "", pickled_images: bool = False) -> Path:
    """Write an attack record in BackdoorBench's format: `folder/attack_result.pt` and (version
    2) `folder/bd_test_dataset/<true label>/<test index>.png`. Returns the path of
    attack_result.pt, which `open_model(path, (x_test, y_test))` opens.

    folder: the record folder (BackdoorBench's `record/<save_folder_name>`), created if missing;
        one that already holds an attack_result.pt is refused (nothing is overwritten).
    model: the backdoored model (its state dict is written) or a state dict; it must be one
        BackdoorBench's `generate_cls_model` builds as `model_name` ("preactresnet18": the
        workbench's `preact_resnet18`; "resnet18", "resnet34", "resnet50": torchvision's
        constructors unmodified), or `open_model` needs `architecture=`.
    x_test, y_test: the clean test split, in the order BackdoorBench's dataset has it (images as
        `open_model` takes them: uint8 or floats in [0, 1], any layout it reads).
    trigger: a workbench Trigger or a function on (N, C, H, W) batches in [0, 1], applied to the
        backdoored test images, or a tensor/array of triggered twins of every test image.
    target: the attacker's class (all-to-one: every test image of another class is backdoored,
        labelled `target`) or "all-to-all" (every test image, labelled (y + 1) mod K).
    model_name, clean_data, data_path: what the record says of the model and the dataset;
        BackdoorBench normalises inputs with its dataset's mean and std (`open_model` applies
        them for the datasets it lists, and needs `preprocess=` for any other `clean_data`).
    num_classes: default the rows of the state dict's last 2-D weight.
    version: 2 (BackdoorBench 2's default: backdoored images as PNG files, index arrays in the
        file) or 1 (images as uint8 arrays inside the file).
    state_prefix: put before every weight's name ("module." as nn.DataParallel saves).
    pickled_images: version 2 with `save_folder_path=None`, the images pickled into the file as
        PIL images; `open_model` refuses such files (only a full unpickler, which runs whatever a
        file names, builds them). For tests of that refusal.

    Differences from BackdoorBench's files: `bd_train` is None (the training set's poisoning is
    not recorded; `open_model` does not read it), and images are rounded to uint8 as its PNGs
    are, but from images given here rather than by its poisoning transforms.
    """
    folder = Path(folder)
    state = _state_of(model)
    x, _ = as_images("x_test", x_test)
    y = as_labels("y_test", y_test, len(x))
    version = check_choice("version", version, (1, 2))
    for name, v in (("model_name", model_name), ("clean_data", clean_data),
                    ("state_prefix", state_prefix)):
        if not isinstance(v, str):
            raise TypeError(f"`{name}` must be a str; got {v!r}.")
    if data_path is not None and not isinstance(data_path, str):
        raise TypeError(f"`data_path` must be None or a str; got {data_path!r}.")
    if not isinstance(pickled_images, bool):
        raise TypeError(f"`pickled_images` must be a bool; got {pickled_images!r}.")
    if pickled_images and version != 2:
        raise ValueError("`pickled_images` must be False for version 1 (its images are arrays).")
    k = infer_num_classes(state) if num_classes is None else check_int("num_classes",
                                                                         num_classes, low=2)
    if k is None:
        raise ValueError("`num_classes` must be given: the state dict has no 2-D output weight "
                         "to count the classes from.")
    if int(y.max()) >= k:
        raise ValueError(f"`y_test` must hold classes in [0, {k - 1}] (num_classes {k}); got "
                         f"{int(y.max())}.")
    if isinstance(target, str):
        check_choice("target", target, ("all-to-all",))
        idx = torch.arange(len(y))
        labels = (y + 1) % k
    else:
        target = check_int("target", target, 0, k - 1)
        idx = torch.nonzero(y != target).flatten()
        labels = torch.full((len(idx),), target, dtype=torch.int64)
    if not len(idx):
        raise ValueError(f"`y_test` must hold an image of a class other than the target {target}: "
                         "there is nothing to backdoor.")
    if isinstance(trigger, (torch.Tensor, np.ndarray)):
        twins, _ = as_images("trigger", trigger)
        if tuple(twins.shape) != tuple(x.shape):
            raise ValueError(f"`trigger` as images must hold one triggered twin per test image, of "
                             f"shape {tuple(x.shape)}; got {tuple(twins.shape)}.")
        triggered = twins[idx]
    elif isinstance(trigger, Trigger) or callable(trigger):
        fn = trigger if isinstance(trigger, Trigger) else FunctionTrigger(trigger)
        triggered = fn(x[idx])
    else:
        raise TypeError("`trigger` must be a workbench Trigger, a function on (N, C, H, W) image "
                        "batches in [0, 1], or a tensor/array of triggered test images; got "
                        f"{type(trigger).__name__}.")
    result = folder / "attack_result.pt"
    if result.exists():
        raise FileExistsError(f"`folder` {folder} already holds an attack_result.pt; give a new "
                              "record folder (nothing is overwritten).")

    bd_imgs = _to_uint8(triggered)  # (P, H, W, C) uint8
    y_np, idx_np, lab_np = y.numpy(), idx.numpy().astype(np.int64), labels.numpy()
    flags = np.zeros(len(y_np))
    flags[idx_np] = 1
    folder.mkdir(parents=True, exist_ok=True)
    rel = f"./record/{folder.name}/bd_test_dataset"  # relative to BackdoorBench's working folder
    c = x.shape[1]
    as_pil = (lambda a: Image.fromarray(a[..., 0], "L")) if c == 1 else Image.fromarray
    if version == 2:
        data_dict = {}
        for j, i in enumerate(idx_np):
            true, bd_label = int(y_np[i]), int(lab_np[j])
            if pickled_images:
                data_dict[np.int64(i)] = (as_pil(bd_imgs[j]), bd_label, true)
                continue
            sub = folder / "bd_test_dataset" / str(true)
            sub.mkdir(parents=True, exist_ok=True)
            as_pil(bd_imgs[j]).save(sub / f"{i}.png")
            data_dict[np.int64(i)] = {"path": f"{rel}/{true}/{i}.png",
                                      "other_info": [bd_label, true]}
        save_folder = None if pickled_images else rel
        bd_test = {"bd_data_container": {"save_folder_path": save_folder, "data_dict": data_dict,
                                         "save_file_format": ".png"},
                   "getitem_all": True, "getitem_all_switch": False,
                   "original_index_array": idx_np, "poison_indicator": flags,
                   "save_folder_path": save_folder}
    else:
        bd_test = {"x": bd_imgs, "y": lab_np.astype(np.int64),
                   "original_index": np.arange(len(y_np)), "poison_indicator": flags,
                   "original_targets": y_np.astype(np.int64)}
    state = {f"{state_prefix}{name}": v for name, v in state.items()}
    h, w = x.shape[2:]
    torch.save({"model_name": model_name, "num_classes": int(k), "model": state,
                "data_path": data_path if data_path is not None else f"./data/{clean_data}",
                "img_size": [int(h), int(w), int(c)], "clean_data": clean_data,
                "bd_train": None, "bd_test": bd_test}, result)
    return result


__all__ = ["SHAPES", "coloured_shapes", "write_backdoorbench_record"]
