"""Calibration over many (θ, x) pairs: does the posterior cover the truth as often as it claims?

- `sbc`: simulation-based calibration ranks (Talts et al. 2018): the rank of the true θ among
  posterior draws is uniform on {0..L} for every dimension when the posterior is calibrated.
- `expected_coverage`: for each pair, the smallest highest-density credible level holding
  the true θ; their distribution gives the empirical coverage of every level.
- `tarp`: tests of accuracy with random points (Lemos et al. 2023), a coverage test that is
  necessary and sufficient for a correct posterior.
"""

from __future__ import annotations

import jax
import numpy as np
from scipy import stats

from galton.keys import as_key
from galton.progress import Progress


def check_pairs(posterior, theta, xs, references=None) -> tuple[np.ndarray, np.ndarray]:
    """θ ``(m, d)`` and xs ``(m, *x_shape)`` as arrays, or a clear error: every check a calibration
    function needs before its first draw (``references``, when given, must be shaped like θ).

    Raises:
        ValueError: a posterior fitted to one observation; mismatched shapes; NaN or inf values.
    """
    # a posterior with no x_obs ignores x (the prior, say, which is calibrated) and may be tested
    if not getattr(posterior, "amortized", False) and getattr(posterior, "x_obs", None) is not None:
        raise ValueError(
            f"this {type(posterior).__name__} was fitted to one observation; SBC and coverage draw from the "
            "posterior at every simulated x, so they need an amortized posterior (NPE, NLE, NRE, TMNRE) "
            "or a method run again for each x"
        )
    theta, xs = np.asarray(theta), np.asarray(xs)
    d = getattr(posterior, "dim", None)
    want = f"(m, {d})" if d is not None else "(m, d)"
    if theta.ndim != 2 or len(theta) == 0 or (d is not None and theta.shape[1] != d):
        raise ValueError(f"theta has shape {theta.shape}; expected {want}: one row of the {d or 'd'} parameters per simulation")
    if xs.ndim == 0 or len(xs) != len(theta):
        raise ValueError(f"x has shape {xs.shape} for theta of shape {theta.shape}; expected one simulation per θ, ({len(theta)}, ...)")
    x_shape = tuple(getattr(posterior, "x_shape", ()))
    # trailing axes only: an iid posterior (NLE) takes (m, n_obs, *x_shape), and checks the rest itself
    if x_shape and (xs.ndim <= len(x_shape) or xs.shape[-len(x_shape):] != x_shape):
        raise ValueError(f"x has shape {xs.shape}; this posterior's observations have shape {x_shape}: expected ({len(theta)}, *{x_shape})")
    named = {"theta": theta, "x": xs}
    if references is not None:
        named["references"] = np.asarray(references)
        if named["references"].shape != theta.shape:
            raise ValueError(f"references has shape {named['references'].shape}; expected θ's shape {theta.shape}, one point per pair")
    for name, a in named.items():
        if not np.issubdtype(a.dtype, np.number):
            raise ValueError(f"{name} must hold numbers, got dtype {a.dtype}")
        bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
        if bad.any():
            raise ValueError(f"{name} has {int(bad.sum())} rows with NaN or inf values, first row {int(np.flatnonzero(bad)[0])}")
    return theta, xs


def posterior_draws(posterior, xs, n: int, *, key: jax.Array, progress: bool = False) -> np.ndarray:
    """``n`` draws for each observation: xs ``(m, *x_shape)`` -> ``(m, n, d)``.

    Uses the posterior's batched sampler when it has one (amortized flows), else one
    `sample` call per observation.
    """
    key = as_key(key)
    if hasattr(posterior, "sample_batch"):
        return np.asarray(posterior.sample_batch(n, key=key, xs=xs))
    keys = jax.random.split(key, len(xs))
    out = []
    with Progress(len(xs), desc="posterior draws", unit="observation", enabled=progress) as bar:
        for k, x in zip(keys, xs):
            out.append(np.asarray(posterior.sample(n, key=k, x=x)))
            bar.update(1)
    return np.stack(out)


def sbc(posterior, theta, x, *, key: jax.Array, n_samples: int = 100, progress: bool = False) -> np.ndarray:
    """SBC ranks ``(m, d)`` in ``0..n_samples`` of the true θ ``(m, d)`` among posterior draws at x ``(m, ...)``."""
    theta, x = check_pairs(posterior, theta, x)
    draws = posterior_draws(posterior, x, n_samples, key=key, progress=progress)
    return (draws < theta[:, None, :]).sum(axis=1)


def sbc_uniformity(ranks: np.ndarray, n_samples: int) -> np.ndarray:
    """Kolmogorov–Smirnov p-values ``(d,)`` of ranks ``(m, d)`` against the uniform on {0..n_samples}.

    Ranks are jittered within their integer bin so the continuous KS test applies exactly.
    """
    rng = np.random.default_rng(0)
    u = (np.asarray(ranks) + rng.uniform(size=np.shape(ranks))) / (n_samples + 1)
    return np.array([stats.kstest(u[:, j], "uniform").pvalue for j in range(u.shape[1])])


def credible_levels(posterior, theta, x, *, key: jax.Array, n_samples: int = 1000, progress: bool = False) -> np.ndarray:
    """For each pair, the highest-density credible level ``(m,)`` at which the true θ is included:
    the share of posterior draws whose density exceeds the density at the true θ."""
    theta, x = check_pairs(posterior, theta, x)
    draws = posterior_draws(posterior, x, n_samples, key=key, progress=progress)
    points = np.concatenate([theta[:, None], draws], axis=1)  # (m, 1 + n_samples, d): truth first
    if hasattr(posterior, "log_prob_batch"):
        lp = np.asarray(posterior.log_prob_batch(points, x))
    else:
        log_prob = jax.jit(lambda p, xi: posterior.log_prob(p, x=xi))
        lp = np.stack([np.asarray(log_prob(p, xi)) for p, xi in zip(points, x)])
    return (lp[:, 1:] > lp[:, :1]).mean(axis=1)


def expected_coverage(posterior, theta, x, *, key: jax.Array, n_samples: int = 1000, levels=None, progress: bool = False):
    """Empirical coverage of highest-density credible regions.

    Args:
        posterior: a galton posterior (``sample``, ``log_prob`` with ``x=``).
        theta: true parameters ``(m, d)``; x: their simulations ``(m, ...)``.
        n_samples: posterior draws per pair.
        levels: nominal credible levels (default 0, 0.01, ..., 1).

    Returns:
        ``(levels (k,), coverage (k,))``: coverage equals the level for a calibrated posterior,
        lies above it for a conservative one and below for an overconfident one.
    """
    levels = _levels(levels)
    needed = credible_levels(posterior, theta, x, key=key, n_samples=n_samples, progress=progress)
    return levels, (needed[None, :] <= levels[:, None]).mean(axis=1)


def tarp(posterior, theta, x, *, key: jax.Array, n_samples: int = 1000, references=None, levels=None, progress: bool = False):
    """TARP expected coverage probability.

    θ is z-scored with the true parameters' statistics; each pair gets a reference point
    (``references`` ``(m, d)``, or drawn uniformly in the box spanned by the true θ), and
    f_i is the share of posterior draws closer to the reference than the true θ is.

    Returns:
        ``(levels (k,), ecp (k,))`` with ``ecp = mean(f < level)``: the diagonal for a
        correct posterior.
    """
    theta, x = check_pairs(posterior, theta, x, references)
    levels = _levels(levels)
    theta, key = theta.astype(np.float64), as_key(key)
    draws = posterior_draws(posterior, x, n_samples, key=key, progress=progress).astype(np.float64)
    mean, std = theta.mean(0), theta.std(0) + 1e-12
    theta, draws = (theta - mean) / std, (draws - mean) / std
    if references is None:
        low, high = theta.min(0), theta.max(0)
        references = np.asarray(jax.random.uniform(jax.random.fold_in(key, 1), theta.shape)) * (high - low) + low
    else:
        references = (np.asarray(references) - mean) / std
    truth_distance = np.linalg.norm(theta - references, axis=-1)
    draw_distance = np.linalg.norm(draws - references[:, None], axis=-1)
    f = (draw_distance < truth_distance[:, None]).mean(axis=1)
    return levels, (f[None, :] < levels[:, None]).mean(axis=1)


def _levels(levels) -> np.ndarray:
    """Nominal levels ``(k,)`` in [0, 1] (default 0, 0.01, ..., 1), checked before any draw is made."""
    if levels is None:
        return np.linspace(0, 1, 101)
    try:  # (NumPy would read the text "0.9" as a number)
        out = None if isinstance(levels, (str, bytes)) else np.asarray(levels, np.float64).reshape(-1)
    except (TypeError, ValueError):
        out = None
    if out is None or out.size == 0 or not np.all((out >= 0) & (out <= 1)):  # NaN fails too
        raise ValueError(f"levels must be one or more numbers in [0, 1], such as (0.68, 0.95), got {levels!r}")
    return out


def marginal_coverage(posterior, theta, x, *, key: jax.Array, n_samples: int = 500, levels=None, progress: bool = False) -> dict:
    """Expected coverage of every marginal a TMNRE posterior estimated (swyft's coverage plot).

    Args:
        posterior: a `TMNREPosterior`.
        theta, x: ``(m, d)`` true parameters and ``(m, *x_shape)`` their simulations, drawn from
            ``posterior.proposal`` (the last round's truncated prior), where its estimators hold.

    Returns:
        ``{marginal names: (levels (k,), coverage (k,))}``, each as `expected_coverage` gives.
    """
    theta, x = check_pairs(posterior, theta, x)
    keys = jax.random.split(as_key(key), len(posterior.marginals))
    out = {}
    for k, m in zip(keys, posterior.marginals):
        columns = [posterior.names.index(n) for n in m]
        out[m] = expected_coverage(posterior.marginal(m), theta[:, columns], x, key=k, n_samples=n_samples, levels=levels, progress=progress)
    return out
