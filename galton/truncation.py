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

from galton.chunks import in_chunks
from galton.keys import as_key
from galton.problem import Prior


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
    lo, hi = jnp.full(u.shape, -30.0), jnp.full(u.shape, 30.0)

    def step(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = d.cdf(to_support(mid)) < u
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 60, step, (lo, hi))
    return to_support(0.5 * (lo + hi))


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
        for k, d in self.columns.items():
            if not _has(d, "cdf"):
                raise TruncationError(f"prior block {k!r} ({type(d).__name__}) has no CDF, which truncation needs")
        self._exact_icdf = {k: _has(d, "icdf") for k, d in self.columns.items()}
        bounded = []
        for k, d in self.columns.items():
            ends = [getattr(d.support, side, None) for side in ("lower_bound", "upper_bound")]
            finite = all(e is not None and np.isfinite(np.asarray(e)).all() for e in ends)
            bounded.append(np.full(prior.blocks.sizes[k], finite))
        self.bounded = np.concatenate(bounded)

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
        corners = self.quantiles.icdf(jnp.stack([self.u_low, self.u_high]))
        return np.asarray(corners).T

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


@eqx.filter_jit
def _inside_chunk(constraints, theta) -> jax.Array:
    """Whether each θ ``(n, d)`` meets every constraint -> ``(n,)``, in one program."""
    return jnp.all(jnp.stack([c(theta) >= 0 for c in constraints]), axis=0)


def _inside(constraints, theta, chunk: int = 65_536) -> np.ndarray | jax.Array:
    """Whether each θ ``(*batch, d)`` meets every constraint -> ``(*batch,)``: a NumPy array,
    computed in chunks of rows (a rejection batch can hold a million, and each head's hidden
    layer would be held for all of them at once); a JAX array inside a caller's trace."""
    theta = jnp.asarray(theta)
    if isinstance(theta, jax.core.Tracer):
        return _inside_chunk(constraints, theta)
    batch, flat = theta.shape[:-1], np.asarray(theta).reshape(-1, theta.shape[-1])
    if len(flat) <= chunk:
        return np.asarray(_inside_chunk(constraints, flat)).reshape(batch)
    return in_chunks(functools.partial(_inside_chunk, constraints), flat, chunk).reshape(batch)


class Region(eqx.Module):
    """The prior restricted to a box and to constraints (TMNRE's correlated truncation), sampled
    exactly by rejection from the box.

    Args:
        box: the `TruncatedPrior` the region lies in.
        constraints: callables θ ``(n, d)`` -> ``(n,)``, non-negative inside (equinox modules, so
            that the region is a PyTree a store can fingerprint).
        key: draws that measure the share of the box inside (``probe`` of them).

    Raises:
        TruncationError: no probe draw meets the constraints.
    """

    box: TruncatedPrior
    constraints: tuple
    acceptance: float = eqx.field(static=True)

    def __init__(self, box: TruncatedPrior, constraints, *, key: jax.Array, probe: int = 65_536):
        self.box, self.constraints = box, tuple(constraints)
        self.acceptance = float(np.mean(np.asarray(_inside(self.constraints, box.sample(key, (probe,))))))
        if self.acceptance == 0.0:
            raise TruncationError(f"none of {probe} draws from the box meets the correlated constraints: the region is empty")

    quantiles = property(lambda self: self.box.quantiles)
    prior = property(lambda self: self.box.prior)
    dim = property(lambda self: self.box.dim)
    u_low = property(lambda self: self.box.u_low)
    u_high = property(lambda self: self.box.u_high)

    @property
    def volume(self) -> float:
        """The prior mass inside the region (the box's, times the measured acceptance)."""
        return self.box.volume * self.acceptance

    def bounds(self) -> np.ndarray:
        """The enclosing box in θ space, ``(d, 2)``."""
        return self.box.bounds()

    def contains(self, theta) -> jax.Array:
        """Whether θ ``(n, d)`` lies in the region: boolean ``(n,)``."""
        theta = jnp.asarray(theta, jnp.float32)
        return self.box.contains(theta) & jnp.asarray(_inside(self.constraints, theta))

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        """Exact draws ``(*sample_shape, d)`` from the prior restricted to the region."""
        return self._draws(key, sample_shape)[1]

    def sample_quantiles(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        """`sample`'s draws in quantile space, F(θ), ``(*sample_shape, d)``."""
        return self._draws(key, sample_shape)[0]

    def _draws(self, key, sample_shape) -> tuple[jax.Array, jax.Array]:
        """Rejection from the box: the kept draws in quantile space and in θ space."""
        n, kept, got, key = math.prod(sample_shape), [], 0, as_key(key)
        for attempt in range(10_000):
            batch = int(min(max(1.2 * (n - got) / self.acceptance, 1024), 1_000_000))
            u = self.box.sample_quantiles(jax.random.fold_in(key, attempt), (batch,))
            theta = self.quantiles.icdf(u)
            inside = np.asarray(_inside(self.constraints, theta))
            kept.append((np.asarray(u)[inside], np.asarray(theta)[inside]))
            got += int(inside.sum())
            if got >= n:
                return tuple(jnp.asarray(np.concatenate(part)[:n].reshape(*sample_shape, self.dim)) for part in zip(*kept))
        raise TruncationError(f"rejection from the box found too few draws in the region (acceptance {self.acceptance:.2g})")

    def log_prob(self, theta) -> jax.Array:
        """log density at θ ``(n, d)`` -> ``(n,)``; -inf outside."""
        lp = self.prior.log_prob(theta) - math.log(max(self.volume, 1e-300))
        return jnp.where(self.contains(theta), lp, -jnp.inf)


class DrawnRegion(eqx.Module):
    """A region kept as draws ``(m, d)`` in quantile space (what a saved TMNRE posterior holds):
    ``sample`` resamples them, for coverage checks on the last round's proposal."""

    quantiles: Quantiles = eqx.field(static=True)
    draws: jax.Array
    u_low: jax.Array
    u_high: jax.Array

    def bounds(self) -> np.ndarray:
        return TruncatedPrior(self.quantiles, self.u_low, self.u_high).bounds()

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        rows = jax.random.randint(as_key(key), sample_shape, 0, self.draws.shape[0])
        return self.quantiles.icdf(self.draws[rows])


__all__ = ["DrawnRegion", "Quantiles", "Region", "tail_level", "TruncatedPrior", "TruncationError", "shrink"]
