"""The compiled functions MUSE runs for one model, cached per model (`_compiled`).

One call of ``iteration`` is one MUSE iteration: every row (the data, then the simulations)
simulated from its cached random numbers (`noise._split_sampler`), its MAP solved by batched
L-BFGS (`solvers.minimize`) and, when asked, its H by implicit differentiation, in a compiled
loop over chunks of rows. Its output, row by row, is `Rows`. Beside it: H at given MAPs
(implicit or by finite differences), the prior's gradient and Hessian, and the reference
package's one-row-at-a-time loop for comparison.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from galton.muse import solvers
from galton.muse.models import FlatModel
from galton.muse.noise import _split_sampler

# a MAP whose θ-score has settled counts as converged once max |∇z| ≤ this × map_gtol; so does one
# whose line search stalls (float rounding) there
LOOSE_GTOL_FACTOR = 100.0


class Rows(NamedTuple):
    """One MUSE iteration, row by row (row 0 the data, then the simulations, then padding).

    Attributes: z ``(B, n_z)`` MAPs; score ``(B, d)`` ∇θ log p(x, ẑ | θ); gamma ``(B,)``;
    iterations, evaluations, status ``(B,)`` of the L-BFGS solves; grad_max ``(B,)``;
    H ``(B, d, d)`` dŝ/dθ' (zeros unless asked for); cg_iterations, cg_residual ``(B, d)``;
    hvps ``(B,)`` Hessian-vector products of the solves (first steps).
    """

    z: jax.Array
    score: jax.Array
    gamma: jax.Array
    iterations: jax.Array
    evaluations: jax.Array
    status: jax.Array
    grad_max: jax.Array
    H: jax.Array
    cg_iterations: jax.Array
    cg_residual: jax.Array
    hvps: jax.Array


@functools.lru_cache(maxsize=32)
def _compiled(model: FlatModel, memory: int) -> SimpleNamespace:
    """The jitted functions MUSE runs for ``model``; cached so repeated runs skip compilation."""

    def objective(x, z, u):
        # -log p and its z-gradient for the optimiser, the θ-score as auxiliary output
        value, (grad_z, score) = jax.value_and_grad(model.log_joint, argnums=(1, 2))(x, z, u)
        return -value, -grad_z, score

    def hvp(x, z, u, v):
        # (−∇z² log p) v: the Hessian the MAP makes positive definite
        return jax.jvp(lambda z: -jax.grad(model.log_joint, 1)(x, z, u), (z,), (v,))[1]

    def lbfgs(u, X, Z0, gamma0, max_iterations, gtol, score_tol):
        fun = lambda Z: jax.vmap(objective, (0, 0, None))(X, Z, u)
        hvps = lambda Z, V: jax.vmap(hvp, (0, 0, None, 0))(X, Z, u, V)
        return solvers.minimize(
            fun, Z0, gamma0, max_iterations=max_iterations, gtol=gtol, aux_tol=score_tol,
            aux_gtol=LOOSE_GTOL_FACTOR * gtol, memory=memory, hvp=hvps,
        )

    def solve(u, X, Z0, gamma0, max_iterations, gtol, score_tol):
        """The MAPs of the rows of X from Z0, by `lbfgs`; with ``max_iterations = 0``, Z0 as it is.

        A line search that stalled far from its optimum began where f is finite but the start
        is useless (a warm start carried into a latent's exponential tail, |∇z| ~ 1e20, where
        every step overflows): those rows solve again from the origin, curvature scale unknown.
        (The attempts are a loop so that the solver is compiled once.)
        """
        B, d = Z0.shape[0], u.shape[0]
        kept = solvers.MinimizeResult(
            Z0, jnp.zeros(B, Z0.dtype), jnp.zeros(B, Z0.dtype), jnp.zeros((B, d), u.dtype), gamma0,
            jnp.zeros(B, jnp.int32), jnp.zeros(B, jnp.int32), jnp.full(B, solvers.CONVERGED_GRADIENT, jnp.int32),
            jnp.zeros(B, jnp.int32),
        )
        lost = lambda out: (out.status == solvers.STALLED) & (out.grad_max > LOOSE_GTOL_FACTOR * gtol)

        def attempt(carry):
            out, k = carry
            again = lost(out) & (k > 0)  # (on the first attempt out is `kept`: Z0 and gamma0)
            fresh = lbfgs(
                u, X, jnp.where(again[:, None], 0, out.z), jnp.where(again, jnp.nan, out.gamma),
                max_iterations, gtol, score_tol,
            )
            take = again | (k == 0)
            merged = jax.tree_util.tree_map(lambda new, old: jnp.where(take.reshape(-1, *(1,) * (new.ndim - 1)), new, old), fresh, out)
            return merged._replace(evaluations=out.evaluations + fresh.evaluations, hvps=out.hvps + fresh.hvps), k + 1

        more = lambda carry: (max_iterations > 0) & ((carry[1] == 0) | ((carry[1] < 2) & jnp.any(lost(carry[0]))))
        return jax.lax.while_loop(more, attempt, (kept, jnp.asarray(0)))[0]

    def simulate_x(keys, u):
        return jax.vmap(lambda k: model.sample(k, u)[0])(keys)

    noise_of, x_from_noise = _split_sampler(model)

    def simulate_with_tangents(noise, u):
        """x ``(n_x,)`` and dx/dθ' along each axis ``(d, n_x)``, the random numbers held fixed."""
        x_of = lambda u: x_from_noise(noise, u)
        return jax.vmap(lambda e: jax.jvp(x_of, (u,), (e,)), out_axes=(None, 0))(jnp.eye(u.shape[0], dtype=u.dtype))

    @jax.jit
    def noise(keys):
        """The random numbers of each simulation, drawn once per run: ``keys (B,)`` -> arrays ``(B, ...)``."""
        return jax.vmap(noise_of)(keys)

    def implicit_rows(u, X, dX, Z, cg_max_iterations, cg_rtol):
        """dŝ/dθ' ``(c, d, d)`` of each row at its MAP, by implicit differentiation.

        dẑ solves (−∇z² log p) dẑ = ∂x∇z log p · dx (CG with Hessian-vector products), then
        dŝ = ∂x∇θ log p · dx + ∂z∇θ log p · dẑ. Returns also CG iterations and residuals ``(c, d)``.
        """
        c, d = dX.shape[:2]
        # one vmapped axis over (row, direction) pairs: a size-1 direction axis between rows
        # and latents (d = 1) makes XLA:CPU's reductions several times slower
        pairs = lambda A: jnp.broadcast_to(A[:, None], (c, d, *A.shape[1:])).reshape(c * d, *A.shape[1:])
        Xp, Zp, dXp = pairs(X), pairs(Z), dX.reshape(c * d, *dX.shape[2:])
        grad_z = lambda x, z: jax.grad(model.log_joint, 1)(x, z, u)
        rhs = jax.vmap(lambda x, z, dx: jax.jvp(lambda x: grad_z(x, z), (x,), (dx,))[1])(Xp, Zp, dXp)
        matvec = lambda V: jax.vmap(lambda x, z, v: hvp(x, z, u, v))(Xp, Zp, V)
        cg = solvers.conjugate_gradient(matvec, rhs, max_iterations=cg_max_iterations, rtol=cg_rtol)
        score = lambda x, z: jax.grad(model.log_joint, 2)(x, z, u)
        dS = jax.vmap(lambda x, z, dx, dz: jax.jvp(score, (x, z), (dx, dz))[1])(Xp, Zp, dXp, cg.x).reshape(c, d, d)
        its, residual = cg.iterations.reshape(c, d), cg.relative_residual.reshape(c, d)
        return jnp.swapaxes(dS, 1, 2), its, residual  # H_i[a, b] = d s_a / d θ'_b

    def chunk(u, x_obs, extrapolate, settings, rows):
        """One chunk of rows: simulate, solve the MAPs, and (when asked) differentiate them."""
        noise, is_data, Z, Z_previous, gamma0 = rows
        max_iterations, gtol, score_tol, with_jacobian, cg_max_iterations, cg_rtol = settings
        X = jnp.where(is_data[:, None], x_obs, jax.vmap(x_from_noise, (0, None))(noise, u))
        c, d = Z.shape[0], u.shape[0]
        Z0 = Z + extrapolate * (Z - Z_previous)
        # (max_iterations = 0 keeps the MAPs as they are: H from the last solve's MAPs, without
        # a program of its own to compile)
        out = solve(u, X, Z0, gamma0, max_iterations, gtol, score_tol)
        skipped = (jnp.zeros((c, d, d), u.dtype), jnp.zeros((c, d), jnp.int32), jnp.zeros((c, d), u.dtype))
        # (the tangents dx/dθ' only when H is asked for)
        tangents = lambda: jax.vmap(simulate_with_tangents, (0, None))(noise, u)[1]
        jacobian = jax.lax.cond(with_jacobian, lambda: implicit_rows(u, X, tangents(), out.z, cg_max_iterations, cg_rtol), lambda: skipped)
        return Rows(out.z, out.aux, out.gamma, out.iterations, out.evaluations, out.status, out.grad_max, *jacobian, out.hvps)

    @functools.partial(jax.jit, static_argnames="chunk_size", donate_argnums=5)
    def iteration(u, x_obs, noise, is_data, Z, Z_previous, gamma0, extrapolate, settings, chunk_size):
        """Every row at u (row 0 the data, then the simulations, then padding): `Rows`.

        Rows go through in chunks of ``chunk_size`` (a compiled loop, `jax.lax.scan`), each
        chunk vectorised: the arrays of a chunk stay in cache from simulation to MAP to H,
        where whole-batch arrays would stream through memory at every step of the optimiser.
        The solves start from ``Z + extrapolate (Z - Z_previous)``, the last MAPs moved on
        along the line through the last two; ``Z_previous`` is donated, and the new MAPs are
        written over it chunk by chunk, each chunk's rows once they have been read (a stacked
        output of the loop would be a fresh array filled with zeros first: 0.3 ms a call at
        101 × 10,000).
        """
        B = Z.shape[0]
        split = lambda a: a.reshape(B // chunk_size, chunk_size, *a.shape[1:])
        rows = jax.tree_util.tree_map(split, (noise, is_data, Z, gamma0))

        def step(maps, indexed):
            i, (noise, is_data, Z, gamma0) = indexed
            Z_previous = jax.lax.dynamic_slice_in_dim(maps, i * chunk_size, chunk_size)
            out = chunk(u, x_obs, extrapolate, settings, (noise, is_data, Z, Z_previous, gamma0))
            return jax.lax.dynamic_update_slice_in_dim(maps, out.z, i * chunk_size, 0), out._replace(z=None)

        maps, out = jax.lax.scan(step, Z_previous, (jnp.arange(B // chunk_size), rows))
        return jax.tree_util.tree_map(lambda a: a.reshape(B, *a.shape[2:]), out)._replace(z=maps)

    @jax.jit
    def implicit_jacobian(u, keys, Z, cg_max_iterations, cg_rtol):
        """Per simulation dŝ/dθ' ``(nsims, d, d)`` at the MAPs Z ``(nsims, n_z)``, CG iterations and residuals."""
        X, dX = jax.vmap(simulate_with_tangents, (0, None))(jax.vmap(noise_of)(keys), u)
        return implicit_rows(u, X, dX, Z, cg_max_iterations, cg_rtol)

    @jax.jit
    def finite_difference_jacobian(u, keys, Z, gamma, steps, max_iterations, gtol, score_tol):
        """Per simulation central differences of ŝ in θ' ``(nsims, d, d)`` and the MAP results."""
        d, nsims = u.shape[0], keys.shape[0]
        shifts = jnp.concatenate([jnp.diag(steps), -jnp.diag(steps)])  # (2d, d)
        X = jax.vmap(lambda du: simulate_x(keys, u + du))(shifts).reshape(2 * d * nsims, -1)
        Z0 = jnp.broadcast_to(Z, (2 * d, *Z.shape)).reshape(2 * d * nsims, -1)
        gamma0 = jnp.broadcast_to(gamma, (2 * d, nsims)).reshape(-1)
        out = solve(u, X, Z0, gamma0, max_iterations, gtol, score_tol)
        S = out.aux.reshape(2, d, nsims, d)
        H = (S[0] - S[1]) / (2 * steps[:, None, None])  # (d_b, nsims, d_a)
        return jnp.transpose(H, (1, 2, 0)), out

    @jax.jit
    def prior_terms(u):
        return jax.grad(model.log_prior)(u), jax.hessian(model.log_prior)(u)

    # one row at a time: the reference package's way, kept for benchmarks and for problems too
    # large to batch in memory
    one_x = jax.jit(lambda key, u: model.sample(key, u)[0])
    one_solve = jax.jit(lambda u, x, z0, gamma0, it, gtol, stol: solve(u, x[None], z0[None], gamma0[None], it, gtol, stol))
    one_implicit = jax.jit(lambda u, key, z, it, rtol: implicit_jacobian(u, key[None], z[None], it, rtol))

    def iteration_loop(u, x_obs, keys, is_data, Z, Z_previous, gamma0, extrapolate, settings, chunk_size=None):
        # (keys, not cached random numbers: each simulation is drawn afresh, as muse_inference does)
        """`iteration` one row at a time, H left out (`implicit_jacobian_loop` gives it)."""
        max_iterations, gtol, score_tol = settings[:3]
        Z0 = Z + extrapolate * (Z - Z_previous)
        xs = [x_obs if data else one_x(k, u) for k, data in zip(keys, np.asarray(is_data))]
        rows = [one_solve(u, x, z0, g0, max_iterations, gtol, score_tol) for x, z0, g0 in zip(xs, Z0, gamma0)]
        out = jax.tree_util.tree_map(lambda *r: jnp.concatenate(r), *rows)
        B, d = Z.shape[0], u.shape[0]
        return Rows(out.z, out.aux, out.gamma, out.iterations, out.evaluations, out.status, out.grad_max,
                    jnp.zeros((B, d, d), u.dtype), jnp.zeros((B, d), jnp.int32), jnp.zeros((B, d), u.dtype), out.hvps)

    def implicit_jacobian_loop(u, keys, Z, cg_max_iterations, cg_rtol):
        rows = [one_implicit(u, k, z, cg_max_iterations, cg_rtol) for k, z in zip(keys, Z)]
        return tuple(jnp.concatenate(r) for r in zip(*rows))

    return SimpleNamespace(
        iteration=iteration, noise=noise, implicit_jacobian=implicit_jacobian, finite_difference_jacobian=finite_difference_jacobian,
        prior_terms=prior_terms, iteration_loop=iteration_loop, implicit_jacobian_loop=implicit_jacobian_loop,
    )
