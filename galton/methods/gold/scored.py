"""Density estimators whose loss adds the joint score: SCANDAL (a likelihood flow, Brehmer et
al. 2020) and score-augmented NPE (a posterior flow, as in the Zeghal et al. seed).

On simulations (θ, x, t) with t = t(x, z|θ) the joint score (`simulate(..., augment="score")`):

    SCANDAL:              L = −log q(x|θ) + α |∇θ log q(x|θ) − t|²_W
    score-augmented NPE:  L = −log q(θ|x) + α |∇θ log q(θ|x) − (t + ∇θ log p(θ))|²_W

(|v|²_W = Σ_j v_j² / Var(t_j), as in ratios.py.)

Both minimisers are the true density: E[t | x, θ] = ∇θ log p(x|θ), and the posterior's score is
the likelihood's plus the prior's. The flows are neural splines (rational-quadratic, C¹), so
∇θ log q is continuous and the score term is well posed.

``latent_steps=K`` replaces each label t by its mean over K NUTS draws of z | x, θ started at the
simulation's own z (`galton.latent_chains`): the same expectation, less noise, for programs
whose latents are continuous.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from galton.checks import check_count, check_real
from galton.latent_chains import averaged_scores, check_continuous_latents
from galton.methods.base import bind, register, require_program
from galton.methods.gold.ratios import score_weights
from galton.methods.nle import NLE
from galton.methods.npe import NPE
from galton.prior import Prior
from galton.problem import ProblemError
from galton.simulate import simulate
from galton.store import Simulations
from galton.train import train


def scandal_loss(model, batch, key, *, alpha: float, weights: jax.Array | None = None) -> jax.Array:
    """SCANDAL's: the flow's −log p(x|θ) plus ``alpha`` × the score term weighted by ``weights``
    ``(d,)`` (None: 1), on θ ``(b, d)``, x ``(b, *x_shape)``, joint scores t ``(b, d)`` -> scalar."""
    theta, x, t = batch
    lp, g = jax.vmap(jax.value_and_grad(lambda th, xx: model.log_prob(xx, th)))(theta, x)
    w = 1.0 if weights is None else jnp.asarray(weights)
    return -lp.mean() + alpha * (w * (g - t) ** 2).sum(-1).mean()


def score_npe_loss(model, batch, key, *, alpha: float, prior: Prior, weights: jax.Array | None = None) -> jax.Array:
    """Score-augmented NPE's: the flow's −log q(θ|x) plus ``alpha`` × the weighted gap between its
    θ-score and the joint score plus the prior's, on θ, x, t as `scandal_loss`'s -> scalar."""
    theta, x, t = batch
    lp, g = jax.vmap(jax.value_and_grad(lambda th, xx: model.log_prob(th, xx)))(theta, x)
    prior_score = jax.vmap(jax.grad(prior.log_prob))(theta)
    w = 1.0 if weights is None else jnp.asarray(weights)
    return -lp.mean() + alpha * (w * (g - t - prior_score) ** 2).sum(-1).mean()


class _Scored:
    """Training on (θ, x, t) and `galton.infer`'s path for a score-trained flow."""

    def __post_init__(self):
        super().__post_init__()
        check_real(self.alpha, "alpha", low_inclusive=True)
        check_count(self.latent_steps, "latent_steps", minimum=0)

    def _scored_arrays(self, sims: Simulations):
        if "score" not in sims.extras:
            raise ProblemError(
                f"{type(self).__name__} trains on the joint score; these simulations have none: "
                "simulate them with galton.simulate(program, n, key=..., augment='score')"
            )
        theta, x = self.arrays(sims)
        return theta, x, sims.extras["score"]

    def fit(self, sims: Simulations, prior: Prior, *, key: jax.Array, sequential: bool = False,
            init: eqx.Module | None = None, progress: bool = True):
        """Train on simulations with a joint score; returns the flow and its history."""
        if sequential:
            raise ValueError(f"{type(self).__name__} is amortized: its score term needs θ from the prior")
        key_init, key_train = jax.random.split(key)
        theta, x, t = self._scored_arrays(sims)
        model = init if init is not None else self.network(theta, x, key_init)
        return train(model, self.loss(prior, False, score_weights(t)), (theta, x, t), key=key_train, settings=self.training,
                     names=["theta", "x", "score"], progress=progress)

    def run(self, problem, x_obs, *, key, budget, rounds, simulations=None, store=None, progress=True):
        """`galton.infer`'s path: ``budget`` simulations with their joint score, one fit."""
        require_program(problem, self.name, rounds, needs="the joint score")
        if self.latent_steps:
            check_continuous_latents(problem)
        key_sim, key_fit = jax.random.split(key)
        chains = bool(self.latent_steps)
        sims = simulations if simulations is not None else simulate(problem, budget, key=key_sim, augment="score", keep_latents=chains,
                                                                    store=store, progress=progress)
        if chains:
            sims = averaged_scores(problem, sims, key=jax.random.fold_in(key_sim, 1), steps=self.latent_steps, progress=progress)
        model, history = self.fit(sims, problem.prior, key=key_fit, progress=progress)
        return self.posterior(model, problem.prior, [history]).condition(x_obs)


@register("scandal")
@dataclass(frozen=True)
class SCANDAL(_Scored, NLE):
    """NLE with the joint score (NLE's settings, ``alpha`` the score weight, and ``latent_steps``
    the NUTS draws of z | x, θ each label is averaged over; 0: the simulation's own z only).

    ``dequantize`` adds U(−½, ½) noise to integer-valued x (counts, Galton-board slots) so a flow
    can model it: p(x + u|θ) = p(x|θ) on each unit cell, so the score is unchanged, and the
    posterior, evaluated at the integer x_o, reads each cell at its centre.
    """

    flow: str = "nsf"
    alpha: float = 0.1
    latent_steps: int = 0
    dequantize: bool = False

    def arrays(self, sims: Simulations):
        theta, x = super().arrays(sims)
        if self.dequantize:
            noise = np.random.default_rng(0).uniform(-0.5, 0.5, size=x.shape).astype(x.dtype)
            x = x + noise
        return theta, x

    def loss(self, prior: Prior, sequential: bool, weights: np.ndarray | None = None):
        return bind(scandal_loss, alpha=float(self.alpha), weights=weights)


@register("score_npe")
@dataclass(frozen=True)
class ScoreNPE(_Scored, NPE):
    """NPE with the joint score (NPE's settings, ``alpha`` the score weight, and ``latent_steps``
    as SCANDAL's)."""

    alpha: float = 0.1
    latent_steps: int = 0
    iid: ClassVar[bool] = False

    def loss(self, prior: Prior, sequential: bool, weights: np.ndarray | None = None):
        return bind(score_npe_loss, alpha=float(self.alpha), weights=weights, prior=prior)
