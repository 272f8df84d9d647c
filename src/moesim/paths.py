"""Files moesim writes (plots, sweep records, traces): the path is checked before any work; and where a
checkout's ``validation`` folder (measurements, the published corpus) is found.

A plot that takes seconds to compute should not fail at the end because its extension names a
format matplotlib does not write, or its folder does not exist; :func:`check_output` says so
first. Every command that writes a file, and the library calls that take an output path, use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import MoesimError

#: Figure formats moesim draws: matplotlib writes each, chosen by the file's extension.
FIGURE_FORMATS = (".png", ".svg", ".pdf")


def check_output(path: object, what: str, formats: tuple[str, ...] | None = None) -> Path:
    """``path`` as a Path a file can be written to, or a MoesimError naming ``what`` (e.g. ``--plot``).

    ``formats``: the extensions accepted (lower case, with the dot); the folder must exist and be
    writable, and the path must not be a folder. Nothing is created.
    """
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise MoesimError(f"{what} takes a file path, got {type(path).__name__} {path!r}")
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text.strip() or "\0" in text:
        raise MoesimError(f"{what} takes a file path, got {text!r}")
    out = Path(text)
    if formats and out.suffix.lower() not in formats:
        got = f"'{out.suffix}'" if out.suffix else "no extension"
        raise MoesimError(f"{what} {text}: the file's extension chooses its format: {', '.join(formats)} "
                          f"(got {got})")
    try:
        if out.is_dir():
            raise MoesimError(f"{what} {text} is a folder; give a file name in it")
        folder = out.parent
        if not folder.is_dir():
            why = "is not a folder" if folder.exists() else "does not exist (create it first)"
            raise MoesimError(f"{what} {text}: the folder {folder} {why}")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise MoesimError(f"{what} {text}: cannot write in the folder {folder} (permission denied)")
        if out.exists() and not os.access(out, os.W_OK):
            raise MoesimError(f"{what} {text}: the file exists and cannot be overwritten (permission denied)")
    except OSError as exc:  # a name too long for the file system, ...
        raise MoesimError(f"{what} {text[:200]}: {exc.strerror or exc}") from None
    return out


@contextmanager
def writing(path: object, what: str) -> Iterator[None]:
    """Around the code that writes ``path``: a failure the checks could not foresee (a full disk, a file
    system that refuses the name) is a MoesimError naming ``what``, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise MoesimError(f"{what} {path}: cannot write it: {exc.strerror or exc}") from None


def validation_root(root: object = None) -> Path:
    """A checkout's ``validation`` folder: ``root`` when given; else the one beside the source tree (an editable
    install, run from anywhere); else ./validation (an installed package carries no measurements: run from a
    checkout). Callers check that what they need is there and say so."""
    if root:
        return Path(os.fspath(root))
    beside = Path(__file__).resolve().parents[2] / "validation"
    return beside if beside.is_dir() else Path.cwd() / "validation"
