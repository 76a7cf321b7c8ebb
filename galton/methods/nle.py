"""Neural likelihood estimation: a conditional flow q(x | θ) trained on simulated pairs.

Loss: L = −mean log q(x | θ). It is correct whatever distribution θ came from, so the
sequential variant simply pools every round's simulations. The posterior is
q(x_o | θ)·p(θ) (a sum of log q over iid observations), sampled by MCMC.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax

from galton.flows import ConditionalFlow, conditional_flow
from galton.methods.base import NeuralMethod, register
from galton.posteriors import DensityPosterior
from galton.prior import Prior
from galton.sampling import MCMC_DEFAULTS
from galton.store import Simulations
from galton.train import Training


def likelihood_loss(model: ConditionalFlow, batch, key) -> jax.Array:
    theta, x = batch
    return -model.log_prob(x, theta).mean()


@register("nle")
@dataclass(frozen=True)
class NLE(NeuralMethod):
    """Settings of neural likelihood estimation (sbi's defaults: MAF, 5 transforms of width 50).

    Attributes:
        flow: ``"maf"`` or ``"nsf"``; transforms, hidden, bins: its size.
        training: the `Training` settings.
        sampler: settings for `galton.sampling.mcmc` when sampling the posterior, as
            ``((name, value), ...)`` or a dict (kept as pairs).
        on_invalid: simulations whose x has NaN or inf: ``"raise"`` or ``"drop"`` (as `galton.NPE`).
    """

    flow: str = "maf"
    transforms: int = 5
    hidden: int = 50
    bins: int = 10
    training: Training = field(default_factory=Training)
    sampler: tuple = MCMC_DEFAULTS
    on_invalid: str = "raise"

    def __post_init__(self):
        self._check_settings(transforms=1, hidden=1, bins=1)

    def arrays(self, sims: Simulations):
        """x flattened to a vector: the flow models q(x | θ) over ``(n, prod(x_shape))``."""
        return sims.theta, sims.x.reshape(len(sims.x), -1)

    def network(self, theta, x, key) -> ConditionalFlow:
        return conditional_flow(x, theta, key=key, flow=self.flow, transforms=self.transforms, hidden=self.hidden, bins=self.bins)

    def loss(self, prior: Prior, sequential: bool):
        return likelihood_loss

    def posterior(self, network, prior: Prior, history: list[dict]) -> DensityPosterior:
        return DensityPosterior(network, prior, history=history, term="likelihood", sampler=self.sampler)
