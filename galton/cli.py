"""The ``galton`` command: ``galton tasks``, ``galton simulate TASK ...``, ``galton muse TASK ...``."""

from __future__ import annotations

import argparse
import sys
import time

import jax

from galton.muse_cli import add_muse_command


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


def _run(args) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from galton import plot, tasks
    from galton.diagnostics import c2st
    from galton.infer import infer
    from galton.posterior import samples_to_arviz

    task = tasks.get(args.task)
    x_obs, truth = task.observation(args.observation), task.true_parameters(args.observation)
    key_fit, key_sample, key_ref = jax.random.split(jax.random.key(args.seed), 3)
    start = time.perf_counter()
    posterior = infer(task.problem, x_obs, key=key_fit, method=args.method, budget=args.budget, rounds=args.rounds)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    samples = np.asarray(posterior.sample(args.samples, key=key_sample))
    sample_seconds = time.perf_counter() - start
    summary = {
        "task": args.task, "method": args.method, "budget": args.budget, "rounds": args.rounds,
        "observation": args.observation, "seed": args.seed, "fit_seconds": round(fit_seconds, 2),
        "sample_seconds": round(sample_seconds, 2), "epochs": [h["epochs"] for h in posterior.history],
        "posterior_mean": dict(zip(task.names, samples.mean(0).tolist())),
        "posterior_std": dict(zip(task.names, samples.std(0).tolist())),
        "true_parameters": dict(zip(task.names, np.asarray(truth).tolist())),
    }
    reference = None
    if task.reference is not None:
        reference = np.asarray(task.reference_posterior(x_obs, args.samples, key=key_ref))
        summary["c2st"] = round(float(c2st(reference, samples)), 4)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples_to_arviz(samples, task.names).to_netcdf(out / "samples.nc")
    plot.corner(samples, names=task.names, reference=reference, truth=np.asarray(truth)).savefig(out / "corner.png", dpi=100)
    plot.loss_curves(posterior.history[-1]).savefig(out / "loss.png", dpi=100)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{args.method} on {args.task}, observation {args.observation}, {args.budget} simulations in {args.rounds} round(s)")
    print(f"  fit {fit_seconds:.1f} s, {args.samples} samples in {sample_seconds:.1f} s")
    for name in task.names:
        print(f"  {name:>10s} = {summary['posterior_mean'][name]: .3f} ± {summary['posterior_std'][name]:.3f}   (true {summary['true_parameters'][name]: .3f})")
    if "c2st" in summary:
        print(f"  C2ST against the reference posterior: {summary['c2st']:.3f}  (0.5 = indistinguishable)")
    print(f"  wrote {out}/samples.nc, corner.png, loss.png, summary.json")
    return 0


def _demo(args) -> int:
    print("galton demo: neural posterior estimation on two_moons (sbibm), observation 1, 5,000 simulations")
    demo = argparse.Namespace(task="two_moons", method="npe", budget=5000, rounds=1, observation=1, samples=10_000, seed=0, out=args.out)
    return _run(demo)


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

    run = commands.add_parser("run", help="infer a task's posterior end to end and check it against the reference")
    run.add_argument("task", help="task name (see `galton tasks`)")
    run.add_argument("--method", choices=["npe", "nle", "nre"], default="npe")
    run.add_argument("--budget", type=int, default=10_000, help="total simulations")
    run.add_argument("--rounds", type=int, default=1, help="more than 1 for sequential inference")
    run.add_argument("--observation", type=int, default=1, help="which of the task's observations (1..10)")
    run.add_argument("--samples", type=int, default=10_000, help="posterior samples to draw")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", default="runs/latest", help="directory for samples, plots and summary")
    run.set_defaults(handler=_run)

    add_muse_command(commands)

    demo = commands.add_parser("demo", help="a small inference end to end (what ./dev demo runs)")
    demo.add_argument("--out", default="runs/demo")
    demo.set_defaults(handler=_demo)
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
