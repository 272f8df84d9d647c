"""`serving.simulate`: an online workload served by any system that provides a step-time model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import MoesimError
from ..specs.workload import LengthDistribution, OnlineWorkload
from .arrivals import Requests, sample_requests
from .model import decode_steps, ranks_of
from .result import OnlineResult, summarize
from .scheduler import run

if TYPE_CHECKING:
    from ..modules import Context
    from ..systems.base import Plan, ServingSystem


def online_systems() -> list[str]:
    """Names of the registered systems that provide a step-time model (override ``online_model``)."""
    from ..systems import SYSTEMS
    from ..systems.base import ServingSystem

    return [name for name, cls in SYSTEMS.items() if cls.online_model is not ServingSystem.online_model]


def _describe(dist: LengthDistribution) -> str:
    text = f"{dist.kind}, mean {dist.mean_tokens:g}"
    if dist.kind == "lognormal":
        text += f", sigma {dist.sigma:g}"
    if dist.min_tokens or dist.max_tokens:
        text += f", within [{dist.min_tokens or 1}, {dist.max_tokens or 'context'}]"
    return text


def simulate(ctx: Context, plan: Plan, system: ServingSystem, workload: OnlineWorkload) -> OnlineResult:
    """Serve ``workload`` (Poisson arrivals) with the continuous-batching scheduler of
    :mod:`moesim.serving.scheduler`, each step priced by ``system.online_model(ctx, plan, ...)``.

    ``plan`` is ``system``'s plan for ``ctx`` (it fixes the configuration, e.g. the KV pool). Raises
    MoesimError when the system has no step-time model, InfeasibleError when one request cannot fit.
    """
    if plan.system != system.name:
        raise MoesimError(f"online serving with {system.name} needs a plan of {system.name}, got one of {plan.system}")
    requests = sample_requests(workload, cap=ctx.model.max_context_tokens)
    model = system.online_model(ctx, plan, int(requests.context_tokens.max()))
    if model is None:
        raise MoesimError(f"online serving is not modelled for {system.name}; systems that can serve online: "
                          f"{', '.join(online_systems()) or 'none'}")
    ranks = ranks_of(model)
    served = requests if ranks == 1 else Requests(requests.arrival_s[::ranks], requests.prompt_tokens[::ranks],
                                                  requests.gen_tokens[::ranks])
    steps = decode_steps(model, served.gen_tokens)  # speculative decoding: fewer decode steps than tokens
    trace = run(served if steps is served.gen_tokens else Requests(served.arrival_s, served.prompt_tokens, steps),
                model, system.name)
    notes = [f"{workload.num_requests} requests, Poisson arrivals at {workload.arrival_rate_per_s:g}/s "
             f"(seed {workload.seed}); prompt lengths {_describe(workload.prompt)}, generation lengths "
             f"{_describe(workload.gen)}",
             "iteration-level scheduling as vLLM V1 (running first, FCFS admission, recompute preemption of "
             "the newest request); scheduler CPU time not modelled"]
    if ranks > 1:
        notes.append(f"attention data parallel: every {ranks}th request (round robin) served by the simulated DP "
                     f"rank ({len(served)} of {len(requests)}); latencies, steps and sequences a step are that rank's, "
                     f"throughput the instance's")
    return summarize(served, trace, system=system.name, arrival_rate_per_s=workload.arrival_rate_per_s,
                     kv_blocks=model.capacity.kv_blocks, instance=requests,
                     assumptions=notes + list(ctx.platform.assumptions) + list(model.assumptions))
