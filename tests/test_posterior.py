import json

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from scipy import stats

from galton import flows
from galton.muse import MuseResult
from galton.posteriors import FlowPosterior, GaussianPosterior, SamplesPosterior, load
from galton.posteriors.base import PosteriorFileError
from galton.prior import Prior
from galton.problem import ProblemError
from galton.transforms import ElementwiseBijection

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
    with pytest.raises(ValueError, match=r"fitted to one observation and x differs from it \(same shape \(4,\)"):
        posterior.sample(3, key=jax.random.key(0), x=np.ones(4))
    with pytest.raises(ValueError, match=r"observation of shape \(4,\) and cannot be conditioned on x of shape \(3,\)"):
        posterior.sample(3, key=jax.random.key(0), x=np.ones(3))


def test_bad_covariances_and_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="positive definite"):
        GaussianPosterior(np.zeros(2), np.array([[1.0, 2.0], [2.0, 1.0]]), ["a", "b"])
    with pytest.raises(ValueError, match="names"):
        GaussianPosterior(np.zeros(2), np.eye(2), ["a"])
    with pytest.raises(PosteriorFileError, match="no saved posterior"):
        load(tmp_path)


# ---- weighted samples (ABC, importance sampling) --------------------------------------------


def test_weighted_samples_resample_by_weight_and_estimate_the_density(tmp_path):
    # importance draws from N(0, 2²) weighted to N(1, 0.5²): resampled draws follow the target
    proposal = np.asarray(2.0 * jax.random.normal(jax.random.key(0), (20_000, 1)))
    log_w = stats.norm(1.0, 0.5).logpdf(proposal[:, 0]) - stats.norm(0.0, 2.0).logpdf(proposal[:, 0])
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


# ---- θ of the wrong width, damaged files --------------------------------------------------------


def _flow_posterior() -> FlowPosterior:
    """An untrained flow q(θ | x) over 2 parameters, x of shape (3,): shapes and files only."""
    rng = np.random.default_rng(0)
    network = flows.conditional_flow(rng.normal(size=(50, 2)), rng.normal(size=(50, 3)), key=jax.random.key(0), transforms=1, hidden=8)
    return FlowPosterior(network, Prior(dist.Normal(jnp.zeros(2), 1.0)))


def _muse_result() -> MuseResult:
    record = {"J": np.eye(2), "H": np.eye(2), "H_prior": np.zeros((2, 2)), "theta_evaluated": np.zeros(2), "scores": np.zeros((5, 2)),
              "z_map": np.zeros((6, 1)), "key_data": jax.random.key_data(jax.random.key(0)), "history": [], "nsims": 5,
              "converged": True, "time_s": 0.0, "n_gradient_evaluations": 0, "n_hessian_vector_products": 0,
              "jacobian": "implicit", "problem_name": "test"}
    return MuseResult(np.zeros(2), COV, ["a", "b"], ElementwiseBijection.identity(2), np.zeros(4), **record)


@pytest.mark.parametrize("make", [
    lambda: GaussianPosterior(np.zeros(2), COV, ["a", "b"]),
    lambda: SamplesPosterior(np.random.default_rng(0).normal(size=(100, 2)), ["a", "b"]),
    _muse_result,
    _flow_posterior,
], ids=["gaussian", "samples", "muse", "flow"])
def test_log_prob_names_a_theta_of_the_wrong_width(make):
    posterior = make()
    x = {"x": np.zeros(3)} if isinstance(posterior, FlowPosterior) else {}
    for theta in (np.zeros(3), np.zeros((5, 3)), np.float32(0.0)):
        with pytest.raises(ProblemError, match=rf"theta has shape \({', '.join(map(str, theta.shape))},?\); this posterior has 2 parameters"):
            posterior.log_prob(theta, **x)
    # the right width in any batch shape: one value per point
    theta = np.random.default_rng(1).normal(size=(2, 3, 2)) * 0.5
    lp = np.asarray(posterior.log_prob(theta, **x))
    assert lp.shape == (2, 3) and np.isfinite(lp).all()
    np.testing.assert_allclose(lp, np.asarray(posterior.log_prob(theta.reshape(6, 2), **x)).reshape(2, 3), rtol=1e-5)
    np.testing.assert_allclose(lp[0, 0], posterior.log_prob(theta[0, 0], **x), rtol=1e-5)


def test_save_refuses_a_path_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("not a directory")
    with pytest.raises(PosteriorFileError, match=r"taken: it is an existing file"):
        GaussianPosterior(np.zeros(2), COV, ["a", "b"]).save(tmp_path / "taken")


def _damage(saved, how):
    if how == "arrays.npz is garbage":
        (saved / "arrays.npz").write_bytes(b"garbage")
    elif how == "posterior.json is not JSON":
        (saved / "posterior.json").write_text("{not json")
    elif how == "posterior.json has no kind":
        meta = json.loads((saved / "posterior.json").read_text())
        (saved / "posterior.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "kind"}))
    elif how == "arrays.npz is missing":
        (saved / "arrays.npz").unlink()
    else:  # rewrite one array: drop it (None) or give it a wrong shape
        name, value = how
        arrays = dict(np.load(saved / "arrays.npz"))
        arrays = {k: v for k, v in arrays.items() if k != name} if value is None else {**arrays, name: value}
        np.savez(saved / "arrays.npz", **arrays)


@pytest.mark.parametrize("how, message", [
    ("arrays.npz is garbage", r"arrays.npz is not a readable NumPy archive"),
    ("posterior.json is not JSON", r"posterior.json is not valid JSON"),
    ("posterior.json has no kind", r"names no posterior kind"),
    ("arrays.npz is missing", r"has posterior.json but no arrays.npz"),
    (("cov", None), r"lacks 'cov'"),
    (("cov", np.eye(3)), r"does not hold a valid 'gaussian' posterior: loc must be \(d,\) and cov \(d, d\)"),
])
def test_load_names_what_is_wrong_with_a_damaged_gaussian(tmp_path, how, message):
    saved = GaussianPosterior(np.zeros(2), COV, ["a", "b"]).save(tmp_path / "post")
    _damage(saved, how)
    with pytest.raises(PosteriorFileError, match=message) as error:
        load(saved)
    assert str(saved) in str(error.value)


def test_load_checks_each_network_array_against_the_spec(tmp_path):
    posterior = _flow_posterior()
    saved = posterior.save(tmp_path / "flow")
    weight = np.load(saved / "arrays.npz")["weight_2"]
    _damage(saved, ("weight_2", weight[..., :-1]))
    with pytest.raises(PosteriorFileError, match=rf"weight_2 has shape \({', '.join(map(str, weight[..., :-1].shape))}\); its spec builds"):
        load(saved)
    _damage(saved, ("weight_0", None))
    with pytest.raises(PosteriorFileError, match=r"array weight_0 is missing"):
        load(saved)
