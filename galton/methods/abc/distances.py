"""How far a simulation is from the observation: summaries s(x), their MAD scale, a distance.

The default is the Euclidean distance between summaries divided, column by column, by their
median absolute deviation over reference simulations (prior predictive ones), so that no
summary dominates by its units. A user distance replaces it and sees the raw summaries.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


class ABCError(ValueError):
    """Bad settings or data for an ABC method, named in the message."""


@eqx.filter_jit
def _vmapped(fn, x):
    return jax.vmap(fn)(x)


@eqx.filter_jit
def _distances(fn, s, s_obs):
    return jax.vmap(fn, in_axes=(0, None))(s, s_obs)


def summarise(summary: Callable | None, x, *, batch: int = 8192) -> np.ndarray:
    """Summaries ``(n, k)`` of simulations x ``(n, *x_shape)``.

    Args:
        summary: None (the flattened x), or a JAX function / equinox module of one x
            ``(*x_shape) -> (k,)`` such as a fitted `galton.summaries.Compressor`.
    """
    x = np.asarray(x)
    if summary is None:
        return x.reshape(len(x), -1)
    check = getattr(summary, "check_input", None)
    if check is not None:
        check(x.shape[1:])
    try:
        parts = [np.asarray(_vmapped(summary, jnp.asarray(x[i : i + batch]))) for i in range(0, len(x), batch)]
    except Exception as err:  # a summary that is not a JAX function of one x
        raise ABCError(
            f"summary failed on x of shape {x.shape[1:]}: it must be a JAX function (or equinox module) of one x "
            f"returning a vector of summaries ({type(err).__name__}: {err})"
        ) from None
    s = np.concatenate(parts)
    if s.ndim != 2:
        raise ABCError(f"summary must return a vector (k,) per x, but returned shape {s.shape[1:]}")
    return s


def mad_scale(s: np.ndarray) -> np.ndarray:
    """Per-column median absolute deviation of ``s (n, k)``; the standard deviation (or 1) where it is 0."""
    s = s[np.isfinite(s).all(axis=1)]
    if len(s) == 0:
        raise ABCError("every reference simulation has non-finite summaries; no scale can be set")
    mad = np.median(np.abs(s - np.median(s, axis=0)), axis=0)
    std = s.std(axis=0)
    return np.where(mad > 0, mad, np.where(std > 0, std, 1.0))


@dataclass(frozen=True)
class Discrepancy:
    """Distances of simulations to the observation: ``discrepancy(x) -> (n,)``.

    Attributes:
        s_obs: ``(k,)`` summaries of the observation; scale: ``(k,)`` their MAD scale.
        summary: the summary function (None: x itself); distance: a user distance or None.
    """

    s_obs: np.ndarray
    scale: np.ndarray
    summary: Any = None
    distance: Callable | None = None

    def summaries(self, x) -> np.ndarray:
        """``(n, *x_shape) -> (n, k)``."""
        return summarise(self.summary, x)

    def of_summaries(self, s: np.ndarray) -> np.ndarray:
        """Distances ``(n,)`` of summaries ``(n, k)``; +inf where a summary is not finite."""
        finite = np.isfinite(s).all(axis=1)
        if self.distance is None:
            d = np.sqrt((((s - self.s_obs) / self.scale) ** 2).sum(axis=1))
        else:
            try:
                d = np.asarray(_distances(self.distance, jnp.asarray(np.where(finite[:, None], s, 0.0)), jnp.asarray(self.s_obs)))
            except Exception as err:
                raise ABCError(
                    f"distance failed: it must be a JAX function of (s (k,), s_obs (k,)) returning a scalar "
                    f"({type(err).__name__}: {err})"
                ) from None
            if d.shape != (len(s),):
                raise ABCError(f"distance must return one scalar per simulation, got shape {d.shape[1:]} per row")
            d = d.astype(np.float64)
        bad = finite & np.isnan(d)
        if bad.any():
            raise ABCError(f"the distance returned NaN for {int(bad.sum())} of {len(s)} simulations with finite summaries (first row {int(np.flatnonzero(bad)[0])})")
        return np.where(finite, d, np.inf)

    def __call__(self, x) -> np.ndarray:
        return self.of_summaries(self.summaries(x))


def discrepancy(x_obs, x_reference, *, summary=None, distance=None, problem: str = "") -> Discrepancy:
    """Set up distances to ``x_obs`` ``(*x_shape)``, with the MAD scale of ``x_reference`` ``(n, *x_shape)``."""
    x_obs = np.asarray(x_obs)
    trained_on = getattr(summary, "problem", "")
    if trained_on and problem and trained_on != problem:
        warnings.warn(f"the summary (a compressor) was trained on problem {trained_on!r} but summarises {problem!r}", stacklevel=4)
    s_obs = summarise(summary, x_obs[None])[0]
    s_ref = summarise(summary, x_reference)
    if s_ref.shape[1:] != s_obs.shape:
        raise ABCError(f"summaries of the simulations have shape {s_ref.shape[1:]} but those of x_obs have {s_obs.shape}")
    if not np.isfinite(s_obs).all():
        raise ABCError("the summaries of x_obs are not finite")
    if distance is not None and not callable(distance):
        raise ABCError(f"distance must be a function of (s, s_obs) or None, got {type(distance).__name__}")
    return Discrepancy(s_obs, mad_scale(s_ref), summary, distance)


def weighted_quantile(values: np.ndarray, q: float, weights: np.ndarray | None = None) -> float:
    """The ``q`` quantile of ``values (n,)`` under ``weights (n,)`` (equal when None)."""
    order = np.argsort(values)
    v = values[order]
    w = np.ones(len(v)) if weights is None else np.asarray(weights)[order]
    cdf = np.cumsum(w) / w.sum()
    return float(v[min(np.searchsorted(cdf, q), len(v) - 1)])


__all__ = ["ABCError", "Discrepancy", "discrepancy", "mad_scale", "summarise", "weighted_quantile"]
