"""`moesim validate --published`: the published corpus (:mod:`moesim.calibration.published`) as a report."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"


def run(args: argparse.Namespace) -> int:
    from ..calibration import published as pub

    root = Path(args.root) if args.root else None
    results = pub.run(root, args.source, quick=args.quick)
    if args.json:
        print(json.dumps(pub.report_json(results), indent=1))
        return 0
    everything = [r for rs in results.values() for r in rs]
    print("published corpus" + (" (--quick: the first cells of each source)" if args.quick else "")
          + ": each cell predicted with moesim's defaults plus what its source states; error = predicted / "
          "published - 1; an infeasible prediction of a cell the source ran counts as 100%; coverage = published "
          "figure inside the prediction's band")
    head = (f"{'source':16s} {'cells':>5s} {'fit':>4s} {'held':>5s} {'n/e':>4s} {'infeas':>6s} {'median |err|':>12s} "
            f"{'fit':>7s} {'held-out':>9s} {'coverage':>9s} {'held-out':>9s} {'ranking kept':>13s}")
    print("\n" + head)
    rows = list(results.items()) + [("all", everything)]
    for name, rs in rows:
        s = pub.summarise(rs)
        kept = f"{s['ranking_pairs'] - s['ranking_violations']}/{s['ranking_pairs']}"
        print(f"{name:16s} {s['cells']:5d} {s['fit_cells']:4d} {s['heldout_cells']:5d} {s['not_expressible']:4d} "
              f"{s['infeasible']:6d} {_pct(s['median_abs_err']):>12s} {_pct(s['fit_median_abs_err']):>7s} "
              f"{_pct(s['heldout_median_abs_err']):>9s} {_pct(s['coverage']):>9s} {_pct(s['heldout_coverage']):>9s} "
              f"{kept:>13s}")
    from ..calibration.sources import BAND_SOURCES

    print("(cells: scored cells; n/e: cells not expressible yet, listed below and never scored; coverage: all "
          "scored cells, then held-out ones, with the committed bands - derived from the held-out cells of "
          f"{', '.join(BAND_SOURCES)}, so theirs is in-sample; `moesim validate` prints their out-of-fold coverage)")
    print(f"\nper source and system (as the source names it):\n{'':58s} {'cells':>5s} {'held':>5s} {'infeas':>6s} "
          f"{'median |err|':>12s} {'held-out':>9s} {'coverage':>9s}")
    for key, s in pub.by_system(everything).items():
        print(f"{key[:58]:58s} {s['cells']:5d} {s['heldout_cells']:5d} {s['infeasible']:6d} "
              f"{_pct(s['median_abs_err']):>12s} {_pct(s['heldout_median_abs_err']):>9s} {_pct(s['coverage']):>9s}")
    viol = pub.ranking_violations(everything)
    if viol:
        print(f"\nranking not kept ({len(viol)} pairs published >= {pub.RANKING_RATIO}x apart):")
        for v in viol:
            print(f"  {v}")
    infeasible = [r for r in everything if r.scored and r.predicted is None]
    if infeasible:
        print(f"\ncells the source ran that moesim predicts cannot run ({len(infeasible)}):")
        for r in infeasible:
            print(f"  {r.cell.source} {r.cell.key}: {r.reason}")
    missing = [r for r in everything if not r.scored]
    if missing:
        reasons: dict[tuple[str, str], list[str]] = {}
        for r in missing:
            reasons.setdefault((r.cell.source, r.cell.not_expressible), []).append(r.cell.key)
        print(f"\nnot expressible yet ({len(missing)} cells):")
        for (source, why), keys in reasons.items():
            print(f"  {source} ({len(keys)}): {why}")
    return 0
