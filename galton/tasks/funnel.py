"""Neal's funnel with noisy observations: θ ~ N(0, 3²), z_i ~ N(0, exp(θ/2)²), x_i ~ N(z_i, 1).

A `Program` for MUSE and other gradient-based methods (muse_inference's own example).
Scales are standard deviations, as in NumPyro. p(x | θ) = Π N(x_i; 0, 1 + exp θ) is
tractable, so the reference posterior is computed on a fine grid in θ.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from galton.problem import Program
from galton.tasks.base import Task


def model(dim: int = 512):
    theta = numpyro.sample("theta", dist.Normal(0.0, 3.0))
    z = numpyro.sample("z", dist.Normal(jnp.zeros(dim), jnp.exp(theta / 2)))
    numpyro.sample("x", dist.Normal(z, 1.0))


def log_marginal_likelihood(x: jax.Array, theta: jax.Array) -> jax.Array:
    """log p(x | θ) for x ``(dim,)`` and θ ``(...)``, marginalising z exactly."""
    scale = jnp.sqrt(1.0 + jnp.exp(theta))[..., None]
    return dist.Normal(0.0, scale).log_prob(x).sum(-1)


def grid_posterior(x: jax.Array, n_grid: int = 20001, width: float = 12.0):
    """Exact posterior of θ on a grid: returns (grid ``(n_grid,)``, normalised density ``(n_grid,)``)."""
    grid = jnp.linspace(-width, width, n_grid)
    log_post = jax.vmap(lambda t: log_marginal_likelihood(x, t))(grid) + dist.Normal(0.0, 3.0).log_prob(grid)
    w = jnp.exp(log_post - log_post.max())
    return grid, w / jnp.trapezoid(w, grid)


def _reference(x, n, key):
    grid, density = grid_posterior(x)
    cdf = jnp.cumsum(density) * (grid[1] - grid[0])
    u = jax.random.uniform(key, (n,)) * cdf[-1]
    return jnp.interp(u, cdf, grid)[:, None]


def _observation(k: int, dim: int):
    # θ_true = 0 for every observation; observation k is drawn with key k
    problem = _program(dim)
    return problem.simulate_flat(jax.random.key(k), jnp.zeros(1))


@functools.cache
def _program(dim: int) -> Program:
    return Program(functools.partial(model, dim=dim), params=["theta"], observed=["x"], name=f"funnel_{dim}")


def task(dim: int = 512) -> Task:
    return Task(
        name="funnel",
        problem=_program(dim),
        observations=lambda k: _observation(k, dim),
        true_parameters_of=lambda k: jnp.zeros(1),
        reference=_reference,
        n_observations=10,
        description=f"noisy funnel with {dim} latent dimensions",
    )
