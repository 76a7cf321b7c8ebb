"""The classifier d(θ, x) ≈ log p(x|θ)/p(x) that ratio estimators train (NRE now; TMNRE's heads
and the gold-mining estimators later), with the spec that rebuilds it for loading."""

from __future__ import annotations

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import paramax

from galton import nets
from galton.flows import standardisation


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


def ratio_network(theta, x, *, key: jax.Array, hidden: int, depth: int, embedding: eqx.Module | None = None) -> RatioNetwork:
    """An untrained `RatioNetwork` for θ ``(n, d)`` and x ``(n, *x_shape)``, z-scored on them."""
    x_shape = x.shape[1:]
    embedding = nets.Identity(x_shape) if embedding is None else embedding
    spec = {
        "theta_dim": int(theta.shape[1]), "x_shape": [int(s) for s in x_shape],
        "hidden": hidden, "depth": depth, "embedding": embedding.spec,
    }
    return _network(spec, embedding, key, (*standardisation(theta), *standardisation(x)))


__all__ = ["RatioNetwork", "ratio_network", "skeleton"]
