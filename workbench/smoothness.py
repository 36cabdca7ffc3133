"""The backdoor-smoothing measure W_σ(x) and its summaries (no plotting, no widgets).

For a classifier f, an input x, a noise scale σ and n samples (method.md):

    x_i = x + σ·ε_i,  ε_i ~ N(0, I)  (or U[-1, 1]^d: the L∞ ball of radius σ)
    p̂_c = (1/n)·#{i : argmax f(x_i) = c}    ("hard" votes; "soft": mean softmax over the x_i)
    W_σ(x) = −Σ_c p̂_c log p̂_c               (nats; / log K when normalised)

Design:
- Work is a list of cells (input j, noise scale s); cells are processed in chunks of noisy rows
  sized from the memory budget and fed to the model in `batch_size` slices, so no (N·S·n, C, H, W)
  tensor ever exists. Only the votes (N, S, K) are kept.
- Noise is drawn on the model's device in blocks of NOISE_BLOCK samples. Block b of input j (at σ
  index s) comes from its own generator, seeded from (seed, j, b, s): the draws do not depend on
  chunking or batch size, and two input sets estimated with the same seed (clean and triggered
  twins) see the same noise ("common random numbers" for the pair), which lowers the variance of
  their difference (measured: 27% fewer samples for the same gap variance). `common_noise=True`
  also shares the draws across σ: smooth curves, but correlated errors along a curve add up in
  its mean (measured: 3.3-5.7x more samples for the same gap variance).
- Uncertainty: hard mode uses the delta method for the multinomial plug-in entropy,
  Var(Ĥ) ≈ (Σ p (log p)² − H²)/n (Basharin 1959); soft mode a delete-a-group jackknife over
  JACKKNIFE_GROUPS groups of samples. The plug-in entropy is biased low by ≈ (K−1)/(2n); the
  Miller–Madow correction adds (m−1)/(2n), m = classes seen.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn
from tqdm.auto import tqdm

from ._validate import check_choice, check_float, check_images, check_int, check_seed, check_sigmas

# Version of the estimator's results: bump whenever a change can move any number it returns (noise
# streams, statistics, defaults), so that stored results (sweep rows) made by older code are never
# reused as if they were current.
ESTIMATOR_VERSION = 2
NOISE_BLOCK = 64  # samples per noise block: the unit of reproducible draws
JACKKNIFE_GROUPS = 10  # groups for the delete-a-group jackknife (soft mode, jackknife bias fix)
DEFAULT_MEMORY_BUDGET = 512 * 2**20  # bytes of working memory: noisy chunks + activations
ACTIVATION_FACTOR = 64  # activation bytes per input byte, a generous bound for the zoo's models
CHUNK_ROWS_MAX = 16384  # noisy rows built at once (then fed in batch_size slices)
# bytes of peak memory per byte of a chunk's noisy rows, measured (RSS growth ≈ 18x the chunk's
# input bytes on the digits CNN: noise, gathers, noisy copies, logits, allocator slack), doubled
# because the chunk gets half the budget (benchmarks/RESULTS.md, section 4)
CHUNK_FACTOR = 40
_MASK64 = (1 << 64) - 1
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz


def _mix(*words: int) -> int:
    """splitmix64 over the words: well-spread, independent-looking 63-bit seeds from counters."""
    z = 0x9E3779B97F4A7C15
    for w in words:
        z = (z ^ (w & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
        z ^= z >> 31
    return z >> 1


@dataclass(frozen=True)
class SmoothnessResult:
    """W_σ for N inputs on a grid of S noise scales, with its Monte-Carlo uncertainty."""

    sigmas: np.ndarray  # (S,) noise scales σ
    entropy: np.ndarray  # (N, S) W_σ(x) in nats, or as a fraction of log K if normalised
    entropy_se: np.ndarray  # (N, S) standard error of `entropy`
    ci_low: np.ndarray  # (N, S) lower end of the `confidence` interval
    ci_high: np.ndarray  # (N, S) upper end
    frequencies: np.ndarray  # (N, S, K) hard: vote frequencies p̂_c; soft: mean softmax
    counts: np.ndarray | None  # (N, S, K) hard-mode vote counts (None in soft mode)
    n_samples: np.ndarray  # (N, S) noisy samples used per cell (varies with adaptive sampling)
    num_classes: int  # K
    settings: dict = field(default_factory=dict)  # every option and the seed it came from

    @property
    def units(self) -> str:
        return "fraction of log K" if self.settings.get("normalize") else "nats"

    @property
    def top_class(self) -> np.ndarray:
        """(N, S) the most frequent class."""
        return self.frequencies.argmax(-1)

    def mean_entropy(self) -> np.ndarray:
        """(N,) area under the W_σ curve divided by the σ range (lower = smoother)."""
        if len(self.sigmas) == 1:
            return self.entropy[:, 0].copy()
        area = _trapezoid(self.entropy, self.sigmas, axis=1)
        return area / (self.sigmas[-1] - self.sigmas[0])

    def smoothness_radius(self, threshold: float | None = None) -> np.ndarray:
        """(N,) the smallest σ at which W_σ exceeds `threshold` (linear interpolation).

        threshold: in the result's units; default 0.1·log K (10% of the maximal entropy).
        Inputs whose curve never exceeds it get the last σ (a lower bound: censored). In hard
        mode W_0 = 0, so a curve already above at the first σ is interpolated from (0, 0).
        """
        t = self._default_threshold() if threshold is None else check_float(
            "threshold", threshold, 0.0, None, low_open=True)
        s, h = self.sigmas, self.entropy
        out = np.full(len(h), s[-1], dtype=float)
        hard = self.settings.get("mode") == "hard"
        for j, row in enumerate(h):
            above = np.nonzero(row > t)[0]
            if not len(above):
                continue
            k = above[0]
            s0, h0 = (s[k - 1], row[k - 1]) if k else ((0.0, 0.0) if hard else (s[0], t))
            out[j] = s0 + (s[k] - s0) * (t - h0) / (row[k] - h0) if row[k] != h0 else s[k]
        return out

    def _default_threshold(self) -> float:
        return 0.1 if self.settings.get("normalize") else 0.1 * math.log(self.num_classes)

    def certified_radius(self, alpha: float = 0.001) -> np.ndarray:
        """(N, S) certified L2 radius of randomized smoothing, R = σ·Φ⁻¹(p̲_A) (Cohen et al. 2019).

        p̲_A is the one-sided (1 − alpha) Clopper–Pearson lower bound on the top-class frequency;
        R = 0 (abstain) where p̲_A <= 1/2. Gaussian noise and hard votes only. Cohen et al. pick the
        top class on a separate sample; here the same votes pick and bound it, a small optimism.
        """
        alpha = check_float("alpha", alpha, 0.0, 1.0, low_open=True, high_open=True)
        if self.counts is None or self.settings.get("noise") != "gaussian":
            raise ValueError("certified_radius needs mode='hard' and noise='gaussian'; this result "
                             f"has mode={self.settings.get('mode')!r}, "
                             f"noise={self.settings.get('noise')!r}.")
        n_a = self.counts.max(-1)
        p_low = np.where(n_a > 0, stats.beta.ppf(alpha, n_a, self.n_samples - n_a + 1), 0.0)
        radius = self.sigmas[None, :] * stats.norm.ppf(np.clip(p_low, 1e-300, 1.0))
        return np.where(p_low > 0.5, radius, 0.0)

    def summary(self, kind: str = "mean", threshold: float | None = None) -> np.ndarray:
        """(N,) one number per input: "mean" (mean W over the grid), "radius", "certified"."""
        check_choice("kind", kind, ("mean", "radius", "certified"))
        if kind == "mean":
            return self.mean_entropy()
        if kind == "radius":
            return self.smoothness_radius(threshold)
        return self.certified_radius().max(1)

    def __repr__(self) -> str:
        n, s = self.entropy.shape
        return (f"SmoothnessResult(N={n}, sigmas={np.round(self.sigmas, 4).tolist()}, "
                f"mode={self.settings.get('mode')!r}, mean W={self.entropy.mean():.4f} {self.units})")


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module mapping (N, C, H, W) to logits; got "
                        f"{type(model).__name__}.")


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def default_batch_size(image_shape: Sequence[int], memory_budget: int = DEFAULT_MEMORY_BUDGET,
                       device: torch.device | None = None) -> int:
    """Rows per forward: the device's measured optimum, within half of `memory_budget` (the
    activations' half; the noisy chunks get the other, see _Engine.chunk_rows)."""
    numel = int(np.prod(image_shape))
    per_row = 4 * numel * ACTIVATION_FACTOR
    if device is not None and device.type == "cuda":
        cap = 8192
    else:
        # CPU: the best batch keeps about 2^17 input values in flight (measured optima: 512 rows
        # at 16x16, 128 at 28x28, 64 at 3x32x32; larger batches fall out of cache)
        cap = max(64, 2 ** int(round(np.log2(max(1, 2**17 // numel)))))
    return int(max(32, min(cap, memory_budget // (2 * per_row))))


def estimate_smoothness(model: nn.Module, inputs: torch.Tensor, sigmas: Sequence[float],
                        n_samples: int = 256, mode: str = "hard", noise: str = "gaussian",
                        clip: tuple[float, float] | bool | None = None, normalize: bool = False,
                        seed: int | torch.Generator = 0, batch_size: int | None = None,
                        device: str | torch.device | None = None, progress: bool = False, *,
                        bias_correction: str | None = None, confidence: float = 0.95,
                        target_se: float | None = None, max_samples: int | None = None,
                        common_noise: bool = False, precision: str = "fp32",
                        channels_last: bool | None = None,
                        memory_budget: int = DEFAULT_MEMORY_BUDGET) -> SmoothnessResult:
    """Estimate W_σ(x) for every input and σ.

    model: any nn.Module mapping (N, C, H, W) in [0, 1] to logits; run in eval mode.
    inputs: (N, C, H, W) float tensor in [0, 1].
    sigmas: increasing noise scales (pixel units; the noise std for Gaussian, the L∞ radius for
        uniform).
    n_samples: noisy copies per input and σ (the first round, with adaptive sampling).
    mode: "hard" (entropy of vote frequencies, method.md's definition) or "soft" (entropy of the
        mean softmax: smoother, never exactly 0, not comparable to hard values).
    noise: "gaussian" (N(0, σ²I)) or "uniform" (uniform in the L∞ ball of radius σ).
    clip: None/False to leave noisy copies as they are; True or (lo, hi) to clamp them to the
        valid pixel range (True means (0, 1)).
    normalize: divide entropies by log K so curves of datasets with different K compare.
    seed: int or torch.Generator; results are identical for the same seed on the same device,
        whatever `batch_size`.
    batch_size: rows per forward pass; None picks one from `memory_budget`.
    device: where to compute (the model is moved there); None = the model's device.
    progress: show a tqdm bar.
    bias_correction: None, "miller-madow" ((m−1)/(2n), hard mode) or "jackknife".
    confidence: level of the (normal-approximation) confidence intervals.
    target_se: adaptive sampling: keep adding samples to cells whose standard error is above this
        (in the result's units) until it is reached or `max_samples` (default 16·n_samples).
    common_noise: True reuses the same noise draws at every σ (smooth, monotone-looking curves for
        plots and landscapes); False (default) draws fresh noise per σ, which gives the mean-W
        summary and the smoothing gap 3-6x less Monte-Carlo variance (benchmarks/RESULTS.md).
        Either way, two input sets estimated with the same seed see the same draws (pairs).
    precision: "fp32", or "bf16"/"fp16" autocast (GPU speed; votes may differ near boundaries).
    channels_last: run the model in channels-last memory format; None (default) does so for
        models with 2-D convolutions (2.7x faster for the digits CNN on 2 CPU cores) and restores
        the model's format afterwards.
    memory_budget: bytes of working memory for the noisy chunks and the forward's activations.
        The vote accumulators and the returned arrays (about 3·N·S·K·8 bytes) come on top.
    """
    _check_model(model)
    check_images("inputs", inputs)
    sig = check_sigmas("sigmas", sigmas)
    n_samples = check_int("n_samples", n_samples, low=1)
    check_choice("mode", mode, ("hard", "soft"))
    check_choice("noise", noise, ("gaussian", "uniform"))
    if clip is True:
        clip = (0.0, 1.0)
    elif clip is False:
        clip = None
    if clip is not None:
        if (not isinstance(clip, (tuple, list)) or len(clip) != 2
                or not all(isinstance(c, (int, float)) for c in clip) or clip[0] >= clip[1]):
            raise ValueError(f"`clip` must be None, True or a (low, high) pair with low < high; "
                             f"got {clip!r}.")
        clip = (float(clip[0]), float(clip[1]))
    if not isinstance(normalize, bool):
        raise TypeError(f"`normalize` must be a bool; got {normalize!r}.")
    check_seed("seed", seed)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, low=1)
    check_choice("bias_correction", bias_correction, (None, "miller-madow", "jackknife"))
    if bias_correction == "miller-madow" and mode != "hard":
        raise ValueError("`bias_correction` 'miller-madow' applies to mode='hard' only; "
                         "use 'jackknife' in soft mode.")
    confidence = check_float("confidence", confidence, 0.0, 1.0, low_open=True, high_open=True)
    if target_se is not None:
        target_se = check_float("target_se", target_se, 0.0, None, low_open=True)
    max_samples = 16 * n_samples if max_samples is None else check_int(
        "max_samples", max_samples, low=n_samples)
    check_choice("precision", precision, ("fp32", "bf16", "fp16"))
    check_int("memory_budget", memory_budget, low=1)

    dev = torch.device(device) if device is not None else _model_device(model)
    if device is not None:
        model.to(dev)
    base_seed = (int(torch.randint(0, 2**62, (1,), generator=seed).item())
                 if isinstance(seed, torch.Generator) else int(seed))
    batch_size = batch_size or default_batch_size(inputs.shape[1:], memory_budget, dev)

    if channels_last is None:
        channels_last = any(isinstance(m, nn.Conv2d) for m in model.modules())
    # a model already in channels-last stays so; a contiguous one is given back contiguous
    restore = channels_last and not any(
        p.ndim == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
        for p in model.parameters())
    was_training = model.training
    model.eval()
    try:
        engine = _Engine(model, inputs, sig, mode, noise, clip, base_seed, batch_size, dev,
                         common_noise, precision, channels_last, memory_budget,
                         groups=mode == "soft" or bias_correction == "jackknife")
        n_used = np.zeros((len(inputs), len(sig)), dtype=np.int64)
        all_cells = np.ones_like(n_used, dtype=bool)
        total = len(inputs) * len(sig) * n_samples
        with tqdm(total=total, desc="W_σ", unit="fwd", disable=not progress, leave=False) as bar:
            engine.run(all_cells, 0, n_samples, bar)
            n_used[:] = n_samples
            stats_ = _statistics(engine, n_used, mode, normalize, bias_correction, confidence)
            while target_se is not None:
                active = (stats_[1] > target_se) & (n_used < max_samples)
                if not active.any():
                    break
                # double the samples of unfinished cells (geometric rounds: few passes, small waste)
                stop = int(min(max_samples, 2 * n_used[active].max()))
                start = int(n_used[active].min())
                bar.total += int(active.sum()) * (stop - start)
                engine.run(active, start, stop, bar)
                n_used[active] = stop
                stats_ = _statistics(engine, n_used, mode, normalize, bias_correction, confidence)
    finally:
        model.train(was_training)
        if restore:
            model.to(memory_format=torch.contiguous_format)

    entropy, se, lo, hi, freq = stats_
    settings = {"mode": mode, "noise": noise, "clip": clip, "normalize": normalize,
                "seed": base_seed, "n_samples": n_samples, "batch_size": batch_size,
                "device": str(dev), "bias_correction": bias_correction, "confidence": confidence,
                "target_se": target_se, "max_samples": max_samples, "common_noise": common_noise,
                "precision": precision, "channels_last": channels_last,
                "noise_block": NOISE_BLOCK, "torch": torch.__version__,
                "numpy": np.__version__}
    counts = engine.counts.cpu().numpy() if mode == "hard" else None
    return SmoothnessResult(np.asarray(sig, dtype=float), entropy, se, lo, hi, freq, counts,
                            n_used, engine.num_classes, settings)


class _Engine:
    """Accumulates votes (or softmax sums) for cells (j, s) over sample ranges."""

    def __init__(self, model, inputs, sigmas, mode, noise, clip, seed, batch_size, dev,
                 common_noise, precision, channels_last, memory_budget, groups):
        self.model, self.mode, self.noise, self.clip, self.seed = model, mode, noise, clip, seed
        self.batch_size, self.dev, self.common_noise = batch_size, dev, common_noise
        row_bytes = 4 * int(np.prod(inputs.shape[1:]))
        # the chunks get half the budget, the forward's activations the other (default_batch_size)
        self.chunk_rows = int(max(batch_size, min(CHUNK_ROWS_MAX,
                                                  memory_budget // (CHUNK_FACTOR * row_bytes))))
        self.channels_last = channels_last
        pin = dev.type == "cuda" and not inputs.is_cuda
        x = inputs.pin_memory() if pin else inputs
        self.x = x.to(dev, dtype=torch.float32, non_blocking=pin)  # (N, C, H, W)
        self.sig = torch.tensor(sigmas, device=dev, dtype=torch.float32)  # (S,)
        self.autocast = (torch.autocast(dev.type, dtype=getattr(torch, {"bf16": "bfloat16",
                                                                        "fp16": "float16"}[precision]))
                         if precision != "fp32" else nullcontext())
        if channels_last:
            model.to(memory_format=torch.channels_last)
        with torch.inference_mode(), self.autocast:
            k = self._forward(self.x[:1]).shape[-1]
        self.num_classes = k
        n, s = len(inputs), len(sigmas)
        acc_dtype = torch.int64 if mode == "hard" else torch.float64
        self.counts = torch.zeros((n, s, k), device=dev, dtype=acc_dtype)  # votes or softmax sums
        self.group_sums = (torch.zeros((n, s, JACKKNIFE_GROUPS, k), device=dev, dtype=torch.float64)
                           if groups else None)

    def _forward(self, x):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def _noise_block(self, j: int, b: int, s: int) -> torch.Tensor:
        """(NOISE_BLOCK, C, H, W) draws for input j, block b (and σ index s without CRN)."""
        words = (self.seed, j, b) if self.common_noise else (self.seed, j, b, s + 1)
        g = torch.Generator(device=self.dev).manual_seed(_mix(*words))
        shape = (NOISE_BLOCK, *self.x.shape[1:])
        if self.noise == "gaussian":
            return torch.randn(shape, generator=g, device=self.dev)
        return torch.rand(shape, generator=g, device=self.dev).mul_(2).sub_(1)

    @torch.inference_mode()
    def run(self, active: np.ndarray, start: int, stop: int, bar) -> None:
        """Add samples [start, stop) to every active cell (active: (N, S) bool)."""
        cell_j, cell_s = np.nonzero(active)  # j-major order: an input's cells are adjacent
        s_count = self.counts.shape[1]
        for b in range(start // NOISE_BLOCK, (stop - 1) // NOISE_BLOCK + 1):
            lo, hi = max(start, b * NOISE_BLOCK), min(stop, (b + 1) * NOISE_BLOCK)
            nb, off = hi - lo, lo - b * NOISE_BLOCK
            # cells per chunk: many forwards' worth, so per-chunk Python work is amortised; the
            # noisy chunk itself stays within the memory budget (activations are per forward)
            q = max(1, self.chunk_rows // nb)
            for c0 in range(0, len(cell_j), q):
                js, ss = cell_j[c0:c0 + q], cell_s[c0:c0 + q]
                if self.common_noise:
                    uj, inv = np.unique(js, return_inverse=True)
                    eps = torch.stack([self._noise_block(int(j), b, 0)[off:off + nb] for j in uj])
                    eps = eps[torch.from_numpy(inv).to(self.dev)]  # (q, nb, C, H, W)
                else:
                    eps = torch.stack([self._noise_block(int(j), b, int(s))[off:off + nb]
                                       for j, s in zip(js, ss)])
                jt = torch.from_numpy(js).to(self.dev)
                st = torch.from_numpy(ss).to(self.dev)
                xn = self.x[jt][:, None] + self.sig[st].view(-1, 1, 1, 1, 1) * eps  # (q, nb, C, H, W)
                if self.clip is not None:
                    xn.clamp_(*self.clip)
                flat = xn.view(-1, *xn.shape[2:])
                with self.autocast:
                    logits = torch.cat([self._forward(flat[i:i + self.batch_size]).float()
                                        for i in range(0, len(flat), self.batch_size)])
                k = logits.shape[-1]
                if self.mode == "hard":
                    contrib = torch.nn.functional.one_hot(logits.argmax(-1), k)  # (q·nb, K)
                else:
                    contrib = logits.softmax(-1).double()
                contrib = contrib.view(len(js), nb, k)
                cell = jt * s_count + st  # cells are distinct within a chunk
                self.counts.view(-1, k).index_add_(0, cell, contrib.sum(1).to(self.counts.dtype))
                if self.group_sums is not None:
                    gid = (torch.arange(lo, hi, device=self.dev) % JACKKNIFE_GROUPS)
                    onehot = torch.nn.functional.one_hot(gid, JACKKNIFE_GROUPS).double()  # (nb, G)
                    per_group = torch.einsum("qnk,ng->qgk", contrib.double(), onehot)
                    self.group_sums.view(-1, JACKKNIFE_GROUPS, k).index_add_(0, cell, per_group)
                bar.update(len(js) * nb)


def _entropy(p: np.ndarray) -> np.ndarray:
    """−Σ p log p over the last axis, with 0·log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(-1)


STATS_BLOCK = 1024  # inputs per block of the statistics: bounds numpy's temporaries


def _statistics(engine: _Engine, n_used: np.ndarray, mode, normalize, bias_correction, confidence):
    """Entropy, SE, CI and frequencies, computed in blocks of inputs (bounded temporaries)."""
    n_in, s_n = n_used.shape
    k = engine.num_classes
    h = np.empty((n_in, s_n))
    se, lo, hi = np.empty_like(h), np.empty_like(h), np.empty_like(h)
    freq = np.empty((n_in, s_n, k))
    for a in range(0, n_in, STATS_BLOCK):
        b = min(n_in, a + STATS_BLOCK)
        g = engine.group_sums[a:b].cpu().numpy() if engine.group_sums is not None else None
        h[a:b], se[a:b], lo[a:b], hi[a:b], freq[a:b] = _block_statistics(
            engine.counts[a:b].cpu().double().numpy(), g, n_used[a:b], k, mode, normalize,
            bias_correction, confidence)
    return h, se, lo, hi, freq


def _block_statistics(sums, group_sums, n_used, k, mode, normalize, bias_correction, confidence):
    n = n_used[..., None].astype(float)
    p = sums / n
    h = _entropy(p)
    if group_sums is not None:
        g = group_sums  # (N, S, G, K)
        g_n = _group_sizes(n_used)  # (N, S, G)
        loo = (sums[:, :, None] - g) / (n[:, :, None] - g_n[..., None])  # leave-one-group-out p
        h_loo = _entropy(loo)  # (N, S, G)
        gg = JACKKNIFE_GROUPS
        se_jk = np.sqrt((gg - 1) / gg * ((h_loo - h_loo.mean(-1, keepdims=True)) ** 2).sum(-1))
    if mode == "hard":
        with np.errstate(divide="ignore", invalid="ignore"):
            log_p = np.where(p > 0, np.log(p), 0.0)
        var = np.maximum((p * log_p**2).sum(-1) - h**2, 0.0) / n[..., 0]
        se = np.sqrt(var)
    else:
        se = se_jk
    if bias_correction == "miller-madow":
        h = h + ((p > 0).sum(-1) - 1) / (2 * n[..., 0])
    elif bias_correction == "jackknife":
        gg = JACKKNIFE_GROUPS
        h = gg * h - (gg - 1) * h_loo.mean(-1)
    h = np.maximum(h, 0.0)
    # jackknife SEs rest on G − 1 degrees of freedom: t quantiles, not normal ones, or the
    # intervals undercover (measured: 86% for a nominal 95% with G = 10)
    z = stats.norm.ppf(0.5 + confidence / 2) if mode == "hard" else stats.t.ppf(
        0.5 + confidence / 2, JACKKNIFE_GROUPS - 1)
    log_k = math.log(k)
    lo, hi = np.clip(h - z * se, 0, log_k), np.clip(h + z * se, 0, log_k)
    if mode == "hard":
        # every vote in one class: the delta method says SE 0, but the other classes' mass is only
        # known to be below the Clopper–Pearson bound q = 1 − (α/2)^(1/n); bound H accordingly
        degenerate = (p > 0).sum(-1) == 1
        q = 1 - ((1 - confidence) / 2) ** (1 / n[..., 0])
        h_q = -(1 - q) * np.log1p(-q) - q * np.log(q / (k - 1))
        hi = np.where(degenerate, np.maximum(hi, h_q), hi)
    if normalize:
        h, se, lo, hi = h / log_k, se / log_k, lo / log_k, hi / log_k
    return h, se, lo, hi, p


def _group_sizes(n_used: np.ndarray) -> np.ndarray:
    """(N, S, G) samples per jackknife group: sample i belongs to group i mod G."""
    g = np.arange(JACKKNIFE_GROUPS)
    return ((n_used[..., None] - 1 - g) // JACKKNIFE_GROUPS + 1).clip(min=0).astype(float)


@dataclass(frozen=True)
class ComparisonResult:
    """Paired comparison of clean inputs and their triggered twins."""

    clean: SmoothnessResult  # W_σ of the clean inputs
    triggered: SmoothnessResult  # W_σ of the triggered inputs (same noise draws)
    summary: str  # "mean", "radius" or "certified"
    clean_summary: np.ndarray  # (N,) per-input summary of the clean curves
    triggered_summary: np.ndarray  # (N,) per-input summary of the triggered curves
    differences: np.ndarray  # (N,) per-pair gap: positive = triggered is smoother
    gap: float  # smoothing gap: mean of `differences`
    gap_se: float  # standard error of the gap over pairs
    gap_ci: tuple[float, float]  # t-interval at `confidence`
    wilcoxon_statistic: float  # Wilcoxon signed-rank statistic of `differences`
    p_value: float  # two-sided p-value of the signed-rank test (1.0 when all differences are 0)
    confidence: float

    @property
    def n_pairs(self) -> int:
        return len(self.differences)

    def __repr__(self) -> str:
        return (f"ComparisonResult(pairs={self.n_pairs}, summary={self.summary!r}, gap={self.gap:.4f} "
                f"[{self.gap_ci[0]:.4f}, {self.gap_ci[1]:.4f}], Wilcoxon p={self.p_value:.3g})")


def paired_gap(clean_summary: np.ndarray, triggered_summary: np.ndarray, summary: str,
               confidence: float = 0.95) -> dict:
    """Gap statistics from per-pair summaries (positive = triggered smoother)."""
    c, t = np.asarray(clean_summary, float), np.asarray(triggered_summary, float)
    # entropy: lower is smoother; radii: larger is smoother
    d = c - t if summary == "mean" else t - c
    n = len(d)
    gap = float(d.mean()) if n else float("nan")
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * se) if n > 1 else float("nan")
    if n and np.any(d != 0):
        w = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        w_stat, p = float(w.statistic), float(w.pvalue)
    else:
        w_stat, p = 0.0, 1.0
    return {"differences": d, "gap": gap, "gap_se": se, "gap_ci": (gap - half, gap + half),
            "wilcoxon_statistic": w_stat, "p_value": p}


def compare_smoothness(model: nn.Module, clean: torch.Tensor, triggered: torch.Tensor,
                       sigmas: Sequence[float], n_samples: int = 256, *, summary: str = "mean",
                       threshold: float | None = None, confidence: float = 0.95,
                       seed: int = 0, paired_noise: bool = True, **kwargs) -> ComparisonResult:
    """Paired comparison of W_σ curves of clean inputs and their triggered twins.

    Both sets are estimated with the same seed, so pair j sees the same noise draws (common random
    numbers; `paired_noise=False` gives the twins independent draws). Passing common_noise=True
    also shares draws across σ: smoother curves, but 3-6x more Monte-Carlo variance in the
    mean-W gap (benchmarks/RESULTS.md, section 3).
    summary: "mean" (mean W over the σ grid), "radius" (smoothness radius at
    `threshold`) or "certified" (largest certified L2 radius over the grid). The gap's interval is
    a t-interval over pairs; the test is Wilcoxon's signed-rank test. Other keyword arguments go to
    `estimate_smoothness`.
    """
    check_images("clean", clean)
    check_images("triggered", triggered)
    if clean.shape != triggered.shape:
        raise ValueError(f"`triggered` must have the shape of `clean` {tuple(clean.shape)}; got "
                         f"{tuple(triggered.shape)}.")
    check_choice("summary", summary, ("mean", "radius", "certified"))
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"`seed` must be an int (both sets reuse it); got {seed!r}.")
    r_c = estimate_smoothness(model, clean, sigmas, n_samples, seed=seed, confidence=confidence,
                              **kwargs)
    seed_t = seed if paired_noise else _mix(seed, 0x7269)
    r_t = estimate_smoothness(model, triggered, sigmas, n_samples, seed=seed_t,
                              confidence=confidence, **kwargs)
    s_c, s_t = r_c.summary(summary, threshold), r_t.summary(summary, threshold)
    return ComparisonResult(r_c, r_t, summary, s_c, s_t, confidence=confidence,
                            **paired_gap(s_c, s_t, summary, confidence))
