"""Shared pieces of every spec: the frozen base model, sources, dtypes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: Data types moesim knows. Weight dtypes decide bytes moved; compute dtypes pick a peak FLOP/s.
DType = Literal["fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4", "int4_g32", "fp4", "mxfp4", "nvfp4"]

#: Storage bytes per element. mxfp4 is 4-bit values plus one 8-bit scale per 32 values
#: (OCP Microscaling spec v1.0, section 5): (32*4 + 8) / 32 / 8 = 0.53125 bytes.
BYTES_PER_ELEMENT: dict[str, float] = {
    "fp32": 4.0,
    "tf32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
    # 4-bit integers plus one bf16 scale per group of 32 (symmetric, no zero point: compressed-tensors
    # "pack-quantized" int4 group_size 32, Kimi-K2.5's / K2-Thinking's experts): 0.5 + 2/32 byte
    "int4_g32": 0.5625,
    "fp4": 0.5,
    "mxfp4": 0.53125,
    "nvfp4": 0.5625,  # 4-bit e2m1 + one fp8 (e4m3) scale per 16 elements (NVIDIA NVFP4): 0.5 + 1/16 byte
}


def bytes_per_element(dtype: str) -> float:
    """Bytes one element of ``dtype`` occupies in memory."""
    return BYTES_PER_ELEMENT[dtype]


class Spec(BaseModel):
    """Base of every spec: validated, immutable, unknown fields rejected, numbers finite."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False)


class Source(Spec):
    """Where a figure comes from. ``derived`` explains arithmetic done on sourced figures."""

    title: str
    url: str | None = None
    note: str | None = None


class Sourced(Spec):
    """A spec entry that carries its provenance."""

    name: str
    aliases: tuple[str, ...] = ()
    description: str | None = None
    sources: tuple[Source, ...] = Field(default=(), description="Every entry names where its figures come from.")
    derived: dict[str, str] = Field(
        default_factory=dict,
        description="field name -> how that number was derived from the sources",
    )
