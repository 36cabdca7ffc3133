"""Training backdoored models, with cached runs and safe checkpoints.

A run is cached under `data/runs/<hash>/` by a hash of its full configuration: the dataset's
name and a SHA-256 fingerprint of its training and test tensors (`Dataset.fingerprint`, so two
folders holding different images under one name never share a run), `max_train`, the trigger,
rate, target, model, optimiser settings, seed, and the workbench's version and cache format.
Asking for the same configuration again loads it in well under a second. A cached run is trusted
only after `workbench.runstore`'s checks pass (its stored configuration equals the request, the
weights match their recorded checksum, the architecture's names and shapes, and are finite, the
metrics have their types); otherwise a warning names the folder and the reason, and the run is
retrained and replaces the entry. One process trains a configuration at a time: the others wait
on the entry's lock and then load what it saved. A checkpoint is a folder with `model.pt` (a state
dict read with `torch.load(weights_only=True)`, PyTorch's restricted unpickler, so a crafted file
cannot run code) and `run.json` (configuration, metrics, history, package versions).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from . import runstore
from ._validate import (check_choice, check_device, check_float, check_images, check_int,
                        check_labels, check_seed)
from .data import DATASETS, Dataset, data_dir, load_dataset
from .models import MODELS, build_model, default_device, preserve_model
from .poison import make_generator, poison_dataset
from .triggers import Patch, Trigger, trigger_from_config

# Bump when training code changes results, so old cached runs are not reused. 3: keys cover the
# data's fingerprint and the workbench version; run.json records the weights' checksum.
CACHE_FORMAT = 3

# Per-dataset defaults, chosen from measurements (benchmarks/RESULTS.md): enough epochs for clean
# accuracy and ASR to plateau on 2 CPU cores within the time budgets of the demo and notebooks.
DEFAULTS = {
    "digits": {"epochs": 30, "batch_size": 64, "lr": 2e-3},
    "fashion-mnist": {"epochs": 6, "batch_size": 128, "lr": 1e-3},
    "mnist": {"epochs": 4, "batch_size": 128, "lr": 1e-3},
    "cifar10": {"epochs": 20, "batch_size": 128, "lr": 1e-3},
    "gtsrb": {"epochs": 15, "batch_size": 128, "lr": 1e-3},
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained run (its hash is the cache key)."""

    dataset: str  # dataset name (see workbench.data.DATASETS)
    trigger: dict  # Trigger.to_config()
    rate: float  # fraction of the training set poisoned, in [0, 1]
    target: int  # attacker's target class
    model: str  # architecture name (see workbench.models.MODELS)
    epochs: int  # passes over the training set
    batch_size: int  # minibatch size
    lr: float  # Adam learning rate
    weight_decay: float  # Adam weight decay
    seed: int  # seeds model initialisation, poisoning choice and shuffling
    max_train: int | None = None  # train on the first max_train images only (None = all)
    data_fingerprint: str = ""  # Dataset.fingerprint: SHA-256 of the train/test tensors
    max_test: int | None = None  # the dataset's own truncation of its test split, if any
    workbench: str = ""  # workbench version that trained it
    cache_format: int = CACHE_FORMAT  # version of the training code's results

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def environment() -> dict:
    """Package versions and machine facts recorded with every result."""
    import numpy
    import torchvision

    from . import __version__

    return {"workbench": __version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads()}


@dataclass
class BackdoorRun:
    """A trained (possibly backdoored) model with its configuration, metrics and history."""

    model: nn.Module
    config: dict  # TrainConfig as a dict
    clean_accuracy: float  # accuracy on the clean test set
    attack_success_rate: float  # fraction of triggered non-target test inputs sent to the target
    history: list[dict]  # one entry per epoch: loss, clean_accuracy, attack_success_rate, seconds
    poison_indices: list[int]  # training-set indices that were poisoned
    train_seconds: float  # wall time of training
    environment: dict = field(default_factory=dict)  # package versions it came from
    path: str | None = None  # where it is saved, if it is

    @property
    def trigger(self) -> Trigger:
        return trigger_from_config(self.config["trigger"])

    @property
    def target(self) -> int:
        return int(self.config["target"])

    def __repr__(self) -> str:
        c = self.config
        return (f"BackdoorRun({c['dataset']}, {c['model']}, {self.trigger!r}, rate={c['rate']}, "
                f"target={c['target']}: clean_accuracy={self.clean_accuracy:.4f}, "
                f"attack_success_rate={self.attack_success_rate:.4f})")

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write `model.pt` and `run.json` into folder `path`, atomically: a reader of `path` sees
        the old run or the new one, never a partial or missing folder (see workbench.runstore)."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"`path` must be a str or os.PathLike; got {type(path).__name__}.")
        if not isinstance(overwrite, bool):
            raise TypeError(f"`overwrite` must be a bool; got {overwrite!r}.")
        path = Path(path)
        if path.exists() and not overwrite:  # before taking any lock: nothing is touched
            raise FileExistsError(f"`path` {path} exists; pass overwrite=True to replace it.")
        with runstore.locked(path):
            runstore.recover(path)
            self._write(path, overwrite)
        return path

    def _write(self, path: Path, overwrite: bool) -> None:
        """Save with the lock of `path` already held."""
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        meta = {"config": self.config, "clean_accuracy": self.clean_accuracy,
                "attack_success_rate": self.attack_success_rate, "history": self.history,
                "poison_indices": self.poison_indices, "train_seconds": self.train_seconds,
                "environment": self.environment, "model_class": type(self.model).__name__}
        runstore.write_run(path, state, meta, overwrite)
        self.path = str(path)


def load_run(path: str | os.PathLike, device: str | torch.device | None = None) -> BackdoorRun:
    """Load a run saved by `BackdoorRun.save` (weights only: no code in the file can run).

    Everything is checked before it is returned (workbench.runstore): a damaged or edited folder
    raises `RunFileError` (a ValueError) naming the file and what is wrong with it.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike; got {type(path).__name__}.")
    dev = check_device("device", device) if device is not None else default_device()
    path = Path(path)
    if not path.exists() and path.with_name(f".{path.name}.old").is_dir():
        with runstore.locked(path):  # a save was killed between its two renames
            runstore.recover(path)
    meta, blob = runstore.read_run_files(path)
    runstore.check_meta(path / "run.json", meta)
    cfg = meta["config"]
    check_choice("model", cfg["model"], MODELS)
    try:
        trigger_from_config(cfg["trigger"])
    except (TypeError, ValueError, KeyError) as exc:
        raise runstore.RunFileError(f"{path / 'run.json'}: `config.trigger` is not a valid "
                                    f"trigger ({exc}).") from None
    shape = cfg["image_shape"]
    model = build_model(cfg["model"], shape[0], cfg["num_classes"], tuple(shape[1:]))
    if meta.get("weights_sha256") is None:
        warnings.warn(f"{path} was saved by an older workbench without a weights checksum: its "
                      "model.pt cannot be checked for truncation or replacement (its names, "
                      "shapes and values still are). Save it again to add one.", UserWarning,
                      stacklevel=2)
    state = runstore.load_state(path / "model.pt", blob, meta.get("weights_sha256"), model)
    model.load_state_dict(state)
    model.eval().to(dev)
    return BackdoorRun(model, cfg, float(meta["clean_accuracy"]),
                       float(meta["attack_success_rate"]), meta["history"],
                       meta["poison_indices"], float(meta["train_seconds"]),
                       meta["environment"], str(path))


def _check_cached(run: BackdoorRun, cfg: TrainConfig, data: Dataset) -> None:
    """A loaded cache entry must be exactly the run that was asked for."""
    want = json.loads(json.dumps(asdict(cfg)))  # as it reads back from run.json
    diff = [k for k in want if run.config.get(k) != want[k]]
    if diff:
        k = diff[0]
        raise runstore.RunFileError(f"its run.json says {k}={run.config.get(k)!r}, but "
                                    f"{want[k]!r} was asked for")
    if (list(run.config["image_shape"]) != list(data.image_shape)
            or run.config["num_classes"] != data.num_classes):
        raise runstore.RunFileError("its image shape or number of classes differs from the data's")


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted labels (N,) of `model` in eval mode, returned on the CPU (the model is left as
    it was: mode, device, flags)."""
    from .smoothness import check_model_input  # the shape check shared with every entry point

    check_images("x", x)
    check_int("batch_size", batch_size, low=1)
    check_model_input(model, x, "x")
    x = x.float()  # float64 images too, as the estimator takes them (the models are float32)
    device = next(model.parameters()).device if any(True for _ in model.parameters()) else x.device
    out = []
    with preserve_model(model), torch.inference_mode():
        for i in range(0, len(x), batch_size):
            logits = model(x[i:i + batch_size].to(device))
            if not bool(torch.isfinite(logits).all()):  # argmax of NaN would answer class 0
                raise FloatingPointError("The model returned NaN or infinite logits for `x`; its "
                                         "predictions (accuracy, ASR) would be meaningless.")
            out.append(logits.argmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of `x` that `model` labels `y`."""
    check_images("x", x)
    if not len(x):
        raise ValueError(f"`x` must hold at least one image; got shape {tuple(x.shape)}.")
    check_labels("y", y, len(x))
    return float((predict(model, x) == y).float().mean())


def attack_success_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, trigger: Trigger,
                        target: int) -> float:
    """Fraction of test inputs of classes other than `target` that the trigger sends to `target`
    (BadNets, Gu et al. 2017). NaN when every input is of the target class (nothing to attack).
    The one implementation of ASR in the workbench: use it rather than re-deriving it."""
    from .smoothness import check_model_input

    check_images("x", x)
    k = check_model_input(model, x, "x")  # refuses an empty `x` too
    check_labels("y", y, len(x))
    if not isinstance(trigger, Trigger):
        raise TypeError(f"`trigger` must be a workbench.triggers.Trigger; got {type(trigger).__name__}.")
    target = check_int("target", target, 0, k - 1)  # one of the model's classes
    keep = y != target
    if not keep.any():
        return float("nan")
    return float((predict(model, trigger(x[keep])) == target).float().mean())


def train_backdoor(data: Dataset | str = "digits", trigger: Trigger | None = None, rate: float = 0.05,
                   target: int = 0, model: str = "small-cnn", epochs: int | None = None, seed: int = 0,
                   *, batch_size: int | None = None, lr: float | None = None,
                   weight_decay: float = 0.0, max_train: int | None = None, cache: bool = True,
                   device: str | torch.device | None = None, progress: bool = True,
                   callbacks: list[Callable] | None = None) -> BackdoorRun:
    """Poison `data` with `trigger` at `rate`, train `model`, and measure clean accuracy and ASR.

    data: a Dataset or a dataset name. trigger: default Patch(size=3). rate 0 trains a clean model.
    epochs, batch_size, lr: None for the dataset's defaults (see DEFAULTS).
    cache: reuse a run trained before with the same configuration and data (under data/runs/).
        A cached entry that fails its checks is reported with a warning and retrained. Processes
        asking for one new configuration at once train it once: the first trains and saves, the
        others wait for it and load the result.
    callbacks: functions called as cb(epoch, model, entry) after each epoch (entry is the
    history dict); with callbacks the run is always trained (so they see it happen) and then
    saved to the cache like any other.
    """
    data, trigger, cfg = _prepare(data, trigger, rate, target, model, epochs, seed, batch_size,
                                  lr, weight_decay, max_train)
    if callbacks is not None:
        if not isinstance(callbacks, (list, tuple)) or not all(callable(cb) for cb in callbacks):
            raise TypeError("`callbacks` must be a list of callables cb(epoch, model, entry); got "
                            f"{callbacks!r}.")
    if not isinstance(cache, bool):
        raise TypeError(f"`cache` must be a bool; got {cache!r}.")
    if not isinstance(progress, bool):
        raise TypeError(f"`progress` must be a bool; got {progress!r}.")
    device = check_device("device", device) if device is not None else default_device()
    callbacks = list(callbacks or [])
    if not cache:
        return _train(data, trigger, cfg, device, progress, callbacks)
    cache_dir = data_dir() / "runs" / cfg.key()
    if not callbacks:  # callbacks must see the training happen: they always train (and save)
        run = _load_cached(cache_dir, cfg, data, device, warn=False)  # common case: no lock
        if run is not None:
            return run
    with runstore.locked(cache_dir):  # one trainer per configuration; the others wait, then load
        runstore.recover(cache_dir)
        if not callbacks:
            run = _load_cached(cache_dir, cfg, data, device, warn=True)
            if run is not None:
                return run
        run = _train(data, trigger, cfg, device, progress, callbacks)
        run._write(cache_dir, overwrite=True)
    return run


def _load_cached(cache_dir: Path, cfg: TrainConfig, data: Dataset, device,
                 warn: bool) -> BackdoorRun | None:
    """The cached run of `cfg`, or None (with a warning naming the reason when `warn` and an
    entry exists but fails a check: it will be retrained and replaced)."""
    if not cache_dir.exists():
        return None
    try:
        run = load_run(cache_dir, device)
        _check_cached(run, cfg, data)
        return run
    except (OSError, ValueError) as exc:
        if warn:
            warnings.warn(f"Cached run {cache_dir} is not usable ({exc}); retraining it and "
                          "replacing the entry.", RuntimeWarning, stacklevel=3)
        return None


def _prepare(data, trigger, rate, target, model, epochs, seed, batch_size, lr, weight_decay,
             max_train) -> tuple[Dataset, Trigger, TrainConfig]:
    """Validate everything and build the run's configuration (before any work)."""
    if isinstance(data, str):
        check_choice("data", data, DATASETS)
        data = load_dataset(data)
    if not isinstance(data, Dataset):
        raise TypeError(f"`data` must be a workbench Dataset or a dataset name; got "
                        f"{type(data).__name__}.")
    trigger = Patch(size=3) if trigger is None else trigger
    if not isinstance(trigger, Trigger):
        raise TypeError(f"`trigger` must be a workbench.triggers.Trigger; got {type(trigger).__name__}.")
    rate = check_float("rate", rate, 0.0, 1.0)
    target = check_int("target", target, 0, data.num_classes - 1)
    check_choice("model", model, MODELS)
    seed = check_seed("seed", seed, generator=False)
    d = DEFAULTS.get(data.name, DEFAULTS["digits"])
    epochs = check_int("epochs", d["epochs"] if epochs is None else epochs, low=1, high=10_000)
    batch_size = check_int("batch_size", d["batch_size"] if batch_size is None else batch_size, low=1)
    lr = check_float("lr", d["lr"] if lr is None else lr, 0.0, 10.0, low_open=True)
    weight_decay = check_float("weight_decay", weight_decay, 0.0, 10.0)
    if max_train is not None:
        max_train = check_int("max_train", max_train, low=1)
    for name in ("x_train", "x_test"):
        check_images(f"data.{name}", getattr(data, name))
    trigger(data.x_test[:1])  # fails now, not after training, if the trigger does not fit
    name = data.name
    if data.info.get("max_train") or data.info.get("max_test"):
        # a truncated dataset is a different experiment: keep it out of the full run's cache slot
        name = f"{data.name}[{data.info.get('max_train')},{data.info.get('max_test')}]"
    from . import __version__

    cfg = TrainConfig(name, trigger.to_config(), rate, target, model, epochs, batch_size, lr,
                      weight_decay, seed, max_train, data.fingerprint, data.info.get("max_test"),
                      __version__)
    return data, trigger, cfg


def is_cached(data: Dataset | str = "digits", trigger: Trigger | None = None, rate: float = 0.05,
              target: int = 0, model: str = "small-cnn", epochs: int | None = None, seed: int = 0,
              *, batch_size: int | None = None, lr: float | None = None, weight_decay: float = 0.0,
              max_train: int | None = None) -> bool:
    """Whether `train_backdoor` with these arguments would load a cached run (the entry exists and
    passes every check a load makes)."""
    data, _, cfg = _prepare(data, trigger, rate, target, model, epochs, seed, batch_size, lr,
                            weight_decay, max_train)
    return _load_cached(data_dir() / "runs" / cfg.key(), cfg, data, torch.device("cpu"),
                        warn=False) is not None


def _train(data: Dataset, trigger: Trigger, cfg: TrainConfig, device, progress, callbacks) -> BackdoorRun:
    x_train, y_train = data.x_train[:cfg.max_train], data.y_train[:cfg.max_train]
    poisoned = poison_dataset(x_train, y_train, trigger, cfg.rate, cfg.target, seed=cfg.seed)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        net = build_model(cfg.model, data.image_shape[0], data.num_classes, data.image_shape[1:])
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    g = make_generator(cfg.seed + 1)  # shuffling stream, distinct from the poisoning stream
    x_dev, y_dev = poisoned.x.to(device), poisoned.y.to(device)
    n = len(y_dev)
    history: list[dict] = []
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=f"training {cfg.model} on {cfg.dataset}", disable=not progress,
               leave=False)
    for epoch in bar:
        net.train()
        te = time.perf_counter()
        perm = torch.randperm(n, generator=g).to(device)
        total = 0.0
        for i in range(0, n, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x_dev[idx]), y_dev[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        net.eval()
        if not all(bool(torch.isfinite(p).all()) for p in net.parameters()):
            raise FloatingPointError(
                f"Training diverged: the weights hold NaN or infinite values after epoch "
                f"{epoch + 1} (lr={cfg.lr}); lower `lr`. Nothing was saved.")
        entry = {"epoch": epoch + 1, "loss": total / n,
                 "clean_accuracy": clean_accuracy(net, data.x_test, data.y_test),
                 "attack_success_rate": attack_success_rate(net, data.x_test, data.y_test, trigger,
                                                            cfg.target),
                 "seconds": time.perf_counter() - te}
        history.append(entry)
        bar.set_postfix(acc=f"{entry['clean_accuracy']:.3f}", asr=f"{entry['attack_success_rate']:.3f}")
        for cb in callbacks:
            cb(epoch + 1, net, entry)
    seconds = time.perf_counter() - t0
    config = {**asdict(cfg), "image_shape": list(data.image_shape), "num_classes": data.num_classes}
    return BackdoorRun(net.eval(), config, history[-1]["clean_accuracy"],
                       history[-1]["attack_success_rate"], history,
                       poisoned.poison_indices.tolist(), seconds, environment())
