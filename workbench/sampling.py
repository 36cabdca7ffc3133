"""Sampling for the W_σ estimator: noisy copies of inputs, fed through the model, votes counted.

Work is a list of cells (input j, noise scale s); cells are processed in chunks of noisy rows
sized from the memory budget and fed to the model in `batch_size` slices, so no (N·S·n, C, H, W)
tensor ever exists. Only the votes (N, S, K) are kept (plus, where needed, per-group sums for the
jackknife and the selection votes of the certified radius).

Noise is drawn on the model's device in blocks of NOISE_BLOCK samples. Block b of input j (at σ
index s) comes from its own generator, seeded from (seed, j, b, s): the draws do not depend on
chunking or batch size, and two input sets estimated with the same seed (clean and triggered
twins) see the same noise ("common random numbers" for the pair), which lowers the variance of
their difference (measured: 27% fewer samples for the same gap variance). `common_noise=True`
also shares the draws across σ.

Sample i of a cell belongs to group i mod GROUPS. Group 0 is also the *selection* sample of the
certified radius (Cohen et al. 2019's CERTIFY picks the top class on samples that are not used to
bound its probability), so the engine keeps its votes apart.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import numpy as np
import torch
from torch import nn

NOISE_BLOCK = 64  # samples per noise block: the unit of reproducible draws
GROUPS = 10  # sample groups (i mod GROUPS): jackknife groups; group 0 selects for CERTIFY
DEFAULT_MEMORY_BUDGET = 512 * 2**20  # bytes of working memory: noisy chunks + activations
ACTIVATION_FACTOR = 64  # activation bytes per input byte, a generous bound for the zoo's models
CHUNK_ROWS_MAX = 16384  # noisy rows built at once (then fed in batch_size slices)
# bytes of peak memory per byte of a chunk's noisy rows, measured (RSS growth ≈ 18x the chunk's
# input bytes on the digits CNN: noise, gathers, noisy copies, logits, allocator slack), doubled
# because the chunk gets half the budget (benchmarks/RESULTS.md, section 4)
CHUNK_FACTOR = 40
_MASK64 = (1 << 64) - 1


def mix_seed(*words: int) -> int:
    """splitmix64 over the words: well-spread, independent-looking 63-bit seeds from counters."""
    z = 0x9E3779B97F4A7C15
    for w in words:
        z = (z ^ (w & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
        z ^= z >> 31
    return z >> 1


def check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module mapping (N, C, H, W) to logits; got "
                        f"{type(model).__name__}.")


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _first_layer(model: nn.Module) -> str:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return f"its first layer, a Conv2d, takes {m.in_channels}-channel images"
        if isinstance(m, nn.Linear):
            return f"its first layer, a Linear, takes {m.in_features} values per image"
    return "see the model's first layer"


def check_model_input(model: nn.Module, x: torch.Tensor, name: str = "inputs") -> int:
    """Run the model on one image of `x` and return its number of classes K; a shape the model
    cannot take, or an output that is not (1, K) logits with K >= 2, raises ValueError naming
    `name` and what the model expects (instead of torch's own message from deep inside)."""
    check_model(model)
    if not len(x):
        raise ValueError(f"`{name}` must hold at least one image; got shape {tuple(x.shape)}.")
    from .models import preserve_model

    with preserve_model(model), torch.inference_mode():
        try:
            out = model(x[:1].to(model_device(model), torch.float32))
        except RuntimeError as exc:
            msg = str(exc).splitlines()[0][:200]
            raise ValueError(f"`{name}` has images of shape {tuple(x.shape[1:])}, which the model "
                             f"cannot take ({_first_layer(model)}; torch says: {msg}).") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1 or out.shape[1] < 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"`model` must map `{name}` (N, C, H, W) to logits of shape (N, K) with "
                         f"K >= 2 classes; got output {shape} for one image.")
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError(f"The model returned NaN or infinite logits for `{name}`; "
                                 "nothing it computes from them would be meaningful.")
    return int(out.shape[1])


def default_batch_size(image_shape: Sequence[int], memory_budget: int = DEFAULT_MEMORY_BUDGET,
                       device: torch.device | None = None) -> int:
    """Rows per forward: the device's measured optimum, within half of `memory_budget` (the
    activations' half; the noisy chunks get the other, see Engine.chunk_rows)."""
    numel = int(np.prod(image_shape))
    per_row = 4 * numel * ACTIVATION_FACTOR
    if device is not None and device.type == "cuda":
        cap = 8192
    else:
        # CPU: the best batch keeps about 2^17 input values in flight (measured optima: 512 rows
        # at 16x16, 128 at 28x28, 64 at 3x32x32; larger batches fall out of cache)
        cap = max(64, 2 ** int(round(np.log2(max(1, 2**17 // numel)))))
    return int(max(32, min(cap, memory_budget // (2 * per_row))))


class Engine:
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
        self.group_sums = (torch.zeros((n, s, GROUPS, k), device=dev, dtype=torch.float64)
                           if groups else None)
        # hard votes of group 0 (samples i ≡ 0 mod GROUPS): the certified radius's selection sample
        self.select_counts = (torch.zeros((n, s, k), device=dev, dtype=torch.int64)
                              if mode == "hard" else None)

    def _forward(self, x):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def _noise_block(self, j: int, b: int, s: int) -> torch.Tensor:
        """(NOISE_BLOCK, C, H, W) draws for input j, block b (and σ index s without CRN)."""
        words = (self.seed, j, b) if self.common_noise else (self.seed, j, b, s + 1)
        g = torch.Generator(device=self.dev).manual_seed(mix_seed(*words))
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
                if not bool(torch.isfinite(logits).all()):  # argmax of NaN would vote class 0
                    bad = int(js[int((~torch.isfinite(logits)).any(-1).view(len(js), nb).any(1)
                                     .nonzero()[0])])
                    raise FloatingPointError(
                        f"The model returned NaN or infinite logits for noisy copies of input {bad}; "
                        "its W_σ would be meaningless. Check the model (and `clip`, `precision`).")
                k = logits.shape[-1]
                if self.mode == "hard":
                    contrib = torch.nn.functional.one_hot(logits.argmax(-1), k)  # (q·nb, K)
                else:
                    contrib = logits.softmax(-1).double()
                contrib = contrib.view(len(js), nb, k)
                cell = jt * s_count + st  # cells are distinct within a chunk
                self.counts.view(-1, k).index_add_(0, cell, contrib.sum(1).to(self.counts.dtype))
                gid = torch.arange(lo, hi, device=self.dev) % GROUPS  # (nb,) group of each sample
                if self.select_counts is not None:
                    sel = contrib[:, gid == 0].sum(1)  # (q, K)
                    self.select_counts.view(-1, k).index_add_(0, cell, sel.to(torch.int64))
                if self.group_sums is not None:
                    onehot = torch.nn.functional.one_hot(gid, GROUPS).double()  # (nb, G)
                    per_group = torch.einsum("qnk,ng->qgk", contrib.double(), onehot)
                    self.group_sums.view(-1, GROUPS, k).index_add_(0, cell, per_group)
                bar.update(len(js) * nb)


