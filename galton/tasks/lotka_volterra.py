"""sbibm lotka_volterra: predator-prey dynamics observed with log-normal noise.

dx/dt = αx − βxy, dy/dt = −γy + δxy, (x, y)(0) = (30, 1), t ∈ [0, 20].
x ``(20,)``: prey then predators at t = 0, 2.1, …, 18.9, each LogNormal(log clip(u, 1e-10, 1e4), 0.1).
Precision: see `galton.tasks._ode` (float64 at rtol 1e-8 when x64 is on, else float32 at 1e-6).

Reference: NUTS on the exact likelihood in log space (in float64), started at the best of
several local optimisations from the most likely of many prior draws.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from galton.tasks import _ode
from galton.tasks._common import sbibm_task
from galton.tasks.base import Task

T_END = 20.0
T_OBS = 2.1 * np.arange(10)  # every 21st of the points saved at a 0.1 grid
NOISE_SD = 0.1
LOG_MEAN = np.array([-0.125, -3.0, -0.125, -3.0])
LOG_SD = np.full(4, 0.5)
PRIOR = dist.LogNormal(jnp.asarray(LOG_MEAN, jnp.float32), jnp.asarray(LOG_SD, jnp.float32)).to_event(1)
NAMES = ["alpha", "beta", "gamma", "delta"]


def _vector_field(t, y, args):
    alpha, beta, gamma, delta = args
    prey, predator = y
    return jnp.stack([alpha * prey - beta * prey * predator, -gamma * predator + delta * prey * predator])


def log_populations(theta: jax.Array, *, adjoint=None) -> jax.Array:
    """log clip(u, 1e-10, 1e4) ``(20,)`` (prey at the 10 times, then predators); NaN if the solve failed."""
    ys, ok = _ode.solve(_vector_field, jnp.array([30.0, 1.0]), T_END, T_OBS, tuple(theta), adjoint=adjoint)
    return jnp.where(ok, jnp.log(jnp.clip(ys.T.reshape(-1), 1e-10, 1e4)), jnp.nan)


def simulate(key: jax.Array, theta: jax.Array) -> jax.Array:
    """One x ``(20,)`` float32 from θ = (α, β, γ, δ) ``(4,)``."""
    mu = log_populations(theta)
    return jnp.exp(mu + NOISE_SD * jax.random.normal(key, mu.shape, mu.dtype)).astype(jnp.float32)


def log_likelihood(x: jax.Array, theta: jax.Array, *, adjoint=None) -> jax.Array:
    """Exact log p(x | θ) for x ``(20,)`` and one θ ``(4,)``: a scalar."""
    return dist.LogNormal(log_populations(theta, adjoint=adjoint), NOISE_SD).log_prob(x).sum()


def _climb_start(log_density, key: jax.Array) -> jax.Array:
    """The best u of BFGS climbs from the 8 most likely of 4000 prior draws.

    The likelihood is sharp and, far from the mode, multimodal in the oscillation frequency.
    """
    draws = jnp.asarray(LOG_MEAN) + jnp.asarray(LOG_SD) * jax.random.normal(key, (4000, 4), jnp.float64)
    candidates = draws[jnp.argsort(-jax.jit(jax.vmap(log_density))(draws))[:8]]
    climb = jax.jit(
        jax.vmap(lambda u: jax.scipy.optimize.minimize(lambda v: -log_density(v, None), u, method="BFGS").x)
    )
    optima = climb(candidates)
    return optima[jnp.argmax(jax.vmap(log_density)(optima))]


def reference_posterior(x: jax.Array, n: int, key: jax.Array, *, num_chains: int = 4) -> jax.Array:
    """``n`` posterior draws ``(n, 4)`` of (α, β, γ, δ) for x ``(20,)``: NUTS in float64 (float32 output)."""
    k_search, k_init, k_run = jax.random.split(key, 3)
    return _ode.log_space_nuts(
        log_likelihood, x, n, log_mean=LOG_MEAN, log_sd=LOG_SD, find_start=lambda f: _climb_start(f, k_search),
        key_init=k_init, key_run=k_run, jitter=0.001, num_chains=num_chains,
    )


def task() -> Task:
    return sbibm_task(
        "lotka_volterra", PRIOR, simulate, NAMES, reference_posterior,
        "sbibm Lotka-Volterra: 4 parameters (α, β, γ, δ), 20 noisy population counts",
    )
