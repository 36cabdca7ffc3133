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

Noise designs (`noise_design`): "iid" draws every sample independently. The other designs draw
*units* of DESIGN_UNIT[design] samples that are dependent inside a unit (that is where their
variance reduction comes from) and independent between units:
- "antithetic": pairs (ε, −ε);
- "lhs": a Latin hypercube of U points (each coordinate stratified in U equal-probability strata,
  mapped through the normal quantile, or affinely for uniform noise);
- "antithetic-lhs": a symmetric Latin hypercube (Ye 1998): U/2 points and their negations, all U
  strata of every coordinate covered once;
- "sobol": U points of an Owen-scrambled (LMS + digital shift) Sobol sequence in dimension C·H·W
  (`scipy.stats.qmc.Sobol`), one independent scrambling per unit;
- "radial" (Gaussian only): the radius ‖ε‖ stratified in U strata of its χ_d distribution, the
  direction uniform on the sphere.
Units never straddle a noise block (U divides NOISE_BLOCK), so draws stay a pure function of
(seed, j, b, s, design).

Sample i belongs to unit i // U and to group (i // U) mod GROUPS (for "iid", U = 1: group
i mod GROUPS). Groups hold whole units, so they are independent replicates under every design:
the jackknife standard error over groups is honest where votes inside a unit are dependent.
Group 0 is also the *selection* sample of the certified radius (Cohen et al. 2019's CERTIFY picks
the top class on samples that are not used to bound its probability), so the engine keeps its
votes apart; the bound uses the first sample of every other unit (independent draws, exact
Clopper–Pearson), which under "iid" is every other sample.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..base.models import check_model, check_model_input, model_device  # noqa: F401 (their home: base)

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
NOISE_DESIGNS = ("iid", "antithetic", "lhs", "antithetic-lhs", "sobol", "radial")
SOBOL_MAX_DIM = 21201  # scipy.stats.qmc.Sobol's dimension limit (Joe–Kuo direction numbers)
# samples per unit of each design (a divisor of NOISE_BLOCK); units are the independent replicates
DESIGN_UNIT = {"iid": 1, "antithetic": 2, "lhs": 8, "antithetic-lhs": 8, "sobol": 8, "radial": 8}
_DESIGN_WORD = {d: i for i, d in enumerate(NOISE_DESIGNS)}  # in the seed words (iid: none)
_U_EPS = 2.0**-40  # radial: χ quantiles of probabilities in [_U_EPS, 1 − _U_EPS]


def mix_seed(*words: int) -> int:
    """splitmix64 over the words: well-spread, independent-looking 63-bit seeds from counters."""
    z = 0x9E3779B97F4A7C15
    for w in words:
        z = (z ^ (w & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
        z ^= z >> 31
    return z >> 1


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


CACHE_TARGET_BYTES = 8 * 2**20  # CPU: activation bytes of a batch's widest layer, measured best
_FOOTPRINT: dict = {}  # (architecture, image shape) -> widest activation per image, this process


def activation_footprint(model: nn.Module, image_shape: Sequence[int],
                         device: torch.device) -> int:
    """Values in the widest activation (a leaf module's output) for one image: measured once per
    architecture and image shape by a forward of one blank image with hooks, cached per process."""
    key = (type(model).__qualname__, tuple((n, tuple(p.shape)) for n, p in model.named_parameters()),
           tuple(image_shape))
    if key not in _FOOTPRINT:
        widest = [int(np.prod(image_shape))]

        def hook(_m, _inp, out):
            if isinstance(out, torch.Tensor):
                widest.append(int(out[:1].numel()))

        leaves = [m for m in model.modules() if not any(True for _ in m.children())]
        handles = [m.register_forward_hook(hook) for m in leaves]
        try:
            with torch.inference_mode():
                model(torch.zeros((1, *image_shape), device=device))
        finally:
            for h in handles:
                h.remove()
        _FOOTPRINT[key] = max(widest)
    return _FOOTPRINT[key]


def model_batch_size(model: nn.Module, image_shape: Sequence[int], device: torch.device,
                     memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Rows per forward for this model: on a CPU, the batch whose widest activation holds about
    CACHE_TARGET_BYTES (8 MiB: the measured optima of the zoo on 2 cores, e.g. the small CNN's
    512 rows at 16x16 and 128 at 28x28, whose first convolution writes 16 values per pixel;
    wider batches fall out of cache, narrower ones pay per-call overhead), a power of two in
    [64, 4096]; elsewhere `default_batch_size`. Always within the memory budget. A structural
    rule, not a timing: timings on a shared machine picked batches 30x off (RESULTS.md)."""
    rule = default_batch_size(image_shape, memory_budget, device)
    if device.type != "cpu":
        return rule
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        # TorchScript modules take no forward hooks: the structural rule cannot look inside
        return rule
    numel = int(np.prod(image_shape))
    cap = int(max(32, memory_budget // (2 * 4 * numel * ACTIVATION_FACTOR)))
    rows = CACHE_TARGET_BYTES / (4 * activation_footprint(model, image_shape, device))
    best = int(min(4096, max(64, 2 ** int(round(np.log2(max(rows, 1)))))))
    return int(min(best, cap))


class Engine:
    """Accumulates votes (or softmax sums) for cells (j, s) over sample ranges."""

    def __init__(self, model, inputs, sigmas, mode, noise, clip, seed, batch_size, dev,
                 common_noise, precision, channels_last, memory_budget, groups,
                 design: str = "iid", common_inputs: bool = False):
        self.model, self.mode, self.noise, self.clip, self.seed = model, mode, noise, clip, seed
        self.batch_size, self.dev, self.common_noise = batch_size, dev, common_noise
        self.design, self.unit, self.common_inputs = design, DESIGN_UNIT[design], common_inputs
        groups = groups or self.unit > 1  # dependent designs: SEs from the groups
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
        # hard votes of the first sample of every unit outside group 0 (units > 1 only; for iid
        # they are counts − select_counts): the certified radius bounds its class on these
        self.certify_counts = (torch.zeros((n, s, k), device=dev, dtype=torch.int64)
                               if mode == "hard" and self.unit > 1 else None)

    def _forward(self, x):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def _noise_block(self, j: int, b: int, s: int, out: torch.Tensor | None = None,
                     off: int = 0) -> torch.Tensor:
        """(NOISE_BLOCK, C, H, W) draws for input j, block b (and σ index s without CRN); with
        `out` ((nb, C, H, W)), draws off .. off + nb of the block are written there instead."""
        words = (self.seed, j, b) if self.common_noise else (self.seed, j, b, s + 1)
        if self.design != "iid":
            words = (*words, 0xD5, _DESIGN_WORD[self.design])
        g = torch.Generator(device=self.dev).manual_seed(mix_seed(*words))
        if out is not None and self.design == "iid" and off == 0 and len(out) == NOISE_BLOCK:
            # a whole iid block straight into the chunk (torch.randn / rand draw the same stream)
            if self.noise == "gaussian":
                return out.normal_(generator=g)
            return out.uniform_(generator=g).mul_(2).sub_(1)
        block = design_block(self.design, g, tuple(self.x.shape[1:]), self.noise, self.dev)
        if out is None:
            return block
        return out.copy_(block[off:off + len(out)])

    @torch.inference_mode()
    def run(self, active: np.ndarray, start, stop, bar) -> None:
        """Add samples [start, stop) to every active cell (active: (N, S) bool; start and stop
        ints, or (N, S) arrays of per-cell sample ranges)."""
        start = np.broadcast_to(np.asarray(start, dtype=np.int64), active.shape)
        stop = np.broadcast_to(np.asarray(stop, dtype=np.int64), active.shape)
        cell_j, cell_s = np.nonzero(active & (stop > start))  # j-major: an input's cells adjacent
        if not len(cell_j):
            return
        c_start, c_stop = start[cell_j, cell_s], stop[cell_j, cell_s]
        for b in range(int(c_start.min()) // NOISE_BLOCK, (int(c_stop.max()) - 1) // NOISE_BLOCK + 1):
            lo = np.maximum(c_start, b * NOISE_BLOCK)
            hi = np.minimum(c_stop, (b + 1) * NOISE_BLOCK)
            sel = hi > lo
            if not sel.any():
                continue
            lo, hi = lo[sel], hi[sel]
            if (lo == lo[0]).all() and (hi == hi[0]).all():  # one range: whole chunks
                self._block(cell_j[sel], cell_s[sel], b, int(lo[0]), int(hi[0]), bar)
            else:  # per-cell ranges (allocation): one draw of each block, rows picked per cell
                self._ragged_block(cell_j[sel], cell_s[sel], b, lo - b * NOISE_BLOCK,
                                   hi - b * NOISE_BLOCK, bar)

    def _keys(self, js: np.ndarray, ss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Noise keys of cells (the input, 0 for all with common_inputs; σ, 0 with
        common_noise): the distinct keys and each cell's index among them."""
        s_count = self.counts.shape[1]
        kj = np.zeros_like(js) if self.common_inputs else js
        ks = np.zeros_like(ss) if self.common_noise else ss
        keys, inv = np.unique(kj * s_count + ks, return_inverse=True)
        return keys, inv.reshape(-1)

    def _forward_chunk(self, flat: torch.Tensor, js: np.ndarray, row_cell) -> torch.Tensor:
        """Logits (float32) of noisy rows, in batch_size slices; non-finite logits refused."""
        logits = None
        with self.autocast:
            for i in range(0, len(flat), self.batch_size):
                out = self._forward(flat[i:i + self.batch_size])
                if logits is None:  # filled slice by slice: no concatenated copy
                    logits = torch.empty((len(flat), out.shape[-1]), device=self.dev)
                logits[i:i + len(out)] = out
        if not bool(torch.isfinite(logits).all()):  # argmax of NaN would vote class 0
            row = int((~torch.isfinite(logits)).any(-1).nonzero()[0])
            bad = int(js[int(row_cell(row))])
            raise FloatingPointError(
                f"The model returned NaN or infinite logits for noisy copies of input {bad}; "
                "its W_σ would be meaningless. Check the model (and `clip`, `precision`).")
        return logits

    def _ragged_block(self, cell_j, cell_s, b: int, lo: np.ndarray, hi: np.ndarray,
                      bar) -> None:
        """Samples [lo_c, hi_c) (offsets in block b) of each cell c: each key's block is drawn
        once and the cells' rows are picked from it, so forwards stay full-sized however the
        cells' ranges differ (Neyman allocation gives every cell its own)."""
        s_count = self.counts.shape[1]
        q = max(1, self.chunk_rows // (2 * NOISE_BLOCK))  # the block and the picked rows
        pos = torch.arange(NOISE_BLOCK, device=self.dev)
        for c0 in range(0, len(cell_j), q):
            js, ss = cell_j[c0:c0 + q], cell_s[c0:c0 + q]
            keys, inv = self._keys(js, ss)
            eps = torch.empty((len(keys), NOISE_BLOCK, *self.x.shape[1:]), device=self.dev)
            for i, k_ in enumerate(keys):
                self._noise_block(int(k_ // s_count), b, int(k_ % s_count), eps[i])
            lo_t = torch.from_numpy(lo[c0:c0 + q]).to(self.dev)
            hi_t = torch.from_numpy(hi[c0:c0 + q]).to(self.dev)
            take = (pos >= lo_t[:, None]) & (pos < hi_t[:, None])  # (q, NB) rows of each cell
            rows = take.view(-1).nonzero().squeeze(1)
            row_cell, row_pos = rows // NOISE_BLOCK, rows % NOISE_BLOCK
            key_row = torch.from_numpy(inv).to(self.dev)[row_cell] * NOISE_BLOCK + row_pos
            jt = torch.from_numpy(js).to(self.dev)
            st = torch.from_numpy(ss).to(self.dev)
            # x + σ·ε (the same float operations, in the same order, as x[j] + σ * ε)
            xn = eps.view(-1, *eps.shape[2:])[key_row]
            xn.mul_(self.sig[st][row_cell].view(-1, 1, 1, 1)).add_(self.x[jt][row_cell])
            if self.clip is not None:
                xn.clamp_(*self.clip)
            logits = self._forward_chunk(xn, js, lambda r: row_cell[r])
            self._accumulate(logits, jt * s_count + st, row_cell, b * NOISE_BLOCK + row_pos)
            bar.update(len(rows))

    def _accumulate(self, logits, cell, row_cell, idx) -> None:
        """Add the rows' votes (hard) or softmax (soft) to their cells' counts, selection and
        certification votes and group sums. cell: (q,) flat cell indices of the chunk; row_cell:
        (R,) each row's cell among them; idx: (R,) each row's sample index."""
        k = logits.shape[-1]
        if self.mode == "hard":
            contrib = torch.nn.functional.one_hot(logits.argmax(-1), k)  # (R, K)
        else:
            contrib = logits.softmax(-1).double()
        dest = cell[row_cell]
        self.counts.view(-1, k).index_add_(0, dest, contrib.to(self.counts.dtype))
        gid = (idx // self.unit) % GROUPS  # group of each sample (whole units)
        if self.select_counts is not None:
            m = gid == 0
            self.select_counts.view(-1, k).index_add_(0, dest[m], contrib[m].to(torch.int64))
        if self.certify_counts is not None:
            m = (idx % self.unit == 0) & (gid != 0)
            self.certify_counts.view(-1, k).index_add_(0, dest[m], contrib[m].to(torch.int64))
        if self.group_sums is not None:
            self.group_sums.view(-1, k).index_add_(0, dest * GROUPS + gid, contrib.double())

    def _block(self, cell_j, cell_s, b: int, lo: int, hi: int, bar) -> None:
        """Samples [lo, hi) of block b for the cells (cell_j, cell_s)."""
        s_count = self.counts.shape[1]
        nb, off = hi - lo, lo - b * NOISE_BLOCK
        # cells per chunk: many forwards' worth, so per-chunk Python work is amortised; the
        # noisy chunk itself stays within the memory budget (activations are per forward)
        q = max(1, self.chunk_rows // nb)
        for c0 in range(0, len(cell_j), q):
            js, ss = cell_j[c0:c0 + q], cell_s[c0:c0 + q]
            # noise keys: the input (0 for all with common_inputs) and σ (0 with common_noise)
            kj = np.zeros_like(js) if self.common_inputs else js
            ks = np.zeros_like(ss) if self.common_noise else ss
            keys, inv = np.unique(kj * s_count + ks, return_inverse=True)
            eps = torch.empty((len(keys), nb, *self.x.shape[1:]), device=self.dev)
            for i, k_ in enumerate(keys):  # drawn in place: no stacked copy of the chunk
                self._noise_block(int(k_ // s_count), b, int(k_ % s_count), eps[i], off)
            if len(keys) < len(js):
                eps = eps[torch.from_numpy(inv.reshape(-1)).to(self.dev)]  # (q, nb, C, H, W)
            jt = torch.from_numpy(js).to(self.dev)
            st = torch.from_numpy(ss).to(self.dev)
            # x + σ·ε in place on the chunk's own noise (the same float operations, in the same
            # order, as x[j] + σ * ε)
            xn = eps.mul_(self.sig[st].view(-1, 1, 1, 1, 1)).add_(self.x[jt][:, None])
            if self.clip is not None:
                xn.clamp_(*self.clip)
            flat = xn.view(-1, *xn.shape[2:])
            logits = None
            with self.autocast:
                for i in range(0, len(flat), self.batch_size):
                    out = self._forward(flat[i:i + self.batch_size])
                    if logits is None:  # filled slice by slice: no concatenated copy
                        logits = torch.empty((len(flat), out.shape[-1]), device=self.dev)
                    logits[i:i + len(out)] = out
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
            idx = torch.arange(lo, hi, device=self.dev)
            gid = (idx // self.unit) % GROUPS  # (nb,) group of each sample (whole units)
            if self.select_counts is not None:
                sel = contrib[:, gid == 0].sum(1)  # (q, K)
                self.select_counts.view(-1, k).index_add_(0, cell, sel.to(torch.int64))
            if self.certify_counts is not None:
                first = (idx % self.unit == 0) & (gid != 0)
                self.certify_counts.view(-1, k).index_add_(
                    0, cell, contrib[:, first].sum(1).to(torch.int64))
            if self.group_sums is not None:
                onehot = torch.nn.functional.one_hot(gid, GROUPS).double()  # (nb, G)
                per_group = torch.einsum("qnk,ng->qgk", contrib.double(), onehot)
                self.group_sums.view(-1, GROUPS, k).index_add_(0, cell, per_group)
            bar.update(len(js) * nb)


@lru_cache(maxsize=16)
def _sobol_strata(d: int, unit: int) -> torch.Tensor:
    """(unit, d) strata (0 .. unit − 1) of the first `unit` points of the unscrambled Sobol
    sequence in dimension d (scipy.stats.qmc.Sobol, Joe–Kuo direction numbers; d <= 21201)."""
    from scipy.stats import qmc

    pts = qmc.Sobol(d, scramble=False).random(unit)  # multiples of 1/unit: a (0, m, 1)-net
    return torch.from_numpy(np.rint(pts * unit).astype(np.int64))


def _normal_quantile(u: torch.Tensor) -> torch.Tensor:
    """Φ⁻¹(u) in float32 (`torch.special.ndtri`): |error| < 1e-6 against scipy's ndtri in double
    (tested). u is kept in [2^-24, 1 − 2^-24] (float32's resolution near 1), so |z| <= 5.3: a
    probability of 1e-7 is moved from the tails to ±5.3. (A polynomial erfinv (Giles 2011) was
    10x slower on the 2-core CPU, and torch.erfinv(2u − 1) loses the tails: 2e-2 off at u = 1e-7.)"""
    return torch.special.ndtri(u.float().clamp(2.0**-24, 1 - 2.0**-24))


def _uniform_to_noise(u: torch.Tensor, noise: str) -> torch.Tensor:
    """Uniforms in (0, 1) to N(0, 1) (normal quantile) or to U[−1, 1] (affine)."""
    if noise == "gaussian":
        return _normal_quantile(u)
    return u.float().mul_(2).sub_(1)


@lru_cache(maxsize=4)
def _nested_scrambles(unit: int, device: str) -> torch.Tensor:
    """(2^(unit−1), unit) every nested (Owen) scramble of the strata 0 .. unit − 1 (unit a power of
    two <= 16): row f maps a stratum to its image under the binary tree of flips f (bit t of f
    flips the subtree at heap node t; a node's children are 2t + 1 and 2t + 2, by the original
    bit). Owen (1995), "Randomly permuted (t, m, s)-nets and (t, s)-sequences"."""
    m = unit.bit_length() - 1
    if 2**m != unit or unit > 16:
        raise ValueError(f"nested scrambles are tabulated for units of 2, 4, 8 or 16; got {unit}")
    rows = []
    for f in range(2 ** (unit - 1)):
        row = []
        for x in range(unit):
            node, out = 0, 0
            for lev in range(m):
                bit = (x >> (m - 1 - lev)) & 1
                out = (out << 1) | (bit ^ ((f >> node) & 1))
                node = 2 * node + 1 + bit
            row.append(out)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long, device=device)


@lru_cache(maxsize=8)
def _permutations(h: int, device: str) -> torch.Tensor:
    """(h!, h) every permutation of range(h) (h <= 8): a random permutation is one random row."""
    import itertools

    return torch.tensor(list(itertools.permutations(range(h))), dtype=torch.long, device=device)


def _random_strata(units: int, h: int, d: int, g: torch.Generator, dev) -> torch.Tensor:
    """(units, h, d) independent uniformly random permutations of range(h) along dim 1."""
    if h <= 8:  # a row of the permutation table: far cheaper than sorting random keys
        table = _permutations(h, str(dev))
        pick = torch.randint(0, len(table), (units * d,), generator=g, device=dev)
        return table.index_select(0, pick).view(units, d, h).transpose(1, 2)
    return torch.rand((units, h, d), generator=g, device=dev).argsort(dim=1)


def design_block(design: str, g: torch.Generator, shape: tuple, noise: str,
                 dev: torch.device) -> torch.Tensor:
    """(NOISE_BLOCK, *shape) draws of one noise block under `design`, from generator g alone.

    Every sample is marginally N(0, I) (or uniform in [−1, 1]^d); samples of one unit (DESIGN_UNIT
    consecutive samples) are dependent, units are independent."""
    full = (NOISE_BLOCK, *shape)
    if design == "iid":
        if noise == "gaussian":
            return torch.randn(full, generator=g, device=dev)
        return torch.rand(full, generator=g, device=dev).mul_(2).sub_(1)
    d = int(np.prod(shape))
    unit = DESIGN_UNIT[design]
    units = NOISE_BLOCK // unit
    if design == "antithetic":
        e = (torch.randn((units, 1, d), generator=g, device=dev) if noise == "gaussian"
             else torch.rand((units, 1, d), generator=g, device=dev).mul_(2).sub_(1))
        return torch.cat([e, -e], 1).view(full)  # ε0, −ε0, ε1, −ε1, …
    if design == "lhs":
        # stratum of point i in coordinate k: a uniformly random permutation per (unit, k)
        strata = _random_strata(units, unit, d, g, dev)
        u = torch.rand((units, unit, d), generator=g, device=dev).add_(strata).mul_(1 / unit)
        return _uniform_to_noise(u, noise).reshape(full)
    if design == "antithetic-lhs":
        half = unit // 2
        m = _random_strata(units, half, d, g, dev)
        flip = torch.rand((units, half, d), generator=g, device=dev) < 0.5
        k = torch.where(flip, unit - 1 - m, m)  # the partner takes the mirrored stratum
        u = (k + torch.rand((units, half, d), generator=g, device=dev)) / unit
        z = _uniform_to_noise(u, noise)
        return torch.stack([z, -z], 2).view(full)  # z0, −z0, z1, −z1, … (each unit an LHS)
    if design == "sobol":
        # Owen's nested uniform scrambling of the first U points of scipy's Sobol sequence: for
        # each coordinate, bit l of a point's stratum is flipped by a random bit chosen by the
        # point's bits above l (a random binary tree of U − 1 flips); the digits below the net's
        # resolution are uniform jitter, as under full nested scrambling. A tree of flips is a
        # permutation of the U strata: one random row of the table of all 2^(U−1) such trees
        base = _sobol_strata(d, unit).to(dev)  # (U, d) unscrambled strata, distinct per coordinate
        table = _nested_scrambles(unit, str(dev))  # (2^(U−1), U)
        pick = torch.randint(0, len(table), (units, 1, d), generator=g, device=dev)
        strata = table.view(-1)[pick * unit + base]  # (units, U, d)
        u = torch.rand((units, unit, d), generator=g, device=dev).add_(strata).mul_(1 / unit)
        return _uniform_to_noise(u, noise).reshape(full)
    if design == "radial":
        from scipy.special import chdtri

        strata = torch.rand((units, unit), generator=g, device=dev, dtype=torch.float64).argsort(1)
        q = (strata + torch.rand((units, unit), generator=g, device=dev, dtype=torch.float64)) / unit
        # radius = χ_d quantile: sqrt of the χ²_d quantile (chdtri inverts the survival function)
        r = torch.from_numpy(np.sqrt(chdtri(d, 1 - q.clamp(_U_EPS, 1 - _U_EPS).cpu().numpy())))
        r = r.float().to(dev)
        direc = torch.randn((NOISE_BLOCK, d), generator=g, device=dev)
        direc /= direc.norm(dim=1, keepdim=True)
        return (r.view(-1, 1) * direc).view(full)
    raise ValueError(f"unknown noise design {design!r}")
