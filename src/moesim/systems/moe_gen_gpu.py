"""`moe-gen-gpu`: MoE-Gen(G), module-based batching with all attention on the GPU.

MoE-Gen (arXiv 2503.09716) reports two variants: (G) keeps every attention micro-batch on the
GPU, its KV copied over PCIe; (H) runs a searched fraction omega on the CPU (Table 6). This is
(G): the same policy as ``moe-gen`` with omega fixed at 0.
"""

from __future__ import annotations

from pydantic import Field

from .moe_gen import MoEGen, MoEGenParams


class MoEGenGPUParams(MoEGenParams):
    cpu_attention_fraction: float | None = Field(default=0.0, ge=0, le=0, description="always 0 in MoE-Gen(G)")


class MoEGenGPU(MoEGen):
    name = "moe-gen-gpu"
    summary = ("MoE-Gen(G): module-based batching with weights and KV in host memory, all attention on the GPU "
               "in micro-batches (KV copied over PCIe), experts on the accumulated batch")
    Params = MoEGenGPUParams
