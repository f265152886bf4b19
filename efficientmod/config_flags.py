"""Command-line flags generated from a dataclass: each field made with :func:`option` is a
flag ``--field-name`` with its help text, type, choices and argument group; a field made
otherwise is no flag. The classification recipe (:mod:`efficientmod.classify.config`) and
the dense commands' settings (:mod:`efficientmod.dense.config`) are written this way.
Importing this module imports nothing outside the standard library.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["option", "option_fields", "add_flags", "values_from", "value_problem", "check_field_values"]

_INTERVAL = re.compile(r"([\[(])\s*(-?inf|[-+.\deE]+)\s*,\s*(-?inf|[-+.\deE]+)\s*([\])])")

_METAVARS = {int: "N", float: "X"}


def option(default: Any, help: str, type: Any = None, choices: tuple | None = None, group: str | None = None,
           unset: str | None = None, bounds: str | None = None, multiple_of: int | None = None, **argparse_kwargs):
    """A field that is a flag: its default, its ``--help`` text, how the flag parses
    (``type``, ``choices``) and the argument group that lists it (None: the command's own
    options); ``unset`` says what a ``None`` default stands for (``--help`` shows it as the
    default, or a preset's value); ``bounds`` the interval a number must lie in, written as in
    mathematics (``"[0, 1)"``, ``"(0, inf)"``), ``multiple_of`` the step an integer must be a
    multiple of (both checked by :func:`check_field_values`). ``argparse_kwargs`` go to
    ``add_argument`` as given (``nargs``, ``const``, ``metavar``, ``required``, ``action``),
    except ``flag``: the flag's name when it is not ``--field-name`` (e.g.
    ``--no-reduce-zero-label`` for ``reduce_zero_label``)."""
    if bounds is not None and not _INTERVAL.fullmatch(bounds):
        raise ValueError(f"bounds must be an interval such as '[0, 1)', got {bounds!r}")
    return dataclasses.field(default=default, metadata=dict(help=help, type=type, choices=choices, group=group,
                                                            unset=unset, bounds=bounds, multiple_of=multiple_of,
                                                            argparse=argparse_kwargs))


def option_fields(config_class) -> list[dataclasses.Field]:
    """The fields of ``config_class`` that are flags, in declaration order."""
    return [f for f in dataclasses.fields(config_class) if "help" in f.metadata]


def add_flags(parser: argparse.ArgumentParser, config_class, defaults: Mapping[str, Any] | None = None,
              suppress: bool = False, check_choices: bool = True) -> None:
    """One flag per :func:`option` field of ``config_class``, in the argument group the
    field names (one group per title and parser). ``defaults`` replace the fields'
    defaults (a command's preset). With ``suppress``, the parsed namespace holds only the
    flags given on the command line (``argparse.SUPPRESS``) and the help text states the
    default itself; otherwise the default is the flag's (a tuple given as a list, as
    argparse parses a ``nargs`` flag). Without ``check_choices`` argparse only shows the choices
    (``{a,b}``): :func:`check_field_values` checks them, in one line, with those of a YAML file."""
    groups = {group.title: group for group in parser._action_groups}
    for f in option_fields(config_class):
        meta = f.metadata
        extra = dict(meta["argparse"]) if "argparse" in meta else {}
        flag = extra.pop("flag", "--" + f.name.replace("_", "-"))
        default = (defaults or {}).get(f.name, f.default)
        text = meta["help"] + _limits_text(meta)
        if suppress:
            shown = meta.get("unset") if default is None else default
            text += "" if shown is None else f" (default: {shown})"
            default = argparse.SUPPRESS
        elif isinstance(default, tuple):
            default = list(default)
        if meta["group"] is None:
            target = parser
        elif meta["group"] in groups:
            target = groups[meta["group"]]
        else:
            target = groups[meta["group"]] = parser.add_argument_group(meta["group"])
        kwargs = dict(dest=f.name, default=default, help=text, **extra)
        if "action" in extra:
            target.add_argument(flag, **kwargs)
        elif meta["type"] is bool:
            target.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            choices = meta["choices"] if check_choices else None
            shown = ("{" + ",".join(map(str, meta["choices"])) + "}") if meta["choices"] and not check_choices else None
            kwargs.setdefault("metavar", shown or (None if meta["choices"] else _METAVARS.get(meta["type"],
                                                                                                f.name.upper())))
            target.add_argument(flag, type=meta["type"], choices=choices, **kwargs)


def values_from(args: argparse.Namespace, config_class) -> dict[str, Any]:
    """The values of ``config_class``'s flags in ``args`` (those it holds)."""
    return {f.name: getattr(args, f.name) for f in option_fields(config_class) if hasattr(args, f.name)}


def _limits_text(meta: Mapping) -> str:
    text = f", in {meta['bounds']}" if meta.get("bounds") else ""
    return text + (f", a multiple of {meta['multiple_of']}" if meta.get("multiple_of") else "")


def _within(value: float, bounds: str) -> bool:
    opening, low, high, closing = _INTERVAL.fullmatch(bounds).groups()
    low, high = float(low), float(high)
    above = value > low or (opening == "[" and value == low)
    below = value < high or (closing == "]" and value == high)
    return above and below  # False for NaN


def value_problem(f: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with ``value`` for the field ``f`` (outside its ``choices`` or ``bounds``,
    not a multiple of its step, a float that is not finite), as ``"<key> must ..., got <value>
    (--<flag>)"``; None if nothing."""
    meta, flag = f.metadata, f"(--{f.name.replace('_', '-')})"
    if value is None:
        return None
    if meta.get("choices") and value not in meta["choices"]:
        return f"{f.name} must be one of {', '.join(map(str, meta['choices']))}, got {value!r} {flag}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{f.name} must be a finite number, got {value} {flag}"
    if meta.get("bounds") and isinstance(value, (int, float)) and not _within(value, meta["bounds"]):
        return f"{f.name} must be in {meta['bounds']}, got {value} {flag}"
    if meta.get("multiple_of") and value % meta["multiple_of"]:
        return f"{f.name} must be a multiple of {meta['multiple_of']}, got {value} {flag}"
    return None


def check_field_values(config: Any) -> None:
    """A one-line ``ValueError`` naming the key and flag of the first field of the dataclass
    instance ``config`` whose value :func:`value_problem` refuses."""
    for f in option_fields(type(config)):
        problem = value_problem(f, getattr(config, f.name))
        if problem:
            raise ValueError(problem)
