"""What to buy: the cheapest hardware, serving system and quantization that reach a target.

    from moesim.analysis.recommend import recommend
    recs = recommend("deepseek-r1", target_tok_s=10)
    recs[0].hardware, recs[0].dtype, recs[0].capital_usd, recs[0].reached_tok_s

Search space (kept small so the search takes seconds):

* hardware: every platform of ``hardware_db/platforms`` as listed, and every multi-GPU
  platform also with 1, 2 and 4 of its GPUs (the same host, fewer GPUs; priced with that
  host's ``price_usd_excluding_gpus``). ``platforms=[...]`` restricts the search to the named
  platforms or GPUs (a GPU means its documented default host); these also get the 1/2/4-GPU
  variants when their host has more GPUs.
* serving systems: every registered system (``system="auto"``: each is simulated, the one with
  the highest generation throughput is kept; when it misses ``max_tpot_s``, the other feasible
  systems are tried one by one).
* quantization: ``dtypes`` (weights; KV cache in bf16).

Scenarios: ``offline`` - moesim's default workload (1000 requests, prompt 512, 256 generated
tokens, the system searches its batch); the target is generation throughput (tokens/s over the
whole workload). ``online`` - one request at a time (batch 1, 16 requests, prompt 512,
256 generated); the target is the speed one user sees, 1 / TPOT.

Ranking: configurations that run, reach the target and meet the TPOT and budget limits come
first, by capital cost (GPUs at launch price + the host without GPUs), then by $ per million
tokens (owned, amortised, see :mod:`moesim.analysis.pricing`). Those whose capital cost is unknown (a price
missing from the database) follow, by the part that is known. Then the runner-ups that lost, each
with why: over budget, TPOT above the limit, too slow, or infeasible (with the reason).
Predictions are cached per (model, hardware, GPUs, dtype, system, scenario).
"""

from __future__ import annotations

import functools
import math

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ..errors import InfeasibleError, MoesimError

Status = Literal["ok", "ok-price-unknown", "over-budget", "tpot-too-high", "too-slow", "infeasible"]
STATUS_ORDER: dict[str, int] = {"ok": 0, "ok-price-unknown": 1, "over-budget": 2, "tpot-too-high": 3,
                                "too-slow": 4, "infeasible": 5}
SUBSET_GPU_COUNTS = (1, 2, 4)
ONLINE_WORKLOAD = {"num_requests": 16, "batch_size": 1, "prompt_tokens": 512, "gen_tokens": 256}
ACCURACY_BENCHMARKS = ("gsm8k", "mmlu", "math_500")

#: Scenario fields recommend chooses itself (the rest pass through as knobs)
CHOSEN_FIELDS = ("model", "hardware", "system", "dtype", "num_gpus", "system_params")


class Recommendation(BaseModel):
    """One (hardware, serving system, dtype) configuration and how it fares against the request."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    rank: int | None  # 1 = recommended; None for configurations that lost
    status: Status
    reason: str
    model: str
    hardware: str  # platform name, with the GPU count when it differs from the listed one
    platform: str
    gpu: str
    num_gpus: int
    system: str | None
    dtype: str
    scenario: str
    target_tok_s: float
    reached_tok_s: float | None  # generation throughput (offline) or 1 / TPOT (online)
    throughput_tok_s: float | None
    tpot_s: float | None
    ttft_s: float | None
    capital_usd: float | None
    capital_known_usd: float | None
    usd_per_mtok_owned: float | None
    usd_per_mtok_cloud: float | None
    tok_s_per_kusd: float | None
    power_w: float | None
    tokens_per_joule: float | None
    accuracy: dict[str, Any] | None  # {benchmark, value (percent), suite, note}
    cap_class: str | None
    systems_compared: dict[str, str]
    notes: list[str]


def clear_cache() -> None:
    _predict.cache_clear()
    _platform.cache_clear()


@functools.lru_cache(maxsize=512)
def _platform(spec_name: str, num_gpus: int):
    from ..db.resolve import get_hardware

    return get_hardware(spec_name, num_gpus=num_gpus)


@functools.lru_cache(maxsize=4096)
def _predict(model: str, spec_name: str, num_gpus: int, dtype: str, system: str, scenario: str,
             knobs: tuple[tuple[str, Any], ...] = ()):
    """Prediction (cached, bounded), or the reason it cannot run (a string)."""
    from ..predict import predict

    fields = {**(ONLINE_WORKLOAD if scenario == "online" else {}), **dict(knobs)}
    try:
        return predict(model, _platform(spec_name, num_gpus), system, dtype=dtype, **fields)
    except InfeasibleError as exc:
        return str(exc)


def _knobs(knobs: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Scenario fields passed through to every prediction, checked, as a hashable key."""
    from .. import scenario as sc

    chosen = sorted(set(knobs) & set(CHOSEN_FIELDS))
    if chosen:
        raise MoesimError(f"recommend chooses {', '.join(chosen)} itself")
    unknown = sorted(set(knobs) - set(sc.fields()))
    if unknown:
        raise MoesimError(f"unknown scenario field(s) {', '.join(unknown)}")
    return tuple(sorted((k, v) for k, v in knobs.items() if v is not None))


def hardware_candidates(platforms: list[str] | None = None) -> list[tuple[str, int]]:
    """(platform name, GPU count) pairs searched: each platform as listed, multi-GPU ones also with 1/2/4 GPUs."""
    from ..db import gpus
    from ..db import platforms as table
    from ..db.resolve import default_platform_for

    if platforms is None:
        specs = list(table().entries.values())
    else:
        specs = []
        for name in platforms:
            spec = table().find(name)
            if spec is None:
                gpu = gpus().find(name)
                spec = default_platform_for(gpu) if gpu is not None else None
                if spec is None:
                    raise MoesimError(f"unknown platform or GPU {name!r} (or it has no default host); "
                                      "`moesim list hardware` shows all")
            specs.append(spec)
    out: list[tuple[str, int]] = []
    for spec in specs:
        for n in (spec.num_gpus, *(k for k in SUBSET_GPU_COUNTS if k < spec.num_gpus)):
            if (spec.name, n) not in out:
                out.append((spec.name, n))
    return out


def _reached(pred, scenario: str) -> float:
    return 1.0 / pred.tpot_s if scenario == "online" else pred.throughput_tok_s


def _accuracy(model: str, dtype: str, dtypes: tuple[str, ...]) -> dict[str, Any] | None:
    """A published score comparable across the searched dtypes (same suite), else any for this dtype."""
    from .accuracy import accuracy_file, accuracy_of, common_suite, score_for

    if accuracy_file(model) is None:
        return None
    published = tuple(d for d in dtypes if accuracy_of(model, d)["scores"])  # dtypes with any published score
    for bench in ACCURACY_BENCHMARKS:
        suite = common_suite(model, published, bench) if dtype in published else None
        if suite:
            s = score_for(model, dtype, bench, suite)
            return {"benchmark": bench, "value": s["value"], "suite": suite, "note": None}
    for bench in ACCURACY_BENCHMARKS:
        s = score_for(model, dtype, bench)
        if s:
            return {"benchmark": bench, "value": s["value"], "suite": s["suite"],
                    "note": "not comparable across dtypes (no common suite)"}
    info = accuracy_of(model, dtype)
    return {"benchmark": None, "value": None, "suite": None, "note": info["note"] if info else None}


def _short(msg: str, limit: int = 140) -> str:
    first = " ".join(msg.split())
    return first if len(first) <= limit else first[: limit - 1] + "\u2026"


def _infeasible_reason(msg: str) -> str:
    """One line per distinct reason, systems with the same reason grouped ("a, b: reason")."""
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    if not (len(lines) > 1 and lines[0].startswith("no serving system")):
        return _short(msg, 200)
    grouped: dict[str, list[str]] = {}
    for ln in lines[1:]:
        system, _, why = ln.partition(": ")
        why = why.removeprefix(system + ": ").split(". Use ")[0]  # drop the repeated name and the advice
        grouped.setdefault(_short(why, 120), []).append(system)
    return "; ".join(f"{', '.join(systems)}: {why}" for why, systems in grouped.items())


def recommend(model: str, target_tok_s: float, max_tpot_s: float | None = None, budget_usd: float | None = None,
              scenario: str = "offline", dtypes: tuple[str, ...] | list[str] = ("bf16", "fp8", "int4"),
              platforms: list[str] | None = None, *, usd_per_kwh: float | None = None,
              amortization_years: float | None = None, progress: bool = False, **knobs: Any) -> list[Recommendation]:
    """Ranked configurations for serving ``model`` at ``target_tok_s`` (see the module docstring).

    ``knobs``: Scenario fields every prediction takes (workload, KV dtype, router skew, ...);
    hardware, system, dtype and GPU count are what recommend searches."""
    from .cap import classify
    from .sweep import _Progress
    from .pricing import DEFAULT_AMORTIZATION_YEARS, DEFAULT_USD_PER_KWH, cost_of
    from ..db.resolve import get_model
    from ..specs.common import BYTES_PER_ELEMENT

    if scenario not in ("offline", "online"):
        raise MoesimError(f"unknown scenario {scenario!r}; offline or online")
    check_number("target_tok_s", target_tok_s)
    check_number("max_tpot_s", max_tpot_s, optional=True)
    check_number("budget_usd", budget_usd, optional=True)
    check_number("usd_per_kwh", usd_per_kwh, optional=True, zero=True)
    check_number("amortization_years", amortization_years, optional=True)
    if isinstance(dtypes, str) or not isinstance(dtypes, (list, tuple)):
        raise MoesimError(f"dtypes takes a list of dtype names, got {dtypes!r}")
    if platforms is not None and (isinstance(platforms, str) or not isinstance(platforms, (list, tuple))):
        raise MoesimError(f"platforms takes a list of platform or GPU names, got {platforms!r}")
    dtypes = tuple(dtypes)
    if not dtypes:
        raise MoesimError("dtypes is empty: give at least one weight dtype to consider")
    for d in dtypes:
        if d not in BYTES_PER_ELEMENT:
            raise MoesimError(f"unknown dtype {d!r}; one of {', '.join(BYTES_PER_ELEMENT)}")
    knob_key = _knobs(knobs)
    spec = get_model(model)
    name = spec.name
    kwh = DEFAULT_USD_PER_KWH if usd_per_kwh is None else usd_per_kwh
    years = DEFAULT_AMORTIZATION_YEARS if amortization_years is None else amortization_years
    rows: list[Recommendation] = []
    candidates = hardware_candidates(platforms)
    bar = _Progress(len(candidates) * len(dtypes), progress, label="recommend", unit="configs")
    try:
        for plat_name, n in candidates:
            platform = _platform(plat_name, n)
            label = plat_name if n == platform_listed_gpus(plat_name) else f"{plat_name} ({n} GPU{'s' if n > 1 else ''})"
            for dtype in dtypes:
                rows.append(_evaluate(name, plat_name, n, label, platform, dtype, dtypes, scenario, target_tok_s,
                                      max_tpot_s, budget_usd, kwh, years, cost_of, classify, knob_key))
                bar.update(1)
    finally:
        bar.close()
    rows.sort(key=_sort_key)
    ranked: list[Recommendation] = []
    best: Recommendation | None = None
    rank = 0
    for row in rows:
        if row.status in ("ok", "ok-price-unknown"):
            rank += 1
            update: dict[str, Any] = {"rank": rank}
            if best is None:
                best = row
                update["reason"] = "recommended: " + row.reason
            elif row.capital_usd is not None and best.capital_usd is not None:
                update["reason"] = (f"reaches the target but costs ${row.capital_usd - best.capital_usd:,.0f} more "
                                    f"than #1: " + row.reason)
            else:
                update["reason"] = "reaches the target; " + row.reason
            row = row.model_copy(update=update)
        ranked.append(row)
    return ranked


def check_number(what: str, value: Any, *, optional: bool = False, zero: bool = False) -> None:
    """``value`` is a finite number above 0 (``zero``: at least 0), or None where ``optional``; else a
    MoesimError naming ``what`` (a parameter, or the CLI's flag)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MoesimError(f"{what} takes a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise MoesimError(f"{what} must be a finite number {'of at least 0' if zero else 'above 0'} (got {value:g})")


def platform_listed_gpus(plat_name: str) -> int:
    from ..db import platforms

    return platforms().get(plat_name).num_gpus


def _sort_key(r: Recommendation) -> tuple:
    inf = float("inf")
    order = STATUS_ORDER[r.status]
    if r.status == "ok":
        return (order, r.capital_usd, r.usd_per_mtok_owned if r.usd_per_mtok_owned is not None else inf, r.hardware)
    if r.status == "ok-price-unknown":
        return (order, r.capital_known_usd or inf, -(r.reached_tok_s or 0.0), r.hardware)
    if r.status == "over-budget":
        return (order, r.capital_usd or inf, 0.0, r.hardware)
    if r.status in ("tpot-too-high", "too-slow"):
        return (order, -(r.reached_tok_s or 0.0), 0.0, r.hardware)
    return (order, 0.0, 0.0, r.hardware + r.dtype)


def _evaluate(model, plat_name, n, label, platform, dtype, dtypes, scenario, target, max_tpot, budget, kwh, years,
              cost_of, classify, knobs=()) -> Recommendation:
    base: dict[str, Any] = dict(rank=None, model=model, hardware=label, platform=plat_name, gpu=platform.gpu.name,
                                num_gpus=n, dtype=dtype, scenario=scenario, target_tok_s=target,
                                accuracy=_accuracy(model, dtype, dtypes))
    empty = dict(reached_tok_s=None, throughput_tok_s=None, tpot_s=None, ttft_s=None, capital_usd=None,
                 capital_known_usd=None, usd_per_mtok_owned=None, usd_per_mtok_cloud=None, tok_s_per_kusd=None,
                 power_w=None, tokens_per_joule=None, cap_class=None)
    pred = _predict(model, plat_name, n, dtype, "auto", scenario, knobs)
    if isinstance(pred, str):
        return Recommendation(**base, **empty, status="infeasible", reason="infeasible: " + _infeasible_reason(pred),
                              system=None, systems_compared={}, notes=[])
    compared = dict(pred.systems_compared)
    notes: list[str] = []
    chosen = pred
    if max_tpot is not None and pred.tpot_s > max_tpot:
        # the fastest system misses the latency limit: try the other feasible systems
        for system, verdict in compared.items():
            if system == pred.system or verdict.startswith(("infeasible", "skipped")):
                continue
            alt = _predict(model, plat_name, n, dtype, system, scenario, knobs)
            if not isinstance(alt, str) and alt.tpot_s <= max_tpot and (chosen is pred or
                                                                         alt.throughput_tok_s > chosen.throughput_tok_s):
                chosen = alt
        if chosen is not pred:
            notes.append(f"{chosen.system} chosen over {pred.system} (faster overall) to meet TPOT <= {max_tpot:g} s")
    cost = cost_of(chosen, platform, usd_per_kwh=kwh, amortization_years=years)
    reached = _reached(chosen, scenario)
    metric = "1/TPOT" if scenario == "online" else "generation throughput"
    figures = dict(
        reached_tok_s=reached, throughput_tok_s=chosen.throughput_tok_s, tpot_s=chosen.tpot_s, ttft_s=chosen.ttft_s,
        capital_usd=cost.capital_usd, capital_known_usd=cost.capital_known_usd,
        usd_per_mtok_owned=cost.usd_per_mtok_owned, usd_per_mtok_cloud=cost.usd_per_mtok_cloud,
        tok_s_per_kusd=cost.tok_s_per_kusd, power_w=cost.power_w, tokens_per_joule=cost.tokens_per_joule,
        cap_class=classify(chosen),
    )
    notes += [n_ for n_ in cost.notes if not n_.startswith("power model")]
    if not chosen.calibrated:
        notes.append(f"{chosen.gpu}: uncalibrated (its conservative profile in hardware_db/efficiency, else the default)")
    price = (f"${cost.capital_usd:,.0f}" if cost.capital_usd is not None
             else f"price unknown (GPUs alone ${cost.capital_known_usd:,.0f})" if cost.capital_known_usd
             else "price unknown")
    what = f"{reached:.4g} tok/s ({metric}) with {chosen.system} at {dtype}, {price}"
    if reached < target:
        status, reason = "too-slow", f"too slow: {what} < target {target:g} tok/s"
    elif max_tpot is not None and chosen.tpot_s > max_tpot:
        status, reason = "tpot-too-high", f"TPOT {chosen.tpot_s:.3g} s > limit {max_tpot:g} s ({what})"
    elif budget is not None and cost.capital_usd is not None and cost.capital_usd > budget:
        status, reason = "over-budget", f"over budget: ${cost.capital_usd:,.0f} > ${budget:,.0f} ({what})"
    elif cost.capital_usd is None:
        status = "ok-price-unknown"
        reason = f"{what}; capital cost unknown" + (", cannot check the budget" if budget is not None else "")
    else:
        status, reason = "ok", what
    return Recommendation(**base, **figures, status=status, reason=reason, system=chosen.system,
                          systems_compared=compared, notes=notes)


def _capital_cell(r: Recommendation) -> str:
    if r.capital_usd is not None:
        return f"${r.capital_usd:,.0f}"
    return f"?${r.capital_known_usd:,.0f}+" if r.capital_known_usd else "?"


def format_table(recs: list[Recommendation], limit: int | None = 12, *, amortization_years: float = 3.0,
                 usd_per_kwh: float = 0.15) -> str:
    """A ranked, explained text table: the ranked configurations, then why the others lost."""
    def money(v: float | None, digits: int = 0) -> str:
        return "?" if v is None else f"${v:,.{digits}f}"

    def num(v: float | None, fmt: str = ".4g") -> str:
        return "-" if v is None else format(v, fmt)

    ok = [r for r in recs if r.rank is not None]
    lost = [r for r in recs if r.rank is None]
    lines: list[str] = []
    if recs:
        r0 = recs[0]
        lines.append(f"{r0.model}: target {r0.target_tok_s:g} tok/s ({r0.scenario}); "
                     f"{len(ok)} configuration(s) reach it, {len(lost)} do not")
    if ok:
        header = (f"{'#':>3} {'hardware':<30} {'GPUs':>4} {'system':<13} {'dtype':<5} {'tok/s':>9} {'TPOT s':>8} "
                  f"{'capital':>10} {'$/Mtok own':>10} {'$/Mtok cloud':>12} {'tok/J':>7} {'accuracy':<16} {'CAP':<4}")
        lines += ["", header, "-" * len(header)]
        from .cap import ABBREVIATIONS

        for r in ok[: limit or None]:
            acc = "-"
            if r.accuracy and r.accuracy.get("value") is not None:
                acc = f"{r.accuracy['benchmark']} {r.accuracy['value']:.1f}"
            elif r.accuracy:
                acc = "unknown"
            lines.append(
                f"{r.rank:>3} {r.hardware[:30]:<30} {r.num_gpus:>4} {str(r.system):<13} {r.dtype:<5} "
                f"{num(r.reached_tok_s):>9} {num(r.tpot_s, '.3g'):>8} "
                f"{_capital_cell(r):>10} "
                f"{money(r.usd_per_mtok_owned, 2):>10} {money(r.usd_per_mtok_cloud, 2):>12} "
                f"{num(r.tokens_per_joule, '.3g'):>7} {acc:<16} {ABBREVIATIONS.get(r.cap_class or '', ''):<4}")
        lines.append("")
        for r in ok[: min(3, len(ok))]:
            lines.append(f"  #{r.rank}: {r.reason}")
        if len(ok) > (limit or len(ok)):
            lines.append(f"  ... {len(ok) - limit} more configuration(s) reach the target")
    else:
        lines.append("\nno configuration reaches the target under the given limits")
    if lost:
        lines.append("\nwhy the others lost:")
        by_status: dict[str, list[Recommendation]] = {}
        for r in lost:
            by_status.setdefault(r.status, []).append(r)
        for status, group in by_status.items():
            lines.append(f"  {status} ({len(group)}):")
            shown = group[:5] if status != "infeasible" else group[:4]
            for r in shown:
                lines.append(f"    {r.hardware} [{r.dtype}]: {r.reason}")
            if len(group) > len(shown):
                lines.append(f"    ... and {len(group) - len(shown)} more")
    lines.append("\ncapital = GPUs at launch price + host without GPUs (hardware_db); '?' = a price the database "
                 f"lacks ('?$X+' = the known part). $/Mtok own = capital amortised over {amortization_years:g} years + "
                 f"energy at {usd_per_kwh:g} $/kWh; accuracy = published score (models_db/accuracy), '-' = none on file; "
                 "CAP = MoE-CAP class (PA/PC/CA).")
    return "\n".join(lines)
