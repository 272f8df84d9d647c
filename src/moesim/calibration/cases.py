"""Measured cases (``validation/measurements/<gpu>/*.json``, written by ``validation/torchbench``)
and the moesim operation each one corresponds to.

The split into fitted and held-out cases is fixed and documented, so a report can never fit
on what it claims to have held out:

* whole shapes the fit never sees: DeepSeek-V2-Lite expert shapes (hidden 2048, ffn 1408) in
  ``gemm``/``expert_ffn``, the OLMoE layer in ``moe_layer``, Qwen3's 32/4 heads in
  ``attention``, 128-head MLA in ``mla_decode``;
* of the rest, within each series (same family and shape, sorted by size), every third case
  starting with the second, so held-out sizes lie between fitted ones;
* end-to-end cases (``offloaded_moe_layer``, ``decode_step``) and the copy-beside-GEMM check are
  never fitted: they test how the fitted parts compose.

Kernel-level cases are predicted by :mod:`moesim.ops` (``Case.op``); the end-to-end cases by
the serving-system code ``moesim predict --system moe-gen`` runs (``Case.predict_s``,
:mod:`.end_to_end`): ``decode_step`` by ``MoEGen.simulate_pass``, the whole layer builder of
``systems/moe_gen.py`` on the measured configuration (model cut to the measured layers, batch,
attention micro-batch, context, omega = 0, shared experts resident as the harness keeps them);
``offloaded_moe_layer``, one MoE layer with nothing before it, which no moe-gen pass is, by
``MoEGen.simulate_moe_layer``: the MoE part of that layer builder (router, expert chunks streamed
through the expert ring) alone. :mod:`.end_to_end` says what each one leaves as moe-gen does it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import ops
from ..specs import Platform
from . import end_to_end

#: families whose cases are only predicted, never fitted
END_TO_END = ("offloaded_moe_layer", "decode_step")


#: per family: (the parameters that vary in size along a series, ...)
SIZE_PARAMS = {"hbm_copy": ("nbytes",), "copy": ("nbytes",), "gemm": ("m",), "expert_ffn": ("tokens",),
               "moe_layer": ("tokens",), "attention": ("kv_len", "q_len", "batch"), "mla_decode": ("kv_len", "batch")}


@dataclass(frozen=True)
class Case:
    family: str
    params: dict[str, Any]
    median_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    in_series_held_out: bool = False  # set by :func:`assign_split`

    @property
    def key(self) -> str:
        return json.dumps({"family": self.family, **self.params}, sort_keys=True)

    @property
    def series(self) -> str:
        sizes = SIZE_PARAMS.get(self.family, ())
        p = dict(self.params)
        if self.family == "gemm" and p.get("m") == p.get("n") == p.get("k"):
            p = {"dtype": p.get("dtype"), "square": True}
        fixed = {k: v for k, v in p.items() if k not in sizes}
        if self.family == "attention":
            fixed["decode"] = self.params.get("q_len") == 1
        return json.dumps({"family": self.family, **fixed}, sort_keys=True)

    def size(self) -> tuple:
        return tuple(self.params.get(k, 0) for k in SIZE_PARAMS.get(self.family, ()))

    @property
    def held_out(self) -> bool:
        p = self.params
        if self.family in END_TO_END:
            return True
        if self.family in ("launch", "host_sync", "copy_beside_gemm"):
            return False
        if self.family == "scatter_add":  # derived from a moe_layer case: that case's split
            return self.in_series_held_out
        if self.family in ("gemm",) and {p.get("n"), p.get("k")} & {2 * 1408, 1408} and p.get("k") in (2048, 1408):
            return True
        if self.family == "expert_ffn" and p.get("hidden") == 2048:
            return True
        if self.family == "moe_layer" and p.get("experts") == 64 and p.get("top_k") == 8:
            return True
        if self.family == "attention" and (p.get("q_heads"), p.get("kv_heads")) == (32, 4):
            return True
        if self.family == "mla_decode" and p.get("heads") == 128:
            return True
        return self.in_series_held_out

    def predict_s(self, hw: Platform) -> float | None:
        """moesim's time for this case on ``hw`` (None: nothing to predict, e.g. launch overhead):
        the end-to-end cases through moe-gen's system code (:mod:`.end_to_end`), the others by
        ``ops.estimate`` of :meth:`op`."""
        if self.family == "decode_step":
            return end_to_end.decode_step_s(self.params, hw)
        if self.family == "offloaded_moe_layer":
            return end_to_end.offloaded_moe_layer_s(self.params, hw)
        op = self.op()
        return None if op is None else ops.estimate(op, hw)

    def op(self) -> ops.Op | None:
        """The kernel-level operation moesim predicts for this case (None: not one operation: launch
        overhead, or an end-to-end case, which :meth:`predict_s` sends to a serving system)."""
        p = self.params
        f = self.family
        if f == "hbm_copy":
            return ops.Copy(p["nbytes"], "d2d")
        if f == "copy":
            return ops.Copy(p["nbytes"], p["kind"])
        if f == "gemm":
            return ops.GEMM(p["m"], p["n"], p["k"], p.get("dtype", "bf16"))
        if f == "expert_ffn":
            return ops.ExpertFFN(p["hidden"], p["ffn"], p["tokens"], p.get("dtype", "bf16"))
        if f == "moe_layer":
            return ops.MoELayer(p["hidden"], p["ffn"], p["experts"], p["top_k"], p["tokens"], p["impl"],
                                p.get("dtype", "bf16"))
        if f == "attention":
            return ops.Attention(p["batch"], p["q_heads"], p["kv_heads"], p["head_dim"], p["q_len"], p["kv_len"],
                                 bool(p.get("causal", True)), p.get("dtype", "bf16"))
        if f == "mla_decode":
            return ops.MLADecode(p["batch"], p["heads"], p["kv_len"], p.get("kv_lora_rank", 512),
                                 p.get("rope_dim", 64), p.get("dtype", "bf16"))
        if f == "scatter_add":
            return ops.ScatterAdd(p["rows"], p["width"])
        return None


def combine_cases(cases: list[Case]) -> list[Case]:
    """The fused MoE layers' combine timed alone (harness ``combine_s``: one ``index_add_`` of all
    routed rows), as ``scatter_add`` cases of the same split as the layer they come from; none for
    measurements taken before the harness recorded it."""
    return [replace(Case("scatter_add", {"rows": c.params["tokens"] * c.params["top_k"], "width": c.params["hidden"]},
                         float(c.extra["combine_s"])), in_series_held_out=c.held_out)
            for c in cases if c.family == "moe_layer" and c.params.get("impl") == "fused" and c.extra.get("combine_s")]


def assign_split(cases: list[Case]) -> list[Case]:
    """Mark every third case of each size-sorted series (from the second) as held out."""
    series: dict[str, list[int]] = {}
    for i, c in enumerate(cases):
        series.setdefault(c.series, []).append(i)
    out = list(cases)
    for idx in series.values():
        for rank, i in enumerate(sorted(idx, key=lambda j: cases[j].size())):
            if rank % 3 == 1:
                out[i] = replace(cases[i], in_series_held_out=True)
    return out


#: the key holding the time moesim predicts: one call timed alone, the GPU's queue empty before
#: it. Harness timing v3 (one H200 campaign, 2026-12-01) timed that call after half a
#: millisecond of GPU work and a sync under ``median_s`` (the idle-queue call is its
#: ``cold_median_s``); every other version writes it as ``median_s``. Timing v5 also times the
#: short cases of a family again in interleaved rounds (``interleaved_median_s``: the same single
#: call, with the host's slow drifts spread over all the family's cases rather than landing on
#: the ones measured while they lasted), and that is the time read where it was recorded.
def time_key(env: dict[str, Any]) -> str:
    timing = str(env.get("timing", ""))
    if timing.startswith("v3"):
        return "cold_median_s"
    return "interleaved_median_s" if timing.startswith("v5") else "median_s"


def load_measurements(path: str | Path) -> tuple[dict[str, Any], list[Case]]:
    """(environment, cases with a time); cases that errored on the GPU are dropped."""
    data = json.loads(Path(path).read_text())
    env = data.get("env", {})
    key = time_key(env)
    cases = [Case(c["family"], c["params"], float(c.get(key) or c["median_s"]), c.get("extra") or {})
             for c in data.get("cases", []) if "error" not in c and c.get("median_s")]
    return env, assign_split(cases)
