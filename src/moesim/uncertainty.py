"""Uncertainty bands: how far a prediction may be from what the deployed software measures.

Every figure gets a multiplicative band ``[v exp(-W), v exp(W)]``. The log half-width W of a
phase (``prefill``: TTFT, prefill throughput; ``decode``: TPOT, decode throughput) combines the
components that apply to the prediction in quadrature, as independent log errors do:

    W_phase = sqrt( sum_c w_c^2 )

over c in: the GPU's kernels (``kernels.own`` fitted on this GPU, ``kernels.borrowed`` another
GPU of the architecture, ``kernels.uncalibrated`` the default profile; a weight dtype without a
fitted GEMM curve counts as uncalibrated), the host link when the plan moves data over it
(``link.measured`` / ``link.borrowed`` / ``link.datasheet``), the serving system's composition
(``system.<name>.<phase>`` where it was compared end to end with measurements, else
``system.unvalidated.<phase>``), and extrapolation beyond what the system was validated on
(``extrapolation.gpus``: more GPUs; ``extrapolation.context``: a longer prompt + generation;
``extrapolation.batch`` and ``extrapolation.model``: a batch or a model size outside the range the
system's records span).

A whole run (``total``: the workload's time, generation throughput) adds its phases' bands in
linear time, as errors of one sign do: with prefill time t_p and decode time t_d,

    T_high = t_p exp(W_prefill) + t_d exp(W_decode),   T_low = t_p exp(-W_prefill) + t_d exp(-W_decode)

and a throughput's band is the inverse of its time's (low throughput at high time).

The widths w_c are data (``hardware_db/uncertainty/bands.yaml``), written by
``validation/derive_bands.py`` with :func:`derive_widths` from held-out validation records
(:class:`Record`; the sources are in :mod:`moesim.calibration.sources`):

* kernel and link widths: the ``QUANTILE`` quantile of |log(predicted / measured)| over held-out
  kernel-level (resp. host-copy) cells of that calibration state, raised where needed so that a less
  known state (borrowed, uncalibrated; borrowed, datasheet) is never narrower than a better known one;
* a system's width: over its held-out end-to-end records, the ``QUANTILE`` quantile of the excess
  sqrt(max(0, r^2 - sum of the record's other components^2)), r = |log error|: the part of the
  error the kernels and link do not explain. Then every record whose excess is within the width
  is inside its band, so the band covers at least ``QUANTILE`` of the records it was derived from;
  ``system.unvalidated.<phase>`` is the ``QUANTILE`` quantile over the validated systems' widths of
  that phase, one vote per system (a system never compared is taken to err like the worse of them);
* extrapolation widths: priors stated in the YAML with their reason, until a source measures
  the case (no multi-GPU or long-context end-to-end measurement exists among the sources today).

Coverage rule (fixed here, before any coverage was looked at): records are split into two folds
by a hash of their fold key (the GPU and the case, so one case measured under several profiles
lands in one fold); the coverage reported for a record uses widths derived from the other fold
only (:func:`crossfit`). The committed widths use every held-out record.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Iterable

#: the quantile of |log error| a width is (fixed before deriving; never tuned to the coverage)
QUANTILE = 0.9

#: each reported figure, and the phase whose band it takes (``total``: both phases, see the module docstring)
FIGURES = {"prefill_tok_s": "prefill", "ttft_s": "prefill", "decode_tok_s": "decode", "tpot_s": "decode",
           "throughput_tok_s": "total", "total_time_s": "total"}
#: figures that are rates (their band is the inverse of a time's)
RATES = ("prefill_tok_s", "decode_tok_s", "throughput_tok_s")
PHASES = ("prefill", "decode")
KERNEL_STATES = ("own", "borrowed", "uncalibrated")
LINK_STATES = ("measured", "borrowed", "datasheet")


@dataclass(frozen=True)
class Provenance:
    """What a prediction rests on, as far as its accuracy goes."""

    gpu: str
    kernels: str  # "own" | "borrowed" | "uncalibrated"
    link: str  # "measured" | "borrowed" | "datasheet"
    uses_host_link: bool  # the plan moves weights, KV or activations over the host link (or reads the disk)
    system: str | None  # None: a kernel-level case (no serving system)
    num_gpus: int = 1
    context_tokens: int = 0  # prompt + generation
    batch: int = 0  # sequences per batch (0: not known)
    total_params: float = 0.0  # the model's parameters (0: not known)
    kernels_why: str = ""
    #: "assumed": MTP speculative decoding whose acceptance nobody gave (moesim's sourced default priced it)
    speculation: str = "none"

    def as_dict(self) -> dict:
        return {"gpu": self.gpu, "kernels": self.kernels, "link": self.link, "uses_host_link": self.uses_host_link,
                "system": self.system, "num_gpus": self.num_gpus, "context_tokens": self.context_tokens,
                "batch": self.batch, "total_params": self.total_params, "speculation": self.speculation}


@dataclass(frozen=True)
class Record:
    """One validation cell: a measured and a predicted value of one figure.

    ``phase``: ``kernel`` (an operation's time on the GPU), ``link`` (a host copy), ``prefill`` or
    ``decode`` (a serving system's end-to-end figure of that phase). Only ``heldout`` records (never
    used to fit what predicted them) inform widths or coverage. ``fold_key`` groups records that
    must land in one fold (default: source and key)."""

    source: str
    key: str
    provenance: Provenance
    phase: str
    measured: float
    predicted: float
    heldout: bool
    fold_key: str = ""

    @property
    def log_error(self) -> float:
        return math.log(self.predicted / self.measured)

    @property
    def fold(self) -> int:
        return zlib.crc32((self.fold_key or f"{self.source}|{self.key}").encode()) % 2


@dataclass(frozen=True)
class Widths:
    """Log half-widths per component, priors included, and each validated system's range."""

    components: dict[str, float]
    #: system -> its validated range: num_gpus, context_tokens (maxima), batch_min/max, total_params_min/max
    validated: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # component -> where its width came from


def _quantile(values: list[float], q: float = QUANTILE) -> float:
    """The q quantile, linear between order statistics (numpy's default): x[(n-1)q]."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _pick(w: Widths, name: str, fallbacks: tuple[str, ...] = ()) -> tuple[str, float]:
    for n in (name, *fallbacks):
        if n in w.components:
            return n, w.components[n]
    raise KeyError(f"no uncertainty width for {name} (nor {', '.join(fallbacks) or 'a fallback'})")


def components(p: Provenance, phase: str, w: Widths) -> list[tuple[str, float, str]]:
    """The components (name, log half-width, why) that apply to a figure of ``phase`` resting on ``p``."""
    out = []
    if phase in ("kernel", "prefill", "decode"):
        order = KERNEL_STATES[KERNEL_STATES.index(p.kernels):]
        name, width = _pick(w, f"kernels.{p.kernels}", tuple(f"kernels.{s}" for s in order[1:]))
        why = {"own": f"GPU {p.gpu} calibrated", "borrowed": f"GPU {p.gpu} priced with a borrowed profile",
               "uncalibrated": f"GPU {p.gpu} uncalibrated"}[p.kernels]
        out.append((name, width, why + (f" ({p.kernels_why})" if p.kernels_why else "")))
    if phase == "link" or (phase in ("prefill", "decode") and p.uses_host_link):
        order = LINK_STATES[LINK_STATES.index(p.link):]
        name, width = _pick(w, f"link.{p.link}", tuple(f"link.{s}" for s in order[1:]))
        why = {"measured": "host link measured", "borrowed": "host link measured on another GPU's host",
               "datasheet": "host link from its datasheet (not measured)"}[p.link]
        out.append((name, width, why))
    if phase in ("prefill", "decode") and p.system is not None:
        own = f"system.{p.system}.{phase}"
        if own in w.components:
            out.append((own, w.components[own], f"{p.system} {phase} as compared end to end with measurements"))
        else:
            name, width = _pick(w, f"system.unvalidated.{phase}")
            out.append((name, width, f"{p.system} {phase} never compared end to end with measurements"))
        out += _extrapolation(p, w.validated.get(p.system) or _pooled_range(w), w.components)
    if phase == "decode" and p.speculation == "assumed":
        if "speculation.assumed" in w.components:
            out.append(("speculation.assumed", w.components["speculation.assumed"],
                        "MTP acceptance assumed (no --speculative-acceptance given), as compared with measured runs"))
        else:  # no measured MTP run scored yet: as wide as a system never compared
            name, width = _pick(w, "system.unvalidated.decode")
            out.append((name, width, "MTP acceptance assumed (no --speculative-acceptance given), never compared "
                                     "with measured runs"))
    return out


def _extrapolation(p: Provenance, rng: dict[str, float], comps: dict[str, float]) -> list[tuple[str, float, str]]:
    """Extrapolation components: more GPUs or a longer context than validated; a batch or a model size outside
    the validated range (a range with no record, 0, checks nothing)."""
    out = []
    checks = [("gpus", p.num_gpus > rng.get("num_gpus", 1), f"{p.num_gpus} GPUs, validated on at most "
               f"{rng.get('num_gpus', 1):.0f}"),
              ("context", 0 < rng.get("context_tokens", 0) < p.context_tokens,
               f"context {p.context_tokens} tokens, validated up to {rng.get('context_tokens', 0):.0f}"),
              ("batch", p.batch > 0 and rng.get("batch_max", 0) > 0
               and not rng["batch_min"] <= p.batch <= rng["batch_max"],
               f"batch {p.batch}, validated at {rng.get('batch_min', 0):.0f}-{rng.get('batch_max', 0):.0f}"),
              ("model", p.total_params > 0 and rng.get("total_params_max", 0) > 0
               and not rng["total_params_min"] * (1 - 1e-9) <= p.total_params <= rng["total_params_max"] * (1 + 1e-9),
               f"model of {p.total_params / 1e9:.0f}B parameters, validated at "
               f"{rng.get('total_params_min', 0) / 1e9:.0f}B-{rng.get('total_params_max', 0) / 1e9:.0f}B")]
    for name, outside, why in checks:
        if outside and f"extrapolation.{name}" in comps:
            out.append((f"extrapolation.{name}", comps[f"extrapolation.{name}"], why))
    return out


def _pooled_range(w: Widths) -> dict[str, float]:
    """The range any system was validated on (for a system with none of its own)."""
    vs = list(w.validated.values())
    if not vs:
        return {}
    out = {k: max(v.get(k, 0) for v in vs) for k in ("num_gpus", "context_tokens", "batch_max", "total_params_max")}
    for k in ("batch_min", "total_params_min"):
        have = [v[k] for v in vs if v.get(k, 0) > 0]
        out[k] = min(have) if have else 0
    return out


def half_width(comps: Iterable[tuple[str, float, str]]) -> float:
    """W = sqrt(sum w_c^2): independent log errors add in quadrature."""
    return math.sqrt(sum(c[1] ** 2 for c in comps))


def band(value: float, w: float) -> tuple[float, float]:
    """[value exp(-W), value exp(W)]."""
    return value * math.exp(-w), value * math.exp(w)


def total_band(prefill_s: float, decode_s: float, w_prefill: float, w_decode: float) -> tuple[float, float]:
    """Band of a time made of a prefill and a decode part, errors of one sign (module docstring)."""
    return (prefill_s * math.exp(-w_prefill) + decode_s * math.exp(-w_decode),
            prefill_s * math.exp(w_prefill) + decode_s * math.exp(w_decode))


def figure_bands(values: dict[str, float], prefill_s: float, decode_s: float, w: dict[str, float]) -> dict[str, float]:
    """``<figure>_low`` / ``<figure>_high`` for each figure of :data:`FIGURES` in ``values``; ``w`` holds the
    half-width per phase. A total-time figure takes :func:`total_band` of (``prefill_s``, ``decode_s``) scaled
    to its value; a rate takes the inverse of its time's band."""
    out: dict[str, float] = {}
    t_lo, t_hi = total_band(prefill_s, decode_s, w["prefill"], w["decode"])
    t = prefill_s + decode_s
    for name, v in values.items():
        phase = FIGURES[name]
        if phase == "total":
            lo_f, hi_f = (t_lo / t, t_hi / t) if t > 0 else (math.exp(-w["decode"]), math.exp(w["decode"]))
        else:
            lo_f, hi_f = math.exp(-w[phase]), math.exp(w[phase])
        if name in RATES:
            lo_f, hi_f = 1.0 / hi_f, 1.0 / lo_f
        out[f"{name}_low"], out[f"{name}_high"] = v * lo_f, v * hi_f
    return out


def record_half_width(r: Record, w: Widths) -> float:
    return half_width(components(r.provenance, r.phase, w))


def covered(r: Record, w: Widths) -> bool:
    """Whether the measured value lies in the record's band: |log(predicted / measured)| <= W."""
    return abs(r.log_error) <= record_half_width(r, w) * (1 + 1e-12)


def coverage(records: Iterable[Record], w: Widths) -> float:
    """Fraction of the held-out records whose measured value lies in [low, high] (nan: none)."""
    rs = [r for r in records if r.heldout]
    return sum(covered(r, w) for r in rs) / len(rs) if rs else math.nan


def derive_widths(records: Iterable[Record], priors: dict[str, float] | None = None,
                  q: float = QUANTILE) -> Widths:
    """Widths from held-out records (module docstring): kernel and link states first, then each system's
    excess over them, per phase; ``priors`` (extrapolation widths with no record behind them) pass through."""
    rs = [r for r in records if r.heldout]
    comps: dict[str, float] = {}
    notes: dict[str, str] = {}

    def put(name: str, errs: list[float], sources: set[str]) -> None:
        comps[name] = _quantile(errs, q)
        notes[name] = f"p{q * 100:.0f} of {len(errs)} held-out records from {', '.join(sorted(sources))}"

    for phase, states, attr in (("kernel", KERNEL_STATES, "kernels"), ("link", LINK_STATES, "link")):
        for state in states:
            sel = [r for r in rs if r.phase == phase and getattr(r.provenance, attr) == state]
            if sel:
                put(f"{attr}.{state}", [abs(r.log_error) for r in sel], {r.source for r in sel})
    for prefix, states in (("kernels", KERNEL_STATES), ("link", LINK_STATES)):
        # knowing less never narrows a band: a state is at least as wide as every better-known one
        widest = 0.0
        for state in states:
            name = f"{prefix}.{state}"
            if name in comps:
                if comps[name] < widest:
                    comps[name], notes[name] = widest, notes[name] + " (raised to the width of a better-known state)"
                widest = comps[name]
    base = Widths(dict(comps))
    excess: dict[tuple[str, str], list[tuple[float, str]]] = {}
    validated: dict[str, dict[str, float]] = {}
    def assumed_acceptance(r: Record) -> bool:
        return r.phase == "decode" and r.provenance.speculation == "assumed"

    assumed = [r for r in rs if assumed_acceptance(r)]
    for r in rs:
        if r.phase not in PHASES or r.provenance.system is None or assumed_acceptance(r):
            continue  # a decode priced with an assumed MTP acceptance informs its own width (below), not the system's
        others = half_width(components(replace(r.provenance, system=None), r.phase, base))
        e = math.sqrt(max(0.0, r.log_error ** 2 - others ** 2))
        excess.setdefault((r.provenance.system, r.phase), []).append((e, r.source))
        v = validated.setdefault(r.provenance.system, {"num_gpus": 1, "context_tokens": 0})
        v["num_gpus"] = max(v["num_gpus"], r.provenance.num_gpus)
        v["context_tokens"] = max(v["context_tokens"], r.provenance.context_tokens)
        for key, x in (("batch", r.provenance.batch), ("total_params", r.provenance.total_params)):
            if x > 0:
                v[f"{key}_min"] = min(v.get(f"{key}_min", x), x)
                v[f"{key}_max"] = max(v.get(f"{key}_max", x), x)
    for (system, phase), es in sorted(excess.items()):
        put(f"system.{system}.{phase}", [e for e, _ in es], {s for _, s in es})
    for phase in PHASES:  # a system never compared: the q quantile over the validated systems, one vote each
        per_system = [comps[f"system.{s}.{ph}"] for s, ph in excess if ph == phase]
        if per_system:
            comps[f"system.unvalidated.{phase}"] = _quantile(per_system, q)
            notes[f"system.unvalidated.{phase}"] = (f"p{q * 100:.0f} over the {len(per_system)} validated systems' "
                                                    f"{phase} widths (one each)")
    for name, value in (priors or {}).items():
        comps[name] = value
        notes.setdefault(name, "prior (no record measures it)")
    if assumed:  # the excess of those decodes over every other component of theirs (system and extrapolation too)
        sofar = Widths({k: v for k, v in comps.items() if k != "speculation.assumed"}, validated)
        errs = [math.sqrt(max(0.0, r.log_error ** 2
                              - half_width(components(replace(r.provenance, speculation="none"), "decode", sofar)) ** 2))
                for r in assumed]
        put("speculation.assumed", errs, {r.source for r in assumed})
    return Widths(comps, validated, notes)


def crossfit(records: Iterable[Record], priors: dict[str, float] | None = None, q: float = QUANTILE,
             group=None) -> dict[str, dict[str, float]]:
    """Per source (or per ``group(record)``): n, median and p90 |relative error|, and the coverage of bands
    derived from the other fold only (the rule in the module docstring)."""
    rs = [r for r in records if r.heldout]
    group = group or (lambda r: r.source)
    widths = [derive_widths([r for r in rs if r.fold != k], priors, q) for k in (0, 1)]
    out: dict[str, dict[str, float]] = {}
    for source in sorted({group(r) for r in rs}):
        sel = [r for r in rs if group(r) == source]
        errs = [abs(r.predicted / r.measured - 1) for r in sel]
        hits = []
        for r in sel:
            try:
                hits.append(covered(r, widths[r.fold]))
            except KeyError:  # the other fold has no record of this kind: no band to score it by
                continue
        out[source] = {"n": float(len(sel)), "median": _quantile(errs, 0.5), "p90": _quantile(errs, 0.9),
                       "coverage": sum(hits) / len(hits) if hits else math.nan, "scored": float(len(hits))}
    return out


# -- the committed widths and a prediction's provenance ------------------------------------------------

@lru_cache(maxsize=1)
def widths() -> Widths:
    """The committed widths (``hardware_db/uncertainty/bands.yaml``)."""
    from .db import data_root, load_yaml

    data = load_yaml(data_root("hardware_db") / "uncertainty" / "bands.yaml")
    comps = {k: float(v["log_half_width"]) for k, v in data["components"].items()}
    notes = {k: str(v.get("from", "")) for k, v in data["components"].items()}
    validated = {k: {kk: float(vv) for kk, vv in v.items()} for k, v in (data.get("validated") or {}).items()}
    return Widths(comps, validated, notes)


def provenance(ctx, plan, transfer_resources: Iterable[str] = ()) -> Provenance:
    """What a plan on ``ctx`` rests on: the GPU's calibration (own, borrowed, none; a weight or expert dtype
    without a fitted GEMM curve counts as uncalibrated; an engine whose kernels are priced from tables measured
    on this GPU (``plan.config['kernel_tables']``, :mod:`moesim.costs.kernels`) counts as own), the host link (measured here, measured on another
    GPU's host of the same link, datasheet) and whether the plan moves data over it or reads the disk."""
    from .db import normalize

    plat = ctx.platform
    cal = plat.calibration
    why = ""
    tables = (getattr(plan, "config", None) or {}).get("kernel_tables")
    if tables:  # an engine's GEMM/MoE/attention kernels priced from tables measured on this GPU (costs.kernels)
        kernels, why = "own", f"{tables}'s kernels from tables measured on the {plat.gpu.name}"
    elif cal is None:
        kernels = "uncalibrated"
    else:
        kernels = "own" if normalize(cal.gpu) == normalize(plat.gpu.name) else "borrowed"
        missing = sorted({d for d in (ctx.wdtype, ctx.edtype) if f"gemm:{d}" not in cal.families})
        if missing:
            kernels, why = "uncalibrated", f"no fitted GEMM curve for {', '.join(missing)}"
    if cal is not None and cal.link is not None and cal.link.link == plat.host_link.name:
        link = "measured" if normalize(cal.gpu) == normalize(plat.gpu.name) else "borrowed"
    else:
        link = "datasheet"
    uses = any(res in ("h2d", "d2h", "disk") for res in transfer_resources)
    w = ctx.workload
    spec = (getattr(plan, "config", None) or {}).get("speculative_acceptance")
    return Provenance(gpu=plat.gpu.name, kernels=kernels, link=link, uses_host_link=uses, system=plan.system,
                      num_gpus=plat.num_gpus * plat.num_nodes, context_tokens=w.prompt_tokens + w.gen_tokens,
                      batch=int(plan.batch_size), total_params=float(ctx.model.total_params), kernels_why=why,
                      speculation="assumed" if spec == "assumed" else "none")


def describe(comps_by_phase: dict[str, list[tuple[str, float, str]]], w_by_phase: dict[str, float]) -> list[str]:
    """Notes saying how wide each phase's band is and why (its components, widest first)."""
    out = []
    for phase in PHASES:
        parts = sorted(comps_by_phase[phase], key=lambda c: -c[1])
        lo, hi = band(1.0, w_by_phase[phase])
        out.append(f"uncertainty of {phase} figures x{lo:.2f}-x{hi:.2f} (-{1 - lo:.0%}/+{hi - 1:.0%}), from: "
                   + "; ".join(f"{why} (x/{math.exp(width):.2f})" for _, width, why in parts))
    return out


def prediction_band(ctx, plan, transfer_resources: Iterable[str], values: dict[str, float], prefill_s: float,
                    decode_s: float) -> tuple[dict[str, float], dict, list[str]]:
    """(``<figure>_low``/``_high`` for ``values``, the band's description for JSON, notes) of one plan."""
    p = provenance(ctx, plan, transfer_resources)
    wt = widths()
    comps = {phase: components(p, phase, wt) for phase in PHASES}
    w = {phase: half_width(comps[phase]) for phase in PHASES}
    bands = figure_bands(values, prefill_s, decode_s, w)
    info = {"provenance": p.as_dict(), "log_half_width": w,
            "components": {phase: {name: width for name, width, _ in comps[phase]} for phase in PHASES}}
    return bands, info, describe(comps, w)


def online_band(ctx, plan, result):
    """``result`` (a serving.OnlineResult) with its bands: TTFT percentiles take the prefill band, TPOT the
    decode band; end-to-end latency, the makespan and the throughput take the total band of the plan's
    prefill and decode time (:func:`total_band`, the plan's split of a whole batch)."""
    p = provenance(ctx, plan, ())
    wt = widths()
    comps = {phase: components(p, phase, wt) for phase in PHASES}
    w = {phase: half_width(comps[phase]) for phase in PHASES}
    prefill_s = plan.prefill_total_s
    t = plan.total_time_s
    lo_t, hi_t = total_band(prefill_s, t - prefill_s, w["prefill"], w["decode"])
    f_lo, f_hi = lo_t / t, hi_t / t

    def scaled(pc, lo: float, hi: float):
        return (pc.model_copy(update={k: getattr(pc, k) * lo for k in ("p50", "p90", "p99")}),
                pc.model_copy(update={k: getattr(pc, k) * hi for k in ("p50", "p90", "p99")}))

    update = {}
    for name, (lo, hi) in (("ttft_s", band(1.0, w["prefill"])), ("tpot_s", band(1.0, w["decode"])),
                           ("e2e_s", (f_lo, f_hi))):
        update[f"{name}_low"], update[f"{name}_high"] = scaled(getattr(result, name), lo, hi)
    update.update(makespan_s_low=result.makespan_s * f_lo, makespan_s_high=result.makespan_s * f_hi,
                  throughput_tok_s_low=result.throughput_tok_s / f_hi,
                  throughput_tok_s_high=result.throughput_tok_s / f_lo,
                  uncertainty={"provenance": p.as_dict(), "log_half_width": w,
                               "components": {ph: {n: x for n, x, _ in comps[ph]} for ph in PHASES}},
                  assumptions=list(result.assumptions) + describe(comps, w))
    return result.model_copy(update=update)
