"""Rejection ABC (Pritchard et al. 1999) with regression adjustment (Beaumont et al. 2002).

Simulate the whole budget from the prior, keep the draws whose summaries lie within ε of the
observation's (ε given, or the quantile of the distances). The linear adjustment then fits, by
weighted least squares with Epanechnikov weights K(d/ε) = 1 − (d/ε)², θ's unconstrained value
u ≈ α + (s − s_obs) β on the accepted draws, and moves each to u − (s − s_obs) β: what θ would
have been had its simulation matched the observation. The nonlinear variant trains a small NPE
on the accepted pairs and conditions it on x_obs.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import jax
import numpy as np

from galton.methods.abc.base import ABCMethod, check_setting
from galton.methods.abc.distances import ABCError, discrepancy
from galton.methods.base import register
from galton.posteriors.samples import SamplesPosterior
from galton.simulate import simulate

ADJUSTMENTS = (None, "linear", "nonlinear")


def linear_adjustment(prior, theta: np.ndarray, residuals: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Beaumont's adjustment of θ ``(m, d)`` given scaled summary residuals ``(m, k)`` and kernel weights ``(m,)``."""
    m, k = residuals.shape
    keep = weights > 0
    if keep.sum() <= k + 1:
        raise ABCError(f"the linear adjustment needs more accepted draws with positive weight ({int(keep.sum())}) than summaries + 1 ({k + 1}); accept more draws")
    u = np.asarray(prior.to_unconstrained(theta), np.float64)
    design = np.concatenate([np.ones((m, 1)), residuals], axis=1)
    root = np.sqrt(weights)[:, None]
    beta, *_ = np.linalg.lstsq(design * root, u * root, rcond=None)
    return np.asarray(prior.to_constrained(u - residuals @ beta[1:]))


@register("rejection_abc")
@dataclass(frozen=True)
class RejectionABC(ABCMethod):
    """Settings of rejection ABC.

    Attributes:
        quantile: accept this fraction of the simulations nearest the observation...
        epsilon: ...or, when set, those within this distance (then ``quantile`` is unused).
        adjustment: None, ``"linear"`` (Beaumont 2002) or ``"nonlinear"`` (NPE on the accepted pairs).
        summary: None (x itself) or a JAX function of one x ``(*x_shape) -> (k,)``, e.g. a fitted
            `galton.summaries.Compressor`.
        distance: None (Euclidean on MAD-scaled summaries) or a JAX function ``(s, s_obs) -> scalar``.
        min_accepted: with ``epsilon``, when fewer draws are within it, the nearest this many are
            returned with a warning giving the distance reached.
        on_invalid: NaN/inf simulations: ``"raise"``, ``"drop"`` or ``"keep"`` (kept ones are rejected).
        chunk_size: simulations per vectorised (and stored) chunk.
    """

    quantile: float = 0.01
    epsilon: float | None = None
    adjustment: str | None = None
    summary: Any = None
    distance: Callable | None = None
    min_accepted: int = 10
    on_invalid: str = "raise"
    chunk_size: int = 10_000

    def __post_init__(self):
        self._check_common()
        if self.epsilon is None:  # with epsilon set, quantile is unused
            check_setting("quantile", self.quantile, "a number in (0, 1]", lambda v: 0 < v <= 1)
        else:
            check_setting("epsilon", self.epsilon, "a positive distance", lambda v: 0 < v < math.inf)
        if self.adjustment not in ADJUSTMENTS:
            raise ABCError(f"adjustment must be one of {ADJUSTMENTS}, got {self.adjustment!r}")
        check_setting("min_accepted", self.min_accepted, "a positive integer", lambda v: v >= 1, integer=True)
        check_setting("chunk_size", self.chunk_size, "a positive integer", lambda v: v >= 1, integer=True)

    def accept(self, d: np.ndarray) -> tuple[np.ndarray, float, str | None]:
        """Indices of the accepted simulations (nearest first), the ε used, and a warning or None."""
        order = np.argsort(d, kind="stable")
        finite = int(np.isfinite(d).sum())
        if finite == 0:
            raise ABCError("no simulation has a finite distance to the observation")
        if self.epsilon is None:
            k = min(max(1, math.ceil(self.quantile * len(d))), finite)
            return order[:k], float(d[order[k - 1]]), None
        k = int((d <= self.epsilon).sum())
        if k >= self.min_accepted:
            return order[:k], float(self.epsilon), None
        k = min(self.min_accepted, finite)
        reached = float(d[order[k - 1]])
        return order[:k], reached, (
            f"only {int((d <= self.epsilon).sum())} of {len(d)} simulations are within epsilon={self.epsilon:.4g}; "
            f"returning the nearest {k}, which reach epsilon={reached:.4g}"
        )

    def run(self, problem, x_obs, *, key, budget: int, rounds: int = 1, simulations=None, store=None, progress=True) -> Any:
        """Rejection ABC at ``x_obs``; `galton.infer` calls this for ``method="rejection_abc"``.

        Returns:
            A `SamplesPosterior` of the accepted draws (weighted by the kernel when adjusted), or,
            with ``adjustment="nonlinear"``, the NPE `FlowPosterior` conditioned on ``x_obs``.
            ``info`` holds ε, the acceptance rate and the simulation count.
        """
        self._check_run(rounds)
        key_sim, key_fit = jax.random.split(key)
        sims = simulations if simulations is not None else simulate(
            problem, budget, key=key_sim, store=store, chunk_size=min(self.chunk_size, budget), on_invalid=self.on_invalid, progress=progress
        )
        disc = discrepancy(x_obs, sims.x, summary=self.summary, distance=self.distance, problem=problem.name)
        s = disc.summaries(sims.x)
        d = disc.of_summaries(s)
        rows, eps, warning = self.accept(d)
        if warning:
            warnings.warn(warning, stacklevel=3)
        info = {
            "method": self.name, "epsilon": eps, "accepted": int(len(rows)), "simulations": int(len(sims) + sims.n_dropped),
            "acceptance_rate": len(rows) / max(len(sims), 1), "adjustment": self.adjustment,
        }
        theta, log_w = sims.theta[rows], None
        if self.adjustment == "linear":
            weights = np.clip(1.0 - (d[rows] / eps) ** 2, 0.0, None) if eps > 0 else np.ones(len(rows))
            residuals = (s[rows] - disc.s_obs) / disc.scale
            theta = linear_adjustment(problem.prior, theta, residuals, weights)
            with np.errstate(divide="ignore"):
                log_w = np.log(weights)
        elif self.adjustment == "nonlinear":
            from galton.methods.npe import NPE  # NPE's flows are only needed here

            if len(rows) < 50:
                raise ABCError(f"the nonlinear adjustment trains an NPE on the accepted draws and needs at least 50, got {len(rows)}")
            npe = NPE(hidden=32, transforms=3)
            model, history = npe.fit(sims[rows], problem.prior, key=key_fit, progress=progress)
            posterior = npe.posterior(model, problem.prior, [history]).condition(x_obs)
            posterior.info = info
            return posterior
        return SamplesPosterior(theta, problem.prior.names, log_w, x_obs=x_obs, info=info)


__all__ = ["RejectionABC", "linear_adjustment"]
