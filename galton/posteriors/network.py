"""What posteriors built from a trained network share: the prior, the network, the training
history, conditioning on x, and saving.

The network's weights go to ``arrays.npz`` beside a JSON spec that rebuilds its structure. The
prior is stored with pickle (NumPyro distributions are objects of arrays that pickle by class
name); load only files you trust.
"""

from __future__ import annotations

import inspect
import pickle

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from galton.posteriors.base import Posterior
from galton.prior import Prior
from galton.problem import ProblemError


def check_x(x, shape: tuple[int, ...], *, iid: bool) -> jax.Array:
    if x is None:
        raise ValueError("no observation: pass x=..., or call condition(x) first")
    x = jnp.asarray(x, jnp.float32)
    if not (x.shape == shape or (iid and x.ndim == len(shape) + 1 and x.shape[1:] == shape)):
        allowed = f"{shape}" + (f" or (n_obs, *{shape}) for iid observations" if iid else "")
        raise ProblemError(f"x has shape {x.shape}; this posterior expects {allowed}")
    # under jit (calibration's log_prob at each x) a traced x has no values to check
    if not isinstance(x, jax.core.Tracer) and not bool(jnp.isfinite(x).all()):
        raise ProblemError("x has NaN or inf values")
    return x[None] if iid and x.shape == shape else x


def check_xs(xs, shape: tuple[int, ...]) -> jax.Array:
    """A batch of observations ``(m, *shape)`` as float32, or a clear error (its shape, NaN or inf)."""
    xs = jnp.asarray(xs, jnp.float32)
    if xs.shape[1:] != tuple(shape) or xs.ndim != len(shape) + 1:
        raise ProblemError(f"xs has shape {xs.shape}; expected a batch of observations (m, *{tuple(shape)})")
    if not isinstance(xs, jax.core.Tracer) and not bool(jnp.isfinite(xs).all()):
        raise ProblemError("xs has NaN or inf values")
    return xs


def network_arrays(net: eqx.Module) -> dict[str, np.ndarray]:
    leaves = jax.tree.leaves(eqx.filter(net, eqx.is_array))
    return {f"weight_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}


def with_network_arrays(skeleton: eqx.Module, arrays: dict[str, np.ndarray]) -> eqx.Module:
    params, static = eqx.partition(skeleton, eqx.is_array)
    leaves, treedef = jax.tree.flatten(params)
    restored = []
    for i, leaf in enumerate(leaves):
        name = f"weight_{i}"
        if name not in arrays:
            raise ValueError(f"the network's array {name} is missing ({len(leaves)} expected, weight_0 … weight_{len(leaves) - 1})")
        # a wrong shape would load and then fail far away, inside the first sample's JAX code
        if arrays[name].shape != leaf.shape:
            raise ValueError(f"the network's array {name} has shape {arrays[name].shape}; its spec builds {leaf.shape}")
        restored.append(jnp.asarray(arrays[name], leaf.dtype))
    return eqx.combine(jax.tree.unflatten(treedef, restored), static)


class NetworkPosterior(Posterior):
    """What flow and density posteriors share: the prior, the network, history and saving.

    A subclass with settings of its own (JSON-able constructor arguments) names them in
    ``settings`` so that conditioning, saving and loading carry them along.
    """

    amortized = True
    settings: tuple[str, ...] = ()

    def __init__(self, network: eqx.Module, prior: Prior, x_obs=None, history: list[dict] | None = None):
        self.network = network
        self.prior = prior
        self.names = list(prior.names)
        self.history = list(history or [])
        self.x_obs = None if x_obs is None else np.asarray(self._check_obs(x_obs))

    @property
    def x_shape(self) -> tuple[int, ...]:
        """The shape of one observation."""
        return tuple(self.network.x_shape)

    def _check_obs(self, x) -> jax.Array:
        raise NotImplementedError

    def _x(self, x) -> jax.Array:
        return self._check_obs(self.x_obs if x is None else x)

    def condition(self, x) -> "NetworkPosterior":
        """The posterior at observation ``x``."""
        return self._replace(x_obs=x)

    def _settings(self) -> dict:
        return {k: getattr(self, k) for k in self.settings}

    def _replace(self, **changes) -> "NetworkPosterior":
        state = {"network": self.network, "prior": self.prior, "x_obs": self.x_obs, "history": self.history, **self._settings()}
        return type(self)(**{**state, **changes})

    def _state(self):
        meta = {"spec": self.network.spec, "history": self.history, **self._settings()}
        prior = np.frombuffer(pickle.dumps(self.prior), np.uint8)
        return meta, {**network_arrays(self.network), "prior_pickle": prior}

    @classmethod
    def _skeleton(cls, meta: dict) -> eqx.Module:
        raise NotImplementedError

    @classmethod
    def _from_state(cls, meta, arrays):
        prior = pickle.loads(arrays.pop("prior_pickle").tobytes())
        network = with_network_arrays(cls._skeleton(meta), arrays)
        # a setting added after a file was written is absent from it: the constructor's default stands in
        defaults = {k for k, v in inspect.signature(cls).parameters.items() if v.default is not inspect.Parameter.empty}
        return cls(network, prior, history=meta["history"], **{k: meta[k] for k in cls.settings if k in meta or k not in defaults})


__all__ = ["NetworkPosterior", "check_x", "network_arrays", "with_network_arrays"]
