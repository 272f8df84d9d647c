"""`ktransformers`: routed experts on the CPU, everything else on the GPU (KTransformers, kvcache-ai).

Where data lives (KTransformers' optimize rules, e.g. ``DeepSeek-V3-Chat.yaml``, ``Mixtral.yaml``:
``KTransformersExperts`` with ``generate_device: cpu``): every routed expert in host memory, run
by the CPU kernels (AMX or AVX-512/AVX2 ``llamafile`` kernels, ``cpu_infer`` threads); attention,
the routers, shared experts, dense FFN layers, embeddings, LM head and the whole KV cache on the GPU
(one GPU; KTransformers' multi-GPU rules place layers on several GPUs, not modelled).
If the GPU-resident part does not fit, the deployment is infeasible; so is it when the routed
experts do not fit in host memory.

One MoE layer, per micro-batch of tokens:
  GPU  attention (projections + core over the GPU KV cache), router
  D2H  hidden states and routing of the micro-batch (tokens x hidden x 2 B)
  CPU  the routed experts (``_cpu_expert_s``): bounded by DRAM bandwidth reading the experts' weights
       (in decode each token reads its own k experts: llamafile's forward_one per token; in prefill
       each activated expert once) and by the kernel's measured FLOP rate, plus a fixed time per call
       in decode
  GPU  shared experts, concurrently with the CPU experts (KTransformers submits the CPU experts
       asynchronously, runs the shared expert, then syncs: ``submit_for_one_decode`` /
       ``sync_for_one_decode`` in ``KDeepseekV3MoE.forward``)
  H2D  the experts' output, added on the GPU before the next layer's attention
so, per layer, T = T_attn + T_d2h + max(T_cpu_experts, T_shared) + T_h2d with one micro-batch.
With ``micro_batches`` m > 1 the batch is split and the GPU runs micro-batch j+1's attention
while the CPU runs micro-batch j's experts (the overlap of KTransformers' expert deferral and of
SGLang+kt-kernel's two-batch overlap); each micro-batch reads its own activated experts, so the
DRAM traffic grows with m. The default (1) is KTransformers' classic schedule: no overlap.

Decode on the GPU (``_graph_gpu``): local_chat captures the whole decode step in one CUDA graph
(``CUDAGraphRunner``, ``use_cuda_graph`` default True), the CPU experts submitted and awaited by host-function
nodes inside it. Its linears are KLinearMarlin (4-bit, 16-row tiles: memory-bound at one token), MLA's kv_b stays
bf16 (the rules exclude it from Marlin; the absorbed bmm's read it whole), the LM head is Marlin from v0.2.2 and bf16
in v0.2.1 (``lm_head_marlin``); and the HF-style modeling code adds about 100 small kernels a layer (RMSNorms of 8
torch ops, RoPE, the gate's top-k, casts, copies), each ``decode_graph_node_s`` (2.1 us, measured on the H200), with
one host round trip (26 us) for the two host-function nodes. Prefill runs eager, priced as before.

Issue (decode of KTransformers' tutorial, V0.2.1 on 2 x Xeon Gold 6454S + RTX 4090, DeepSeek-V3 Q4_K_M): moesim's
decode was 34-49% too fast. From the source of that version: the experts are read from the GGUF as stored (Q4_K_M:
4.82 bits a weight, not int4's 4.0: +20% bytes), each layer's CPU call costs 148 us before its weights stream at 0.78
of the DRAM peak (KTransformers' own llamafile microbenchmark, generation panel), and the GPU step is a graph of
~6,000 small kernels plus the bf16 kv_b and LM head, not eager int4 GEMMs. The held-out decode cells are now 18-32%
too fast; the rest is not found (the benchmark's 64 threads on one socket against the tutorial's one thread per core
is the first suspect).

Batching: ``batch_size`` sequences decode together (balance_serve's ``max_batch_size`` default 4,
"decode count + prefill count in one mini batch"); prompts are prefilled in chunks of
``prefill_chunk_tokens`` (``local_chat``'s ``chunk_prefill_size`` default 8192), experts on the
CPU as in decode.

CPU expert cost: ``costs.cpu_experts``' FLOPs and weight bytes (``gguf_type``: the GGUF's k-quant blocks) on
KTransformers' own kernels at their measured sustained rates (``_cpu_expert_s``, ``systems_db/ktransformers.yaml``): llamafile (local_chat's default rules, every
version; 0.374 of the fp32 SIMD peak per socket, its 6454S MoE microbenchmark) or AMX (v0.3+, 0.289 / 0.237 of the
AMX bf16 / int8 peak above 4 tokens per expert), against the host DRAM roof. Issue 13: pricing V0.2.1's prefill at
0.4 of the AMX int8 peak made it 8-11x too fast against the tutorial's tables; at the llamafile rate the held-out
V0.2.1 prefill cells are within 1-9%.

Sanity check, not a fit (MoE-Gen does not report KTransformers): on C2 (A5000 + EPYC 7453, 512 GB),
prompt 512, decode 256, defaults: Mixtral-8x7B decode 6.9 tok/s, prefill 41 tok/s (CPU FLOP-bound,
AVX2 only); Mixtral-8x22B 2.3 / 13.6; DeepSeek-V2 in bf16 does not fit (attention 17.9 GB + shared
experts 6 GB on a 24 GB GPU; KTransformers runs it quantized); DeepSeek-R1 in fp8 does not fit in host
memory (654 GB of experts). KTransformers' own V0.2.1 tables (validation/published/ktransformers.py, all
held out): decode 18-32% above them, prefill 9% under to 3% over.

Defaults (as deployed, ``systems_db/ktransformers.yaml``): batch 4, one micro-batch, ``cpu_infer`` = 32
threads (local_chat's default; fewer threads than cores scale the CPU's compute roof, not its DRAM
roof), no expert on the GPU (the shipped optimize rules put every routed expert on the CPU).
``--policy best`` runs the expert kernels on every core and picks the batch (4, 16, 64) and micro-batches (1, 2).

Not modelled: experts cached on the GPU (``--kt-num-gpu-experts``); the second copy of the experts that USE_NUMA
keeps per NUMA node (host memory counts one; their bandwidths add); Marlin's group-64 scales (+6% of the GPU
weights) and its 4-bit requantisation of bf16 checkpoints; the per-token sampling and the graph capture that
local_chat times with decode; the Triton MLA kernel's fixed 4 KV splits (32 thread blocks on a 128-SM GPU), which
likely slows long contexts more than the roofline says.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .. import costs
from ..engine import Engine
from ..errors import InfeasibleError
from ..metrics import HostShare
from ..modules import Context
from ..costs.cpu import cpu_experts, gguf_expert_bytes_per_weight
from ..specs import LayerKind
from ..specs.common import BYTES_PER_ELEMENT
from ..units import fmt_bytes
from .base import Plan, ServingSystem, StepSim, full_batches, simpson_decode_time, simulate_pass
from .shared.memory import activation_bytes


class KTransformersParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    batch_size: int | None = Field(default=None, ge=1, description="sequences decoded together (balance_serve "
                                                                   "max_batch_size); None = its default, 4")
    micro_batches: int | None = Field(default=None, ge=1, description="GPU/CPU overlap across micro-batches; None = "
                                                                      "1, no overlap (KTransformers' classic schedule)")
    prefill_chunk_tokens: int = Field(default=8192, ge=1, description="prompt tokens per prefill pass")
    cpu_infer: int | None = Field(default=None, ge=1, description="CPU threads of the expert kernels (--cpu_infer); "
                                                                  "None = local_chat's default, 32")
    cpu_kernel: Literal["llamafile", "amx"] | None = Field(
        default=None, description="CPU expert kernels: llamafile (GGUF; local_chat's default rules, every version) or "
                                  "amx (v0.3+ *-amx rules / kt-kernel AMXINT8/INT4; Intel CPUs with AMX); None = "
                                  "llamafile")
    gguf_type: Literal["q8_0", "q6_k", "q5_k_m", "q4_k_m"] | None = Field(
        default=None, description="llama.cpp file type of the GGUF the routed experts are read from (KExpertsCPU "
                                  "computes on its blocks as stored: Q4_K_M = Q4_K gate/up, Q6_K down in half the "
                                  "layers); None = the scenario's dtype")
    use_cuda_graph: bool = Field(default=True, description="decode replays one CUDA graph per step (local_chat's "
                                                           "use_cuda_graph default); False = eager torch")
    lm_head_marlin: bool = Field(default=True, description="the LM head runs as a 4-bit Marlin linear (the "
                                                           "DeepSeek rules from v0.2.2 on); False = torch in bf16 "
                                                           "(v0.2.1's DeepSeek-V3-Chat.yaml has no lm_head rule)")


class KTransformers(ServingSystem):
    name = "ktransformers"
    Params = KTransformersParams
    searches_policy = True  # best: every core for the experts, the batch and micro-batches that run fastest
    summary = ("small batches; routed experts in host memory run on the CPU, attention, shared experts, dense layers "
               "and the KV cache on the GPU")

    # ---- weights as KTransformers holds them ----------------------------------------------------
    def _kv_b_params(self, ctx: Context) -> int:
        """MLA's kv_b_proj (latent -> per-head K-nope and V): the DeepSeek rules exclude it from KLinearMarlin
        (``^model\\.layers\\.(?!.*self_attn\\.kv_b_proj).*$``), so it stays a torch weight in the model's bf16 and
        decode reads it whole through the absorbed W_UK / W_UV bmm's; 0 for other attention kinds."""
        a = ctx.model.attention
        return a.kv_lora_rank * a.num_heads * (a.qk_nope_head_dim + a.v_head_dim) if a.kind == "mla" else 0

    def _expert_bytes_per_weight(self, ctx: Context) -> float:
        """Bytes a routed-expert weight occupies in host memory: the GGUF's k-quant blocks (``gguf_type``,
        :func:`moesim.costs.cpu.gguf_expert_bytes_per_weight` over the model's MoE layers) or the dtype's."""
        gguf = self.params.gguf_type
        if gguf is None or not ctx.model.moe:
            return ctx.ebytes
        m, c = ctx.model, self.constants
        types = {t: float(c.value(f"ggml_bytes_per_weight_{t}")) for t in ("q4_k", "q5_k", "q6_k", "q8_0")}
        return gguf_expert_bytes_per_weight(gguf, [i for i in range(m.num_layers) if m.is_moe_layer(i)],
                                            m.num_layers, types)

    # ---- memory ------------------------------------------------------------------------------
    def _gpu_bytes(self, ctx: Context, seqs: int, tokens: int) -> dict[str, float]:
        m = ctx.model
        kv_b = self._kv_b_params(ctx)
        head_bytes = m.lm_head_params * (ctx.wbytes if self.params.lm_head_marlin else BYTES_PER_ELEMENT["bf16"])
        return {
            "attention weights": m.num_layers * (ctx.attention_weight_bytes
                                                 + kv_b * (BYTES_PER_ELEMENT["bf16"] - ctx.wbytes)),
            "shared experts, dense FFNs, routers": (m.num_moe_layers * (ctx.shared_weight_bytes + ctx.router_weight_bytes)
                                                    + m.num_dense_layers * ctx.dense_ffn_weight_bytes),
            "embedding + LM head": m.embedding_params * ctx.wbytes + head_bytes,
            "KV cache": seqs * ctx.workload.total_context_tokens * ctx.kv_bytes_per_token(
                ctx.workload.total_context_tokens),
            "activations": activation_bytes(ctx, tokens),
        }

    def _check_memory(self, ctx: Context, seqs: int, tokens: int) -> tuple[float, float]:
        p, m = ctx.platform, ctx.model
        self.refuse_multi_gpu(ctx, "its multi-GPU layer placement is not modelled")
        parts = self._gpu_bytes(ctx, seqs, tokens)
        gpu = sum(parts.values())
        usable = p.usable_gpu_memory_bytes_per_gpu
        if gpu > usable:
            detail = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in parts.items())
            raise InfeasibleError(
                f"ktransformers: the GPU-resident part of {m.name} needs {fmt_bytes(gpu)} ({detail}) for {seqs} "
                f"sequences of {ctx.workload.total_context_tokens} tokens, {fmt_bytes(usable)} usable on "
                f"{p.gpu.name}: short by {fmt_bytes(gpu - usable)}")
        experts = (m.num_moe_layers * m.moe.num_experts * m.expert_params * self._expert_bytes_per_weight(ctx)
                   if m.moe else 0.0)
        if experts > p.usable_host_memory_bytes:
            raise InfeasibleError(
                f"ktransformers: the routed experts need {fmt_bytes(experts)} of host memory, "
                f"{fmt_bytes(p.usable_host_memory_bytes)} usable: short by "
                f"{fmt_bytes(experts - p.usable_host_memory_bytes)}")
        return gpu, experts

    # ---- one forward pass ----------------------------------------------------------------------
    def _cpu_expert_s(self, ctx: Context, tokens: float, threads: int, kernel: str) -> float:
        """CPU time of one MoE layer's routed experts for ``tokens`` tokens, KTransformers' kernels on ``threads``
        ``--cpu_infer`` threads (``cpu_infer - 1`` workers, cpuinfer.h).

        Weights read: a call of fewer than ``llamafile_group_min_len`` tokens (decode) runs llamafile's
        ``forward_one`` per token, each token reading its own k experts (T k experts); longer calls (and the AMX
        backend) read each activated expert once (E[distinct experts]). Bytes per weight: the GGUF's
        (``gguf_type``) or the dtype's.

        The compute roof is the kernel's measured sustained rate (``systems_db/ktransformers.yaml``), per socket,
        scaled by the share of the host's cores the workers use; the DRAM roof is not (a few threads per channel
        saturate it)::

            R = f_kernel x peak_socket x sockets x min(1, workers / cores_host)
            decode (T < group_min_len):  t = t_call + max(F / R, B / (BW_host x f_decode))
            otherwise:                   t = max(F / R, B / (BW_host x eff_cpu_mem))     (costs.cpu_kernel_time_s)

        llamafile: f = 0.374 of the fp32 SIMD peak (its MoE microbenchmark's prefill panel on a Xeon Gold 6454S);
        amx: 0.289 of the AMX BF16 peak or 0.237 of the AMX INT8 peak (21.3 TFLOPS / 35 TOPS per socket,
        doc/en/AMX.md) when an expert gets more than ``amx_min_tokens_per_expert`` tokens, else the AVX-512 path at
        the llamafile rate. Decode: t_call = 148 us a call and f_decode = 0.78 of the DRAM peak, both from the same
        microbenchmark's generation panel (one call per layer: the task queue's hand-off and forward_one's two
        work-stealing jobs); the sockets' bandwidths add (USE_NUMA: a copy of the experts per NUMA node, each
        worker reading its own node's). The AMX backend's decode is priced with the same call time and fraction
        (assumed: it shares CPUInfer's task queue; its AVX-512 decode kernel is not measured apart)."""
        p, c, m = ctx.platform, self.constants, ctx.model
        moe = m.moe
        active = ctx.active_experts(tokens)
        decode = tokens < float(c.value("llamafile_group_min_len"))
        reads = tokens * moe.top_k if decode and kernel == "llamafile" else active
        cost = cpu_experts(m.hidden_size, moe.expert_intermediate_size, reads, tokens * moe.top_k, moe.gated,
                           ctx.edtype, self._expert_bytes_per_weight(ctx))
        workers = max(1, threads - int(c.value("backend_threads_less")))
        share = min(1.0, workers / (p.cpu.cores * p.num_cpus))
        if kernel == "amx" and tokens * moe.top_k / max(active, 1e-9) > float(c.value("amx_min_tokens_per_expert")):
            amx_dtype = "bf16" if cost.dtype == "bf16" else "int8"
            rate = float(c.value(f"amx_fraction_of_peak_{amx_dtype}")) * p.cpu.peak_for(amx_dtype)
        else:
            rate = float(c.value("llamafile_fraction_of_fp32_peak")) * p.cpu.peak_for("fp32")
        if decode:
            bandwidth = p.host_memory_bandwidth_bytes_per_s * float(c.value("llamafile_decode_memory_fraction"))
            call_s = float(c.value("llamafile_decode_call_s"))
        else:
            bandwidth, call_s = p.host_memory_bandwidth_bytes_per_s * ctx.eff.cpu_memory_efficiency, 0.0
        return costs.cpu_kernel_time_s(cost.flop, cost.bytes, rate * p.num_cpus * share, bandwidth, call_s)

    def _graph_gpu(self, ctx: Context, s_mb: float, kv_len: int, seqs: float) -> dict[str, float]:
        """GPU times of a decode step replayed as one CUDA graph (local_chat's ``CUDAGraphRunner``: the whole
        forward captured, the CPU experts submitted and awaited by ``cudaLaunchHostFunc`` nodes inside it), per
        micro-batch of ``s_mb`` sequences at one token each.

        Each weight GEMM is a KLinearMarlin linear, priced as an engine kernel of ``marlin_tile_rows``-row tiles
        (weights streamed at the platform's bf16 GEMM rate, the token's rows padded to a tile); MLA's kv_b stays
        bf16 (read whole by the absorbed bmm's); the LM head is Marlin or bf16 (``lm_head_marlin``). Every other
        torch op of the layer (RMSNorms, RoPE, the gate's top-k, casts, copies, host-function nodes) is a small
        kernel of ``decode_graph_node_s``, counted from v0.2.1's source (``decode_graph_nodes_*``); the two
        host-function nodes of a MoE layer cost one host round trip (``host_function_round_trip_s``)::

            t_part = sum of its GEMMs' rooflines + nodes_part x t_node"""
        c, m = self.constants, ctx.model
        ex = costs.Execution("graph", 0.0, engine_kernels=True, moe_tile_rows=int(c.value("marlin_tile_rows")))
        node = float(c.value("decode_graph_node_s"))

        def nodes(part: str) -> float:
            return int(c.value(f"decode_graph_nodes_{part}")) * node

        def marlin(cost) -> float:  # a Marlin linear: the engines' tiled weight-streaming kernel
            return ctx.gpu_s(cost.with_(family="expert"), ex)

        t = s_mb  # one token per sequence
        proj = ctx.attention_proj(t)
        kv_b = self._kv_b_params(ctx)
        share = kv_b / m.attention_params
        attn = marlin(proj.scaled(1.0 - share)) + nodes("attention")
        if kv_b:
            attn += ctx.gpu_s(costs.attention_projections(kv_b, m.hidden_size, t, "bf16"), ex)
        out = {"attention proj": attn,
               "core": {w: ctx.gpu_s(ctx.attention_core(s_mb, 1, kv_len, w), ex) for w in (False, True)},
               "dense": marlin(ctx.dense_ffn(t)) + nodes("ffn") if m.dense_ffn else 0.0}
        if m.moe:
            shared = ctx.shared_experts(t)
            out["router"] = ctx.gpu_s(ctx.router(t), ex) + nodes("router")
            out["shared"] = (marlin(shared) + nodes("ffn")) if shared else 0.0
            # the copies and adds around the CPU experts, and one host round trip for its two host-function nodes
            out["handoff"] = nodes("handoff") - 2 * node + float(c.value("host_function_round_trip_s"))
        head_cost = costs.lm_head(m.hidden_size, m.vocab_size, seqs, ctx.wdtype if self.params.lm_head_marlin
                                  else "bf16")
        out["head"] = (marlin(head_cost) if self.params.lm_head_marlin else ctx.gpu_s(head_cost, ex)) + nodes("head")
        return out

    def _pass(self, ctx: Context, seqs: float, q_len: int, kv_len: int, gpu_bytes: float, micro_batches: int = 1,
              threads: int = 32, kernel: str = "llamafile") -> StepSim:
        m = ctx.model
        mbs = max(1, min(micro_batches, math.ceil(seqs)))
        s_mb = seqs / mbs
        t_mb = s_mb * q_len
        engine = Engine(memory_capacity_bytes={"gpu": ctx.platform.usable_gpu_memory_bytes_per_gpu})
        hidden_bytes = ctx.hidden_state_bytes(t_mb)
        d2h, h2d = ctx.d2h_s(hidden_bytes), ctx.h2d_s(hidden_bytes)
        if q_len == 1 and self.params.use_cuda_graph:
            g = self._graph_gpu(ctx, s_mb, kv_len, seqs)
            attn, core, dense, head = g["attention proj"], g["core"], g["dense"], g["head"]
            router, shared, combine = g.get("router", 0.0), g.get("shared", 0.0), g.get("handoff", 0.0)
        else:
            attn = ctx.gpu_s(ctx.attention_proj(t_mb))
            core = {w: ctx.gpu_s(ctx.attention_core(s_mb, q_len, kv_len, w)) for w in (False, True)}
            dense = ctx.gpu_s(ctx.dense_ffn(t_mb)) if m.dense_ffn else 0.0
            head = ctx.gpu_s(ctx.head(seqs * q_len, seqs))
            combine = 0.0
            if m.moe:
                router = ctx.gpu_s(ctx.router(t_mb))
                shared_cost = ctx.shared_experts(t_mb)
                shared = ctx.gpu_s(shared_cost) if shared_cost else 0.0
        if m.moe:
            cpu_experts_s = self._cpu_expert_s(ctx, t_mb, threads, kernel)
        done: list[int | None] = [None] * mbs  # per micro-batch: the task that ends its previous layer

        def layer(eng: Engine, i: int, kind: LayerKind) -> int:
            for j in range(mbs):
                last = eng.add(f"L{i} mb{j} attention proj", "gpu", attn, [done[j]], category="attention")
                last = eng.add(f"L{i} mb{j} attention", "gpu", core[kind.windowed], [last], category="attention")
                if not kind.moe:
                    done[j] = eng.add(f"L{i} mb{j} dense ffn", "gpu", dense, [last], category="dense_ffn")
                    continue
                last = eng.add(f"L{i} mb{j} router", "gpu", router, [last], category="router")
                out = eng.add(f"L{i} mb{j} hidden D2H", "d2h", d2h, [last], category="transfer", nbytes=hidden_bytes)
                cpu = eng.add(f"L{i} mb{j} routed experts (CPU)", "cpu", cpu_experts_s, [out], category="experts")
                # the graph's copy, host-function and add nodes around the CPU experts ride with the copy back (on
                # the GPU's queue they would hold the next micro-batch's attention behind this one's CPU experts)
                ends = [eng.add(f"L{i} mb{j} experts out H2D", "h2d", h2d + combine, [cpu], category="transfer",
                                nbytes=hidden_bytes)]
                if shared:
                    ends.append(eng.add(f"L{i} mb{j} shared experts", "gpu", shared, [last], category="experts"))
                done[j] = ends[0] if len(ends) == 1 else max(ends, key=eng.end_of)
            return max((d for d in done if d is not None), key=eng.end_of)

        def prologue(eng: Engine) -> None:
            eng.hold("gpu", gpu_bytes, "attention, shared/dense weights, embeddings, KV cache, activations")

        def epilogue(eng: Engine) -> None:
            eng.add("lm head + embedding", "gpu", head, [d for d in done if d is not None], category="head")

        return simulate_pass(ctx, engine, layer, prologue, epilogue)

    def plan(self, ctx: Context) -> Plan:
        """As deployed: balance_serve's ``max_batch_size`` (4), one micro-batch, local_chat's 32 expert threads and
        its default optimize rules' llamafile kernels (``systems_db/ktransformers.yaml``), every routed expert in
        host memory (the shipped optimize rules); ``--policy best``: every core, the AMX kernels where the CPU has
        AMX, and the batch (4 to 64, what GPU memory allows) and micro-batches (1, 2) that run fastest (the
        as-deployed choice among them)."""
        c, prm = self.constants, self.params
        threads = prm.cpu_infer or int(c.value("cpu_infer_default"))
        batch = prm.batch_size or int(c.value("max_batch_size_default"))
        mbs = prm.micro_batches or 1
        kernel = prm.cpu_kernel or str(c.value("cpu_kernel_default"))
        deployed = self._plan(ctx, batch, mbs, threads, kernel)
        if self.policy != "best":
            return deployed
        p = ctx.platform
        threads = prm.cpu_infer or max(threads, p.cpu.cores * p.num_cpus)
        kernel = prm.cpu_kernel or ("amx" if "amx" in p.cpu.isa else kernel)
        plans = [deployed]
        for b in ([prm.batch_size] if prm.batch_size else (4, 16, 64)):
            for m in ([prm.micro_batches] if prm.micro_batches else (1, 2)):
                try:
                    plans.append(self._plan(ctx, b, m, threads, kernel))
                except InfeasibleError:
                    continue
        return min(plans, key=lambda plan: plan.total_time_s)

    def _plan(self, ctx: Context, batch_size: int, micro_batches: int, threads: int, kernel: str) -> Plan:
        w, prm = ctx.workload, self.params
        if kernel == "amx" and "amx" not in ctx.platform.cpu.isa:
            raise InfeasibleError(f"ktransformers: cpu_kernel=amx needs a CPU with AMX; {ctx.platform.cpu.name} has "
                                  f"{', '.join(ctx.platform.cpu.isa) or 'no listed vector ISA'} (use llamafile)")
        P, G = w.prompt_tokens, w.gen_tokens
        # full batches of B, then a last, partial one charged for what it holds (as every system splits requests)
        batch, num_batches, rest = full_batches(w.num_requests, w.batch_size or batch_size)
        chunk = min(prm.prefill_chunk_tokens, batch * P)
        gpu_bytes, expert_bytes = self._check_memory(ctx, batch, max(chunk, batch))

        def run(seqs: int) -> tuple[StepSim, int, float, list]:
            ch = min(prm.prefill_chunk_tokens, seqs * P)
            pre = self._pass(ctx, ch / P, P, P, gpu_bytes, micro_batches, threads, kernel)
            dec, pts = simpson_decode_time(
                lambda c: self._pass(ctx, seqs, 1, c, gpu_bytes, micro_batches, threads, kernel), P, G)
            return pre, math.ceil(seqs * P / ch), dec, pts

        prefill, passes, decode_s, points = run(batch)
        last_s = None
        if rest:
            last_pre, last_passes, last_dec, _ = run(rest)
            last_s = last_pre.time_s * last_passes + last_dec
        mbs = max(1, min(micro_batches, batch))
        notes = [f"routed experts on the CPU ({ctx.platform.cpu.name}, {threads} threads, {kernel} kernels), {mbs} "
                 "micro-batch(es) "
                 "per step" + ("" if mbs > 1 else ": GPU and CPU work alternate, only the shared experts overlap "
                                                  "the CPU")]
        return self.make_plan(
            (batch, num_batches), (prefill, passes, chunk), (decode_s, points),
            config={"batch_size": batch, "micro_batches": mbs, "prefill_chunk_tokens": chunk, "cpu_infer": threads,
                    "cpu_kernel": kernel, **({"gguf_type": prm.gguf_type} if prm.gguf_type else {})},
            host_mem_bytes=expert_bytes, notes=notes,
            placement={"weights": "routed experts in host memory (CPU compute); the rest on the GPU",
                       "kv_cache": "gpu"},
            host_decode=HostShare(routed_experts=True), host_prefill=HostShare(routed_experts=True),
            last_batch_time_s=last_s)
