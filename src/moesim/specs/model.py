"""MoE model spec and the parameter arithmetic that follows from it.

Parameter counts follow the module shapes of the reference implementations
(Hugging Face transformers modeling files): a gated FFN has three matrices
(gate, up: hidden x ffn; down: ffn x hidden); GQA attention has Q and O of
hidden x (heads*head_dim) and K, V of hidden x (kv_heads*head_dim); MLA follows
DeepSeek-V2 (arXiv 2405.04434, section 2.1).  Norms and biases are ignored (<0.01%).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from pydantic import Field, model_validator

from ..errors import MoesimError
from ..limits import MAX_DIM, MAX_EXPERTS, MAX_LAYERS
from .common import BYTES_PER_ELEMENT, Sourced, Spec


class AttentionSpec(Spec):
    kind: Literal["mha", "gqa", "mla"]
    num_heads: int = Field(gt=0, le=MAX_DIM)
    num_kv_heads: int = Field(gt=0, le=MAX_DIM)
    head_dim: int = Field(gt=0, le=MAX_DIM, description="q/k/v head dim for MHA/GQA; v_head_dim for MLA")
    # MLA (DeepSeek-V2 section 2.1): latent ranks and the split of the query/key head dim.
    q_lora_rank: int | None = Field(default=None, gt=0, le=MAX_DIM)
    kv_lora_rank: int | None = Field(default=None, gt=0, le=MAX_DIM)
    qk_nope_head_dim: int | None = Field(default=None, gt=0, le=MAX_DIM)
    qk_rope_head_dim: int | None = Field(default=None, ge=0, le=MAX_DIM)
    v_head_dim: int | None = Field(default=None, gt=0, le=MAX_DIM)
    # Windowed attention: which layers attend within a window, repeating pattern.
    window_kind: Literal["sliding", "chunked"] | None = None
    window_tokens: int | None = Field(default=None, gt=0, le=MAX_DIM)
    window_layer_pattern: tuple[bool, ...] = Field(
        default=(), description="repeating per-layer pattern, True = windowed layer (e.g. gpt-oss: [true, false])"
    )

    @model_validator(mode="after")
    def _check(self) -> "AttentionSpec":
        if self.kind == "mla":
            missing = [
                f
                for f in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
                if getattr(self, f) is None
            ]
            if missing:
                raise ValueError(f"MLA attention needs {', '.join(missing)}")
        elif self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if (self.window_kind is None) != (self.window_tokens is None):
            raise ValueError("window_kind and window_tokens go together")
        if self.window_kind and not self.window_layer_pattern:
            raise ValueError("window_layer_pattern is needed with a window")
        return self

    @property
    def qk_head_dim(self) -> int:
        if self.kind == "mla":
            return self.qk_nope_head_dim + self.qk_rope_head_dim  # type: ignore[operator]
        return self.head_dim

    @property
    def out_head_dim(self) -> int:
        return self.v_head_dim if self.kind == "mla" else self.head_dim  # type: ignore[return-value]

    def params(self, hidden: int) -> int:
        """Weights of one attention block (projections only)."""
        h = self.num_heads
        if self.kind == "mla":
            qk = self.qk_head_dim
            q = hidden * self.q_lora_rank + self.q_lora_rank * h * qk if self.q_lora_rank else hidden * h * qk
            kv_down = hidden * (self.kv_lora_rank + self.qk_rope_head_dim)
            kv_up = self.kv_lora_rank * h * (self.qk_nope_head_dim + self.v_head_dim)
            o = h * self.v_head_dim * hidden
            return q + kv_down + kv_up + o
        d = self.head_dim
        return hidden * h * d * 2 + hidden * self.num_kv_heads * d * 2

    def out_proj_params(self, hidden: int) -> int:
        """Weights of the output projection: heads x value head dim -> hidden (o_proj, both kinds)."""
        return self.num_heads * self.out_head_dim * hidden

    def qkv_share(self, hidden: int) -> float:
        """Share of the projection weights (hence FLOPs and weight bytes) before the attention core:
        Q, K, V (MLA: the query path and the KV down/up projections), i.e. 1 - o_proj / all projections.
        Mixtral (GQA 32/8, head 128, hidden 4096): q 4096^2, k and v 4096 x 1024 each, o 4096^2
        -> (16.8 + 4.2 + 4.2) / 41.9 = 0.6."""
        return 1.0 - self.out_proj_params(hidden) / self.params(hidden)

    def kv_elements_per_token(self) -> int:
        """Cached elements per token per layer: K and V, or MLA's latent plus rope key."""
        if self.kind == "mla":
            return self.kv_lora_rank + self.qk_rope_head_dim  # type: ignore[operator]
        return 2 * self.num_kv_heads * self.head_dim

    def is_windowed(self, layer: int) -> bool:
        if not self.window_kind:
            return False
        return self.window_layer_pattern[layer % len(self.window_layer_pattern)]


class MoESpec(Spec):
    num_experts: int = Field(gt=0, le=MAX_EXPERTS)
    top_k: int = Field(gt=0, le=MAX_EXPERTS)
    expert_intermediate_size: int = Field(gt=0, le=MAX_DIM)
    num_shared_experts: int = Field(ge=0, le=MAX_EXPERTS, default=0)
    shared_expert_intermediate_size: int | None = Field(
        default=None, gt=0, le=MAX_DIM, description="per shared expert; defaults to expert_intermediate_size"
    )
    first_k_dense: int = Field(ge=0, le=MAX_LAYERS, default=0, description="the first k layers have a dense FFN")
    layer_freq: int = Field(ge=1, le=MAX_LAYERS, default=1,
                            description="after first_k_dense, every layer_freq-th layer is MoE")
    gated: bool = True
    router: Literal["softmax", "sigmoid"] = "softmax"
    router_bias: bool = False
    router_dtype: str = Field(
        default="bf16", description="storage dtype of the router (gate) weights: the checkpoint keeps them unquantized "
                                    "(bf16) in every model here, also where experts are fp8 or mxfp4")

    @model_validator(mode="after")
    def _check(self) -> "MoESpec":
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) exceeds num_experts ({self.num_experts})")
        if self.router_dtype not in BYTES_PER_ELEMENT:
            raise ValueError(f"router_dtype {self.router_dtype!r} is not one of {sorted(BYTES_PER_ELEMENT)}")
        return self

    @property
    def shared_ffn(self) -> int:
        return self.shared_expert_intermediate_size or self.expert_intermediate_size

    def is_moe_layer(self, layer: int) -> bool:
        if layer < self.first_k_dense:
            return False
        return (layer - self.first_k_dense) % self.layer_freq == self.layer_freq - 1


class DenseFFNSpec(Spec):
    intermediate_size: int = Field(gt=0, le=MAX_DIM)
    gated: bool = True


class PublishedParams(Spec):
    total_params: float = Field(gt=0)
    active_params: float = Field(gt=0)
    active_includes_embeddings: bool = Field(
        default=True, description="whether the published active count includes input embeddings"
    )
    count_tolerance: float | None = Field(
        default=None, gt=0, lt=0.1,
        description="a wider tolerance for moesim's count against this figure; must be explained under derived",
    )
    active_includes_lm_head: bool = Field(
        default=True, description="whether the published active count includes the output embedding (LM head)"
    )
    source: str


@dataclass(frozen=True)
class LayerKind:
    """What distinguishes layers for simulation: FFN type and attention span."""

    moe: bool
    windowed: bool


class CheckpointVariant(Spec):
    """A published quantised checkpoint of the model in another weight dtype (e.g. NVIDIA's NVFP4 export), with what
    its quantisation config declares beyond the weights."""

    hf_id: str
    kv_cache_dtype: str | None = Field(default=None, description="KV-cache dtype the checkpoint's quantisation config "
                                       "declares (ModelOpt kv_cache_quant_algo); None = none declared")
    source: str

    @model_validator(mode="after")
    def _check(self) -> "CheckpointVariant":
        if self.kv_cache_dtype is not None and self.kv_cache_dtype not in BYTES_PER_ELEMENT:
            raise ValueError(f"kv_cache_dtype {self.kv_cache_dtype!r} is not a known dtype")
        return self


class ModelSpec(Sourced):
    """A (Mixture-of-Experts) transformer decoder."""

    family: str
    hf_id: str | None = None
    num_layers: int = Field(gt=0, le=MAX_LAYERS)
    hidden_size: int = Field(gt=0, le=MAX_DIM)
    vocab_size: int = Field(gt=0, le=MAX_DIM)
    tie_word_embeddings: bool = False
    max_context_tokens: int = Field(gt=0, le=MAX_DIM)
    default_dtype: str = "bf16"
    expert_dtype: str | None = Field(default=None, description="routed-expert weight dtype if it differs (gpt-oss: mxfp4)")
    quant_kind: Literal["fp8", "fp8_block", "mxfp4", "nvfp4", "int4"] | None = Field(
        default=None, description="native quantisation format of the released checkpoint: fp8 per-tensor, fp8_block "
                                  "(128x128 block-scaled, DeepSeek's), mxfp4 (gpt-oss's experts), nvfp4, int4 "
                                  "(weight-only int4, W4A16: Kimi-K2.5's experts); None = not quantised (bf16/fp16)")
    attention: AttentionSpec
    moe: MoESpec | None = None
    dense_ffn: DenseFFNSpec | None = None
    published: PublishedParams | None = None
    checkpoints: dict[str, CheckpointVariant] = Field(
        default_factory=dict, description="published checkpoints in other weight dtypes, keyed by that dtype (--dtype)")
    mtp_layers: int = Field(default=0, ge=0, description="multi-token-prediction modules shipped with the checkpoint "
                            "(config.json num_nextn_predict_layers; DeepSeek-V3's MTP module: one transformer layer "
                            "and a projection, sharing the embedding and LM head), not counted in num_layers; the "
                            "engines' MTP speculative decoding runs them as the draft")

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        for field in ("default_dtype", "expert_dtype"):
            value = getattr(self, field)
            if value is not None and value not in BYTES_PER_ELEMENT:
                raise ValueError(f"{field} {value!r} is not one of {sorted(BYTES_PER_ELEMENT)}")
        needs_dense = self.moe is None or any(not self.moe.is_moe_layer(i) for i in range(self.num_layers))
        if needs_dense and self.dense_ffn is None:
            raise ValueError("some layers are dense, so dense_ffn is required")
        return self

    # ---- structure -------------------------------------------------------------------------
    def is_moe_layer(self, layer: int) -> bool:
        return self.moe is not None and self.moe.is_moe_layer(layer)

    @cached_property
    def _layer_kinds(self) -> dict[LayerKind, int]:
        return dict(
            Counter(LayerKind(self.is_moe_layer(i), self.attention.is_windowed(i)) for i in range(self.num_layers))
        )

    def layer_kinds(self) -> dict[LayerKind, int]:
        """Distinct layer kinds and how many layers of each: the unit of representative simulation."""
        return dict(self._layer_kinds)

    @cached_property
    def num_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.num_layers))

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    # ---- parameter counts (elements) -----------------------------------------------------------
    def ffn_params(self, intermediate: int, gated: bool = True) -> int:
        return (3 if gated else 2) * self.hidden_size * intermediate

    @property
    def expert_params(self) -> int:
        assert self.moe is not None
        return self.ffn_params(self.moe.expert_intermediate_size, self.moe.gated)

    @property
    def shared_expert_params(self) -> int:
        """All shared experts of one MoE layer together."""
        if self.moe is None:
            return 0
        return self.moe.num_shared_experts * self.ffn_params(self.moe.shared_ffn, self.moe.gated)

    @property
    def router_params(self) -> int:
        if self.moe is None:
            return 0
        return self.hidden_size * self.moe.num_experts

    @property
    def dense_ffn_params(self) -> int:
        if self.dense_ffn is None:
            return 0
        return self.ffn_params(self.dense_ffn.intermediate_size, self.dense_ffn.gated)

    @property
    def attention_params(self) -> int:
        return self.attention.params(self.hidden_size)

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    def _params(self, experts_per_moe_layer: float, include_embeddings: bool = True) -> float:
        n_moe, n_dense = self.num_moe_layers, self.num_dense_layers
        total = self.num_layers * self.attention_params + n_dense * self.dense_ffn_params
        if self.moe is not None:
            total += n_moe * (self.router_params + self.shared_expert_params + experts_per_moe_layer * self.expert_params)
        total += self.lm_head_params + (self.embedding_params if include_embeddings else 0)
        return total

    @cached_property
    def total_params(self) -> float:
        return self._params(self.moe.num_experts if self.moe else 0)

    def active_params(self, include_embeddings: bool = True) -> float:
        """Parameters one token touches: all non-expert weights plus top-k routed experts per MoE layer."""
        return self._params(self.moe.top_k if self.moe else 0, include_embeddings)

    def published_convention_active_params(self) -> float:
        """Active parameters counted the way the publisher counted them (embeddings in or out)."""
        pub = self.published
        if pub is None:
            return self.active_params()
        active = self.active_params(pub.active_includes_embeddings)
        return active if pub.active_includes_lm_head else active - self.lm_head_params

    # ---- bytes ------------------------------------------------------------------------------
    def weight_dtype(self, override: str | None = None) -> str:
        return override or self.default_dtype

    def expert_weight_dtype(self, override: str | None = None) -> str:
        return override or self.expert_dtype or self.default_dtype

    def weight_bytes(self, dtype: str | None = None) -> float:
        """All weights in memory: routed experts in the expert dtype, the rest in the weight dtype."""
        routed = self.num_moe_layers * (self.moe.num_experts * self.expert_params if self.moe else 0)
        rest = self.total_params - routed
        return rest * BYTES_PER_ELEMENT[self.weight_dtype(dtype)] + routed * BYTES_PER_ELEMENT[
            self.expert_weight_dtype(dtype)
        ]

    def kv_bytes_per_token(self, kv_dtype: str = "bf16", context_tokens: int | None = None) -> float:
        """KV-cache bytes per token summed over layers.

        With ``context_tokens``, windowed layers hold at most ``window_tokens`` tokens, so the
        average per-token cost over a sequence of that length is returned.
        """
        per_layer = self.attention.kv_elements_per_token() * BYTES_PER_ELEMENT[kv_dtype]
        total = 0.0
        for i in range(self.num_layers):
            share = 1.0
            if context_tokens and self.attention.is_windowed(i):
                share = min(1.0, self.attention.window_tokens / context_tokens)  # type: ignore[operator]
            total += per_layer * share
        return total

    # ---- synthetic variants for sweeps ----------------------------------------------------------
    # Each raises MoesimError saying the rule broken in words ("top-k 9 exceeds Mixtral-8x7B's 8 routed experts").
    def with_experts(self, num_experts: int) -> "ModelSpec":
        """The same model with ``num_experts`` routed experts (top-k lowered to fit where needed)."""
        moe = self._moe_to_vary("the number of experts")
        n = _whole("the number of experts", num_experts, MAX_EXPERTS)
        return self._with_moe(num_experts=n, top_k=min(moe.top_k, n))

    def with_top_k(self, top_k: int) -> "ModelSpec":
        """The same model routing each token to ``top_k`` experts."""
        moe = self._moe_to_vary("top-k")
        k = _whole("top-k", top_k, MAX_EXPERTS)
        if k > moe.num_experts:
            raise MoesimError(f"top-k {k} exceeds {self.name}'s {moe.num_experts} routed experts (a token picks "
                              "top-k distinct experts)")
        return self._with_moe(top_k=k)

    def with_expert_ffn(self, intermediate: int) -> "ModelSpec":
        """The same model with experts of FFN (intermediate) size ``intermediate``."""
        self._moe_to_vary("the expert FFN size")
        return self._with_moe(expert_intermediate_size=_whole("the expert FFN size", intermediate, MAX_DIM))

    def _moe_to_vary(self, what: str) -> MoESpec:
        if self.moe is None:
            raise MoesimError(f"{self.name} has no MoE layers: {what} cannot be varied")
        return self.moe

    def _with_moe(self, **update) -> "ModelSpec":
        from pydantic import ValidationError

        moe = self._moe_to_vary(", ".join(update))
        tag = ",".join(f"{k}={v}" for k, v in update.items())
        try:
            varied = MoESpec.model_validate({**moe.model_dump(), **update})
            return ModelSpec.model_validate(
                {**self.model_dump(), "moe": varied.model_dump(), "name": f"{self.name}[{tag}]", "published": None}
            )
        except ValidationError as exc:  # a rule not checked above: said in words, without pydantic's URL
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'model'}: "
                                 f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
            raise MoesimError(f"{self.name} with {tag} is not a valid model: {problems}") from None


def _whole(what: str, value: object, most: int) -> int:
    """A whole number from 1 to ``most``, or a MoesimError saying what ``what`` takes."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MoesimError(f"{what} takes a whole number, got {value!r}")
    if not 1 <= value <= most:
        raise MoesimError(f"{what} must be from 1 to {most:,} (got {value})")
    return value
