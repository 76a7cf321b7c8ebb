"""Batched solvers: many independent L-BFGS minimisations and CG solves run as one loop.

Every array carries a leading batch axis ``B`` (one row per simulation). The loops run
until every row has finished; finished rows are frozen with masks, so the work per step
is one batched function evaluation, never a Python loop over rows.

Why our own and not ``jax.vmap`` of optax's or optimistix's L-BFGS: a vmapped
``while_loop`` selects its whole carry (the L-BFGS memory, ``2 m B n`` floats) at every
step and runs every line-search branch under ``vmap``. On the noisy funnel with
101 × 10,000 latents that cost 35 ms per iteration against 0.7 ms for the batched
gradient. With arrays this large the time goes into sweeps over memory (and, on a fresh
allocation, into page faults), so the loop below keeps its state small and touches each
array as few times as it can.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

# `status` codes of `minimize`, per row
CONVERGED_GRADIENT = 0  # max |∇f| ≤ gtol
CONVERGED_AUX = 1  # the auxiliary output (MUSE: the θ-score) stopped changing
STALLED = 2  # the line search found no decrease: floating-point precision reached
MAX_ITERATIONS = 3
DIAG_RANGE = 1e3
STATUS_NAMES = {
    CONVERGED_GRADIENT: "gradient tolerance",
    CONVERGED_AUX: "score stable",
    STALLED: "line search stalled",
    MAX_ITERATIONS: "max iterations",
}


class MinimizeResult(NamedTuple):
    """Per-row outcome of `minimize`; every field has leading axis ``B``.

    Attributes:
        z: ``(B, n)`` minimisers.  value: ``(B,)``.  grad_max: ``(B,)`` max |∇f| at ``z``.
        aux: ``(B, k)`` auxiliary output of the objective at ``z``.
        gamma: ``(B,)`` the last inverse-curvature scale sᵀy / yᵀy, to warm-start a later solve.
        iterations: ``(B,)`` L-BFGS iterations taken.  evaluations: ``(B,)`` objective
        evaluations (each one value and gradient).
        status: ``(B,)`` one of the codes in `STATUS_NAMES`.
        hvps: ``(B,)`` Hessian-vector products taken (for the first step).
    """

    z: jax.Array
    value: jax.Array
    grad_max: jax.Array
    aux: jax.Array
    gamma: jax.Array
    iterations: jax.Array
    evaluations: jax.Array
    status: jax.Array
    hvps: jax.Array


def _rowdot(a, b):
    return jnp.einsum("...i,...i->...", a, b)


def _max_abs(a):
    """max |a| over the last axis, and not finite where a has a NaN: XLA:CPU's reductions over
    long rows (jax 0.10, 10,000 floats) leave NaN out of max, so it is made +inf first (fused
    into the pass that takes |a|)."""
    return jnp.max(jnp.where(jnp.isnan(a), jnp.inf, jnp.abs(a)), axis=-1)


def _two_loop(g, S, Y, rho, h0, newest, n_pairs):
    """Apply each row's L-BFGS inverse Hessian to ``g (B, n)``.

    ``S, Y (m, B, n)`` and ``rho (m, B)`` hold the curvature pairs, slot ``newest`` the
    latest; a row that stored nothing in a slot has ``rho = 0`` there and skips it.
    ``h0(q)`` applies the initial inverse Hessian.
    """
    m = rho.shape[0]

    def backward(i, carry):
        q, alphas = carry
        j = (newest - i) % m
        a = rho[j] * _rowdot(S[j], q)
        return q - a[:, None] * Y[j], alphas.at[i].set(a)

    q, alphas = jax.lax.fori_loop(0, n_pairs, backward, (g, jnp.zeros_like(rho)))
    r = h0(q)

    def forward(k, r):
        i = n_pairs - 1 - k
        j = (newest - i) % m
        b = rho[j] * _rowdot(Y[j], r)
        return r + (alphas[i] - b)[:, None] * S[j]

    return jax.lax.fori_loop(0, n_pairs, forward, r)


def minimize(
    fun: Callable,
    z0: jax.Array,
    gamma0: jax.Array,
    *,
    max_iterations,
    gtol,
    aux_tol,
    aux_gtol=jnp.inf,
    memory: int = 5,
    max_backtracks: int = 20,
    hvp: Callable | None = None,
) -> MinimizeResult:
    """Minimise ``B`` independent functions at once with L-BFGS and a backtracking line search.

    One pass of the loop evaluates ``fun`` once on every row: rows in their line search
    try a shorter step, the others take a new L-BFGS direction. Tracing ``fun`` once keeps
    the compiled program, and its compile time, small.

    Args:
        fun: ``z (B, n) -> (value (B,), grad (B, n), aux (B, k))``, row ``b`` depending on
            row ``b`` of ``z`` only.
        z0: ``(B, n)`` starting points (warm starts welcome); a row whose f is not finite
            there starts from 0 instead.
        gamma0: ``(B,)`` initial inverse-curvature scales (a previous solve's ``gamma``);
            NaN where unknown: the first step is then the minimiser along -∇f of the local
            quadratic, gᵀg / gᵀ∇²f g (with ``hvp``), else ``-g / max(1, max |g|)``.
        max_iterations: L-BFGS iterations per row at most (may be traced).
        gtol: a row has converged when ``max |grad| ≤ gtol``.
        aux_tol: ``(k,)``; a row has also converged when every ``|Δaux|`` over one iteration
            is at most ``aux_tol`` (pass negative values to switch this test off) and either
            ``max |grad| ≤ aux_gtol`` or f changed by no more than its rounding noise.
        memory: number of curvature pairs kept per row.
        max_backtracks: halvings of the step before a row is declared stalled.
        hvp: optional ``(z (B, n), v (B, n)) -> (B, n)``, each row's ∇²f v (used once per
            row of unknown scale).

    Returns:
        a `MinimizeResult`.
    """
    B, n = z0.shape
    dtype = z0.dtype
    eps = jnp.finfo(dtype).eps
    gamma0 = jnp.asarray(gamma0, dtype)

    # the start, outside the loop so that the loop's passes all do the same work
    f0, g0, aux0 = fun(z0)
    gmax0 = _max_abs(g0)  # (not finite exactly where g0 has a non-finite entry)
    bad = ~(jnp.isfinite(f0) & jnp.isfinite(gmax0))

    def from_origin():  # a warm start carried out of the support: start those rows from 0
        z = jnp.where(bad[:, None], 0, z0).astype(dtype)
        f1, g1, aux1 = fun(z)
        g = jnp.where(bad[:, None], g1, g0)
        return z, jnp.where(bad, f1, f0), g, jnp.where(bad[:, None], aux1, aux0), _max_abs(g)

    z, f, g, aux, gmax = jax.lax.cond(jnp.any(bad), from_origin, lambda: (z0, f0, g0, aux0, gmax0))
    finite = jnp.isfinite(f) & jnp.isfinite(gmax)
    g = jnp.where(finite[:, None], g, 0)
    aux = jnp.where(finite[:, None], aux, jnp.inf)  # (a row with no finite point has no aux output)
    unknown = finite & ~jnp.isfinite(gamma0)
    scale = 1 / jnp.maximum(1, gmax)
    hvps = jnp.zeros(B, jnp.int32)
    if hvp is not None:
        # along g / max |g|: the ratio is the same, and far from the optimum (|g| ~ 1e20 in a
        # latent's exponential tail) gᵀg and ∇²f g themselves overflow single precision
        unit = g / jnp.where(gmax > 0, gmax, 1)[:, None]
        Hu = jax.lax.cond(jnp.any(unknown), lambda: hvp(z, unit), lambda: jnp.zeros_like(g))
        uHu = _rowdot(unit, Hu)
        scale = jnp.where(uHu > 0, _rowdot(unit, unit) / jnp.where(uHu > 0, uHu, 1), scale)
        hvps = unknown.astype(jnp.int32)
    gamma = jnp.where(unknown, scale, jnp.where(jnp.isfinite(gamma0), gamma0, 1)).astype(dtype)
    converged = finite & (gmax <= gtol)
    state = dict(
        z=z, f=f, g=g, aux=aux, d=-gamma[:, None] * g, t=jnp.ones(B, dtype), backtracks=jnp.zeros(B, jnp.int32),
        gamma=gamma, active=finite & ~converged & (max_iterations > 0),
        status=jnp.where(converged, CONVERGED_GRADIENT, jnp.where(finite, MAX_ITERATIONS, STALLED)).astype(jnp.int32),
        iterations=jnp.zeros(B, jnp.int32), evaluations=1 + bad.astype(jnp.int32), passes=jnp.asarray(0),
    )
    max_passes = max_iterations * (max_backtracks + 1)

    # The arrays are (B, n) and the objective is often cheap, so the time goes into sweeps
    # over memory: each pass takes the few row sums it needs and updates in place.
    def trial(s):
        """One evaluation per row: a row in its line search tries its step, the others stay.

        Returns the new state (its direction ``d`` not yet renewed) and what the curvature
        memory and the next direction need of this pass."""
        active, t, d, g = s["active"], s["t"], s["d"], s["g"]
        step = t[:, None] * d
        f_t, g_t, aux_t = fun(s["z"] + step)
        y = g_t - g
        slope, dy, yy, dd = _rowdot(d, g), _rowdot(d, y), _rowdot(y, y), _rowdot(d, d)
        gmax = _max_abs(g_t)
        sy = t * dy
        # Armijo with a slack of a few ulps of |f|: near the optimum the true decrease drops
        # below the rounding noise of f, and the gradient test has to take over. A direction
        # that rounding turned uphill (slope ≥ 0) is refused and replaced by the scaled gradient.
        uphill = ~(slope < 0)
        ok = jnp.isfinite(f_t) & jnp.isfinite(gmax) & ~uphill & (f_t <= s["f"] + 1e-4 * t * slope + 8 * eps * jnp.abs(f_t))
        accepted = active & ok
        # a pair (s, y) = (t d, Δg) is kept where sᵀy > 0 keeps H⁻¹ definite
        store = accepted & (sy > eps * jnp.sqrt(t * t * dd * yy))
        # a step after which f still falls (nearly) as steeply along d was far too short for
        # the function's curvature: it says nothing of convergence. With no pair to learn from
        # (sᵀy ≤ 0, or too small) the scale would stay that of the past (a stiff one, γ ~ 1e-8,
        # makes steps that change nothing), so it grows; the line search takes back overshoots
        short = accepted & (dy < 0.1 * jnp.abs(slope))
        too_short = short & ~store
        gamma = jnp.where(store, sy / jnp.where(store, yy, 1), jnp.where(too_short, 4 * s["gamma"], s["gamma"]))

        z = s["z"] + jnp.where(accepted, t, 0)[:, None] * d
        g_new = jnp.where(accepted[:, None], g_t, g)
        f = jnp.where(accepted, f_t, s["f"])
        aux = jnp.where(accepted[:, None], aux_t, s["aux"])
        iterations = s["iterations"] + accepted

        converged_g = accepted & (gmax <= gtol)
        # a settled aux output counts once the gradient is small or f changes by rounding noise
        # only, after a step not far too short: a row crawling through a flat or non-convex
        # stretch also moves aux little, but its f still falls and its gradient is large
        at_noise_floor = (jnp.abs(f_t - s["f"]) <= 16 * eps * jnp.abs(f_t)) & ~short
        converged_aux = accepted & jnp.all(jnp.abs(aux_t - s["aux"]) <= aux_tol, axis=-1) & ((gmax <= aux_gtol) | at_noise_floor)
        out_of_iterations = accepted & (iterations >= max_iterations)
        retry = active & ~ok
        backtracks = jnp.where(retry, s["backtracks"] + 1, 0)
        stalled = retry & (backtracks > max_backtracks)
        status = jnp.where(converged_g, CONVERGED_GRADIENT, jnp.where(converged_aux, CONVERGED_AUX, jnp.where(stalled, STALLED, s["status"])))
        active = active & ~converged_g & ~converged_aux & ~out_of_iterations & ~stalled
        # rows that accepted a point (or turned uphill) take a new direction after this pass
        new_direction = accepted | (active & uphill)
        new = dict(
            s, z=z, f=f, g=g_new, aux=aux, t=jnp.where(new_direction, 1, jnp.where(retry, t / 2, t)).astype(dtype),
            backtracks=backtracks, gamma=gamma, active=active, status=status.astype(jnp.int32),
            iterations=iterations, evaluations=s["evaluations"] + s["active"], passes=s["passes"] + 1,
        )
        made = dict(step=step, y=y, store=store, sy=sy, yy=yy, step_sq=t * t * dd, gamma_before=s["gamma"],
                    g_before=g, g_t=g_t, uphill=uphill, new_direction=new_direction, too_short=too_short)
        return new, made

    def remember(m, p, gamma):
        """The curvature memory after a pass: its pair stored, the initial inverse Hessian renewed.

        All rows share one ring of slots: a row with nothing to store leaves a void pair
        (ρ = 0) there, and the ring advances when any row stores."""
        store, step, y = p["store"], p["step"], p["y"]
        slot = m["pairs"] % memory
        S = m["S"].at[slot].set(jnp.where(store[:, None], step, 0))
        Y = m["Y"].at[slot].set(jnp.where(store[:, None], y, 0))
        rho = m["rho"].at[slot].set(jnp.where(store, 1 / jnp.where(store, p["sy"], 1), 0))
        # the initial inverse Hessian: γ I, or a diagonal of per-coordinate secants s_i / y_i
        # (exact 1 / ∇²f_ii where coordinates are independent), whichever predicted this pair
        # better: |D y - s|² against |γ y - s|²
        diag = m["diag"]
        diag_error = _rowdot(diag * y - step, diag * y - step)
        gamma_before = p["gamma_before"]
        scalar_error = gamma_before**2 * p["yy"] - 2 * gamma_before * p["sy"] + p["step_sq"]
        use_diag = jnp.where(store, diag_error < scalar_error, m["use_diag"])
        bound = gamma[:, None]
        # a coordinate's secant counts only where its gradient change stands clear of rounding;
        # elsewhere (it barely moved, or rounding flipped the sign) it keeps its last value
        determined = store[:, None] & (step * y > 0) & (jnp.abs(y) > 64 * eps * (jnp.abs(p["g_t"]) + jnp.abs(p["g_before"])))
        diag = jnp.where(determined, jnp.clip(step / jnp.where(determined, y, 1), bound / DIAG_RANGE, bound * DIAG_RANGE), diag)
        diag = jnp.where(p["too_short"][:, None], 4 * diag, diag)
        return dict(S=S, Y=Y, rho=rho, pairs=m["pairs"] + jnp.any(store), diag=diag, use_diag=use_diag)

    def direction(s, m, p):
        """The next L-BFGS direction of the rows that moved (or turned uphill); the others keep theirs."""
        h0 = jnp.where(m["use_diag"][:, None], m["diag"], s["gamma"][:, None])
        r = _two_loop(s["g"], m["S"], m["Y"], m["rho"], lambda q: h0 * q, (m["pairs"] - 1) % memory, jnp.minimum(m["pairs"], memory))
        return jnp.where(p["new_direction"][:, None], -jnp.where(p["uphill"][:, None], h0 * s["g"], r), s["d"])

    def body(carry):
        s, m = carry
        s, p = trial(s)
        m = remember(m, p, s["gamma"])
        return dict(s, d=direction(s, m, p)), m

    keep = ("z", "f", "g", "aux", "gamma", "iterations", "evaluations", "status")

    def solve(s):
        # The first pass runs before the curvature memory exists: a warm start close to its
        # minimum (every MUSE iteration after the first) often converges in it, and then the
        # memory, 2 m (B, n) arrays, is never allocated and no direction is computed.
        s, p = trial(s)

        def more():
            m = dict(
                S=jnp.zeros((memory, B, n), dtype), Y=jnp.zeros((memory, B, n), dtype), rho=jnp.zeros((memory, B), dtype),
                pairs=jnp.asarray(0), diag=jnp.broadcast_to(p["gamma_before"][:, None], (B, n)), use_diag=jnp.zeros(B, bool),
            )
            m = remember(m, p, s["gamma"])
            carry = (dict(s, d=direction(s, m, p)), m)
            out, _ = jax.lax.while_loop(lambda c: jnp.any(c[0]["active"]) & (c[0]["passes"] < max_passes), body, carry)
            return {k: out[k] for k in keep}

        return jax.lax.cond(jnp.any(s["active"]) & (s["passes"] < max_passes), more, lambda: {k: s[k] for k in keep})

    s = jax.lax.cond(jnp.any(state["active"]), solve, lambda s: {k: s[k] for k in keep}, state)
    grad_max = _max_abs(s["g"])
    return MinimizeResult(s["z"], s["f"], grad_max, s["aux"], s["gamma"], s["iterations"], s["evaluations"], s["status"], hvps)


class CGResult(NamedTuple):
    """Per-system outcome of `conjugate_gradient` (leading axes as ``b``).

    Attributes: x: solutions.  iterations: operator applications.  converged: residual
    norm at most ``rtol`` times that of ``b``.  relative_residual: ``|r| / |b|``.
    """

    x: jax.Array
    iterations: jax.Array
    converged: jax.Array
    relative_residual: jax.Array


def conjugate_gradient(matvec: Callable, b: jax.Array, *, max_iterations, rtol) -> CGResult:
    """Solve ``A x = b`` for many symmetric positive-definite systems at once.

    Args:
        matvec: ``v (..., n) -> A v (..., n)``, system by system along the leading axes.
        b: ``(..., n)`` right-hand sides.
        max_iterations: at most this many operator applications (may be traced).
        rtol: stop a system when ``|r| ≤ rtol |b|``.
    """
    bb = _rowdot(b, b)
    target = (rtol**2) * bb
    x = jnp.zeros_like(b)
    state = (x, b, b, bb, jnp.zeros(bb.shape, jnp.int32), bb > target, 0)

    def cond(s):
        return jnp.any(s[5]) & (s[6] < max_iterations)

    def body(s):
        x, r, p, rr, its, active, n = s
        Ap = matvec(p)
        pAp = _rowdot(p, Ap)
        # a non-positive pAp means the MAP is not a strict maximum along p: freeze the system
        good = active & (pAp > 0)
        alpha = jnp.where(good, rr / jnp.where(good, pAp, 1), 0)
        x = x + alpha[..., None] * p
        r_new = r - alpha[..., None] * Ap
        rr_new = jnp.where(good, _rowdot(r_new, r_new), rr)
        beta = jnp.where(good, rr_new / jnp.where(good, rr, 1), 0)
        p = jnp.where(good[..., None], r_new + beta[..., None] * p, p)
        r = jnp.where(good[..., None], r_new, r)
        return x, r, p, rr_new, its + active, good & (rr_new > target), n + 1

    x, r, p, rr, its, active, _ = jax.lax.while_loop(cond, body, state)
    return CGResult(x, its, rr <= target, jnp.sqrt(rr / jnp.where(bb > 0, bb, 1)))


__all__ = ["minimize", "MinimizeResult", "conjugate_gradient", "CGResult", "STATUS_NAMES"]
