"""Shared test set-up. galton's persistent compile cache (on by default, see
galton/_cache.py) keeps repeated runs fast."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# the sbibm reference posteriors live beside the repository, in CI and on developer machines
REFERENCE = ROOT.parent / "shared" / "reference"


@pytest.fixture
def reference_dir():
    if not REFERENCE.exists():
        pytest.skip(f"sbibm reference samples not found at {REFERENCE}")
    return REFERENCE
