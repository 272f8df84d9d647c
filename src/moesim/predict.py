"""`moesim.predict`: a :class:`~moesim.scenario.Scenario` in, a typed prediction out.

:func:`resolve` turns a scenario into specs (model, platform, workload, options) and the
assumptions it made; :func:`plan_scenario` plans it with one system or every system (``auto``);
:func:`predict` and :func:`predict_online` report the plan. The CLI, sweeps, plots and
recommend all go through these three.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from pydantic import BaseModel, ConfigDict, ValidationError

from . import metrics, uncertainty
from .db.resolve import get_hardware, get_model
from .errors import InfeasibleError, MoesimError, SimulationError
from .paths import check_output, writing
from .modules import Context, Options, Speculative
from .scenario import Scenario, build
from .specs import ModelSpec, OfflineWorkload, OnlineWorkload, Platform
from .systems import SYSTEMS, Plan, get_system
from .systems.base import SIMULATED_LAYERS, SingleGPUError


class Prediction(BaseModel):
    """What moesim predicts for one (model, hardware, system, workload)."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    model: str
    hardware: str
    gpu: str
    num_gpus: int
    num_nodes: int = 1  # nodes of num_gpus GPUs each (--nodes)
    system: str
    workload: dict[str, Any]
    dtype: str
    kv_dtype: str
    prefill_tok_s: float
    prefill_tok_s_low: float  # the uncertainty band of each figure (moesim.uncertainty; `uncertainty` says why)
    prefill_tok_s_high: float
    decode_tok_s: float
    decode_tok_s_low: float
    decode_tok_s_high: float
    throughput_tok_s: float
    throughput_tok_s_low: float
    throughput_tok_s_high: float
    ttft_s: float
    ttft_s_low: float
    ttft_s_high: float
    tpot_s: float
    tpot_s_low: float
    tpot_s_high: float
    total_time_s: float
    total_time_s_low: float
    total_time_s_high: float
    s_mbu: float
    """MoE-CAP's S-MBU of the middle decode step: activated weight + KV bytes / (TPOT x the peak bandwidth of the
    devices that read them: the GPUs' HBM, plus host DRAM where the CPU reads); in (0, 1] (docs/metrics.md)."""
    s_mfu: float
    """MoE-CAP's S-MFU of the middle decode step: tokens/s x FLOPs per token of the activated parameters / the
    dense peak FLOP/s of the devices that compute (GPUs, plus the CPU where it computes); in (0, 1]."""
    mbu: float
    """Dense-equivalent MBU: S-MBU's formula with every weight counted as read. Exceeds 1 when the MoE's step
    reads few of its experts: it measures how far the dense definition misleads, not a utilisation."""
    mfu: float
    """Dense-equivalent MFU: 2 x all parameters per token, every expert computed; can exceed 1 likewise."""
    prefill_s_mfu: float
    """S-MFU of one prefill pass (FLOPs at the mean causal span of the prompt), over the computing devices' peak."""
    bottleneck: str
    utilization: dict[str, float]
    decode_step_breakdown_s: dict[str, float]
    transfer_hidden_fraction: dict[str, float]  # per copy resource: share of its busy time overlapped by compute
    gpu_mem_bytes: float
    host_mem_bytes: float
    placement: dict[str, str]
    config: dict[str, Any]
    calibrated: bool  # fitted efficiency curves (own or borrowed from the architecture; see assumptions)
    assumptions: list[str]
    systems_compared: dict[str, str]
    policy: str = "as-deployed"
    """The policy predicted: as-deployed (what the system's software chooses) or best (moesim's search)."""
    best_policy: dict[str, Any] | None = None
    """Where the as-deployed policy was predicted and moesim's best policy for the same system differs from it by
    more than 10 % in generation throughput: that policy's figures (throughput_tok_s, prefill_tok_s, decode_tok_s,
    total_time_s), its config and its speedup over as-deployed; None otherwise."""
    uncertainty: dict[str, Any]
    """The band's provenance (GPU calibration, host link, system, scale), its log half-width per phase and the
    components that make it (moesim.uncertainty; widths from hardware_db/uncertainty/bands.yaml)."""

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump()


def _variant(model: ModelSpec, num_experts: int | None, top_k: int | None, expert_ffn: int | None) -> ModelSpec:
    """Synthetic variants for sweeps and pruning what-ifs (fewer experts, lower top-k, other FFN size); a
    variant that breaks a rule is a MoesimError saying the rule in words."""
    if (num_experts or top_k or expert_ffn) and model.moe is None:
        raise MoesimError(f"{model.name} has no MoE layers to vary")
    if top_k and num_experts and top_k > num_experts:
        raise MoesimError(f"top-k {top_k} exceeds the {num_experts} routed experts asked for (--experts "
                          f"{num_experts}); a token picks top-k distinct experts")
    try:
        if num_experts:
            model = model.with_experts(num_experts)
        if top_k:
            model = model.with_top_k(top_k)
        if expert_ffn:
            model = model.with_expert_ffn(expert_ffn)
    except ValidationError as exc:
        raise MoesimError(f"invalid model variant: {exc.errors()[0]['msg']}") from None
    return model


def _popularity(source: str | Path | tuple[float, ...] | list[float] | None, model: ModelSpec) -> tuple[float, ...] | None:
    """A per-expert activation histogram: a sequence, or a JSON file holding a list (or {"counts": [...]})."""
    if source is None:
        return None
    what = "expert histogram"
    if isinstance(source, (str, Path)):
        import json

        from .db import read_spec_text

        path = Path(source)
        what = f"expert histogram {path}"
        try:
            data = json.loads(read_spec_text(path))
        except (ValueError, RecursionError) as exc:
            raise MoesimError(f"cannot read {what}: not JSON ({exc})") from None
        source = data.get("counts") if isinstance(data, dict) else data
    if not isinstance(source, (list, tuple)):
        raise MoesimError(f"{what}: expected a list of counts (or {{\"counts\": [...]}}), got {type(source).__name__}")
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in source):
        bad = next(x for x in source if isinstance(x, bool) or not isinstance(x, (int, float)))
        raise MoesimError(f"{what}: every count is a number, got {bad!r}")
    try:
        counts = tuple(float(x) for x in source)
    except OverflowError:
        raise MoesimError(f"{what}: a count is too large for a number") from None
    experts = model.moe.num_experts if model.moe else 0
    if len(counts) != experts or not all(math.isfinite(c) and c >= 0 for c in counts) or not sum(counts):
        raise MoesimError(f"{what} needs {experts} non-negative counts (finite, not all zero; one per expert of "
                          f"{model.name}), got {len(counts)}")
    return counts


def _check_context(model: ModelSpec, workload: OfflineWorkload) -> None:
    need = workload.total_context_tokens
    if need > model.max_context_tokens:
        raise InfeasibleError(
            f"prompt + generation = {need} tokens exceeds {model.name}'s context of {model.max_context_tokens} "
            f"tokens by {need - model.max_context_tokens}"
        )


def _batches_note(num_requests: int, plan: Plan) -> list[str]:
    """How the plan's batches were priced: equal batches (one simulated), full batches and a partial last one
    simulated at its own size (``Plan.last_batch_partial``), or full batches of which the last is padded."""
    nb, b = plan.num_batches, plan.batch_size
    if nb <= 1:
        return []
    if plan.last_batch_partial:
        return [f"{num_requests} requests in {nb - 1} batch{'es' if nb > 2 else ''} of {b} (one simulated) and a last of "
                f"{num_requests - (nb - 1) * b}, simulated at its own size"]
    if nb * b == num_requests:
        return [f"{num_requests} requests in {nb} equal batches of {b}; one batch simulated"]
    return [f"{num_requests} requests priced as {nb} full batches of {b} ({nb * b} sequence slots: the last batch "
            f"is charged as a full one); one batch simulated"]


def _hidden(step) -> dict[str, float]:
    out = {}
    for resource in ("h2d", "d2h", "disk", "gpu-link"):
        busy, hidden = step.engine.hidden_s(resource)
        if busy > 0:
            out[resource] = hidden / busy
    return out


def headline_figures(ctx: Context, plan: Plan) -> dict[str, float]:
    """The figures a prediction reports with a band (moesim.uncertainty.FIGURES), from the plan."""
    w, batch = ctx.workload, plan.batch_size
    own = plan.headline(w)
    if own is not None:
        return own
    return {"prefill_tok_s": batch * w.prompt_tokens / plan.prefill_time_per_batch_s,
            "decode_tok_s": batch * w.gen_tokens / plan.decode_time_per_batch_s,
            "throughput_tok_s": w.num_requests * w.gen_tokens / plan.total_time_s,
            "ttft_s": plan.prefill_time_per_batch_s, "tpot_s": plan.decode_time_per_batch_s / w.gen_tokens,
            "total_time_s": plan.total_time_s}


def _prediction(ctx: Context, plan: Plan, compared: dict[str, str], assumptions: list[str],
                policy: str = "as-deployed", best: dict[str, Any] | None = None) -> Prediction:
    w = ctx.workload
    batch = plan.batch_size
    ctx_mid, mid = plan.mid_decode
    tpot = plan.decode_time_per_batch_s / w.gen_tokens
    util = metrics.decode_utilization(ctx, batch, ctx_mid, mid.time_s, plan.host_decode)
    kinds = ctx.model.layer_kinds()
    notes = list(assumptions) + list(ctx.platform.assumptions) + plan.notes
    if any(c > SIMULATED_LAYERS for c in kinds.values()):
        notes.append(
            f"simulated {mid.simulated_layers} of {ctx.model.num_layers} layers per step "
            f"({len(kinds)} layer kind(s)); the rest extrapolated at the steady-state per-layer time"
        )
    notes.append(
        f"decode simulated at {len(plan.decode_points)} context lengths "
        f"({', '.join(str(c) for c, _ in plan.decode_points)}) and integrated over {w.gen_tokens} steps"
    )
    notes += _batches_note(w.num_requests, plan)
    hidden = _hidden(mid)
    figures = headline_figures(ctx, plan)
    prefill_s = plan.prefill_total_s
    bands, band_info, band_notes = uncertainty.prediction_band(ctx, plan, hidden, figures, prefill_s,
                                                               plan.total_time_s - prefill_s)
    notes += band_notes
    return Prediction(
        model=ctx.model.name,
        hardware=ctx.platform.name,
        gpu=ctx.platform.gpu.name,
        num_gpus=ctx.platform.num_gpus, num_nodes=ctx.platform.num_nodes,
        system=plan.system,
        workload=w.model_dump(),
        dtype=ctx.wdtype if ctx.wdtype == ctx.edtype else f"{ctx.wdtype} (experts {ctx.edtype})",
        kv_dtype=ctx.options.kv_dtype,
        **figures,
        **bands,
        s_mbu=util["s_mbu"],
        s_mfu=util["s_mfu"],
        mbu=util["mbu"],
        mfu=util["mfu"],
        prefill_s_mfu=metrics.prefill_s_mfu(ctx, plan.prefill_tokens_per_pass, w.prompt_tokens, plan.prefill.time_s,
                                            plan.host_prefill),
        bottleneck=mid.bottleneck(),
        utilization=mid.utilization(),
        decode_step_breakdown_s=mid.category_s,
        transfer_hidden_fraction=hidden,
        gpu_mem_bytes=plan.gpu_mem_bytes,
        host_mem_bytes=plan.host_mem_bytes,
        placement=plan.placement,
        config=plan.config,
        calibrated=ctx.platform.calibration is not None or ctx.platform.empirical.calibrated,
        assumptions=notes,
        systems_compared=compared,
        policy=policy,
        best_policy=best,
        uncertainty=band_info,
    )


def _system(cls, params: dict | None, policy: str = "as-deployed"):
    try:
        return cls(params, policy=policy)
    except ValidationError as exc:
        known = ", ".join(cls.Params.model_fields)
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise MoesimError(f"bad parameter for {cls.name}: {problems} (its parameters: {known})") from None


def plan_for(model: ModelSpec, platform: Platform, system: str, workload: OfflineWorkload,
             options: Options, system_params: dict | None = None,
             policy: str = "as-deployed") -> tuple[Context, Plan, dict[str, str]]:
    """Plan with one system, or with every system for ``auto`` (best generation throughput wins), each system
    with ``policy`` (as-deployed or best; :class:`moesim.systems.base.ServingSystem`)."""
    ctx = Context(model, platform, workload, options)
    multi_node = [n for n, c in SYSTEMS.items() if c.multi_node]
    if system != "auto":
        cls = get_system(system)
        cls.refuse_multi_node(ctx, multi_node)
        if options.speculative and not cls.supports_speculative:
            raise MoesimError(f"speculative decoding is not modelled for {cls.name}; systems that model it: "
                              + ", ".join(n for n, c in SYSTEMS.items() if c.supports_speculative))
        plan = _system(cls, system_params, policy).plan(ctx)
        return ctx, plan, {cls.name: "chosen"}
    if system_params:
        raise MoesimError("system parameters need a named --system (auto compares every system at its defaults)")
    plans: dict[str, tuple[Context, Plan]] = {}
    compared: dict[str, str] = {}
    one_gpu: list[Context] = []  # the one-GPU context, shared by every single-GPU system (and its memos)
    one_node: list[Context] = []  # one node of a multi-node platform, for the systems modelled on one node
    for name, cls in SYSTEMS.items():
        if options.speculative and not cls.supports_speculative:
            compared[name] = "skipped: speculative decoding not modelled for this system"
            continue
        try:
            if ctx.platform.num_nodes > 1 and not cls.multi_node:  # runs on one of the nodes (never worse for more)
                plans[name] = _on_one_node(cls, ctx, one_node, one_gpu, policy, f"{cls.name} is modelled on one node")
            else:
                try:
                    plans[name] = _plan_in_auto(cls, ctx, one_gpu, policy)
                except InfeasibleError as exc:  # its default layout cannot span the nodes: one node of them
                    if ctx.platform.num_nodes == 1:
                        raise
                    plans[name] = _on_one_node(cls, ctx, one_node, one_gpu, policy, str(exc))
        except (InfeasibleError, SimulationError) as exc:  # one system's overflow never aborts the comparison
            compared[name] = f"infeasible: {exc}"
    if not plans:
        reasons = "\n  ".join(f"{k}: {v.removeprefix('infeasible: ')}" for k, v in compared.items())
        raise InfeasibleError(f"no serving system can run {model.name} on {platform.name}:\n  {reasons}")

    def rate(name: str) -> float:
        return workload.num_requests * workload.gen_tokens / plans[name][1].total_time_s

    best = max(plans, key=rate)
    for name, (used, _) in plans.items():
        on = ""
        if used is not ctx:
            on = (f" on {used.platform.num_gpus} of {platform.num_gpus} GPUs" if used.platform.num_gpus < platform.num_gpus
                  else "") + (f" on 1 of {platform.num_nodes} nodes" if used.platform.num_nodes < platform.num_nodes
                              else "")
        compared[name] = f"{'chosen' if name == best else 'feasible'}: {rate(name):.4g} tok/s{on}"
    return plans[best][0], plans[best][1], compared


def _on_one_node(cls, ctx: Context, one_node: list[Context], one_gpu: list[Context], policy: str,
                 why: str) -> tuple[Context, Plan]:
    """``cls``'s plan for ``auto`` on one node of a multi-node platform (``one_node`` holds that context once
    made, shared by the systems that need it), saying so: more nodes never make ``auto``'s answer worse."""
    if not one_node:
        one_node.append(Context(ctx.model, ctx.platform.model_copy(update={"num_nodes": 1}), ctx.workload,
                                ctx.options))
    used, plan = _plan_in_auto(cls, one_node[0], one_gpu, policy)
    plan.notes.append(f"runs on 1 of the platform's {ctx.platform.num_nodes} nodes: {why}")
    return used, plan


def _plan_in_auto(cls, ctx: Context, one_gpu: list[Context], policy: str = "as-deployed") -> tuple[Context, Plan]:
    """``cls``'s plan for ``auto``; a system modelled on one GPU runs on one GPU of a multi-GPU platform (so
    that more GPUs never make ``auto``'s answer worse), and says so. ``one_gpu`` holds that one-GPU context
    once made, so the single-GPU systems share its memoised passes as they share ``ctx``'s."""
    try:
        return ctx, cls(policy=policy).plan(ctx)
    except SingleGPUError as exc:
        if not one_gpu:
            one_gpu.append(Context(ctx.model, ctx.platform.model_copy(update={"num_gpus": 1}), ctx.workload,
                                   ctx.options))
        one = one_gpu[0]
        plan = cls(policy=policy).plan(one)
        plan.notes.append(f"runs on 1 of the platform's {ctx.platform.num_gpus} GPUs: {exc}")
        return one, plan


@dataclass(frozen=True)
class Resolved:
    """A scenario with every name resolved to its spec: what the systems consume."""

    scenario: Scenario
    model: ModelSpec
    platform: Platform
    workload: OfflineWorkload
    options: Options
    assumptions: tuple[str, ...]


def _check_dense(spec: ModelSpec, system: str) -> None:
    """A dense model (no MoE layers) runs only on a system that declares it serves one
    (``ServingSystem.serves_dense``: the GPU-resident engines); elsewhere it is refused saying where it runs."""
    from .systems import SYSTEMS, get_system

    dense_ok = sorted(n for n, c in SYSTEMS.items() if c.serves_dense)
    if system != "auto" and get_system(system).serves_dense:
        return
    where = f"name one of --system {', '.join(dense_ok)}" if dense_ok else "no system serves one"
    raise MoesimError(f"{spec.name} has no MoE layers (a dense model): moesim predicts Mixture-of-Experts models; "
                      f"a dense model is a reference only for the GPU-resident engines ({where}), or the --draft of "
                      "speculative decoding")


def kv_cache_dtype(requested: str, model: ModelSpec, weight_dtype: str | None, system: str | None) -> tuple[str, str | None]:
    """(KV-cache dtype, why, where it is not the plain default). ``requested`` other than ``auto`` is taken as given.
    auto: the dtype the quantised checkpoint of ``weight_dtype`` declares (``models_db`` ``checkpoints``) where the
    system runs it so by default (``honours_checkpoint_kv_cache_dtype`` in ``systems_db/<system>.yaml``), else bf16
    (the activation dtype of every model here)."""
    if requested != "auto":
        return requested, None
    variant = model.checkpoints.get(weight_dtype) if weight_dtype else None
    if variant is None or variant.kv_cache_dtype is None or system not in SYSTEMS:
        return "bf16", None  # no declared KV dtype, or no system named yet (auto: compared with bf16)
    from .db import system_constants

    try:
        honours = bool(system_constants(system).value("honours_checkpoint_kv_cache_dtype"))
    except (KeyError, MoesimError):
        honours = False
    if not honours:
        return "bf16", (f"KV cache bf16: {variant.hf_id} declares a {variant.kv_cache_dtype} KV cache, which {system} "
                        "is not known to apply by default (--kv-dtype sets it)")
    return variant.kv_cache_dtype, (f"KV cache {variant.kv_cache_dtype}: {variant.hf_id} declares it and {system} "
                                    "applies it under --kv-cache-dtype auto")


def resolve(scenario: Scenario) -> Resolved:
    """Specs of a scenario, checked: model variant, platform, workload, options, and the assumptions made."""
    s = scenario
    spec = _variant(get_model(s.model), s.num_experts, s.top_k, s.expert_ffn)
    if spec.moe is None:
        _check_dense(spec, s.system)
    platform = get_hardware(s.hardware, **s.platform_overrides())
    work = s.offline_workload()
    _check_context(spec, work)
    popularity = _popularity(s.expert_histogram, spec)
    spec_dec = None
    if s.draft_model is not None:
        # resolved here (unknown draft names fail with suggestions); systems get the spec through the Context
        spec_dec = Speculative(draft_model=s.draft_model, num_tokens=s.spec_tokens, acceptance_rate=s.spec_accept,
                               draft=get_model(s.draft_model))
    kv, kv_why = kv_cache_dtype(s.kv_dtype, spec, s.dtype, s.system)
    options = Options(weight_dtype=s.dtype, kv_dtype=kv, moe_impl=s.moe_impl, zipf_s=s.zipf_s,
                      mla_absorbed=s.mla_absorbed, expert_popularity=popularity, speculative=spec_dec)
    assumptions = []
    if not s.workload_given:
        assumptions.append(
            f"default offline workload: {work.num_requests} requests, prompt {work.prompt_tokens}, "
            f"generation {work.gen_tokens} tokens (padded, fixed lengths)"
        )
    if spec.attention.kind == "mla" and not s.mla_absorbed:
        assumptions.append("MLA decode without weight absorption: the cached latent is up-projected every step")
    if s.dtype is None:
        assumptions.append(f"weights in the released dtype ({spec.weight_dtype()})")
    if kv_why:
        assumptions.append(kv_why)
    return Resolved(s, spec, platform, work, options, tuple(assumptions))


def plan_scenario(scenario: Scenario) -> tuple[Context, Plan, dict[str, str], Resolved]:
    """(context, the chosen plan, the verdict on each system compared, the resolved scenario)."""
    r = resolve(scenario)
    ctx, plan, compared = plan_for(r.model, r.platform, scenario.system, r.workload, r.options,
                                   scenario.system_params or None, scenario.policy)
    return ctx, plan, compared, r


#: the best policy is reported beside the as-deployed one when their generation throughputs differ by more
BEST_POLICY_REPORT_RATIO = 1.10


def best_policy(ctx: Context, plan: Plan, scenario: Scenario) -> dict[str, Any] | None:
    """moesim's best policy for the system of ``plan`` (an as-deployed plan), when its generation throughput
    differs from the as-deployed one by more than 10 % (:data:`BEST_POLICY_REPORT_RATIO`): its figures, config
    and speedup; None otherwise, or when the system's best cannot differ (``policy_differs``, so most systems
    cost nothing here). The best plan is made on the same context, so it reuses the passes already simulated."""
    if scenario.policy != "as-deployed":
        return None
    cls = get_system(plan.system)
    params = scenario.system_params if scenario.system != "auto" else None
    system = _system(cls, params, "best")
    if not system.policy_differs:
        return None
    try:
        best = system.plan(ctx)
    except (InfeasibleError, SimulationError):
        return None
    ratio = plan.total_time_s / best.total_time_s
    if max(ratio, 1 / ratio) <= BEST_POLICY_REPORT_RATIO:
        return None
    figures = headline_figures(ctx, best)
    return {**{k: figures[k] for k in ("throughput_tok_s", "prefill_tok_s", "decode_tok_s", "total_time_s")},
            "speedup": ratio, "config": best.config}


def predict(model: Any = None, hardware: Any = None, system: str | None = None, workload: Any = None, *,
            trace_path: str | Path | None = None, **knobs: Any) -> Prediction:
    """Predict throughput, latency and utilisation of an offline workload.

    Either a :class:`~moesim.scenario.Scenario` (``predict(scenario)``, keyword arguments then
    override its fields) or its fields: ``model`` and ``hardware`` are database names, spec
    objects or spec files; ``system`` is a registered serving system or ``auto`` (every feasible
    system is simulated; the one with the highest generation throughput is reported);
    ``workload`` (an OfflineWorkload or a dict of its fields) and ``knobs`` are Scenario fields
    (see ``moesim.Scenario``). The default workload is 1000 requests of 512 prompt and 256
    generated tokens, FlexGen/MoE-Gen style. ``trace_path`` writes a Chrome/Perfetto trace of
    the middle decode step.
    """
    scenario = build(model, hardware, system, workload, **knobs)
    if scenario.online:
        raise MoesimError("this scenario has an arrival rate: use predict_online (moesim serve) for online serving")
    if trace_path:
        check_output(trace_path, "trace_path")  # before the work
    ctx, plan, compared, r = plan_scenario(scenario)
    if trace_path:
        with writing(trace_path, "trace_path"):
            plan.mid_decode[1].engine.write_chrome_trace(trace_path)
    return _prediction(ctx, plan, compared, list(r.assumptions), scenario.policy, best_policy(ctx, plan, scenario))


def online_workload(scenario: Scenario) -> OnlineWorkload:
    """The scenario's arrivals and length distributions (means: its prompt and generation lengths)."""
    def dist(mean: int) -> dict:
        d: dict[str, Any] = {"kind": scenario.lengths, "mean_tokens": mean}
        if scenario.lengths == "lognormal":
            d["sigma"] = scenario.length_sigma
        return d

    return OnlineWorkload(arrival_rate_per_s=scenario.arrival_rate_per_s, num_requests=scenario.num_requests,
                          prompt=dist(scenario.prompt_tokens), gen=dist(scenario.gen_tokens), seed=scenario.seed)


def predict_online(model: Any = None, hardware: Any = None, workload: OnlineWorkload | dict | None = None,
                   system: str | None = None, **knobs: Any):
    """Serve requests arriving over time (Poisson) with a system that has an online scheduler.

    Takes a Scenario with ``arrival_rate_per_s`` set (or its fields), or, as before, an
    ``OnlineWorkload`` (or dict) whose length distributions are used as given. Returns a typed
    :class:`moesim.serving.OnlineResult`: P50/P90/P99 of TTFT, TPOT and end-to-end latency,
    the throughput and counters. The system defaults to vllm.
    """
    from .serving import simulate

    online = None
    if workload is not None:
        if not isinstance(workload, (OnlineWorkload, dict)):
            raise MoesimError("workload takes an OnlineWorkload or a mapping of its fields (arrival_rate_per_s, "
                              f"num_requests, prompt, gen, seed), got {repr(workload)[:80]}")
        try:
            online = workload if isinstance(workload, OnlineWorkload) else OnlineWorkload.model_validate(workload)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise MoesimError(f"invalid online workload: {problems}") from None
        knobs.update(arrival_rate_per_s=online.arrival_rate_per_s, num_requests=online.num_requests,
                     prompt_tokens=max(1, round(online.prompt.mean_tokens)),
                     gen_tokens=max(1, round(online.gen.mean_tokens)), seed=online.seed)
    scenario = build(model, hardware, system, None, **knobs)
    if not isinstance(model, Scenario) and system is None:
        scenario = scenario.replace(system="vllm")
    if scenario.system == "auto":
        raise MoesimError("online serving needs a named --system (one with an online scheduler)")
    if not scenario.online:
        raise MoesimError("online serving needs an arrival rate (--rate, arrival_rate_per_s)")
    online = online or online_workload(scenario)
    ctx, plan, _, r = plan_scenario(scenario)
    system_obj = _system(get_system(scenario.system), scenario.system_params or None, scenario.policy)
    return uncertainty.online_band(ctx, plan, simulate(ctx, plan, system_obj, online))
