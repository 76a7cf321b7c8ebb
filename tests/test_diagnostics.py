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
    with pytest.raises(ValueError, match="n must be an integer of at least 2 replications, got 1"):
        predictive_check(exact, PROBLEM, X_OBS, key=jax.random.key(0), n=1)


# ---- calibration's inputs -----------------------------------------------------------------------


def _pairs(m=20, d=2, x_dim=3):
    rng = np.random.default_rng(0)
    return rng.normal(size=(m, d)), rng.normal(size=(m, x_dim))


def _calibrations():
    """Each calibration function of (posterior, θ, x), with its ranks or coverage curve as the result."""
    import jax

    from galton import calibration

    key = jax.random.key(0)
    return {
        "sbc": lambda post, theta, x, **kw: calibration.sbc(post, theta, x, key=key, n_samples=10),
        "expected_coverage": lambda post, theta, x, **kw: calibration.expected_coverage(post, theta, x, key=key, n_samples=10)[1],
        "tarp": lambda post, theta, x, **kw: calibration.tarp(post, theta, x, key=key, n_samples=10, **kw)[1],
    }


@pytest.mark.parametrize("name", ["sbc", "expected_coverage", "tarp"])
def test_calibration_refuses_pairs_that_do_not_match(name):
    from galton import GaussianPosterior

    run = _calibrations()[name]
    prior = GaussianPosterior(np.zeros(2), np.eye(2), ["a", "b"])  # ignores x: the prior, calibrated
    theta, x = _pairs()
    assert np.shape(run(prior, theta, x)) in [(20, 2), (101,)]
    with pytest.raises(ValueError, match=r"x has shape \(20, 3\) for theta of shape \(1, 2\); expected one simulation per θ"):
        run(prior, theta[:1], x)
    with pytest.raises(ValueError, match=r"x has shape \(20, 3\) for theta of shape \(10, 2\)"):
        run(prior, theta[:10], x)
    with pytest.raises(ValueError, match=r"theta has shape \(20, 1\); expected \(m, 2\)"):
        run(prior, theta[:, :1], x)
    with pytest.raises(ValueError, match=r"theta has shape \(20,\); expected \(m, 2\)"):
        run(prior, theta[:, 0], x)
    with pytest.raises(ValueError, match="theta has 1 rows with NaN or inf values, first row 4"):
        run(prior, np.where(np.arange(20)[:, None] == 4, np.inf, theta), x)
    with pytest.raises(ValueError, match="x has 1 rows with NaN or inf values, first row 3"):
        run(prior, theta, np.where(np.arange(20)[:, None] == 3, np.nan, x))


def test_tarp_refuses_references_shaped_unlike_theta():
    from galton import GaussianPosterior

    tarp = _calibrations()["tarp"]
    prior = GaussianPosterior(np.zeros(2), np.eye(2), ["a", "b"])
    theta, x = _pairs()
    for references in (np.zeros((20, 3)), np.zeros((1, 2))):
        with pytest.raises(ValueError, match=rf"references has shape \({references.shape[0]}, {references.shape[1]}\); expected θ's shape \(20, 2\)"):
            tarp(prior, theta, x, references=references)


def test_calibration_checks_x_against_the_posteriors_observations():
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as dist

    from galton import flows
    from galton.posteriors import FlowPosterior
    from galton.prior import Prior

    theta, x = _pairs()
    network = flows.conditional_flow(theta, x, key=jax.random.key(0), transforms=1, hidden=8)  # untrained: shapes only
    posterior = FlowPosterior(network, Prior(dist.Normal(jnp.zeros(2), 1.0)))
    sbc = _calibrations()["sbc"]
    assert sbc(posterior, theta, x).shape == (20, 2)
    with pytest.raises(ValueError, match=r"x has shape \(20, 2\); this posterior's observations have shape \(3,\)"):
        sbc(posterior, theta, x[:, :2])


@pytest.mark.parametrize("name", ["sbc", "expected_coverage", "tarp"])
def test_calibration_refuses_a_posterior_fitted_to_one_observation(name):
    from galton import GaussianPosterior

    fitted = GaussianPosterior(np.zeros(2), np.eye(2), ["a", "b"], x_obs=np.zeros(3))
    with pytest.raises(ValueError, match="fitted to one observation; SBC and coverage .* need an amortized posterior"):
        _calibrations()[name](fitted, *_pairs())


@pytest.mark.parametrize("levels", [(0.5, 1.5), (), "0.9", (np.nan,)])
def test_coverage_levels_outside_the_unit_interval_are_refused(levels):
    import jax

    from galton import GaussianPosterior, calibration

    prior = GaussianPosterior(np.zeros(2), np.eye(2), ["a", "b"])
    theta, x = _pairs()
    for coverage in (calibration.expected_coverage, calibration.tarp):
        with pytest.raises(ValueError, match=r"levels must be one or more numbers in \[0, 1\]"):
            coverage(prior, theta, x, key=jax.random.key(0), n_samples=10, levels=levels)
    got, _ = calibration.expected_coverage(prior, theta, x, key=jax.random.key(0), n_samples=10, levels=0.9)
    np.testing.assert_array_equal(got, [0.9])
