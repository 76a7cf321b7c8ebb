"""A posterior held as (weighted) draws: what ABC, importance sampling and SMC return.

Draws are resampled in proportion to their weights; the density is a weighted Gaussian kernel
density estimate (Scott's bandwidth on the effective sample size), good enough for
highest-density credible levels and plots, not for a likelihood-ratio test.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from galton.keys import as_key
from galton.posteriors.base import Posterior, check_draws, check_theta_width


class SamplesPosterior(Posterior):
    """Draws θ ``(m, d)`` with optional log-weights ``(m,)`` (equal when omitted).

    Args:
        theta: ``(m, d)`` draws in the parameters' original space.
        names: ``d`` flat parameter names.
        log_weights: ``(m,)`` unnormalised log-weights; −inf drops a draw.
        x_obs: the observation the draws are conditioned on, if any.
        info: JSON-able facts about how the draws were made (ε, acceptance rate, ...).
    """

    kind = "samples"

    def __init__(self, theta, names: Sequence[str], log_weights=None, x_obs=None, info: dict | None = None):
        theta = np.asarray(theta)
        if theta.ndim != 2 or theta.shape[1] != len(names) or len(theta) == 0:
            raise ValueError(f"theta must be (m, {len(names)}) with m ≥ 1 for names {list(names)}, got {theta.shape}")
        log_w = np.zeros(len(theta)) if log_weights is None else np.asarray(log_weights, np.float64)
        if log_w.shape != (len(theta),):
            raise ValueError(f"log_weights must be ({len(theta)},), got {log_w.shape}")
        if np.isnan(log_w).any() or not np.isfinite(log_w).any():
            raise ValueError("log_weights must be free of NaN and have at least one finite entry")
        if not np.isfinite(theta[np.isfinite(log_w)]).all():
            raise ValueError("theta has non-finite values in draws of non-zero weight")
        self.theta, self.log_weights = theta, log_w
        self.names = list(names)
        self.x_obs = None if x_obs is None else np.asarray(x_obs)
        self.info = dict(info or {})
        w = np.exp(log_w - log_w.max())
        self.weights = w / w.sum()
        self._kernel = None

    @property
    def ess(self) -> float:
        """Kish's effective sample size of the weights, 1 … m."""
        return float(1.0 / np.sum(self.weights**2))

    def sample(self, n: int, *, key: jax.Array, x=None) -> jax.Array:
        """``n`` draws ``(n, d)``, resampled with replacement in proportion to the weights."""
        self._check_x(x)
        rows = jax.random.choice(as_key(key), len(self.theta), (check_draws(n),), p=jnp.asarray(self.weights))
        return jnp.asarray(self.theta)[rows]

    def _kde(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """(centres, weights, whitening matrix, log-normaliser) of the kernel estimate."""
        if self._kernel is None:
            keep = self.weights > 0
            centres, w = self.theta[keep].astype(np.float64), self.weights[keep]
            mean = w @ centres
            cov = np.atleast_2d(((centres - mean).T * w) @ (centres - mean)) / max(1 - np.sum(w**2), 1e-12)
            d = self.dim
            factor = self.ess ** (-1.0 / (d + 4))  # Scott's rule
            chol = np.linalg.cholesky(cov * factor**2 + 1e-12 * np.eye(d) * max(np.trace(cov), 1e-12))
            whiten = np.linalg.inv(chol).T
            log_norm = -np.log(np.abs(np.diag(chol))).sum() - 0.5 * d * np.log(2 * np.pi)
            self._kernel = (centres @ whiten, np.log(w), whiten, log_norm)
        return self._kernel

    def log_prob(self, theta, x=None) -> jax.Array:
        """The kernel density estimate at θ ``(..., d)`` -> ``(...)``."""
        self._check_x(x)
        theta, _ = check_theta_width(theta, self.dim)
        white_centres, log_w, whiten, log_norm = self._kde()
        dtype = jnp.result_type(theta.dtype, jnp.float32)
        t = theta.astype(dtype) @ jnp.asarray(whiten, dtype)
        sq = jnp.sum((t[..., None, :] - jnp.asarray(white_centres, dtype)) ** 2, axis=-1)
        return jax.nn.logsumexp(jnp.asarray(log_w, dtype) - 0.5 * sq, axis=-1) + log_norm

    def _state(self):
        return {"info": self.info}, {"theta": self.theta, "log_weights": self.log_weights}

    @classmethod
    def _from_state(cls, meta, arrays):
        return cls(arrays["theta"], meta["names"], arrays["log_weights"], info=meta.get("info"))

    def __repr__(self) -> str:
        return f"SamplesPosterior({len(self.theta)} draws, ESS {self.ess:.0f}, {', '.join(self.names[:6])})"


__all__ = ["SamplesPosterior"]
