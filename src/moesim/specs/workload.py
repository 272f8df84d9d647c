"""Workload specs: what is asked of the deployment."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .common import Spec


class OfflineWorkload(Spec):
    """A fixed set of requests processed as fast as possible (throughput-oriented).

    Prompts are padded or truncated to ``prompt_tokens`` and every request generates
    ``gen_tokens`` tokens, as FlexGen (arXiv 2303.06865, section 6) and MoE-Gen
    (arXiv 2503.09716, section 5.1) evaluate their systems.
    """

    kind: Literal["offline"] = "offline"
    num_requests: int = Field(ge=1, default=1000)
    prompt_tokens: int = Field(ge=1, default=512)
    gen_tokens: int = Field(ge=1, default=256)
    batch_size: int | None = Field(default=None, ge=1, description="fix the batch; None = the system searches")

    @property
    def total_context_tokens(self) -> int:
        return self.prompt_tokens + self.gen_tokens


class LengthDistribution(Spec):
    kind: Literal["fixed", "uniform", "lognormal"] = "fixed"
    mean_tokens: float = Field(gt=0)
    min_tokens: int | None = None
    max_tokens: int | None = None
    sigma: float = Field(default=1.0, gt=0, allow_inf_nan=False,
                         description="lognormal shape: sigma of log(length); its mu keeps the mean")


class OnlineWorkload(Spec):
    """Requests arriving over time (Poisson), for latency-oriented serving (used by continuous batching)."""

    kind: Literal["online"] = "online"
    arrival_rate_per_s: float = Field(gt=0)
    num_requests: int = Field(ge=1, default=1000)
    prompt: LengthDistribution
    gen: LengthDistribution
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> "OnlineWorkload":
        for dist in (self.prompt, self.gen):
            if dist.min_tokens and dist.max_tokens and dist.min_tokens > dist.max_tokens:
                raise ValueError("min_tokens > max_tokens")
        return self


Workload = OfflineWorkload | OnlineWorkload
