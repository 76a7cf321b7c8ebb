"""Maps between the parameters' (or latents') supports and an unconstrained space: one place for both.

- `SupportBijection`: NumPyro's ``biject_to`` per named block, the general map behind
  `galton.Prior` (θ) and `galton.Program` (latents z). It covers every NumPyro support.
- `ElementwiseBijection`: the same map when each column is ``loc + scale · f(u)`` with f one
  of identity, exp, sigmoid, softplus (every scalar-valued prior), written out so that it
  serialises to JSON, runs in NumPy on the host, and gives its Jacobian's diagonal: what
  Gaussian posteriors (MUSE) store and push their draws through.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import transforms as T
from numpyro.distributions.transforms import biject_to


class SupportBijection:
    """Block by block, NumPyro's ``biject_to(support)``: unconstrained values -> the supports.

    Args:
        supports: block name -> NumPyro constraint.
    """

    def __init__(self, supports: Mapping[str, Any]):
        self.supports = dict(supports)
        self._transforms: dict[str, Any] = {}

    @property
    def transforms(self) -> Mapping[str, Any]:
        """Block name -> NumPyro transform, made on first use: a discrete support (a Galton
        board's left/right choices) has none, and only the methods that map it need one."""
        for k, s in self.supports.items():
            if k not in self._transforms:
                self._transforms[k] = biject_to(s)
        return self._transforms

    def forward(self, u: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """``{block: unconstrained}`` -> ``{block: value in its support}``."""
        return {k: self.transforms[k](v) for k, v in u.items()}

    def inverse(self, values: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """``{block: value in its support}`` -> ``{block: unconstrained}``."""
        return {k: self.transforms[k].inv(v) for k, v in values.items()}

    def log_abs_det_jacobian(self, u: Mapping[str, jax.Array], batch: tuple[int, ...] = ()) -> jax.Array:
        """Σ over blocks of log |d value / du| -> ``batch`` (the blocks' leading axes)."""
        total = jnp.zeros(batch)
        for k, v in u.items():
            t = self.transforms[k]
            total = total + reduce_to(t.log_abs_det_jacobian(v, t(v)), batch, jnp.sum)
        return total


def reduce_to(values, batch: tuple[int, ...], reduce) -> jax.Array:
    """Reduce per-element values to the batch shape: constraints and Jacobians of vector
    transforms already reduce over event axes, elementwise ones do not."""
    values = jnp.asarray(values)
    while values.ndim > len(batch):
        values = reduce(values, axis=-1)
    return jnp.broadcast_to(values, batch)


_FORWARD = {"identity": lambda u: u, "exp": jnp.exp, "sigmoid": jax.nn.sigmoid, "softplus": jax.nn.softplus}
# NumPy twins, for the small host-side conversions that would otherwise dispatch one JAX op each
_FORWARD_NUMPY = {"identity": lambda u: u, "exp": np.exp, "sigmoid": lambda u: 0.5 * (1 + np.tanh(u / 2)), "softplus": lambda u: np.logaddexp(0, u)}
_INVERSE = {
    "identity": lambda y: y,
    "exp": jnp.log,
    "sigmoid": lambda y: jnp.log(y) - jnp.log1p(-y),
    "softplus": lambda y: y + jnp.log(-jnp.expm1(-y)),
}
_INVERSE_NUMPY = {
    "identity": lambda y: y,
    "exp": np.log,
    "sigmoid": lambda y: np.log(y) - np.log1p(-y),
    "softplus": lambda y: y + np.log(-np.expm1(-y)),
}
_LOG_DERIVATIVE = {
    "identity": lambda u: jnp.zeros_like(u),
    "exp": lambda u: u,
    "sigmoid": lambda u: -jax.nn.softplus(-u) - jax.nn.softplus(u),
    "softplus": lambda u: -jax.nn.softplus(-u),
}
_LOG_DERIVATIVE_NUMPY = {
    "identity": lambda u: np.zeros_like(u),
    "exp": lambda u: u,
    "sigmoid": lambda u: -np.logaddexp(0, -u) - np.logaddexp(0, u),
    "softplus": lambda u: -np.logaddexp(0, -u),
}


def _elementwise(transform) -> tuple[str, float, float]:
    """(kind, loc, scale) with ``transform(u) = loc + scale * kind(u)``, or raise."""
    while isinstance(transform, T.IndependentTransform):
        transform = transform.base_transform
    parts = transform.parts if isinstance(transform, T.ComposeTransform) else [transform]
    kind, loc, scale = "identity", 0.0, 1.0
    for part in parts:
        while isinstance(part, T.IndependentTransform):
            part = part.base_transform
        if isinstance(part, T.AffineTransform):
            loc, scale = loc * part.scale + part.loc, scale * part.scale
            continue
        name = {T.IdentityTransform: "identity", T.ExpTransform: "exp", T.SigmoidTransform: "sigmoid", T.SoftplusTransform: "softplus"}.get(type(part))
        if name is None or kind != "identity" or np.any(np.asarray(loc) != 0) or np.any(np.asarray(scale) != 1):
            raise ValueError(f"transform {transform} is not an elementwise map loc + scale * f(u)")
        kind = name
    return kind, loc, scale


class ElementwiseBijection:
    """Column by column ``θ_i = loc_i + scale_i f_i(u_i)`` with f_i one of identity, exp, sigmoid, softplus.

    Maps an unconstrained vector u ``(..., d)`` to parameters θ in their support; it covers
    the supports of scalar-valued priors (real, positive, intervals, half-lines).

    Args:
        kinds: ``d`` names of f.  loc, scale: ``(d,)``.
    """

    def __init__(self, kinds: Sequence[str], loc, scale):
        self.kinds = list(kinds)
        unknown = set(self.kinds) - set(_FORWARD)
        if unknown:
            raise ValueError(f"unknown elementwise transforms {sorted(unknown)}; expected some of {list(_FORWARD)}")
        self.loc = np.asarray(loc, np.float64).reshape(len(self.kinds))
        self.scale = np.asarray(scale, np.float64).reshape(len(self.kinds))

    @classmethod
    def identity(cls, d: int) -> "ElementwiseBijection":
        return cls(["identity"] * d, np.zeros(d), np.ones(d))

    @classmethod
    def from_prior(cls, prior) -> "ElementwiseBijection":
        """The map NumPyro's ``biject_to`` uses for each block of a `galton.Prior`."""
        kinds, locs, scales = [], [], []
        for k, d in prior.distributions.items():
            size = prior.blocks.sizes[k]
            try:
                kind, loc, scale = _elementwise(prior.bijection.transforms[k])
            except ValueError as err:
                raise ValueError(f"parameter {k!r} has support {d.support}, which galton cannot map elementwise: {err}") from None
            kinds += [kind] * size
            locs.append(np.broadcast_to(np.asarray(loc, np.float64), prior.blocks.shapes[k]).reshape(-1))
            scales.append(np.broadcast_to(np.asarray(scale, np.float64), prior.blocks.shapes[k]).reshape(-1))
        return cls(kinds, np.concatenate(locs), np.concatenate(scales))

    @property
    def is_identity(self) -> bool:
        return all(k == "identity" for k in self.kinds) and not self.loc.any() and (self.scale == 1).all()

    def _columns(self, fns, v):
        cols = [fns[k](v[..., i]) for i, k in enumerate(self.kinds)]
        return (np.stack if isinstance(v, np.ndarray) else jnp.stack)(cols, axis=-1)

    def forward(self, u: jax.Array) -> jax.Array:
        """Unconstrained ``(..., d)`` -> original space ``(..., d)`` (NumPy in, NumPy out)."""
        if isinstance(u, np.ndarray):
            return self.loc + self.scale * self._columns(_FORWARD_NUMPY, u)
        u = jnp.asarray(u)
        return jnp.asarray(self.loc, u.dtype) + jnp.asarray(self.scale, u.dtype) * self._columns(_FORWARD, u)

    def inverse(self, theta: jax.Array) -> jax.Array:
        """Original space ``(..., d)`` -> unconstrained ``(..., d)`` (NaN outside the support; NumPy in, NumPy out)."""
        if isinstance(theta, np.ndarray):
            with np.errstate(invalid="ignore", divide="ignore"):  # outside the support: NaN, as documented
                return self._columns(_INVERSE_NUMPY, (theta - self.loc) / self.scale)
        theta = jnp.asarray(theta)
        return self._columns(_INVERSE, (theta - jnp.asarray(self.loc, theta.dtype)) / jnp.asarray(self.scale, theta.dtype))

    def log_abs_det_jacobian(self, u: jax.Array) -> jax.Array:
        """log |dθ/du| for u ``(..., d)`` -> ``(...)``."""
        u = jnp.asarray(u)
        return jnp.sum(self._columns(_LOG_DERIVATIVE, u) + jnp.log(jnp.abs(jnp.asarray(self.scale, u.dtype))), axis=-1)

    def jacobian_diagonal(self, u) -> np.ndarray:
        """dθ_i/du_i at u ``(d,)``, as float64."""
        return np.exp(self._columns(_LOG_DERIVATIVE_NUMPY, np.asarray(u, np.float64))) * self.scale

    def to_dict(self) -> dict[str, Any]:
        return {"kinds": self.kinds, "loc": self.loc.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ElementwiseBijection":
        return cls(d["kinds"], d["loc"], d["scale"])

    def __repr__(self) -> str:
        return f"ElementwiseBijection({self.kinds})"


__all__ = ["ElementwiseBijection", "SupportBijection", "reduce_to"]
