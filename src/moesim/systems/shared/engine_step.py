"""How datacenter engines (vLLM, SGLang, TensorRT-LLM) run a step, shared by their systems.

Execution (:mod:`moesim.costs.execution`): decode replays a CUDA graph captured for the padded batch; prefill
runs piecewise graphs (vLLM) or eagerly (SGLang, TensorRT-LLM's PyTorch flow), but its kernels are long and the
host runs ahead of the GPU, so both phases are priced GPU-alone: the sum of the kernels' roofline times plus a
gap per kernel (``graph_kernel_gap_s``), with the engines' own GEMM/MoE kernels (``engine_kernels``).

Per-step CPU work (scheduling, input preparation, sampling bookkeeping, detokenising) is priced as::

    t_cpu(B) = step_cpu_s + B x step_cpu_per_seq_s

and overlapped as the engine overlaps it: with an overlap (async) scheduler the CPU prepares step i+1 while the
GPU runs step i, so a step takes max(t_gpu, t_cpu); without one they add up.

Decode batches are padded to the next captured CUDA-graph size (:func:`graph_batch`): the padded rows run the
dense GEMMs (attention uses the real sequences).

Kernel tables: every call into :mod:`moesim.costs.kernels` (measured per-kernel times) is in
:func:`engine_layer_times` and :func:`engine_allreduce_s`; a missing module, table or coverage falls back to the
roofline (with the engine-kernel efficiencies) and to the sourced all-reduce latencies of ``systems_db/engines.yaml``.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING

from ...costs import Execution
from ...costs.ffn import router as router_cost
from ...costs.gemm import vector_op
from ...db import system_constants
from ...modules import Context
from .tensor_parallel import LayerTimes

if TYPE_CHECKING:
    from ..base import StepSim

@lru_cache(maxsize=1)
def _allreduce_table() -> dict[int, tuple[tuple[int, ...], tuple[float, ...]]]:
    """The custom all-reduce table of ``systems_db/engines.yaml`` (keys ``custom_allreduce_s_n{n}_{bytes}``):
    GPU count -> (message sizes in bytes, seconds), read from the keys themselves."""
    c = system_constants("engines")
    found: dict[int, dict[int, float]] = {}
    for key in c.constants:
        if key.startswith("custom_allreduce_s_n"):
            n, size = key.removeprefix("custom_allreduce_s_n").split("_")
            found.setdefault(int(n), {})[int(size)] = float(c.value(key))
    return {n: (tuple(sorted(pts)), tuple(pts[s] for s in sorted(pts))) for n, pts in found.items()}


@dataclass(frozen=True)
class EngineRuntime:
    """What a system's engine adds to its kernels: execution per phase, per-step CPU work, CUDA-graph sizes."""

    backend: str  # kernel-table backend name ("vllm", "sglang", "trtllm")
    decode: Execution
    prefill: Execution
    step_cpu_s: float
    step_cpu_per_seq_s: float
    overlap_scheduler: bool
    graph_sizes: tuple[int, ...] = ()  # captured decode batch sizes, ascending; () = no graphs
    pad_to_graph: bool = True  # a decode batch runs in the next captured size (False: only captured sizes replay)
    uncaptured: Execution | None = None  # how a decode batch without a graph runs (None: as ``decode``)
    #: host time to issue one forward with prompt tokens where the engine launches its prefill eagerly (Python and
    #: the dispatcher per kernel, no graph): such a forward takes at least this long however little the GPU has to
    #: do (:meth:`prefill_s`); 0 where the prefill replays graphs or the host always runs ahead
    prefill_host_s: float = 0.0
    #: the same floor for a decode forward the engine launches eagerly (a batch without a captured CUDA graph:
    #: :meth:`decode_execution` in ``eager`` mode); 0 where such a forward's host issue is not known to bound it
    eager_decode_host_s: float = 0.0

    def decode_execution(self, batch: float) -> tuple[Execution, float]:
        """(execution, GEMM rows) of a decode step of ``batch`` sequences: the graph of the padded batch, or
        ``uncaptured`` beyond the largest captured size (and, without padding, off the captured sizes)."""
        sizes = self.graph_sizes
        if not sizes:
            return self.decode, batch
        if batch > sizes[-1]:
            return self.uncaptured or self.decode, batch
        if self.pad_to_graph:
            return self.decode, graph_batch(batch, sizes)
        if abs(batch - round(batch)) < 1e-9 and int(round(batch)) in sizes:
            return self.decode, batch
        return self.uncaptured or self.decode, batch

    def prefill_s(self, gpu_s: float) -> float:
        """A forward with prompt tokens of ``gpu_s`` GPU time, launched kernel by kernel from the host: the GPU cannot
        finish before the host has issued the last kernel, so ``max(gpu_s, prefill_host_s)`` (the host runs ahead
        of a long prefill, whose GPU time is all that shows; a short one, e.g. one prompt, waits on the host)."""
        return max(gpu_s, self.prefill_host_s)

    def decode_floor_s(self, batch: float) -> float:
        """Host-issue floor of a decode step of ``batch`` sequences: :attr:`eager_decode_host_s` when the batch runs
        eagerly (no captured graph takes it, :meth:`decode_execution`), else 0 (a graph replay is one launch)."""
        if self.eager_decode_host_s <= 0:
            return 0.0
        return self.eager_decode_host_s if self.decode_execution(batch)[0].mode == "eager" else 0.0

    def cpu_s(self, seqs: float) -> float:
        return self.step_cpu_s + seqs * self.step_cpu_per_seq_s

    def step_s(self, gpu_s: float, seqs: float) -> float:
        """A step of ``gpu_s`` GPU time with ``seqs`` sequences, the engine's CPU work overlapped or not."""
        cpu = self.cpu_s(seqs)
        return max(gpu_s, cpu) if self.overlap_scheduler else gpu_s + cpu


def _lengthened(step: "StepSim", total_s: float, category: str) -> "StepSim":
    """``step`` taking ``total_s`` when that is longer, the time added charged to resource ``cpu`` and ``category``."""
    if total_s <= step.time_s:
        return step
    added = total_s - step.time_s
    categories = dict(step.category_s)
    categories[category] = categories.get(category, 0.0) + added
    busy = dict(step.busy_s)
    busy["cpu"] = busy.get("cpu", 0.0) + added
    return replace(step, time_s=total_s, busy_s=busy, category_s=categories)


def with_prefill_host(step: "StepSim", rt: EngineRuntime) -> "StepSim":
    """``step`` (a forward with prompt tokens, its GPU work simulated) at least as long as the host's issue of an
    eager prefill forward (:meth:`EngineRuntime.prefill_s`); the time that adds is reported as resource ``cpu`` and
    category ``host issue (eager prefill)``."""
    return _lengthened(step, rt.prefill_s(step.time_s), "host issue (eager prefill)")


def with_decode_host(step: "StepSim", rt: EngineRuntime, batch: float) -> "StepSim":
    """``step`` (a decode step of ``batch`` sequences per DP rank, its GPU work simulated) at least as long as the
    host's issue of an eager decode forward where no captured graph takes the batch (:meth:`EngineRuntime.
    decode_floor_s`); the time that adds is reported as resource ``cpu`` and category ``host issue (eager decode)``."""
    return _lengthened(step, max(step.time_s, rt.decode_floor_s(batch)), "host issue (eager decode)")


def with_engine_cpu(step: "StepSim", rt: EngineRuntime, seqs: float) -> "StepSim":
    """``step`` (its GPU work simulated) with the engine's per-step CPU work of ``seqs`` sequences: the step
    takes :meth:`EngineRuntime.step_s`; the time the CPU work adds beyond the GPU's (none when the overlap
    scheduler hides it) is reported as resource ``cpu`` and category ``engine cpu``."""
    return _lengthened(step, rt.step_s(step.time_s, seqs), "engine cpu")


def graph_batch(batch: float, sizes: tuple[int, ...]) -> float:
    """The captured CUDA-graph batch a decode batch runs in: the smallest captured size >= batch
    (``batch`` itself beyond the largest, which runs without a full graph)."""
    if not sizes or batch > sizes[-1]:
        return batch
    return float(sizes[bisect.bisect_left(sizes, math.ceil(batch - 1e-9))])


def graph_sizes(spec: str, top: int) -> tuple[int, ...]:
    """Captured CUDA-graph batch sizes up to ``top`` from an engine's rule as ``systems_db`` writes it: comma-separated
    sizes ``b`` or ranges ``first:last:step`` (``last`` inclusive, or ``top``)."""
    sizes: list[int] = []
    for item in str(spec).split(","):
        parts = item.strip().split(":")
        if len(parts) == 1:
            sizes.append(int(parts[0]))
        else:
            first, last, step = parts
            sizes.extend(range(int(first), (top if last.strip() == "top" else int(last)) + 1, int(step)))
    return tuple(s for s in sorted(set(sizes)) if s <= top)


def vllm_capture_sizes(max_num_seqs: int) -> tuple[int, ...]:
    """vLLM's default CUDA-graph capture sizes (``cuda_graph_batch_sizes`` of ``systems_db/vllm.yaml``, from
    ``VllmConfig._set_cudagraph_sizes``) up to min(2 max_num_seqs, ``max_cudagraph_capture_size``)."""
    c = system_constants("vllm")
    top = min(2 * max_num_seqs, int(c.value("max_cudagraph_capture_size")))
    return graph_sizes(str(c.value("cuda_graph_batch_sizes")), top)


def runtime_constants(system: str) -> dict[str, float]:
    """The per-engine constants of ``systems_db/<system>.yaml`` that :class:`EngineRuntime` needs."""
    c = system_constants(system)
    return {k: float(c.value(k)) for k in ("step_cpu_s", "step_cpu_per_seq_s", "overlap_scheduler")}


def engine_execution(mode: str = "graph") -> Execution:
    """Execution of an engine phase in ``mode`` with the engines' kernels and ``systems_db/engines.yaml``'s
    constants."""
    c = system_constants("engines")
    return Execution(mode, float(c.value("graph_kernel_gap_s")), engine_kernels=True,  # type: ignore[arg-type]
                     moe_tile_rows=int(c.value("fused_moe_tile_rows")),
                     moe_memory_efficiency=float(c.value("fused_moe_memory_efficiency")) or None)


#: expert formats TensorRT-LLM-Gen's fused MoE runs (FlashInfer trtllm_fp4_block_scale_moe / trtllm_fp8_block_scale_moe)
TRTLLM_GEN_QUANTS = ("nvfp4", "mxfp4", "fp8_block")
#: how a runtime's backend names the fused-MoE kernel it runs instead of the tables' (:func:`with_moe_kernel`)
_MOE_KERNEL_SEP = "+moe="


def with_moe_kernel(backend: str, kernel: str) -> str:
    """A runtime backend whose fused MoE runs ``kernel`` (``"trtllm_gen"``: TensorRT-LLM-Gen's) rather than what the
    engine's kernel tables measured, its other kernels still from ``backend``'s tables: e.g. TensorRT-LLM with
    ``moe_config.backend TRTLLM`` ("trtllm+moe=trtllm_gen")."""
    return f"{backend}{_MOE_KERNEL_SEP}{kernel}"


def table_backend(backend: str) -> str:
    """The kernel-table backend of a runtime backend (:func:`with_moe_kernel`'s qualifier dropped)."""
    return backend.split(_MOE_KERNEL_SEP, 1)[0]


def forced_moe_kernel(backend: str) -> str | None:
    """The fused-MoE kernel a runtime backend names (:func:`with_moe_kernel`), None for the tables' own."""
    parts = backend.split(_MOE_KERNEL_SEP, 1)
    return parts[1] if len(parts) == 2 else None


#: fused-MoE kernels a runtime may name (:func:`with_moe_kernel`) that the tables measured as a recipe of their own:
#: kernel -> {the model's quant: the tables' recipe}. "marlin": vLLM's Marlin W4A16 MoE for MXFP4 experts
#: (``VLLM_MXFP4_USE_MARLIN=1``, :class:`~moesim.systems.vllm.VLLMParams` ``mxfp4_use_marlin``)
TABLE_MOE_KERNELS = {"marlin": {"mxfp4": "mxfp4_marlin"}}


def _kernel_tables(ctx: Context, backend: str):
    """Measured kernel tables for this GPU and backend, or None (module absent, no table); where the runtime names a
    fused-MoE kernel the tables hold as a recipe of its own (:data:`TABLE_MOE_KERNELS`), its MoE queries read that."""
    from ...costs import kernels

    name = table_backend(backend)
    variant = TABLE_MOE_KERNELS.get(forced_moe_kernel(backend) or "")

    def load():
        t = kernels.kernel_tables(ctx.platform.gpu.name, name)
        return kernels.MoeQuantView(t, variant) if t is not None and variant else t

    return ctx.memo(("kernel tables", name, forced_moe_kernel(backend) if variant else None), load)


def moe_kernel_note(ctx: Context, backend: str) -> str | None:
    """What a plan should say where its runtime names a fused-MoE kernel the tables hold as a recipe of its own
    (:data:`TABLE_MOE_KERNELS`): that the experts are not of the kind it runs, that no table of it covers this GPU
    and model (the roofline prices them), or that its one measured shape was transferred to this one; None otherwise.
    Probed at 1024 tokens in the platform's tensor-parallel layout."""
    kernel = forced_moe_kernel(backend)
    variant = TABLE_MOE_KERNELS.get(kernel or "")
    m = ctx.model
    if not variant or not m.moe:
        return None
    q = quant_kind(ctx.edtype, m)
    if q not in variant:
        return (f"{kernel} MoE asked for {', '.join(variant)} experts; this model's are {q}: priced as without it")
    tables = _kernel_tables(ctx, backend)
    probe = None if tables is None else tables.moe_s(1024, m.hidden_size, m.moe.expert_intermediate_size,
                                                    m.moe.num_experts, m.moe.top_k, q, tp=ctx.platform.num_gpus)
    if probe is None:
        return (f"{kernel} MoE: no measured {variant[q]} table covers {ctx.platform.gpu.name} and this model's "
                f"experts; the experts are priced on the roofline")
    return (f"{kernel} MoE priced from AIConfigurator's {variant[q]} table, measured on one expert shape and "
            f"transferred to this model's at equal rows per expert (scaled by experts x hidden x ffn)")


def table_moe_allowed(backend: str) -> bool:
    """Whether the fused MoE may be priced from the measured tables: not when the runtime names another kernel,
    unless the tables measured that kernel (:data:`TABLE_MOE_KERNELS`)."""
    kernel = forced_moe_kernel(backend)
    return kernel is None or kernel in TABLE_MOE_KERNELS


def kernel_tables_used(ctx: Context, rt: EngineRuntime) -> str | None:
    """The kernel-table backend an engine's steps are priced from on this GPU (its runtime runs the engines'
    kernels and a measured table exists), else None: what a plan's provenance reports."""
    uses = any(e is not None and e.engine_kernels for e in (rt.decode, rt.prefill))
    return table_backend(rt.backend) if uses and _kernel_tables(ctx, rt.backend) is not None else None


def _table_allreduce_s(nbytes: float, n: int) -> float:
    """In-graph custom all-reduce latency, log-log interpolated in ``systems_db/engines.yaml``'s table
    (AIConfigurator's measured vLLM custom all-reduce under CUDA graphs, H200), linear beyond its largest size."""
    table = _allreduce_table()
    key = min(table, key=lambda k: (abs(k - n), k))  # the nearest measured GPU count
    sizes, ts = table[key]
    if nbytes <= sizes[0]:
        return ts[0]
    if nbytes >= sizes[-1]:
        slope = (ts[-1] - ts[-2]) / (sizes[-1] - sizes[-2])
        return ts[-1] + (nbytes - sizes[-1]) * slope
    i = bisect.bisect_right(sizes, nbytes) - 1
    x0, x1 = math.log(sizes[i]), math.log(sizes[i + 1])
    y0, y1 = math.log(ts[i]), math.log(ts[i + 1])
    return math.exp(y0 + (y1 - y0) * (math.log(nbytes) - x0) / (x1 - x0))


def engine_allreduce_s(ctx: Context, tokens: float, backend: str) -> float:
    """One all-reduce of ``tokens`` hidden states over the platform's GPUs, as the engines run it at these sizes
    (custom one-/two-shot all-reduce inside the graph): our own measurement of this platform's collectives under
    CUDA graphs where there is one (:func:`~.tensor_parallel.measured_collective_s`), else the kernel table's
    measured time where it covers the
    message, else the sourced table of ``systems_db/engines.yaml`` (NVLink/NVSwitch platforms) or the ring
    model of :func:`~.tensor_parallel.allreduce_s` (GPUs without NVLink)."""
    n = ctx.platform.num_gpus
    if n == 1:
        return 0.0
    nbytes = ctx.hidden_state_bytes(tokens)
    from .tensor_parallel import measured_collective_s

    measured = measured_collective_s(ctx, "all_reduce", nbytes, "graph")
    if measured is not None:
        return measured
    tables = _kernel_tables(ctx, backend)
    if tables is not None:
        t = tables.allreduce_s(nbytes, n, ctx.options.activation_dtype)
        if t is not None:
            return t
    if ctx.platform.gpu_link is None:
        from .tensor_parallel import allreduce_s
        return allreduce_s(ctx, tokens)
    return _table_allreduce_s(nbytes, n)


def engine_layer_times(ctx: Context, tokens: float, attention: list[tuple[float, float, float]],
                       execution: Execution, backend: str, gemm_tokens: float | None = None,
                       decode_width: int = 1) -> LayerTimes:
    """One tensor-parallel layer as an engine runs it: the modules of :class:`LayerTimes` priced under
    ``execution`` (dense GEMMs over ``gemm_tokens`` rows, the CUDA-graph padded batch, when given), the fused MoE
    from the kernel table where it has one, prompt chunks' attention from the prefill tables
    (:func:`table_attention_core`; groups of ``decode_width`` new tokens or fewer are decode steps: k + 1 when
    speculative decoding verifies k drafts), the all-reduce from :func:`engine_allreduce_s`."""
    tables = _kernel_tables(ctx, backend)
    own = tables is not None or (execution.engine_kernels and trtllm_gen_moe_kernels(ctx, backend))
    key = ("engine layer times", execution, backend if own else None, tokens, tuple(attention),
           gemm_tokens, decode_width)  # engines without tables (or kernels of their own) price a step alike
    return ctx.memo(key, lambda: _engine_layer_times(ctx, tokens, attention, execution, backend, gemm_tokens,
                                                     decode_width))


def _engine_layer_times(ctx: Context, tokens: float, attention: list[tuple[float, float, float]],
                        execution: Execution, backend: str, gemm_tokens: float | None,
                        decode_width: int = 1) -> LayerTimes:
    rows = tokens if gemm_tokens is None else gemm_tokens
    base = LayerTimes.of(ctx, rows, attention, execution)
    tables = _kernel_tables(ctx, backend)
    experts, router = base.experts, base.router
    m = ctx.model
    attn_proj, shared, dense = base.attn_proj, base.shared, base.dense
    if tables is not None:
        tp, h = ctx.platform.num_gpus, m.hidden_size
        attn_proj = _or(table_gemms_s(ctx, tables, rows, attention_gemm_shapes(m, tp)), attn_proj)
        if m.moe and m.moe.num_shared_experts and shared:
            one = table_gemms_s(ctx, tables, rows, ffn_gemm_shapes(h, m.moe.shared_ffn, m.moe.gated, tp))
            shared = _or(None if one is None else one * m.moe.num_shared_experts, shared)
        if m.dense_ffn is not None and dense:
            dense = _or(table_gemms_s(ctx, tables, rows,
                                      ffn_gemm_shapes(h, m.dense_ffn.intermediate_size, m.dense_ffn.gated, tp)), dense)
    table_moe = routed_table_moe_s(ctx, tables, rows) if tables is not None and m.moe \
        and table_moe_allowed(backend) else None
    if table_moe is not None:
        experts, router = table_moe, engine_router_s(ctx, rows, execution, fused_table=True)
    elif m.moe and execution.engine_kernels:
        kernels = trtllm_gen_moe_kernels(ctx, backend)
        if kernels:
            router, experts = trtllm_gen_moe_s(ctx, rows, execution, kernels)
    core = base.core if tables is None else table_attention_core(ctx, tables, attention, execution, base.core,
                                                                 decode_width)
    return LayerTimes(attn_proj, core, engine_allreduce_s(ctx, rows, backend), router, experts, shared, dense)


#: the DeepSeek MLA head shape the MLA tables measured (qk_nope_head_dim, qk_rope_head_dim, v_head_dim) besides
#: their (kv_lora_rank, rope) = kernels.MLA_SHAPE
MLA_TABLE_HEADS = (128, 64, 128)


def _table_causal_s(ctx: Context, tables, seqs: float, tokens: float) -> float | None:
    """The kernel table's time of causal prefill attention of ``seqs`` prompts of ``tokens`` new tokens each (no
    cached prefix) on one GPU of the platform's tensor-parallel group (heads split over its n GPUs, K/V heads
    replicated beyond their count), in the KV cache's dtype; None where no table covers it (MLA of another shape,
    heads that do not divide, sliding windows, sizes outside the measured range)."""
    a, n = ctx.model.attention, ctx.platform.num_gpus
    if a.num_heads % n:
        return None
    kv = {"fp16": "bf16"}.get(ctx.options.kv_dtype, ctx.options.kv_dtype)
    if a.kind == "mla":
        if (a.qk_nope_head_dim, a.qk_rope_head_dim, a.v_head_dim) != MLA_TABLE_HEADS:
            return None
        return tables.mla_prefill_s(seqs, tokens, a.num_heads // n, a.kv_lora_rank, a.qk_rope_head_dim, kv)
    return tables.attention_prefill_s(seqs, tokens, a.num_heads // n, max(1, a.num_kv_heads // n), a.head_dim, kv)


def table_prefill_core_s(ctx: Context, tables, seqs: float, new: float, context: float) -> float | None:
    """Measured time of the prompt-chunk group (``seqs`` sequences, ``new`` new tokens each over ``context`` tokens
    with them) from the kernel table's causal prefill (AIConfigurator's ``context_attention`` / ``context_mla``: the
    engine's own prefill kernel), as the causal attention of the whole context less that of its cached prefix::

        t(s, q, c) = t_causal(s, c) - t_causal(s, c - q)          (t_causal(s, c) where q = c)

    (causal attention's work over the last q rows of c is the whole triangle less the prefix's). None where the
    table covers either term not."""
    whole = _table_causal_s(ctx, tables, seqs, context)
    if whole is None or new >= context:
        return whole
    prefix = _table_causal_s(ctx, tables, seqs, context - new)
    return None if prefix is None else whole - prefix


def table_attention_core(ctx: Context, tables, attention: list[tuple[float, float, float]],
                         execution: Execution, core: dict[bool, float], decode_width: int = 1) -> dict[bool, float]:
    """The layer's full-attention core with its prompt chunks priced from the engine's measured prefill kernel
    (:func:`table_prefill_core_s`) where a table covers them: each group (sequences, new tokens, context) with more
    than ``decode_width`` new tokens takes the table's time unless that is below the group's compute floor
    (:func:`moesim.costs.compute_floor_s`: a measurement faster than the datasheet's dense peak is not of this work),
    else the efficiency model's, as do decode groups (``decode_width`` new tokens or fewer: one, or the k + 1 of a
    speculative verify, which the engines run through their decode kernels) and sliding-window layers (the tables
    measured none)."""
    if not any(s > 0 and q > decode_width for s, q, _ in attention):
        return core
    from ...costs import compute_floor_s
    from .tensor_parallel import per_gpu_attention

    total = 0.0
    for s, q, kv in attention:
        if s <= 0:
            continue
        cost = per_gpu_attention(ctx, ctx.attention_core(s, q, kv, False))
        measured = table_prefill_core_s(ctx, tables, s, q, kv) if q > decode_width else None
        if measured is not None and measured >= compute_floor_s(cost, ctx.platform.gpu):
            total += measured
        else:
            total += ctx.gpu_s(cost, execution)
    return {**core, False: total}


def trtllm_gen_moe_kernels(ctx: Context, backend: str) -> int:
    """Kernels of one TensorRT-LLM-Gen fused-MoE call where ``backend`` runs the model's experts through it on this GPU
    (``trtllm_gen_moe`` of ``systems_db/engines.yaml``: Blackwell GPUs, engine:quant pairs), else 0: the call's own
    (``trtllm_gen_moe_kernels_fp4`` / ``_fp8_block``) plus the hidden states' quantisation before it where the
    activations are quantised (fp8 block-scaled, NVFP4: ``trtllm_gen_moe_input_quant_kernels``)."""
    if ctx.platform.gpu.architecture != "blackwell":
        return 0
    c = system_constants("engines")
    q = quant_kind(ctx.edtype, ctx.model)
    forced = forced_moe_kernel(backend) == "trtllm_gen" and q in TRTLLM_GEN_QUANTS
    if not forced and f"{backend}:{q}" not in {p.strip() for p in str(c.value("trtllm_gen_moe")).split(",")}:
        return 0
    if q == "fp8_block":
        return int(c.value("trtllm_gen_moe_kernels_fp8_block")) + int(c.value("trtllm_gen_moe_input_quant_kernels"))
    quantised_input = q == "nvfp4"  # NVFP4 quantises the activations too; MXFP4 experts here run bf16 activations
    return int(c.value("trtllm_gen_moe_kernels_fp4")) + (int(c.value("trtllm_gen_moe_input_quant_kernels"))
                                                         if quantised_input else 0)


def trtllm_gen_moe_s(ctx: Context, rows: float, execution: Execution, kernels: int) -> tuple[float, float]:
    """(router s, experts s) of one tensor-parallel MoE layer of ``rows`` rows run through TensorRT-LLM-Gen's fused
    MoE, priced on the roofline where no measured table covers it (:func:`router_logits_s`, :func:`trtllm_gen_call_s`
    over the platform's GPUs)."""
    m = ctx.model
    call = trtllm_gen_call_s(ctx, execution, kernels, ctx.active_experts(rows), rows * m.moe.top_k,
                             ctx.platform.num_gpus)
    return router_logits_s(ctx, rows, execution), call


def router_logits_s(ctx: Context, rows: float, execution: Execution | None) -> float:
    """The router of an MoE layer whose fused-MoE call selects the experts itself (TensorRT-LLM-Gen's routing kernel
    takes the logits and runs the softmax / top-k): the logits GEMM, one kernel::

        t_router = roof(gemm(T, E, H) + softmax work) + gap"""
    m = ctx.model
    return ctx.gpu_s(router_cost(m.hidden_size, m.moe.num_experts, rows, launches=0), execution)


def trtllm_gen_call_s(ctx: Context, execution: Execution | None, kernels: int, active: float, slots: float,
                      split: float) -> float:
    """One TensorRT-LLM-Gen fused-MoE call on one GPU on the roofline: the routed experts' weight streaming and FLOPs
    (:meth:`Context.experts` of ``active`` experts and ``slots`` routed rows, the GPU holding 1 / ``split`` of each
    expert's ffn) in ``kernels`` launches, plus the finalize kernel's traffic. The gather of the routed rows is fused
    into GEMM1's loads (the experts' activation bytes already read each routed row once); finalize reads each routed
    output once (its GEMM2 write is in the experts' bytes), scales it by its routing weight and adds it into its
    token's row, written once: ``slots`` x H x (1 + 1 / k) bf16 elements at the vector rate, not split (under MoE
    tensor parallelism every GPU combines all of its rows' partial outputs)::

        t = roof(experts / split) + roof(finalize) + kernels x gap"""
    m = ctx.model
    finalize = vector_op(slots * m.hidden_size, 2.0, 1.0 + 1.0 / m.moe.top_k, launches=0)
    call = ctx.experts(active, slots).scaled(1.0 / split).with_(launches=kernels).then(finalize)
    return ctx.gpu_s(call, execution)


def _or(value: float | None, fallback: float) -> float:
    return fallback if value is None else value


def attention_gemm_shapes(model, tp: int) -> list[tuple[int, int]]:
    """(n, k) of one GPU's attention projections under tensor parallelism ``tp``, as two GEMMs y = x W^T: the
    Q/K/V projections (k = hidden, n = their weights / hidden / tp) and the output projection (n = hidden, k = its
    weights / hidden / tp), split by the share of the weights, ``AttentionSpec.qkv_share``. MLA's down-projections
    (q_a, kv_a) are folded into the first GEMM by their weights: at prefill sizes the FLOPs, at decode sizes the bytes
    are what they carry."""
    h = model.hidden_size
    weights = model.attention_params
    share = model.attention.qkv_share(h)
    n_qkv = max(int(round(share * weights / (h * tp))), 1)
    k_o = max(int(round((1.0 - share) * weights / (h * tp))), 1)
    return [(n_qkv, h), (h, k_o)]


def ffn_gemm_shapes(hidden: int, intermediate: int, gated: bool, tp: int) -> list[tuple[int, int]]:
    """(n, k) of one GPU's FFN GEMMs under tensor parallelism ``tp``: gate/up (n = (2 if gated) I / tp, k = H) and
    down (n = H, k = I / tp)."""
    inter = max(intermediate // tp, 1)
    return [((2 if gated else 1) * inter, hidden), (hidden, inter)]


def table_gemms_s(ctx: Context, tables, rows: float, shapes: list[tuple[int, int]]) -> float | None:
    """Seconds of dense GEMMs of ``rows`` rows from the engine's measured GEMM table, in the weights' kernel kind
    (:func:`quant_kind`: bf16, per-tensor fp8, block-scaled fp8); None where the table does not cover a shape (the
    roofline prices it then)."""
    q = quant_kind(ctx.wdtype, ctx.model)
    total = 0.0
    for n, k in shapes:
        t = tables.gemm_s(rows, n, k, q)
        if t is None:
            return None
        total += t
    return total


def engine_router_s(ctx: Context, rows: float, execution: Execution | None, fused_table: bool) -> float:
    """The router of one MoE layer: logits GEMM, softmax and top-k, plus the permute to the experts and their
    weighted combine (:meth:`Context.router`) unless a fused-MoE table priced the experts: the table's call includes
    them (align/sort, gather, scatter-add), so they are not charged twice."""
    m = ctx.model
    cost = router_cost(m.hidden_size, m.moe.num_experts, rows) if fused_table else ctx.router(rows)
    return ctx.gpu_s(cost, execution)


def routed_table_moe_s(ctx: Context, tables, tokens: float, tp: int | None = None, ep: int = 1) -> float | None:
    """The fused-MoE kernel time of ``tokens`` tokens from a measured table, for the router's expert choice.

    The tables were measured with *even* routing (AIConfigurator's MoE op tables: ``tokens x top_k`` slots
    dealt round-robin over the experts), which activates a_e = min(E, T k) experts; a real router's tokens fall on
    experts at random (with its skew, :meth:`Context.active_experts`): a_r = sum_e 1 - (1 - p_e)^T <= a_e. The same
    T k rows are computed either way; only the weights streamed differ. With the roofline's two parts of the
    layer on one GPU, compute c = 2 m H I T k / (tp ep P) and weight streaming w(a) = a m H I b / (tp ep B) (m = 3
    matrices a gated expert holds, 2 otherwise; one expert's bytes b per element), the table's time is carried over by their ratio::

        t = table(T) * max(c, w(a_r)) / max(c, w(a_e))

    so a decode-sized (weight-bound) step scales with the experts actually read and a compute-bound one keeps the
    table's time. Without it the table priced a 32-token DeepSeek-V3 step (256 experts, top-8) as reading every
    expert, where random routing reads 63% of them (measured TPOT grows smoothly through that size); scaling the
    whole time instead priced a skewed 2000-token prefill below its FLOPs. ``tp`` / ``ep``: the MoE layout
    (default: tensor parallel over the platform's GPUs, one EP rank); ``tokens``: every rank's together."""
    from ...costs.quant import compute_dtype

    m = ctx.model
    E, k = m.moe.num_experts, m.moe.top_k
    q = quant_kind(ctx.edtype, m)
    tp_ = ctx.platform.num_gpus if tp is None else tp
    t = tables.moe_s(tokens, m.hidden_size, m.moe.expert_intermediate_size, E, k, q, tp=tp_, ep=ep)
    if t is None:
        return None
    gpu = ctx.platform.gpu
    peak, _ = gpu.peak_for(compute_dtype(ctx.edtype, gpu))
    split = float(tp_ * ep)
    mats = 3.0 if m.moe.gated else 2.0
    compute = 2.0 * mats * m.hidden_size * m.moe.expert_intermediate_size * tokens * k / (split * peak)
    one_expert = ctx.expert_weight_bytes / (split * gpu.memory_bandwidth_bytes_per_s)
    even = min(float(E), tokens * k)
    routed = min(even, ctx.active_experts(tokens))
    return t * max(compute, one_expert * routed) / max(compute, one_expert * even)


def quant_kind(dtype: str, model) -> str:
    """The kernel-table quant string of weights stored as ``dtype``: the model's native kind where ``dtype`` is
    its native storage (fp8 of a block-scaled checkpoint: ``fp8_block``), else ``dtype`` itself (fp8 = per-tensor)."""
    kind = model.quant_kind
    if kind == "fp8_block" and dtype == "fp8":
        return "fp8_block"
    if kind in ("mxfp4", "nvfp4") and dtype in ("mxfp4", "fp4", "nvfp4"):
        return kind
    if kind == "int4" and dtype in ("int4", "int4_g32"):
        return "int4"  # the engines' W4A16 MoE kernels (AIConfigurator's int4_wo tables), whatever the group size
    return dtype
