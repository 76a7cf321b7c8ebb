"""sbibm sir: an SIR epidemic observed through binomial samples of the infected fraction.

dS/dt = −βSI/N, dI/dt = βSI/N − γI, dR/dt = γI with N = 10⁶, (S, I, R)(0) = (N − 1, 1, 0).
x ``(10,)``: xₖ ~ Binomial(1000, I(tₖ)/N) at tₖ = 0, 17, …, 153. A failed solve gives NaNs.
Precision: see `galton.tasks._ode` (float64 at rtol 1e-8 when x64 is on, else float32 at 1e-6).

Reference: NUTS on the exact likelihood in log space (in float64), started from the best
point of a grid over the prior's central region.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from galton.tasks import _ode
from galton.tasks._common import sbibm_task
from galton.tasks.base import Task

N = 1e6
N_TRIALS = 1000
T_END = 160.0
T_OBS = 17.0 * np.arange(10)  # t = 0, 17, ..., 153
LOG_MEAN = np.log([0.4, 0.125])
LOG_SD = np.array([0.5, 0.2])
PRIOR = dist.LogNormal(jnp.asarray(LOG_MEAN, jnp.float32), jnp.asarray(LOG_SD, jnp.float32)).to_event(1)
NAMES = ["beta", "gamma"]
_EPS = 1.1920929e-07  # torch clamps Binomial probabilities to [eps, 1 - eps] of float32


def _vector_field(t, y, args):
    beta, gamma = args
    S, I, _ = y
    infection = beta * S * I / N
    return jnp.stack([-infection, infection - gamma * I, gamma * I])


def infected_fraction(theta: jax.Array, *, adjoint=None) -> jax.Array:
    """I(tₖ)/N ``(10,)`` for θ = (β, γ) ``(2,)``; NaN where the solve failed."""
    ys, ok = _ode.solve(
        _vector_field, jnp.array([N - 1.0, 1.0, 0.0]), T_END, T_OBS, (theta[0], theta[1]), adjoint=adjoint
    )
    return jnp.where(ok, ys[:, 1] / N, jnp.nan)


def simulate(key: jax.Array, theta: jax.Array) -> jax.Array:
    """One x ``(10,)`` float32 of infected counts out of 1000 from θ = (β, γ) ``(2,)``."""
    p = infected_fraction(theta)
    counts = jax.random.binomial(key, N_TRIALS, jnp.clip(jnp.nan_to_num(p), 0.0, 1.0))
    return jnp.where(jnp.isnan(p), jnp.nan, counts).astype(jnp.float32)


def log_likelihood(x: jax.Array, theta: jax.Array, *, adjoint=None) -> jax.Array:
    """Exact log p(x | θ) for x ``(10,)`` and one θ ``(2,)``: a scalar."""
    p = jnp.clip(infected_fraction(theta, adjoint=adjoint), _EPS, 1 - _EPS)
    return dist.Binomial(N_TRIALS, probs=p).log_prob(x).sum()


def _grid_start(log_density) -> jax.Array:
    """The best u of a 61 × 61 grid over ±3 prior sds: the posterior is sharp and unimodal."""
    z = jnp.linspace(-3.0, 3.0, 61)
    grid = jnp.stack(jnp.meshgrid(z, z, indexing="ij"), -1).reshape(-1, 2)
    grid = grid * jnp.asarray(LOG_SD) + jnp.asarray(LOG_MEAN)
    return grid[jnp.argmax(jax.jit(jax.vmap(log_density))(grid))]


def reference_posterior(x: jax.Array, n: int, key: jax.Array, *, num_chains: int = 4) -> jax.Array:
    """``n`` posterior draws ``(n, 2)`` of (β, γ) for x ``(10,)``: NUTS in float64 (float32 output)."""
    k_init, k_run = jax.random.split(key)
    return _ode.log_space_nuts(
        log_likelihood, x, n, log_mean=LOG_MEAN, log_sd=LOG_SD, find_start=_grid_start,
        key_init=k_init, key_run=k_run, jitter=0.01, num_chains=num_chains,
    )


def task() -> Task:
    return sbibm_task(
        "sir", PRIOR, simulate, NAMES, reference_posterior,
        "sbibm SIR epidemic: 2 parameters (β, γ), 10 binomial counts",
    )
