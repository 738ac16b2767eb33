"""What every vexkd command-line tool shares: user errors are one line, never a traceback."""
from __future__ import annotations

import argparse
import sys
from typing import Callable


class CliError(Exception):
    """A user error (missing file, bad flag, dataset in the wrong shape): one line, exit 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag on one line instead of the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run_cli(parser: argparse.ArgumentParser, handlers: dict[str, Callable[[argparse.Namespace], None]],
            argv: list[str] | None = None) -> int:
    args = parser.parse_args(argv)
    try:
        handlers[args.command](args)
    except CliError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    return 0
