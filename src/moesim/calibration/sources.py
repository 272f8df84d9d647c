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
* ``moe-gen-paper``: MoE-Gen's Tables 6 and 7 (``validation/published/moe_gen.py``: decode and prefill
  throughput of seven systems on one RTX A5000, uncalibrated, host link from its datasheet), every cell
  with a number. Held out in that nothing is fitted to a cell; the reproduction's per-system settings
  do read the paper (its docstring gives each one's evidence).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Callable

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


def _load_script(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def moe_gen_paper_records(root: Path) -> list[Record]:
    import moesim
    from ..errors import InfeasibleError
    from ..predict import _hidden, headline_figures, plan_scenario
    from ..scenario import build
    from ..uncertainty import provenance

    script = root / "published" / "moe_gen.py"
    if not script.is_file():
        return []
    mg = _load_script(script, "_moesim_moe_gen_reproduction")
    out: list[Record] = []
    for row, system in mg.SYSTEMS.items():
        if system not in moesim.systems.SYSTEMS:
            continue
        cells = [("6", model, gen, pub) for (model, gen), pub in zip(mg.TABLE6_COLUMNS, mg.TABLE6[row])]
        cells += [("7", model, 256, pub) for (model, _), pub in zip(mg.TABLE7_COLUMNS, mg.TABLE7.get(row, []))]
        for table, model, gen, pub in cells:
            if isinstance(pub, str):
                continue
            hw, over = mg._hardware(model, system)
            scenario = build(mg.MODELS[model], hw, system,
                             {"num_requests": mg.REQUESTS, "prompt_tokens": 512, "gen_tokens": gen},
                             system_params=mg.system_params(system, model), **over)
            try:  # planned as moesim.predict plans it (the band itself is not needed, only what it rests on)
                ctx, plan, _, _ = plan_scenario(scenario)
            except InfeasibleError:
                continue
            prov = provenance(ctx, plan, _hidden(plan.mid_decode[1]))
            phase = "decode" if table == "6" else "prefill"
            value = headline_figures(ctx, plan)["decode_tok_s" if phase == "decode" else "prefill_tok_s"]
            # a rate, as published (its |log error| is that of its time; the relative error is the rate's)
            out.append(Record(source="moe-gen paper (C2: RTX A5000)", key=f"T{table}|{row}|{model}|{gen}",
                              provenance=prov, phase=phase, measured=float(pub), predicted=value,
                              heldout=True))
    return out


def aiconfigurator_records(root: Path) -> list[Record]:
    """AIConfigurator's measured vLLM / SGLang / TensorRT-LLM runs (``validation/published/aiconfigurator.py``):
    TPOT as a decode record and TTFT as a prefill record per expressible row, held out where that module's split
    (fixed in code: H100 rows fit, H200 rows scored) says so; a row's two records share its fold."""
    from ..errors import MoesimError
    from ..predict import _hidden, plan_scenario
    from ..uncertainty import provenance

    script = root / "published" / "aiconfigurator.py"
    if not script.is_file():
        return []
    A = _load_script(script, "_moesim_aiconfigurator")
    try:
        rows = A.load_rows()
    except FileNotFoundError:
        return []
    out: list[Record] = []
    for row in rows:
        if A.expressible(row) is not None:
            continue
        ttft, tpot, _ = A.predict_row(row)
        if not ttft or not tpot:
            continue
        try:
            ctx, plan, _, _ = plan_scenario(A.scenario_of(row))
        except MoesimError:
            continue
        prov = provenance(ctx, plan, _hidden(plan.mid_decode[1]))
        source = f"aiconfigurator {row['backend']} ({row['system'].split('_')[0].upper()})"
        for phase, measured_ms, predicted in (("decode", row["silicon_tpot_ms"], tpot),
                                              ("prefill", row["silicon_ttft_ms"], ttft)):
            out.append(Record(source=source, key=f"{row['id']}|{phase}", provenance=prov, phase=phase,
                              measured=float(measured_ms) / 1e3, predicted=predicted,
                              heldout=A.split_of(row) == "held-out", fold_key=row["id"]))
    return out


def transformers_h200_records(root: Path) -> list[Record]:
    """Our H200 measurements of Hugging Face ``generate`` (``validation/published/transformers_h200.py``):
    prefill and per-step decode cells that ``generate`` runs, held out where that module's split (fixed in code:
    fit on OLMoE and Qwen1.5-MoE, score the other models) says so."""
    script = root / "published" / "transformers_h200.py"
    if not script.is_file():
        return []
    T = _load_script(script, "_moesim_transformers_h200")
    try:
        cells = T.cells()
    except SystemExit:  # no measurement file
        return []
    from ..db.resolve import get_model

    out: list[Record] = []
    for c in T.errors(cells):
        if not T.in_generate(c) or c["predicted_s"] <= 0:
            continue
        phase = "prefill" if c["phase"] == "prefill" else "decode"
        model = get_model(c["model"])
        prov = Provenance(gpu="H200", kernels="own", link="measured", uses_host_link=bool(c["offload"]),
                          system="transformers", num_gpus=1, context_tokens=int(c["prompt"]), batch=int(c["batch"]),
                          total_params=float(model.total_params))
        key = f"{c['model']}|{c['kind']}|{c['impl']}|b{c['batch']}|p{c['prompt']}"
        out.append(Record(source="transformers H200 (ours)", key=key, provenance=prov, phase=phase,
                          measured=float(c["measured_s"]), predicted=float(c["predicted_s"]),
                          heldout=c["split"] == "held-out"))
    return out


#: every source: name -> function of the validation folder
SOURCES: dict[str, Callable[[Path], list[Record]]] = {
    "torchbench": torchbench_records,
    "moe-gen-paper": moe_gen_paper_records,
    "aiconfigurator": aiconfigurator_records,
    "transformers-h200": transformers_h200_records,
}


def all_records(root: Path) -> list[Record]:
    out: list[Record] = []
    for fn in SOURCES.values():
        out.extend(fn(root))
    return out
