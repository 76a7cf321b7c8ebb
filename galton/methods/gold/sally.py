"""SALLY (Brehmer et al. 2018): the score at a reference point as a learned summary, then a
ratio estimator on it.

At θ_ref the joint score t(x, z|θ_ref) = ∇θ log p(x, z|θ_ref) is an unbiased label for the score
of x alone, so a regressor t̂(x) trained on simulations at θ_ref with

    L = |t̂(x) − t(x, z|θ_ref)|²

converges to ∇θ log p(x|θ_ref): d summaries (d = θ's dimension) that are sufficient near θ_ref
(the local exponential-family expansion of p(x|θ)) whatever the size of x. The rest of the budget
simulates (θ, x) from the prior and trains NRE on (θ, t̂(x)), the regressor frozen as the ratio
network's embedding: the posterior takes raw x, saves and loads as any NRE posterior, and its
log-ratio serves `galton.lrt`. Far from θ_ref the summaries lose information (the posterior is
then wider than the exact one, not wrong).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import equinox as eqx
import jax
import numpy as np

from galton import nets, summaries
from galton.checks import check_count, check_real
from galton.latent_chains import averaged_scores, check_continuous_latents
from galton.methods.base import check_training, register, require_program
from galton.methods.nre import NRE
from galton.prior import check_point
from galton.simulate import simulate
from galton.store import Simulations, round_store
from galton.train import Training


@register("sally")
@dataclass(frozen=True)
class SALLY:
    """Settings of SALLY.

    Attributes:
        theta_ref: ``(d,)`` where the score is regressed; the prior's mean (over 4,096 draws) when None.
        local_fraction: the share of the budget simulated at θ_ref for the regressor; the rest
            comes from the prior for the ratio estimator.
        embedding: an untrained `galton.nets` module for x, the regressor's body; a tanh MLP
            (2 × 64) when None (smooth in x, so the summaries are too).
        summary_training: `Training` of the regressor.
        ratio: the `NRE` settings of the estimator on the summaries (its embedding is replaced
            by the frozen regressor).
        latent_steps: each score label at θ_ref is averaged over this many NUTS draws of
            z | x, θ_ref from the simulation's own z (`galton.latent_chains.averaged_scores`;
            continuous latents only): the regressor's target E[t | x] is the same, its noise smaller.
    """

    theta_ref: tuple | None = None
    local_fraction: float = 0.5
    embedding: eqx.Module | None = None
    summary_training: Training = field(default_factory=lambda: Training(learning_rate=1e-3, batch_size=128, patience=20))
    ratio: NRE = field(default_factory=NRE)
    latent_steps: int = 0
    iid = True

    def __post_init__(self):
        check_real(self.local_fraction, "local_fraction", high=1.0)
        check_count(self.latent_steps, "latent_steps", minimum=0)
        check_training(self.summary_training, "summary_training")
        if self.theta_ref is not None:
            object.__setattr__(self, "theta_ref", tuple(float(v) for v in np.ravel(self.theta_ref)))

    def reference_point(self, prior) -> np.ndarray:
        """θ_ref ``(d,)``, checked against the prior's support."""
        if self.theta_ref is None:
            return np.asarray(prior.sample(jax.random.key(0), (4096,)), np.float64).mean(0)
        return check_point(prior, np.asarray(self.theta_ref), what="theta_ref")

    def fit_summaries(self, program, n: int, *, key, store=None, progress: bool = True) -> tuple[Simulations, summaries.Compressor]:
        """``n`` simulations at θ_ref with their joint score, and the score regressor t̂(x) fitted on them."""
        theta_ref = self.reference_point(program.prior)
        if self.latent_steps:
            check_continuous_latents(program)
        key_sim, key_net, key_fit = jax.random.split(key, 3)
        local = simulate(program, key=key_sim, theta=np.tile(theta_ref, (int(n), 1)).astype(np.float32), augment="score",
                         keep_latents=bool(self.latent_steps), store=store, progress=progress)
        if self.latent_steps:
            local = averaged_scores(program, local, key=jax.random.fold_in(key_sim, 1), steps=self.latent_steps, progress=progress)
        x_shape = tuple(local.x.shape[1:])
        body = self.embedding if self.embedding is not None else nets.MLP(x_shape, 64, width=64, depth=2, activation="tanh", key=key_net)
        return local, summaries.fit(local, key=key_fit, loss="sally", embedding=body, training=self.summary_training,
                                    problem=program.name, progress=progress)

    def local_and_prior(self, problem, budget: int, *, key, simulations=None, store=None, progress: bool = True):
        """What SALLY and SALLINO share: ``local_fraction × budget`` simulations at θ_ref (to
        ``store/round_0``) with the regressor t̂ fitted on them, the rest of the budget from the
        prior (to ``store/round_1``; or ``simulations``), and the key left for the estimator."""
        n_local = max(2, int(round(self.local_fraction * budget)))
        if simulations is None and budget - n_local < 2:
            raise ValueError(f"budget={budget} leaves no simulations from the prior after {n_local} at theta_ref")
        key_local, key_sim, key_fit = jax.random.split(key, 3)
        local, compressor = self.fit_summaries(problem, n_local, key=key_local, store=round_store(store, 0), progress=progress)
        sims = simulations if simulations is not None else simulate(problem, budget - n_local, key=key_sim,
                                                                     store=round_store(store, 1), progress=progress)
        return local, compressor, sims, key_fit

    def run(self, problem, x_obs, *, key, budget, rounds=1, simulations=None, store=None, progress=True):
        """`galton.infer`'s path: ``local_fraction × budget`` simulations at θ_ref for t̂, the rest
        from the prior (or ``simulations``) for NRE on (θ, t̂(x)); stores go to ``store/round_0``
        (at θ_ref) and ``store/round_1``."""
        require_program(problem, "sally", rounds, needs="the joint score")
        _, compressor, sims, key_fit = self.local_and_prior(problem, budget, key=key, simulations=simulations, store=store, progress=progress)
        nre = dataclasses.replace(self.ratio, embedding=compressor.frozen())
        network, history = nre.fit(sims, problem.prior, key=key_fit, progress=progress)
        posterior = nre.posterior(network, problem.prior, [compressor.history, history])
        return posterior.condition(x_obs)


__all__ = ["SALLY"]
