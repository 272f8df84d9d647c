"""`llama-cpp`: layers split between GPU and CPU, small batches (llama.cpp, ggml-org/llama.cpp).

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
(ggml's CUDA backend launches its kernels from C++: each kernel pays the launch latency ``kernel_launch_s``, no
Python or torch dispatch, :mod:`moesim.costs.execution`).

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

Not modelled: quantized GGUF types other than the dtype given (DeepSeek's fp8 stands in for Q8_0,
8.5 bits), llama.cpp's repacked CPU kernels, per-GPU bin packing of layers, prompt caching.
"""

from __future__ import annotations

import math
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field

from .. import costs
from ..engine import Engine
from ..errors import InfeasibleError
from ..metrics import HostShare
from ..modules import Context
from ..specs import LayerKind
from ..specs.common import BYTES_PER_ELEMENT
from ..units import fmt_bytes
from .base import Plan, ServingSystem, StepSim, balanced_batches, simpson_decode_time, simulate_layers, step_sim
from .shared.memory import activation_bytes

NATIVE = costs.Execution("native")


class LlamaCppParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    n_gpu_layers: int | None = Field(default=None, ge=0,
                                     description="repeating layers on the GPU (-ngl); None = the most that fit")
    n_parallel: int = Field(default=1, ge=1, description="sequences decoded together (llama-server -np)")
    ubatch_tokens: int = Field(default=512, ge=1, description="physical batch of prompt processing (-ub)")
    op_offload: bool = Field(default=True, description="compute CPU-resident weights on the GPU for batches of "
                                                       ">= op_offload_min_batch tokens, copying them every ubatch")
    op_offload_min_batch: int = Field(default=32, ge=1, description="GGML_OP_OFFLOAD_MIN_BATCH")
    use_mmap: bool = Field(default=True, description="CPU weights in the mmap'd file (pageable; may exceed host "
                                                     "memory) rather than pinned buffers (--no-mmap)")


class LlamaCpp(ServingSystem):
    name = "llama-cpp"
    execution_modes = {"prefill": "native", "decode": "native"}
    Params = LlamaCppParams
    summary = ("small batches of n_parallel sequences; whole layers split between GPU and CPU, each layer's KV "
               "cache with its layer; CPU layers bounded by DRAM bandwidth")

    # ---- placement ----------------------------------------------------------------------------
    def _layer_bytes(self, ctx: Context, i: int) -> float:
        m = ctx.model
        if m.is_moe_layer(i):
            return (ctx.attention_weight_bytes + m.moe.num_experts * ctx.expert_weight_bytes + ctx.shared_weight_bytes
                    + m.router_params * ctx.wbytes)
        return ctx.attention_weight_bytes + ctx.dense_ffn_weight_bytes

    def _kv_layer_bytes(self, ctx: Context, i: int, seqs: int) -> float:
        a = ctx.model.attention
        span = ctx.workload.total_context_tokens
        if a.is_windowed(i) and a.window_tokens:
            span = min(span, a.window_tokens)
        return seqs * span * ctx.kv_bytes_per_token_layer()

    def _placement(self, ctx: Context, seqs: int) -> dict:
        """Choose n_gpu_layers; return the layout (bytes on each side, miss rate of the page cache)."""
        p, m, prm = ctx.platform, ctx.model, self.params
        L = m.num_layers
        cap = p.num_gpus * p.usable_gpu_memory_bytes_per_gpu
        layer = [self._layer_bytes(ctx, i) for i in range(L)]
        kv = [self._kv_layer_bytes(ctx, i, seqs) for i in range(L)]
        head = m.lm_head_params * ctx.wbytes
        c = self.constants
        logits = prm.ubatch_tokens * m.vocab_size * BYTES_PER_ELEMENT[c.value("logits_dtype")]
        # each GPU holds a compute buffer of one ubatch's whole activations, in ggml's dtype (fp32)
        compute = activation_bytes(ctx, prm.ubatch_tokens, c.value("activation_dtype"), shards=1) * p.num_gpus + logits
        staging = max(layer) if prm.op_offload else 0.0

        def need(k: int, out_gpu: bool) -> float:
            total = sum(layer[L - k:]) + sum(kv[L - k:]) + compute if k else compute
            return total + (head if out_gpu else 0.0) + (staging if k < L else 0.0)

        options = [(L, True), (L, False)] + [(k, False) for k in range(L - 1, -1, -1)]
        if prm.n_gpu_layers is not None:
            k = min(prm.n_gpu_layers, L)
            forced = (k, prm.n_gpu_layers > L)
            if need(*forced) > cap:
                raise InfeasibleError(
                    f"llama-cpp: n_gpu_layers={prm.n_gpu_layers} needs {fmt_bytes(need(*forced))} of GPU memory "
                    f"(layer weights, their KV for {seqs} x {ctx.workload.total_context_tokens} tokens, compute "
                    f"buffer), {fmt_bytes(cap)} usable on {p.num_gpus} x {p.gpu.name}: short by "
                    f"{fmt_bytes(need(*forced) - cap)}")
            ngl, out_gpu = forced
        else:
            first_fit = next((o for o in options if need(*o) <= cap), None)  # options go from most to least
            if first_fit is None:
                raise InfeasibleError(
                    f"llama-cpp: not even the compute buffer fits on the GPU: {fmt_bytes(need(0, False))} needed, "
                    f"{fmt_bytes(cap)} usable: short by {fmt_bytes(need(0, False) - cap)}")
            ngl, out_gpu = first_fit
        cpu_weights = sum(layer[: L - ngl]) + m.embedding_params * ctx.wbytes + (0.0 if out_gpu else head)
        cpu_kv = sum(kv[: L - ngl])
        usable = p.usable_host_memory_bytes
        if cpu_kv > usable:
            raise InfeasibleError(
                f"llama-cpp: the KV cache of the {L - ngl} CPU layers needs {fmt_bytes(cpu_kv)} of host memory, "
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
            "ngl": ngl, "out_gpu": out_gpu, "gpu_bytes": need(ngl, out_gpu), "cpu_weights": cpu_weights,
            "cpu_kv": cpu_kv, "host_resident": resident + cpu_kv,
            "miss": (cpu_weights - resident) / cpu_weights if cpu_weights else 0.0,
            "staging": staging if ngl < L else 0.0,
        }

    # ---- one forward pass ------------------------------------------------------------------------
    @staticmethod
    def _runs(ctx: Context, ngl: int) -> tuple[tuple[tuple[str, LayerKind], int], ...]:
        """((device, layer kind), count) of each run of consecutive layers alike, in layer order, the last
        ``ngl`` layers on the GPU (a function of the model and ``ngl``: kept on the context)."""
        def build() -> tuple:
            m, L = ctx.model, ctx.model.num_layers
            runs: list[list] = []
            for i in range(L):
                key = ("gpu" if i >= L - ngl else "cpu", LayerKind(m.is_moe_layer(i), m.attention.is_windowed(i)))
                if runs and runs[-1][0] == key:
                    runs[-1][1] += 1
                else:
                    runs.append([key, 1])
            return tuple((key, count) for key, count in runs)

        return ctx.memo(("llama-cpp layer runs", ngl), build)

    def _layer_tasks(self, ctx: Context, lay: dict, seqs: float, q_len: int,
                     kv_len: int) -> Callable[[tuple[str, LayerKind]], list[tuple]]:
        """The tasks of one layer of a pass, by (device, layer kind): (name, resource, seconds, category,
        bytes) in submission order, worked out once per key (every layer of a run repeats them)."""
        p, m, prm = ctx.platform, ctx.model, self.params
        tokens = seqs * q_len
        offload = prm.op_offload and tokens >= prm.op_offload_min_batch
        upload_path = "pageable" if prm.use_mmap else "pinned"  # mmap'd pages: the driver stages them
        attn = {w: ctx.attention_core(seqs, q_len, kv_len, w) for w in (False, True)}

        def gpu_native(cost) -> float:  # ggml's CUDA backend launches its kernels from C++
            return ctx.gpu_s(cost, NATIVE)
        cpu_attn = {w: ctx.cpu_attention(seqs, kv_len, w) if q_len == 1 else attn[w] for w in (False, True)}
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
        kv_bytes = seqs * kv_len * ctx.kv_bytes_per_token_layer()

        def build(dev: str, kind: LayerKind) -> list[tuple]:
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
            if key[0] != where["dev"]:
                eng.add("hidden state H2D", "h2d", cross, [len(eng.tasks) - 1], category="transfer",
                        nbytes=hidden_bytes)
            where["dev"] = key[0]

        ext = simulate_layers(engine, self._runs(ctx, lay["ngl"]), layer, cross_over)
        head = costs.lm_head(m.hidden_size, m.vocab_size, max(rows, 1.0), ctx.wdtype)
        last = len(engine.tasks) - 1
        if lay["out_gpu"]:
            engine.add("lm head", "gpu", ctx.gpu_s(head, NATIVE), [last], category="head")
        else:
            if where["dev"] == "gpu":
                last = engine.add("hidden state D2H", "d2h", cross_back, [last], category="transfer",
                                  nbytes=hidden_bytes)
            engine.add("lm head (CPU)", "cpu", ctx.cpu_s(head), [last], category="head")
        return step_sim(engine, ext, m.num_layers)

    # ---- plan -----------------------------------------------------------------------------------
    def plan(self, ctx: Context) -> Plan:
        w, prm = ctx.workload, self.params
        P, G = w.prompt_tokens, w.gen_tokens
        batch, num_batches = balanced_batches(w.num_requests, w.batch_size or prm.n_parallel)
        lay = self._placement(ctx, batch)
        ub = min(prm.ubatch_tokens, batch * P)
        prefill = self._pass(ctx, lay, ub / P, P, P, ub / P)
        passes = math.ceil(batch * P / ub)
        decode_s, points = simpson_decode_time(lambda c: self._pass(ctx, lay, batch, 1, c, batch), P, G)
        L = ctx.model.num_layers
        notes = [f"n_gpu_layers = {lay['ngl']} of {L} (the last ones); output layer on the "
                 f"{'GPU' if lay['out_gpu'] else 'CPU'}; {L - lay['ngl']} layers on the CPU"]
        if prm.op_offload and ub >= prm.op_offload_min_batch and lay["ngl"] < L:
            notes.append(f"prefill: CPU layers' weights copied to the GPU every ubatch of {ub} tokens (op offload, "
                         f"{'pageable' if prm.use_mmap else 'pinned'} host memory)")
        if lay["miss"] > 0:
            notes.append(f"weights exceed host memory: {lay['miss']:.0%} of CPU-layer weight reads come from "
                         f"{ctx.platform.disk.name} (mmap page cache)")
        config = {"batch_size": batch, "n_parallel": prm.n_parallel, "n_gpu_layers": lay["ngl"],
                  "output_on_gpu": lay["out_gpu"], "ubatch_tokens": ub, "op_offload": prm.op_offload,
                  "page_cache_miss_fraction": lay["miss"]}
        placement = {"weights": f"gpu ({lay['ngl']} layers) + host ({L - lay['ngl']} layers, embedding"
                                f"{'' if lay['out_gpu'] else ', output'})" + (" + disk" if lay["miss"] else ""),
                     "kv_cache": "with each layer (gpu / host)"}

        def host(tokens: float) -> HostShare:
            """The CPU layers run on the CPU unless op offload computes them on the GPU (batches of >= min tokens)."""
            on_gpu = prm.op_offload and tokens >= prm.op_offload_min_batch
            return HostShare(layers=() if on_gpu else tuple(range(L - lay["ngl"])), lm_head=not lay["out_gpu"])

        return self.make_plan((batch, num_batches), (prefill, passes, ub), (decode_s, points), config=config,
                              host_mem_bytes=lay["host_resident"], placement=placement, notes=notes,
                              host_decode=host(batch), host_prefill=host(ub))
