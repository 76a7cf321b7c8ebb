"""Neal's funnel with noisy observations: θ ~ N(0, 3²), z_i ~ N(0, exp(θ/2)²), x_i ~ N(z_i, 1).

A `Program` for MUSE and other gradient-based methods (muse_inference's own example).
Scales are standard deviations, as in NumPyro. p(x | θ) = Π N(x_i; 0, 1 + exp θ) is
tractable (it depends on x through Σ x_i² only), so the reference posterior is computed on a
fine grid in θ, narrowed to where its mass is.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from galton.checks import check_count
from galton.problem import Program
from galton.tasks.base import Task

LOG_DROP = 60.0  # the grid spans where log p(θ | x) is within this of its maximum (density ratio e^-60)
MAX_PASSES = 8  # narrowing passes at most (each narrows the span to at most half)


def model(dim: int = 512):
    theta = numpyro.sample("theta", dist.Normal(0.0, 3.0))
    z = numpyro.sample("z", dist.Normal(jnp.zeros(dim), jnp.exp(theta / 2)))
    numpyro.sample("x", dist.Normal(z, 1.0))


def log_marginal_likelihood(x: jax.Array, theta: jax.Array) -> jax.Array:
    """log p(x | θ) for x ``(dim,)`` and θ ``(...)``, marginalising z exactly."""
    scale = jnp.sqrt(1.0 + jnp.exp(theta))[..., None]
    return dist.Normal(0.0, scale).log_prob(x).sum(-1)


def log_posterior(x, theta) -> np.ndarray:
    """log p(θ | x) up to a constant, in float64 on the host, for θ ``(...)``.

    p(x | θ) depends on x only through n and Σ x_i², so this costs O(1) per θ at any n and
    keeps the precision float32 sums over millions of latents would lose."""
    x = np.asarray(x, np.float64).ravel()
    n, sum_sq = x.size, float(x @ x)
    theta = np.asarray(theta, np.float64)
    log_var = np.logaddexp(0.0, theta)  # log(1 + e^θ), the variance of each x_i
    return -0.5 * n * log_var - 0.5 * sum_sq * np.exp(-log_var) - theta**2 / 18.0


def grid_posterior(x: jax.Array, n_grid: int = 20001, width: float = 12.0):
    """Exact posterior of θ on a uniform grid: returns (grid ``(n_grid,)``, normalised density
    ``(n_grid,)``), NumPy float64 (a posterior 10^-4 wide needs more digits than float32 has).

    The grid spans where the posterior has mass within [-width, width]: a grid over the whole
    interval is narrowed, pass by pass, to where log p(θ | x) is within `LOG_DROP` of its
    maximum (±11 σ of a Gaussian), so a posterior as narrow as that of 10^6 latents
    (σ ≈ 0.003) gets ``n_grid`` points across its mass, and a wide one keeps the whole interval.
    """
    lo, hi = -float(width), float(width)
    for _ in range(MAX_PASSES):
        grid = np.linspace(lo, hi, n_grid)
        log_post = log_posterior(x, grid)
        step = grid[1] - grid[0]
        mass = np.flatnonzero(log_post >= log_post.max() - LOG_DROP)
        # (one step beyond the outermost points kept: the mode lies within a step of the best point)
        new_lo, new_hi = max(-width, grid[mass[0]] - step), min(width, grid[mass[-1]] + step)
        if new_hi - new_lo > 0.5 * (hi - lo):  # the mass already spans this grid: resolved
            break
        lo, hi = new_lo, new_hi
    w = np.exp(log_post - log_post.max())
    return grid, w / np.trapezoid(w, grid)


def posterior_moments(x) -> tuple[float, float]:
    """The exact posterior's mean and standard deviation of θ (trapezoid quadrature on `grid_posterior`)."""
    grid, density = grid_posterior(x)
    mean = float(np.trapezoid(grid * density, grid))
    return mean, float(np.sqrt(np.trapezoid((grid - mean) ** 2 * density, grid)))


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
    dim = check_count(dim, "dim")
    return Task(
        name="funnel",
        problem=_program(dim),
        observations=lambda k: _observation(k, dim),
        true_parameters_of=lambda k: jnp.zeros(1),
        reference=_reference,
        n_observations=10,
        description=f"noisy funnel with {dim} latent dimensions",
    )
