import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import galton
from galton import Prior, ProblemError, Program, Simulator, check_theta
from galton.problem import check_observation


def test_prior_of_named_blocks_flattens_and_names_columns():
    prior = Prior({"a": dist.Normal(0.0, 1.0), "b": dist.Uniform(-jnp.ones(2), jnp.ones(2))})
    assert prior.names == ["a", "b[0]", "b[1]"]
    theta = prior.sample(jax.random.key(0), (1000,))
    assert theta.shape == (1000, 3)
    blocks = prior.unflatten(theta)
    assert blocks["a"].shape == (1000,) and blocks["b"].shape == (1000, 2)
    np.testing.assert_array_equal(prior.flatten(blocks), theta)
    expected = dist.Normal(0, 1).log_prob(theta[:, 0]) + 2 * np.log(0.5)
    np.testing.assert_allclose(prior.log_prob(theta), expected, rtol=1e-5)
    outside = theta.at[0, 2].set(1.5)
    assert not bool(prior.in_support(outside)[0]) and prior.log_prob(outside)[0] == -jnp.inf


def test_prior_unconstrained_round_trip():
    prior = Prior({"rate": dist.LogNormal(0.0, 1.0), "p": dist.Beta(2.0 * jnp.ones(2), 3.0)})
    theta = prior.sample(jax.random.key(1), (50,))
    u = prior.to_unconstrained(theta)
    assert jnp.all(jnp.isfinite(u))
    np.testing.assert_allclose(prior.to_constrained(u), theta, rtol=1e-4)


def test_user_names_must_match_dimension():
    with pytest.raises(ProblemError, match="names has 3 entries"):
        Prior(dist.Normal(jnp.zeros(2), 1.0), names=["a", "b", "c"])


def test_check_theta_names_shape_and_support_problems():
    prior = Prior(dist.Uniform(-jnp.ones(2), jnp.ones(2)), names=["u", "v"])
    with pytest.raises(ProblemError, match=r"shape \(n, 2\).*got \(4, 3\)"):
        check_theta(prior, np.zeros((4, 3)))
    with pytest.raises(ProblemError, match="theta has 1 rows outside the prior's support, first row 2: u=0, v=3"):
        check_theta(prior, np.array([[0, 0], [0.5, 0.5], [0, 3]]))
    with pytest.raises(ProblemError, match="non-finite"):
        check_theta(prior, np.array([[0, np.nan]]))


@pytest.mark.parametrize("x_obs, message", [
    (None, r"x_obs must be numbers of shape \(2,\), got NoneType"),
    ("abc", r"x_obs must be numbers of shape \(2,\), got str of dtype <U3"),
    ({"x": [0.0, 1.0]}, "got dict"),
    (np.zeros((0, 2)), r"x_obs has shape \(0, 2\): an empty set of iid observations"),
])
def test_an_observation_that_is_not_numbers_or_holds_none_is_named(x_obs, message):
    simulator = Simulator(dist.Normal(jnp.zeros(2), 1.0), lambda key, theta: theta + jax.random.normal(key, (2,)), name="shift")
    with pytest.raises(ProblemError, match=message):
        check_observation(simulator, x_obs, (2,), iid=True)
    if x_obs is None:  # through infer too, before anything is simulated
        with pytest.raises(ProblemError, match=message):
            galton.infer(simulator, x_obs, key=jax.random.key(0), budget=10, progress=False)


def test_simulator_detects_backend():
    prior = dist.Normal(jnp.zeros(2), 1.0)
    assert Simulator(prior, lambda k, t: t + jax.random.normal(k, (2,))).backend == "jax"
    numpy_sim = Simulator(prior, lambda k, t: np.asarray(t) + np.random.default_rng(k).normal(size=2))
    assert numpy_sim.backend == "python"


def hierarchical(dim=5):
    theta = numpyro.sample("theta", dist.Normal(0.0, 3.0))
    z = numpyro.sample("z", dist.LogNormal(jnp.zeros(dim), jnp.exp(theta / 2)))
    numpyro.sample("x", dist.Normal(z, 1.0))


def test_program_reads_sites_and_evaluates_joint_density():
    program = Program(hierarchical, params=["theta"], observed=["x"])
    assert program.names == ["theta"] and program.latents.shapes == {"z": (5,)}
    theta = jnp.array([0.3])
    z, x = program.sample_joint(jax.random.key(0), theta)
    expected = dist.LogNormal(0.0, jnp.exp(0.15)).log_prob(z["z"]).sum() + dist.Normal(z["z"], 1.0).log_prob(x).sum()
    np.testing.assert_allclose(program.log_joint(x, z, theta), expected, rtol=1e-5)
    score = jax.grad(lambda t: program.log_joint(x, z, t))(theta)
    assert score.shape == (1,) and jnp.isfinite(score).all()
    # the unconstrained density adds log|dz/du| = sum(log z) for a positive latent
    u = program.latents_to_unconstrained(z)
    np.testing.assert_allclose(
        program.log_joint_unconstrained(x, u, theta), expected + jnp.log(z["z"]).sum(), rtol=1e-5
    )


def test_program_log_joint_is_minus_infinity_outside_a_bounded_support():
    # real-line sites skip NumPyro's support mask (a cost in every gradient); bounded ones keep it
    program = Program(hierarchical, params=["theta"], observed=["x"])
    theta, x = jnp.array([0.3]), jnp.zeros(5)
    z = {"z": jnp.array([1.0, 2.0, -0.5, 1.0, 1.0])}  # LogNormal: -0.5 is outside (0, inf)
    assert program.log_joint(x, z, theta) == -jnp.inf
    z_ok = {"z": jnp.abs(z["z"])}
    expected = dist.LogNormal(0.0, jnp.exp(0.15)).log_prob(z_ok["z"]).sum() + dist.Normal(z_ok["z"], 1.0).log_prob(x).sum()
    np.testing.assert_allclose(program.log_joint(x, z_ok, theta), expected, rtol=1e-5)
    # the same with NumPyro's validation switched off by the user
    with numpyro.validation_enabled(False):
        assert program.log_joint(x, z, theta) == -jnp.inf


def test_program_rejects_unknown_or_preobserved_sites():
    with pytest.raises(ProblemError, match="site 'phi' not found"):
        Program(hierarchical, params=["phi"], observed=["x"])

    def preobserved():
        t = numpyro.sample("t", dist.Normal())
        numpyro.sample("x", dist.Normal(t, 1.0), obs=1.0)

    with pytest.raises(ProblemError, match="obs= set"):
        Program(preobserved, params=["t"], observed=["x"])
    assert Program(functools.partial(hierarchical, dim=3), ["theta"], ["x"]).data.dim == 3


def _hidden_in_a_deterministic_site():
    theta = numpyro.sample("theta", dist.Normal(0.0, 1.0))
    z = numpyro.deterministic("z", theta + jax.random.normal(numpyro.prng_key(), (3,)))
    numpyro.sample("x", dist.Normal(z, 1.0))


def _hidden_in_a_distribution():
    theta = numpyro.sample("theta", dist.Normal(0.0, 1.0))
    numpyro.sample("x", dist.Normal(theta + jax.random.normal(numpyro.prng_key(), (3,)), 1.0))


def _every_draw_a_sample_site():
    theta = numpyro.sample("theta", dist.Normal(0.0, 1.0))
    eps = numpyro.sample("eps", dist.Normal(jnp.zeros(3), 1.0))
    numpyro.sample("x", dist.Normal(numpyro.deterministic("z", theta + eps), 1.0))


def test_randomness_hidden_from_numpyro_is_named_by_every_density_method():
    import galton
    from galton.randomness import hidden_randomness

    hidden = Program(_hidden_in_a_deterministic_site, params=["theta"], observed=["x"], name="hidden")
    assert hidden_randomness(hidden) == ["z", "x"]
    assert hidden_randomness(Program(_hidden_in_a_distribution, params=["theta"], observed=["x"])) == ["x"]
    assert hidden_randomness(Program(_every_draw_a_sample_site, params=["theta"], observed=["x"])) == []
    x_o = np.zeros(3, np.float32)
    calls = {
        "method 'nuts'": lambda: galton.infer(hidden, x_o, method="nuts", key=jax.random.key(0), progress=False),
        "method 'ic'": lambda: galton.infer(hidden, x_o, method="ic", budget=100, key=jax.random.key(0), progress=False),
        "method 'alices'": lambda: galton.infer(hidden, x_o, method="alices", theta_ref=(0.0,), budget=100,
                                                key=jax.random.key(0), progress=False),
        "MUSE": lambda: galton.muse(hidden, x_o, nsims=10, key=jax.random.key(0), progress=False),
        "the joint score": lambda: galton.simulate(hidden, 10, key=jax.random.key(0), augment="score", progress=False),
    }
    for what, call in calls.items():
        with pytest.raises(ProblemError, match=rf"\['z', 'x'\] of hidden change with the random seed.*{what}"):
            call()
    # simulation-based methods still run the model as the simulator it is
    assert galton.simulate(hidden, 10, key=jax.random.key(0), progress=False).x.shape == (10, 3)
