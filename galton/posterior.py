"""The `Posterior` protocol every method returns, and its kinds.

A posterior over flat θ ``(d,)`` with named columns offers ``sample``, ``log_prob``,
``condition`` (for amortized kinds), ``to_arviz`` and ``save`` / `load`. Samples and
densities are in the parameters' original space.

Kinds so far: `GaussianPosterior` (MUSE's result is one). Saved posteriors are a directory
holding ``posterior.json`` (kind, names, settings) and ``arrays.npz``; no code is pickled.
"""

from __future__ import annotations

import abc
import importlib
import json
from pathlib import Path
from typing import Any, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import transforms as T
from numpyro.distributions.transforms import biject_to

FORMAT_VERSION = 1
_KINDS: dict[str, type["Posterior"]] = {}


class Posterior(abc.ABC):
    """A distribution over flat parameters θ ``(d,)``, with one name per column.

    Attributes:
        names: the flat parameter names, ``len(names) == d``.
        x_obs: the observation a non-amortized posterior was fitted to (None if amortized).
    """

    kind: ClassVar[str] = ""
    amortized: ClassVar[bool] = False
    names: list[str]
    x_obs: np.ndarray | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.kind:
            _KINDS[cls.kind] = cls

    @property
    def dim(self) -> int:
        return len(self.names)

    @abc.abstractmethod
    def sample(self, n: int, *, key: jax.Array, x=None) -> jax.Array:
        """``n`` draws ``(n, d)`` of θ given x (given the fitted observation when not amortized)."""

    @abc.abstractmethod
    def log_prob(self, theta, x=None) -> jax.Array:
        """log p(θ | x) for θ ``(n, d)`` -> ``(n,)`` (or ``(d,)`` -> scalar)."""

    def condition(self, x) -> "Posterior":
        """This posterior given observation ``x``: a conditioned copy for amortized kinds.

        A non-amortized posterior is returned unchanged for its own observation and
        refuses any other.
        """
        self._check_x(x)
        return self

    def _check_x(self, x) -> None:
        if self.amortized or x is None or self.x_obs is None:
            return
        x = np.asarray(x)
        if x.shape != self.x_obs.shape or not np.allclose(x, self.x_obs):
            raise ValueError(
                f"this {type(self).__name__} was fitted to one observation (shape {self.x_obs.shape}) and "
                f"cannot be conditioned on another (shape {x.shape}); fit it again to the new x"
            )

    def to_arviz(self, *, n: int = 1000, key: jax.Array | None = None):
        """``n`` draws as an ArviZ ``InferenceData`` with one variable per flat name.

        ``key`` defaults to ``jax.random.key(0)``, so the same posterior gives the same draws.
        """
        draws = np.asarray(self.sample(n, key=jax.random.key(0) if key is None else key))
        return samples_to_arviz(draws, self.names)

    # ---- saving -------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-able settings, arrays) from which `_from_state` rebuilds this object."""
        raise NotImplementedError

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "Posterior":
        raise NotImplementedError

    def save(self, path) -> Path:
        """Write to the directory ``path`` (created if missing); `load` reads it back."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta, arrays = self._state()
        header = {"format": FORMAT_VERSION, "kind": self.kind, "module": type(self).__module__, "names": list(self.names), **meta}
        if self.x_obs is not None:
            arrays = {**arrays, "x_obs": np.asarray(self.x_obs)}
        np.savez(path / "arrays.npz", **arrays)
        (path / "posterior.json").write_text(json.dumps(header, indent=1))
        return path

    @classmethod
    def load(cls, path) -> "Posterior":
        """Read a posterior written by `save` (any kind; see the module-level `load`)."""
        return load(path)


def samples_to_arviz(samples, names: Sequence[str]):
    """Samples ``(n, d)`` (one chain) or ``(chains, n, d)`` as an ArviZ ``InferenceData``, one variable per name."""
    import arviz as az

    draws = np.asarray(samples)
    draws = draws[None] if draws.ndim == 2 else draws
    if draws.ndim != 3 or draws.shape[-1] != len(names):
        raise ValueError(f"samples must be (n, {len(names)}) or (chains, n, {len(names)}), got {np.shape(samples)}")
    return az.from_dict(posterior={name: draws[..., i] for i, name in enumerate(names)})


def load(path) -> Posterior:
    """Read a posterior saved with ``Posterior.save``; its kind is read from the file."""
    path = Path(path)
    header_file = path / "posterior.json"
    if not header_file.exists():
        raise FileNotFoundError(f"{path} holds no saved posterior (no posterior.json)")
    meta = json.loads(header_file.read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} has posterior format {meta.get('format')}; this galton reads format {FORMAT_VERSION}")
    kind = meta["kind"]
    if kind not in _KINDS and str(meta.get("module", "")).startswith("galton."):
        importlib.import_module(meta["module"])  # the module defining the kind registers it
    if kind not in _KINDS:
        raise ValueError(f"{path} holds a posterior of unknown kind {kind!r}; known kinds: {sorted(_KINDS)}")
    with np.load(path / "arrays.npz") as f:
        arrays = {k: f[k] for k in f.files}
    x_obs = arrays.pop("x_obs", None)
    posterior = _KINDS[kind]._from_state(meta, arrays)
    posterior.x_obs = x_obs
    return posterior


# ---- elementwise bijections between unconstrained and original parameter space ------------
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
                kind, loc, scale = _elementwise(biject_to(d.support))
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


class GaussianPosterior(Posterior):
    """A multivariate normal N(loc, cov) over unconstrained θ, pushed to the original space.

    ``sample`` draws u ~ N(loc, cov) and returns ``bijection.forward(u)``; ``log_prob`` is
    the density of those draws in the original space (the change of variables included).
    With the identity bijection (unbounded parameters) this is the plain Gaussian.

    Args:
        loc: ``(d,)`` mean of the Gaussian in unconstrained space.
        cov: ``(d, d)`` symmetric positive-definite covariance in unconstrained space.
        names: ``d`` flat parameter names.
        bijection: unconstrained -> original space (identity when omitted).
        x_obs: the observation it was fitted to, if any.
    """

    kind = "gaussian"

    def __init__(self, loc, cov, names: Sequence[str], bijection: ElementwiseBijection | None = None, x_obs=None):
        loc = np.asarray(loc)
        cov = np.asarray(cov)
        d = loc.shape[-1] if loc.ndim else 0
        if loc.ndim != 1 or cov.shape != (d, d):
            raise ValueError(f"loc must be (d,) and cov (d, d); got {loc.shape} and {cov.shape}")
        if len(names) != d:
            raise ValueError(f"names has {len(names)} entries for a {d}-dimensional Gaussian")
        if not np.allclose(cov, cov.T, rtol=1e-6, atol=1e-12 * np.abs(cov).max(initial=1.0)):
            raise ValueError("cov is not symmetric")
        cholesky = np.linalg.cholesky(np.asarray(cov, np.float64)) if np.all(np.isfinite(cov)) else None
        if cholesky is None or not np.all(np.isfinite(cholesky)):
            raise ValueError(f"cov is not positive definite (eigenvalues {np.linalg.eigvalsh(cov)})")
        self.loc, self.cov = loc, cov
        self.names = list(names)
        self.bijection = bijection if bijection is not None else ElementwiseBijection.identity(d)
        self.x_obs = None if x_obs is None else np.asarray(x_obs)
        self._cholesky = cholesky

    @property
    def std_unconstrained(self) -> np.ndarray:
        """``(d,)`` standard deviations of the Gaussian in unconstrained space."""
        return np.sqrt(np.diag(self.cov))

    def sample(self, n: int, *, key: jax.Array, x=None) -> jax.Array:
        self._check_x(x)
        eps = jax.random.normal(key, (n, self.dim))
        u = jnp.asarray(self.loc, eps.dtype) + eps @ jnp.asarray(self._cholesky.T, eps.dtype)
        return self.bijection.forward(u)

    def log_prob(self, theta, x=None) -> jax.Array:
        self._check_x(x)
        theta = jnp.asarray(theta, jnp.result_type(float))
        u = self.bijection.inverse(theta)
        diff = u - jnp.asarray(self.loc, theta.dtype)
        L = jnp.asarray(self._cholesky, theta.dtype)
        white = jax.scipy.linalg.solve_triangular(L, diff[..., None] if diff.ndim == 1 else diff.T, lower=True)
        white = white[..., 0] if diff.ndim == 1 else white.T
        lp = (
            -0.5 * jnp.sum(white**2, axis=-1)
            - jnp.sum(jnp.log(jnp.diag(L)))
            - 0.5 * self.dim * jnp.log(2 * jnp.pi)
            - self.bijection.log_abs_det_jacobian(u)
        )
        return jnp.where(jnp.isfinite(lp), lp, -jnp.inf)

    def _state(self):
        return {"bijection": self.bijection.to_dict()}, {"loc": self.loc, "cov": self.cov}

    @classmethod
    def _from_state(cls, meta, arrays):
        return cls(arrays["loc"], arrays["cov"], meta["names"], ElementwiseBijection.from_dict(meta["bijection"]))

    def __repr__(self) -> str:
        return f"GaussianPosterior({', '.join(self.names[:6])}{', ...' if self.dim > 6 else ''})"


__all__ = ["Posterior", "GaussianPosterior", "ElementwiseBijection", "load", "samples_to_arviz"]
