"""Joint labels with less noise: average t(x, z|θ), or the joint ratio, over draws of z | x, θ.

The joint score t(x, z|θ) = ∇θ log p(x, z|θ) is an unbiased label for the score of the
likelihood, E[t | x, θ] = ∇θ log p(x|θ), with z ~ p(z|x, θ). Its noise is the spread of t over
those z; on the state-space task it is most of the label (the joint information on σ_v is 160,
x's 21). A simulation's own z is an exact draw of z | x, θ, so a Markov chain that leaves
p(z|x, θ) invariant and starts there gives more draws of it, each exact in distribution. The
mean of t over the chain is then a label with the same expectation and less noise: a
Rao-Blackwellisation bought with gradient evaluations of the joint density, not simulations.
The same holds for the joint ratio: E[p(x, z|θ') / p(x, z|θ) | x, θ] = p(x|θ') / p(x|θ), so
`chain_labels` also returns log p(x, z'|θ') − log p(x, z'|θ) along each chain, from which
`galton.methods.gold.pairs.averaged_pair_labels` makes ROLR's and ALICE's ratio labels.

The chain is NumPyro's NUTS (`numpyro.infer.hmc.hmc`, tree depth 4 by default) on the
unconstrained latents, one chain per simulation (vmapped). Its step size and diagonal mass are
adapted on a warm-up chain from the same z, then the kept chain restarts from z with them
fixed. On the state-space task (2,000 simulations, 200 warm-up transitions) 100 NUTS
transitions cut the labels' noise 13-65x per parameter (variance 15, 66, 75 to 0.23, 1.2,
1.2) in 12 s; 200 HMC transitions of 10 leapfrog steps cut it only 9-17x in 10 s, their step
size adapted too small for the states' long correlations. The adapted settings depend on z only through a long warm-up, which this module takes
as independent of it (measured: the labels' mean stays that of the single-draw labels; see
tests/test_latent_chains.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer.hmc import hmc

from galton.augment import check_rows
from galton.checks import check_count
from galton.keys import as_key
from galton.problem import ProblemError, Program
from galton.progress import Progress
from galton.store import Simulations

CHUNK = 2000


def check_continuous_latents(program: Program) -> None:
    """Raise `ProblemError` naming a discrete latent site (HMC moves only continuous ones), or
    saying that the program has none to move."""
    if not isinstance(program, Program):
        raise ProblemError(f"averaged labels need a galton Program (its joint density); got {type(program).__name__}")
    if not program.latents.dim:
        raise ProblemError(f"{program.name} has no latent sites: its joint score is already the score of p(x|θ)")
    discrete = program.discrete_latents()
    if discrete:
        raise ProblemError(f"latent site {discrete[0]!r} is discrete: the chains over z | x, θ move continuous latents only")


@functools.lru_cache(maxsize=8)
def _chains(program: Program, warmup: int, steps: int, depth: int):
    """Jitted ``(keys (n,), x (n, d_x), z (n, d_z), θ (n, d), partner (n, d)) -> (mean scores
    over the first and the second half of the row's z and its draws (n, 2, d), log p(x, z'|partner)
    − log p(x, z'|θ) at the row's z and each draw (n, steps + 1), acceptance (n,))``."""
    blocks = program.latents

    def log_density(u, x, theta):  # of the unconstrained latents, flat
        return program.log_joint_unconstrained(x, blocks.unflatten(u), theta)

    def labels(u, x, theta, partner):  # t(x, z|θ) and the partner's log ratio at the constrained z(u)
        z = program.latents_to_constrained(blocks.unflatten(u))
        value, score = jax.value_and_grad(lambda th: program.log_joint(x, z, th))(theta)
        return score, program.log_joint(x, z, partner) - value

    init_kernel, sample_kernel = hmc(potential_fn_gen=lambda x, theta: lambda u: -log_density(u, x, theta), algo="NUTS")

    def one(key, x, z, theta, partner):
        args = (x, theta)
        u0 = blocks.flatten(program.latents_to_unconstrained(blocks.unflatten(z)))
        k_warm, k_kept = jax.random.split(key)
        state = init_kernel(u0, warmup, max_tree_depth=depth, model_args=args, rng_key=k_warm)
        state = jax.lax.fori_loop(0, warmup, lambda i, s: sample_kernel(s, model_args=args), state)
        adapted = state.adapt_state
        state = init_kernel(u0, 0, step_size=adapted.step_size, inverse_mass_matrix=adapted.inverse_mass_matrix,
                            adapt_step_size=False, adapt_mass_matrix=False, max_tree_depth=depth, model_args=args, rng_key=k_kept)

        def step(s, _):
            s = sample_kernel(s, model_args=args)
            return s, (*labels(s.z, x, theta, partner), s.accept_prob)

        _, (scores, log_ratios, accept) = jax.lax.scan(step, state, None, length=steps)
        score0, log_ratio0 = labels(u0, x, theta, partner)
        scores = jnp.concatenate([score0[None], scores])
        half = _half(steps)
        return jnp.stack([scores[:half].mean(0), scores[half:].mean(0)]), jnp.concatenate([log_ratio0[None], log_ratios]), accept.mean()

    return jax.jit(jax.vmap(one))


def _half(steps: int) -> int:
    """Draws in the first half of a chain's ``steps + 1`` (its start and its draws)."""
    return (steps + 1) // 2


def averaged_scores(program: Program, sims: Simulations, *, key: jax.Array, steps: int = 100, warmup: int = 200,
                    max_tree_depth: int = 4, progress: bool = True) -> Simulations:
    """``sims`` with each joint score replaced by its mean over a NUTS chain on z | x, θ.

    Args:
        program: the `Program` that made ``sims``; its latents must be continuous.
        sims: simulations with their latents and joint scores (``galton.simulate(program, n,
            key=..., augment="score", keep_latents=True)``): θ ``(n, d)``, x ``(n, d_x)``, extras
            ``z (n, d_z)`` and ``score (n, d)``.
        key: a ``jax.random`` key.
        steps: transitions kept per simulation; the label is the mean of t over the simulation's
            z and these ``steps`` draws.
        warmup: transitions that adapt each chain's step size and diagonal mass.
        max_tree_depth: NUTS's tree depth (at most 2**depth − 1 leapfrog steps a transition;
            the chains are vmapped, so each transition waits for the deepest tree).
        progress: show progress over chunks of simulations.

    Returns:
        `Simulations` like ``sims``, extras ``score`` averaged ``(n, d)``, ``score_single`` the
        simulations' own ``(n, d)``, and ``acceptance`` each chain's mean acceptance ``(n,)``.
    """
    missing = [c for c in ("z", "score") if c not in sims.extras]
    if missing:
        raise ProblemError(f"averaged scores need the simulations' {' and '.join(missing)}: simulate with "
                           "galton.simulate(program, n, key=..., augment='score', keep_latents=True)")
    scores, acceptance = chain_scores(program, sims.x, sims.extras["z"], sims.theta, key=key, steps=steps, warmup=warmup,
                                      max_tree_depth=max_tree_depth, progress=progress)
    extras = {**sims.extras, "score": scores, "score_single": np.asarray(sims.extras["score"]), "acceptance": acceptance}
    return Simulations(sims.theta, sims.x, extras, sims.names)


def chain_scores(program: Program, x, z, theta, *, key: jax.Array, steps: int = 100, warmup: int = 200, max_tree_depth: int = 4,
                 progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The mean of t(x, z'|θ) over the row's z and ``steps`` NUTS draws z' of z | x, θ, row by
    row: x ``(n, *x_shape)``, z ``(n, d_z)`` (a draw of z | x, θ, e.g. the simulation's own),
    θ ``(n, d)`` -> scores ``(n, d)`` and each chain's mean acceptance ``(n,)``. The settings
    are `averaged_scores`'s."""
    scores, _, acceptance = chain_labels(program, x, z, theta, None, key=key, steps=steps, warmup=warmup,
                                         max_tree_depth=max_tree_depth, progress=progress)
    return scores, acceptance


def chain_labels(program: Program, x, z, theta, partner, *, key: jax.Array, steps: int = 100, warmup: int = 200,
                 max_tree_depth: int = 4, split: bool = False, progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`chain_scores`, and along the same chains the joint log ratio against ``partner``.

    Args:
        partner: ``(n, d)`` a second θ per row, or None (the log ratios are then zeros).
        split: return the mean scores of each half of the chain ``(n, 2, d)`` (the row's z and
            the first draws, then the rest) instead of their mean: two nearly independent
            estimates of E[t | x, θ], whose product estimates the score's outer product
            (`galton.fisher_information`'s ``"chains"``).
        The others as `chain_scores`.

    Returns:
        The mean scores ``(n, d)`` (with ``split``, ``(n, 2, d)``); l = log p(x, z'|partner) −
        log p(x, z'|θ) at the row's z and each draw ``(n, steps + 1)``, whose mean of exp l is an
        unbiased estimate of the ratio p(x|partner) / p(x|θ); and each chain's mean acceptance ``(n,)``.
    """
    check_continuous_latents(program)
    for name, value, minimum in (("steps", steps, 1), ("warmup", warmup, 0), ("max_tree_depth", max_tree_depth, 1)):
        check_count(value, name, minimum=minimum)
    n = len(x)
    if n == 0:
        raise ProblemError("there are no simulations to average the labels of")
    x, z, theta = (np.asarray(a) for a in check_rows(program, np.asarray(x).reshape(n, -1), z, theta))
    if partner is None:
        partner = theta
    elif np.shape(partner) != np.shape(theta):
        raise ProblemError(f"partner must have the shape of theta, {np.shape(theta)}; got {np.shape(partner)}")
    partner = np.asarray(partner, theta.dtype)
    keys = jax.random.split(as_key(key), n)
    run = _chains(program, int(warmup), int(steps), int(max_tree_depth))
    outputs = []
    bar = Progress(n, unit="simulation", desc="latent chains", enabled=progress, leave=False)
    size = min(CHUNK, n)
    try:
        for start in range(0, n, size):
            rows = np.minimum(np.arange(start, start + size), n - 1)  # the last chunk padded: one compiled shape
            out = run(keys[rows], *(jnp.asarray(a[rows]) for a in (x, z, theta, partner)))
            kept = min(size, n - start)
            outputs.append([np.asarray(o)[:kept] for o in out])
            bar.update(kept)
    finally:
        bar.close()
    halves, log_ratios, acceptance = (np.concatenate(parts) for parts in zip(*outputs))
    half = _half(int(steps))
    scores = (half * halves[:, 0] + (int(steps) + 1 - half) * halves[:, 1]) / (int(steps) + 1)
    return (halves if split else scores), log_ratios, acceptance


__all__ = ["averaged_scores", "chain_labels", "chain_scores", "check_continuous_latents"]
