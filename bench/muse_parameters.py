"""MUSE with many hyperparameters (issue 17, acceptance 4a): 20 coupled funnels against the exact posterior.

    python bench/muse_parameters.py [--groups 20] [--per-group 500] [--nsims 500 2000] [--nuts]

`coupled_funnels`: θ ``(G,)`` log-variances, group g's variance e^{θ_g + 0.5 θ_{g+1}} over m
latents, x = z + N(0, 1); its posterior has correlations from about −0.6 to 0.3. The
reference is NUTS over θ alone on the exact marginal likelihood (4 chains, 16,000 draws).
For each nsims it prints MUSE's wall time (first call, compilation included), each
parameter's σ ratio to the exact σ (the worst), the largest mean shift (in exact σ), and the
largest error of a correlation. ``--nuts`` also times NUTS over θ and all G·m latents (the
full joint, 4 chains of 500 after 500 warm-up) for the speed comparison.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from _report import report

import galton


def correlation(cov: np.ndarray) -> np.ndarray:
    sd = np.sqrt(np.diag(cov))
    return cov / np.outer(sd, sd)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--per-group", type=int, default=500)
    parser.add_argument("--nsims", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--observation", type=int, default=1)
    parser.add_argument("--nuts", action="store_true", help="also time NUTS over θ and every latent")
    args = parser.parse_args()
    task = galton.tasks.get("coupled_funnels", groups=args.groups, per_group=args.per_group)
    x = task.observation(args.observation)
    reference = np.asarray(task.reference_posterior(x, 16_000, key=jax.random.key(1)))
    mean, sd, exact_corr = reference.mean(0), reference.std(0), np.corrcoef(reference.T)
    off = ~np.eye(args.groups, dtype=bool)
    print(f"coupled_funnels {args.groups} × {args.per_group}: exact σ {sd.min():.4f}–{sd.max():.4f}, "
          f"correlations {exact_corr[off].min():+.2f} to {exact_corr[off].max():+.2f}", flush=True)
    case = f"{args.groups} params x {args.per_group}"
    for nsims in args.nsims:
        start = time.perf_counter()
        result = galton.muse(task.problem, x, nsims=nsims, key=jax.random.key(2), progress=False)
        seconds = time.perf_counter() - start
        ratios = result.std / sd
        shift = np.abs(result.theta_flat - mean) / sd
        corr_error = np.abs(correlation(result.cov) - exact_corr)[off].max()
        print(f"  MUSE nsims {nsims:5d}: {seconds:6.1f} s, {result.iterations} iterations; σ ratio {ratios.min():.3f}–"
              f"{ratios.max():.3f} (worst {np.abs(ratios - 1).max():.1%} off), largest mean shift {shift.max():.3f} σ, "
              f"largest correlation error {corr_error:.3f}", flush=True)
        report("muse_parameters", f"{case}, nsims {nsims}", galton_s=seconds, sigma_ratio_min=float(ratios.min()),
               sigma_ratio_max=float(ratios.max()), mean_shift_max=float(shift.max()), correlation_error_max=float(corr_error))
    if args.nuts:
        start = time.perf_counter()
        post = galton.infer(task.problem, x, method="nuts", num_samples=500, num_warmup=500, key=jax.random.key(3), progress=False)
        seconds = time.perf_counter() - start
        draws = np.asarray(post.theta)
        ratios = draws.std(0) / sd
        print(f"  NUTS over θ and {args.groups * args.per_group} latents: {seconds:6.1f} s; σ ratio {ratios.min():.3f}–"
              f"{ratios.max():.3f}, worst R-hat {max(post.info['r_hat'].values()):.3f}", flush=True)
        report("muse_parameters", f"{case}, NUTS joint", peer_s=seconds, sigma_ratio_min=float(ratios.min()),
               sigma_ratio_max=float(ratios.max()))


if __name__ == "__main__":
    main()
