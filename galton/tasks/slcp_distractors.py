"""sbibm slcp_distractors: the slcp data hidden among 92 heavy-tailed distractors.

x ``(100,)`` is ``v[π]`` with v = [slcp x (8), d (92)], where d is drawn from an equally
weighted mixture of 20 multivariate Student-t distributions (2 degrees of freedom). The
mixture and the permutation π come from numpy's legacy RNG seeded with 42, in sbibm's order,
and are rebuilt here rather than shipped. The posterior is slcp's, so the reference extracts
the eight informative entries and reuses slcp's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from galton.tasks import slcp
from galton.tasks._common import sbibm_task, theta_names
from galton.tasks.base import Task

N_COMPONENTS = 20
N_DISTRACTORS = 92
DF = 2.0


@functools.cache
def mixture_and_permutation() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Means ``(20, 92)``, scale factors ``(20, 92, 92)`` (float64) and π ``(100,)`` (int)."""
    rng = np.random.RandomState(42)  # the legacy global stream sbibm seeded with np.random.seed(42)
    means = np.stack([15.0 * rng.normal(size=N_DISTRACTORS) for _ in range(N_COMPONENTS)])
    # tril keeps the diagonal, so L_k's diagonal is normal + exp(normal) and can be negative: kept as sbibm has it
    scales = np.stack(
        [
            3.0 * (np.tril(rng.normal(size=(N_DISTRACTORS, N_DISTRACTORS))) + np.diag(np.exp(rng.normal(size=N_DISTRACTORS))))
            for _ in range(N_COMPONENTS)
        ]
    )
    permutation = rng.permutation(N_DISTRACTORS + 8)
    return means, scales, permutation


def informative_positions() -> np.ndarray:
    """Where slcp's x₀..x₇ sit in the 100-vector: ``(8,)`` indices."""
    return np.argsort(mixture_and_permutation()[2])[:8]


@functools.cache
def _simulate_fn():
    means, scales, permutation = mixture_and_permutation()
    means, scales, permutation = jnp.asarray(means), jnp.asarray(scales), jnp.asarray(permutation)

    def simulate(key: jax.Array, theta: jax.Array) -> jax.Array:
        """One x ``(100,)`` float32 from θ ``(5,)``."""
        k_slcp, k_comp, k_z, k_chi = jax.random.split(key, 4)
        k = jax.random.randint(k_comp, (), 0, N_COMPONENTS)
        z = jax.random.normal(k_z, (N_DISTRACTORS,))
        chi2 = 2.0 * jax.random.gamma(k_chi, DF / 2)  # χ²_ν = 2·Gamma(ν/2)
        d = means[k] + scales[k] @ z / jnp.sqrt(chi2 / DF)
        v = jnp.concatenate([slcp.simulate(k_slcp, theta), d.astype(jnp.float32)])
        return v[permutation]

    return simulate


def reference_posterior(x: jax.Array, n: int, key: jax.Array) -> jax.Array:
    """``n`` posterior draws ``(n, 5)`` for x ``(100,)``: slcp's posterior at the informative entries."""
    return slcp.reference_posterior(jnp.asarray(x)[informative_positions()], n, key)


def task() -> Task:
    return sbibm_task(
        "slcp_distractors", slcp.PRIOR, _simulate_fn(), theta_names(slcp.DIM), reference_posterior,
        "sbibm SLCP with 92 Student-t distractors: 5 parameters, 100 data",
        data="slcp", observations="observations_distractors",
    )
