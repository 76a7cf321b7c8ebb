"""Joint quantities of a `Program` ("mining gold", Brehmer et al. 2020): for a simulation
(x, z) the joint score t(x, z|θ) = ∇θ log p(x, z|θ) and the joint log ratio
log r(x, z|θ0, θ1) = log p(x, z|θ0) − log p(x, z|θ1), evaluated at any θ.

Both are unbiased labels for the intractable ones: E[t(x, z|θ) | x] = ∇θ log p(x|θ) and
E[r(x, z|θ0, θ1) | x] = p(x|θ0)/p(x|θ1) with z ~ p(z|x, θ1). Only the joint density is used.
The latents z are the flat ``(d_z,)`` rows `simulate(..., keep_latents=True)` stores.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from numpyro import handlers
from numpyro.distributions import constraints

from galton.problem import ProblemError, Program
from galton.randomness import check_density


def _log_joint_flat(program: Program, x: jax.Array, z_flat: jax.Array, theta: jax.Array) -> jax.Array:
    z = program.latents.unflatten(z_flat) if program.latents.dim else {}
    return program.log_joint(x, z, theta)


@functools.lru_cache(maxsize=32)
def _joint_functions(program: Program):
    """Jitted, vmapped ``score(x, z, θ) -> (n, d)`` and ``log_joint(x, z, θ) -> (n,)``."""
    log_joint = functools.partial(_log_joint_flat, program)
    score = jax.jit(jax.vmap(jax.grad(log_joint, argnums=2)))
    value = jax.jit(jax.vmap(log_joint))
    return score, value


def joint_score(program: Program, x, z, theta) -> jax.Array:
    """t(x, z|θ) = ∇θ log p(x, z|θ): x ``(n, d_x)``, z ``(n, d_z)``, θ ``(n, d)`` -> ``(n, d)``."""
    x, z, theta = check_rows(program, x, z, theta)
    return _joint_functions(program)[0](x, z, theta)


def joint_log_density(program: Program, x, z, theta) -> jax.Array:
    """log p(x, z|θ): x ``(n, d_x)``, z ``(n, d_z)``, θ ``(n, d)`` or ``(d,)`` -> ``(n,)``."""
    x, z, theta = check_rows(program, x, z, theta)
    return _joint_functions(program)[1](x, z, theta)


def joint_log_ratio(program: Program, x, z, theta0, theta1) -> jax.Array:
    """log p(x, z|θ0) − log p(x, z|θ1): x ``(n, d_x)``, z ``(n, d_z)``, θ0 and θ1 ``(n, d)`` or ``(d,)`` -> ``(n,)``."""
    x, z, theta0 = check_rows(program, x, z, theta0)
    theta1 = jnp.broadcast_to(jnp.asarray(theta1, x.dtype), theta0.shape)
    value = _joint_functions(program)[1]
    return value(x, z, theta0) - value(x, z, theta1)


def check_rows(program: Program, x, z, theta):
    """x ``(n, d_x)``, z ``(n, d_z)`` (None without latents) and θ ``(n, d)`` or ``(d,)`` as float32
    JAX arrays, θ broadcast to n rows; a `ProblemError` names any that does not fit ``program``."""
    x = jnp.asarray(x, jnp.float32)
    n = x.shape[0]
    theta = jnp.asarray(theta, jnp.float32)
    if theta.ndim == 1:
        theta = jnp.broadcast_to(theta, (n, theta.shape[0]))
    z = jnp.zeros((n, 0), jnp.float32) if z is None else jnp.asarray(z, jnp.float32)
    if x.ndim != 2 or x.shape[1] != program.data.dim:
        raise ProblemError(f"x must have shape (n, {program.data.dim}) for {program.name}; got {x.shape}")
    if z.shape != (n, program.latents.dim):
        raise ProblemError(f"z must have shape ({n}, {program.latents.dim}) (the program's flat latents); got {z.shape}")
    if theta.shape != (n, program.prior.dim):
        raise ProblemError(f"theta must have shape ({n}, {program.prior.dim}) or ({program.prior.dim},); got {theta.shape}")
    return x, z, theta


def check_scorable(program: Program, key: jax.Array | None = None) -> None:
    """Raise `ProblemError` naming the site when the joint score w.r.t. θ is undefined.

    Two cases make ∇θ log p(x, z|θ) meaningless though it can be computed: a site whose value
    is a deterministic function of θ (a ``Delta`` distribution: a density of zero width moving
    with θ), and a site whose support moves with θ (``Uniform(0, θ)``: the density jumps).
    Discrete sites with θ-dependent probabilities are fine: their log-probability is smooth in θ;
    a discrete θ is not: there is no gradient with respect to it.
    """
    check_density(program, "the joint score and ratio")
    key = jax.random.key(0) if key is None else key
    for name, fn in program.prior.distributions.items():
        dtype = jax.eval_shape(fn.sample, key).dtype
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise ProblemError(f"parameter site {name!r} is discrete ({dtype}): the joint score ∇θ log p needs continuous parameters")
    theta = program.prior.sample(key)
    params = program.prior.blocks

    def site_values(t):
        return handlers.trace(handlers.seed(handlers.condition(program.model, data=params.unflatten(t)), key)).get_trace()

    tr = site_values(theta)
    for name, site in tr.items():
        if site["type"] != "sample" or name in program.params:
            continue
        fn = site["fn"]
        base = getattr(fn, "base_dist", fn)
        if type(base).__name__ == "Delta":
            # a Delta's value is the sample; hold the other sites' draws fixed (same seed) and vary θ
            tangent = jax.jvp(lambda t: jnp.asarray(site_values(t)[name]["value"], jnp.float32), (theta,), (jnp.ones_like(theta),))[1]
            if bool(jnp.any(jnp.abs(tangent) > 0)):
                raise ProblemError(
                    f"site {name!r} is a Delta whose value changes with θ: its joint density has no score "
                    "with respect to θ; give it a density (e.g. add observation noise) or make θ enter "
                    "only through the distributions of other sites"
                )
        support = fn.support
        if constraints.is_dependent(support):
            continue
        for attr in ("lower_bound", "upper_bound"):
            if not hasattr(support, attr):
                continue
            moved = jax.jvp(lambda t: jnp.asarray(getattr(site_values(t)[name]["fn"].support, attr), jnp.float32),
                            (theta,), (jnp.ones_like(theta),))[1]
            if bool(jnp.any(jnp.abs(moved) > 0)):
                raise ProblemError(
                    f"site {name!r} has a support that moves with θ ({type(support).__name__}): its density "
                    "jumps at the boundary, so the joint score is not a label for the true score"
                )


AUGMENTS = ("score", "ratio")
