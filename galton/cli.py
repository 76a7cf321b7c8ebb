"""The ``galton`` command: ``galton tasks``, ``galton simulate TASK ...``, ``galton muse TASK ...``."""

from __future__ import annotations

import argparse
import sys
import time

import jax


def _tasks(args) -> int:
    from galton import tasks
    from galton.problem import Program

    print(f"{'task':26s} {'kind':9s} {'θ dim':>5s} {'x dim':>6s}  reference  parameters")
    for name in tasks.names():
        task = tasks.get(name)
        problem = task.problem
        x_dim = jax.eval_shape(problem.simulate_flat, jax.random.key(0), jax.numpy.zeros(problem.prior.dim)).shape
        kind = "program" if isinstance(problem, Program) else "simulator"
        ref = "yes" if task.reference is not None else "-"
        names = ", ".join(task.names[:5]) + (", ..." if len(task.names) > 5 else "")
        print(f"{name:26s} {kind:9s} {problem.prior.dim:5d} {str(x_dim[0] if x_dim else 1):>6s}  {ref:9s}  {names}")
    return 0


def _simulate(args) -> int:
    from galton import tasks
    from galton.simulate import simulate

    task = tasks.get(args.task)
    start = time.perf_counter()
    sims = simulate(
        task.problem,
        args.n,
        key=jax.random.key(args.seed),
        store=args.store,
        chunk_size=args.chunk_size,
        on_invalid=args.on_invalid,
    )
    elapsed = time.perf_counter() - start
    print(f"{len(sims)} simulations of {args.task} in {elapsed:.2f} s: theta {sims.theta.shape}, x {sims.x.shape}")
    if sims.n_dropped:
        print(f"dropped {sims.n_dropped} with non-finite x")
    if args.store:
        print(f"stored in {args.store}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="galton", description="Simulation-based inference in JAX.")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("tasks", help="list the benchmark tasks").set_defaults(handler=_tasks)

    sim = commands.add_parser("simulate", help="simulate a task, optionally into a resumable store")
    sim.add_argument("task", help="task name (see `galton tasks`)")
    sim.add_argument("-n", type=int, required=True, help="number of simulations")
    sim.add_argument("--store", help="zarr store path; rerun the same command to resume")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--chunk-size", type=int, default=1000)
    sim.add_argument("--on-invalid", choices=["raise", "drop", "keep"], default="raise")
    sim.set_defaults(handler=_simulate)
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
