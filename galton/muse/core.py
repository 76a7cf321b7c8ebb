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
(`_split_sampler`) and only the θ-dependent part of the simulator runs again. The data and all
simulations then go through a compiled loop over chunks of rows; within a chunk, simulation,
batched L-BFGS (`solvers.minimize`) and, near convergence, the implicit-differentiation H
all run vectorised on arrays small enough to stay in cache. Each MAP warm-starts from its last
value carried along the last step in θ. θ moves by damped Newton steps that turn into secant
steps once two points are known (`_RootFinder`).
"""

from __future__ import annotations

import functools
import time
import warnings
from types import SimpleNamespace
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from galton.muse import solvers
from galton.muse.models import FlatModel, as_flat_model
from galton.posterior import ElementwiseBijection, GaussianPosterior
from galton.problem import ProblemError

JACOBIAN_METHODS = ("implicit", "finite_difference")
PILOT_ITERATIONS = 20  # L-BFGS iterations of the first solve, before the scores' spread is known
SUPERLINEAR_BELOW = 0.1  # secant steps shorter than this (in σ) are taken to converge superlinearly
JACOBIAN_AHEAD = 10.0  # compute H along with the MAPs once the last step was below this × theta_rtol
# rows per compiled chunk: at most about this many bytes per (chunk, n) array, and as few padding
# rows as that allows. Paired runs on the funnel (2-core CPU, 101 rows): 17 rows (680 kB) 14 %
# faster than 6 at 10,000 latents, one chunk of 101 21 % faster than 64 at 1,000, and 2 to 6
# rows equal at 30,000; 34 rows at 10,000 and 17 at 30,000 (2 MB: arrays stream from memory)
# 1.4 to 1.6 times slower
CHUNK_BYTES = 3 << 18
SECANT_RANGE = 4.0  # secant steps are used while within this factor of the covariance step's length
MAX_GROWTH = 64.0  # covariance steps grow up to this many times while they fall short of the root
PRIOR_STEP = 1.0  # no θ step moves a coordinate further than this many of its prior σ (from the prior's curvature)
MAX_RETREATS = 3  # retreats towards the best point in a row before the point reached is accepted
MAX_BREAKDOWN_RETREATS = 8  # halvings of a step that led to non-finite scores before giving up
NOISE_FACTOR = 4  # cache a simulation's random numbers when they are at most this × (n_x + n_z) values
# a MAP whose θ-score has settled counts as converged once max |∇z| ≤ this × map_gtol; so does one
# whose line search stalls (float rounding) there
LOOSE_GTOL_FACTOR = 100.0


class MuseError(RuntimeError):
    """MUSE met values it cannot continue from (non-finite scores, a singular J)."""


# ---- compiled pieces, one set per model ----------------------------------------------------
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


def _split_sampler(model: FlatModel):
    """``(noise_of(key), x_from_noise(noise, u))`` with ``x_from_noise(noise_of(key), u) == sample(key, u)[0]``.

    MUSE keeps each simulation's random numbers fixed and moves θ, so the part of the
    simulator that depends on the key alone (drawing random numbers: most of its cost) can
    run once per run. Partial evaluation of the sampler's jaxpr with the key known and θ
    unknown splits it there: ``noise`` is whatever the θ-dependent part reads from the
    key-dependent part. Where that is larger than the simulation itself several times over,
    or the split fails, the key itself is the noise and the simulator runs in full.
    """
    from jax._src.interpreters import partial_eval as pe  # no public API for partial evaluation yet
    from jax.extend.core import jaxpr_as_fun

    def plain():
        return (lambda key: key), (lambda key, u: model.sample(key, u)[0])

    sample_x = lambda key, u: model.sample(key, u)[0]
    try:
        closed = jax.make_jaxpr(sample_x)(jax.random.key(0), jnp.zeros(model.theta_dim))
        known, unknown, _, residuals = pe.partial_eval_jaxpr_nounits(closed, [False, True], True)
    except Exception:  # an exotic primitive partial evaluation cannot split: simulate in full
        return plain()
    # residuals that do not depend on the key (a location of zeros, say) are the same for every
    # simulation: computed once and kept out of the per-simulation noise
    varying = _key_dependent_outputs(known.jaxpr)
    size = sum(int(np.prod(r.shape)) for r, v in zip(residuals, varying) if v)
    if size > NOISE_FACTOR * max(model.x_dim + model.z_dim, 1):
        return plain()
    noise_of, x_of = jaxpr_as_fun(known), jaxpr_as_fun(unknown)
    # (compiled, with the random draws left out: run eagerly, every operation of the jaxpr
    # would be compiled on its own, a quarter of a second of a first run)
    constants = jax.jit(lambda key: [r for v, r in zip(varying, noise_of(key)) if not v])(jax.random.key(0))
    constants = iter(constants)
    fixed = [None if v else next(constants) for v in varying]

    def x_from_noise(noise, u):
        it = iter(noise)
        return x_of(*(next(it) if r is None else r for r in fixed), u)[0]

    return (lambda key: tuple(r for v, r in zip(varying, noise_of(key)) if v)), x_from_noise


def _key_dependent_outputs(jaxpr) -> list[bool]:
    """For a jaxpr of one input (the key): which outputs depend on it (conservatively: any
    equation with a dependent input makes all its outputs dependent)."""
    from jax.extend.core import Literal

    dependent = set(jaxpr.invars)
    for eqn in jaxpr.eqns:
        if any(not isinstance(v, Literal) and v in dependent for v in eqn.invars):
            dependent.update(eqn.outvars)
    return [not isinstance(v, Literal) and v in dependent for v in jaxpr.outvars]


# ---- the result --------------------------------------------------------------------------
class MuseResult(GaussianPosterior):
    """MUSE's estimate: a Gaussian posterior N(θ̂, Σ) in unconstrained θ, plus the run's record.

    As a `Posterior`, ``sample`` draws u ~ N(θ̂, Σ) in unconstrained space and returns
    them mapped to the parameters' support (the identity for unbounded parameters).

    Attributes:
        theta: θ̂ in the original space and the user's structure (a dict of arrays, an
            array, or the PyTree of a `HierarchicalModel`).
        theta_flat: ``(d,)`` θ̂ in the original space.  std: ``(d,)`` standard deviations in
            the original space (delta method through the bijection).
        loc, cov: ``(d,)`` θ̂ and ``(d, d)`` Σ in unconstrained space.
        J: ``(d, d)`` covariance of the simulations' scores.  H: ``(d, d)`` Jacobian of the
            expected score, ``H[a, b] = d⟨s_a⟩/dθ_b``.  H_prior: ``(d, d)`` −∇² log p(θ̂).
        theta_evaluated: ``(d,)`` the unconstrained θ at which the last MAPs, J and H were
            computed (θ̂ is this plus the last Newton step, of at most 0.1 σ when converged).
        history: one dict per iteration (θ, step in σ, MAP iterations and failures, time).
        nsims, converged, iterations, time_s, n_gradient_evaluations, n_hessian_vector_products.
        scores: ``(nsims, d)`` the simulations' scores at ``theta_evaluated``.
        z_map: ``(1 + nsims, n_z)`` the MAPs (data first) in unconstrained latent space.
    """

    kind = "muse"

    def __init__(self, loc, cov, names, bijection, x_obs, **record):
        super().__init__(loc, cov, names, bijection, x_obs)
        self.J, self.H, self.H_prior = (np.asarray(record.pop(k)) for k in ("J", "H", "H_prior"))
        self.theta_evaluated = np.asarray(record.pop("theta_evaluated"))
        self.scores = np.asarray(record.pop("scores"))
        self.z_map = np.asarray(record.pop("z_map"))
        self.key_data = np.asarray(record.pop("key_data"))
        self.history: list[dict[str, Any]] = list(record.pop("history"))
        self.nsims: int = int(record.pop("nsims"))
        self.converged: bool = bool(record.pop("converged"))
        self.time_s: float = float(record.pop("time_s"))
        self.n_gradient_evaluations: int = int(record.pop("n_gradient_evaluations"))
        self.n_hessian_vector_products: int = int(record.pop("n_hessian_vector_products"))
        self.jacobian: str = record.pop("jacobian")
        self.problem_name: str = record.pop("problem_name")
        self._unflatten = record.pop("unflatten", None)
        if record:
            raise TypeError(f"unexpected fields {sorted(record)}")

    @property
    def iterations(self) -> int:
        return len(self.history)

    @property
    def theta_flat(self) -> np.ndarray:
        return np.asarray(self.bijection.forward(np.asarray(self.loc, np.float64)), np.float64)

    @property
    def theta(self):
        """θ̂ in the user's structure (after `load`, a dict of flat names)."""
        if self._unflatten is not None:
            return self._unflatten(self.theta_flat)
        return dict(zip(self.names, self.theta_flat.tolist()))

    @property
    def std(self) -> np.ndarray:
        return np.abs(self.bijection.jacobian_diagonal(self.loc)) * self.std_unconstrained

    @property
    def key(self) -> jax.Array:
        return jax.random.wrap_key_data(jnp.asarray(self.key_data))

    def _state(self):
        meta, arrays = super()._state()
        meta = {
            **meta, "history": self.history, "nsims": self.nsims, "converged": self.converged, "time_s": self.time_s,
            "n_gradient_evaluations": self.n_gradient_evaluations,
            "n_hessian_vector_products": self.n_hessian_vector_products,
            "jacobian": self.jacobian, "problem_name": self.problem_name,
        }
        arrays = {
            **arrays, "J": self.J, "H": self.H, "H_prior": self.H_prior, "theta_evaluated": self.theta_evaluated,
            "scores": self.scores, "z_map": self.z_map, "key_data": self.key_data,
        }
        return meta, arrays

    @classmethod
    def _from_state(cls, meta, arrays):
        record = {k: meta[k] for k in ("history", "nsims", "converged", "time_s", "n_gradient_evaluations",
                                       "n_hessian_vector_products", "jacobian", "problem_name")}
        record.update({k: arrays[k] for k in ("J", "H", "H_prior", "theta_evaluated", "scores", "z_map", "key_data")})
        return cls(arrays["loc"], arrays["cov"], meta["names"], ElementwiseBijection.from_dict(meta["bijection"]), None, **record)

    def __repr__(self) -> str:
        state = f"converged in {self.iterations} iterations" if self.converged else f"NOT converged after {self.iterations} iterations"
        lines = [f"MuseResult({self.problem_name}: {self.nsims} simulations, {state}, {self.time_s:.3g} s)"]
        width = max(len(n) for n in self.names)
        for name, value, sd in zip(self.names, self.theta_flat, self.std):
            lines.append(f"  {name:<{width}} = {value:.4g} ± {sd:.2g}")
        if not self.bijection.is_identity:
            lines.append("  (± by the delta method; the Gaussian lives in unconstrained space)")
        return "\n".join(lines)


# ---- the algorithm -----------------------------------------------------------------------
def _as_key(key) -> jax.Array:
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key.astype(jnp.uint32))


@functools.partial(jax.jit, static_argnums=1)
def _simulation_keys(key, n):
    """``fold_in(key, i)`` for i < n: ``(n,)`` keys (compiled: eagerly it costs milliseconds)."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))


@functools.partial(jax.jit, static_argnums=1)
def _padded_keys(keys, padded):
    """The keys of the rows: the data's (borrowed from simulation 0), the simulations', padding."""
    return jnp.concatenate([keys[:1], keys, jnp.broadcast_to(keys[:1], (padded - 1 - keys.shape[0],))])


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


def _default_chunk_size(rows: int, row_bytes: int) -> int:
    """Rows per chunk: at most `CHUNK_BYTES` per (chunk, n) array (at least 2 rows), and the
    chunks as even as they can be, so that the last one is padded as little as possible."""
    most = max(2, CHUNK_BYTES // row_bytes)
    return -(-rows // -(-rows // most))


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


def _record(model, u, s_post, distance, kind, rows: Rows, failed, seconds) -> dict[str, Any]:
    """The history entry of one iteration."""
    status, counts = np.unique(rows.status, return_counts=True)
    return {
        "theta": model.bijection.forward(u).tolist(),
        "theta_unconstrained": u.tolist(),
        "score": s_post.tolist(),
        "step_sigma": distance,
        "newton": kind,
        "map_iterations_max": int(rows.iterations.max()),
        "map_iterations_mean": float(rows.iterations.mean()),
        "map_gradient_evaluations": int(rows.evaluations.sum()),
        "map_failed": np.flatnonzero(failed).tolist(),
        "map_status": {solvers.STATUS_NAMES[int(c)]: int(n) for c, n in zip(status, counts)},
        "time_s": seconds,
    }


def _record_breakdown(model, u, bad, seconds) -> dict[str, Any]:
    """The history entry of an iteration whose scores were not finite at rows ``bad``."""
    return {
        "theta": model.bijection.forward(u).tolist(), "theta_unconstrained": u.tolist(), "score": None,
        "step_sigma": None, "newton": "non-finite scores, retreat", "map_iterations_max": None,
        "map_iterations_mean": None, "map_gradient_evaluations": None, "map_failed": bad.tolist(),
        "map_status": None, "time_s": seconds,
    }


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


def _failed_rows(result, gtol: float) -> np.ndarray:
    status = np.asarray(result.status)
    gmax = np.asarray(result.grad_max)
    # a stall with a gradient near the tolerance is rounding noise; far from it, a failure
    return (status == solvers.MAX_ITERATIONS) | ((status == solvers.STALLED) & (gmax > LOOSE_GTOL_FACTOR * gtol))


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
        progress: show a progress bar.

    Returns:
        a `MuseResult`.

    Raises:
        ProblemError: the problem or the inputs are not usable by MUSE.
        MuseError: a score became NaN or inf (the message names the simulation).
    """
    if jacobian not in JACOBIAN_METHODS:
        raise ValueError(f"jacobian must be one of {JACOBIAN_METHODS}, got {jacobian!r}")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be at least 1, got {max_iterations}")
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
    key = _as_key(key)
    keys = _simulation_keys(key, nsims)
    fns = _compiled(model, int(map_memory))
    batch = _Batch(fns, x, keys, Z, u if result is not None else None, vectorize, chunk_size, model.z_dim)
    tolerances = dict(gtol=map_gtol, cg_max_iterations=cg_max_iterations, cg_rtol=cg_rtol)
    want_jacobian = jacobian == "implicit" and vectorize
    root_finder = _RootFinder(step_scale)

    start = time.perf_counter()
    converged, distance = False, np.inf
    u_evaluated, retreats, previous = None, 0, None
    bar = tqdm(total=max_iterations, desc=f"MUSE {model.name}", unit="it", disable=not progress)
    try:
        for i in range(max_iterations):
            t0 = time.perf_counter()
            # H comes with the MAPs when this iteration is likely the last; else one more pass later
            with_jacobian = want_jacobian and (distance < JACOBIAN_AHEAD * theta_rtol or i == max_iterations - 1)
            if score_scale is None:
                # no spread of the scores known yet to say when a score is stable: a short pilot
                # solve finds it, and the solve goes on from there unless every MAP converged
                rows, prior = batch.run(u, min(map_max_iterations, PILOT_ITERATIONS), -np.ones(d), False, **tolerances)
                _check_scores(rows.score, model.names, f"iteration {len(history) + 1}", rows)
                score_scale = np.std(rows.score[1:], axis=0)
                has_jacobian = False
                if np.any(rows.status > solvers.CONVERGED_AUX):
                    rows, prior = batch.run(u, map_max_iterations, map_score_rtol * score_scale, with_jacobian, **tolerances)
                    has_jacobian = with_jacobian
            else:
                rows, prior = batch.run(u, map_max_iterations, map_score_rtol * score_scale, with_jacobian, **tolerances)
                has_jacobian = with_jacobian
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
                    f"or nsims={nsims} is too few"
                ) from None
            score_scale = np.std(s_sims, axis=0)
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
    theta_hat = u_evaluated + newton
    n_evals += batch.n_evals
    n_hvps += batch.n_hvps

    u_eval = np.asarray(u_evaluated, batch.dtype)
    J = np.atleast_2d(np.cov(s_sims, rowvar=False))
    if jacobian == "implicit":
        if not vectorize:
            H_sims, cg_its, cg_residual = (np.asarray(a) for a in fns.implicit_jacobian_loop(u_eval, keys, batch.Z[1 : 1 + nsims], cg_max_iterations, cg_rtol))
        else:
            if last_has_jacobian:
                H_sims, cg_its, cg_residual = last.H[1:], last.cg_iterations[1:], last.cg_residual[1:]
            else:  # H did not come with the last MAPs: from them, at the same θ
                H_sims, cg_its, cg_residual = batch.jacobian(cg_max_iterations, cg_rtol)
        n_hvps += int(cg_its.sum()) + 2 * nsims * d  # CG products, plus the two jvps per direction
        unsolved = np.flatnonzero(~(cg_residual <= cg_rtol).all(axis=1))
        if unsolved.size:
            warnings.warn(
                f"MUSE: conjugate gradients for H reached a relative residual of {cg_residual.max():.2g} > cg_rtol={cg_rtol} "
                f"for {unsolved.size} of {nsims} simulations (first: {unsolved[:5].tolist()}); raise cg_max_iterations "
                "or check that the MAPs are maxima",
                RuntimeWarning, stacklevel=2,
            )
    else:
        steps = finite_difference_step / np.sqrt(np.diag(J))
        H_sims, fd_out = fns.finite_difference_jacobian(
            u_eval, keys, batch.Z[1 : 1 + nsims], batch.gamma[1 : 1 + nsims], jnp.asarray(steps, batch.dtype),
            map_max_iterations, map_gtol, -jnp.ones(d, batch.dtype),
        )
        n_evals += int(np.asarray(fd_out.evaluations).sum())
        if _failed_rows(fd_out, map_gtol).any():
            warnings.warn("MUSE: some MAP solves for the finite-difference H did not converge", RuntimeWarning, stacklevel=2)
    H_sims = np.asarray(H_sims, np.float64)
    _check_scores(np.concatenate([np.zeros((1, d * d)), H_sims.reshape(nsims, -1)]), model.names, "the computation of H", last)
    H = H_sims.mean(0)
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
        state = "converged" if converged else f"did not converge in {len(history)} iterations"
        raise MuseError(
            f"MUSE {state} and its estimate is not finite (θ̂ = {theta_hat.tolist()}, diagonal of J {np.diag(J).tolist()}, "
            f"of H {np.diag(H).tolist()}); the MAP solves at the last θ "
            f"{'failed for ' + str(int(n_failed)) + ' rows' if (n_failed := _failed_rows(last, map_gtol).sum()) else 'converged'}: "
            "start nearer the data (theta_start) or with a smaller step_scale"
        )
    elapsed += time.perf_counter() - start

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
            RuntimeWarning, stacklevel=2,
        )
    if failures:
        warnings.warn(
            "MUSE: MAP solves did not converge in iterations "
            + ", ".join(f"{i} ({n} of {nsims + 1})" for i, n in failures[:8])
            + "; raise map_max_iterations or loosen map_gtol (history[i]['map_failed'] lists the rows, 0 = data)",
            RuntimeWarning, stacklevel=2,
        )
    if not converged:
        warnings.warn(
            f"MUSE did not converge in {max_iterations} iterations (last step {distance:.3g}σ > theta_rtol={theta_rtol}); "
            "continue with muse(..., result=result)",
            RuntimeWarning, stacklevel=2,
        )
    return MuseResult(
        theta_hat, cov, model.names, model.bijection, x_host,
        J=J, H=H, H_prior=H_prior, theta_evaluated=np.asarray(u_evaluated), scores=s_sims,
        z_map=np.asarray(batch.Z)[: 1 + nsims], key_data=np.asarray(jax.random.key_data(key)), history=history, nsims=nsims,
        converged=converged, time_s=elapsed, n_gradient_evaluations=n_evals, n_hessian_vector_products=n_hvps,
        jacobian=jacobian, problem_name=model.name, unflatten=model.unflatten_theta,
    )


__all__ = ["muse", "MuseResult", "MuseError"]
