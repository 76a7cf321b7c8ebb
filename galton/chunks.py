"""Rows in fixed-size chunks: eager JAX compiles once per input shape, and batches come in every
size (SMC-ABC's populations, rejection batches, support checks), so callers pad rows to a few
shapes and evaluate whole chunks."""

from __future__ import annotations

import numpy as np


def pad_rows(a: np.ndarray, chunk: int, fill=None) -> np.ndarray:
    """``a`` padded along axis 0 to a whole number of ``chunk`` rows (with its last row, or ``fill``)."""
    a = np.asarray(a)
    extra = -len(a) % chunk
    if not extra:
        return a
    tail = np.repeat(a[-1:], extra, axis=0) if fill is None else np.full((extra, *a.shape[1:]), fill, a.dtype)
    return np.concatenate([a, tail])


def in_chunks(fn, rows: np.ndarray, chunk: int) -> np.ndarray:
    """``fn`` on ``rows`` ``(m, ...)`` padded to whole chunks, so one compiled shape serves every m
    -> ``fn``'s rows ``(m, ...)`` as a NumPy array."""
    padded = pad_rows(rows, chunk)
    return np.concatenate([np.asarray(fn(padded[i : i + chunk])) for i in range(0, len(padded), chunk)])[: len(rows)]


__all__ = ["in_chunks", "pad_rows"]
