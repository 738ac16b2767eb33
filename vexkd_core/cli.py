"""What every vexkd command-line tool shares: user errors are one line, never a traceback."""
from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Callable, Iterator, Sequence

from .allocator import use_chosen_allocator


class CliError(Exception):
    """A user error (missing file, bad flag, dataset in the wrong shape): one line, exit 2."""


class _ProbeFailed(Exception):
    """An error met by the probe parse; the real parse that follows reports it."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag on one line instead of the usage block, and an
    unknown argument before any other error.

    argparse alone checks required flags first, so `synth --outt x` says "--out is
    required" and hides the typo that caused it. parse_args therefore first parses with
    nothing required (a probe, whose errors are swallowed) to find the arguments no parser
    of the tree knows. Subparsers must be OneLineParsers too (add_subparsers' default).
    """

    _probing = False

    def error(self, message: str) -> None:  # type: ignore[override]
        if self._probing:
            raise _ProbeFailed(message)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        args = sys.argv[1:] if args is None else list(args)
        self._refuse_unknown(self._unknown_arguments(args))
        parsed, unknown = self.parse_known_args(args, namespace)
        self._refuse_unknown(unknown)
        return parsed

    def _unknown_arguments(self, args: list[str]) -> list[str]:
        with _relaxed(self):
            try:
                return self.parse_known_args(args)[1]
            except _ProbeFailed:  # e.g. a bad value before the unknown one: the real parse says so
                return []

    def _refuse_unknown(self, unknown: list[str]) -> None:
        if unknown:
            self.error(f"unknown argument{'s' if len(unknown) > 1 else ''} {' '.join(unknown)}")


def _parser_tree(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and every subparser below it, each once (aliases share a parser)."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += _parser_tree(child)
    return found


@contextlib.contextmanager
def _relaxed(parser: argparse.ArgumentParser) -> Iterator[None]:
    """For the probe: nothing in the tree is required and errors raise instead of exiting."""
    parsers = _parser_tree(parser)
    required = [(item, item.required) for p in parsers for item in (*p._actions, *p._mutually_exclusive_groups)]
    try:
        for item, _ in required:
            item.required = False
        for p in parsers:
            p._probing = True
        yield
    finally:
        for item, was_required in required:
            item.required = was_required
        for p in parsers:
            p._probing = False


def run_cli(parser: argparse.ArgumentParser, handlers: dict[str, Callable[[argparse.Namespace], None]],
            argv: list[str] | None = None) -> int:
    use_chosen_allocator()  # before the command allocates: see vexkd_core/allocator.py
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
