"""Repeat hf_generate.py's forward-only decode cells (batched_mm and eager) and its generate cells on another lease.

The 2026-12-03 campaign (``hf_generate.py``, one lease) put Qwen3-30B-A3B's forward-only batched_mm decode 13-21 %
under the prediction while the same model's batched_mm decode inside ``generate`` on other leases sat within 4 %; this
script measures the same cells again on a new lease, with hf_generate.py's own functions (so its method exactly):

1. ``cells``: for every model of the campaign (FIT and held-out), hf_generate.run_cells with the ``batched_mm`` and
   ``eager`` backends over the campaign's batches and prompts: each cell is 3 prefills of ``batch x prompt`` tokens
   (median of the reps after the first) then 6 single-token decode forwards on the last prefill's cache with the same
   backend (median of the steps after the first); wall time between ``torch.cuda.synchronize()`` calls, since the
   host's Python is part of what a user's forward costs; the campaign's batched_mm gather limit and budget skips;
2. ``micro``: hf_decode_steps.part_micro (host time per call of small CUDA ops in bursts, the eager loop body at
   decode shapes), so this lease's host speed compares with the others';
3. ``generate``: hf_generate.run_generate (grouped_mm, which generate decodes as batched_mm, and eager; b = 1, 16;
   a warm-up call of the timed length, then GEN_REPS calls of each length).

Every cell goes to ``$OUT/hf_generate.json`` (hf_generate.py's format: a campaign file for
validation/published/transformers_h200.py, pooled with the others by its LEASE_RULE) as soon as it is measured,
the micro-benchmarks to ``$OUT/hf_repeat_micro.json``. Device: ``PYTHONUNBUFFERED=1 python hf_repeat.py --out $OUT``;
CPU check: ``python hf_repeat.py --tiny --out /tmp/x``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import hf_generate as G  # noqa: E402

MODELS = ("olmoe-1b-7b", "qwen1.5-moe-a2.7b", "deepseek-v2-lite", "qwen3-30b-a3b", "mixtral-8x7b")
#: share of the budget per model in the cells pass and in the generate pass (cumulative deadlines: time a model
#: leaves over goes to the next), from the 2026-12-03 campaign's times of the same cells
CELL_SHARES = {"olmoe-1b-7b": 0.07, "qwen1.5-moe-a2.7b": 0.08, "deepseek-v2-lite": 0.09, "qwen3-30b-a3b": 0.11,
               "mixtral-8x7b": 0.03}
MICRO_SHARE = 0.06
GEN_SHARES = {"olmoe-1b-7b": 0.1, "qwen1.5-moe-a2.7b": 0.1, "deepseek-v2-lite": 0.12, "qwen3-30b-a3b": 0.17,
              "mixtral-8x7b": 0.07}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/hf_repeat"))
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--budget-s", type=float, default=400.0)
    ap.add_argument("--no-generate", action="store_true")
    args = ap.parse_args()
    G.T0 = t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    entries = json.loads((HERE / "hf_configs.json").read_text())["models"]
    meta = G.campaign_meta(args, entries, harness="hf_repeat.py",
                           method="hf_generate.py's run_cells (batched_mm, eager) and run_generate: wall time "
                                  "between torch.cuda.synchronize() calls; prefill median of reps after the first; "
                                  "decode median of steps after the first; generate: warm-up call of the timed "
                                  "length, then GEN_REPS calls of each length")
    rec = G.Recorder(out, meta)

    def build(key):
        entry = entries[key]
        layers = 2 if args.tiny else int(entry["measured_layers"])
        tb = time.perf_counter()
        model, config = G.build(entry, layers, args.tiny)
        rec.note(f"[{time.perf_counter() - t0:6.1f} s] built {key} ({layers} layers) in {time.perf_counter() - tb:.1f} s")
        return model, config, layers

    def free(model):
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    share = 0.0
    for key in MODELS:  # 1. forward-only prefill + decode cells, batched_mm and eager
        share += CELL_SHARES[key]
        deadline = t0 + share * args.budget_s
        try:
            model, config, layers = build(key)
            G.run_cells(rec, model, config, key, layers, deadline, config.vocab_size, impls=("batched_mm", "eager"))
            free(model)
        except Exception as err:  # noqa: BLE001  (one failing model must not lose the campaign)
            rec.note(f"cells {key} failed: {type(err).__name__}: {err}")
            rec.note(traceback.format_exc()[-1500:])
    rec.note(f"[{time.perf_counter() - t0:6.1f} s] cells done")

    share += MICRO_SHARE  # 2. host micro-benchmarks of this lease
    try:
        import hf_decode_steps as D

        mrec = D.Recorder(out / "hf_repeat_micro.json", dict(meta, configs=None, part="micro"))
        D.part_micro(mrec, args.tiny)
        mrec.flush()
        rec.note(f"[{time.perf_counter() - t0:6.1f} s] micro done")
    except Exception as err:  # noqa: BLE001
        rec.note(f"micro failed: {type(err).__name__}: {err}")
        rec.note(traceback.format_exc()[-1500:])

    if not args.no_generate:  # 3. generate cells
        for key in MODELS:
            share += GEN_SHARES[key]
            deadline = t0 + share * args.budget_s
            if time.perf_counter() > deadline - 3:
                rec.note(f"generate {key}: skipped (budget)")
                continue
            try:
                model, config, layers = build(key)
                G.run_generate(rec, model, key, layers, deadline, config.vocab_size)
                free(model)
            except Exception as err:  # noqa: BLE001
                rec.note(f"generate {key} failed: {type(err).__name__}: {err}")
                rec.note(traceback.format_exc()[-1500:])
    rec.data["meta"]["finished_s"] = time.perf_counter() - t0
    rec.flush()
    G.table(rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
