"""The ``efficientmod`` command: argparse sub-commands that call the library, nothing more.

Each command module exposes ``add_parser(subparsers)``, which adds its sub-command(s) and
sets ``func`` (called with the parsed arguments; its return value is the exit status).
Exit status 2: a usage or input error (clear message, no traceback); 3: training diverged.

Printing help must stay as cheap as importing torch: command modules import their engines
(and with them timm and the model registry) inside the functions that run a command, and
option choices that need the registry are checked when the command runs.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from efficientmod import __version__
from efficientmod.runtime import TrainingDiverged

COMMAND_MODULES = [
    "efficientmod.cli.models",
    "efficientmod.cli.bench",
    "efficientmod.cli.viz",
    "efficientmod.cli.train",
    "efficientmod.cli.deploy",
    "efficientmod.cli.dense",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    except KeyboardInterrupt:
        print(f"efficientmod {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
