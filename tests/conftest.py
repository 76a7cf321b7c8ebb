"""Shared test set-up. galton's persistent compile cache (on by default, see
galton/_cache.py) keeps repeated runs fast."""

import os
from pathlib import Path

import pytest

# each xdist worker gets a compile cache of its own, so that no worker reads an entry another
# process is writing (a full run once died in XLA's compile while another process filled the cache)
if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("GALTON_COMPILE_CACHE", "1") != "0":
    base = Path(os.environ.get("GALTON_CACHE_DIR", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "galton" / "jax"))
    os.environ["GALTON_CACHE_DIR"] = str(base / os.environ["PYTEST_XDIST_WORKER"])

ROOT = Path(__file__).resolve().parents[1]

# the sbibm reference posteriors live beside the repository, in CI and on developer machines
REFERENCE = ROOT.parent / "shared" / "reference"


@pytest.fixture
def reference_dir():
    if not REFERENCE.exists():
        pytest.skip(f"sbibm reference samples not found at {REFERENCE}")
    return REFERENCE
