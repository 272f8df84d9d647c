"""Command-line flags generated from :class:`moesim.scenario.Scenario`'s fields.

A knob is declared once, as a Scenario field; this module turns the fields into argparse flags
(help from the field's docstring, its default shown) and the parsed flags back into Scenario
fields. Commands pick the groups they take and the fields that may hold several values
(``sweep``: comma-separated lists, one grid dimension each).
"""

from __future__ import annotations

import argparse
from typing import Any, Iterable

from .. import scenario as sc

_DEST = "scenario__"  # argparse dests of generated flags, apart from a command's own


class _Once(argparse.Action):
    """Store a value; the same field given twice (or by two of its aliases, --hw and --gpu) is an error."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{'/'.join(self.option_strings)} given more than once")
        setattr(namespace, self.dest, values)


def _escape(text: str) -> str:
    """argparse formats help texts with %: a literal % must be written %%."""
    return text.replace("%", "%%")


def _help(name: str, info: Any, flag: sc.Flag, multi: bool) -> str:
    """The field's docstring, then ``[unit]`` and its default (``unset`` when None: the docstring says what
    happens then)."""
    text = _escape((info.description or "").rstrip("."))
    if flag.invert:
        return text
    if flag.unit:
        text += f" [{flag.unit}]"
    default = info.get_default()
    if name not in ("model", "hardware", "system_params") and not (default is None and "default" in text):
        text += f" (default {_show_default(default)})"
    if multi:
        text += "; comma-separated values sweep it"
    return text


def _show_default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


#: units of system parameters, read from the end of their names (the house's unit-in-the-name rule)
_PARAM_UNITS = (("_gb", "GiB"), ("_bytes", "bytes"), ("_tokens", "tokens"), ("_s", "seconds"),
                ("_fraction", "fraction, 0-1"), ("_utilization", "fraction, 0-1"), ("_size", "tokens"))


def _param_metavar(info: Any) -> str:
    """INT, FLOAT, BOOL, a choice list, or TEXT, from a system parameter's annotation."""
    kinds = [a for a in sc._flatten(info.annotation) if a is not type(None)]
    for kind, word in ((bool, "BOOL"), (int, "INT"), (float, "FLOAT")):
        if kind in kinds:
            return word
    for kind in kinds:
        choices = getattr(kind, "__args__", None)
        if getattr(kind, "__origin__", None) is not None and str(kind).startswith("typing.Literal") and choices:
            return "{" + ",".join(str(c) for c in choices) + "}"
        if getattr(kind, "__origin__", None) in (list, tuple):
            return "LIST"
    return "TEXT"


def _param_help(name: str, owners: dict[str, Any]) -> str:
    """A system parameter's help: its description, unit, and each owning system's default."""
    first = next(iter(owners.values()))
    text = _escape((first.description or "").rstrip(".")) or "parameter"
    unit = next((u for suffix, u in _PARAM_UNITS if name.endswith(suffix)), None)
    if unit:
        text += f" [{unit}]"
    defaults = {system: _escape(_show_default(info.get_default())) for system, info in owners.items()}
    if len(set(defaults.values())) == 1:
        text += f" ({', '.join(defaults)}; default {next(iter(defaults.values()))})"
    else:
        text += " (" + "; ".join(f"{s}: default {d}" for s, d in defaults.items()) + ")"
    return text


def add_scenario_arguments(parser: argparse.ArgumentParser, *, groups: Iterable[str] | None = None,
                           exclude: Iterable[str] = (), multi: Iterable[str] = (), required: Iterable[str] = (),
                           help_overrides: dict[str, str] | None = None) -> None:
    """Add a flag for every Scenario field in ``groups`` (default all) but ``exclude``.

    Values stay text here and are read by :func:`moesim.scenario.parse_value`, so a flag and a
    sweep value mean the same. ``multi``: fields whose flag takes comma-separated values.
    """
    chosen = set(groups) if groups is not None else set(sc.GROUPS)
    skip, many, needed = set(exclude), set(multi), set(required)
    overrides = help_overrides or {}
    table = sc.fields()
    for group_name, title in sc.GROUPS.items():
        members = [n for n, (_, f) in table.items() if f.group == group_name and n not in skip]
        if group_name in chosen and members:
            _add_group(parser.add_argument_group(title), members, table, many, needed, overrides)


def _add_group(group, members, table, many, needed, overrides) -> None:
    for name in members:
        info, flag = table[name]
        text = overrides.get(name) or _help(name, info, flag, name in many)
        dest = _DEST + name
        if flag.invert:
            group.add_argument(*flag.flags, dest=dest, action="store_true", help=text)
        elif flag.parse == "key_value":
            group.add_argument(*flag.flags, dest=dest, action="append", metavar=flag.metavar, help=text)
        else:
            group.add_argument(*flag.flags, dest=dest, action=_Once, metavar=_metavar(flag), help=text,
                               required=name in needed)


def _metavar(flag: sc.Flag) -> str:
    """The flag's metavar: declared, else its unit's first word (TOKENS, GPUS), else its name."""
    if flag.metavar:
        return flag.metavar
    if flag.unit and flag.unit.split()[0].isalpha():
        return flag.unit.split()[0].rstrip(",:").upper()
    return flag.flags[0].lstrip("-").upper().replace("-", "_")


_PARAM_DEST = "sysparam__"


def add_system_param_arguments(parser: argparse.ArgumentParser) -> None:
    """A flag for every serving system's parameter (``--max-num-seqs 64`` = ``--param max_num_seqs=64``): the
    systems' own Params classes are their one declaration; a name that is also a Scenario field is left to
    --param."""
    from ..systems import SYSTEMS

    owners: dict[str, dict[str, Any]] = {}
    for system, cls in SYSTEMS.items():
        for name, info in cls.Params.model_fields.items():
            owners.setdefault(name, {})[system] = info
    taken = set(sc.fields())
    group = parser.add_argument_group("serving-system parameters (with a named --system; `moesim show system NAME`)")
    for name in sorted(owners):
        if name in taken:
            continue
        infos = list(owners[name].values())
        # a boolean parameter given bare is true, as the engines' own flags (--enable-expert-parallel)
        boolean = all(info.annotation is bool for info in infos)
        group.add_argument("--" + name.replace("_", "-"), dest=_PARAM_DEST + name, action=_Once,
                           metavar=_param_metavar(infos[0]), help=_param_help(name, owners[name]),
                           **({"nargs": "?", "const": "true"} if boolean else {}))


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The Scenario fields the user set on the command line, as text (lists of text for --param)."""
    out: dict[str, Any] = {}
    params = [f"{k[len(_PARAM_DEST):]}={v}" for k, v in vars(args).items() if k.startswith(_PARAM_DEST) and v is not None]
    if params:
        out["system_params"] = list(getattr(args, _DEST + "system_params", None) or []) + params
    for key, value in vars(args).items():
        if not key.startswith(_DEST) or value in (None, False) or (key == _DEST + "system_params" and params):
            continue
        name = key[len(_DEST):]
        flag = sc.fields()[name][1]
        out[name] = (not value) if flag.invert else value
    return out


def scenario_fields(args: argparse.Namespace, *, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The set flags as typed Scenario field values (one value each)."""
    out = {}
    for name, value in given(args).items():
        if name in exclude:
            continue
        if name == "system_params":
            out[name] = sc.parse_key_values(value)
        else:
            out[name] = sc.parse_value(name, value)
    return {k: v for k, v in out.items() if v is not None}


def build_scenario(args: argparse.Namespace, **fixed: Any) -> sc.Scenario:
    """A Scenario from the parsed flags (``fixed`` adds or replaces fields)."""
    return sc.build(**{**scenario_fields(args), **fixed})
