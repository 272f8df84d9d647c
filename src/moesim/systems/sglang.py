"""`sglang`: SGLang's aggregated serving (Zheng et al., "SGLang: Efficient Execution of Structured Language
Model Programs", NeurIPS 2024), tensor parallel only: continuous batching over a token-granular KV pool, chunked
prefill, CUDA-graph decode and the overlap scheduler.

Scheduling and step pricing are shared with vLLM and TensorRT-LLM (:mod:`.shared.continuous`); what is SGLang's:

Memory (``ModelRunner`` / ``server_args.py``): ``mem_fraction_static`` of each GPU's memory holds the weights and
the KV pool ("static" memory); the rest is left for activations and CUDA-graph buffers::

    kv_pool = min(mem_fraction_static * M_gpu - W / n,  M_usable - W / n - act(chunked_prefill_size))

(the second term: the rest of the memory must still hold the CUDA context and a chunk's activations, which on a
small GPU the default fraction would not leave).

Its default depends on the tensor-parallel size (``ServerArgs.__post_init__``, SGLang v0.4): 0.88 at TP 1,
0.87 at TP 2, 0.85 at TP 4, 0.81 at TP 8 (``--param mem_fraction_static=X`` overrides). The pool is token-granular
(``page_size`` 1) and there is no cap on running requests beyond what it holds unless ``max_running_requests`` is
set. Prefill chunks of ``chunked_prefill_size`` (8192) tokens share steps with decodes.

Execution: decode batches replay CUDA graphs captured up to ``cuda_graph_max_bs`` (batches padded to the next
captured size: 1, 2, 4, 8, then every 8); prefill ("extend") runs eagerly, its long kernels keeping the GPU busy
while the host issues the next (priced GPU-alone, :mod:`.shared.engine_step`). The overlap scheduler (default
since v0.4) prepares the next batch on the CPU while the GPU runs the current one; its per-step CPU constants
(``systems_db/sglang.yaml``) are not fitted (no fit row of AIConfigurator's file runs SGLang).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..costs import Execution
from ..modules import Context
from .shared.continuous import ContinuousBatchingEngine, EngineKnobs
from .shared.engine_step import EngineRuntime, engine_execution, runtime_constants

#: SGLang v0.4 ServerArgs.__post_init__: mem_fraction_static by tensor-parallel size (largest TP first)
_MEM_FRACTION_BY_TP = ((16, 0.79), (8, 0.81), (4, 0.85), (2, 0.87), (1, 0.88))
UNLIMITED = 1 << 30


class SGLangParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    mem_fraction_static: float | None = Field(
        default=None, gt=0, le=1, description="fraction of each GPU's memory for weights + KV pool; None = SGLang's "
                                              "default by TP size (0.88 TP1, 0.87 TP2, 0.85 TP4, 0.81 TP8)")
    max_running_requests: int | None = Field(
        default=None, ge=1, description="most requests running at once (None = as many as the KV pool holds)")
    chunked_prefill_size: int = Field(default=8192, ge=1, description="prefill tokens per step (chunked prefill)")
    cuda_graph_max_bs: int = Field(default=256, ge=0, description="largest decode batch captured in a CUDA graph")
    page_size: int = Field(default=1, ge=1, description="tokens per KV page (SGLang default 1)")
    disable_overlap_schedule: bool = Field(default=False, description="turn the overlap scheduler off")


class SGLang(ContinuousBatchingEngine):
    name = "sglang"
    execution_modes = {"prefill": "graph", "decode": "graph"}  # eager "extend" prefill, priced GPU-alone: the host runs ahead
    summary = ("SGLang: continuous batching with chunked prefill, CUDA-graph decode, overlap scheduler; weights on "
               "the GPUs, tensor parallel; token-granular KV pool in mem_fraction_static")
    Params = SGLangParams

    @property
    def knobs(self) -> EngineKnobs:
        p = self.params
        return EngineKnobs("SGLang", p.max_running_requests or UNLIMITED, p.chunked_prefill_size, p.page_size, True,
                           "max_running_requests")

    def mem_fraction(self, ctx: Context) -> float:
        """``mem_fraction_static``: the parameter, or SGLang's default for the platform's TP size."""
        if self.params.mem_fraction_static is not None:
            return self.params.mem_fraction_static
        n = ctx.platform.num_gpus
        return next(f for tp, f in _MEM_FRACTION_BY_TP if n >= tp)

    def runtime(self, ctx: Context) -> EngineRuntime:
        p = self.params
        c = runtime_constants(self.name)
        top = p.cuda_graph_max_bs
        sizes = tuple(s for s in [1, 2, 4, 8] + list(range(16, top + 1, 8)) if s <= top)
        return EngineRuntime(self.name, engine_execution("graph"), engine_execution("graph"), c["step_cpu_s"],
                             c["step_cpu_per_seq_s"], bool(c["overlap_scheduler"]) and not p.disable_overlap_schedule,
                             sizes, uncaptured=Execution("eager", engine_kernels=True))

    def _kv_pool_bytes(self, ctx: Context, weights_gpu: float, act: float) -> tuple[float, str]:
        f = self.mem_fraction(ctx)
        p = ctx.platform
        static = f * p.gpu.memory_bytes - weights_gpu
        room = p.usable_gpu_memory_bytes_per_gpu - weights_gpu - act  # what the rest must still hold
        return (min(static, room), f"mem_fraction_static={f:g} of {p.gpu.memory_bytes / 1e9:.1f} GB holds weights and "
                                   f"KV pool (the pool never takes the activations' and CUDA context's memory)")
