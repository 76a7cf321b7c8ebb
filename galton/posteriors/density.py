"""NLE's and NRE's posterior: p(θ | x) ∝ exp(learned log term) · p(θ), sampled by MCMC."""

from __future__ import annotations

from dataclasses import dataclass

import equinox as eqx
import jax

from galton import flows, ratio
from galton.posteriors.base import check_draws, check_theta_width
from galton.posteriors.network import NetworkPosterior, check_x
from galton.prior import Prior
from galton.problem import ProblemError
from galton.sampling import MCMC_DEFAULTS, check_sampler, mcmc


class DensityPosterior(NetworkPosterior):
    """p(θ | x) ∝ exp(log_term(θ, x)) · p(θ), sampled by MCMC: NLE (log_term = Σ log q(x_i | θ)
    over iid observations) and NRE (log_term = Σ learned log ratios).

    `log_prob` is unnormalised.

    Args:
        network: a `ConditionalFlow` q(x | θ) (``term="likelihood"``) or an
            `galton.ratio.RatioNetwork` (``term="ratio"``).
        prior: the problem's `Prior`.
        x_obs: optional observation ``(*x_shape)`` or iid observations ``(n_obs, *x_shape)``.
        term: ``"likelihood"`` or ``"ratio"``.
        sampler: settings for `galton.sampling.mcmc`, as ``((name, value), ...)`` or a dict.
        history: training history of each round.
    """

    kind = "density"
    settings = ("term", "sampler")

    def __init__(self, network, prior, x_obs=None, history=None, term: str = "likelihood", sampler=MCMC_DEFAULTS):
        if term not in ("likelihood", "ratio"):
            raise ValueError(f"term must be 'likelihood' or 'ratio', got {term!r}")
        self.term = term
        self.sampler = check_sampler(sampler)  # also turns the lists JSON gives back into pairs
        super().__init__(network, prior, x_obs, history)

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.network.y_dim,) if self.term == "likelihood" else self.network.x_shape

    def _check_obs(self, x) -> jax.Array:
        x = check_x(x, self.x_shape, iid=True)
        if x.shape[0] == 0:  # a sum over no observations: the posterior would be the prior, silently
            raise ProblemError(f"x has shape {x.shape}: no observations; give at least one, (n_obs, *{self.x_shape}) with n_obs >= 1")
        return x

    @classmethod
    def _skeleton(cls, meta):
        return flows.skeleton(meta["spec"]) if meta["term"] == "likelihood" else ratio.skeleton(meta["spec"])

    def log_term(self, theta, x) -> jax.Array:
        """Σ over iid observations x ``(n_obs, *x_shape)`` of the network's log term -> ``(...)``."""
        return _log_term(self.term, self.network, check_theta_width(theta, self.dim)[0], x)

    def log_prob(self, theta, x=None) -> jax.Array:
        """Unnormalised log p(θ | x) for θ ``(..., d)`` -> ``(...)``."""
        return _LogPosterior(self.term, self.prior)(check_theta_width(theta, self.dim)[0], self.network, self._x(x))

    def sample(self, n: int, *, key: jax.Array, x=None, **sampler) -> jax.Array:
        """``n`` MCMC draws ``(n, d)``; ``sampler`` overrides `galton.sampling.mcmc` settings."""
        log_density = _LogPosterior(self.term, self.prior)
        init = sampler.pop("init", None)  # starting points are the one setting a posterior does not keep
        settings = {**dict(self.sampler), **dict(check_sampler(sampler)), "init": init}
        return mcmc(log_density, self.prior, check_draws(n), key=key, args=(self.network, self._x(x)), **settings)


@eqx.filter_jit  # eager, flows rebuilt closures per call and compiled anew: lrt's toys ran out of code memory
def _log_term(term: str, network, theta, x) -> jax.Array:
    if term == "likelihood":
        per_obs = jax.vmap(lambda xi: network.log_prob(xi, theta))(x)
    else:
        per_obs = jax.vmap(lambda xi: network.log_ratio(theta, xi))(x)
    return per_obs.sum(0)


@dataclass(frozen=True)
class _LogPosterior:
    """log term + log prior as a function of (θ, network, x). Equal for equal (term, prior), so
    the MCMC program compiled for one network serves every network of its architecture."""

    term: str
    prior: Prior

    def __call__(self, theta, network, x) -> jax.Array:
        return _log_term(self.term, network, theta, x) + self.prior.log_prob(theta)


__all__ = ["DensityPosterior"]
