"""Runs in the peers' environment (.venv-peers): pyabc 0.13's ABC-SMC on one sbibm observation.

    python bench/peers/pyabc_smc.py IN.npz OUT.npz --task TASK --population N --budget B \
        --alpha 0.5 --seed S [--sampler single|multicore] [--n-samples 10000]

IN holds x_obs (d_x,), the prior as low (d,), high (d,) (box uniform) and scale (d_x,): the
per-dimension scale of the summaries (the summaries are x itself), computed by galton on
prior-predictive simulations so that both tools use one distance,
d(x, x_o) = sqrt(Σ_i ((x_i - x_o,i) / scale_i)²). Tasks: two_moons, gaussian_linear, slcp,
slcp_distractors (NumPy simulators from TASKS.md, in _tasks_numpy.py).

The procedure is pyabc.ABCSMC with its defaults except where named: the box-uniform prior as
pyabc.Distribution of RV("uniform", low, high - low) per parameter; pyabc.PNormDistance(p=2) with
fixed weights 1/scale (pyabc puts the weights inside the norm, |w_i (s_i - s0_i)|^p, so 1/scale and
not 1/scale² gives the formula above); population_size N; its default MultivariateNormalTransition;
eps = pyabc.QuantileEpsilon(alpha), whose first threshold is the alpha-quantile of a calibration
sample of N prior simulations (pyabc's default); run(max_total_nr_simulations=B) with no limit on
generations. pyabc checks the budget after each generation, so the run can end past B, and the
calibration sample counts towards it. The database is an sqlite file in a temporary directory.
Sampler: `multicore` (default) is pyabc's default MulticoreEvalParallelSampler(n_procs=2), whose
forked workers reseed NumPy from the OS (np.random.seed()), so its runs are not reproducible;
`single` is pyabc.sampler.SingleCoreSampler, reproducible given --seed (NumPy's global RNG, which
pyabc, the prior and the simulators draw from).

OUT gets samples (n, d): --n-samples draws with replacement from the last population by its
weights; particles (N, d) and weights (N,) of the last population; seconds (from just before
abc.new to the return of run, imports excluded); simulations (history.total_nr_simulations: all
the simulations pyabc ran, calibration included); generations; epsilons, acceptance and
generation_simulations (per generation: the threshold, accepted / simulated, simulations).
Prints nothing but errors.
"""

import argparse
import logging
import os
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")

import numpy as np

import pyabc
from pyabc.sampler import MulticoreEvalParallelSampler, SingleCoreSampler

from _tasks_numpy import TASKS, simulator_fn  # this folder: the script's directory is on sys.path

logging.getLogger("ABC").setLevel(logging.ERROR)  # every pyabc logger is a child of "ABC"


def make_model(sim, names):
    def model(par):
        theta = np.array([par[name] for name in names], dtype=float)
        return {"x": np.asarray(sim(theta), dtype=float).reshape(-1)}

    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("inp")
    parser.add_argument("out")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--population", type=int, default=1000, help="population size N")
    parser.add_argument("--budget", type=int, required=True, help="max_total_nr_simulations")
    parser.add_argument("--alpha", type=float, default=0.5, help="QuantileEpsilon's quantile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", choices=["single", "multicore"], default="multicore")
    parser.add_argument("--n-samples", type=int, default=10_000)
    args = parser.parse_args()

    np.random.seed(args.seed)
    data = np.load(args.inp)
    low, high = np.asarray(data["low"], float), np.asarray(data["high"], float)
    x_obs = np.asarray(data["x_obs"], float).reshape(-1)
    scale = np.asarray(data["scale"], float).reshape(-1)
    if scale.shape != x_obs.shape or np.any(scale <= 0):
        raise SystemExit(f"scale must be positive with the shape of x_obs {x_obs.shape}")
    d = low.size
    names = [f"theta{i:03d}" for i in range(d)]  # zero-padded: pyabc returns columns sorted by name

    prior = pyabc.Distribution(**{n: pyabc.RV("uniform", lo, hi - lo) for n, lo, hi in zip(names, low, high)})
    # {t: array}: the weights of generation t and every later one (PNormDistance.for_t_or_latest); the
    # calibration sample and generation 0 are both scored with t = 0.
    distance = pyabc.PNormDistance(p=2, fixed_weights={0: 1.0 / scale})
    sampler = SingleCoreSampler() if args.sampler == "single" else MulticoreEvalParallelSampler(n_procs=2)
    abc = pyabc.ABCSMC(
        make_model(simulator_fn(args.task), names),
        prior,
        distance,
        population_size=args.population,
        eps=pyabc.QuantileEpsilon(alpha=args.alpha),
        sampler=sampler,
    )

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        abc.new("sqlite:///" + os.path.join(tmp, "pyabc.db"), {"x": x_obs})
        history = abc.run(max_total_nr_simulations=args.budget)
        seconds = time.perf_counter() - start

        frame, weights = history.get_distribution()
        particles = frame[names].to_numpy(dtype=float)
        populations = history.get_all_populations()
        populations = populations[populations.t >= 0].sort_values("t")
        simulations = int(history.total_nr_simulations)
        generations = int(history.max_t) + 1
        del history, abc  # close the sqlite engine before the directory goes

    weights = np.asarray(weights, float)
    idx = np.random.choice(len(particles), size=args.n_samples, replace=True, p=weights / weights.sum())
    gen_sims = populations.samples.to_numpy(dtype=int)
    np.savez(
        args.out,
        samples=particles[idx].astype(np.float32),
        particles=particles,
        weights=weights,
        seconds=seconds,
        simulations=simulations,
        generations=generations,
        epsilons=populations.epsilon.to_numpy(dtype=float),
        acceptance=populations.particles.to_numpy(dtype=float) / gen_sims,
        generation_simulations=gen_sims,
    )


if __name__ == "__main__":
    main()
