"""sbibm gaussian_linear_uniform: θ ~ U([-1, 1]¹⁰), x ~ N(θ, 0.1·I₁₀).

The posterior is N(x, 0.1·I) truncated to the box, sampled by rejection.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from galton.problem import Simulator
from galton.tasks._common import load_data, rejection_sample, rows, theta_names
from galton.tasks.base import Task
from galton.tasks.gaussian_linear import DIM, VARIANCE, log_likelihood, simulate

PRIOR = dist.Uniform(-jnp.ones(DIM), jnp.ones(DIM)).to_event(1)


def reference_posterior(x: jax.Array, n: int, key: jax.Array) -> jax.Array:
    """``n`` draws ``(n, 10)`` of N(x, 0.1·I) restricted to [-1, 1]¹⁰."""
    x = jnp.asarray(x, jnp.float32)

    def propose(k, m):
        return x + jnp.sqrt(VARIANCE) * jax.random.normal(k, (m, DIM))

    return rejection_sample(key, propose, lambda th: jnp.all(jnp.abs(th) <= 1.0, axis=-1), n)


@functools.cache
def _simulator() -> Simulator:
    return Simulator(PRIOR, simulate, names=theta_names(DIM), name="gaussian_linear_uniform", backend="jax")


def task() -> Task:
    data = load_data("gaussian_linear_uniform")
    return Task(
        name="gaussian_linear_uniform",
        problem=_simulator(),
        observations=rows(data["observations"]),
        true_parameters_of=rows(data["true_parameters"]),
        reference=reference_posterior,
        n_observations=10,
        description="sbibm Gaussian linear with a uniform prior: truncated Gaussian posterior, 10 parameters, 10 data",
    )


__all__ = ["PRIOR", "log_likelihood", "reference_posterior", "simulate", "task"]
