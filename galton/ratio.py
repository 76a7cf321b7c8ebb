"""The classifiers ratio estimators train, with the specs that rebuild them for loading:
`RatioNetwork` d(θ, x) ≈ log p(x|θ)/p(x) (NRE; later the gold-mining estimators) and
`MarginalRatioNetwork`, one head per marginal on a shared embedding (TMNRE)."""

from __future__ import annotations

import functools
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import paramax
from scipy.special import log_expit

from galton import nets
from galton._cache import built
from galton.flows import input_standardisation, standardisation


class Specified:
    """What a network rebuilt for loading from its JSON ``spec_json`` reads from it."""

    @property
    def spec(self) -> dict:
        return json.loads(self.spec_json)

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.spec["x_shape"])


class RatioNetwork(eqx.Module, Specified):
    """The classifier d(θ, x): an MLP on [z-scored θ, embedding of z-scored x]."""

    embedding: eqx.Module
    head: eqx.nn.MLP
    theta_shift: paramax.NonTrainable
    theta_scale: paramax.NonTrainable
    x_shift: paramax.NonTrainable
    x_scale: paramax.NonTrainable
    spec_json: str = eqx.field(static=True)

    def log_ratio(self, theta: jax.Array, x: jax.Array) -> jax.Array:
        """d(θ, x) ≈ log p(x|θ)/p(x) for θ ``(*batch, d)``, x ``(*batch, *x_shape)`` (broadcast) -> ``(*batch,)``."""
        theta = (theta - paramax.unwrap(self.theta_shift)) / paramax.unwrap(self.theta_scale)
        x = (x - paramax.unwrap(self.x_shift)) / paramax.unwrap(self.x_scale)
        x_batch = x.shape[: x.ndim - len(self.x_shape)]
        e = jax.vmap(self.embedding)(x.reshape(-1, *self.x_shape)).reshape(*x_batch, -1)
        batch = jnp.broadcast_shapes(theta.shape[:-1], e.shape[:-1])
        z = jnp.concatenate([jnp.broadcast_to(theta, (*batch, theta.shape[-1])), jnp.broadcast_to(e, (*batch, e.shape[-1]))], -1)
        return jax.vmap(self.head)(z.reshape(-1, z.shape[-1])).reshape(batch)


def _standardisers(spec: dict, stats) -> list[paramax.NonTrainable]:
    """θ's and x's shift and scale, frozen (identity ones for a skeleton to load weights into)."""
    x_shape = tuple(spec["x_shape"])
    if stats is None:
        stats = (np.zeros(spec["theta_dim"]), np.ones(spec["theta_dim"]), np.zeros(x_shape), np.ones(x_shape))
    return [paramax.NonTrainable(jnp.asarray(s, jnp.float32)) for s in stats]


def _mlp(in_size: int, hidden: int, depth: int, activation, key) -> eqx.nn.MLP:
    # one program, not one per layer: a fresh process reads each from the compile cache at a cost
    stored = built(functools.partial(_new_mlp, in_size, hidden, depth, activation), key)
    return stored if stored is not None else _jitted_mlp(in_size, hidden, depth, activation, key)


def _new_mlp(in_size: int, hidden: int, depth: int, activation, key) -> eqx.nn.MLP:
    return eqx.nn.MLP(in_size, "scalar", hidden, depth, activation=activation, key=key)


_jitted_mlp = eqx.filter_jit(_new_mlp)


def _network(spec: dict, embedding: eqx.Module, key: jax.Array, stats=None) -> RatioNetwork:
    x_shape = tuple(spec["x_shape"])
    e_dim = int(jax.eval_shape(embedding, jnp.zeros(x_shape)).shape[0])
    activation = nets._activation(spec.get("activation", "relu"))  # specs saved before the option are relu
    head = _mlp(spec["theta_dim"] + e_dim, spec["hidden"], spec["depth"], activation, key)
    frozen = _standardisers(spec, stats)
    return RatioNetwork(embedding, head, *frozen, json.dumps(spec))


SKELETONS: dict = {}  # other ratio networks' skeletons by spec["kind"], registered by their modules (SALLINO's)


def skeleton(spec: dict) -> eqx.Module:
    """A `RatioNetwork` (or a network registered in ``SKELETONS``) with the structure ``spec``
    describes (weights to be deserialised into)."""
    if spec.get("kind") in SKELETONS:
        return SKELETONS[spec["kind"]](spec)
    key = jax.random.key(0)
    return _network(spec, nets.build(spec["embedding"], key=key), key)


def ratio_network(theta, x, *, key: jax.Array, hidden: int, depth: int, embedding: eqx.Module | None = None,
                  activation: str = "relu") -> RatioNetwork:
    """An untrained `RatioNetwork` for θ ``(n, d)`` and x ``(n, *x_shape)``, z-scored on them.

    ``activation``: the head's (a `galton.nets` name); losses on ∇θ d want a smooth one such as ``"tanh"``.
    """
    x_shape = x.shape[1:]
    embedding = nets.Identity(x_shape) if embedding is None else embedding
    spec = {
        "theta_dim": int(theta.shape[1]), "x_shape": [int(s) for s in x_shape],
        "hidden": hidden, "depth": depth, "embedding": embedding.spec,
    }
    if activation != "relu":
        spec["activation"] = activation
    return _network(spec, embedding, key, (*standardisation(theta), *input_standardisation(embedding, x)))


class RatioEnsemble(eqx.Module, Specified):
    """The mean of several `RatioNetwork`'s d(θ, x), trained on the same data from different
    initialisations and batch orders (madminer's ``Ensemble``): the members' errors at small
    budgets are mostly their own, so the mean's is smaller than a typical member's."""

    members: tuple
    spec_json: str = eqx.field(static=True)

    def log_ratio(self, theta: jax.Array, x: jax.Array) -> jax.Array:
        """The members' mean d(θ, x); shapes as `RatioNetwork.log_ratio`."""
        return sum(m.log_ratio(theta, x) for m in self.members) / len(self.members)


def ratio_ensemble(members) -> RatioEnsemble:
    """A `RatioEnsemble` of trained ``members`` (networks with the same spec)."""
    members = tuple(members)
    member = _member_spec(members)
    spec = {"kind": "RatioEnsemble", "size": len(members), "member": member, "theta_dim": member["theta_dim"], "x_shape": member["x_shape"]}
    return RatioEnsemble(members, json.dumps(spec))


def _member_spec(members: tuple) -> dict:
    """The one spec an ensemble's ``members`` share; a ValueError when they differ."""
    specs = {m.spec_json for m in members}
    if len(specs) != 1:
        raise ValueError(f"an ensemble's members must share one structure, got {len(specs)} different specs")
    return members[0].spec


SKELETONS["RatioEnsemble"] = lambda spec: RatioEnsemble(tuple(skeleton(spec["member"]) for _ in range(spec["size"])), json.dumps(spec))


class MarginalRatioNetwork(eqx.Module, Specified):
    """One ratio head d_m(θ_m, x) ≈ log p(θ_m|x)/p(θ_m) per marginal m, on one shared embedding of x.

    The heads are one stacked MLP (vmapped over heads), so adding marginals adds no compile
    time; each head sees its marginal's z-scored columns, zero-padded to the largest marginal.
    """

    embedding: eqx.Module
    heads: eqx.nn.MLP
    theta_shift: paramax.NonTrainable
    theta_scale: paramax.NonTrainable
    x_shift: paramax.NonTrainable
    x_scale: paramax.NonTrainable
    spec_json: str = eqx.field(static=True)

    @property
    def marginals(self) -> list[tuple[int, ...]]:
        """Column indices of each head's marginal."""
        return [tuple(m) for m in self.spec["marginals"]]

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        """Each head's columns ``(n_heads, width)``, zero-padded, and the mask of real ones."""
        width = max(len(m) for m in self.marginals)
        idx = np.zeros((len(self.marginals), width), np.int32)
        mask = np.zeros((len(self.marginals), width), np.float32)
        for h, m in enumerate(self.marginals):
            idx[h, : len(m)], mask[h, : len(m)] = m, 1.0
        return idx, mask

    def embed(self, x: jax.Array) -> jax.Array:
        """Features of x ``(*batch, *x_shape)`` -> ``(*batch, e)``."""
        x = (x - paramax.unwrap(self.x_shift)) / paramax.unwrap(self.x_scale)
        batch = x.shape[: x.ndim - len(self.x_shape)]
        return jax.vmap(self.embedding)(x.reshape(-1, *self.x_shape)).reshape(*batch, -1)

    def head_log_ratios(self, theta: jax.Array, features: jax.Array, heads=None) -> jax.Array:
        """d_m for the heads ``heads`` (indices, possibly traced; all when None): θ ``(*batch, d)``
        (full rows; a head reads only its own columns) and features ``(*batch, e)`` (broadcast)
        -> ``(*batch, n_heads)``."""
        heads = jnp.arange(len(self.marginals)) if heads is None else jnp.asarray(heads)
        idx, mask = (jnp.asarray(a)[heads] for a in self._index())
        t = (theta - paramax.unwrap(self.theta_shift)) / paramax.unwrap(self.theta_scale)
        batch = jnp.broadcast_shapes(t.shape[:-1], features.shape[:-1])
        t = jnp.broadcast_to(t, (*batch, t.shape[-1])).reshape(-1, t.shape[-1])
        e = jnp.broadcast_to(features, (*batch, features.shape[-1])).reshape(-1, features.shape[-1])
        chosen = jax.tree.map(lambda a: a[heads] if eqx.is_array(a) else a, self.heads)
        inputs = t[:, idx] * mask  # (n, h, width)

        def one_head(mlp, z):  # z (n, width)
            return jax.vmap(mlp)(jnp.concatenate([z, e], axis=-1))

        out = eqx.filter_vmap(one_head, in_axes=(eqx.if_array(0), 1), out_axes=1)(chosen, inputs)
        return out.reshape(*batch, heads.shape[0])

    def log_ratios(self, theta: jax.Array, x: jax.Array) -> jax.Array:
        """Every head: θ ``(*batch, d)``, x ``(*batch, *x_shape)`` (broadcast) -> ``(*batch, n_heads)``."""
        return self.head_log_ratios(theta, self.embed(x))


def _marginal_network(spec: dict, embedding: eqx.Module, key: jax.Array, stats=None) -> MarginalRatioNetwork:
    x_shape = tuple(spec["x_shape"])
    e_dim = int(jax.eval_shape(embedding, jnp.zeros(x_shape)).shape[0])
    width = max(len(m) for m in spec["marginals"])
    keys = jax.random.split(key, len(spec["marginals"]))
    make = lambda k: eqx.nn.MLP(width + e_dim, "scalar", spec["hidden"], spec["depth"], activation=jax.nn.relu, key=k)
    heads = eqx.filter_vmap(make)(keys)
    frozen = _standardisers(spec, stats)
    return MarginalRatioNetwork(embedding, heads, *frozen, json.dumps(spec))


def marginal_skeleton(spec: dict) -> "MarginalRatioNetwork | MarginalRatioEnsemble":
    """A `MarginalRatioNetwork` (or `MarginalRatioEnsemble`) with the structure ``spec`` describes."""
    if spec.get("kind") == "MarginalRatioEnsemble":
        return MarginalRatioEnsemble(tuple(marginal_skeleton(spec["member"]) for _ in range(spec["size"])), json.dumps(spec))
    key = jax.random.key(0)
    return _marginal_network(spec, nets.build(spec["embedding"], key=key), key)


class MarginalRatioEnsemble(eqx.Module, Specified):
    """The mean of several `MarginalRatioNetwork`'s heads, trained on the same simulations from
    different keys. A run's heads vary a lot with where training starts (on slcp one
    observation's marginal C2ST moves by about 0.04 from rounding alone); the mean of a few
    varies less. Its features are the members' side by side."""

    members: tuple
    spec_json: str = eqx.field(static=True)

    @property
    def marginals(self) -> list[tuple[int, ...]]:
        """Column indices of each head's marginal (the members')."""
        return self.members[0].marginals

    def embed(self, x: jax.Array) -> jax.Array:
        """Every member's features of x ``(*batch, *x_shape)``, concatenated -> ``(*batch, size · e)``."""
        return jnp.concatenate([m.embed(x) for m in self.members], axis=-1)

    def head_log_ratios(self, theta: jax.Array, features: jax.Array, heads=None) -> jax.Array:
        """The members' mean d_m; arguments as `MarginalRatioNetwork.head_log_ratios`, with
        features from this ensemble's `embed`."""
        parts = jnp.split(features, len(self.members), axis=-1)
        return sum(m.head_log_ratios(theta, f, heads=heads) for m, f in zip(self.members, parts)) / len(self.members)

    def log_ratios(self, theta: jax.Array, x: jax.Array) -> jax.Array:
        """Every head: θ ``(*batch, d)``, x ``(*batch, *x_shape)`` (broadcast) -> ``(*batch, n_heads)``."""
        return self.head_log_ratios(theta, self.embed(x))


def marginal_ratio_ensemble(members) -> MarginalRatioEnsemble:
    """A `MarginalRatioEnsemble` of trained ``members`` (`MarginalRatioNetwork`'s with one spec)."""
    members = tuple(members)
    member = _member_spec(members)
    spec = {"kind": "MarginalRatioEnsemble", "size": len(members), "member": member, "x_shape": member["x_shape"]}
    return MarginalRatioEnsemble(members, json.dumps(spec))


def marginal_ratio_network(
    theta, x, marginals, *, key: jax.Array, hidden: int, depth: int, embedding: eqx.Module | None = None
) -> MarginalRatioNetwork:
    """An untrained `MarginalRatioNetwork` for θ ``(n, d)``, x ``(n, *x_shape)`` and ``marginals``
    (tuples of column indices), z-scored on the data."""
    x_shape = x.shape[1:]
    embedding = nets.Identity(x_shape) if embedding is None else embedding
    spec = {
        "theta_dim": int(theta.shape[1]), "x_shape": [int(s) for s in x_shape], "hidden": hidden, "depth": depth,
        "embedding": embedding.spec, "marginals": [list(map(int, m)) for m in marginals],
    }
    return _marginal_network(spec, embedding, key, (*standardisation(theta), *input_standardisation(embedding, x)))


def derangement(key, b: int) -> jax.Array:
    """Row indices ``(b,)`` with no row mapped to itself."""
    perm = jax.random.permutation(key, b)
    return jnp.zeros(b, jnp.int32).at[perm].set(jnp.roll(perm, 1))


def temperatures(network: MarginalRatioNetwork, theta, x, *, key: jax.Array, negatives: int = 4) -> np.ndarray:
    """Each head's factor a ``(heads,)``, within 1 % on [0.05, 5], that minimises its binary loss
    with log-ratio a·d on joint pairs θ ``(n, d)``, x ``(n, *x_shape)`` and ``negatives``
    derangements of θ against each x (rows the network was not trained on)."""
    theta = jnp.asarray(theta, jnp.float32)
    features = network.embed(jnp.asarray(x, jnp.float32))
    heads = jnp.arange(len(network.marginals))
    rows = jnp.concatenate([derangement(k, len(theta)) for k in jax.random.split(key, negatives)])
    joint = np.asarray(head_values(network, heads, features, theta), np.float64)
    marginal = np.asarray(head_values(network, heads, jnp.tile(features, (negatives, 1)), theta[rows]), np.float64)
    factors = np.exp(np.linspace(np.log(0.05), np.log(5.0), 464))
    losses = [-(log_expit(a * joint).mean(0) + log_expit(-a * marginal).mean(0)) for a in factors]  # (factors, heads)
    return factors[np.argmin(losses, 0)]


def scaled_heads(network: MarginalRatioNetwork, factors) -> MarginalRatioNetwork:
    """``network`` with head h's log-ratio multiplied by ``factors[h]`` (its last layer scaled)."""
    last = network.heads.layers[-1]
    a = jnp.asarray(factors, jnp.float32)
    along = lambda leaf: a.reshape((-1,) + (1,) * (leaf.ndim - 1))  # noqa: E731
    return eqx.tree_at(lambda n: (n.heads.layers[-1].weight, n.heads.layers[-1].bias), network,
                       (last.weight * along(last.weight), last.bias * along(last.bias)))


@eqx.filter_jit
def head_values(network: MarginalRatioNetwork, heads, features, theta) -> jax.Array:
    """`MarginalRatioNetwork.head_log_ratios` compiled once per shape: heads ``(h,)``, features
    ``(*batch, e)``, θ ``(*batch, d)`` -> ``(*batch, h)``."""
    return network.head_log_ratios(theta, features, heads=heads)


__all__ = ["SKELETONS", "Specified", "MarginalRatioEnsemble", "MarginalRatioNetwork", "marginal_ratio_ensemble", "RatioEnsemble", "RatioNetwork", "marginal_ratio_network", "marginal_skeleton",
           "derangement", "head_values", "scaled_heads", "temperatures", "ratio_ensemble", "ratio_network", "skeleton"]
