"""Cost of each operation family: FLOPs and bytes (pure functions of specs), and time on a device."""

from .attention import attention_core, attention_projections, effective_span, mla_decode_unfused
from .cpu import cpu_attention, cpu_compute_dtype, cpu_experts, cpu_kernel_time_s
from .efficiency import CalibratedEfficiency, EfficiencyModel, ProfileEfficiency, efficiency_for
from .execution import EAGER, Execution, efficiency_in
from .embedding import embedding_lookup, lm_head
from .ffn import dispatch_combine, expert_ffn, moe_layer, routed_experts, router
from .gemm import gemm, scatter_add, vector_op
from .quant import compute_dtype, needs_dequant
from .roofline import OpCost, bound_of, cpu_time_s, gpu_time_s, compute_floor_s
from .routing import expected_active_experts, expected_tokens_per_expert, inclusion_probabilities, load_imbalance
from .transfer import (COPY_PATHS, CopyDirection, CopyPath, achieved_link, copy_time_s, host_copy_bytes_per_s,
                       link_bandwidth_bytes_per_s, path_copy_time_s, platform_copy_time_s)

__all__ = [
    "EAGER", "Execution", "efficiency_in",
    "CalibratedEfficiency", "EfficiencyModel", "OpCost", "efficiency_for", "ProfileEfficiency", "attention_core", "attention_projections", "bound_of",
    "COPY_PATHS", "CopyDirection", "CopyPath", "achieved_link", "compute_dtype", "copy_time_s", "host_copy_bytes_per_s",
    "path_copy_time_s", "platform_copy_time_s", "cpu_attention", "cpu_compute_dtype", "cpu_experts", "cpu_kernel_time_s", "cpu_time_s", "dispatch_combine",
    "effective_span", "embedding_lookup", "expected_active_experts", "expected_tokens_per_expert",
    "expert_ffn", "gemm", "gpu_time_s", "compute_floor_s", "inclusion_probabilities", "link_bandwidth_bytes_per_s", "lm_head",
    "load_imbalance", "mla_decode_unfused", "moe_layer", "needs_dequant", "routed_experts", "router", "scatter_add",
    "vector_op",
]
