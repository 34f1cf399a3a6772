"""Running one subcommand module: what ``madis SUB`` and ``python -m <module>`` share.

A subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
``run_subcommand`` parses its arguments, sets up logging and turns the errors a user
can fix (bad values, missing files, no CUDA) into one line on stderr and exit status 1.
This module imports no project module, so any module may use it for its ``__main__``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from types import ModuleType
from typing import List, Optional


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def run_subcommand(prog: str, module: ModuleType, argv: Optional[List[str]] = None, description: str = "") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=description or (module.__doc__ or "").split("\n\n")[0])
    module.add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1


def run_as_main(prog: str, module_name: str = "__main__") -> None:
    """What ``python -m <module>`` of a subcommand module runs (torchrun uses it): the same as ``prog``."""
    setup_logging()
    sys.exit(run_subcommand(prog, sys.modules[module_name]))
