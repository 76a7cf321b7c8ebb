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


def test_predictive_check_of_a_simulator_reads_each_value_of_a_short_x():
    import jax
    import jax.numpy as jnp

    from analytic import PROBLEM, X_OBS
    from galton import GaussianPosterior, predictive_check
    from galton.plot import predictive

    exact = GaussianPosterior(np.asarray(X_OBS) / 2, 0.05 * np.eye(3), PROBLEM.prior.names, x_obs=X_OBS)
    check = predictive_check(exact, PROBLEM, X_OBS, key=jax.random.key(0), n=400)
    assert check.names == ["x[0]", "x[1]", "x[2]"] and check.extreme() == []
    assert np.all((check.p_values > 0.05) & (check.p_values < 0.95))
    predictive(check)
    wrong = GaussianPosterior(np.asarray(X_OBS) / 2 + 2.0, 0.05 * np.eye(3), PROBLEM.prior.names, x_obs=X_OBS)
    with pytest.warns(UserWarning, match=r"x\[0\].*x\[1\].*x\[2\]"):
        assert len(predictive_check(wrong, PROBLEM, X_OBS, key=jax.random.key(0), n=400).extreme()) == 3
    with pytest.raises(ValueError, match="one scalar per x"):
        predictive_check(exact, PROBLEM, X_OBS, key=jax.random.key(0), n=10, statistics={"both": lambda x: x[:2]})
    with pytest.raises(ValueError, match="NaN"):
        predictive_check(exact, PROBLEM, jnp.array([np.nan, 0.0, 0.0]), key=jax.random.key(0), n=10)
