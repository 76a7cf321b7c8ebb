"""sbibm gaussian_linear: θ ~ N(0, 0.1·I₁₀), x ~ N(θ, 0.1·I₁₀).

sbibm calls its ``prior_scale=0.1`` a standard deviation but uses it as the variance (its
reference files have posterior variance 0.05), so both variances here are 0.1. The
posterior is N(x/2, 0.05·I), sampled directly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from galton.tasks._common import sbibm_task, theta_names
from galton.tasks.base import Task

DIM = 10
VARIANCE = 0.1  # of the prior and of the noise
PRIOR = dist.Normal(jnp.zeros(DIM), jnp.sqrt(VARIANCE)).to_event(1)


def simulate(key: jax.Array, theta: jax.Array) -> jax.Array:
    """One x ``(10,)`` float32 from θ ``(10,)``: θ plus N(0, 0.1·I) noise."""
    return (theta + jnp.sqrt(VARIANCE) * jax.random.normal(key, theta.shape)).astype(jnp.float32)


def log_likelihood(x: jax.Array, theta: jax.Array) -> jax.Array:
    """log N(x; θ, 0.1·I) for x ``(10,)``, θ ``(..., 10)``: ``(...)``."""
    return dist.Normal(theta, jnp.sqrt(VARIANCE)).log_prob(x).sum(-1)


def reference_posterior(x: jax.Array, n: int, key: jax.Array) -> jax.Array:
    """``n`` draws ``(n, 10)`` of the analytic posterior N(x/2, 0.05·I)."""
    x = jnp.asarray(x, jnp.float32)
    return x / 2 + jnp.sqrt(VARIANCE / 2) * jax.random.normal(key, (n, DIM))


def task() -> Task:
    return sbibm_task(
        "gaussian_linear", PRIOR, simulate, theta_names(DIM), reference_posterior,
        "sbibm Gaussian linear: conjugate Gaussian, 10 parameters, 10 data",
    )
