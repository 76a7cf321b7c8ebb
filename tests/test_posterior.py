import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from scipy import stats

from galton.posteriors import GaussianPosterior, load
from galton.transforms import ElementwiseBijection
from galton.problem import Prior

COV = np.array([[0.5, 0.2], [0.2, 0.3]])


def test_gaussian_samples_have_its_mean_and_covariance():
    posterior = GaussianPosterior(np.array([1.0, -2.0]), COV, ["a", "b"])
    draws = np.asarray(posterior.sample(40_000, key=jax.random.key(0)))
    assert draws.shape == (40_000, 2)
    np.testing.assert_allclose(draws.mean(0), [1.0, -2.0], atol=0.02)
    np.testing.assert_allclose(np.cov(draws, rowvar=False), COV, atol=0.02)


def test_gaussian_log_prob_is_the_normal_density():
    posterior = GaussianPosterior(np.array([1.0, -2.0]), COV, ["a", "b"])
    theta = np.array([[0.0, 0.0], [1.0, -2.0], [3.0, 1.0]])
    expected = stats.multivariate_normal([1.0, -2.0], COV).logpdf(theta)
    np.testing.assert_allclose(posterior.log_prob(theta), expected, rtol=1e-5)
    np.testing.assert_allclose(posterior.log_prob(theta[0]), expected[0], rtol=1e-5)


def test_bijection_from_a_constrained_prior_maps_into_the_support():
    prior = Prior({"p": dist.Beta(2.0, 5.0).expand([2]), "s": dist.HalfNormal(1.0), "c": dist.Uniform(-1.0, 3.0), "m": dist.Normal(0.0, 1.0)})
    bijection = ElementwiseBijection.from_prior(prior)
    assert bijection.kinds == ["sigmoid", "sigmoid", "exp", "sigmoid", "identity"]
    u = jax.random.normal(jax.random.key(1), (1000, 5)) * 3
    theta = bijection.forward(u)
    assert bool(prior.in_support(theta).all())
    np.testing.assert_allclose(bijection.forward(u), prior.to_constrained(u), rtol=1e-6)
    np.testing.assert_allclose(bijection.inverse(theta), u, atol=2e-3)
    # log |dθ/du| against autodiff of the forward map
    jac = jax.vmap(jax.jacfwd(bijection.forward))(u[:5])
    np.testing.assert_allclose(bijection.log_abs_det_jacobian(u[:5]), jnp.log(jnp.abs(jnp.linalg.det(jac))), rtol=1e-4, atol=1e-4)


def test_bijection_numpy_twins_agree_with_jax():
    # the host-side (NumPy) paths MUSE uses for θ_start and σ: the same maps as the JAX ones
    bijection = ElementwiseBijection(["identity", "exp", "sigmoid", "softplus"], [0.5, 1.0, -1.0, 0.0], [2.0, 3.0, 4.0, 1.0])
    u = np.array([[0.3, -1.2, 2.5, -0.7], [-2.0, 0.4, -3.0, 1.5]])
    theta = bijection.forward(u)
    np.testing.assert_allclose(theta, bijection.forward(jnp.asarray(u, jnp.float32)), rtol=1e-5)
    np.testing.assert_allclose(bijection.inverse(theta), u, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(bijection.inverse(theta), bijection.inverse(jnp.asarray(theta, jnp.float32)), rtol=1e-4, atol=1e-5)
    for row in u:
        jac = np.diag(np.asarray(jax.jacfwd(bijection.forward)(jnp.asarray(row, jnp.float32))))
        np.testing.assert_allclose(bijection.jacobian_diagonal(row), jac, rtol=1e-5)
    assert np.isnan(bijection.inverse(np.array([0.0, -1.0, 0.0, 0.0]))[1])  # outside (1, inf): NaN


def test_constrained_gaussian_density_matches_its_samples():
    # a Gaussian in logit space pushed to (0, 1): the density of the draws is log_prob
    bijection = ElementwiseBijection(["sigmoid"], [0.0], [1.0])
    posterior = GaussianPosterior(np.array([0.5]), np.array([[0.25]]), ["p"], bijection)
    draws = np.asarray(posterior.sample(50_000, key=jax.random.key(2)))[:, 0]
    assert draws.min() > 0 and draws.max() < 1
    hist, edges = np.histogram(draws, bins=20, range=(0.3, 0.9), density=False)
    centres = 0.5 * (edges[1:] + edges[:-1])
    predicted = np.exp(posterior.log_prob(centres[:, None])) * (edges[1] - edges[0]) * draws.size
    np.testing.assert_allclose(hist, predicted, rtol=0.1)
    assert posterior.log_prob(np.array([[1.5]]))[0] == -np.inf


def test_save_and_load_give_bit_identical_samples(tmp_path):
    bijection = ElementwiseBijection(["identity", "exp"], [0.0, 1.0], [1.0, 2.0])
    posterior = GaussianPosterior(np.array([0.3, -0.1]), COV, ["a", "b"], bijection, x_obs=np.arange(3.0))
    loaded = load(posterior.save(tmp_path / "post"))
    assert isinstance(loaded, GaussianPosterior) and loaded.names == ["a", "b"]
    key = jax.random.key(7)
    np.testing.assert_array_equal(loaded.sample(100, key=key), posterior.sample(100, key=key))
    np.testing.assert_array_equal(loaded.log_prob(np.ones((3, 2))), posterior.log_prob(np.ones((3, 2))))
    np.testing.assert_array_equal(loaded.x_obs, np.arange(3.0))
    assert GaussianPosterior.load(tmp_path / "post").names == ["a", "b"]


def test_to_arviz_uses_the_parameter_names():
    posterior = GaussianPosterior(np.zeros(3), np.eye(3), ["mu[0]", "mu[1]", "sigma"])
    data = posterior.to_arviz(n=200)
    assert set(data.posterior.data_vars) == {"mu[0]", "mu[1]", "sigma"}
    assert data.posterior["sigma"].shape == (1, 200)


def test_a_fitted_posterior_refuses_another_observation():
    posterior = GaussianPosterior(np.zeros(1), np.eye(1), ["a"], x_obs=np.zeros(4))
    assert posterior.condition(np.zeros(4)) is posterior
    with pytest.raises(ValueError, match="fitted to one observation"):
        posterior.sample(3, key=jax.random.key(0), x=np.ones(4))


def test_bad_covariances_and_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="positive definite"):
        GaussianPosterior(np.zeros(2), np.array([[1.0, 2.0], [2.0, 1.0]]), ["a", "b"])
    with pytest.raises(ValueError, match="names"):
        GaussianPosterior(np.zeros(2), np.eye(2), ["a"])
    with pytest.raises(FileNotFoundError, match="no saved posterior"):
        load(tmp_path)


# ---- weighted samples (ABC, importance sampling) --------------------------------------------


def test_weighted_samples_resample_by_weight_and_estimate_the_density(tmp_path):
    # importance draws from N(0, 2²) weighted to N(1, 0.5²): resampled draws follow the target
    proposal = np.asarray(2.0 * jax.random.normal(jax.random.key(0), (20_000, 1)))
    log_w = stats.norm(1.0, 0.5).logpdf(proposal[:, 0]) - stats.norm(0.0, 2.0).logpdf(proposal[:, 0])
    from galton.posteriors import SamplesPosterior

    posterior = SamplesPosterior(proposal, ["a"], log_w, info={"proposal": "N(0, 4)"})
    assert 2_000 < posterior.ess < 20_000
    draws = np.asarray(posterior.sample(20_000, key=jax.random.key(1)))
    assert draws.shape == (20_000, 1)
    assert abs(draws.mean() - 1.0) < 0.03 and abs(draws.std() - 0.5) < 0.03
    grid = np.linspace(-0.5, 2.5, 7)[:, None]
    kde = np.exp(np.asarray(posterior.log_prob(grid)))
    np.testing.assert_allclose(kde, stats.norm(1.0, 0.5).pdf(grid[:, 0]), atol=0.06)
    loaded = load(posterior.save(tmp_path / "samples"))
    assert loaded.info == {"proposal": "N(0, 4)"}
    np.testing.assert_array_equal(loaded.sample(50, key=jax.random.key(2)), posterior.sample(50, key=jax.random.key(2)))
    np.testing.assert_array_equal(loaded.log_prob(grid), posterior.log_prob(grid))


def test_weighted_samples_reject_bad_input():
    from galton.posteriors import SamplesPosterior

    with pytest.raises(ValueError, match=r"theta must be \(m, 2\)"):
        SamplesPosterior(np.zeros((5, 3)), ["a", "b"])
    with pytest.raises(ValueError, match=r"log_weights must be \(5,\)"):
        SamplesPosterior(np.zeros((5, 2)), ["a", "b"], np.zeros(4))
    with pytest.raises(ValueError, match="free of NaN"):
        SamplesPosterior(np.zeros((5, 2)), ["a", "b"], np.full(5, -np.inf))


@pytest.mark.parametrize("n", [0, -2, 2.5, True, None])
def test_a_bad_number_of_draws_is_refused(n):
    posterior = GaussianPosterior(np.zeros(2), np.eye(2), ["a", "b"])
    with pytest.raises(ValueError, match="n must be a positive integer number of draws"):
        posterior.sample(n, key=jax.random.key(0))
    with pytest.raises(ValueError, match="n must be a positive integer number of draws"):
        posterior.to_arviz(n=n)
