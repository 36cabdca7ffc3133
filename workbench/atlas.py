"""The attack atlas: every attack of the workbench, side by side, as one sweep axis.

An *attack* is a trigger together with how it is poisoned (`poisoning`: dirty-label, clean-label,
label-consistent) and whom it targets (`target_mode`: all-to-one, all-to-all), at two poisoning
rates per dataset: a weak one, where the attack is not saturated (ASR well below 1), and a strong
one, where it reaches ASR ≥ 0.9 on the workbench's datasets where it can (the rates come from the
measurements in benchmarks/RESULTS.md, sections "Attack atlas: ..."). The atlas sweep
(`python -m workbench sweep --atlas`) measures clean accuracy, ASR, the smoothing gap and the
trigger's size for each, on digits and Fashion-MNIST, two seeds each: the workbench's answer to
"which backdoors make the decision function smoother, and why?".

    ATTACKS        name -> Attack (family, paper, trigger, poisoning, target mode, rates)
    train_attack   train (or load from the run cache) one attack's model
    trigger_norms  mean L2 and L∞ norm of trigger(x) − x
    noise_to_target  does Gaussian noise alone fire the backdoor? (a diagnostic of the gap's sign)
    atlas_grid     the atlas as a `SweepGrid`; quick_grid: a small one for notebooks

The papers (each trigger's and poisoning mode's docstring has the details):
    Patch (BadNets): Gu, Dolan-Gavitt & Garg, "BadNets", 2017 (also all-to-all)
    Checkerboard, Pixel: patch variants (Gu et al. 2017; Tran et al., NeurIPS 2018)
    Blend: Chen, Liu, Li, Lu & Song, "Targeted backdoor attacks ... data poisoning", 2017
    Sinusoid (SIG's signal): Barni, Kallas & Tondi, ICIP 2019
    Warp (WaNet): Nguyen & Tran, ICLR 2021
    BPP: Wang, Zhai & Ma, "BppAttack", CVPR 2022
    FTrojan: Wang, Hu, Chen, Wang, Wu & Luo, ECCV 2022
    AdaptiveBlend: Qi, Xie, Li, Wang & Mittal, "Revisiting the assumption of latent separability
        for backdoor defenses", ICLR 2023
    LowFrequency: Zeng, Park, Mao & Jia, "Rethinking the backdoor attacks' triggers: a frequency
        perspective", ICCV 2021
    TrojanNN: Liu, Ma, Aafer, Lee, Zhai, Wang & Zhang, "Trojaning attack on neural networks",
        NDSS 2018
    InputAware: Nguyen & Tran, "Input-aware dynamic backdoor attack", NeurIPS 2020
    clean-label: Barni et al. 2019 (SIG's setting); label-consistent: Turner, Tsipras & Madry,
        "Label-consistent backdoor attacks", 2019
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ._validate import check_choice, check_float, check_int, check_seed
from .data import DATASETS, Dataset, as_dataset

ATLAS_CSV = "reports/atlas.csv"

FAMILIES = ("visible patch", "blended", "imperceptible", "optimised", "sample-specific",
            "clean-label", "all-to-all")

# Extra training arguments per dataset: Fashion-MNIST's atlas trains on the first 20,000 of its
# 60,000 training images (a third of the time; 60 runs of the full set do not fit the 2-core
# budget). Every rate is a fraction of the images trained on.
ATLAS_TRAINING = {"digits": {}, "fashion-mnist": {"max_train": 20_000}}
ATLAS_MODEL = "small-cnn"


@dataclass(frozen=True)
class Attack:
    """One attack of the atlas: a trigger, how it is poisoned and whom it targets.

    trigger: a trigger config (`workbench.triggers.trigger_from_config`), or {"type":
        "LowFrequency"/"TrojanNN", ...crafting arguments} for a trigger crafted on the workbench's
        clean model of the dataset (same seed as the run), or {"type": "InputAware"} for the
        input-aware dynamic backdoor (its generator trained with the classifier).
    rates: {dataset: (weak, strong)}: a fraction of the training images (ATLAS_TRAINING).
    """

    name: str
    family: str
    paper: str
    trigger: dict
    rates: dict
    poisoning: str = "dirty-label"
    target_mode: str = "all-to-one"
    epsilon: float | None = None
    # per-dataset trigger settings that differ from `trigger` (measured: the default does not
    # reach the bar there; benchmarks/RESULTS.md)
    trigger_by_dataset: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.trigger["type"]

    def trigger_config(self, dataset: str) -> dict:
        return dict(self.trigger, **self.trigger_by_dataset.get(dataset, {}))


_PATCH_RATES = {"digits": (0.005, 0.05), "fashion-mnist": (0.001, 0.05)}
ATTACKS = {a.name: a for a in (
    Attack("Patch", "visible patch", "Gu et al. 2017 (BadNets)", {"type": "Patch", "size": 3},
           _PATCH_RATES),
    Attack("Checkerboard", "visible patch", "Gu et al. 2017 (BadNets' pattern)",
           {"type": "Checkerboard", "size": 3}, _PATCH_RATES),
    Attack("Pixel", "visible patch", "Tran et al. 2018 (single pixel)", {"type": "Pixel"},
           {"digits": (0.01, 0.1), "fashion-mnist": (0.002, 0.05)}),
    Attack("Blend", "blended", "Chen et al. 2017", {"type": "Blend"},
           {"digits": (0.01, 0.1), "fashion-mnist": (0.002, 0.05)}),
    Attack("Sinusoid", "blended", "Barni et al. 2019 (SIG's signal, dirty-label)",
           {"type": "Sinusoid"}, {"digits": (0.05, 0.2), "fashion-mnist": (0.002, 0.05)}),
    Attack("Warp", "imperceptible", "Nguyen & Tran 2021 (WaNet)", {"type": "Warp"},
           {"digits": (0.05, 0.2), "fashion-mnist": (0.05, 0.2)}),
    Attack("BPP", "imperceptible", "Wang et al. 2022 (BppAttack)", {"type": "BPP", "bits": 2},
           {"digits": (0.05, 0.1), "fashion-mnist": (0.01, 0.2)}),
    Attack("FTrojan", "imperceptible", "Wang et al. 2022 (FTrojan)", {"type": "FTrojan"},
           {"digits": (0.01, 0.02), "fashion-mnist": (0.01, 0.05)},
           trigger_by_dataset={"digits": {"magnitude": 0.5}}),
    Attack("AdaptiveBlend", "blended", "Qi et al. 2023 (Adap-Blend)", {"type": "AdaptiveBlend"},
           {"digits": (0.05, 0.1), "fashion-mnist": (0.002, 0.05)}),
    Attack("LowFrequency", "optimised", "Zeng et al. 2021 (low-frequency trigger)",
           {"type": "LowFrequency"}, {"digits": (0.01, 0.05), "fashion-mnist": (0.001, 0.005)}),
    Attack("TrojanNN", "optimised", "Liu et al. 2018 (TrojanNN)", {"type": "TrojanNN"},
           {"digits": (0.005, 0.02), "fashion-mnist": (0.001, 0.005)}),
    Attack("InputAware", "sample-specific", "Nguyen & Tran 2020 (Input-Aware)",
           {"type": "InputAware"}, {"digits": (0.05, 0.2), "fashion-mnist": (0.05, 0.2)}),
    Attack("Patch/clean-label", "clean-label", "Barni et al. 2019 (clean-label setting)",
           {"type": "Patch", "size": 5}, {"digits": (0.049, 0.098), "fashion-mnist": (0.05, 0.09)},
           poisoning="clean-label"),
    Attack("Patch/label-consistent", "clean-label", "Turner et al. 2019",
           {"type": "Patch", "size": 5}, {"digits": (0.025, 0.049), "fashion-mnist": (0.01, 0.05)},
           poisoning="label-consistent", epsilon=0.3),
    Attack("Patch/all-to-all", "all-to-all", "Gu et al. 2017 (BadNets, all-to-all)",
           {"type": "Patch", "size": 3}, {"digits": (0.05, 0.2), "fashion-mnist": (0.02, 0.1)},
           target_mode="all-to-all"),
)}
assert all(a.family in FAMILIES for a in ATTACKS.values())
ATLAS_DATASETS = ("digits", "fashion-mnist")  # the datasets the attacks' rates were measured on
assert all(set(a.rates) == set(ATLAS_DATASETS) for a in ATTACKS.values())


def _check_attack(name) -> "Attack":
    check_choice("attack", name, tuple(ATTACKS))
    return ATTACKS[name]


def _data(data) -> Dataset:
    return as_dataset(data)


def attack_rates(name: str, dataset: str) -> tuple[float, float]:
    """The attack's (weak, strong) poisoning rates on `dataset`."""
    a = _check_attack(name)
    check_choice("dataset", dataset, DATASETS)
    if dataset not in a.rates:
        raise ValueError(f"`dataset`: the atlas's rates were measured on {ATLAS_DATASETS} only; "
                         f"for {dataset!r} give the rate yourself (train_attack(rate=...), "
                         "atlas_grid(rates=(...)))")
    return a.rates[dataset]


def training_args(dataset: str) -> dict:
    """The atlas's extra `train_backdoor` arguments for `dataset` (a copy)."""
    return dict(ATLAS_TRAINING.get(dataset, {}))


def clean_model_run(data, seed: int = 0, model: str = ATLAS_MODEL, progress: bool = False,
                    epochs: int | None = None):
    """The clean model the crafted triggers are optimised on: `train_backdoor(rate=0)` with the
    atlas's training settings for the dataset and the attack's epochs (run cache)."""
    from .train import train_backdoor

    data = _data(data)
    return train_backdoor(data, rate=0.0, model=model, seed=seed, epochs=epochs,
                          progress=progress, **training_args(data.name))


def attack_trigger(name: str, data, seed: int = 0, target: int = 0, model: str = ATLAS_MODEL,
                   progress: bool = False, epochs: int | None = None):
    """The trigger of attack `name` on `data`: built from its config, or crafted (LowFrequency,
    TrojanNN) on `clean_model_run(data, seed, model, epochs=epochs)` with `seed` (the clean model
    is trained as long as the attacked one: `epochs`, None for the dataset's default). InputAware has no trigger
    before training (its generator is trained with the classifier): use `train_attack`."""
    from .crafting import craft
    from .triggers import trigger_from_config

    a = _check_attack(name)
    data = _data(data)
    seed = check_seed("seed", seed, generator=False)
    if a.kind == "InputAware":
        raise ValueError("`name` 'InputAware' has no trigger before training: its generator is "
                         "trained with the classifier; use train_attack(data, 'InputAware').")
    cfg = a.trigger_config(data.name)
    check_int("target", target, 0, data.num_classes - 1)  # before the clean model is trained
    if a.kind in ("LowFrequency", "TrojanNN"):
        clean = clean_model_run(data, seed, model, progress, epochs)
        kwargs = {k: v for k, v in cfg.items() if k != "type"}
        return craft(a.kind, data, target=target, model=clean.model, seed=seed, **kwargs)
    return trigger_from_config(cfg)


def train_attack(data, name: str, rate: float | None = None, seed: int = 0, target: int = 0,
                 model: str = ATLAS_MODEL, epochs: int | None = None, progress: bool = False):
    """Train (or load from the run cache) the model of attack `name` on `data` at `rate` (None:
    the attack's strong rate), with the atlas's training settings (ATLAS_TRAINING). Returns a
    `BackdoorRun` (an `InputAwareRun` for InputAware); its `triggered_pairs` and `measure_asr`
    handle every poisoning and target mode."""
    from .train import train_backdoor

    a = _check_attack(name)
    data = _data(data)
    rate = attack_rates(name, data.name)[1] if rate is None else check_float("rate", rate, 0.0, 1.0)
    seed = check_seed("seed", seed, generator=False)
    extra = training_args(data.name)
    if a.kind == "InputAware":
        from .input_aware import train_input_aware

        if rate == 0.0:
            raise ValueError("`rate` must be > 0 for InputAware (rate 0 is the clean model: use "
                             "clean_model_run).")
        # the paper's cross ("noise") samples at the same rate as the backdoor samples
        return train_input_aware(data, rate=rate, cross_rate=rate, target=target, model=model,
                                 epochs=epochs, seed=seed, progress=progress, **extra)
    if a.kind in ("LowFrequency", "TrojanNN"):
        # every argument is checked before the clean model is trained and the trigger crafted
        from .train import prepare_run as _prepare
        from .triggers import Patch

        _prepare(data, Patch(), rate, target, model, epochs, seed, None, None, 0.0,
                 extra.get("max_train"), poisoning=a.poisoning, target_mode=a.target_mode,
                 epsilon=a.epsilon)
    trigger = attack_trigger(name, data, seed, target, model, epochs=epochs)
    return train_backdoor(data, trigger=trigger, rate=rate, target=target, model=model,
                          epochs=epochs, seed=seed, progress=progress, poisoning=a.poisoning,
                          target_mode=a.target_mode, epsilon=a.epsilon, **extra)


def trigger_norms(trigger, x: torch.Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """The trigger's size: the mean over images of ||trigger(x) − x||₂ and of ||trigger(x) − x||∞
    (pixel units, all channels), the test-time trigger (AdaptiveBlend's test opacity)."""
    from ._validate import check_images

    check_images("x", x)
    check_int("batch_size", batch_size, low=1)
    l2, linf = 0.0, 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            d = (trigger(xb) - xb).flatten(1).double()
            l2 += float(d.norm(dim=1).sum())
            linf += float(d.abs().amax(dim=1).sum())
    return l2 / len(x), linf / len(x)


def noise_to_target(run, data, sigmas, n: int = 300, seed: int = 0) -> dict[float, float]:
    """Does Gaussian noise alone fire the backdoor? For each σ, the share of noisy clean test
    inputs that the run's model sends to the attacker's label: up to `n` test inputs the attack
    applies to (`run.triggered_pairs`: non-target classes; every class, each to its own shifted
    label, for all-to-all), each with one draw of N(0, σ²I) (seed `seed`, not clipped: the noise
    of the W_σ estimator). A diagnostic of the atlas (benchmarks/RESULTS.md, "The attack atlas"):
    where noise fires the backdoor, triggered inputs stay at the target under noise and look
    smoother; where it does not, noise drowns a faint trigger and they look less smooth. The model
    is given back as it was (`models.preserve_model`)."""
    from ._validate import check_sigmas
    from .models import preserve_model
    from .sampling import model_device
    from .train import BackdoorRun

    if not isinstance(run, BackdoorRun):
        raise TypeError(f"`run` must be a workbench BackdoorRun; got {type(run).__name__}.")
    data = _data(data)
    sig = check_sigmas("sigmas", sigmas)
    check_int("n", n, low=1)
    seed = check_seed("seed", seed, generator=False)
    pairs = run.triggered_pairs(data.x_test, data.y_test, n=n, seed=seed)
    g = torch.Generator().manual_seed(seed)
    out = {}
    with preserve_model(run.model) as net, torch.no_grad():
        dev = model_device(net)
        for s in sig:
            x = pairs.clean + s * torch.randn(pairs.clean.shape, generator=g)
            hits = net(x.to(dev)).argmax(1).cpu() == pairs.targets
            out[float(s)] = float(hits.float().mean())
    return out


def atlas_grid(datasets=("digits", "fashion-mnist"), attacks=None, seeds=(0, 1), rates=None,
               n_pairs: int = 50, n_samples: int = 64, targets=(0,)):
    """The atlas as a `workbench.sweep.SweepGrid`: every attack (or those named) on each dataset,
    at each attack's two rates (rates None), its weak or strong one ("weak", "strong"), or the
    `rates` given (a tuple), for each seed."""
    from .sweep import SweepGrid

    return SweepGrid(datasets=tuple(datasets) if not isinstance(datasets, str) else datasets,
                     attacks=tuple(ATTACKS) if attacks is None else attacks, rates=rates,
                     seeds=seeds, targets=targets, n_pairs=n_pairs, n_samples=n_samples)


QUICK_ATTACKS = ("Patch", "Blend", "FTrojan", "TrojanNN", "Patch/all-to-all")


def quick_grid():
    """A small atlas for a notebook's default (digits, five attacks of five families, one seed,
    their strong rates, 30 pairs × 32 samples): a few minutes on 2 cores from an empty cache."""
    from .sweep import SweepGrid

    return SweepGrid(datasets=("digits",), attacks=QUICK_ATTACKS, rates="strong", seeds=(0,),
                     n_pairs=30, n_samples=32)


__all__ = ["ATTACKS", "ATLAS_CSV", "ATLAS_DATASETS", "ATLAS_TRAINING", "ATLAS_MODEL", "Attack", "FAMILIES",
           "QUICK_ATTACKS", "atlas_grid", "attack_rates", "attack_trigger", "clean_model_run",
           "noise_to_target", "quick_grid", "train_attack", "training_args", "trigger_norms"]
