"""MUSE: the marginal unbiased score expansion (Millea & Seljak 2021; Millea 2022).

For a hierarchical model p(x, z | θ) p(θ), MUSE estimates θ while marginalising z using
only simulations and gradients of the joint density. At θ, with ẑ(x) = argmax_z log p(x, z | θ),

    s(θ, x)   = ∇θ log p(x, ẑ(x) | θ)                          the score at the MAP
    s_MUSE(θ) = s(θ, x_obs) − ⟨s(θ, x_i)⟩_{x_i ~ p(x | θ)} + ∇θ log p(θ)

and θ̂ solves s_MUSE(θ̂) = 0. Its covariance is

    Σ = (Hᵀ J⁻¹ H − ∇θ² log p(θ))⁻¹,  J = Cov_i[s(θ̂, x_i)],  H = d⟨s(θ̂, x(θ', ε_i))⟩/dθ' at θ' = θ̂

where the simulations x(θ', ε_i) keep their random numbers ε_i fixed. H comes from implicit
differentiation of ẑ: dẑ = (−∇z² log p)⁻¹ ∂x∇z log p · dx, solved with conjugate gradients.

How it runs fast: every iteration is one compiled call. The simulations keep their random
numbers from iteration to iteration (common random numbers), so those are drawn once per run
(`noise._split_sampler`) and only the θ-dependent part of the simulator runs again. The data
and all simulations then go through a compiled loop over chunks of rows (`kernels`); within
a chunk, simulation, batched L-BFGS (`solvers.minimize`) and, near convergence, the
implicit-differentiation H all run vectorised on arrays small enough to stay in cache. Each
MAP warm-starts from its last value carried along the last step in θ (`batch._Batch`). θ
moves by damped Newton steps that turn into secant steps once two points are known
(`root._RootFinder`); Σ comes last (`covariance`).
"""

from __future__ import annotations

import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from galton.keys import as_key
from galton.muse import solvers
from galton.muse.batch import _Batch, _check_scores, _failed_rows, _simulation_keys
from galton.muse.covariance import _covariance, _simulation_jacobians
from galton.muse.kernels import Rows, _compiled
from galton.muse.models import FlatModel, as_flat_model
from galton.muse.result import MuseError, MuseResult, _record, _record_breakdown
from galton.muse.root import PRIOR_STEP, _RootFinder
from galton.muse.settings import check_settings
from galton.problem import ProblemError

PILOT_ITERATIONS = 20  # L-BFGS iterations of the first solve, before the scores' spread is known
SUPERLINEAR_BELOW = 0.1  # secant steps shorter than this (in σ) are taken to converge superlinearly
JACOBIAN_AHEAD = 10.0  # compute H along with the MAPs once the last step was below this × theta_rtol
MAX_BREAKDOWN_RETREATS = 8  # halvings of a step that led to non-finite scores before giving up


def muse(
    problem,
    x_obs,
    *,
    theta_start=None,
    nsims: int | None = None,
    key: jax.Array | None = None,
    result: MuseResult | None = None,
    max_iterations: int = 50,
    theta_rtol: float = 1e-2,
    step_scale: float = 0.7,
    jacobian: str = "implicit",
    finite_difference_step: float = 0.1,
    map_max_iterations: int = 200,
    map_gtol: float = 1e-4,
    map_score_rtol: float = 1e-4,
    map_memory: int = 5,
    cg_max_iterations: int = 200,
    cg_rtol: float = 1e-4,
    vectorize: bool = True,
    chunk_size: int | None = None,
    check: str | None = None,
    progress: bool = True,
) -> MuseResult:
    """Estimate θ of a hierarchical model by MUSE, marginalising the latents z.

    Args:
        problem: a `galton.Program` (its ``params`` sites are θ, other unobserved sites z)
            or a `galton.muse.HierarchicalModel`. A black-box `Simulator` is refused.
        x_obs: the observation: flat ``(d_x,)`` (or a dict of observed sites) for a Program,
            the PyTree ``sample_x_z`` returns for a HierarchicalModel.
        theta_start: starting θ in the user's structure (or flat), original space. Required
            for a HierarchicalModel; for a Program it defaults to the point whose
            unconstrained image is 0 (0 for unbounded, 1 for positive, 0.5 for (0, 1)).
        nsims: simulations per iteration, also the number behind J and H: 100 by default,
            or as many as the run continued from.
        key: a ``jax.random`` key; simulation i always uses ``fold_in(key, i)``. Defaults
            to the previous run's key when continuing.
        result: a previous `MuseResult` to continue from: starts at its θ̂ with its MAPs as
            warm starts, keeps its history; with a larger ``nsims`` it adds simulations
            to J and H (the first simulations are the same ones).
        max_iterations: MUSE iterations in this call at most.
        theta_rtol: stop when the error left in θ̂ is below this many σ: the length of the
            Newton step to the root or, for secant steps shorter than 0.1 σ (where the secant
            converges superlinearly), that length times its ratio to the step before.
        step_scale: damping of the Newton step (1 is a full step).
        jacobian: ``"implicit"`` (implicit differentiation through the MAP) or
            ``"finite_difference"`` (re-solve the MAPs at θ ± step).
        finite_difference_step: the finite-difference step, in units of each parameter's σ.
        map_max_iterations, map_gtol, map_memory: L-BFGS limits: iterations, tolerance on
            ``max |∇z log p|`` and number of curvature pairs.
        map_score_rtol: a MAP also counts as converged when its θ-score moved less than this
            fraction of the scores' spread over one L-BFGS iteration and ``max |∇z log p|`` is
            below ``100 map_gtol``.
        cg_max_iterations, cg_rtol: conjugate-gradient limits for the implicit H.
        vectorize: ``False`` runs one compiled solve per simulation in a Python loop (the
            reference package's way, for comparison).
        chunk_size: simulations solved together, vectorised, in each step of the compiled
            loop over them; by default as many as keep a chunk's arrays under 768 kB, in
            chunks as even as that allows.
        check: ``"nuts"`` also runs a short NUTS over (θ, z) on the same Program and x
            (`method="nuts"`, 4 chains of 500) and stores in ``result.check`` its C2ST against
            MUSE's Gaussian and each parameter's mean shift (in NUTS's σ) and σ ratio, so a
            user sees when the Gaussian answer is off; it warns past a 0.2 σ shift or a σ
            ratio outside [0.8, 1.25].
        progress: show a progress bar.

    Returns:
        a `MuseResult`.

    Raises:
        ProblemError: the problem or the inputs are not usable by MUSE.
        MuseError: a score became NaN or inf (the message names the simulation).
    """
    check_settings(
        problem, jacobian=jacobian, check=check, nsims=nsims, chunk_size=chunk_size, max_iterations=max_iterations,
        theta_rtol=theta_rtol, step_scale=step_scale, finite_difference_step=finite_difference_step,
        map_max_iterations=map_max_iterations, map_gtol=map_gtol, map_score_rtol=map_score_rtol, map_memory=map_memory,
        cg_max_iterations=cg_max_iterations, cg_rtol=cg_rtol,
    )
    start = _start(problem, x_obs, theta_start, nsims, key, result)
    model, nsims, history = start.model, start.nsims, start.history
    keys = _simulation_keys(start.key, nsims)
    fns = _compiled(model, int(map_memory))
    batch = _Batch(fns, start.x, keys, start.Z, start.u if result is not None else None, vectorize, chunk_size, model.z_dim)

    began = time.perf_counter()
    last = _iterate(
        model, batch, start, _RootFinder(step_scale), max_iterations=max_iterations, theta_rtol=theta_rtol,
        map_max_iterations=map_max_iterations, map_score_rtol=map_score_rtol, map_gtol=map_gtol,
        tolerances=dict(gtol=map_gtol, cg_max_iterations=cg_max_iterations, cg_rtol=cg_rtol),
        want_jacobian=jacobian == "implicit" and vectorize, progress=progress,
    )
    theta_hat = last.u + last.newton
    s_sims = last.rows.score[1:]
    J = np.atleast_2d(np.cov(s_sims, rowvar=False))
    H_sims, n_evals, n_hvps = _simulation_jacobians(
        fns, batch, keys, last, J, model.names, jacobian=jacobian, vectorize=vectorize,
        finite_difference_step=finite_difference_step, map_max_iterations=map_max_iterations, map_gtol=map_gtol,
        cg_max_iterations=cg_max_iterations, cg_rtol=cg_rtol,
    )
    H = H_sims.mean(0)
    H_prior, cov = _covariance(fns, batch, model, theta_hat, J, H, last, nsims, len(history), map_gtol)
    elapsed = start.elapsed + (time.perf_counter() - began)
    _warn_about_the_run(history, nsims, last, max_iterations, theta_rtol)
    out = MuseResult(
        theta_hat, cov, model.names, model.bijection, start.x_host,
        J=J, H=H, H_prior=H_prior, theta_evaluated=np.asarray(last.u), scores=s_sims,
        z_map=np.asarray(batch.Z)[: 1 + nsims], key_data=np.asarray(jax.random.key_data(start.key)), history=history, nsims=nsims,
        converged=last.converged, time_s=elapsed, n_gradient_evaluations=start.n_evals + batch.n_evals + n_evals,
        n_hessian_vector_products=start.n_hvps + batch.n_hvps + n_hvps,
        jacobian=jacobian, problem_name=model.name, unflatten=model.unflatten_theta,
    )
    if check is not None:
        out.check = _check_with_nuts(problem, start.x_host, out, start.key, check)
    return out


def _check_with_nuts(problem, x, result: MuseResult, key, check: str) -> dict:
    """MUSE's Gaussian against a short NUTS run on the same problem (``check="nuts"``)."""
    from galton.diagnostics import compare
    from galton.methods.nuts import NUTS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exact = NUTS(num_samples=500, num_warmup=500, num_chains=4).run(problem, x, key=jax.random.fold_in(key, 7), progress=False)
    report = compare(result, exact, n=2000, key=jax.random.fold_in(key, 8), show=False)
    report.update(nuts_info=exact.info, nuts_warnings=[str(w.message) for w in caught])
    worst_shift = max(abs(p["mean_shift"]) for p in report["parameters"].values())
    ratios = [p["sigma_ratio"] for p in report["parameters"].values()]
    if worst_shift > 0.2 or min(ratios) < 0.8 or max(ratios) > 1.25:
        warnings.warn(
            f"muse: the Gaussian MUSE answer is off from NUTS on this problem (largest mean shift {worst_shift:.2f} σ, "
            f"σ ratios {min(ratios):.2f}–{max(ratios):.2f}, C2ST {report['c2st']:.3f}); see result.check", stacklevel=3)
    return report


class _Start(NamedTuple):
    """Where a run begins: from scratch, or where a previous `MuseResult` left off."""

    model: FlatModel
    x: jax.Array  # the observation, flat ``(n_x,)``, on the device
    x_host: np.ndarray  # the same in NumPy
    theta_start: Any  # as given, or the previous result's θ̂
    nsims: int
    key: jax.Array
    u: np.ndarray  # ``(d,)`` unconstrained θ of the first iteration
    history: list[dict[str, Any]]  # of the previous run, to be continued
    Z: np.ndarray | None  # ``(1 + nsims, n_z)`` MAPs to warm-start from
    score_scale: np.ndarray | None  # ``(d,)`` the spread of the simulations' scores, where known
    n_evals: int
    n_hvps: int
    elapsed: float


def _start(problem, x_obs, theta_start, nsims, key, result) -> _Start:
    """Check the problem and the inputs, and find where the run starts.

    Raises:
        ProblemError: the problem or the inputs are not usable by MUSE.
    """
    nsims = (100 if result is None else result.nsims) if nsims is None else int(nsims)
    if theta_start is None and result is not None and result._unflatten is not None:
        theta_start = result.theta
    model = as_flat_model(problem, theta_start)
    d = model.theta_dim
    if nsims <= d + 1:
        raise ProblemError(f"nsims={nsims} is too few for {d} parameters: J, their score covariance, needs nsims > d + 1")
    dtype = jnp.result_type(float)
    # (checked on the host: eager device operations cost tens of microseconds each)
    x_host = np.asarray(model.flatten_x(x_obs), dtype)
    if x_host.shape != (model.x_dim,):
        raise ProblemError(f"x_obs has {x_host.size} values; the model's observations have {model.x_dim}")
    if not np.all(np.isfinite(x_host)):
        raise ProblemError("x_obs has non-finite values")
    x = jnp.asarray(x_host)

    if result is not None:
        if list(result.names) != model.names:
            raise ProblemError(f"result has parameters {result.names}; this problem has {model.names}")
        result._check_x(x_host)
        if result.z_map.shape[1] != model.z_dim:
            raise ProblemError(f"result's MAPs have {result.z_map.shape[1]} latents; this problem has {model.z_dim}")
        key = result.key if key is None else key
        u = np.asarray(result.loc, np.float64)
        history = list(result.history)
        Z = np.asarray(result.z_map)[: 1 + nsims]
        score_scale = np.sqrt(np.diag(result.J))
        n_evals, n_hvps = result.n_gradient_evaluations, result.n_hessian_vector_products
        elapsed = result.time_s
    else:
        if key is None:
            raise ProblemError("muse needs key=jax.random.key(...) (or result= to continue a run)")
        theta0 = np.zeros(d) if theta_start is None else model.flatten_theta(theta_start)
        u = np.asarray(model.bijection.inverse(np.asarray(theta0, np.float64)), np.float64) if theta_start is not None else theta0
        if not np.all(np.isfinite(u)):
            bad = [n for n, v in zip(model.names, u) if not np.isfinite(v)]
            raise ProblemError(f"theta_start is outside the prior's support for {bad}")
        history, Z = [], None
        score_scale = None
        n_evals = n_hvps = 0
        elapsed = 0.0
    key = as_key(key, "key")
    return _Start(model, x, x_host, theta_start, nsims, key, u, history, Z, score_scale, n_evals, n_hvps, elapsed)


class _Last(NamedTuple):
    """The last iteration whose scores were finite: θ̂, J and H come from its MAPs."""

    u: np.ndarray  # ``(d,)`` unconstrained θ of its MAPs
    newton: np.ndarray  # ``(d,)`` the Newton step from u to θ̂
    rows: Rows
    has_jacobian: bool  # H came with its MAPs
    converged: bool
    distance: float  # the length of its Newton step, in σ


def _iterate(
    model, batch, start, root_finder, *, max_iterations, theta_rtol, map_max_iterations, map_score_rtol, map_gtol,
    tolerances, want_jacobian, progress,
) -> _Last:
    """MUSE iterations from ``start.u`` until the error left in θ̂ is below ``theta_rtol`` σ, or
    for ``max_iterations``; appends one entry per iteration to ``start.history``."""
    u, history, score_scale = start.u, start.history, start.score_scale
    converged, distance = False, np.inf
    u_evaluated, retreats, previous = None, 0, None
    bar = tqdm(total=max_iterations, desc=f"MUSE {model.name}", unit="it", disable=not progress)
    try:
        for i in range(max_iterations):
            t0 = time.perf_counter()
            # H comes with the MAPs when this iteration is likely the last; else one more pass later
            with_jacobian = want_jacobian and (distance < JACOBIAN_AHEAD * theta_rtol or i == max_iterations - 1)
            rows, prior, has_jacobian = _solve(
                batch, model, u, score_scale, with_jacobian, map_max_iterations, map_score_rtol, tolerances, len(history) + 1,
            )
            bad = np.flatnonzero(~np.all(np.isfinite(rows.score), axis=1))
            if bad.size and u_evaluated is not None and retreats < MAX_BREAKDOWN_RETREATS:
                # the step went where the simulations or their MAPs break down (a variance
                # overflowing, say): back halfway towards the last point that worked
                retreats += 1
                batch.undo()
                root_finder.restart_growth()
                history.append(_record_breakdown(model, u, bad, time.perf_counter() - t0))
                bar.update()
                u = u_evaluated + 0.5 * (u - u_evaluated)
                previous = None  # (the next step's ratio to one from before the retreat means nothing)
                continue
            _check_scores(rows.score, model.names, f"iteration {len(history) + 1}", rows)
            retreats = 0
            u_evaluated, last, last_has_jacobian = u, rows, has_jacobian
            s_post, newton, distance, kind, u_next = _step(root_finder, model, u, rows, prior, history, start.theta_start)
            score_scale = np.std(rows.score[1:], axis=0)
            failed = _failed_rows(rows, map_gtol)
            history.append(_record(model, u, s_post, distance, kind, rows, failed, time.perf_counter() - t0))
            bar.update()
            if progress:
                bar.set_postfix_str(
                    f"θ={', '.join(f'{v:.4g}' for v in history[-1]['theta'][:4])} step={distance:.3g}σ "
                    f"MAP its≤{rows.iterations.max()} failed={int(failed.sum())}"
                )
            # secant steps converge superlinearly: once in that regime the error left after this
            # step is about its length times its ratio to the step before
            remaining = distance
            if kind == "secant" and previous is not None and distance < SUPERLINEAR_BELOW:
                remaining = distance * min(1.0, distance / previous)
            history[-1]["remaining_sigma"] = remaining
            previous = distance
            if remaining < theta_rtol:
                converged = True
                break
            u = u_next
    finally:
        bar.close()
    return _Last(u_evaluated, newton, last, last_has_jacobian, converged, distance)


def _solve(batch, model, u, score_scale, with_jacobian, map_max_iterations, map_score_rtol, tolerances, iteration):
    """The rows at ``u``, the prior's gradient and Hessian there, and whether H came with them.

    With no spread of the scores known yet (``score_scale`` None: a run's first solve) to say
    when a score is stable, a short pilot solve finds it, and the solve goes on from there
    unless every MAP converged.
    """
    if score_scale is None:
        rows, prior = batch.run(u, min(map_max_iterations, PILOT_ITERATIONS), -np.ones(model.theta_dim), False, **tolerances)
        _check_scores(rows.score, model.names, f"iteration {iteration}", rows)
        if not np.any(rows.status > solvers.CONVERGED_AUX):
            return rows, prior, False
        score_scale = np.std(rows.score[1:], axis=0)
    rows, prior = batch.run(u, map_max_iterations, map_score_rtol * score_scale, with_jacobian, **tolerances)
    return rows, prior, with_jacobian


def _step(root_finder, model, u, rows, prior, history, theta_start):
    """The MUSE score at ``u`` and the root finder's step from there:
    ``(s_post, newton, distance, kind, u_next)`` (see `_RootFinder.step`)."""
    g_prior, h_prior = prior
    s_sims = rows.score[1:]
    s_post = rows.score[0] - s_sims.mean(0) + g_prior
    F_cov = np.atleast_2d(np.cov(s_sims, rowvar=False)) - np.atleast_2d(h_prior)
    try:
        limit = PRIOR_STEP / np.sqrt(np.maximum(-np.diag(np.atleast_2d(h_prior)), 1e-300))  # in prior σ
        newton, distance, kind, u_next = root_finder.step(u, s_post, F_cov, limit)
    except np.linalg.LinAlgError:
        raise MuseError(
            f"the simulations' scores have a singular covariance at θ = {history[-1]['theta'] if history else theta_start} "
            f"(variances {np.diag(F_cov).tolist()} for {model.names}): the data do not inform some parameter there, "
            f"or nsims={len(s_sims)} is too few"
        ) from None
    return s_post, newton, distance, kind, u_next


def _warn_about_the_run(history, nsims, last, max_iterations, theta_rtol) -> None:
    """Warn (to muse's caller) of retreats from non-finite scores, unconverged MAPs, and no convergence."""
    # failures in the first iteration only slow the next one down, which re-solves from there;
    # failures later, and above all in the last (whose MAPs give θ̂, J and H), matter
    failures = [
        (i + 1, len(h["map_failed"])) for i, h in enumerate(history)
        if h["map_failed"] and h["score"] is not None and (i > 0 or i == len(history) - 1)
    ]
    breakdowns = [i + 1 for i, h in enumerate(history) if h["score"] is None]
    if breakdowns:
        warnings.warn(
            f"MUSE: at iterations {breakdowns[:8]} a step led to θ where simulations or their MAPs gave non-finite "
            "scores, and was taken back halfway; a theta_start nearer the data, or a smaller step_scale, avoids them",
            RuntimeWarning, stacklevel=3,
        )
    if failures:
        warnings.warn(
            "MUSE: MAP solves did not converge in iterations "
            + ", ".join(f"{i} ({n} of {nsims + 1})" for i, n in failures[:8])
            + "; raise map_max_iterations or loosen map_gtol (history[i]['map_failed'] lists the rows, 0 = data)",
            RuntimeWarning, stacklevel=3,
        )
    if not last.converged:
        warnings.warn(
            f"MUSE did not converge in {max_iterations} iterations (last step {last.distance:.3g}σ > theta_rtol={theta_rtol}); "
            "continue with muse(..., result=result)",
            RuntimeWarning, stacklevel=3,
        )


__all__ = ["muse"]
