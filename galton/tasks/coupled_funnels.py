"""Coupled funnels: many hyperparameters with correlated posteriors and an exact marginal likelihood.

G groups of m latents each; group g's log-variance mixes its own parameter with the next one's,

    θ_g ~ N(0, 3²),   η_g = θ_g + c θ_{(g+1) mod G},   z_gk ~ N(0, e^{η_g / 2}),   x_gk ~ N(z_gk, 1),

so θ ``(G,)`` (20 by default) has a posterior whose correlations come from the coupling c
(0.5). p(x | θ) = Π_g Π_k N(x_gk; 0, √(1 + e^{η_g})) depends on x only through the groups'
sums of squares, so the reference posterior is NUTS over θ alone on that exact marginal
(`log_marginal_likelihood`): the check for MUSE with many parameters.
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
from galton.tasks._common import nuts
from galton.tasks.base import Task

PRIOR_SCALE = 3.0


def _coupling_matrix(groups: int, coupling: float) -> jax.Array:
    """B ``(G, G)`` with η = B θ."""
    return jnp.eye(groups) + coupling * jnp.roll(jnp.eye(groups), 1, axis=1)


def model(groups: int = 20, per_group: int = 500, coupling: float = 0.5):
    """θ ``(groups,)``, latents z ``(groups, per_group)``, x of the same shape."""
    theta = numpyro.sample("theta", dist.Normal(jnp.zeros(groups), PRIOR_SCALE).to_event(1))
    eta = _coupling_matrix(groups, coupling) @ theta
    z = numpyro.sample("z", dist.Normal(jnp.zeros((groups, per_group)), jnp.exp(eta / 2)[:, None]).to_event(2))
    numpyro.sample("x", dist.Normal(z, 1.0).to_event(2))


def log_marginal_likelihood(x: jax.Array, theta: jax.Array, coupling: float = 0.5) -> jax.Array:
    """log p(x | θ) for x ``(G·m,)`` (or ``(G, m)``) and θ ``(..., G)``, z marginalised exactly."""
    groups = theta.shape[-1]
    x = jnp.asarray(x).reshape(groups, -1)
    squares, m = jnp.sum(x**2, axis=1), x.shape[1]
    variance = 1.0 + jnp.exp(theta @ _coupling_matrix(groups, coupling).T)  # (..., G)
    return jnp.sum(-0.5 * squares / variance - 0.5 * m * jnp.log(2 * jnp.pi * variance), axis=-1)


def nuts_posterior(x: jax.Array, n: int, key: jax.Array, *, groups: int, coupling: float, chains: int = 4) -> jax.Array:
    """``n`` draws ``(n, G)`` of p(θ | x) by NUTS over θ alone on the exact marginal likelihood."""
    x = jnp.asarray(x)
    prior = dist.Normal(0.0, PRIOR_SCALE)

    def potential(theta):
        return -(log_marginal_likelihood(x, theta, coupling) + prior.log_prob(theta).sum())

    key_init, key_run = jax.random.split(key)
    return nuts(potential, 0.1 * jax.random.normal(key_init, (chains, groups)), n, key_run)


def true_theta(groups: int) -> jax.Array:
    return jnp.linspace(0.5, 1.5, groups)


@functools.cache
def _program(groups: int, per_group: int, coupling: float) -> Program:
    return Program(functools.partial(model, groups=groups, per_group=per_group, coupling=coupling), params=["theta"],
                   observed=["x"], name=f"coupled_funnels_{groups}x{per_group}")


def task(groups: int = 20, per_group: int = 500, coupling: float = 0.5) -> Task:
    groups, per_group = check_count(groups, "groups", minimum=2), check_count(per_group, "per_group")
    if not np.isfinite(coupling) or abs(coupling) >= 1:
        raise ValueError(f"coupling must lie in (−1, 1) so that η = Bθ is invertible for any G, got {coupling!r}")
    problem = _program(int(groups), int(per_group), float(coupling))
    return Task(
        name="coupled_funnels",
        problem=problem,
        observations=lambda k: problem.simulate_flat(jax.random.key(k), true_theta(groups)),
        true_parameters_of=lambda k: true_theta(groups),
        reference=lambda x, n, key: nuts_posterior(x, n, key, groups=int(groups), coupling=float(coupling)),
        n_observations=10,
        description=f"{groups} coupled funnels of {per_group} latents each (coupling {coupling})",
    )
