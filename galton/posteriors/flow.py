"""NPE's posterior: an amortized flow q(θ | x), restricted to the prior's support."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from galton import flows
from galton.keys import as_key
from galton.posteriors.base import check_draws, check_theta_width
from galton.posteriors.network import NetworkPosterior, check_x, check_xs


@eqx.filter_jit
def _sample_many(model: flows.ConditionalFlow, keys: jax.Array, xs: jax.Array, n: int) -> jax.Array:
    return jax.vmap(lambda k, x: model.sample(k, x, n))(keys, xs)


@eqx.filter_jit
def _log_prob_many(model: flows.ConditionalFlow, theta: jax.Array, xs: jax.Array) -> jax.Array:
    return model.log_prob(theta, xs)  # θ (..., d) and xs (..., *x_shape), broadcast


class FlowPosterior(NetworkPosterior):
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

    @property
    def x_shape(self) -> tuple[int, ...]:
        return self.network.c_shape

    def _check_obs(self, x) -> jax.Array:
        return check_x(x, self.x_shape, iid=False)

    @classmethod
    def _skeleton(cls, meta):
        return flows.skeleton(meta["spec"])

    def log_prob(self, theta, x=None) -> jax.Array:
        """log q(θ | x) for θ ``(..., d)`` -> ``(...)``; −inf outside the prior's support."""
        theta, _ = check_theta_width(theta, self.dim)
        lp = _log_prob_many(self.network, theta, self._x(x))  # jitted: op by op, the flow's scan was traced anew on every call
        return jnp.where(self.prior.in_support(theta), lp, -jnp.inf)

    def log_prob_batch(self, theta, xs) -> jax.Array:
        """log q(θ | x) for θ ``(m, k, d)`` at xs ``(m, *x_shape)`` -> ``(m, k)``, one jitted call."""
        theta, xs = check_theta_width(theta, self.dim)[0], check_xs(xs, self.x_shape)
        lp = _log_prob_many(self.network, theta, xs[:, None])
        return jnp.where(self.prior.in_support(theta), lp, -jnp.inf)

    def sample(self, n: int, *, key: jax.Array, x=None) -> jax.Array:
        """``n`` draws ``(n, d)`` inside the prior's support."""
        return self.sample_batch(n, key=key, xs=self._x(x)[None])[0]

    def sample_batch(self, n: int, *, key: jax.Array, xs) -> jax.Array:
        """``n`` draws for each of m observations xs ``(m, *x_shape)`` -> ``(m, n, d)``, one jitted call.

        Draws outside the prior's support are replaced by fresh ones until none is left.
        """
        key, n, xs = as_key(key), check_draws(n), check_xs(xs, self.x_shape)
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
        theta = _sample_many(self.network, as_key(key)[None], self._x(x)[None], n)[0]
        return float(1.0 - self.prior.in_support(theta).mean())


__all__ = ["FlowPosterior"]
