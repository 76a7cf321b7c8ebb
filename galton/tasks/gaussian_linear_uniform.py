"""sbibm gaussian_linear_uniform: θ ~ U([-1, 1]¹⁰), x ~ N(θ, 0.1·I₁₀).

The posterior is N(x, 0.1·I) truncated to the box, sampled by rejection.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from galton.tasks._common import rejection_sample, sbibm_task, theta_names
from galton.tasks.base import Task
from galton.tasks.gaussian_linear import DIM, VARIANCE, log_likelihood, simulate

PRIOR = dist.Uniform(-jnp.ones(DIM), jnp.ones(DIM)).to_event(1)


def reference_posterior(x: jax.Array, n: int, key: jax.Array) -> jax.Array:
    """``n`` draws ``(n, 10)`` of N(x, 0.1·I) restricted to [-1, 1]¹⁰."""
    x = jnp.asarray(x, jnp.float32)

    def propose(k, m):
        return x + jnp.sqrt(VARIANCE) * jax.random.normal(k, (m, DIM))

    return rejection_sample(key, propose, lambda th: jnp.all(jnp.abs(th) <= 1.0, axis=-1), n)


def task() -> Task:
    return sbibm_task(
        "gaussian_linear_uniform", PRIOR, simulate, theta_names(DIM), reference_posterior,
        "sbibm Gaussian linear with a uniform prior: truncated Gaussian posterior, 10 parameters, 10 data",
    )

__all__ = ["PRIOR", "log_likelihood", "reference_posterior", "simulate", "task"]
