"""The `moesim` command line: one module per command, flags generated from the Scenario.

Every command module has ``add_parser(s)(subparsers)`` and its handlers; this module wires
them and turns every :class:`~moesim.errors.MoesimError` into a message and an exit code.
Units are converted at this edge only.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import MoesimError


def _parser() -> argparse.ArgumentParser:
    from . import catalog, plot, predict, recommend, sweep, validate

    p = argparse.ArgumentParser(prog="moesim", description="Predict MoE LLM inference performance.")
    sub = p.add_subparsers(dest="command", required=True)
    predict.add_parsers(sub)
    validate.add_parsers(sub)
    sweep.add_parser(sub)
    plot.add_parser(sub)
    recommend.add_parser(sub)
    catalog.add_parsers(sub)
    return p


def _handlers() -> dict:
    from . import catalog, plot, predict, recommend, sweep, validate

    return {"predict": predict.predict, "serve": predict.serve, "list": catalog.list_entries, "show": catalog.show,
            "calibrate": validate.calibrate, "validate": validate.validate, "sweep": sweep.run,
            "sensitivity": sweep.run, "plot": plot.run, "recommend": recommend.run}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _handlers()[args.command](args)
    except MoesimError as exc:
        print(f"moesim: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
