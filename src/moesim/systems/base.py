"""What a serving system is to moesim, and the representative-step machinery they share.

A serving system is a policy: given a :class:`~moesim.modules.Context` it chooses its
configuration (batch sizes, placements) and builds engine tasks for one forward pass.
Steps repeat, so moesim never simulates token by token:

* layers: for each distinct layer kind (dense/MoE, windowed/full) it simulates
  ``min(count, SIMULATED_LAYERS)`` consecutive layers in one engine (so cross-layer overlap of
  prefetching is captured) and extrapolates the rest at the steady state of the last simulated
  layer (:func:`simulate_layers`): each of the ``count - n`` layers not simulated adds
  ``end(layer n) - end(layer n-1)`` to the step time and repeats layer n's tasks, so its busy time
  per resource and per category; what runs once per pass (the LM head, an embedding, a cold start)
  counts once;
* decode: step time depends on context length, so it is simulated at the first, middle and
  last generated position and integrated with Simpson's rule (exact for quadratic growth).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, TypeVar

from pydantic import BaseModel

from ..db import system_constants
from ..engine import Engine
from ..errors import InfeasibleError, MoesimError
from ..metrics import GPU_ONLY, HostShare
from ..modules import Context
from ..specs import LayerKind
from ..specs.system import SystemConstants
from ..units import fmt_bytes

K = TypeVar("K")

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
    host_decode: HostShare = GPU_ONLY  # what the host CPU reads and computes of a decode step (S-MBU, S-MFU)
    host_prefill: HostShare = GPU_ONLY  # ... of a prefill pass (prefill S-MFU)
    last_batch_time_s: float | None = None  # prefill + decode of a last, partial batch; None: every batch is full

    @property
    def last_batch_partial(self) -> bool:
        return self.last_batch_time_s is not None

    @property
    def prefill_time_per_batch_s(self) -> float:
        return self.prefill_passes_per_batch * self.prefill.time_s

    @property
    def prefill_total_s(self) -> float:
        """The run's prefill time: every batch's, at most the whole run (a last, partial batch is counted as a full
        one's prefill: an upper bound, the share the run's figures split by)."""
        return min(self.total_time_s, self.prefill_time_per_batch_s * self.num_batches)

    @property
    def total_time_s(self) -> float:
        """num_batches x (prefill + decode) of a batch; a last, partial batch charged for what it holds."""
        full = self.prefill_time_per_batch_s + self.decode_time_per_batch_s
        if self.last_batch_time_s is None:
            return self.num_batches * full
        return (self.num_batches - 1) * full + self.last_batch_time_s

    @property
    def mid_decode(self) -> tuple[int, StepSim]:
        return self.decode_points[len(self.decode_points) // 2]

    def headline(self, workload) -> dict[str, float] | None:
        """The headline figures where a plan computes them itself (a disaggregated plan: from its pools' rates),
        else None: :func:`moesim.predict.headline_figures` derives them from one batch's phases."""
        return None


@dataclass
class LayerExtrapolation:
    """The layers of a pass that were simulated, and the work of those that were not."""

    simulated: int = 0
    extra_s: float = 0.0  # step time of the layers not simulated
    busy_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # their busy time per resource
    category_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # ... and per category


def simulate_layers(engine: Engine, runs: Iterable[tuple[K, int]], build_layer: Callable[[Engine, int, K], int],
                    start_run: Callable[[Engine, K], None] | None = None) -> LayerExtrapolation:
    """Simulate runs of identical layers, ``min(count, SIMULATED_LAYERS)`` of each, and extrapolate the rest.

    ``runs`` lists (key, count): ``count`` consecutive layers built by ``build_layer(engine, index, key)``,
    which submits one layer's tasks and returns the id of its last task; ``start_run(engine, key)``
    submits what runs once before a run (e.g. a copy between devices). With n simulated layers of a run
    of c > n, the steady state of the n-th layer stands for each of the c - n others::

        T_extra    = (c - n) (end(n) - end(n-1))                 the marginal step time of one more layer
        busy_extra = (c - n) sum of layer n's task durations,    per resource and per category

    so utilisation and the per-category breakdown count a repeated layer's work as often as the layer
    repeats, and work done once per pass only once (scaling every resource by T_total / T_simulated
    would also multiply the LM head, the embedding and cold-start copies by the layer factor).
    """
    ext = LayerExtrapolation()
    for key, count in runs:
        if start_run:
            start_run(engine, key)
        n = min(count, SIMULATED_LAYERS)
        ends, first = [], len(engine.tasks)
        for _ in range(n):
            first = len(engine.tasks)
            ends.append(engine.end_of(build_layer(engine, ext.simulated, key)))
            ext.simulated += 1
        if count > n:  # n == SIMULATED_LAYERS >= 2: the steady state of the last simulated layer
            repeats = count - n
            ext.extra_s += repeats * max(ends[-1] - ends[-2], 0.0)
            for t in engine.tasks[first:]:
                ext.busy_s[t.resource] += repeats * t.duration_s
                ext.category_s[t.category] += repeats * t.duration_s
    return ext


def step_sim(engine: Engine, ext: LayerExtrapolation, total_layers: int) -> StepSim:
    """The pass simulated on ``engine`` plus the layers ``ext`` extrapolated."""
    def plus(simulated: dict[str, float], extra: dict[str, float]) -> dict[str, float]:
        out = dict(simulated)
        for key, value in extra.items():
            out[key] = out.get(key, 0.0) + value
        return out

    peaks = engine.check_memory()
    return StepSim(time_s=engine.makespan_s + ext.extra_s, engine=engine, simulated_layers=ext.simulated,
                   total_layers=total_layers, busy_s=plus(engine.busy_s(), ext.busy_s),
                   category_s=plus(engine.busy_by_category_s(), ext.category_s), peak_memory_bytes=peaks)


def simulate_pass(ctx: Context, engine: Engine, build_layer: Callable[[Engine, int, LayerKind], int],
                  prologue: Callable[[Engine], None] | None = None,
                  epilogue: Callable[[Engine], None] | None = None, *,
                  gpu_holds: dict[str, float] | None = None, head_s: float | None = None) -> StepSim:
    """Simulate one forward pass: representative layers of each kind, extrapolated (:func:`simulate_layers`).

    ``build_layer(engine, index, kind)`` submits one layer's tasks and returns the id of its
    last task (the layer is done when that task ends). ``gpu_holds`` (label -> bytes) is GPU
    memory held for the whole pass; ``head_s``, the LM head and embedding, runs on the GPU after
    the last task.
    """
    for label, nbytes in (gpu_holds or {}).items():
        engine.hold("gpu", nbytes, label)
    if prologue:
        prologue(engine)
    ext = simulate_layers(engine, ctx.model.layer_kinds().items(), build_layer)
    if epilogue:
        epilogue(engine)
    if head_s is not None:
        engine.add("lm head + embedding", "gpu", head_s, [len(engine.tasks) - 1], category="head")
    return step_sim(engine, ext, ctx.model.num_layers)


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


def full_batches(num_requests: int, max_batch: int) -> tuple[int, int, int]:
    """Split requests as every static-batch system runs them: full batches of B = min(max_batch, R), then a last,
    partial one of what is left (charged for what it holds): (B, number of batches, requests in the partial one,
    0 when every batch is full)."""
    batch = max(1, min(max_batch, num_requests))
    return batch, math.ceil(num_requests / batch), num_requests % batch


def balanced_batches(num_requests: int, max_batch: int) -> tuple[int, int]:
    """Split requests into the fewest equal batches not above ``max_batch``: (batch size, count)."""
    count = math.ceil(num_requests / max_batch)
    return math.ceil(num_requests / count), count


def _sizes_read(params: dict) -> dict:
    """Parameters named ``*_bytes`` given as text with a unit (``host_kv_bytes=64GB``) as numbers of bytes
    (:func:`moesim.units.parse_bytes`: GB, GiB, TB, TiB; a bare number stays a number of bytes)."""
    if not any(isinstance(v, str) and k.endswith("_bytes") for k, v in params.items()):
        return params
    from ..units import parse_bytes

    return {k: float(parse_bytes(v)) if isinstance(v, str) and k.endswith("_bytes") else v for k, v in params.items()}


POLICIES = ("as-deployed", "best")


class ServingSystem(ABC):
    """A named serving policy with its own typed parameters.

    Policy (``--policy``, :attr:`moesim.scenario.Scenario.policy`): ``as-deployed`` (the default) is the
    configuration the system's released software chooses by itself - its defaults, its own search with its own
    constants - simulated with moesim's physics; ``best`` is the fastest configuration moesim's own search finds
    for it (what tuning could reach). The contract between the scenario and a system:

    * the system is built as ``cls(params, policy=...)`` and reads the policy as :attr:`policy`, never from the
      context (one context, and its memoised passes, serves both policies);
    * a system whose ``Params`` declares a field named ``policy`` (typed ``Literal["as-deployed", "best"]``, or
      a wider Literal) receives the scenario's value in that field, unless the user set it with
      ``--param policy=...``, which then wins; :attr:`policy` is that field's value;
    * :attr:`policy_differs` says whether ``best`` can choose otherwise than ``as-deployed`` (False: the
      system's own rule is already moesim's best, or it has no choice to make); ``predict`` runs the ``best``
      policy beside the as-deployed one only where it can differ, and reports both when they differ by more than
      10 %;
    * ``best`` is never slower than ``as-deployed`` on the same scenario: a system whose search could miss the
      as-deployed configuration keeps the faster of the two.
    """

    name: ClassVar[str]
    summary: ClassVar[str]  # one line: how it batches, where weights and KV live
    Params: ClassVar[type[BaseModel]]
    supports_speculative: ClassVar[bool] = False  # whether plan() models speculative decoding
    #: how each phase's GPU kernels run (:mod:`moesim.costs.execution`): "eager" PyTorch (host issue per torch
    #: call, syncs, Python per module; the default, what the Hugging Face-based offloaders run), "graph" (CUDA-graph
    #: replay, GPU time alone plus the engine's per-step CPU work), "native" (kernels launched from C++)
    execution_modes: ClassVar[dict[str, str]] = {"prefill": "eager", "decode": "eager"}
    serves_dense: ClassVar[bool] = False  # whether a dense model (no MoE layers) may be planned as a reference
    searches_policy: ClassVar[bool] = False  # whether policy "best" may choose otherwise than "as-deployed"
    #: whether plan() models several nodes joined by a scale-out network (``ctx.platform.num_nodes > 1``, --nodes):
    #: the inter-node traffic of its layouts priced over ``ctx.platform.scale_out``. Systems that leave it False
    #: are refused on such platforms by :meth:`refuse_multi_node` (called for every system by moesim.predict)
    multi_node: ClassVar[bool] = False

    def __init__(self, params: BaseModel | dict | None = None, policy: str = "as-deployed"):
        if policy not in POLICIES:
            raise MoesimError(f"policy takes one of {', '.join(POLICIES)}, got {policy!r}")
        if not isinstance(params, BaseModel):
            params = dict(params or {})
            if "policy" in self.Params.model_fields and "policy" not in params:
                params["policy"] = policy
            params = self.Params.model_validate(_sizes_read(params))
        self.params = params
        self.policy: str = getattr(params, "policy", policy) if "policy" in self.Params.model_fields else policy

    @property
    def policy_differs(self) -> bool:
        """Whether the ``best`` policy can choose another configuration than the as-deployed one here."""
        return self.searches_policy or "policy" in self.Params.model_fields

    @abstractmethod
    def plan(self, ctx: Context) -> Plan:
        """Choose the configuration for ``ctx`` and simulate it; raise InfeasibleError if none fits."""

    def online_model(self, ctx: Context, plan: Plan, max_context_tokens: int) -> Any:
        """A :class:`moesim.serving.StepTimeModel` pricing this system's iterations for online serving
        (``plan`` is this system's plan for ``ctx``; no step will hold a context over ``max_context_tokens``),
        or None: this system has no continuous-batching scheduler to serve requests arriving over time."""
        return None

    # ---- helpers of every system -------------------------------------------------------------
    @property
    def constants(self) -> SystemConstants:
        """This system's software constants (``systems_db/<name>.yaml``)."""
        return system_constants(self.name)

    def require_fits(self, need_bytes: float, have_bytes: float, what: str, hint: str = "") -> None:
        """Raise InfeasibleError("<system>: <what>: short by <need - have><hint>") when ``need_bytes`` exceeds
        ``have_bytes``."""
        if need_bytes > have_bytes:
            raise InfeasibleError(f"{self.name}: {what}: short by {fmt_bytes(need_bytes - have_bytes)}{hint}")

    def refuse_multi_gpu(self, ctx: Context, reason: str) -> None:
        """Raise InfeasibleError on a platform of several GPUs for a system modelled on one (``reason``: what
        of its multi-GPU operation is not modelled)."""
        if ctx.platform.num_gpus > 1:
            raise SingleGPUError(f"{self.name} is modelled on one GPU ({reason}); use --gpus 1")

    @classmethod
    def refuse_multi_node(cls, ctx: Context, supported: Iterable[str] = ()) -> None:
        """Raise :class:`MultiNodeError` when ``ctx``'s platform has several nodes and this system does not model
        them (``multi_node`` False); ``supported`` names the systems that do (for the message)."""
        nodes = ctx.platform.num_nodes
        if nodes > 1 and not cls.multi_node:
            names = ", ".join(supported) or "none yet"
            raise MultiNodeError(f"{cls.name} is modelled on one node: --nodes {nodes} asks for {nodes} nodes of "
                                 f"{ctx.platform.num_gpus} GPUs joined by {ctx.platform.scale_out.network.name}, and "
                                 f"its inter-node parallelism is not modelled; use --nodes 1 (systems that model "
                                 f"several nodes: {names})")

    def make_plan(self, batch: tuple[int, int], prefill: tuple[StepSim, int, int],
                  decode: tuple[float, list[tuple[int, StepSim]]], *, config: dict[str, Any], host_mem_bytes: float,
                  placement: dict[str, str], notes: list[str] | None = None, also_run: tuple[StepSim, ...] = (),
                  plan_type: type[Plan] = Plan, **fields: Any) -> Plan:
        """A :class:`Plan` of this system: ``batch`` = (sequences per batch, batches), ``prefill`` = (one
        prefill pass, passes per batch, prompt tokens per pass), ``decode`` = (decode time of a batch, its
        simulated steps); the GPU memory is the peak of every step (``also_run``: steps beyond those, e.g. a
        mixed step); ``fields`` go to ``plan_type``."""
        step, passes, tokens = prefill
        decode_s, points = decode
        return plan_type(system=self.name, config=config, batch_size=batch[0], num_batches=batch[1],
                         prefill_passes_per_batch=passes, prefill=step, prefill_tokens_per_pass=tokens,
                         decode_points=points, decode_time_per_batch_s=decode_s,
                         gpu_mem_bytes=peak_gpu_bytes([step, *also_run, *(s for _, s in points)]),
                         host_mem_bytes=host_mem_bytes, placement=placement, notes=list(notes or []), **fields)


class SingleGPUError(InfeasibleError):
    """A system modelled on one GPU asked to plan on several (``auto`` then runs it on one of them)."""


class MultiNodeError(InfeasibleError):
    """A system modelled on one node asked to plan on several (--nodes N > 1): refused, by name and under auto."""


def peak_gpu_bytes(steps: Iterable[StepSim]) -> float:
    """The largest GPU memory peak of ``steps`` (per GPU)."""
    return max((s.peak_memory_bytes.get("gpu", 0.0) for s in steps), default=0.0)
