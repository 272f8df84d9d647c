"""`llama-cpp`: layers split between GPU and CPU, small batches (llama.cpp, ggml-org/llama.cpp).

Defaults (as deployed: llama-server of a current release, ``systems_db/llama-cpp.yaml``): ``-np`` auto, 4
slots sharing one KV cache of ``-c 0`` = the model's trained context; ``--fit on`` (PR #16653): if the model
and that context do not fit the GPU with a 1 GiB margin, the context shrinks to 4096 tokens (never below what
the slots hold, in moesim), then every MoE layer goes to the GPU "dense-only" - attention, router, shared
experts there, its routed experts in host memory, run by the CPU (or uploaded by op offload for a prompt
ubatch) - and layers are made whole again front to back while they fit; if even dense-only layers do not all
fit, the first layers leave the GPU whole. ``fit=False`` is the placement of releases before ``--fit``
(MoE-Gen's comparison, early 2025): whole layers, ``n_gpu_layers`` of them or the most that fit, with
``n_parallel`` set (1 then: ``llama-cli`` and the server's old default). ``--policy best`` tries 1 to 256
slots with both placements.

Where data lives (``-ngl N``, llama.cpp ``llama_model::load_tensors``): the last N repeating
layers and their KV cache on the GPU(s) (``--split-mode layer``: whole layers spread over the GPUs,
run one after the other), the other layers and their KV cache in host memory, the token embedding
always on the CPU, the output layer (LM head) on the GPU only when every repeating layer is
there. N is the most whole layers whose weights + KV (``n_ctx = n_parallel (P + G)`` tokens) fit
next to the compute buffer (activations of one ubatch, fp32) and, when some layers stay on the CPU
and op offload is on, a staging copy of one layer's weights (see prefill); ``n_gpu_layers`` forces N.

With mmap (llama.cpp's default), CPU-side weights stay in the page cache of the model file
(pageable memory: the loader drops the pinned host buffer, "avoid using a host buffer when using
mmap"); a model larger than host memory still runs, the part that does not fit being read from
disk when touched. Under uniform access the page-cache miss rate is the non-resident fraction
f = max(0, W_cpu - (M_host - KV_cpu)) / W_cpu, so a CPU layer reading b weight bytes also reads
f b from disk, before computing (a page fault blocks the thread).

One forward pass runs layer by layer, nothing overlaps (ggml graph on one stream):
  embedding (CPU) -> CPU layers -> hidden state H2D (fp32, tokens x hidden x 4 B) -> GPU layers
  -> LM head (GPU, or CPU after a D2H when some layers are on the CPU)
A CPU layer costs ``ctx.cpu_s`` of its modules (roofline: DRAM bandwidth and CPU FLOPs): the
attention projections, attention over the host KV cache, router, the expected distinct activated
experts of the batch, shared experts or the dense FFN; a GPU layer ``ctx.gpu_s`` of the same in native execution
with ggml-cuda's own kernels (launched from C++, each paying ``kernel_launch_s``; quantized weights dequantised
inside mmvq/mmq; one-token ubatches replayed as a CUDA graph on Ampere+; mmq's tile width, one per MUL_MAT_ID
from the ubatch's tokens, pads each expert's rows: ``_execution``, ``_mmq_tile_rows``).

Op offload (ggml-backend scheduler, ``GGML_OP_OFFLOAD_MIN_BATCH`` = 32; ``--no-op-offload``): a
matrix product over at least 32 tokens whose weights are in host memory is computed on the GPU
after copying the weights there, every ubatch (only the experts the ubatch uses, which for a
512-token ubatch is all of them). So prefill of a CPU layer is: H2D of its weights (pageable
bandwidth with mmap, pinned without), its KV for the ubatch's context, then the GPU computes it.
Decode batches below 32 tokens run CPU layers on the CPU.

Batching: ``n_parallel`` slots decode together (llama-server ``-np``; one unified batch per step);
prompts are processed in ubatches of ``ubatch_tokens`` (``-ub``, default 512). The default is one
slot: llama.cpp's long-standing default (``llama-cli``, ``llama-server --parallel 1``), and what
MoE-Gen's llama.cpp numbers imply (Table 6, Mixtral-8x22B on C2 at 2 tok/s: about one token per
pass over the CPU-resident active weights read at DRAM speed; Table 4 GSM8K, 374 h for 8.5K x 256
tokens, is the same rate).

Sanity check, not a fit (MoE-Gen arXiv 2503.09716, Tables 6/7, testbed C2: RTX A5000 24 GB, EPYC
7453 (204.8 GB/s DDR4, AVX2), 512 GiB, PCIe 4.0; prompt 512, decode 256), defaults, Mixtral-8x7B /
Mixtral-8x22B / DeepSeek-V2 / DeepSeek-R1: n_gpu_layers 6 / 3 / 1 / 0; decode 6.5 / 1.9 / 3.4 / 0.7
tok/s (published 4 / 2 / 1 / 0.9); prefill 66 / 19 / 11 / 5.6 tok/s (published 328 / 110 / 23 / 6).
Decode is the CPU layers' active weights read at 0.7 x 204.8 GB/s (R1: 22 % of its weight reads
miss the page cache and come from the NVMe disk). Prefill is the op-offload upload of the CPU
layers' weights every 512-token ubatch at the link's pageable bandwidth (10 GB/s in hardware_db,
itself an assumed 40 % of pinned); without mmap (pinned, 25 GB/s) it is 160 / 46 / 26 tok/s and R1
no longer fits in host memory. The remaining 2x on Mixtral prefill needs about 50 GB/s of upload or
half the bytes (an 8-bit GGUF); MoE-Gen states neither llama.cpp's model format nor its flags.
DeepSeek-V2 decode is 3x the published rate; the bandwidth roof explains the other three models
within 1.6x, so that gap is left as is (bf16 kernels on a CPU without bf16 arithmetic are one
candidate the default CPU efficiency does not capture).

DeepSeek's KV cache (``mla_latent_cache``): llama.cpp caches MLA's compressed latent since PR #12801 (April 2025,
the default here); before it, its deepseek2 graph up-projected the new tokens' K and V with ``wkv_b`` and cached
them per head, K of qk_nope + qk_rope and V of v_head_dim elements for each of the 128 heads (DeepSeek-V2:
60 x 128 x 320 x 2 B = 4.9 MB a token in f16, against the latent's 69 KB), and attention read that cache
(``_per_head_attention``). MoE-Gen's comparison ran that llama.cpp: with it DeepSeek-V2 decodes at 3.2 / 3.1
tok/s for d = 256 / 1024 (published 1 / 0.3); a cache read at DRAM speed adds 35 ms a step at a 1024-token context,
where the published fall needs 6.1 ms per context token.

Not modelled: quantized GGUF types other than the dtype given (DeepSeek's fp8 stands in for Q8_0,
8.5 bits), llama.cpp's repacked CPU kernels, per-GPU bin packing of layers, prompt caching.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field

from .. import costs
from ..engine import Engine
from ..errors import InfeasibleError
from ..metrics import HostShare
from ..modules import Context
from ..specs import AttentionSpec, LayerKind
from ..specs.common import BYTES_PER_ELEMENT
from ..units import fmt_bytes
from .base import Plan, ServingSystem, StepSim, full_batches, simpson_decode_time, simulate_layers, step_sim
from .shared.memory import activation_bytes

#: ggml's CUDA backend: kernels launched from C++, and its own quantized matmul kernels (mmvq / mmq, also behind
#: MUL_MAT_ID for all experts of a layer at once): the weights are dequantised inside the kernel and no per-expert
#: host loop or torch grouped-GEMM ramp exists (``engine_kernels``, :mod:`moesim.costs.execution`)
NATIVE = costs.Execution("native", engine_kernels=True)


def _mmq_tile_rows(tokens: float, constants) -> int:
    """Rows (tokens) of one tile of ggml-cuda's expert matmul for a ubatch of ``tokens`` tokens. Up to
    ``mmvq_max_batch`` tokens the vector kernel (mmvq) runs: no tile, each expert's rows computed as they are (1).
    Above it mmq runs every expert with one tile width mmq_x, chosen for the whole MUL_MAT_ID from ``ncols_max`` =
    the ubatch's tokens (mmq.cuh ``mul_mat_q_case``: the smallest multiple of 8 - of 16 from 48 on, with tensor
    cores - that covers them in one tile, at most ``mmq_x_max``), so an expert with r rows computes ceil(r / mmq_x)
    full tiles."""
    if tokens <= int(constants.value("mmvq_max_batch")):
        return 1
    top = int(constants.value("mmq_x_max"))
    for x in range(8, top + 1, 8):
        if (x < 48 or x % 16 == 0) and x >= tokens:
            return x
    return top


def _execution(ctx: Context, tokens: float, constants) -> costs.Execution:
    """How ggml-cuda runs a pass of ``tokens`` tokens: a CUDA graph when the batch is one token on a GPU of
    Ampere or later (ggml-cuda.cu ``check_node_graph_compatibility``: graphs are disabled for batch size > 1 - an
    ADD with src1 of more than one row, a MUL_MAT_ID with ne[2] != 1 - and below Ampere), else kernels launched
    one by one from C++; each kernel of a graph adds the replay gap ``graph_kernel_gap_s``. The expert matmul's
    tile is :func:`_mmq_tile_rows`."""
    archs = set(constants.names("cuda_graph_architectures"))
    tile = _mmq_tile_rows(tokens, constants)
    if tokens <= 1 and ctx.platform.gpu.architecture in archs:
        return costs.Execution("graph", float(constants.value("graph_kernel_gap_s")), engine_kernels=True,
                               moe_tile_rows=tile)
    return costs.Execution("native", engine_kernels=True, moe_tile_rows=tile)


class LlamaCppParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    n_gpu_layers: int | None = Field(default=None, ge=0,
                                     description="repeating layers on the GPU (-ngl), whole layers; None = what --fit "
                                                 "chooses (or, with fit off, the most whole layers that fit)")
    n_parallel: int | None = Field(default=None, ge=1, description="sequences decoded together (llama-server -np); "
                                                                   "None = llama-server's auto (4 slots)")
    fit: bool = Field(default=True, description="llama.cpp's --fit (on by default since b7xxx, PR #16653): shrink the "
                                                "context toward fit_ctx_tokens, then keep dense weights on the GPU and "
                                                "move MoE experts to host memory until the rest fits; off = whole "
                                                "layers on the GPU, n_gpu_layers of them (releases before --fit)")
    ctx_tokens: int | None = Field(default=None, ge=1, description="KV cache size (-c), tokens shared by the slots; "
                                                                   "None = the model's trained context (-c 0)")
    ubatch_tokens: int = Field(default=512, ge=1, description="physical batch of prompt processing (-ub)")
    op_offload: bool = Field(default=True, description="compute CPU-resident weights on the GPU for batches of "
                                                       ">= op_offload_min_batch tokens, copying them every ubatch")
    op_offload_min_batch: int = Field(default=32, ge=1, description="GGML_OP_OFFLOAD_MIN_BATCH")
    use_mmap: bool = Field(default=True, description="CPU weights in the mmap'd file (pageable; may exceed host "
                                                     "memory) rather than pinned buffers (--no-mmap)")
    mla_latent_cache: bool = Field(
        default=True, description="MLA models (DeepSeek) cache the compressed latent and attend over it (llama.cpp PR "
                                  "#12801, April 2025); False = the deepseek2 graph before it: K and V up-projected "
                                  "for the new tokens and cached per head (all heads' qk_nope + qk_rope keys and v "
                                  "values, DeepSeek-V2: 4.9 MB a token in f16), attention over that cache")


class LlamaCpp(ServingSystem):
    name = "llama-cpp"
    execution_modes = {"prefill": "native", "decode": "native"}
    searches_policy = True
    Params = LlamaCppParams
    summary = ("llama-server's n_parallel slots (4); --fit: MoE layers on the GPU without their routed experts "
               "(host memory, run by the CPU), whole layers while they fit; each layer's KV cache with its attention")

    # ---- placement ----------------------------------------------------------------------------
    def _layer_bytes(self, ctx: Context, i: int) -> float:
        m = ctx.model
        if m.is_moe_layer(i):
            return (ctx.attention_weight_bytes + m.moe.num_experts * ctx.expert_weight_bytes + ctx.shared_weight_bytes
                    + m.router_params * ctx.wbytes)
        return ctx.attention_weight_bytes + ctx.dense_ffn_weight_bytes

    def _per_head_attention(self, ctx: Context) -> AttentionSpec | None:
        """The attention llama.cpp computes over a per-head K/V cache (an MLA model with ``mla_latent_cache`` off:
        its deepseek2 graph before PR #12801 up-projected K and V for the new tokens with ``wkv_b`` and cached
        them, ``llm_build_kv``), as an equivalent multi-head attention, else None (the model's own attention).

        Each of the H heads caches a key of d_qk = qk_nope + qk_rope and a value of d_v elements, and attention
        reads them all: c = H (d_qk + d_v) cached elements a token per layer (DeepSeek-V2: 128 x (192 + 128) =
        40960, 4.9 MB a token over 60 layers in f16) and 2 H span (d_qk + d_v) FLOPs per query, which an MHA of
        H heads of (d_qk + d_v) / 2 has too (rounded up when the sum is odd)."""
        a = ctx.model.attention
        if a.kind != "mla" or self.params.mla_latent_cache:
            return None
        return ctx.memo(("llama-cpp per-head MLA cache",), lambda: AttentionSpec(
            kind="mha", num_heads=a.num_heads, num_kv_heads=a.num_heads,
            head_dim=math.ceil((a.qk_head_dim + a.out_head_dim) / 2), window_kind=a.window_kind,
            window_tokens=a.window_tokens, window_layer_pattern=a.window_layer_pattern))

    def _kv_token_layer_bytes(self, ctx: Context) -> float:
        """KV-cache bytes of one token in one layer as llama.cpp caches it (:meth:`_per_head_attention`)."""
        spec = self._per_head_attention(ctx)
        if spec is None:
            return ctx.kv_bytes_per_token_layer()
        return spec.kv_elements_per_token() * BYTES_PER_ELEMENT[ctx.options.kv_dtype]

    def _kv_layer_bytes(self, ctx: Context, i: int, seqs: int) -> float:
        a = ctx.model.attention
        span = ctx.workload.total_context_tokens
        if a.is_windowed(i) and a.window_tokens:
            span = min(span, a.window_tokens)
        return seqs * span * self._kv_token_layer_bytes(ctx)

    def _expert_layer_bytes(self, ctx: Context, i: int) -> float:
        """The routed experts' weights of layer ``i`` (what --fit moves to host memory first)."""
        m = ctx.model
        return m.moe.num_experts * ctx.expert_weight_bytes if m.is_moe_layer(i) else 0.0

    def _placement(self, ctx: Context, seqs: int) -> dict:
        """Where every layer lives: the last ``ngl`` repeating layers on the GPU, the first ``full`` of those whole
        and the others dense-only (attention, router, shared experts on the GPU, routed experts in host memory:
        --fit's MoE placement); the layout's bytes on each side and the page-cache miss rate.

        With --fit (:meth:`_fit`), else whole layers: ``n_gpu_layers``, or the most whole layers that fit."""
        p, m, prm = ctx.platform, ctx.model, self.params
        L = m.num_layers
        cap = p.num_gpus * p.usable_gpu_memory_bytes_per_gpu
        layer = [self._layer_bytes(ctx, i) for i in range(L)]
        experts = [self._expert_layer_bytes(ctx, i) for i in range(L)]
        span = ctx.workload.total_context_tokens
        need_tokens = seqs * span
        n_ctx = prm.ctx_tokens or (m.max_context_tokens if prm.fit else need_tokens)
        if n_ctx < need_tokens:
            raise InfeasibleError(f"llama-cpp: a KV cache of {n_ctx} tokens (-c) cannot hold {seqs} slots of "
                                  f"{span} tokens; give ctx_tokens >= {need_tokens}")
        head = m.lm_head_params * ctx.wbytes
        c = self.constants
        logits = prm.ubatch_tokens * m.vocab_size * BYTES_PER_ELEMENT[c.value("logits_dtype")]
        # each GPU holds a compute buffer of one ubatch's whole activations, in ggml's dtype (fp32)
        compute = activation_bytes(ctx, prm.ubatch_tokens, c.value("activation_dtype"), shards=1) * p.num_gpus + logits

        def kv(i: int, tokens: int) -> float:
            """KV bytes of layer i for a cache of ``tokens`` (a sliding-window layer keeps a window per slot)."""
            a = ctx.model.attention
            if a.is_windowed(i) and a.window_tokens:
                tokens = min(tokens, seqs * min(span, a.window_tokens))
            return tokens * self._kv_token_layer_bytes(ctx)

        def need(k: int, full: int, out_gpu: bool, tokens: int) -> float:
            """GPU bytes with the last k layers there, the first ``full`` of them whole, the others dense-only,
            plus (op offload) a staging copy of the largest host-resident part of a layer."""
            first = L - k

            def host_part(i: int) -> float:
                return layer[i] if i < first else experts[i] if i - first >= full else 0.0

            weights = sum(layer[i] - host_part(i) for i in range(first, L))
            staged = max(host_part(i) for i in range(L)) if prm.op_offload else 0.0
            return (weights + sum(kv(i, tokens) for i in range(first, L)) + compute + (head if out_gpu else 0.0)
                    + staged)

        notes: list[str] = []
        if prm.n_gpu_layers is not None:
            k = min(prm.n_gpu_layers, L)
            ngl, full, out_gpu = k, k, prm.n_gpu_layers > L
            if prm.fit and prm.ctx_tokens is None and need(ngl, full, out_gpu, n_ctx) > cap:
                # --fit still sets what the user left unset: the context, down to fit_ctx_tokens
                small = max(min(n_ctx, int(self.constants.value("fit_ctx_tokens"))), need_tokens)
                if small < n_ctx:
                    notes.append(f"--fit: context reduced from {n_ctx} to {small} tokens")
                    n_ctx = small
            if need(ngl, full, out_gpu, n_ctx) > cap:
                raise InfeasibleError(
                    f"llama-cpp: n_gpu_layers={prm.n_gpu_layers} needs {fmt_bytes(need(ngl, full, out_gpu, n_ctx))} of "
                    f"GPU memory (layer weights, their KV for {n_ctx} tokens, compute buffer), {fmt_bytes(cap)} "
                    f"usable on {p.num_gpus} x {p.gpu.name}: short by "
                    f"{fmt_bytes(need(ngl, full, out_gpu, n_ctx) - cap)}")
        elif prm.fit:
            ngl, full, out_gpu, n_ctx = self._fit(ctx, need, cap, n_ctx, need_tokens, notes)
        else:
            options = [(L, True), (L, False)] + [(k, False) for k in range(L - 1, -1, -1)]
            first_fit = next((o for o in options if need(o[0], o[0], o[1], n_ctx) <= cap), None)
            if first_fit is None:
                raise InfeasibleError(
                    f"llama-cpp: not even the compute buffer fits on the GPU: {fmt_bytes(need(0, 0, False, n_ctx))} "
                    f"needed, {fmt_bytes(cap)} usable: short by {fmt_bytes(need(0, 0, False, n_ctx) - cap)}")
            (ngl, out_gpu), full = first_fit, first_fit[0]
        gpu_first = L - ngl
        cpu_weights = (sum(layer[:gpu_first]) + sum(experts[gpu_first + full:]) + m.embedding_params * ctx.wbytes
                       + (0.0 if out_gpu else head))
        cpu_kv = sum(kv(i, n_ctx) for i in range(gpu_first))
        usable = p.usable_host_memory_bytes
        if cpu_kv > usable:
            raise InfeasibleError(
                f"llama-cpp: the KV cache of the {gpu_first} CPU layers needs {fmt_bytes(cpu_kv)} of host memory, "
                f"{fmt_bytes(usable)} usable: short by {fmt_bytes(cpu_kv - usable)}")
        resident = min(cpu_weights, usable - cpu_kv)
        if cpu_weights > resident and not prm.use_mmap:
            raise InfeasibleError(
                f"llama-cpp (no mmap): the CPU layers' weights need {fmt_bytes(cpu_weights)} of host memory next to "
                f"{fmt_bytes(cpu_kv)} of KV, {fmt_bytes(usable)} usable: short by "
                f"{fmt_bytes(cpu_weights + cpu_kv - usable)}")
        if cpu_weights - resident > p.disk.capacity_bytes:
            raise InfeasibleError(f"llama-cpp: {fmt_bytes(cpu_weights - resident)} of weights exceed host memory "
                                  f"and the disk ({fmt_bytes(p.disk.capacity_bytes)})")
        return {
            "ngl": ngl, "full": full, "out_gpu": out_gpu, "n_ctx": n_ctx, "gpu_bytes": need(ngl, full, out_gpu, n_ctx),
            "cpu_weights": cpu_weights, "cpu_kv": cpu_kv, "host_resident": resident + cpu_kv,
            "miss": (cpu_weights - resident) / cpu_weights if cpu_weights else 0.0, "notes": notes,
        }

    def _fit(self, ctx: Context, need: Callable, cap: float, n_ctx: int, need_tokens: int,
             notes: list[str]) -> tuple[int, int, bool, int]:
        """llama.cpp's --fit (``common_params_fit``, PR #16653): keep ``fit_target_bytes`` free on the GPU; if the
        whole model and its context do not fit, shrink the context to ``fit_ctx_tokens`` (never below what the
        slots hold); then, for an MoE, put every layer on the GPU dense-only (routed experts in host memory) and
        make them whole again front to back while they fit; if even dense-only layers do not all fit, the first
        layers leave the GPU. Returns (GPU layers, whole ones among them, output layer on the GPU, context)."""
        L = ctx.model.num_layers
        c = self.constants
        room = cap - ctx.platform.num_gpus * float(c.value("fit_target_bytes"))
        if need(L, L, True, n_ctx) <= room:
            return L, L, True, n_ctx
        small = max(min(n_ctx, int(c.value("fit_ctx_tokens"))), need_tokens)
        if small < n_ctx:
            notes.append(f"--fit: context reduced from {n_ctx} to {small} tokens")
            n_ctx = small
        if need(L, L, True, n_ctx) <= room:
            return L, L, True, n_ctx
        if ctx.model.moe and need(L, 0, True, n_ctx) <= room:
            full = max(f for f in range(L + 1) if need(L, f, True, n_ctx) <= room)
            notes.append(f"--fit: {L - full} dense-only layers (routed experts in host memory) and {full} whole "
                         "layers on the GPU")
            return L, full, True, n_ctx
        dense = 0 if ctx.model.moe else None
        for k in range(L - 1, -1, -1):
            if need(k, k if dense is None else 0, False, n_ctx) <= room:
                notes.append(f"--fit: {k} of {L} layers on the GPU" + (" (dense-only)" if dense == 0 else ""))
                return k, k if dense is None else 0, False, n_ctx
        raise InfeasibleError(
            f"llama-cpp: not even the compute buffer fits on the GPU next to --fit's margin: "
            f"{fmt_bytes(need(0, 0, False, n_ctx))} needed, {fmt_bytes(room)} usable")

    # ---- one forward pass ------------------------------------------------------------------------
    @staticmethod
    def _runs(ctx: Context, ngl: int, full: int) -> tuple[tuple[tuple[str, LayerKind], int], ...]:
        """((device, layer kind), count) of each run of consecutive layers alike, in layer order: the last ``ngl``
        layers on the GPU, the first ``full`` of those whole ("gpu"), the others dense-only ("dense": routed
        experts in host memory), the rest "cpu" (a function of the model, ``ngl`` and ``full``: kept on the
        context)."""
        def build() -> tuple:
            m, L = ctx.model, ctx.model.num_layers
            runs: list[list] = []
            for i in range(L):
                moe = m.is_moe_layer(i)
                dev = "cpu" if i < L - ngl else "gpu" if i - (L - ngl) < full or not moe else "dense"
                key = (dev, LayerKind(moe, m.attention.is_windowed(i)))
                if runs and runs[-1][0] == key:
                    runs[-1][1] += 1
                else:
                    runs.append([key, 1])
            return tuple((key, count) for key, count in runs)

        return ctx.memo(("llama-cpp layer runs", ngl, full), build)

    def _layer_tasks(self, ctx: Context, lay: dict, seqs: float, q_len: int,
                     kv_len: int) -> Callable[[tuple[str, LayerKind]], list[tuple]]:
        """The tasks of one layer of a pass, by (device, layer kind): (name, resource, seconds, category,
        bytes) in submission order, worked out once per key (every layer of a run repeats them)."""
        m, prm = ctx.model, self.params
        tokens = seqs * q_len
        offload = prm.op_offload and tokens >= prm.op_offload_min_batch
        upload_path = "pageable" if prm.use_mmap else "pinned"  # mmap'd pages: the driver stages them
        per_head = self._per_head_attention(ctx)
        kv_dtype = ctx.options.kv_dtype
        if per_head is None:
            attn = {w: ctx.attention_core(seqs, q_len, kv_len, w) for w in (False, True)}
        else:  # over the per-head cache: no latent to absorb or re-expand
            attn = {w: costs.attention_core(per_head, seqs, q_len, kv_len, True, kv_dtype, w) for w in (False, True)}

        execution = _execution(ctx, tokens, self.constants)

        def gpu_native(cost) -> float:  # ggml's CUDA backend: C++ launches (or a CUDA graph), its own kernels
            return ctx.gpu_s(cost, execution)
        cpu_attn = {w: (ctx.cpu_attention(seqs, kv_len, w) if per_head is None
                        else costs.cpu_attention(per_head, seqs, 1, kv_len, kv_dtype, w)) if q_len == 1 else attn[w]
                    for w in (False, True)}
        active = ctx.active_experts(tokens) if m.moe else 0.0
        proj = ctx.attention_proj(tokens)
        moe_mods, cpu_experts = [], None
        if m.moe:
            moe_mods = [("router", ctx.router(tokens), "router"),
                        ("experts", ctx.experts(active, tokens * m.moe.top_k), "experts")]
            cpu_experts = costs.cpu_experts(m.hidden_size, m.moe.expert_intermediate_size, active,
                                            tokens * m.moe.top_k, m.moe.gated, ctx.edtype)
            shared = ctx.shared_experts(tokens)
            if shared:
                moe_mods.append(("shared experts", shared, "experts"))
        dense_mods = [("dense ffn", ctx.dense_ffn(tokens), "dense_ffn")] if m.dense_ffn else []
        read = {True: ctx.attention_weight_bytes + active * ctx.expert_weight_bytes + ctx.shared_weight_bytes
                + (m.router_params * ctx.wbytes if m.moe else 0.0),
                False: ctx.attention_weight_bytes + ctx.dense_ffn_weight_bytes}
        kv_bytes = seqs * kv_len * self._kv_token_layer_bytes(ctx)
        expert_read = active * ctx.expert_weight_bytes
        hidden_bytes = tokens * m.hidden_size * BYTES_PER_ELEMENT[self.constants.value("activation_dtype")]

        def dense_only(kind: LayerKind) -> list[tuple]:
            """A layer whose routed experts stay in host memory (--fit): attention, router and shared experts on
            the GPU; the experts on the CPU (hidden state there and back), or, with op offload, uploaded and run on
            the GPU."""
            g = gpu_native
            out = [("attn proj", "gpu", g(proj), "attention", 0.0),
                   ("attention", "gpu", g(attn[kind.windowed]), "attention", 0.0)]
            mods = dict((name, cost) for name, cost, _ in moe_mods)
            out.append(("router", "gpu", g(mods["router"]), "router", 0.0))
            if offload:
                out.append(("experts H2D (op offload)", "h2d", ctx.copy_s(expert_read, upload_path), "transfer",
                            expert_read))
                out.append(("experts", "gpu", g(mods["experts"]), "experts", 0.0))
            else:
                out.append(("hidden state D2H", "d2h", ctx.d2h_s(hidden_bytes), "transfer", hidden_bytes))
                if lay["miss"] > 0:
                    miss = expert_read * lay["miss"]
                    out.append(("page faults (experts from disk)", "disk", ctx.disk_s(miss), "transfer", miss))
                out.append(("experts (CPU)", "cpu", ctx.cpu_s(cpu_experts), "experts", 0.0))
                out.append(("expert output H2D", "h2d", ctx.h2d_s(hidden_bytes), "transfer", hidden_bytes))
            if "shared experts" in mods:
                out.append(("shared experts", "gpu", g(mods["shared experts"]), "experts", 0.0))
            return out

        def build(dev: str, kind: LayerKind) -> list[tuple]:
            if dev == "dense":
                return dense_only(kind)
            out = []
            if dev == "cpu" and lay["miss"] > 0:
                miss = read[kind.moe] * lay["miss"]
                out.append(("page faults (weights from disk)", "disk", ctx.disk_s(miss), "transfer", miss))
            if dev == "cpu" and offload:  # op offload: upload the weights, compute on the GPU
                out.append(("weights H2D (op offload)", "h2d", ctx.copy_s(read[kind.moe], upload_path),
                            "transfer", read[kind.moe]))
                out.append(("KV H2D (op offload)", "h2d", ctx.h2d_s(kv_bytes), "transfer", kv_bytes))
                dev = "gpu"
            timer = gpu_native if dev == "gpu" else ctx.cpu_s
            out.append(("attn proj", dev, timer(proj), "attention", 0.0))
            out.append(("attention", dev, timer((attn if dev == "gpu" else cpu_attn)[kind.windowed]), "attention",
                        0.0))
            for name, cost, cat in moe_mods if kind.moe else dense_mods:
                if name == "experts" and dev == "cpu":
                    cost = cpu_experts  # ggml's CPU kernels: int8 dot products for quantized weights
                out.append((name, dev, timer(cost), cat, 0.0))
            return out

        tasks: dict = {}

        def of(key: tuple[str, LayerKind]) -> list[tuple]:
            if key not in tasks:
                tasks[key] = build(*key)
            return tasks[key]

        return of

    def _pass(self, ctx: Context, lay: dict, seqs: float, q_len: int, kv_len: int, rows: float) -> StepSim:
        p, m = ctx.platform, ctx.model
        tokens = seqs * q_len
        hidden_bytes = tokens * m.hidden_size * BYTES_PER_ELEMENT[self.constants.value("activation_dtype")]
        cross, cross_back = ctx.h2d_s(hidden_bytes), ctx.d2h_s(hidden_bytes)
        tasks = self._layer_tasks(ctx, lay, seqs, q_len, kv_len)

        def layer(eng: Engine, i: int, key: tuple[str, LayerKind]) -> int:
            last = len(eng.tasks) - 1
            for name, resource, seconds, category, nbytes in tasks(key):
                last = eng.add(f"L{i} {name}", resource, seconds, [last], category=category, nbytes=nbytes)
            return last

        engine = Engine(memory_capacity_bytes={"gpu": p.usable_gpu_memory_bytes_per_gpu})
        gpu_hold = lay["gpu_bytes"] / p.num_gpus
        engine.hold("gpu", min(gpu_hold, p.usable_gpu_memory_bytes_per_gpu), "GPU layers, their KV, compute buffer")
        engine.add("token embedding (CPU)", "cpu", ctx.cpu_s(costs.embedding_lookup(m.hidden_size, tokens, ctx.wdtype)),
                   category="head")
        where = {"dev": "cpu"}

        def cross_over(eng: Engine, key: tuple[str, LayerKind]) -> None:
            """The hidden state moves to the GPU where a run of GPU layers follows CPU layers."""
            dev = "cpu" if key[0] == "cpu" else "gpu"  # a dense-only layer starts and ends on the GPU
            if dev != where["dev"]:
                eng.add("hidden state H2D", "h2d", cross, [len(eng.tasks) - 1], category="transfer",
                        nbytes=hidden_bytes)
            where["dev"] = dev

        ext = simulate_layers(engine, self._runs(ctx, lay["ngl"], lay["full"]), layer, cross_over)
        head = costs.lm_head(m.hidden_size, m.vocab_size, max(rows, 1.0), ctx.wdtype)
        last = len(engine.tasks) - 1
        if lay["out_gpu"]:
            engine.add("lm head", "gpu", ctx.gpu_s(head, _execution(ctx, tokens, self.constants)), [last],
                       category="head")
        else:
            if where["dev"] == "gpu":
                last = engine.add("hidden state D2H", "d2h", cross_back, [last], category="transfer",
                                  nbytes=hidden_bytes)
            engine.add("lm head (CPU)", "cpu", ctx.cpu_s(head), [last], category="head")
        return step_sim(engine, ext, m.num_layers)

    # ---- plan -----------------------------------------------------------------------------------
    def plan(self, ctx: Context) -> Plan:
        """As deployed: llama-server's defaults (``n_parallel`` auto = ``n_parallel_auto`` slots, --fit on, -c 0,
        -ub 512); ``--policy best`` also tries 1 to 256 slots (powers of 4) with --fit and with whole layers, and
        keeps the fastest (never slower than as deployed, which is among them)."""
        if self.policy != "best" or ctx.workload.batch_size:
            return self._plan(ctx, self.params)
        fits = [self.params.fit] if "fit" in self.params.model_fields_set else [True, False]
        slots = ([self.params.n_parallel] if self.params.n_parallel
                 else sorted({int(self.constants.value("n_parallel_auto")), 1, 4, 16, 64, 256}))
        plans = []
        for fit in fits:
            for n in slots:
                if n > 4 * ctx.workload.num_requests:
                    continue
                try:
                    plans.append(self._plan(ctx, self.params.model_copy(update={"fit": fit, "n_parallel": n})))
                except InfeasibleError:
                    if n == 1:
                        raise
                    break  # more slots need more KV: fewer fit
        if not plans:
            return self._plan(ctx, self.params)
        return min(plans, key=lambda plan: plan.total_time_s)

    def _plan(self, ctx: Context, prm: LlamaCppParams) -> Plan:
        w = ctx.workload
        P, G = w.prompt_tokens, w.gen_tokens
        slots = prm.n_parallel or int(self.constants.value("n_parallel_auto"))
        other = copy.copy(self)
        other.params = prm
        # full batches of the slots, then a last, partial one charged for what it holds (as every system splits
        # requests); the server's placement and KV cache are those of its slots
        batch, num_batches, rest = full_batches(w.num_requests, w.batch_size or slots)
        lay = other._placement(ctx, batch)

        def prefill_of(seqs: int) -> tuple[StepSim, int, int]:
            """(one ubatch pass, passes, ubatch tokens) of the prompts of ``seqs`` sequences."""
            ub_ = min(prm.ubatch_tokens, seqs * P)
            return other._pass(ctx, lay, ub_ / P, P, P, ub_ / P), math.ceil(seqs * P / ub_), ub_

        def decode_of(seqs: int) -> tuple[float, list]:
            return simpson_decode_time(lambda c: other._pass(ctx, lay, seqs, 1, c, seqs), P, G)

        prefill, passes, ub = prefill_of(batch)
        decode_s, points = decode_of(batch)
        last_s = None
        if rest:
            last_pre, last_passes, _ = prefill_of(rest)
            last_s = last_passes * last_pre.time_s + decode_of(rest)[0]
        L = ctx.model.num_layers
        dense = lay["ngl"] - lay["full"] if ctx.model.moe else 0
        notes = [f"n_gpu_layers = {lay['ngl']} of {L} (the last ones"
                 + (f"; {dense} of them dense-only, their routed experts in host memory" if dense else "")
                 + f"); output layer on the {'GPU' if lay['out_gpu'] else 'CPU'}; {L - lay['ngl']} layers on the CPU",
                 f"{slots} slots (llama-server -np{' auto' if prm.n_parallel is None else ''}), KV cache of "
                 f"{lay['n_ctx']} tokens", *lay["notes"]]
        if prm.op_offload and ub >= prm.op_offload_min_batch and (lay["ngl"] < L or dense):
            notes.append(f"prefill: host-resident weights copied to the GPU every ubatch of {ub} tokens (op offload, "
                         f"{'pageable' if prm.use_mmap else 'pinned'} host memory)")
        if other._per_head_attention(ctx) is not None:
            per_token = L * other._kv_token_layer_bytes(ctx)
            notes.append(f"MLA cached per head, K and V of all {ctx.model.attention.num_heads} heads (llama.cpp's "
                         f"deepseek2 graph before PR #12801): {fmt_bytes(per_token)} of KV a token, read by every "
                         "decode step's attention")
        if lay["miss"] > 0:
            notes.append(f"weights exceed host memory: {lay['miss']:.0%} of CPU-layer weight reads come from "
                         f"{ctx.platform.disk.name} (mmap page cache)")
        config = {"batch_size": batch, "n_parallel": slots, "fit": prm.fit, "n_gpu_layers": lay["ngl"],
                  "dense_only_layers": dense, "ctx_tokens": lay["n_ctx"], "output_on_gpu": lay["out_gpu"],
                  "ubatch_tokens": ub, "op_offload": prm.op_offload, "page_cache_miss_fraction": lay["miss"],
                  "kv_bytes_per_token": L * other._kv_token_layer_bytes(ctx)}
        placement = {"weights": f"gpu ({lay['ngl']} layers" + (f", {dense} without routed experts" if dense else "")
                                + f") + host ({L - lay['ngl']} layers, embedding"
                                + (", routed experts of the dense-only layers" if dense else "")
                                + f"{'' if lay['out_gpu'] else ', output'})" + (" + disk" if lay["miss"] else ""),
                     "kv_cache": "with each layer's attention (gpu / host)"}

        dense_only_moe = tuple(i for i in range(L - lay["ngl"] + lay["full"], L) if ctx.model.is_moe_layer(i))

        def host(tokens: float) -> HostShare:
            """The CPU layers run on the CPU unless op offload computes them on the GPU (batches of >= min tokens);
            the routed experts of the dense-only layers (the GPU layers after the first ``full``) likewise."""
            on_gpu = prm.op_offload and tokens >= prm.op_offload_min_batch
            return HostShare(layers=() if on_gpu else tuple(range(L - lay["ngl"])), lm_head=not lay["out_gpu"],
                             routed_expert_layers=() if on_gpu or not dense else dense_only_moe)

        return self.make_plan((batch, num_batches), (prefill, passes, ub), (decode_s, points), config=config,
                              host_mem_bytes=lay["host_resident"], placement=placement, notes=notes,
                              host_decode=host(batch), host_prefill=host(ub), last_batch_time_s=last_s)
