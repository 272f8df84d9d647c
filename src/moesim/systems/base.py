"""What a serving system is to moesim, and the representative-step machinery they share.

A serving system is a policy: given a :class:`~moesim.modules.Context` it chooses its
configuration (batch sizes, placements) and builds engine tasks for one forward pass.
Steps repeat, so moesim never simulates token by token:

* layers: for each distinct layer kind (dense/MoE, windowed/full) it simulates
  ``min(count, SIMULATED_LAYERS)`` consecutive layers in one engine (so cross-layer overlap of
  prefetching is captured) and extrapolates the rest at the steady-state marginal cost
  ``end(layer n) - end(layer n-1)``;
* decode: step time depends on context length, so it is simulated at the first, middle and
  last generated position and integrated with Simpson's rule (exact for quadratic growth).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from pydantic import BaseModel

from ..engine import Engine
from ..modules import Context
from ..specs import LayerKind

SIMULATED_LAYERS = 3


@dataclass
class StepSim:
    """One simulated forward pass (all layers, extrapolated from representative ones)."""

    time_s: float
    engine: Engine
    simulated_layers: int
    total_layers: int
    busy_s: dict[str, float]  # per resource, extrapolated to the whole pass
    category_s: dict[str, float]  # per module category, extrapolated
    peak_memory_bytes: dict[str, float]

    def utilization(self) -> dict[str, float]:
        return {r: min(1.0, b / self.time_s) for r, b in self.busy_s.items()} if self.time_s else {}

    def bottleneck(self) -> str:
        util = self.utilization()
        return max(util, key=util.get) if util else "none"


@dataclass
class Plan:
    """A system's chosen configuration and its simulated phases for an offline workload."""

    system: str
    config: dict[str, Any]
    batch_size: int  # sequences decoded together
    num_batches: int
    prefill_passes_per_batch: int
    prefill: StepSim  # one prefill pass
    prefill_tokens_per_pass: int
    decode_points: list[tuple[int, StepSim]]  # (context tokens, step)
    decode_time_per_batch_s: float
    gpu_mem_bytes: float  # per GPU, peak
    host_mem_bytes: float
    placement: dict[str, str]
    notes: list[str] = field(default_factory=list)

    @property
    def prefill_time_per_batch_s(self) -> float:
        return self.prefill_passes_per_batch * self.prefill.time_s

    @property
    def total_time_s(self) -> float:
        return self.num_batches * (self.prefill_time_per_batch_s + self.decode_time_per_batch_s)

    @property
    def mid_decode(self) -> tuple[int, StepSim]:
        return self.decode_points[len(self.decode_points) // 2]


def simulate_pass(ctx: Context, engine: Engine, build_layer: Callable[[Engine, int, LayerKind], int],
                  prologue: Callable[[Engine], None] | None = None,
                  epilogue: Callable[[Engine], None] | None = None, *,
                  gpu_holds: dict[str, float] | None = None, head_s: float | None = None) -> StepSim:
    """Simulate one forward pass: representative layers of each kind, extrapolated.

    ``build_layer(engine, index, kind)`` submits one layer's tasks and returns the id of its
    last task (the layer is done when that task ends). ``gpu_holds`` (label -> bytes) is GPU
    memory held for the whole pass; ``head_s``, the LM head and embedding, runs on the GPU after
    the last task.
    """
    kinds = ctx.model.layer_kinds()
    for label, nbytes in (gpu_holds or {}).items():
        engine.hold("gpu", nbytes, label)
    if prologue:
        prologue(engine)
    extra_s = 0.0
    simulated = 0
    marginal: dict[LayerKind, float] = {}
    for kind, count in kinds.items():
        n = min(count, SIMULATED_LAYERS)
        ends = []
        for _ in range(n):
            ends.append(engine.end_of(build_layer(engine, simulated, kind)))
            simulated += 1
        if count > n:  # n == SIMULATED_LAYERS >= 2: steady-state marginal cost of one more layer
            marginal[kind] = max(ends[-1] - ends[-2], 0.0)
            extra_s += (count - n) * marginal[kind]
    if epilogue:
        epilogue(engine)
    if head_s is not None:
        engine.add("lm head + embedding", "gpu", head_s, [len(engine.tasks) - 1], category="head")
    peaks = engine.check_memory()
    sim_time = engine.makespan_s
    total = sim_time + extra_s
    scale = total / sim_time if sim_time else 1.0
    return StepSim(
        time_s=total,
        engine=engine,
        simulated_layers=simulated,
        total_layers=ctx.model.num_layers,
        busy_s={r: b * scale for r, b in engine.busy_s().items()},
        category_s={c: b * scale for c, b in engine.busy_by_category_s().items()},
        peak_memory_bytes=peaks,
    )


def sequential_steps(steps: list[tuple[StepSim, float]]) -> StepSim:
    """Steps that run one after another, each ``weight`` times, as one repeating step: times, busy time
    and per-category time add up (weighted), peak memory is the largest; the engine is the first's."""
    def total(attr: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for s, k in steps:
            for key, v in getattr(s, attr).items():
                out[key] = out.get(key, 0.0) + k * v
        return out

    first = steps[0][0]
    peaks: dict[str, float] = {}
    for s, _ in steps:
        for key, v in s.peak_memory_bytes.items():
            peaks[key] = max(peaks.get(key, 0.0), v)
    return StepSim(time_s=sum(k * s.time_s for s, k in steps), engine=first.engine,
                   simulated_layers=first.simulated_layers, total_layers=first.total_layers,
                   busy_s=total("busy_s"), category_s=total("category_s"), peak_memory_bytes=peaks)


def simpson_decode_time(step_at: Callable[[int], StepSim], prompt: int, gen: int) -> tuple[float, list[tuple[int, StepSim]]]:
    """Sum of decode-step times over ``gen`` steps, from steps at 3 contexts (Simpson's rule)."""
    first, last = prompt + 1, prompt + gen
    if gen <= 2:
        points = [(c, step_at(c)) for c in range(first, last + 1)]
        return sum(s.time_s for _, s in points), points
    mid = (first + last) // 2
    points = [(first, step_at(first)), (mid, step_at(mid)), (last, step_at(last))]
    t0, tm, t1 = (s.time_s for _, s in points)
    return gen * (t0 + 4 * tm + t1) / 6.0, points


def balanced_batches(num_requests: int, max_batch: int) -> tuple[int, int]:
    """Split requests into the fewest equal batches not above ``max_batch``: (batch size, count)."""
    count = math.ceil(num_requests / max_batch)
    return math.ceil(num_requests / count), count


class ServingSystem(ABC):
    """A named serving policy with its own typed parameters."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line: how it batches, where weights and KV live
    Params: ClassVar[type[BaseModel]]
    supports_speculative: ClassVar[bool] = False  # whether plan() models speculative decoding

    def __init__(self, params: BaseModel | dict | None = None):
        self.params = params if isinstance(params, BaseModel) else self.Params.model_validate(params or {})

    @abstractmethod
    def plan(self, ctx: Context) -> Plan:
        """Choose the configuration for ``ctx`` and simulate it; raise InfeasibleError if none fits."""

    def online_model(self, ctx: Context, plan: Plan, max_context_tokens: int) -> Any:
        """A :class:`moesim.serving.StepTimeModel` pricing this system's iterations for online serving
        (``plan`` is this system's plan for ``ctx``; no step will hold a context over ``max_context_tokens``),
        or None: this system has no continuous-batching scheduler to serve requests arriving over time."""
        return None
