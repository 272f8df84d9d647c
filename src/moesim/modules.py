"""The modules of one model's layer, priced with the operation families in :mod:`moesim.costs`.

Serving systems compose these into engine tasks; metrics use the same byte and FLOP counts,
so what is simulated and what is reported cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, wraps
from typing import Any, Callable, Hashable, Literal, Sequence

from . import costs
from .costs import OpCost
from .errors import MoesimError
from .specs import ModelSpec, OfflineWorkload, Platform
from .specs.common import BYTES_PER_ELEMENT


@dataclass(frozen=True)
class Speculative:
    """Speculative decoding (Leviathan et al., ICML 2023): a draft model proposes ``num_tokens``
    tokens, the target verifies them in one pass; with per-token acceptance rate a, a target
    step yields on average (1 - a^(k+1)) / (1 - a) tokens (their Eq. 1)."""

    draft_model: str
    num_tokens: int = 4
    acceptance_rate: float = 0.7
    #: the draft model's spec, resolved from ``draft_model`` before planning (``moesim.predict`` does it),
    #: so that serving systems receive it through the Context rather than reading the database
    draft: ModelSpec | None = field(default=None, compare=False, hash=False, repr=False)

    @property
    def tokens_per_step(self) -> float:
        return expected_tokens_per_step((self.acceptance_rate,) * self.num_tokens)


def expected_tokens_per_step(acceptance: Sequence[float]) -> float:
    """Tokens a verification step yields on average when draft token d (1-based) is accepted with conditional
    probability a_d given the ones before it were (``acceptance`` = a_1 .. a_k; greedy verification stops at the
    first rejection and always adds the target's own token)::

        E[tokens] = 1 + sum_{d=1..k} prod_{i<=d} a_i

    With every a_i = a this is (1 - a^(k+1)) / (1 - a), Leviathan et al. (ICML 2023) Eq. 1."""
    total, run = 1.0, 1.0
    for a in acceptance:
        run *= float(a)
        total += run
    return total


@dataclass(frozen=True)
class Options:
    """Knobs shared by every serving system."""

    weight_dtype: str | None = None  # None = the model's released dtype
    kv_dtype: str = "bf16"
    moe_impl: Literal["fused", "loop"] = "fused"
    zipf_s: float = 0.0  # router skew; 0 = uniform
    expert_popularity: tuple[float, ...] | None = None  # measured per-expert activation histogram
    #: experts a layer's tokens were measured to reach (overrides the routing model's expectation for the step it was
    #: measured on: correlated tokens, e.g. one prompt through a random-weight router, reach fewer than independent draws)
    experts_hit: float | None = None
    mla_absorbed: bool = True
    speculative: "Speculative | None" = None
    activation_dtype: str = "bf16"  # dtype of hidden states, attention scores and other transient tensors


_MISSING = object()  # a memo's "not computed yet" (None is a value: ``shared_experts`` of a model without them)


def _per_context(method: Callable) -> Callable:
    """Memoise a pure method of the :class:`Context` on its positional arguments, for the context's
    lifetime (one prediction: every system of an ``auto`` comparison prices the same modules). The
    arguments' types are part of the key, so 1000 and 1000.0 keep separate entries as they would
    compute."""
    name = method.__name__

    @wraps(method)
    def memoised(self: "Context", *args: Any) -> Any:
        key = (name, args, tuple(map(type, args)))
        value = self._memo.get(key, _MISSING)
        if value is _MISSING:
            value = self._memo[key] = method(self, *args)
        return value

    return memoised


@dataclass(frozen=True)
class Context:
    """Everything a serving system needs to build and time a schedule.

    A context lives for one prediction. What it derives from its specs (dtypes, module sizes, the
    efficiency model, module costs and their times) is computed once and kept on it: the systems of
    an ``auto`` comparison, and the candidates each one simulates, price the same modules again and
    again. Nothing is shared between contexts."""

    model: ModelSpec
    platform: Platform
    workload: OfflineWorkload
    options: Options
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _gpu_times: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # OpCost -> s
    _cpu_times: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # OpCost -> s

    def memo(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per key for this context: systems compared on one context (``auto``)
        share the simulations they have in common."""
        value = self._memo.get(key, _MISSING)
        if value is _MISSING:
            value = self._memo[key] = compute()
        return value

    # ---- devices ---------------------------------------------------------------------------
    @cached_property
    def eff(self) -> costs.ProfileEfficiency:
        return costs.efficiency_for(self.platform.empirical, self.platform.calibration)

    def gpu_s(self, cost: OpCost, execution: "costs.Execution | None" = None) -> float:
        """Time of ``cost`` on one GPU under ``execution`` (default eager: the platform's efficiency model as
        fitted), kept per equal (OpCost, execution): its time depends on their compared fields only, and systems
        of one ``auto`` comparison that run in different modes share this context."""
        key = cost if execution is None or execution == costs.EAGER else (cost, execution)
        t = self._gpu_times.get(key)
        if t is None:
            t = self._gpu_times[key] = costs.gpu_time_s(cost, self.platform.gpu, self.eff_in(execution))
        return t

    def eff_in(self, execution: "costs.Execution | None") -> costs.EfficiencyModel:
        """The efficiency model as ``execution`` sees it (:func:`moesim.costs.execution.efficiency_in`)."""
        if execution is None or execution == costs.EAGER:
            return self.eff
        return self.memo(("efficiency in", execution), lambda: costs.efficiency_in(self.eff, execution))

    def cpu_s(self, cost: OpCost) -> float:
        t = self._cpu_times.get(cost)
        if t is None:
            p = self.platform
            t = self._cpu_times[cost] = costs.cpu_time_s(cost, p.cpu, p.num_cpus, p.host_memory_bandwidth_bytes_per_s,
                                                         self.eff)
        return t

    @cached_property
    def _host_link(self):
        """The host link's figures, measured where calibration measured this link (``costs.achieved_link``)."""
        return costs.achieved_link(self.platform)

    def h2d_s(self, nbytes: float) -> float:
        """Pinned host-to-device copy (measured link figures where calibration measured this link);
        ``costs.platform_copy_time_s`` with the link resolved once per context."""
        return costs.copy_time_s(nbytes, "h2d_pinned", self._host_link)

    def d2h_s(self, nbytes: float) -> float:
        return costs.copy_time_s(nbytes, "d2h_pinned", self._host_link)

    @cached_property
    def _host_copy_bytes_per_s(self) -> float:
        return costs.host_copy_bytes_per_s(self.platform)

    def copy_s(self, nbytes: float, path: "costs.CopyPath" = "pinned", direction: "costs.CopyDirection" = "h2d",
               copies: int = 1) -> float:
        """A host<->device copy of ``nbytes`` in ``copies`` copies along the system's copy ``path`` (pinned
        direct DMA, staged double-buffer, per-parameter pageable fetch, pageable; equations in
        :mod:`moesim.costs.transfer`). ``copy_s(n)`` equals ``h2d_s(n)``; per-parameter copies pay the
        efficiency model's host sync each."""
        return costs.path_copy_time_s(nbytes, path, direction, self._host_link, copies, self._host_copy_bytes_per_s,
                                      self.eff.host_sync_s)

    def disk_s(self, nbytes: float) -> float:
        return nbytes / self.platform.disk.read_bytes_per_s

    # ---- dtypes and sizes ------------------------------------------------------------------------
    @cached_property
    def wdtype(self) -> str:
        return self.model.weight_dtype(self.options.weight_dtype)

    @cached_property
    def edtype(self) -> str:
        return self.model.expert_weight_dtype(self.options.weight_dtype)

    @cached_property
    def wbytes(self) -> float:
        return BYTES_PER_ELEMENT[self.wdtype]

    @cached_property
    def ebytes(self) -> float:
        return BYTES_PER_ELEMENT[self.edtype]

    @cached_property
    def abytes(self) -> float:
        """Bytes per element of activations (hidden states, scores, transient tensors)."""
        return BYTES_PER_ELEMENT[self.options.activation_dtype]

    @cached_property
    def weight_bytes(self) -> float:
        return self.model.weight_bytes(self.options.weight_dtype)

    def draft_context(self) -> "Context | None":
        """The speculative draft model's context (same platform and workload, its released dtype, this
        KV dtype), or None without speculative decoding. The draft's spec comes resolved in the options."""
        spec = self.options.speculative
        if spec is None:
            return None
        if spec.draft is None:
            raise MoesimError(f"speculative decoding: the draft model {spec.draft_model!r} was not resolved "
                              f"(give Speculative(draft=ModelSpec) or plan through moesim.predict)")
        return Context(spec.draft, self.platform, self.workload,
                       Options(kv_dtype=self.options.kv_dtype, activation_dtype=self.options.activation_dtype))

    def hidden_state_bytes(self, tokens: float) -> float:
        """``tokens`` hidden states (one hidden-sized vector each) in the activation dtype."""
        return tokens * self.model.hidden_size * self.abytes

    @_per_context
    def kv_bytes_per_token(self, context_tokens: int | None = None) -> float:
        """KV bytes per token over all layers (windowed layers capped at their window)."""
        return self.model.kv_bytes_per_token(self.options.kv_dtype, context_tokens)

    def kv_bytes_per_token_layer(self) -> float:
        return self.model.attention.kv_elements_per_token() * BYTES_PER_ELEMENT[self.options.kv_dtype]

    # ---- modules of one layer ----------------------------------------------------------------------
    @cached_property
    def attention_weight_bytes(self) -> float:
        return self.model.attention_params * self.wbytes

    @cached_property
    def expert_weight_bytes(self) -> float:
        return self.model.expert_params * self.ebytes

    @cached_property
    def shared_weight_bytes(self) -> float:
        return self.model.shared_expert_params * self.wbytes

    @cached_property
    def dense_ffn_weight_bytes(self) -> float:
        return self.model.dense_ffn_params * self.wbytes

    @cached_property
    def router_weight_bytes(self) -> float:
        """One MoE layer's router weights, in the model's router dtype (unquantized in the checkpoints)."""
        m = self.model
        return m.router_params * BYTES_PER_ELEMENT[m.moe.router_dtype] if m.moe else 0.0

    @cached_property
    def resident_weight_bytes(self) -> float:
        """Embedding, LM head and routers: small weights every system keeps on the GPU."""
        m = self.model
        return (m.embedding_params + m.lm_head_params) * self.wbytes + m.num_moe_layers * self.router_weight_bytes

    @_per_context
    def attention_proj(self, tokens: float) -> OpCost:
        m = self.model
        return costs.attention_projections(m.attention_params, m.hidden_size, tokens, self.wdtype)

    @_per_context
    def attention_proj_split(self, tokens: float) -> tuple[OpCost, OpCost]:
        """(Q/K/V projections before the attention core, output projection after it): the projections'
        cost split by the share of their weights, ``AttentionSpec.qkv_share`` (Mixtral: 0.6 / 0.4)."""
        full = self.attention_proj(tokens)
        share = self.model.attention.qkv_share(self.model.hidden_size)
        return full.scaled(share), full.scaled(1.0 - share)

    @_per_context
    def attention_core(self, batch: float, q_len: float, kv_len: float, windowed: bool) -> OpCost:
        return costs.attention_core(self.model.attention, batch, q_len, kv_len, True, self.options.kv_dtype,
                                    windowed, self.options.mla_absorbed)

    @_per_context
    def cpu_attention(self, batch: float, kv_len: float, windowed: bool) -> OpCost:
        return costs.cpu_attention(self.model.attention, batch, 1, kv_len, self.options.kv_dtype, windowed)

    @_per_context
    def router(self, tokens: float) -> OpCost:
        m = self.model
        return costs.router(m.hidden_size, m.moe.num_experts, tokens) + costs.dispatch_combine(
            m.hidden_size, tokens * m.moe.top_k
        )

    def active_experts(self, tokens: float) -> float:
        """Distinct experts ``tokens`` tokens reach in one layer: ``Options.experts_hit`` where measured (at most the
        experts and the routed slots), else the routing model's expectation (:func:`costs.expected_active_experts`)."""
        moe = self.model.moe
        if self.options.experts_hit is not None and tokens > 0:
            return float(min(self.options.experts_hit, moe.num_experts, tokens * moe.top_k))
        return costs.expected_active_experts(moe.num_experts, moe.top_k, tokens, self.options.zipf_s,
                                             self.options.expert_popularity)

    @_per_context
    def experts(self, num_active: float, routed_tokens: float) -> OpCost:
        m = self.model
        return costs.routed_experts(m.hidden_size, m.moe.expert_intermediate_size, num_active, routed_tokens,
                                    m.moe.gated, self.edtype, self.options.moe_impl)

    @_per_context
    def shared_experts(self, tokens: float) -> OpCost | None:
        m = self.model
        if not m.moe or not m.moe.num_shared_experts:
            return None
        one = costs.expert_ffn(m.hidden_size, m.moe.shared_ffn, tokens, m.moe.gated, self.wdtype)
        return one.scaled(m.moe.num_shared_experts) if m.moe.num_shared_experts > 1 else one

    @_per_context
    def dense_ffn(self, tokens: float) -> OpCost:
        m = self.model
        return costs.expert_ffn(m.hidden_size, m.dense_ffn.intermediate_size, tokens, m.dense_ffn.gated, self.wdtype)

    @_per_context
    def head(self, tokens: float, rows: float) -> OpCost:
        m = self.model
        return costs.embedding_lookup(m.hidden_size, tokens, self.wdtype) + costs.lm_head(
            m.hidden_size, m.vocab_size, rows, self.wdtype
        )
