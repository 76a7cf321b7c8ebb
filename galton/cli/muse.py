"""``galton muse TASK``: MUSE on a benchmark task that is a `Program`, printed against its reference."""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np


def add_command(subparsers) -> argparse.ArgumentParser:
    """Add the ``muse`` command to the ``galton`` parser's subparsers; returns its parser."""
    muse = subparsers.add_parser("muse", help="estimate a Program task's parameters by MUSE, marginalising its latents")
    muse.add_argument("task", help="task name; its problem must be a Program (e.g. funnel)")
    muse.add_argument("--dim", type=int, help="latent dimension, for tasks that take one (funnel)")
    muse.add_argument("--observation", type=int, default=1, help="which of the task's standard observations")
    muse.add_argument("--nsims", type=int, default=100)
    muse.add_argument("--seed", type=int, default=0)
    muse.add_argument("--max-iterations", type=int, default=50)
    muse.add_argument("--theta-rtol", type=float, default=1e-2)
    muse.add_argument("--jacobian", choices=["implicit", "finite_difference"], default="implicit")
    muse.add_argument("--predictive", type=int, default=200, metavar="N",
                      help="posterior predictive check with N replications (0: none)")
    muse.add_argument("--save", help="directory to save the result in (galton.posteriors.load reads it)")
    muse.add_argument("--no-progress", action="store_true")
    muse.set_defaults(handler=run)
    return muse


def run(args) -> int:
    """Handler of ``galton muse``: run, print the result (and the reference posterior where known)."""
    from galton import tasks
    from galton.cli.run import output_directory
    from galton.muse import muse

    options = {} if args.dim is None else {"dim": args.dim}
    task = tasks.get(args.task, **options)
    if args.save:
        output_directory(args.save, "--save")
    x_obs = task.observation(args.observation)
    start = time.perf_counter()
    result = muse(
        task.problem, x_obs, nsims=args.nsims, key=jax.random.key(args.seed), max_iterations=args.max_iterations,
        theta_rtol=args.theta_rtol, jacobian=args.jacobian, progress=not args.no_progress,
    )
    elapsed = time.perf_counter() - start
    print(result)
    print(f"wall time {elapsed:.2f} s (compilation included), {result.n_gradient_evaluations} gradient evaluations")
    if task.reference is not None:
        draws = np.asarray(task.reference_posterior(x_obs, 20_000, key=jax.random.key(args.seed + 1)))
        print("reference posterior: " + ", ".join(f"{n} = {m:.4g} ± {s:.2g}" for n, m, s in zip(task.names, draws.mean(0), draws.std(0))))
    if args.predictive:
        from galton.predictive import predictive_check

        print(predictive_check(result, task.problem, x_obs, key=jax.random.key(args.seed + 2), n=args.predictive))
    if args.save:
        print(f"saved to {result.save(args.save)}")
    return 0

