"""Posteriors built from trained networks: a flow q(θ | x) (NPE), and likelihood × prior or
ratio × prior densities (NLE, NRE) sampled by MCMC. Both are amortized: `condition` on any x.

Saved like every `galton.posterior.Posterior`: the network's weights go to ``arrays.npz``
beside a JSON spec that rebuilds its structure. The prior is stored with pickle (NumPyro
distributions are objects of arrays that pickle by class name); load only files you trust.
"""

from __future__ import annotations

import pickle

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from galton import flows
from galton.methods import nre
from galton.posterior import Posterior
from galton.problem import Prior, ProblemError
from galton.sampling import MCMC_DEFAULTS, mcmc

def _check_x(x, shape: tuple[int, ...], *, iid: bool) -> jax.Array:
    if x is None:
        raise ValueError("no observation: pass x=..., or call condition(x) first")
    x = jnp.asarray(x, jnp.float32)
    if x.shape == shape:
        return x[None] if iid else x
    if iid and x.ndim == len(shape) + 1 and x.shape[1:] == shape:
        return x
    allowed = f"{shape}" + (f" or (n_obs, *{shape}) for iid observations" if iid else "")
    raise ProblemError(f"x has shape {x.shape}; this posterior expects {allowed}")


@eqx.filter_jit
def _sample_many(model: flows.ConditionalFlow, keys: jax.Array, xs: jax.Array, n: int) -> jax.Array:
    return jax.vmap(lambda k, x: model.sample(k, x, n))(keys, xs)


@eqx.filter_jit
def _log_prob_many(model: flows.ConditionalFlow, theta: jax.Array, xs: jax.Array) -> jax.Array:
    return model.log_prob(theta, xs)


def _weights(net: eqx.Module) -> dict[str, np.ndarray]:
    leaves = jax.tree.leaves(eqx.filter(net, eqx.is_array))
    return {f"weight_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}


def _with_weights(skeleton: eqx.Module, arrays: dict[str, np.ndarray]) -> eqx.Module:
    params, static = eqx.partition(skeleton, eqx.is_array)
    leaves, treedef = jax.tree.flatten(params)
    restored = [jnp.asarray(arrays[f"weight_{i}"], leaf.dtype) for i, leaf in enumerate(leaves)]
    return eqx.combine(jax.tree.unflatten(treedef, restored), static)


class _NeuralPosterior(Posterior):
    """What flow and density posteriors share: the prior, the network, history and saving."""

    amortized = True

    def __init__(self, network: eqx.Module, prior: Prior, x_obs=None, history: list[dict] | None = None):
        self.network = network
        self.prior = prior
        self.names = list(prior.names)
        self.history = list(history or [])
        self.x_obs = None if x_obs is None else np.asarray(self._check_obs(x_obs))

    def _check_obs(self, x) -> jax.Array:
        raise NotImplementedError

    def _x(self, x) -> jax.Array:
        return self._check_obs(self.x_obs if x is None else x)

    def condition(self, x) -> "_NeuralPosterior":
        """The posterior at observation ``x``."""
        return self._replace(x_obs=x)

    def _replace(self, **changes) -> "_NeuralPosterior":
        state = {"network": self.network, "prior": self.prior, "x_obs": self.x_obs, "history": self.history, **changes}
        return type(self)(**state)

    def _state(self):
        meta = {"spec": self.network.spec, "history": self.history}
        prior = np.frombuffer(pickle.dumps(self.prior), np.uint8)
        return meta, {**_weights(self.network), "prior_pickle": prior}

    @classmethod
    def _skeleton(cls, meta: dict) -> eqx.Module:
        raise NotImplementedError

    @classmethod
    def _from_state(cls, meta, arrays):
        prior = pickle.loads(arrays.pop("prior_pickle").tobytes())
        return cls(_with_weights(cls._skeleton(meta), arrays), prior, history=meta["history"])


class FlowPosterior(_NeuralPosterior):
    """An amortized posterior q(θ | x) from NPE, restricted to the prior's support.

    Draws outside the support are replaced by fresh ones; `leakage` reports the share that
    falls outside. `log_prob` is the flow's density on the support (−inf outside), not
    renormalised by the leakage.

    Args:
        network: the trained `galton.flows.ConditionalFlow` q(θ | x).
        prior: the problem's `Prior`.
        x_obs: optional observation ``(*x_shape)`` to condition on.
        history: training history of each round.
    """

    kind = "flow"

    def _check_obs(self, x) -> jax.Array:
        return _check_x(x, self.network.c_shape, iid=False)

    @classmethod
    def _skeleton(cls, meta):
        return flows.skeleton(meta["spec"])

    def log_prob(self, theta, x=None) -> jax.Array:
        """log q(θ | x) for θ ``(..., d)`` -> ``(...)``; −inf outside the prior's support."""
        theta = jnp.asarray(theta)
        lp = self.network.log_prob(theta, self._x(x))
        return jnp.where(self.prior.in_support(theta), lp, -jnp.inf)

    def log_prob_batch(self, theta, xs) -> jax.Array:
        """log q(θ | x) for θ ``(m, k, d)`` at xs ``(m, *x_shape)`` -> ``(m, k)``, one jitted call."""
        theta, xs = jnp.asarray(theta), jnp.asarray(xs, jnp.float32)
        lp = _log_prob_many(self.network, theta, xs[:, None])
        return jnp.where(self.prior.in_support(theta), lp, -jnp.inf)

    def sample(self, n: int, *, key: jax.Array, x=None) -> jax.Array:
        """``n`` draws ``(n, d)`` inside the prior's support."""
        return self.sample_batch(n, key=key, xs=self._x(x)[None])[0]

    def sample_batch(self, n: int, *, key: jax.Array, xs) -> jax.Array:
        """``n`` draws for each of m observations xs ``(m, *x_shape)`` -> ``(m, n, d)``, one jitted call.

        Draws outside the prior's support are replaced by fresh ones until none is left.
        """
        xs = jnp.asarray(xs, jnp.float32)
        if xs.shape[1:] != self.network.c_shape:
            raise ProblemError(f"xs has shape {xs.shape}; expected (m, *{self.network.c_shape})")
        out, bad = None, None
        for attempt in range(1000):
            draws = _sample_many(self.network, jax.random.split(jax.random.fold_in(key, attempt), len(xs)), xs, n)
            inside = self.prior.in_support(draws)
            out = draws if out is None else jnp.where(bad[..., None], draws, out)
            bad = ~inside if bad is None else bad & ~inside
            if not bool(bad.any()):
                return out
        raise RuntimeError(
            f"after 1000 rounds {int(bad.sum())} draws still fell outside the prior's support; "
            "the flow has not learned the posterior"
        )

    def leakage(self, *, key: jax.Array, x=None, n: int = 10_000) -> float:
        """Share of the flow's mass outside the prior's support, estimated from ``n`` draws."""
        theta = _sample_many(self.network, key[None], self._x(x)[None], n)[0]
        return float(1.0 - self.prior.in_support(theta).mean())


class DensityPosterior(_NeuralPosterior):
    """p(θ | x) ∝ exp(log_term(θ, x)) · p(θ), sampled by MCMC: NLE (log_term = Σ log q(x_i | θ)
    over iid observations) and NRE (log_term = Σ learned log ratios).

    `log_prob` is unnormalised.

    Args:
        network: a `ConditionalFlow` q(x | θ) (``term="likelihood"``) or an
            `galton.methods.nre.RatioNetwork` (``term="ratio"``).
        prior: the problem's `Prior`.
        x_obs: optional observation ``(*x_shape)`` or iid observations ``(n_obs, *x_shape)``.
        term: ``"likelihood"`` or ``"ratio"``.
        sampler: settings for `galton.sampling.mcmc`, as ``((name, value), ...)``.
        history: training history of each round.
    """

    kind = "density"

    def __init__(self, network, prior, x_obs=None, history=None, term: str = "likelihood", sampler=MCMC_DEFAULTS):
        if term not in ("likelihood", "ratio"):
            raise ValueError(f"term must be 'likelihood' or 'ratio', got {term!r}")
        self.term = term
        self.sampler = tuple(sampler)
        super().__init__(network, prior, x_obs, history)

    def _replace(self, **changes):
        state = {"network": self.network, "prior": self.prior, "x_obs": self.x_obs, "history": self.history,
                 "term": self.term, "sampler": self.sampler, **changes}
        return type(self)(**state)

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.network.y_dim,) if self.term == "likelihood" else self.network.x_shape

    def _check_obs(self, x) -> jax.Array:
        return _check_x(x, self.x_shape, iid=True)

    def _state(self):
        meta, arrays = super()._state()
        return {**meta, "term": self.term, "sampler": [list(p) for p in self.sampler]}, arrays

    @classmethod
    def _skeleton(cls, meta):
        return flows.skeleton(meta["spec"]) if meta["term"] == "likelihood" else nre.skeleton(meta["spec"])

    @classmethod
    def _from_state(cls, meta, arrays):
        prior = pickle.loads(arrays.pop("prior_pickle").tobytes())
        network = _with_weights(cls._skeleton(meta), arrays)
        return cls(network, prior, history=meta["history"], term=meta["term"], sampler=[tuple(p) for p in meta["sampler"]])

    def log_term(self, theta, x) -> jax.Array:
        """Σ over iid observations x ``(n_obs, *x_shape)`` of the network's log term -> ``(...)``."""
        theta = jnp.asarray(theta)
        if self.term == "likelihood":
            per_obs = jax.vmap(lambda xi: self.network.log_prob(xi, theta))(x)
        else:
            per_obs = jax.vmap(lambda xi: self.network.log_ratio(theta, xi))(x)
        return per_obs.sum(0)

    def log_prob(self, theta, x=None) -> jax.Array:
        """Unnormalised log p(θ | x) for θ ``(..., d)`` -> ``(...)``."""
        theta = jnp.asarray(theta)
        return self.log_term(theta, self._x(x)) + self.prior.log_prob(theta)

    def sample(self, n: int, *, key: jax.Array, x=None, **sampler) -> jax.Array:
        """``n`` MCMC draws ``(n, d)``; ``sampler`` overrides `galton.sampling.mcmc` settings."""
        x = self._x(x)
        return mcmc(lambda t: self.log_prob(t, x), self.prior, n, key=key, **{**dict(self.sampler), **sampler})


__all__ = ["DensityPosterior", "FlowPosterior"]
