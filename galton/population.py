"""Population-level inference from one amortized per-object likelihood.

Objects i = 1..M each have their own parameters θ_i ~ p(θ | ψ) and data x_i (one observation,
or an iid set of several). An NLE or NRE posterior trained once on the per-object simulator
gives log p(x_i | θ_i) up to a constant per object (NLE: log q(x|θ); NRE: log r(θ, x) =
log p(x|θ) − log p(x)); NUTS then samples ψ and θ_1..θ_M jointly with those learned terms,
with no new simulations per object:

    p(ψ, θ_1..θ_M | x_1..x_M) ∝ p(ψ) Π_i p(θ_i | ψ) · exp(ℓ̂(θ_i, x_i)).

The learned terms are trusted only inside the support of the prior they were trained under, so
each θ_i is confined there. That prior need not be the population's: an NLE learns p(x|θ)
whatever θ it was trained on, so drawing its simulations' θ where the objects' data put them
spends the budget where NUTS will look (README, population). A bounded design (a uniform over
the objects' rough estimates with a margin) keeps the confinement; an unbounded one (a normal
over them, as bench/population.py draws) leaves each θ_i held only by its own data.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro import handlers
from numpyro.infer import MCMC, NUTS

from galton.keys import as_key
from galton.methods.nuts import _diagnostics
from galton.posteriors import SamplesPosterior
from galton.problem import ProblemError


@dataclass
class PopulationResult:
    """The draws of a population fit.

    Attributes:
        hyper: a `SamplesPosterior` over the hyperparameters ψ (every sample site of the
            population model other than ``theta``), with R-hat / ESS / divergences in ``info``.
        theta: ``(draws, M, d)`` each object's parameters.
    """

    hyper: SamplesPosterior
    theta: np.ndarray

    def __repr__(self) -> str:
        return f"PopulationResult({self.hyper!r}, theta {self.theta.shape})"


def _per_object(members: list) -> Callable:
    """``(θ (M, d), x (M, n_i, *x_shape)) -> (M,)``: each object's summed learned log-likelihood,
    averaged over the members of an ensemble."""
    for posterior in members:
        if getattr(posterior, "term", None) not in ("likelihood", "ratio"):
            raise ProblemError(
                f"population needs a per-object likelihood: an NLE, NRE or gold-mining posterior, got {type(posterior).__name__} "
                "(NPE's q(θ|x) carries the simulator's prior and does not factor over objects)"
            )
    terms = [(posterior.network, posterior.term) for posterior in members]

    def one(theta, events):
        total = 0.0
        for net, term in terms:
            per_event = jax.vmap(lambda x: net.log_prob(x, theta) if term == "likelihood" else net.log_ratio(theta, x))(events)
            total = total + per_event.sum()
        return total / len(terms)

    return jax.vmap(one)


def population(
    posterior,
    xs,
    model: Callable,
    *,
    key: jax.Array,
    num_samples: int = 1000,
    num_warmup: int = 500,
    num_chains: int = 4,
    target_accept: float = 0.8,
    progress: bool = False,
) -> PopulationResult:
    """Sample the hyperparameters ψ and every object's θ_i given the objects' data.

    Args:
        posterior: a trained NLE/NRE (or gold-mining) posterior of the per-object problem; its
            prior's support bounds each θ_i. Or a list of them, an ensemble trained on the same
            simulations with different keys, whose log-likelihoods are averaged: each network's
            small error from its initialisation and training path (a mean off by a few per cent of
            the noise) adds up over M objects, and averaging K networks shrinks it by about √K.
        xs: ``(M, *x_shape)`` one observation per object, or ``(M, n, *x_shape)`` an iid set each.
        model: a NumPyro model ``model(n_objects)`` that samples ψ and then a site named
            ``"theta"`` of shape ``(M, d)`` (or ``(M,)`` when d = 1) given ψ.
        key: a ``jax.random`` key.
        num_samples, num_warmup, num_chains, target_accept: NUTS settings (chains vectorised).

    Returns:
        A `PopulationResult`: ψ's draws as a `SamplesPosterior`, θ's as ``(draws, M, d)``.
    """
    members = list(posterior) if isinstance(posterior, (list, tuple)) else [posterior]
    if not members:
        raise ProblemError("posterior is an empty list: give one trained posterior or an ensemble of them")
    loglik = _per_object(members)
    prior, x_shape = members[0].prior, tuple(members[0].x_shape)
    for other in members[1:]:
        if other.prior != prior or tuple(other.x_shape) != x_shape:
            raise ProblemError("the ensemble's posteriors must share one prior and one x shape (trained on the same simulator)")
    xs = jnp.asarray(xs, jnp.float32)
    if xs.shape[1:] == x_shape:
        xs = xs[:, None]
    elif not (xs.ndim == len(x_shape) + 2 and xs.shape[2:] == x_shape):
        raise ProblemError(f"xs has shape {xs.shape}; expected (M, *{x_shape}) or (M, n_events, *{x_shape})")
    if not bool(jnp.isfinite(xs).all()):
        raise ProblemError("xs has NaN or inf values")
    m, d = xs.shape[0], prior.dim
    trace = handlers.trace(handlers.seed(model, 0)).get_trace(m)
    if "theta" not in trace:
        raise ProblemError(f"the population model must sample a site named 'theta'; its sites are {list(trace)}")
    shape = tuple(jnp.shape(trace["theta"]["value"]))
    if shape not in ((m, d),) + (((m,),) if d == 1 else ()):
        raise ProblemError(f"the population model's 'theta' has shape {shape}; with {m} objects and {d} parameters it must be {(m, d)}")
    hyper_names = [k for k, s in trace.items() if s["type"] == "sample" and k != "theta" and not s["is_observed"]]

    def conditioned():
        with handlers.trace() as tr:  # records the sites and passes them on to NUTS
            model(m)
        theta = jnp.reshape(tr["theta"]["value"], (m, d))
        inside = prior.in_support(theta)
        numpyro.factor("_galton_object_likelihoods", jnp.where(inside, loglik(theta, xs), -jnp.inf).sum())

    mcmc = MCMC(NUTS(conditioned, target_accept_prob=target_accept), num_warmup=num_warmup, num_samples=num_samples,
                num_chains=num_chains, chain_method="vectorized", progress_bar=progress)
    start = time.perf_counter()
    mcmc.run(as_key(key), extra_fields=("diverging",))
    seconds = time.perf_counter() - start
    grouped = mcmc.get_samples(group_by_chain=True)
    columns, names = [], []
    for k in hyper_names:
        v = np.asarray(grouped[k]).reshape(num_chains, num_samples, -1)
        columns.append(v)
        names += [k] if v.shape[-1] == 1 else [f"{k}[{i}]" for i in range(v.shape[-1])]
    chains = np.concatenate(columns, -1)
    info = {"method": "population-nuts", "seconds": seconds, "objects": m, "num_chains": num_chains, "num_samples": num_samples,
            **_diagnostics(chains, names), "divergences": int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())}
    if max(info["r_hat"].values()) > 1.01 or info["divergences"] > 0:
        warnings.warn(f"population: R-hat {max(info['r_hat'].values()):.3f}, {info['divergences']} divergences; "
                      "run longer chains or raise target_accept", stacklevel=2)
    theta = np.asarray(grouped["theta"]).reshape(num_chains * num_samples, m, d)
    return PopulationResult(SamplesPosterior(chains.reshape(-1, chains.shape[-1]), names, info=info), theta)


__all__ = ["PopulationResult", "population"]
