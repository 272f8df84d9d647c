"""`flexgen`: FlexGen's zig-zag block schedule with its LP policy search (Sheng et al., arXiv 2303.06865).

Policy. ``policy="as-deployed"`` (default): the (gbs, n_b, placement) FlexGen's own policy script picks
(:mod:`._flexgen_cost_model`: its cost model and LP, the constants it ships, fitted on a Google Cloud T4 for
OPT, its 0.8 memory relaxation and its enumeration), then simulated with moesim's physics below; when
moesim's memory model says that policy overflows, the error says so (FlexGen's runtime would run out of
memory). ``policy="best"``: the oracle described below (what tuning could reach; it also tries FlexGen's own
pick unless a grid is given). ``gpu_batch_size`` + ``num_gpu_batches`` + ``percent`` run a given policy
exactly (FlexGen's --gpu-batch-size, --num-gpu-batches, --percent). ``cpu_attention`` is FlexGen(c), the
runtime's --cpu-cache-compute flag (off by default), never switched by the context length. Requests beyond a
block: full blocks, then a last block of the rest in ceil(rest / gbs) GPU batches, charged for what it holds.

Schedule (section 4.2, Algorithm 1 / ``generation_loop_overlap_multi_batch``): a block of
bls = gbs x n_b sequences is processed layer by layer; within a layer, the n_b GPU batches of
gbs sequences run one after the other, so each layer's weights cross PCIe once per block and
step. FlexGen splits a transformer block into an attention layer and an FFN layer (here: the
attention block, and the router + ALL experts + shared experts, since FlexGen is not MoE-aware).
Each (layer, GPU batch) step issues, on separate CUDA streams:

  load weights of the next layer   (only at GPU batch 0 of the current layer)
  load KV / activations of the next GPU batch
  compute the current GPU batch    (attention delegated to the CPU for off-GPU KV, FlexGen(c))
  store KV / activations of the previous GPU batch

and ends with ``torch.cuda.synchronize()``: every step is a barrier, so the next layer's
weight copy overlaps only the first GPU batch's compute. The engine simulates exactly this.

Placement (section 4.3, App. A.3): fractions of weights (wg, wc, wd), KV cache (cg, cc, cd)
and activations (hg, hc, hd; hd = 0, FlexGen's runtime has no disk activations) on
GPU / CPU / disk. For each (gbs, n_b) of a grid, an LP (scipy ``linprog``, HiGHS) minimises the
block time T = T_pre + (n - 1) T_gen (per token: T / bls, bls fixed per LP) with

  T_pre >= ctog, gtoc, dtoc, ctod, comp   (prefill)      T_gen >= the same five (decode)

  ctog  = [(wc+wd) W + (hc+hd) L H] / B_h2d  (+ (cc+cd) KV_avg / B_kv   decode, GPU attention)
  gtoc  = [(cc+cd) KV_written] / B_kv + (hc+hd) L H / B_d2h
  dtoc  = [wd W + cd KV_avg (decode)] / B_disk        ctod = cd KV_written / B_disk
  comp  = GPU work of the block + cg A_gpu + (cc+cd) (A_cpu if delegated else A_gpu)

subject to GPU / CPU / disk peak memory (home placements + one layer of non-resident weights
+ KV buffers of a GPU batch + the GPU batch's activations and prefill score matrix) and each
group summing to 1. The blocks tried are those of the grids no larger than the requests (a single
block of every request when there are fewer than the smallest GPU batch). When no block's LP is
feasible, the error names the memory that binds and by how much: the least extra capacity of one
resource that makes the memory rows feasible, from the same rows with a slack (``memory_shortfall``). Every term uses moesim's byte counts (``Context``) and the platform's link,
DRAM and disk bandwidths, and module times from moesim's cost model, instead of FlexGen's
fitted constants; ties between placements of equal block time go to the least total I/O.

The LP assumes perfect overlap, the real schedule does not (the barrier above), so every LP
solution of the grid is then simulated on the engine and the fastest (prefill + decode per
request, padding of the last block counted) is kept - FlexGen section 5.3: "a better policy can
be obtained by tuning manually". Candidates are simulated lazily (middle decode step first, full
Simpson integration only where the bound can still win), so the pick is the exact simulated
minimum; the engine merges a layer's middle GPU-batch steps beyond ``max_simulated_gpu_batches``.

Host: every (sub-layer, GPU batch) step's Python runs before its kernels and ends in the step's
``torch.cuda.synchronize()``, so per step the host issues the step's calls (the GPU starts after the first) and the
next step waits for both; priced at the ``transformers`` system's measured rates (:mod:`.shared.hf_host`). What that
Python is depends on ``model_code``: ``flexgen`` (default), FlexGen's own ``TorchDevice`` code counted in
FlexLLMGen (``systems_db/flexgen.yaml``: mha 33 / mha_gen 34 calls, mlp 5 - FlexGen has no MoE layer, so its FFN's
count stands for moesim's router-and-experts FFN, a lower bound; its loop's load/store functions are not counted);
``hf``, the Hugging Face decoder layer of transformers 4.42 as MoE-Gen's FlexGen* re-implementation runs it (per step
the attention block, or the MoE block with Mixtral's loop over every expert reading the GPU each iteration, its
Python and kernels taking turns; plus the forward's and the LM head's Python per GPU batch). GPU tasks carry the
GPU's time alone. The LP and FlexGen's own cost model (policy search) keep pricing compute with the generic eager
model; only the engine's simulation of the chosen policies charges the host.

FlexGen specifics kept: its CPU KV cache is not pinned ("disable pin_memory due to high memory
overhead"), so KV copies run at the link's pageable bandwidth; its CPU attention (PyTorch, fp16
upcast to fp32 after a permuted copy) moves ``cpu_attention_traffic`` bytes of DRAM per cached
byte; attention is eager (the score matrix is materialised). Left out: compression, the
diagonal schedule, and the prefill/decode difference of FlexGen's fitted bandwidths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..engine import Engine
from ..errors import InfeasibleError
from ..metrics import HostShare
from ..modules import Context
from ..costs import platform_copy_time_s as copy_time_s
from ..specs import LayerKind
from ..units import fmt_bytes
from .base import Plan, ServingSystem, StepSim, balanced_batches, simpson_decode_time, simulate_pass
from .shared import lp
from .shared.attention import eager_attention_cost, eager_attention_peak_bytes
from .shared.hf_host import Python, PythonThread, bare, context_python, head_python, context_rates
from .shared.memory import (activation_bytes, layer_weight_bytes, max_layer_weight_bytes, prefill_logits_bytes,
                            streamed_weight_bytes)
from .shared.search import best_by_simulation, decode_mid, simpson_lower_bound
from . import _flexgen_cost_model as fcm

VARS = ("wg", "wc", "wd", "cg", "cc", "cd", "hg", "hc", "hd")
GROUPS = ({"wg": 1, "wc": 1, "wd": 1}, {"cg": 1, "cc": 1, "cd": 1}, {"hg": 1, "hc": 1, "hd": 1})  # each sums to 1
BOUNDS = {"hd": (0.0, 0.0)}  # FlexGen's runtime has no disk activations; every other fraction in [0, 1]
TIE_BREAK = 1e-4  # weight of total I/O time in the LP objective, next to the block time


class FlexGenParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    policy: Literal["as-deployed", "best"] = Field(
        default="as-deployed",
        description="as-deployed: the policy FlexGen's own search picks (its cost model, LP, fitted T4 constants "
                    "and 0.8 memory relaxation); best: every LP solution of the grids simulated on moesim's engine, "
                    "the fastest kept (setting a grid selects it)")
    gpu_batch_size: int | None = Field(default=None, ge=1, description="gbs, FlexGen's --gpu-batch-size; None = searched")
    num_gpu_batches: int | None = Field(default=None, ge=1,
                                        description="GPU batches per block, FlexGen's --num-gpu-batches; None = searched")
    percent: tuple[float, ...] | None = Field(
        default=None,
        description="FlexGen's --percent: weights on GPU, on CPU, KV on GPU, on CPU, activations on GPU, on CPU "
                    "(%, the rest of each on disk); None = solved by the LP")
    gpu_batch_grid: tuple[int, ...] = Field(default=(2, 8, 32, 128, 512),
                                            description="GPU batch sizes gbs enumerated by policy=best")
    num_gpu_batches_grid: tuple[int, ...] = Field(default=(1, 16),
                                                  description="GPU batches per block n_b tried by policy=best")
    cpu_attention: bool = Field(
        default=False,
        description="FlexGen(c), FlexGen's --cpu-cache-compute: decode attention over off-GPU KV on the CPU "
                    "(off by default in FlexGen's runtime; its cost model prices it on the CPU either way)")
    kv_pinned: bool = Field(default=False, description="CPU KV cache in pinned memory (FlexGen: not pinned)")
    cpu_attention_traffic: float = Field(
        default=7.0, gt=0,
        description="DRAM bytes FlexGen's CPU attention moves per cached byte: permuted copy (read+write 2+2 B), "
                    "fp32 upcast (2+4 B), fp32 bmm read (4 B) per 2-byte element = 14/2")
    attention_score_dtype: Literal["fp32", "bf16"] = Field(
        default="bf16", description="FlexGen's eager attention softmax dtype (fp16 kernels in FlexGen)")
    logits_all_positions: bool = Field(
        default=False, description="prefill computes fp32 logits at every prompt position, as the Hugging Face "
                                   "generation code of transformers < 4.45 does (FlexGen's own code: the last only)")
    model_code: Literal["flexgen", "hf"] = Field(
        default="flexgen",
        description="the code that runs each (layer, GPU batch) step: flexgen, FlexGen's own (its generic eager "
                    "cost per operation); hf, Hugging Face's modelling code (transformers 4.42) as MoE-Gen's FlexGen* "
                    "re-implementation runs it: the decoder layer's Python per step, priced at the transformers "
                    "system's measured host rates")
    max_simulated_gpu_batches: int = Field(default=3, ge=3,
                                           description="engine merges a layer's middle GPU-batch steps beyond this")
    policies_simulated: int | None = Field(
        default=None, ge=1,
        description="best LP policies (by the LP's block time) timed on the engine; None = all of them, which makes "
                    "the choice the simulated optimum, never worse with more bandwidth or FLOP/s")


    @field_validator("percent", mode="before")
    @classmethod
    def _percent_text(cls, value):
        """--percent 20,80,0,100,0,100 (FlexGen's own spelling with commas)."""
        if isinstance(value, str):
            try:
                return tuple(float(x) for x in value.replace(",", " ").split())
            except ValueError:
                raise ValueError(f"percent takes 6 numbers, got {value!r}") from None
        return value

    @model_validator(mode="after")
    def _percent_six(self) -> "FlexGenParams":
        pc = self.percent
        if pc is not None and (len(pc) != 6 or any(not 0 <= x <= 100 for x in pc)
                               or any(pc[i] + pc[i + 1] > 100 + 1e-9 for i in (0, 2, 4))):
            raise ValueError("percent takes 6 values in [0, 100]: weights GPU, CPU, KV GPU, CPU, activations "
                             "GPU, CPU, each pair summing to at most 100")
        return self

    def fractions(self) -> dict[str, float] | None:
        """--percent as the LP's fractions (disk the rest of each group)."""
        if self.percent is None:
            return None
        wg, wc, cg, cc, hg, hc = (x / 100 for x in self.percent)
        return {"wg": wg, "wc": wc, "wd": max(0.0, 1 - wg - wc), "cg": cg, "cc": cc, "cd": max(0.0, 1 - cg - cc),
                "hg": hg, "hc": hc, "hd": max(0.0, 1 - hg - hc)}


@dataclass(frozen=True)
class FlexGenPolicy:
    """One solved LP: batch sizes, placement fractions, and the LP's block time."""

    gpu_batch: int
    num_gpu_batches: int
    cpu_attention: bool
    fractions: dict[str, float]
    lp_block_time_s: float  # T_pre + (n - 1) T_gen predicted by the LP

    @property
    def block(self) -> int:
        return self.gpu_batch * self.num_gpu_batches

    def __getattr__(self, item: str) -> float:
        if item in VARS:
            return self.fractions[item]
        raise AttributeError(item)


class FlexGen(ServingSystem):
    name = "flexgen"
    summary = ("zig-zag block schedule (bls = gbs x GPU batches per layer): weights (all experts), KV and activations "
               "split over GPU / CPU / disk by FlexGen's LP, optional CPU attention")
    Params = FlexGenParams

    # ---- sizes and rates -------------------------------------------------------------------------
    @staticmethod
    def _spb(ctx: Context, kind: str) -> float:
        """Seconds per byte of a host<->device copy kind (latency excluded)."""
        return (copy_time_s(2e9, kind, ctx.platform) - copy_time_s(1e9, kind, ctx.platform)) / 1e9

    @staticmethod
    def _qo_bytes_per_token(ctx: Context) -> float:
        """Query to the CPU and attention output back, per token and layer (activation dtype)."""
        a = ctx.model.attention
        return a.num_heads * (a.qk_head_dim + a.out_head_dim) * ctx.abytes

    def _kv_kinds(self) -> tuple[str, str]:
        return ("h2d_pinned", "d2h_pinned") if self.params.kv_pinned else ("h2d_pageable", "d2h_pageable")

    def _cpu_attention_s(self, ctx: Context, seqs: float, kv_len: float, windowed: bool) -> float:
        if seqs <= 0:
            return 0.0
        cost = ctx.cpu_attention(seqs, kv_len, windowed)
        return ctx.cpu_s(replace(cost, bytes=cost.bytes * self.params.cpu_attention_traffic))

    def _ffn_s(self, ctx: Context, kind: LayerKind, tokens: float, gpu=None) -> float:
        m = ctx.model
        gpu = gpu or ctx.gpu_s
        if not kind.moe:
            return gpu(ctx.dense_ffn(tokens))
        t = gpu(ctx.router(tokens)) + gpu(ctx.experts(ctx.active_experts(tokens), tokens * m.moe.top_k))
        shared = ctx.shared_experts(tokens)
        return t + (gpu(shared) if shared else 0.0)

    @staticmethod
    def _gpu(ctx: Context):
        """GPU seconds of an operation in the engine: the GPU's time alone (:func:`~.shared.hf_host.bare`); the host's
        Python that issues it is charged on its own, per step (module docstring, "Host")."""
        return lambda cost: ctx.gpu_s(bare(cost))

    def _gpu_work_bytes(self, ctx: Context, gbs: int) -> float:
        """Transient GPU memory of one GPU batch: the worse of prefill (activations, scores, new KV) and decode."""
        s = ctx.workload.prompt_tokens
        prefill = (activation_bytes(ctx, gbs * s)
                   + eager_attention_peak_bytes(ctx, gbs, s, s, self.params.attention_score_dtype)
                   + gbs * s * ctx.kv_bytes_per_token_layer())
        logits = gbs * prefill_logits_bytes(ctx, s) if self.params.logits_all_positions else 0.0
        return max(prefill, logits, activation_bytes(ctx, gbs))

    # ---- the LP ------------------------------------------------------------------------------------
    def _gpu_fixed_bytes(self, ctx: Context, gbs: int) -> float:
        """GPU memory every policy of GPU batch ``gbs`` holds: resident weights, one layer's weight buffers and
        the batch's working set (the constant of the LP's GPU row)."""
        return ctx.resident_weight_bytes + max_layer_weight_bytes(ctx) + self._gpu_work_bytes(ctx, gbs)

    @staticmethod
    def _gpu_capacity_bytes(ctx: Context) -> float:
        return ctx.platform.usable_gpu_memory_bytes_per_gpu * (1 - 1e-6)

    def _compute_constants(self, ctx: Context, gbs: int) -> dict[str, float]:
        """Per-GPU-batch compute of one whole pass (summed over layers): prefill, decode dense, attention."""
        w = ctx.workload
        s, c = w.prompt_tokens, w.prompt_tokens + w.gen_tokens / 2.0
        sd = self.params.attention_score_dtype
        out = {"pre": 0.0, "dec": 0.0, "att_gpu": 0.0, "att_cpu": 0.0}
        proj_p = ctx.gpu_s(ctx.attention_proj(gbs * s))
        proj_d = ctx.gpu_s(ctx.attention_proj(gbs))
        for kind, count in ctx.model.layer_kinds().items():
            out["pre"] += count * (proj_p + ctx.gpu_s(eager_attention_cost(ctx, gbs, s, s, kind.windowed, sd))
                                   + self._ffn_s(ctx, kind, gbs * s))
            out["dec"] += count * (proj_d + self._ffn_s(ctx, kind, gbs))
            out["att_gpu"] += count * ctx.gpu_s(eager_attention_cost(ctx, gbs, 1, c, kind.windowed, sd))
            out["att_cpu"] += count * self._cpu_attention_s(ctx, gbs, c, kind.windowed)
        return out

    def _memory_rows(self, ctx: Context, gbs: int, nb: int, cpu_attention: bool
                     ) -> list[tuple[str, dict[str, float], float]]:
        """The LP's memory rows, (resource, bytes per unit of each fraction, capacity in bytes)::

            GPU   (W - W_L) wg + KV cg + KV_buf (cc + cd) + H hg <= M_gpu - fixed(gbs)
            host  W wc + 2 W_L wd + KV cc + H hc               <= M_host
            disk  W wd + KV cd                                 <= M_disk

        W: streamed weights, W_L: the largest layer (weights on disk pass through two layers of host buffers),
        KV: the block's cache at the full context, KV_buf: a GPU batch's KV buffers (none with CPU attention),
        H: the block's prompt hidden states, fixed(gbs): :meth:`_gpu_fixed_bytes`."""
        p, w = ctx.platform, ctx.workload
        ctx_len = w.total_context_tokens
        W, WL = streamed_weight_bytes(ctx), max_layer_weight_bytes(ctx)
        bls = gbs * nb
        kv_tot = bls * ctx_len * ctx.kv_bytes_per_token(ctx_len)
        h_pre = ctx.hidden_state_bytes(bls * w.prompt_tokens)
        kv_buf = (0.0 if cpu_attention else 1.0) * 2 * gbs * ctx_len * ctx.kv_bytes_per_token_layer()
        return [
            ("GPU memory", {"wg": W - WL, "cg": kv_tot, "cc": kv_buf, "cd": kv_buf, "hg": h_pre},
             self._gpu_capacity_bytes(ctx) - self._gpu_fixed_bytes(ctx, gbs)),
            ("host memory", {"wc": W, "wd": 2 * WL, "cc": kv_tot, "hc": h_pre}, p.usable_host_memory_bytes),
            ("disk", {"wd": W, "cd": kv_tot}, p.disk.capacity_bytes),
        ]

    def memory_shortfall(self, ctx: Context, gbs: int, nb: int, cpu_attention: bool
                         ) -> tuple[dict[str, float], bool]:
        """How much memory the LP of (gbs, n_b) lacks: (bytes per resource, whether each resource alone would
        do); ({}, False) when some placement fits.

        The memory rows (:meth:`_memory_rows`) with a slack s_r >= 0 added to the capacity of one resource r,
        min s_r: the least extra capacity of r alone that lets some placement fit. The resources whose slack
        alone suffices are returned (with True); when none does, the least total slack over all three (each
        resource's share of it, with False). The block-time rows never bind (T_pre and T_gen are free), so
        memory is the only limit of the LP."""
        rows = self._memory_rows(ctx, gbs, nb, cpu_attention)
        iv = {v: i for i, v in enumerate(VARS)}
        nvar = len(VARS) + len(rows)

        scale = []  # rows scaled to numbers of order one, as in solve_policy; a slack is in its row's unit
        a_ub = np.zeros((len(rows), nvar))
        for r, (_, coef, capacity) in enumerate(rows):
            for k, v in coef.items():
                a_ub[r, iv[k]] += v
            scale.append(max(np.abs(a_ub[r]).max(), abs(capacity), 1.0))
            a_ub[r] /= scale[-1]
        b_ub = np.array([capacity / scale[r] for r, (_, _, capacity) in enumerate(rows)])
        a_eq = np.zeros((len(GROUPS), nvar))
        for g, coef in enumerate(GROUPS):
            for k, v in coef.items():
                a_eq[g, iv[k]] = v

        def solve(relaxed: list[int]) -> np.ndarray | None:
            """The least slacks (bytes) of the ``relaxed`` rows that make the memory rows feasible; None if none."""
            a = a_ub.copy()
            cost = np.zeros(nvar)
            for r in relaxed:
                a[r, len(VARS) + r] = -1.0
                cost[len(VARS) + r] = 1.0
            bounds = ([BOUNDS.get(v, (0.0, 1.0)) for v in VARS]
                      + [(0.0, None if r in relaxed else 0.0) for r in range(len(rows))])
            sol = lp.solve(cost, a, b_ub, a_eq, np.ones(len(GROUPS)), bounds)
            return None if sol is None else np.array([sol[len(VARS) + r] * scale[r] for r in range(len(rows))])

        if solve([]) is not None:
            return {}, False
        alone = {}
        for r, (name, _, _) in enumerate(rows):
            slack = solve([r])
            if slack is not None:
                alone[name] = float(slack[r])
        if alone:
            return alone, True
        slack = solve(list(range(len(rows))))
        return {name: float(slack[r]) for r, (name, _, _) in enumerate(rows) if slack is not None and slack[r] > 0}, False

    def solve_policy(self, ctx: Context, gbs: int, num_gpu_batches: int, cpu_attention: bool,
                     consts: dict[str, float] | None = None) -> FlexGenPolicy | None:
        """FlexGen's LP for one (gbs, n_b): placement fractions minimising the block time; None if infeasible."""
        p, m, w = ctx.platform, ctx.model, ctx.workload
        nb = num_gpu_batches
        bls = gbs * nb
        s, n = w.prompt_tokens, w.gen_tokens
        ctx_len = s + n
        c_avg = s + n / 2.0
        L = m.num_layers
        consts = consts or self._compute_constants(ctx, gbs)
        W = streamed_weight_bytes(ctx)
        kv_pre = bls * s * ctx.kv_bytes_per_token(s)
        kv_avg = bls * c_avg * ctx.kv_bytes_per_token(int(c_avg))
        kv_new = bls * ctx.kv_bytes_per_token(ctx_len)
        h_pre = ctx.hidden_state_bytes(bls * s)
        h_dec = ctx.hidden_state_bytes(bls)
        qo_bytes = bls * L * self._qo_bytes_per_token(ctx)  # q to the CPU, output back
        w_h2d = self._spb(ctx, "h2d_pinned")
        w_d2h = self._spb(ctx, "d2h_pinned")
        kv_h2d, kv_d2h = (self._spb(ctx, k) for k in self._kv_kinds())
        disk = 1.0 / p.disk.read_bytes_per_s
        deleg = 1.0 if cpu_attention else 0.0
        head_p = ctx.gpu_s(ctx.head(bls * s, bls * s if self.params.logits_all_positions else bls))
        head_d = ctx.gpu_s(ctx.head(bls, bls))

        iv = {v: i for i, v in enumerate(VARS)}
        TP, TG = len(VARS), len(VARS) + 1
        nvar = len(VARS) + 2

        def row(**coef: float) -> np.ndarray:
            r = np.zeros(nvar)
            for k, v in coef.items():
                r[TP if k == "Tp" else TG if k == "Tg" else iv[k]] += v
            return r

        A, b = [], []

        def le(r: np.ndarray, rhs: float) -> None:
            A.append(r)
            b.append(rhs)

        # prefill
        le(row(wc=W * w_h2d, wd=W * w_h2d, hc=L * h_pre * w_h2d, hd=L * h_pre * w_h2d, Tp=-1), 0.0)
        le(row(cc=kv_pre * kv_d2h, cd=kv_pre * kv_d2h, hc=L * h_pre * w_d2h, hd=L * h_pre * w_d2h, Tp=-1), 0.0)
        le(row(wd=W * disk, Tp=-1), 0.0)
        le(row(cd=kv_pre * disk, Tp=-1), 0.0)
        le(row(Tp=-1), -(nb * consts["pre"] + head_p))
        # decode (one step at the mean context)
        off_kv = (1 - deleg) * kv_avg * kv_h2d + deleg * qo_bytes / 2 * w_h2d
        le(row(wc=W * w_h2d, wd=W * w_h2d, hc=L * h_dec * w_h2d, hd=L * h_dec * w_h2d, cc=off_kv, cd=off_kv, Tg=-1), 0.0)
        new_kv = kv_new * kv_d2h + deleg * qo_bytes / 2 * w_d2h
        le(row(cc=new_kv, cd=new_kv, hc=L * h_dec * w_d2h, hd=L * h_dec * w_d2h, Tg=-1), 0.0)
        le(row(wd=W * disk, cd=kv_avg * disk, Tg=-1), 0.0)
        le(row(cd=kv_new * disk, Tg=-1), 0.0)
        att_off = nb * (deleg * consts["att_cpu"] + (1 - deleg) * consts["att_gpu"])
        le(row(cg=nb * consts["att_gpu"], cc=att_off, cd=att_off, Tg=-1), -(nb * consts["dec"] + head_d))
        # memory: GPU, CPU, disk
        for _, coef, capacity in self._memory_rows(ctx, gbs, nb, cpu_attention):
            le(row(**coef), capacity)
        A_eq = [row(**coef) for coef in GROUPS]
        bounds = [BOUNDS.get(v, (0.0, 1.0)) for v in VARS] + [(0.0, None), (0.0, None)]
        cost = np.zeros(nvar)
        cost[TP], cost[TG] = 1.0, max(n - 1, 0)
        # tie-break among placements of equal block time: least total I/O (a vertex that puts weights on
        # disk while the block is compute-bound costs nothing in the LP, but real copies contend)
        io = {"wc": W * w_h2d, "wd": W * (w_h2d + disk), "cc": kv_avg * kv_h2d, "cd": kv_avg * (kv_h2d + disk),
              "hc": L * h_dec * (w_h2d + w_d2h), "hd": L * h_dec * (w_h2d + w_d2h)}
        for k, v in io.items():
            cost[iv[k]] = TIE_BREAK * max(n, 1) * v
        # scale rows so the solver sees numbers of order one
        A_ub, b_ub = np.array(A), np.array(b)
        scale = np.maximum(np.abs(A_ub).max(axis=1), np.abs(b_ub))
        scale[scale == 0] = 1.0
        sol = lp.solve(cost, A_ub / scale[:, None], b_ub / scale, np.array(A_eq), np.ones(3), bounds)
        if sol is None:
            return None
        x = np.clip(sol[: len(VARS)], 0.0, 1.0)
        frac = {}
        for group in (("wg", "wc", "wd"), ("cg", "cc", "cd"), ("hg", "hc", "hd")):
            vals = np.array([x[iv[v]] for v in group])
            vals = vals / vals.sum()
            frac.update(dict(zip(group, map(float, vals))))
        frac = {k: v + 0.0 for k, v in frac.items()}  # no negative zeros
        return FlexGenPolicy(gbs, nb, cpu_attention, frac, float(sol[TP] + max(n - 1, 0) * sol[TG]))

    # ---- engine simulation of a policy ---------------------------------------------------------------
    def _pass(self, ctx: Context, pol: FlexGenPolicy, q_len: int, kv_len: int) -> StepSim:
        """One prefill pass (q_len = prompt) or decode step of the block, step by step with barriers.

        Steps 1..n_b-2 of a layer are identical; beyond ``max_simulated_gpu_batches`` they are merged
        into groups whose tasks carry the work of several GPU batches (lanes of a step are independent,
        so a merged step lasts as long as the steps it replaces, up to the small copies of CPU attention).
        """
        p, m = ctx.platform, ctx.model
        gbs, nb = pol.gpu_batch, pol.num_gpu_batches
        decode = q_len == 1
        deleg = pol.cpu_attention and decode
        t = gbs * q_len
        f_w, f_off = pol.wc + pol.wd, pol.cc + pol.cd
        kv_layer = ctx.kv_bytes_per_token_layer()
        a = m.attention
        sd = self.params.attention_score_dtype
        kv_h2d_kind, kv_d2h_kind = self._kv_kinds()

        copies: dict[tuple[float, str], float] = {}  # a pass repeats the same few copies layer after layer

        def copy(nbytes: float, kind: str) -> float:
            key = (nbytes, kind)
            if key not in copies:
                copies[key] = copy_time_s(nbytes, kind, p) if nbytes > 0 else 0.0
            return copies[key]

        gpu = self._gpu(ctx)
        rates = context_rates(ctx)
        hf = self.params.model_code == "hf"
        if hf:  # the Hugging Face decoder layer's Python per (sub-layer, GPU batch) step (shared.hf_host)
            py = context_python(ctx, "4.42")
            active = ctx.active_experts(t) if m.moe else 0.0
            attn_py = rates.seconds(py.attention_block())
            ffn_py = {k: rates.seconds(py.ffn_block(k.moe, active, m.moe.num_experts if m.moe else 0))
                      for k in m.layer_kinds()}
            loop_reads = py.loop_reads
        else:  # FlexGen's own TorchDevice code per step (systems_db/flexgen.yaml)
            k_ = self.constants.value
            attn_py = rates.seconds(Python(calls=k_("own_attention_calls_decode" if decode else "own_attention_calls_prefill")))
            ffn_py = {k: rates.seconds(Python(calls=k_("own_ffn_calls"))) for k in m.layer_kinds()}
            loop_reads = False
        kv_read = {wd: f_off * gbs * (min(kv_len, a.window_tokens) if wd and a.window_tokens else kv_len) * kv_layer
                   for wd in (False, True)} if decode and not deleg else {False: 0.0, True: 0.0}
        kv_write = f_off * gbs * q_len * kv_layer if not deleg else 0.0
        hidden = pol.hc * ctx.hidden_state_bytes(t)
        qo = f_off * gbs * self._qo_bytes_per_token(ctx) / 2 if deleg else 0.0
        pre, post = (gpu(c) for c in ctx.attention_proj_split(t))
        if deleg:
            gpu_att = {wd: pol.cg * gpu(eager_attention_cost(ctx, gbs, 1, kv_len, wd, sd)) for wd in (False, True)}
            cpu_att = {wd: self._cpu_attention_s(ctx, f_off * gbs, kv_len, wd) for wd in (False, True)}
        else:
            gpu_att = {wd: gpu(eager_attention_cost(ctx, gbs, q_len, kv_len, wd, sd)) for wd in (False, True)}
            cpu_att = {False: 0.0, True: 0.0}
        ffn = {k: self._ffn_s(ctx, k, t, gpu) for k in m.layer_kinds()}
        w_attn = ctx.attention_weight_bytes
        w_ffn = {k: layer_weight_bytes(ctx, k) - w_attn for k in m.layer_kinds()}
        # step groups of a sub-layer: (label, batches computed in the step)
        cap = self.params.max_simulated_gpu_batches
        middle = nb - 2 if nb > 2 else 0
        parts = min(middle, max(cap - 2, 1))
        groups = ([1] if nb >= 1 else []) + [middle // parts + (1 if j < middle % parts else 0) for j in range(parts)] \
            + ([1] if nb >= 2 else [])
        state = {"barrier": [], "stores": []}

        def load(eng: Engine, label: str, nbytes: float, disk_fraction: float, kind: str, deps: list) -> list:
            """disk -> host (the disk share) then host -> GPU."""
            if nbytes <= 0:
                return []
            ids, disk = [], None
            if disk_fraction > 0:
                disk = eng.add(f"{label} from disk", "disk", ctx.disk_s(disk_fraction * nbytes), deps, category="transfer")
                ids.append(disk)
            ids.append(eng.add(f"{label} H2D", "h2d", copy(nbytes, kind), deps + [disk], category="transfer",
                               nbytes=nbytes))
            return ids

        def store(eng: Engine, label: str, nbytes: float, disk_fraction: float, kind: str, deps: list) -> list:
            if nbytes <= 0:
                return []
            d = eng.add(f"{label} D2H", "d2h", copy(nbytes, kind), deps, category="transfer", nbytes=nbytes)
            if disk_fraction <= 0:
                return [d]
            return [d, eng.add(f"{label} to disk", "disk", ctx.disk_s(disk_fraction * nbytes), [d], category="transfer")]

        def step(eng: Engine, loads: list, compute, stores: list) -> None:
            """Loads, compute, and the previous step's stores; all wait for the previous step (a barrier)."""
            deps = list(state["barrier"])
            ids = []
            for label, nbytes, disk_fraction, kind in loads:
                ids += load(eng, label, nbytes, disk_fraction, kind, deps)
            ids += compute(eng, deps)
            for label, nbytes, disk_fraction, kind in state["stores"]:
                ids += store(eng, label, nbytes, disk_fraction, kind, deps)
            state["stores"] = stores
            state["barrier"] = ids

        def kv_disk(nbytes: float) -> float:
            return pol.cd / f_off if f_off > 0 else 0.0

        def layer(eng: Engine, i: int, kind: LayerKind) -> int:
            wd = kind.windowed
            if i == 0:  # cold start: this layer's attention weights, first batch's KV and activations
                step(eng, [(f"L{i} attention weights", f_w * w_attn, pol.wd / f_w if f_w else 0, "h2d_pinned"),
                           (f"L{i} b0 KV", kv_read[wd], kv_disk(1), kv_h2d_kind),
                           (f"L{i} b0 hidden", hidden, 0.0, "h2d_pinned")], lambda e, d: [], [])
            last = None
            done = 0
            for sub in ("attn", "ffn"):
                done = 0
                for g, mult in enumerate(groups):
                    first, final = g == 0, g == len(groups) - 1
                    nxt = mult if not final else 1  # batches whose inputs this step loads
                    loads = []
                    if first and sub == "attn":
                        loads.append((f"L{i} FFN weights", f_w * w_ffn[kind], pol.wd / f_w if f_w else 0, "h2d_pinned"))
                    if first and sub == "ffn":
                        loads.append((f"L{i + 1} attention weights", f_w * w_attn, pol.wd / f_w if f_w else 0,
                                      "h2d_pinned"))
                    if sub == "attn" and not final:
                        loads.append((f"L{i} b{done + 1} KV", nxt * kv_read[wd], kv_disk(1), kv_h2d_kind))
                    if sub == "ffn" and final:
                        loads.append((f"L{i + 1} b0 KV", kv_read[wd], kv_disk(1), kv_h2d_kind))
                    loads.append((f"L{i} {sub} b{done + 1} hidden", nxt * hidden, 0.0, "h2d_pinned"))
                    label = f"L{i} {sub} b{done}" + (f"-{done + mult - 1}" if mult > 1 else "")

                    def compute(e: Engine, d: list, mult=mult, label=label, sub=sub) -> list:
                        nonlocal last
                        host = PythonThread(e, rates)  # the step's Python starts after the last step's sync
                        if sub == "ffn":
                            cat = "experts" if kind.moe else "dense_ffn"
                            if loop_reads and kind.moe:  # the experts loop reads the GPU every iteration
                                last = host.serial(f"{label} FFN", mult * ffn_py[kind], mult * ffn[kind], d,
                                                   category=cat, host_deps=d)
                            else:
                                last = host.module(f"{label} FFN", mult * ffn_py[kind], "gpu", mult * ffn[kind], d,
                                                   category=cat, host_deps=d)
                            return [last, host.last_host]
                        x = host.module(f"{label} attention (GPU)", mult * attn_py, "gpu", mult * (pre + gpu_att[wd]),
                                        d, category="attention", host_deps=d)
                        if deleg:
                            x = e.add(f"{label} q/k/v D2H", "d2h", copy(mult * qo, "d2h_pinned"), [x],
                                      category="transfer", nbytes=mult * qo)
                            x = e.add(f"{label} CPU attention", "cpu", mult * cpu_att[wd], [x], category="cpu")
                            x = e.add(f"{label} attention out H2D", "h2d", copy(mult * qo, "h2d_pinned"), [x],
                                      category="transfer", nbytes=mult * qo)
                        out = e.add(f"{label} out projection", "gpu", mult * post, [x], category="attention")
                        return [out, host.last_host]

                    stores = [(f"{label} hidden", mult * hidden, 0.0, "d2h_pinned")]
                    if sub == "attn":
                        stores.insert(0, (f"{label} KV", mult * kv_write, kv_disk(1), kv_d2h_kind))
                    step(eng, loads, compute, stores)
                    done += mult
            return last

        bls = pol.block
        head = gpu(ctx.head(bls * q_len, bls * q_len if q_len > 1 and self.params.logits_all_positions else bls))
        holds = self._gpu_holds(ctx, pol)

        def prologue(eng: Engine) -> None:  # the model forward's own Python, once per GPU batch
            if hf:
                PythonThread(eng, rates).python("forward", nb * rates.forward_host_s)

        def epilogue(eng: Engine) -> None:  # the final norm and LM head's Python, per GPU batch
            if hf:
                PythonThread(eng, rates).python("final norm + LM head", nb * rates.seconds(head_python()))

        return simulate_pass(ctx, Engine(memory_capacity_bytes={"gpu": p.usable_gpu_memory_bytes_per_gpu}),
                             layer, prologue, epilogue, gpu_holds=holds, head_s=head)

    def _gpu_holds(self, ctx: Context, pol: FlexGenPolicy) -> dict[str, float]:
        w = ctx.workload
        ctx_len = w.total_context_tokens
        W, WL = streamed_weight_bytes(ctx), max_layer_weight_bytes(ctx)
        bls = pol.block
        deleg = 1.0 if pol.cpu_attention else 0.0
        return {
            "resident weights (embeddings, LM head, routers)": ctx.resident_weight_bytes,
            "weights kept on the GPU (wg)": pol.wg * (W - WL),
            "weight buffers (one layer, current + next sub-layer)": WL,
            "KV cache on the GPU (cg)": pol.cg * bls * ctx_len * ctx.kv_bytes_per_token(ctx_len),
            "KV buffers of a GPU batch": (1 - deleg) * (1 - pol.cg) * 2 * pol.gpu_batch * ctx_len
            * ctx.kv_bytes_per_token_layer(),
            "activations on the GPU (hg)": pol.hg * ctx.hidden_state_bytes(bls * w.prompt_tokens),
            "GPU batch working set (activations, scores)": self._gpu_work_bytes(ctx, pol.gpu_batch),
        }

    # ---- search ----------------------------------------------------------------------------------------
    def _delegations(self, ctx: Context) -> list[bool]:
        """Whether attention over off-GPU KV runs on the CPU: the ``cpu_attention`` parameter (FlexGen(c)), a
        flag of FlexGen's runtime, never switched by the workload."""
        return [self.params.cpu_attention]

    def _block_splits(self, ctx: Context) -> list[tuple[int, int]]:
        """(gbs, n_b) pairs policy=best tries: every pair of the grids (or the given gpu_batch_size /
        num_gpu_batches) whose block bls = gbs n_b is at most the requests (a larger block only pads), or, with
        fewer requests than the smallest GPU batch of the grid, one block of them all; with a fixed batch N,
        ceil(N / gbs) GPU batches sharing N evenly for each gbs (the GPU batch is a cap, not changed to fit)."""
        w, prm = ctx.workload, self.params
        gbs_grid = sorted({prm.gpu_batch_size} if prm.gpu_batch_size else set(prm.gpu_batch_grid))
        nb_grid = sorted({prm.num_gpu_batches} if prm.num_gpu_batches else set(prm.num_gpu_batches_grid))
        wanted = w.batch_size
        if wanted is not None:
            pairs = {balanced_batches(wanted, min(g, wanted)) for g in gbs_grid}
            return sorted(p for p in pairs if not prm.num_gpu_batches or p[1] == prm.num_gpu_batches) \
                or [balanced_batches(wanted, min(gbs_grid[0], wanted))]
        pairs = [(gbs, nb) for gbs in gbs_grid for nb in nb_grid if gbs * nb <= w.num_requests]
        if prm.gpu_batch_size and prm.num_gpu_batches:
            pairs = [(prm.gpu_batch_size, prm.num_gpu_batches)]
        return pairs or [(w.num_requests, 1)]

    # ---- FlexGen's own search (policy=as-deployed) -----------------------------------------------------
    def _cost_model_terms(self, ctx: Context) -> fcm.FlexGenTerms:
        """What FlexGen's cost model sees: moesim's sizes of the model (a layer with every expert), FlexGen's
        fitted constants (``systems_db/flexgen.yaml``, GCP T4), the platform's GPU, host and disk capacities
        (its --gpu-mem, --cpu-mem, --nvme-mem)."""
        m, p, w, k = ctx.model, ctx.platform, ctx.workload, self.constants
        gib = 2 ** 30
        a = m.attention
        if m.moe:
            ffn_width = m.moe.top_k * m.moe.expert_intermediate_size
            ffn_flop = 2 * (m.moe.top_k * m.expert_params + m.shared_expert_params)
        else:
            ffn_width, ffn_flop = m.dense_ffn.intermediate_size, 2 * m.dense_ffn_params
        const = {"ctog_bdw": k.value("cost_model_ctog_gib_per_s") * gib,
                 "gtoc_bdw_cache": k.value("cost_model_gtoc_cache_gib_per_s") * gib,
                 "gtoc_bdw_hidden": k.value("cost_model_gtoc_hidden_gib_per_s") * gib,
                 "dtoc_bdw": k.value("cost_model_dtoc_gib_per_s") * gib,
                 "ctod_bdw_cache_p": k.value("cost_model_ctod_cache_prefill_gib_per_s") * gib,
                 "ctod_bdw_hidden_p": k.value("cost_model_ctod_hidden_prefill_gib_per_s") * gib,
                 "ctod_bdw_g": k.value("cost_model_ctod_decode_gib_per_s") * gib,
                 "mm_flops_p": k.value("cost_model_mm_prefill_tflop_per_s") * 1e12,
                 "mm_flops_g": k.value("cost_model_mm_decode_tflop_per_s") * 1e12,
                 "bmm_flops_p": k.value("cost_model_bmm_prefill_tflop_per_s") * 1e12,
                 "bmm_flops_g": k.value("cost_model_bmm_decode_tflop_per_s") * 1e12,
                 "cpu_flops": k.value("cost_model_cpu_tflop_per_s") * 1e12,
                 "c1": k.value("cost_model_c1"), "c2": k.value("cost_model_c2"), "c3": k.value("cost_model_c3"),
                 "alpha": k.value("cost_model_memory_fraction")}
        return fcm.FlexGenTerms(
            layers=m.num_layers, prompt_tokens=w.prompt_tokens, gen_tokens=w.gen_tokens,
            layer_weight_bytes=streamed_weight_bytes(ctx) / m.num_layers,
            kv_bytes_per_token_layer=ctx.kv_bytes_per_token_layer(), hidden_bytes_per_token=ctx.hidden_state_bytes(1),
            act_bytes=ctx.abytes, hidden=m.hidden_size, ffn_width=ffn_width, num_heads=a.num_heads,
            linear_flop_per_token=2 * m.attention_params + ffn_flop,
            attn_flop_per_token_ctx=2 * a.num_heads * (a.qk_head_dim + a.out_head_dim),
            gpu_memory_bytes=p.gpu.memory_bytes, cpu_memory_bytes=p.host_memory_bytes, disk_bytes=p.disk.capacity_bytes,
            const=const)

    def deployed_policy(self, ctx: Context) -> fcm.FlexGenChoice | None:
        """FlexGen's cost-model search for this workload (see :mod:`._flexgen_cost_model`)."""
        prm, w = self.params, ctx.workload
        fixed = prm.fractions()
        if fixed is not None:
            fixed = {k.replace("wd", "wn").replace("cd", "cn").replace("hd", "hn"): v for k, v in fixed.items()
                     if k in ("wg", "wc", "cg", "cc", "hg", "hc")}
        # kept on the context: an as-deployed plan and policy=best's (which lets FlexGen's pick compete) share it
        key = ("flexgen deployed policy", prm.gpu_batch_size, prm.num_gpu_batches,
               tuple(sorted(fixed.items())) if fixed is not None else None)
        return ctx.memo(key, lambda: fcm.search(self._cost_model_terms(ctx), w.num_requests, prm.gpu_batch_size,
                                                prm.num_gpu_batches, fixed, w.batch_size))

    def _from_choice(self, ctx: Context, choice: fcm.FlexGenChoice) -> FlexGenPolicy:
        """FlexGen's pick as a policy to simulate (a fixed batch shares its N over GPU batches of at most gbs)."""
        frac = {k.replace("wn", "wd").replace("cn", "cd").replace("hn", "hd"): v for k, v in choice.fractions.items()}
        gbs, nb = choice.gpu_batch, choice.num_gpu_batches
        if ctx.workload.batch_size:
            gbs, nb = balanced_batches(ctx.workload.batch_size, gbs)
        return FlexGenPolicy(gbs, nb, self.params.cpu_attention, frac, choice.block_time_s)

    def _check_fits(self, ctx: Context, pol: FlexGenPolicy, how: str) -> None:
        """InfeasibleError when a policy not of moesim's search (FlexGen's pick, or a given one) overflows
        moesim's memory rows (:meth:`_memory_rows`): FlexGen's runtime would run out of memory ("sometimes a
        strategy from the policy search can run out of memory. In this case, we manually adjust the policy
        slightly", FlexGen section 4.3)."""
        who = "FlexGen's search picks" if how == "as-deployed" else "the policy given is"
        fixed = self._gpu_fixed_bytes(ctx, pol.gpu_batch)
        rows = self._memory_rows(ctx, pol.gpu_batch, pol.num_gpu_batches, pol.cpu_attention)
        for name, coef, capacity in rows:
            need = sum(v * pol.fractions[k] for k, v in coef.items()) + (fixed if name == "GPU memory" else 0.0)
            have = capacity + (fixed if name == "GPU memory" else 0.0)
            if need > have * (1 + 1e-9):
                raise InfeasibleError(
                    f"flexgen: {who} {pol.gpu_batch} x {pol.num_gpu_batches} GPU batches (weights on GPU "
                    f"{pol.wg:.0%}, KV on GPU {pol.cg:.0%}, activations on GPU {pol.hg:.0%}); in moesim's memory "
                    f"model it needs {fmt_bytes(need)} of {name}, {fmt_bytes(have)} usable: short by "
                    f"{fmt_bytes(need - have)} (FlexGen would run out of memory; set --percent / "
                    f"--gpu-batch-size / --num-gpu-batches, or policy=best)")

    def _partial(self, pol: FlexGenPolicy, r: int) -> FlexGenPolicy:
        """The last block of r < bls sequences under ``pol``: ceil(r / gbs) GPU batches sharing r evenly, the
        same placement."""
        gbs, nb = balanced_batches(r, pol.gpu_batch)
        return FlexGenPolicy(gbs, nb, pol.cpu_attention, pol.fractions, pol.lp_block_time_s)

    def candidate_policies(self, ctx: Context) -> list[FlexGenPolicy]:
        pairs = self._block_splits(ctx)
        out = []
        for gbs in sorted({g for g, _ in pairs}):
            if self._gpu_fixed_bytes(ctx, gbs) > self._gpu_capacity_bytes(ctx):
                continue  # the LP's GPU row has no solution: every fraction it weighs is >= 0
            consts = self._compute_constants(ctx, gbs)
            for g, nb in pairs:
                if g != gbs:
                    continue
                for deleg in self._delegations(ctx):
                    pol = self.solve_policy(ctx, gbs, nb, deleg, consts)
                    if pol is not None:
                        out.append(pol)
        return out

    def _infeasible(self, ctx: Context) -> InfeasibleError:
        """Why no (gbs, n_b) of :meth:`_block_splits` has a feasible LP, with the binding limit and by how much:
        the GPU when even the smallest GPU batch's fixed part does not fit, else the memory whose shortfall
        (:meth:`memory_shortfall`) is least over the splits tried (the smallest block needs the least)."""
        p, w = ctx.platform, ctx.workload
        pairs = self._block_splits(ctx)
        usable = self._gpu_capacity_bytes(ctx)
        gbs_min = min(g for g, _ in pairs)
        fixed = self._gpu_fixed_bytes(ctx, gbs_min)
        if fixed > usable:
            work = self._gpu_work_bytes(ctx, gbs_min)
            return InfeasibleError(
                f"flexgen: the resident weights ({fmt_bytes(ctx.resident_weight_bytes)}), one layer's weights "
                f"({fmt_bytes(max_layer_weight_bytes(ctx))}, attention + all experts) and the working set of a GPU "
                f"batch of {gbs_min} ({fmt_bytes(work)}: activations, the {w.prompt_tokens}-token prompt's attention "
                f"scores, its KV) need {fmt_bytes(fixed)} on {p.gpu.name}, {fmt_bytes(usable)} usable: short by "
                f"{fmt_bytes(fixed - usable)}")
        best = None  # (least shortfall, gbs, n_b, shortfalls, whether each alone suffices)
        for gbs, nb in pairs:
            if self._gpu_fixed_bytes(ctx, gbs) > usable:
                continue
            for deleg in self._delegations(ctx):
                short, alone = self.memory_shortfall(ctx, gbs, nb, deleg)
                if short and (best is None or min(short.values()) < best[0]):
                    best = (min(short.values()), gbs, nb, short, alone)
        if best is None:  # the memory rows admit a placement: the LP failed numerically
            return InfeasibleError(f"flexgen: the placement LP found no solution for {ctx.model.name} on {p.name}, "
                                   f"though its GPU, host memory and disk rows admit one (a solver failure)")
        _, gbs, nb, short, alone = best
        W, WL = streamed_weight_bytes(ctx), max_layer_weight_bytes(ctx)
        have = {"GPU memory": (usable - self._gpu_fixed_bytes(ctx, gbs),
                               "left beside the resident weights, one layer's buffers and a GPU batch's working set"),
                "host memory": (p.usable_host_memory_bytes,
                                f"usable; weights on disk pass through two layers' host buffers, {fmt_bytes(2 * WL)}"),
                "disk": (p.disk.capacity_bytes, p.disk.name)}
        limits = "; ".join(f"{k} ({fmt_bytes(have[k][0])}, {have[k][1]}): short by {fmt_bytes(v)}"
                           for k, v in sorted(short.items(), key=lambda kv: kv[1]))
        how = "" if len(short) == 1 else " (either alone would do)" if alone else " (all of these together)"
        return InfeasibleError(
            f"flexgen: no placement of the weights ({fmt_bytes(W)} streamed), KV cache and activations of a block "
            f"of {gbs * nb} sequences ({gbs} x {nb} GPU batches, {w.total_context_tokens} tokens each) fits: "
            f"{limits}{how}")

    def plan(self, ctx: Context) -> Plan:
        w = ctx.workload
        prm = self.params
        self.refuse_multi_gpu(ctx, "its pipeline parallelism is not modelled")
        explicit = bool(prm.gpu_batch_size and prm.num_gpu_batches and prm.percent)
        grids = {"gpu_batch_grid", "num_gpu_batches_grid", "policies_simulated"} & prm.model_fields_set
        how = "explicit" if explicit else ("best" if grids and "policy" not in prm.model_fields_set
                                           else prm.policy)
        choice = None
        if how == "explicit":
            gbs, nb = prm.gpu_batch_size, prm.num_gpu_batches
            if w.batch_size:
                gbs, nb = balanced_batches(w.batch_size, gbs)
            pols = [FlexGenPolicy(gbs, nb, prm.cpu_attention, prm.fractions(), math.nan)]
        elif how == "as-deployed":
            choice = self.deployed_policy(ctx)
            if choice is None:
                raise InfeasibleError(
                    f"flexgen: FlexGen's policy search finds no placement for {ctx.model.name} on "
                    f"{ctx.platform.name} within {self.constants.value('cost_model_memory_fraction')} of the GPU, host "
                    f"and disk memory (its relaxation); try policy=best")
            pols = [self._from_choice(ctx, choice)]
        else:
            pols = self.candidate_policies(ctx)
            choice = None
            if not grids:  # FlexGen's own pick competes too (unless grids were given): never slower than it
                choice = self.deployed_policy(ctx)
            if choice is not None:
                pol0 = self._from_choice(ctx, choice)
                try:
                    self._check_fits(ctx, pol0, "as-deployed")
                    pols.append(pol0)
                except InfeasibleError:
                    pass
                choice = None
            if not pols:
                raise self._infeasible(ctx)

        if how != "best":
            self._check_fits(ctx, pols[0], how)
        mid = decode_mid(w.prompt_tokens, w.gen_tokens)
        cache: dict = {}

        def sim(pol: FlexGenPolicy, q_len: int, kv_len: int) -> StepSim:
            key = (pol.gpu_batch, pol.num_gpu_batches, id(pol.fractions), q_len, kv_len)
            if key not in cache:
                cache[key] = self._pass(ctx, pol, q_len, kv_len)
            return cache[key]

        def parts(pol: FlexGenPolicy) -> list[tuple[FlexGenPolicy, int]]:
            """Full blocks, then a last, partial one (charged for what it holds)."""
            full, rest = divmod(w.num_requests, pol.block)
            return ([(pol, full)] if full else []) + ([(self._partial(pol, rest), 1)] if rest else [])

        def quick(pol: FlexGenPolicy) -> tuple[float, float]:
            lb = est = 0.0
            for q, k in parts(pol):
                tm = sim(q, 1, mid).time_s
                lb += k * simpson_lower_bound(tm, w.gen_tokens)
                est += k * w.gen_tokens * tm
            return lb, est

        def one(pol: FlexGenPolicy):
            decode_s, points = simpson_decode_time(lambda c: sim(pol, 1, c), w.prompt_tokens, w.gen_tokens)
            prefill = sim(pol, w.prompt_tokens, w.prompt_tokens)
            return prefill.time_s + decode_s, prefill, decode_s, points

        def exact(pol: FlexGenPolicy):
            ps = parts(pol)
            first = one(ps[0][0])
            return sum(k * one(q)[0] for q, k in ps), first[1], first[2], first[3]

        pols.sort(key=lambda q: math.ceil(w.num_requests / q.block) * (q.lp_block_time_s or 0.0))
        pol, (_, prefill, decode_s, points) = best_by_simulation(
            pols[: self.params.policies_simulated or len(pols)], quick, exact)
        ps = parts(pol)
        shown = ps[0][0]
        last = one(ps[-1][0])[0] if len(ps) > 1 else None
        bls = shown.block
        num_batches = math.ceil(w.num_requests / pol.block)
        W = streamed_weight_bytes(ctx)
        ctx_len = w.total_context_tokens
        kv_tot = bls * ctx_len * ctx.kv_bytes_per_token(ctx_len)
        host = (pol.wc * W + pol.wd * 2 * max_layer_weight_bytes(ctx) + pol.cc * kv_tot
                + pol.hc * ctx.hidden_state_bytes(bls * w.prompt_tokens))

        def where(prefix: str) -> str:
            parts_ = [f"{name} {pol.fractions[prefix + k]:.0%}" for k, name in (("g", "gpu"), ("c", "cpu"), ("d", "disk"))
                      if pol.fractions[prefix + k] > 5e-4]
            return ", ".join(parts_)

        config = {"policy": how, "batch_size": bls, "gpu_batch_size": shown.gpu_batch,
                  "num_gpu_batches": shown.num_gpu_batches, "policy_batch_size": pol.block,
                  "policy_gpu_batch_size": pol.gpu_batch, "policy_num_gpu_batches": pol.num_gpu_batches,
                  "cpu_attention": pol.cpu_attention,
                  **{k: round(v, 4) for k, v in pol.fractions.items()}}
        if how == "best":
            config.update({"lp_block_time_s": pol.lp_block_time_s, "policies_solved": len(pols),
                           "policies_simulated": min(len(pols), self.params.policies_simulated or len(pols))})
        if choice is not None:
            config["cost_model_tok_s_estimate"] = round(choice.throughput_tok_s, 3)
        source = {"as-deployed": "FlexGen's cost-model search, its T4-fitted constants",
                  "best": "moesim's search (policy=best)", "explicit": "given"}[how]
        notes = [f"FlexGen{'(c)' if pol.cpu_attention else ''} policy ({source}): block {pol.block} = {pol.gpu_batch} "
                 f"x {pol.num_gpu_batches} GPU batches; weights {where('w')}; KV {where('c')}; activations {where('h')}"]
        if last is not None and len(ps) > 1:
            notes.append(f"the last of {num_batches} blocks holds {w.num_requests - (num_batches - 1) * pol.block} "
                         f"sequences ({ps[-1][0].gpu_batch} x {ps[-1][0].num_gpu_batches}), charged as such")
        elif shown is not pol:
            notes.append(f"{w.num_requests} requests fill {shown.num_gpu_batches} GPU batches of {shown.gpu_batch}"
                         + (f" ({shown.block - w.num_requests} slot(s) padded)" if shown.block > w.num_requests else ""))
        if w.batch_size and pol.block != w.batch_size:
            notes.append(f"batch {w.batch_size} runs as FlexGen's unit, a block of {pol.gpu_batch} x {pol.num_gpu_batches}"
                         f" = {pol.block} sequences (FlexGen runs whole blocks of gpu_batch_size x num_gpu_batches GPU "
                         f"batches of one size), priced as such")
        placement = {"weights": where("w") + " (streamed per layer, all experts)", "kv_cache": where("c"),
                     "activations": where("h")}
        # FlexGen(c): decode attention over the off-GPU KV (cc + cd) runs on the CPU; prefill attention on the GPU
        cpu_kv = HostShare(kv_fraction=pol.cc + pol.cd) if pol.cpu_attention else HostShare()
        return self.make_plan((bls, num_batches), (prefill, 1, bls * w.prompt_tokens), (decode_s, points),
                              config=config, host_mem_bytes=host, placement=placement, notes=notes,
                              host_decode=cpu_kv, last_batch_time_s=last)
