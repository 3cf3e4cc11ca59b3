"""`pocketdiff <group> <command>`: one entry point; each group lives in its own `cmd_*.py` module.

A command module exposes `register(subparsers)`, which adds its parser(s) and sets `func` to a function
`(args) -> int`. Commands stay thin: parse, call a library function, print.
Errors a user can fix (bad spec values, unknown presets, missing files: `UserError` from any layer) are caught
here, in one place, and exit with code 2 and one line.
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


from search_space.errors import UserError


class UsageError(UserError):
    """A mistake in the command line itself; printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line: the mistake and where the usage is, not the usage itself (its
    sub-commands' parsers are of this class too: `add_subparsers` makes them with the parent's class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pocketdiff",
        description="Architecture search and ablation workbench for mobile text-to-image diffusion (SnapGen).",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more output")
    # its own dest: a sub-command's own -q (default False) would otherwise overwrite `pocketdiff -q ...`
    parser.add_argument("-q", "--quiet", action="store_true", dest="quiet_all", help="less output")
    sub = parser.add_subparsers(dest="group", metavar="<group>")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _train_alias(argv: list[str]) -> list[str]:
    """`train SPEC ...` is `train unet SPEC ...` (the form the README and torchrun jobs use)."""
    group = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if group is not None and argv[group] == "train" and group + 1 < len(argv) \
            and not argv[group + 1].startswith("-") and argv[group + 1] not in ("unet", "decoder"):
        return argv[:group + 1] + ["unet"] + argv[group + 1:]
    return argv


def _one_line(e: Exception) -> str:
    """The error as one line: control characters the user typed (a key with a CR in it) are shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(e))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_train_alias(list(sys.argv[1:] if argv is None else argv)))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args.quiet = args.quiet_all or getattr(args, "quiet", False)
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError) as e:  # every layer's fixable mistakes (search_space/errors.py)
        print(f"pocketdiff: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # a full disk where no writer named its file (search_space/outputs.py)
        from search_space.outputs import disk_error
        error = disk_error(e)
        if error is None:
            raise
        print(f"pocketdiff: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pocketdiff: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # `python -m pocketdiff.cli` (torchrun's form) runs this file as __main__; the commands import
    # `pocketdiff.cli.UsageError`, a second copy of the class, so run the imported module's main to catch it.
    from pocketdiff.cli import main as _main
    sys.exit(_main())
