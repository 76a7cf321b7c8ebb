"""Posterior predictive checks: does data simulated from the fitted posterior look like x_obs?

Draw θ ~ posterior, simulate x_rep ~ p(x | θ) with the problem's own simulator, and compare
test statistics T(x_rep) with T(x_obs) by the posterior predictive p-value
p = P(T(x_rep) ≥ T(x_obs)) (ties counted half). A p-value near 0 or 1 says the model, at the
parameters the posterior allows, does not reproduce that feature of the data: a misspecified
simulator, or a posterior in the wrong place (MUSE's Gaussian, a poorly trained network).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from galton.checks import check_count
from galton.keys import as_key
from galton.problem import Problem, ProblemError

# one x has at most this many values to be checked value by value; longer x get summaries over its values
PER_VALUE_UP_TO = 10


def _kurtosis(x: jax.Array) -> jax.Array:
    centred = x - x.mean()
    return jnp.mean(centred**4) / jnp.mean(centred**2) ** 2 - 3.0


def default_statistics(x_size: int) -> dict[str, Callable]:
    """Each value of x when x has at most 10; else its mean, standard deviation, minimum, maximum
    and excess kurtosis over its values (functions of one flat x ``(x_size,)``)."""
    if x_size <= PER_VALUE_UP_TO:
        return {f"x[{i}]": (lambda x, i=i: x[i]) for i in range(x_size)}
    return {"mean": jnp.mean, "std": jnp.std, "min": jnp.min, "max": jnp.max, "kurtosis": _kurtosis}


@dataclass(frozen=True)
class PredictiveCheck:
    """The result of `predictive_check`.

    Attributes:
        names: the statistics' names ``(k,)``.
        observed: T(x_obs) ``(k,)``.
        replicated: T(x_rep) ``(n, k)``, one row per posterior draw.
        p_values: P(T(x_rep) ≥ T(x_obs)) ``(k,)``.
        theta: the posterior draws ``(n, d)`` the replications were simulated at.
        dropped: replications dropped for NaN or inf values.
    """

    names: list[str]
    observed: np.ndarray
    replicated: np.ndarray
    p_values: np.ndarray
    theta: np.ndarray
    dropped: int = 0

    def extreme(self, level: float = 0.01) -> list[str]:
        """Statistics whose two-sided p-value, 2 min(p, 1 − p), is below ``level``."""
        two_sided = 2 * np.minimum(self.p_values, 1 - self.p_values)
        return [name for name, p in zip(self.names, two_sided) if p < level]

    def __repr__(self) -> str:
        rows = [f"  {n:>12s}: observed {o: .4g}, replicated {r.mean(): .4g} ± {r.std(): .3g}, p = {p:.3f}"
                for n, o, r, p in zip(self.names, self.observed, self.replicated.T, self.p_values)]
        return f"PredictiveCheck ({len(self.replicated)} replications)\n" + "\n".join(rows)


def predictive_check(
    posterior,
    problem: Problem,
    x_obs,
    *,
    key: jax.Array,
    n: int = 500,
    statistics: Mapping[str, Callable] | None = None,
    level: float = 0.01,
    progress: bool = False,
) -> PredictiveCheck:
    """Posterior predictive check of ``posterior`` for ``problem`` at ``x_obs``.

    Args:
        posterior: any galton posterior (`MuseResult`, NPE's, NUTS's, ...) with ``sample(n, key=)``.
        problem: the `Simulator` or `Program` the posterior was fitted for; replications use its simulator.
        x_obs: the observation ``(*x_shape)``.
        key: a ``jax.random`` key (draws of θ, then the simulations).
        n: posterior draws, one replication each.
        statistics: ``{name: T}``, each T a JAX function of one flat x ``(d_x,)`` returning a
            scalar; `default_statistics` when omitted.
        level: statistics whose two-sided p-value falls below this are named in a warning.
        progress: show the simulations' progress.

    Returns:
        a `PredictiveCheck`.
    """
    from galton.simulate import simulate

    key = as_key(key, "key")
    n = check_count(n, "n", minimum=2, what="replications")
    x_flat = np.asarray(x_obs, np.float64).reshape(-1)
    if not np.all(np.isfinite(x_flat)):
        raise ValueError("x_obs has NaN or inf values")
    statistics = dict(statistics or default_statistics(x_flat.size))
    if not statistics:
        raise ValueError("statistics is empty: give at least one {name: function of x}")
    key_theta, key_sim = jax.random.split(key)
    fixed = getattr(posterior, "x_obs", None) is not None and not getattr(posterior, "amortized", False)
    theta = np.asarray(posterior.sample(int(n), key=key_theta) if fixed else posterior.sample(int(n), key=key_theta, x=x_obs))
    sims = simulate(problem, key=key_sim, theta=theta.reshape(int(n), -1), on_invalid="drop", progress=progress)
    x_rep = np.asarray(sims.x, np.float64).reshape(len(sims), -1)
    if x_rep.shape[1] != x_flat.size:
        raise ProblemError(f"x_obs has {x_flat.size} values; {problem.name}'s simulations have {x_rep.shape[1]}")
    names, observed, replicated = list(statistics), [], []
    for name, T in statistics.items():
        t_obs = np.asarray(T(jnp.asarray(x_flat)))
        t_rep = np.asarray(jax.vmap(T)(jnp.asarray(x_rep)))
        if t_obs.shape != () or t_rep.shape != (len(x_rep),):
            raise ValueError(f"statistic {name!r} must return one scalar per x, got shape {t_obs.shape}")
        observed.append(float(t_obs))
        replicated.append(t_rep)
    observed, replicated = np.array(observed), np.stack(replicated, axis=1)
    p_values = (np.sum(replicated > observed, 0) + 0.5 * np.sum(replicated == observed, 0)) / len(replicated)
    check = PredictiveCheck(names, observed, replicated, p_values, np.asarray(sims.theta), dropped=int(n) - len(sims))
    flagged = check.extreme(level)
    if flagged:
        detail = ", ".join(f"{name} (p = {p:.3g})" for name, p in zip(names, p_values) if name in flagged)
        warnings.warn(f"predictive_check: x_obs is extreme among {len(replicated)} replications from the posterior in "
                      f"{detail}: the model does not reproduce that feature of the data", stacklevel=2)
    return check


__all__ = ["PredictiveCheck", "default_statistics", "predictive_check"]
