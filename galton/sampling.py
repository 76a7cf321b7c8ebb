"""Samplers over unnormalised log densities in θ-space.

MCMC runs in an unconstrained space (each prior block through its NumPyro bijection, with
the log-Jacobian added), so bounded priors need no special care. Chains start from prior
draws resampled by their density, which spreads them over the modes in proportion to mass.
"""

from __future__ import annotations

import warnings
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from numpyro.diagnostics import split_gelman_rubin
from numpyro.infer import ESS, MCMC

from galton.checks import check_count
from galton.keys import as_key
from galton.prior import Prior

METHODS = ("nuts", "slice")
# settings of `mcmc` for posteriors sampled by MCMC, as hashable (name, value) pairs. 100 chains
# (as sbibm): chains keep to the mode they start in, so their number sets how well the modes'
# weights are resolved (slcp NLE at 10k, C2ST obs 1: 0.770 with 20 chains, 0.761 with 100)
MCMC_DEFAULTS = (("method", "nuts"), ("num_chains", 100), ("warmup", 200))


# the settings of `mcmc` a posterior keeps (JSON-able, so it saves), with the least each count may be
SAMPLER_SETTINGS = {"method": None, "num_chains": 1, "warmup": 0, "thin": 1, "progress": None}


def _check_setting(name: str, value) -> None:
    if name == "method":
        if value not in METHODS:
            raise ValueError(f"sampler method must be one of {METHODS}, got {value!r}")
    elif name == "progress":
        if not isinstance(value, bool):
            raise ValueError(f"sampler progress must be True or False, got {value!r}")
    else:
        check_count(value, f"sampler {name}", minimum=SAMPLER_SETTINGS[name])


def check_sampler(sampler) -> tuple[tuple[str, object], ...]:
    """``sampler`` (a dict, or ``((name, value), ...)`` as the methods keep it) as name-value pairs,
    each name a setting of `mcmc` in ``SAMPLER_SETTINGS`` and each value valid for it; else a
    ValueError naming the setting. Checked when a method or posterior is made, not when it samples."""
    if isinstance(sampler, dict):
        sampler = tuple(sampler.items())
    wanted = f"a dict or ((name, value), ...) of mcmc settings among {sorted(SAMPLER_SETTINGS)}, e.g. {MCMC_DEFAULTS}"
    if isinstance(sampler, str) or not isinstance(sampler, (tuple, list)):
        raise ValueError(f"sampler must be {wanted}; got {sampler!r}")
    pairs = []
    for pair in sampler:
        if isinstance(pair, str) or not isinstance(pair, (tuple, list)) or len(pair) != 2 or not isinstance(pair[0], str):
            raise ValueError(f"sampler must be {wanted}; {pair!r} is not a (name, value) pair")
        name, value = pair
        if name not in SAMPLER_SETTINGS:
            raise ValueError(f"sampler has the unknown setting {name!r}; mcmc's settings are {sorted(SAMPLER_SETTINGS)}")
        _check_setting(name, value)
        pairs.append((name, value))
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"sampler names a setting twice: {names}")
    return tuple(pairs)


class SamplingError(RuntimeError):
    """A sampler could not produce valid draws (e.g. the density is -inf everywhere tried)."""


def _log_density_unconstrained(log_density: Callable, prior: Prior, args: tuple = ()) -> Callable:
    def f(u):
        theta = prior.to_constrained(u)
        return log_density(theta, *args) + prior.log_abs_det_jacobian(u)

    return f


@eqx.filter_jit  # arrays in args are traced; everything else (the density, prior, sizes) is static
def _initial_points(args, key, *, log_density, prior, n, candidates):
    key_draw, key_pick = jax.random.split(key)
    theta = prior.sample(key_draw, (n, candidates))
    logp = jax.lax.map(jax.vmap(lambda t: log_density(t, *args)), theta)
    finite = jnp.isfinite(logp)
    logp = jnp.where(finite, logp, -jnp.inf)
    picks = jax.random.categorical(key_pick, logp, axis=1)
    starts = theta[jnp.arange(n), picks]
    # a chain whose own draws all have zero density takes one from the pooled draws
    missing = ~finite.any(axis=1)
    pool = jax.random.categorical(jax.random.fold_in(key_pick, 1), logp.reshape(-1), shape=(n,))
    starts = jnp.where(missing[:, None], theta.reshape(-1, theta.shape[-1])[pool], starts)
    return starts, finite.any()


def initial_points(
    log_density: Callable, prior: Prior, n: int, *, key: jax.Array, candidates: int = 1000, args: tuple = ()
) -> jax.Array:
    """``n`` starting points ``(n, d)``, each resampled from its own ``candidates`` prior draws
    in proportion to ``exp(log_density(θ, *args))``.

    Separate candidate sets matter for sharp, multimodal posteriors: resampling all chains
    from one set puts them all on its single best draw, hence in one mode (slcp observation 2,
    exact likelihood: 90 % of the draws in one of four equal modes, C2ST 0.83), while the best
    draws of independent sets fall in each mode in proportion to its mass.
    """
    starts, any_finite = _initial_points(args, as_key(key), log_density=log_density, prior=prior, n=n, candidates=candidates)
    if not bool(any_finite):
        raise SamplingError(f"the log density is not finite at any of {n * candidates} prior draws")
    return starts


@eqx.filter_jit
def _nuts_chains(args, u0, key, *, log_density, prior, warmup, draws, thin):
    """NumPyro NUTS (its defaults) from u0 ``(chains, d)``: ``(chains, draws, d)`` kept draws.

    The density's arrays (a network's weights, x) come in ``args`` rather than closed over, so
    the program compiles once per density and architecture, in this process and in galton's
    persistent compile cache, instead of once per call."""
    from numpyro.infer.hmc import hmc

    init_kernel, sample_kernel = hmc(
        potential_fn_gen=lambda *a: (lambda u: -_log_density_unconstrained(log_density, prior, a)(u)), algo="NUTS"
    )

    def step(state, _):
        state = sample_kernel(state, model_args=args)  # adapts while state.i < warmup
        return state, state.z

    def chain(u, k):
        # one loop over warm-up and draws keeps one copy of the NUTS kernel in the program, which
        # halves its compile time (the draws of warm-up are few and dropped)
        _, z = jax.lax.scan(step, init_kernel(u, warmup, model_args=args, rng_key=k), None, length=warmup + draws * thin)
        return z[warmup::thin]

    return jax.vmap(chain)(u0, jax.random.split(key, u0.shape[0]))


def mcmc(
    log_density: Callable[..., jax.Array],
    prior: Prior,
    n: int,
    *,
    key: jax.Array,
    args: tuple = (),
    method: str = "nuts",
    num_chains: int = 100,
    warmup: int = 200,
    thin: int = 1,
    init: jax.Array | None = None,
    progress: bool = False,
) -> jax.Array:
    """Draw ``n`` samples ``(n, d)`` from the density ∝ ``exp(log_density(θ, *args))`` on the prior's support.

    Args:
        log_density: unnormalised log density of one θ ``(d,)`` (include the prior in it).
            Pass the arrays it reads (weights, data) as ``args`` and a function that is the
            same object from call to call, so that NUTS compiles once for all calls.
        prior: the `Prior` whose support and bijections define the unconstrained space.
        n: number of samples returned (pooled over chains, shuffled).
        key: a ``jax.random`` key.
        args: a PyTree of arrays, passed to ``log_density`` after θ.
        method: ``"nuts"`` (NumPyro NUTS, one compiled program for warm-up and draws) or
            ``"slice"`` (NumPyro's ensemble slice sampler).
        num_chains: chains run side by side (vectorised); walkers for ``"slice"``.
        warmup: adaptation steps per chain.
        thin: keep every ``thin``-th draw.
        init: optional starting points ``(num_chains, d)``; drawn by `initial_points` if omitted.
        progress: show NumPyro's progress bar (``"slice"`` only).
    """
    for name, value in (("method", method), ("num_chains", num_chains), ("warmup", warmup), ("thin", thin)):
        _check_setting(name, value)
    key_init, key_run, key_shuffle = jax.random.split(as_key(key), 3)
    if init is None:
        init = initial_points(log_density, prior, num_chains, key=key_init, args=args)
    u0 = prior.to_unconstrained(jnp.asarray(init))
    if method == "nuts":
        per_chain = -(-n // u0.shape[0])
        chains = _nuts_chains(args, u0, key_run, log_density=log_density, prior=prior, warmup=warmup, draws=per_chain, thin=thin)
        u = _pooled(chains, n, key_shuffle)
    else:
        target = _log_density_unconstrained(log_density, prior, args)
        kernel = ESS(potential_fn=lambda u: -target(u))
        u = run_chains(kernel, u0, n, key_run=key_run, key_shuffle=key_shuffle, warmup=warmup, thin=thin, progress=progress)
    theta = prior.to_constrained(u)
    if not bool(jnp.isfinite(theta).all()):
        raise SamplingError("MCMC produced non-finite parameters; check the log density for NaNs")
    return theta


def run_chains(
    kernel,
    init: jax.Array,
    n: int,
    *,
    key_run: jax.Array,
    key_shuffle: jax.Array,
    warmup: int,
    thin: int = 1,
    chain_method: str = "vectorized",
    max_rhat: float | None = None,
    progress: bool = False,
) -> jax.Array:
    """Run a NumPyro kernel from ``init (num_chains, d)`` and return ``n`` draws ``(n, d)``
    pooled over chains and shuffled (each chain gives ``ceil(n / num_chains)`` after thinning).

    ``chain_method``: ``"vectorized"`` runs the chains in lockstep (a step costs the longest
    trajectory of any chain); ``"sequential"`` suits potentials with inner while-loops (ODE
    solves), where lockstep chains would also wait for each other's solver steps.
    ``max_rhat``: warn when a split R-hat exceeds it.
    """
    num_chains = init.shape[0]
    per_chain = -(-n // num_chains)
    sampler = MCMC(
        kernel,
        num_warmup=warmup,
        num_samples=per_chain * thin,
        thinning=thin,
        num_chains=num_chains,
        chain_method=chain_method,
        progress_bar=progress,
    )
    sampler.run(key_run, init_params=init if num_chains > 1 else init[0])
    samples = sampler.get_samples(group_by_chain=True)  # (chains, per_chain, d)
    if max_rhat is not None and num_chains > 1:
        rhat = np.asarray(split_gelman_rubin(np.asarray(samples)))
        if np.nanmax(rhat) > max_rhat:
            warnings.warn(f"MCMC: split R-hat up to {np.nanmax(rhat):.3f} > {max_rhat}; chains may not have mixed", stacklevel=2)
    return _pooled(samples, n, key_shuffle)


def _pooled(chains: jax.Array, n: int, key: jax.Array) -> jax.Array:
    """``n`` draws ``(n, d)`` from chains ``(num_chains, per_chain, d)``, pooled and shuffled."""
    flat = chains.reshape(-1, chains.shape[-1])
    return flat[jax.random.permutation(key, flat.shape[0])[:n]]


def importance_resample(
    log_weight: Callable[[jax.Array], jax.Array],
    proposal: Prior,
    n: int,
    *,
    key: jax.Array,
    oversample: int = 100,
) -> tuple[jax.Array, float]:
    """Sampling-importance-resampling: draw ``oversample·n`` from ``proposal``, resample ``n``.

    Args:
        log_weight: log target − log proposal for one θ ``(d,)`` (for a prior proposal: the
            log likelihood or log ratio).

    Returns:
        Samples ``(n, d)`` and the effective sample size of the weighted draws.
    """
    key_draw, key_pick = jax.random.split(as_key(key))
    theta = proposal.sample(key_draw, (oversample * n,))
    logw = jax.lax.map(log_weight, theta, batch_size=4096)
    logw = jnp.where(jnp.isfinite(logw), logw, -jnp.inf)
    if not bool(jnp.isfinite(logw).any()):
        raise SamplingError("every importance weight is zero")
    w = jnp.exp(logw - logw.max())
    ess = float(w.sum() ** 2 / (w**2).sum())
    return theta[jax.random.categorical(key_pick, logw, shape=(n,))], ess


def rejection(
    log_ratio: Callable[[jax.Array], jax.Array],
    prior: Prior,
    n: int,
    *,
    key: jax.Array,
    log_bound: float | None = None,
    batch: int = 10_000,
    max_draws: int = 10_000_000,
) -> jax.Array:
    """Rejection sampling from the prior: accept θ with probability ``exp(log_ratio(θ) − log_bound)``.

    ``log_bound`` defaults to the largest ``log_ratio`` over a first batch of prior draws plus
    log 1.2 (as sbibm does); draws above the bound raise it and restart, so the result stays exact.
    """
    vmapped = jax.jit(jax.vmap(log_ratio))
    key = as_key(key)
    accepted, drawn = [], 0
    while sum(len(a) for a in accepted) < n:
        if drawn >= max_draws:
            raise SamplingError(f"rejection sampling accepted too few of {drawn} prior draws; use MCMC instead")
        key, key_draw, key_u = jax.random.split(key, 3)
        theta = prior.sample(key_draw, (batch,))
        lr = vmapped(theta)
        drawn += batch
        top = float(jnp.max(jnp.where(jnp.isfinite(lr), lr, -jnp.inf)))
        if log_bound is None or top > log_bound:
            restart = log_bound is not None
            log_bound = top + float(np.log(1.2))
            if restart:
                accepted = []
        keep = jnp.log(jax.random.uniform(key_u, (batch,))) < lr - log_bound
        accepted.append(np.asarray(theta[keep]))
    return jnp.asarray(np.concatenate(accepted)[:n])
