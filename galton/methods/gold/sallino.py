"""SALLINO (Brehmer et al. 2018): SALLY's score summaries projected on one direction, then a
one-dimensional density.

Near θ_ref, p(x|θ) ≈ p(x|θ_ref) exp(t(x)·(θ − θ_ref)) / Z(θ), so the ratio p(x|θ)/p(x|θ_ref)
depends on x only through the scalar t(x)·(θ − θ_ref): for each θ one number is sufficient for
the test of θ against θ_ref (Neyman–Pearson), whatever the number of parameters. SALLINO
estimates

    log r̂(x|θ) = log p̂(h_θ(x) | θ) − log p̂(h_θ(x) | θ_ref),   h_θ(x) = t̂(x)·u(θ),

with u(θ) = (θ − θ_ref) / ‖(θ − θ_ref) / prior scale‖: a positive θ-dependent factor of h cancels
in the ratio, and this one keeps h's spread of order one as θ → θ_ref, where t̂·(θ − θ_ref)
would collapse to a point. Both densities come from one 1-D conditional flow q(h | θ, u): the
numerator is q(h | θ, u(θ)), trained on prior simulations (θ_j, h_{θ_j}(x_j)); the denominator
q(h | θ_ref, u(θ)), trained on the simulations at θ_ref that trained t̂, each projected on the
direction of a fresh prior draw. (madminer histograms both on a grid of θ; a flow needs no grid,
so the posterior is sampled by MCMC like any ratio posterior. A kernel density at θ_ref made
every MCMC step seven times dearer.) Far from θ_ref the statistic loses information: the
posterior is then wider than the exact one, not wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import paramax

from galton import flows, nets, ratio
from galton.methods.base import register, require_program
from galton.methods.gold.sally import SALLY
from galton.methods.nle import NLE
from galton.posteriors import DensityPosterior
from galton.sampling import MCMC_DEFAULTS
from galton.store import Simulations
from galton.train import Training

def project(theta, scores, theta_ref, theta_scale) -> tuple[jax.Array, jax.Array]:
    """h_θ = t̂·u(θ) ``(*batch,)`` and u(θ) ``(*batch, d)`` for θ and scores ``(*batch, d)`` (broadcast)."""
    delta = theta - theta_ref
    u = delta / jnp.sqrt(jnp.sum((delta / theta_scale) ** 2, -1, keepdims=True) + 1e-12)
    return jnp.sum(scores * u, -1), u


class ProjectedScoreRatio(eqx.Module, ratio.Specified):
    """log r̂(x|θ) = log q(h_θ(x) | θ, u(θ)) − log q(h_θ(x) | θ_ref, u(θ)) (see the module)."""

    compressor: eqx.Module
    flow: flows.ConditionalFlow
    theta_ref: paramax.NonTrainable
    theta_scale: paramax.NonTrainable
    spec_json: str = eqx.field(static=True)

    def log_ratio(self, theta: jax.Array, x: jax.Array) -> jax.Array:
        """log r̂(x|θ, θ_ref) for θ ``(*batch, d)``, x ``(*batch, *x_shape)`` (broadcast) -> ``(*batch,)``."""
        theta_ref = paramax.unwrap(self.theta_ref)
        x_batch = x.shape[: x.ndim - len(self.x_shape)]
        scores = jax.vmap(self.compressor)(x.reshape(-1, *self.x_shape)).reshape(*x_batch, -1)
        batch = jnp.broadcast_shapes(theta.shape[:-1], scores.shape[:-1])
        theta = jnp.broadcast_to(theta, (*batch, theta.shape[-1]))
        h, u = project(theta, jnp.broadcast_to(scores, theta.shape), theta_ref, paramax.unwrap(self.theta_scale))
        numerator = self.flow.log_prob(h[..., None], jnp.concatenate([theta, u], -1))
        denominator = self.flow.log_prob(h[..., None], jnp.concatenate([jnp.broadcast_to(theta_ref, theta.shape), u], -1))
        return numerator - denominator


def _network(spec: dict, compressor, flow, theta_ref, theta_scale) -> ProjectedScoreRatio:
    frozen = (paramax.NonTrainable(jnp.asarray(a, jnp.float32)) for a in (theta_ref, theta_scale))
    return ProjectedScoreRatio(compressor, flow, *frozen, json.dumps(spec))


def skeleton(spec: dict) -> ProjectedScoreRatio:
    """A `ProjectedScoreRatio` with the structure ``spec`` describes (weights to be deserialised into)."""
    d = spec["theta_dim"]
    return _network(spec, nets.build(spec["compressor"], key=jax.random.key(0)), flows.skeleton(spec["flow"]), np.zeros(d), np.ones(d))


ratio.SKELETONS["ProjectedScoreRatio"] = skeleton


@register("sallino")
@dataclass(frozen=True)
class SALLINO:
    """Settings of SALLINO.

    Attributes:
        theta_ref, local_fraction, embedding, summary_training, latent_steps: as `SALLY`'s (the
            score regressor t̂ at θ_ref, from ``local_fraction × budget`` simulations there).
        density: the `NLE` settings of the 1-D flow q(h | θ) trained on the rest of the budget,
            from the prior; its sampler samples the posterior.
    """

    theta_ref: tuple | None = None
    local_fraction: float = 0.5
    embedding: eqx.Module | None = None
    summary_training: Training = field(default_factory=lambda: Training(learning_rate=1e-3, batch_size=128, patience=20))
    latent_steps: int = 0
    density: NLE = field(default_factory=lambda: NLE(flow="nsf", transforms=3, hidden=32, sampler=MCMC_DEFAULTS,
                                                     training=Training(learning_rate=1e-3, batch_size=128, patience=20)))
    iid = True

    def __post_init__(self):
        object.__setattr__(self, "theta_ref", self._summaries().theta_ref)  # SALLY checks and normalises the shared settings

    def _summaries(self) -> SALLY:
        return SALLY(theta_ref=self.theta_ref, local_fraction=self.local_fraction, embedding=self.embedding,
                     summary_training=self.summary_training, latent_steps=self.latent_steps)

    def fit(self, local: Simulations, compressor, sims: Simulations, prior, *, key, progress: bool = True):
        """Train q(h | θ, u) on ``sims`` from the prior and on ``local`` (the simulations at θ_ref
        that fitted ``compressor``); returns the `ProjectedScoreRatio` and the flow's history."""
        theta_ref = jnp.asarray(self._summaries().reference_point(prior), jnp.float32)
        theta_scale = jnp.asarray(np.asarray(prior.sample(jax.random.key(0), (4096,)), np.float64).std(0) + 1e-12, jnp.float32)
        frozen = compressor.frozen()
        summarise = jax.jit(jax.vmap(frozen))
        key_directions, key_fit = jax.random.split(key)
        theta = jnp.asarray(sims.theta, jnp.float32)
        h_prior, u_prior = project(theta, summarise(jnp.asarray(sims.x, jnp.float32)), theta_ref, theta_scale)
        # at θ_ref, h along the directions that prior draws give
        _, u_local = project(prior.sample(key_directions, (len(local),)), 0.0, theta_ref, theta_scale)
        h_local = jnp.sum(summarise(jnp.asarray(local.x, jnp.float32)) * u_local, -1)
        context = np.concatenate([np.concatenate([theta, u_prior], -1), np.concatenate([jnp.broadcast_to(theta_ref, u_local.shape), u_local], -1)])
        h = np.concatenate([h_prior, h_local])[:, None]
        flow, history = self.density.fit(Simulations(context, h), prior, key=key_fit, progress=progress)
        spec = {"kind": "ProjectedScoreRatio", "theta_dim": int(theta.shape[1]), "x_shape": list(local.x.shape[1:]),
                "compressor": frozen.spec, "flow": flow.spec}
        return _network(spec, frozen, flow, theta_ref, theta_scale), history

    def run(self, problem, x_obs, *, key, budget, rounds=1, simulations=None, store=None, progress=True):
        """`galton.infer`'s path: ``local_fraction × budget`` simulations at θ_ref for t̂ and the
        reference density, the rest from the prior (or ``simulations``) for q(h | θ); stores go
        to ``store/round_0`` (at θ_ref) and ``store/round_1``."""
        require_program(problem, "sallino", rounds, needs="the joint score")
        local, compressor, sims, key_fit = self._summaries().local_and_prior(problem, budget, key=key, simulations=simulations,
                                                                             store=store, progress=progress)
        network, history = self.fit(local, compressor, sims, problem.prior, key=key_fit, progress=progress)
        posterior = DensityPosterior(network, problem.prior, history=[compressor.history, history], term="ratio",
                                     sampler=self.density.sampler)
        return posterior.condition(x_obs)


__all__ = ["SALLINO", "ProjectedScoreRatio"]
