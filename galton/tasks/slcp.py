"""sbibm slcp ("simple likelihood, complex posterior"): four iid 2-d Gaussian draws.

θ ~ U([-3, 3]⁵); m = (θ₁, θ₂), standard deviations θ₃², θ₄², correlation tanh θ₅.
x ``(8,)`` = (x⁽¹⁾₁, x⁽¹⁾₂, …, x⁽⁴⁾₂).

The likelihood depends on θ₃ and θ₄ only through their squares, so the posterior has four
mirror-image modes. The reference runs NUTS (in the prior's unconstrained space) inside the
θ₃, θ₄ > 0 quadrant, folds the draws into it, and flips the signs of θ₃ and θ₄ by independent
fair coins: exact because the posterior is invariant under each flip.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions.transforms import biject_to

from galton.tasks._common import nuts, sbibm_task, theta_names
from galton.tasks.base import Task

BOUND = 3.0
DIM = 5
N_DRAWS = 4
PRIOR = dist.Uniform(-BOUND * jnp.ones(DIM), BOUND * jnp.ones(DIM)).to_event(1)


def mean_cov(theta: jax.Array) -> tuple[jax.Array, jax.Array]:
    """θ ``(..., 5)`` -> mean ``(..., 2)`` and covariance ``(..., 2, 2)``."""
    s1, s2 = theta[..., 2] ** 2, theta[..., 3] ** 2
    c = jnp.tanh(theta[..., 4]) * s1 * s2
    cov = jnp.stack([jnp.stack([s1**2 + 1e-6, c], -1), jnp.stack([c, s2**2 + 1e-6], -1)], -2)
    return theta[..., :2], cov


def simulate(key: jax.Array, theta: jax.Array) -> jax.Array:
    """One x ``(8,)`` float32 from θ ``(5,)``."""
    m, cov = mean_cov(theta)
    return dist.MultivariateNormal(m, cov).sample(key, (N_DRAWS,)).reshape(-1).astype(jnp.float32)


def log_likelihood(x: jax.Array, theta: jax.Array) -> jax.Array:
    """Exact log p(x | θ) for x ``(8,)`` and θ ``(..., 5)``: ``(...)``."""
    m, cov = mean_cov(theta)
    draws = jnp.reshape(x, (N_DRAWS,) + (1,) * (theta.ndim - 1) + (2,))
    return dist.MultivariateNormal(m, cov).log_prob(draws).sum(0)


def _moment_guess(x: jax.Array) -> jax.Array:
    """A θ ``(5,)`` in the θ₃, θ₄ > 0 quadrant matching the sample moments of the four draws."""
    draws = x.reshape(N_DRAWS, 2)
    m = draws.mean(0)
    sd = draws.std(0, ddof=1)
    corr = jnp.corrcoef(draws.T)[0, 1]
    inner = BOUND - 0.05
    return jnp.concatenate(
        [
            jnp.clip(m, -inner, inner),
            jnp.clip(jnp.sqrt(sd), 0.05, inner),
            jnp.arctanh(jnp.clip(jnp.nan_to_num(corr), -0.95, 0.95))[None],
        ]
    )


def reference_posterior(x: jax.Array, n: int, key: jax.Array, *, num_chains: int = 20) -> jax.Array:
    """``n`` posterior draws ``(n, 5)`` for x ``(8,)`` (NUTS on one mode, then random sign flips)."""
    x = jnp.asarray(x, jnp.float32)
    to_box = biject_to(PRIOR.support)

    def potential(u):
        theta = to_box(u)
        return -(log_likelihood(x, theta) + to_box.log_abs_det_jacobian(u, theta).sum())

    k_init, k_run, k_flip = jax.random.split(key, 3)
    u0 = to_box.inv(_moment_guess(x))
    init = u0 + 0.1 * jax.random.normal(k_init, (num_chains, DIM))
    theta = to_box(nuts(potential, init, n, k_run, num_warmup=1000, thinning=2))
    signs = jnp.where(jax.random.bernoulli(k_flip, 0.5, (n, 2)), 1.0, -1.0)
    return theta.at[:, 2:4].set(jnp.abs(theta[:, 2:4]) * signs)


def task() -> Task:
    return sbibm_task(
        "slcp", PRIOR, simulate, theta_names(DIM), reference_posterior,
        "sbibm SLCP: Gaussian likelihood with a four-mode posterior, 5 parameters, 8 data",
    )
