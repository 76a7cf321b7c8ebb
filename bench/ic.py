"""method="ic" (inference compilation, issue 17): importance sampling with a trained proposal against
the exact posterior, and its time per effective sample next to NUTS's.

    python bench/ic.py [--dims 10 100] [--budget 100000] [--epochs 200] [--mixture-budget 100000]

For each number of funnel latents: ``--budget`` joint simulations, one fit of the proposal (early
stopping, at most ``--epochs`` epochs), 10,000 importance draws at observation 1; prints the
ESS (as a fraction of the draws), Pareto k̂, C2ST against the exact grid posterior, and the
seconds per effective sample with and without simulating and fitting (the fit is paid once and
amortised over every x; the draws are paid per x). NUTS on the same program (4 chains of 1,000,
non-centred below 100 latents as in bench/nuts.py) gives seconds per bulk-ESS of θ. Then the
Gaussian mixture with 16 discrete assignments (mixture_assignments, observation 1), where NUTS
cannot go: IC's categorical head.
"""

from __future__ import annotations

import argparse
import time

import jax
from _report import report

import galton
from galton.methods import IC
from galton.train import Training


def run_ic(task, x, budget: int, epochs: int, seed: int) -> dict:
    method = IC(draws=10_000, training=Training(learning_rate=1e-3, batch_size=256, max_epochs=epochs, patience=10))
    start = time.perf_counter()
    sims = galton.simulate(task.problem, budget, key=jax.random.key(seed), keep_latents=True, progress=False)
    simulate_s = time.perf_counter() - start
    post = galton.infer(task.problem, x, method=method, simulations=sims, budget=budget, key=jax.random.key(seed + 1), progress=False)
    info = post.info
    c2st = galton.diagnostics.compare(post, task.reference_posterior(x, 2000, key=jax.random.key(seed + 2)), show=False)["c2st"]
    total = simulate_s + info["fit_seconds"] + info["sample_seconds"]
    return {"ess_fraction": info["ess_fraction"], "pareto_k": info["pareto_k"], "c2st": c2st, "epochs": info["epochs"],
            "simulate_s": simulate_s, "fit_s": info["fit_seconds"], "sample_s": info["sample_seconds"], "galton_s": total,
            "s_per_ess": total / info["ess"], "sample_s_per_ess": info["sample_seconds"] / info["ess"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--budget", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--mixture-budget", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for dim in args.dims:
        task = galton.tasks.get("funnel", dim=dim)
        x = task.observation(1)
        ic = run_ic(task, x, args.budget, args.epochs, args.seed)
        start = time.perf_counter()
        nuts = galton.infer(task.problem, x, method="nuts", reparam="noncentered" if dim < 100 else None, key=jax.random.key(args.seed),
                            progress=False)
        nuts_s = time.perf_counter() - start
        nuts_ess = nuts.info["ess_bulk"]["theta"]
        nuts_c2st = galton.diagnostics.compare(nuts, task.reference_posterior(x, 2000, key=jax.random.key(args.seed + 2)), show=False)["c2st"]
        print(f"funnel {dim:4d} latents, {args.budget} simulations: IC ESS {100 * ic['ess_fraction']:.1f} % of draws, "
              f"k̂ {ic['pareto_k']:.2f}, C2ST {ic['c2st']:.3f}, {ic['epochs']} epochs; simulate {ic['simulate_s']:.1f} s, "
              f"fit {ic['fit_s']:.1f} s, draws {ic['sample_s']:.1f} s: {1e3 * ic['s_per_ess']:.1f} ms per effective sample "
              f"({1e3 * ic['sample_s_per_ess']:.2f} ms without simulating and fitting) | NUTS {nuts_s:.1f} s, ESS {nuts_ess:.0f}, "
              f"C2ST {nuts_c2st:.3f}: {1e3 * nuts_s / nuts_ess:.1f} ms per effective sample", flush=True)
        report("ic", f"funnel {dim}", simulations=args.budget, **ic, nuts_s=nuts_s, nuts_ess=nuts_ess, nuts_c2st=nuts_c2st,
               nuts_s_per_ess=nuts_s / nuts_ess)
    task = galton.tasks.get("mixture_assignments")
    x = task.observation(1)
    ic = run_ic(task, x, args.mixture_budget, args.epochs, args.seed)
    print(f"mixture_assignments (16 discrete latents), {args.mixture_budget} simulations: IC ESS {100 * ic['ess_fraction']:.1f} % "
          f"of draws, k̂ {ic['pareto_k']:.2f}, C2ST {ic['c2st']:.3f}, {ic['epochs']} epochs; fit {ic['fit_s']:.1f} s, "
          f"draws {ic['sample_s']:.1f} s: {1e3 * ic['s_per_ess']:.1f} ms per effective sample (NUTS: discrete latents)", flush=True)
    report("ic", "mixture_assignments", simulations=args.mixture_budget, **ic)


if __name__ == "__main__":
    main()
