"""method="nuts": the exact baseline for Programs, checked against the funnel's exact grid posterior."""

import jax
import numpy as np
import pytest

import galton
from galton.posteriors import load


def _grid_moments(task, x):
    from galton.tasks import funnel

    grid, density = funnel.grid_posterior(x)
    grid, density = np.asarray(grid), np.asarray(density)
    w = density / density.sum()
    mean = float(w @ grid)
    return mean, float(np.sqrt(w @ (grid - mean) ** 2))


@pytest.mark.parametrize("dim, reparam", [(10, "noncentered"), (1000, None)])
def test_nuts_matches_the_exact_funnel_posterior(dim, reparam):
    task = galton.tasks.get("funnel", dim=dim)
    x = task.observation(1)
    post = galton.infer(task.problem, x, method="nuts", reparam=reparam, key=jax.random.key(0), progress=False)
    mean, sd = _grid_moments(task, x)
    draws = np.asarray(post.theta[:, 0])
    assert abs(draws.mean() - mean) < 0.1 * sd, (draws.mean(), mean, sd)
    assert abs(draws.std() / sd - 1) < 0.05, (draws.std(), sd)
    assert post.info["r_hat"]["theta"] < 1.01 and post.info["divergences"] == 0
    report = galton.diagnostics.compare(post, task.reference_posterior(x, 2000, key=jax.random.key(1)), show=False)
    assert report["c2st"] < 0.55 and abs(report["parameters"]["theta"]["mean_shift"]) < 0.1


def test_nuts_at_another_observation_reuses_the_sampler_with_the_new_data():
    from galton.methods.nuts import _sampler

    task = galton.tasks.get("funnel", dim=10)
    settings = dict(method="nuts", reparam="noncentered", num_samples=300, num_warmup=300, key=jax.random.key(3), progress=False)
    _sampler.cache_clear()
    means = {k: float(galton.infer(task.problem, task.observation(k), **settings).theta.mean()) for k in (1, 2)}
    assert _sampler.cache_info().misses == 1 and _sampler.cache_info().hits == 1
    for k, mean in means.items():  # each run saw its own x, not the first one's
        exact, sd = _grid_moments(task, task.observation(k))
        assert abs(mean - exact) < 0.25 * sd, (k, mean, exact, sd)
    # the two exact means lie 0.97 σ apart: a run on the other's x would miss by far more than 0.25 σ
    assert abs(_grid_moments(task, task.observation(1))[0] - _grid_moments(task, task.observation(2))[0]) > 0.5 * sd


def test_nuts_warns_with_the_figures_and_keeps_latents(tmp_path):
    task = galton.tasks.get("funnel", dim=10)
    with pytest.warns(UserWarning, match=r"nuts: .*ESS \d+ < 400"):
        post = galton.infer(task.problem, task.observation(1), method="nuts", num_samples=50, num_warmup=50, keep_latents=True,
                            key=jax.random.key(2), progress=False)
    assert post.latents["z"].shape == (200, 10) and post.theta.shape == (200, 1)
    loaded = load(post.save(tmp_path / "nuts"))
    assert loaded.info["r_hat"] == post.info["r_hat"]


def test_nuts_bad_inputs_name_the_problem():
    board = galton.tasks.get("galton_board")
    with pytest.raises(galton.ProblemError, match=r"latent site\(s\) \['z'\] .* are discrete"):
        galton.infer(board.problem, board.observation(1), method="nuts", key=jax.random.key(0), progress=False)
    with pytest.raises(galton.ProblemError, match="black-box Simulator"):
        galton.infer(galton.tasks.get("two_moons").problem, np.zeros(2), method="nuts", key=jax.random.key(0))
    with pytest.raises(ValueError, match="reparam must be one of"):
        galton.NUTS(reparam="centred")
    with pytest.raises(ValueError, match="2 parameters and the reference 1"):
        galton.diagnostics.compare(np.zeros((10, 2)), np.zeros((10, 1)), show=False)


def test_population_recovers_the_hyperparameters_of_a_gaussian_hierarchy():
    import numpyro
    import numpyro.distributions as dist

    from galton.train import Training

    sigma, m = 0.5, 40
    obj = galton.Simulator(dist.Uniform(-4.0, 4.0), lambda key, t: t + sigma * jax.random.normal(key, (2,)), name="object")

    def hierarchy(n):
        mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
        tau = numpyro.sample("tau", dist.HalfNormal(2.0))
        with numpyro.plate("objects", n):
            return numpyro.sample("theta", dist.Normal(mu, tau))

    theta = 0.5 + 0.8 * np.asarray(jax.random.normal(jax.random.key(1), (m,)))
    xs = theta[:, None] + sigma * np.asarray(jax.random.normal(jax.random.key(2), (m, 2)))
    nle = galton.NLE(transforms=3, training=Training(learning_rate=1e-3, batch_size=256, patience=20))
    sims = galton.simulate(obj, 5000, key=jax.random.key(3), progress=False)
    net, history = nle.fit(sims, obj.prior, key=jax.random.key(4), progress=False)
    result = galton.population(nle.posterior(net, obj.prior, [history]), xs, hierarchy, key=jax.random.key(5), num_samples=500,
                               target_accept=0.9)
    assert result.theta.shape == (2000, m, 1) and result.hyper.names == ["mu", "tau"]
    # exact: the objects' means are N(μ, τ² + σ²/2); a grid over (μ, τ)
    mu, tau = np.meshgrid(np.linspace(-1.5, 2.5, 301), np.linspace(0.01, 2.5, 300), indexing="ij")
    v = tau**2 + sigma**2 / 2
    lp = (-0.5 * (xs.mean(1)[None, None] - mu[..., None]) ** 2 / v[..., None] - 0.5 * np.log(v[..., None])).sum(-1)
    lp = lp + np.asarray(dist.Normal(0.0, 2.0).log_prob(mu) + dist.HalfNormal(2.0).log_prob(tau))
    w = np.exp(lp - lp.max())
    w /= w.sum()
    for i, g in enumerate((mu, tau)):
        mean = (w * g).sum()
        sd = np.sqrt((w * (g - mean) ** 2).sum())
        draws = result.hyper.theta[:, i]
        assert abs(draws.mean() - mean) < 0.3 * sd and abs(draws.std() / sd - 1) < 0.15, (i, draws.mean(), mean, draws.std(), sd)
    with pytest.raises(galton.ProblemError, match="xs has shape"):
        galton.population(nle.posterior(net, obj.prior, [history]), np.zeros((m, 3)), hierarchy, key=jax.random.key(0))


def test_muse_checks_itself_against_nuts():
    task = galton.tasks.get("funnel", dim=20)
    result = galton.muse(task.problem, task.observation(1), nsims=30, key=jax.random.key(0), check="nuts", progress=False)
    assert result.check["c2st"] < 0.6 and abs(result.check["parameters"]["theta"]["mean_shift"]) < 0.2
    assert 0.8 < result.check["parameters"]["theta"]["sigma_ratio"] < 1.25 and result.check["nuts_info"]["method"] == "nuts"
    with pytest.raises(ValueError, match="check must be 'nuts'"):
        galton.muse(task.problem, task.observation(1), nsims=10, key=jax.random.key(0), check="hmc", max_iterations=1, progress=False)



def test_population_averages_an_ensemble_and_refuses_a_mixed_one():
    import equinox as eqx
    import jax.numpy as jnp
    import numpyro.distributions as dist

    from galton.population import _per_object

    class Gaussian(eqx.Module):
        shift: float

        def log_prob(self, x, theta):
            return dist.Normal(theta + self.shift, 0.5).log_prob(x).sum(-1)

    class Member:
        term, x_shape = "likelihood", (2,)

        def __init__(self, shift, prior):
            self.network, self.prior = Gaussian(shift), prior

    prior = galton.Prior({"theta": dist.Uniform(-4.0, 4.0)})
    theta, xs = jnp.zeros((3, 1)), jnp.ones((3, 1, 2))
    # members off by ±0.1 in their means average to the exact log-likelihood's (shift 0) up to a constant
    averaged = _per_object([Member(0.1, prior), Member(-0.1, prior)])(theta, xs)
    exact = _per_object([Member(0.0, prior)])(theta, xs)
    np.testing.assert_allclose(averaged - exact, np.full(3, -0.04), rtol=1e-5)  # −0.1² / (2 · 0.5²) per value
    other = galton.Prior({"theta": dist.Uniform(-2.0, 2.0)})
    with pytest.raises(galton.ProblemError, match="share one prior"):
        galton.population([Member(0.0, prior), Member(0.0, other)], np.zeros((3, 2)), lambda m: None, key=jax.random.key(0))
    with pytest.raises(galton.ProblemError, match="empty list"):
        galton.population([], np.zeros((3, 2)), lambda m: None, key=jax.random.key(0))
