"""`trtllm`: TensorRT-LLM's aggregated serving with its PyTorch backend (``trtllm-serve``, TensorRT-LLM >= 1.0):
in-flight batching over a paged KV cache, CUDA-graph decode, the overlap scheduler.

Scheduling and step pricing are shared with vLLM and SGLang (:mod:`.shared.continuous`); what is TensorRT-LLM's:

Memory (``KvCacheConfig.free_gpu_memory_fraction``, default 0.9): after the weights are loaded and a profiling
forward pass of ``max_num_tokens`` tokens has run, that fraction of the GPU's free memory becomes the KV pool::

    kv_pool = free_gpu_memory_fraction * (M_gpu - reserved - W / n - act(max_num_tokens))

In-flight batching: each iteration schedules the running requests' next tokens and context (prefill) requests
within ``max_num_tokens`` (8192) tokens and ``max_batch_size`` (2048) requests; pages of ``tokens_per_block`` (32).
Chunked prefill is off by default, so a prompt enters whole (one iteration when it fits the token budget, which
is all this model prices: longer prompts are refused by TensorRT-LLM itself).

Execution: decode iterations replay CUDA graphs captured for batch sizes 1-31, 32, 64 and 128 (TensorRT-LLM's
default list without padding up to ``cuda_graph_max_batch_size`` 128, ``systems_db/trtllm.yaml``); without
``cuda_graph_padding`` (off by default) a batch that is not in the list runs eagerly (priced eager with the engine's kernels); context iterations run eagerly
(``torch_compile_config.enable_piecewise_cuda_graph`` off by default), their long kernels keeping the GPU busy (priced
GPU-alone), and a short one waits on the host's issue of its kernels: for the attention kinds
``systems_db/trtllm.yaml`` lists (``eager_forward_host_attention_kinds``: MLA, the DeepSeek-V3 architecture whose eager
forward a source times) such a forward takes ``max(GPU time, L x eager_forward_host_s_per_layer)`` for L layers, and
so does a decode batch that runs eagerly; ``enable_piecewise_cuda_graph`` removes the context floor. The overlap scheduler (on by default) overlaps the
per-step CPU work (``systems_db/trtllm.yaml``, not fitted) with the GPU's.

Fused MoE (``moe_config.backend``, default CUTLASS): CUTLASS and DEEPGEMM are priced from the measured kernel tables
where they cover the call (AIConfigurator's B200 tables measured CUTLASS for NVFP4 and DeepGEMM for fp8 block-scaled
experts); TRTLLM runs TensorRT-LLM-Gen's fused MoE (``TRTLLMGenFusedMoE``, Blackwell only), priced with that kernel's
structure (:func:`.shared.engine_step.trtllm_gen_moe_kernels`) instead of the tables.

Layouts (:meth:`TRTLLM.parallel_layout`, priced by :mod:`.shared.parallel`): ``tp_size`` (moesim's ``--gpus``)
is the instance's GPUs; ``enable_attention_dp`` runs attention on every GPU alone over its own requests; the MoE
splits over ``moe_tensor_parallel_size`` x ``moe_expert_parallel_size`` = tp_size (TensorRT-LLM's ``Mapping``).

Disaggregated prefill/decode and MTP speculative decoding: TensorRT-LLM's disaggregated serving (context and generation servers) and MTP (``speculative_config`` decoding_type MTP, ``num_nextn_predict_layers``), as ``--disaggregate`` with the pools' GPUs, counts and
flags (:mod:`.shared.disaggregation`) and the draft steps (:mod:`.shared.speculative`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from ..errors import InfeasibleError
from ..modules import Context
from .shared.continuous import ContinuousBatchingEngine, EngineKnobs
from .shared.disaggregation import DisaggregationParams
from .shared.speculative import SpeculativeParams
from .shared.engine_step import EngineRuntime, engine_execution, graph_sizes, runtime_constants, with_moe_kernel
from .shared.parallel import ParallelLayout, world_gpus

class TRTLLMParams(DisaggregationParams, SpeculativeParams):
    model_config = ConfigDict(extra="forbid", frozen=True)
    free_gpu_memory_fraction: float = Field(
        default=0.9, gt=0, le=1, description="fraction of the free GPU memory (after weights and activations) given "
                                             "to the KV cache (KvCacheConfig default 0.9)")
    max_batch_size: int = Field(default=2048, ge=1, description="most requests in flight (LLM API default 2048)")
    max_num_tokens: int = Field(default=8192, ge=1, description="tokens one iteration may schedule (default 8192)")
    tokens_per_block: int = Field(default=32, ge=1, description="tokens per KV page (default 32)")
    cuda_graph_max_batch_size: int = Field(default=128, ge=0, description="largest decode batch with a CUDA graph")
    cuda_graph_padding: bool = Field(default=False, description="pad decode batches to the next captured size "
                                                                "(CudaGraphConfig.enable_padding, default off)")
    disable_overlap_scheduler: bool = Field(default=False, description="turn the overlap scheduler off")
    enable_attention_dp: bool = Field(
        default=False, description="attention data parallel: every GPU runs attention on its own requests "
                                   "(LLM API enable_attention_dp)")
    attention_dp_balance: bool = Field(
        default=False, description="attention DP balance (LLM API attention_dp_config.enable_balance, default off): "
                                   "context requests held until every DP rank has one, then prefilled in the same "
                                   "iteration; off: a prompt runs on its own rank while the others wait for it")
    attention_dp_timeout_iters: int = Field(
        default=50, ge=0, description="attention_dp_config.timeout_iters (default 50): with attention_dp_balance, "
                                      "held prompts are released when this many iterations have passed since the "
                                      "last release (online serving: prompts released at most every this many "
                                      "iterations)")
    moe_expert_parallel_size: int | None = Field(
        default=None, ge=1, description="expert-parallel size of the MoE layers (LLM API moe_expert_parallel_size; "
                                        "None = tp_size / moe_tensor_parallel_size, 1 when neither is set)")
    moe_tensor_parallel_size: int | None = Field(
        default=None, ge=1, description="tensor-parallel size of the MoE layers (LLM API moe_tensor_parallel_size; "
                                        "None = tp_size / moe_expert_parallel_size)")
    num_nextn_predict_layers: int = Field(
        default=0, ge=0, description="MTP draft steps per decode step (LLM API speculative_config decoding_type "
                                     "MTP, num_nextn_predict_layers); 0 = off")
    enable_piecewise_cuda_graph: bool = Field(
        default=False, description="replay context (prefill) forwards as piecewise CUDA graphs (LLM API "
                                   "torch_compile_config.enable_piecewise_cuda_graph, off by default): no host-issue "
                                   "floor on a short context forward; otherwise the context phase runs eagerly and, for "
                                   "the attention kinds systems_db/trtllm.yaml lists, a forward takes at least the "
                                   "host's issue of its kernels (eager_forward_host_s_per_layer per layer)")
    moe_backend: Literal["CUTLASS", "TRTLLM", "DEEPGEMM"] = Field(
        default="CUTLASS", description="fused-MoE backend (LLM API moe_config.backend, default CUTLASS): CUTLASS and "
                                       "DEEPGEMM priced from the measured kernel tables where they cover the call; "
                                       "TRTLLM runs TensorRT-LLM-Gen's fused MoE (Blackwell only; FP4, MXFP4 and fp8 "
                                       "block-scaled experts), priced with that kernel's structure")


class TRTLLM(ContinuousBatchingEngine):
    name = "trtllm"
    execution_modes = {"prefill": "graph", "decode": "graph"}  # eager context phase, priced GPU-alone: the host runs ahead
    summary = ("TensorRT-LLM (PyTorch backend): in-flight batching, CUDA-graph decode, overlap scheduler; weights on "
               "the GPUs, tensor parallel; paged KV in free_gpu_memory_fraction of the free memory")
    Params = TRTLLMParams

    speculative_flag = "--num-nextn-predict-layers"

    def speculative_steps(self) -> int:
        return self.params.num_nextn_predict_layers

    @property
    def knobs(self) -> EngineKnobs:
        p = self.params
        return EngineKnobs("TensorRT-LLM", p.max_batch_size, p.max_num_tokens, p.tokens_per_block, True,
                           "max_batch_size")

    def runtime(self, ctx: Context) -> EngineRuntime:
        p = self.params
        c = runtime_constants(self.name)
        sizes = graph_sizes(str(self.constants.value("cuda_graph_batch_sizes")), p.cuda_graph_max_batch_size)
        backend = with_moe_kernel(self.name, "trtllm_gen") if p.moe_backend == "TRTLLM" else self.name
        eager_s = self.eager_forward_host_s(ctx)
        return EngineRuntime(backend, engine_execution("graph"), engine_execution("graph"), c["step_cpu_s"],
                             c["step_cpu_per_seq_s"], bool(c["overlap_scheduler"]) and not p.disable_overlap_scheduler,
                             sizes, pad_to_graph=p.cuda_graph_padding,
                             uncaptured=engine_execution("eager"),
                             prefill_host_s=0.0 if p.enable_piecewise_cuda_graph else eager_s,
                             eager_decode_host_s=eager_s)

    def eager_host_source(self, ctx: Context) -> str:
        return (f"SGLang's measured DeepSeek-V3 figure per layer, ASSUMED for TensorRT-LLM (no source times its eager "
                f"forward), x {ctx.model.num_layers} layers, systems_db/trtllm.yaml; --enable-piecewise-cuda-graph "
                f"removes it from prefill")

    def eager_forward_host_s(self, ctx: Context) -> float:
        """Host time to issue one eager forward of the model (``L x eager_forward_host_s_per_layer`` for L layers)
        where its attention kind is one ``systems_db/trtllm.yaml`` lists (``eager_forward_host_attention_kinds``), else
        0: no source times TensorRT-LLM's eager forward of other architectures, so none is assumed."""
        kinds = {k.strip() for k in str(self.constants.value("eager_forward_host_attention_kinds")).split(",") if k.strip()}
        if ctx.model.attention.kind not in kinds:
            return 0.0
        return ctx.model.num_layers * float(self.constants.value("eager_forward_host_s_per_layer"))

    def ctx_release_iters(self, ctx: Context) -> int:
        """With attention DP and its balance (``attention_dp_config`` enable_balance), TensorRT-LLM's
        ``_balance_adp_requests`` holds context requests until every DP rank has one, or until ``timeout_iters``
        iterations have passed since the last release, or a rank has nothing to generate: online, prompts are
        released at most every ``attention_dp_timeout_iters`` iterations (at once when nothing runs)."""
        p = self.params
        if p.enable_attention_dp and p.attention_dp_balance and self._parallel(ctx).dp > 1:
            return max(1, p.attention_dp_timeout_iters)
        return 1

    def _kv_pool_bytes(self, ctx: Context, weights_gpu: float, act: float) -> tuple[float, str]:
        p = ctx.platform
        free = p.gpu.memory_bytes - p.empirical.gpu_memory_reserved_bytes - weights_gpu - act
        frac = self.params.free_gpu_memory_fraction
        return (frac * free, f"free_gpu_memory_fraction={frac:g} of the {max(free, 0) / 1e9:.1f} GB free after "
                             f"weights and activations")

    def parallel_layout(self, ctx: Context) -> ParallelLayout:
        """TensorRT-LLM's ``Mapping``: tp_size is the instance's GPUs; enable_attention_dp runs attention on each
        GPU alone (tp_size DP ranks of 1 GPU); the MoE layers split over moe_tp x moe_ep = tp_size GPUs (one given,
        the other is tp_size over it; neither: tensor parallel)."""
        p = self.params
        g = world_gpus(ctx.platform)
        mtp, mep = p.moe_tensor_parallel_size, p.moe_expert_parallel_size
        if mtp is None and mep is None:
            mtp, mep = g, 1
        elif mtp is None:
            mtp = g // mep if g % mep == 0 else 0
        elif mep is None:
            mep = g // mtp if g % mtp == 0 else 0
        if not mtp or not mep or mtp * mep != g:
            raise InfeasibleError(f"trtllm: tp_size ({g}) must equal moe_tp_size x moe_ep_size ({mtp or '?'} x "
                                  f"{mep or '?'}) (TensorRT-LLM's Mapping rule)")
        dp = g if p.enable_attention_dp else 1
        # attention DP on one HGX node: the MoE's tokens all-gathered and its output reduce-scattered (TensorRT-LLM's
        # all-to-all MoE path is for multi-node NVLink (MNNVL) systems)
        return ParallelLayout(g, g // dp, dp, mtp, mep, a2a="allgather",
                              prompts_balanced=p.attention_dp_balance and p.enable_attention_dp)

    def plan(self, ctx: Context):
        self._check_moe_backend(ctx)
        if ctx.workload.prompt_tokens > self.params.max_num_tokens:
            raise InfeasibleError(
                f"trtllm: a {ctx.workload.prompt_tokens}-token prompt exceeds max_num_tokens="
                f"{self.params.max_num_tokens} and chunked prefill is off by default; raise max_num_tokens")
        return super().plan(ctx)

    def _check_moe_backend(self, ctx: Context) -> None:
        """TensorRT-LLM's rules for ``moe_config.backend``: TRTLLM (``TRTLLMGenFusedMoE``) runs on Blackwell (SM100)
        only, with FP4 (NVFP4, MXFP4) or fp8 block-scaled experts; DEEPGEMM (``DeepGemmFusedMoE``) runs fp8
        block-scaled experts only."""
        from .shared.engine_step import TRTLLM_GEN_QUANTS, quant_kind

        backend = self.params.moe_backend
        if backend == "CUTLASS" or not ctx.model.moe:
            return
        q = quant_kind(ctx.edtype, ctx.model)
        if backend == "TRTLLM" and (ctx.platform.gpu.architecture != "blackwell"
                                    or q not in TRTLLM_GEN_QUANTS):
            raise InfeasibleError(f"trtllm: moe_config.backend TRTLLM (TensorRT-LLM-Gen fused MoE) runs on Blackwell "
                                  f"GPUs with NVFP4, MXFP4 or fp8 block-scaled experts; here {ctx.platform.gpu.name} "
                                  f"({ctx.platform.gpu.architecture}) with {q} experts: use CUTLASS")
        if backend == "DEEPGEMM" and q != "fp8_block":
            raise InfeasibleError(f"trtllm: moe_config.backend DEEPGEMM runs fp8 block-scaled experts only; these are "
                                  f"{q}: use CUTLASS")
