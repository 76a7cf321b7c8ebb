"""One machine-readable line per result, ``BENCH-RESULT {json}``, for bench/run_all.py to collect.

Figures are named alike across the scripts: ``galton_s`` and ``peer_s`` for the times compared,
``ratio`` for galton's speed-up over the peer, ``c2st``, ``theta`` and ``sigma``.
"""

from __future__ import annotations

import json


def report(bench: str, case: str, **figures) -> None:
    """Print one result; figures that are None are left out."""
    figures = {name: value for name, value in figures.items() if value is not None}
    line = json.dumps({"bench": bench, "case": case, **figures}, default=lambda v: v.item())  # NumPy scalars
    print(f"BENCH-RESULT {line}", flush=True)
