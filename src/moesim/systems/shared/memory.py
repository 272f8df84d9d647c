"""Memory of a forward pass, shared by the serving systems.

The rule constants (how many activation tensors stay live per token, the dtype of Hugging Face's
prefill logits) are data: ``systems_db/shared.yaml``, each with its source.
"""

from __future__ import annotations

from ...db import system_constants
from ...modules import Context
from ...specs import LayerKind
from ...specs.common import BYTES_PER_ELEMENT


def activation_bytes(ctx: Context, tokens: float, dtype: str | None = None, shards: int | None = None) -> float:
    """Transient activations of a forward pass over ``tokens`` tokens, per GPU::

        A = tokens (c_h d + c_f f) b / n

    d: hidden size; f: the widest FFN of a layer (top-k experts' intermediate size, or the dense FFN's);
    c_h, c_f: live hidden- and FFN-sized tensors per token (``systems_db/shared.yaml``); b: bytes per element
    of ``dtype`` (default: the activation dtype of the options); n: GPUs the pass is split over
    (``shards``, default the platform's GPUs, tensor parallel)."""
    per_token = ctx.memo(("activation elements per token",), lambda: _activation_elements_per_token(ctx))
    width = BYTES_PER_ELEMENT[dtype] if dtype else ctx.abytes
    return tokens * per_token * width / (shards or ctx.platform.num_gpus)


def _activation_elements_per_token(ctx: Context) -> float:
    """c_h d + c_f f of :func:`activation_bytes` (a function of the model: kept on the context)."""
    m = ctx.model
    shared = system_constants("shared")
    ffn = max(m.moe.expert_intermediate_size * m.moe.top_k if m.moe else 0,
              m.dense_ffn.intermediate_size if m.dense_ffn else 0)
    return (shared.value("activation_hidden_tensors_per_token") * m.hidden_size
            + shared.value("activation_ffn_tensors_per_token") * ffn)


def prefill_logits_bytes(ctx: Context, tokens: float) -> float:
    """Logits over ``tokens`` prompt positions as the Hugging Face generation code holds them: in the
    activation dtype, then upcast (``hf_logits_dtype``, fp32): tokens x vocab x (b_act + b_logits)."""
    upcast = BYTES_PER_ELEMENT[system_constants("shared").value("hf_logits_dtype")]
    return tokens * ctx.model.vocab_size * (ctx.abytes + upcast)


def mla_decompressed_kv_bytes_per_token(ctx: Context) -> float:
    """KV bytes per token, all layers, of an MLA model in Hugging Face's DynamicCache. The Hugging Face DeepSeek
    code (remote and native) up-projects the latent and caches per-head K and V
    (``past_key_value.update(key_states, value_states)``), not the latent::

        kv = L H (d_qk + d_v) b_kv        (DeepSeek-V2: 60 x 128 x (192 + 128) x 2 B = 4.9 MB per token)

    L layers, H heads, d_qk = qk_nope + qk_rope, d_v the value head size, b_kv bytes per KV element."""
    m = ctx.model
    a = m.attention
    if a.kind != "mla":
        raise ValueError(f"{m.name}: attention is {a.kind}, not MLA")
    return m.num_layers * a.num_heads * (a.qk_head_dim + a.v_head_dim) * BYTES_PER_ELEMENT[ctx.options.kv_dtype]


def layer_weight_bytes(ctx: Context, kind: LayerKind) -> float:
    """Bytes of one layer streamed by a system that is not MoE-aware: attention + every expert
    (+ shared experts), or attention + the dense FFN."""
    m = ctx.model
    if kind.moe:
        return ctx.attention_weight_bytes + m.moe.num_experts * ctx.expert_weight_bytes + ctx.shared_weight_bytes
    return ctx.attention_weight_bytes + ctx.dense_ffn_weight_bytes


def max_layer_weight_bytes(ctx: Context) -> float:
    """The largest layer of the model (the size of a layer-weight buffer; kept on the context)."""
    return ctx.memo(("max layer weight bytes",),
                    lambda: max(layer_weight_bytes(ctx, k) for k in ctx.model.layer_kinds()))


def streamed_weight_bytes(ctx: Context) -> float:
    """Weights outside the GPU-resident embeddings / LM head / routers."""
    return max(0.0, ctx.weight_bytes - ctx.resident_weight_bytes)
