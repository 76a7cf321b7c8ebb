"""Helpers shared by the benchmark task modules: the sbibm task record, shipped data, rejection sampling, NUTS."""

from __future__ import annotations

import functools
import importlib.resources
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from galton.problem import Simulator
from galton.tasks.base import Task


def sbibm_task(
    name: str,
    prior,
    simulate: Callable,
    names: Sequence[str],
    reference: Callable,
    description: str,
    *,
    data: str | None = None,
    observations: str = "observations",
) -> Task:
    """The sbibm task ``name``: a JAX `Simulator` and the 10 observations of ``data/<data or name>.npz``.

    Args:
        prior, simulate, names: the `Simulator`'s; one is built per task and reused by later calls.
        reference: ``(x_obs, n, key) -> (n, d)`` draws of the exact posterior.
        data: the data file when the task shares another's (slcp_distractors reads slcp's).
        observations: the file's array holding the observations (the variants keep theirs apart).
    """
    arrays = load_data(data or name)
    return Task(
        name=name,
        problem=_jax_simulator(name, prior, simulate, tuple(names)),
        observations=rows(arrays[observations]),
        true_parameters_of=rows(arrays["true_parameters"]),
        reference=reference,
        n_observations=10,
        description=description,
    )


@functools.cache
def _jax_simulator(name: str, prior, simulate: Callable, names: tuple[str, ...]) -> Simulator:
    return Simulator(prior, simulate, names=list(names), name=name, backend="jax")


@functools.cache
def load_data(name: str) -> dict[str, np.ndarray]:
    """Arrays of ``galton/tasks/data/<name>.npz`` (written by bench/make_task_data.py)."""
    path = importlib.resources.files("galton.tasks") / "data" / f"{name}.npz"
    with path.open("rb") as f, np.load(f) as npz:
        return {k: npz[k] for k in npz.files}


def rows(array: np.ndarray) -> Callable[[int], jax.Array]:
    """``k -> array[k - 1]`` as a JAX array: the k-th standard observation, counted from 1."""
    return lambda k: jnp.asarray(array[k - 1])


def theta_names(d: int) -> list[str]:
    """``["theta_1", ..., "theta_d"]``, sbibm's 1-based parameter names."""
    return [f"theta_{i}" for i in range(1, d + 1)]


def rejection_sample(
    key: jax.Array,
    propose: Callable[[jax.Array, int], jax.Array],
    accept: Callable[[jax.Array], jax.Array],
    n: int,
    *,
    batch: int | None = None,
    max_proposals: int = 10**9,
) -> jax.Array:
    """Keep accepted proposals until there are ``n``.

    Args:
        propose: ``(key, m) -> (m, d)`` proposals (pure JAX; jitted here with ``m`` static).
        accept: ``(m, d) -> (m,)`` booleans.
        n: number of samples wanted.
        batch: proposals per round; defaults to ``max(4n, 10_000)``.

    Returns:
        ``(n, d)`` accepted draws in proposal order.
    """
    batch = batch or max(4 * n, 10_000)
    step = jax.jit(lambda k: (lambda th: (th, accept(th)))(propose(k, batch)))
    kept, total, proposed = [], 0, 0
    while total < n:
        if proposed >= max_proposals:
            raise RuntimeError(f"rejection sampling accepted only {total} of {proposed} proposals; giving up")
        key, sub = jax.random.split(key)
        theta, ok = step(sub)
        theta = np.asarray(theta)[np.asarray(ok)]
        kept.append(theta)
        total += len(theta)
        proposed += batch
    return jnp.asarray(np.concatenate(kept)[:n])


def nuts(
    potential: Callable[[jax.Array], jax.Array],
    init: jax.Array,
    n: int,
    key: jax.Array,
    *,
    num_warmup: int = 1000,
    thinning: int = 1,
    dense_mass: bool = True,
    forward_mode: bool = False,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    chain_method: str = "vectorized",
) -> jax.Array:
    """Draw ``n`` samples of ``exp(-potential)`` with NumPyro NUTS, chains vectorised.

    Args:
        potential: ``(d,) -> ()`` negative log density in an unconstrained space.
        init: ``(num_chains, d)`` starting points, one per chain.
        n: samples wanted; each chain contributes ``ceil(n / num_chains)`` after thinning.
        forward_mode: differentiate the potential in forward mode (for ODE solvers whose
            reverse mode needs checkpointing; cheaper for a few parameters).
        chain_method: ``"vectorized"`` runs the chains in lockstep (each step costs the longest
            trajectory of any chain); ``"sequential"`` suits potentials with inner while-loops
            (ODE solves), where lockstep chains also wait for each other's solver steps.

    Returns:
        ``(n, d)`` draws, shuffled across chains. Warns when split R-hat exceeds 1.05.
    """
    from numpyro.infer import NUTS

    from galton.sampling import run_chains

    kernel = NUTS(
        potential_fn=potential,
        dense_mass=dense_mass,
        target_accept_prob=target_accept_prob,
        forward_mode_differentiation=forward_mode,
        max_tree_depth=max_tree_depth,
    )
    run_key, shuffle_key = jax.random.split(key)
    return run_chains(
        kernel, init, n, key_run=run_key, key_shuffle=shuffle_key, warmup=num_warmup, thin=thinning,
        chain_method=chain_method, max_rhat=1.05,
    )

