"""Host time of the Python that runs Hugging Face / PyTorch eager modelling code, per decoder layer and micro-batch.

Every system that runs a model through Hugging Face's modelling code in eager PyTorch pays, on the host, for
each torch call the Python issues, each ``nn.Module`` call, each read of a GPU value, and the Python of each
decoder layer and forward beyond its counted calls. The ``transformers`` system measured these on the lent
H200 (``systems_db/transformers.yaml``: ``torch_call_s``, ``module_call_s``, ``host_read_s``,
``decoder_layer_host_s``, ``forward_host_s``); this module prices a counted stretch of Python with those
same constants (read from that YAML, never copied), so every system charges one measured price::

    t_host = fixed_s + layers decoder_layer_host_s + forwards forward_host_s
             + calls torch_call_s + modules module_call_s + reads host_read_s

The counts are the code's: :func:`decoder_python` gives them per part of a decoder layer for the code a system
runs -

* ``"5.17"``: transformers 5.17, counted in ``systems_db/transformers.yaml`` (what the ``transformers`` system
  runs; its experts ``grouped_mm`` in one measured call, ``batched_mm``, or the ``eager`` loop over the experts hit);
* ``"4.42"``: the release MoE-Gen's environment pins (``requirements.txt``: transformers==4.42.0), on which
  MoE-Gen, its FlexGen* and MoE-Lightning* and its DeepSpeed baseline run the models: Mixtral / Qwen2-MoE's
  SDPA attention and ``SparseMoeBlock`` looping over *every* expert (a ``torch.where`` read per expert), and
  DeepSeek's remote code (MLA attention, ``moe_infer``: one read of the tokens per expert, then the experts
  hit). Counted in ``systems_db/shared.yaml`` (``hf442_*``, ``dsremote_*``); a family 4.42 has no code for
  is counted as 5.17's eager loop.

Scheduling is the system's (its engine decides what the host overlaps); :class:`PythonThread` puts the host's
work on an :class:`~moesim.engine.Engine` as the ``transformers`` system's two clocks do: the host issues a
module's first call, the GPU runs its kernels once issued (and once their inputs are there), the host goes on
issuing; a read of a GPU value (``torch.where``'s count, ``.cpu()``, a stream sync) makes the host wait for
the GPU. GPU tasks then carry the GPU's time alone (:func:`bare`): the generic eager model's per-operation
issue latency (:func:`moesim.costs.gpu_time_s`) is the host time this module charges instead, not on top.

The constants were measured on the lent H200's host (transformers 5.17, torch 2.11); other hosts and releases
are priced at the same rates (no host-speed scaling is modelled).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from ...costs import OpCost
from ...db import system_constants
from ...engine import Engine

Constant = Callable[[str], float]


@dataclass(frozen=True)
class Python:
    """Host work of a stretch of eager PyTorch Python, as counted in its code."""

    calls: float = 0.0  # torch calls (Python + ATen dispatch + launch each)
    modules: float = 0.0  # nn.Module calls (the __call__ machinery)
    reads: float = 0.0  # host reads of a GPU value (each also waits for the GPU: the scheduler's business)
    layers: float = 0.0  # decoder layers' Python beyond their counted calls
    forwards: float = 0.0  # forward passes' Python beyond their counted calls
    fixed_s: float = 0.0  # seconds measured whole (e.g. transformers' grouped_mm call)

    def __add__(self, o: "Python") -> "Python":
        return Python(self.calls + o.calls, self.modules + o.modules, self.reads + o.reads, self.layers + o.layers,
                      self.forwards + o.forwards, self.fixed_s + o.fixed_s)

    def __mul__(self, k: float) -> "Python":
        return Python(self.calls * k, self.modules * k, self.reads * k, self.layers * k, self.forwards * k,
                      self.fixed_s * k)

    __rmul__ = __mul__


NONE = Python()


@dataclass(frozen=True)
class HostRates:
    """Host seconds per unit of :class:`Python` (``systems_db/transformers.yaml``, measured on the H200)."""

    torch_call_s: float
    module_call_s: float
    host_read_s: float
    decoder_layer_host_s: float
    forward_host_s: float

    def seconds(self, py: Python) -> float:
        """t = fixed_s + layers L_s + forwards F_s + calls c_s + modules m_s + reads r_s (module docstring)."""
        return (py.fixed_s + py.layers * self.decoder_layer_host_s + py.forwards * self.forward_host_s
                + py.calls * self.torch_call_s + py.modules * self.module_call_s + py.reads * self.host_read_s)


def _transformers_constant() -> Constant:
    consts = system_constants("transformers")
    return lambda key: float(consts.value(key))


def host_rates(constant: Constant | None = None) -> HostRates:
    """The transformers system's measured host rates (``constant``: a getter of its YAML's constants, e.g. one
    with a fit's candidate values; default the YAML's)."""
    c = constant or _transformers_constant()
    return HostRates(c("torch_call_s"), c("module_call_s"), c("host_read_s"), c("decoder_layer_host_s"),
                     c("forward_host_s"))


def context_rates(ctx) -> HostRates:
    """:func:`host_rates` at the YAML's constants, kept on the context (a pass asks for them layer after layer)."""
    return ctx.memo(("hf host rates",), host_rates)


def context_python(ctx, code: str = "5.17", experts_impl: str = "eager") -> "DecoderPython":
    """:func:`decoder_python` of the context's model at the YAML's counts, kept on the context."""
    return ctx.memo(("hf decoder python", code, experts_impl), lambda: decoder_python(ctx.model, code, experts_impl))


def bare(cost: OpCost) -> OpCost:
    """``cost`` without host terms (no launches, syncs or loop): :func:`moesim.costs.gpu_time_s` then gives the
    GPU's roofline time alone, on the calibrated curves (the host's time is this module's to charge)."""
    return cost.with_(launches=0, indexed_launches=0, loop_launches=0, syncs=0,
                      serial=tuple(bare(p) for p in cost.serial))


# ---- the Python of one decoder layer, by part -------------------------------------------------------------------
@dataclass(frozen=True)
class DecoderPython:
    """The Python of one decoder layer's forward on one micro-batch, by the part that issues it.

    An MoE layer's experts part is ``experts_fixed`` (a fused call, or a loop's head and tail) plus one
    ``expert`` per loop iteration: every expert when ``loop_all_experts`` (transformers 4.42's
    ``for expert_idx in range(num_experts)``), else each expert hit."""

    pre_norm: Python  # input RMSNorm and the layer's own Python (``layers`` = 1)
    attention: Python  # projections, rotary, cache update, the attention call, output projection
    post_norm: Python  # post-attention RMSNorm and the two residual adds
    router: Python  # gate and top-k
    experts_fixed: Python  # a fused experts call, or a loop's head (incl. a read of the tokens per expert)
    expert: Python  # one iteration of a per-expert loop (NONE for a fused call)
    loop_all_experts: bool
    experts_tail: Python  # after the experts and shared experts: the block's output
    shared: Python  # shared experts
    dense_ffn: Python
    shared_gate: Python = NONE  # the shared experts' gate (Qwen-MoE)

    def loop_iterations(self, active: float, num_experts: int) -> float:
        if self.expert == NONE:
            return 0.0
        return float(num_experts) if self.loop_all_experts else active

    @property
    def loop_reads(self) -> bool:
        """Whether the experts loop reads the GPU every iteration (nothing of it overlaps: :meth:`PythonThread.serial`)."""
        return self.expert.reads > 0

    def experts(self, active: float, num_experts: int) -> Python:
        """The experts part for ``active`` experts hit (of ``num_experts``), the block's tail included."""
        return self.experts_fixed + self.loop_iterations(active, num_experts) * self.expert + self.experts_tail

    def attention_block(self) -> Python:
        return self.pre_norm + self.attention

    def ffn_block(self, moe: bool, active: float = 0.0, num_experts: int = 0) -> Python:
        """Post-attention norm, then the MoE block (router, experts, shared experts) or the dense FFN."""
        if not moe:
            return self.post_norm + self.dense_ffn
        return self.post_norm + self.router + self.experts(active, num_experts) + self.shared + self.shared_gate

    def layer(self, moe: bool, active: float = 0.0, num_experts: int = 0) -> Python:
        return self.attention_block() + self.ffn_block(moe, active, num_experts)


def decoder_python(model, code: str = "5.17", experts_impl: str = "eager", constant: Constant | None = None,
                   names: Callable[[str], Iterable[str]] | None = None) -> DecoderPython:
    """The counted Python of one of ``model``'s decoder layers on one micro-batch, in the code a system runs.

    ``code``: ``"5.17"`` (transformers 5.17, with ``experts_impl`` ``grouped_mm``, ``batched_mm`` or ``eager``)
    or ``"4.42"`` (the release MoE-Gen's environment pins: Mixtral/Qwen2-MoE's eager expert loop over every
    expert, DeepSeek's remote code). ``constant``/``names``: getters of ``systems_db/transformers.yaml`` (a fit's
    override; default the YAML's). Counts and their sources: ``systems_db/transformers.yaml`` (5.17) and
    ``systems_db/shared.yaml`` (4.42, DeepSeek remote code)."""
    tf = system_constants("transformers")
    c = constant or (lambda key: float(tf.value(key)))
    name_list = names or tf.names
    a = model.attention
    norm = c("rmsnorm_calls")
    has_shared = bool(model.moe and model.moe.num_shared_experts)
    if code == "4.42":
        sh = system_constants("shared")
        s = lambda key: float(sh.value(key))  # noqa: E731
        fam = model.family
        mlp = Python(calls=c("shared_expert_calls"), modules=c("mlp_modules"))
        if fam.startswith("deepseek"):
            attn = Python(calls=s("dsremote_attention_calls") + (s("dsremote_q_lora_extra_calls") if a.q_lora_rank else 0),
                          modules=s("dsremote_attention_modules"))
            return DecoderPython(
                pre_norm=Python(layers=1, calls=norm, modules=1), attention=attn,
                post_norm=Python(calls=norm + c("decoder_layer_calls"), modules=1),
                router=Python(calls=s("dsremote_router_calls"), modules=s("dsremote_router_modules")),
                experts_fixed=Python(calls=s("dsremote_moe_block_calls"), reads=s("dsremote_moe_block_reads")),
                expert=Python(calls=s("dsremote_expert_calls")) + mlp, loop_all_experts=False, experts_tail=NONE,
                shared=mlp + Python(calls=1.0) if has_shared else NONE,  # y + shared_experts(identity)
                dense_ffn=mlp)
        if fam in set(sh.names("hf442_loop_all_experts_families")):
            gate = Python(calls=c("shared_gate_calls"), modules=1) \
                if has_shared and fam in set(name_list("shared_gate_families")) else NONE
            return DecoderPython(
                pre_norm=Python(layers=1, calls=norm, modules=1),
                attention=Python(calls=s("hf442_attention_calls"), modules=s("hf442_attention_modules")),
                post_norm=Python(calls=norm + c("decoder_layer_calls"), modules=1),
                router=Python(calls=s("hf442_router_calls"), modules=s("hf442_router_modules")),
                experts_fixed=Python(calls=s("hf442_moe_block_calls")),
                expert=Python(calls=s("hf442_expert_loop_calls"), reads=s("hf442_expert_loop_reads")) + mlp,
                loop_all_experts=True, experts_tail=NONE, shared=mlp if has_shared else NONE, shared_gate=gate,
                dense_ffn=mlp)
        code, experts_impl = "5.17", "eager"  # no 4.42 code for the family: the current code's eager loop
    if code != "5.17":
        raise ValueError(f"Hugging Face code {code!r}: expected 5.17 or 4.42")
    return transformers_517(model, experts_impl, c, name_list)


def transformers_517(model, experts_impl: str, c: Constant, names: Callable[[str], Iterable[str]]) -> DecoderPython:
    """transformers 5.17's counts (``systems_db/transformers.yaml``), as the ``transformers`` system charges them:
    RMSNorm ``rmsnorm_calls`` each, Llama-style attention ``attention_calls`` (+ DeepSeek MLA's extra calls and
    its kv_a_layernorm, + OLMoE/Qwen3's q/k norms), the router, and the experts by implementation: ``grouped_mm``
    one call measured whole (``grouped_mm_host_s``), ``batched_mm`` ``batched_mm_calls``, ``eager`` a loop head
    (``eager_head_calls``, its nonzero read left to the scheduler) and per expert hit ``eager_expert_calls`` and
    ``eager_expert_syncs`` reads; the block's output reshape one more module call."""
    a = model.attention
    norm = c("rmsnorm_calls")
    mla = a.kind == "mla"
    qk_norm = model.family in set(names("qk_norm_families"))
    has_shared = bool(model.moe and model.moe.num_shared_experts)
    shared_gate = has_shared and model.family in set(names("shared_gate_families"))
    attn_calls = c("attention_calls") + (c("mla_extra_attention_calls") + norm if mla else 0) \
        + (2 * norm if qk_norm else 0)
    attn_mods = c("attention_modules") + (c("qk_norm_modules") if qk_norm else 0) + (c("mla_extra_modules") if mla else 0)
    mlp = Python(calls=c("shared_expert_calls"), modules=c("mlp_modules"))
    if experts_impl == "grouped_mm":
        fixed, expert = Python(fixed_s=c("grouped_mm_host_s"), modules=1), NONE
    elif experts_impl == "batched_mm":
        fixed, expert = Python(calls=c("batched_mm_calls"), modules=1), NONE
    else:
        fixed = Python(calls=c("eager_head_calls"), modules=1)
        expert = Python(calls=c("eager_expert_calls"), reads=c("eager_expert_syncs"))
    return DecoderPython(
        pre_norm=Python(layers=1, calls=norm, modules=1), attention=Python(calls=attn_calls, modules=attn_mods),
        post_norm=Python(calls=norm + c("decoder_layer_calls"), modules=1),
        router=Python(calls=c("router_calls"), modules=c("router_modules")),
        experts_fixed=fixed, expert=expert, loop_all_experts=False, experts_tail=Python(modules=1),
        shared=mlp if has_shared else NONE,
        shared_gate=Python(calls=c("shared_gate_calls"), modules=1) if shared_gate else NONE,
        dense_ffn=mlp)


def attention_weight_tensors(model) -> float:
    """Weight tensors of a decoder layer's attention module, as transformers.yaml counts them (Llama-style 4, + the
    MLA extras): what a wrapper that swaps a module's parameters in and out touches per parameter."""
    c = _transformers_constant()
    return c("attention_weight_tensors") + (c("mla_extra_weight_tensors") if model.attention.kind == "mla" else 0.0)


def head_python(c: Constant | None = None) -> Python:
    """The final norm, LM head and output of a causal-LM forward (transformers' count)."""
    c = c or _transformers_constant()
    return Python(calls=c("rmsnorm_calls") + c("head_calls"), modules=c("head_modules"))


def generate_step_python(c: Constant | None = None) -> Python:
    """``generate``'s decode loop per step besides the forward (input preparation, logits processing, argmax,
    stopping criteria: ``generate_step_calls``, ``generate_step_host_s``); its stop check's read
    (``generate_step_syncs``) is the caller's to schedule."""
    c = c or _transformers_constant()
    return Python(calls=c("generate_step_calls"), fixed_s=c("generate_step_host_s"))


# ---- the host thread on an engine -------------------------------------------------------------------------------
class PythonThread:
    """The Python thread of an eager pass, as tasks on an :class:`~moesim.engine.Engine`'s ``host`` resource.

    Semantics (those of :class:`moesim.systems.transformers.TwoClocks`, with the engine's other resources beside):
    the host runs its tasks in program order; a module's kernels start once the host issued its first call
    (``call_s``) and their other inputs (weight copies, ...) are there; the host goes on issuing while the GPU
    works; after a read of a GPU value the host waits for the GPU work it issued (:meth:`wait_gpu`). A loop
    that reads the GPU every iteration (transformers' per-expert loops) overlaps nothing: :meth:`serial` runs
    all its Python, then its kernels, and the host waits for them::

        module:  H1 = [first call]           G = [GPU, after H1 and deps]      H2 = [rest of the Python]
        serial:  H = [Python, after the GPU work issued before]   G = [GPU, after H]   next host task after G
    """

    def __init__(self, engine: Engine, rates: HostRates, category: str = "host"):
        self.engine = engine
        self.rates = rates
        self.category = category
        self.block: int | None = None  # a task the host's next work waits for (a read of the GPU)
        self.last_gpu: int | None = None  # the last GPU task this thread issued
        self.last_host: int | None = None  # the host's last task (the end of the Python issued so far)

    def seconds(self, py: Python) -> float:
        return self.rates.seconds(py)

    def python(self, label: str, py: Python | float, deps: Iterable[int | None] = ()) -> int:
        """Host work alone (no kernels): ``py`` (or seconds) after ``deps`` and any pending read."""
        t = py if isinstance(py, float) else self.seconds(py)
        task = self.last_host = self.engine.add(f"{label} (Python)", "host", t, [self.block, *deps],
                                                category=self.category)
        self.block = None
        return task

    def module(self, label: str, py: Python | float, resource: str, duration_s: float,
               deps: Iterable[int | None] = (), category: str = "other", host_deps: Iterable[int | None] = (),
               read_after: bool = False, nbytes: float = 0.0) -> int:
        """A module: the host issues its first call, its kernels (``duration_s`` on ``resource``) run after that
        and ``deps``, the host issues the rest; ``read_after``: the host then reads a result (waits for them).
        Returns the kernels' task."""
        t = py if isinstance(py, float) else self.seconds(py)
        first = min(self.rates.torch_call_s, t)
        eng = self.engine
        h1 = self.last_host = eng.add(f"{label} (Python)", "host", first, [self.block, *host_deps],
                                      category=self.category)
        self.block = None
        g = eng.add(label, resource, duration_s, [h1, *deps], category=category, nbytes=nbytes)
        if t > first:
            self.last_host = eng.add(f"{label} (Python)", "host", t - first, [], category=self.category)
        if resource == "gpu":
            self.last_gpu = g
        if read_after:
            self.block = g
        return g

    def serial(self, label: str, py: Python | float, duration_s: float, deps: Iterable[int | None] = (),
               category: str = "other", host_deps: Iterable[int | None] = ()) -> int:
        """A loop whose every iteration reads the GPU: its Python after the GPU work issued before (the first read
        waits for it) and ``host_deps``, its kernels after that and ``deps``, the host waiting for them after."""
        t = py if isinstance(py, float) else self.seconds(py)
        eng = self.engine
        h = self.last_host = eng.add(f"{label} (Python)", "host", t, [self.block, self.last_gpu, *host_deps],
                                     category=self.category)
        g = eng.add(label, "gpu", duration_s, [h, *deps], category=category)
        self.last_gpu = self.block = g
        return g

    def wait_gpu(self) -> None:
        """A read of a GPU value: the host's next work waits for the GPU work it issued."""
        if self.last_gpu is not None:
            self.block = self.last_gpu
