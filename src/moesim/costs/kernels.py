"""Measured kernel times of the datacenter engines (vLLM, SGLang, TensorRT-LLM), looked up in tables.

Datacenter engines decode under CUDA graphs with their own kernels (Triton ``fused_moe``, CUTLASS/DeepGEMM
fp8 GEMMs, FlashAttention/FlashInfer/FlashMLA, custom all-reduce). Where a GPU has measured tables of those
kernels, pricing by lookup is closer than any roofline: the tables here are AIConfigurator's measured op
latencies (github.com/ai-dynamo/aiconfigurator, Apache-2.0; converted by
``validation/published/aic_kernel_tables.py``; index ``hardware_db/kernels/<gpu>.yaml`` names the commit,
engine versions and what each table measured).

Interface (all times in seconds, shapes per GPU unless a ``tp``/``ep`` argument is given)::

    t = kernel_tables("h200", "vllm")            # None: no tables for this GPU/backend
    t.gemm_s(m, n, k, "fp8")                      # y = x W^T, x [m, k], W [n, k]
    t.moe_s(tokens, hidden, inter, experts, topk, "fp8_block", tp=1, ep=1)  # inter = unsplit expert ffn
    t.attention_prefill_s(batch, seq, heads, kv_heads, head_dim, "bf16")
    t.attention_decode_s(batch, ctx, heads, kv_heads, head_dim, "bf16")
    t.mla_decode_s(batch, ctx, heads, kv_lora_rank, rope_dim, "bf16")
    t.mla_prefill_s(batch, seq, heads, kv_lora_rank, rope_dim, "bf16")
    t.allreduce_s(message_bytes, num_gpus, "bf16")

Quant strings: "bf16", "fp8" (per-tensor), "fp8_block" (128x128 block-scaled, DeepSeek-V3), "mxfp4",
"nvfp4" (the tables of Hopper GPUs hold no nvfp4: such queries return None), "int4" (weight-only int4 MoE,
AIConfigurator's ``int4_wo``: Kimi-K2.5's released experts).

**Coverage rule** (each method returns None outside it; nothing is extrapolated):

* categorical keys match exactly: quant/kv dtype, the MoE layer's (hidden, inter, experts, topk, tp, ep),
  attention's (kv_heads, head_dim), MLA's (kv_lora_rank, rope_dim) = (512, 64), all-reduce's GPU count;
* every numeric axis (GEMM m, n, k; MoE tokens; attention heads, batch, seq/ctx; MLA heads, batch, ctx;
  all-reduce bytes) must lie within the measured range of that axis, between two measured values at most
  :data:`MAX_BRACKET_RATIO` apart (or on one);
* all 2^d corners of the bracketing cell must be measured; the value is then multilinear interpolation in
  log space: log t = sum_c w_c log t_c with weights from (log x - log lo) / (log hi - log lo) on each
  axis (a power law between neighbouring points; exact at measured points);
* a zero-size query (m, tokens or batch = 0) costs 0 s;
* MoE tables are made non-decreasing in tokens at load: each measured point takes the least of its own
  and every larger token count's time (an engine can always run T tokens as a larger captured size;
  :func:`_suffix_min`).

Tables load lazily (first query of a family and recipe) and are cached for the process, as are the
answers to repeated queries; the module imports no torch or numpy.
"""

from __future__ import annotations

import bisect
import csv
import gzip
import math
from functools import lru_cache
from pathlib import Path

import yaml

from moesim.db import data_root, normalize

QUANTS = ("bf16", "fp8", "fp8_block", "mxfp4", "nvfp4", "int4", "mxfp4_marlin")
#: MoE recipes measured on one expert shape only, priced for another shape by :meth:`KernelTables.moe_s`'s shape
#: transfer: "mxfp4_marlin" (vLLM's Marlin W4A16 MoE on MXFP4 experts, ``VLLM_MXFP4_USE_MARLIN=1``; AIConfigurator
#: timed it on one 896-expert model)
TRANSFER_QUANTS = ("mxfp4_marlin",)
#: the largest ratio of hidden size, and of expert ffn width, between a transferred shape and the measured one:
#: within it the transfer reproduces AIConfigurator's own multi-shape MoE tables to 2-3% median, 9-12% p90
#: (``validation/published/moe_shape_transfer.py``); beyond it the error grows (p90 30-45%), so it is not used
TRANSFER_SHAPE_RATIO = 1.5
#: largest ratio between the two measured values that bracket a query on one axis; a wider gap
#: (only the sparse tails of a few tables have one) is not bridged
MAX_BRACKET_RATIO = 4.0
#: the order "any backend" (backend=None) tries the engines' tables in
BACKEND_ORDER = ("vllm", "sglang", "trtllm")
#: MLA tables measure DeepSeek's latent attention only
MLA_SHAPE = (512, 64)
#: table columns: how many leading categorical columns each family has (the rest but the last are axes)
CATEGORICAL = {"gemm": 1, "moe": 7, "attention_prefill": 3, "attention_decode": 3, "mla_decode": 1,
               "mla_prefill": 1, "allreduce": 2}


#: lookups remembered per KernelTables (bounded; beyond it, lookups are simply recomputed)
MEMO_ENTRIES = 200_000
#: families whose time is made non-decreasing along one axis at load (see :func:`_suffix_min`): MoE in tokens
MONOTONE_AXIS = {"moe": 0}


def kernels_dir() -> Path:
    return data_root("hardware_db") / "kernels"


class Grid:
    """Points on a (possibly incomplete) rectilinear grid per categorical key, looked up by the rule in
    the module docstring."""

    def __init__(self, rows, ncat: int, monotone_axis: int | None = None):
        self.ncat = ncat
        groups: dict[tuple, dict[tuple, float]] = {}
        for row in rows:
            if row[-1] > 0:
                groups.setdefault(tuple(row[:ncat]), {})[tuple(row[ncat:-1])] = math.log(row[-1])
        if monotone_axis is not None:
            for pts in groups.values():
                _suffix_min(pts, monotone_axis)
        self.points = groups
        self.axes = {cat: [sorted({p[i] for p in pts}) for i in range(len(next(iter(pts))))]
                     for cat, pts in groups.items()}

    def lookup(self, cat: tuple, x: tuple) -> float | None:
        pts = self.points.get(cat)
        if pts is None:
            return None
        exact = pts.get(tuple(x))
        if exact is not None:
            return math.exp(exact)
        if cat not in self.axes:
            return None
        brackets = []
        for xi, axis in zip(x, self.axes[cat]):
            b = bracket(axis, xi)
            if b is None:
                return None
            brackets.append(b)
        total = 0.0
        for corner in range(1 << len(brackets)):
            w, pt = 1.0, []
            for i, (lo, hi, f) in enumerate(brackets):
                if corner >> i & 1:
                    if hi == lo:
                        w = 0.0
                        break
                    w *= f
                    pt.append(hi)
                else:
                    w *= (1.0 - f) if hi != lo else 1.0
                    pt.append(lo)
            if w == 0.0:
                continue
            v = pts.get(tuple(pt))
            if v is None:
                return None
            total += w * v
        return math.exp(total)


def _suffix_min(pts: dict, axis: int) -> None:
    """In place: along ``axis``, each point's value becomes the least of it and every larger size's
    (t(T) = min over measured T' >= T of t(T')): work of size T can always run as the larger captured
    size (CUDA-graph engines pad a batch up to the graph's size), so a measured dip at a larger size
    bounds the smaller one; this removes the measurement noise that made 43% of the MoE series dip
    by more than 3% somewhere, and makes the MoE price non-decreasing in tokens."""
    series: dict[tuple, list] = {}
    for pt in pts:
        series.setdefault(pt[:axis] + pt[axis + 1:], []).append(pt)
    for members in series.values():
        members.sort(key=lambda p: p[axis], reverse=True)
        low = math.inf
        for pt in members:
            low = min(low, pts[pt])
            pts[pt] = low


def bracket(axis: list, x: float):
    """(lo, hi, fraction in log space) of ``x`` between neighbouring measured values, or None."""
    if not axis or x < axis[0] or x > axis[-1] or x <= 0:
        return None
    i = bisect.bisect_left(axis, x)
    if axis[i] == x:
        return (x, x, 0.0)
    lo, hi = axis[i - 1], axis[i]
    if lo <= 0 or hi / lo > MAX_BRACKET_RATIO:
        return None
    return (lo, hi, math.log(x / lo) / math.log(hi / lo))


def read_rows(path: str | Path, first: str | None = None) -> list[list]:
    """The rows of a converted table (gzipped CSV: one text column, then integer columns, latency in
    microseconds last), latency converted to seconds; only those whose text column is ``first`` if given
    (a GEMM table holds three recipes; a model uses one)."""
    lines = _lines(str(path))
    if first is not None:
        prefix = first + ","
        lines = [ln for ln in lines if ln.startswith(prefix)]
    return [[r[0], *map(int, r[1:-1]), float(r[-1]) * 1e-6] for r in csv.reader(lines)]


@lru_cache(maxsize=8)
def _lines(path: str) -> tuple[str, ...]:
    """A table file's data lines, decompressed once however many of its recipes are read."""
    with gzip.open(path, "rt") as fh:
        return tuple(fh.read().splitlines()[1:])


@lru_cache(maxsize=None)
def load_table(path: str, family: str, first: str | None = None) -> Grid:
    """A converted table (the rows of one text-column value if ``first``) as the Grid the lookups use,
    cached for the process."""
    return Grid(read_rows(path, first), CATEGORICAL[family], MONOTONE_AXIS.get(family))


@lru_cache(maxsize=None)
def _index(gpu_key: str) -> dict | None:
    d = kernels_dir()
    if not d.is_dir():
        return None
    for path in sorted(d.glob("*.yaml")):
        if normalize(path.stem) == gpu_key:
            return yaml.safe_load(path.read_text())
    return None


class BackendTables:
    """One engine version's tables on one GPU."""

    def __init__(self, gpu: str, backend: str, entry: dict):
        self.gpu, self.backend, self.version = gpu, backend, str(entry.get("version"))
        self.files = {fam: t["file"] for fam, t in (entry.get("tables") or {}).items()}

    def path(self, family: str) -> Path | None:
        rel = self.files.get(family)
        return None if rel is None else kernels_dir() / rel

    def grid(self, family: str, first: str | None = None) -> Grid | None:
        path = self.path(family)
        return None if path is None else load_table(str(path), family, first)


def _zero(*sizes) -> bool:
    return any(s == 0 for s in sizes)


class KernelTables:
    """The kernel tables of one GPU for one engine (or for any: each query tries the engines in
    :data:`BACKEND_ORDER` and answers with the first that covers it)."""

    def __init__(self, gpu: str, parts: list[BackendTables]):
        self.gpu = gpu
        self.parts = parts
        self.backend = parts[0].backend if len(parts) == 1 else None
        self._memo: dict[tuple, float | None] = {}  # the same shapes recur every layer and step

    def _ask(self, family: str, cat: tuple, x: tuple) -> float | None:
        key = (family, cat, x)
        if key in self._memo:
            return self._memo[key]
        found = None
        for part in self.parts:
            g = part.grid(family, cat[0])
            if g is None:
                continue
            found = g.lookup(cat, x)
            if found is not None:
                break
        if len(self._memo) < MEMO_ENTRIES:
            self._memo[key] = found
        return found

    def source(self) -> str:
        return ", ".join(f"{p.backend} {p.version}" for p in self.parts) + f" on {self.gpu} (AIConfigurator tables)"

    def gemm_s(self, m, n, k, quant: str) -> float | None:
        """Seconds of one GEMM y = x W^T (x [m, k], W [n, k]) in the engine's path for ``quant``."""
        if _zero(m, n, k):
            return 0.0
        return self._ask("gemm", (quant,), (m, n, k))

    def moe_s(self, tokens, hidden, inter, num_experts, topk, quant: str, tp: int = 1, ep: int = 1) -> float | None:
        """Seconds of one whole fused-MoE call on one GPU for ``tokens`` tokens (routing given, balanced):
        align, gate/up GEMM, activation, down GEMM, combine; ``inter`` is the unsplit expert ffn width, the
        GPU holding inter/tp of each of num_experts/ep experts."""
        if tokens == 0:
            return 0.0
        t = self._ask("moe", (quant, hidden, inter, num_experts, topk, tp, ep), (tokens,))
        if t is None and quant in TRANSFER_QUANTS:
            t = self.moe_transferred_s(tokens, hidden, inter, num_experts, topk, quant, tp, ep)
        return t

    def moe_transferred_s(self, tokens, hidden, inter, num_experts, topk, quant, tp=1, ep=1) -> float | None:
        """A fused-MoE call priced from a measured call of another expert shape (h0, i0, E0, k0) of the same recipe
        and layout, at equal rows per expert: T0 = T k E0 / (E k0) tokens there, times E h i / (E0 h0 i0).

        Every expert's grouped GEMMs then see the same rows; the call does E / E0 times the experts' work, each
        expert's GEMMs h i / (h0 i0) times the FLOPs and weight bytes (weight- or compute-bound alike; below one
        row per expert, the same ratio counts the experts hit). Used only where h and i are each within
        :data:`TRANSFER_SHAPE_RATIO` of the measured shape (nearest in log h + log i first), never from the queried
        shape itself (which :meth:`moe_s` looks up directly); None otherwise."""
        best = None
        for part in self.parts:
            g = part.grid("moe", quant)
            if g is None:
                continue
            for cat in g.points:
                q, h0, i0, e0, k0, tp0, ep0 = cat
                if q != quant or (tp0, ep0) != (tp, ep) or (h0, i0, e0, k0) == (hidden, inter, num_experts, topk):
                    continue
                rh, ri = max(hidden / h0, h0 / hidden), max(inter / i0, i0 / inter)
                if rh > TRANSFER_SHAPE_RATIO or ri > TRANSFER_SHAPE_RATIO:
                    continue
                dist = math.log(rh) + math.log(ri)
                if best is None or dist < best[0]:
                    best = (dist, cat)
        if best is None:
            return None
        _, h0, i0, e0, k0, _, _ = best[1]
        t0 = self._ask("moe", best[1], (tokens * topk * e0 / (num_experts * k0),))
        return None if t0 is None else t0 * (num_experts * hidden * inter) / (e0 * h0 * i0)


    def attention_prefill_s(self, batch, seq, heads, kv_heads, head_dim, kv_dtype: str = "bf16") -> float | None:
        """Seconds of causal prefill attention of ``batch`` sequences of ``seq`` new tokens."""
        if _zero(batch, seq):
            return 0.0
        return self._ask("attention_prefill", (kv_dtype, head_dim, kv_heads), (heads, batch, seq))

    def attention_decode_s(self, batch, ctx, heads, kv_heads, head_dim, kv_dtype: str = "bf16") -> float | None:
        """Seconds of one decode step's attention, ``batch`` sequences over ``ctx`` cached tokens each."""
        if batch == 0:
            return 0.0
        return self._ask("attention_decode", (kv_dtype, head_dim, kv_heads), (heads, batch, ctx))

    def mla_decode_s(self, batch, ctx, heads, kv_lora_rank, rope_dim, kv_dtype: str = "bf16") -> float | None:
        """Seconds of one decode step of DeepSeek MLA attention (tables hold kv_lora_rank 512, rope 64 only)."""
        if batch == 0:
            return 0.0
        if (kv_lora_rank, rope_dim) != MLA_SHAPE:
            return None
        return self._ask("mla_decode", (kv_dtype,), (heads, batch, ctx))

    def mla_prefill_s(self, batch, seq, heads, kv_lora_rank, rope_dim, kv_dtype: str = "bf16") -> float | None:
        """Seconds of causal DeepSeek MLA prefill attention of ``batch`` prompts of ``seq`` new tokens (no cached
        prefix), ``heads`` query heads per GPU (tables hold kv_lora_rank 512, rope 64 only)."""
        if _zero(batch, seq):
            return 0.0
        if (kv_lora_rank, rope_dim) != MLA_SHAPE:
            return None
        return self._ask("mla_prefill", (kv_dtype,), (heads, batch, seq))

    def allreduce_s(self, message_bytes, num_gpus: int, dtype: str = "bf16") -> float | None:
        """Seconds of one all-reduce of ``message_bytes`` over ``num_gpus`` GPUs of one board (the engine's
        custom all-reduce under a CUDA graph; tables measured bf16, fp16 moves the same bytes alike)."""
        if num_gpus == 1 or message_bytes == 0:
            return 0.0
        if dtype not in ("bf16", "fp16"):
            return None
        return self._ask("allreduce", ("bf16", num_gpus), (message_bytes,))


class MoeQuantView:
    """A :class:`KernelTables` whose fused-MoE queries of some quants read another recipe's rows (``{model quant:
    table quant}``, e.g. ``{"mxfp4": "mxfp4_marlin"}``: an engine told to run its MXFP4 experts on Marlin); every
    other query as the tables answer it."""

    def __init__(self, tables: KernelTables, quants: dict[str, str]):
        self._tables, self._quants = tables, dict(quants)

    def __getattr__(self, name):
        return getattr(self._tables, name)

    def moe_s(self, tokens, hidden, inter, num_experts, topk, quant: str, tp: int = 1, ep: int = 1) -> float | None:
        return self._tables.moe_s(tokens, hidden, inter, num_experts, topk, self._quants.get(quant, quant), tp, ep)


@lru_cache(maxsize=None)
def kernel_tables(gpu_name: str, backend: str | None) -> KernelTables | None:
    """The measured kernel tables of ``gpu_name`` (a hardware_db GPU name, any case/punctuation) for
    ``backend`` ("vllm", "sglang", "trtllm"; None: any of them), or None where there are none."""
    index = _index(normalize(gpu_name))
    if index is None:
        return None
    entries = index.get("backends") or {}
    names = [backend] if backend is not None else [b for b in BACKEND_ORDER if b in entries]
    parts = [BackendTables(index.get("gpu", gpu_name), b, entries[b]) for b in names if b in entries]
    return KernelTables(index.get("gpu", gpu_name), parts) if parts else None
