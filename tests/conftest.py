"""Shared test set-up: a persistent compile cache keeps repeated runs fast."""

from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]
jax.config.update("jax_compilation_cache_dir", str(ROOT / ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

# the sbibm reference posteriors live beside the repository, in CI and on developer machines
REFERENCE = ROOT.parent / "shared" / "reference"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~30 s; run with -m slow")


@pytest.fixture
def reference_dir():
    if not REFERENCE.exists():
        pytest.skip(f"sbibm reference samples not found at {REFERENCE}")
    return REFERENCE
