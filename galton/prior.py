"""The prior over θ: named blocks of parameters flattened to ``(n, d)``, their support, and the
checks of θ a user hands in (its shape, NaN, the support).

Inside the library θ is always a flat array of shape ``(n, d)``; names and shapes of the
user's parameters live here (`Prior.names`, `Prior.unflatten`) so they reach results, plots
and ArviZ.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from galton.chunks import pad_rows
from galton.keys import as_key
from galton.transforms import SupportBijection, reduce_to


class ProblemError(ValueError):
    """A problem, its parameters or its data are not what galton expects."""


def _block_names(name: str, shape: tuple[int, ...]) -> list[str]:
    if shape == ():
        return [name]
    return [f"{name}[{','.join(map(str, idx))}]" for idx in np.ndindex(*shape)]


@dataclass(frozen=True)
class Blocks:
    """Named blocks of arrays laid out side by side in one flat vector.

    Args:
        shapes: block name -> shape of one draw of that block (no batch axes).
    """

    shapes: Mapping[str, tuple[int, ...]]

    @property
    def sizes(self) -> dict[str, int]:
        return {k: math.prod(s) for k, s in self.shapes.items()}

    @property
    def dim(self) -> int:
        return sum(self.sizes.values())

    @property
    def names(self) -> list[str]:
        """Flat names, one per column: ``"a"`` for a scalar block, ``"b[0]"``, ``"b[1]"``, ..."""
        return [n for k, s in self.shapes.items() for n in _block_names(k, s)]

    def flatten(self, values: Mapping[str, Any]) -> jax.Array:
        """``{name: (*batch, *shape)}`` -> ``(*batch, dim)``."""
        parts = []
        batch = None
        for k, s in self.shapes.items():
            if k not in values:
                raise ProblemError(f"missing block {k!r}; expected blocks {list(self.shapes)}")
            v = jnp.asarray(values[k])
            b = v.shape[: v.ndim - len(s)]
            if v.shape[v.ndim - len(s) :] != tuple(s) or (batch is not None and b != batch):
                raise ProblemError(f"block {k!r} has shape {v.shape}; expected (*batch, *{tuple(s)})")
            batch = b
            parts.append(v.reshape(*b, -1))
        return jnp.concatenate(parts, axis=-1)

    def unflatten(self, flat: jax.Array) -> dict[str, jax.Array]:
        """``(*batch, dim)`` -> ``{name: (*batch, *shape)}``."""
        flat = jnp.asarray(flat)
        if flat.shape[-1:] != (self.dim,):
            raise ProblemError(f"expected a last axis of size {self.dim}, got shape {flat.shape}")
        out, start = {}, 0
        for k, s in self.shapes.items():
            size = math.prod(s)
            out[k] = flat[..., start : start + size].reshape(*flat.shape[:-1], *s)
            start += size
        return out


def _as_distribution_dict(prior) -> dict[str, dist.Distribution]:
    if isinstance(prior, dist.Distribution):
        return {"theta": prior}
    if isinstance(prior, Mapping) and prior and all(isinstance(d, dist.Distribution) for d in prior.values()):
        return dict(prior)
    raise ProblemError(
        f"prior must be a NumPyro distribution or a non-empty dict of them, got {type(prior).__name__}"
    )


class Prior:
    """A prior over named parameter blocks, seen by the library as a distribution over flat θ.

    Args:
        prior: a NumPyro distribution, or a dict ``{name: distribution}`` of independent blocks.
        names: optional flat names, one per column of θ (replaces the generated ones).

    Attributes:
        blocks: the `Blocks` layout; `dim` columns; `names` one per column.
    """

    def __init__(self, prior, names: Sequence[str] | None = None):
        self.distributions = _as_distribution_dict(prior)
        self.blocks = Blocks({k: tuple(d.batch_shape + d.event_shape) for k, d in self.distributions.items()})
        if names is not None:
            names = list(names)
            if len(names) != self.blocks.dim:
                raise ProblemError(f"names has {len(names)} entries but θ has {self.blocks.dim} columns")
        self.names: list[str] = names if names is not None else self.blocks.names
        self.bijection = SupportBijection({k: d.support for k, d in self.distributions.items()})

    @property
    def dim(self) -> int:
        return self.blocks.dim

    def unflatten(self, theta: jax.Array) -> dict[str, jax.Array] | jax.Array:
        """``(*batch, d)`` -> the user's structure (a dict, or one array if the prior was one distribution)."""
        blocks = self.blocks.unflatten(theta)
        return blocks if len(blocks) > 1 or "theta" not in blocks else blocks["theta"]

    def flatten(self, theta) -> jax.Array:
        """The user's structure -> ``(*batch, d)``."""
        if not isinstance(theta, Mapping):
            theta = {next(iter(self.blocks.shapes)): theta}
        return self.blocks.flatten(theta)

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        """Draw θ: returns ``(*sample_shape, d)``."""
        keys = jax.random.split(as_key(key), len(self.distributions))
        parts = {k: d.sample(kk, sample_shape) for kk, (k, d) in zip(keys, self.distributions.items())}
        return self.blocks.flatten(parts)

    def log_prob(self, theta: jax.Array) -> jax.Array:
        """``(*batch, d)`` -> ``(*batch,)``; ``-inf`` outside the support."""
        theta = jnp.asarray(theta)
        batch = theta.shape[:-1]
        total = jnp.zeros(batch)
        for k, v in self.blocks.unflatten(theta).items():
            d = self.distributions[k]
            with warnings.catch_warnings():  # outside the support is answered with -inf below
                warnings.filterwarnings("ignore", message="Out-of-support values")
                lp = d.log_prob(v).reshape(*batch, -1).sum(-1)
            total = total + jnp.where(self._block_in_support(k, v, batch), lp, -jnp.inf)
        return total

    def _block_in_support(self, k: str, v: jax.Array, batch: tuple[int, ...]) -> jax.Array:
        return reduce_to(self.distributions[k].support(v), batch, jnp.all)

    def in_support(self, theta: jax.Array) -> jax.Array:
        """``(*batch, d)`` -> boolean ``(*batch,)``."""
        theta = jnp.asarray(theta)
        batch = theta.shape[:-1]
        ok = jnp.ones(batch, bool)
        for k, v in self.blocks.unflatten(theta).items():
            ok = ok & self._block_in_support(k, v, batch)
        return ok

    def to_unconstrained(self, theta: jax.Array) -> jax.Array:
        """Map θ ``(*batch, d)`` to an unconstrained space of the same size, block by block."""
        return self.blocks.flatten(self.bijection.inverse(self.blocks.unflatten(theta)))

    def to_constrained(self, u: jax.Array) -> jax.Array:
        """Inverse of `to_unconstrained`."""
        return self.blocks.flatten(self.bijection.forward(self.blocks.unflatten(u)))

    def log_abs_det_jacobian(self, u: jax.Array) -> jax.Array:
        """log |dθ/du| of `to_constrained` at u ``(*batch, d)`` -> ``(*batch,)``."""
        u = jnp.asarray(u)
        return self.bijection.log_abs_det_jacobian(self.blocks.unflatten(u), u.shape[:-1])

    def _identity(self) -> tuple:
        """What makes two priors the same: names, and each block's distribution structure and values."""
        if getattr(self, "_identity_cache", None) is None:
            blocks = []
            for k, d in self.distributions.items():
                leaves, treedef = jax.tree.flatten(d)
                values = tuple((np.shape(v), np.asarray(v).tobytes()) for v in leaves)
                blocks.append((k, str(treedef), values))
            self._identity_cache = (tuple(self.names), tuple(blocks))
        return self._identity_cache

    # equal by value, so a prior read back from a saved posterior is the one it was saved with:
    # compiled samplers keyed on the prior (galton.sampling) then serve the loaded posterior too
    def __eq__(self, other) -> bool:
        return isinstance(other, Prior) and (self is other or self._identity() == other._identity())

    def __hash__(self) -> int:
        return hash(self._identity())

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={type(d).__name__}{tuple(d.batch_shape + d.event_shape)}" for k, d in self.distributions.items())
        return f"Prior({inner})"


@functools.lru_cache(maxsize=32)
def _support_function(prior: Prior):
    return jax.jit(prior.in_support)


def support_mask(prior: Prior, theta: np.ndarray) -> np.ndarray:
    """`Prior.in_support` on θ ``(n, d)`` -> ``(n,)`` bool, with the rows padded to a power of two:
    callers such as SMC-ABC check batches of every size, and eager JAX compiles once per shape."""
    n = len(theta)
    if n == 0:
        return np.ones(0, bool)
    return np.asarray(_support_function(prior)(pad_rows(theta, 1 << (n - 1).bit_length())))[:n]


def check_theta(prior: Prior, theta, *, what: str = "theta") -> np.ndarray:
    """Validate a batch of flat parameters: shape ``(n, d)``, finite, inside the prior's support.
    Returns them as a NumPy array (``jnp.asarray`` of a new shape compiles, and batches come in
    every size)."""
    theta = np.asarray(theta)
    if theta.ndim != 2 or theta.shape[1] != prior.dim:
        raise ProblemError(f"{what} must have shape (n, {prior.dim}) for parameters {prior.names}; got {theta.shape}")
    if not np.isfinite(theta).all():
        bad = np.flatnonzero(~np.all(np.isfinite(theta), axis=1))
        raise ProblemError(f"{what} has non-finite values at rows {bad[:10].tolist()}")
    inside = support_mask(prior, theta)
    if not inside.all():
        bad = np.flatnonzero(~inside)
        row = np.asarray(theta[bad[0]])
        raise ProblemError(
            f"{what} has {bad.size} rows outside the prior's support, first row {int(bad[0])}: "
            + ", ".join(f"{n}={v:.4g}" for n, v in zip(prior.names, row))
        )
    return theta


def check_point(prior: Prior, theta, *, what: str = "theta") -> np.ndarray:
    """One θ, flat ``(d,)`` or in the prior's structure (a dict of blocks), validated as `check_theta`
    does: returns the flat ``(d,)`` float64 array."""
    wanted = f"one point of shape ({prior.dim},) for parameters {prior.names}"
    if theta is None:
        raise ProblemError(f"{what} is None; give {wanted}")
    flat = np.asarray(prior.flatten(theta) if isinstance(theta, Mapping) else theta, np.float64)
    # a (1, d) row is one point too; anything else with d values (a (2, d/2) grid) is not
    if flat.size != prior.dim or flat.ndim > 2 or (flat.ndim == 2 and len(flat) != 1):
        raise ProblemError(f"{what} must be {wanted}; got shape {flat.shape}")
    flat = flat.reshape(-1)
    check_theta(prior, flat[None], what=what)
    return flat


__all__ = ["Blocks", "Prior", "ProblemError", "check_point", "check_theta", "support_mask"]
