"""ABC: rejection (with regression adjustment), MCMC-ABC and SMC-ABC.

Accuracy is checked against the exact ABC posterior of a conjugate Gaussian: θ ~ N(0, 1),
x ~ N(θ, 0.5²), accepting |x − x_obs| ≤ ε gives p_ε(θ) ∝ N(θ; 0, 1) [Φ((x_o + ε − θ)/σ) − Φ((x_o − ε − θ)/σ)],
computed here on a grid.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from scipy import stats

import galton
from galton.methods import MCMCABC, SMCABC, RejectionABC
from galton.methods.abc import ABCError
from galton.posteriors import load

SIGMA, X_O = 0.5, jnp.array([0.8])
GAUSS = galton.Simulator(dist.Normal(jnp.zeros(1), 1.0), lambda key, theta: theta + SIGMA * jax.random.normal(key, (1,)), name="conjugate")
ABS = lambda s, s_obs: jnp.abs(s - s_obs).sum()  # noqa: E731  (the distance of the exact ABC posterior)


def exact_abc(eps: float):
    """(grid, cdf, mean, sd) of the exact ABC posterior at ε."""
    grid = np.linspace(-4, 5, 20_001)
    x_o = float(X_O[0])
    dens = stats.norm.pdf(grid) * (stats.norm.cdf((x_o + eps - grid) / SIGMA) - stats.norm.cdf((x_o - eps - grid) / SIGMA))
    dens /= dens.sum()
    mean = (grid * dens).sum()
    return grid, np.cumsum(dens), mean, np.sqrt(((grid - mean) ** 2 * dens).sum())


def test_rejection_abc_matches_the_exact_abc_posterior():
    post = galton.infer(GAUSS, X_O, key=jax.random.key(0), method="rejection_abc", budget=40_000, epsilon=0.1, distance=ABS, progress=False)
    draws = post.theta[:, 0]
    grid, cdf, mean, sd = exact_abc(0.1)
    assert post.info["accepted"] == len(draws) > 1500 and post.info["epsilon"] == 0.1
    assert abs(draws.mean() - mean) < 0.04 and abs(draws.std() / sd - 1) < 0.06, (draws.mean(), mean, draws.std(), sd)
    ks = np.abs(np.searchsorted(np.sort(draws), grid) / len(draws) - cdf).max()
    assert ks < 0.045, ks


def test_mcmc_abc_matches_the_exact_abc_posterior():
    post = galton.infer(GAUSS, X_O, key=jax.random.key(1), method="mcmc_abc", budget=30_000, chains=32, epsilon=0.1, distance=ABS, progress=False)
    _, _, mean, sd = exact_abc(0.1)
    draws = post.theta[:, 0]
    assert post.info["epsilon"] == 0.1 and 0.02 < post.info["acceptance_rate"] < 0.9
    assert abs(draws.mean() - mean) < 0.06 and abs(draws.std() / sd - 1) < 0.12, (draws.mean(), mean, draws.std(), sd)


def test_smc_abc_lowers_epsilon_keeps_its_ess_and_matches_the_exact_abc_posterior():
    method = SMCABC(population=500, distance=ABS, min_ess=0.7, epsilon=0.05)
    post = galton.infer(GAUSS, X_O, key=jax.random.key(2), method=method, budget=60_000, progress=False)
    gens = post.info["generations"]
    eps = [g["epsilon"] for g in gens]
    assert len(gens) >= 4 and all(a > b for a, b in zip(eps, eps[1:])), eps
    assert post.info["stopped"].startswith("reached epsilon") and eps[-1] <= 0.05
    # after resampling (ESS below the floor) the population is equally weighted again
    assert all(g["ess"] >= 0.7 * 500 or g["resampled"] for g in gens) and post.ess >= 0.7 * 500 - 1e-6
    _, _, mean, sd = exact_abc(eps[-1])
    draws = np.asarray(post.sample(20_000, key=jax.random.key(3)))[:, 0]
    assert abs(draws.mean() - mean) < 0.06 and abs(draws.std() / sd - 1) < 0.12, (draws.mean(), mean, draws.std(), sd)
    assert post.info["simulations"] <= 60_000
    # a last generation that resampled its parents still returns its weighted particles
    first = next(g["generation"] for g in gens if g["resampled"])
    cut = galton.infer(GAUSS, X_O, key=jax.random.key(2), method=SMCABC(population=500, distance=ABS, min_ess=0.7, generations=first),
                       budget=60_000, progress=False)
    last = cut.info["generations"][-1]
    assert last["resampled"] and abs(cut.ess - last["ess"]) < 1e-6 * last["ess"] and cut.ess < 0.7 * len(cut.theta), (last, cut.ess)


def test_a_generation_the_budget_cuts_short_sets_its_epsilon_from_its_nearest_half():
    run = lambda seed, budget: galton.infer(GAUSS, X_O, key=jax.random.key(seed), method=SMCABC(population=500, distance=ABS),  # noqa: E731
                                            budget=budget, progress=False)
    post = run(21, 7500)
    gens = post.info["generations"]
    last = gens[-1]
    # fewer than 250 fell within the planned ε: the 250 nearest of all it simulated set its ε
    assert "cut" in last and last["particles"] == 250 and last["epsilon"] > last["planned_epsilon"] and last["simulations"] == 7500 - sum(g["simulations"] for g in gens[:-1]), last
    assert post.info["simulations"] == 7500 and post.theta.shape == (250, 1) and post.info["stopped"] == "the budget is spent"
    _, _, mean, sd = exact_abc(last["epsilon"])
    draws = np.asarray(post.sample(20_000, key=jax.random.key(3)))[:, 0]
    # 250 weighted particles: the mean's Monte Carlo error is about 0.03
    assert abs(draws.mean() - mean) < 0.1 and abs(draws.std() / sd - 1) < 0.15, (draws.mean(), mean, draws.std(), sd)
    # with at least half the population inside the planned ε, the generation keeps exactly those
    kept = run(20, 8000).info["generations"][-1]
    assert "cut" in kept and 250 <= kept["particles"] < 500 and kept["epsilon"] == kept["planned_epsilon"], kept
    # too little budget left for the nearest 250 to beat the last generation's ε: that generation is returned, with a warning
    with pytest.warns(UserWarning, match="nearest reach no lower than generation 3; returning generation 3"):
        short = run(21, 6000)
    assert len(short.info["generations"]) == 4 and short.info["stopped"].startswith("the budget ran out in generation 4")


def test_linear_regression_adjustment_shrinks_the_error_on_a_linear_model():
    a = jnp.array([[1.0, 0.5], [0.0, 1.0]])
    linear = galton.Simulator(dist.Normal(jnp.zeros(2), 1.0), lambda key, t: a @ t + 0.3 * jax.random.normal(key, (2,)), name="linear")
    x_o = jnp.array([0.7, -0.4])
    # exact posterior: N(m, S) with S = (I + AᵀA/0.09)⁻¹, m = S Aᵀ x_o / 0.09
    s = np.linalg.inv(np.eye(2) + np.asarray(a.T @ a) / 0.09)
    m = s @ np.asarray(a.T @ x_o) / 0.09
    sims = galton.simulate(linear, 20_000, key=jax.random.key(4), progress=False)
    errors = {}
    for adjustment in (None, "linear"):
        post = galton.infer(linear, x_o, key=jax.random.key(5), method="rejection_abc", quantile=0.05, adjustment=adjustment, simulations=sims, progress=False)
        draws = np.asarray(post.sample(20_000, key=jax.random.key(6)))
        errors[adjustment] = np.abs(draws.mean(0) - m).max() + np.abs(draws.std(0) / np.sqrt(np.diag(s)) - 1).max()
    assert errors["linear"] < 0.5 * errors[None] and errors["linear"] < 0.15, errors


def test_nonlinear_adjustment_is_an_npe_on_the_accepted_pairs():
    sims = galton.simulate(GAUSS, 4000, key=jax.random.key(7), progress=False)
    post = galton.infer(GAUSS, X_O, key=jax.random.key(8), method="rejection_abc", quantile=0.1, adjustment="nonlinear", simulations=sims, progress=False)
    draws = np.asarray(post.sample(2000, key=jax.random.key(9)))[:, 0]
    exact_mean, exact_sd = float(X_O[0]) / (1 + SIGMA**2), np.sqrt(SIGMA**2 / (1 + SIGMA**2))
    assert type(post).__name__ == "FlowPosterior" and post.info["accepted"] == 400
    assert abs(draws.mean() - exact_mean) < 0.1 and abs(draws.std() / exact_sd - 1) < 0.25, (draws.mean(), draws.std())


CASES = {
    "rejection": RejectionABC(quantile=0.05),
    "rejection-linear": RejectionABC(quantile=0.05, adjustment="linear"),
    "mcmc": MCMCABC(chains=8, quantile=0.05),
    "smc": SMCABC(population=50),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_contract_shapes_save_load_and_same_key_for_both_key_kinds(case, tmp_path):
    run = lambda key: galton.infer(GAUSS, np.asarray(X_O), key=key, method=CASES[case], budget=1000, progress=False)  # noqa: E731
    post = run(jax.random.key(10))
    draws = post.sample(40, key=jax.random.key(11))
    assert draws.shape == (40, 1) and bool(jnp.isfinite(post.log_prob(draws)).all()) and post.log_prob(draws[0]).shape == ()
    assert 0 < post.info["simulations"] <= 1000 and post.names == ["theta[0]"]
    loaded = load(post.save(tmp_path / "post"))
    np.testing.assert_array_equal(loaded.sample(40, key=jax.random.key(11)), draws)
    assert loaded.info == post.info
    legacy = run(jax.random.PRNGKey(10))
    np.testing.assert_array_equal(legacy.theta, post.theta)
    np.testing.assert_array_equal(legacy.log_weights, post.log_weights)
    assert post.to_arviz(n=20, key=jax.random.key(0)).posterior["theta[0]"].shape == (1, 20)


def _interrupt_after(monkeypatch, calls: int):
    from galton.methods.abc import base

    real, seen = base.simulate, []

    def flaky(*args, **kwargs):
        seen.append(1)
        if len(seen) > calls:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(base, "simulate", flaky)


@pytest.mark.parametrize("method, calls", [(SMCABC(population=100), 5), (MCMCABC(chains=8, quantile=0.05, adapt_every=5), 40)], ids=["smc", "mcmc"])
def test_an_interrupted_run_resumes_from_its_store_and_ends_the_same(method, calls, tmp_path, monkeypatch):
    run = lambda store: galton.infer(GAUSS, X_O, key=jax.random.key(12), method=method, budget=3000, store=store, progress=False)  # noqa: E731
    clean = run(None)
    with monkeypatch.context() as patch:
        _interrupt_after(patch, calls)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "run")
    assert any((tmp_path / "run").iterdir())
    resumed = run(tmp_path / "run")
    np.testing.assert_array_equal(resumed.theta, clean.theta)
    np.testing.assert_array_equal(resumed.log_weights, clean.log_weights)
    assert resumed.info == clean.info


def test_a_numpy_simulator_runs_through_the_executor():
    numpy_sim = galton.Simulator(dist.Normal(jnp.zeros(1), 1.0), lambda key, t: np.asarray(t) + SIGMA * np.random.default_rng(np.asarray(jax.random.key_data(key))).normal(size=1), name="numpy")
    assert numpy_sim.backend == "python"
    post = galton.infer(numpy_sim, X_O, key=jax.random.key(13), method=SMCABC(population=60, generations=2), budget=600, progress=False)
    assert len(post.info["generations"]) == 3 and post.theta.shape[0] >= 60 and post.theta.shape[1] == 1


def test_bad_input_is_named():
    run = lambda method, **kw: galton.infer(GAUSS, X_O, key=jax.random.key(14), method=method, budget=kw.pop("budget", 500), progress=False, **kw)  # noqa: E731
    with pytest.raises(ABCError, match="returned NaN for"):
        run("rejection_abc", distance=lambda s, so: jnp.nan * jnp.sum(s))
    with pytest.warns(UserWarning, match=r"only 0 of 500 simulations are within epsilon=1e-09; returning the nearest 10"):
        post = run("rejection_abc", epsilon=1e-9)
    assert len(post.theta) == 10 and post.info["epsilon"] > 1e-9
    with pytest.warns(UserWarning, match=r"acceptance rate 0\.\d+ fell below min_acceptance=0\.9"):
        run(SMCABC(population=50, min_acceptance=0.9), budget=1000)
    with pytest.warns(UserWarning, match=r"mcmc_abc: the acceptance rate 0\.0000 after warm-up \(0 moves"):
        run(MCMCABC(chains=8, epsilon=1e-9), budget=400)
    with pytest.warns(UserWarning, match="epsilon=1e-09 was not reached"):
        run(SMCABC(population=50, epsilon=1e-9), budget=400)
    with pytest.raises(ABCError, match=r"summary must return a vector \(k,\) per x, but returned shape \(1, 1\)"):
        run("rejection_abc", summary=lambda x: x[None])
    with pytest.raises(ABCError, match="summary must be a function"):
        RejectionABC(summary="mean")
    with pytest.raises(ABCError, match="rounds=3 does not apply to smc_abc"):
        run("smc_abc", rounds=3)
    with pytest.raises(ABCError, match="budget=60 simulations cannot fit"):
        run(SMCABC(population=50), budget=60)
    with pytest.raises(ABCError, match=r"quantile must be a number in \(0, 1\], got 1.5"):
        RejectionABC(quantile=1.5)
    with pytest.raises(ABCError, match="adjustment must be one of"):
        RejectionABC(adjustment="quadratic")
    with pytest.raises(ABCError, match="kernel must be one of"):
        SMCABC(kernel="uniform")
    with pytest.raises(ABCError, match="simulations= cannot be used"):
        run("smc_abc", simulations=galton.simulate(GAUSS, 100, key=jax.random.key(0), progress=False))
    with pytest.raises(galton.ProblemError, match="x_obs has shape"):
        galton.infer(GAUSS, jnp.zeros(3), key=jax.random.key(0), method="rejection_abc", budget=100, progress=False)


@pytest.mark.parametrize("make, message", [
    (lambda: MCMCABC(adapt_every=0), "adapt_every must be a positive integer number of steps, got 0"),
    (lambda: MCMCABC(min_acceptance=-1.0), r"min_acceptance must be an acceptance rate in \[0, 1\), got -1.0"),
    (lambda: MCMCABC(min_acceptance=2.0), r"min_acceptance must be an acceptance rate in \[0, 1\), got 2.0"),
    (lambda: RejectionABC(quantile="0.1"), r"quantile must be a number in \(0, 1\], got '0.1'"),
    (lambda: RejectionABC(chunk_size=0), "chunk_size must be a positive integer, got 0"),
    (lambda: SMCABC(alpha=float("nan")), r"alpha must be a quantile in \(0, 1\), got nan"),
], ids=["adapt_every", "min_acceptance<0", "min_acceptance>1", "quantile-text", "chunk_size", "alpha-nan"])
def test_settings_are_refused_at_construction(make, message):
    with pytest.raises(ABCError, match=message):
        make()


def test_an_smc_store_made_for_another_observation_is_refused_up_front(tmp_path):
    run = lambda x_o: galton.infer(GAUSS, x_o, key=jax.random.key(15), method=SMCABC(population=50, generations=2), budget=400,  # noqa: E731
                                   store=tmp_path / "smc", progress=False)
    run(X_O)
    with pytest.raises(galton.StoreMismatchError, match="the observation x_o differs from the one the store at .* was made for"):
        run(X_O + 1.0)
