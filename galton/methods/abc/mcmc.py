"""MCMC-ABC (Marjoram et al. 2003), many chains at once, with an adaptive Gaussian kernel.

A pilot from the prior sets the summaries' scale, ε (a quantile of its distances) and the
chains' starting points (the pilot draws nearest the observation). Each step proposes
θ' ~ N(θ, Σ) for every chain, simulates all proposals in one vectorised batch, and moves a
chain when θ' is in the prior's support, its simulation lies within ε and
u < p(θ')/p(θ). Σ starts at twice the covariance of the pilot's accepted draws and, during
warm-up, is re-estimated from the chains' history with Haario's 2.38²/d scaling; warm-up
draws are discarded. A run with a store checkpoints the chains after each block of steps and
a rerun continues from there (step keys are folded from the step number, so it ends the same).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from galton.methods.abc.base import ABCMethod, check_budget, check_setting, log_prior, numpy_rng, prior_draws, simulate_batch
from galton.methods.abc.distances import discrepancy
from galton.methods.base import register
from galton.posteriors.samples import SamplesPosterior
from galton.progress import Progress
from galton.store import fingerprint_of


def _haario(history: np.ndarray, d: int) -> np.ndarray:
    """2.38²/d × the covariance of the chains' draws ``(steps, chains, d)`` (the later half)."""
    recent = history[len(history) // 2 :].reshape(-1, d)
    cov = np.atleast_2d(np.cov(recent, rowvar=False))
    return (2.38**2 / d) * cov + 1e-10 * np.eye(d) * max(float(np.trace(cov)), 1e-12)


@register("mcmc_abc")
@dataclass(frozen=True)
class MCMCABC(ABCMethod):
    """Settings of MCMC-ABC.

    Attributes:
        chains: chains run side by side (one simulation each per step).
        pilot: fraction of the budget simulated from the prior first.
        quantile: ε is this quantile of the pilot's distances, unless ``epsilon`` is set.
        epsilon: a fixed acceptance distance.
        warmup: fraction of each chain's steps that adapt Σ and are discarded.
        adapt_every: steps between re-estimates of Σ during warm-up (and between checkpoints).
        min_acceptance: below this post-warm-up acceptance rate the run warns (with the figure).
        summary, distance, on_invalid: as for `RejectionABC`.
    """

    chains: int = 64
    pilot: float = 0.1
    quantile: float = 0.01
    epsilon: float | None = None
    warmup: float = 0.5
    adapt_every: int = 50
    min_acceptance: float = 0.001
    summary: Any = None
    distance: Callable | None = None
    on_invalid: str = "raise"

    def __post_init__(self):
        self._check_common()
        check_setting("chains", self.chains, "a positive integer", lambda v: v >= 1, integer=True)
        check_setting("pilot", self.pilot, "a fraction of the budget in (0, 1)", lambda v: 0 < v < 1)
        check_setting("quantile", self.quantile, "a number in (0, 1]", lambda v: 0 < v <= 1)
        if self.epsilon is not None:
            check_setting("epsilon", self.epsilon, "a positive distance", lambda v: 0 < v < math.inf)
        check_setting("warmup", self.warmup, "a fraction in [0, 1)", lambda v: 0 <= v < 1)
        check_setting("adapt_every", self.adapt_every, "a positive integer number of steps", lambda v: v >= 1, integer=True)
        check_setting("min_acceptance", self.min_acceptance, "an acceptance rate in [0, 1)", lambda v: 0 <= v < 1)

    def run(self, problem, x_obs, *, key, budget: int, rounds: int = 1, simulations=None, store=None, progress=True) -> SamplesPosterior:
        """MCMC-ABC at ``x_obs``; `galton.infer` calls this for ``method="mcmc_abc"``.

        Returns:
            A `SamplesPosterior` of the post-warm-up draws of all chains ``(steps × chains, d)``;
            ``info`` holds ε, the acceptance rate of the moves and the simulation count.
        """
        self._check_run(rounds)
        prior, c = problem.prior, int(self.chains)
        key_pilot, key_chain = jax.random.split(key)
        n_pilot = len(simulations) if simulations is not None else max(c, int(self.pilot * budget))
        steps = (budget - n_pilot) // c if simulations is None else budget // c
        check_budget(budget, n_pilot + 2 * c, f"a pilot of {n_pilot} and two steps of {c} chains")
        pilot = simulations if simulations is not None else simulate_batch(
            problem, prior_draws(problem, n_pilot, key_pilot), key=key_pilot, store=store, name="pilot",
            chunk=min(n_pilot, 10_000), on_invalid=self.on_invalid,
        )
        disc = discrepancy(x_obs, pilot.x, summary=self.summary, distance=self.distance, problem=problem.name)
        d_pilot = disc(pilot.x)
        order = np.argsort(d_pilot, kind="stable")
        eps = float(self.epsilon) if self.epsilon is not None else float(d_pilot[order[max(1, math.ceil(self.quantile * len(order))) - 1]])
        near = order[: max(int((d_pilot <= eps).sum()), c, prior.dim + 2)]
        theta = pilot.theta[near[np.arange(c) % len(near)]].astype(np.float64)
        dist = d_pilot[near[np.arange(c) % len(near)]]
        cov = 2.0 * np.atleast_2d(np.cov(pilot.theta[near], rowvar=False)) + 1e-10 * np.eye(prior.dim)
        n_warm = int(self.warmup * steps)

        path = None if store is None else Path(store) / "chains.npz"
        stamp = fingerprint_of({"key": np.asarray(jax.random.key_data(key_chain)).tolist(), "settings": repr(self), "budget": budget, "eps": eps})
        history, moves, start = np.zeros((steps, c, prior.dim)), 0, 0
        if path is not None and path.exists():
            saved = np.load(path)
            if str(saved["stamp"]) == stamp:
                start, theta, dist, cov, moves = int(saved["step"]), saved["theta"], saved["dist"], saved["cov"], int(saved["moves"])
                history[:start] = saved["history"][:start]
        bar = Progress(steps, initial=start, desc=f"mcmc-abc on {problem.name}", unit="step", enabled=progress)
        log_p = log_prior(prior, theta, c)
        for t in range(start, steps):
            k_prop, k_sim = jax.random.split(jax.random.fold_in(key_chain, t))
            rng = numpy_rng(k_prop)
            proposal = theta + rng.standard_normal((c, prior.dim)) @ np.linalg.cholesky(cov).T
            log_p_new = log_prior(prior, proposal, c)
            inside = np.isfinite(log_p_new)
            # outside the support θ' is rejected unsimulated; simulating θ in its place keeps one shape
            sims = simulate_batch(problem, np.where(inside[:, None], proposal, theta), key=k_sim, store=None, name="", chunk=c, on_invalid="keep" if self.on_invalid == "drop" else self.on_invalid)
            d_new = disc(sims.x)
            u = rng.uniform(size=c)
            move = inside & (d_new <= eps) & (np.log(u) < log_p_new - log_p)
            theta, dist, log_p = np.where(move[:, None], proposal, theta), np.where(move, d_new, dist), np.where(move, log_p_new, log_p)
            history[t] = theta
            moves += int(move.sum()) if t >= n_warm else 0
            if t < n_warm and (t + 1) % self.adapt_every == 0:
                cov = _haario(history[: t + 1], prior.dim)
            if path is not None and ((t + 1) % self.adapt_every == 0 or t + 1 == steps):
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.npz")
                np.savez(tmp, stamp=stamp, step=t + 1, theta=theta, dist=dist, cov=cov, moves=moves, history=history[: t + 1])
                os.replace(tmp, path)
            bar.update(1, acceptance=f"{moves / max(c * (t + 1 - n_warm), 1):.3f}" if t >= n_warm else "warm-up")
        bar.close()
        kept = history[n_warm:].reshape(-1, prior.dim)
        rate = moves / max(c * (steps - n_warm), 1)
        info = {
            "method": self.name, "epsilon": eps, "chains": c, "steps": steps, "warmup": n_warm,
            "acceptance_rate": rate, "simulations": int(n_pilot + steps * c), "kernel_cov": cov.tolist(),
        }
        if rate < self.min_acceptance:
            warnings.warn(
                f"mcmc_abc: the acceptance rate {rate:.4f} after warm-up ({moves} moves in {steps - n_warm} steps of {c} chains, "
                f"epsilon={eps:.4g}) is below min_acceptance={self.min_acceptance}: the draws are mostly the chains' "
                "starting points; raise quantile or the budget", stacklevel=3)
        return SamplesPosterior(kept, prior.names, x_obs=x_obs, info=info)


__all__ = ["MCMCABC"]
