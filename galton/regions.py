"""Regions inside a truncation box (TMNRE's correlated truncation): the prior restricted to a
box and to constraints on θ, sampled exactly by rejection from the box; and a region kept as
draws, as a saved posterior holds it."""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from galton.chunks import in_chunks
from galton.keys import as_key
from galton.truncation import Quantiles, TruncatedPrior, TruncationError


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


__all__ = ["DrawnRegion", "Region"]
