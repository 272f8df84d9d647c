"""`vllm`: continuous batching over a paged KV cache on the GPU(s) (vLLM, Kwon et al., SOSP 2023).

Where data lives
  weights   on the GPU(s), tensor parallel over the platform's n GPUs (Megatron-LM split, as in
            ``gpu-resident``: each GPU holds 1/n of every matrix, two all-reduces per layer);
            ``cpu_offload_gb`` GiB per GPU of them stay in pinned host memory instead.
  KV cache  paged, on the GPU: blocks of ``block_size`` tokens (PagedAttention, section 4.2).

Memory (vLLM's ``Worker.determine_num_available_blocks``): the instance may use
``gpu_memory_utilization`` of each GPU's memory; the CUDA context and other non-torch memory
(the platform's reserved bytes) come out of that, then the weights, then the peak activations
of a profiling forward pass over ``max_num_batched_tokens`` tokens; the rest is the KV pool::

    budget    = util * M_gpu - reserved
    kv_pool   = budget - (W/n - offload) - act(max_num_batched_tokens)
    blocks    = floor(kv_pool / (block_size * kv_bytes_per_token / n))

vLLM refuses to start when the weights do not fit, or when the pool cannot hold one sequence of
``max_model_len`` tokens; both are reported here as InfeasibleError with what is short.

CPU weight offload (``--cpu-offload-gb``, vLLM ``model_executor/models/utils.py``
``maybe_offload_to_cpu``): that many bytes of parameters per GPU live in pinned host memory and
each offloaded module copies them to the GPU (``.to(device, non_blocking=True)`` on the compute
stream) every time it runs, so the copy is serialized with compute, never overlapped::

    T_step = sum_layers [ offload/L / B_h2d  +  compute(layer) ]

Modules are offloaded in order until the budget is spent; the copy is spread evenly over the
layers here, which gives the same step time since nothing overlaps.

Continuous batching with chunked prefill (vLLM V1 scheduler; Agrawal et al., Sarathi-Serve, OSDI
2024): each step schedules every running sequence's next token, then fills the token budget
``max_num_batched_tokens`` with prefill chunks of waiting prompts. For the offline workload (R
requests, prompt P, generation G) the steady state is simulated: sequences are staggered over
their generation positions, so the mean context of a running sequence is P + (G+1)/2 and it
holds on average mean_g ceil((P+g)/block_size) blocks. The running batch is

    B = min(max_num_seqs, floor(blocks / mean blocks per sequence))

and a step decodes B tokens; the B / G sequences finishing each step are replaced by new ones whose
B P / G prompt tokens are prefilled (when B (P + G) / G exceeds the token budget, steps are
budget-bound: S = B (P + G) / N steps per B requests, each carrying B P / S prompt tokens). With
B < G, fewer than one prompt enters per step: it enters whole, in chunks of min(P, N - B) tokens,
so a few steps carry a chunk and the others only decode (see ``_v1_steady_state``; averaging the
prompt tokens over all steps would misprice a sparse model, whose step time is concave in the
tokens). The workload then takes

    T_total = ceil(R / B) * S * T_mixed,      S = max(G, B (P + G) / N)

with T_mixed the mean step, for every wave but the first and the last: at the start nothing runs, so
the first B prompts are prefilled as a burst (the TTFT: full token budgets, then a pass over the rest),
and after the last prompt the last B sequences only decode (G pure decode steps), so

    T_total = TTFT + (ceil(R / B) - 1) * S * T_mixed + T_decode(B)       (``ContinuousPlan``)

A one-wave run (R <= B) is then the burst and its decode, never shorter than its own TTFT (the steady
state alone, S T_mixed, priced such a run below its TTFT: 355 ms against a 540 ms TTFT for OLMoE, 16
requests of 664 + 2 tokens on an A5000, whose TTFT also priced its 2432-token second pass as a full
8192-token one).

``chunked_prefill=False`` is vLLM V0's default scheduler (the vLLM of MoE-Gen's comparison): a step
is all prefill or all decode, prefills first; in the staggered steady state each decode step's
B / G finished sequences are replaced by a prefill-only step, a whole extra pass over the weights
when they are offloaded (see ``_v0_steady_state``); that cost is counted in the decode rate.

The reported phase rates are those of pure phases: prefill = the B prompts of a batch in passes of one
full token budget and a last pass of the rest (what a burst of prompts gets, and what MoE-Gen's Table 7
measures), decode = steps of B sequences alone; the total time is shorter than the sum of the phases,
since mixing shares each step's weight reads (and offload copies) between decode and prefill tokens.

Online serving (:mod:`moesim.serving`): the generic iteration-level scheduler over Poisson arrivals,
each step priced by :meth:`VLLM.online_model` (a table of simulated step costs, :mod:`._vllm_online`).

Sanity check, not a fit (MoE-Gen arXiv 2503.09716, Tables 6/7: testbed C2 = RTX A5000 24 GB, EPYC
7453, 512 GiB, PCIe 4.0; prompt 512; vLLM ran with CPU weight offload, amount not stated): the
offload setting moves decode by two orders of magnitude, because the step is copy-bound (25 GB/s
pinned) and the KV pool, hence the batch, grows with the offload. ``validation/published/moe_gen.py``
runs it as the paper's 0.5-era vLLM (every weight it can offloaded, V0 scheduler, its 32768-token
budget, MLA cached per head) and prints each cell; DeepSeek-R1 (671 GB fp8) fails, as published:
its weights exceed the 522 GB of usable host memory (0.95 of 512 GiB), so no offload setting starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..engine import Engine
from ..errors import InfeasibleError
from ..modules import Context
from ..specs import LayerKind
from ..specs.workload import OnlineWorkload
from ..units import fmt_bytes
from .base import (Plan, ServingSystem, StepSim, balanced_batches, sequential_steps, simpson_decode_time,
                   simulate_pass)
from .shared.memory import activation_bytes
from .shared.tensor_parallel import LayerTimes, require_tensor_parallel

if TYPE_CHECKING:
    from ._vllm_online import VLLMStepModel

GIB = 2.0**30


class VLLMParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="fraction of each GPU's memory the instance may use (vLLM default 0.9)")
    block_size: int = Field(default=16, ge=1, description="tokens per KV-cache page (vLLM default 16)")
    max_num_seqs: int = Field(default=256, ge=1, description="most sequences running at once (vLLM default 256)")
    max_num_batched_tokens: int = Field(
        default=8192, ge=1, description="token budget of one step, decode tokens plus prefill chunks (chunked prefill)")
    cpu_offload_gb: float = Field(
        default=0.0, ge=0, description="GiB of weights per GPU kept in pinned host memory and copied to the GPU "
                                       "every forward pass, not overlapped (vLLM --cpu-offload-gb)")
    chunked_prefill: bool = Field(
        default=True, description="prefill chunks share steps with decodes (V1 / Sarathi); False = vLLM V0's default "
                                  "scheduler: a step is all prefill or all decode, and prefills go first")
    mla_latent_cache: bool = Field(
        default=True, description="MLA models cache the compressed latent (vLLM >= 0.7.1); False = per-head K and V, "
                                  "V zero-padded to the query-key head size, as vLLM's DeepSeek-V2 code did before")


@dataclass
class ContinuousPlan(Plan):
    """A plan whose phases run mixed in the same steps once the run is under way.

    ``prefill`` and ``decode_points`` describe pure phases (their rates are what a burst of prompts,
    or decoding alone, would get); ``mixed_step`` is the steady-state step that repeats ``steps_per_batch``
    times per B requests. The run of W = ``num_batches`` waves of B requests is ramp-up, steady state, drain::

        T_total = T_ramp + (W - 1) S T_mixed + T_drain

    T_ramp = TTFT: at the start nothing runs, so the first B prompts are prefilled as a burst, full token
    budgets and then the rest (``prefill_last``); T_drain = ``drain_s``: after the last prompt the last B
    sequences only decode (G pure decode steps). The W - 1 other waves' prompts and decodes share the steady
    state's mixed steps. One wave (W = 1) is then a burst of prefill and G decode steps, never shorter than its
    TTFT; many waves tend to the steady state, W S T_mixed.
    """

    mixed_step: StepSim | None = None
    steps_per_batch: float = 0.0
    prefill_last: StepSim | None = None  # the last prefill pass of a batch, over what the full passes leave
    drain_s: float = 0.0

    @property
    def prefill_time_per_batch_s(self) -> float:
        """(passes - 1) full passes of ``prefill_tokens_per_pass`` prompt tokens, then the pass of the rest."""
        if self.prefill_last is None:
            return super().prefill_time_per_batch_s
        return (self.prefill_passes_per_batch - 1) * self.prefill.time_s + self.prefill_last.time_s

    @property
    def total_time_s(self) -> float:
        if self.mixed_step is None:
            return super().total_time_s
        return (self.prefill_time_per_batch_s + (self.num_batches - 1) * self.steps_per_batch * self.mixed_step.time_s
                + self.drain_s)


@dataclass(frozen=True)
class _Layout:
    """Per-GPU memory layout."""

    budget: float
    weights_gpu: float  # per GPU, after offload
    offload: float  # bytes per GPU in host memory
    activations: float
    block_bytes: float
    blocks: int


class VLLM(ServingSystem):
    name = "vllm"
    summary = ("continuous batching with chunked prefill; weights on the GPU(s), tensor parallel (optionally part in "
               "host memory, copied every pass), paged KV cache on the GPU")
    Params = VLLMParams

    # ---- memory ------------------------------------------------------------------------------
    def _kv_bytes_per_token(self, ctx: Context, ctx_len: int) -> float:
        """KV-cache bytes per token over all layers as this vLLM stores them.

        MLA without a latent cache (vLLM before 0.7.1, ``deepseek_v2.py``): K of qk_head_dim and V padded
        to qk_head_dim per head, i.e. 2 x heads x qk_head_dim elements per layer, instead of the latent.
        """
        a = ctx.model.attention
        if a.kind != "mla" or self.params.mla_latent_cache:
            return ctx.kv_bytes_per_token(ctx_len)
        return ctx.kv_bytes_per_token(ctx_len) * (2 * a.num_heads * a.qk_head_dim) / a.kv_elements_per_token()

    def _layout(self, ctx: Context) -> _Layout:
        p, prm = ctx.platform, self.params
        require_tensor_parallel(ctx, self.name)
        n = p.num_gpus
        ctx_len = ctx.workload.total_context_tokens  # max_model_len
        budget = prm.gpu_memory_utilization * p.gpu.memory_bytes - p.empirical.gpu_memory_reserved_bytes
        per_gpu = ctx.weight_bytes / n
        offload = min(prm.cpu_offload_gb * GIB, per_gpu)
        weights_gpu = per_gpu - offload
        # profiled activations, plus the GPU copy of one layer's offloaded weights while it runs
        layers = ctx.model.num_layers
        act = activation_bytes(ctx, prm.max_num_batched_tokens) + offload / layers
        block_bytes = prm.block_size * self._kv_bytes_per_token(ctx, ctx_len) / n
        one_seq = math.ceil(ctx_len / prm.block_size) * block_bytes
        host_need = offload * n
        if host_need > p.usable_host_memory_bytes:
            raise InfeasibleError(
                f"vLLM: cpu_offload_gb={prm.cpu_offload_gb:g} per GPU x {n} GPUs keeps {fmt_bytes(host_need)} of "
                f"weights in pinned host memory, {fmt_bytes(p.usable_host_memory_bytes)} usable: short by "
                f"{fmt_bytes(host_need - p.usable_host_memory_bytes)}"
            )
        available = budget - act - one_seq
        if weights_gpu > available:
            short = weights_gpu - available
            # offload o fits when per_gpu - o <= budget - act0 - o / L - one_seq
            room = available + offload / layers
            need = (per_gpu - room) / (1.0 - 1.0 / layers) if layers > 1 else per_gpu
            need_gib = min(math.ceil(need / GIB + 1e-9), math.ceil(per_gpu / GIB))
            if room - per_gpu / layers <= 0:
                hint = ("not even the activations and one sequence's KV fit: use more GPUs or a smaller "
                        "max_num_batched_tokens")
            elif need_gib * GIB * n > p.usable_host_memory_bytes:
                hint = (f"offloading cannot help: cpu_offload_gb >= {need_gib} per GPU would need "
                        f"{fmt_bytes(need_gib * GIB * n)} of pinned host memory, "
                        f"{fmt_bytes(p.usable_host_memory_bytes)} usable")
            else:
                hint = f"set cpu_offload_gb >= {need_gib}"
            if weights_gpu <= 0:
                raise InfeasibleError(
                    f"vLLM: with every weight offloaded ({ctx.model.name}, {ctx.wdtype}, {n} x {p.gpu.name}), the "
                    f"activations of a {prm.max_num_batched_tokens}-token step with one layer's offloaded weights "
                    f"({fmt_bytes(act)}) and the KV of one {ctx_len}-token sequence ({fmt_bytes(one_seq)}) need "
                    f"{fmt_bytes(act + one_seq)} per GPU, the budget is {fmt_bytes(budget)} "
                    f"(gpu_memory_utilization={prm.gpu_memory_utilization:g} of {fmt_bytes(p.gpu.memory_bytes)} minus "
                    f"{fmt_bytes(p.empirical.gpu_memory_reserved_bytes)} reserved): short by "
                    f"{fmt_bytes(act + one_seq - budget)}; {hint}")
            raise InfeasibleError(
                f"vLLM: model weights need {fmt_bytes(weights_gpu)} per GPU ({ctx.model.name}, {ctx.wdtype}, "
                f"{n} x {p.gpu.name}, cpu_offload_gb={prm.cpu_offload_gb:g}), "
                f"{fmt_bytes(max(available, 0.0))} available "
                f"(gpu_memory_utilization={prm.gpu_memory_utilization:g} of {fmt_bytes(p.gpu.memory_bytes)} minus "
                f"{fmt_bytes(p.empirical.gpu_memory_reserved_bytes)} reserved, {fmt_bytes(act)} of activations for "
                f"{prm.max_num_batched_tokens} batched tokens, {fmt_bytes(one_seq)} of KV for one sequence of "
                f"{ctx_len} tokens): short by {fmt_bytes(short)}; {hint}"
            )
        blocks = int((budget - weights_gpu - act) // block_bytes)
        return _Layout(budget, weights_gpu, offload, act, block_bytes, blocks)

    # ---- one step ----------------------------------------------------------------------------
    def _pass(self, ctx: Context, lay: _Layout, tokens: float, rows: float,
              attention: list[tuple[float, float, float]]) -> StepSim:
        """One step over ``tokens`` batched tokens; ``attention`` lists (sequences, new tokens, context) groups;
        ``rows`` = tokens whose logits are computed (one per decoding sequence and per completed prompt)."""
        n = ctx.platform.num_gpus
        inv = 1.0 / n
        m = ctx.model
        engine = Engine(memory_capacity_bytes={"gpu": ctx.platform.usable_gpu_memory_bytes_per_gpu})
        times = LayerTimes.of(ctx, tokens, attention)
        offload_layer = lay.offload / m.num_layers
        copy = ctx.h2d_s(offload_layer)

        def layer(eng: Engine, i: int, kind: LayerKind) -> int:
            last = len(eng.tasks) - 1 if eng.tasks else None
            if copy:  # on the compute stream: waits for the previous layer, blocks this one
                last = eng.add(f"L{i} offloaded weights H2D", "h2d", copy, [last], category="transfer",
                               nbytes=offload_layer)
            return times.add(eng, i, kind, last)

        head = ctx.gpu_s(ctx.head(tokens, max(rows, 1.0)).scaled(inv))

        holds = {"weights": lay.weights_gpu, "paged KV pool": lay.blocks * lay.block_bytes,
                 "activations (profiled peak) + one offloaded layer's GPU copy": lay.activations}

        return simulate_pass(ctx, engine, layer, gpu_holds=holds, head_s=head)

    def _mixed(self, ctx: Context, lay: _Layout, dec: float, dec_ctx: float, pre_tokens: float, pre_seqs: float,
               prompt: int) -> StepSim:
        attention = [(dec, 1, dec_ctx), (pre_seqs, prompt, prompt)]
        return self._pass(ctx, lay, dec + pre_tokens, dec + pre_seqs, attention)

    def _v1_steady_state(self, ctx: Context, lay: _Layout, batch: int) -> tuple[float, StepSim, str]:
        """vLLM V1 (chunked prefill), staggered sequences in steady state.

        Per B requests, S = max(G, B (P + G) / N) steps schedule B G decode tokens and B P prompt tokens.
        When the budget binds (S > G) or prompts enter at least once a step (B >= G), every step carries
        prompt tokens and each is the average step: B G / S decodes and B P / S prompt tokens. Otherwise a
        prompt enters whole, in chunks of q = min(P, N - B) tokens (V1 fills the budget left by the running
        decodes): m = B P / q of the G steps carry B decodes and a chunk, the other G - m only decode::

            T_per_batch = m T(B decodes + q prompt tokens) + (G - m) T(B decodes)

        Spreading the prompt tokens evenly over the G steps instead misprices a sparse model at small B:
        its step time is concave in the tokens (a step of 3 Mixtral tokens reads about 4.6 of the 8 experts
        of a layer, a step of 1 reads 2), so at batch 1 an average step of 1 decode + 2 prompt tokens cost
        19.0 ms against 11.0 ms for the decode alone, and the throughput fell far below what TTFT and TPOT
        imply. Returns (steps per batch, the mean step as one StepSim, what the steps hold, in words).
        """
        w, prm = ctx.workload, self.params
        P, G, N = w.prompt_tokens, w.gen_tokens, prm.max_num_batched_tokens
        mid = P + (G + 1) / 2.0
        steps = max(float(G), batch * (P + G) / N)
        if steps > G or batch >= G:
            mixed = self._mixed(ctx, lay, batch * G / steps, mid, batch * P / steps, batch / steps, P)
            return steps, mixed, (f"each step decodes {batch * G / steps:.4g} tokens and prefills "
                                  f"{batch * P / steps:.4g} prompt tokens")
        q = min(P, N - batch)
        m = batch * P / q
        carry = self._mixed(ctx, lay, batch, mid, q, q / P, P)
        decode = self._mixed(ctx, lay, batch, mid, 0, 0, P)
        return steps, sequential_steps([(carry, m / G), (decode, 1.0 - m / G)]), (
            f"of every {G} steps, {m:.4g} carry {batch} decodes and a {q}-token prompt chunk, {G - m:.4g} only "
            f"decode")

    def _v0_steady_state(self, ctx: Context, lay: _Layout, batch: int, mid_ctx: int) -> tuple[float, StepSim, float]:
        """vLLM V0 without chunked prefill, staggered sequences in steady state.

        Each decode step of B sequences frees B / G of them; the scheduler, which puts prefills first, fills
        their slots with a prefill-only step (a whole pass over the weights, copies of offloaded weights
        included). Per decode step that is f = max(min(1, B / G), B P / (G N)) prefill steps of
        B P / (G f) prompt tokens each::

            T_per_token = T_decode(B) + f T_prefill(B P / (G f))

        Returns (steps per batch, the repeating step as one StepSim, f T_prefill).
        """
        w, prm = ctx.workload, self.params
        P, G = w.prompt_tokens, w.gen_tokens
        f = max(min(1.0, batch / G), batch * P / (G * prm.max_num_batched_tokens))
        tokens = batch * P / (G * f)
        refill = self._mixed(ctx, lay, 0, 0, tokens, tokens / P, P)
        decode = self._mixed(ctx, lay, batch, mid_ctx, 0, 0, P)
        return float(G), sequential_steps([(decode, 1.0), (refill, f)]), f * refill.time_s

    # ---- offline plan --------------------------------------------------------------------------
    def plan(self, ctx: Context) -> Plan:
        w, prm = ctx.workload, self.params
        P, G, R = w.prompt_tokens, w.gen_tokens, w.num_requests
        lay = self._layout(ctx)
        bs, budget_tokens = prm.block_size, prm.max_num_batched_tokens
        # mean blocks held by a running sequence, its generation position uniform over 1..G
        blocks_per_seq = float(np.mean(np.ceil((P + np.arange(1, G + 1)) / bs)))
        by_kv = int(lay.blocks // blocks_per_seq)
        cap = w.batch_size or prm.max_num_seqs  # a fixed workload batch acts as max_num_seqs
        notes = []
        by_kv = max(by_kv, 1)  # one full sequence always fits (checked in _layout)
        if w.batch_size and w.batch_size > by_kv:
            notes.append(f"batch {w.batch_size} asked, but the KV pool holds {by_kv} running sequences; "
                         f"vLLM runs {by_kv}")
        batch, num_batches = balanced_batches(R, max(1, min(cap, by_kv, R)))
        chunk = min(budget_tokens, batch * P)
        prefill = self._mixed(ctx, lay, 0, 0, chunk, chunk / P, P)
        passes = math.ceil(batch * P / chunk)
        rest = batch * P - (passes - 1) * chunk  # the last pass prefills what the full budgets leave
        prefill_last = prefill if rest == chunk else self._mixed(ctx, lay, 0, 0, rest, rest / P, P)
        decode_s, points = simpson_decode_time(lambda c: self._mixed(ctx, lay, batch, c, 0, 0, P), P, G)
        drain_s = decode_s  # the last wave's G steps, decodes only
        if prm.chunked_prefill:
            steps, mixed, per_step = self._v1_steady_state(ctx, lay, batch)
        else:
            steps, mixed, refill_s = self._v0_steady_state(ctx, lay, batch, (G + 1) // 2 + P)
            per_step = "each step decodes or prefills"
            decode_s += G * refill_s
            notes.append(f"V0 scheduler: prefill steps do not carry decodes; the {batch / G:.3g} sequences that finish "
                         f"each step are replaced by a prefill step of their own, counted in the decode rate")
        n = ctx.platform.num_gpus
        notes.append(
            f"continuous batching steady state: {batch} running sequences (KV pool of {lay.blocks} blocks of {bs} "
            f"tokens holds {by_kv} at a mean of {blocks_per_seq:.1f} blocks; max_num_seqs {prm.max_num_seqs}); "
            f"{per_step}; the run = ramp-up (the first {batch} prompts prefilled as a burst) + "
            f"{num_batches - 1} wave(s) of {batch} requests in steady state + drain (the last {batch} decode alone)")
        notes.append("prefill and decode rates are those of pure phases; the total time uses the mixed steps")
        if lay.offload:
            notes.append(f"cpu_offload_gb={prm.cpu_offload_gb:g}: {fmt_bytes(lay.offload)} of weights per GPU copied "
                         f"from pinned host memory every pass, serialized with compute")
        config = {"batch_size": batch, "max_running_by_kv": by_kv, "kv_blocks": lay.blocks, "block_size": bs,
                  "tensor_parallel": n, "steps_per_batch": steps, "mixed_step_s": mixed.time_s,
                  "prefill_tokens_per_pass": chunk, "kv_pool_bytes_per_gpu": lay.blocks * lay.block_bytes,
                  "weights_on_gpu_bytes_per_gpu": lay.weights_gpu, "offloaded_bytes_per_gpu": lay.offload,
                  "params": prm.model_dump()}
        placement = {"weights": "gpu" + (" + pinned host (copied every pass)" if lay.offload else ""),
                     "kv_cache": "gpu (paged)"}
        return self.make_plan((batch, num_batches), (prefill, passes, chunk), (decode_s, points), config=config,
                              host_mem_bytes=lay.offload * n, placement=placement, notes=notes,
                              also_run=(mixed, prefill_last), plan_type=ContinuousPlan, mixed_step=mixed,
                              steps_per_batch=steps, prefill_last=prefill_last, drain_s=drain_s)

    # ---- online serving ----------------------------------------------------------------------------
    def online_model(self, ctx: Context, plan: Plan, max_context_tokens: int) -> "VLLMStepModel":
        """vLLM's steps for :mod:`moesim.serving` (see :mod:`._vllm_online`): the KV pool of this
        configuration on ``ctx``'s platform, steps priced from a table of simulated passes."""
        from ._vllm_online import VLLMStepModel

        if plan.config.get("params") != self.params.model_dump():
            raise ValueError(f"online serving: the plan was made by a vllm with other parameters "
                              f"({plan.config.get('params')}) than this one ({self.params.model_dump()})")
        return VLLMStepModel(self, ctx, self._layout(ctx), max_context_tokens)


# ---- deprecated online entry point ---------------------------------------------------------------
def simulate_online(ctx: Context, workload: OnlineWorkload, plan: Plan) -> dict:
    """Deprecated: use :func:`moesim.serving.simulate`, which returns a typed OnlineResult.

    Serves ``workload`` with the vLLM whose parameters made ``plan``; returns the result's JSON dict
    without its ``system`` and ``assumptions`` keys, as this function always did.
    """
    from ..serving import simulate

    if plan.system != VLLM.name:
        raise ValueError(f"simulate_online needs a vllm plan, got one of {plan.system!r}")
    result = simulate(ctx, plan, VLLM(VLLMParams.model_validate(plan.config["params"])), workload)
    return result.model_dump(exclude={"system", "assumptions"})
