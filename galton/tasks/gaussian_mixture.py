"""sbibm gaussian_mixture: θ ~ U([-10, 10]²), x ~ ½ N(θ, I) + ½ N(θ, 0.01·I).

One mixture component is drawn per simulation and shared by both coordinates. The
posterior is the same mixture centred on x, truncated to the box, sampled by rejection.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from galton.tasks._common import rejection_sample, sbibm_task, theta_names
from galton.tasks.base import Task

BOUND = 10.0
PRIOR = dist.Uniform(-BOUND * jnp.ones(2), BOUND * jnp.ones(2)).to_event(1)
SCALES = jnp.array([1.0, 0.1])  # standard deviations of the two equally weighted components


def _mixture_draw(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``(*shape, 2)`` draws of the zero-mean mixture."""
    kc, kz = jax.random.split(key)
    scale = SCALES[jax.random.bernoulli(kc, 0.5, shape).astype(jnp.int32)]
    return scale[..., None] * jax.random.normal(kz, (*shape, 2))


def simulate(key: jax.Array, theta: jax.Array) -> jax.Array:
    """One x ``(2,)`` float32 from θ ``(2,)``."""
    return (theta + _mixture_draw(key, ())).astype(jnp.float32)


def log_likelihood(x: jax.Array, theta: jax.Array) -> jax.Array:
    """log p(x | θ) for x ``(2,)``, θ ``(..., 2)``: ``(...)``."""
    comp = jnp.stack([dist.Normal(theta, s).log_prob(x).sum(-1) for s in SCALES], axis=-1)
    return jax.nn.logsumexp(comp, axis=-1) - jnp.log(2.0)


def reference_posterior(x: jax.Array, n: int, key: jax.Array) -> jax.Array:
    """``n`` exact posterior draws ``(n, 2)`` for x ``(2,)``."""
    x = jnp.asarray(x, jnp.float32)
    return rejection_sample(
        key, lambda k, m: x + _mixture_draw(k, (m,)), lambda th: jnp.all(jnp.abs(th) <= BOUND, axis=-1), n
    )


def task() -> Task:
    return sbibm_task(
        "gaussian_mixture", PRIOR, simulate, theta_names(2), reference_posterior,
        "sbibm Gaussian mixture: broad and narrow components, 2 parameters, 2 data",
    )
