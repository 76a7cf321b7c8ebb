"""A linear-Gaussian state-space model: a Program whose likelihood is exact (Kalman filter).

A latent AR(1) state s_t observed with noise over T steps:

    s_0 ~ N(0, σ_w² / (1 − ρ²)),   s_t = ρ s_{t−1} + σ_w ε_t,   x_t = s_t + σ_v η_t,

θ = (ρ, σ_w, σ_v) with ρ ~ U(0, 0.9), σ_w ~ U(0.3, 1.5), σ_v ~ U(0.3, 1.5); z = s ``(T,)``,
x ``(T,)`` (T = 20 by default). The states are the latents of the joint density, so the joint
score and ratio of "mining gold" are those of (x, s); p(x | θ) itself is N(0, Σ(θ)) with
Σ_ij = σ_w² ρ^|i−j| / (1 − ρ²) + σ_v² δ_ij, computed by a Kalman filter in O(T)
(`log_marginal_likelihood`). Its Fisher information is exact too (`fisher_information`), both
of x alone and of the joint (x, s), the "parton-level" information the joint score carries.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan

from galton.checks import check_count
from galton.problem import Program
from galton.tasks.base import Task

LOW = jnp.array([0.0, 0.3, 0.3])
HIGH = jnp.array([0.9, 1.5, 1.5])
NAMES = ["rho", "sigma_w", "sigma_v"]
TRUE_THETA = jnp.array([0.7, 0.8, 0.5])


def model(steps: int = 20):
    """θ = (ρ, σ_w, σ_v), latent states s ``(steps,)``, observations x ``(steps,)``."""
    rho = numpyro.sample("rho", dist.Uniform(LOW[0], HIGH[0]))
    sigma_w = numpyro.sample("sigma_w", dist.Uniform(LOW[1], HIGH[1]))
    sigma_v = numpyro.sample("sigma_v", dist.Uniform(LOW[2], HIGH[2]))
    s0 = numpyro.sample("s0", dist.Normal(0.0, sigma_w / jnp.sqrt(1.0 - rho**2)))

    def step(s, _):
        s_next = numpyro.sample("s", dist.Normal(rho * s, sigma_w))
        return s_next, s_next

    _, rest = scan(step, s0, None, length=steps - 1)
    states = jnp.concatenate([s0[None], rest])
    numpyro.sample("x", dist.Normal(states, sigma_v).to_event(1))


def covariance(theta: jax.Array, steps: int = 20) -> jax.Array:
    """Σ(θ) ``(steps, steps)`` of x for one θ ``(3,)``."""
    rho, sigma_w, sigma_v = theta
    lags = jnp.abs(jnp.arange(steps)[:, None] - jnp.arange(steps)[None, :])
    return sigma_w**2 / (1.0 - rho**2) * rho**lags + sigma_v**2 * jnp.eye(steps)


def log_marginal_likelihood(x: jax.Array, theta: jax.Array) -> jax.Array:
    """Exact log p(x | θ) by a Kalman filter: x ``(steps,)``, θ ``(..., 3)`` -> ``(...)``."""
    x = jnp.asarray(x)
    theta = jnp.asarray(theta)

    def one(t):
        rho, sigma_w, sigma_v = t
        q, r = sigma_w**2, sigma_v**2

        def step(carry, xt):
            mean, var, total = carry  # predictive moments of s_t given x_<t
            s = var + r
            total = total + dist.Normal(mean, jnp.sqrt(s)).log_prob(xt)
            gain = var / s
            mean_f, var_f = mean + gain * (xt - mean), (1.0 - gain) * var
            return (rho * mean_f, rho**2 * var_f + q, total), None

        (_, _, total), _ = jax.lax.scan(step, (0.0, q / (1.0 - rho**2), 0.0), x)
        return total

    return jax.vmap(one)(theta.reshape(-1, 3)).reshape(theta.shape[:-1])


def _joint_covariance(theta: jax.Array, steps: int) -> jax.Array:
    """Covariance ``(2 steps, 2 steps)`` of (s, x): the joint is a zero-mean Gaussian too."""
    rho, sigma_w, sigma_v = theta
    lags = jnp.abs(jnp.arange(steps)[:, None] - jnp.arange(steps)[None, :])
    ss = sigma_w**2 / (1.0 - rho**2) * rho**lags
    return jnp.block([[ss, ss], [ss, ss + sigma_v**2 * jnp.eye(steps)]])


def _gaussian_fisher(cov_fn, theta: jax.Array) -> jax.Array:
    """I_ij = ½ tr(Σ⁻¹ ∂_iΣ Σ⁻¹ ∂_jΣ) for a zero-mean Gaussian with covariance Σ(θ)."""
    cov = cov_fn(theta)
    d_cov = jnp.moveaxis(jax.jacfwd(cov_fn)(theta), -1, 0)  # (d, n, n)
    a = jnp.linalg.solve(cov, d_cov)  # Σ⁻¹ ∂Σ, batched over d
    return 0.5 * jnp.einsum("iab,jba->ij", a, a)


def fisher_information(theta, steps: int = 20, *, joint: bool = False) -> np.ndarray:
    """Exact Fisher information ``(3, 3)`` at θ ``(3,)`` of x (or, with ``joint``, of (x, s))."""
    theta = jnp.asarray(theta, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    fn = functools.partial(_joint_covariance, steps=steps) if joint else functools.partial(covariance, steps=steps)
    return np.asarray(_gaussian_fisher(fn, theta))


def reference_posterior(x: jax.Array, n: int, key: jax.Array, *, num_warmup: int = 500, num_chains: int = 4) -> jax.Array:
    """``n`` draws ``(n, 3)`` of p(θ | x) by NUTS on the exact (Kalman) likelihood."""
    per_chain = -(-n // num_chains)
    mcmc = _reference_sampler(num_warmup, per_chain, num_chains)
    key_run, key_shuffle = jax.random.split(key)
    mcmc.run(key_run, jnp.asarray(x))
    draws = mcmc.get_samples()["theta"]
    return draws[jax.random.permutation(key_shuffle, draws.shape[0])[:n]]


def _posterior_model(x):
    theta = numpyro.sample("theta", dist.Uniform(LOW, HIGH).to_event(1))
    numpyro.factor("likelihood", log_marginal_likelihood(x, theta))


@functools.lru_cache(maxsize=4)
def _reference_sampler(num_warmup: int, per_chain: int, num_chains: int):
    """One sampler per setting, x its argument: a later observation reuses its compiled chains."""
    from numpyro.infer import MCMC, NUTS

    return MCMC(NUTS(_posterior_model), num_warmup=num_warmup, num_samples=per_chain, num_chains=num_chains,
                chain_method="vectorized", progress_bar=False, jit_model_args=True)


@functools.cache
def program(steps: int = 20) -> Program:
    return Program(functools.partial(model, steps=steps), params=NAMES, observed=["x"], name=f"state_space_{steps}")


def _true_theta(k: int) -> jax.Array:
    if k == 1:
        return TRUE_THETA
    return jax.random.uniform(jax.random.key(1000 + k), (3,), minval=LOW, maxval=HIGH)


def task(steps: int = 20) -> Task:
    """The model over ``steps`` time steps (x ``(steps,)``); observation 1 is at θ = (0.7, 0.8, 0.5),
    observation k > 1 at θ_k drawn from the prior with key 1000 + k, simulated with key k."""
    steps = check_count(steps, "steps", minimum=3)
    problem = program(steps)
    return Task(
        name="state_space",
        problem=problem,
        observations=lambda k: problem.simulate_flat(jax.random.key(k), _true_theta(k)),
        true_parameters_of=_true_theta,
        reference=reference_posterior,
        n_observations=10,
        description=f"linear-Gaussian state-space model, {steps} steps, AR(1) states as latents; exact Kalman likelihood",
    )
