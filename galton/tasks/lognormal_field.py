"""A 2-D log-normal random field (the Zeghal et al. seed's setting, a stand-in for mass maps).

θ = (sigma, ell): σ ~ U(0.2, 1.0) the log-field's amplitude, ℓ ~ U(1, 6) its correlation length
in pixels. Latents: white noise z ~ N(0, 1) on the size × size grid. The Gaussian field is
g = Re F⁻¹[√P · F z] with the Matérn-like P(k) ∝ (1 + (2π|k|ℓ)²)⁻² scaled so that var g = 1 (a
Gaussian spectrum exp(−(2π|k|ℓ)²/2) made ℓ so sharply identified that NUTS diverged on every
step); the log-normal field is y = exp(σ g − σ²/2) − 1 (mean 0), observed with white noise:
x ~ N(y, noise²) per pixel, flattened to (size²,) as a `Program`'s x is.

p(x | θ) integrates over size² latents and has no closed form; the reference posterior is
NUTS over (θ, z) jointly (the explicit full-field posterior against which compressors and
summaries are judged).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from galton.checks import check_count, check_real
from galton.problem import Program
from galton.tasks.base import Task

TRUE_THETA = jnp.array([0.6, 3.0])


def gaussian_field(z: jax.Array, ell: jax.Array) -> jax.Array:
    """Unit-variance Gaussian field ``(size, size)`` from white noise ``(size, size)`` and length ℓ (pixels)."""
    size = z.shape[-1]
    k = jnp.fft.fftfreq(size)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    power = (1.0 + (2 * jnp.pi) ** 2 * k2 * ell**2) ** -2.0
    power = power / power.mean()  # var g = mean(P) for unit white noise under NumPy's FFT normalisation
    return jnp.real(jnp.fft.ifft2(jnp.sqrt(power) * jnp.fft.fft2(z)))


def power_spectrum(x: jax.Array, bins: int = 6) -> jax.Array:
    """Hand-picked summaries of one flat field x ``(size²,)``: its mean, its variance and the mean
    power in ``bins`` radial bins of |k| (log), ``(2 + bins,)`` — the classic statistics of a field."""
    size = int(round(x.shape[-1] ** 0.5))
    img = x.reshape(size, size)
    k = jnp.fft.fftfreq(size)
    radius = jnp.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    power = jnp.abs(jnp.fft.fft2(img - img.mean())) ** 2 / size**2
    edges = jnp.linspace(1.0 / size, radius.max() + 1e-6, bins + 1)
    which = jnp.digitize(radius, edges) - 1  # the k = 0 mode lands in bin −1 and is left out
    counts = jnp.stack([jnp.sum(which == b) for b in range(bins)])
    sums = jnp.stack([jnp.sum(jnp.where(which == b, power, 0.0)) for b in range(bins)])
    return jnp.concatenate([jnp.stack([img.mean(), img.var()]), jnp.log(sums / jnp.maximum(counts, 1))])


def model(size: int = 32, noise: float = 0.2):
    sigma = numpyro.sample("sigma", dist.Uniform(0.2, 1.0))
    ell = numpyro.sample("ell", dist.Uniform(1.0, 6.0))
    z = numpyro.sample("z", dist.Normal(jnp.zeros((size, size)), 1.0).to_event(2))
    y = jnp.exp(sigma * gaussian_field(z, ell) - 0.5 * sigma**2) - 1.0
    numpyro.sample("x", dist.Normal(y, noise).to_event(2))


@functools.cache
def program(size: int = 32, noise: float = 0.2) -> Program:
    return Program(functools.partial(model, size=size, noise=noise), params=["sigma", "ell"], observed=["x"], name=f"lognormal_field_{size}")


def nuts_posterior(x: jax.Array, n: int, key: jax.Array, *, size: int = 32, noise: float = 0.2,
                   num_warmup: int = 500, num_chains: int = 4, return_info: bool = False):
    """``n`` draws ``(n, 2)`` of p(θ | x) by NUTS over (θ, z), chains vectorised (θ sampled with z)."""
    x_img = jnp.asarray(x).reshape(size, size)
    per_chain = -(-n // num_chains)
    mcmc = _nuts_sampler(size, noise, num_warmup, per_chain, num_chains)
    key_run, key_shuffle = jax.random.split(key)
    mcmc.run(key_run, x_img)
    grouped = mcmc.get_samples(group_by_chain=True)
    chains = np.stack([np.asarray(grouped["sigma"]), np.asarray(grouped["ell"])], -1)  # (chains, draws, 2)
    draws = chains.reshape(-1, 2)[np.asarray(jax.random.permutation(key_shuffle, chains.shape[0] * chains.shape[1]))[:n]]
    if not return_info:
        return jnp.asarray(draws)
    import arviz as az

    summary = az.summary(az.from_dict(posterior={"sigma": chains[..., 0], "ell": chains[..., 1]}), kind="diagnostics")
    divergences = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    return jnp.asarray(draws), {"r_hat": summary["r_hat"].to_dict(), "ess_bulk": summary["ess_bulk"].to_dict(), "divergences": divergences}


def _conditioned(x, *, size: int, noise: float):
    numpyro.handlers.condition(functools.partial(model, size=size, noise=noise), data={"x": x})()


@functools.lru_cache(maxsize=4)
def _nuts_sampler(size: int, noise: float, num_warmup: int, per_chain: int, num_chains: int):
    """One sampler per setting, x its argument: a later observation reuses its compiled chains."""
    from numpyro.infer import MCMC, NUTS

    return MCMC(NUTS(functools.partial(_conditioned, size=size, noise=noise), target_accept_prob=0.85), num_warmup=num_warmup,
                num_samples=per_chain, num_chains=num_chains, chain_method="vectorized", progress_bar=False, jit_model_args=True)


def task(size: int = 32, noise: float = 0.2) -> Task:
    size = check_count(size, "size", minimum=2)
    noise = check_real(noise, "noise")  # a standard deviation
    problem = program(size, noise)
    return Task(
        name="lognormal_field",
        problem=problem,
        observations=lambda k: problem.simulate_flat(jax.random.key(k), TRUE_THETA),
        true_parameters_of=lambda k: TRUE_THETA,
        reference=lambda x, n, key: nuts_posterior(x, n, key, size=size, noise=noise),
        n_observations=10,
        description=f"2-D log-normal random field, {size}x{size} pixels, noise {noise}",
    )
