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
    # the uncertainty band of each figure (moesim.uncertainty; set by moesim.predict_online; None before)
    ttft_s_low: Percentiles | None = None
    ttft_s_high: Percentiles | None = None
    tpot_s_low: Percentiles | None = None
    tpot_s_high: Percentiles | None = None
    e2e_s_low: Percentiles | None = None
    e2e_s_high: Percentiles | None = None
    throughput_tok_s_low: float | None = None
    throughput_tok_s_high: float | None = None
    makespan_s_low: float | None = None
    makespan_s_high: float | None = None
    uncertainty: dict[str, Any] = {}

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def format(self) -> str:
        """The result as aligned text lines (latencies with units), then the assumptions."""
        from ..units import fmt_seconds

        rows = [("system", self.system), ("arrival rate", f"{self.arrival_rate_per_s:.4g} requests/s")]
        def pm(v: float, lo: float | None, hi: float | None) -> str:
            return "" if lo is None or hi is None or v <= 0 else f" (-{1 - lo / v:.0%}/+{hi / v - 1:.0%})"

        for label, name in (("TTFT", "ttft_s"), ("TPOT", "tpot_s"), ("end-to-end latency", "e2e_s")):
            p, lo, hi = (getattr(self, name + s) for s in ("", "_low", "_high"))
            rows.append((label, f"P50 {fmt_seconds(p.p50)}  P90 {fmt_seconds(p.p90)}  P99 {fmt_seconds(p.p99)}"
                         + pm(p.p50, lo and lo.p50, hi and hi.p50)))
        rows += [("generation throughput", f"{self.throughput_tok_s:.4g} tok/s"
                  + pm(self.throughput_tok_s, self.throughput_tok_s_low, self.throughput_tok_s_high)),
                 ("request throughput", f"{self.request_throughput_per_s:.4g} requests/s"),
                 ("requests / steps", f"{self.num_requests} / {self.steps} "
                                      f"({self.mean_scheduled_per_step:.3g} sequences a step)"),
                 ("preemptions", str(self.preemptions)), ("KV blocks", str(self.kv_blocks)),
                 ("time for the workload", fmt_seconds(self.makespan_s)
                  + pm(self.makespan_s, self.makespan_s_low, self.makespan_s_high))]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows] + ["", "assumptions:"]
        return "\n".join(lines + [f"  - {note}" for note in self.assumptions])


def summarize(requests: Requests, trace: Trace, *, system: str, arrival_rate_per_s: float, kv_blocks: int,
              assumptions: list[str], instance: Requests | None = None) -> OnlineResult:
    """Percentiles and throughput of a finished run (every request has finished). ``instance``: the run is one
    attention-DP rank's, ``requests`` its share of the instance's requests (``instance``), the other ranks serving
    theirs alike: latencies are the rank's, throughputs and the request count the instance's over the rank's
    span."""
    arrivals, gens = requests.arrival_s, requests.gen_tokens
    multi = gens > 1
    tpot = ((trace.finish_s[multi] - trace.first_token_s[multi]) / (gens[multi] - 1) if multi.any()
            else np.zeros(1))
    span = float(np.nanmax(trace.finish_s) - arrivals[0])
    whole = requests if instance is None else instance
    return OnlineResult(
        system=system,
        ttft_s=Percentiles.of(trace.first_token_s - arrivals),
        tpot_s=Percentiles.of(tpot),
        e2e_s=Percentiles.of(trace.finish_s - arrivals),
        throughput_tok_s=float(whole.gen_tokens.sum()) / span,
        request_throughput_per_s=len(whole) / span,
        arrival_rate_per_s=arrival_rate_per_s,
        num_requests=len(whole),
        steps=trace.steps,
        mean_scheduled_per_step=trace.scheduled / trace.steps if trace.steps else 0.0,
        preemptions=trace.preemptions,
        kv_blocks=kv_blocks,
        makespan_s=span,
        assumptions=assumptions,
    )
