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
        from .limits import MAX_LISTED_PROBLEMS

        self.path, self.problems = str(path), list(problems)
        shown = self.problems[:MAX_LISTED_PROBLEMS]
        lines = [f"  {field}: {msg}" for field, msg in shown]
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        super().__init__(f"invalid spec in {self.path}:\n" + "\n".join(lines))


class InfeasibleError(MoesimError):
    """A configuration that cannot run: says what does not fit and by how much."""

    exit_code = 3


class SimulationError(MoesimError):
    """The engine found an inconsistency (e.g. a memory pool over its capacity)."""

    exit_code = 4


def describe_type(value: object) -> str:
    """'a list', 'a number (5)', 'text ('x')', ... for messages about the wrong kind of value."""
    if value is None:
        return "null (None)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})" if not isinstance(value, int) or abs(value) < 10**30 else "a huge number"
    if isinstance(value, str):
        return f"text ({value[:40]!r})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"
