import numpy as np
import pytest

from galton.diagnostics import c2st


def test_c2st_identical_distributions_are_indistinguishable():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((1000, 2)), rng.standard_normal((1000, 2))
    assert abs(c2st(a, b) - 0.5) < 0.05


def test_c2st_separates_different_distributions():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((1000, 2))
    b = rng.standard_normal((1000, 2)) + np.array([3.0, 0.0])
    assert c2st(a, b) > 0.9
    assert c2st(a, b, scoring="roc_auc") > 0.95


def test_c2st_z_scores_with_the_first_set():
    # a tiny scale would stall the classifier without z-scoring; c2st must not care about units
    rng = np.random.default_rng(2)
    a = 1e-4 * rng.standard_normal((600, 1))
    b = 1e-4 * (rng.standard_normal((600, 1)) + 3.0)
    assert c2st(a[:, 0], b[:, 0]) > 0.9  # 1-d input is taken as (n, 1)
    assert c2st(a, b, noise_scale=0.1) > 0.85


def test_c2st_is_deterministic_given_seed():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((300, 2)), rng.standard_normal((300, 2)) + 0.3
    assert c2st(a, b, seed=5) == c2st(a, b, seed=5)


def test_c2st_rejects_bad_input():
    a = np.zeros((10, 2)) + np.arange(10)[:, None]
    with pytest.raises(ValueError, match="samples_a has 2 dimensions but samples_b has 3"):
        c2st(a, np.ones((10, 3)))
    bad = a.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="samples_b has 1 rows with NaN or inf values, first row 4"):
        c2st(a, bad)
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        c2st(np.ones((2, 2, 2)), a)
    with pytest.raises(ValueError, match="constant in dimensions"):
        c2st(np.ones((10, 2)), a)
