"""Parameter sweeps and what-if sensitivity over :func:`moesim.predict`.

    from moesim.analysis.sweep import Grid, run_sweep, sensitivity
    recs = run_sweep(Grid(model="mixtral-8x7b", hardware="c2", batch_size=[1, 8, 64],
                          pcie=["gen3", "gen4", "gen5"]), "sweep.csv")
    recs.summary();  recs.to_frame()      # the latter needs pandas

A :class:`Grid` maps parameters to lists of values; its points are the Cartesian product, in
a fixed order (the order of :data:`PARAMS`, the first varying slowest). Each point is one
``moesim.predict`` call and one flat record: the point's inputs, then throughputs, TTFT, TPOT,
S-MBU, S-MFU, MBU, MFU, the bottleneck, ``feasible`` and, for points that cannot run, the
``reason`` (an infeasible point is a row, never a crash). A point with an arrival rate is served
online (``moesim.predict_online``): its TTFT and TPOT are P50s, with P99s beside them.

Execution: local processes (default), serial (``workers=1``) or a Dask cluster
(``scheduler="tcp://HOST:PORT"``; needs ``dask[distributed]``). The records are the same in
every mode: they are sorted by point index and every value goes through the CSV types.

Resume: records are appended to ``out_csv`` as they finish, each with its point's ``key``
(the point's parameters, canonically written); running the same sweep again skips the keys
already in the file, so a sweep that died halfway continues where it stopped. When a sweep
completes, the file is rewritten in point order, so it is byte-identical in every mode.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import scenario as sc
from ..errors import MoesimError
from ..units import fmt_rate, fmt_seconds

#: Sweepable parameters: every field of :class:`moesim.scenario.Scenario`, in its order, with the
#: type its values are read as (``system_params``: canonical ``KEY=VALUE&KEY=VALUE`` text).
#: A missing parameter takes the Scenario's default.
PARAMS: dict[str, type] = {name: (str if kind is dict else kind) for name, kind in
                           ((n, sc.value_kind(n)) for n in sc.fields())}
#: Short names the CLI's --grid also accepts (the fields' aliases and flags without dashes).
ALIASES = sc.aliases()
_PARAM_SEPARATOR = "&"

#: Output columns and their types.
OUTPUTS: dict[str, type] = {
    "chosen_system": str,
    "chosen_batch": int,
    "gpus": int,
    "throughput_tok_s": float,
    "prefill_tok_s": float,
    "decode_tok_s": float,
    "ttft_s": float,
    "tpot_s": float,
    "total_time_s": float,
    "s_mbu": float,
    "s_mfu": float,
    "mbu": float,
    "mfu": float,
    "bottleneck": str,
    "gpu_mem_bytes": float,
    "host_mem_bytes": float,
    "calibrated": bool,
    "ttft_p99_s": float,  # online points (arrival_rate_per_s set): ttft_s and tpot_s are then P50s
    "tpot_p99_s": float,
    "e2e_p99_s": float,
    "feasible": bool,
    "reason": str,
}
COLUMNS: dict[str, type] = {"index": int, "key": str, **PARAMS, **OUTPUTS}

def _params_text(value: Any) -> str | None:
    """System parameters as canonical text: ``KEY=VALUE`` pairs joined by ``&``, keys sorted."""
    if isinstance(value, str):
        value = sc.parse_key_values([v for v in value.split(_PARAM_SEPARATOR) if v.strip()]) if value.strip() else {}
    if not value:
        return None
    return _PARAM_SEPARATOR.join(f"{k}={v}" for k, v in sorted(dict(value).items()))


# ---- grid ------------------------------------------------------------------------------------
def _coerce(name: str, value: Any) -> Any:
    """A grid value in its canonical type (``None`` = the Scenario's default); text is read as the CLI reads it."""
    if name == "system_params":
        return _params_text(value)
    if name == "batch_size" and isinstance(value, str) and value.strip().lower() in ("auto", "search"):
        return None
    kind = PARAMS[name]
    value = sc.parse_value(name, value)
    if value is None:
        return None
    try:
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if kind is int:
            if isinstance(value, bool) or value != int(value):
                raise ValueError(value)
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if not isinstance(value, (str, os.PathLike)):
            raise ValueError(value)
        return str(value).strip()
    except (TypeError, ValueError):
        raise MoesimError(f"grid parameter {name}: cannot read {value!r} as {kind.__name__}") from None


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def point_key(point: Mapping[str, Any]) -> str:
    """The canonical identity of a point: ``name=value`` of its set parameters, in PARAMS order."""
    return ";".join(f"{k}={_fmt(point[k])}" for k in PARAMS if point.get(k) is not None)


class Grid:
    """Parameters -> lists of values; a scalar is a one-value list.

    ``Grid({"model": ["mixtral-8x7b"], "batch_size": [1, 8]}, hardware="c2")``. ``model`` and
    ``hardware`` are required; ``system`` defaults to ``auto``; other parameters missing from
    the grid take predict's defaults (workload 1000 x 512 -> 256, the platform as described).
    """

    def __init__(self, params: Mapping[str, Any] | None = None, **more: Any):
        merged = {**dict(params or {}), **more}
        unknown = sorted(set(merged) - set(PARAMS))
        if unknown:
            raise MoesimError(f"unknown grid parameter(s) {', '.join(unknown)}; one of {', '.join(PARAMS)}")
        self.values: dict[str, list[Any]] = {}
        for name in PARAMS:  # canonical order: the expansion order never depends on how the grid was written
            if name not in merged:
                continue
            raw = merged[name]
            items = list(raw) if isinstance(raw, (list, tuple, range, set, frozenset)) else [raw]
            if isinstance(raw, (set, frozenset)):
                items = sorted(items, key=str)
            if not items:
                raise MoesimError(f"grid parameter {name} has no values")
            self.values[name] = [_coerce(name, v) for v in items]
        for required in ("model", "hardware"):
            if required not in self.values or None in self.values[required]:
                raise MoesimError(f"a sweep grid needs {required} (one or more values)")
        self.values.setdefault("system", ["auto"])
        self.values["system"] = [v or "auto" for v in self.values["system"]]

    @classmethod
    def from_strings(cls, specs: Iterable[str], **fixed: Any) -> "Grid":
        """Parse ``name=v1,v2,...`` strings (the CLI's ``--grid``); ``fixed`` adds parameters."""
        params: dict[str, list[str]] = {}
        for spec in specs:
            name, sep, values = spec.partition("=")
            name = name.strip().replace("-", "_")
            name = ALIASES.get(name, name)
            if not sep or not name:
                raise MoesimError(f"--grid expects NAME=V1,V2,... (got {spec!r})")
            params.setdefault(name, []).extend(v.strip() for v in values.split(","))
        for name, value in fixed.items():
            if value is None:
                continue
            if name in params:
                raise MoesimError(f"{name} is given both as an option and in --grid")
            params[name] = value
        return cls(params)

    def points(self) -> list[dict[str, Any]]:
        """Every distinct point: a dict of every parameter (``None`` = default), in expansion order."""
        names = list(self.values)
        out, seen = [], set()
        for combo in itertools.product(*(self.values[n] for n in names)):
            point = dict.fromkeys(PARAMS)
            point.update(zip(names, combo))
            key = point_key(point)
            if key not in seen:
                seen.add(key)
                out.append(point)
        return out

    def __len__(self) -> int:
        return len(self.points())

    def __repr__(self) -> str:
        return f"Grid({self.values!r})"


# ---- records ---------------------------------------------------------------------------------
class Records(list):
    """A list of flat dicts (one per point) with a summary and, when pandas is installed, a DataFrame."""

    computed: int = 0  # points predicted by this call
    resumed: int = 0  # points read back from the CSV

    def to_frame(self):
        try:
            import pandas as pd
        except ImportError:
            raise MoesimError("to_frame() needs pandas (pip install pandas); the records are plain dicts") from None
        return pd.DataFrame(list(self))

    def feasible(self) -> "Records":
        return Records(r for r in self if r.get("feasible"))

    def summary(self) -> dict[str, Any]:
        """Counts and the best point (highest generation throughput) per chosen system."""
        feasible = [r for r in self if r.get("feasible")]
        best: dict[str, dict[str, Any]] = {}
        for r in feasible:
            name = r["chosen_system"]
            if name not in best or r["throughput_tok_s"] > best[name]["throughput_tok_s"]:
                best[name] = r
        reasons: dict[str, int] = {}
        for r in self:
            if not r.get("feasible"):
                head = (r.get("reason") or "unknown").split(":")[0]
                reasons[head] = reasons.get(head, 0) + 1
        return {
            "points": len(self),
            "feasible": len(feasible),
            "infeasible": len(self) - len(feasible),
            "computed": self.computed,
            "resumed": self.resumed,
            "best_per_system": dict(sorted(best.items(), key=lambda kv: -kv[1]["throughput_tok_s"])),
            "best": max(feasible, key=lambda r: r["throughput_tok_s"]) if feasible else None,
            "infeasible_reasons": reasons,
        }


def format_summary(records: Records) -> str:
    s = records.summary()
    lines = [f"{s['points']} points: {s['feasible']} feasible, {s['infeasible']} infeasible "
             f"({s['computed']} computed, {s['resumed']} read back from the CSV)"]
    varying = _varying(records)
    for name, r in s["best_per_system"].items():
        where = ", ".join(f"{k}={r[k]}" for k in varying if k != "system") or "the only point"
        if r.get("arrival_rate_per_s") is not None:  # online: percentiles, no utilisation
            detail = f"TPOT P50 {_time(r['tpot_s'])}, P99 {_time(r.get('tpot_p99_s'))}"
        else:
            detail = (f"TPOT {_time(r['tpot_s'])}, workload {_time(r.get('total_time_s'))}, "
                      f"S-MBU {r['s_mbu']:.2f}, bottleneck {r['bottleneck']}")
        lines.append(f"  best {name}: {fmt_rate(r['throughput_tok_s'], 'tok/s')} at {where} ({detail})")
    return "\n".join(lines)


def _time(seconds: float | None) -> str:
    return "-" if seconds is None else fmt_seconds(seconds)


def _varying(records: list[dict[str, Any]]) -> list[str]:
    return [k for k in PARAMS if len({r.get(k) for r in records}) > 1]


def _typed(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record with every value in its column's type: exactly what the CSV gives back."""
    out = {}
    for name, kind in COLUMNS.items():
        value = record.get(name)
        if value is None or value == "":
            out[name] = None
        elif kind is bool:
            out[name] = value if isinstance(value, bool) else str(value) == "True"
        elif kind is int:
            out[name] = int(value)
        elif kind is float:
            out[name] = float(value)
        else:
            out[name] = str(value)
    return out


def _flat(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def scenario_of(point: Mapping[str, Any]) -> sc.Scenario:
    """The Scenario of a grid point (unset parameters take the Scenario's defaults)."""
    fields = {k: v for k, v in point.items() if v is not None}
    if "system_params" in fields:
        fields["system_params"] = sc.parse_key_values(fields["system_params"].split(_PARAM_SEPARATOR))
    return sc.build(**fields)


def evaluate(point: Mapping[str, Any]) -> dict[str, Any]:
    """One point -> one record (without index/key). Infeasible points give a row with the reason."""
    from ..predict import predict, predict_online

    record = {k: point.get(k) for k in PARAMS}
    record.update(dict.fromkeys(OUTPUTS))
    try:
        scenario = scenario_of(point)
        p = predict_online(scenario) if scenario.online else predict(scenario)
    except MoesimError as exc:
        record.update(feasible=False, reason=_flat(exc))
        return record
    if scenario.online:  # latency percentiles of Poisson arrivals
        record.update(chosen_system=p.system, throughput_tok_s=p.throughput_tok_s, ttft_s=p.ttft_s.p50,
                      tpot_s=p.tpot_s.p50, total_time_s=p.makespan_s, ttft_p99_s=p.ttft_s.p99,
                      tpot_p99_s=p.tpot_s.p99, e2e_p99_s=p.e2e_s.p99, feasible=True, reason=None)
        return record
    record.update(
        chosen_system=p.system, chosen_batch=p.config.get("batch_size"), gpus=p.num_gpus,
        throughput_tok_s=p.throughput_tok_s, prefill_tok_s=p.prefill_tok_s, decode_tok_s=p.decode_tok_s,
        ttft_s=p.ttft_s, tpot_s=p.tpot_s, total_time_s=p.total_time_s,
        s_mbu=p.s_mbu, s_mfu=p.s_mfu, mbu=p.mbu, mfu=p.mfu, bottleneck=p.bottleneck,
        gpu_mem_bytes=p.gpu_mem_bytes, host_mem_bytes=p.host_mem_bytes, calibrated=p.calibrated,
        feasible=True, reason=None,
    )
    return record


def _run_chunk(chunk: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Worker entry point (module level so that processes and Dask can pickle it)."""
    out = []
    for index, point in chunk:
        record = evaluate(point)
        record["index"], record["key"] = index, point_key(point)
        out.append(_typed(record))
    return out


# ---- CSV: append as finished, read back for resume ----------------------------------------
def _load(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """Valid records of an existing CSV (a torn last line is dropped) and whether it needs rewriting."""
    not_ours = (f"{path} is not a moesim sweep file of this version (its columns differ); "
                "choose another --out or move it away")
    try:
        if not path.exists() or path.stat().st_size == 0:
            return [], False
        with path.open(newline="", encoding="utf-8") as f:
            text = f.read()
        rows = list(csv.reader(text.splitlines(keepends=True)))
    except (UnicodeDecodeError, csv.Error):  # a binary file, NUL bytes
        raise MoesimError(not_ours) from None
    except OSError as exc:
        raise MoesimError(f"cannot read the sweep file {path}: {exc.strerror or exc}") from None
    if not rows:
        return [], False
    header = rows[0]
    if header != list(COLUMNS):
        raise MoesimError(not_ours)
    records, dirty = [], not text.endswith("\n")
    for row in rows[1:]:
        if len(row) != len(COLUMNS):
            dirty = True
            continue
        try:
            records.append(_typed(dict(zip(COLUMNS, row))))
        except ValueError:
            dirty = True
    return records, dirty


def _write_all(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(_csv_row(r) for r in records)
    os.replace(tmp, path)


def _csv_row(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: "" if record.get(k) is None else _fmt(record[k]) for k in COLUMNS}


class _Appender:
    def __init__(self, path: Path | None):
        self.path, self.file, self.writer = path, None, None

    def append(self, records: list[dict[str, Any]]) -> None:
        if self.path is None:
            return
        if self.file is None:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self.file = self.path.open("a", newline="")
            self.writer = csv.DictWriter(self.file, fieldnames=list(COLUMNS))
            if new:
                self.writer.writeheader()
        self.writer.writerows(_csv_row(r) for r in records)
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


# ---- progress --------------------------------------------------------------------------------
class _Progress:
    def __init__(self, total: int, enabled: bool, stream=None, width: int = 30, label: str = "sweep",
                 unit: str = "pts"):
        self.total, self.enabled, self.stream, self.width = total, enabled and total > 0, stream or sys.stderr, width
        self.label, self.unit = label, unit
        self.done, self.t0, self.shown, self.drawn = 0, time.perf_counter(), 0.0, -1
        if self.enabled:
            self._draw()

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self.shown > 0.1 or self.done >= self.total):
            self.shown = now
            self._draw()

    def _draw(self) -> None:
        self.drawn = self.done
        frac = self.done / self.total
        elapsed = time.perf_counter() - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        bar = "#" * int(frac * self.width) + "-" * (self.width - int(frac * self.width))
        eta_text = f"eta {eta:5.0f} s" if eta == eta else "eta     ?"
        self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} {rate:7.1f} {self.unit}/s {eta_text}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            if self.drawn != self.done:
                self._draw()
            self.stream.write("\n")
            self.stream.flush()


# ---- execution -------------------------------------------------------------------------------
def _chunks(todo: list[tuple[int, dict[str, Any]]], slots: int, size: int | None) -> list[list]:
    """Units of work. Strided (chunk i holds points i, i + n, ...), so that runs of expensive
    neighbouring points (one large model, say) spread over every worker."""
    size = size or max(1, min(32, math.ceil(len(todo) / (max(slots, 1) * 8))))
    count = math.ceil(len(todo) / size)
    return [todo[i::count] for i in range(count)]


def _serial(todo, chunk_size) -> Iterator[list[dict[str, Any]]]:
    size = chunk_size or 8  # in point order; each chunk is appended to the CSV when done
    for i in range(0, len(todo), size):
        yield _run_chunk(todo[i:i + size])


def _processes(todo, workers: int, chunk_size) -> Iterator[list[dict[str, Any]]]:
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    chunks = _chunks(todo, workers, chunk_size)
    pool = ProcessPoolExecutor(max_workers=min(workers, len(chunks)))
    try:
        pending = {pool.submit(_run_chunk, c) for c in chunks}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                yield fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _dask(todo, scheduler, chunk_size) -> Iterator[list[dict[str, Any]]]:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise MoesimError("a Dask scheduler needs dask.distributed: pip install 'moesim[dask]' "
                          "(or pip install 'dask[distributed]')") from None
    own = not isinstance(scheduler, Client)
    try:
        client = Client(scheduler, timeout="10s") if own else scheduler
    except OSError as exc:
        raise MoesimError(f"cannot reach the Dask scheduler {scheduler}: {exc}") from None
    try:
        slots = sum(client.nthreads().values()) or 1
        futures = client.map(_run_chunk, _chunks(todo, slots, chunk_size), pure=False)
        try:
            for fut in as_completed(futures):
                yield fut.result()
        finally:
            client.cancel(futures)
    finally:
        if own:
            client.close()


def _validate(points: list[dict[str, Any]]) -> None:
    """Fail fast on names no database entry has (infeasible points are rows; typos are errors)."""
    from ..db.resolve import get_hardware, get_model
    from ..systems import get_system

    for model in {p["model"] for p in points}:
        get_model(model)
    for hw, pcie in {(p["hardware"], p["pcie"]) for p in points}:
        get_hardware(hw, pcie=pcie)
    for system in {p["system"] for p in points}:
        if system != "auto":
            get_system(system)


def run_sweep(grid: Grid | Mapping[str, Any], out_csv: str | Path | None = None, workers: int | None = None,
              scheduler: Any = None, progress: bool = True, chunk_size: int | None = None) -> Records:
    """Predict every point of ``grid``; return the records sorted by point index.

    ``workers``: None = one process per CPU (serial for a handful of points), 1 = serial, N =
    N processes. ``scheduler``: a Dask scheduler address (``tcp://HOST:PORT``) or a
    ``distributed.Client``; overrides ``workers``. ``out_csv``: records are appended as they
    finish and points already in the file are skipped (resume).
    """
    grid = grid if isinstance(grid, Grid) else Grid(grid)
    points = grid.points()
    _validate(points)
    keys = {point_key(p): i for i, p in enumerate(points)}
    path = Path(out_csv) if out_csv is not None else None
    stored: list[dict[str, Any]] = []
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        stored, dirty = _load(path)
        if dirty:
            _write_all(path, stored)
    results: dict[str, dict[str, Any]] = {r["key"]: r for r in stored if r["key"] in keys}
    resumed = len(results)
    todo = [(i, p) for i, p in enumerate(points) if point_key(p) not in results]
    if progress and resumed:
        print(f"resuming: {resumed} of {len(points)} points already in {path}", file=sys.stderr)
    bar = _Progress(len(todo), progress)
    appender = _Appender(path)
    try:
        if not todo:
            batches: Iterable = ()
        elif scheduler is not None:
            batches = _dask(todo, scheduler, chunk_size)
        else:
            n = workers if workers is not None else (os.cpu_count() or 1)
            if n < 1:
                raise MoesimError(f"workers must be at least 1 (got {n})")
            serial = n == 1 or (workers is None and len(todo) < 16)
            batches = _serial(todo, chunk_size) if serial else _processes(todo, n, chunk_size)
        for batch in batches:
            appender.append(batch)
            for r in batch:
                results[r["key"]] = r
            bar.update(len(batch))
    finally:
        appender.close()
        bar.close()
    ordered = sorted(results.values(), key=lambda r: keys[r["key"]])
    for r in ordered:
        r["index"] = keys[r["key"]]
    if path is not None:  # complete: rewrite in point order (other sweeps' rows kept after ours)
        others = [r for r in _load(path)[0] if r["key"] not in keys]
        _write_all(path, ordered + others)
    out = Records(ordered)
    out.computed, out.resumed = len(todo), resumed
    return out


# ---- sensitivity -----------------------------------------------------------------------------
RESOURCES = {
    "hbm": "GPU memory bandwidth",
    "pcie": "host-GPU link (PCIe) bandwidth",
    "gpu_flops": "GPU peak FLOP/s",
    "host_bw": "host memory bandwidth",
}


def sensitivity(model: Any, hardware: Any = None, system: str | None = None, factor: float = 2.0,
                **kw: Any) -> Records:
    """For each resource, the relative throughput change when only that resource is ``factor`` x.

    ``kw``: any other Scenario field (workload, platform overrides, knobs). Records are sorted by gain, best upgrade first
    (``best`` marks it; ``pays`` is a gain of at least 5%).
    """
    from ..db.resolve import get_hardware
    from ..predict import predict

    if factor <= 0:
        raise MoesimError(f"factor must be positive (got {factor})")
    scenario = sc.build(model, hardware, system, **kw)
    platform = get_hardware(scenario.hardware, **scenario.platform_overrides())
    scenario = scenario.replace(hardware=platform, **dict.fromkeys(scenario.platform_overrides()))
    base = predict(scenario)
    rows = []
    for resource, label in RESOURCES.items():
        row = {"resource": resource, "description": label, "factor": factor,
               "base_system": base.system, "base_throughput_tok_s": base.throughput_tok_s,
               "base_bottleneck": base.bottleneck}
        try:
            p = predict(scenario.replace(hardware=platform.scaled(**{resource: factor})))
        except MoesimError as exc:
            row.update(system=None, throughput_tok_s=None, relative_change=None, bottleneck=None, reason=_flat(exc))
        else:
            row.update(system=p.system, throughput_tok_s=p.throughput_tok_s,
                       relative_change=p.throughput_tok_s / base.throughput_tok_s - 1.0,
                       bottleneck=p.bottleneck, reason=None)
        rows.append(row)
    rows.sort(key=lambda r: -(r["relative_change"] if r["relative_change"] is not None else -math.inf))
    for i, r in enumerate(rows):
        gain = r["relative_change"]
        r["best"] = i == 0 and gain is not None and gain > 0
        r["pays"] = gain is not None and gain >= 0.05
    return Records(rows)


def format_sensitivity(records: Records) -> str:
    if not records:
        return ""
    first = records[0]
    lines = [f"base: {fmt_rate(first['base_throughput_tok_s'], 'tok/s')} with {first['base_system']} "
             f"(bottleneck {first['base_bottleneck']}); each resource alone x{first['factor']:g}:"]
    for r in records:
        if r["relative_change"] is None:
            lines.append(f"  {r['resource']:10s} infeasible: {r['reason']}")
            continue
        mark = "  <- pays most" if r["best"] else ("" if r["pays"] else "  (does not pay)")
        rate = fmt_rate(r["throughput_tok_s"], "tok/s")
        lines.append(f"  {r['resource']:10s} {r['relative_change']:+8.1%}  {rate:>12s}  "
                     f"{r['description']}{mark}")
    return "\n".join(lines)


__all__ = ["COLUMNS", "Grid", "OUTPUTS", "PARAMS", "RESOURCES", "Records", "evaluate", "format_sensitivity",
           "format_summary", "point_key", "run_sweep", "sensitivity"]
