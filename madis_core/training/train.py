"""``madis train CONFIG.yaml [key.sub=value ...] [--resume]``: the training command.

Runs ``madis_core.training.engine.run`` with the task named by the config's ``task``
key (default ``madis``). Multi-GPU / multi-node: start it with torchrun, e.g.

    torchrun --nproc_per_node 8 -m madis_core.training.train config/train/madis_base_sceneflow_mim.yaml
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training config (YAML), e.g. config/train/madis_tiny_cpu.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides such as optim.lr=1e-4 train.steps=200 output.dir=runs/x")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUTPUT_DIR/checkpoint.pt if it exists (bit-for-bit on the same setup)")
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")


def run(args: argparse.Namespace, task_factory=None) -> int:
    from madis_core.training.config import dump_config, load_config

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    from madis_core.training import engine

    engine.run(cfg, task_factory=task_factory, resume=args.resume)
    return 0


if __name__ == "__main__":  # python -m madis_core.training.train (what torchrun runs): `madis train`
    from madis_core.command import run_as_main

    run_as_main("madis train")
