"""The root finder that steps θ towards the zero of the MUSE score (`_RootFinder`)."""

from __future__ import annotations

import numpy as np

SECANT_RANGE = 4.0  # secant steps are used while within this factor of the covariance step's length
MAX_GROWTH = 64.0  # covariance steps grow up to this many times while they fall short of the root
PRIOR_STEP = 1.0  # no θ step moves a coordinate further than this many of its prior σ (from the prior's curvature)
MAX_RETREATS = 3  # retreats towards the best point in a row before the point reached is accepted


class _RootFinder:
    """Steps θ towards the root of the MUSE score: Newton steps, secant updates, bracketing.

    The Newton matrix F ≈ −ds/dθ starts as the simulations' score covariance minus the
    prior's Hessian (J ≈ H, as muse_inference takes it) and then follows Broyden's secant
    update along the steps taken, kept while positive definite: the simulations keep their
    random numbers, so s(θ) is smooth and the secant measures its actual slope (far from the
    root J and ds/dθ can differ many times over). Covariance steps are damped by
    ``step_scale``; secant steps are full.

    Far from the root the covariance step points the right way but can be many times too
    short (where the score saturates, e.g. a variance far too large). In a coordinate whose
    new step still points the way of its last one, the root has not been passed, and its
    covariance steps double in length (up to MAX_GROWTH times); coordinate by coordinate, so
    that one that oscillates (a mean, in noisy scores) does not hold back one that crawls.
    A step that passed the root to a point further from zero (in σ units) than the last is
    taken back halfway. No step moves a coordinate by more than ``limit`` (one prior σ):
    where the score grows exponentially (a variance far too small) a Newton step can
    overshoot by hundreds of units, into θ where the simulations overflow.
    """

    def __init__(self, step_scale: float):
        self.step_scale = step_scale
        self.F = None
        self.last = None  # (θ, s) of the last evaluation
        self.best = None  # (θ, length of its covariance step in σ): the point to retreat to
        self.moved = None  # the last step taken
        self.grow = 1.0  # growth of the allowed step, per coordinate, while its steps fall short
        self.retreats = 0  # retreats in a row

    def restart_growth(self) -> None:
        """The last step overshot into a region that could not be evaluated."""
        self.moved, self.grow = None, 1.0

    def step(self, u, s_post, F_cov, limit):
        """Returns (the Newton step from u, its length in σ, the kind of step, the next θ).

        ``limit`` ``(d,)``: the largest step allowed in each coordinate of θ."""
        length = lambda step: float(np.sqrt(max(step @ F_cov @ step, 0.0)))  # in σ
        covariance = np.linalg.solve(F_cov, s_post)
        merit = length(covariance)
        newton, F, kind = covariance, F_cov, "covariance"
        short = self.moved is not None and float(self.moved @ F_cov @ covariance) > 0
        if self.moved is not None:
            # coordinate by coordinate: one whose steps keep their sign has not reached the root
            same = np.sign(self.moved) * np.sign(covariance) > 0
            self.grow = np.where(same, np.minimum(2 * self.grow, MAX_GROWTH), 1.0)
        if self.last is not None:
            du, ds = u - self.last[0], s_post - self.last[1]
            if du @ du > 0:
                F_b = self.F + np.outer(-ds - self.F @ du, du) / (du @ du)
                F_b = 0.5 * (F_b + F_b.T)
                # a secant from a far-off or curved stretch can propose wild steps: keep it
                # only while its step stays within a factor of SECANT_RANGE of the covariance step
                if np.all(np.linalg.eigvalsh(F_b) > 0):
                    secant = np.linalg.solve(F_b, s_post)
                    if 1 / SECANT_RANGE < length(secant) / max(merit, 1e-300) < SECANT_RANGE:
                        newton, F, kind = secant, F_b, "secant"
        self.F, self.last = F, (u, s_post)
        distance = length(newton)
        if not short and self.best is not None and merit > self.best[1] and self.retreats < MAX_RETREATS:
            self.moved, self.grow = None, 1.0  # (a retreat says nothing of the way to the root)
            self.retreats += 1
            return newton, distance, kind + ", retreat", self.best[0] + 0.5 * (u - self.best[0])
        # (after MAX_RETREATS in a row the point retreated to is taken as it is: the best point's
        # merit may have been too good to be true, from scores of MAPs that had not converged)
        self.retreats = 0
        self.best = (u, merit)
        step = self.step_scale * self.grow * newton if kind == "covariance" else newton
        # no step leaves the prior's bulk in one go: from a variance far too small the score
        # grows exponentially and its Newton step can overshoot by hundreds of units
        scale = float(np.min(limit / np.maximum(np.abs(step), 1e-300)))
        if scale < 1:
            step, kind = step * scale, kind + ", limited"
        self.moved = step
        return newton, distance, kind, u + step
