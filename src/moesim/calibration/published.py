"""The published corpus: measurements from papers, READMEs and pull requests, each cell with the setup
as its source states it, predicted by moesim with default parameters.

One module per source lives in ``validation/published/`` of a checkout (not in the installed wheel).
Each exposes one function, ``cells()``, returning :class:`PublishedCell` s (or dicts with the same
keys); :data:`SOURCES` names the module file of every source: adding a source is one line there.
Both ``moesim validate --published`` (:func:`run`) and the uncertainty bands
(:func:`moesim.calibration.sources.published_records`) read the corpus through :func:`load`.

Rules every source module keeps (the project's, restated where they are applied):

* a cell sets only what its source states: hardware (a platform, or a GPU composed with the stated
  CPU, host memory and link), the workload, the serving system and its variant or version, and the
  flags or policy the source prints (``params``). Whatever the source leaves unstated takes moesim's
  default; nothing is chosen because it matches.
* ``split`` is fixed in the source module, before anything is fitted: ``"fit"`` cells may inform a
  constant of moesim (a cell that already did says which, in ``note``), ``"held-out"`` cells are only
  scored. Held-out error is reported apart (:func:`summarise`).
* a cell moesim cannot express yet (a model, GPU, CPU or system moesim lacks) keeps its figure and
  says why in ``not_expressible``; the runner counts it apart and never scores it.

Error of a cell: predicted / published - 1 (a rate's error is the rate's, a time's the time's).
Coverage: the fraction of scored cells whose published figure lies in the prediction's band
``[<figure>_low, <figure>_high]`` (:mod:`moesim.uncertainty`, the committed widths). A cell moesim
predicts to be infeasible although the source ran it counts as an error of 100% (outside every band).
Ranking: in one column (same source, table, model, hardware and workload; different systems or
variants), every pair whose published figures differ by 1.5x or more must keep its order.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import MoesimError

#: source name -> its module under ``validation/published/`` (each exposes ``cells()``). One line per source.
SOURCES: dict[str, str] = {
    "moe-gen": "moe_gen.py",
    "moe-lightning": "moe_lightning.py",
    "flexgen": "flexgen_paper.py",
    "ktransformers": "ktransformers.py",
    "llama-cpp": "llama_cpp.py",
    "moe-cap": "moe_cap.py",
    "moe-infinity": "moe_infinity.py",
    "aiconfigurator": "aiconfigurator.py",
    "transformers-h200": "transformers_h200.py",
    "inferencex": "inferencex.py",
}

SPLITS = ("fit", "held-out")
#: figures a cell may publish (moesim.Prediction attributes, each with a band)
FIGURES = ("prefill_tok_s", "decode_tok_s", "throughput_tok_s", "ttft_s", "tpot_s", "total_time_s")
#: a figure's phase for the uncertainty records (throughput and total time span both: not exported)
_PHASE = {"prefill_tok_s": "prefill", "ttft_s": "prefill", "decode_tok_s": "decode", "tpot_s": "decode"}
#: an infeasible prediction of a cell the source ran scores as this |error| (the prediction is unusable)
INFEASIBLE_ERROR = 1.0
#: published figures this far apart (ratio) must keep their order in the prediction
RANKING_RATIO = 1.5
#: cells per source in ``--quick`` (the first expressible ones, in the module's order)
QUICK_CELLS = 2


@dataclass(frozen=True)
class PublishedCell:
    """One published measurement and the setup its source states.

    ``model``/``hardware``/``system``: moesim names (``system``: the moesim system that runs it);
    ``knobs``: other Scenario fields the source states (``num_gpus``, ``cpu``, ``host_memory_bytes``,
    ``pcie``, ``dtype``, ``mla_absorbed``, ...); ``params``: the system's parameters the source states
    (its flags, its printed policy); ``workload``: ``num_requests``, ``prompt_tokens``, ``gen_tokens``,
    ``batch_size``. ``setup``: the setup in the source's words (hardware, host, software and version);
    ``row``: the system as the source names it (``"FlexGen(c)"``, ``"vLLM v0.8.5"``); ``column``: what
    the cell is compared with for the ranking (default: its table, model, hardware and workload)."""

    key: str
    citation: str
    setup: str
    row: str
    model: str
    hardware: str
    system: str
    figure: str
    published: float
    split: str = "held-out"
    workload: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    knobs: dict[str, Any] = field(default_factory=dict)
    table: str = ""
    column: str = ""
    not_expressible: str = ""
    note: str = ""
    source: str = ""
    fold: str = ""  # cells that must land in one fold of the band's cross-fit (e.g. a row's TTFT and TPOT)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise MoesimError(f"published cell {self.key}: split must be one of {SPLITS}, not {self.split!r}")
        if self.figure not in FIGURES:
            raise MoesimError(f"published cell {self.key}: figure must be one of {FIGURES}, not {self.figure!r}")
        if not self.published > 0:
            raise MoesimError(f"published cell {self.key}: published figure must be positive ({self.published})")

    @property
    def column_key(self) -> str:
        if self.column:
            return f"{self.source}|{self.column}"
        w = self.workload
        return (f"{self.source}|{self.table}|{self.model}|{self.hardware}|{sorted(self.knobs.items())}|"
                f"{w.get('prompt_tokens')}|{w.get('gen_tokens')}|{self.figure}")


@dataclass
class Result:
    """A cell and what moesim predicts for it (``predicted`` None: infeasible, ``reason`` says why)."""

    cell: PublishedCell
    predicted: float | None = None
    low: float | None = None
    high: float | None = None
    reason: str = ""
    uncertainty: dict | None = None

    @property
    def scored(self) -> bool:
        return not self.cell.not_expressible

    @property
    def error(self) -> float | None:
        """predicted / published - 1; None when not expressible or infeasible."""
        if not self.scored or self.predicted is None:
            return None
        return self.predicted / self.cell.published - 1.0

    @property
    def abs_error(self) -> float | None:
        if not self.scored:
            return None
        return INFEASIBLE_ERROR if self.predicted is None else abs(self.error)

    @property
    def covered(self) -> bool | None:
        if not self.scored:
            return None
        if self.predicted is None or self.low is None:
            return False
        return self.low * (1 - 1e-12) <= self.cell.published <= self.high * (1 + 1e-12)


# -- loading -------------------------------------------------------------------------------------------

def published_dir(root: Path | None = None) -> Path:
    """``validation/published`` of a checkout (``root``: its validation folder, default
    :func:`moesim.paths.validation_root`)."""
    from ..paths import validation_root

    folder = validation_root(root) / "published"
    if not folder.is_dir():
        raise MoesimError(f"no published corpus at {folder}: the corpus lives in a checkout of moesim "
                          "(validation/published/), not in the installed package; run from the repository root "
                          "or pass --root")
    return folder


def load_module(stem: str, root: Path | None = None):
    """The corpus module ``validation/published/<stem>.py`` of a checkout, loaded once per process (the runner, the
    tests and scripts share the one copy)."""
    return _load_module(published_dir(root) / f"{stem}.py")


def _load_module(path: Path):
    name = f"_moesim_published_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    return module


def _as_cell(c: Any, source: str) -> PublishedCell:
    if isinstance(c, PublishedCell):
        return c if c.source == source else PublishedCell(**{**{f.name: getattr(c, f.name) for f in fields(c)},
                                                              "source": source})
    if isinstance(c, dict):
        known = {f.name for f in fields(PublishedCell)}
        extra = sorted(set(c) - known)
        if extra:
            raise MoesimError(f"source {source}: unknown keys in a cell: {', '.join(extra)}")
        return PublishedCell(**{**c, "source": source})
    raise MoesimError(f"source {source}: cells() returned a {type(c).__name__}, not a PublishedCell or dict")


def load(root: Path | None = None, names: list[str] | None = None) -> dict[str, list[PublishedCell]]:
    """Every source's cells (``names``: only these), in :data:`SOURCES` order."""
    folder = published_dir(root)
    unknown = [n for n in names or [] if n not in SOURCES]
    if unknown:
        raise MoesimError(f"unknown published source {', '.join(unknown)}; sources: {', '.join(SOURCES)}")
    out: dict[str, list[PublishedCell]] = {}
    for name, filename in SOURCES.items():
        if names and name not in names:
            continue
        path = folder / filename
        if not path.is_file():
            raise MoesimError(f"published source {name}: no module {path}")
        module = _load_module(path)
        # ``published_cells()`` where a module's ``cells()`` means something else (its measurements)
        make = getattr(module, "published_cells", None) or getattr(module, "cells", None)
        if make is None:
            raise MoesimError(f"published source {name}: {path.name} has no cells() (nor published_cells())")
        cells = [_as_cell(c, name) for c in make()]
        keys = [c.key for c in cells]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise MoesimError(f"published source {name}: duplicate cell keys {', '.join(dup[:3])}")
        out[name] = cells
    return out


def quick_subset(cells: list[PublishedCell], n: int = QUICK_CELLS) -> list[PublishedCell]:
    """The first ``n`` expressible cells of a source, plus its unexpressible ones (listed, not predicted)."""
    expressible = [c for c in cells if not c.not_expressible][:n]
    return expressible + [c for c in cells if c.not_expressible]


# -- predicting ----------------------------------------------------------------------------------------

#: scenario -> (moesim's Prediction, or None with the reason it is infeasible); cells of one scenario share it
_cache: dict[str, tuple[Any, str]] = {}


def _scenario_key(c: PublishedCell) -> str:
    return repr((c.model, c.hardware, c.system, sorted(c.workload.items()), sorted(c.params.items()),
                 sorted(c.knobs.items())))


def evaluate(cell: PublishedCell) -> Result:
    """moesim's prediction of one cell (default parameters, plus what the cell states)."""
    import moesim
    from ..errors import InfeasibleError

    if cell.not_expressible:
        return Result(cell)
    skey = _scenario_key(cell)
    if skey not in _cache:
        try:
            _cache[skey] = (moesim.predict(cell.model, cell.hardware, cell.system, dict(cell.workload),
                                           system_params=dict(cell.params), **cell.knobs), "")
        except InfeasibleError as exc:
            _cache[skey] = (None, str(exc).splitlines()[0])
        except MoesimError as exc:  # a cell the module wrote wrongly: say which
            raise MoesimError(f"published cell {cell.source}/{cell.key}: {exc}") from exc
    p, reason = _cache[skey]
    if p is None:
        return Result(cell, reason=reason)
    return Result(cell, predicted=float(getattr(p, cell.figure)), low=float(getattr(p, f"{cell.figure}_low")),
                  high=float(getattr(p, f"{cell.figure}_high")), uncertainty=p.uncertainty)


def evaluate_all(sources: dict[str, list[PublishedCell]], root: Path | None = None) -> dict[str, list[Result]]:
    """Every cell's Result: by its module's own ``evaluate(cell)`` where it has one (a source whose figure is not
    a plain prediction's, e.g. a benchmark's mean TTFT over a closed-loop client), else :func:`evaluate`."""
    folder = published_dir(root)
    out = {}
    for name, cells in sources.items():
        own = getattr(_load_module(folder / SOURCES[name]), "evaluate", None) if name in SOURCES else None
        out[name] = [own(c) if own and not c.not_expressible else evaluate(c) for c in cells]
    return out


def band_of(prediction: Any, figure: str, value: float) -> tuple[float, float]:
    """``value`` with the band ``prediction`` puts around its ``figure`` (the same factors): for a source module
    that computes its figure itself from the plan moesim predicts with."""
    mid = float(getattr(prediction, figure))
    if mid <= 0:
        return value, value
    return (value * float(getattr(prediction, f"{figure}_low")) / mid,
            value * float(getattr(prediction, f"{figure}_high")) / mid)


# -- summarising ---------------------------------------------------------------------------------------

def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def _coverage(results: list[Result]) -> float:
    hits = [r.covered for r in results if r.scored]
    return sum(hits) / len(hits) if hits else math.nan


def _columns(results: list[Result]) -> list[list[Result]]:
    """The scored, feasible results grouped by column (``cell.column_key``): the cells a ranking compares."""
    cols: dict[str, list[Result]] = {}
    for r in results:
        if r.scored and r.predicted is not None:
            cols.setdefault(r.cell.column_key, []).append(r)
    return list(cols.values())


def ranking_violations(results: list[Result], ratio: float = RANKING_RATIO) -> list[str]:
    """Pairs of one column whose published figures differ by ``ratio`` or more and whose predicted order flips
    (a time: smaller is faster; a rate: larger). Infeasible predictions take no part."""
    out = []
    for group in _columns(results):
        for a in group:
            for b in group:
                if a.cell.published >= ratio * b.cell.published and not a.predicted > b.predicted:
                    c = a.cell
                    out.append(f"{c.source} {c.table} {c.model} on {c.hardware} ({c.figure}): {a.cell.row} "
                               f"{a.cell.published:g} >= {ratio}x {b.cell.row} {b.cell.published:g} published, "
                               f"predicted {a.predicted:.3g} <= {b.predicted:.3g}")
    return out


def ranking_pairs(results: list[Result], ratio: float = RANKING_RATIO) -> int:
    """Pairs of one column whose published figures differ by ``ratio`` or more (those :func:`ranking_violations`
    checks)."""
    return sum(1 for g in _columns(results) for a in g for b in g if a.cell.published >= ratio * b.cell.published)


def summarise(results: list[Result]) -> dict[str, Any]:
    """Counts, median |error| of fit and held-out cells apart, coverage, ranking (one source or several)."""
    scored = [r for r in results if r.scored]
    held = [r for r in scored if r.cell.split == "held-out"]
    fit = [r for r in scored if r.cell.split == "fit"]
    return {
        "cells": len(scored), "heldout_cells": len(held), "fit_cells": len(fit),
        "not_expressible": sum(not r.scored for r in results),
        "infeasible": sum(r.predicted is None for r in scored),
        "median_abs_err": _median([r.abs_error for r in scored]),
        "heldout_median_abs_err": _median([r.abs_error for r in held]),
        "fit_median_abs_err": _median([r.abs_error for r in fit]),
        "coverage": _coverage(scored), "heldout_coverage": _coverage(held),
        "ranking_pairs": ranking_pairs(results), "ranking_violations": len(ranking_violations(results)),
    }


def by_system(results: list[Result]) -> dict[str, dict[str, Any]]:
    """:func:`summarise` per (source, published row) of scored cells."""
    groups: dict[str, list[Result]] = {}
    for r in results:
        if r.scored:
            groups.setdefault(f"{r.cell.source}: {r.cell.row}", []).append(r)
    return {k: summarise(v) for k, v in groups.items()}


def run(root: Path | None = None, names: list[str] | None = None, quick: bool = False) -> dict[str, list[Result]]:
    sources = load(root, names)
    if quick:
        sources = {k: quick_subset(v) for k, v in sources.items()}
    return evaluate_all(sources, root)


def report_json(results: dict[str, list[Result]]) -> dict[str, Any]:
    """The ``--json`` object: per source its counts, errors and coverage (``coverage_in_sample``: the committed bands
    were derived from this source's held-out cells, so its coverage is in-sample); the same over all."""
    from .sources import BAND_SOURCES

    def clean(x):
        return None if isinstance(x, float) and math.isnan(x) else x

    everything = [r for rs in results.values() for r in rs]
    sources = []
    for name, rs in results.items():
        s = summarise(rs)
        sources.append({"name": name, **{k: clean(v) for k, v in s.items()}, "coverage_in_sample": name in BAND_SOURCES,
                        "not_expressible_cells": [{"key": r.cell.key, "reason": r.cell.not_expressible}
                                                  for r in rs if not r.scored]})
    total = summarise(everything)
    return {"sources": sources, **{k: clean(v) for k, v in total.items()},
            "cells_detail": [{"source": r.cell.source, "key": r.cell.key, "split": r.cell.split,
                              "figure": r.cell.figure, "published": r.cell.published, "predicted": r.predicted,
                              "low": r.low, "high": r.high, "error": r.error, "infeasible": r.reason or None}
                             for r in everything if r.scored]}


def records(root: Path | None = None, names: list[str] | None = None):
    """The corpus as :class:`moesim.uncertainty.Record` s for the bands: every expressible cell of a prefill or
    decode figure that moesim predicts (held-out as the cell says; infeasible cells have no error to use)."""
    from ..uncertainty import Provenance, Record

    out = []
    for name, rs in run(root, names).items():
        for r in rs:
            if not r.scored or r.predicted is None or r.cell.figure not in _PHASE or not r.uncertainty:
                continue
            prov = Provenance(**r.uncertainty["provenance"])
            out.append(Record(source=SOURCE_LABELS.get(name, f"published: {name}"), key=r.cell.key,
                              provenance=prov, phase=_PHASE[r.cell.figure], measured=r.cell.published,
                              predicted=r.predicted, heldout=r.cell.split == "held-out",
                              fold_key=f"{name}|{r.cell.fold}" if r.cell.fold else ""))
    return out


#: labels of the sources in the band derivation (the MoE-Gen paper's keeps the label its widths were derived under)
SOURCE_LABELS = {"moe-gen": "moe-gen paper (C2: RTX A5000)"}


def unavailable(model: str | None = None, system: str | None = None, hardware: str | None = None) -> str:
    """Why moesim cannot express a cell yet ("" when it can): the model, serving system or hardware it names has no
    entry in this installation. Source modules call it so that a cell becomes expressible by itself when the entry
    arrives (a merged system, a new database file)."""
    from .. import systems
    from ..db.resolve import get_hardware, get_model
    from ..errors import UnknownNameError

    if system is not None and system not in systems.SYSTEMS:
        return f"no `{system}` serving system in moesim"
    for kind, name, fn in (("model", model, get_model), ("hardware", hardware, get_hardware)):
        if name is None:
            continue
        try:
            fn(name)
        except UnknownNameError:
            return f"no {kind} entry {name!r} in moesim's database"
    return ""
