"""The one typed scenario: what is asked of moesim, from the CLI, the API, sweeps, plots and recommend.

Every knob is declared once, here, as a field of :class:`Scenario`: its type, default, bounds,
docstring (the help text) and, in an :class:`Flag` annotation, its command-line flag and the
argument group it is listed under. Everything else is generated from these fields:

* the CLI flags of ``predict``, ``serve``, ``sweep``, ``sensitivity``, ``plot`` and
  ``recommend`` (:mod:`moesim.cli.args`);
* the sweep parameters (:data:`moesim.analysis.sweep.PARAMS`) and their value types;
* :func:`moesim.predict` / :func:`moesim.predict_online` keyword arguments.

Text values (a CLI flag, a sweep grid value) are read by one function, :func:`parse_value`, so a
flag and a grid value mean the same thing. A scenario is resolved into specs (ModelSpec,
Platform, OfflineWorkload or OnlineWorkload, Options) by :func:`moesim.predict.resolve`.
"""

from __future__ import annotations

import difflib
import functools
import math
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from .errors import MoesimError
from .specs import ModelSpec, OfflineWorkload, Platform, PlatformSpec
from .specs.workload import LengthDistribution
from .specs.common import BYTES_PER_ELEMENT


@dataclass(frozen=True)
class Flag:
    """How a Scenario field appears on the command line.

    ``flags``: option strings (the first is the canonical one; others are aliases);
    ``group``: the argument group; ``parse``: how text becomes a value (``bytes``: sizes such as
    512GB; ``key_value``: repeatable KEY=VALUE pairs; ``file``: a path, kept as text (the numbers it
    holds are read when the scenario is resolved); None: by the field's type); ``invert``: a store-true flag that sets a boolean field False;
    ``aliases``: short names a sweep grid also accepts; ``unit``: what the number counts, shown in ``--help``
    and used as the flag's metavar.
    """

    flags: tuple[str, ...]
    group: str
    parse: str | None = None
    invert: bool = False
    metavar: str | None = None
    aliases: tuple[str, ...] = ()
    unit: str | None = None


#: Argument groups, in the order the CLI lists them.
GROUPS = {
    "scenario": "what runs where",
    "platform": "compose a platform",
    "workload": "workload",
    "execution": "execution knobs",
    "variant": "model variant (pruning, synthetic sweeps)",
    "speculative": "speculative decoding",
    "online": "online serving (Poisson arrivals)",
}

DTYPES = tuple(BYTES_PER_ELEMENT)
#: dtype words of vLLM's --dtype / --kv-cache-dtype and of torch, as moesim's dtypes (None: the released one)
DTYPE_WORDS: dict[str, str | None] = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float": "fp32",
                                      "float32": "fp32", "fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "auto": None}
_WORKLOAD_FIELDS = ("num_requests", "prompt_tokens", "gen_tokens", "batch_size")
_PLATFORM_FIELDS = ("num_gpus", "cpu", "host_memory_bytes", "pcie", "num_nodes")


class Scenario(BaseModel):
    """A model on a platform, with a workload, a serving system and its knobs.

    ``Scenario(model="mixtral-8x7b", hardware="rtx4090", prompt_tokens=1024)``; every field but
    ``model`` and ``hardware`` has a default, and the defaults are the ones the CLI shows.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True,
                              arbitrary_types_allowed=True, allow_inf_nan=False)

    def __init__(self, /, **data: Any) -> None:
        """Fields by keyword; a wrong one is a MoesimError naming it and saying what it takes."""
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise MoesimError(f"invalid scenario: {_describe(exc)}") from None

    # ---- what runs where ------------------------------------------------------------------
    model: Annotated[Union[str, ModelSpec], Flag(("--model",), "scenario")]
    """Model: database name, moesim YAML file or Hugging Face config.json."""
    hardware: Annotated[Union[str, Platform, PlatformSpec], Flag(("--hw", "--gpu"), "scenario", aliases=("hw",))]
    """Platform or GPU name (a GPU is placed alone in its documented default host), or a platform YAML file."""
    system: Annotated[str, Flag(("--system",), "scenario")] = "auto"
    """Serving system (`moesim list systems`); auto simulates every system and reports the fastest."""
    system_params: Annotated[dict[str, Any], Flag(("--param",), "scenario", parse="key_value", metavar="KEY=VALUE")] = {}
    """A parameter of the named system, e.g. cpu_offload_gb=72 (repeatable; values read as YAML scalars)."""

    # ---- workload -------------------------------------------------------------------------
    batch_size: Annotated[int | None, Field(ge=1), Flag(("--batch",), "workload", aliases=("batch",), unit="sequences")] = None
    """Fix the batch size instead of letting the system search it."""
    prompt_tokens: Annotated[int, Field(ge=1), Flag(("--prompt",), "workload", aliases=("prompt",), unit="tokens")] = 512
    """Prompt tokens per request (online: the mean)."""
    gen_tokens: Annotated[int, Field(ge=1), Flag(("--gen",), "workload", aliases=("gen",), unit="tokens")] = 256
    """Generated tokens per request (online: the mean)."""
    num_requests: Annotated[int, Field(ge=1), Flag(("--requests",), "workload", aliases=("requests",), unit="requests")] = 1000
    """Number of requests."""

    # ---- weights and model variant ------------------------------------------------------
    dtype: Annotated[str | None, Flag(("--dtype",), "execution")] = None
    """Weight dtype (bf16, fp16, fp8, int8, int4, ...); default: the released one."""
    num_experts: Annotated[int | None, Field(ge=1), Flag(("--experts",), "variant", aliases=("experts",), unit="experts")] = None
    """Number of routed experts."""
    top_k: Annotated[int | None, Field(ge=1), Flag(("--top-k",), "variant", unit="experts")] = None
    """Experts per token."""
    expert_ffn: Annotated[int | None, Field(ge=1), Flag(("--expert-ffn",), "variant", unit="columns")] = None
    """Expert FFN (intermediate) size."""

    # ---- platform overrides -----------------------------------------------------------------
    pcie: Annotated[str | None, Flag(("--pcie",), "platform")] = None
    """Host-GPU link: gen3, gen4 or gen5."""
    host_memory_bytes: Annotated[float | None, Field(gt=0), Flag(("--host-mem",), "platform", parse="bytes",
                                                                 metavar="SIZE", aliases=("host_mem", "host_memory"),
                                                                 unit="bytes: 512GB, 1.5TiB, ...")] = None
    """Host memory with its unit: GB, GiB, TB, TiB (or B); a bare number is refused."""
    num_gpus: Annotated[int | None, Field(ge=1), Flag(("--gpus", "--tensor-parallel-size", "-tp"), "platform",
                                                      aliases=("gpus", "tp"), unit="GPUs")] = None
    """Number of GPUs (tensor parallel over the platform's GPU link, vLLM's --tensor-parallel-size); default: the platform's. With --nodes, the GPUs used in EACH node."""
    num_nodes: Annotated[int, Field(ge=1), Flag(("--nodes",), "platform", aliases=("nodes",), unit="nodes")] = 1
    """Copies of the platform's node joined by its scale-out network (NICs, `moesim show hw NAME`); only platforms with a network take more than 1."""
    cpu: Annotated[str | None, Flag(("--cpu",), "platform")] = None
    """CPU name (replaces the platform's)."""

    # ---- execution knobs --------------------------------------------------------------------
    kv_dtype: Annotated[str, Flag(("--kv-dtype", "--kv-cache-dtype"), "execution")] = "auto"
    """KV-cache dtype; auto = as the serving system runs it: bf16, or the dtype the quantised checkpoint of --dtype declares where the system honours it (vLLM reads a ModelOpt checkpoint's kv_cache_quant_algo)."""
    moe_impl: Annotated[Literal["fused", "loop"], Flag(("--moe-impl",), "execution")] = "fused"
    """MoE kernels: fused (grouped GEMM) or loop (one expert at a time, as Hugging Face code)."""
    zipf_s: Annotated[float, Field(ge=0, allow_inf_nan=False), Flag(("--zipf",), "execution", aliases=("zipf",), unit="exponent, >= 0")] = 0.0
    """Router skew: Zipf exponent of expert popularity (0 = uniform)."""
    expert_histogram: Annotated[Union[str, tuple[float, ...], None], Flag(("--expert-histogram",), "execution",
                                                                          parse="file", metavar="FILE")] = None
    """Measured per-expert activation counts: a JSON file (a list, or {"counts": [...]}) or the numbers."""
    mla_absorbed: Annotated[bool, Flag(("--no-mla-absorption",), "execution", invert=True)] = True
    """MLA decode absorbs the up-projections (off: the cached latent is up-projected every step, as Hugging Face DeepSeek code does)."""
    policy: Annotated[Literal["as-deployed", "best"], Flag(("--policy",), "execution")] = "as-deployed"
    """Each system's policy (batch sizes, placements): as-deployed, the one its released software chooses by itself
    (its defaults, its own search); best, the fastest moesim's own search finds (what tuning could reach)."""

    # ---- speculative decoding ---------------------------------------------------------------
    draft_model: Annotated[str | None, Flag(("--draft",), "speculative", aliases=("draft",))] = None
    """Draft model name; enables speculative decoding."""
    spec_tokens: Annotated[int, Field(ge=1), Flag(("--spec-tokens",), "speculative", unit="tokens")] = 4
    """Draft tokens proposed per target step."""
    spec_accept: Annotated[float, Field(ge=0, le=1), Flag(("--spec-accept",), "speculative", unit="fraction, 0-1")] = 0.7
    """Per-token acceptance rate of the draft's tokens."""

    # ---- online serving ---------------------------------------------------------------------
    arrival_rate_per_s: Annotated[float | None, Field(gt=0, allow_inf_nan=False),
                                  Flag(("--rate",), "online", aliases=("rate",), unit="requests/s")] = None
    """Online serving: Poisson arrivals per second (unset: offline, the whole workload at once)."""
    lengths: Annotated[Literal["fixed", "uniform", "lognormal"], Flag(("--lengths",), "online")] = "lognormal"
    """Online serving: distribution of prompt and generated lengths around their means."""
    length_sigma: Annotated[float, Field(gt=0, allow_inf_nan=False), Flag(("--length-sigma",), "online", unit="sigma of ln(length)")] = \
        LengthDistribution.model_fields["sigma"].default
    """Online serving: shape (sigma of the log) of lognormal lengths."""
    seed: Annotated[int, Field(ge=0), Flag(("--seed",), "online", unit="integer")] = 0
    """Online serving: seed of the arrival and length samples."""

    # ---- checks ---------------------------------------------------------------------------
    @field_validator("dtype", "kv_dtype", mode="before")
    @classmethod
    def _dtype_words(cls, value: Any, info: ValidationInfo) -> Any:
        """The words vLLM and torch use for dtypes (``bfloat16``, ``half``, ``fp8_e4m3``). ``auto``: the released
        weights; for the KV cache, auto is resolved with the model and the system (:func:`moesim.predict.kv_cache_dtype`)."""
        if not isinstance(value, str):
            return value
        word = value.strip().lower()
        if word == "auto" and info.field_name == "kv_dtype":
            return "auto"
        return DTYPE_WORDS.get(word, value)

    @field_validator("dtype", "kv_dtype")
    @classmethod
    def _known_dtype(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value not in BYTES_PER_ELEMENT and not (value == "auto" and info.field_name == "kv_dtype"):
            close = difflib.get_close_matches(value, DTYPES, n=3, cutoff=0.4)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            allowed = ("auto", *DTYPES) if info.field_name == "kv_dtype" else DTYPES
            raise ValueError(f"unknown dtype {value!r}{hint}; one of {', '.join(allowed)}")
        return value

    @field_validator("model", "hardware", mode="before")
    @classmethod
    def _path_to_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, Path) else value

    @field_validator("expert_histogram", mode="before")
    @classmethod
    def _histogram(cls, value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return tuple(float(v) for v in value)
        return value

    @model_validator(mode="after")
    def _speculative_needs_a_draft(self) -> "Scenario":
        unset = {"spec_tokens", "spec_accept"} & self.model_fields_set
        if unset and self.draft_model is None:
            raise ValueError(f"{' and '.join(sorted(flag_of(n) for n in unset))}: speculative decoding needs a draft model "
                             "(--draft, draft_model)")
        return self

    # ---- views ----------------------------------------------------------------------------
    @property
    def online(self) -> bool:
        return self.arrival_rate_per_s is not None

    @property
    def workload_given(self) -> bool:
        """Whether any workload field was set (otherwise predictions say the default workload was assumed)."""
        return bool(set(_WORKLOAD_FIELDS) & self.model_fields_set)

    def offline_workload(self) -> OfflineWorkload:
        return OfflineWorkload(num_requests=self.num_requests, prompt_tokens=self.prompt_tokens,
                               gen_tokens=self.gen_tokens, batch_size=self.batch_size)

    def platform_overrides(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _PLATFORM_FIELDS}

    def replace(self, **changes: Any) -> "Scenario":
        """A copy with ``changes`` applied and validated (fields set before stay set)."""
        data = {k: getattr(self, k) for k in self.model_fields_set}
        data.update(changes)
        return build(**data)


# ---- the one table of knobs ---------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def fields() -> dict[str, tuple[Any, Flag]]:
    """name -> (pydantic FieldInfo, Flag) for every Scenario field, in declaration order."""
    out = {}
    for name, info in Scenario.model_fields.items():
        flag = next((m for m in info.metadata if isinstance(m, Flag)), None)
        if flag is None:  # every knob must reach the CLI: a field without a Flag is a bug
            raise TypeError(f"Scenario.{name} has no Flag annotation")
        out[name] = (info, flag)
    return out


def flag_of(name: str) -> str:
    return fields()[name][1].flags[0]


@functools.lru_cache(maxsize=1)
def aliases() -> dict[str, str]:
    """Short names (sweep grid, --grid) -> field names: each field's aliases and its flag without dashes."""
    out: dict[str, str] = {}
    for name, (_, flag) in fields().items():
        for alias in (*flag.aliases, *(f.lstrip("-").replace("-", "_") for f in flag.flags)):
            if alias != name:
                out.setdefault(alias, name)
    return out


def value_kind(name: str) -> type:
    """The scalar type a field's text is read as: int, float, bool or str (dict for system_params)."""
    info, flag = fields()[name]
    if flag.parse == "bytes":
        return float
    if flag.parse == "key_value":
        return dict
    if flag.parse == "file":
        return str
    kinds = [a for a in _flatten(info.annotation) if a is not type(None)]
    for kind in (bool, int, float):
        if kind in kinds:
            return kind
    return str


def _flatten(annotation: Any) -> list[Any]:
    if get_origin(annotation) in (Union, types.UnionType):
        return [x for a in get_args(annotation) for x in _flatten(a)]
    return [annotation]


_NONE_WORDS = {"", "none", "null", "default"}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def parse_value(name: str, value: Any) -> Any:
    """A field's value from text (a CLI flag or a sweep grid value); other values pass through.

    ``none``/``default``/empty give None (the field's default); sizes accept units (512GB);
    integers must be whole; booleans accept true/false/yes/no/on/off/1/0.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.lower() in _NONE_WORDS:
        return None
    kind = value_kind(name)
    what = f"{flag_of(name)} ({name})"
    try:
        if fields()[name][1].parse == "bytes":
            from .units import parse_bytes

            try:
                return float(parse_bytes(text))
            except MoesimError as exc:
                raise MoesimError(f"{what}: {exc}") from None
        if kind is dict:
            return parse_key_values([text])
        if kind is bool:
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError(text)
        if kind is int:
            number = float(text)
            if not math.isfinite(number) or number != int(number):
                raise ValueError(text)
            return int(number)
        if kind is float:
            return float(text)
    except (TypeError, ValueError):
        raise MoesimError(f"{what}: cannot read {value!r} as {kind.__name__}") from None
    return text


def parse_key_values(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; values are read as YAML scalars (numbers, booleans, null, strings)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MoesimError(f"--param takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise MoesimError(f"--param {key.strip()}: cannot read the value {value!r} (a number, true/false, null "
                              "or text)") from None
    return out


_RULES = {"greater_than_equal": "must be at least {ge}", "greater_than": "must be above {gt}",
          "less_than_equal": "must be at most {le}", "less_than": "must be below {lt}",
          "finite_number": "must be a finite number", "literal_error": "must be one of {expected}"}


#: what a field takes, in words, where its type alone says too little
_TAKES = {"model": "a name or a file path (text), or a ModelSpec",
          "hardware": "a name or a file path (text), a Platform or a PlatformSpec",
          "expert_histogram": "a JSON file path or a list of counts",
          "system_params": "a mapping of the system's parameters (name: value)"}
_WORDS = {str: "text", int: "a whole number", float: "a number", bool: "true or false", dict: "a mapping",
          tuple: "a list"}
#: pydantic error types that mean "the wrong kind of value" (one per member of a union)
_KIND_ERRORS = ("is_instance_of", "model_type", "model_attributes_type", "dataclass_type", "literal_error")


def takes(name: str) -> str:
    """What a Scenario field takes, in words: 'a whole number', 'text or None', ..."""
    if name in _TAKES:
        return _TAKES[name]
    info = Scenario.model_fields[name]
    words = []
    for kind in _flatten(info.annotation):
        if get_origin(kind) is Literal:
            words.append("one of " + ", ".join(map(str, get_args(kind))))
        elif kind is not type(None):
            words.append(_WORDS.get(get_origin(kind) or kind, getattr(kind, "__name__", str(kind))))
    return " or ".join(words) or "a value"


def _describe(exc: ValidationError) -> str:
    from .errors import describe_type

    problems: list[str] = []
    by_field: dict[str, list[Any]] = {}
    for e in exc.errors():
        loc = [str(x) for x in e["loc"] if not isinstance(x, int)]
        by_field.setdefault(loc[0] if loc else "", []).append(e)
    for name, errors in by_field.items():
        where = f"{flag_of(name)} ({name})" if name in Scenario.model_fields else name or "scenario"
        kinds = [e for e in errors if e["type"].endswith("_type") or e["type"] in _KIND_ERRORS]
        if name in Scenario.model_fields and kinds and len(kinds) == len(errors):
            # the wrong kind of value (for a union, one error per member): say what the field takes
            problems.append(f"{where} takes {takes(name)} (got {describe_type(errors[0].get('input'))})")
            continue
        for e in errors:
            loc = [str(x) for x in e["loc"] if not isinstance(x, int)]
            if e["type"] == "missing":
                problems.append(f"{where} is required")
                continue
            msg = _RULES[e["type"]].format(**e.get("ctx", {})) if e["type"] in _RULES else e["msg"].removeprefix("Value error, ")
            if e["type"] in _RULES or e["type"].endswith(("_parsing", "_type")):
                msg += f" (got {e.get('input')!r})"
            if e["type"] == "extra_forbidden":
                field = aliases().get(name)
                close = [field] if field else difflib.get_close_matches(
                    name, list(Scenario.model_fields) + list(aliases()), n=3, cutoff=0.5)
                msg = "unknown knob" + (f"; did you mean {', '.join(close)}?" if close else "")
                problems.append(f"{name}: {msg}")
                continue
            problems.append(f"{where}: {msg}" if loc else msg)
    return "; ".join(problems)


# ---- building a scenario from the library's keyword arguments -----------------------------
_LEGACY = {"expert_popularity": "expert_histogram"}


def build(model: Any = None, hardware: Any = None, system: str | None = None, workload: Any = None,
          **knobs: Any) -> Scenario:
    """A Scenario from :func:`moesim.predict`'s arguments, with clear errors.

    ``model`` may already be a Scenario (``knobs`` then override its fields). ``workload`` is an
    OfflineWorkload or a dict of its fields; ``speculative`` (``{"draft_model", "num_tokens",
    "acceptance_rate"}``) and ``expert_popularity`` are accepted as older spellings. Keyword
    arguments equal to None mean "the default".
    """
    if isinstance(model, Scenario):
        data = {k: getattr(model, k) for k in model.model_fields_set}
        model = None
    else:
        data = {}
    for key, value in (("model", model), ("hardware", hardware), ("system", system)):
        if value is not None:
            data[key] = value
    if workload is not None:
        data.update(_workload_fields(workload))
    spec = knobs.pop("speculative", None)
    if spec is not None:
        keys = ("draft_model", "num_tokens", "acceptance_rate")
        if not isinstance(spec, Mapping) and not all(hasattr(spec, k) for k in keys):
            raise MoesimError(f"speculative takes a mapping of {', '.join(keys)} (or draft_model=..., spec_tokens=..., "
                              f"spec_accept=...), got {repr(spec)[:80]}")
        spec = dict(spec) if isinstance(spec, Mapping) else {k: getattr(spec, k) for k in keys}
        unknown = sorted(set(map(str, spec)) - set(keys))
        if unknown:
            raise MoesimError(f"speculative: unknown key(s) {', '.join(unknown)}; it takes {', '.join(keys)}")
        data.update(draft_model=spec.get("draft_model"), spec_tokens=spec.get("num_tokens", 4),
                    spec_accept=spec.get("acceptance_rate", 0.7))
    for old, new in _LEGACY.items():
        if old in knobs:
            knobs[new] = knobs.pop(old)
    data.update({k: v for k, v in knobs.items() if v is not None})
    if data.get("system_params") is None:
        data.pop("system_params", None)
    for required in ("model", "hardware"):
        if data.get(required) is None:
            raise MoesimError(f"a scenario needs {required} ({flag_of(required)})")
    try:
        return Scenario(**data)
    except ValidationError as exc:
        raise MoesimError(f"invalid scenario: {_describe(exc)}") from None


def _workload_fields(workload: Any) -> dict[str, Any]:
    """The Scenario fields of an OfflineWorkload or a mapping of its fields, checked."""
    from .specs.workload import OnlineWorkload

    names = [n for n in OfflineWorkload.model_fields if n != "kind"]
    if isinstance(workload, OnlineWorkload):
        raise MoesimError("workload is an OnlineWorkload: use predict_online")
    if isinstance(workload, OfflineWorkload):
        fields_of = workload.model_dump()
    elif isinstance(workload, Mapping):
        fields_of = dict(workload)
    else:
        raise MoesimError(f"workload takes an OfflineWorkload or a mapping of its fields ({', '.join(names)}), "
                          f"got {repr(workload)[:80]}")
    fields_of.pop("kind", None)
    unknown = [k for k in fields_of if k not in names]
    if unknown:
        close = {k: difflib.get_close_matches(str(k), names, n=1, cutoff=0.5) for k in unknown}
        hints = [f"{k!r}" + (f" (did you mean {c[0]}?)" if c else "") for k, c in close.items()]
        raise MoesimError(f"workload: unknown field {', '.join(hints)}; its fields: {', '.join(names)}")
    return {k: v for k, v in fields_of.items() if v is not None}


__all__ = ["Flag", "GROUPS", "Scenario", "aliases", "build", "fields", "flag_of", "parse_key_values", "parse_value",
           "value_kind"]
