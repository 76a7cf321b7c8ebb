"""Prior truncation (TMNRE): the prior restricted to a box, sampled exactly.

Boxes live in the prior's quantile space: column i of θ maps to u_i = F_i(θ_i) ∈ [0, 1] by its
marginal CDF, and a box is ``u_low <= u <= u_high``. For a bounded prior that is the same
box as in θ; for an unbounded one (a Gaussian) the quantile space is where a box is finite.
Sampling draws u uniformly in the box and returns θ = F⁻¹(u), exact for any prior whose
columns are independent, with no rejection.
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions.transforms import biject_to

from galton.keys import as_key
from galton.prior import Prior


class TruncationError(ValueError):
    """A truncation cannot be made (a collapsed box, a prior with dependent columns, ...).

    Attributes:
        simulations: what was simulated before the error, when there was any (nothing is lost).
    """

    def __init__(self, message: str, simulations=None):
        super().__init__(message)
        self.simulations = simulations


def _elementwise(name: str, d: dist.Distribution) -> dist.Distribution:
    """The block's distribution as independent univariate ones over its elements (batch shape = block shape)."""
    while isinstance(d, dist.Independent):
        d = d.base_dist
    if isinstance(d, dist.MultivariateNormal):
        cov = np.asarray(d.covariance_matrix)
        if np.any(cov * (1 - np.eye(cov.shape[-1])) != 0):
            raise TruncationError(
                f"prior block {name!r} is a MultivariateNormal with correlated columns; truncation needs "
                "independent columns (give the prior as a dict of independent blocks)"
            )
        return dist.Normal(d.loc, jnp.sqrt(jnp.diagonal(d.covariance_matrix, axis1=-2, axis2=-1)))
    if d.event_shape != ():
        raise TruncationError(
            f"prior block {name!r} is a {type(d).__name__} over vectors whose columns are not independent; "
            "truncation needs a prior whose columns are independent univariate distributions"
        )
    return d


def _has(d: dist.Distribution, method: str) -> bool:
    probe = jnp.full(d.batch_shape, 0.5) if method == "icdf" else jnp.broadcast_to(jnp.asarray(d.mean), d.batch_shape)
    try:
        getattr(d, method)(probe)
        return True
    except (NotImplementedError, ImportError):  # Beta's icdf wants tensorflow_probability
        return False


def _bisect_icdf(d: dist.Distribution, u: jax.Array) -> jax.Array:
    """F⁻¹(u) by bisection on the unconstrained line, for distributions without an ``icdf``."""
    to_support = biject_to(d.support)

    def below(y):
        return d.cdf(to_support(y)) < u

    # a bracket [lo, hi] with F(lo) < u <= F(hi), found by doubling outwards from [-1, 1]: a fixed
    # bracket would clip a wide prior (a Student-t of scale 100 lies mostly beyond ±30), and
    # bisecting from the last doubling keeps the result's relative precision at any scale
    def widen(_, bounds):
        lo, hi = bounds
        up, down = below(hi), ~below(lo)
        return jnp.where(up, hi, jnp.where(down, 2.0 * lo, lo)), jnp.where(up, 2.0 * hi, jnp.where(down, lo, hi))

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        left = below(mid)
        return jnp.where(left, mid, lo), jnp.where(left, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 64, widen, (jnp.full(u.shape, -1.0), jnp.full(u.shape, 1.0)))
    lo, hi = jax.lax.fori_loop(0, 60, halve, (lo, hi))
    return to_support(0.5 * (lo + hi))


def _check_column(k: str, d: dist.Distribution) -> bool:
    """Whether the block's distribution has an exact inverse CDF; a clear error when it cannot be truncated."""
    if d.support.is_discrete:
        raise TruncationError(f"prior block {k!r} ({type(d).__name__}) is discrete; truncation needs continuous parameters")
    if not _has(d, "cdf"):
        raise TruncationError(f"prior block {k!r} ({type(d).__name__}) has no CDF, which truncation needs")
    if _has(d, "icdf"):
        return True
    try:  # the bisection runs on the support's unconstrained line
        biject_to(d.support)
    except NotImplementedError:
        raise TruncationError(f"prior block {k!r} ({type(d).__name__}) has neither an inverse CDF nor a support "
                              "NumPyro can map to the real line, which truncation needs") from None
    return False


class Quantiles:
    """The prior's columns as independent 1-D distributions: CDF, inverse CDF and log-densities.

    Args:
        prior: a `Prior` whose columns are independent (univariate blocks, ``Independent`` ones,
            or a MultivariateNormal with diagonal covariance).

    Attributes:
        bounded: per column, whether the prior's support is bounded on both sides.
    """

    @staticmethod
    @functools.lru_cache(maxsize=32)
    def of(prior: Prior) -> "Quantiles":
        """The one `Quantiles` of a prior (priors are equal by value), so compiled functions that
        take it as a static argument are reused."""
        return Quantiles(prior)

    def __init__(self, prior: Prior):
        self.prior = prior
        self.columns = {k: _elementwise(k, d) for k, d in prior.distributions.items()}
        self._exact_icdf = {k: _check_column(k, d) for k, d in self.columns.items()}
        ends = []
        for k, d in self.columns.items():
            low, high = (getattr(d.support, side, None) for side in ("lower_bound", "upper_bound"))
            low, high = np.broadcast_arrays(-np.inf if low is None else low, np.inf if high is None else high)
            ends.append(np.broadcast_to(np.stack([low, high], -1).astype(np.float64), (prior.blocks.sizes[k], 2)))
        self.support = np.concatenate(ends)  # (d, 2)
        self.bounded = np.isfinite(self.support).all(-1)

    def _block_icdf(self, k: str, u: jax.Array) -> jax.Array:
        d = self.columns[k]
        return d.icdf(u) if self._exact_icdf[k] else _bisect_icdf(d, u)

    def cdf(self, theta) -> jax.Array:
        """θ ``(*batch, d)`` -> u ``(*batch, d)`` in [0, 1]."""
        blocks = self.prior.blocks.unflatten(jnp.asarray(theta))
        return self.prior.blocks.flatten({k: self.columns[k].cdf(v) for k, v in blocks.items()})

    def icdf(self, u) -> jax.Array:
        """u ``(*batch, d)`` in [0, 1] -> θ ``(*batch, d)``."""
        blocks = self.prior.blocks.unflatten(jnp.asarray(u))
        return self.prior.blocks.flatten({k: self._block_icdf(k, v) for k, v in blocks.items()})

    def log_density(self, theta) -> jax.Array:
        """Per-column marginal log-densities: θ ``(*batch, d)`` -> ``(*batch, d)``."""
        blocks = self.prior.blocks.unflatten(jnp.asarray(theta))
        return self.prior.blocks.flatten({k: self.columns[k].log_prob(v) for k, v in blocks.items()})


class TruncatedPrior(eqx.Module):
    """The prior restricted to the quantile box ``[u_low, u_high]``, a proposal for `galton.simulate`.

    Args:
        prior: the problem's `Prior`; u_low, u_high: ``(d,)`` box corners in quantile space.
    """

    u_low: jax.Array
    u_high: jax.Array
    quantiles: Quantiles = eqx.field(static=True)

    def __init__(self, quantiles: Quantiles, u_low, u_high):
        self.quantiles = quantiles
        self.u_low = jnp.asarray(u_low, jnp.float32)
        self.u_high = jnp.asarray(u_high, jnp.float32)

    @classmethod
    def full(cls, prior: Prior) -> "TruncatedPrior":
        """The whole prior (the box [0, 1]^d)."""
        return cls(Quantiles.of(prior), np.zeros(prior.dim), np.ones(prior.dim))

    @property
    def prior(self) -> Prior:
        return self.quantiles.prior

    @property
    def dim(self) -> int:
        return self.prior.dim

    @property
    def volume(self) -> float:
        """The prior mass inside the box."""
        return float(np.prod(np.asarray(self.u_high - self.u_low, np.float64)))

    def bounds(self) -> np.ndarray:
        """The box in θ space, ``(d, 2)`` (infinite where an unbounded prior is not cut)."""
        corners = np.asarray(self.quantiles.icdf(jnp.stack([self.u_low, self.u_high])), np.float64).T
        # an uncut end is the support's end: F⁻¹(0) and F⁻¹(1) in float32 can be anything (a
        # Cauchy's tan(±π/2) comes out with the wrong sign)
        uncut = np.stack([np.asarray(self.u_low) <= 0.0, np.asarray(self.u_high) >= 1.0], -1)
        return np.where(uncut, self.quantiles.support, corners)

    def sample_quantiles(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        """`sample`'s draws in quantile space, F(θ): uniform in the box, ``(*sample_shape, d)``."""
        # keep clear of the box's ends by a float32 ulp, where F⁻¹ of an unbounded prior is infinite
        tiny = 1e-6
        low, high = jnp.maximum(self.u_low, tiny), jnp.minimum(self.u_high, 1.0 - tiny)
        return jax.random.uniform(as_key(key), (*sample_shape, self.dim), minval=low, maxval=high)

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        """Exact draws ``(*sample_shape, d)`` from the prior restricted to the box."""
        return self.quantiles.icdf(self.sample_quantiles(key, sample_shape))

    def contains(self, theta) -> jax.Array:
        """Whether θ ``(*batch, d)`` lies in the box: boolean ``(*batch,)``."""
        u = self.quantiles.cdf(theta)
        return jnp.all((u >= self.u_low) & (u <= self.u_high), axis=-1)

    def log_prob(self, theta) -> jax.Array:
        """log density of the truncated prior at θ ``(*batch, d)`` -> ``(*batch,)``; -inf outside the box."""
        lp = self.prior.log_prob(theta) - math.log(max(self.volume, 1e-300))
        return jnp.where(self.contains(theta), lp, -jnp.inf)


def shrink(
    current: TruncatedPrior,
    log_ratio_1d,
    *,
    epsilon: float,
    names,
    grid: int = 2048,
    tail_mass: float | None = None,
    margin: float = 0.0,
) -> TruncatedPrior:
    """The next round's box from the 1-D marginal log-ratios.

    Each parameter keeps the part of the current box where its 1-D log-ratio exceeds its
    maximum + ln ε, evaluated on ``grid`` evenly spaced prior quantiles inside the current box;
    the new edge is widened by one grid cell so the region is never cut inside a cell.

    Args:
        log_ratio_1d: ``(u_grid (grid, d)) -> (grid, d)``: column i is the i-th parameter's
            1-D log-ratio at θ_i = F_i⁻¹(u_grid[:, i]).
        epsilon: the threshold ε in (0, 1).
        tail_mass: also drop from each end of the range the cells that hold at most half this share
            of the 1-D marginal posterior (∝ exp(log-ratio) on the even quantile grid). Contrastive heads
            flatten out 8–12 nats below their maximum, where their loss saturates, so on some
            problems no cell falls ε = 1e-6 below it; a mass rule cuts those flat tails.
        margin: widen the kept range by this share of its width on each side (within the current
            box): a head too sure of itself then still leaves the posterior inside.

    Raises:
        TruncationError: a parameter's box collapses below float32 resolution.
    """
    lo, hi = np.asarray(current.u_low, np.float64), np.asarray(current.u_high, np.float64)
    steps = (np.arange(grid) + 0.5) / grid
    u = lo + steps[:, None] * (hi - lo)
    values = np.asarray(log_ratio_1d(jnp.asarray(u, jnp.float32)), np.float64)
    keep = values >= values.max(axis=0) + math.log(epsilon)
    if tail_mass is not None:
        keep &= _above_tails(values, tail_mass)
    cell = (hi - lo) / grid
    first = np.argmax(keep, axis=0)
    last = grid - 1 - np.argmax(keep[::-1], axis=0)
    kept_lo, kept_hi = u[first, np.arange(len(lo))], u[last, np.arange(len(lo))]
    pad = cell + margin * (kept_hi - kept_lo)
    new_lo, new_hi = np.maximum(lo, kept_lo - pad), np.minimum(hi, kept_hi + pad)
    width = new_hi - new_lo
    collapsed = np.flatnonzero(~np.isfinite(values).all(axis=0) | (width < 1e-6))
    if collapsed.size:
        i = collapsed[0]
        raise TruncationError(
            f"the box of parameter {names[i]!r} collapsed (quantile width {width[i]:.2g}, or a non-finite "
            "log-ratio): the 1-D ratio estimator is degenerate; train longer, simulate more per round or "
            "raise epsilon"
        )
    return TruncatedPrior(current.quantiles, new_lo, new_hi)


def _above_tails(values: np.ndarray, tail_mass: float) -> np.ndarray:
    """Per column of log-densities ``(grid, d)`` on even cells: the cells between the two ends
    that each hold at most ``tail_mass / 2`` of the column's mass (cut from the outside in, so a
    flat tail is cut as a piece, and everything between two modes is kept)."""
    p = np.exp(values - values.max(axis=0))
    p /= p.sum(axis=0)
    after = np.cumsum(p, axis=0)
    return (after > tail_mass / 2) & (after - p < 1 - tail_mass / 2)


def tail_level(values: np.ndarray, tail_mass: float) -> np.ndarray:
    """Per column of log-densities ``(n, k)`` at draws of a uniform proposal: the level below which
    the draws hold at most ``tail_mass`` of the column's mass -> ``(k,)``."""
    values = np.sort(np.asarray(values, np.float64), axis=0)
    w = np.exp(values - values.max(axis=0))
    below = (np.cumsum(w, axis=0) / w.sum(axis=0) <= tail_mass).sum(axis=0)
    return values[np.minimum(below, len(values) - 1), np.arange(values.shape[1])]


__all__ = ["Quantiles", "tail_level", "TruncatedPrior", "TruncationError", "shrink"]
