"""The ``jafr`` command (also ``python -m jafr_kernels``): it only parses arguments and hands over.

Subcommands register themselves: ``jafr train`` (jafr_kernels.train.cli), ``jafr study`` and
``jafr eval`` (jafr_kernels.eval.cli), ``jafr info``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

_SUBCOMMAND_MODULES = ("jafr_kernels.train.cli", "jafr_kernels.eval.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jafr", description="Jacobian Frequency Regularization: train, evaluate, report.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="show which backends were built and which can run here")
    info.set_defaults(func=lambda args: importlib.import_module("jafr_kernels.info").main())
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
