"""The simulator split at its random numbers, so that MUSE draws them once per run.

MUSE keeps each simulation's random numbers fixed while θ moves (common random numbers), and
drawing them is often most of a simulator's cost. `_split_sampler` cuts the sampler where the
key-dependent part ends: ``noise_of(key)`` runs once per run, ``x_from_noise(noise, u)`` at
every iteration.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from galton.muse.models import FlatModel

NOISE_FACTOR = 4  # cache a simulation's random numbers when they are at most this × (n_x + n_z) values


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
