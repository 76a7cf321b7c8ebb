"""Posteriors built from trained networks: a flow q(θ | x) (NPE), and likelihood × prior or
ratio × prior densities (NLE, NRE) sampled by MCMC.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from galton import flows
from galton.problem import Prior, ProblemError
from galton.sampling import mcmc


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


class FlowPosterior(eqx.Module):
    """An amortized posterior q(θ | x) from NPE, restricted to the prior's support.

    Draws outside the support are rejected; `leakage(x)` reports the share rejected.
    `log_prob` is the flow's density on the support (−inf outside), not renormalised.
    """

    model: flows.ConditionalFlow
    prior: Prior = eqx.field(static=True)
    x: jax.Array | None = None
    history_json: str = eqx.field(static=True, default="[]")

    @property
    def names(self) -> list[str]:
        return self.prior.names

    @property
    def history(self) -> list[dict]:
        """Training history of each round."""
        return json.loads(self.history_json)

    def condition(self, x) -> "FlowPosterior":
        """The posterior at one observation x ``(*x_shape)``."""
        return FlowPosterior(self.model, self.prior, _check_x(x, self.model.c_shape, iid=False), self.history_json)

    def _x(self, x):
        return _check_x(self.x if x is None else x, self.model.c_shape, iid=False)

    def log_prob(self, theta, x=None) -> jax.Array:
        """log q(θ | x) for θ ``(..., d)`` -> ``(...)``; −inf outside the prior's support."""
        theta = jnp.asarray(theta)
        lp = self.model.log_prob(theta, self._x(x))
        return jnp.where(self.prior.in_support(theta), lp, -jnp.inf)

    def log_prob_batch(self, theta, xs) -> jax.Array:
        """log q(θ | x) for θ ``(m, k, d)`` at xs ``(m, *x_shape)`` -> ``(m, k)``, one jitted call."""
        theta, xs = jnp.asarray(theta), jnp.asarray(xs, jnp.float32)
        lp = _log_prob_many(self.model, theta, xs[:, None])
        return jnp.where(self.prior.in_support(theta), lp, -jnp.inf)

    def sample(self, n: int, *, key: jax.Array, x=None) -> jax.Array:
        """``n`` draws ``(n, d)`` inside the prior's support."""
        return self.sample_batch(n, key=key, xs=self._x(x)[None])[0]

    def sample_batch(self, n: int, *, key: jax.Array, xs) -> jax.Array:
        """``n`` draws for each of m observations xs ``(m, *x_shape)`` -> ``(m, n, d)``, one jitted call.

        Draws outside the prior's support are replaced by fresh ones until none is left.
        """
        xs = jnp.asarray(xs, jnp.float32)
        if xs.shape[1:] != self.model.c_shape:
            raise ProblemError(f"xs has shape {xs.shape}; expected (m, *{self.model.c_shape})")
        out, bad = None, None
        for attempt in range(1000):
            draws = _sample_many(self.model, jax.random.split(jax.random.fold_in(key, attempt), len(xs)), xs, n)
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
        theta = self.model.sample(key, self._x(x), n)
        return float(1.0 - self.prior.in_support(theta).mean())


class DensityPosterior(eqx.Module):
    """p(θ | x) ∝ exp(log_term(θ, x)) · p(θ), sampled by MCMC: NLE (log_term = Σ log q(x_i | θ)
    over iid observations) and NRE (log_term = the learned log ratio).

    `log_prob` is unnormalised.
    """

    network: eqx.Module
    prior: Prior = eqx.field(static=True)
    x: jax.Array | None = None
    kind: str = eqx.field(static=True, default="likelihood")
    sampler: tuple = eqx.field(static=True, default=(("method", "nuts"), ("num_chains", 20), ("warmup", 200)))
    history_json: str = eqx.field(static=True, default="[]")

    @property
    def names(self) -> list[str]:
        return self.prior.names

    @property
    def history(self) -> list[dict]:
        """Training history of each round."""
        return json.loads(self.history_json)

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.network.y_dim,) if self.kind == "likelihood" else self.network.x_shape

    def condition(self, x) -> "DensityPosterior":
        x = _check_x(x, self.x_shape, iid=True)
        return DensityPosterior(self.network, self.prior, x, self.kind, self.sampler, self.history_json)

    def _x(self, x):
        return _check_x(self.x if x is None else x, self.x_shape, iid=True)

    def log_term(self, theta, x) -> jax.Array:
        """Σ over iid observations of the network's log term, for θ ``(..., d)`` -> ``(...)``."""
        theta = jnp.asarray(theta)
        if self.kind == "likelihood":
            per_obs = jax.vmap(lambda xi: self.network.log_prob(xi, theta))(x)
        else:
            per_obs = jax.vmap(lambda xi: self.network.log_ratio(theta, xi))(x)
        return per_obs.sum(0)

    def log_prob(self, theta, x=None) -> jax.Array:
        """Unnormalised log p(θ | x) for θ ``(..., d)`` -> ``(...)``."""
        theta = jnp.asarray(theta)
        x = self._x(x)
        return self.log_term(theta, x) + self.prior.log_prob(theta)

    def sample(self, n: int, *, key: jax.Array, x=None, **sampler) -> jax.Array:
        """``n`` MCMC draws ``(n, d)``; ``sampler`` overrides `galton.sampling.mcmc` settings."""
        x = self._x(x)
        settings = {**dict(self.sampler), **sampler}
        return mcmc(lambda t: self.log_prob(t, x), self.prior, n, key=key, **settings)


def save(posterior, path: str | Path) -> None:
    """Write a neural posterior to directory ``path`` (weights, settings, prior, observation)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    net = posterior.model if isinstance(posterior, FlowPosterior) else posterior.network
    eqx.tree_serialise_leaves(path / "weights.eqx", net)
    meta = {"class": type(posterior).__name__, "spec": net.spec, "net": type(net).__name__, "history": posterior.history}
    if isinstance(posterior, DensityPosterior):
        meta.update(kind=posterior.kind, sampler=dict(posterior.sampler))
    (path / "posterior.json").write_text(json.dumps(meta, indent=1))
    # NumPyro distributions are plain objects of arrays; pickle is the format they support
    (path / "prior.pkl").write_bytes(pickle.dumps(posterior.prior))
    if posterior.x is not None:
        np.save(path / "x.npy", np.asarray(posterior.x))


def load(path: str | Path, skeletons: dict[str, Callable[[dict], eqx.Module]]):
    """Read a posterior written by `save`; ``skeletons`` maps a network class name to a builder."""
    path = Path(path)
    meta = json.loads((path / "posterior.json").read_text())
    net = eqx.tree_deserialise_leaves(path / "weights.eqx", skeletons[meta["net"]](meta["spec"]))
    prior = pickle.loads((path / "prior.pkl").read_bytes())
    x = jnp.asarray(np.load(path / "x.npy")) if (path / "x.npy").exists() else None
    history = json.dumps(meta["history"])
    if meta["class"] == "FlowPosterior":
        return FlowPosterior(net, prior, x, history)
    return DensityPosterior(net, prior, x, meta["kind"], tuple(meta["sampler"].items()), history)
