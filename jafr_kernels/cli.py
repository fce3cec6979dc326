"""The ``jafr`` command (also ``python -m jafr_kernels``): it only parses arguments and hands over.

Subcommands register themselves: ``jafr train`` (jafr_kernels.train.cli), ``jafr study`` and
``jafr eval`` (jafr_kernels.eval.cli), ``jafr analyze`` (jafr_kernels.eval.analyze), ``jafr info``. A user mistake (bad argument, missing data or run,
diverged training, Ctrl-C) ends with a one-line message on stderr and a non-zero exit code, not a traceback;
set ``JAFR_TRACEBACK=1`` to see the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

_SUBCOMMAND_MODULES = ("jafr_kernels.train.cli", "jafr_kernels.eval.cli", "jafr_kernels.eval.analyze")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line plus a pointer to ``--help`` (no multi-line usage)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n(see {self.prog} --help)\n")


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to options that take a value and have one; flags and ``None`` defaults (whose
    help says how they are chosen) get none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and action.nargs != 0 and action.default not in (None, argparse.SUPPRESS) \
                and "%(default)" not in text and "default" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="jafr", description="Jacobian Frequency Regularization: train, evaluate, report.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="show which backends were built and which can run here")
    info.set_defaults(func=lambda args: importlib.import_module("jafr_kernels.info").main())
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def run_command(args: argparse.Namespace, prog: str) -> int:
    """Run ``args.func(args)``; expected failures become ``<prog>: error: <one line>`` and exit code 1 (130 on Ctrl-C)."""
    from jafr_kernels.train.checkpoint import CheckpointError
    from jafr_kernels.train.data import DatasetError
    from jafr_kernels.train.loop import DoubleBackwardError, NonFiniteLossError

    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError, DatasetError, CheckpointError, NonFiniteLossError,
            DoubleBackwardError) as exc:
        if os.environ.get("JAFR_TRACEBACK"):
            raise
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if os.environ.get("JAFR_TRACEBACK"):
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args, f"jafr {args.command}")


if __name__ == "__main__":
    sys.exit(main())
