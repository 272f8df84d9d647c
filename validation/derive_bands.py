"""Derive the uncertainty widths (``hardware_db/uncertainty/bands.yaml``) from the validation sources.

Run from the repository root: ``python validation/derive_bands.py`` (``--check``: print, write nothing).
Every held-out record of every source in ``moesim.calibration.sources.SOURCES`` informs the widths
(``moesim.uncertainty.derive_widths``: the p90 of |log error| per kernel and link state, then each
system's excess over them); the hand-written ``priors`` of the file pass through. The coverage printed
is cross-fitted (widths from one fold, coverage on the other; ``moesim.uncertainty.crossfit``).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import yaml

from moesim import uncertainty
from moesim.calibration.sources import SOURCES, all_records

ROOT = Path(__file__).resolve().parent
OUT = ROOT.parent / "hardware_db" / "uncertainty" / "bands.yaml"


def priors_of(data: dict) -> dict[str, float]:
    """The hand-written priors of the bands file (its ``priors:`` block): component -> log half-width. The one
    rule for which components are priors (tests/test_uncertainty.py reads them through this function)."""
    return {k: float(v["log_half_width"]) for k, v in (data.get("priors") or {}).items()}


def committed_priors() -> dict[str, float]:
    return priors_of(yaml.safe_load(OUT.read_text()))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="print the widths and coverage, write nothing")
    args = ap.parse_args()
    data = yaml.safe_load(OUT.read_text())
    priors = priors_of(data)
    records = all_records(ROOT)
    held = [r for r in records if r.heldout]
    w = uncertainty.derive_widths(held, priors)
    for name, v in (data.get("priors") or {}).items():
        w.notes[name] = f"prior: {' '.join(str(v.get('reason', '')).split())}"
    print(f"{len(held)} held-out records of {len(records)} from sources: {', '.join(SOURCES)}")
    print(f"{'component':34s} {'log half-width':>14s} {'band':>12s}  from")
    for name, value in sorted(w.components.items()):
        print(f"{name:34s} {value:14.3f} {'x/' + format(math.exp(value), '.2f'):>12s}  {w.notes.get(name, '')}")
    print(f"\ncoverage (cross-fitted: widths from the other fold), p{uncertainty.QUANTILE * 100:.0f} widths:")
    for source, v in uncertainty.crossfit(held, priors).items():
        print(f"  {source:44s} n={int(v['n']):4d}  median |err| {v['median']:6.1%}  p90 {v['p90']:7.1%}  "
              f"coverage {v['coverage']:6.1%} of {int(v['scored'])}")
    if args.check:
        return 0
    data["components"] = {name: {"log_half_width": round(value, 4), "from": w.notes.get(name, "")}
                          for name, value in sorted(w.components.items())}
    data["validated"] = {k: dict(v) for k, v in sorted(w.validated.items())}
    head = "".join(line for line in OUT.read_text().splitlines(keepends=True) if line.startswith("#"))
    OUT.write_text(head + yaml.safe_dump({k: data[k] for k in ("priors", "components", "validated")},
                                         sort_keys=False, width=110))
    print(f"\nwrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
