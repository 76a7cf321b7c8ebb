"""Problems galton infers from: black-box `Simulator`s and differentiable `Program`s.

Inside the library θ is always a flat array of shape ``(n, d)``; names and shapes of the
user's parameters live on the problem (`Prior.names`, `Prior.unflatten`) so they reach
results, plots and ArviZ.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions import constraints

from galton.chunks import pad_rows
from galton.keys import as_key
from galton.transforms import SupportBijection, reduce_to


class ProblemError(ValueError):
    """A problem, its parameters or its data are not what galton expects."""


def _block_names(name: str, shape: tuple[int, ...]) -> list[str]:
    if shape == ():
        return [name]
    return [f"{name}[{','.join(map(str, idx))}]" for idx in np.ndindex(*shape)]


@dataclass(frozen=True)
class Blocks:
    """Named blocks of arrays laid out side by side in one flat vector.

    Args:
        shapes: block name -> shape of one draw of that block (no batch axes).
    """

    shapes: Mapping[str, tuple[int, ...]]

    @property
    def sizes(self) -> dict[str, int]:
        return {k: math.prod(s) for k, s in self.shapes.items()}

    @property
    def dim(self) -> int:
        return sum(self.sizes.values())

    @property
    def names(self) -> list[str]:
        """Flat names, one per column: ``"a"`` for a scalar block, ``"b[0]"``, ``"b[1]"``, ..."""
        return [n for k, s in self.shapes.items() for n in _block_names(k, s)]

    def flatten(self, values: Mapping[str, Any]) -> jax.Array:
        """``{name: (*batch, *shape)}`` -> ``(*batch, dim)``."""
        parts = []
        batch = None
        for k, s in self.shapes.items():
            if k not in values:
                raise ProblemError(f"missing block {k!r}; expected blocks {list(self.shapes)}")
            v = jnp.asarray(values[k])
            b = v.shape[: v.ndim - len(s)]
            if v.shape[v.ndim - len(s) :] != tuple(s) or (batch is not None and b != batch):
                raise ProblemError(f"block {k!r} has shape {v.shape}; expected (*batch, *{tuple(s)})")
            batch = b
            parts.append(v.reshape(*b, -1))
        return jnp.concatenate(parts, axis=-1)

    def unflatten(self, flat: jax.Array) -> dict[str, jax.Array]:
        """``(*batch, dim)`` -> ``{name: (*batch, *shape)}``."""
        flat = jnp.asarray(flat)
        if flat.shape[-1:] != (self.dim,):
            raise ProblemError(f"expected a last axis of size {self.dim}, got shape {flat.shape}")
        out, start = {}, 0
        for k, s in self.shapes.items():
            size = math.prod(s)
            out[k] = flat[..., start : start + size].reshape(*flat.shape[:-1], *s)
            start += size
        return out


def _as_distribution_dict(prior) -> dict[str, dist.Distribution]:
    if isinstance(prior, dist.Distribution):
        return {"theta": prior}
    if isinstance(prior, Mapping) and prior and all(isinstance(d, dist.Distribution) for d in prior.values()):
        return dict(prior)
    raise ProblemError(
        f"prior must be a NumPyro distribution or a non-empty dict of them, got {type(prior).__name__}"
    )


class Prior:
    """A prior over named parameter blocks, seen by the library as a distribution over flat θ.

    Args:
        prior: a NumPyro distribution, or a dict ``{name: distribution}`` of independent blocks.
        names: optional flat names, one per column of θ (replaces the generated ones).

    Attributes:
        blocks: the `Blocks` layout; `dim` columns; `names` one per column.
    """

    def __init__(self, prior, names: Sequence[str] | None = None):
        self.distributions = _as_distribution_dict(prior)
        self.blocks = Blocks({k: tuple(d.batch_shape + d.event_shape) for k, d in self.distributions.items()})
        if names is not None:
            names = list(names)
            if len(names) != self.blocks.dim:
                raise ProblemError(f"names has {len(names)} entries but θ has {self.blocks.dim} columns")
        self.names: list[str] = names if names is not None else self.blocks.names
        self.bijection = SupportBijection({k: d.support for k, d in self.distributions.items()})

    @property
    def dim(self) -> int:
        return self.blocks.dim

    def unflatten(self, theta: jax.Array) -> dict[str, jax.Array] | jax.Array:
        """``(*batch, d)`` -> the user's structure (a dict, or one array if the prior was one distribution)."""
        blocks = self.blocks.unflatten(theta)
        return blocks if len(blocks) > 1 or "theta" not in blocks else blocks["theta"]

    def flatten(self, theta) -> jax.Array:
        """The user's structure -> ``(*batch, d)``."""
        if not isinstance(theta, Mapping):
            theta = {next(iter(self.blocks.shapes)): theta}
        return self.blocks.flatten(theta)

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        """Draw θ: returns ``(*sample_shape, d)``."""
        keys = jax.random.split(as_key(key), len(self.distributions))
        parts = {k: d.sample(kk, sample_shape) for kk, (k, d) in zip(keys, self.distributions.items())}
        return self.blocks.flatten(parts)

    def log_prob(self, theta: jax.Array) -> jax.Array:
        """``(*batch, d)`` -> ``(*batch,)``; ``-inf`` outside the support."""
        theta = jnp.asarray(theta)
        batch = theta.shape[:-1]
        total = jnp.zeros(batch)
        for k, v in self.blocks.unflatten(theta).items():
            d = self.distributions[k]
            with warnings.catch_warnings():  # outside the support is answered with -inf below
                warnings.filterwarnings("ignore", message="Out-of-support values")
                lp = d.log_prob(v).reshape(*batch, -1).sum(-1)
            total = total + jnp.where(self._block_in_support(k, v, batch), lp, -jnp.inf)
        return total

    def _block_in_support(self, k: str, v: jax.Array, batch: tuple[int, ...]) -> jax.Array:
        return reduce_to(self.distributions[k].support(v), batch, jnp.all)

    def in_support(self, theta: jax.Array) -> jax.Array:
        """``(*batch, d)`` -> boolean ``(*batch,)``."""
        theta = jnp.asarray(theta)
        batch = theta.shape[:-1]
        ok = jnp.ones(batch, bool)
        for k, v in self.blocks.unflatten(theta).items():
            ok = ok & self._block_in_support(k, v, batch)
        return ok

    def to_unconstrained(self, theta: jax.Array) -> jax.Array:
        """Map θ ``(*batch, d)`` to an unconstrained space of the same size, block by block."""
        return self.blocks.flatten(self.bijection.inverse(self.blocks.unflatten(theta)))

    def to_constrained(self, u: jax.Array) -> jax.Array:
        """Inverse of `to_unconstrained`."""
        return self.blocks.flatten(self.bijection.forward(self.blocks.unflatten(u)))

    def log_abs_det_jacobian(self, u: jax.Array) -> jax.Array:
        """log |dθ/du| of `to_constrained` at u ``(*batch, d)`` -> ``(*batch,)``."""
        u = jnp.asarray(u)
        return self.bijection.log_abs_det_jacobian(self.blocks.unflatten(u), u.shape[:-1])

    def _identity(self) -> tuple:
        """What makes two priors the same: names, and each block's distribution structure and values."""
        if getattr(self, "_identity_cache", None) is None:
            blocks = []
            for k, d in self.distributions.items():
                leaves, treedef = jax.tree.flatten(d)
                values = tuple((np.shape(v), np.asarray(v).tobytes()) for v in leaves)
                blocks.append((k, str(treedef), values))
            self._identity_cache = (tuple(self.names), tuple(blocks))
        return self._identity_cache

    # equal by value, so a prior read back from a saved posterior is the one it was saved with:
    # compiled samplers keyed on the prior (galton.sampling) then serve the loaded posterior too
    def __eq__(self, other) -> bool:
        return isinstance(other, Prior) and (self is other or self._identity() == other._identity())

    def __hash__(self) -> int:
        return hash(self._identity())

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={type(d).__name__}{tuple(d.batch_shape + d.event_shape)}" for k, d in self.distributions.items())
        return f"Prior({inner})"


@functools.lru_cache(maxsize=32)
def _support_function(prior: Prior):
    return jax.jit(prior.in_support)


def support_mask(prior: Prior, theta: np.ndarray) -> np.ndarray:
    """`Prior.in_support` on θ ``(n, d)`` -> ``(n,)`` bool, with the rows padded to a power of two:
    callers such as SMC-ABC check batches of every size, and eager JAX compiles once per shape."""
    n = len(theta)
    if n == 0:
        return np.ones(0, bool)
    return np.asarray(_support_function(prior)(pad_rows(theta, 1 << (n - 1).bit_length())))[:n]


def check_theta(prior: Prior, theta, *, what: str = "theta") -> np.ndarray:
    """Validate a batch of flat parameters: shape ``(n, d)``, finite, inside the prior's support.
    Returns them as a NumPy array (``jnp.asarray`` of a new shape compiles, and batches come in
    every size)."""
    theta = np.asarray(theta)
    if theta.ndim != 2 or theta.shape[1] != prior.dim:
        raise ProblemError(f"{what} must have shape (n, {prior.dim}) for parameters {prior.names}; got {theta.shape}")
    if not np.isfinite(theta).all():
        bad = np.flatnonzero(~np.all(np.isfinite(theta), axis=1))
        raise ProblemError(f"{what} has non-finite values at rows {bad[:10].tolist()}")
    inside = support_mask(prior, theta)
    if not inside.all():
        bad = np.flatnonzero(~inside)
        row = np.asarray(theta[bad[0]])
        raise ProblemError(
            f"{what} has {bad.size} rows outside the prior's support, first row {int(bad[0])}: "
            + ", ".join(f"{n}={v:.4g}" for n, v in zip(prior.names, row))
        )
    return theta


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


def check_point(prior: Prior, theta, *, what: str = "theta") -> np.ndarray:
    """One θ, flat ``(d,)`` or in the prior's structure (a dict of blocks), validated as `check_theta`
    does: returns the flat ``(d,)`` float64 array."""
    wanted = f"one point of shape ({prior.dim},) for parameters {prior.names}"
    if theta is None:
        raise ProblemError(f"{what} is None; give {wanted}")
    flat = np.asarray(prior.flatten(theta) if isinstance(theta, Mapping) else theta, np.float64)
    # a (1, d) row is one point too; anything else with d values (a (2, d/2) grid) is not
    if flat.size != prior.dim or flat.ndim > 2 or (flat.ndim == 2 and len(flat) != 1):
        raise ProblemError(f"{what} must be {wanted}; got shape {flat.shape}")
    flat = flat.reshape(-1)
    check_theta(prior, flat[None], what=what)
    return flat


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
        object.__setattr__(self, "_supports", {k: sites[k]["fn"].support for k in latent})
        object.__setattr__(self, "latent_bijection", SupportBijection(self._supports))
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


__all__ = ["Blocks", "Prior", "Simulator", "Program", "ProblemError", "Problem", "check_observation", "check_point", "check_theta", "support_mask"]
