"""MUSE from many starting points: does it converge, and to the same answer?

The problems are the tests' (tests/test_muse.py), with their data and keys: the noisy funnel
with 1,000 and 10,000 latents (100 simulations), the Gaussian hierarchy (400) and the
constrained LogNormal example of muse_inference (200). For each start it prints whether MUSE
converged, its iterations, θ̂ ± σ and how far θ̂ lies from the estimate of the problem's first
start, in units of that estimate's σ (unconstrained space).

    python bench/muse_starts.py                  # 30 starts, about 2 minutes
    python bench/muse_starts.py --only lognormal --starts 3
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _report import report  # noqa: E402 (bench/ is on the path from here)


def problems():
    from muse import funnel_data
    from test_muse import CONSTRAINED, GAUSSIAN, gaussian_x_obs

    from galton.tasks import get

    for dim in (1000, 10000):
        yield f"funnel {dim}", get("funnel", dim=dim).problem, funnel_data(dim), 100, [0.0, -6.0, -3.0, -1.0, 1.0, 3.0, 6.0]
    yield "gaussian", GAUSSIAN, gaussian_x_obs(), 400, [
        {"mu": mu, "log_var": lv} for mu, lv in ((0.0, 1.0), (3.0, -3.0), (-2.0, 3.0), (1.0, -5.0))
    ]
    truth = {"mu": jnp.array([0.3, 0.7]), "sigma": jnp.array(1.0)}
    x = CONSTRAINED.simulate_flat(jax.random.key(0), CONSTRAINED.prior.flatten(truth))
    yield "lognormal", CONSTRAINED, x, 200, [
        {"mu": jnp.array(mu), "sigma": sigma} for mu in ((0.5, 0.5), (0.2, 0.8)) for sigma in (0.0, -1.0, 0.6, 1.2, 1.6, 2.0)
    ]


def label(start) -> str:
    if isinstance(start, dict):
        return ", ".join(f"{k}={[round(float(a), 2) for a in np.ravel(v)] if np.ndim(v) else round(float(v), 2)}" for k, v in start.items())
    return f"theta={start}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only the problems whose name starts with this")
    parser.add_argument("--starts", type=int, help="run only each problem's first few starts")
    args = parser.parse_args(argv)
    from galton.muse import muse

    warnings.simplefilter("ignore")  # (each run's warnings are summed up in its row)
    total = converged = 0
    for name, problem, x, nsims, starts in problems():
        if args.only and not name.startswith(args.only):
            continue
        starts = starts[: args.starts]
        print(f"\n{name} ({nsims} simulations)")
        first, worst, problem_converged = None, 0.0, 0
        for start in starts:
            total += 1
            t = time.perf_counter()
            try:
                r = muse(problem, x, theta_start=start, nsims=nsims, key=jax.random.key(0), progress=False)
            except Exception as e:  # noqa: BLE001 (a failure is a row of the table)
                print(f"  {label(start):34s} ERROR {type(e).__name__}: {str(e)[:90]}")
                continue
            first = r if first is None else first
            shift = float(np.max(np.abs(r.loc - first.loc) / first.std_unconstrained))
            worst = max(worst, shift) if r.converged else worst
            converged += r.converged
            problem_converged += r.converged
            estimate = ", ".join(f"{v:.4f} ± {s:.4f}" for v, s in zip(r.theta_flat, r.std))
            print(
                f"  {label(start):34s} {'converged' if r.converged else 'NOT converged':13s} {r.iterations:3d} its  "
                f"{estimate}  shift {shift:.3f} σ  {time.perf_counter() - t:5.1f} s"
            )
        print(f"  largest shift from the first start among the converged: {worst:.3f} σ")
        report("muse_starts", name, starts=len(starts), converged=problem_converged, shift_sigma=worst)
    print(f"\n{converged} of {total} starts converged")
    report("muse_starts", "all", starts=total, converged=converged)
    return 0


if __name__ == "__main__":
    sys.exit(main())
