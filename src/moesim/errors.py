"""Errors moesim raises on bad input. The CLI turns each into a message and a non-zero exit."""

from __future__ import annotations


class MoesimError(Exception):
    """Base: a problem with what the user asked, explained in words."""

    exit_code = 1


class UnknownNameError(MoesimError, KeyError):
    """A model, hardware or system name that no entry has; carries the closest matches."""

    exit_code = 2

    def __init__(self, kind: str, name: str, suggestions: list[str]):
        self.kind, self.name, self.suggestions = kind, name, suggestions
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"unknown {kind} {name!r}.{hint} (`moesim list {kind_list(kind)}` shows all)")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


def kind_list(kind: str) -> str:
    return {"model": "models", "system": "systems"}.get(kind, "hardware")


class SpecError(MoesimError):
    """A malformed spec: names the file and the field."""

    exit_code = 2

    def __init__(self, path: str, problems: list[tuple[str, str]]):
        self.path, self.problems = path, problems
        lines = "\n".join(f"  {field}: {msg}" for field, msg in problems)
        super().__init__(f"invalid spec in {path}:\n{lines}")


class InfeasibleError(MoesimError):
    """A configuration that cannot run: says what does not fit and by how much."""

    exit_code = 3


class SimulationError(MoesimError):
    """The engine found an inconsistency (e.g. a memory pool over its capacity)."""

    exit_code = 4
