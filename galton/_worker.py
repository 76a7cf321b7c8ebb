"""What a worker process runs for a Python simulator.

Kept free of JAX imports so a spawned worker starts fast; the simulator travels as
cloudpickle bytes so lambdas and closures work too.
"""

from __future__ import annotations

import traceback

import cloudpickle
import numpy as np


def dumps(fn) -> bytes:
    return cloudpickle.dumps(fn)


def run_batch(fn_bytes: bytes, keys: list, thetas: list, offset: int):
    """Run ``fn(key, theta)`` for each pair; returns ``("ok", [x, ...])`` or ``("error", (row, text))``.

    ``row`` counts from the start of the caller's chunk (``offset`` is this batch's first row).
    """
    fn = cloudpickle.loads(fn_bytes)
    out = []
    for i, (key, theta) in enumerate(zip(keys, thetas)):
        try:
            out.append(np.asarray(fn(key, theta)))
        except Exception as err:  # report, don't crash the pool: the caller names the θ
            return "error", (offset + i, f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
    return "ok", out
