"""The ``galton`` command, one module per subcommand: ``tasks``, ``simulate``, ``run`` (and
``demo``), ``muse``."""

from __future__ import annotations

import argparse
import sys

from galton.cli import muse, run, simulate, tasks


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="galton", description="Simulation-based inference in JAX.")
    commands = parser.add_subparsers(dest="command", required=True)
    tasks.add_command(commands)
    simulate.add_command(commands)
    run.add_commands(commands)
    muse.add_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, KeyError, RuntimeError) as err:
        print(f"galton {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
