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

import functools
import json
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import paramax

from galton import nets
from galton.flows import standardisation
from galton.methods.base import NeuralMethod
from galton.problem import Prior
from galton.sampling import MCMC_DEFAULTS
from galton.train import Training

VARIANTS = ("a", "b", "c", "balanced")


def _other_rows(key, b: int, k: int) -> jax.Array:
    """``(b, k)`` row indices, row i never containing i itself (drawn without replacement)."""
    scores = jax.random.uniform(key, (b, b)) + 2.0 * jnp.eye(b)
    return jnp.argsort(scores, axis=1)[:, :k]


def _binary_logits(model, theta, x, key):
    marginal = theta[_other_rows(key, theta.shape[0], 1)[:, 0]]
    return model.log_ratio(theta, x), model.log_ratio(marginal, x)


def loss_a(model, batch, key):
    joint, marginal = _binary_logits(model, *batch, key)
    return -(jax.nn.log_sigmoid(joint) + jax.nn.log_sigmoid(-marginal)).mean()


def loss_balanced(model, batch, key, *, strength: float):
    joint, marginal = _binary_logits(model, *batch, key)
    balance = jax.nn.sigmoid(joint).mean() + jax.nn.sigmoid(marginal).mean() - 1.0
    return -(jax.nn.log_sigmoid(joint) + jax.nn.log_sigmoid(-marginal)).mean() + strength * balance**2


def loss_b(model, batch, key, *, num_atoms: int):
    theta, x = batch
    b = theta.shape[0]
    atoms = jnp.concatenate([theta[:, None], theta[_other_rows(key, b, min(num_atoms, b) - 1)]], axis=1)
    logits = model.log_ratio(atoms, x[:, None])  # (b, K): atom 0 is the joint one
    return -(logits[:, 0] - jax.nn.logsumexp(logits, axis=1)).mean()


def loss_c(model, batch, key, *, num_atoms: int, gamma: float):
    theta, x = batch
    b = theta.shape[0]
    k = min(num_atoms, b - 1)
    others = theta[_other_rows(key, b, k)]  # (b, k, d), none of them joint with x_i
    joint_set = jnp.concatenate([theta[:, None], others[:, : k - 1]], axis=1)
    log_w = jnp.log(gamma / k)

    def log_q(atoms):  # log q(y = k | x, Θ) for each atom k, and log q(y = 0 | x, Θ)
        scaled = log_w + model.log_ratio(atoms, x[:, None])
        norm = jnp.logaddexp(0.0, jax.nn.logsumexp(scaled, axis=1))
        return scaled - norm[:, None], -norm

    joint_class, _ = log_q(joint_set)
    _, marginal_class = log_q(others)
    return -(gamma * joint_class[:, 0].mean() + marginal_class.mean()) / (1.0 + gamma)


class RatioNetwork(eqx.Module):
    """The classifier d(θ, x): an MLP on [z-scored θ, embedding of z-scored x]."""

    embedding: eqx.Module
    head: eqx.nn.MLP
    theta_shift: paramax.NonTrainable
    theta_scale: paramax.NonTrainable
    x_shift: paramax.NonTrainable
    x_scale: paramax.NonTrainable
    spec_json: str = eqx.field(static=True)

    @property
    def spec(self) -> dict:
        return json.loads(self.spec_json)

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.spec["x_shape"])

    def log_ratio(self, theta: jax.Array, x: jax.Array) -> jax.Array:
        """d(θ, x) ≈ log p(x|θ)/p(x) for θ ``(*batch, d)``, x ``(*batch, *x_shape)`` (broadcast) -> ``(*batch,)``."""
        theta = (theta - paramax.unwrap(self.theta_shift)) / paramax.unwrap(self.theta_scale)
        x = (x - paramax.unwrap(self.x_shift)) / paramax.unwrap(self.x_scale)
        x_batch = x.shape[: x.ndim - len(self.x_shape)]
        e = jax.vmap(self.embedding)(x.reshape(-1, *self.x_shape)).reshape(*x_batch, -1)
        batch = jnp.broadcast_shapes(theta.shape[:-1], e.shape[:-1])
        z = jnp.concatenate([jnp.broadcast_to(theta, (*batch, theta.shape[-1])), jnp.broadcast_to(e, (*batch, e.shape[-1]))], -1)
        return jax.vmap(self.head)(z.reshape(-1, z.shape[-1])).reshape(batch)


def _network(spec: dict, embedding: eqx.Module, key: jax.Array, stats=None) -> RatioNetwork:
    x_shape = tuple(spec["x_shape"])
    e_dim = int(jax.eval_shape(embedding, jnp.zeros(x_shape)).shape[0])
    head = eqx.nn.MLP(spec["theta_dim"] + e_dim, "scalar", spec["hidden"], spec["depth"], activation=jax.nn.relu, key=key)
    if stats is None:
        stats = (np.zeros(spec["theta_dim"]), np.ones(spec["theta_dim"]), np.zeros(x_shape), np.ones(x_shape))
    frozen = [paramax.NonTrainable(jnp.asarray(s, jnp.float32)) for s in stats]
    return RatioNetwork(embedding, head, *frozen, json.dumps(spec))


def skeleton(spec: dict) -> RatioNetwork:
    """A `RatioNetwork` with the structure ``spec`` describes (weights to be deserialised into)."""
    key = jax.random.key(0)
    return _network(spec, nets.build(spec["embedding"], key=key), key)


@dataclass(frozen=True)
class NRE(NeuralMethod):
    """Settings of neural ratio estimation.

    Attributes:
        variant: ``"a"``, ``"b"`` (default, as sbibm's NRE), ``"c"`` or ``"balanced"``.
        num_atoms: atoms per contrastive set (b, c); gamma: NRE-C's class weight;
        strength: BNRE's balancing weight λ.
        hidden, depth: the classifier's MLP; embedding: a `galton.nets` module for x.
        training: `Training`; sampler: settings for `galton.sampling.mcmc`.
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

    def loss(self, prior: Prior, sequential: bool):
        """The loss of this variant, ``(model, batch, key) -> scalar``; the same in every round."""
        if self.variant == "a":
            return loss_a
        if self.variant == "balanced":
            return functools.partial(loss_balanced, strength=self.strength)
        if self.variant == "b":
            return functools.partial(loss_b, num_atoms=self.num_atoms)
        if self.variant == "c":
            return functools.partial(loss_c, num_atoms=self.num_atoms, gamma=self.gamma)
        raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")

    def network(self, theta, x, key) -> RatioNetwork:
        x_shape = x.shape[1:]
        embedding = nets.Identity(x_shape) if self.embedding is None else self.embedding
        spec = {
            "theta_dim": int(theta.shape[1]), "x_shape": [int(s) for s in x_shape],
            "hidden": self.hidden, "depth": self.depth, "embedding": embedding.spec,
        }
        return _network(spec, embedding, key, (*standardisation(theta), *standardisation(x)))
