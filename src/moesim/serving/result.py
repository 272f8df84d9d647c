"""The typed result of an online-serving simulation, and how it is summarized from a scheduler trace."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from .arrivals import Requests
from .scheduler import Trace

PERCENTILES = (50, 90, 99)


class Percentiles(BaseModel):
    """P50, P90 and P99 of a per-request quantity (numpy's linear interpolation between samples)."""

    model_config = ConfigDict(frozen=True)

    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, samples: np.ndarray) -> "Percentiles":
        p50, p90, p99 = (float(v) for v in np.percentile(samples, PERCENTILES))
        return cls(p50=p50, p90=p90, p99=p99)


class OnlineResult(BaseModel):
    """What serving an online workload gives: latency percentiles (seconds), throughput, counters.

    TTFT: first token sampled - arrival. TPOT, per request that generates more than one token:
    (last token - first token) / (generated - 1). End-to-end: last token - arrival. Throughputs are over
    the makespan, last finish - first arrival.
    """

    model_config = ConfigDict(frozen=True)

    system: str
    ttft_s: Percentiles
    tpot_s: Percentiles
    e2e_s: Percentiles
    throughput_tok_s: float  # generated tokens / makespan
    request_throughput_per_s: float
    arrival_rate_per_s: float
    num_requests: int
    steps: int
    mean_scheduled_per_step: float  # sequences per step
    preemptions: int
    kv_blocks: int
    makespan_s: float
    assumptions: list[str]

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def format(self) -> str:
        """The result as aligned text lines (latencies with units), then the assumptions."""
        from ..units import fmt_seconds

        rows = [("system", self.system), ("arrival rate", f"{self.arrival_rate_per_s:.4g} requests/s")]
        for label, p in (("TTFT", self.ttft_s), ("TPOT", self.tpot_s), ("end-to-end latency", self.e2e_s)):
            rows.append((label, f"P50 {fmt_seconds(p.p50)}  P90 {fmt_seconds(p.p90)}  P99 {fmt_seconds(p.p99)}"))
        rows += [("generation throughput", f"{self.throughput_tok_s:.4g} tok/s"),
                 ("request throughput", f"{self.request_throughput_per_s:.4g} requests/s"),
                 ("requests / steps", f"{self.num_requests} / {self.steps} "
                                      f"({self.mean_scheduled_per_step:.3g} sequences a step)"),
                 ("preemptions", str(self.preemptions)), ("KV blocks", str(self.kv_blocks)),
                 ("time for the workload", fmt_seconds(self.makespan_s))]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows] + ["", "assumptions:"]
        return "\n".join(lines + [f"  - {note}" for note in self.assumptions])


def summarize(requests: Requests, trace: Trace, *, system: str, arrival_rate_per_s: float, kv_blocks: int,
              assumptions: list[str]) -> OnlineResult:
    """Percentiles and throughput of a finished run (every request has finished)."""
    arrivals, gens = requests.arrival_s, requests.gen_tokens
    multi = gens > 1
    tpot = ((trace.finish_s[multi] - trace.first_token_s[multi]) / (gens[multi] - 1) if multi.any()
            else np.zeros(1))
    span = float(np.nanmax(trace.finish_s) - arrivals[0])
    n = len(requests)
    return OnlineResult(
        system=system,
        ttft_s=Percentiles.of(trace.first_token_s - arrivals),
        tpot_s=Percentiles.of(tpot),
        e2e_s=Percentiles.of(trace.finish_s - arrivals),
        throughput_tok_s=float(gens.sum()) / span,
        request_throughput_per_s=n / span,
        arrival_rate_per_s=arrival_rate_per_s,
        num_requests=n,
        steps=trace.steps,
        mean_scheduled_per_step=trace.scheduled / trace.steps if trace.steps else 0.0,
        preemptions=trace.preemptions,
        kv_blocks=kv_blocks,
        makespan_s=span,
        assumptions=assumptions,
    )
