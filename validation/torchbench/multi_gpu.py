"""Multi-GPU campaign: collectives, an expert-parallel MoE layer and a tensor-parallel MoE decode step,
one process per GPU through torch.distributed (NCCL on GPUs, gloo on the CPU for the tests).

Run it (the device's lent kinds; README_multi_gpu.md has the whole procedure)::

    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1 \\
        python3 -m torch.distributed.run --standalone --nproc-per-node 8 validation/torchbench/multi_gpu.py \\
        --out $OUT/h200x8.json

or without torchrun, ``python validation/torchbench/multi_gpu.py --spawn 8 --out FILE`` (mp.spawn);
``--cpu --spawn 2`` runs the tiny CPU grid over gloo (what the tests run). ``--quick`` is a short
grid; ``--estimate`` prints the estimated duration of the grid for ``--spawn N`` GPUs and exits.

NVLink multicast stays off: this module sets NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1
and NVSHMEM_DISABLE_NVLS=1 in ``os.environ`` at import, before torch is imported and before any
process group exists, overriding any other value (the lent machines' notes: multicast can put the
host's shared GPUs out of service); it never uses symmetric memory or multimem operations. The
values are recorded in the JSON's ``env``.

Cases (``grid``):

* ``all_reduce``, ``all_gather``, ``reduce_scatter``, ``all_to_all``, ``all_to_all_uneven``: 1 KiB to
  1 GiB, powers of 2 (``--quick``: 1 KiB, 64 KiB, 4 MiB, 256 MiB). ``nbytes`` is each rank's largest
  buffer, as nccl-tests counts it: the all-reduce buffer, the all-gather output, the reduce-scatter
  input, the all-to-all input. The uneven all-to-all
  sends peer j a share proportional to j + 1 (every rank sends nbytes; rank N-1 receives
  2N/(N+1) nbytes: a hot rank, as skewed expert routing makes one); ``max_rank_bytes`` is the most
  any rank sends or receives. Timed as single calls (``median_s``), back to back (``burst_s``) and,
  on GPUs, captured in a CUDA graph and replayed (``graph_s``).
* ``ep_moe``: expert-parallel MoE layer, E/N experts per rank, ``tokens`` per rank: route (router
  GEMM, top-k of logits + routing bias, softmax over the chosen logits), dispatch (per-expert counts
  exchanged with all_to_all_single, one host sync for the split sizes, token rows all_to_all_single),
  experts (rows regrouped by local expert, grouped GEMM per local expert: torch._grouped_mm on GPUs,
  a loop of GEMMs elsewhere), combine (all_to_all_single back, weighted sum over the top-k). Each
  phase between CUDA events; end to end is the sum. Routing: ``uniform``, or ``zipf`` (expert i of a
  fixed random order drawn with probability proportional to 1 / (i + 1)^s): the bias is log p plus
  Gumbel noise, so top-k draws k distinct experts with those probabilities (Gumbel-top-k), the router
  logits being small beside it. Shapes (hidden, expert ffn, experts, top-k) read from models_db:
  Mixtral-8x7B, Qwen3-30B-A3B, DeepSeek-V3 (routed experts only; its shared expert is not included).
  Not captured in graphs: the split sizes need a host sync.
* ``tp_moe``: tensor-parallel MoE decode step for comparison: every rank holds all experts, w13
  column-parallel (ffn / N of gate and of up) and w2 row-parallel, the same ``tokens_total`` = N x
  tokens-per-rank tokens on every rank, grouped GEMM without host syncs, then all-reduce of the
  output. Phases ``experts_s`` and ``allreduce_s``; eager and CUDA graph.

Checks first (``checks`` in the JSON): the EP layer and the TP layer's all-reduced shards against a
single-process float64 MoE (fp32: the loop of GEMMs, ~1e-7; bf16: on GPUs the grouped GEMM the timed
cases take, ~5e-3); the uneven all-to-all's content and round trip.

Timing (METHOD.md; helpers from timing.py): warm-up calls; random data (never zeros; in-place sums
of the all-reduce grow and may reach inf in bf16 after ~40 calls, which an adder takes no longer
over); rotation over buffer sets larger than twice the L2 where inputs are small; before every
timed single call a barrier (a one-element all-reduce, then a device sync), so every rank starts
together, and per call the MAXIMUM over ranks of each rank's event time (the collective is done when
the last rank is); median, p10, p90 over the calls. Repetition counts are agreed across ranks (a
collective must be called equally often everywhere). The JSON (rank 0) is rewritten after every
case, so a run stopped early keeps what it measured; ``--budget-s`` stops starting cases after it.
"""

from __future__ import annotations

import os

#: NVLink multicast off in NCCL, PyTorch symmetric memory and NVSHMEM (see the module docstring)
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
os.environ.update(MULTICAST_OFF)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import timedelta  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from timing import _events_s, capture_graph, on_cuda, sync  # noqa: E402

SCHEMA = 1
KIB = 1024
L2_BYTES = 64 * 2**20
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "all_to_all_uneven")
MODELS = ("mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v3")
DECODE_TOKENS = (1, 4, 16, 64, 256)
PREFILL_TOKENS = (1024, 2048, 4096, 8192)
ZIPF_S = 1.0
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
#: seconds of timed single calls a case aims for, and the bounds on their number
CASE_BUDGET_S = 0.3
MIN_REPS, MAX_REPS = 5, 100
WARMUP = 3
BURST_REPS, GRAPH_REPS = 5, 10

DEV = torch.device("cpu")  # set per process in worker()


# ---- grids ---------------------------------------------------------------------------------------
def model_shape(name: str) -> dict:
    """(hidden, expert ffn, experts, top-k) of a models_db entry."""
    import yaml

    root = HERE.parents[1] / "models_db"
    d = yaml.safe_load((root / f"{name}.yaml").read_text())
    m = d["moe"]
    return {"model": name, "hidden": int(d["hidden_size"]), "ffn": int(m["expert_intermediate_size"]),
            "experts": int(m["num_experts"]), "top_k": int(m["top_k"])}


def grid(kind: str, n: int) -> list[dict]:
    """Every case of a grid: ``full`` and ``quick`` for GPUs, ``cpu`` (tiny, for the tests)."""
    cases: list[dict] = []
    if kind == "cpu":
        sizes, dtype = [4 * KIB, 16 * KIB, 64 * KIB], "fp32"
        shapes = [{"model": "tiny", "hidden": 32, "ffn": 48, "experts": 4 * n, "top_k": 2}]
        ep_tokens, tp_tokens = (4, 16), (4,)
    else:
        dtype = "bf16"
        sizes = [KIB * 2 ** i for i in range(21)] if kind == "full" else [KIB, 64 * KIB, 4 * 2**20, 256 * 2**20]
        shapes = [model_shape(m) for m in MODELS]
        ep_tokens = DECODE_TOKENS + PREFILL_TOKENS if kind == "full" else (1, 64, 4096)
        tp_tokens = DECODE_TOKENS if kind == "full" else (1, 64)
    for fam in COLLECTIVES:
        cases += [{"family": fam, "nbytes": s, "dtype": dtype} for s in sizes]
    for shape in shapes:
        if shape["experts"] % n:
            continue
        for routing in ("uniform", "zipf"):
            cases += [{"family": "ep_moe", **shape, "tokens": t, "routing": routing, "zipf_s": ZIPF_S, "dtype": dtype}
                      for t in ep_tokens]
    for shape in shapes:
        if shape["ffn"] % n:
            continue
        cases += [{"family": "tp_moe", **shape, "tokens_per_rank": t, "tokens_total": t * n, "routing": "uniform",
                   "dtype": dtype} for t in tp_tokens]
    return cases


def algorithm_factor(family: str, n: int) -> float:
    """Bytes each rank's link carries per byte of ``nbytes`` (ring all-reduce 2 (n-1)/n; all-gather,
    reduce-scatter, all-to-all (n-1)/n), as nccl-tests turns algorithm bandwidth into bus bandwidth."""
    if n <= 1:
        return 0.0
    return 2.0 * (n - 1) / n if family == "all_reduce" else (n - 1) / n


def uneven_counts(elems: int, n: int) -> list[int]:
    """Elements a rank sends each peer in ``all_to_all_uneven``: shares (j + 1) / (n (n + 1) / 2) of
    ``elems``, the rounding remainder to the last peer."""
    total = n * (n + 1) // 2
    counts = [elems * (j + 1) // total for j in range(n)]
    counts[-1] += elems - sum(counts)
    return counts


def estimate_case_s(c: dict, n: int) -> float:
    """A rough duration of one case on H200s (for the budget printout only): a collective at 40 us +
    bytes / 150 GB/s bus bandwidth, an MoE layer at 400 TFLOP/s plus its all-to-alls; times the calls
    a case makes (warm-up, pilot, single calls up to CASE_BUDGET_S, bursts, graph), plus setup."""
    fam = c["family"]
    if fam in COLLECTIVES:
        per = 40e-6 + algorithm_factor(fam, n) * c["nbytes"] * 2 / 150e9 + 30e-6  # + the barrier
        reps = min(MAX_REPS, max(MIN_REPS, CASE_BUDGET_S / per))
        burst = min(64, max(2, round(2e-3 / per)))
        return 0.1 + per * (WARMUP + 3 + reps) + (BURST_REPS + GRAPH_REPS) * burst * per + 0.3  # + graph capture
    tokens = c.get("tokens", c.get("tokens_total", 1))
    flop = 2 * 3 * tokens * c["top_k"] * c["hidden"] * c["ffn"] / (1 if fam == "ep_moe" else n)
    comm = 2 * (40e-6 + tokens * c["top_k"] * c["hidden"] * 2 / 150e9) if fam == "ep_moe" else \
        40e-6 + 2 * tokens * c["hidden"] * 2 / 150e9
    per = 400e-6 + flop / 400e12 + comm
    reps = min(MAX_REPS, max(MIN_REPS, CASE_BUDGET_S / per))
    weights = 3 * c["experts"] * c["hidden"] * c["ffn"] * 2 / n
    return 0.3 + weights / 100e9 + per * (WARMUP + 3 + reps) + (0.3 + 2 * BURST_REPS * 2e-3 if fam == "tp_moe" else 0)


# ---- helpers -------------------------------------------------------------------------------------
def rand(*shape, dtype=torch.float32, scale=1.0, generator=None, device=None):
    dev = device if device is not None else DEV
    if generator is not None:
        return (torch.randn(*shape, generator=generator, dtype=torch.float32) * scale).to(device=dev, dtype=dtype)
    return (torch.randn(*shape, device=dev, dtype=torch.float32) * scale).to(dtype)


def rotations(nbytes: float) -> int:
    """Buffer sets to rotate over so that the sets together exceed twice the L2 (at most 8)."""
    return max(1, min(8, int(2 * L2_BYTES // max(nbytes, 1)) + 1))


def agree(value: float, op: str = "max") -> float:
    t = torch.tensor([float(value)], dtype=torch.float64, device=DEV)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.MIN)
    return float(t.item())


_BAR: dict = {}


def barrier() -> None:
    """Every rank past this point before any goes on: a one-element all-reduce, then a device sync."""
    if "t" not in _BAR:
        _BAR["t"] = torch.ones(1, device=DEV)
    dist.all_reduce(_BAR["t"])
    sync()


def max_over_ranks(values: list[float]) -> np.ndarray:
    t = torch.tensor(values, dtype=torch.float64, device=DEV)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.cpu().numpy()


def stats(a: np.ndarray, prefix: str = "") -> dict:
    return {f"{prefix}median_s": float(np.median(a)), f"{prefix}p10_s": float(np.percentile(a, 10)),
            f"{prefix}p90_s": float(np.percentile(a, 90))}


class Stamps:
    """Time stamps between phases: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, k: int):
        self.cuda = on_cuda() and DEV.type == "cuda"
        self.ev = [torch.cuda.Event(enable_timing=True) for _ in range(k)] if self.cuda else [0.0] * k
        self.i = 0

    def mark(self):
        if self.cuda:
            self.ev[self.i].record()
        else:
            self.ev[self.i] = time.perf_counter()
        self.i += 1

    def gaps_s(self) -> list[float]:
        if self.cuda:
            self.ev[self.i - 1].synchronize()
            return [self.ev[j].elapsed_time(self.ev[j + 1]) / 1e3 for j in range(self.i - 1)]
        return [self.ev[j + 1] - self.ev[j] for j in range(self.i - 1)]


# ---- timing --------------------------------------------------------------------------------------
def single_calls(fn, reps: int, offset: int = 0) -> np.ndarray:
    """``reps`` single calls, each after a barrier; per call the maximum over ranks."""
    own = []
    for r in range(reps):
        barrier()
        own.append(_events_s(lambda: fn(offset + r)))
    return max_over_ranks(own)


def agreed_reps(pilot_s: float) -> int:
    return int(min(MAX_REPS, max(MIN_REPS, CASE_BUDGET_S / max(pilot_s, 1e-7))))


def burst(fn, n: int) -> float:
    """``n`` calls back to back between one pair of events, per call; median over BURST_REPS of the
    maximum over ranks."""
    per = []
    for r in range(BURST_REPS):
        barrier()
        per.append(_events_s(lambda: [fn(r * n + j) for j in range(n)]) / n)
    return float(np.median(max_over_ranks(per)))


def graph(fn, n: int) -> dict:
    """``n`` calls captured in one CUDA graph; its replays timed after a barrier, per call, median over
    GRAPH_REPS of the maximum over ranks. A failed capture on any rank is recorded, not raised."""
    err, g = None, None
    try:
        g = capture_graph(fn, n, "thread_local")
    except Exception as exc:  # not capturable: recorded, the eager figures stand
        err = f"{type(exc).__name__}: {exc}"[:200]
        torch.cuda.set_stream(torch.cuda.default_stream())
        sync()
    if agree(0.0 if err else 1.0, "min") < 1.0:
        return {"graph_error": err or "capture failed on another rank"}
    g.replay()
    sync()
    per = []
    for _ in range(GRAPH_REPS):
        barrier()
        per.append(_events_s(g.replay) / n)
    a = max_over_ranks(per)
    out = {"graph_s": float(np.median(a)), "graph_p10_s": float(np.percentile(a, 10)),
           "graph_p90_s": float(np.percentile(a, 90)), "graph_n": n}
    del g
    return out


def measure_dist(fn, use_graph: bool) -> dict:
    for i in range(WARMUP):
        fn(i)
    sync()
    pilot = float(np.median(single_calls(fn, 3)))
    reps = agreed_reps(pilot)
    a = single_calls(fn, reps, offset=3)
    out = {**stats(a), "reps": reps}
    n = int(min(64, max(2, round(2e-3 / max(out["median_s"], 1e-7)))))
    out.update(burst_s=burst(fn, n), burst_n=n)
    if use_graph and DEV.type == "cuda":
        out.update(graph(fn, n))
    return out


# ---- collectives ---------------------------------------------------------------------------------
def collective(c: dict, n: int, rank: int):
    """(fn(i), extra) for a collective case; fn rotates over buffer sets."""
    fam, dt = c["family"], DTYPES[c["dtype"]]
    esize = torch.tensor([], dtype=dt).element_size()
    elems = c["nbytes"] // esize
    if elems % n:
        raise ValueError(f"{c['nbytes']} bytes is not a whole number of {c['dtype']} elements per rank")
    sets = rotations(2 * c["nbytes"])
    extra = {"algorithm_factor": algorithm_factor(fam, n), "max_rank_bytes": c["nbytes"]}
    if fam == "all_reduce":
        bufs = [rand(elems, dtype=dt) for _ in range(sets)]
        return (lambda i: dist.all_reduce(bufs[i % sets])), extra
    if fam == "all_gather":
        ins = [rand(elems // n, dtype=dt) for _ in range(sets)]
        outs = [torch.empty(elems, dtype=dt, device=DEV) for _ in range(sets)]
        return (lambda i: dist.all_gather_into_tensor(outs[i % sets], ins[i % sets])), extra
    if fam == "reduce_scatter":
        ins = [rand(elems, dtype=dt) for _ in range(sets)]
        outs = [torch.empty(elems // n, dtype=dt, device=DEV) for _ in range(sets)]
        return (lambda i: dist.reduce_scatter_tensor(outs[i % sets], ins[i % sets])), extra
    if fam == "all_to_all":
        ins = [rand(elems, dtype=dt) for _ in range(sets)]
        outs = [torch.empty(elems, dtype=dt, device=DEV) for _ in range(sets)]
        return (lambda i: dist.all_to_all_single(outs[i % sets], ins[i % sets])), extra
    if fam == "all_to_all_uneven":
        send = uneven_counts(elems, n)
        recv = [send[rank]] * n  # every peer sends this rank the same share
        extra.update(send_splits=send, recv_splits=recv,
                     max_rank_bytes=max(elems, n * uneven_counts(elems, n)[-1]) * esize)
        ins = [rand(elems, dtype=dt) for _ in range(sets)]
        outs = [torch.empty(sum(recv), dtype=dt, device=DEV) for _ in range(sets)]
        return (lambda i: dist.all_to_all_single(outs[i % sets], ins[i % sets], recv, send)), extra
    raise KeyError(fam)


def run_collective(c: dict, n: int, rank: int) -> dict:
    fn, extra = collective(c, n, rank)
    t = measure_dist(fn, use_graph=True)
    t["algbw_bytes_per_s"] = c["nbytes"] / t["median_s"]
    t["busbw_bytes_per_s"] = t["algbw_bytes_per_s"] * extra["algorithm_factor"]
    return {**t, "extra": extra}


# ---- MoE layers ----------------------------------------------------------------------------------
_GROUPED: dict = {}


def grouped_ok(dtype) -> bool:
    """torch._grouped_mm on this GPU for ``dtype`` (checked once against plain GEMMs)."""
    key = str(dtype)
    if key not in _GROUPED:
        ok = False
        if DEV.type == "cuda" and hasattr(torch, "_grouped_mm") and dtype == torch.bfloat16:
            try:
                a, w = rand(64, 64, dtype=dtype), rand(2, 64, 32, dtype=dtype)
                offs = torch.tensor([32, 64], device=DEV, dtype=torch.int32)
                ref = torch.cat([a[:32] @ w[0], a[32:] @ w[1]])
                ok = bool(torch.allclose(torch._grouped_mm(a, w, offs=offs).float(), ref.float(), atol=1e-2, rtol=1e-2))
            except Exception:
                ok = False
        _GROUPED[key] = ok
    return _GROUPED[key]


def grouped_ffn(xs, counts, w13, w2):
    """Rows ``xs`` sorted by expert, ``counts`` rows per expert (device tensor): SiLU(x W_gate) * (x W_up)
    then W_down, per expert: one grouped GEMM per matrix where torch._grouped_mm works (no host sync),
    else a loop of GEMMs (one host sync for the counts)."""
    if xs.shape[0] == 0:
        return xs.new_empty(0, w2.shape[-1])
    if grouped_ok(xs.dtype):
        offs = torch.cumsum(counts, 0).to(torch.int32)
        h = torch._grouped_mm(xs, w13, offs=offs)
        gate, up = h.chunk(2, dim=-1)
        return torch._grouped_mm((F.silu(gate) * up).contiguous(), w2, offs=offs)
    out, start = [], 0
    for e, k in enumerate(counts.tolist()):
        if k:
            h = xs[start:start + k] @ w13[e]
            gate, up = h.chunk(2, dim=-1)
            out.append((F.silu(gate) * up) @ w2[e])
            start += k
    return torch.cat(out)


def routing_bias(tokens: int, experts: int, routing: str, zipf_s: float, gen: torch.Generator) -> torch.Tensor:
    """[tokens, experts] fp32: log p_e + Gumbel noise, so that top-k of (bias + small logits) draws k
    distinct experts with probabilities p (Gumbel-top-k). p uniform, or Zipf over a fixed random order
    of the experts (the same order on every rank: seed 0)."""
    if routing == "uniform":
        logp = torch.zeros(experts)
    else:
        order = torch.randperm(experts, generator=torch.Generator().manual_seed(0))
        p = torch.empty(experts)
        p[order] = 1.0 / torch.arange(1, experts + 1, dtype=torch.float32) ** zipf_s
        logp = torch.log(p / p.sum())
    u = torch.rand(tokens, experts, generator=gen).clamp_(1e-12, 1 - 1e-7)
    return (logp - torch.log(-torch.log(u))).to(DEV)


def expert_weights(ids, hidden: int, ffn: int, dtype, seed: int | None, tp: int = 1, tp_rank: int = 0):
    """w13 [E, hidden, 2 ffn / tp] (gate then up), w2 [E, ffn / tp, hidden] for experts ``ids``; with a
    ``seed``, expert e's full weights are drawn from seed + e on the CPU (any process rebuilds any
    expert), then the tensor-parallel shard is cut."""
    f = ffn // tp
    if seed is None:
        return (rand(len(ids), hidden, 2 * f, dtype=dtype, scale=hidden ** -0.5),
                rand(len(ids), f, hidden, dtype=dtype, scale=ffn ** -0.5))
    w13, w2 = [], []
    for e in ids:
        g = torch.Generator().manual_seed(seed + int(e))
        a = torch.randn(hidden, 2 * ffn, generator=g) * hidden ** -0.5
        b = torch.randn(ffn, hidden, generator=g) * ffn ** -0.5
        sl = slice(tp_rank * f, (tp_rank + 1) * f)
        w13.append(torch.cat([a[:, :ffn][:, sl], a[:, ffn:][:, sl]], 1))
        w2.append(b[sl])
    return torch.stack(w13).to(DEV, dtype), torch.stack(w2).to(DEV, dtype)


def route(x, router, bias, top_k):
    """(chosen experts [T, k], weights [T, k]): top-k of logits + bias, softmax over the chosen logits."""
    logits = (x @ router).float()
    chosen = torch.topk(logits + bias, top_k, dim=-1).indices
    weights = torch.softmax(logits.gather(1, chosen), dim=-1).to(x.dtype)
    return chosen, weights


class EPLayer:
    """Expert-parallel MoE layer on ``n`` ranks; rank r owns experts [r E/n, (r+1) E/n)."""

    def __init__(self, c: dict, n: int, rank: int, seed: int | None = None):
        self.n, self.rank, self.k, self.E = n, rank, c["top_k"], c["experts"]
        self.local = self.E // n
        dt = DTYPES[c["dtype"]]
        g = torch.Generator().manual_seed(seed if seed is not None else 1234)  # router: the same everywhere
        self.router = rand(c["hidden"], self.E, dtype=dt, scale=1e-2 * c["hidden"] ** -0.5, generator=g)
        ids = range(rank * self.local, (rank + 1) * self.local)
        self.w13, self.w2 = expert_weights(ids, c["hidden"], c["ffn"], dt, seed)

    def forward(self, x, bias, stamps: Stamps | None = None):
        mark = stamps.mark if stamps else (lambda: None)
        n, k, E, local = self.n, self.k, self.E, self.local
        mark()
        chosen, weights = route(x, self.router, bias, k)
        flat = chosen.flatten()
        order = torch.argsort(flat, stable=True)  # pairs by global expert, so by destination rank
        counts = torch.zeros(E, dtype=torch.int64, device=x.device).index_add_(0, flat, torch.ones_like(flat))
        send = x[order // k]
        mark()
        recv_counts = torch.empty_like(counts)
        dist.all_to_all_single(recv_counts, counts)  # [source, local expert] rows this rank receives
        in_splits = counts.view(n, local).sum(1)
        out_splits = recv_counts.view(n, local).sum(1)
        sizes = torch.cat([in_splits, out_splits]).tolist()  # the one host sync
        ins, outs = sizes[:n], sizes[n:]
        recv = x.new_empty(sum(outs), x.shape[1])
        dist.all_to_all_single(recv, send, outs, ins)
        mark()
        le = torch.arange(local, device=x.device).repeat(n)
        expert_of_row = torch.repeat_interleave(le, recv_counts, output_size=sum(outs))
        perm = torch.argsort(expert_of_row, stable=True)
        y_sorted = grouped_ffn(recv[perm], recv_counts.view(n, local).sum(0), self.w13, self.w2)
        y = torch.empty_like(recv)
        y[perm] = y_sorted
        mark()
        back = x.new_empty(send.shape[0], x.shape[1])
        dist.all_to_all_single(back, y, ins, outs)
        pairs = torch.empty_like(back)
        pairs[order] = back
        out = (pairs.view(-1, k, x.shape[1]) * weights[..., None]).sum(1)
        mark()
        self.received_rows = sum(outs)
        return out


def reference_moe(x, bias, router, w13_all, w2_all, top_k):
    """Single-process MoE in float64, token by token: the check of :class:`EPLayer`."""
    x, router, w13_all, w2_all = (t.double().cpu() for t in (x, router, w13_all, w2_all))
    logits = x @ router
    chosen = torch.topk(logits + bias.double().cpu(), top_k, dim=-1).indices
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        w = torch.softmax(logits[t, chosen[t]], -1)
        for j, e in enumerate(chosen[t].tolist()):
            gate, up = (x[t] @ w13_all[e]).chunk(2)
            out[t] += w[j] * ((F.silu(gate) * up) @ w2_all[e])
    return out


def run_ep_moe(c: dict, n: int, rank: int) -> dict:
    layer = EPLayer(c, n, rank)
    dt, T, E = DTYPES[c["dtype"]], c["tokens"], c["experts"]
    sets = rotations(T * c["hidden"] * 2 * c["top_k"])
    gen = torch.Generator().manual_seed(1000 + rank)
    inputs = [(rand(T, c["hidden"], dtype=dt), routing_bias(T, E, c["routing"], c.get("zipf_s", ZIPF_S), gen))
              for _ in range(sets)]
    for i in range(WARMUP):
        layer.forward(*inputs[i % sets])
    sync()
    phases = ("route_s", "dispatch_s", "experts_s", "combine_s")

    def calls(reps, offset):
        own, rows = [], []
        for r in range(reps):
            barrier()
            st = Stamps(5)
            layer.forward(*inputs[(offset + r) % sets], stamps=st)
            own.append(st.gaps_s())
            rows.append(layer.received_rows)
        own = np.array(own)  # [reps, phase]
        total = max_over_ranks(own.sum(1).tolist())
        per_phase = max_over_ranks(own.flatten().tolist()).reshape(own.shape)
        return total, per_phase, rows

    pilot, _, _ = calls(3, WARMUP)
    reps = agreed_reps(float(np.median(pilot)))
    total, per_phase, rows = calls(reps, WARMUP + 3)
    out = {**stats(total), "reps": reps}
    for j, name in enumerate(phases):
        out[name] = float(np.median(per_phase[:, j]))
    recv = torch.tensor([float(np.mean(rows))], dtype=torch.float64, device=DEV)
    allrecv = [torch.zeros_like(recv) for _ in range(n)]
    dist.all_gather(allrecv, recv)
    loads = [float(t.item()) for t in allrecv]
    extra = {"received_rows_per_rank": loads, "load_imbalance": max(loads) / max(np.mean(loads), 1e-9),
             "experts_per_rank": layer.local, "grouped_kernel": "torch._grouped_mm" if grouped_ok(dt) else "gemm_loop",
             "phases_note": "phase times are each the median over calls of the maximum over ranks; "
                            "median_s is the end to end (sum of a rank's phases), max over ranks",
             "graph_error": "not captured: dispatch syncs the host for the split sizes"}
    return {**out, "extra": extra}


class TPLayer:
    """Tensor-parallel MoE layer: all experts on every rank, ffn split n ways, then all-reduce."""

    def __init__(self, c: dict, n: int, rank: int, seed: int | None = None):
        dt = DTYPES[c["dtype"]]
        self.k, self.E = c["top_k"], c["experts"]
        g = torch.Generator().manual_seed(seed if seed is not None else 1234)
        self.router = rand(c["hidden"], self.E, dtype=dt, scale=1e-2 * c["hidden"] ** -0.5, generator=g)
        self.w13, self.w2 = expert_weights(range(self.E), c["hidden"], c["ffn"], dt, seed, tp=n, tp_rank=rank)

    def experts(self, x, bias):
        chosen, weights = route(x, self.router, bias, self.k)
        flat = chosen.flatten()
        order = torch.argsort(flat, stable=True)
        counts = torch.zeros(self.E, dtype=torch.int64, device=x.device).index_add_(0, flat, torch.ones_like(flat))
        y = grouped_ffn(x[order // self.k], counts, self.w13, self.w2)
        y = y * weights.flatten()[order, None]
        return torch.zeros_like(x).index_add_(0, order // self.k, y)

    def forward(self, x, bias, stamps: Stamps | None = None):
        mark = stamps.mark if stamps else (lambda: None)
        mark()
        out = self.experts(x, bias)
        mark()
        dist.all_reduce(out)
        mark()
        return out


def run_tp_moe(c: dict, n: int, rank: int) -> dict:
    layer = TPLayer(c, n, rank)
    dt, T = DTYPES[c["dtype"]], c["tokens_total"]
    sets = rotations(T * c["hidden"] * 2)
    gen = torch.Generator().manual_seed(2000)  # the same tokens on every rank, as tensor parallelism has
    g2 = torch.Generator().manual_seed(2001)
    inputs = [(rand(T, c["hidden"], dtype=dt, generator=g2), routing_bias(T, c["experts"], "uniform", ZIPF_S, gen))
              for _ in range(sets)]
    for i in range(WARMUP):
        layer.forward(*inputs[i % sets])
    sync()

    def calls(reps, offset):
        own = []
        for r in range(reps):
            barrier()
            st = Stamps(3)
            layer.forward(*inputs[(offset + r) % sets], stamps=st)
            own.append(st.gaps_s())
        own = np.array(own)
        return max_over_ranks(own.sum(1).tolist()), max_over_ranks(own.flatten().tolist()).reshape(own.shape)

    pilot, _ = calls(3, WARMUP)
    reps = agreed_reps(float(np.median(pilot)))
    total, per_phase = calls(reps, WARMUP + 3)
    out = {**stats(total), "reps": reps, "experts_s": float(np.median(per_phase[:, 0])),
           "allreduce_s": float(np.median(per_phase[:, 1]))}
    if DEV.type == "cuda":
        fn = (lambda i: layer.forward(*inputs[i % sets]))
        nrep = int(min(64, max(2, round(2e-3 / max(out["median_s"], 1e-7)))))
        out.update(graph(fn, nrep))
    extra = {"grouped_kernel": "torch._grouped_mm" if grouped_ok(dt) else "gemm_loop",
             "column_row_parallel": "w13 column-parallel (ffn/N of gate and up), w2 row-parallel, all-reduce after"}
    return {**out, "extra": extra}


# ---- correctness checks (run first, on every campaign) -------------------------------------------
def check_ep(n: int, rank: int, routing: str, dump: Path | None = None, dtype: str = "fp32") -> float:
    """EP layer (tiny) against :func:`reference_moe` (float64) on the same tokens; returns the relative
    error max over ranks. Ranks hold different token counts (8 + 3 rank) to exercise uneven splits.
    fp32 takes the loop of GEMMs; bf16 on a GPU the grouped GEMM (expect ~1e-2: bf16 operands)."""
    c = {"hidden": 64, "ffn": 128, "experts": 4 * n, "top_k": 2, "dtype": dtype}
    seed = 77
    layer = EPLayer(c, n, rank, seed=seed)
    T = 8 + 3 * rank
    g = torch.Generator().manual_seed(500 + rank)
    x = rand(T, c["hidden"], generator=g, dtype=DTYPES[dtype])
    bias = routing_bias(T, c["experts"], routing, 1.2, g)
    out = layer.forward(x, bias)
    w13_all, w2_all = expert_weights(range(c["experts"]), c["hidden"], c["ffn"], DTYPES[dtype], seed)
    ref = reference_moe(x, bias, layer.router, w13_all, w2_all, c["top_k"])
    err = float((out.double().cpu() - ref).norm() / ref.norm())
    if dump is not None and dtype == "fp32":
        torch.save({"x": x.cpu(), "bias": bias.cpu(), "router": layer.router.cpu(), "w13_all": w13_all.cpu(),
                    "w2_all": w2_all.cpu(), "top_k": c["top_k"], "out": out.cpu(), "routing": routing},
                   dump / f"ep_{routing}_rank{rank}.pt")
    return agree(err if math.isfinite(err) else 1e9, "max")


def check_tp(n: int, rank: int, dtype: str = "fp32") -> float:
    """TP layer (tiny): the all-reduced sum of the ranks' column/row-parallel shards against
    :func:`reference_moe` with the unsharded experts; the same tokens on every rank."""
    c = {"hidden": 64, "ffn": 32 * n, "experts": 8, "top_k": 2, "dtype": dtype}
    seed = 91
    layer = TPLayer(c, n, rank, seed=seed)
    g = torch.Generator().manual_seed(600)  # the same on every rank
    x = rand(10, c["hidden"], generator=g, dtype=DTYPES[dtype])
    bias = routing_bias(10, c["experts"], "uniform", 1.0, g)
    out = layer.forward(x, bias)
    w13_all, w2_all = expert_weights(range(c["experts"]), c["hidden"], c["ffn"], DTYPES[dtype], seed)
    ref = reference_moe(x, bias, layer.router, w13_all, w2_all, c["top_k"])
    err = float((out.double().cpu() - ref).norm() / ref.norm())
    return agree(err if math.isfinite(err) else 1e9, "max")


def check_uneven_all_to_all(n: int, rank: int) -> dict:
    """Uneven all_to_all_single: every row received carries (source, destination, index) as sent, and
    sending back with the splits swapped returns the original exactly."""
    counts = [1 + ((rank + 2 * j) % (n + 1)) for j in range(n)]  # rows this rank sends peer j
    recv_counts = [1 + ((s + 2 * rank) % (n + 1)) for s in range(n)]  # what peer s sends this rank
    rows = [torch.tensor([[rank, j, i] for i in range(counts[j])], dtype=torch.float32) for j in range(n)]
    send = torch.cat(rows).to(DEV)
    recv = torch.empty(sum(recv_counts), 3, device=DEV)
    dist.all_to_all_single(recv, send, recv_counts, counts)
    expect = torch.cat([torch.tensor([[s, rank, i] for i in range(recv_counts[s])], dtype=torch.float32)
                        for s in range(n)]).to(DEV)
    content_ok = bool(torch.equal(recv, expect))
    back = torch.empty_like(send)
    dist.all_to_all_single(back, recv, counts, recv_counts)
    roundtrip_ok = bool(torch.equal(back, send))
    ok = agree(1.0 if content_ok and roundtrip_ok else 0.0, "min") == 1.0
    return {"content_ok": content_ok, "roundtrip_ok": roundtrip_ok, "all_ranks_ok": ok,
            "send_splits": counts, "recv_splits": recv_counts}


# ---- environment, driver -------------------------------------------------------------------------
def environment(n: int, backend: str) -> dict:
    env = {"device": DEV.type, "backend": backend, "world_size": n, "torch": torch.__version__,
           "python": platform.python_version(), "hostname": socket.gethostname(),
           "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "timer": "cuda_event" if DEV.type == "cuda" else "perf_counter",
           "env_vars": {k: v for k, v in sorted(os.environ.items())
                        if k.startswith(("NCCL_", "TORCH_NCCL", "TORCH_SYMM", "NVSHMEM_", "CUDA_VISIBLE"))},
           "timing": "per call: barrier, events, maximum over ranks; median/p10/p90 over calls; bursts; CUDA graph "
                     "replays (multi_gpu.py)"}
    if DEV.type == "cuda":
        try:
            v = torch.cuda.nccl.version()
            env["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        except Exception as exc:
            env["nccl"] = f"unknown: {exc}"[:100]
        env["cuda"] = torch.version.cuda
        names = [None] * n
        dist.all_gather_object(names, torch.cuda.get_device_name(DEV))
        env["gpus"] = names
        for key, cmd in (("nvidia_smi", ["nvidia-smi", "--query-gpu=index,name,driver_version,clocks.sm,clocks.max.sm,"
                                          "power.limit", "--format=csv,noheader"]),
                         ("nvidia_smi_topo", ["nvidia-smi", "topo", "-m"])):
            try:  # read-only queries
                env[key] = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
            except Exception as exc:
                env[key] = f"unavailable: {exc}"[:100]
    else:
        env["gpus"] = ["cpu"] * n
    return env


def case_bytes(c: dict, n: int) -> float:
    """Device bytes a case allocates, roughly (to skip what cannot fit)."""
    if c["family"] in COLLECTIVES:
        return 4 * c["nbytes"] * rotations(2 * c["nbytes"])
    w = 3 * c["experts"] * c["hidden"] * c["ffn"] * 2 / n
    if c["family"] == "tp_moe":
        rows = c["tokens_total"] * c["top_k"]
    else:  # the worst a rank can receive: every rank's every row (skewed routing)
        rows = n * c["tokens"] * c["top_k"]
    per_row = 6 * c["hidden"] * 2 + 3 * c["ffn"] * 2  # received, sorted, out rows; gate/up, activation
    return w + rotations(rows * c["hidden"] * 2) * rows * c["hidden"] * 2 + rows * per_row


RUNNERS = {"ep_moe": run_ep_moe, "tp_moe": run_tp_moe}


def write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def campaign(args, n: int, rank: int, backend: str) -> None:
    kind = "cpu" if DEV.type == "cpu" else ("quick" if args.quick else "full")
    cases = grid(kind, n)
    if args.only:
        cases = [c for c in cases if c["family"] in args.only.split(",")]
    est = sum(estimate_case_s(c, n) for c in cases)
    out = {"schema": SCHEMA, "harness": "multi_gpu", "grid": kind, "estimate_s": est, "budget_s": args.budget_s,
           "env": environment(n, backend), "checks": {}, "cases": []}
    path = Path(args.out)
    if rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"multi_gpu: {n} ranks, {backend}, grid {kind}: {len(cases)} cases, estimated {est:.0f} s "
              f"(budget {args.budget_s:.0f} s)", flush=True)
    dump = Path(args.dump) if args.dump else None
    if dump is not None:
        dump.mkdir(parents=True, exist_ok=True)
    out["checks"]["ep_rel_err"] = {r: check_ep(n, rank, r, dump) for r in ("uniform", "zipf")}
    out["checks"]["tp_rel_err"] = check_tp(n, rank)
    # bf16: on a GPU the grouped-GEMM path the timed cases take; bf16 operands give ~1e-2
    out["checks"]["ep_rel_err_bf16"] = {r: check_ep(n, rank, r, None, "bf16") for r in ("uniform", "zipf")}
    out["checks"]["tp_rel_err_bf16"] = check_tp(n, rank, "bf16")
    out["checks"]["uneven_all_to_all"] = check_uneven_all_to_all(n, rank)
    if rank == 0:
        write(path, out)
        print(f"checks: EP {json.dumps(out['checks']['ep_rel_err'])}, "
              f"EP bf16 {json.dumps(out['checks']['ep_rel_err_bf16'])}, TP {out['checks']['tp_rel_err']:.2e}, "
              f"TP bf16 {out['checks']['tp_rel_err_bf16']:.2e}, "
              f"uneven all-to-all "
              f"{'ok' if out['checks']['uneven_all_to_all']['all_ranks_ok'] else 'WRONG'}", flush=True)
    t0 = time.time()
    for idx, c in enumerate(cases):
        params = {k: v for k, v in c.items() if k != "family"}
        rec = {"family": c["family"], "params": params, "gpus": n}
        over = agree(time.time() - t0, "max") > args.budget_s
        room = True
        if DEV.type == "cuda":
            free = torch.cuda.mem_get_info(DEV)[0]
            room = agree(0.0 if case_bytes(c, n) > 0.85 * free else 1.0, "min") == 1.0
        if over or not room:
            rec["skipped"] = "over the time budget" if over else "too large for free device memory"
        else:
            tc = time.time()
            try:
                if c["family"] in COLLECTIVES:
                    rec.update(run_collective(c, n, rank))
                else:
                    rec.update(RUNNERS[c["family"]](c, n, rank))
            except Exception as exc:  # recorded; a failure on one rank only would stall the others
                rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
            rec["case_wall_s"] = time.time() - tc
        if DEV.type == "cuda":
            torch.cuda.empty_cache()
        out["cases"].append(rec)
        if rank == 0:
            out["elapsed_s"] = time.time() - t0
            write(path, out)
            if "median_s" in rec:
                size = c.get("nbytes", c.get("tokens", c.get("tokens_total")))
                print(f"[{idx + 1}/{len(cases)}] {c['family']:18s} {c.get('model', ''):14s} {c.get('routing', ''):8s}"
                      f" {size:>11} {rec['median_s'] * 1e6:10.1f} us  graph "
                      f"{rec.get('graph_s', float('nan')) * 1e6:9.1f}"
                      f" us  ({time.time() - t0:5.1f} s)", flush=True)
            else:
                print(f"[{idx + 1}/{len(cases)}] {c['family']} {params}: {rec.get('error') or rec.get('skipped')}",
                      flush=True)
    if rank == 0:
        table(out)


def table(out: dict) -> None:
    """The short table printed last: bus bandwidth of the collectives at the largest sizes, EP phases."""
    print("\nfamily              nbytes/tokens   median_us   graph_us   busbw_GB/s", flush=True)
    for c in out["cases"]:
        if "median_s" not in c:
            continue
        p = c["params"]
        if c["family"] in COLLECTIVES and p["nbytes"] in (KIB, 2**20, 2**30, 4 * KIB, 64 * KIB):
            graph_us = c.get("graph_s", float("nan")) * 1e6
            print(f"{c['family']:20s}{p['nbytes']:>13}{c['median_s'] * 1e6:12.1f}{graph_us:11.1f}"
                  f"{c['busbw_bytes_per_s'] / 1e9:12.1f}")
        elif c["family"] == "ep_moe" and p["tokens"] in (1, 256, 8192, 4, 16):
            print(f"ep {p['model'][:12]:12s} {p['routing']:7s}{p['tokens']:>6}{c['median_s'] * 1e6:12.1f}  "
                  f"disp {c['dispatch_s'] * 1e6:.0f} exp {c['experts_s'] * 1e6:.0f} comb {c['combine_s'] * 1e6:.0f} us")
    print(f"elapsed {out.get('elapsed_s', 0):.0f} s of estimated {out['estimate_s']:.0f} s", flush=True)


def worker(rank: int, args, world: int | None = None) -> None:
    global DEV, CASE_BUDGET_S, MIN_REPS
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # torch 2.13 renames all_gather_into_tensor
    os.environ.update(MULTICAST_OFF)  # again, in case a launcher replaced the environment
    if world is None:  # torchrun, or one plain process (a one-GPU smoke run)
        world, local = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", rank))
        if "MASTER_ADDR" not in os.environ:
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    else:
        local = rank
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(args.port)
    use_cuda = torch.cuda.is_available() and not args.cpu
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        DEV = torch.device("cuda", local)
        torch.cuda.set_device(DEV)
    else:  # processes sharing the CPU: one thread each, and a short budget per case
        torch.set_num_threads(1)
        CASE_BUDGET_S, MIN_REPS = 0.02, 3
    kw = {"device_id": DEV} if use_cuda else {}
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=args.timeout_s), **kw)
    try:
        torch.manual_seed(rank)
        campaign(args, world, rank, backend)
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="JSON file (written by rank 0, after every case)")
    ap.add_argument("--quick", action="store_true", help="a short GPU grid (about a minute)")
    ap.add_argument("--cpu", action="store_true", help="gloo on the CPU, tiny grid (tests)")
    ap.add_argument("--spawn", type=int, default=0, help="start this many processes here (instead of torchrun)")
    ap.add_argument("--only", default="", help="comma-separated families")
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no case after this many seconds")
    ap.add_argument("--timeout-s", type=float, default=120.0, help="process-group timeout (a stalled collective)")
    ap.add_argument("--port", type=int, default=29517, help="rendezvous port with --spawn")
    ap.add_argument("--dump", default="", help="folder for the correctness checks' tensors (tests)")
    ap.add_argument("--estimate", action="store_true", help="print the grid's estimated duration for --spawn N GPUs")
    args = ap.parse_args(argv)
    if args.estimate:
        n = args.spawn or 8
        cases = grid("quick" if args.quick else "full", n)
        by: dict[str, float] = {}
        for c in cases:
            by[c["family"]] = by.get(c["family"], 0.0) + estimate_case_s(c, n)
        for fam, s in by.items():
            print(f"{fam:20s} {s:7.1f} s")
        print(f"{len(cases)} cases on {n} GPUs: about {sum(by.values()):.0f} s plus start-up")
        return 0
    if not args.out:
        ap.error("--out is required")
    if args.spawn:
        import torch.multiprocessing as mp

        method = "fork" if (args.cpu or not torch.cuda.is_available()) else "spawn"
        mp.start_processes(worker, args=(args, args.spawn), nprocs=args.spawn, start_method=method)
    else:
        worker(int(os.environ.get("RANK", 0)), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
