"""ODE solves for the sir and lotka_volterra tasks, in the precision JAX is running in.

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
