"""A persistent XLA compilation cache, on by default.

Compiling a flow's training epoch takes seconds, longer than training it on 10k
simulations; with the cache a second run of the same configuration, in any later process,
skips compilation. A cache directory the user set for JAX is left alone; set
``GALTON_COMPILE_CACHE=0`` to turn galton's off, or ``GALTON_CACHE_DIR`` to move it.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax


def enable_compile_cache() -> None:
    if os.environ.get("GALTON_COMPILE_CACHE", "1") == "0" or jax.config.jax_compilation_cache_dir:
        return
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "galton" / "jax"
    path = Path(os.environ.get("GALTON_CACHE_DIR", default))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: run without the cache rather than fail
        return
    jax.config.update("jax_compilation_cache_dir", str(path))
    # the many small programs of eager model construction add up to seconds: cache them all
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
