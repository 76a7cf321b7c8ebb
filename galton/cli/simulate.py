"""``galton simulate TASK -n N [--store PATH]``: simulate a task, resumably into a zarr store."""

from __future__ import annotations

import time

import jax


def add_command(subparsers) -> None:
    sim = subparsers.add_parser("simulate", help="simulate a task, optionally into a resumable store")
    sim.add_argument("task", help="task name (see `galton tasks`)")
    sim.add_argument("-n", type=int, required=True, help="number of simulations")
    sim.add_argument("--store", help="zarr store path; rerun the same command to resume")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--chunk-size", type=int, default=1000)
    sim.add_argument("--on-invalid", choices=["raise", "drop", "keep"], default="raise")
    sim.set_defaults(handler=run)


def run(args) -> int:
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
