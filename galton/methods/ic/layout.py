"""Where a program's latents go in the inference-compilation proposal: continuous ones in
unconstrained space, discrete ones with a finite support as categories (`Layout`, `layout`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import constraints

from galton.prior import Blocks
from galton.problem import ProblemError, Program
from galton.transforms import SupportBijection



@dataclass(frozen=True, eq=False)
class Layout:
    """How a program's latents enter the proposal.

    Attributes:
        continuous: `Blocks` of the continuous latent sites, mapped to unconstrained space by
            ``bijection``; discrete: `Blocks` of the discrete ones.
        low: ``(d_d,)`` the smallest value of each discrete element; categories: ``(d_d,)`` how many
            values it takes (value = low + category).
    """

    continuous: Blocks
    discrete: Blocks
    bijection: SupportBijection
    low: np.ndarray
    categories: np.ndarray

    def split(self, program: Program, theta: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """θ ``(n, d)`` and flat latents z ``(n, d_z)`` -> u_θ ``(n, d)``, u_c ``(n, d_c)``, z_d ``(n, d_d)``."""
        u_theta = np.asarray(program.prior.to_unconstrained(jnp.asarray(theta)), np.float32)
        sites = program.latents.unflatten(jnp.asarray(z)) if program.latents.dim else {}
        n = len(theta)
        u_latent = np.zeros((n, 0), np.float32)
        if self.continuous.dim:
            values = {k: sites[k] for k in self.continuous.shapes}
            u_latent = np.asarray(self.continuous.flatten(self.bijection.inverse(values)), np.float32)
        z_discrete = np.zeros((n, 0), np.float32)
        if self.discrete.dim:
            z_discrete = np.asarray(self.discrete.flatten({k: sites[k] for k in self.discrete.shapes}), np.float32)
        return u_theta, u_latent, z_discrete

    def log_target(self, program: Program, x: jax.Array, u_theta: jax.Array, u_latent: jax.Array, z_discrete: jax.Array) -> jax.Array:
        """log p(x, z, θ) + log |d(θ, z_c)/d(u_θ, u_c)| for one draw: u_θ ``(d,)``, u_c ``(d_c,)``, z_d ``(d_d,)``."""
        theta = program.prior.to_constrained(u_theta)
        log_prior = program.prior.log_prob(theta) + program.prior.log_abs_det_jacobian(u_theta)
        z, log_det = {}, 0.0
        if self.continuous.dim:
            u = self.continuous.unflatten(u_latent)
            z = self.bijection.forward(u)
            log_det = self.bijection.log_abs_det_jacobian(u)
        if self.discrete.dim:
            z = {**z, **self.discrete.unflatten(z_discrete)}
        return program.log_joint(x, z, theta) + log_det + log_prior


def _finite_support(support, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    """(lowest value, number of values) ``(prod(shape),)`` of a discrete support, or None if unbounded."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if isinstance(support, type(constraints.boolean)):
        low, high = 0, 1
    elif isinstance(support, constraints.integer_interval):
        low, high = support.lower_bound, support.upper_bound
    else:
        return None
    low = np.broadcast_to(np.asarray(low), shape).reshape(-1).astype(np.int64)
    high = np.broadcast_to(np.asarray(high), shape).reshape(-1).astype(np.int64)
    return low, high - low + 1


@functools.lru_cache(maxsize=32)
def layout(program: Program) -> Layout:
    """The `Layout` of ``program``'s latents; raises `ProblemError` for a discrete latent with an
    unbounded support."""
    tr = handlers.trace(handlers.seed(program.model, 0)).get_trace()
    continuous, discrete, unbounded, lows, counts = {}, {}, [], [], []
    for name, shape in program.latents.shapes.items():
        fn = tr[name]["fn"]
        if not getattr(fn, "is_discrete", False):
            continuous[name] = shape
            continue
        finite = _finite_support(fn.support, shape)
        if finite is None:
            unbounded.append(f"{name} ({type(fn).__name__})")
            continue
        discrete[name] = shape
        lows.append(finite[0])
        counts.append(finite[1])
    if unbounded:
        raise ProblemError(
            f"latent site(s) {unbounded} of {program.name} are discrete with an unbounded support; inference compilation's "
            "categorical head needs a finite one (Bernoulli, Categorical, Binomial, ...): bound them in the model, "
            "or marginalise them (NumPyro's enumeration)"
        )
    bijection = SupportBijection({k: tr[k]["fn"].support for k in continuous})
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64)  # noqa: E731
    return Layout(Blocks(continuous), Blocks(discrete), bijection, cat(lows), cat(counts))


__all__ = ["Layout", "layout"]
