"""The ``efficientmod`` command: argparse sub-commands that call the library, nothing more.

Each command module exposes ``add_parser(subparsers)``, which adds its sub-command(s) and
sets ``func`` (called with the parsed arguments; its return value is the exit status).
Exit status 2: a usage or input error, or a file system refusing a read or write (disk full,
read-only, no permission), in one line naming the file, no traceback; 3: training diverged;
1: anything unexpected — a bug in this library or a dependency, not bad input — reported in
one line naming the exception and the file, line and function where it was raised.

Printing help must stay as cheap as importing torch: command modules import their engines
(and with them timm and the model registry) inside the functions that run a command, and
option choices that need the registry are checked when the command runs.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import sys
import traceback

from efficientmod import __version__
from efficientmod.runtime import TrainingDiverged

COMMAND_MODULES = [
    "efficientmod.cli.models",
    "efficientmod.cli.bench",
    "efficientmod.cli.viz",
    "efficientmod.cli.train",
    "efficientmod.cli.export",
    "efficientmod.cli.dense",
    "efficientmod.cli.serve",
]


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other input error:
    ``efficientmod train: error: argument --epochs: invalid int value: 'abc' (efficientmod
    train --help lists the options)``, exit status 2 (not the whole usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="efficientmod",
        description="Efficient vision backbones (EfficientMod, EfficientViT, MobileViTv2): "
        "models, training, benchmarks, deployment.",
    )
    parser.add_argument("--version", action="version", version=f"efficientmod {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TrainingDiverged as error:  # the last good checkpoint is left as it was
        print(f"efficientmod {args.command}: training stopped: {error}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError) as error:
        print(f"efficientmod {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stderr.close()
        return 0
    except OSError as error:  # the file system refused (permissions, a full disk, a file for a folder)
        print(f"efficientmod {args.command}: error: {_os_error(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"efficientmod {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - not the user's input: say where, exit 1
        print(f"efficientmod {args.command}: internal error: {_where(error)}", file=sys.stderr)
        return 1


def _os_error(error: OSError) -> str:
    """``cannot use <file>: <errno name>: <reason>`` of ``error``."""
    reason = error.strerror or str(error)
    if error.errno in errno.errorcode:
        reason = f"{errno.errorcode[error.errno]}: {reason}"
    return f"cannot use {error.filename}: {reason}" if error.filename else reason


def _where(error: BaseException) -> str:
    """``Type: message (raised in function, file.py:line)`` of ``error``'s innermost frame."""
    message = str(error)
    if "Original Traceback" in message:  # re-raised from a DataLoader worker: its last line says it
        return message.strip().splitlines()[-1]
    frames = traceback.extract_tb(error.__traceback__)
    place = f" (raised in {frames[-1].name}, {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {message}{place}"


if __name__ == "__main__":
    sys.exit(main())
