"""Problems galton infers from: black-box `Simulator`s and differentiable `Program`s, each
with a `galton.prior.Prior`, and the check of an observation against a problem."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro import handlers
from numpyro.distributions import constraints

from galton.prior import Blocks, Prior, ProblemError  # ProblemError: the error of problems and their data, raised by both
from galton.transforms import SupportBijection


def check_observation(problem, x_obs, x_shape, *, iid: bool) -> jax.Array:
    """x_obs as an array of ``x_shape`` (or ``(n_obs, *x_shape)``, n_obs ≥ 1, when ``iid``), finite; else a `ProblemError`."""
    try:
        kind = np.asarray(x_obs).dtype.kind  # (None, a dict or text would reach JAX and fail there, unnamed)
    except ValueError:  # a ragged list
        kind = "O"
    if kind not in "biuf":
        raise ProblemError(f"x_obs must be numbers of shape {x_shape}, got {type(x_obs).__name__}" + ("" if kind == "O" else f" of dtype {np.asarray(x_obs).dtype}"))
    x_obs = jnp.asarray(x_obs)
    if iid and x_obs.shape == (0, *x_shape):
        raise ProblemError(f"x_obs has shape {x_obs.shape}: an empty set of iid observations; give (n_obs, *{x_shape}) with n_obs ≥ 1")
    if x_obs.shape == x_shape or (iid and x_obs.shape[1:] == x_shape and x_obs.ndim == len(x_shape) + 1):
        if not bool(jnp.isfinite(x_obs).all()):
            raise ProblemError("x_obs has NaN or inf values")
        return x_obs
    expected = f"{x_shape}" + (f" or (n_obs, *{x_shape}) for iid observations" if iid else "")
    raise ProblemError(f"x_obs has shape {x_obs.shape}, but {problem.name} simulates x of shape {expected}")


def check_simulated_observation(problem, x_obs, sims, *, iid: bool) -> jax.Array:
    """`check_observation` against the shape of x in ``sims``, the first simulations of a
    simulator whose shape was unknown before them (a Python one); the error carries ``sims``
    as ``err.simulations``, so that a wrong x_obs loses nothing already simulated."""
    try:
        return check_observation(problem, x_obs, sims.x.shape[1:], iid=iid)
    except ProblemError as err:
        err.args = (f"{err} (the {len(sims)} simulations made before the check are in err.simulations)",)
        err.simulations = sims
        raise


def _detect_backend(fn: Callable, key: jax.Array, theta: jax.Array) -> str:
    try:
        jax.eval_shape(fn, key, theta)
        return "jax"
    except Exception:  # any failure to trace means the callable needs concrete values
        return "python"


@dataclass(frozen=True, eq=False)
class Simulator:
    """A black-box simulator: a prior over θ and a function you can only sample.

    Args:
        prior: a NumPyro distribution or a dict ``{name: distribution}``.
        simulate: ``simulate(key, theta) -> x``. ``theta`` comes in the prior's structure
            (one array, or a dict of arrays); ``x`` is an array of fixed shape. A pure JAX
            function is jitted and vmapped; any other callable runs once per θ on an
            executor and receives ``key`` as a NumPy ``uint32`` array (use
            ``np.random.default_rng(key)``) and ``theta`` as NumPy arrays.
        names: optional flat parameter names, one per column of θ.
        backend: ``"jax"`` or ``"python"``; detected by tracing ``simulate`` when omitted.
        name: a label used in stores and reports (defaults to the function's name).
    """

    prior: Any
    simulate: Callable
    names: Sequence[str] | None = None
    backend: str | None = None
    name: str | None = None

    def __post_init__(self):
        prior = self.prior if isinstance(self.prior, Prior) else Prior(self.prior, self.names)
        object.__setattr__(self, "prior", prior)
        object.__setattr__(self, "names", list(prior.names))
        if not callable(self.simulate):
            raise ProblemError(f"simulate must be callable, got {type(self.simulate).__name__}")
        if self.name is None:
            object.__setattr__(self, "name", getattr(self.simulate, "__name__", type(self.simulate).__name__))
        if self.backend is None:
            backend = _detect_backend(self.simulate_flat, jax.random.key(0), jnp.zeros(prior.dim))
            object.__setattr__(self, "backend", backend)
        if self.backend not in ("jax", "python"):
            raise ProblemError(f"backend must be 'jax' or 'python', got {self.backend!r}")

    def simulate_flat(self, key: jax.Array, theta: jax.Array) -> jax.Array:
        """One simulation from flat θ ``(d,)``."""
        return self.simulate(key, self.prior.unflatten(theta))


@dataclass(frozen=True, eq=False)
class Program:
    """A differentiable simulator written as a NumPyro model.

    Sites named in ``params`` are θ, sites named in ``observed`` are x, and every other
    sample site is a latent z. The model samples x itself (no ``obs=``); galton conditions it.

    Args:
        model: a NumPyro model taking no arguments (use ``functools.partial`` to fix some).
        params: names of the parameter sites (their distributions must not depend on z).
        observed: names of the observed sites; x is their values flattened and concatenated.
        name: a label for stores and reports.

    Attributes:
        prior: the `Prior` over θ read from the model.
        latents: `Blocks` of the latent sites (name -> shape); `data`: `Blocks` of the observed sites.
        latent_supports: each latent site's NumPyro support (name -> constraint).
    """

    model: Callable
    params: Sequence[str]
    observed: Sequence[str]
    name: str | None = None
    prior: Prior = field(init=False)
    latents: Blocks = field(init=False)
    data: Blocks = field(init=False)
    backend: str = field(init=False, default="jax")

    def __post_init__(self):
        params, observed = list(self.params), list(self.observed)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "observed", observed)
        trace = handlers.trace(handlers.seed(self.model, 0)).get_trace()
        sites = {k: s for k, s in trace.items() if s["type"] == "sample"}
        for k in params + observed:
            if k not in sites:
                raise ProblemError(f"site {k!r} not found in the model; its sample sites are {list(sites)}")
        if set(params) & set(observed):
            raise ProblemError(f"sites {sorted(set(params) & set(observed))} are both params and observed")
        for k in observed:
            if sites[k]["is_observed"]:
                raise ProblemError(f"observed site {k!r} has obs= set; let the model sample it and galton conditions it")
        object.__setattr__(self, "prior", Prior({k: sites[k]["fn"] for k in params}))
        latent = {k: tuple(jnp.shape(s["value"])) for k, s in sites.items() if k not in params + observed and not s["is_observed"]}
        object.__setattr__(self, "latents", Blocks(latent))
        object.__setattr__(self, "data", Blocks({k: tuple(jnp.shape(sites[k]["value"])) for k in observed}))
        object.__setattr__(self, "latent_supports", {k: sites[k]["fn"].support for k in latent})
        object.__setattr__(self, "latent_bijection", SupportBijection(self.latent_supports))
        if self.name is None:
            object.__setattr__(self, "name", getattr(self.model, "__name__", "program"))

    @property
    def names(self) -> list[str]:
        return self.prior.names

    def _trace(self, key, theta, extra=None):
        data = {**self.prior.blocks.unflatten(theta), **(extra or {})}
        return handlers.trace(handlers.seed(handlers.condition(self.model, data=data), key)).get_trace()

    def sample_joint(self, key: jax.Array, theta: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
        """Draw (z, x) given flat θ ``(d,)``: returns ``({latent: shape}, x (d_x,))``."""
        tr = self._trace(key, theta)
        z = {k: tr[k]["value"] for k in self.latents.shapes}
        x = self.data.flatten({k: tr[k]["value"] for k in self.observed})
        return z, x

    def simulate_flat(self, key: jax.Array, theta: jax.Array) -> jax.Array:
        """One x ``(d_x,)`` from flat θ ``(d,)``, marginalising z by sampling it."""
        return self.sample_joint(key, theta)[1]

    def log_joint(self, x: jax.Array, z: Mapping[str, jax.Array], theta: jax.Array) -> jax.Array:
        """log p(x, z | θ) for one x ``(d_x,)``, z ``{latent: shape}``, θ ``(d,)``: a scalar."""
        # NumPyro's validation would wrap every log_prob in where(in support, lp, -inf); on the
        # real line that test is only isfinite, yet it costs a pass over x and z and a mask in
        # the gradient (6 % of MUSE's time on the funnel), so only bounded supports keep it
        # (a distribution reads the switch when its log_prob runs, so all of it runs inside)
        with numpyro.validation_enabled(False):
            tr = self._trace(jax.random.key(0), theta, {**z, **self.data.unflatten(x)})
            total = 0.0
            for k, s in tr.items():
                if s["type"] != "sample" or k in self.params:
                    continue
                fn, value = s["fn"], s["value"]
                lp = fn.log_prob(value)
                if not _on_real_line(fn.support) and not constraints.is_dependent(fn.support):
                    lp = jnp.where(fn.support(value), lp, -jnp.inf)
                total = total + lp.sum()
        return total

    def log_prior(self, theta: jax.Array) -> jax.Array:
        """log p(θ) for flat θ ``(*batch, d)``."""
        return self.prior.log_prob(theta)

    def discrete_latents(self) -> list[str]:
        """Names of the latent sites with a discrete support: no gradient moves them (MUSE's
        optimiser, the latent chains of `galton.latent_chains`)."""
        return [k for k, support in self.latent_supports.items() if getattr(support, "is_discrete", False)]

    def latents_to_unconstrained(self, z: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Map each latent to the unconstrained space of its support."""
        return self.latent_bijection.inverse(z)

    def latents_to_constrained(self, u: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Inverse of `latents_to_unconstrained`."""
        return self.latent_bijection.forward(u)

    def log_joint_unconstrained(self, x: jax.Array, u: Mapping[str, jax.Array], theta: jax.Array) -> jax.Array:
        """log p(x, z(u) | θ) + log |dz/du|: the density of the unconstrained latents u."""
        z = self.latents_to_constrained(u)
        return self.log_joint(x, z, theta) + self.latent_bijection.log_abs_det_jacobian(u)


def _on_real_line(support) -> bool:
    """Whether a NumPyro support is all of R^n (real, real_vector, real_matrix, ...)."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return isinstance(support, type(constraints.real))


Problem = Simulator | Program


__all__ = ["Simulator", "Program", "ProblemError", "Problem", "check_observation", "check_simulated_observation"]
