"""A Gaussian in unconstrained space pushed to the parameters' support (MUSE's result is one)."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from galton.keys import as_key
from galton.posteriors.base import Posterior, check_draws, check_theta_width
from galton.transforms import ElementwiseBijection


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
        eps = jax.random.normal(as_key(key), (check_draws(n), self.dim))
        u = jnp.asarray(self.loc, eps.dtype) + eps @ jnp.asarray(self._cholesky.T, eps.dtype)
        return self.bijection.forward(u)

    def log_prob(self, theta, x=None) -> jax.Array:
        """The density at θ ``(..., d)`` -> ``(...)``; −inf outside the support."""
        self._check_x(x)
        theta = check_theta_width(theta, self.dim)[0].astype(jnp.result_type(float))
        u = self.bijection.inverse(theta)
        diff = u - jnp.asarray(self.loc, theta.dtype)
        L = jnp.asarray(self._cholesky, theta.dtype)
        white = jax.scipy.linalg.solve_triangular(L, diff.reshape(-1, self.dim).T, lower=True).T.reshape(diff.shape)
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


__all__ = ["GaussianPosterior"]
