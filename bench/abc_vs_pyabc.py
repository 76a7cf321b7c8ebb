"""galton's SMC-ABC next to pyabc 0.13's ABCSMC: the same prior, distance, population size,
ε schedule and simulation budget, on sbibm observations.

    python bench/abc_vs_pyabc.py [--tasks two_moons slcp] [--observations 1 2 3]
                                 [--budget 100000] [--population 1000] [--alpha 0.5]
                                 [--sampler multicore|single]

The distance is one fixed formula for both: d(x, x_o) = ‖(x − x_o) / scale‖₂ with scale the
per-dimension median absolute deviation of 10,000 prior-predictive simulations (galton gets it
as a user distance, pyabc as PNormDistance's fixed weights 1/scale). Both start from N prior
draws (pyabc's calibration sample, galton's generation 0) and set ε_t to the alpha quantile of
the last generation's distances; both perturb with a Gaussian of the weighted covariance times
Silverman's bandwidth² (pyabc's default MultivariateNormalTransition, galton's default kernel).
pyabc checks its budget only
between generations, so it may run past it; both actual counts are printed. pyabc runs in
.venv-peers through bench/peers/pyabc_smc.py with its default sampler (2 processes). galton is
timed in this process from the first simulation to the last generation, cold (its first run,
compiling) and warm (the same run again), and run once more with the budget set to the count
pyabc actually spent ("galton, pyabc's count"), so that accuracy is compared at equal cost. Draws: 10,000 resampled by weight from each final
population; C2ST on 3,000 of them against 3,000 reference samples.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _report import report
from sbibm import reference_samples

import galton
from galton.diagnostics import c2st
from galton.methods import SMCABC
from galton.methods.abc import mad_scale
from galton.tasks import get

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
SCORED = 3000
BOX = {"two_moons": 1.0, "slcp": 3.0, "slcp_distractors": 3.0}


def scaled_euclidean(scale: np.ndarray):
    scale = jnp.asarray(scale)
    return lambda s, s_obs: jnp.sqrt(jnp.sum(((s - s_obs) / scale) ** 2))


def score(samples: np.ndarray, reference: np.ndarray) -> float:
    rng = np.random.default_rng(0)
    return float(c2st(reference[rng.permutation(len(reference))[:SCORED]], samples[rng.permutation(len(samples))[:SCORED]]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["two_moons", "slcp"])
    parser.add_argument("--observations", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--budget", type=int, default=100_000)
    parser.add_argument("--population", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--sampler", choices=["multicore", "single"], default="multicore")
    args = parser.parse_args()
    if not PEERS_PYTHON.exists():
        sys.exit(f"no peers environment at {PEERS_PYTHON}: python3 -m venv .venv-peers && .venv-peers/bin/pip install -r bench/requirements-peers.txt")
    with tempfile.TemporaryDirectory() as workdir:
        inp, out = Path(workdir) / "in.npz", Path(workdir) / "out.npz"
        for name in args.tasks:
            task = get(name)
            pilot = galton.simulate(task.problem, 10_000, key=jax.random.key(123), progress=False)
            scale = mad_scale(np.asarray(pilot.x).reshape(len(pilot.x), -1))
            rows = {}
            for k in args.observations:
                x_obs = np.asarray(task.observation(k))
                reference = reference_samples(task, k)
                d = len(task.names)
                np.savez(inp, x_obs=x_obs, low=np.full(d, -BOX[name]), high=np.full(d, BOX[name]), scale=scale)
                peer = [str(PEERS_PYTHON), str(ROOT / "bench/peers/pyabc_smc.py"), str(inp), str(out), "--task", name,
                        "--population", str(args.population), "--budget", str(args.budget), "--alpha", str(args.alpha),
                        "--seed", str(k), "--sampler", args.sampler]
                subprocess.run(peer, check=True)
                r = np.load(out)
                rows.setdefault("pyabc", []).append((float(r["seconds"]), score(r["samples"], reference), int(r["simulations"]),
                                                     int(r["generations"]), float(r["epsilons"][-1])))
                method = SMCABC(population=args.population, alpha=args.alpha, distance=scaled_euclidean(scale))
                runs = (("galton cold", args.budget), ("galton warm", args.budget), ("galton, pyabc's count", int(r["simulations"])))
                for label, budget in runs:
                    start = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        post = galton.infer(task.problem, x_obs, key=jax.random.key(k), method=method, budget=budget, progress=False)
                    seconds = time.perf_counter() - start
                    draws = np.asarray(post.sample(10_000, key=jax.random.key(100 + k)))
                    rows.setdefault(label, []).append((seconds, score(draws, reference), post.info["simulations"],
                                                       len(post.info["generations"]), post.info["epsilon"]))
                for label, values in rows.items():
                    s, c, sims, gens, eps = values[-1]
                    print(f"{name} obs {k} {label:22s} {s:7.1f} s  C2ST {c:.3f}  {sims:7d} simulations  {gens:3d} generations  final ε {eps:.4g}", flush=True)
            means = {label: np.mean([v[:3] for v in values], axis=0) for label, values in rows.items()}
            for label, (s, c, sims) in means.items():
                print(f"{name} mean {label:22s} {s:7.1f} s  C2ST {c:.3f}  {sims:9.0f} simulations")
                report("abc_vs_pyabc", f"{label}, {name}", total_s=s, c2st=c, simulations=sims)
            for label in ("galton cold", "galton warm"):
                ratio = means["pyabc"][0] / means[label][0]
                print(f"{name}: speed-up of {label} over pyabc: {ratio:.1f}x (C2ST {means[label][1]:.3f} vs {means['pyabc'][1]:.3f})")
                report("abc_vs_pyabc", f"{label} / pyabc, {name}", galton_s=means[label][0], peer_s=means["pyabc"][0], ratio=ratio,
                       c2st=means[label][1], peer_c2st=means["pyabc"][1])


if __name__ == "__main__":
    main()
