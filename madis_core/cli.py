"""The ``madis`` command: one entry point, one module per subcommand.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their subcommand runs, so ``madis predict`` does not
pay for the training stack.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from madis_core.command import run_subcommand, setup_logging

SUBCOMMANDS = {
    "predict": ("madis_core.predict", "disparity, depth and a point cloud for one stereo pair"),
    "evaluate": ("madis_core.evaluate", "accuracy and latency of models on datasets (SGBM alongside)"),
    "models": ("madis_core.models.cli", "list the registered models with their parameter counts"),
    "train": ("madis_core.training.train", "train a model from a YAML config (CPU, GPU, torchrun DDP)"),
    "distill": ("madis_core.training.distill", "distil a teacher into the fast student"),
    "export": ("madis_core.export", "export a model to ONNX or TorchScript"),
    "adapt": ("madis_core.adaptation.cli", "self-supervised adaptation to unlabeled pairs of your camera"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="madis", description="madis-stereo: stereo depth with MaDis-Stereo and a distilled real-time student")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    top, rest = parser.parse_known_args(argv)
    setup_logging(top.verbose)
    if top.command is None:
        parser.print_help()
        return 2
    module_name, help_text = SUBCOMMANDS[top.command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        print(f"madis {top.command}: not available in this install ({exc})", file=sys.stderr)
        return 2
    return run_subcommand(f"madis {top.command}", module, rest, help_text)


if __name__ == "__main__":
    sys.exit(main())
