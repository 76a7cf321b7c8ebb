"""The two forms of problem MUSE accepts, seen through one flat, unconstrained interface.

MUSE needs to simulate (x, z) at θ and to differentiate log p(x, z | θ); a `Program`
(a NumPyro model) offers both, and so does a `HierarchicalModel` (three plain JAX
functions). Internally θ, z and x are flat vectors and θ and z live in unconstrained
space, so the optimisers never meet a support boundary.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from galton.transforms import ElementwiseBijection
from galton.problem import ProblemError, Program, Simulator
from galton.randomness import check_density


@dataclass(frozen=True, eq=False)
class HierarchicalModel:
    """A hierarchical model p(x, z | θ) p(θ) written by hand in JAX.

    θ, z and x may be any PyTrees (dicts of arrays of any shape, tuples, ...). Both θ and z
    are taken as unconstrained: reparameterise by hand (a log-variance rather than a
    variance) where a support is bounded.

    Args:
        sample_x_z: ``(key, θ) -> (x, z)``, one forward simulation; to get H by implicit
            differentiation it must be differentiable in θ for a fixed key
            (reparameterised sampling, as ``jax.random.normal(key) * scale`` is).
        log_likelihood: ``(x, z, θ) -> scalar``, the joint log-density log p(x, z | θ).
        log_prior: ``θ -> scalar``, log p(θ) up to a constant.
        name: a label for reports.
    """

    sample_x_z: Callable
    log_likelihood: Callable
    log_prior: Callable
    name: str = "hierarchical_model"


def _pytree_names(tree) -> list[str]:
    """Flat names of a PyTree's entries: ``a``, ``b[0]``, ``c.d[1,2]``; a bare array is ``theta``."""
    names = []
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, leaf in leaves:
        parts = []
        for p in path:
            if isinstance(p, jax.tree_util.DictKey):
                parts.append(str(p.key))
            elif isinstance(p, jax.tree_util.GetAttrKey):
                parts.append(p.name)
            elif isinstance(p, (jax.tree_util.SequenceKey, jax.tree_util.FlattenedIndexKey)):
                parts.append(str(p.idx))
        base = ".".join(parts) or "theta"
        shape = np.shape(leaf)
        names += [base] if shape == () else [f"{base}[{','.join(map(str, i))}]" for i in np.ndindex(*shape)]
    return names


class FlatModel:
    """The interface MUSE runs on: flat unconstrained θ ``(d,)``, z ``(n_z,)`` and flat x ``(n_x,)``.

    Attributes:
        name, names (flat θ names), theta_dim, z_dim, x_dim, bijection (unconstrained θ ->
        original θ, column by column).
    """

    name: str
    names: list[str]
    theta_dim: int
    z_dim: int
    x_dim: int
    bijection: ElementwiseBijection

    def sample(self, key, u) -> tuple[jax.Array, jax.Array]:
        """One simulation at unconstrained θ ``u (d,)``: ``(x (n_x,), z (n_z,))``, z unconstrained."""
        raise NotImplementedError

    def log_joint(self, x, z, u) -> jax.Array:
        """log p(x, z | θ) with z unconstrained (the change of variables included): a scalar."""
        raise NotImplementedError

    def log_prior(self, u) -> jax.Array:
        """log p(θ(u)) + log |dθ/du|: the prior density of unconstrained θ, a scalar."""
        raise NotImplementedError

    def flatten_theta(self, theta) -> np.ndarray:
        """The user's θ (structure or flat, original space) -> flat ``(d,)`` in original space."""
        raise NotImplementedError

    def unflatten_theta(self, flat):
        """Flat original-space θ ``(d,)`` -> the user's structure."""
        raise NotImplementedError

    def flatten_x(self, x) -> jax.Array:
        raise NotImplementedError


class _ProgramModel(FlatModel):
    def __init__(self, program: Program):
        self.program = program
        self.name = program.name
        self.prior = program.prior
        self.names = list(program.names)
        self.theta_dim = program.prior.dim
        check_density(program, "MUSE")
        if not program.latents.shapes:
            raise ProblemError(f"MUSE needs latent sites to marginalise, but {program.name!r} has none besides its params and observed sites")
        discrete = program.discrete_latents()
        if discrete:
            raise ProblemError(f"latent site {discrete[0]!r} is discrete ({program.latent_supports[discrete[0]]}); "
                               "MUSE needs continuous latents to optimise over")
        self.z_dim = program.latents.dim
        self.x_dim = program.data.dim
        self.bijection = ElementwiseBijection.from_prior(program.prior)

    def sample(self, key, u):
        z, x = self.program.sample_joint(key, self.prior.to_constrained(u))
        return x, self.program.latents.flatten(self.program.latents_to_unconstrained(z))

    def log_joint(self, x, z, u):
        return self.program.log_joint_unconstrained(x, self.program.latents.unflatten(z), self.prior.to_constrained(u))

    def log_prior(self, u):
        return self.prior.log_prob(self.prior.to_constrained(u)) + self.prior.log_abs_det_jacobian(u)

    def flatten_theta(self, theta):
        shapes = self.prior.blocks.shapes
        wanted = f"{self.theta_dim} values for {self.names}, flat or as the blocks {dict(shapes)}"
        if isinstance(theta, Mapping):
            unknown = sorted(set(theta) - set(shapes), key=str)
            if unknown:  # (a misspelt block would otherwise be dropped unseen)
                raise ProblemError(f"theta_start has blocks {unknown} that {self.name!r} does not have; it takes {wanted}")
            flat = np.asarray(self.prior.flatten(theta), np.float64)
        else:
            try:
                flat = np.asarray(theta, np.float64)
            except (TypeError, ValueError):
                flat = None
        if flat is None or flat.size != self.theta_dim:
            given = f"shape {flat.shape}" if flat is not None else f"a {type(theta).__name__}"
            raise ProblemError(f"theta_start has {given}; {self.name!r} takes {wanted}")
        return flat.reshape(self.theta_dim)

    def unflatten_theta(self, flat):
        return {k: np.asarray(v) for k, v in self.prior.blocks.unflatten(np.asarray(flat)).items()} \
            if len(self.prior.blocks.shapes) > 1 or "theta" not in self.prior.blocks.shapes \
            else np.asarray(flat).reshape(self.prior.blocks.shapes["theta"])

    def flatten_x(self, x):
        if isinstance(x, dict):
            return self.program.data.flatten(x)
        return np.asarray(x).reshape(-1)


class _HierarchicalFlatModel(FlatModel):
    def __init__(self, model: HierarchicalModel, theta_template):
        self.model = model
        self.name = model.name
        flat, self._unravel_theta = ravel_pytree(theta_template)
        self._theta_template = theta_template
        self.theta_dim = flat.size
        self.names = _pytree_names(theta_template)
        key = jax.random.key(0)
        x_shape, z_shape = jax.eval_shape(model.sample_x_z, key, theta_template)
        x0 = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), x_shape)
        z0 = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), z_shape)
        x_flat, self._unravel_x = ravel_pytree(x0)
        z_flat, self._unravel_z = ravel_pytree(z0)
        self._x_structure = jax.tree_util.tree_structure(x0)
        self.x_dim, self.z_dim = x_flat.size, z_flat.size
        if self.z_dim == 0:
            raise ProblemError("sample_x_z returned no latents z; MUSE needs latents to marginalise")
        self.bijection = ElementwiseBijection.identity(self.theta_dim)

    def sample(self, key, u):
        x, z = self.model.sample_x_z(key, self._unravel_theta(u))
        return ravel_pytree(x)[0], ravel_pytree(z)[0]

    def log_joint(self, x, z, u):
        return self.model.log_likelihood(self._unravel_x(x), self._unravel_z(z), self._unravel_theta(u))

    def log_prior(self, u):
        return self.model.log_prior(self._unravel_theta(u))

    def flatten_theta(self, theta):
        leaves = jax.tree_util.tree_structure(theta)
        if leaves != jax.tree_util.tree_structure(self._theta_template):
            flat = np.asarray(theta, np.float64).reshape(-1)
            if flat.size == self.theta_dim and not isinstance(theta, (dict, list, tuple)):
                return flat
            raise ProblemError(f"theta has structure {leaves}; expected that of theta_start, {jax.tree_util.tree_structure(self._theta_template)}")
        return np.asarray(ravel_pytree(theta)[0], np.float64)

    def unflatten_theta(self, flat):
        return jax.tree_util.tree_map(np.asarray, self._unravel_theta(jnp.asarray(flat, jnp.float32)))

    def flatten_x(self, x):
        if jax.tree_util.tree_structure(x) != self._x_structure:
            raise ProblemError(f"x_obs has structure {jax.tree_util.tree_structure(x)}; sample_x_z returns x as {self._x_structure}")
        return ravel_pytree(x)[0]


@functools.lru_cache(maxsize=16)
def _program_model(program: Program) -> _ProgramModel:
    return _ProgramModel(program)


def as_flat_model(problem: Any, theta_start=None) -> FlatModel:
    """The `FlatModel` MUSE runs on, for a `Program` or a `HierarchicalModel`.

    Raises:
        ProblemError: for a black-box `Simulator` (it has no density to differentiate) or
            any other object.
    """
    if isinstance(problem, Program):
        return _program_model(problem)
    if isinstance(problem, HierarchicalModel):
        if theta_start is None:
            raise ProblemError("theta_start is required for a HierarchicalModel: it fixes the structure of θ")
        return _hierarchical_model(problem, theta_start)
    if isinstance(problem, Simulator):
        raise ProblemError(
            f"MUSE needs the joint density log p(x, z | θ) and its gradients, but {problem.name!r} is a "
            "black-box Simulator that can only be sampled. Write it as a galton.Program (a NumPyro model) "
            "or a galton.muse.HierarchicalModel (sample_x_z, log_likelihood, log_prior) to use MUSE, or use "
            "a simulation-based method (NPE, NLE, NRE, ABC), which accepts a Simulator."
        )
    raise ProblemError(f"MUSE takes a galton.Program or a galton.muse.HierarchicalModel, got {type(problem).__name__}")


# one flat model per (model, structure of θ), so compiled functions are reused across calls
_hierarchical_cache: dict = {}


def _hierarchical_model(model: HierarchicalModel, theta_start) -> _HierarchicalFlatModel:
    leaves, treedef = jax.tree_util.tree_flatten(theta_start)
    signature = (id(model), treedef, tuple(np.shape(v) for v in leaves))
    cached = _hierarchical_cache.get(signature)
    if cached is None or cached.model is not model:
        cached = _HierarchicalFlatModel(model, theta_start)
        if len(_hierarchical_cache) > 16:
            _hierarchical_cache.clear()
        _hierarchical_cache[signature] = cached
    return cached


__all__ = ["HierarchicalModel", "FlatModel", "as_flat_model"]
