"""`moesim.predict`: specs in, a typed prediction out."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from . import metrics
from .db.resolve import get_hardware, get_model
from .errors import InfeasibleError, MoesimError
from .modules import Context, Options, Speculative
from .specs import ModelSpec, OfflineWorkload, OnlineWorkload, Platform, PlatformSpec
from .specs.common import BYTES_PER_ELEMENT
from .systems import SYSTEMS, Plan, get_system
from .systems.base import SIMULATED_LAYERS
from .units import fmt_bytes


class Prediction(BaseModel):
    """What moesim predicts for one (model, hardware, system, workload)."""

    model_config = ConfigDict(frozen=True)

    model: str
    hardware: str
    gpu: str
    num_gpus: int
    system: str
    workload: dict[str, Any]
    dtype: str
    kv_dtype: str
    prefill_tok_s: float
    decode_tok_s: float
    throughput_tok_s: float
    ttft_s: float
    tpot_s: float
    total_time_s: float
    s_mbu: float
    s_mfu: float
    mbu: float
    mfu: float
    prefill_s_mfu: float
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

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump()


def _workload(workload: OfflineWorkload | dict | None, **overrides: Any) -> OfflineWorkload:
    data = workload.model_dump() if isinstance(workload, OfflineWorkload) else dict(workload or {})
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return OfflineWorkload.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise MoesimError(f"invalid workload: {problems}") from None


def _variant(model: ModelSpec, num_experts: int | None, top_k: int | None, expert_ffn: int | None) -> ModelSpec:
    """Synthetic variants for sweeps and pruning what-ifs (fewer experts, lower top-k, other FFN size)."""
    if (num_experts or top_k or expert_ffn) and model.moe is None:
        raise MoesimError(f"{model.name} has no MoE layers to vary")
    try:
        if num_experts:
            model = model.with_experts(num_experts)
        if top_k:
            model = model.with_top_k(top_k)
        if expert_ffn:
            model = model.with_expert_ffn(expert_ffn)
    except (ValueError, ValidationError) as exc:
        raise MoesimError(f"invalid model variant: {exc}") from None
    return model


def _popularity(source: str | Path | tuple[float, ...] | list[float] | None, model: ModelSpec) -> tuple[float, ...] | None:
    """A per-expert activation histogram: a sequence, or a JSON file holding a list (or {"counts": [...]})."""
    if source is None:
        return None
    if isinstance(source, (str, Path)):
        import json

        path = Path(source)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise MoesimError(f"cannot read expert histogram {path}: {exc}") from None
        source = data.get("counts") if isinstance(data, dict) else data
    counts = tuple(float(x) for x in source or ())
    experts = model.moe.num_experts if model.moe else 0
    if len(counts) != experts or any(c < 0 for c in counts) or not sum(counts):
        raise MoesimError(f"expert histogram needs {experts} non-negative counts (one per expert of {model.name}), "
                          f"got {len(counts)}")
    return counts


def _check_context(model: ModelSpec, workload: OfflineWorkload) -> None:
    need = workload.total_context_tokens
    if need > model.max_context_tokens:
        raise InfeasibleError(
            f"prompt + generation = {need} tokens exceeds {model.name}'s context of {model.max_context_tokens} "
            f"tokens by {need - model.max_context_tokens}"
        )


def _hidden(step) -> dict[str, float]:
    out = {}
    for resource in ("h2d", "d2h", "disk", "gpu-link"):
        busy, hidden = step.engine.hidden_s(resource)
        if busy > 0:
            out[resource] = hidden / busy
    return out


def _prediction(ctx: Context, plan: Plan, compared: dict[str, str], assumptions: list[str]) -> Prediction:
    w = ctx.workload
    batch = plan.batch_size
    ctx_mid, mid = plan.mid_decode
    tpot = plan.decode_time_per_batch_s / w.gen_tokens
    util = metrics.decode_utilization(ctx, batch, ctx_mid, mid.time_s)
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
    if plan.num_batches > 1:
        notes.append(f"{w.num_requests} requests in {plan.num_batches} equal batches of {batch}; one batch simulated")
    return Prediction(
        model=ctx.model.name,
        hardware=ctx.platform.name,
        gpu=ctx.platform.gpu.name,
        num_gpus=ctx.platform.num_gpus,
        system=plan.system,
        workload=w.model_dump(),
        dtype=ctx.wdtype if ctx.wdtype == ctx.edtype else f"{ctx.wdtype} (experts {ctx.edtype})",
        kv_dtype=ctx.options.kv_dtype,
        prefill_tok_s=batch * w.prompt_tokens / plan.prefill_time_per_batch_s,
        decode_tok_s=batch * w.gen_tokens / plan.decode_time_per_batch_s,
        throughput_tok_s=w.num_requests * w.gen_tokens / plan.total_time_s,
        ttft_s=plan.prefill_time_per_batch_s,
        tpot_s=tpot,
        total_time_s=plan.total_time_s,
        s_mbu=util["s_mbu"],
        s_mfu=util["s_mfu"],
        mbu=util["mbu"],
        mfu=util["mfu"],
        prefill_s_mfu=metrics.prefill_s_mfu(ctx, plan.prefill_tokens_per_pass, w.prompt_tokens, plan.prefill.time_s),
        bottleneck=mid.bottleneck(),
        utilization=mid.utilization(),
        decode_step_breakdown_s=mid.category_s,
        transfer_hidden_fraction=_hidden(mid),
        gpu_mem_bytes=plan.gpu_mem_bytes,
        host_mem_bytes=plan.host_mem_bytes,
        placement=plan.placement,
        config=plan.config,
        calibrated=ctx.platform.calibration is not None or ctx.platform.empirical.calibrated,
        assumptions=notes,
        systems_compared=compared,
    )


def _system(cls, params: dict | None):
    try:
        return cls(params)
    except ValidationError as exc:
        known = ", ".join(cls.Params.model_fields)
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise MoesimError(f"bad parameter for {cls.name}: {problems} (its parameters: {known})") from None


def plan_for(model: ModelSpec, platform: Platform, system: str, workload: OfflineWorkload,
             options: Options, system_params: dict | None = None) -> tuple[Context, Plan, dict[str, str]]:
    """Plan with one system, or with every system for ``auto`` (best generation throughput wins)."""
    ctx = Context(model, platform, workload, options)
    if system != "auto":
        cls = get_system(system)
        if options.speculative and not cls.supports_speculative:
            raise MoesimError(f"speculative decoding is not modelled for {cls.name}; systems that model it: "
                              + ", ".join(n for n, c in SYSTEMS.items() if c.supports_speculative))
        plan = _system(cls, system_params).plan(ctx)
        return ctx, plan, {cls.name: "chosen"}
    if system_params:
        raise MoesimError("system parameters need a named --system (auto compares every system at its defaults)")
    plans: dict[str, Plan] = {}
    compared: dict[str, str] = {}
    for name, cls in SYSTEMS.items():
        if options.speculative and not cls.supports_speculative:
            compared[name] = "skipped: speculative decoding not modelled for this system"
            continue
        try:
            plans[name] = cls().plan(ctx)
        except InfeasibleError as exc:
            compared[name] = f"infeasible: {exc}"
    if not plans:
        reasons = "\n  ".join(f"{k}: {v.removeprefix('infeasible: ')}" for k, v in compared.items())
        raise InfeasibleError(f"no serving system can run {model.name} on {platform.name}:\n  {reasons}")
    best = max(plans, key=lambda n: workload.num_requests * workload.gen_tokens / plans[n].total_time_s)
    for name, plan in plans.items():
        rate = workload.num_requests * workload.gen_tokens / plan.total_time_s
        compared[name] = f"{'chosen' if name == best else 'feasible'}: {rate:.4g} tok/s"
    return ctx, plans[best], compared


def predict(
    model: str | Path | ModelSpec,
    hardware: str | Path | Platform | PlatformSpec,
    system: str = "auto",
    workload: OfflineWorkload | dict | None = None,
    *,
    dtype: str | None = None,
    kv_dtype: str = "bf16",
    moe_impl: str = "fused",
    zipf_s: float = 0.0,
    mla_absorbed: bool = True,
    expert_popularity: str | Path | tuple[float, ...] | list[float] | None = None,
    speculative: Speculative | dict | None = None,
    num_experts: int | None = None,
    top_k: int | None = None,
    expert_ffn: int | None = None,
    system_params: dict | None = None,
    num_gpus: int | None = None,
    cpu: str | None = None,
    host_memory_bytes: float | None = None,
    pcie: str | None = None,
    trace_path: str | Path | None = None,
) -> Prediction:
    """Predict throughput, latency and utilisation.

    ``model`` and ``hardware`` are database names, spec objects or spec files; ``system`` is
    a registered serving system or ``auto`` (every feasible system is simulated; the one with
    the highest generation throughput is reported). ``workload`` defaults to 1000 requests of
    512 prompt and 256 generated tokens, FlexGen/MoE-Gen style.
    """
    spec = _variant(get_model(model), num_experts, top_k, expert_ffn)
    platform = get_hardware(hardware, num_gpus=num_gpus, cpu=cpu, host_memory_bytes=host_memory_bytes, pcie=pcie)
    work = _workload(workload)
    _check_context(spec, work)
    for name, value in (("dtype", dtype), ("kv_dtype", kv_dtype)):
        if value is not None and value not in BYTES_PER_ELEMENT:
            raise MoesimError(f"unknown {name} {value!r}; one of {', '.join(BYTES_PER_ELEMENT)}")
    if moe_impl not in ("fused", "loop"):
        raise MoesimError(f"unknown MoE implementation {moe_impl!r}; fused or loop")
    popularity = _popularity(expert_popularity, spec)
    spec_dec = Speculative(**speculative) if isinstance(speculative, dict) else speculative
    if spec_dec is not None:
        if spec_dec.num_tokens < 1 or not 0.0 <= spec_dec.acceptance_rate <= 1.0:
            raise MoesimError("speculative decoding needs num_tokens >= 1 and an acceptance rate in [0, 1]")
        # resolved here (unknown draft names fail with suggestions); systems get the spec through the Context
        spec_dec = replace(spec_dec, draft=get_model(spec_dec.draft_model))
    options = Options(weight_dtype=dtype, kv_dtype=kv_dtype, moe_impl=moe_impl, zipf_s=zipf_s,  # type: ignore[arg-type]
                      mla_absorbed=mla_absorbed, expert_popularity=popularity, speculative=spec_dec)
    assumptions = []
    if workload is None:
        assumptions.append(
            f"default offline workload: {work.num_requests} requests, prompt {work.prompt_tokens}, "
            f"generation {work.gen_tokens} tokens (padded, fixed lengths)"
        )
    if spec.attention.kind == "mla" and not mla_absorbed:
        assumptions.append("MLA decode without weight absorption: the cached latent is up-projected every step")
    if dtype is None:
        assumptions.append(f"weights in the released dtype ({spec.weight_dtype()})")
    ctx, plan, compared = plan_for(spec, platform, system, work, options, system_params)
    if trace_path:
        plan.mid_decode[1].engine.write_chrome_trace(trace_path)
    return _prediction(ctx, plan, compared, assumptions)


def memory_summary(pred: Prediction) -> str:
    return f"GPU {fmt_bytes(pred.gpu_mem_bytes)} per GPU, host {fmt_bytes(pred.host_mem_bytes)}"


def predict_online(
    model: str | Path | ModelSpec,
    hardware: str | Path | Platform | PlatformSpec,
    workload: OnlineWorkload | dict,
    system: str = "vllm",
    *,
    system_params: dict | None = None,
    dtype: str | None = None,
    num_gpus: int | None = None,
) -> dict[str, Any]:
    """Serve requests arriving over time (Poisson) with a continuous-batching system.

    Returns P50/P90/P99 of TTFT, TPOT and end-to-end latency and the throughput (see
    :func:`moesim.systems.vllm.simulate_online`). Only systems with an online scheduler qualify.
    """
    from .systems.vllm import VLLM, simulate_online

    cls = get_system(system)
    if cls is not VLLM:
        raise MoesimError(f"online serving is modelled for vllm only, not {cls.name}")
    try:
        online = workload if isinstance(workload, OnlineWorkload) else OnlineWorkload.model_validate(workload)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise MoesimError(f"invalid online workload: {problems}") from None
    spec = get_model(model)
    platform = get_hardware(hardware, num_gpus=num_gpus)
    offline = _workload({"num_requests": online.num_requests,
                         "prompt_tokens": max(1, round(online.prompt.mean_tokens)),
                         "gen_tokens": max(1, round(online.gen.mean_tokens))})
    _check_context(spec, offline)
    ctx, plan, _ = plan_for(spec, platform, cls.name, offline, Options(weight_dtype=dtype), system_params)
    result = simulate_online(ctx, online, plan)
    result["assumptions"] = list(platform.assumptions) + plan.notes
    return result
