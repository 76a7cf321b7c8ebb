"""Neural posterior estimation: a conditional flow q(θ | x) trained on simulated pairs.

Losses (θ, x from the training batch; p the prior; q the flow):
    first round (θ ~ prior):        L = −mean log q(θ | x)
    later rounds (θ ~ proposals):   atomic loss of APT / NPE-C (Greenberg et al. 2019): for each
        pair, a set of atoms {θ} ∪ {θ'_1..θ'_{K−1}} drawn from the same batch, and
        L = −mean log [ q(θ|x)/p(θ) / Σ_atoms q(θ'|x)/p(θ') ]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from galton.flows import ConditionalFlow, conditional_flow
from galton.methods.base import NeuralMethod, bind, register
from galton.posteriors import FlowPosterior
from galton.prior import Prior
from galton.train import Training


def maximum_likelihood_loss(model: ConditionalFlow, batch, key) -> jax.Array:
    theta, x = batch
    return -model.log_prob(theta, x).mean()


def atomic_loss(model: ConditionalFlow, batch, key, *, prior: Prior, num_atoms: int) -> jax.Array:
    theta, x = batch
    b = theta.shape[0]
    k = min(num_atoms, b)
    # for row i, k − 1 other rows drawn without replacement: rank random scores, skipping i itself
    scores = jax.random.uniform(key, (b, b)) + 2.0 * jnp.eye(b)
    others = jnp.argsort(scores, axis=1)[:, : k - 1]
    atoms = jnp.concatenate([theta[:, None], theta[others]], axis=1)  # (b, k, d)
    log_q = model.log_prob(atoms, x[:, None])  # (b, k)
    logits = log_q - prior.log_prob(atoms)
    return -(logits[:, 0] - jax.nn.logsumexp(logits, axis=1)).mean()


@register("npe")
@dataclass(frozen=True)
class NPE(NeuralMethod):
    """Settings of neural posterior estimation (sbi's defaults where it has them).

    Attributes:
        flow: ``"nsf"`` (neural spline flow) or ``"maf"`` (masked autoregressive flow).
        transforms: flow layers; hidden: width of each conditioner; bins: spline knots.
        embedding: a `galton.nets` module compressing one z-scored x; identity if None.
        num_atoms: atoms of the sequential (atomic) loss, at least 2 (the true θ and another).
        training: the `Training` settings.
        on_invalid: simulations whose x has NaN or inf: ``"raise"`` (`galton.SimulationError`) or
            ``"drop"`` them with a warning, so that a round trains on fewer.
    """

    flow: str = "nsf"
    transforms: int = 5
    hidden: int = 50
    bins: int = 10
    embedding: eqx.Module | None = None
    num_atoms: int = 10
    training: Training = field(default_factory=Training)
    on_invalid: str = "raise"
    iid: ClassVar[bool] = False

    def __post_init__(self):
        self._check_settings(transforms=1, hidden=1, bins=1, num_atoms=2)

    def network(self, theta, x, key) -> ConditionalFlow:
        return conditional_flow(
            theta, x, key=key, flow=self.flow, transforms=self.transforms, hidden=self.hidden, bins=self.bins, embedding=self.embedding
        )

    def loss(self, prior: Prior, sequential: bool):
        if sequential:
            return bind(atomic_loss, prior=prior, num_atoms=self.num_atoms)
        return maximum_likelihood_loss

    def posterior(self, network: ConditionalFlow, prior: Prior, history: list[dict]) -> FlowPosterior:
        return FlowPosterior(network, prior, history=history)
