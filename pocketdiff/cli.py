"""`pocketdiff <group> <command>`: one entry point; each group lives in its own `cmd_*.py` module.

A command module exposes `register(subparsers)`, which adds its parser(s) and sets `func` to a function
`(args) -> int`. Commands stay thin: parse, call a library function, print.
Errors a user can fix (bad spec values, unknown presets, missing files) exit with code 2 and one line.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Command groups, in the order `pocketdiff --help` lists them.
COMMAND_MODULES = (
    "pocketdiff.cmd_describe",
    "pocketdiff.cmd_study",
    "pocketdiff.cmd_export",
    "pocketdiff.cmd_latency",
    "pocketdiff.cmd_data",
    "pocketdiff.cmd_eval",
    "pocketdiff.cmd_train",
    "pocketdiff.cmd_app",
)


class UsageError(Exception):
    """A mistake in the user's input; printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pocketdiff",
        description="Architecture search and ablation workbench for mobile text-to-image diffusion (SnapGen).",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more output")
    parser.add_argument("-q", "--quiet", action="store_true", help="less output")
    sub = parser.add_subparsers(dest="group", metavar="<group>")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _one_line(e: Exception) -> str:
    """The error as one line: control characters the user typed (a key with a CR in it) are shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(e))


def main(argv: list[str] | None = None) -> int:
    from search_space.spec import SpecError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UsageError, SpecError, FileNotFoundError) as e:
        print(f"pocketdiff: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        if getattr(e, "user_error", False):  # e.g. studies.runner.StudyError: unreachable storage
            print(f"pocketdiff: error: {_one_line(e)}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("pocketdiff: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # `python -m pocketdiff.cli` (torchrun's form) runs this file as __main__; the commands import
    # `pocketdiff.cli.UsageError`, a second copy of the class, so run the imported module's main to catch it.
    from pocketdiff.cli import main as _main
    sys.exit(_main())
