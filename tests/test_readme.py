"""What README.md promises a newcomer holds: the test counts it states are the suite's, and
every ``efficientmod`` command in its ``bash`` blocks parses, with every flag listed by the
sub-command's ``--help``."""
from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from efficientmod.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FULL_SUITE = re.compile(r"The full suite, what CI runs \((\d+) tests")
FAST_TIER = re.compile(r"The fast tier leaves out the tests marked `slow`[^;]*; (\d+) tests")
COLLECTED = re.compile(r"^(\d+)/(\d+) tests collected", re.MULTILINE)


def stated_count(pattern: re.Pattern) -> int:
    match = pattern.search(README.read_text())
    assert match, f"README.md no longer states a test count matching {pattern.pattern!r}"
    return int(match.group(1))


def test_readme_states_the_number_of_tests_pytest_collects():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", "not slow",
         str(ROOT / "tests")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    match = COLLECTED.search(result.stdout)
    assert result.returncode == 0 and match, f"collecting the suite failed:\n{result.stdout[-2000:]}{result.stderr}"
    fast, full = int(match.group(1)), int(match.group(2))
    expected = {"full suite": stated_count(FULL_SUITE), "fast tier": stated_count(FAST_TIER)}
    found = {"full suite": full, "fast tier": fast}
    assert found == expected, f"README.md states {expected}, pytest collects {found}: update the counts in README.md"


def readme_commands() -> list[list[str]]:
    """The arguments after ``efficientmod`` (or ``-m efficientmod``) of every command in the
    README's ``bash`` blocks, continuation lines joined and comments dropped."""
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(), flags=re.MULTILINE | re.DOTALL)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            for start, token in enumerate(tokens):
                if token == "efficientmod" or token.endswith("/efficientmod"):
                    rest = tokens[start + 1:]
                    end = next((i for i, t in enumerate(rest) if t in ("&&", "||", "|", ";")), len(rest))
                    commands.append(rest[:end])
    return commands


def subcommand_parser(parser: argparse.ArgumentParser, args: list[str]) -> tuple[argparse.ArgumentParser, str]:
    """The (nested) sub-command parser ``args`` reach, and the sub-command's name."""
    names = []
    while True:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or not args or args[0] not in actions[0].choices:
            return parser, " ".join(names)
        names.append(args[0])
        parser, args = actions[0].choices[args[0]], args[1:]


COMMANDS = readme_commands()


def test_the_readme_has_commands_to_check():
    assert len(COMMANDS) >= 20 and {"train", "export", "predict", "bench", "det", "seg", "viz"} <= {
        args[0] for args in COMMANDS}


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(args[:2]) for args in COMMANDS])
def test_every_readme_command_parses_and_its_flags_are_in_the_help(args):
    parser = build_parser()
    try:
        parser.parse_args(args)
    except SystemExit as error:
        pytest.fail(f"`efficientmod {shlex.join(args)}` does not parse (exit {error.code})")
    subparser, name = subcommand_parser(parser, args)
    assert name, f"`efficientmod {shlex.join(args)}` names no sub-command"
    help_text = subparser.format_help()
    flags = {arg.split("=")[0] for arg in args if re.fullmatch(r"--?[a-zA-Z][\w-]*(=.*)?", arg)}
    missing = sorted(f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", help_text))
    assert not missing, f"`efficientmod {name} --help` does not list {missing}"
