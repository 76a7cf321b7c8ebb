"""Frequentist inference from a learned (or exact) likelihood: profile likelihood-ratio tests,
confidence sets (asymptotic by Wilks' theorem, or Neyman-constructed from toy experiments),
and a coverage check that runs toys at a known θ.

A log-likelihood here is ``loglik(theta (m, d), x (n_events, *x_shape)) -> (m,)``: the sum over
iid events of log p(x_i|θ) up to terms free of θ. `log_likelihood(posterior)` makes one from
any NLE, NRE or gold-mining posterior (their log term is log p(x|θ) + c(x)); an exact one is a
plain function. The statistic is evaluated on a grid of θ over the prior's support:

    q(θ) = −2 [ℓ(θ) − max_θ' ℓ(θ')],   profiled over the nuisance parameters: for a subset
    ``keep``, q(θ_keep) = −2 [max_nuisance ℓ − max_all ℓ].

Wilks: q ~ χ²_k with k = len(keep) when the asymptotics hold; Neyman: at each grid point the
critical value is the ``level`` quantile of q over toys simulated at that point.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from galton.checks import check_count, check_real
from galton.fisher import check_keep
from galton.keys import as_key
from galton.prior import check_point
from galton.problem import ProblemError, Program, Simulator
from galton.simulate import simulate


def log_likelihood(posterior) -> Callable:
    """The summed log term of a `DensityPosterior` (NLE, NRE, CARL .. ALICES, SCANDAL) as a log-likelihood."""
    if not hasattr(posterior, "log_term"):
        raise TypeError(
            f"{type(posterior).__name__} has no likelihood term; use an NLE, NRE or gold-mining posterior "
            "(NPE's q(θ|x) does not factor over iid events)"
        )
    d = posterior.prior.dim

    def loglik(theta, x):
        theta = jnp.asarray(theta)
        if theta.ndim < 1 or theta.shape[-1] != d:
            raise ProblemError(f"theta must have shape (m, {d}) for parameters {posterior.names}; got {theta.shape}")
        return posterior.log_term(theta, posterior._check_obs(x))  # names wrongly shaped or non-finite events

    return loglik


@dataclass(frozen=True)
class Grid:
    """Points ``(m, d)`` on a regular grid, with its axes ``[(points_j,)]``."""

    points: np.ndarray
    axes: list

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(a) for a in self.axes)


def grid(prior, points: int | Sequence[int] = 41, *, bounds=None) -> Grid:
    """A regular grid over the prior's box support (or over ``bounds`` ``(d, 2)``)."""
    d = prior.dim
    counts = [points] * d if np.ndim(points) == 0 else list(points)
    if len(counts) != d:
        raise ValueError(f"points has {len(counts)} counts; give one per parameter ({d}: {prior.names}) or a single count")
    counts = [check_count(c, "points") for c in counts]
    if bounds is None:
        low, high = [], []
        for k, dist_ in prior.distributions.items():
            support = dist_.support
            while hasattr(support, "base_constraint"):
                support = support.base_constraint
            if not (hasattr(support, "lower_bound") and hasattr(support, "upper_bound")):
                raise ProblemError(f"parameter block {k!r} has unbounded support; pass bounds=[(low, high), ...]")
            size = int(np.prod(dist_.batch_shape + dist_.event_shape)) or 1
            low.append(np.broadcast_to(np.asarray(support.lower_bound, np.float64), (size,)))
            high.append(np.broadcast_to(np.asarray(support.upper_bound, np.float64), (size,)))
        bounds = np.stack([np.concatenate(low), np.concatenate(high)], 1)
    bounds = np.asarray(bounds, np.float64)
    if bounds.shape != (d, 2):
        raise ValueError(f"bounds must have shape ({d}, 2), got {bounds.shape}")
    ordered = np.isfinite(bounds).all(1) & (bounds[:, 0] < bounds[:, 1])
    if not ordered.all():
        bad = int(np.flatnonzero(~ordered)[0])
        raise ValueError(f"bounds for {prior.names[bad]} are {tuple(bounds[bad].tolist())}: give finite (low, high) with low < high")
    # cell centres: a bounded prior's edge is outside its open support
    axes = [lo + (hi - lo) * (np.arange(n) + 0.5) / n for (lo, hi), n in zip(bounds, counts)]
    mesh = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d).astype(np.float32)
    return Grid(mesh, axes)


def _evaluate(loglik, points: np.ndarray, x, batch: int = 4096) -> np.ndarray:
    out = [np.asarray(loglik(jnp.asarray(points[i: i + batch]), x)) for i in range(0, len(points), batch)]
    return np.concatenate(out).astype(np.float64)


def test_statistic(loglik: Callable, x, theta_grid: Grid, *, keep: Sequence[int] | None = None) -> np.ndarray:
    """q on the grid: ``theta_grid.shape`` (all parameters), or the grid of ``keep``'s axes (profiled)."""
    values = _evaluate(loglik, theta_grid.points, jnp.asarray(x, jnp.float32)).reshape(theta_grid.shape)
    q = -2.0 * (values - values.max())
    if keep is None:
        return q
    keep = check_keep(keep, len(theta_grid.shape))
    other = tuple(i for i in range(len(theta_grid.shape)) if i not in keep)
    return q.min(axis=other) if other else q


def wilks_threshold(level: float, dof: int) -> float:
    """χ²_dof quantile at ``level``."""
    return float(stats.chi2.ppf(level, dof))


def confidence_set(loglik: Callable, x, theta_grid: Grid, *, level: float = 0.95, keep: Sequence[int] | None = None,
                   method: str = "wilks", problem: Simulator | Program | None = None, toys: int = 200,
                   key: jax.Array | None = None) -> np.ndarray:
    """A boolean mask over the grid (of ``keep``'s axes when profiling): θ not rejected at ``level``.

    Args:
        loglik: ``(theta (m, d), x (n_events, *x_shape)) -> (m,)``.
        x: the observed iid events ``(n_events, *x_shape)``.
        method: ``"wilks"`` (χ² threshold) or ``"neyman"`` (toys of ``n_events`` at each grid
            point from ``problem``, critical value the ``level`` quantile of q there; all
            parameters, no profiling).
    """
    _check_level(level, "level")
    keep = None if keep is None else check_keep(keep, len(theta_grid.shape))
    x = _check_events(x)
    q = test_statistic(loglik, x, theta_grid, keep=keep)
    if method == "wilks":
        dof = len(theta_grid.shape) if keep is None else len(keep)
        return q <= wilks_threshold(level, dof)
    if method != "neyman":
        raise ValueError(f"method must be 'wilks' or 'neyman', got {method!r}")
    if keep is not None:
        raise ValueError("the Neyman construction here covers all parameters; profile with method='wilks'")
    if problem is None or key is None:
        raise ValueError("method='neyman' needs problem= (to simulate toys) and key=")
    critical = neyman_critical_values(loglik, problem, theta_grid, len(x), level=level, toys=toys, key=key)
    return q <= critical.reshape(q.shape)


def neyman_critical_values(loglik, problem, theta_grid: Grid, n_events: int, *, level: float, toys: int, key) -> np.ndarray:
    """``(m,)`` the ``level`` quantile of q(θ) over ``toys`` toy experiments simulated at each grid point θ."""
    n_events, toys, key = check_count(n_events, "n_events"), check_count(toys, "toys", minimum=2), as_key(key)
    _check_level(level, "level")
    out = np.empty(len(theta_grid.points))
    for i, theta in enumerate(theta_grid.points):
        qs = _toy_statistics(loglik, problem, theta, n_events, toys, jax.random.fold_in(key, i), theta_grid)
        out[i] = np.quantile(qs, level)
    return out


def _toy_statistics(loglik, problem, theta, n_events, toys, key, theta_grid: Grid, keep=None) -> np.ndarray:
    """q at the true θ for each of ``toys`` experiments of ``n_events`` simulated at θ."""
    sims = simulate(problem, key=key, theta=np.tile(np.asarray(theta, np.float32), (toys * n_events, 1)), progress=False)
    events = sims.x.reshape(toys, n_events, *sims.x.shape[1:])
    values = np.stack([_evaluate(loglik, theta_grid.points, jnp.asarray(e)) for e in events])  # (toys, m)
    at_truth = np.stack([_evaluate(loglik, np.asarray(theta, np.float32)[None], jnp.asarray(e))[0] for e in events])
    best_all = np.maximum(values.max(1), at_truth)  # the grid may miss the maximum near θ itself
    if keep is None:
        return -2.0 * (at_truth - best_all)
    # profiled: the nuisance parameters maximised on grid rows whose kept coordinates equal θ's
    # nearest grid values (θ itself is a grid point in `coverage`)
    g = values.reshape(toys, *theta_grid.shape)
    idx = tuple(int(np.argmin(np.abs(theta_grid.axes[j] - theta[j]))) if j in keep else slice(None) for j in range(len(theta_grid.shape)))
    best_nuisance = g[(slice(None), *idx)].reshape(toys, -1).max(1)
    return -2.0 * (best_nuisance - best_all)


@dataclass(frozen=True)
class Coverage:
    """Fraction of toys whose confidence set at ``level`` covers the true θ, with its binomial error
    (``toys``: the effective count behind it; for Neyman sets the calibration toys' count too)."""

    level: float
    covered: float
    stderr: float
    toys: float

    @property
    def pulls(self) -> float:
        """(covered − level) / stderr under the nominal rate."""
        return (self.covered - self.level) / np.sqrt(self.level * (1 - self.level) / self.toys)

    def __repr__(self) -> str:
        return f"Coverage({self.level:.0%} sets cover {self.covered:.3f} ± {self.stderr:.3f}, {self.toys:.0f} effective toys)"


def coverage(loglik: Callable, problem, theta_true, *, n_events: int, theta_grid: Grid, key: jax.Array, toys: int = 500,
             levels: float | Sequence[float] = (0.68, 0.95), keep: Sequence[int] | None = None, method: str = "wilks",
             calibration_toys: int | None = None) -> list[Coverage]:
    """Run ``toys`` experiments of ``n_events`` at ``theta_true`` and count how often the set covers it.

    Args:
        levels: a confidence level in (0, 1), or several.
        method: ``"wilks"`` (χ² thresholds) or ``"neyman"``: the critical value at θ_true is the
            ``level`` quantile of q over ``calibration_toys`` (``toys`` when None) other
            experiments there, as `confidence_set`'s Neyman construction makes it at every grid
            point. Where a learned likelihood makes Wilks sets miss, Neyman sets from the same
            statistic still cover: the toys calibrate whatever q the estimator gives.

    Returns one `Coverage` per level; a set at its nominal rate covers within about 2 ``stderr``.
    """
    theta_true = check_point(problem.prior, theta_true, what="theta_true").astype(np.float32)
    n_events, toys = check_count(n_events, "n_events"), check_count(toys, "toys", minimum=2)
    calibration_toys = toys if calibration_toys is None else check_count(calibration_toys, "calibration_toys", minimum=2)
    levels = (levels,) if isinstance(levels, numbers.Real) else levels
    if isinstance(levels, str) or not isinstance(levels, (Sequence, np.ndarray)) or len(levels) == 0:
        raise ValueError(f"levels must be a level in (0, 1) or a sequence of them, got {levels!r}")
    for level in levels:
        _check_level(level, "each of levels")
    keep = None if keep is None else check_keep(keep, len(theta_true))
    if method not in ("wilks", "neyman"):
        raise ValueError(f"method must be 'wilks' or 'neyman', got {method!r}")
    key = as_key(key)
    qs = _toy_statistics(loglik, problem, theta_true, n_events, toys, key, theta_grid, keep)
    if method == "neyman":
        calibration = _toy_statistics(loglik, problem, theta_true, n_events, calibration_toys,
                                      jax.random.fold_in(key, 1), theta_grid, keep)
    dof = len(theta_true) if keep is None else len(keep)
    # a Neyman critical value is itself a quantile of toys: its error adds to the test toys' own
    effective = int(toys) if method == "wilks" else 1.0 / (1.0 / toys + 1.0 / len(calibration))
    out = []
    for level in levels:
        critical = wilks_threshold(level, dof) if method == "wilks" else np.quantile(calibration, level)
        p = (qs <= critical).mean()
        out.append(Coverage(float(level), float(p), float(np.sqrt(max(p * (1 - p), 1e-12) / effective)), effective))
    return out


def _check_level(level, what: str) -> None:
    check_real(level, what, high=1.0)


def _check_events(x) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    if x.ndim < 1:
        raise ProblemError(f"x must be a set of iid events (n_events, *x_shape), got a scalar of shape {x.shape}")
    if not bool(jnp.isfinite(x).all()):
        raise ProblemError("x has NaN or inf values")
    return x


__all__ = ["Coverage", "Grid", "confidence_set", "coverage", "grid", "log_likelihood", "neyman_critical_values", "test_statistic", "wilks_threshold"]
