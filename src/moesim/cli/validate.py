"""`moesim calibrate` (refit a GPU's profile from its measurements) and `moesim validate`
(predicted beside measured, fitted and held-out, plus plots). Kept out of cli.py's predict path."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ..errors import MoesimError


def _validation_root(arg: str | None) -> Path:
    from ..paths import validation_root

    root = validation_root(arg)
    if not (root / "measurements").is_dir():
        raise MoesimError(f"no measurements folder under {root}; run from the repository root or pass --root")
    return root


def add_parsers(sub) -> None:
    cal = sub.add_parser("calibrate", help="fit a GPU's efficiency curves to its measurements")
    cal.add_argument("--gpu", required=True)
    cal.add_argument("--root", help="the validation folder (default ./validation)")
    cal.add_argument("--out", help="folder for the profile (default: hardware_db/calibration beside the validation "
                     "folder, else the installed package's database)")
    cal.add_argument("--measurements", help="the measurement file to fit (default: the one the GPU's profile "
                     "was fitted on, so that a refit reproduces it; the newest for a GPU without a profile)")
    val = sub.add_parser("validate", help="predicted vs measured, fitted and held-out cases")
    val.add_argument("--gpu", help="one GPU (default: every GPU with measurements)")
    val.add_argument("--root", help="the validation folder (default ./validation)")
    val.add_argument("--cases", action="store_true", help="print every case, not only the worst")
    val.add_argument("--no-plots", action="store_true")
    val.add_argument("--published", action="store_true", help="the published corpus (validation/published/): every "
                     "cell predicted with default parameters, error per source and system, ranking, band coverage")
    val.add_argument("--source", action="append", help="with --published: only this source (repeatable)")
    val.add_argument("--quick", action="store_true", help="with --published: a few cells per source (CI-sized)")
    val.add_argument("--json", action="store_true", help="with --published: print one JSON object")


def calibrate(args: argparse.Namespace) -> int:
    from ..calibration import fit_profile, load_measurements, profile_path, save_profile
    from ..calibration.report import primary_measurements
    from ..db import data_root
    from ..db.resolve import get_hardware

    root = _validation_root(args.root)
    gpu = get_hardware(args.gpu).gpu
    path = Path(args.measurements) if args.measurements else primary_measurements(root, gpu.name)
    if not path.is_file():
        raise MoesimError(f"no measurement file {path}")
    env, cases = load_measurements(path)
    print(f"fitting {gpu.name} from {path} ({len(cases)} cases)")
    rel = path.resolve().relative_to(root.resolve().parent) if root.resolve().parent in path.resolve().parents else path
    profile = fit_profile(env, cases, gpu.name, str(rel), log=print)
    checkout = root.resolve().parent / "hardware_db"  # the repository the measurements belong to
    folder = Path(args.out) if args.out else checkout / "calibration" if checkout.is_dir() else \
        data_root("hardware_db") / "calibration"
    out = profile_path(gpu.name, folder)
    save_profile(profile, out)
    if not args.out and not checkout.is_dir():
        print(f"note: no hardware_db/ beside {root}; the profile went into the installed package's database, which "
              "this installation reads; copy it into a checkout's hardware_db/calibration/ to share it")
    s = profile.fit_summary
    print(f"wrote {out}: {int(s['train_cases'])} fitted cases, median |error| {s['train_median_abs_err']:.1%}, "
          f"p90 {s['train_p90_abs_err']:.1%}")
    return 0


def _shown_path(path) -> str:
    """A measurement file as the report shows it: relative to the working directory when inside it (so a
    committed report does not carry one machine's absolute paths)."""
    from pathlib import Path

    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _print_report(rep: dict, show_all: bool) -> None:
    print(f"\n== {rep['gpu']}: {rep['mode']} curves (from {rep['profile_from']}), "
          f"measurements {_shown_path(rep['measurements'])}")
    print(f"{'family/split':34s} {'n':>4s} {'median |err|':>13s} {'p90 |err|':>10s}")
    for key, v in rep["summary"].items():
        print(f"{key:34s} {int(v['n']):4d} {v['median']:13.1%} {v['p90']:10.1%}")
    if rep["mode"] == "own":
        from ..calibration.report import host_free_check

        check = host_free_check(rep)
        if check:
            print("\nwithout the host (cases the harness also timed back to back and under a CUDA graph):")
            print(f"{'family':20s} {'n':>4s} {'GPU alone vs graph: median':>27s} {'p90':>6s} "
                  f"{'steady state vs back-to-back: median':>37s} {'p90':>6s}")
            for fam, v in check.items():
                print(f"{fam:20s} {int(v['n']):4d} {v['gpu_median']:27.1%} {v['gpu_p90']:6.1%} "
                      f"{v['steady_median']:37.1%} {v['steady_p90']:6.1%}")
    rows = sorted(rep["rows"], key=lambda r: -abs(r.error))
    shown = rows if show_all else rows[:8]
    print("\n" + ("every case" if show_all else "largest errors") + ":")
    for r in shown:
        split = "held-out" if r.case.held_out else "fitted"
        params = ", ".join(f"{k}={v}" for k, v in r.case.params.items())
        print(f"  {r.case.family:20s} {split:8s} measured {r.case.median_s:.4g} s  predicted {r.predicted_s:.4g} s  "
              f"{r.error:+.1%}  [{params}]")


def validate(args: argparse.Namespace) -> int:
    if args.published or args.source or args.quick or args.json:
        if not args.published:
            raise MoesimError("--source, --quick and --json go with --published")
        from .published import run

        return run(args)
    from ..calibration.report import validation_report, write_plots
    from ..calibration.store import gpu_slug
    from ..db import gpus

    root = _validation_root(args.root)
    names = [args.gpu] if args.gpu else [p.name for p in sorted((root / "measurements").iterdir()) if p.is_dir()]
    for name in names:
        gpu = gpus().find(name) or next((g for g in gpus().entries.values() if gpu_slug(g.name) == name), None)
        if gpu is None:
            raise MoesimError(f"measurements folder {name!r} names no GPU in hardware_db")
        reports = []
        try:
            reports.append(validation_report(gpu.name, root, "own"))
        except MoesimError as exc:
            print(f"\n{gpu.name}: {exc}")
        borrowed = validation_report(gpu.name, root, "borrowed") if _has_donor(gpu) else None
        if borrowed is not None:
            reports.append(borrowed)
        reports.append(validation_report(gpu.name, root, "default"))
        for rep in reports:
            _print_report(rep, args.cases)
            if not args.no_plots:
                for p in write_plots(rep, root / "report"):
                    print(f"  plot: {_shown_path(p)}")
        if reports and reports[0]["mode"] == "own":
            _print_other_files(gpu.name, root, reports[0])
    if not args.gpu:
        _print_coverage(root)
    return 0


def _print_coverage(root: Path) -> None:
    """Error and band coverage per validation source (moesim.uncertainty): held-out records only; coverage
    cross-fitted (bands from widths derived on the other fold), beside that of the committed widths."""
    from .. import uncertainty
    from ..calibration.sources import all_records

    held = [r for r in all_records(root) if r.heldout]
    committed = uncertainty.widths()
    priors = {k: v for k, v in committed.components.items() if k.startswith("extrapolation.")}
    print(f"\n== uncertainty bands: held-out records per source; coverage = fraction whose measured value lies in "
          f"the band (p{uncertainty.QUANTILE * 100:.0f} widths)")
    print(f"{'source':44s} {'n':>4s} {'median |err|':>13s} {'p90 |err|':>10s} {'coverage (other fold)':>22s} "
          f"{'(committed widths)':>19s}")
    for source, v in uncertainty.crossfit(held, priors).items():
        mine = [r for r in held if r.source == source]
        print(f"{source:44s} {int(v['n']):4d} {v['median']:13.1%} {v['p90']:10.1%} {v['coverage']:22.1%} "
              f"{uncertainty.coverage(mine, committed):19.1%}")
    systems = uncertainty.crossfit(held, priors, group=lambda r: f"  {r.provenance.system} {r.phase}"
                                   if r.provenance.system and not r.source.startswith("torchbench") else "")
    if len(systems) > 1:
        print("of which, end-to-end records of published sources per system and phase:")
    for key, v in systems.items():
        if key:
            mine = [r for r in held if r.provenance.system and not r.source.startswith("torchbench")
                    and f"  {r.provenance.system} {r.phase}" == key]
            print(f"{key:44s} {int(v['n']):4d} {v['median']:13.1%} {v['p90']:10.1%} {v['coverage']:22.1%} "
                  f"{uncertainty.coverage(mine, committed):19.1%}")
    allcov = uncertainty.crossfit([replace(r, source="all") for r in held], priors)["all"]
    print(f"{'all':44s} {int(allcov['n']):4d} {allcov['median']:13.1%} {allcov['p90']:10.1%} "
          f"{allcov['coverage']:22.1%} {uncertainty.coverage(held, committed):19.1%}")


def _print_other_files(gpu_name: str, root, own: dict) -> None:
    """The same profile against the GPU's other measurement files (other leases, other hosts), no
    refit: how much of the error is the host a run happened to get."""
    from ..calibration.report import host_figures, measurement_files, validation_report

    primary = Path(own["measurements"]).resolve()
    others = [p for p in measurement_files(root, gpu_name) if p.resolve() != primary]
    if not others:
        return
    print(f"\n{gpu_name}: the same profile on the other measurement files (other leases and hosts, no refit):")
    print(f"{'file':52s} {'timing':>6s} {'sync':>6s} {'launch':>7s} {'train split: median':>20s} {'p90':>6s} "
          f"{'held-out split: median':>23s} {'p90':>6s}")
    for path in [primary, *others]:
        rep = own if path == primary else validation_report(gpu_name, root, "own", path=path)
        host = host_figures(path)
        timing = str(rep["environment"].get("timing", "v1")).split(":")[0] or "v1"
        fit, held = rep["summary"].get("all/fitted", {}), rep["summary"].get("all/held_out", {})
        print(f"{path.name:52s} {timing:>6s} {host.get('host_sync', 0) * 1e6:5.1f}u {host.get('launch', 0) * 1e6:6.1f}u "
              f"{fit.get('median', 0):20.1%} {fit.get('p90', 0):6.1%} {held.get('median', 0):23.1%} "
              f"{held.get('p90', 0):6.1%}" + ("   (this report)" if path == primary else ""))


def _has_donor(gpu) -> bool:
    """Whether another measured GPU of the same architecture can lend its curves (cross-GPU check)."""
    from ..calibration.store import _profiles
    from ..db import gpus, normalize

    for key, prof in _profiles().items():
        donor = gpus().find(prof.gpu)
        if donor and donor.architecture == gpu.architecture and normalize(donor.name) != normalize(gpu.name):
            return True
    return False
