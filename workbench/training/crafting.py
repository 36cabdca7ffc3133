"""Crafted triggers: optimised on a clean model and returned as plain, serialisable triggers.

    craft_low_frequency  LowFrequency: a targeted universal adversarial perturbation kept in the
                         low frequencies (Zeng et al., ICCV 2021)
    craft_trojannn       TrojanNN: a mask-shaped pattern that drives chosen internal neurons to a
                         high value (Liu et al., NDSS 2018)
    craft(name, ...)     either, by trigger name (for sweeps and widgets)

Each takes the data (a Dataset or a dataset name) and either a model or, by default, the clean
model the workbench trains and caches for that data (`train_backdoor(data, rate=0.0,
model=architecture, epochs=epochs, seed=seed)`). Everything is checked before any work (the
clean model is trained only after the arguments passed); the caller's model is given back
unchanged (`models.preserve_model`); every random draw comes from `seed`, so the same call gives
the same trigger. The trigger holds its crafted tensors in `to_config()`, so training runs that
use it are cached by its content. `progress`: False, True (a tqdm bar) or a callable
`progress(step, total)` called after each optimisation step (widgets show it).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..base._validate import check_choice, check_float, check_int, check_seed
from ..base.data import Dataset, as_dataset
from ..base.models import MODELS, build_model, check_model, check_model_input, model_device, preserve_model
from .train import train_backdoor
from ..attacks.triggers import LowFrequency, Patch, TrojanNN

# Version of the crafting code: bump when a change can move a crafted trigger for the same
# arguments (sweep keys cover it, so rows with triggers crafted by older code are not reused).
CRAFT_VERSION = 1

# Zeng et al.'s low-pass filter: a Gaussian of standard deviation 6 px on 32x32 CIFAR-10 images
# (their gauss_smooth, sig=6); the default keeps that share of the image side
ZENG_SIGMA_SHARE = 6 / 32


def _check_progress(progress: Any) -> None:
    if not (isinstance(progress, bool) or callable(progress)):
        raise TypeError(f"`progress` must be a bool or a callable progress(step, total); got "
                        f"{progress!r}.")


def _steps(total: int, desc: str, progress) -> Any:
    """Iterate over range(total), reporting to a tqdm bar or a callback after each step."""
    if callable(progress) and not isinstance(progress, bool):
        for i in range(total):
            yield i
            progress(i + 1, total)
        return
    yield from tqdm(range(total), desc=desc, disable=not progress, leave=False)


_check_data = as_dataset  # a Dataset, or a dataset name loaded


def _check_model_args(model: Any, data: Dataset, architecture: Any, epochs: Any) -> None:
    if model is not None:
        check_model(model)
        k = check_model_input(model, data.x_test, "data.x_test")
        if k != data.num_classes:
            raise ValueError(f"`model` must classify the data's {data.num_classes} classes; it "
                             f"outputs {k} logits.")
    check_choice("architecture", architecture, MODELS)
    if epochs is not None:
        check_int("epochs", epochs, low=1, high=10_000)


def _clean_model(data: Dataset, model, architecture: str, epochs, seed: int, progress) -> nn.Module:
    """The given model, or the workbench's cached clean model for `data` (trained on first use)."""
    if model is not None:
        return model
    return train_backdoor(data, rate=0.0, model=architecture, epochs=epochs, seed=seed,
                          progress=progress is True).model


def gaussian_lowpass(v: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Blur (..., H, W) with a Gaussian of standard deviation `sigma` pixels, zero outside the
    image (scipy.ndimage.gaussian_filter's mode="constant": the same kernel, radius
    int(truncate·sigma + 0.5), weights normalised to sum 1), separably along H then W."""
    sigma = check_float("sigma", sigma, 0.0, None, low_open=True)
    truncate = check_float("truncate", truncate, 0.0, None, low_open=True)
    r = int(truncate * sigma + 0.5)
    k = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = (k / k.sum()).to(device=v.device, dtype=v.dtype)
    *lead, h, w = v.shape
    z = v.reshape(-1, 1, h, w)
    z = F.conv2d(z, k.view(1, 1, -1, 1), padding=(r, 0))
    z = F.conv2d(z, k.view(1, 1, 1, -1), padding=(0, r))
    return z.reshape(*lead, h, w)


def craft_low_frequency(data: Dataset | str = "digits", target: int = 0, *,
                        model: nn.Module | None = None, epsilon: float = 0.2,
                        sigma: float | None = None, steps: int = 200, lr: float = 0.05,
                        batch_size: int = 128, n_images: int = 1000, seed: int = 0,
                        progress: bool | Callable[[int, int], Any] = False,
                        architecture: str = "small-cnn", epochs: int | None = None) -> LowFrequency:
    """Craft the low-frequency ("smooth") trigger of Zeng, Park, Mao & Jia (ICCV 2021,
    "Rethinking the Backdoor Attacks' Triggers: A Frequency Perspective").

    Their trigger is a targeted universal adversarial perturbation of a clean model
    (Moosavi-Dezfooli et al. 2017) passed through a Gaussian low-pass filter at every update and
    rescaled to a fixed range (0.2 on CIFAR-10), so that it has no high-frequency artefacts. Here
    the perturbation is v = epsilon · L(u) / max|L(u)|, with L the Gaussian low-pass filter of
    standard deviation `sigma` pixels (default: 6/32 of the image side, their 6 px on 32x32
    images); u is optimised with Adam (`steps`, `lr`) to raise the mean log-probability of
    `target` on clip(x + v) over `n_images` training images of other classes (drawn by `seed`),
    `batch_size` at a time. v is therefore exactly low-pass (a blurred field, rescaled) with
    max|v| = epsilon; the reference code's DeepFool steps are replaced by gradient steps on the
    same objective, and its range [0, 0.2] by [-epsilon, epsilon]. Default epsilon 0.2, their
    range's size: measured on digits (benchmarks/RESULTS.md, "Attack atlas: triggers"), ±0.1 (the
    same spread as [0, 0.2]) was learnt only to ASR 0.80 at a 20% poisoning rate, ±0.2 to 0.92 at 5%.

    target: the class the perturbation pushes towards (the backdoor's target; Zeng et al. let the
    data pick a dominant class, here it is chosen). Returns a `LowFrequency` trigger.
    """
    data = _check_data(data)
    target = check_int("target", target, 0, data.num_classes - 1)
    c, h, w = data.image_shape
    epsilon = check_float("epsilon", epsilon, 0.0, 1.0, low_open=True)
    if sigma is None:
        sigma = ZENG_SIGMA_SHARE * min(h, w)
    sigma = check_float("sigma", sigma, 0.0, None, low_open=True)
    steps = check_int("steps", steps, low=1, high=100_000)
    lr = check_float("lr", lr, 0.0, None, low_open=True)
    batch_size = check_int("batch_size", batch_size, low=1)
    n_images = check_int("n_images", n_images, low=1)
    seed = check_seed("seed", seed, generator=False)
    _check_progress(progress)
    _check_model_args(model, data, architecture, epochs)
    pool = torch.nonzero(data.y_train != target).flatten()
    if not len(pool):
        raise ValueError(f"`data` must hold training images of classes other than `target` "
                         f"{target}.")
    net = _clean_model(data, model, architecture, epochs, seed, progress)
    g = torch.Generator().manual_seed(seed)
    pool = pool[torch.randperm(len(pool), generator=g)[:n_images]]
    dev = model_device(net)
    x = data.x_train[pool].to(dev, torch.float32)
    u = torch.randn((c, h, w), generator=g).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([u], lr=lr)

    def field(u):
        s = gaussian_lowpass(u, sigma)
        return epsilon * s / s.abs().max().clamp_min(1e-12)

    with preserve_model(net, requires_grad=False):  # the caller's model comes back unchanged
        for _ in _steps(steps, "low-frequency trigger", progress):
            idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=g).to(dev)
            xb = (x[idx] + field(u)).clamp(0.0, 1.0)
            loss = -net(xb).log_softmax(-1)[:, target].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        v = field(u).detach().cpu()
    if not bool(torch.isfinite(v).all()):
        raise FloatingPointError("Crafting diverged: the perturbation holds NaN or infinite values; "
                                 "lower `lr`.")
    return LowFrequency(v.clamp(-epsilon, epsilon))


def _linear_layers(net: nn.Module) -> dict[str, nn.Module]:
    """The model's Linear and Conv2d modules by name, in definition order."""
    return {name: m for name, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def _width(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _check_layer(layer: Any, net: nn.Module) -> str:
    layers = _linear_layers(net)
    if not layers:
        raise ValueError("`model` must have a Linear or Conv2d layer whose outputs are the neurons "
                         "to excite; it has none.")
    if layer is None:  # the last hidden layer: the one before the classifier
        names = list(layers)
        return names[-2] if len(names) > 1 else names[-1]
    if not isinstance(layer, str):
        raise TypeError(f"`layer` must be None or the name of a Linear or Conv2d module; got "
                        f"{layer!r}.")
    check_choice("layer", layer, tuple(layers))
    return layer


def _connectivity(net: nn.Module, layer: str) -> torch.Tensor:
    """Per neuron (output feature or channel) of `layer`: the summed absolute weights leaving it
    into the next Linear/Conv2d layer (TrojanZoo's reading of the paper's best connected neurons;
    a Linear after a flattened convolution counts each channel's positions together), or, for the
    last layer, the summed absolute weights coming into it."""
    layers = _linear_layers(net)
    names = list(layers)
    module = layers[layer]
    n = _width(module)
    i = names.index(layer)
    if i + 1 < len(names):
        nxt = layers[names[i + 1]]
        wt = nxt.weight.detach().abs()
        if isinstance(nxt, nn.Conv2d) and wt.shape[1] == n:
            return wt.sum((0, 2, 3))
        if isinstance(nxt, nn.Linear) and wt.shape[1] % n == 0:
            return wt.reshape(wt.shape[0], n, -1).sum((0, 2))
    return module.weight.detach().abs().flatten(1).sum(1)


def _check_neurons(neurons: Any, n: int) -> int | tuple[int, ...]:
    allowed = f"an int in [1, {n}] (how many) or a sequence of distinct ints in [0, {n - 1}]"
    if isinstance(neurons, bool):
        raise TypeError(f"`neurons` must be {allowed}; got {neurons!r}.")
    if isinstance(neurons, int):
        return check_int("neurons", neurons, 1, n)
    if isinstance(neurons, (str, bytes)) or not isinstance(neurons, Sequence):
        raise TypeError(f"`neurons` must be {allowed}; got {neurons!r}.")
    idx = tuple(check_int("neurons", v, 0, n - 1) for v in neurons)
    if not idx or len(set(idx)) != len(idx):
        raise ValueError(f"`neurons` must be {allowed}; got {neurons!r}.")
    return idx


def _neuron_index(net: nn.Module, layer: str, neurons) -> torch.Tensor:
    if isinstance(neurons, int):
        return torch.argsort(_connectivity(net, layer), descending=True, stable=True)[:neurons]
    return torch.tensor(neurons)


def _keep(seen: list):
    """A forward hook keeping a copy of the layer's output: the models' in-place ReLUs would
    otherwise rectify the very tensor the hook saw."""
    return lambda _m, _inp, out: seen.append(out.clone())


def _activations(out: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(N, len(idx)): the chosen neurons' values (channels summed over space)."""
    a = out[:, idx]
    return a.flatten(2).sum(2) if a.ndim > 2 else a


def craft_trojannn(data: Dataset | str = "digits", *, model: nn.Module | None = None,
                   layer: str | None = None, neurons: int | Sequence[int] = 2,
                   target_value: float = 100.0, mask: torch.Tensor | None = None, size: int = 4,
                   position: str | tuple[int, int] = "bottom-right", margin: int = 1,
                   steps: int = 1000, lr: float = 0.1, seed: int = 0,
                   progress: bool | Callable[[int, int], Any] = False,
                   architecture: str = "small-cnn", epochs: int | None = None) -> TrojanNN:
    """Craft the trojan trigger of Liu, Ma, Aafer, Lee, Zhai, Wang & Zhang (NDSS 2018, "Trojaning
    Attack on Neural Networks"): a pattern inside a fixed mask, optimised so that chosen internal
    neurons of a clean model reach `target_value`.

    layer: the name of a Linear or Conv2d module of the model whose outputs are the neurons
    (default: the last hidden one, the layer before the classifier; for the small CNN `head.1`).
    neurons: how many to excite, picked as the best connected (largest summed |weight| into the
    next layer, as TrojanZoo selects them), or their indices. The loss is the paper's
    Σ (activation − target_value)², minimised with Adam (`lr`, cosine-annealed over `steps`, as
    TrojanZoo) on the pattern's pixels (tanh-parametrised, so they stay in [0, 1]), the trigger
    stamped on a black image (the input holds nothing but the trigger, as in the paper and
    TrojanZoo). The activation is the layer's output before its nonlinearity (channels summed
    over space): after a ReLU a silent neuron has no gradient and could never be excited (met on
    the small CNN: one of the two chosen neurons stayed at 0). The target label plays no part:
    poisoning pairs the trigger with it.
    mask: an (H, W) tensor in [0, 1] (any shape, e.g. a logo), or None for a `size`×`size` square
    at `position`/`margin` (placed as Patch places it). Returns a `TrojanNN` trigger.
    """
    data = _check_data(data)
    c, h, w = data.image_shape
    if mask is None:
        size = check_int("size", size, low=1, high=min(h, w))
        square = Patch(size, position, 1.0, margin)  # validates position and margin
        square(data.x_test[:1])  # and that the square fits the images
        m = square.mask_and_pattern((c, h, w), "cpu", torch.float32)[0][0]
    else:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"`mask` must be None or an (H, W) tensor in [0, 1]; got "
                            f"{type(mask).__name__}.")
        if tuple(mask.shape) != (h, w):
            raise ValueError(f"`mask` must have the images' shape ({h}, {w}); got "
                             f"{tuple(mask.shape)} (the trigger does not fit the image).")
        m = TrojanNN(mask, torch.zeros((1, h, w))).mask  # checks values in [0, 1], not all zero
    target_value = check_float("target_value", target_value, 0.0, None, low_open=True)
    steps = check_int("steps", steps, low=1, high=100_000)
    lr = check_float("lr", lr, 0.0, None, low_open=True)
    seed = check_seed("seed", seed, generator=False)
    _check_progress(progress)
    _check_model_args(model, data, architecture, epochs)
    # the layer and neurons are checked on the model, or on a fresh one of the architecture the
    # clean model will have, before it is trained
    probe = model if model is not None else build_model(architecture, c, data.num_classes, (h, w))
    layer = _check_layer(layer, probe)
    neurons = _check_neurons(neurons, _width(_linear_layers(probe)[layer]))

    net = _clean_model(data, model, architecture, epochs, seed, progress)
    module = _linear_layers(net)[layer]
    dev = model_device(net)
    idx = _neuron_index(net, layer, neurons).to(dev)
    g = torch.Generator().manual_seed(seed)
    a = torch.randn((c, h, w), generator=g).to(dev).requires_grad_(True)
    md = m.to(dev)[None, None]
    opt = torch.optim.Adam([a], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(_keep(seen))
    try:
        with preserve_model(net, requires_grad=False):
            for _ in _steps(steps, "TrojanNN trigger", progress):
                seen.clear()
                pattern = (torch.tanh(a) + 1) / 2
                net(md * pattern[None])  # the trigger on a black image
                loss = ((_activations(seen[0], idx) - target_value) ** 2).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    finally:
        handle.remove()
    pattern = ((torch.tanh(a.detach()) + 1) / 2).cpu()
    if not bool(torch.isfinite(pattern).all()):
        raise FloatingPointError("Crafting diverged: the pattern holds NaN values; lower `lr`.")
    return TrojanNN(m, (pattern * (m > 0)).clamp(0.0, 1.0))


def neuron_activation(model: nn.Module, trigger: TrojanNN, layer: str | None = None,
                      neurons: int | Sequence[int] = 2) -> torch.Tensor:
    """The chosen neurons' values (as `craft_trojannn` picks and measures them) for the trigger on
    a black image: what crafting drives up. For checks and displays."""
    check_model(model)
    if not isinstance(trigger, TrojanNN):
        raise TypeError(f"`trigger` must be a TrojanNN; got {type(trigger).__name__}.")
    layer = _check_layer(layer, model)
    module = _linear_layers(model)[layer]
    neurons = _check_neurons(neurons, _width(module))
    idx = _neuron_index(model, layer, neurons)
    x = trigger(torch.zeros((1, trigger.pattern.shape[0], *trigger.mask.shape)))
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(_keep(seen))
    try:
        with preserve_model(model), torch.inference_mode():
            model(x.to(model_device(model)))
    finally:
        handle.remove()
    return _activations(seen[0], idx.to(seen[0].device))[0].cpu()


CRAFTERS = {"LowFrequency": craft_low_frequency, "TrojanNN": craft_trojannn}


def craft(name: str, data: Dataset | str = "digits", **kwargs):
    """The crafted trigger `name` (one of CRAFTERS: "LowFrequency", "TrojanNN") for `data`; the
    keyword arguments go to its crafting function (`target` is taken, and ignored, by TrojanNN,
    whose crafting does not depend on it, so one call fits both)."""
    check_choice("name", name, tuple(CRAFTERS))
    if name == "TrojanNN" and "target" in kwargs:
        kwargs = dict(kwargs)
        target = kwargs.pop("target")
        d = _check_data(data)
        check_int("target", target, 0, d.num_classes - 1)
        data = d
    return CRAFTERS[name](data, **kwargs)


__all__ = ["craft", "craft_low_frequency", "craft_trojannn", "gaussian_lowpass",
           "neuron_activation", "CRAFTERS", "CRAFT_VERSION", "ZENG_SIGMA_SHARE"]
