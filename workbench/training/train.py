"""Training backdoored models, with cached runs and safe checkpoints.

A run is cached under `data/runs/<hash>/` by a hash of its full configuration: the dataset's
name and a SHA-256 fingerprint of its training and test tensors (`Dataset.fingerprint`, so two
folders holding different images under one name never share a run), `max_train`, the trigger,
rate, target, poisoning and target modes (with label-consistent poisoning's PGD settings), model,
optimiser settings, seed, and the workbench's version and cache format. The poisoning settings
added with the attack atlas are left out of the hash at their defaults (dirty-label,
all-to-one, no PGD): a default run trains exactly as before they existed, so its key, and the
runs already cached under it, stay valid; any other value is in the hash.
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

from ..base import runstore
from .._version import __version__
from ..base._validate import (check_choice, check_device, check_float, check_images, check_int,
                              check_labels, check_seed)
from ..base.data import Dataset, as_dataset, data_dir
from ..base.models import MODELS, build_model, check_model_input, default_device, preserve_model
from ..attacks.poison import (POISONING_MODES, TARGET_MODES, PoisonedSet, TriggeredPairs, attack_targets,
                              check_attack, check_pgd, check_rate, make_generator, poison_dataset,
                              triggered_pairs)
from ..attacks.triggers import (FunctionTrigger, PairedTrigger, Patch, Pixel, Trigger,
                               trigger_from_config)

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
    poisoning: str = "dirty-label"  # workbench.poison.POISONING_MODES
    target_mode: str = "all-to-one"  # workbench.poison.TARGET_MODES
    epsilon: float | None = None  # label-consistent: the PGD perturbation's L∞ radius
    pgd_steps: int | None = None  # label-consistent: PGD steps
    pgd_step_size: float | None = None  # label-consistent: PGD step size

    def key(self) -> str:
        cfg = asdict(self)
        for k, v in KEY_DEFAULTS.items():  # see the module docstring: old keys stay valid
            if cfg[k] == v:
                del cfg[k]
        blob = json.dumps(cfg, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Settings added after cache format 3, at the values every earlier run was trained with: left out
# of the key at these values (so those runs keep their keys), filled in when such a run is loaded.
KEY_DEFAULTS = {"poisoning": "dirty-label", "target_mode": "all-to-one", "epsilon": None,
                "pgd_steps": None, "pgd_step_size": None}


def environment() -> dict:
    """Package versions and machine facts recorded with every result."""
    import numpy
    import torchvision

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
    # fraction of the triggered test inputs the attack applies to that reach the attacker's label
    # (all-to-one: non-target inputs sent to the target; all-to-all: every input to (y + 1) mod K)
    attack_success_rate: float
    history: list[dict]  # one entry per epoch: loss, clean_accuracy, attack_success_rate, seconds
    poison_indices: list[int]  # training-set indices that were triggered
    train_seconds: float  # wall time of training
    environment: dict = field(default_factory=dict)  # package versions it came from
    path: str | None = None  # where it is saved, if it is
    # triggered training indices that kept their true label (a trigger's conservatism)
    cover_indices: list[int] = field(default_factory=list)

    @property
    def trigger(self) -> Trigger:
        return trigger_from_config(self.config["trigger"])

    @property
    def poisoning(self) -> str:
        return self.config.get("poisoning", "dirty-label")

    @property
    def target_mode(self) -> str:
        return self.config.get("target_mode", "all-to-one")

    @property
    def target(self) -> int:
        """The target class of an all-to-one run. An all-to-all run has none: asking for it is
        an error (use `target_labels`, `triggered_pairs` or `measure_asr`, which handle both)."""
        if self.target_mode == "all-to-all":
            raise ValueError("This run's target_mode is 'all-to-all': each class y goes to "
                             "(y + 1) mod K, so it has no single `target`. Use "
                             "run.target_labels(y), run.triggered_pairs(x, y) or "
                             "run.measure_asr(x, y), which handle every target mode.")
        return int(self.config["target"])

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    def target_labels(self, y: torch.Tensor) -> torch.Tensor:
        """The label the attacker wants for inputs of true labels `y` (either target mode)."""
        check_labels("y", y, y.shape[0] if isinstance(y, torch.Tensor) and y.ndim else 1)
        return attack_targets(y, None if self.target_mode == "all-to-all" else self.target,
                              self.target_mode, self.num_classes)

    def triggered_pairs(self, x: torch.Tensor, y: torch.Tensor, n: int | None = None,
                        seed: int | torch.Generator = 0) -> TriggeredPairs:
        """`workbench.poison.triggered_pairs` for this run's trigger and target mode: up to `n`
        test inputs the attack applies to and their triggered twins (pairs.targets: each one's
        attacker's label)."""
        a2a = self.target_mode == "all-to-all"
        return triggered_pairs(x, y, self.trigger, None if a2a else self.target, n, seed,
                               target_mode=self.target_mode, num_classes=self.num_classes)

    def measure_asr(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """`attack_success_rate` of this run's model and trigger on (x, y), in its target mode."""
        a2a = self.target_mode == "all-to-all"
        return attack_success_rate(self.model, x, y, self.trigger, None if a2a else self.target,
                                   target_mode=self.target_mode)

    def __repr__(self) -> str:
        c = self.config
        attack = f"target={c['target']}" if self.target_mode == "all-to-one" else "all-to-all"
        if self.poisoning != "dirty-label":
            attack += f", {self.poisoning}"
            if c.get("epsilon") is not None:
                attack += f" (epsilon={c['epsilon']:.4g})"
        return (f"BackdoorRun({c['dataset']}, {c['model']}, {self.trigger!r}, rate={c['rate']}, "
                f"{attack}: clean_accuracy={self.clean_accuracy:.4f}, "
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
                "environment": self.environment, "model_class": type(self.model).__name__,
                "cover_indices": self.cover_indices}
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
    _check_attack_config(path / "run.json", cfg)
    cover = meta.get("cover_indices", [])
    if not isinstance(cover, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in cover):
        raise runstore.RunFileError(f"{path / 'run.json'}: `cover_indices` must be a list of ints "
                                    f">= 0; got {cover!r}"[:300])
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
                       meta["environment"], str(path), cover)


def _check_attack_config(file: Path, cfg: dict) -> None:
    """Fill in the poisoning settings of a run saved before they existed (it was trained with
    their defaults: dirty-label, all-to-one) and check those of any run (in place: `cfg` is
    the freshly read run.json)."""
    for k, v in KEY_DEFAULTS.items():
        cfg.setdefault(k, v)
    try:
        check_attack(cfg["poisoning"], cfg["target_mode"])
        pgd = check_pgd(cfg["poisoning"], cfg["epsilon"], cfg["pgd_steps"], cfg["pgd_step_size"])
    except (TypeError, ValueError) as exc:
        raise runstore.RunFileError(f"{file}: its poisoning settings are not valid ({exc})") from None
    if pgd != (cfg["epsilon"], cfg["pgd_steps"], cfg["pgd_step_size"]):
        raise runstore.RunFileError(f"{file}: `config.epsilon`, `pgd_steps` and `pgd_step_size` "
                                    "must all be recorded for a label-consistent run; got "
                                    f"{cfg['epsilon']!r}, {cfg['pgd_steps']!r}, "
                                    f"{cfg['pgd_step_size']!r}.")


def check_cached(run: BackdoorRun, cfg: TrainConfig, data: Dataset) -> None:
    """A loaded cache entry must be exactly the run that was asked for: RunFileError naming the
    first difference (its recorded configuration, image shape or classes) otherwise. Shared with
    `workbench.input_aware`'s cache."""
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
                        target: int | None, *, target_mode: str = "all-to-one") -> float:
    """Attack success rate (BadNets, Gu et al. 2017), the one implementation in the workbench:
    use it rather than re-deriving it.

    all-to-one: the fraction of test inputs of classes other than `target` that the trigger sends
    to `target`; NaN when every input is of the target class (nothing to attack).
    all-to-all (`target` None): the fraction of *all* triggered test inputs sent to their own
    shifted label (y + 1) mod K, K the model's number of classes.
    """
    check_images("x", x)
    k = check_model_input(model, x, "x")  # refuses an empty `x` too
    check_labels("y", y, len(x))
    if not isinstance(trigger, Trigger):
        raise TypeError(f"`trigger` must be a workbench.triggers.Trigger; got {type(trigger).__name__}.")
    check_attack("dirty-label", target_mode)
    if target_mode == "all-to-all":
        if target is not None:
            raise ValueError("`target` must be None with target_mode='all-to-all' (each label y "
                             f"goes to (y + 1) mod K); got {target!r}.")
        if int(y.max()) >= k:
            raise ValueError(f"`y` must hold classes of the model, in [0, {k - 1}]; got "
                             f"{int(y.max())}.")
        return float((predict(model, trigger(x)) == (y + 1) % k).float().mean())
    if target is None:
        raise TypeError(f"`target` must be an int in [0, {k - 1}] (None only with "
                        "target_mode='all-to-all'); got None.")
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
                   callbacks: list[Callable] | None = None, poisoning: str = "dirty-label",
                   target_mode: str = "all-to-one", epsilon: float | None = None,
                   pgd_steps: int | None = None, pgd_step_size: float | None = None) -> BackdoorRun:
    """Poison `data` with `trigger` at `rate`, train `model`, and measure clean accuracy and ASR.

    data: a Dataset or a dataset name. trigger: default Patch(size=3). rate 0 trains a clean model.
    rate: the fraction of the whole training set (its first `max_train` images) that is
        triggered, in every mode; for the clean-label modes it is therefore at most the target
        class's share of the training set (a larger rate is refused, naming the maximum).
    poisoning (workbench.poison has the papers):
        "dirty-label" (default; BadNets, Gu et al. 2017): non-target images, triggered and
            relabelled.
        "clean-label" (SIG's setting, Barni et al. 2019): target-class images, triggered, labels
            kept.
        "label-consistent" (Turner et al. 2019): target-class images moved by PGD within an L∞
            ball of radius `epsilon` on a clean model, then triggered, labels kept. The clean
            model is `train_backdoor(data, Patch(size=3), rate=0.0, target=0)` with this call's
            model, epochs, optimiser settings, seed and max_train (the model this training would
            give without poisoning; a 1-pixel `Pixel()` trigger replaces the patch for images too
            small for it, the trigger only matters for that run's ASR), trained once and always
            cached, whatever `cache` says here; the perturbation is seeded by `seed`.
    target_mode: "all-to-one" (default: poisoned images go to `target`) or "all-to-all" (BadNets:
        an image of class y goes to (y + 1) mod K; dirty-label only, `target` must stay 0, and
        ASR counts every triggered test input sent to its own shifted label).
    epsilon, pgd_steps, pgd_step_size: label-consistent only (None elsewhere): the L∞ radius in
        (0, 1] (default 16/255, Turner et al.'s largest), the PGD steps (default 20) and step
        size (default 2.5·epsilon/steps, Madry et al. 2018).
    A trigger with `conservatism` keeps the true label of that share of its triggered training
    images, and one with `poison_apply(x, generator)` is applied through it to training images
    (Adaptive-Blend, Qi et al. 2023; see workbench.poison).
    epochs, batch_size, lr: None for the dataset's defaults (see DEFAULTS).
    cache: reuse a run trained before with the same configuration and data (under data/runs/).
        A cached entry that fails its checks is reported with a warning and retrained. Processes
        asking for one new configuration at once train it once: the first trains and saves, the
        others wait for it and load the result.
    callbacks: functions called as cb(epoch, model, entry) after each epoch (entry is the
    history dict); with callbacks the run is always trained (so they see it happen) and then
    saved to the cache like any other.
    """
    data, trigger, cfg = prepare_run(data, trigger, rate, target, model, epochs, seed,
                                     batch_size, lr, weight_decay, max_train, poisoning=poisoning,
                                     target_mode=target_mode, epsilon=epsilon,
                                     pgd_steps=pgd_steps, pgd_step_size=pgd_step_size)
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
        check_cached(run, cfg, data)
        return run
    except (OSError, ValueError) as exc:
        if warn:
            warnings.warn(f"Cached run {cache_dir} is not usable ({exc}); retraining it and "
                          "replacing the entry.", RuntimeWarning, stacklevel=3)
        return None


def prepare_run(data, trigger, rate, target, model, epochs, seed, batch_size, lr, weight_decay,
                max_train, *, poisoning="dirty-label", target_mode="all-to-one", epsilon=None,
                pgd_steps=None, pgd_step_size=None) -> tuple[Dataset, Trigger, TrainConfig]:
    """Validate everything and build the run's configuration (before any work): `train_backdoor`'s
    arguments (None for a dataset default) -> (data, trigger, TrainConfig, whose `key()` names the
    run in the cache). Callers that check a training's arguments before other work (a sweep's
    grid, a crafted trigger's clean model) call it with the arguments they will train with."""
    data = as_dataset(data)
    trigger = Patch(size=3) if trigger is None else trigger
    if not isinstance(trigger, Trigger):
        raise TypeError(f"`trigger` must be a workbench.triggers.Trigger; got {type(trigger).__name__}.")
    if isinstance(trigger, (FunctionTrigger, PairedTrigger)):
        # their configs name a function or count images, not what they compute: two different
        # functions would share a cache key and one would get the other's cached model
        raise TypeError(f"`trigger` must be a trigger the workbench can rebuild from its config "
                        f"to train with (a workbench.triggers class); got {trigger!r}, which "
                        "triggers a model opened from elsewhere (open_model) but cannot name a "
                        "trained run.")
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
    # a default that follows the image size (FTrojan's magnitude) is written out, so the key names
    # the trigger that trains
    trigger = trigger.resolve(data.image_shape)
    trigger(data.x_test[:1])  # fails now, not after training, if the trigger does not fit
    poisoning, target_mode = check_attack(poisoning, target_mode)
    epsilon, pgd_steps, pgd_step_size = check_pgd(poisoning, epsilon, pgd_steps, pgd_step_size)
    if target_mode == "all-to-all":
        if data.num_classes < 2:
            raise ValueError("`target_mode` must be 'all-to-one' for data with fewer than 2 "
                             "classes: 'all-to-all' sends y to (y + 1) mod K, which needs K >= 2; "
                             f"the data has {data.num_classes}.")
        if target != 0:
            raise ValueError("`target` must be 0 (its default) with target_mode='all-to-all': each "
                             "label y goes to (y + 1) mod K, there is no single target; got "
                             f"{target}.")
    if rate > 0:  # the mode must have enough images to choose from: refused now, not in training
        y_train = data.y_train[:max_train]
        check_labels("data.y_train", y_train, len(y_train))
        check_rate(y_train, rate, None if target_mode == "all-to-all" else target, poisoning,
                   target_mode)
    name = data.name
    if data.info.get("max_train") or data.info.get("max_test"):
        # a truncated dataset is a different experiment: keep it out of the full run's cache slot
        name = f"{data.name}[{data.info.get('max_train')},{data.info.get('max_test')}]"
    cfg = TrainConfig(name, trigger.to_config(), rate, target, model, epochs, batch_size, lr,
                      weight_decay, seed, max_train, data.fingerprint, data.info.get("max_test"),
                      __version__, poisoning=poisoning, target_mode=target_mode, epsilon=epsilon,
                      pgd_steps=pgd_steps, pgd_step_size=pgd_step_size)
    return data, trigger, cfg


def is_cached(data: Dataset | str = "digits", trigger: Trigger | None = None, rate: float = 0.05,
              target: int = 0, model: str = "small-cnn", epochs: int | None = None, seed: int = 0,
              *, batch_size: int | None = None, lr: float | None = None, weight_decay: float = 0.0,
              max_train: int | None = None, poisoning: str = "dirty-label",
              target_mode: str = "all-to-one", epsilon: float | None = None,
              pgd_steps: int | None = None, pgd_step_size: float | None = None) -> bool:
    """Whether `train_backdoor` with these arguments would load a cached run (the entry exists and
    passes every check a load makes)."""
    data, _, cfg = prepare_run(data, trigger, rate, target, model, epochs, seed, batch_size, lr,
                               weight_decay, max_train, poisoning=poisoning,
                               target_mode=target_mode, epsilon=epsilon, pgd_steps=pgd_steps,
                               pgd_step_size=pgd_step_size)
    return _load_cached(data_dir() / "runs" / cfg.key(), cfg, data, torch.device("cpu"),
                        warn=False) is not None


def surrogate_run(data: Dataset, cfg: TrainConfig, device, progress: bool) -> BackdoorRun:
    """The clean model label-consistent poisoning crafts its perturbation on: the run this
    training would give without poisoning (see train_backdoor's `poisoning`), from the cache."""
    probe = Patch(size=3)
    try:
        probe(data.x_test[:1])
    except ValueError:  # images too small for the 3x3 patch: the trigger only sets its ASR
        probe = Pixel()
    return train_backdoor(data, trigger=probe, rate=0.0, target=0, model=cfg.model,
                          epochs=cfg.epochs, seed=cfg.seed, batch_size=cfg.batch_size, lr=cfg.lr,
                          weight_decay=cfg.weight_decay, max_train=cfg.max_train, cache=True,
                          device=device, progress=progress)


def _poison(data: Dataset, trigger: Trigger, cfg: TrainConfig, device, progress) -> PoisonedSet:
    x_train, y_train = data.x_train[:cfg.max_train], data.y_train[:cfg.max_train]
    a2a = cfg.target_mode == "all-to-all"
    surrogate = None
    if cfg.poisoning == "label-consistent" and cfg.rate > 0:
        surrogate = surrogate_run(data, cfg, device, progress).model
    return poison_dataset(x_train, y_train, trigger, cfg.rate, None if a2a else cfg.target,
                          seed=cfg.seed, poisoning=cfg.poisoning, target_mode=cfg.target_mode,
                          num_classes=data.num_classes, model=surrogate, epsilon=cfg.epsilon,
                          pgd_steps=cfg.pgd_steps, pgd_step_size=cfg.pgd_step_size)


def _train(data: Dataset, trigger: Trigger, cfg: TrainConfig, device, progress, callbacks) -> BackdoorRun:
    poisoned = _poison(data, trigger, cfg, device, progress)
    a2a = cfg.target_mode == "all-to-all"
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
                 "attack_success_rate": attack_success_rate(
                     net, data.x_test, data.y_test, trigger, None if a2a else cfg.target,
                     target_mode=cfg.target_mode),
                 "seconds": time.perf_counter() - te}
        history.append(entry)
        bar.set_postfix(acc=f"{entry['clean_accuracy']:.3f}", asr=f"{entry['attack_success_rate']:.3f}")
        for cb in callbacks:
            cb(epoch + 1, net, entry)
    seconds = time.perf_counter() - t0
    config = {**asdict(cfg), "image_shape": list(data.image_shape), "num_classes": data.num_classes}
    return BackdoorRun(net.eval(), config, history[-1]["clean_accuracy"],
                       history[-1]["attack_success_rate"], history,
                       poisoned.poison_indices.tolist(), seconds, environment(),
                       cover_indices=poisoned.cover_indices.tolist())
