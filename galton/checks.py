"""Checks of settings that are numbers: one place, one wording, so that every setting a user
can get wrong is refused the same way, before anything is simulated."""

from __future__ import annotations

import math

import numpy as np


def _scalar(value) -> int | float | None:
    """``value`` as a Python int or float when it is one real number (Python, NumPy, or a 0-d
    JAX array), else None; a bool or a string is not a number here."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or np.ndim(value) != 0:
        return None
    try:
        array = np.asarray(value)
    except Exception:  # an object NumPy cannot read is not a number
        return None
    if array.dtype.kind in "iu":
        return int(array)
    return float(array) if array.dtype.kind == "f" else None


def check_count(value, name: str, *, minimum: int = 1, what: str = "") -> int:
    """``value`` as an int: an integer (Python, NumPy or JAX; not a bool or a float) of at least
    ``minimum``, else a ValueError naming ``name`` (and ``what`` it counts, when given)."""
    number = _scalar(value)
    if not isinstance(number, int) or number < minimum:
        if minimum == 1:
            wanted = f"a positive integer number of {what}" if what else "a positive integer"
        else:
            wanted = f"an integer of at least {minimum}{f' {what}' if what else ''}"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return number


def check_real(value, name: str, *, low: float = 0.0, high: float = math.inf, low_inclusive: bool = False) -> float:
    """``value`` as a float: a real number above ``low`` (or equal to it, with ``low_inclusive``)
    and below ``high``, else a ValueError naming ``name``; NaN and infinities fail (a NaN step
    size trains nothing and reports no error)."""
    number = _scalar(value)
    if number is None or not (low <= number if low_inclusive else low < number) or not number < high:
        if high == math.inf and low == 0.0:
            wanted = "a non-negative number" if low_inclusive else "a positive number"
        else:
            wanted = f"a number in {'[' if low_inclusive else '('}{low:g}, {high:g})"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return float(number)


__all__ = ["check_count", "check_real"]
