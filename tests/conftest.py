"""Shared test set-up."""

import os
from pathlib import Path

import pytest

# galton's persistent compile cache is off for the tests unless asked for
# (GALTON_COMPILE_CACHE=1). On jax 0.10.2's CPU backend, a worker process that has compiled many
# hundreds of programs sometimes aborts inside XLA while serialising one for the cache
# (`put_executable_and_time`): two full runs of 2026-12-06 died so, in different tests (SALLY's
# summaries, inference compilation), while the same suite ran clean with the cache off (13.6 min
# from cold). A test run gains little from it anyway: CI machines start with an empty cache.
os.environ.setdefault("GALTON_COMPILE_CACHE", "0")

# each xdist worker gets a compile cache of its own, so that no worker reads an entry another
# process is writing (a full run once died in XLA's compile while another process filled the cache)
if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("GALTON_COMPILE_CACHE", "1") != "0":
    base = Path(os.environ.get("GALTON_CACHE_DIR", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "galton" / "jax"))
    os.environ["GALTON_CACHE_DIR"] = str(base / os.environ["PYTEST_XDIST_WORKER"])

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _fresh_compiled_programs():
    """Drop every compiled program after each test module. An xdist worker that had loaded many
    hundreds of them aborted inside XLA's CPU compiler (2026-12-06, clean-clone CI, in
    test_neural_mcmc at 90 % of the run, the worker at 6 GB), which also left xdist hung; a worker
    now holds one module's programs at a time."""
    yield
    import jax

    jax.clear_caches()

# the sbibm reference posteriors live beside the repository, in CI and on developer machines
REFERENCE = ROOT.parent / "shared" / "reference"


@pytest.fixture
def reference_dir():
    if not REFERENCE.exists():
        pytest.skip(f"sbibm reference samples not found at {REFERENCE}")
    return REFERENCE
