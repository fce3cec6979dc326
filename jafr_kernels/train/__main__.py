"""``python -m jafr_kernels.train [options]``: the same as ``jafr train [options]``."""
import sys

from jafr_kernels.cli import Parser, run_command
from jafr_kernels.train import cli


def main(argv=None) -> int:
    parser = Parser(prog="python -m jafr_kernels.train")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.register(sub)
    args = parser.parse_args(["train"] + list(sys.argv[1:] if argv is None else argv))
    return run_command(args, "jafr train")


if __name__ == "__main__":
    sys.exit(main())
