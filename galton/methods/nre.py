"""Neural ratio estimation: a classifier whose logit d(θ, x) learns log p(x|θ)/p(x).

Losses, with σ the logistic function, θ' drawn from other rows of the batch (so (θ', x)
is a marginal pair) and K atoms:
    NRE-A (Hermans et al. 2020):  L = −log σ(d(θ, x)) − log σ(−d(θ', x))
    NRE-B (Durkan et al. 2020):   L = −log softmax_k [d(θ_k, x)]_{k = joint} over K atoms
    NRE-C (Miller et al. 2022):   K + 1 classes, y = 0 "all K atoms marginal" (weight 1/(1+γ)),
        y = k "atom k is joint" (weight γ/(1+γ)); q(y = k | x, Θ) ∝ (γ/K)·r(θ_k, x), q(y = 0) ∝ 1
    BNRE (Delaunoy et al. 2022):  NRE-A + λ·(mean σ(d(θ, x)) + mean σ(d(θ', x)) − 1)²
Posterior: r(x_o, θ)·p(θ), sampled by MCMC; valid for θ from any proposal, so the
sequential variant pools every round's simulations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp

from galton.checks import check_real
from galton.methods.base import NeuralMethod, bind, register
from galton.posteriors import DensityPosterior
from galton.prior import Prior
from galton.ratio import RatioNetwork, ratio_network
from galton.sampling import MCMC_DEFAULTS
from galton.train import Training

VARIANTS = ("a", "b", "c", "balanced")


def other_rows(key, b: int, k: int) -> jax.Array:
    """``(b, k)`` row indices, row i never containing i itself (drawn without replacement)."""
    scores = jax.random.uniform(key, (b, b)) + 2.0 * jnp.eye(b)
    return jnp.argsort(scores, axis=1)[:, :k]


def _binary_logits(model, theta, x, key):
    marginal = theta[other_rows(key, theta.shape[0], 1)[:, 0]]
    return model.log_ratio(theta, x), model.log_ratio(marginal, x)


def binary_cross_entropy(joint: jax.Array, marginal: jax.Array) -> jax.Array:
    """The classifier's loss on logits of joint pairs and of marginal pairs (same shapes)."""
    return -(jax.nn.log_sigmoid(joint) + jax.nn.log_sigmoid(-marginal)).mean()


def balance_penalty(joint: jax.Array, marginal: jax.Array) -> jax.Array:
    """BNRE's term (Delaunoy et al. 2022), (E_joint σ(d) + E_marginal σ(d) − 1)², on logits
    ``(b, *classifiers)``: one gap per classifier over the batch, squared, then averaged."""
    gap = jax.nn.sigmoid(joint).mean(0) + jax.nn.sigmoid(marginal).mean(0) - 1.0
    return jnp.mean(gap**2)


def loss_a(model, batch, key):
    return binary_cross_entropy(*_binary_logits(model, *batch, key))


def loss_balanced(model, batch, key, *, strength: float):
    joint, marginal = _binary_logits(model, *batch, key)
    return binary_cross_entropy(joint, marginal) + strength * balance_penalty(joint, marginal)


def loss_b(model, batch, key, *, num_atoms: int):
    theta, x = batch
    b = theta.shape[0]
    atoms = jnp.concatenate([theta[:, None], theta[other_rows(key, b, min(num_atoms, b) - 1)]], axis=1)
    logits = model.log_ratio(atoms, x[:, None])  # (b, K): atom 0 is the joint one
    return -(logits[:, 0] - jax.nn.logsumexp(logits, axis=1)).mean()


def nre_c_loss(joint: jax.Array, others: jax.Array, gamma: float) -> jax.Array:
    """NRE-C's loss on logits: the joint pair's ``(b, 1, ...)`` and K marginal atoms' ``(b, K, ...)``
    (axis 1 the atoms; trailing axes, such as TMNRE's heads, averaged over). The joint set is the
    joint atom and the first K − 1 marginal ones, so K + 1 logits per x serve both sets."""
    k = others.shape[1]
    log_w = jnp.log(gamma / k)

    def log_q(logits):  # log q(y = j | x, Θ) for each atom j, and log q(y = 0 | x, Θ)
        scaled = log_w + logits
        norm = jnp.logaddexp(0.0, jax.nn.logsumexp(scaled, axis=1))
        return scaled - norm[:, None], -norm

    joint_class, _ = log_q(jnp.concatenate([joint, others[:, : k - 1]], axis=1))
    _, marginal_class = log_q(others)
    return -(gamma * joint_class[:, 0].mean() + marginal_class.mean()) / (1.0 + gamma)


def loss_c(model, batch, key, *, num_atoms: int, gamma: float):
    theta, x = batch
    b = theta.shape[0]
    others = theta[other_rows(key, b, min(num_atoms, b - 1))]  # (b, k, d), none of them joint with x_i
    return nre_c_loss(model.log_ratio(theta[:, None], x[:, None]), model.log_ratio(others, x[:, None]), gamma)


@register("nre")
@dataclass(frozen=True)
class NRE(NeuralMethod):
    """Settings of neural ratio estimation.

    Attributes:
        variant: ``"a"``, ``"b"`` (default, as sbibm's NRE), ``"c"`` or ``"balanced"``.
        num_atoms: atoms per contrastive set (b, c); gamma: NRE-C's class weight;
        strength: BNRE's balancing weight λ.
        hidden, depth: the classifier's MLP; embedding: a `galton.nets` module for x.
        training: `Training`; sampler: settings for `galton.sampling.mcmc` (pairs or a dict).
        on_invalid: simulations whose x has NaN or inf: ``"raise"`` or ``"drop"`` (as `galton.NPE`).
    """

    variant: str = "b"
    num_atoms: int = 10
    gamma: float = 1.0
    strength: float = 100.0
    hidden: int = 50
    depth: int = 2
    embedding: eqx.Module | None = None
    training: Training = field(default_factory=Training)
    sampler: tuple = MCMC_DEFAULTS
    on_invalid: str = "raise"

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        # NRE-B's softmax needs a marginal atom beside the joint one; NRE-C's K counts marginal atoms only
        self._check_settings(hidden=1, depth=1, num_atoms=1 if self.variant == "c" else 2)
        check_real(self.gamma, "gamma")
        check_real(self.strength, "strength", low_inclusive=True)

    def loss(self, prior: Prior, sequential: bool):
        """The loss of this variant, ``(model, batch, key) -> scalar``; the same in every round."""
        if self.variant == "a":
            return loss_a
        if self.variant == "balanced":
            return bind(loss_balanced, strength=self.strength)
        if self.variant == "b":
            return bind(loss_b, num_atoms=self.num_atoms)
        return bind(loss_c, num_atoms=self.num_atoms, gamma=self.gamma)  # "c": __post_init__ admits no other

    def network(self, theta, x, key) -> RatioNetwork:
        return ratio_network(theta, x, key=key, hidden=self.hidden, depth=self.depth, embedding=self.embedding)

    def posterior(self, network, prior: Prior, history: list[dict]) -> DensityPosterior:
        return DensityPosterior(network, prior, history=history, term="ratio", sampler=self.sampler)
