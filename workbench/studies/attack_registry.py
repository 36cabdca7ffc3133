"""The attack registry: every attack of the workbench, and the one way to train one.

An *attack* is a trigger together with how it is poisoned (`poisoning`: dirty-label, clean-label,
label-consistent) and whom it targets (`target_mode`: all-to-one, all-to-all), at two poisoning
rates per dataset: a weak one, where the attack is not saturated (ASR well below 1), and a strong
one, where it reaches ASR ≥ 0.9 on the workbench's datasets where it can (the rates come from the
measurements in benchmarks/RESULTS.md, sections "Attack atlas: ...").

    ATTACKS            name -> Attack (family, paper, trigger, poisoning, target mode, rates)
    train_attack       train (or load from the run cache) one attack of the registry
    train_from_config  the same for an attack given by its trigger's config and settings: the one
                       training path of every attack (train_attack, the sweep's grid points, the
                       detection study through train_attack)
    attack_trigger     the trigger of an attack (crafted on the clean model for LowFrequency and
                       TrojanNN); clean_model_run: that clean model
    trigger_norms      mean L2 and L∞ norm of trigger(x) − x

The atlas study (`workbench.atlas`: its grids, the diagnostics) re-exports these names; the sweep
(`workbench.sweep`) builds its attack grids from them. This module sits below both, so that the
sweep need not import the atlas, which builds on the sweep.

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
from types import MappingProxyType

import torch

from ..base._validate import check_choice, check_float, check_images, check_int, check_seed
from ..training.crafting import craft
from ..base.data import DATASETS, Dataset, as_dataset
from ..training.input_aware import train_input_aware
from ..training.train import BackdoorRun, prepare_run, train_backdoor
from ..attacks.triggers import CRAFTED, Patch, Trigger, trigger_from_config

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

    def __post_init__(self):
        # read-only views: the registry is shared by every study, and a caller's change to one
        # attack's dicts would move every later run's settings (and keys) silently
        object.__setattr__(self, "trigger", MappingProxyType(dict(self.trigger)))
        object.__setattr__(self, "rates", MappingProxyType(dict(self.rates)))
        object.__setattr__(self, "trigger_by_dataset", MappingProxyType(
            {k: MappingProxyType(dict(v)) for k, v in self.trigger_by_dataset.items()}))

    @property
    def kind(self) -> str:
        return self.trigger["type"]

    def trigger_config(self, dataset: str) -> dict:
        return dict(self.trigger, **self.trigger_by_dataset.get(dataset, {}))


_PATCH_RATES = {"digits": (0.005, 0.05), "fashion-mnist": (0.001, 0.05)}
ATTACKS = MappingProxyType({a.name: a for a in (
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
)})
assert all(a.family in FAMILIES for a in ATTACKS.values())
ATLAS_DATASETS = ("digits", "fashion-mnist")  # the datasets the attacks' rates were measured on
assert all(set(a.rates) == set(ATLAS_DATASETS) for a in ATTACKS.values())


def _check_attack(name) -> Attack:
    check_choice("attack", name, tuple(ATTACKS))
    return ATTACKS[name]


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


def _clean_run(data: Dataset, model: str, epochs, seed: int, batch_size, lr, weight_decay,
               max_train, progress: bool) -> BackdoorRun:
    """The clean model of these training settings (rate 0, target 0, `train_backdoor`'s default
    trigger for its ASR), from the run cache: what the crafted triggers are optimised on."""
    return train_backdoor(data, rate=0.0, target=0, model=model, epochs=epochs, seed=seed,
                          batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                          max_train=max_train, progress=progress)


def _trigger(data: Dataset, config: dict, target: int, model: str, epochs, seed: int, batch_size,
             lr, weight_decay, max_train, progress: bool) -> Trigger:
    """The trigger of `config`: built by `trigger_from_config`, or crafted (LowFrequency, TrojanNN,
    the config's other entries its crafting arguments) on the clean model of the training
    settings, with `seed` and `target`."""
    if config["type"] in CRAFTED:
        clean = _clean_run(data, model, epochs, seed, batch_size, lr, weight_decay, max_train,
                           progress)
        kwargs = {k: v for k, v in config.items() if k != "type"}
        return craft(config["type"], data, target=target, model=clean.model, seed=seed, **kwargs)
    return trigger_from_config(config)


def clean_model_run(data, seed: int = 0, model: str = ATLAS_MODEL, progress: bool = False,
                    epochs: int | None = None) -> BackdoorRun:
    """The clean model the crafted triggers are optimised on: `train_backdoor(rate=0)` with the
    atlas's training settings for the dataset and the attack's epochs (run cache)."""
    data = as_dataset(data)
    return _clean_run(data, model, epochs, seed, None, None, 0.0,
                      training_args(data.name).get("max_train"), progress)


def attack_trigger(name: str, data, seed: int = 0, target: int = 0, model: str = ATLAS_MODEL,
                   progress: bool = False, epochs: int | None = None) -> Trigger:
    """The trigger of attack `name` on `data`: built from its config, or crafted (LowFrequency,
    TrojanNN) on `clean_model_run(data, seed, model, epochs=epochs)` with `seed` (the clean model
    is trained as long as the attacked one: `epochs`, None for the dataset's default). InputAware
    has no trigger before training (its generator is trained with the classifier): use
    `train_attack`."""
    a = _check_attack(name)
    data = as_dataset(data)
    seed = check_seed("seed", seed, generator=False)
    if a.kind == "InputAware":
        raise ValueError("`name` 'InputAware' has no trigger before training: its generator is "
                         "trained with the classifier; use train_attack(data, 'InputAware').")
    check_int("target", target, 0, data.num_classes - 1)  # before the clean model is trained
    return _trigger(data, a.trigger_config(data.name), target, model, epochs, seed, None, None,
                    0.0, training_args(data.name).get("max_train"), progress)


def train_from_config(data, trigger: dict, rate: float, target: int = 0,
                      model: str = ATLAS_MODEL, epochs: int | None = None, seed: int = 0, *,
                      poisoning: str = "dirty-label", target_mode: str = "all-to-one",
                      epsilon: float | None = None, pgd_steps: int | None = None,
                      pgd_step_size: float | None = None, batch_size: int | None = None,
                      lr: float | None = None, weight_decay: float = 0.0,
                      max_train: int | None = None, progress: bool = False) -> BackdoorRun:
    """Train (or load from the run cache) the model of an attack given by its trigger's config:
    the one training path of every attack ("this attack, at this rate, with this seed"):
    `train_attack` (the atlas, the detection study) and the sweep's grid points call it.

    trigger: a config of `workbench.triggers.trigger_from_config` (that trigger, poisoned by
        `train_backdoor` with `poisoning`, `target_mode` and the PGD settings); or {"type":
        "LowFrequency"/"TrojanNN", **crafting arguments}: crafted (`crafting.craft` with `seed`
        and `target`) on the clean model of the same training settings (rate 0, target 0, this
        call's model, epochs, seed, batch size, learning rates and max_train), then poisoned as
        above; or {"type": "InputAware", **train_input_aware's settings (cross_rate, lr_generator,
        ...)}: the input-aware backdoor, its generators trained with the classifier
        (`train_input_aware`: dirty-label, all-to-one).
    The other arguments are `train_backdoor`'s (None: the dataset's default). Every argument is
    checked before a clean model is trained or a trigger crafted. Returns a `BackdoorRun` (an
    `InputAwareRun` for InputAware).
    """
    data = as_dataset(data)
    if not isinstance(trigger, dict) or not isinstance(trigger.get("type"), str):
        raise TypeError(f"`trigger` must be a trigger config: a dict with a 'type'; got {trigger!r}.")
    settings = {k: v for k, v in trigger.items() if k != "type"}
    common = dict(target=target, model=model, epochs=epochs, seed=seed, batch_size=batch_size,
                  lr=lr, weight_decay=weight_decay, max_train=max_train, progress=progress)
    if trigger["type"] == "InputAware":
        given = {"poisoning": (poisoning, "dirty-label"), "target_mode": (target_mode, "all-to-one"),
                 "epsilon": (epsilon, None), "pgd_steps": (pgd_steps, None),
                 "pgd_step_size": (pgd_step_size, None)}
        for name, (value, default) in given.items():
            if value != default:
                raise ValueError(f"`{name}` must be {default!r} for InputAware (its backdoor "
                                 f"images are dirty-label, all-to-one); got {value!r}.")
        return train_input_aware(data, rate=rate, **settings, **common)
    poison = dict(poisoning=poisoning, target_mode=target_mode, epsilon=epsilon,
                  pgd_steps=pgd_steps, pgd_step_size=pgd_step_size)
    if trigger["type"] in CRAFTED:  # the run's settings, checked before any training
        prepare_run(data, Patch(size=1), rate, target, model, epochs, seed, batch_size, lr,
                    weight_decay, max_train, **poison)
    trig = _trigger(data, dict(trigger), target, model, epochs, seed, batch_size, lr, weight_decay,
                    max_train, False)
    return train_backdoor(data, trigger=trig, rate=rate, **poison, **common)


def train_attack(data, name: str, rate: float | None = None, seed: int = 0, target: int = 0,
                 model: str = ATLAS_MODEL, epochs: int | None = None,
                 progress: bool = False) -> BackdoorRun:
    """Train (or load from the run cache) the model of attack `name` on `data` at `rate` (None:
    the attack's strong rate), with the atlas's training settings (ATLAS_TRAINING), through
    `train_from_config`. Returns a `BackdoorRun` (an `InputAwareRun` for InputAware); its
    `triggered_pairs` and `measure_asr` handle every poisoning and target mode."""
    a = _check_attack(name)
    data = as_dataset(data)
    rate = attack_rates(name, data.name)[1] if rate is None else check_float("rate", rate, 0.0, 1.0)
    seed = check_seed("seed", seed, generator=False)
    config = a.trigger_config(data.name)
    if a.kind == "InputAware":
        if rate == 0.0:
            raise ValueError("`rate` must be > 0 for InputAware (rate 0 is the clean model: use "
                             "clean_model_run).")
        # the paper's cross ("noise") samples at the same rate as the backdoor samples
        config = dict(config, cross_rate=rate)
        return train_from_config(data, config, rate, target, model, epochs, seed,
                                 progress=progress, **training_args(data.name))
    return train_from_config(data, config, rate, target, model, epochs, seed,
                             poisoning=a.poisoning, target_mode=a.target_mode, epsilon=a.epsilon,
                             progress=progress, **training_args(data.name))


def trigger_norms(trigger, x: torch.Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """The trigger's size: the mean over images of ||trigger(x) − x||₂ and of ||trigger(x) − x||∞
    (pixel units, all channels), the test-time trigger (AdaptiveBlend's test opacity)."""
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


__all__ = ["ATTACKS", "ATLAS_DATASETS", "ATLAS_TRAINING", "ATLAS_MODEL", "Attack", "FAMILIES",
           "attack_rates", "attack_trigger", "clean_model_run", "train_attack",
           "train_from_config", "training_args", "trigger_norms"]
