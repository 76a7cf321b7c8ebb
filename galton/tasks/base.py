"""The `Task` record every benchmark problem fills in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import jax

from galton.keys import as_key
from galton.problem import Program, Simulator


@dataclass(frozen=True, eq=False)
class Task:
    """A benchmark problem with its observations and, where tractable, its reference posterior.

    Attributes:
        name: the task's name in `galton.tasks.get`.
        problem: a `Simulator` or `Program`.
        observations: ``k -> x_k`` for k = 1..n_observations (shape ``(d_x,)``).
        true_parameters_of: ``k -> θ_k`` (shape ``(d,)``).
        reference: ``(x_obs (d_x,), n, key) -> (n, d)`` samples of the true posterior, or None.
        n_observations: how many standard observations the task ships.
    """

    name: str
    problem: Simulator | Program
    observations: Callable[[int], jax.Array] | None = None
    true_parameters_of: Callable[[int], jax.Array] | None = None
    reference: Callable | None = None
    n_observations: int = 0
    description: str = field(default="")

    @property
    def prior(self):
        return self.problem.prior

    @property
    def names(self) -> list[str]:
        return self.problem.prior.names

    def _check_k(self, k: int) -> None:
        if not 1 <= k <= self.n_observations:
            raise ValueError(f"task {self.name!r} has observations 1..{self.n_observations}, got {k}")

    def observation(self, k: int = 1) -> jax.Array:
        """The k-th standard observation x_k, shape ``(d_x,)``."""
        self._check_k(k)
        return self.observations(k)

    def true_parameters(self, k: int = 1) -> jax.Array:
        """The θ that generated observation k, shape ``(d,)``."""
        self._check_k(k)
        return self.true_parameters_of(k)

    def reference_posterior(self, x_obs: jax.Array, n: int, *, key: jax.Array) -> jax.Array:
        """``n`` samples ``(n, d)`` of the exact posterior p(θ | x_obs).

        ``key``: ``jax.random.key(seed)`` or a legacy ``jax.random.PRNGKey(seed)`` (the same draws).
        """
        key = as_key(key)
        if self.reference is None:
            raise NotImplementedError(f"task {self.name!r} has no tractable reference posterior")
        return self.reference(jax.numpy.asarray(x_obs), n, key)
