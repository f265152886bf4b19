"""Command-line flags generated from a dataclass: each field made with :func:`option` is a
flag ``--field-name`` with its help text, type, choices and argument group; a field made
otherwise is no flag. The classification recipe (:mod:`efficientmod.classify.config`) and
the dense commands' settings (:mod:`efficientmod.dense.config`) are written this way.
Importing this module imports nothing outside the standard library.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["option", "option_fields", "add_flags", "values_from"]

_METAVARS = {int: "N", float: "X"}


def option(default: Any, help: str, type: Any = None, choices: tuple | None = None, group: str | None = None,
           unset: str | None = None, **argparse_kwargs):
    """A field that is a flag: its default, its ``--help`` text, how the flag parses
    (``type``, ``choices``) and the argument group that lists it (None: the command's own
    options); ``unset`` says what a ``None`` default stands for (``--help`` shows it as the
    default, or a preset's value). ``argparse_kwargs`` go to ``add_argument`` as given (``nargs``, ``const``,
    ``metavar``, ``required``, ``action``), except ``flag``: the flag's name when it is not
    ``--field-name`` (e.g. ``--no-reduce-zero-label`` for ``reduce_zero_label``)."""
    return dataclasses.field(default=default, metadata=dict(help=help, type=type, choices=choices, group=group,
                                                            unset=unset, argparse=argparse_kwargs))


def option_fields(config_class) -> list[dataclasses.Field]:
    """The fields of ``config_class`` that are flags, in declaration order."""
    return [f for f in dataclasses.fields(config_class) if "help" in f.metadata]


def add_flags(parser: argparse.ArgumentParser, config_class, defaults: Mapping[str, Any] | None = None,
              suppress: bool = False) -> None:
    """One flag per :func:`option` field of ``config_class``, in the argument group the
    field names (one group per title and parser). ``defaults`` replace the fields'
    defaults (a command's preset). With ``suppress``, the parsed namespace holds only the
    flags given on the command line (``argparse.SUPPRESS``) and the help text states the
    default itself; otherwise the default is the flag's (a tuple given as a list, as
    argparse parses a ``nargs`` flag)."""
    groups = {group.title: group for group in parser._action_groups}
    for f in option_fields(config_class):
        meta = f.metadata
        extra = dict(meta["argparse"]) if "argparse" in meta else {}
        flag = extra.pop("flag", "--" + f.name.replace("_", "-"))
        default = (defaults or {}).get(f.name, f.default)
        text = meta["help"]
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
            kwargs.setdefault("metavar", None if meta["choices"] else _METAVARS.get(meta["type"], f.name.upper()))
            target.add_argument(flag, type=meta["type"], choices=meta["choices"], **kwargs)


def values_from(args: argparse.Namespace, config_class) -> dict[str, Any]:
    """The values of ``config_class``'s flags in ``args`` (those it holds)."""
    return {f.name: getattr(args, f.name) for f in option_fields(config_class) if hasattr(args, f.name)}
