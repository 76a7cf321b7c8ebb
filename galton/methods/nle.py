"""Neural likelihood estimation: a conditional flow q(x | θ) trained on simulated pairs.

Loss: L = −mean log q(x | θ). It is correct whatever distribution θ came from, so the
sequential variant simply pools every round's simulations. The posterior is
q(x_o | θ)·p(θ) (a sum of log q over iid observations), sampled by MCMC.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax

from galton.flows import ConditionalFlow, conditional_flow
from galton.problem import Prior
from galton.store import Simulations
from galton.train import Training, train


def likelihood_loss(model: ConditionalFlow, batch, key) -> jax.Array:
    theta, x = batch
    return -model.log_prob(x, theta).mean()


@dataclass(frozen=True)
class NLE:
    """Settings of neural likelihood estimation (sbi's defaults: MAF, 5 transforms of width 50).

    Attributes:
        flow: ``"maf"`` or ``"nsf"``; transforms, hidden, bins: its size.
        training: the `Training` settings.
        sampler: settings for `galton.sampling.mcmc` when sampling the posterior.
    """

    flow: str = "maf"
    transforms: int = 5
    hidden: int = 50
    bins: int = 10
    training: Training = field(default_factory=Training)
    sampler: tuple = (("method", "nuts"), ("num_chains", 20), ("warmup", 200))

    def fit(
        self,
        sims: Simulations,
        prior: Prior,
        *,
        key: jax.Array,
        sequential: bool = False,
        init: ConditionalFlow | None = None,
        progress: bool = True,
    ) -> tuple[ConditionalFlow, dict]:
        """Train q(x | θ) on ``sims``; x is flattened to a vector. Returns the model and history.

        ``prior`` and ``sequential`` keep the signature of every method's ``fit``: the
        likelihood loss needs neither, as it holds for θ from any proposal.
        """
        key_init, key_train = jax.random.split(key)
        x = sims.x.reshape(len(sims.x), -1)
        model = init or conditional_flow(
            x, sims.theta, key=key_init, flow=self.flow, transforms=self.transforms, hidden=self.hidden, bins=self.bins
        )
        return train(model, likelihood_loss, (sims.theta, x), key=key_train, settings=self.training, names=["theta", "x"], progress=progress)
