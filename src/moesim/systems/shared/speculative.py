"""MTP speculative decoding as the datacenter engines run it (vLLM ``--speculative-config`` with method
``deepseek_mtp`` / ``mtp`` and ``num_speculative_tokens``; SGLang ``--speculative-algorithm NEXTN`` (EAGLE) with
``--speculative-num-steps``; TensorRT-LLM ``speculative_config`` of ``decoding_type: MTP`` with
``num_nextn_predict_layers``).

A decode step with k draft tokens (DeepSeek-V3 Technical Report, arXiv 2412.19437, section 2.2: the MTP module is
one transformer block and a projection that share the embedding and the output head with the main model)::

    T_step = T_verify(B sequences x (k + 1) tokens) + k x (T_layer(B) + T_head(B))

T_verify: one pass of the target over the k + 1 tokens of every sequence (a decode step whose CUDA graph is
captured per batch of sequences, :meth:`~.continuous.ContinuousBatchingEngine._pass` with ``width`` k + 1);
T_layer: the mean per-layer time of the 1-token decode step (its time less its LM head, over the layers); T_head:
that step's LM head. The step yields on average (:func:`moesim.modules.expected_tokens_per_step`)::

    tau = 1 + sum_{d=1..k} prod_{i<=d} a_i

tokens per sequence, a_d the conditional acceptance of draft depth d (``speculative_acceptance``; unset: the
sourced ``mtp_acceptance_rate`` of ``systems_db/engines.yaml`` at every depth), so a request's G tokens take
G / tau steps: TPOT = T_step / tau. A separate draft model (the scenario's ``--draft``, as ``gpu-resident`` prices
it with the same tau, :attr:`moesim.modules.Speculative.tokens_per_step`) replaces the k MTP draft steps by k
decode steps of the draft model (:func:`draft_model_step_s`); its weights and KV are not taken from the KV pool.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ...db import system_constants
from ...errors import InfeasibleError
from ...modules import Context

if TYPE_CHECKING:
    from ..base import StepSim


class SpeculativeParams(BaseModel):
    """The per-depth acceptance rates, shared by the engines (each names its number of draft steps itself)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    speculative_acceptance: tuple[float, ...] | None = Field(
        default=None, description="conditional acceptance rate of each draft depth of MTP speculative decoding, "
                                  "comma-separated (a_1,a_2,...; one value: every depth); None = the DeepSeek-V3 "
                                  "report's 0.85 at every depth")

    @field_validator("speculative_acceptance", mode="before")
    @classmethod
    def _rates(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        if isinstance(value, str):
            value = [v for v in value.replace(";", ",").split(",") if v.strip()]
        if isinstance(value, (int, float)):
            value = [value]
        rates = tuple(float(v) for v in value)
        if any(not 0.0 <= a <= 1.0 for a in rates):
            raise ValueError(f"acceptance rates are fractions in [0, 1], got {rates}")
        return rates


def acceptance_rates(k: int, given: tuple[float, ...] | None) -> tuple[float, ...]:
    """The k conditional acceptance rates: ``given`` (one value repeats over every depth; otherwise exactly k of
    them), else the sourced default at every depth."""
    if given is None:
        return (float(system_constants("engines").value("mtp_acceptance_rate")),) * k
    if len(given) == 1:
        return given * k
    if len(given) != k:
        raise InfeasibleError(f"--speculative-acceptance gives {len(given)} rates for {k} draft steps: give one rate "
                              f"(every depth) or {k}, one per depth")
    return tuple(given)


def require_mtp(ctx: Context, engine: str, flag: str, k: int) -> None:
    """MTP speculative decoding needs the model's MTP module (``mtp_layers`` of its spec)."""
    if k and not ctx.model.mtp_layers:
        raise InfeasibleError(f"{engine}: {flag} {k} runs MTP speculative decoding, which needs the model's "
                              f"multi-token-prediction module (config.json num_nextn_predict_layers); "
                              f"{ctx.model.name} has none")


def speculation(engine, ctx: Context) -> tuple[int, tuple[float, ...], str]:
    """(k draft tokens a step, their conditional acceptance rates, "mtp" / "draft" / "") of ``engine`` on ``ctx``:
    MTP from the engine's own flag, else a separate draft model from the scenario (``--draft``, ``--spec-tokens``,
    ``--spec-accept``; per-depth rates from ``--speculative-acceptance`` where given), else none."""
    k = engine.speculative_steps()
    spec = ctx.options.speculative
    given = getattr(engine.params, "speculative_acceptance", None)
    if k and spec is not None:
        raise InfeasibleError(f"{engine.name}: {engine.speculative_flag} {k} (MTP) and --draft {spec.draft_model} "
                              f"both ask for speculative decoding; give one")
    if k:
        require_mtp(ctx, engine.name, engine.speculative_flag, k)
        return k, acceptance_rates(k, given), "mtp"
    if spec is not None:
        n = spec.num_tokens
        return n, acceptance_rates(n, given or (spec.acceptance_rate,)), "draft"
    return 0, (), ""


def draft_model_step_s(engine, ctx: Context, batch: float, context: int) -> float:
    """One decode step of the scenario's draft model (``--draft``) over ``batch`` sequences, as the engine runs its
    decode (CUDA graph of the padded batch, its kernels and CPU work): tensor parallel over each DP rank's GPUs
    (the target's attention layout), every DP rank drafting for its own sequences."""
    from ...costs import EAGER
    from ...engine import Engine
    from ..base import simulate_pass
    from .engine_step import engine_layer_times
    from .parallel import rank_context
    from .tensor_parallel import LayerTimes

    draft = ctx.memo(("draft context",), ctx.draft_context)
    pl = engine._parallel(ctx)
    rt = engine.runtime(ctx)
    rctx = rank_context(draft, pl.attn_tp)
    seqs = batch / pl.dp
    execution, rows = rt.decode_execution(seqs)
    att = [(seqs, 1, context)]

    def make() -> float:
        # as the engine prices its own steps (continuous.py's _pass): torch eager, or the engine's kernels
        if execution == EAGER:
            times = LayerTimes.of(rctx, seqs, att)
        else:
            times = engine_layer_times(rctx, seqs, att, execution, rt.backend, rows)
        eng = Engine(memory_capacity_bytes={"gpu": ctx.platform.usable_gpu_memory_bytes_per_gpu})
        head = rctx.gpu_s(rctx.head(rows, seqs).scaled(1.0 / pl.attn_tp), execution)
        step = simulate_pass(rctx, eng, lambda e, i, kind: times.add(e, i, kind), head_s=head)
        # GPU time only: the k draft steps run inside one scheduler step, whose CPU work the verify pass carries
        return step.time_s
    return ctx.memo(("draft model step", engine.name, repr(engine.params), batch, context), make)


def speculative_decode_step(engine, ctx: Context, lay, batch: float, context: int, prompt: int,
                            k: int, kind: str = "mtp") -> "StepSim":
    """One speculative decode step of ``batch`` sequences at ``context`` tokens (module docstring): the verification
    pass of k + 1 tokens a sequence plus k draft steps: of one layer and the LM head each (``kind`` "mtp"), or of
    the draft model (:func:`draft_model_step_s`, ``kind`` "draft")."""
    base = engine._mixed(ctx, lay, batch, context, 0, 0, prompt)
    if k == 0:
        return base
    if kind == "draft":
        draft = k * draft_model_step_s(engine, ctx, batch, context)
    else:
        head = base.category_s.get("head", 0.0)
        layer = max(base.time_s - head, 0.0) / ctx.model.num_layers
        draft = k * (layer + head)
    width = k + 1
    verify = engine._pass(ctx, lay, batch * width, batch * width, [(batch, width, context + k)], width=width)
    category = dict(verify.category_s)
    name = "MTP draft" if kind == "mtp" else "draft model"
    category[name] = category.get(name, 0.0) + draft
    busy = dict(verify.busy_s)
    busy["gpu"] = busy.get("gpu", 0.0) + draft
    return replace(verify, time_s=verify.time_s + draft, category_s=category, busy_s=busy)

