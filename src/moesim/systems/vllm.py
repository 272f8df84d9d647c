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
is all prefill or all decode, prefills first, as many as fit. The offline workload's equal requests keep
the waves in lockstep (a wave's B sequences start in one burst and finish in one step), so each wave's G
decode steps are followed by the next wave's burst prefill, ceil(B P / N) prefill-only passes, each a whole
pass over the weights when they are offloaded (see ``_v0_steady_state``); that cost is counted in the decode
rate. V0's step budget defaults to max(max_model_len, 2048) (vLLM ``SchedulerConfig``), max_model_len to the
model's context when the KV pool holds one such sequence (vLLM refuses to start otherwise) and to the
workload's P + G when it does not (:meth:`VLLM.max_model_len`): 32768 tokens for Mixtral-8x7B on a 24 GB GPU,
2048 for Mixtral-8x22B and DeepSeek-V2, whose 64K and 128K contexts do not fit.

The reported phase rates are those of pure phases: prefill = the B prompts of a batch in passes of one
full token budget and a last pass of the rest (what a burst of prompts gets, and what MoE-Gen's Table 7
measures), decode = steps of B sequences alone; the total time is shorter than the sum of the phases,
since mixing shares each step's weight reads (and offload copies) between decode and prefill tokens.

Online serving (:mod:`moesim.serving`): the generic iteration-level scheduler over Poisson arrivals,
each step priced by the engines' shared online model (a table of simulated step costs, :mod:`.shared.online`).

Sanity check, not a fit (MoE-Gen arXiv 2503.09716, Tables 6/7: testbed C2 = RTX A5000 24 GB, EPYC
7453, 512 GiB, PCIe 4.0; prompt 512; vLLM ran with CPU weight offload, amount not stated): the
offload setting moves decode by two orders of magnitude, because the step is copy-bound (25 GB/s
pinned) and the KV pool, hence the batch, grows with the offload. ``validation/published/moe_gen.py``
runs it as the paper's 0.5-era vLLM (every weight it can offloaded, V0 scheduler and its default
budget, MLA cached per head) and prints each cell; DeepSeek-R1 (671 GB fp8) fails, as published:
its weights exceed the 522 GB of usable host memory (0.95 of 512 GiB), so no offload setting starts.
Execution (``systems_db/vllm.yaml``, ``systems_db/engines.yaml``, :mod:`.shared.engine_step`): the V1 engine
replays a CUDA graph per decode step (the batch padded to the next captured size, 1, 2, 4, 8, 16, ... up to
min(2 max_num_seqs, 512)) and runs prefill through piecewise graphs; both are priced GPU-alone with vLLM's own
kernels, plus the engine's per-step CPU work, overlapped by the async scheduler (on by default) and added in
the V0 scheduler. ``enforce_eager=True`` (vLLM's ``--enforce-eager``) prices eager PyTorch instead, as moesim
priced every vllm step before execution modes existed.

KV per GPU: K/V heads are never split (a head is replicated when there are fewer than GPUs) and MLA's latent is
cached whole on every GPU (:func:`.shared.tensor_parallel.kv_share_per_gpu`).

Layouts (:meth:`VLLM.parallel_layout`, priced by :mod:`.shared.parallel`; vLLM docs "Data Parallel Deployment",
"Expert Parallel Deployment"): ``--data-parallel-size`` D splits the instance's G GPUs (moesim's ``--gpus``) into
D ranks of tensor parallel G / D, each with its own scheduler and KV cache; "by default, expert layers form a
tensor parallel group of size DP x TP", expert parallel with ``--enable-expert-parallel``; the default
``--all2all-backend allgather_reducescatter`` gathers every rank's tokens for the MoE.

Disaggregated prefill/decode and MTP speculative decoding: vLLM's P/D disaggregation (``--kv-transfer-config`` producer / consumer instances) and MTP (``--speculative-config`` method ``deepseek_mtp``, ``num_speculative_tokens``), as ``--disaggregate`` with the pools' GPUs, counts and
flags (:mod:`.shared.disaggregation`) and the draft steps (:mod:`.shared.speculative`).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import ConfigDict, Field

from ..costs import EAGER
from ..errors import InfeasibleError
from ..modules import Context
from ..specs.workload import OnlineWorkload
from ..units import fmt_bytes
from .base import Plan
from .shared.continuous import ContinuousBatchingEngine, ContinuousPlan, EngineKnobs, _Layout
from .shared.disaggregation import DisaggregationParams
from .shared.speculative import SpeculativeParams
from .shared.engine_step import (EngineRuntime, engine_execution, runtime_constants, vllm_capture_sizes,
                                 with_moe_kernel)
from .shared.memory import activation_bytes
from .shared.parallel import ParallelLayout, rank_context, weight_bytes_per_gpu, world_gpus
from .shared.tensor_parallel import require_tensor_parallel

GIB = 2.0**30

__all__ = ["VLLM", "VLLMParams", "ContinuousPlan", "simulate_online"]


class VLLMParams(DisaggregationParams, SpeculativeParams):
    model_config = ConfigDict(extra="forbid", frozen=True)
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="fraction of each GPU's memory the instance may use (vLLM default 0.9)")
    block_size: int = Field(default=16, ge=1, description="tokens per KV-cache page (vLLM default 16)")
    max_num_seqs: int | None = Field(
        default=None, ge=1, description="most sequences running at once, per DP rank; default vLLM's for the GPU: "
                                        "`vllm serve` (V1) 1024 on GPUs of 70 GiB or more but A100, else 256; V0 256")
    max_num_batched_tokens: int | None = Field(
        default=None, ge=1, description="token budget of one step, decode tokens plus prefill chunks; default vLLM's: "
                                        "with chunked prefill (V1 `vllm serve`) 8192 on GPUs of 70 GiB or more but "
                                        "A100, else 2048; without it (V0) max(max_model_len, 2048)")
    max_model_len: int | None = Field(
        default=None, ge=1, description="longest sequence the engine admits (vLLM --max-model-len); default: the "
                                        "model's context length when the KV pool holds one such sequence (else vLLM "
                                        "refuses to start and says to lower it), the workload's context otherwise")
    cpu_offload_gb: float = Field(
        default=0.0, ge=0, description="GiB of weights per GPU kept in pinned host memory and copied to the GPU "
                                       "every forward pass, not overlapped (vLLM --cpu-offload-gb)")
    chunked_prefill: bool = Field(
        default=True, description="prefill chunks share steps with decodes (V1 / Sarathi); False = vLLM V0's default "
                                  "scheduler: a step is all prefill or all decode, and prefills go first")
    mla_latent_cache: bool = Field(
        default=True, description="MLA models cache the compressed latent (vLLM >= 0.7.1); False = per-head K and V, "
                                  "V zero-padded to the query-key head size, as vLLM's DeepSeek-V2 code did before")
    enforce_eager: bool = Field(
        default=False, description="run every step in eager PyTorch, no CUDA graphs (vLLM --enforce-eager)")
    data_parallel_size: int = Field(
        default=1, ge=1, description="attention data-parallel ranks (vLLM --data-parallel-size); each rank is "
                                     "tensor parallel over gpus / data_parallel_size GPUs with its own scheduler "
                                     "and KV cache; the MoE layers span all ranks")
    enable_expert_parallel: bool = Field(
        default=False, description="shard the experts over all TP x DP GPUs (vLLM --enable-expert-parallel); off: "
                                   "experts tensor parallel over them")
    enable_eplb: bool = Field(default=False, description="expert-parallel load balancer, redundant experts placed "
                                                         "by measured load (vLLM --enable-eplb)")
    num_redundant_experts: int = Field(
        default=0, ge=0, description="extra expert slots holding copies of hot experts (vLLM --eplb-config "
                                     "'{\"num_redundant_experts\": R}'); (experts + R) mod EP = 0; needs --enable-eplb")
    all2all_backend: Literal["allgather_reducescatter", "deepep_high_throughput", "deepep_low_latency"] = Field(
        default="allgather_reducescatter", description="how expert-parallel MoE layers exchange tokens (vLLM "
                                                       "--all2all-backend; default all-gather / reduce-scatter)")
    mxfp4_use_marlin: bool = Field(
        default=False, description="run MXFP4 experts (gpt-oss) on vLLM's Marlin W4A16 MoE kernel (environment "
                                   "VLLM_MXFP4_USE_MARLIN=1) instead of its default, OpenAI's Triton MXFP4 kernel "
                                   "on Hopper; priced from AIConfigurator's Marlin MXFP4 table where the GPU has one")
    num_speculative_tokens: int = Field(
        default=0, ge=0, description="MTP draft tokens per decode step (vLLM --speculative-config "
                                     "'{\"method\": \"deepseek_mtp\", \"num_speculative_tokens\": k}'); 0 = off")


class VLLM(ContinuousBatchingEngine):
    name = "vllm"
    execution_modes = {"prefill": "graph", "decode": "graph"}  # piecewise-graph prefill, full-graph decode (V1)
    summary = ("continuous batching with chunked prefill; weights on the GPU(s), tensor parallel (optionally part in "
               "host memory, copied every pass), paged KV cache on the GPU")
    Params = VLLMParams

    speculative_flag = "--num-speculative-tokens"

    def speculative_steps(self) -> int:
        return self.params.num_speculative_tokens

    @property
    def knobs(self) -> EngineKnobs:
        """The knobs without a platform: the defaults that depend on the GPU (:meth:`knobs_for`) take the values
        vLLM gives a small GPU (and the V0 budget its floor)."""
        p = self.params
        c = self.constants
        budget = p.max_num_batched_tokens or int(c.value("max_num_batched_tokens_chunked_small_gpu" if p.chunked_prefill
                                                          else "max_num_batched_tokens_floor"))
        return EngineKnobs("vLLM", p.max_num_seqs or int(c.value("max_num_seqs")), budget, p.block_size,
                           p.chunked_prefill, "max_num_seqs", p.mla_latent_cache)

    def knobs_for(self, ctx: Context) -> EngineKnobs:
        k = self.knobs
        return EngineKnobs(k.label, self.max_seqs(ctx), self.token_budget(ctx), k.block_size, k.chunked_prefill,
                           k.max_seqs_name, k.mla_latent_cache)

    def large_gpu(self, ctx: Context) -> bool:
        """vLLM V1's test for its larger serving defaults (``EngineArgs`` batch defaults, vLLM PRs 12369, 17073 and
        17885): the device's total memory at least ``large_gpu_min_memory_gib`` and its name not an A100's."""
        c = self.constants
        gpu = ctx.platform.gpu
        excluded = [n.strip().lower() for n in str(c.value("large_gpu_excluded_names")).split(",") if n.strip()]
        return (gpu.memory_bytes >= float(c.value("large_gpu_min_memory_gib")) * GIB
                and not any(n in gpu.name.lower() for n in excluded))

    def max_seqs(self, ctx: Context) -> int:
        """``max_num_seqs`` (per DP rank): the parameter, else vLLM's default: `vllm serve` (V1, chunked prefill)
        1024 on a large GPU (:meth:`large_gpu`), 256 otherwise and in V0."""
        p = self.params
        if p.max_num_seqs is not None:
            return p.max_num_seqs
        c = self.constants
        large = p.chunked_prefill and self.large_gpu(ctx)
        return int(c.value("max_num_seqs_large_gpu" if large else "max_num_seqs"))

    def token_budget(self, ctx: Context) -> int:
        """``max_num_batched_tokens``: the parameter, else vLLM's default: with chunked prefill (V1 `vllm serve`)
        8192 on a large GPU (:meth:`large_gpu`), 2048 otherwise; without it max(max_model_len, 2048), so that a
        whole prompt of max_model_len tokens fits one step."""
        p = self.params
        if p.max_num_batched_tokens is not None:
            return p.max_num_batched_tokens
        c = self.constants
        if p.chunked_prefill:
            return int(c.value("max_num_batched_tokens_chunked" if self.large_gpu(ctx)
                               else "max_num_batched_tokens_chunked_small_gpu"))
        return max(self.max_model_len(ctx), int(c.value("max_num_batched_tokens_floor")))

    def max_model_len(self, ctx: Context) -> int:
        """``max_model_len``: the parameter, else vLLM's default, the model's context length, when vLLM starts with it
        (its KV pool, sized after a profiling pass over max(max_model_len, 2048) tokens without chunked prefill, holds
        one sequence of that length); when it does not, vLLM stops with "The model's max seq len (...) is larger than
        the maximum number of tokens that can be stored in KV cache ... decreasing max_model_len", and the run is
        taken to set it to the workload's context, P + G, as moesim's other vLLM checks assume. With chunked prefill
        the budget does not depend on it and the workload's context is used, as before."""
        p = self.params
        if p.max_model_len is not None:
            return p.max_model_len
        work = ctx.workload.total_context_tokens
        if p.chunked_prefill:
            return work
        full = ctx.model.max_context_tokens
        if full <= work:
            return work
        c = self.constants
        tokens = p.max_num_batched_tokens or max(full, int(c.value("max_num_batched_tokens_floor")))
        key = ("vllm default max_model_len", repr(p))
        return ctx.memo(key, lambda: full if self._memory(ctx, tokens)[1] >= full else work)

    def _memory(self, ctx: Context, tokens: int) -> tuple[float, int]:
        """(activations incl. one offloaded layer's GPU copy, tokens the KV pool holds) with a budget of ``tokens``."""
        p, prm = ctx.platform, self.params
        pl = self._parallel(ctx)
        budget = prm.gpu_memory_utilization * p.gpu.memory_bytes - p.empirical.gpu_memory_reserved_bytes
        per_gpu = weight_bytes_per_gpu(ctx, pl)
        offload = min(prm.cpu_offload_gb * GIB, per_gpu)
        act = activation_bytes(rank_context(ctx, pl.attn_tp), tokens) + offload / ctx.model.num_layers
        # one KV page from the platform-free knobs (knobs_for's budget is what is being resolved here)
        block_bytes = self._block_bytes(ctx, ctx.workload.total_context_tokens, self.knobs)
        blocks = int(max(budget - (per_gpu - offload) - act, 0.0) // block_bytes)
        return act, blocks * prm.block_size

    def runtime(self, ctx: Context) -> EngineRuntime:
        """CUDA-graph decode and piecewise-graph prefill with vLLM's kernels (eager with ``enforce_eager``); the
        per-step CPU work of ``systems_db/vllm.yaml``, overlapped by V1's async scheduler, not by V0's."""
        p = self.params
        c = runtime_constants(self.name)
        if p.enforce_eager:
            return EngineRuntime(self.name, EAGER, EAGER, 0.0, 0.0, False)
        graph = engine_execution("graph")
        backend = with_moe_kernel(self.name, "marlin") if p.mxfp4_use_marlin else self.name
        return EngineRuntime(backend, graph, graph, c["step_cpu_s"], c["step_cpu_per_seq_s"],
                             bool(c["overlap_scheduler"]) and p.chunked_prefill, vllm_capture_sizes(self.max_seqs(ctx)))

    def mixes_steps(self) -> bool:
        """V1 mixes chunked prompts into decode steps; V0 without chunked prefill runs prompts in steps of their own."""
        return self.params.chunked_prefill

    def parallel_layout(self, ctx: Context) -> ParallelLayout:
        """vLLM's layout (docs, "Data Parallel Deployment" and "Expert Parallel Deployment"): the instance's G GPUs
        are data_parallel_size ranks of tensor_parallel_size = G / data_parallel_size GPUs each (moesim's --gpus
        is the instance's GPUs, TP x DP); attention and dense layers are replicated per DP rank; the MoE layers
        form one group of TP x DP GPUs, expert parallel with --enable-expert-parallel, else tensor parallel."""
        p = self.params
        g, dp = world_gpus(ctx.platform), p.data_parallel_size
        if g % dp:
            raise InfeasibleError(
                f"vllm: world size = tensor_parallel_size x data_parallel_size; data_parallel_size {dp} does not "
                f"divide the instance's {g} GPUs (set --gpus to a multiple of {dp})")
        if p.enable_eplb and not p.enable_expert_parallel:
            raise InfeasibleError("vllm: --enable-eplb requires --enable-expert-parallel (vLLM's rule)")
        if p.num_redundant_experts and not p.enable_eplb:
            raise InfeasibleError("vllm: num_redundant_experts > 0 needs --enable-eplb (vLLM's rule: redundant "
                                  "experts are placed by the load balancer)")
        ep = g if p.enable_expert_parallel else 1
        a2a = {"allgather_reducescatter": "allgather", "deepep_high_throughput": "deepep_normal",
               "deepep_low_latency": "deepep_ll"}[p.all2all_backend]
        return ParallelLayout(g, g // dp, dp, g // ep, ep, eplb=p.enable_eplb, a2a=a2a,
                              redundant_experts=p.num_redundant_experts)

    # ---- memory ------------------------------------------------------------------------------
    def _layout(self, ctx: Context) -> _Layout:
        p, prm = ctx.platform, self.params
        pl = self._parallel(ctx)
        require_tensor_parallel(rank_context(ctx, pl.attn_tp), self.name)
        n = p.num_gpus
        ctx_len = self.max_model_len(ctx)
        if ctx_len < ctx.workload.total_context_tokens:
            raise InfeasibleError(f"vLLM: max_model_len={ctx_len} is shorter than the workload's sequences of "
                                  f"{ctx.workload.total_context_tokens} tokens (prompt + generation)")
        tokens = self.token_budget(ctx)
        budget = prm.gpu_memory_utilization * p.gpu.memory_bytes - p.empirical.gpu_memory_reserved_bytes
        per_gpu = weight_bytes_per_gpu(ctx, pl)
        offload = min(prm.cpu_offload_gb * GIB, per_gpu)
        weights_gpu = per_gpu - offload
        # profiled activations, plus the GPU copy of one layer's offloaded weights while it runs
        layers = ctx.model.num_layers
        act = activation_bytes(rank_context(ctx, pl.attn_tp), tokens) + offload / layers
        block_bytes = self._block_bytes(ctx, ctx.workload.total_context_tokens)
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
                    f"activations of a {tokens}-token step with one layer's offloaded weights "
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
                f"{tokens} batched tokens, {fmt_bytes(one_seq)} of KV for one sequence of "
                f"{ctx_len} tokens): short by {fmt_bytes(short)}; {hint}"
            )
        blocks = int((budget - weights_gpu - act) // block_bytes)
        return _Layout(budget, weights_gpu, offload, act, block_bytes, blocks)



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
