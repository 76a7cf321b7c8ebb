"""Fisher information of a `Program` at θ, from its joint score (Brehmer et al. 2020).

    I(θ) = E[∇θ log p(x|θ) ∇θ log p(x|θ)ᵀ]

- ``"truth"``: E[t tᵀ] over the joint score t(x, z|θ) of simulations at θ: the information of
  (x, z) together ("parton level" in madminer's words), an upper bound on that of x alone.
- ``"sally"``: E[t̂ t̂ᵀ] with t̂(x) a SALLY score regressor (`galton.summaries.fit(...,
  loss="sally")`) trained at this θ: the information of x, as t̂(x) → E[t | x] = ∇θ log p(x|θ).
- ``"chains"``: the information of x alone without training anything: each simulation's score
  E[t | x, θ] = ∇θ log p(x|θ) estimated twice, by the mean of t over each half of a NUTS chain
  on z | x, θ started at its own z (`galton.latent_chains.chain_labels`), and
  I = E[(s₁ s₂ᵀ + s₂ s₁ᵀ) / 2]. The halves' errors are nearly independent given x, so their
  product is not inflated by the chains' noise, as E[s̄ s̄ᵀ] of one mean would be. Continuous
  latents only; ``latent_steps`` transitions per chain.
- ``"histogram"``: the information in a histogram of a scalar observable h(x),
  Σ_b ∂p_b ∂p_bᵀ / p_b, with the bin probabilities' gradients ∂p_b = E[1_b(h(x)) t] taken from
  the joint score (no finite differences, no simulations at other θ).

`project` keeps a subset of parameters (the others known); `profile` keeps a subset with the
others unknown (the Schur complement).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np

from galton.checks import check_count
from galton.keys import as_key
from galton.latent_chains import chain_labels, check_continuous_latents
from galton.prior import check_point
from galton.problem import ProblemError, Program
from galton.simulate import simulate

METHODS = ("truth", "sally", "chains", "histogram")


def fisher_information(
    program: Program,
    theta,
    *,
    key: jax.Array,
    method: str = "truth",
    n: int = 10_000,
    estimator: Callable | None = None,
    observable: Callable | None = None,
    bins: int = 20,
    latent_steps: int = 100,
    progress: bool = False,
) -> np.ndarray:
    """The Fisher information matrix ``(d, d)`` at θ ``(d,)``, from ``n`` simulations at θ.

    Args:
        program: a `Program`.
        theta: ``(d,)`` parameters inside the prior's support.
        key: a ``jax.random`` key.
        method: ``"truth"``, ``"sally"``, ``"chains"`` or ``"histogram"`` (see the module).
        estimator: for ``"sally"``, the score regressor x ``(*x_shape)`` -> ``(d,)`` (a `Compressor`).
        observable: for ``"histogram"``, h: one x -> a scalar; x itself when x has one value.
        bins: histogram bins, at quantiles of h over the simulations (a discrete h gets one bin per value when it has fewer).
        latent_steps: for ``"chains"``, NUTS transitions per simulation (at least 2).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(program, Program):
        raise ProblemError(f"fisher_information needs a Program (its joint score), got {type(program).__name__}")
    theta = check_point(program.prior, theta).astype(np.float32)
    n = check_count(n, "n", minimum=2, what="simulations")
    for name, fn in (("estimator", estimator), ("observable", observable)):
        if fn is not None and not callable(fn):
            raise ValueError(f"{name} must be a function of one x, got {type(fn).__name__}")
    if method == "histogram" and (isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2):
        raise ValueError(f"bins must be an integer of at least 2 (one bin holds every x at every θ: no information), got {bins!r}")
    if method == "chains":
        check_continuous_latents(program)
        check_count(latent_steps, "latent_steps", minimum=2)
    key = as_key(key)
    chains = method == "chains"  # the chains take each score themselves, from the latents
    sims = simulate(program, key=key, theta=np.tile(theta, (int(n), 1)), augment=() if chains else "score", keep_latents=chains,
                    progress=progress)
    if chains:
        halves, _, _ = chain_labels(program, sims.x, sims.extras["z"], sims.theta, None, key=jax.random.fold_in(key, 1),
                                    steps=int(latent_steps), split=True, progress=progress)
        first, second = np.asarray(halves[:, 0], np.float64), np.asarray(halves[:, 1], np.float64)
        cross = first.T @ second / len(first)
        return (cross + cross.T) / 2
    t = np.asarray(sims.extras["score"], np.float64)
    if method == "truth":
        return t.T @ t / len(t)
    if method == "sally":
        if estimator is None:
            raise ValueError("method='sally' needs estimator=, a score regressor fitted with galton.summaries.fit(..., loss='sally')")
        t_hat = np.asarray(jax.vmap(estimator)(jax.numpy.asarray(sims.x)), np.float64)
        if t_hat.shape != t.shape:
            raise ProblemError(f"the estimator returns {t_hat.shape[1:]} per x; a score has {t.shape[1:]} (one value per parameter)")
        return t_hat.T @ t_hat / len(t_hat)
    if observable is None:
        if int(np.prod(sims.x.shape[1:])) != 1:
            raise ValueError(f"x has shape {sims.x.shape[1:]}: give observable=, a function of one x returning a scalar")
        h = sims.x.reshape(-1)
    else:
        h = np.asarray(jax.vmap(observable)(jax.numpy.asarray(sims.x)))
        if h.size != len(t):
            raise ProblemError(f"the observable returns shape {h.shape[1:]} per x; a histogram needs one number per simulation")
        h = h.reshape(-1)
    return _histogram_information(h, t, int(bins))


def _histogram_information(h: np.ndarray, t: np.ndarray, bins: int) -> np.ndarray:
    values = np.unique(h)
    if len(values) <= bins:
        index = np.searchsorted(values, h)
        n_bins = len(values)
    else:
        edges = np.quantile(h, np.linspace(0, 1, bins + 1)[1:-1])
        index = np.searchsorted(edges, h)
        n_bins = bins
    info = np.zeros((t.shape[1], t.shape[1]))
    for b in range(n_bins):
        in_bin = index == b
        p = in_bin.mean()
        if p == 0:
            continue
        grad = (t * in_bin[:, None]).mean(0)  # ∂p_b = E[1_b t]
        info += np.outer(grad, grad) / p
    return info


def project(info: np.ndarray, keep: Sequence[int]) -> np.ndarray:
    """The information on the parameters ``keep`` when the others are known: the submatrix."""
    info = np.asarray(info)
    keep = check_keep(keep, info.shape[0])
    return info[np.ix_(keep, keep)]


def profile(info: np.ndarray, keep: Sequence[int]) -> np.ndarray:
    """The information on ``keep`` with the others unknown (profiled): I_kk − I_ko I_oo⁻¹ I_ok."""
    info = np.asarray(info)
    keep = check_keep(keep, info.shape[0])
    other = [i for i in range(info.shape[0]) if i not in keep]
    if not other:
        return info[np.ix_(keep, keep)]
    try:
        solved = np.linalg.solve(info[np.ix_(other, other)], info[np.ix_(other, keep)])
    except np.linalg.LinAlgError:
        raise ValueError(f"the information on the profiled parameters {other} is singular: some combination of them is "
                         "not measured at all, so it cannot be profiled; keep fewer of them unknown (project)") from None
    return info[np.ix_(keep, keep)] - info[np.ix_(keep, other)] @ solved


def check_keep(keep, d: int) -> list[int]:
    """``keep`` as a list of distinct parameter indices in ``0..d-1``; else a ValueError naming it."""
    if isinstance(keep, (str, int, np.integer)) or not isinstance(keep, (Sequence, np.ndarray)):
        raise ValueError(f"keep must be a sequence of parameter indices such as [0] or [0, 2], got {keep!r}")
    keep = list(keep)
    if not keep:
        raise ValueError("keep is empty: name at least one parameter index")
    if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) for k in keep):
        raise ValueError(f"keep must hold integer parameter indices, got {keep!r}")
    outside = [int(k) for k in keep if not 0 <= k < d]
    if outside:
        raise ValueError(f"keep has indices {outside} outside 0..{d - 1} (there are {d} parameters)")
    if len(set(keep)) != len(keep):
        raise ValueError(f"keep repeats an index: {keep!r}")
    return [int(k) for k in keep]


__all__ = ["fisher_information", "project", "profile", "METHODS"]
