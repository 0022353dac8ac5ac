"""`python -m gpuserve`: serve, devices, backends, plan, selfcheck, build, k8s.

Each subcommand lives in its own module with `register(subparsers)`, which
adds its parser and sets `run=` to a function `(args) -> exit code`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from gpuserve import __version__

SUBCOMMANDS = ("serve", "devices", "backends", "plan", "selfcheck", "build", "k8s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpuserve",
        description="Serve models on GPUs over HTTP.",
    )
    parser.add_argument("--version", action="version", version=f"gpuserve {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"gpuserve.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Warnings (a cut-short CUDA_VISIBLE_DEVICES, ...) reach stderr; `serve` sets up its own log format.
    logging.basicConfig(level=logging.WARNING, format="gpuserve: %(levelname)s: %(message)s")
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
