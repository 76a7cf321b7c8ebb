"""Simulation throughput: galton's vmapped path vs a Python loop, and the process pool for NumPy.

    python bench/simulate.py [--n 100000]

Prints simulations per second for each path and the speed-ups, as a table.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from _report import report

from galton import Simulator
from galton.simulate import simulate
from galton.tasks import get


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def python_loop(problem, n, key):
    """What a user without galton writes: one jitted simulation per θ, called in a loop."""
    one = jax.jit(problem.simulate_flat)
    theta = problem.prior.sample(key, (n,))
    keys = jax.random.split(key, n)
    one(keys[0], theta[0]).block_until_ready()  # compile outside the timing
    start = time.perf_counter()
    xs = [one(keys[i], theta[i]) for i in range(n)]
    jax.block_until_ready(xs)
    return time.perf_counter() - start


def numpy_two_moons(key, theta):
    """two_moons in NumPy, with a little extra work per call as a real simulator would have."""
    rng = np.random.default_rng(key)
    a = rng.uniform(-np.pi / 2, np.pi / 2)
    r = rng.normal(0.1, 0.01)
    z0 = (theta[0] + theta[1]) / np.sqrt(2)
    z1 = (theta[1] - theta[0]) / np.sqrt(2)
    np.linalg.eigvalsh(rng.normal(size=(40, 40)))  # stands in for a simulator's own computation
    return np.array([r * np.cos(a) + 0.25 - abs(z0), r * np.sin(a) + z1], dtype=np.float32)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000, help="simulations for the vmapped path")
    parser.add_argument("--n-loop", type=int, default=2_000, help="simulations for the Python loops")
    args = parser.parse_args()
    key = jax.random.key(0)
    rows = []
    chunk = min(10_000, args.n)
    for name in ["two_moons", "slcp", "sir"]:
        problem = get(name).problem
        # compile at the chunk size that is timed (warming up at another size left a compile in the timing)
        simulate(problem, chunk, key=jax.random.key(1), chunk_size=chunk, progress=False)
        _, vmapped = timed(lambda: simulate(problem, args.n, key=key, chunk_size=chunk, progress=False))
        loop = python_loop(problem, args.n_loop, key)
        rows.append((name, "vmapped chunks", args.n / vmapped, "python loop", args.n_loop / loop))

    prior = get("two_moons").problem.prior
    numpy_sim = Simulator(prior.distributions["theta"], numpy_two_moons, name="numpy_two_moons")
    n = args.n_loop
    theta = np.asarray(prior.sample(key, (n,)))
    keys = np.asarray(jax.random.key_data(jax.random.split(key, n)))
    _, serial = timed(lambda: [numpy_two_moons(keys[i], theta[i]) for i in range(n)])
    simulate(numpy_sim, 200, key=key, progress=False)  # start the pool's workers
    _, pooled = timed(lambda: simulate(numpy_sim, n, key=key, progress=False))
    rows.append(("numpy two_moons", "process pool", n / pooled, "python loop", n / serial))

    print(f"\n{'simulator':18s} {'galton path':16s} {'sims/s':>12s} {'baseline':12s} {'sims/s':>10s} {'speed-up':>9s}")
    for name, path, rate, base, base_rate in rows:
        print(f"{name:18s} {path:16s} {rate:12,.0f} {base:12s} {base_rate:10,.0f} {rate / base_rate:8.1f}x")
        report("simulate", f"{name}: {path} / {base}", galton_sims_per_s=rate, peer_sims_per_s=base_rate, ratio=rate / base_rate)
    print(f"\n(jax {jax.__version__}, {jax.devices()[0].platform}, {len(jax.devices())} device(s))")


if __name__ == "__main__":
    main()
