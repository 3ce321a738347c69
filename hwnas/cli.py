"""The `hwnas` command: a thin shell over the library; bad input ends in one line and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hwnas import __version__
from hwnas.commands import (
    board_cmds,
    compile_cmds,
    detect_cmds,
    import_cmds,
    pipeline,
    search_cmds,
    space_cmds,
    target_cmds,
    train_cmds,
)
from hwnas.errors import HwnasError
from hwnas.logs import setup_logging

COMMANDS = (
    space_cmds,
    train_cmds,
    detect_cmds,
    compile_cmds,
    target_cmds,
    board_cmds,
    search_cmds,
    import_cmds,
    pipeline,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hwnas", description="Hardware-aware neural architecture search for binary neural networks."
    )
    parser.add_argument("--version", action="version", version=f"hwnas {__version__}")
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="show warnings and errors only")
    loud.add_argument("-v", "--verbose", action="store_true", help="show debug logs too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(-1 if args.quiet else 1 if args.verbose else 0)
    try:
        args.func(args)
    except HwnasError as exc:
        print(f"hwnas: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hwnas: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
