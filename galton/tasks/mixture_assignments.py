"""A two-component Gaussian mixture with its assignments as latents:

    m ~ N(0, 2²),  δ ~ LogNormal(0.5, 0.5),  z_i ~ Bernoulli(½),  x_i ~ N(m + δ (2 z_i − 1), 1),  i = 1..n,

so the components sit at m − δ and m + δ (δ > 0 names them: no label switching). A `Program`
with n discrete latents z ``(n,)``, for the methods that sample latents (inference compilation's
categorical head). p(x | m, δ) = Π_i ½ [N(x_i; m − δ, 1) + N(x_i; m + δ, 1)] sums z out exactly,
so the reference posterior is a fine grid over (m, δ), refined around its mass.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from galton.checks import check_count
from galton.problem import Program
from galton.tasks.base import Task

LOCATION_PRIOR = dist.Normal(0.0, 2.0)
SEPARATION_PRIOR = dist.LogNormal(0.5, 0.5)


def model(n: int = 16):
    """θ = (m, δ); latent assignments z ``(n,)`` in {0, 1}; x ``(n,)``."""
    m = numpyro.sample("m", LOCATION_PRIOR)
    delta = numpyro.sample("delta", SEPARATION_PRIOR)
    z = numpyro.sample("z", dist.Bernoulli(probs=0.5 * jnp.ones(n)))
    numpyro.sample("x", dist.Normal(m + delta * (2.0 * z - 1.0), 1.0))


def log_marginal_likelihood(x: jax.Array, m: jax.Array, delta: jax.Array) -> jax.Array:
    """log p(x | m, δ) for x ``(n,)`` and m, δ ``(...)`` (broadcast), the assignments summed out: ``(...)``."""
    m, delta = jnp.asarray(m)[..., None], jnp.asarray(delta)[..., None]
    low, high = dist.Normal(m - delta, 1.0).log_prob(x), dist.Normal(m + delta, 1.0).log_prob(x)
    return (jnp.logaddexp(low, high) - jnp.log(2.0)).sum(-1)


def _log_posterior(x, m, delta):
    return log_marginal_likelihood(x, m, delta) + LOCATION_PRIOR.log_prob(m) + SEPARATION_PRIOR.log_prob(delta)


def grid_posterior(x: jax.Array, n_grid: int = 401) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The exact posterior on an ``n_grid`` × ``n_grid`` grid over (m, δ): (m ``(n_grid,)``,
    δ ``(n_grid,)``, cell probabilities ``(n_grid, n_grid)``). A coarse grid over the prior's bulk
    finds where the density is within e^−30 of its peak, and the fine grid covers that box."""
    x = jnp.asarray(x)
    m, delta = jnp.linspace(-10.0, 10.0, 401), jnp.linspace(1e-3, 12.0, 401)
    log_p = _log_posterior(x, m[:, None], delta[None, :])
    keep = log_p > log_p.max() - 30.0
    rows, cols = jnp.any(keep, 1), jnp.any(keep, 0)
    step_m, step_d = m[1] - m[0], delta[1] - delta[0]
    m = jnp.linspace(m[rows].min() - step_m, m[rows].max() + step_m, n_grid)
    delta = jnp.linspace(jnp.maximum(delta[cols].min() - step_d, 1e-4), delta[cols].max() + step_d, n_grid)
    log_p = _log_posterior(x, m[:, None], delta[None, :])
    p = jnp.exp(log_p - log_p.max())
    return m, delta, p / p.sum()


def reference_posterior(x: jax.Array, n: int, key: jax.Array) -> jax.Array:
    """``n`` draws ``(n, 2)`` of p(m, δ | x): a grid cell by its probability, then a uniform point in it."""
    m, delta, p = grid_posterior(x)
    key_cell, key_jitter = jax.random.split(key)
    cell = jax.random.choice(key_cell, p.size, (n,), p=p.reshape(-1))
    i, j = jnp.divmod(cell, p.shape[1])
    jitter = jax.random.uniform(key_jitter, (n, 2), minval=-0.5, maxval=0.5)
    return jnp.stack([m[i] + jitter[:, 0] * (m[1] - m[0]), delta[j] + jitter[:, 1] * (delta[1] - delta[0])], -1)


@functools.cache
def _program(n: int) -> Program:
    return Program(functools.partial(model, n=n), params=["m", "delta"], observed=["x"], name=f"mixture_assignments_{n}")


def _true_theta(k: int) -> jax.Array:
    key_m, key_delta = jax.random.split(jax.random.key(1000 + k))
    return jnp.stack([LOCATION_PRIOR.sample(key_m), SEPARATION_PRIOR.sample(key_delta)])


def task(n: int = 16) -> Task:
    """The mixture observed through ``n`` points (x ``(n,)``); observation k is simulated with key k
    at θ_k = (m, δ) drawn from the prior with key 1000 + k."""
    n = check_count(n, "n")
    program = _program(n)
    return Task(
        name="mixture_assignments",
        problem=program,
        observations=lambda k: program.simulate_flat(jax.random.key(k), _true_theta(k)),
        true_parameters_of=_true_theta,
        reference=reference_posterior,
        n_observations=10,
        description=f"two-component Gaussian mixture, {n} points; 2 parameters, {n} discrete latent assignments",
    )
