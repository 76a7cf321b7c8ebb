"""Benchmark tasks: `get(name)` returns a `Task`, `names()` lists them.

The sbibm tasks follow sbibm 1.1.0 exactly (see docs/tasks.md), so its published
reference posteriors and C2ST figures apply to galton's results.
"""

from __future__ import annotations

import importlib
import inspect

from galton.tasks.base import Task

# name -> module under galton.tasks that defines `task(**options) -> Task`
_REGISTRY = {
    "funnel": "funnel",
    "coupled_funnels": "coupled_funnels",
    "two_moons": "two_moons",
    "gaussian_linear": "gaussian_linear",
    "gaussian_linear_uniform": "gaussian_linear_uniform",
    "gaussian_mixture": "gaussian_mixture",
    "slcp": "slcp",
    "slcp_distractors": "slcp_distractors",
    "bernoulli_glm": "bernoulli_glm",
    "bernoulli_glm_raw": "bernoulli_glm_raw",
    "sir": "sir",
    "lotka_volterra": "lotka_volterra",
    "galton_board": "galton_board",
    "lognormal_field": "lognormal_field",
    "state_space": "state_space",
    "mixture_assignments": "mixture_assignments",
}


def names() -> list[str]:
    """Names of all benchmark tasks, sorted."""
    return sorted(_REGISTRY)


def get(name: str, **options) -> Task:
    """The task called ``name``; ``options`` go to its constructor (e.g. ``dim`` for funnel)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown task {name!r}; available: {', '.join(names())}")
    module = importlib.import_module(f"galton.tasks.{_REGISTRY[name]}")
    known = inspect.signature(module.task).parameters
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = f"its options are {', '.join(known)}" if known else "it takes no options"
        raise ValueError(f"task {name!r} has no option {', '.join(unknown)}; {takes}")
    return module.task(**options)


__all__ = ["Task", "get", "names"]
