"""sbibm bernoulli_glm / bernoulli_glm_raw: spikes of a linear-nonlinear neuron.

θ₀ is an offset, θ₁..θ₉ a temporal filter with a smoothness prior N(0, B⁻¹). In each of 100
bins a spike yₜ ~ Bernoulli(sigmoid((Xθ)ₜ)) for a fixed white-noise stimulus. ``bernoulli_glm``
observes the sufficient statistic Xᵀy ``(10,)`` (spike count and spike-triggered sums);
``bernoulli_glm_raw`` observes y ``(100,)``. Both share one posterior, which is log-concave;
the reference is NUTS on the exact likelihood θᵀ(Xᵀy) − Σₜ softplus((Xθ)ₜ).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from galton.tasks._common import nuts, sbibm_task, theta_names
from galton.tasks.base import Task

DIM = 10
N_BINS = 100
FILTER = DIM - 1


@functools.cache
def design_matrix() -> np.ndarray:
    """X ``(100, 10)`` float32: a column of ones, then the stimulus lagged by 0..8 bins (zero before t = 0)."""
    stimulus = np.random.RandomState(42).randn(N_BINS).astype(np.float32)
    X = np.zeros((N_BINS, DIM), np.float32)
    X[:, 0] = 1.0
    for j in range(1, DIM):
        X[j - 1 :, j] = stimulus[: N_BINS - j + 1]
    return X


@functools.cache
def prior_precision() -> np.ndarray:
    """B ``(10, 10)``: 0.5 for the offset; FᵀF for the filter, F = D² + diag(√(i/9)), D = I − subdiagonal."""
    D = np.eye(FILTER) - np.eye(FILTER, k=-1)
    F = D @ D + np.diag(np.sqrt(np.arange(FILTER) / FILTER))
    B = np.zeros((DIM, DIM))
    B[0, 0] = 0.5
    B[1:, 1:] = F.T @ F
    return B


@functools.cache
def prior() -> dist.MultivariateNormal:
    return dist.MultivariateNormal(jnp.zeros(DIM), precision_matrix=jnp.asarray(prior_precision(), jnp.float32))


def simulate_raw(key: jax.Array, theta: jax.Array) -> jax.Array:
    """Spikes y ``(100,)`` float32 (0/1) from θ ``(10,)``."""
    psi = jnp.asarray(design_matrix()) @ theta
    return jax.random.bernoulli(key, jax.nn.sigmoid(psi)).astype(jnp.float32)


def summarise(y: jax.Array) -> jax.Array:
    """y ``(..., 100)`` -> Xᵀy ``(..., 10)``: spike count, then spike-triggered stimulus sums at lags 0..8."""
    return y @ jnp.asarray(design_matrix())


def simulate(key: jax.Array, theta: jax.Array) -> jax.Array:
    """Summary x ``(10,)`` float32 from θ ``(10,)``."""
    return summarise(simulate_raw(key, theta))


def log_likelihood(x: jax.Array, theta: jax.Array) -> jax.Array:
    """Exact log p(x | θ) for the summary x = Xᵀy ``(10,)`` and θ ``(..., 10)``: ``(...)``."""
    psi = theta @ jnp.asarray(design_matrix()).T
    return theta @ x - jax.nn.softplus(psi).sum(-1)


def _newton_map(x: jax.Array, precision: jax.Array, steps: int = 30) -> jax.Array:
    """The posterior mode ``(10,)`` by Newton's method (the log posterior is strictly concave)."""
    X = jnp.asarray(design_matrix())

    def step(theta, _):
        p = jax.nn.sigmoid(X @ theta)
        grad = x - X.T @ p - precision @ theta
        hess = X.T @ (X * (p * (1 - p))[:, None]) + precision
        return theta + jnp.linalg.solve(hess, grad), None

    return jax.lax.scan(step, jnp.zeros(DIM), None, length=steps)[0]


def reference_posterior(x: jax.Array, n: int, key: jax.Array, *, num_chains: int = 20) -> jax.Array:
    """``n`` posterior draws ``(n, 10)`` for the summary x ``(10,)``, by NUTS started at the mode."""
    x = jnp.asarray(x, jnp.float32)
    precision = jnp.asarray(prior_precision(), jnp.float32)

    def potential(theta):
        return -(log_likelihood(x, theta) - 0.5 * theta @ precision @ theta)

    k_init, k_run = jax.random.split(key)
    init = _newton_map(x, precision) + 0.1 * jax.random.normal(k_init, (num_chains, DIM))
    return nuts(potential, init, n, k_run, num_warmup=1000, thinning=2)


def reference_posterior_raw(y: jax.Array, n: int, key: jax.Array) -> jax.Array:
    """``n`` posterior draws ``(n, 10)`` for raw spikes y ``(100,)``."""
    return reference_posterior(summarise(jnp.asarray(y, jnp.float32)), n, key)


def task(raw: bool = False) -> Task:
    """The summary task, or with ``raw=True`` the raw-spike variant (``bernoulli_glm_raw``)."""
    if raw:
        return sbibm_task(
            "bernoulli_glm_raw", prior(), simulate_raw, theta_names(DIM), reference_posterior_raw,
            "sbibm Bernoulli GLM: 10 parameters, 100 raw spikes", data="bernoulli_glm", observations="observations_raw",
        )
    return sbibm_task(
        "bernoulli_glm", prior(), simulate, theta_names(DIM), reference_posterior,
        "sbibm Bernoulli GLM: 10 parameters, 10 summary statistics (Xᵀy)",
    )
