"""The rows MUSE solves at every iteration (the data, then the simulations) and what their solves say.

`_Batch` holds the rows from iteration to iteration: the simulations' keys (`_simulation_keys`)
and cached random numbers, the MAPs and L-BFGS curvature scales to warm-start from, carried
on along the last step in θ (`_extrapolation`), and the counts of evaluations. The rows go
through the compiled iteration in chunks (`_default_chunk_size`). `_check_scores` and
`_failed_rows` read the rows of a solve.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from galton.muse import solvers
from galton.muse.kernels import LOOSE_GTOL_FACTOR, Rows
from galton.muse.result import MuseError

# rows per compiled chunk: at most about this many bytes per (chunk, n) array, and as few padding
# rows as that allows. Paired runs on the funnel (2-core CPU, 101 rows): 17 rows (680 kB) 14 %
# faster than 6 at 10,000 latents, one chunk of 101 21 % faster than 64 at 1,000, and 2 to 6
# rows equal at 30,000; 34 rows at 10,000 and 17 at 30,000 (2 MB: arrays stream from memory)
# 1.4 to 1.6 times slower
CHUNK_BYTES = 3 << 18


@functools.partial(jax.jit, static_argnums=1)
def _simulation_keys(key, n):
    """``fold_in(key, i)`` for i < n: ``(n,)`` keys (compiled: eagerly it costs milliseconds)."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))


@functools.partial(jax.jit, static_argnums=1)
def _padded_keys(keys, padded):
    """The keys of the rows: the data's (borrowed from simulation 0), the simulations', padding."""
    return jnp.concatenate([keys[:1], keys, jnp.broadcast_to(keys[:1], (padded - 1 - keys.shape[0],))])


def _default_chunk_size(rows: int, row_bytes: int) -> int:
    """Rows per chunk: at most `CHUNK_BYTES` per (chunk, n) array (at least 2 rows), and the
    chunks as even as they can be, so that the last one is padded as little as possible."""
    most = max(2, CHUNK_BYTES // row_bytes)
    return -(-rows // -(-rows // most))


def _extrapolation(u, u_of_Z, u_of_Z_previous) -> float:
    """How far to carry the MAPs on along their last move: the new step projected on the last.

    The MAPs Z were found at θ = u_of_Z and Z_previous at u_of_Z_previous; at u the solves
    start from Z + c (Z - Z_previous), linear in θ along the last step.
    """
    if u_of_Z is None or u_of_Z_previous is None:
        return 0.0
    last = u_of_Z - u_of_Z_previous
    norm = float(last @ last)
    return 0.0 if norm == 0 else float(np.clip((u - u_of_Z) @ last / norm, 0.0, 2.0))


class _Batch:
    """The rows MUSE solves at every iteration, with their warm starts between iterations.

    Row 0 is the data, rows 1..nsims the simulations (keys fixed), and padding rows fill the
    last chunk. Holds the MAPs Z of the last solve and those before (for extrapolation), the
    L-BFGS curvature scales, and counts the objective evaluations.
    """

    def __init__(self, fns, x, keys, Z, u_of_Z, vectorize, chunk_size, z_dim):
        self.fns, self.x, self.vectorize = fns, x, vectorize
        self.dtype = x.dtype
        self.rows = 1 + keys.shape[0]
        if chunk_size is None:
            chunk_size = _default_chunk_size(self.rows, self.dtype.itemsize * max(z_dim, x.shape[0]))
        self.chunk_size = int(min(chunk_size, self.rows)) if vectorize else 1
        padded = -(-self.rows // self.chunk_size) * self.chunk_size
        # the data row simulates too (with a borrowed key) and is then given x_obs
        self.keys = _padded_keys(keys, padded)
        self.noise = fns.noise(self.keys) if vectorize else self.keys
        self.is_data = np.arange(padded) == 0
        self.Z = jnp.zeros((padded, z_dim), self.dtype)
        if Z is not None:
            self.Z = self.Z.at[: len(Z)].set(jnp.asarray(Z, self.dtype))
        self.Z_previous = jnp.zeros_like(self.Z)
        self.u_of_Z, self.u_of_Z_previous = u_of_Z, None
        self.gamma = np.full(padded, np.nan, self.dtype)  # unknown: the first solve finds them
        self.n_evals = self.n_hvps = 0

    def run(self, u, max_iterations, score_tol, with_jacobian, *, gtol, cg_max_iterations, cg_rtol) -> tuple[Rows, tuple]:
        """Solve every row at unconstrained θ ``u``; returns `Rows` of the data and simulations
        and the prior's gradient ``(d,)`` and Hessian ``(d, d)`` at ``u``, as NumPy."""
        extrapolate = _extrapolation(u, self.u_of_Z, self.u_of_Z_previous)
        gamma = self.gamma
        if self.u_of_Z is not None and self.u_of_Z_previous is None and np.any(np.asarray(u) != np.asarray(self.u_of_Z)):
            # the first move of θ, no trend yet to carry the MAPs along: their curvature scales
            # belong to the first θ, so the first steps measure theirs afresh (gᵀg / gᵀ∇²f g)
            gamma = np.full(self.Z.shape[0], np.nan, self.dtype)
        # (NumPy values: the compiled call takes them as they are, where jnp.asarray would
        # dispatch one eager operation each)
        settings = (
            np.int32(max_iterations), np.asarray(gtol, self.dtype), np.asarray(score_tol, self.dtype),
            np.bool_(with_jacobian), np.int32(cg_max_iterations), np.asarray(cg_rtol, self.dtype),
        )
        iterate = self.fns.iteration if self.vectorize else self.fns.iteration_loop
        u_host = np.asarray(u, self.dtype)
        out = iterate(
            u_host, self.x, self.noise, self.is_data, self.Z, self.Z_previous, gamma,
            np.asarray(extrapolate, self.dtype), settings, chunk_size=self.chunk_size,
        )
        self._before = (self.gamma, self.u_of_Z)
        self.Z_previous, self.u_of_Z_previous = self.Z, self.u_of_Z  # (the old Z_previous was donated)
        self.Z, self.gamma, self.u_of_Z = out.z, out.gamma, u
        # one transfer of everything but the MAPs, which stay on the device for the next solve
        # (and the prior's terms with it: a transfer of their own waits a round trip)
        host, prior = jax.device_get((out._replace(z=None), self.fns.prior_terms(u_host)))
        rows = Rows(*(None if a is None else np.asarray(a)[: self.rows] for a in host))
        self.n_evals += int(rows.evaluations.sum())
        self.n_hvps += int(rows.hvps.sum())
        prior = tuple(np.asarray(a, np.float64) for a in prior)
        return rows._replace(score=rows.score.astype(np.float64), H=rows.H.astype(np.float64)), prior

    def jacobian(self, cg_max_iterations, cg_rtol):
        """H of every simulation at the MAPs of the last solve (its θ), without solving again:
        ``(nsims, d, d)``, CG iterations and residuals ``(nsims, d)``, as NumPy."""
        rows, _ = self.run(self.u_of_Z, 0, np.zeros_like(self.u_of_Z), True, gtol=0.0, cg_max_iterations=cg_max_iterations, cg_rtol=cg_rtol)
        return rows.H[1:], rows.cg_iterations[1:], rows.cg_residual[1:]

    def undo(self) -> None:
        """Forget the last solve (its MAPs broke down): warm starts return to the MAPs before it."""
        self.gamma, self.u_of_Z = self._before
        self.Z, self.Z_previous, self.u_of_Z_previous = self.Z_previous, jnp.copy(self.Z_previous), None


def _check_scores(scores: np.ndarray, names: list[str], what: str, rows: Rows | None = None) -> None:
    """Raise `MuseError` naming the rows (0 = the data) whose scores are not finite.

    With ``rows`` (the solve those scores came from, row for row) the message also says how
    each of the first few MAP solves ended: an unconverged MAP is the usual cause.
    """
    bad = np.flatnonzero(~np.all(np.isfinite(scores), axis=1))
    if bad.size == 0:
        return
    label = lambda i: "the data" if i == 0 else f"simulation {i - 1}"
    detail = ""
    if rows is not None:
        ends = [
            f"{label(i)}: {solvers.STATUS_NAMES.get(int(rows.status[i]), '?')}, max |∇z log p| = {float(rows.grad_max[i]):.3g}"
            for i in bad[:3]
        ]
        detail = (
            f". Their MAP solves ended with {'; '.join(ends)}: a MAP far from converged (large |∇z log p|) "
            "is the likely cause; raise map_max_iterations, reparametrise the latents, or start nearer"
        )
    raise MuseError(
        f"non-finite θ-score during {what} for {', '.join(label(i) for i in bad[:10])}"
        f"{f' and {bad.size - 10} more' if bad.size > 10 else ''} (parameters {names}); the simulation or "
        f"its MAP produced NaN or inf: check the simulator at this θ, or start from a different theta_start{detail}"
    )


def _failed_rows(result, gtol: float) -> np.ndarray:
    status = np.asarray(result.status)
    gmax = np.asarray(result.grad_max)
    # a stall with a gradient near the tolerance is rounding noise; far from it, a failure
    return (status == solvers.MAX_ITERATIONS) | ((status == solvers.STALLED) & (gmax > LOOSE_GTOL_FACTOR * gtol))
