"""Benchmark tasks: registry, simulators, shipped observations and reference posteriors.

Reference posteriors are checked against sbibm's published samples (../shared/reference,
skipped when absent) with C2ST on 1,000 draws each; sbibm's own tolerance for a correct
reference is about 0.5 ± 0.02 at 10,000 draws.
"""

import bz2

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import galton.tasks as tasks
from galton.diagnostics import c2st
from galton.tasks import bernoulli_glm, galton_board, lotka_volterra, sir, slcp, slcp_distractors

SBIBM_TASKS = [
    "two_moons",
    "gaussian_linear",
    "gaussian_linear_uniform",
    "gaussian_mixture",
    "slcp",
    "slcp_distractors",
    "bernoulli_glm",
    "bernoulli_glm_raw",
    "sir",
    "lotka_volterra",
]
X_DIM = {
    "two_moons": 2, "gaussian_linear": 10, "gaussian_linear_uniform": 10, "gaussian_mixture": 2, "slcp": 8,
    "slcp_distractors": 100, "bernoulli_glm": 10, "bernoulli_glm_raw": 100, "sir": 10, "lotka_volterra": 20,
    "galton_board": 1, "funnel": 512, "coupled_funnels": 10_000,
}  # fmt: skip


def read_csv(path) -> np.ndarray:
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt") as f:
        return np.loadtxt(f, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64).astype(np.float32)


def test_registry_lists_every_task():
    assert set(SBIBM_TASKS) | {"galton_board", "funnel"} <= set(tasks.names())
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        tasks.get("nope")


@pytest.mark.parametrize("name, options, message", [
    ("funnel", {"dim": -1}, "dim must be a positive integer, got -1"),
    ("funnel", {"dim": 0}, "dim must be a positive integer, got 0"),
    ("funnel", {"dim": 2.5}, "dim must be a positive integer, got 2.5"),
    ("state_space", {"steps": 2}, "steps must be an integer of at least 3, got 2"),
    ("lognormal_field", {"noise": 0.0}, "noise must be a positive number, got 0.0"),
    ("two_moons", {"dim": 3}, "task 'two_moons' has no option dim; it takes no options"),
    ("funnel", {"size": 3}, "task 'funnel' has no option size; its options are dim"),
])
def test_task_options_are_checked_before_a_model_is_built(name, options, message):
    with pytest.raises(ValueError, match=message):
        tasks.get(name, **options)


@pytest.mark.parametrize("name", sorted(X_DIM))
def test_task_simulates_under_jit_and_vmap(name):
    task = tasks.get(name)
    theta = task.prior.sample(jax.random.key(0), (5,))
    x = jax.jit(jax.vmap(task.problem.simulate_flat))(jax.random.split(jax.random.key(1), 5), theta)
    assert x.shape == (5, X_DIM[name]) and x.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(x)))
    assert task.observation(1).shape == (X_DIM[name],)
    assert task.true_parameters(10).shape == (task.prior.dim,) and len(task.names) == task.prior.dim
    with pytest.raises(ValueError, match="observations 1..10"):
        task.observation(11)


def test_reference_posterior_takes_legacy_and_typed_keys():
    task = tasks.get("two_moons")
    legacy = jax.random.PRNGKey(3)
    x = task.observation(1)
    draws = task.reference_posterior(x, 100, key=legacy)
    assert draws.shape == (100, 2)
    np.testing.assert_array_equal(draws, task.reference_posterior(x, 100, key=jax.random.wrap_key_data(legacy)))
    with pytest.raises(TypeError, match="key"):
        task.reference_posterior(x, 100, key=3)


def test_parameter_names():
    assert tasks.get("two_moons").names == ["theta_1", "theta_2"]
    assert tasks.get("sir").names == ["beta", "gamma"]
    assert tasks.get("lotka_volterra").names == ["alpha", "beta", "gamma", "delta"]


# ---- against sbibm's published reference samples -------------------------------------------

# observation 1 of each task in the default run, observations 2-5 (same threshold) in the slow run
C2ST_CASES = [
    pytest.param(name, k, marks=[pytest.mark.slow] if k > 1 else [])
    for name in ["two_moons", "gaussian_mixture", "gaussian_linear"]
    for k in range(1, 6)
]


@pytest.mark.parametrize("name", ["two_moons", "gaussian_linear", "gaussian_mixture", "slcp"])
def test_shipped_observations_equal_sbibm_files(name, reference_dir):
    task = tasks.get(name)
    for k in range(1, 6):
        folder = reference_dir / name / f"num_observation_{k}"
        np.testing.assert_array_equal(task.observation(k), read_csv(folder / "observation.csv")[0])
        np.testing.assert_array_equal(task.true_parameters(k), read_csv(folder / "true_parameters.csv")[0])


@pytest.mark.parametrize("name,k", C2ST_CASES)
def test_reference_posterior_matches_sbibm(name, k, reference_dir):
    n = 1000
    task = tasks.get(name)
    ref = read_csv(reference_dir / name / f"num_observation_{k}" / "reference_posterior_samples.csv.bz2")
    ours = np.asarray(task.reference_posterior(task.observation(k), n, key=jax.random.key(k)))
    assert ours.shape == (n, task.prior.dim) and bool(task.prior.in_support(ours).all())
    # 10-d MLPs train slowly; two folds keep the check to seconds and still test on all 2n draws
    folds = 2 if task.prior.dim > 2 else 5
    assert c2st(ref[:n], ours, n_folds=folds) <= 0.55


@pytest.mark.slow
def test_slcp_nuts_reference_matches_sbibm(reference_dir):
    n = 2000
    task = tasks.get("slcp")
    ref = read_csv(reference_dir / "slcp" / "num_observation_1" / "reference_posterior_samples.csv.bz2")
    ours = np.asarray(task.reference_posterior(task.observation(1), n, key=jax.random.key(0)))
    # all four sign modes are populated evenly
    quadrants = np.bincount(2 * (ours[:, 2] > 0) + (ours[:, 3] > 0), minlength=4) / n
    np.testing.assert_allclose(quadrants, 0.25, atol=0.04)
    assert c2st(ref[:n], ours) <= 0.55


# ---- two_moons, gaussian tasks -------------------------------------------------------------


def test_two_moons_likelihood_is_a_density_in_x():
    from galton.tasks import two_moons

    theta = jnp.array([0.3, -0.5])
    # integrate p(x | θ) over a grid around the crescent
    g0 = jnp.linspace(0.0, 0.4, 801)  # x₁ ∈ 0.25 − |z₀| + [0, 0.14]
    g1 = jnp.linspace(-0.8, -0.3, 1001)  # x₂ ∈ z₁ ± 0.14
    xx = jnp.stack(jnp.meshgrid(g0, g1, indexing="ij"), -1).reshape(-1, 2)
    lik = jnp.exp(jax.vmap(lambda x: two_moons.log_likelihood(x, theta))(xx))
    mass = float(lik.sum() * (g0[1] - g0[0]) * (g1[1] - g1[0]))
    assert abs(mass - 1) < 0.02


# ---- slcp --------------------------------------------------------------------------------


def test_slcp_observations_lie_in_the_simulated_distribution():
    task = tasks.get("slcp")
    sim = jax.jit(jax.vmap(task.problem.simulate_flat, (0, None)))
    log_lik = jax.jit(jax.vmap(slcp.log_likelihood, (0, None)))
    for k in range(1, 11):
        theta, obs = task.true_parameters(k), task.observation(k)
        x = sim(jax.random.split(jax.random.key(k), 10_000), theta)
        # 80 marginal checks: observation 7 is a 1-in-160 draw (one point 3.5σ out), so the
        # per-coordinate band is wide and the likelihood's quantile does the real check
        q = np.asarray((x < obs).mean(0))
        assert np.all((q > 1e-4) & (q < 1 - 1e-4)), (k, q)
        q_lik = float((log_lik(x, theta) < slcp.log_likelihood(obs, theta)).mean())
        assert 0.002 < q_lik < 0.998, (k, q_lik)


def test_slcp_likelihood_is_invariant_to_sign_flips():
    theta = slcp.PRIOR.sample(jax.random.key(0), (200,))
    x = slcp.simulate(jax.random.key(1), theta[0])
    base = slcp.log_likelihood(x, theta)
    for flip in ([1, 1, -1, 1, 1], [1, 1, 1, -1, 1], [1, 1, -1, -1, 1]):
        np.testing.assert_allclose(slcp.log_likelihood(x, theta * jnp.array(flip, jnp.float32)), base, rtol=1e-6)
    # but not to flipping the mean
    assert not np.allclose(slcp.log_likelihood(x, theta * jnp.array([-1.0, 1, 1, 1, 1])), base)


def test_slcp_likelihood_matches_simulator_moments():
    theta = jnp.array([0.5, -1.0, 1.2, -0.9, 0.7])
    x = jax.vmap(slcp.simulate, (0, None))(jax.random.split(jax.random.key(0), 20_000), theta).reshape(-1, 2)
    m, cov = slcp.mean_cov(theta)
    np.testing.assert_allclose(x.mean(0), m, atol=0.03)
    np.testing.assert_allclose(np.cov(np.asarray(x).T), cov, rtol=0.03, atol=0.01)


def test_slcp_distractors_hide_the_slcp_observation():
    data = tasks.get("slcp_distractors")
    plain = tasks.get("slcp")
    where = slcp_distractors.informative_positions()
    np.testing.assert_array_equal(where, [22, 33, 23, 67, 42, 21, 16, 90])
    for k in range(1, 11):
        np.testing.assert_array_equal(data.observation(k)[where], plain.observation(k))
    # the simulator puts slcp's draw at those positions
    theta = plain.true_parameters(1)
    key = jax.random.key(3)
    k_slcp = jax.random.split(key, 4)[0]
    np.testing.assert_array_equal(data.problem.simulate_flat(key, theta)[where], slcp.simulate(k_slcp, theta))


# ---- bernoulli_glm -----------------------------------------------------------------------


def test_bernoulli_glm_summary_of_raw_observations():
    summary, raw = tasks.get("bernoulli_glm"), tasks.get("bernoulli_glm_raw")
    for k in range(1, 11):
        y = raw.observation(k)
        assert set(np.unique(y)) <= {0.0, 1.0}
        np.testing.assert_allclose(bernoulli_glm.summarise(y), summary.observation(k), atol=1e-4)
    assert bernoulli_glm.design_matrix()[3, 2] == bernoulli_glm.design_matrix()[2, 1]  # lagged stimulus


def test_bernoulli_glm_prior_marginal_sds():
    cov = np.linalg.inv(bernoulli_glm.prior_precision())
    expected = [1.414, 1.00, 1.68, 1.83, 1.55, 1.22, 1.10, 1.07, 0.98, 0.88]
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), expected, atol=0.006)
    draws = tasks.get("bernoulli_glm").prior.sample(jax.random.key(0), (20_000,))
    np.testing.assert_allclose(draws.std(0), expected, rtol=0.03)


def test_bernoulli_glm_likelihood_matches_bernoulli_product():
    theta = tasks.get("bernoulli_glm").true_parameters(1)
    y = tasks.get("bernoulli_glm_raw").observation(1)
    psi = jnp.asarray(bernoulli_glm.design_matrix()) @ theta
    direct = (y * jax.nn.log_sigmoid(psi) + (1 - y) * jax.nn.log_sigmoid(-psi)).sum()
    np.testing.assert_allclose(bernoulli_glm.log_likelihood(bernoulli_glm.summarise(y), theta), direct, rtol=1e-5)


# ---- ODE tasks ---------------------------------------------------------------------------


def test_sir_observations_are_plausible_at_the_true_parameters():
    task = tasks.get("sir")
    sim = jax.jit(jax.vmap(task.problem.simulate_flat, (0, None)))
    for k in (1, 2, 3):
        x = np.asarray(sim(jax.random.split(jax.random.key(k), 2000), task.true_parameters(k)))
        obs = np.asarray(task.observation(k))
        lo, hi = np.quantile(x, [0.0005, 0.9995], axis=0)
        assert np.all((obs >= lo) & (obs <= hi)), (k, obs, lo, hi)


def test_lotka_volterra_observations_are_plausible_at_the_true_parameters():
    task = tasks.get("lotka_volterra")
    with jax.enable_x64(True):
        for k in range(1, 11):
            mu = lotka_volterra.log_populations(jnp.asarray(task.true_parameters(k), jnp.float64))
            z = (np.log(np.asarray(task.observation(k), np.float64)) - np.asarray(mu)) / lotka_volterra.NOISE_SD
            assert np.abs(z).max() < 4.5 and abs(z.mean()) < 1.0, (k, z)


def test_ode_float32_solves_agree_with_float64():
    theta_sir = tasks.get("sir").true_parameters(1)
    theta_lv = tasks.get("lotka_volterra").true_parameters(1)
    p32, m32 = sir.infected_fraction(theta_sir), lotka_volterra.log_populations(theta_lv)
    with jax.enable_x64(True):
        p64 = sir.infected_fraction(jnp.asarray(theta_sir, jnp.float64))
        m64 = lotka_volterra.log_populations(jnp.asarray(theta_lv, jnp.float64))
        assert p64.dtype == jnp.float64
    assert p32.dtype == jnp.float32
    np.testing.assert_allclose(p32, p64, rtol=1e-4, atol=1e-9)  # far below binomial noise
    np.testing.assert_allclose(m32, m64, atol=1e-4)  # far below the 0.1 log-normal noise


# ---- galton_board ------------------------------------------------------------------------


@pytest.mark.parametrize("theta", [-0.8, 0.0, 0.9])
def test_galton_board_exact_marginal_matches_simulation(theta):
    task = tasks.get("galton_board")
    n = 100_000
    x = jax.jit(jax.vmap(task.problem.simulate_flat, (0, None)))(jax.random.split(jax.random.key(0), n), jnp.array([theta]))
    freq = np.bincount(np.asarray(x[:, 0], int), minlength=21) / n
    exact = np.asarray(galton_board.slot_probabilities(jnp.array(theta)))
    np.testing.assert_allclose(exact.sum(), 1.0, rtol=1e-5)
    # 5 binomial standard deviations per slot
    np.testing.assert_array_less(np.abs(freq - exact), 5 * np.sqrt(exact * (1 - exact) / n) + 1e-4)


def test_galton_board_log_joint_is_the_path_probability():
    task = galton_board.task(n_rows=8, n_balls=3)
    program = task.problem
    theta = jnp.array([0.6])
    z, x = program.sample_joint(jax.random.key(2), theta)
    assert z["z"].shape == (8, 3) and x.shape == (3,)
    np.testing.assert_array_equal(x, z["z"].sum(0))  # the slot counts right deflections
    # the path's probability, recomputed row by row
    position, expected = jnp.zeros(3), 0.0
    for row in range(8):
        p = galton_board.p_right(theta[0], position, row, 8)
        expected += jnp.where(z["z"][row] == 1, jnp.log(p), jnp.log1p(-p)).sum()
        position = position + 2 * z["z"][row] - 1
    np.testing.assert_allclose(program.log_joint(x, z, theta), expected, rtol=1e-5)
    grad = jax.grad(lambda t: program.log_joint(x, z, t))(theta)
    assert bool(jnp.all(jnp.isfinite(grad)))
    assert program.log_joint(x + 1.0, z, theta) == -jnp.inf  # x is determined by the path


def test_galton_board_iid_marginal_and_reference():
    x = jnp.array([3.0, 4.0, 12.0, 5.0])
    grid = jnp.linspace(-1, 1, 7)
    single = jnp.stack([galton_board.log_marginal_likelihood(xi[None], grid) for xi in x])
    np.testing.assert_allclose(galton_board.log_marginal_likelihood(x, grid), single.sum(0), rtol=1e-5)
    task = galton_board.task(n_balls=4)
    draws = np.asarray(task.reference_posterior(x, 20_000, key=jax.random.key(0)))[:, 0]
    g, density = galton_board.grid_posterior(x)
    mean = float(jnp.trapezoid(g * density, g))
    sd = float(jnp.sqrt(jnp.trapezoid((g - mean) ** 2 * density, g)))
    assert abs(draws.mean() - mean) < 4 * sd / np.sqrt(20_000) and abs(draws.std() / sd - 1) < 0.03
    assert draws.min() >= -1 and draws.max() <= 1


def test_lognormal_field_has_the_moments_it_is_built_from_and_a_converged_nuts_reference():
    from galton import simulate
    from galton.tasks import lognormal_field as lnf

    g = jax.vmap(lambda k: lnf.gaussian_field(jax.random.normal(k, (16, 16)), 2.0))(jax.random.split(jax.random.key(0), 400))
    assert abs(float(g.var()) - 1.0) < 0.05 and abs(float(g.mean())) < 0.05  # unit variance by construction
    task = tasks.get("lognormal_field", size=16)
    sims = simulate(task.problem, 300, key=jax.random.key(1), progress=False)
    assert sims.x.shape == (300, 256) and task.names == ["sigma", "ell"]
    # x = exp(σ g − σ²/2) − 1 + noise: per pixel, mean 0 and variance exp(σ²) − 1 + noise²
    fixed = simulate(task.problem, theta=np.tile([0.6, 3.0], (400, 1)), key=jax.random.key(3), progress=False).x
    np.testing.assert_allclose(fixed.var(0).mean(), np.exp(0.36) - 1 + 0.2**2, rtol=0.1)
    assert abs(float(fixed.mean())) < 0.05
    s = jax.vmap(lnf.power_spectrum)(jnp.asarray(sims.x[:4]))
    assert s.shape == (4, 8) and bool(jnp.isfinite(s).all())
    small = tasks.get("lognormal_field", size=8)  # NUTS over 66 dimensions keeps the test short
    draws, info = lnf.nuts_posterior(small.observation(1), 400, jax.random.key(2), size=8, num_warmup=200, num_chains=2, return_info=True)
    assert draws.shape == (400, 2) and max(info["r_hat"].values()) < 1.05 and info["divergences"] < 10, info
    assert bool(task.prior.in_support(draws).all())
