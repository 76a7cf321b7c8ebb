"""θ̂'s covariance once the iterations are done: Σ = (Hᵀ J⁻¹ H − ∇θ² log p(θ̂))⁻¹.

H is the mean over the simulations of dŝ/dθ' with their random numbers held fixed: by
implicit differentiation through the MAPs (from the last iteration's compiled call when it
came along, else one more pass over the last MAPs) or by central finite differences that
solve the MAPs again at θ ± a step.
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np

from galton.muse.batch import _check_scores, _failed_rows
from galton.muse.result import MuseError


def _simulation_jacobians(
    fns, batch, keys, last, J, names, *, jacobian, vectorize, finite_difference_step, map_max_iterations, map_gtol,
    cg_max_iterations, cg_rtol,
):
    """Each simulation's H at the last MAPs' θ, ``(nsims, d, d)`` float64, and the gradient
    evaluations and Hessian-vector products that took beyond the iterations' own."""
    nsims, d = keys.shape[0], J.shape[0]
    u_eval = np.asarray(last.u, batch.dtype)
    n_evals = n_hvps = 0
    if jacobian == "implicit":
        if not vectorize:
            H_sims, cg_its, cg_residual = (np.asarray(a) for a in fns.implicit_jacobian_loop(u_eval, keys, batch.Z[1 : 1 + nsims], cg_max_iterations, cg_rtol))
        elif last.has_jacobian:
            H_sims, cg_its, cg_residual = last.rows.H[1:], last.rows.cg_iterations[1:], last.rows.cg_residual[1:]
        else:  # H did not come with the last MAPs: from them, at the same θ
            H_sims, cg_its, cg_residual = batch.jacobian(cg_max_iterations, cg_rtol)
        n_hvps += int(cg_its.sum()) + 2 * nsims * d  # CG products, plus the two jvps per direction
        unsolved = np.flatnonzero(~(cg_residual <= cg_rtol).all(axis=1))
        if unsolved.size:
            warnings.warn(
                f"MUSE: conjugate gradients for H reached a relative residual of {cg_residual.max():.2g} > cg_rtol={cg_rtol} "
                f"for {unsolved.size} of {nsims} simulations (first: {unsolved[:5].tolist()}); raise cg_max_iterations "
                "or check that the MAPs are maxima",
                RuntimeWarning, stacklevel=3,
            )
    else:
        steps = finite_difference_step / np.sqrt(np.diag(J))
        H_sims, fd_out = fns.finite_difference_jacobian(
            u_eval, keys, batch.Z[1 : 1 + nsims], batch.gamma[1 : 1 + nsims], jnp.asarray(steps, batch.dtype),
            map_max_iterations, map_gtol, -jnp.ones(d, batch.dtype),
        )
        n_evals += int(np.asarray(fd_out.evaluations).sum())
        if _failed_rows(fd_out, map_gtol).any():
            warnings.warn("MUSE: some MAP solves for the finite-difference H did not converge", RuntimeWarning, stacklevel=3)
    H_sims = np.asarray(H_sims, np.float64)
    _check_scores(np.concatenate([np.zeros((1, d * d)), H_sims.reshape(nsims, -1)]), names, "the computation of H", last.rows)
    return H_sims, n_evals, n_hvps


def _covariance(fns, batch, model, theta_hat, J, H, last, nsims, iterations, map_gtol):
    """``(H_prior, Σ)``: H_prior = −∇² log p(θ̂) and Σ = (Hᵀ J⁻¹ H + H_prior)⁻¹, checked finite."""
    H_prior = -np.atleast_2d(np.asarray(fns.prior_terms(np.asarray(theta_hat, batch.dtype))[1], np.float64))
    try:
        cov = np.linalg.inv(H.T @ np.linalg.solve(J, H) + H_prior)
    except np.linalg.LinAlgError:
        flat = [n for n, v in zip(model.names, np.diag(J)) if not v > 0]
        raise MuseError(
            f"J, the covariance of the simulations' scores, is singular (zero variance for {flat or 'a combination of'} "
            f"{'' if flat else model.names}): the data do not inform some parameter, or nsims={nsims} is too few"
        ) from None
    cov = 0.5 * (cov + cov.T)
    if not (np.all(np.isfinite(cov)) and np.all(np.isfinite(theta_hat))):
        state = "converged" if last.converged else f"did not converge in {iterations} iterations"
        raise MuseError(
            f"MUSE {state} and its estimate is not finite (θ̂ = {theta_hat.tolist()}, diagonal of J {np.diag(J).tolist()}, "
            f"of H {np.diag(H).tolist()}); the MAP solves at the last θ "
            f"{'failed for ' + str(int(n_failed)) + ' rows' if (n_failed := _failed_rows(last.rows, map_gtol).sum()) else 'converged'}: "
            "start nearer the data (theta_start) or with a smaller step_scale"
        )
    return H_prior, cov
