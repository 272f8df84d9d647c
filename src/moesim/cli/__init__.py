"""The `moesim` command line: one module per command, flags generated from the Scenario.

Every command module has ``add_parser(s)(subparsers)`` and its handlers; this module wires
them and turns every :class:`~moesim.errors.MoesimError` into a message and an exit code.
Units are converted at this edge only.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import MoesimError


INTERNAL_ERROR = 70  # EX_SOFTWARE: not the user's input


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
    try:
        args = _parser().parse_args(argv)  # inside the catch-all: a help text that cannot be formatted is a bug too
        return _handlers()[args.command](args)
    except MoesimError as exc:
        print(f"moesim: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("moesim: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line for the user, the traceback on request
        if os.environ.get("MOESIM_DEBUG"):
            raise
        print(f"moesim: internal error ({type(exc).__name__}: {exc}); this is a bug in moesim: please report the "
              "command; MOESIM_DEBUG=1 shows the traceback", file=sys.stderr)
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
