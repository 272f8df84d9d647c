"""MoE-Gen's Tables 6 and 7 reproduced on its testbed C2 (validation/published/moe_gen.py).

What CI guards today (issue 3's full bar - median |error| <= 25% over all cells and every
column's ranking kept - is not met yet; the script prints where it misses):
* MoE-Gen's own Mixtral cells (the paper's headline system and models) within 25%;
* MoE-Gen beats DeepSpeed and FlexGen in decode on Mixtral, as published (moesim's
  moe-lightning does not yet lose to it as the paper's re-implementation did: a known miss);
* every "Fail" cell that is a matter of memory is predicted infeasible with the reason.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "validation" / "published" / "moe_gen.py"


@pytest.fixture(scope="module")
def cells():
    spec = importlib.util.spec_from_file_location("moe_gen_reproduction", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod, mod.reproduce()


def test_moe_gen_mixtral_cells_within_25_percent(cells):
    _, all_cells = cells
    ours = [c for c in all_cells if c.system.startswith("MoE-Gen") and c.model in ("8x7B", "8x22B")
            and c.error is not None]
    assert len(ours) >= 8
    errors = sorted(abs(c.error) for c in ours)
    assert errors[len(errors) // 2] <= 0.25, [(c.system, c.model, c.gen, c.published, c.predicted) for c in ours]


def test_moe_gen_beats_model_based_batching_in_mixtral_decode(cells):
    _, all_cells = cells
    for model in ("8x7B", "8x22B"):
        for gen in (256, 1024):
            col = {c.system: c.predicted for c in all_cells
                   if c.table == "6" and c.model == model and c.gen == gen and c.predicted is not None}
            best_moe_gen = max(col.get("MoE-Gen(H)", 0), col.get("MoE-Gen(G)", 0))
            for baseline in ("DeepSpeed", "FlexGen*"):
                if baseline in col:
                    assert best_moe_gen > col[baseline], (model, gen, baseline, col)


def test_memory_failures_are_predicted_infeasible_with_the_reason(cells):
    _, all_cells = cells
    r1 = [c for c in all_cells if c.model == "DS-R1" and c.published == "Fail" and c.system in ("vLLM", "DeepSpeed")]
    assert r1 and all(c.predicted is None and "short by" in c.reason for c in r1)
