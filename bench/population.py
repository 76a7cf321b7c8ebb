"""Population-level inference (issue 17, acceptance 3): ψ of a Gaussian hierarchy from one NLE.

    python bench/population.py [--objects 100] [--budget 20000] [--seeds 5] [--first-seed 0]
                               [--design data] [--widen 1.5] [--ensemble 1]
                               [--transforms 1] [--hidden 20] [--batch 2048] [--patience 200]

Each object has θ_i ~ N(μ, τ²) and two measurements x_i ~ N(θ_i, 0.5²); the hyperprior is
μ ~ N(0, 2²), τ ~ HalfNormal(2); truth μ = 0.5, τ = 0.8. One NLE is trained once on ``budget``
simulations of the per-object simulator. ``--design data`` (default) draws their θ from a normal
over the objects' means, ``--widen`` times their spread: the NLE learns p(x|θ), which does not
depend on where θ was drawn, so the budget goes where the population fit will look.
``--design prior`` draws θ ~ U(−4, 4), where half the simulations fall outside the population's
range. ``--ensemble`` flows are trained on those same simulations (keys differ; 1 is a single
NLE). The default flow is small and trained with little gradient noise (MAF of one transform,
width 20, batches of 2,048, learning rate 5e-4, patience 200): sbi's size with batches of 256
moved μ by up to 0.41 σ from seed to seed, depending on where early stopping landed;
`galton.population` then runs NUTS over (μ, τ, θ_1..θ_M) with the learned log-likelihoods
averaged over the ensemble. The exact posterior of (μ, τ) is on a 601 × 600 grid: the objects'
means are N(μ, τ² + 0.5²/2). Prints ψ's mean shift (in exact σ) and σ ratio per seed (a seed
draws the objects, the simulations and the chains).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
from _report import report

import galton
from galton.train import Training

SIGMA, MU, TAU = 0.5, 0.5, 0.8


def measure(key, t):
    return t + SIGMA * jax.random.normal(key, (2,))


OBJECT = galton.Simulator(dist.Uniform(-4.0, 4.0), measure, name="object")


def designed(xs: np.ndarray, widen: float) -> galton.Simulator:
    """The per-object simulator with θ from a normal over the objects' means, ``widen`` times their spread."""
    xbar = xs.mean(1)
    return galton.Simulator(dist.Normal(float(xbar.mean()), widen * float(xbar.std())), measure, name="object")


def hierarchy(m):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    tau = numpyro.sample("tau", dist.HalfNormal(2.0))
    with numpyro.plate("objects", m):
        return numpyro.sample("theta", dist.Normal(mu, tau))


def exact_moments(xs: np.ndarray) -> dict:
    xbar, s2 = xs.mean(1), SIGMA**2 / xs.shape[1]
    mu, tau = np.meshgrid(np.linspace(-1.5, 2.5, 601), np.linspace(0.01, 2.5, 600), indexing="ij")
    v = tau**2 + s2
    log_post = (-0.5 * (xbar[None, None] - mu[..., None]) ** 2 / v[..., None] - 0.5 * np.log(v[..., None])).sum(-1)
    log_post += dist.Normal(0.0, 2.0).log_prob(mu) + dist.HalfNormal(2.0).log_prob(tau)
    w = np.exp(log_post - log_post.max())
    w /= w.sum()
    out = {}
    for name, g in (("mu", mu), ("tau", tau)):
        m = float((w * g).sum())
        out[name] = (m, float(np.sqrt((w * (g - m) ** 2).sum())))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100)
    parser.add_argument("--budget", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--ensemble", type=int, default=1, help="NLEs trained on the same simulations, averaged")
    parser.add_argument("--transforms", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=20)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--patience", type=int, default=200)
    parser.add_argument("--design", choices=("prior", "data"), default="data",
                        help="draw the simulations' θ from U(-4, 4), or from a normal over the objects' means")
    parser.add_argument("--widen", type=float, default=1.5, help="--design data: the normal's σ over the means' spread")
    parser.add_argument("--first-seed", type=int, default=0)
    args = parser.parse_args()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        k_theta, k_x, k_sim, k_fit, k_nuts = jax.random.split(jax.random.key(seed), 5)
        theta = MU + TAU * np.asarray(jax.random.normal(k_theta, (args.objects,)))
        xs = theta[:, None] + SIGMA * np.asarray(jax.random.normal(k_x, (args.objects, 2)))
        start = time.perf_counter()
        simulator = OBJECT if args.design == "prior" else designed(xs, args.widen)
        sims = galton.simulate(simulator, args.budget, key=k_sim, progress=False)
        nle = galton.NLE(transforms=args.transforms, hidden=args.hidden,
                         training=Training(learning_rate=5e-4, batch_size=args.batch, patience=args.patience, max_epochs=5000))
        ensemble, epochs = [], []
        for member in range(args.ensemble):
            net, history = nle.fit(sims, simulator.prior, key=jax.random.fold_in(k_fit, member), progress=False)
            ensemble.append(nle.posterior(net, simulator.prior, [history]))
            epochs.append(history["epochs"])
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        result = galton.population(ensemble, xs, hierarchy, key=k_nuts)
        nuts_s = time.perf_counter() - start
        exact = exact_moments(xs)
        line = []
        for i, name in enumerate(("mu", "tau")):
            m, s = exact[name]
            draws = result.hyper.theta[:, i]
            shift, ratio = (draws.mean() - m) / s, draws.std() / s
            line.append(f"{name} {draws.mean():.3f} ± {draws.std():.3f} (exact {m:.3f} ± {s:.3f}; shift {shift:+.3f} σ, σ ratio {ratio:.3f})")
            report("population", f"{name} seed {seed}", mean_shift=float(shift), sigma_ratio=float(ratio), galton_s=fit_s + nuts_s)
        print(f"seed {seed}: {args.ensemble} NLE {fit_s:.0f} s ({epochs} epochs), NUTS over {args.objects + 2} parameters {nuts_s:.0f} s, "
              f"R-hat {max(result.hyper.info['r_hat'].values()):.3f}\n  " + "\n  ".join(line), flush=True)


if __name__ == "__main__":
    main()
