"""Randomness a `Program` draws outside ``numpyro.sample``: it has no density, so every method
that evaluates log p(x, z | θ) (NUTS, inference compilation, MUSE, mining gold) refuses it."""

from __future__ import annotations

import numpy as np
from numpyro import handlers

from galton.problem import ProblemError, Program


def hidden_randomness(program: Program) -> list[str]:
    """Sites of ``program`` that still change with the random seed when every sample site is
    held fixed: a deterministic site fed by ``numpyro.prng_key()`` or ``jax.random`` (a sample
    hidden from NumPyro), or a sample site whose distribution is. Such draws have no density,
    so log p(x, z | θ) silently fixes them to one value. Found once per program (two traces)."""
    if "_hidden_randomness" in program.__dict__:
        return list(program.__dict__["_hidden_randomness"])
    first = handlers.trace(handlers.seed(program.model, 0)).get_trace()
    held = {k: s["value"] for k, s in first.items() if s["type"] == "sample"}
    again = handlers.trace(handlers.seed(handlers.condition(program.model, data=held), 1)).get_trace()
    moved = []
    for k, s in again.items():
        if k not in first:
            moved.append(k)
        elif s["type"] == "deterministic":
            if not np.array_equal(np.asarray(s["value"]), np.asarray(first[k]["value"]), equal_nan=True):
                moved.append(k)
        elif s["type"] == "sample":
            lp, lp_first = (np.asarray(site["fn"].log_prob(held[k])) for site in (s, first[k]))
            if not np.array_equal(lp, lp_first, equal_nan=True):
                moved.append(k)
    object.__setattr__(program, "_hidden_randomness", tuple(moved))
    return moved


def check_density(program: Program, method: str) -> None:
    """Raise `ProblemError` naming the sites when ``program`` draws randomness outside
    ``numpyro.sample`` (see `hidden_randomness`): ``method`` needs every random choice to have
    a density."""
    moved = hidden_randomness(program)
    if moved:
        raise ProblemError(
            f"site(s) {moved} of {program.name} change with the random seed even when every sample site is held "
            "fixed: the model draws randomness outside numpyro.sample (numpyro.prng_key() or jax.random feeding a "
            f"deterministic site or a distribution), which has no density, so {method} would treat those draws as "
            "constants. Draw them with numpyro.sample(...) so that they become latents; simulation-based methods "
            "(npe, nle, nre, abc) can use the model as it is"
        )


__all__ = ["check_density", "hidden_randomness"]
