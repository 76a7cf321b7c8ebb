"""sbibm two_moons: θ ~ U([-1, 1]²), x a noisy crescent shifted by a rotated, folded θ.

The posterior is bimodal (the sign of θ₁ + θ₂ is unidentified) with a kink at θ₁ + θ₂ = 0.
The reference posterior inverts the simulator exactly (see `reference_posterior`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from galton.tasks._common import rejection_sample, sbibm_task, theta_names
from galton.tasks.base import Task

PRIOR = dist.Uniform(-jnp.ones(2), jnp.ones(2)).to_event(1)
_R_MEAN, _R_SD = 0.1, 0.01
_ROOT_HALF = jnp.sqrt(0.5)


def _noise(key: jax.Array, shape: tuple[int, ...] = ()) -> jax.Array:
    """The crescent before the θ shift: ``(*shape, 2)`` points at radius r ~ N(0.1, 0.01²), angle in (-π/2, π/2)."""
    ka, kr = jax.random.split(key)
    a = jax.random.uniform(ka, shape, minval=-jnp.pi / 2, maxval=jnp.pi / 2)
    r = _R_MEAN + _R_SD * jax.random.normal(kr, shape)
    return jnp.stack([r * jnp.cos(a) + 0.25, r * jnp.sin(a)], axis=-1)


def simulate(key: jax.Array, theta: jax.Array) -> jax.Array:
    """One x ``(2,)`` float32 from θ ``(2,)``."""
    z0 = (theta[0] + theta[1]) * _ROOT_HALF
    z1 = (theta[1] - theta[0]) * _ROOT_HALF
    p = _noise(key)
    return jnp.stack([p[0] - jnp.abs(z0), p[1] + z1]).astype(jnp.float32)


def log_likelihood(x: jax.Array, theta: jax.Array) -> jax.Array:
    """Exact log p(x | θ) for x ``(2,)`` and θ ``(..., 2)``: ``(...)``.

    The crescent (r cos a, r sin a) has density N(ρ; 0.1, 0.01²) / (π ρ) on the half plane u > 0.
    """
    z0 = (theta[..., 0] + theta[..., 1]) * _ROOT_HALF
    z1 = (theta[..., 1] - theta[..., 0]) * _ROOT_HALF
    u = x[0] - 0.25 + jnp.abs(z0)
    v = x[1] - z1
    rho = jnp.sqrt(u**2 + v**2)
    lp = dist.Normal(_R_MEAN, _R_SD).log_prob(rho) - jnp.log(jnp.pi * rho)
    return jnp.where(u > 0, lp, -jnp.inf)


def reference_posterior(x: jax.Array, n: int, key: jax.Array) -> jax.Array:
    """``n`` exact posterior draws ``(n, 2)`` for x ``(2,)``.

    Given x, (|z₀|, z₁) is the crescent noise translated, so a noise draw p gives
    |z₀| = p₁ − x₁ and z₁ = x₂ − p₂ with unit Jacobian; the sign of z₀ is a fair coin and the
    uniform prior truncates to the box. Unlike sbibm we also reject p₁ < x₁ (no θ has a
    negative |z₀|), which makes the draws exact; it never happens for the standard observations.
    """
    x = jnp.asarray(x, jnp.float32)

    def propose(k, m):
        kn, ks = jax.random.split(k)
        p = _noise(kn, (m,))
        q0 = p[:, 0] - x[0]
        q1 = x[1] - p[:, 1]
        # mark impossible draws by pushing them out of the prior box
        q0 = jnp.where(q0 >= 0, q0, jnp.inf) * jnp.where(jax.random.bernoulli(ks, 0.5, (m,)), 1.0, -1.0)
        return jnp.stack([(q0 - q1) * _ROOT_HALF, (q0 + q1) * _ROOT_HALF], axis=-1)

    return rejection_sample(key, propose, lambda th: jnp.all(jnp.abs(th) <= 1.0, axis=-1), n)


def task() -> Task:
    return sbibm_task(
        "two_moons", PRIOR, simulate, theta_names(2), reference_posterior,
        "sbibm two moons: bimodal crescent posterior, 2 parameters, 2 data",
    )
