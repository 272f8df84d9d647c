"""Read a model straight from a Hugging Face ``config.json``.

Every key of the config is either mapped to a ModelSpec field, or known to be irrelevant to
performance (token ids, initialisation, RoPE scaling, dropout, ...). Any other key is named in
an error rather than silently ignored, because it may change the architecture.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SpecError, describe_type
from ..limits import MAX_DIM, MAX_EXPERTS, MAX_LAYERS
from ..specs import ModelSpec
from . import check_shape, read_spec_text, unreadable_value, validate

# keys that never change FLOPs, bytes or memory of inference
IGNORED = {
    "architectures", "model_type", "_name_or_path", "transformers_version", "torch_dtype", "dtype", "bos_token_id",
    "eos_token_id", "pad_token_id", "initializer_range", "rms_norm_eps", "layer_norm_eps", "rope_theta",
    "rope_scaling", "rope_parameters", "attention_dropout", "hidden_dropout", "use_cache", "hidden_act",
    "router_aux_loss_coef", "aux_loss_alpha", "output_router_logits", "router_jitter_noise", "seq_aux",
    "scoring_func", "topk_method", "n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob",
    "use_sliding_window", "max_window_layers", "sliding_window", "attention_bias", "mlp_bias", "bias",
    "ep_size", "pretraining_tp", "tie_word_embeddings", "quantization_config", "auto_map", "qk_layernorm",
    "use_qk_norm", "clip_qkv", "partial_rotary_factor", "num_nextn_predict_layers", "rope_interleave",
    "attention_chunk_size", "layer_types", "no_rope_layers", "router_bias", "output_router_logits",
    "moe_layer_freq", "first_k_dense_replace", "decoder_sparse_step", "mlp_only_layers", "head_dim",
    "shared_expert_intermediate_size", "moe_intermediate_size", "n_routed_experts", "n_shared_experts",
    "num_experts_per_tok", "num_local_experts", "num_experts", "kv_lora_rank", "q_lora_rank",
    "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "intermediate_size", "vocab_size", "hidden_size",
    "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
    "swiglu_limit", "experts_per_token", "initial_context_length", "sliding_window_pattern", "attn_logit_softcapping",
    "final_logit_softcapping", "embedding_multiplier", "residual_multiplier", "logits_scaling", "num_nextn_predict_layers",
    "keys_to_ignore_at_inference", "id2label", "label2id", "tokenizer_class", "is_encoder_decoder",
    # minimax_m2: QK-norm, routing bias, partial rotary and the (unused by the engines' defaults) MTP modules
    "qk_norm_type", "use_routing_bias", "use_mtp", "mtp_transformer_layers", "num_mtp_modules", "rotary_dim",
    "shared_intermediate_size", "attn_type_list",
}
#: what a serialised ``PretrainedConfig`` carries besides the architecture (generation defaults, output switches,
#: encoder-decoder wiring): written out in full by multimodal wrappers' ``text_config``; none of it changes the
#: language model's FLOPs, bytes or memory ("top_k" here is sampling's, not the router's num_experts_per_tok)
GENERIC = {
    "add_cross_attention", "bad_words_ids", "begin_suppress_tokens", "chunk_size_feed_forward",
    "cross_attention_hidden_size", "decoder_start_token_id", "diversity_penalty", "do_sample", "early_stopping",
    "encoder_no_repeat_ngram_size", "exponential_decay_length_penalty", "finetuning_task", "forced_bos_token_id",
    "forced_eos_token_id", "is_decoder", "length_penalty", "max_length", "min_length", "no_repeat_ngram_size",
    "num_beam_groups", "num_beams", "num_return_sequences", "output_attentions", "output_hidden_states",
    "output_scores", "prefix", "problem_type", "pruned_heads", "remove_invalid_values", "repetition_penalty",
    "return_dict", "return_dict_in_generate", "sep_token_id", "suppress_tokens", "task_specific_params",
    "temperature", "tf_legacy_loss", "tie_encoder_decoder", "top_k", "top_p", "torchscript", "typical_p",
    "use_bfloat16",
}
#: multimodal wrappers whose ``text_config`` is a language model moesim maps: model_type -> what is left out
WRAPPERS = {"kimi_k25": "the vision encoder (MoonViT) and its projector, which run only on image/video inputs"}

#: whole-number fields of a config.json: (the least value, the most); null means "absent" where a field is optional.
#: Where moesim reads 0 as "absent" (no query compression: q_lora_rank 0) the least is 0.
_WHOLE: dict[str, tuple[int, int]] = {
    **dict.fromkeys(("hidden_size", "num_attention_heads", "num_key_value_heads", "vocab_size", "intermediate_size",
                     "moe_intermediate_size", "head_dim", "max_position_embeddings", "initial_context_length",
                     "qk_nope_head_dim", "v_head_dim"), (1, MAX_DIM)),
    **dict.fromkeys(("shared_expert_intermediate_size", "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim",
                     "sliding_window"), (0, MAX_DIM)),
    "num_hidden_layers": (1, MAX_LAYERS),
    **dict.fromkeys(("first_k_dense_replace", "decoder_sparse_step"), (0, MAX_LAYERS)),
    **dict.fromkeys(("n_routed_experts", "num_local_experts", "num_experts", "num_experts_per_tok",
                     "experts_per_token", "n_shared_experts"), (0, MAX_EXPERTS)),
}
#: fields every config needs (others have defaults or depend on the architecture)
_REQUIRED = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
#: the field that gives the number of routed experts, by model_type (MoE architectures only)
EXPERTS_FIELD = {"mixtral": "num_local_experts", "gpt_oss": "num_local_experts", "qwen2_moe": "num_experts",
                 "qwen3_moe": "num_experts", "olmoe": "num_experts", "deepseek_v2": "n_routed_experts",
                 "deepseek_v3": "n_routed_experts", "kimi_k2": "n_routed_experts", "glm4_moe": "n_routed_experts",
                 "minimax_m2": "num_local_experts"}
_EXPERT_KEYS = ("n_routed_experts", "num_local_experts", "num_experts")

SUPPORTED = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3", "kimi_k2", "glm4_moe",
             "gpt_oss", "minimax_m2", "llama", "mistral", "qwen2", "qwen3")


#: module names of one DeepSeek-style layer, each standing for a group of weights, to test a quantization_config's
#: ``ignore`` list against (layer 0 dense, layer 1 MoE)
_PROBES = {"attention": "model.layers.1.self_attn.q_proj", "experts": "model.layers.1.mlp.experts.0.gate_proj",
           "shared": "model.layers.1.mlp.shared_experts.gate_proj", "dense": "model.layers.0.mlp.gate_proj"}
#: compressed-tensors integer weights moesim has a dtype for: (bits, group size) -> dtype
_INT_GROUPS = {(4, 32): "int4_g32"}


def _ignored(name: str, ignore: list) -> bool:
    """Whether compressed-tensors' ``ignore`` list leaves module ``name`` unquantised: an entry ``re:PATTERN``
    is a regular expression matched at the start of the name, any other entry a module name (or its last part)."""
    import re

    for entry in ignore:
        entry = str(entry)
        if entry.startswith("re:"):
            try:
                if re.match(entry[3:], name):
                    return True
            except re.error as exc:
                raise ValueError(f"compressed-tensors ignore pattern {entry!r} is not a regular expression: {exc}") \
                    from None
        elif name == entry or name.endswith("." + entry):
            return True
    return False


def _compressed_tensors(quant: dict) -> tuple[str, bool]:
    """(weight dtype, experts only?) of a compressed-tensors ``quantization_config`` with one group of integer
    weights on the Linear layers: the routed experts alone when ``ignore`` leaves attention, shared experts and
    dense FFNs unquantised (Kimi-K2.5, K2-Thinking), else every linear layer."""
    groups = quant.get("config_groups") or {}
    if not isinstance(groups, dict) or len(groups) != 1:
        raise ValueError("compressed-tensors with other than one config group is not mapped")
    group = next(iter(groups.values())) or {}
    weights = group.get("weights") or {} if isinstance(group, dict) else None
    if not isinstance(weights, dict):
        raise ValueError("compressed-tensors config_groups: a group must be a mapping with a 'weights' mapping")
    if group.get("input_activations"):
        raise ValueError("compressed-tensors with quantised activations is not mapped (weight-only only)")
    key = (weights.get("num_bits"), weights.get("group_size"))
    if weights.get("type") != "int" or key not in _INT_GROUPS or "Linear" not in (group.get("targets") or []):
        raise ValueError(f"compressed-tensors weights {weights.get('type')} {key[0]}-bit group {key[1]} are not "
                         f"mapped (moesim maps int {', '.join(f'{b}-bit group {g}' for b, g in _INT_GROUPS)})")
    ignore = quant.get("ignore") or []
    if not isinstance(ignore, list):
        raise ValueError("compressed-tensors ignore must be a list of module names or re: patterns")
    kept = {part: not _ignored(name, ignore) for part, name in _PROBES.items()}
    if kept["experts"] and not (kept["attention"] or kept["shared"] or kept["dense"]):
        return _INT_GROUPS[key], True
    if all(kept.values()):
        return _INT_GROUPS[key], False
    raise ValueError("compressed-tensors quantising " + ", ".join(p for p, k in kept.items() if k)
                     + " but not the rest is not mapped")


def _dtype(cfg: dict) -> str:
    quant = cfg.get("quantization_config") or {}
    method = str(quant.get("quant_method", "")).lower()
    if method == "fp8":
        return "fp8"
    if method in ("mxfp4",):
        return "bf16"
    if method == "compressed-tensors":
        dtype, experts_only = _compressed_tensors(quant)
        return _float_dtype(cfg) if experts_only else dtype
    if method in ("awq", "gptq"):
        return "int4" if quant.get("bits", 4) == 4 else "int8"
    if method:
        raise ValueError(f"quantization_config.quant_method {method!r} is not mapped")
    return _float_dtype(cfg)


def _float_dtype(cfg: dict) -> str:
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(
        str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"), "bf16")


def _quant_kind(cfg: dict) -> dict:
    """The released checkpoint's quantisation fields beyond its default dtype: ``quant_kind`` (fp8 with 128x128
    weight blocks: fp8_block; mxfp4; compressed-tensors integers: int4) and ``expert_dtype`` where only the routed
    experts are quantised."""
    quant = cfg.get("quantization_config") or {}
    method = str(quant.get("quant_method", "")).lower()
    if method == "fp8" and list(quant.get("weight_block_size") or []) == [128, 128]:
        return {"quant_kind": "fp8_block"}
    if method == "compressed-tensors":
        dtype, experts_only = _compressed_tensors(quant)
        return {"quant_kind": "int4", **({"expert_dtype": dtype} if experts_only else {})}
    return {}


def _name(cfg: dict, path: Path) -> str:
    """The model's name: the config's own ``_name_or_path``, else the repository of a Hugging Face cache
    snapshot (``models--ORG--NAME/snapshots/REV/config.json``), else its architecture (a folder name such as
    ``tmp`` or a snapshot hash says nothing)."""
    if cfg.get("_name_or_path"):
        return str(cfg["_name_or_path"])
    for parent in path.resolve().parents:
        if parent.name.startswith("models--"):
            return parent.name.removeprefix("models--").replace("--", "/")
    arch = cfg.get("architectures")
    if isinstance(arch, list) and arch and isinstance(arch[0], str):
        return arch[0].removesuffix("ForCausalLM") or arch[0]
    return str(cfg.get("model_type") or path.stem)


def _convert(cfg: dict, path: Path) -> dict:
    mtype = cfg.get("model_type")
    if mtype not in SUPPORTED:
        raise ValueError(f"model_type {mtype!r} is not mapped (supported: {', '.join(SUPPORTED)})")
    hidden = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    out: dict = {
        "name": _name(cfg, path),
        "family": mtype,
        "num_layers": cfg["num_hidden_layers"],
        "hidden_size": hidden,
        "vocab_size": cfg["vocab_size"],
        "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "max_context_tokens": cfg.get("max_position_embeddings") or cfg.get("initial_context_length", 4096),
        "default_dtype": _dtype(cfg),
        "sources": [{"title": f"Hugging Face config.json read from {path}"}],
    }
    if cfg.get("kv_lora_rank"):
        out["attention"] = {
            "kind": "mla", "num_heads": heads, "num_kv_heads": heads, "head_dim": cfg["v_head_dim"],
            "q_lora_rank": cfg.get("q_lora_rank") or None, "kv_lora_rank": cfg["kv_lora_rank"],
            "qk_nope_head_dim": cfg["qk_nope_head_dim"], "qk_rope_head_dim": cfg["qk_rope_head_dim"],
            "v_head_dim": cfg["v_head_dim"],
        }
    else:
        out["attention"] = {"kind": "mha" if kv_heads == heads else "gqa", "num_heads": heads,
                            "num_kv_heads": kv_heads, "head_dim": head_dim}
        types = cfg.get("layer_types")
        if types and "sliding_attention" in types and cfg.get("sliding_window"):
            out["attention"].update(window_kind="sliding", window_tokens=cfg["sliding_window"],
                                    window_layer_pattern=[t == "sliding_attention" for t in types])
    experts = cfg.get("n_routed_experts") or cfg.get("num_local_experts") or cfg.get("num_experts")
    if experts:
        top_k = cfg.get("num_experts_per_tok") or cfg.get("experts_per_token")
        ffn = cfg.get("moe_intermediate_size") or cfg["intermediate_size"]
        moe = {"num_experts": experts, "top_k": top_k, "expert_intermediate_size": ffn,
               "router": "sigmoid" if cfg.get("scoring_func") == "sigmoid" else "softmax"}
        shared = cfg.get("n_shared_experts") or 0
        shared_ffn = cfg.get("shared_expert_intermediate_size") or cfg.get("shared_intermediate_size")
        if shared_ffn:
            shared = 1
            moe["shared_expert_intermediate_size"] = shared_ffn
        moe["num_shared_experts"] = shared
        first_dense = cfg.get("first_k_dense_replace", 0)
        if cfg.get("mlp_only_layers"):
            raise ValueError("mlp_only_layers (dense layers at arbitrary positions) is not mapped")
        moe["first_k_dense"] = first_dense
        moe["layer_freq"] = cfg.get("decoder_sparse_step") or 1
        out["moe"] = moe
        if first_dense or moe["layer_freq"] > 1:
            out["dense_ffn"] = {"intermediate_size": cfg["intermediate_size"]}
    else:
        out["dense_ffn"] = {"intermediate_size": cfg["intermediate_size"]}
    if mtype == "gpt_oss":
        out["expert_dtype"] = "mxfp4"
    if any(t != 1 for t in cfg.get("attn_type_list") or []):
        raise ValueError("attn_type_list has linear-attention layers (type 0, MiniMax's lightning attention): "
                         "not mapped")
    out.update(_quant_kind(cfg))
    return out


def _check(cfg: dict) -> tuple[dict, list[tuple[str, str]]]:
    """Each field of the kind and range it must have: (the config with whole numbers as ints, problems)."""
    problems: list[tuple[str, str]] = []
    out = dict(cfg)
    for key in _REQUIRED:
        if cfg.get(key) is None:
            problems.append((key, "required field missing" if key not in cfg else "required, but null"))
    for key, (least, most) in _WHOLE.items():
        value = cfg.get(key)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append((key, f"must be a whole number, got {describe_type(value)}"))
        elif not least <= value <= most:
            rule = f"at most {most:,}" if value > most else "positive" if least else "at least 0"
            shown = str(value) if abs(value) < 10**20 else f"a {len(str(abs(value)))}-digit number"
            problems.append((key, f"must be {rule} (got {shown})"))
        else:
            out[key] = value
    if "model_type" in cfg and cfg["model_type"] is not None and not isinstance(cfg["model_type"], str):
        problems.append(("model_type", f"must be text, got {describe_type(cfg['model_type'])}"))
    if cfg.get("tie_word_embeddings") is not None and not isinstance(cfg["tie_word_embeddings"], bool):
        problems.append(("tie_word_embeddings",
                         f"must be true or false, got {describe_type(cfg['tie_word_embeddings'])}"))
    if cfg.get("quantization_config") is not None and not isinstance(cfg["quantization_config"], dict):
        problems.append(("quantization_config", f"must be a mapping, got {describe_type(cfg['quantization_config'])}"))
    types = cfg.get("layer_types")
    if types is not None and not (isinstance(types, list) and all(isinstance(t, str) for t in types)):
        problems.append(("layer_types", "must be a list of layer kinds (text)"))
    if problems:
        return out, problems
    # relations between fields
    heads, kv = out["num_attention_heads"], out.get("num_key_value_heads")
    if kv and not out.get("kv_lora_rank") and heads % kv:
        problems.append(("num_key_value_heads", f"{kv} does not divide num_attention_heads ({heads})"))
    mtype = out.get("model_type")
    experts_key = next((k for k in _EXPERT_KEYS if out.get(k)), None)
    experts = out[experts_key] if experts_key else 0
    if not experts and mtype in EXPERTS_FIELD:  # a dense architecture without experts is read as a dense model
        zero = next((k for k in _EXPERT_KEYS if out.get(k) == 0), None)
        problems.append((zero or EXPERTS_FIELD[mtype],
                         f"0 routed experts: a {mtype} model has MoE layers (and moesim predicts Mixture-of-Experts "
                         "models)" if zero else f"missing: a {mtype} config gives its number of routed experts here"))
    elif experts:
        top_key = "num_experts_per_tok" if "num_experts_per_tok" in out or "experts_per_token" not in out \
            else "experts_per_token"
        top_k = out.get(top_key)
        if not top_k:
            problems.append((top_key, f"{'missing' if top_k is None else 'must be positive (got 0)'}: the number "
                             f"of experts each token is routed to (of the {experts} routed experts)"))
        elif top_k > experts:
            problems.append((top_key, f"{top_k} exceeds the {experts} routed experts ({experts_key})"))
    return out, problems


def model_from_hf_config(path: str | Path) -> ModelSpec:
    """A ModelSpec from a Hugging Face config.json; every problem is a SpecError naming the file and the field."""
    path = Path(path)
    text = read_spec_text(path)
    try:
        cfg = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, a number too large
        raise SpecError(str(path), [("(json)", f"not JSON: {unreadable_value(exc)}")]) from None
    except RecursionError:
        raise SpecError(str(path), [("(json)", "nested too deeply")]) from None
    if not isinstance(cfg, dict):
        raise SpecError(str(path), [("(top level)", "expected a JSON object of config fields, got "
                                     + describe_type(cfg))])
    check_shape(cfg, path)
    wrapper = None
    if "text_config" in cfg:
        if cfg.get("model_type") not in WRAPPERS or not isinstance(cfg["text_config"], dict):
            raise SpecError(str(path), [("text_config", "multimodal configs (e.g. Llama 4) are not mapped, but "
                                         f"{', '.join(WRAPPERS)}'s; write a moesim YAML (models_db/ has examples)")])
        wrapper, cfg = cfg, {**cfg["text_config"], "_name_or_path": cfg["text_config"].get("_name_or_path")
                             or _name(cfg, path)}
    unknown = sorted(set(cfg) - IGNORED - (GENERIC if wrapper else set()))
    if unknown:
        raise SpecError(str(path), [(k, "moesim cannot map this field (it may change the architecture)")
                                    for k in unknown])
    cfg, problems = _check(cfg)
    if problems:
        raise SpecError(str(path), problems)
    try:
        data = _convert(cfg, path)
        if wrapper:
            data["sources"].append({"title": f"the language model of a {wrapper['model_type']} config (its "
                                             f"text_config); not modelled: {WRAPPERS[wrapper['model_type']]}"})
    except KeyError as exc:
        raise SpecError(str(path), [(str(exc.args[0]), "required field missing")]) from None
    except ValueError as exc:
        raise SpecError(str(path), [("(config)", str(exc))]) from None
    return validate(ModelSpec, data, str(path))
