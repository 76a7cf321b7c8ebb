"""The checks of `muse`'s settings, each refused by name with its value before anything compiles:
a zero would otherwise surface as a division by zero in the chunking, an empty L-BFGS memory
as an index error inside JAX, and a fractional count would be truncated without a word."""

from __future__ import annotations

from galton.checks import check_count, check_real
from galton.problem import ProblemError, Program

JACOBIAN_METHODS = ("implicit", "finite_difference")
COUNTS = ("max_iterations", "map_max_iterations", "map_memory", "cg_max_iterations")  # integers ≥ 1
POSITIVE = ("theta_rtol", "step_scale", "finite_difference_step", "map_gtol", "cg_rtol")  # finite, > 0
NON_NEGATIVE = ("map_score_rtol",)  # finite, ≥ 0 (0: a MAP converges on its gradient alone)


def check_settings(problem, *, jacobian: str, check: str | None, nsims, chunk_size, **settings) -> None:
    """Raise a ValueError naming the first of ``muse``'s settings that is not what it must be
    (a `ProblemError` for ``check="nuts"`` on a problem NUTS cannot run)."""
    if jacobian not in JACOBIAN_METHODS:
        raise ValueError(f"jacobian must be one of {JACOBIAN_METHODS}, got {jacobian!r}")
    if check not in (None, "nuts"):
        raise ValueError(f"check must be 'nuts' or None, got {check!r}")
    if check and not isinstance(problem, Program):
        raise ProblemError("check='nuts' needs a galton Program (a HierarchicalModel has no NumPyro model to run NUTS on)")
    for name, value in {"nsims": nsims, "chunk_size": chunk_size}.items():
        if value is not None:  # None: muse's own choice
            check_count(value, name)
    for name, value in settings.items():
        if name in COUNTS:
            check_count(value, name)
        if name in POSITIVE:
            check_real(value, name)
        if name in NON_NEGATIVE:
            check_real(value, name, low_inclusive=True)
