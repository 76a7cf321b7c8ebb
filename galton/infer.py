"""The one-liner: `infer(problem, x_obs, method="npe", budget=10_000, rounds=1, key=...)`.

It runs simulate → fit, and for ``rounds > 1`` draws each later round's θ from the current
posterior at ``x_obs`` (SNPE with the atomic loss, SNLE, SNRE), continuing to train the
same network on all simulations so far.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from galton import methods
from galton.keys import as_key
from galton.prior import check_theta
from galton.problem import ProblemError, Program, Simulator, check_observation, check_simulated_observation
from galton.simulate import simulate
from galton.store import Simulations, round_store


def infer(
    problem: Simulator | Program,
    x_obs,
    *,
    key: jax.Array,
    method: str | Any = "npe",
    budget: int = 10_000,
    rounds: int = 1,
    simulations: Simulations | None = None,
    store: str | None = None,
    progress: bool = True,
    **options,
):
    """Estimate p(θ | x_obs) with ``budget`` simulations.

    Args:
        problem: a `Simulator` or `Program`.
        x_obs: the observation ``(*x_shape)``; for NLE and NRE also ``(n_obs, *x_shape)`` iid ones.
        key: a ``jax.random`` key.
        method: a registered name (``galton.methods.names()``: ``"npe"``, ``"nle"``, ``"nre"``, ...)
            or a configured method object such as ``NPE(flow="maf")``.
        budget: total simulations, split evenly over ``rounds``.
        rounds: 1 for amortized inference; more for the sequential variants.
        simulations: optional prior simulations to use as the first round instead of simulating:
            `Simulations` from `galton.simulate`, or a ``(theta (n, d), x (n, *x_shape))`` tuple.
        store: optional directory; round r's simulations go to the zarr store ``store/round_r``, and
            a run started again with the same arguments resumes from it (and ends the same).
        progress: show progress bars.
        **options: settings for the method named by ``method`` (e.g. ``flow="maf"``, ``variant="c"``,
            ``on_invalid="drop"`` to train on the simulations whose x is finite).

    Returns:
        The posterior conditioned on ``x_obs`` (`FlowPosterior` for NPE, `DensityPosterior` for
        NLE and NRE, `TMNREPosterior` for TMNRE), with the training history of each round in
        ``.history``.
    """
    if not isinstance(problem, (Simulator, Program)):
        raise ProblemError(f"problem must be a galton Simulator or Program, got {type(problem).__name__}")
    method = methods.get(method, **options)
    key = as_key(key)
    if int(budget) != budget or budget < 1:
        raise ValueError(f"budget must be a positive number of simulations, got {budget!r}")
    if int(rounds) != rounds or not 1 <= rounds <= budget:
        raise ValueError(f"rounds must be an integer between 1 and the budget, got {rounds!r}")
    if 0 in np.shape(x_obs):  # an empty set of iid observations would leave the prior as the posterior
        raise ProblemError(f"x_obs has shape {np.shape(x_obs)}, which holds no observation")
    x_shape = None
    if problem.backend == "jax":
        x_shape = jax.eval_shape(problem.simulate_flat, jax.random.key(0), jnp.zeros(problem.prior.dim)).shape
        x_obs = check_observation(problem, x_obs, x_shape, iid=method.iid)
    else:  # x's shape is known after the first simulations; its type and finiteness are checked now
        check_observation(problem, x_obs, np.shape(x_obs), iid=False)
    if simulations is not None:
        simulations = _given(problem, simulations, x_shape)
    if hasattr(method, "run"):  # a method with rounds of its own (TMNRE's truncation)
        return method.run(problem, x_obs, key=key, budget=budget, rounds=rounds, simulations=simulations, store=store, progress=progress)
    per_round = [budget // rounds + (r < budget % rounds) for r in range(rounds)]
    on_invalid = getattr(method, "on_invalid", "raise")
    model, history, sims, posterior = None, [], simulations, None
    for r, n in enumerate(per_round):
        key_sim, key_fit, key_draw, key = jax.random.split(key, 4)
        if r == 0 and simulations is not None:
            new = simulations
        elif r == 0:
            new = simulate(problem, n, key=key_sim, store=round_store(store, r), on_invalid=on_invalid, progress=progress)
        else:
            theta = posterior.sample(n, key=key_draw)
            new = simulate(problem, key=key_sim, theta=np.asarray(theta), store=round_store(store, r), on_invalid=on_invalid,
                           progress=progress)
        sims = new if sims is None or (r == 0 and simulations is not None) else Simulations.concatenate([sims, new])
        if r == 0 and problem.backend != "jax":
            x_obs = check_simulated_observation(problem, x_obs, sims, iid=method.iid)
        model, round_history = method.fit(sims, problem.prior, key=key_fit, sequential=r > 0, init=model, progress=progress)
        history.append(round_history)
        posterior = method.posterior(model, problem.prior, history).condition(x_obs)
    return posterior


def _given(problem, simulations, x_shape) -> Simulations:
    """The simulations given to `infer`, checked against ``problem`` before any training: a wrong
    shape would otherwise train in full and fail after, and θ outside the prior would train silently."""
    if isinstance(simulations, tuple) and len(simulations) == 2:
        simulations = Simulations(np.asarray(simulations[0]), np.asarray(simulations[1]), names=list(problem.names))
    if not isinstance(simulations, Simulations):
        raise ProblemError(f"simulations must be galton Simulations (from galton.simulate) or a (theta, x) tuple, "
                           f"got {type(simulations).__name__}")
    check_theta(problem.prior, simulations.theta, what="simulations.theta")
    if x_shape is not None and simulations.x.shape[1:] != tuple(x_shape):
        wanted = ", ".join(["n", *map(str, x_shape)])
        raise ProblemError(f"simulations.x has shape {simulations.x.shape}, but {problem.name} simulates x of shape {tuple(x_shape)}: "
                           f"expected ({wanted})")
    return simulations
