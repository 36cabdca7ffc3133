"""Training backdoored models, with cached runs and safe checkpoints.

A run is cached under `data/runs/<hash>/` by a hash of its full configuration (dataset, trigger,
rate, target, model, optimiser settings, seed, cache format): asking for the same configuration
again loads it in well under a second. A checkpoint is a folder with `model.pt` (a state dict read
with `torch.load(weights_only=True)`, PyTorch's restricted unpickler, so a crafted file cannot run
code) and `run.json` (configuration, metrics, history, package versions).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ._validate import check_choice, check_float, check_int
from .data import DATASETS, Dataset, data_dir, load_dataset
from .models import MODELS, build_model, default_device
from .poison import make_generator, poison_dataset
from .triggers import Patch, Trigger, trigger_from_config

CACHE_FORMAT = 2  # bump when training code changes results, so old cached runs are not reused

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
        """Write `model.pt` and `run.json` into folder `path`, atomically."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"`path` {path} exists; pass overwrite=True to replace it.")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
            torch.save(state, tmp / "model.pt")
            meta = {"config": self.config, "clean_accuracy": self.clean_accuracy,
                    "attack_success_rate": self.attack_success_rate, "history": self.history,
                    "poison_indices": self.poison_indices, "train_seconds": self.train_seconds,
                    "environment": self.environment, "model_class": type(self.model).__name__}
            (tmp / "run.json").write_text(json.dumps(meta, indent=1))
            if path.exists():  # swap in the new folder, then drop the old one
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.path = str(path)
        return path


def load_run(path: str | os.PathLike, device: str | torch.device | None = None) -> BackdoorRun:
    """Load a run saved by `BackdoorRun.save` (weights only: no code in the file can run)."""
    path = Path(path)
    if not (path / "run.json").is_file() or not (path / "model.pt").is_file():
        raise FileNotFoundError(f"`path` {path} must be a run folder holding run.json and model.pt.")
    meta = json.loads((path / "run.json").read_text())
    state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path / 'model.pt'} is not a state dict of tensors.")
    cfg = meta["config"]
    shape = cfg["image_shape"]
    model = build_model(cfg["model"], shape[0], cfg["num_classes"], tuple(shape[1:]))
    model.load_state_dict(state)
    model.eval().to(device or default_device())
    return BackdoorRun(model, cfg, meta["clean_accuracy"], meta["attack_success_rate"],
                       meta["history"], meta["poison_indices"], meta["train_seconds"],
                       meta.get("environment", {}), str(path))


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted labels (N,) on the model's device, returned on the CPU."""
    device = next(model.parameters()).device
    out = [model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(model, x) == y).float().mean())


def attack_success_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, trigger: Trigger,
                        target: int) -> float:
    """Fraction of test inputs of classes other than `target` that the trigger sends to `target`."""
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
    cache: reuse a run trained before with the same configuration (under data/runs/).
    callbacks: functions called as cb(epoch, model, entry) after each epoch (entry is the
    history dict); a cached run is reused only when no callbacks are given.
    """
    data, trigger, cfg = _prepare(data, trigger, rate, target, model, epochs, seed, batch_size,
                                  lr, weight_decay, max_train)
    if callbacks is not None and not all(callable(cb) for cb in callbacks):
        raise TypeError("`callbacks` must be a list of callables cb(epoch, model, entry).")
    cache_dir = data_dir() / "runs" / cfg.key()
    device = torch.device(device) if device is not None else default_device()
    if cache and not callbacks and cache_dir.exists():
        try:
            return load_run(cache_dir, device)
        except Exception:  # a stale or damaged cache entry is retrained, never trusted
            pass

    run = _train(data, trigger, cfg, device, progress, callbacks or [])
    if cache:
        run.save(cache_dir, overwrite=True)
    return run


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
    check_int("seed", seed, low=0)
    d = DEFAULTS.get(data.name, DEFAULTS["digits"])
    epochs = check_int("epochs", d["epochs"] if epochs is None else epochs, low=1)
    batch_size = check_int("batch_size", d["batch_size"] if batch_size is None else batch_size, low=1)
    lr = check_float("lr", d["lr"] if lr is None else lr, 0.0, None, low_open=True)
    weight_decay = check_float("weight_decay", weight_decay, 0.0)
    if max_train is not None:
        check_int("max_train", max_train, low=1)
    trigger(data.x_test[:1])  # fails now, not after training, if the trigger does not fit
    name = data.name
    if data.info.get("max_train") or data.info.get("max_test"):
        # a truncated dataset is a different experiment: keep it out of the full run's cache slot
        name = f"{data.name}[{data.info.get('max_train')},{data.info.get('max_test')}]"
    cfg = TrainConfig(name, trigger.to_config(), rate, target, model, epochs, batch_size, lr,
                      weight_decay, seed, max_train)
    return data, trigger, cfg


def is_cached(data: Dataset | str = "digits", trigger: Trigger | None = None, rate: float = 0.05,
              target: int = 0, model: str = "small-cnn", epochs: int | None = None, seed: int = 0,
              *, batch_size: int | None = None, lr: float | None = None, weight_decay: float = 0.0,
              max_train: int | None = None) -> bool:
    """Whether `train_backdoor` with these arguments would load a cached run."""
    _, _, cfg = _prepare(data, trigger, rate, target, model, epochs, seed, batch_size, lr,
                         weight_decay, max_train)
    return (data_dir() / "runs" / cfg.key() / "run.json").is_file()


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
