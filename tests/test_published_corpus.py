"""The published corpus (validation/published/, moesim.calibration.published): every source loads in the common
record, splits are marked, the runner's arithmetic (error, coverage, ranking, fit vs held-out) is right, and
`moesim validate --published --quick --json` runs as CI runs it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moesim.calibration import published as pub
from moesim.calibration.sources import BAND_SOURCES
from moesim.errors import MoesimError

ROOT = Path(__file__).resolve().parents[1]
VALIDATION = ROOT / "validation"


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def corpus():
    return pub.load(VALIDATION)


def test_every_source_loads_with_citation_setup_and_split(corpus):
    assert list(corpus) == list(pub.SOURCES)
    for name, cells in corpus.items():
        assert cells, name
        for c in cells:
            assert c.source == name and c.citation and c.setup and c.row, c.key
            assert c.split in pub.SPLITS and c.figure in pub.FIGURES and c.published > 0, c.key


def test_moe_gen_cells_are_the_tables_figures(corpus):
    """Adapting moe_gen.py into the common record changed none of its figures: every numeric cell of Tables 6
    and 7, once, with its value."""
    mg = pub._load_module(VALIDATION / "published" / "moe_gen.py")
    want = {}
    for row in mg.SYSTEMS:
        for (model, gen), v in zip(mg.TABLE6_COLUMNS, mg.TABLE6[row]):
            if not isinstance(v, str):
                want[f"T6|{row}|{model}|{gen}"] = v
        for (model, _), v in zip(mg.TABLE7_COLUMNS, mg.TABLE7.get(row, [])):
            if not isinstance(v, str):
                want[f"T7|{row}|{model}|256"] = v
    got = {c.key: c.published for c in corpus["moe-gen"]}
    assert got == want
    fit = {c.key for c in corpus["moe-gen"] if c.split == "fit"}
    assert fit == {f"T6|MoE-Gen({v})|8x7B|{g}" for v in "GH" for g in (256, 1024)}


def test_unexpressible_cells_say_why_and_are_never_scored(corpus):
    cells = [c for cs in corpus.values() for c in cs if c.not_expressible]
    assert cells
    for c in cells[:20]:
        r = pub.evaluate(c)
        assert r.predicted is None and not r.scored and r.abs_error is None and r.covered is None
    s = pub.summarise([pub.evaluate(c) for c in cells])
    assert s["cells"] == 0 and s["not_expressible"] == len(cells)


def _cell(key="k", published=10.0, split="held-out", figure="decode_tok_s", row="A", column="c"):
    return pub.PublishedCell(key=key, citation="x", setup="x", row=row, model="m", hardware="h", system="s",
                             figure=figure, published=published, split=split, column=column, source="t")


def test_error_coverage_and_infeasible_by_hand():
    r = pub.Result(_cell(published=10.0), predicted=12.0, low=6.0, high=24.0)
    assert r.error == pytest.approx(0.2) and r.abs_error == pytest.approx(0.2) and r.covered
    outside = pub.Result(_cell(published=10.0), predicted=30.0, low=20.0, high=45.0)
    assert outside.error == pytest.approx(2.0) and outside.covered is False
    infeasible = pub.Result(_cell(), reason="does not fit")
    assert infeasible.error is None and infeasible.abs_error == pub.INFEASIBLE_ERROR and infeasible.covered is False


def test_fit_and_heldout_reported_apart_by_hand():
    rs = [pub.Result(_cell("a", 10.0, "fit"), predicted=11.0, low=1, high=100),      # 10%
          pub.Result(_cell("b", 10.0, "fit"), predicted=13.0, low=1, high=100),      # 30%
          pub.Result(_cell("c", 10.0), predicted=15.0, low=12, high=20),             # 50%, outside
          pub.Result(_cell("d", 10.0), predicted=8.0, low=1, high=100),              # 20%
          pub.Result(_cell("e", 10.0), reason="infeasible")]                          # 100%
    s = pub.summarise(rs)
    assert (s["cells"], s["fit_cells"], s["heldout_cells"], s["infeasible"]) == (5, 2, 3, 1)
    assert s["fit_median_abs_err"] == pytest.approx(0.2)
    assert s["heldout_median_abs_err"] == pytest.approx(0.5)
    assert s["median_abs_err"] == pytest.approx(0.3)
    assert s["coverage"] == pytest.approx(3 / 5) and s["heldout_coverage"] == pytest.approx(1 / 3)


def test_ranking_kept_only_where_published_figures_differ_enough():
    a = pub.Result(_cell("a", 30.0, row="fast"), predicted=5.0)
    b = pub.Result(_cell("b", 10.0, row="slow"), predicted=6.0)   # 3x apart published, order flipped
    c = pub.Result(_cell("c", 12.0, row="close"), predicted=1.0)  # 1.2x from b: not a ranked pair
    other = pub.Result(_cell("d", 1.0, row="x", column="other"), predicted=100.0)  # another column
    viol = pub.ranking_violations([a, b, c, other])
    # pairs: fast/slow (3x, flipped) and fast/close (2.5x, kept: 5 > 1); slow/close is 1.2x, not a pair
    assert len(viol) == 1 and "fast 30" in viol[0] and "slow 10" in viol[0]
    assert pub.ranking_pairs([a, b, c, other]) == 2
    assert not pub.ranking_violations([pub.Result(a.cell, predicted=20.0), b, c])


def test_a_cell_needs_a_known_split_figure_and_positive_value():
    for bad in ({"split": "train"}, {"figure": "speed"}, {"published": 0.0}):
        with pytest.raises(MoesimError):
            pub.PublishedCell(**{**_cell().__dict__, **bad})
    with pytest.raises(MoesimError, match="unknown keys"):
        pub._as_cell({**{k: v for k, v in _cell().__dict__.items()}, "colour": 1}, "t")


def test_unavailable_names_what_is_missing():
    assert "no `no-such-system` serving system" in pub.unavailable(system="no-such-system")
    assert "no-such-model" in pub.unavailable(model="no-such-model", system="vllm")
    assert pub.unavailable(model="mixtral-8x7b", system="vllm", hardware="t4") == ""


def test_bands_read_the_corpus():
    """sources.published_records is the corpus' cells of BAND_SOURCES (MoE-Gen's tables, AIConfigurator's rows,
    our transformers cells): held out as each module marks them; a row's TTFT and TPOT share a fold."""
    from moesim.calibration.sources import published_records

    recs = published_records(VALIDATION)
    moe_gen = [r for r in recs if r.source == "moe-gen paper (C2: RTX A5000)"]
    assert sum(not r.heldout for r in moe_gen) == 4 and sum(r.heldout for r in moe_gen) >= 50
    aic = [r for r in recs if r.source == "published: aiconfigurator"]
    assert aic, "validation/data's AIConfigurator CSV is committed: its rows must be band cells"
    assert any(r.heldout for r in aic) and any(not r.heldout for r in aic)
    held = ("H200", "B200", "B300", "GB200")  # GB300's expressible rows are disaggregated, which the corpus leaves out
    assert all(r.heldout == (r.provenance.gpu in held) for r in aic)  # H100 rows fit, the rest scored
    assert {r.provenance.gpu for r in aic if r.heldout} == set(held)
    by_row: dict = {}
    for r in aic:
        by_row.setdefault(r.key.split("|")[0], set()).add(r.fold)
    assert all(len(folds) == 1 for folds in by_row.values())


def test_cli_quick_json_runs_every_source():
    p = subprocess.run([sys.executable, "-m", "moesim", "validate", "--published", "--quick", "--json"], cwd=ROOT,
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert [s["name"] for s in data["sources"]] == list(pub.SOURCES)
    for s in data["sources"]:
        for key in ("cells", "heldout_cells", "median_abs_err", "heldout_median_abs_err", "coverage"):
            assert key in s
        assert s["coverage_in_sample"] is (s["name"] in BAND_SOURCES)  # the bands came from those sources' cells
        assert s["cells"] <= pub.QUICK_CELLS
    assert "heldout_median_abs_err" in data
    scored = [c for c in data["cells_detail"] if c["predicted"] is not None]
    assert scored and all(c["low"] <= c["predicted"] <= c["high"] for c in scored)
    for c in scored:
        assert c["error"] == pytest.approx(c["predicted"] / c["published"] - 1)


def test_cli_text_report_and_missing_corpus(tmp_path):
    p = subprocess.run([sys.executable, "-m", "moesim", "validate", "--published", "--quick", "--source",
                        "llama-cpp"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "llama-cpp" in p.stdout and "not expressible yet" in p.stdout
    # a validation folder without the corpus (what an installed package run outside a checkout finds)
    p = subprocess.run([sys.executable, "-m", "moesim", "validate", "--published", "--root",
                        str(tmp_path / "validation")], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "validation/published" in p.stderr and "checkout" in p.stderr
    p = subprocess.run([sys.executable, "-m", "moesim", "validate", "--published", "--source", "nope"], cwd=ROOT,
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "unknown published source" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-m", "moesim", "validate", "--quick"], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "--published" in p.stderr


def test_nan_free_json_numbers():
    rs = {"t": [pub.Result(_cell(split="fit"), predicted=11.0, low=1, high=100)]}
    data = pub.report_json(rs)
    assert data["heldout_median_abs_err"] is None and data["sources"][0]["heldout_median_abs_err"] is None
    assert not any(isinstance(v, float) and math.isnan(v) for v in data["sources"][0].values())
