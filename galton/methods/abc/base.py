"""What the ABC methods share: their settings' checks, and simulating a batch of θ.

An ABC method owns its loop (`run`), so `galton.infer` hands it the problem, the budget and
the store. Every batch goes through `galton.simulate` (vmapped and jitted for JAX simulators,
the executor for Python ones), with a store path of its own when the run has a store: a run
started again with the same key walks the same path and reads back what was simulated.
"""

from __future__ import annotations

import functools
import numbers
from pathlib import Path
from typing import ClassVar

import jax
import numpy as np

from galton.chunks import in_chunks
from galton.methods.abc.distances import ABCError
from galton.simulate import POLICIES, simulate
from galton.store import Simulations


class ABCMethod:
    """Mixin of the ABC settings objects: ``run(problem, x_obs, key=, budget=, ...)``."""

    name: ClassVar[str] = ""
    iid: ClassVar[bool] = False

    def _check_common(self) -> None:
        if self.on_invalid not in POLICIES:
            raise ABCError(f"on_invalid must be one of {POLICIES}, got {self.on_invalid!r}")
        if self.summary is not None and not callable(self.summary):
            raise ABCError(f"summary must be a function of one x (or a fitted galton.summaries.Compressor), got {type(self.summary).__name__}")

    def _check_run(self, rounds: int) -> None:
        if rounds != 1:
            raise ABCError(f"rounds={rounds} does not apply to {self.name}; it sets its own schedule (budget= bounds it)")


def check_setting(name: str, value, wanted: str, within=lambda v: True, *, integer: bool = False) -> None:
    """Refuse a setting that is not a number (an integer with ``integer``) or that ``within`` rejects:
    text such as ``"0.1"`` would otherwise reach a comparison as a TypeError, a zero a division."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not within(value):
        raise ABCError(f"{name} must be {wanted}, got {value!r}")


def simulate_batch(problem, theta: np.ndarray, *, key, store: Path | None, name: str, chunk: int, on_invalid: str) -> Simulations:
    """Simulate at θ ``(m, d)`` in chunks of ``chunk`` rows (one compiled shape per run)."""
    path = None if store is None else Path(store) / name
    return simulate(problem, key=key, theta=theta, store=path, chunk_size=chunk, on_invalid=on_invalid, progress=False)


def check_budget(budget: int, needed: int, what: str) -> None:
    if budget < needed:
        raise ABCError(f"budget={budget} simulations cannot fit {what} ({needed} simulations)")


def prior_draws(problem, n: int, key: jax.Array) -> np.ndarray:
    return np.asarray(problem.prior.sample(key, (n,)))


def numpy_rng(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded by a JAX key: host-side draws of any shape without a compile per shape."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


@functools.lru_cache(maxsize=16)
def _log_prob_function(prior):
    return jax.jit(prior.log_prob)


def log_prior(prior, theta: np.ndarray, chunk: int) -> np.ndarray:
    """log p(θ) ``(m,)`` of θ ``(m, d)``, −inf outside the support."""
    return in_chunks(_log_prob_function(prior), theta, chunk).astype(np.float64)


__all__ = ["ABCMethod", "check_budget", "check_setting", "log_prior", "numpy_rng", "prior_draws", "simulate_batch"]
