"""What ``--help`` tells a newcomer is consistent: one default per option, every export format
named where the command list describes export and predict."""
from __future__ import annotations

import argparse
import re

from efficientmod.cli import build_parser
from efficientmod.export import FORMATS


def subcommands(parser: argparse.ArgumentParser, name: str = "efficientmod"):
    """(full name, parser) of every sub-command, nested ones included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, subparser in action.choices.items():
                yield f"{name} {sub_name}", subparser
                yield from subcommands(subparser, f"{name} {sub_name}")


def test_every_option_states_at_most_one_default():
    doubled = []
    for name, parser in subcommands(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if action.help and action.help is not argparse.SUPPRESS:
                text = formatter._expand_help(action)
                if len(re.findall(r"\bdefault", text)) > 1:
                    doubled.append(f"{name} {'/'.join(action.option_strings)}: {text}")
    assert not doubled, "options whose --help states two defaults:\n" + "\n".join(doubled)


def test_the_command_list_names_every_export_format():
    choices = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {action.dest: action.help.lower() for action in choices._choices_actions}
    for command in ("export", "predict"):
        missing = [fmt.name for fmt in FORMATS.values() if fmt.name not in summaries[command]]
        assert not missing, f"`efficientmod --help` describes {command} without {missing}: {summaries[command]!r}"
