"""The end-to-end cases, predicted by the system code ``moesim predict --system moe-gen`` runs.

The harness (``validation/torchbench``) times two compositions of the kernels it also times
alone, and both are predicted here by :class:`moesim.systems.moe_gen.MoEGen`, not by a schedule
of their own, so that their error is evidence about moe-gen's predictions:

* ``decode_step`` (``kernels.DecodeStep``): one decode step of module-based batching over
  ``layers`` layers of a database model, every layer an MoE layer, ``batch`` sequences at
  context ``kv_len``, GPU attention in micro-batches of ``micro_batch`` sequences, each after
  its KV is copied from pinned host memory (two KV slots), attention weights copied per layer
  (two slots), every expert streamed from pinned host memory, shared experts resident on the
  GPU, no LM head. Predicted by :meth:`MoEGen.simulate_pass` (``_simulate``: the whole
  layer builder) on a Context of that model truncated to ``layers`` MoE layers, the measured
  GPU's platform (its calibration included) and a workload of ``batch`` sequences, with
  omega = 0 (no CPU attention), no disk, and these MoEGen Params: ``resident_shared_experts``
  (the harness keeps them on the GPU; MoE-Gen's default copies them with the attention
  weights), ``kv_buffer_slots`` = 2 and ``kv_copy`` = "context" (as the harness), and
  ``max_tasks_per_module`` large enough that every micro-batch and every expert is a task of
  its own (as the harness issues them), and ``host_python`` off: the harness is a plain PyTorch loop, not
  MoE-Gen's driver and wrappers on Hugging Face code, so its operations keep moesim's generic eager issue cost. The LM head and embedding task the pass ends with is
  taken off (the harness runs none); the pass's D2H write-back of the new tokens' KV is kept
  (moe-gen's own; the harness leaves it out, and it overlaps on its own link).
* ``offloaded_moe_layer`` (``kernels.offloaded_moe_layer``): one MoE layer alone on ``tokens``
  tokens, its experts streamed from pinned host memory. A moe-gen pass always has attention
  before its MoE part, so this case is predicted by :meth:`MoEGen.simulate_moe_layer`: the MoE
  part of ``_simulate``'s layer builder (``MoEGen._moe_block``: router with dispatch and
  combine, the expert chunks' copies through the expert ring beside the previous chunk's
  compute) submitted alone, for the layer of the database model of that shape without shared
  experts (the harness's layer has none). The attention half of the layer builder is exercised
  by ``decode_step`` only.

What moe-gen's schedule does differently from the harness is left in, being what is tested:
its expert copies do not wait for the router (the harness's wait for the host to read the
per-expert counts), its expert ring holds as many experts as the GPU has room for (the harness
two), attention is its fused-kernel cost (the harness runs eager MLA), and the router, dispatch
and combine are its own counts.
"""

from __future__ import annotations

from typing import Any

from ..db import models
from ..db.resolve import get_model
from ..errors import MoesimError
from ..modules import Context, Options
from ..specs import ModelSpec, OfflineWorkload, Platform
from ..systems.moe_gen import MoEGen


def measured_model(name: str, layers: int, shared_experts: bool = True) -> ModelSpec:
    """Database model ``name`` cut to the ``layers`` layers the harness runs, every one an MoE layer
    (the harness's decode step has no dense layer); ``shared_experts=False`` drops them."""
    m = get_model(name)
    data = m.model_dump()
    data["moe"] = {**data["moe"], "first_k_dense": 0, "layer_freq": 1}
    if not shared_experts:
        data["moe"]["num_shared_experts"] = 0
    data.update(num_layers=layers, name=f"{m.name}[{layers} MoE layers{'' if shared_experts else ', no shared'}]",
                published=None)
    return ModelSpec.model_validate(data)


def model_of_shape(hidden: int, ffn: int, experts: int, top_k: int) -> str:
    """The database model whose routed experts have this shape (the harness's layers are theirs)."""
    table = models()
    found = sorted(n for n in table.names() if (m := table.get(n)).moe is not None
                   and (m.hidden_size, m.moe.expert_intermediate_size, m.moe.num_experts, m.moe.top_k)
                   == (hidden, ffn, experts, top_k))
    if not found:
        raise MoesimError(f"no database model has experts of hidden {hidden}, ffn {ffn}, {experts} experts, top-{top_k}")
    return found[0]


def _context(model: ModelSpec, hw: Platform, seqs: int, kv_len: int) -> Context:
    workload = OfflineWorkload(num_requests=seqs, prompt_tokens=max(kv_len - 1, 1), gen_tokens=1, batch_size=seqs)
    return Context(model, hw, workload, Options())


def decode_step_system(p: dict[str, Any], model: ModelSpec) -> MoEGen:
    """The MoEGen a decode-step case runs: Params set to what the harness did (module docstring)."""
    tasks = max(-(-p["batch"] // p["micro_batch"]), model.moe.num_experts)
    return MoEGen({"resident_shared_experts": True, "kv_buffer_slots": 2, "kv_copy": "context",
                   "max_tasks_per_module": tasks, "host_python": False})


def decode_step_s(p: dict[str, Any], hw: Platform) -> float:
    """A ``decode_step`` case's time: moe-gen's decode pass without its LM head."""
    model = measured_model(p["model"], p["layers"])
    if p.get("dtype", "bf16") != model.default_dtype:
        raise MoesimError(f"decode_step in {p['dtype']}: {model.name} is released in {model.default_dtype}")
    ctx = _context(model, hw, p["batch"], p["kv_len"])
    sim = decode_step_system(p, model).simulate_pass(ctx, p["batch"], 1, p["kv_len"], p["micro_batch"], 0.0, 0.0)
    head = [t for t in sim.engine.tasks if t.category == "head"]
    # the head runs after everything else: taking it off leaves the layers' time
    assert len(head) == 1 and head[0].end_s == sim.engine.makespan_s, "moe-gen's pass no longer ends with its head"
    return sim.time_s - head[0].duration_s


def offloaded_layer_system(p: dict[str, Any]) -> MoEGen:
    return MoEGen({"max_tasks_per_module": p["experts"], "host_python": False})


def offloaded_moe_layer_s(p: dict[str, Any], hw: Platform) -> float:
    """An ``offloaded_moe_layer`` case's time: moe-gen's MoE part of one layer, alone."""
    name = model_of_shape(p["hidden"], p["ffn"], p["experts"], p["top_k"])
    model = measured_model(name, 1, shared_experts=False)
    if p.get("dtype", "bf16") != model.default_dtype:
        raise MoesimError(f"offloaded_moe_layer in {p['dtype']}: {model.name} is released in {model.default_dtype}")
    ctx = _context(model, hw, p["tokens"], 1)
    return offloaded_layer_system(p).simulate_moe_layer(ctx, p["tokens"]).makespan_s
