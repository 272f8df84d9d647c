"""Validation sources for the uncertainty bands: each a function of the validation folder returning
:class:`moesim.uncertainty.Record` s (measured beside predicted, held out or not).

A new source is one entry of :data:`SOURCES`. Only held-out records inform the widths and the
coverage (:mod:`moesim.uncertainty` says how).

* ``torchbench``: the harness's measurements of each GPU (``validation/measurements/<gpu>/``, the
  file its report is about), predicted with the GPU's own profile (held-out cells only: the split of
  :mod:`.cases`), with another GPU's profile of its architecture (every cell: none was fitted on this
  GPU) and with the default profile (every cell). Kernel cases inform ``kernels.*``, host copies
  ``link.*``, the end-to-end cases (``decode_step``, ``offloaded_moe_layer``: predicted by moe-gen's
  system code) ``system.moe-gen.*``. A case lands in one fold on every GPU and profile (fold key: the
  case), so a case never scores bands its own twin derived.
* ``published``: the published corpus (:mod:`.published`, ``validation/published/``), the sources named in
  :data:`BAND_SOURCES`: MoE-Gen's Tables 6 and 7 (decode and prefill throughput of seven systems on one RTX
  A5000, uncalibrated, host link from its datasheet), AIConfigurator's silicon rows (vLLM, SGLang and
  TensorRT-LLM on H100 SXM and H200) and our own transformers cells on an H200. Each cell's split is fixed
  in its module: the cells that informed a setting are "fit" and leave the bands alone.
"""

from __future__ import annotations

import functools

from pathlib import Path
from typing import Callable

from . import published
from ..uncertainty import Provenance, Record
from .store import gpu_slug

_E2E_PHASE = {"decode_step": lambda p: "decode",
              "offloaded_moe_layer": lambda p: "decode" if p["tokens"] <= 256 else "prefill"}
_LINK_STATE = {"own": "measured", "borrowed": "borrowed", "default": "datasheet"}
_KERNEL_STATE = {"own": "own", "borrowed": "borrowed", "default": "uncalibrated"}


def torchbench_records(root: Path) -> list[Record]:
    from ..calibration.report import validation_report
    from ..db import gpus
    from ..errors import MoesimError

    out: list[Record] = []
    for folder in sorted(p for p in (root / "measurements").iterdir() if p.is_dir()):
        gpu = gpus().find(folder.name) or next((g for g in gpus().entries.values() if gpu_slug(g.name) == folder.name),
                                               None)
        if gpu is None:
            continue
        for mode in ("own", "borrowed", "default"):
            try:
                rep = validation_report(gpu.name, root, mode)
            except MoesimError:  # no profile of its own, or no donor
                continue
            for row in rep["rows"]:
                c = row.case
                if c.median_s <= 0 or row.predicted_s <= 0:
                    continue
                e2e = c.family in _E2E_PHASE
                if e2e:
                    phase = _E2E_PHASE[c.family](c.params)
                elif c.family == "copy" and str(c.params.get("kind", "")).split("_")[0] in ("h2d", "d2h"):
                    phase = "link"
                else:
                    phase = "kernel"
                prov = Provenance(gpu=gpu.name, kernels=_KERNEL_STATE[mode], link=_LINK_STATE[mode],
                                  uses_host_link=e2e, system="moe-gen" if e2e else None,
                                  context_tokens=int(c.params.get("kv_len", 0)),
                                  batch=int(c.params.get("batch", 0)))  # the model is cut to 3 layers: no size
                out.append(Record(source=f"torchbench {gpu_slug(gpu.name)} {mode} {'end-to-end' if e2e else 'kernels'}",
                                  key=f"{gpu.name}|{mode}|{c.key}", provenance=prov, phase=phase,
                                  measured=c.median_s, predicted=row.predicted_s,
                                  heldout=c.held_out if mode == "own" else True, fold_key=c.key))
    return out


def published_records(root: Path) -> list[Record]:
    """The published corpus' cells (:mod:`.published`, ``validation/published/``) of the sources in
    :data:`BAND_SOURCES`: each expressible prefill or decode cell moesim predicts, held out as its module says.
    Predicted once per folder and process (some thousand engine plans and simulated clients)."""
    return list(_published_records(Path(root).resolve()))


@functools.lru_cache(maxsize=4)
def _published_records(root: Path) -> tuple[Record, ...]:
    from .published import SOURCES as CORPUS

    if not (root / "published").is_dir():
        return ()
    return tuple(published.records(root, [n for n in BAND_SOURCES if n in CORPUS]))


#: the corpus sources whose held-out cells inform the bands (names of moesim.calibration.published.SOURCES)
BAND_SOURCES: tuple[str, ...] = ("moe-gen", "aiconfigurator", "transformers-h200")


#: every source: name -> function of the validation folder
SOURCES: dict[str, Callable[[Path], list[Record]]] = {
    "torchbench": torchbench_records,
    "published": published_records,
}


def all_records(root: Path) -> list[Record]:
    out: list[Record] = []
    for fn in SOURCES.values():
        out.extend(fn(root))
    return out
