"""What the sir and lotka_volterra tasks share: ODE solves in the precision JAX is running in,
and their reference posteriors, NUTS on log θ in float64.

sbibm solves with Tsit5 at rtol = atol = 1e-8 in float64. galton does not switch
``jax_enable_x64`` on behind the user's back (it is global state, and toggling it inside a
traced simulator breaks under jit + vmap), so the solve follows the ambient precision:

* x64 on (``JAX_ENABLE_X64=1``, ``jax.config.update("jax_enable_x64", True)`` or a
  ``with jax.enable_x64(True):`` block around the whole computation): float64, rtol = atol = 1e-8,
  as sbibm. The reference posteriors of these tasks always run in such a block.
* x64 off (JAX's default): float32, rtol = atol = 1e-6, since float32 cannot resolve 1e-8.
  The relative error stays far below the tasks' observation noise (checked in the tests).

The simulators return float32 either way.
"""

from __future__ import annotations

from typing import Callable

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from galton.tasks._common import nuts


def float_dtype():
    """float64 when x64 is enabled, else float32."""
    return jnp.result_type(float)


def tolerance() -> float:
    return 1e-8 if float_dtype() == jnp.float64 else 1e-6


def solve(
    vector_field: Callable,
    y0: jax.Array,
    t1: float,
    ts: jax.Array,
    args,
    *,
    adjoint: diffrax.AbstractAdjoint | None = None,
    max_steps: int = 16_384,
) -> tuple[jax.Array, jax.Array]:
    """Tsit5 from t = 0 to ``t1``, saved at ``ts``.

    Args:
        vector_field: ``(t, y, args) -> dy/dt``.
        y0: ``(n,)`` initial state.
        ts: ``(m,)`` save times.
        adjoint: how to differentiate; `diffrax.ForwardMode()` for forward-mode (NUTS here).

    Returns:
        ``(ys (m, n), ok ())``: the states and whether the solve succeeded.
    """
    dtype = float_dtype()
    tol = tolerance()
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        diffrax.Tsit5(),
        t0=0.0,
        t1=t1,
        dt0=None,
        y0=jnp.asarray(y0, dtype),
        args=jax.tree.map(lambda a: jnp.asarray(a, dtype), args),
        saveat=diffrax.SaveAt(ts=jnp.asarray(ts, dtype)),
        stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
        adjoint=adjoint if adjoint is not None else diffrax.RecursiveCheckpointAdjoint(),
        max_steps=max_steps,
        throw=False,
    )
    return sol.ys, sol.result == diffrax.RESULTS.successful


def log_space_nuts(
    log_likelihood: Callable[..., jax.Array],
    x: jax.Array,
    n: int,
    *,
    log_mean: np.ndarray,
    log_sd: np.ndarray,
    find_start: Callable[[Callable], jax.Array],
    key_init: jax.Array,
    key_run: jax.Array,
    jitter: float,
    num_chains: int,
    num_warmup: int = 500,
) -> jax.Array:
    """``n`` draws ``(n, d)`` float32 of p(θ | x) under a LogNormal(log_mean, log_sd) prior, by NUTS on u = log θ.

    Everything runs in float64 (inside ``jax.enable_x64``), so the ODE solves run at rtol 1e-8.

    Args:
        log_likelihood: ``(x, θ (d,), *, adjoint) -> ()``, exact log p(x | θ).
        log_mean, log_sd: ``(d,)`` the prior's, i.e. of the Normal prior on u.
        find_start: ``log_density -> (d,)`` a u near the posterior mode, where
            ``log_density(u, adjoint=diffrax.ForwardMode())`` is log p(u | x) up to a constant
            (-inf where not finite; pass ``adjoint=None`` to differentiate in reverse mode).
        key_init: jitters the chains' starts: chain i starts at ``start + jitter · N(0, I)``.
        key_run: runs `nuts` (forward-mode gradients, chains one after another).
    """
    with jax.enable_x64(True):
        x = jnp.asarray(x, jnp.float64)
        mean, sd = jnp.asarray(log_mean), jnp.asarray(log_sd)

        def log_density(u, adjoint=diffrax.ForwardMode()):  # the LogNormal prior is Normal in u
            lp = log_likelihood(x, jnp.exp(u), adjoint=adjoint) + dist.Normal(mean, sd).log_prob(u).sum()
            return jnp.where(jnp.isfinite(lp), lp, -jnp.inf)

        start = find_start(log_density)
        init = start + jitter * jax.random.normal(key_init, (num_chains, start.shape[-1]), jnp.float64)
        u = nuts(
            lambda v: -log_density(v), init, n, key_run, num_warmup=num_warmup, forward_mode=True,
            chain_method="sequential",
        )
        return jnp.asarray(np.asarray(jnp.exp(u), np.float32))
