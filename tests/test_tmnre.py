"""TMNRE: marginal heads against the analytic Gaussian posterior, truncation, resume, calibration,
bad input. The problem is tests/analytic.py's: θ ~ N(0, 0.1·I₃), x ~ N(θ, 0.1·I₃), so every
marginal of p(θ | x) is N(x_i/2, 0.05), and the quantile-space truncation of a Gaussian prior is
exercised too (its support is unbounded)."""

import json
from dataclasses import replace

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from analytic import DIM, PROBLEM, X_OBS, sims  # noqa: F401  (sims is a fixture)
from scipy import stats

import galton
from galton.calibration import marginal_coverage
from galton.methods import TMNRE
from galton.methods import nre
from galton.methods.tmnre import loss as tmnre_loss
from galton.methods.tmnre import loss_c as tmnre_loss_c
from galton.posteriors import PosteriorFileError, load
from galton.problem import ProblemError
from galton.train import Training
from galton.regions import Region
from galton.truncation import TruncatedPrior, TruncationError, shrink, tail_level

FAST = Training(learning_rate=3e-3, batch_size=64, max_epochs=40, patience=8)
METHOD = TMNRE(marginals=[("theta[0]",), ("theta[1]",), ("theta[2]",), ("theta[0]", "theta[1]")], hidden=32, training=FAST)
STD = np.sqrt(0.05)


@pytest.fixture(scope="module")
def amortized(sims):  # noqa: F811
    return galton.infer(PROBLEM, X_OBS, key=jax.random.key(1), method=METHOD, simulations=sims, budget=len(sims), progress=False)


def test_heads_recover_the_gaussian_marginals(amortized):
    for i, name in enumerate(amortized.names):
        draws = np.asarray(amortized.marginal(name).sample(4000, key=jax.random.key(i)))[:, 0]
        assert abs(draws.mean() - float(X_OBS[i]) / 2) < 0.25 * STD, (name, draws.mean())
        assert abs(draws.std() / STD - 1) < 0.2, (name, draws.std())
        # the grid density matches the exact one where the posterior lives
        grid = np.linspace(X_OBS[i] / 2 - 2 * STD, X_OBS[i] / 2 + 2 * STD, 9)[:, None]
        lp = np.asarray(amortized.marginal(name).log_prob(grid))
        exact = stats.norm(float(X_OBS[i]) / 2, STD).logpdf(grid[:, 0])
        assert np.abs(lp - exact).max() < 0.5, (name, lp - exact)  # σ off by 30 % would miss by 1.1
    pair = np.asarray(amortized.marginal(("theta[0]", "theta[1]")).sample(4000, key=jax.random.key(9)))
    assert pair.shape == (4000, 2) and abs(np.corrcoef(pair.T)[0, 1]) < 0.1
    np.testing.assert_allclose(pair.std(0) / STD, 1, atol=0.2)


def test_an_ensemble_averages_its_members_and_recovers_the_gaussian_marginals(sims, tmp_path):  # noqa: F811
    from galton.ratio import MarginalRatioEnsemble

    post = galton.infer(PROBLEM, X_OBS, key=jax.random.key(1), method=replace(METHOD, ensemble=2), simulations=sims,
                        budget=len(sims), progress=False)
    net = post.network
    assert isinstance(net, MarginalRatioEnsemble) and len(net.members) == 2 and len(post.rounds[-1]["member_epochs"]) == 2
    theta, x = np.asarray(PROBLEM.prior.sample(jax.random.key(2), (30,))), np.repeat(np.asarray(X_OBS)[None], 30, 0)
    each = [np.asarray(m.log_ratios(theta, x)) for m in net.members]
    assert np.abs(each[0] - each[1]).max() > 1e-3  # two networks, not one twice
    np.testing.assert_allclose(net.log_ratios(theta, x), (each[0] + each[1]) / 2, rtol=1e-5, atol=1e-5)
    for i, name in enumerate(post.names):
        draws = np.asarray(post.marginal(name).sample(4000, key=jax.random.key(i)))[:, 0]
        assert abs(draws.mean() - float(X_OBS[i]) / 2) < 0.25 * STD and abs(draws.std() / STD - 1) < 0.2, (name, draws.mean(), draws.std())
    loaded = load(post.save(tmp_path / "ensemble"))
    assert isinstance(loaded.network, MarginalRatioEnsemble)
    pair = ("theta[0]", "theta[1]")
    np.testing.assert_array_equal(loaded.marginal(pair).sample(50, key=jax.random.key(3)), post.marginal(pair).sample(50, key=jax.random.key(3)))


class _FixedHeads(eqx.Module):
    """Head h's logit is θ's column h, whatever x: a classifier with a known balance gap per head."""

    def embed(self, x):
        return x

    def head_log_ratios(self, theta, features):
        return theta


class _ProductHead(eqx.Module):
    """One head whose logit is θ·x: each marginal pair's term depends on which θ meets which x."""

    def embed(self, x):
        return x

    def head_log_ratios(self, theta, features):
        return theta * features


def test_more_negatives_average_the_marginal_term_over_other_rows():
    theta, x = jnp.linspace(-1.0, 1.0, 8)[:, None], jnp.linspace(2.0, -1.5, 8)[:, None]
    logits = np.asarray(theta[:, 0])[None, :] * np.asarray(x[:, 0])[:, None]  # [i, j]: θ_j meets x_i
    off = ~np.eye(8, dtype=bool)
    exact = -np.mean(np.log(jax.nn.sigmoid(np.diag(logits)))) - np.mean(np.log(jax.nn.sigmoid(-logits[off])))
    many = tmnre_loss(_ProductHead(), (theta, x), jax.random.key(0), negatives=4000)
    np.testing.assert_allclose(float(many), exact, rtol=5e-3)  # every other row's θ, equally often; never its own
    one = [float(tmnre_loss(_ProductHead(), (theta, x), jax.random.key(k))) for k in range(3)]
    assert len(set(one)) > 1 and all(abs(v - exact) > 1e-4 for v in one)
    with pytest.raises(ValueError, match="negatives must be a positive integer"):
        TMNRE(negatives=0)


class _OneRatio(eqx.Module):
    """A joint NRE's `log_ratio` seen through one head: the same θ·x logit."""

    def log_ratio(self, theta, x):
        return (theta * x).sum(-1)


def test_variant_c_is_nre_c_per_head():
    theta = jnp.linspace(-1.0, 1.0, 16)[:, None]
    x = jnp.sin(3.0 * jnp.arange(16.0))[:, None]
    key = jax.random.key(4)
    for k, gamma in [(1, 1.0), (5, 1.0), (7, 0.3)]:
        per_head = tmnre_loss_c(_ProductHead(), (theta, x), key, negatives=k, gamma=gamma)
        joint = nre.loss_c(_OneRatio(), (theta, x), key, num_atoms=k, gamma=gamma)
        np.testing.assert_allclose(float(per_head), float(joint), rtol=1e-6)
    # two heads: the mean of each head's loss
    two = _FixedHeads()
    pair = jnp.stack([theta[:, 0], -theta[:, 0]], -1)
    both = tmnre_loss_c(two, (pair, x), key, negatives=5, gamma=1.0)
    single = [tmnre_loss_c(_FixedHeads(), (pair[:, [h]], x), key, negatives=5, gamma=1.0) for h in (0, 1)]
    np.testing.assert_allclose(float(both), np.mean([float(v) for v in single]), rtol=1e-6)


def test_variant_c_heads_recover_the_gaussian_marginals(sims):  # noqa: F811
    method = replace(METHOD, variant="c", negatives=5)
    post = galton.infer(PROBLEM, X_OBS, key=jax.random.key(1), method=method, simulations=sims, budget=len(sims), progress=False)
    for i, name in enumerate(post.names):
        draws = np.asarray(post.marginal(name).sample(4000, key=jax.random.key(i)))[:, 0]
        assert abs(draws.mean() - float(X_OBS[i]) / 2) < 0.25 * STD, (name, draws.mean())
        assert abs(draws.std() / STD - 1) < 0.2, (name, draws.std())


@pytest.mark.parametrize("settings, message", [
    ({"variant": "b"}, "variant must be one of"),
    ({"variant": "c", "balance": 10.0}, "apply to variant='a'"),
    ({"variant": "c", "gamma": 0.0}, "gamma must be"),
])
def test_bad_variant_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        TMNRE(**settings)


def test_the_balance_term_is_bnre_s_squared_gap_per_head():
    a, lam = 1.5, 7.0
    theta = jnp.tile(jnp.array([[a, -a]]), (16, 1))  # head 0 errs by +g, head 1 by −g: they must not cancel
    batch, key = (theta, jnp.zeros((16, 1))), jax.random.key(0)
    gap = 2 * jax.nn.sigmoid(a) - 1
    added = tmnre_loss(_FixedHeads(), batch, key, balance=lam) - tmnre_loss(_FixedHeads(), batch, key)
    np.testing.assert_allclose(float(added), lam * float(gap) ** 2, rtol=1e-5)
    from galton.train import _jitted_epoch

    rests = [eqx.partition(TMNRE(balance=lam).loss(None, False), eqx.is_array)[1] for _ in range(2)]
    epochs = [_jitted_epoch(None, rest, FAST, 64) for rest in rests]
    assert epochs[0] is epochs[1]  # equal settings, one compiled epoch


def test_balanced_heads_err_wide_not_narrow(sims):  # noqa: F811
    method = TMNRE(marginals=[("theta[0]",), ("theta[1]",), ("theta[2]",)], hidden=32, training=FAST, balance=100.0)
    post = galton.infer(PROBLEM, X_OBS, key=jax.random.key(1), method=method, simulations=sims, budget=len(sims), progress=False)
    for i, name in enumerate(post.names):
        draws = np.asarray(post.marginal(name).sample(4000, key=jax.random.key(i)))[:, 0]
        assert abs(draws.mean() - float(X_OBS[i]) / 2) < 0.25 * STD, (name, draws.mean())
        assert 1.0 < draws.std() / STD < 1.5, (name, draws.std())  # 1.25–1.30 measured at 2,000 simulations


@pytest.mark.parametrize("balance", [-1.0, "100", True, float("inf")])
def test_a_bad_balance_is_refused(balance):
    with pytest.raises(ValueError, match="balance must be a non-negative number"):
        TMNRE(balance=balance)


class _Overconfident(eqx.Module):
    """Twice the exact marginal log-ratios of analytic.py's problem: heads twice too sure of themselves."""

    marginals = [(0,), (1,), (2,)]

    def embed(self, x):
        return x

    def head_log_ratios(self, theta, features, heads=None):
        post = -0.5 * (theta - features / 2) ** 2 / 0.05 - 0.5 * jnp.log(0.05)
        prior = -0.5 * theta**2 / 0.1 - 0.5 * jnp.log(0.1)
        return 2.0 * (post - prior)


def test_calibration_finds_the_temperature_of_over_confident_heads():
    from galton.ratio import temperatures

    sims = galton.simulate(PROBLEM, 4000, key=jax.random.key(20), progress=False)
    factors = temperatures(_Overconfident(), sims.theta, sims.x, key=jax.random.key(21))
    np.testing.assert_allclose(factors, 0.5, atol=0.05)


def test_calibrate_scales_each_head_of_the_last_round(amortized, sims):  # noqa: F811
    calibrated = galton.infer(PROBLEM, X_OBS, key=jax.random.key(1), method=replace(METHOD, calibrate=True), simulations=sims,
                              budget=len(sims), progress=False)
    factors = np.asarray(calibrated.rounds[-1]["temperatures"])
    assert factors.shape == (4,) and np.all((factors > 0.05) & (factors < 5)) and "temperatures" not in amortized.rounds[-1]
    theta = np.asarray(PROBLEM.prior.sample(jax.random.key(22), (50,)))
    x = np.repeat(np.asarray(X_OBS)[None], 50, 0)
    # the same network (the same key) before the factors: each head's log-ratio scaled by its own
    np.testing.assert_allclose(calibrated.network.log_ratios(theta, x), amortized.network.log_ratios(theta, x) * factors, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="calibrate must be True or False"):
        TMNRE(calibrate="yes")


def test_calibrate_scales_each_member_of_an_ensemble_on_its_own_held_out_rows(sims):  # noqa: F811
    method = replace(METHOD, ensemble=2, training=replace(FAST, max_epochs=10))
    plain = galton.infer(PROBLEM, X_OBS, key=jax.random.key(1), method=method, simulations=sims, budget=len(sims), progress=False)
    calibrated = galton.infer(PROBLEM, X_OBS, key=jax.random.key(1), method=replace(method, calibrate=True), simulations=sims,
                              budget=len(sims), progress=False)
    factors = np.asarray(calibrated.rounds[-1]["temperatures"])
    assert factors.shape == (2, 4) and np.all((factors > 0.05) & (factors < 5)) and np.abs(factors[0] - factors[1]).max() > 0
    theta = np.asarray(PROBLEM.prior.sample(jax.random.key(22), (50,)))
    x = np.repeat(np.asarray(X_OBS)[None], 50, 0)
    for before, after, f in zip(plain.network.members, calibrated.network.members, factors):
        np.testing.assert_allclose(after.log_ratios(theta, x), before.log_ratios(theta, x) * f, rtol=1e-4, atol=1e-5)


def test_marginal_posterior_normalises_and_saves(amortized, tmp_path):
    theta, density = amortized.marginal("theta[1]").grid()
    assert abs(np.trapezoid(density, theta[:, 0]) - 1) < 0.01
    loaded = load(amortized.save(tmp_path / "tmnre"))
    assert loaded.marginals == amortized.marginals and loaded.rounds == amortized.rounds
    key = jax.random.key(3)
    for m in amortized.marginals:
        np.testing.assert_array_equal(loaded.marginal(m).sample(50, key=key), amortized.marginal(m).sample(50, key=key))
    with pytest.raises(ValueError, match="not the joint posterior"):
        amortized.sample(10, key=key)
    with pytest.raises(ValueError, match=r"estimated as \('theta\[0\]', 'theta\[1\]'\)"):
        amortized.marginal(("theta[1]", "theta[0]"))
    with pytest.raises(ValueError, match=r"\(0,\) is not among the estimated marginals"):
        amortized.marginal(0)
    idata = amortized.to_arviz(n=100)
    assert set(idata.posterior.data_vars) == set(amortized.names)


def test_marginal_log_prob_takes_any_batch_shape_and_names_a_wrong_width(amortized):
    pair = amortized.marginal(("theta[0]", "theta[1]"))
    theta = jax.random.normal(jax.random.key(5), (3, 4, 2)) * 0.2
    flat = np.asarray(pair.log_prob(theta.reshape(12, 2)))
    np.testing.assert_allclose(np.asarray(pair.log_prob(theta)), flat.reshape(3, 4), rtol=1e-6)
    assert np.asarray(pair.log_prob(theta[0, 0])).shape == ()
    with pytest.raises(ProblemError, match=r"theta has shape \(4, 3\); this posterior has 2 parameters"):
        pair.log_prob(np.zeros((4, 3)))


def test_each_marginal_is_calibrated(amortized):
    test = galton.simulate(PROBLEM, 150, key=jax.random.key(7), proposal=amortized.proposal, progress=False)
    for m, (levels, coverage) in marginal_coverage(amortized, test.theta, test.x, key=jax.random.key(8), n_samples=300, levels=[0.5, 0.68, 0.95]).items():
        binomial = np.sqrt(levels * (1 - levels) / len(test))
        assert np.all(np.abs(coverage - levels) < 3 * binomial + 0.03), (m, coverage)


# a prior ten times wider than the posterior, so that truncation has something to cut
WIDE = galton.Simulator(dist.Normal(jnp.zeros(DIM), 1.0), lambda key, theta: theta + 0.1 * jax.random.normal(key, theta.shape), name="wide")
WIDE_MEAN, WIDE_STD = np.asarray(X_OBS) / 1.01, np.sqrt(0.01 / 1.01)


@pytest.fixture(scope="module")
def truncated(tmp_path_factory):
    store = tmp_path_factory.mktemp("tmnre") / "store"
    method = TMNRE(marginals=[("theta[0]",), ("theta[1]",), ("theta[2]",)], hidden=32, training=FAST)
    post = galton.infer(WIDE, X_OBS, key=jax.random.key(2), method=method, budget=3000, rounds=3, store=store, progress=False)
    return method, store, post


def test_truncation_shrinks_the_box_and_keeps_the_truth(truncated):
    _, _, post = truncated
    volumes = [r["volume"] for r in post.rounds]
    assert volumes[0] == 1.0 and volumes[-1] < 0.4 and all(a >= b for a, b in zip(volumes, volumes[1:])), volumes
    assert all(r["reused"] > 0 for r in post.rounds[1:])  # earlier simulations inside the new box are kept
    assert "unbounded prior support" in post.rounds[0]["note"]  # a Gaussian prior is cut in quantile space
    # the exact posterior's ±4σ region lies inside every box
    for r in post.rounds:
        box = np.asarray(r["box"])
        assert np.all(box[:, 0] < WIDE_MEAN - 4 * WIDE_STD) and np.all(box[:, 1] > WIDE_MEAN + 4 * WIDE_STD), box
    draws = np.asarray(post.marginal("theta[2]").sample(3000, key=jax.random.key(5)))[:, 0]
    assert abs(draws.mean() - WIDE_MEAN[2]) < 0.25 * WIDE_STD and abs(draws.std() / WIDE_STD - 1) < 0.2, (draws.mean(), draws.std())


def test_interrupted_run_resumes_from_the_store_to_the_same_result(truncated):
    method, store, post = truncated
    done = store / "round_2" / "done"
    import zarr

    flags = zarr.open_array(str(done), mode="r+")
    flags[-1] = 0  # as a run killed before the last round's last chunk was marked done
    again = galton.infer(WIDE, X_OBS, key=jax.random.key(2), method=method, budget=3000, rounds=3, store=store, progress=False)
    assert again.rounds == post.rounds
    assert [h["train_loss"] for h in again.history] == [h["train_loss"] for h in post.history]
    np.testing.assert_array_equal(again.marginal("theta[0]").sample(100, key=jax.random.key(0)), post.marginal("theta[0]").sample(100, key=jax.random.key(0)))


def test_truncated_prior_samples_exactly_inside_its_box():
    prior = galton.Prior({"a": dist.Uniform(-2.0, 2.0), "b": dist.Normal(1.0, 2.0), "c": dist.Gamma(2.0, 1.0)})
    box = TruncatedPrior(TruncatedPrior.full(prior).quantiles, [0.25, 0.1, 0.5], [0.75, 0.3, 0.9])
    draws = np.asarray(box.sample(jax.random.key(0), (20_000,)))
    assert bool(box.contains(draws).all()) and abs(box.volume - 0.5 * 0.2 * 0.4) < 1e-6
    np.testing.assert_allclose(box.bounds()[0], [-1.0, 1.0], atol=1e-5)
    # the restricted Normal is the prior's law inside the box: its CDF ratio is uniform there
    u = stats.norm(1.0, 2.0).cdf(draws[:, 1])
    assert stats.kstest((u - 0.1) / 0.2, "uniform").pvalue > 1e-3
    assert np.isinf(np.asarray(box.log_prob(jnp.array([[0.0, -0.683, 2.44], [-1.5, -0.683, 2.44]])))).tolist() == [False, True]


@pytest.mark.parametrize(
    "marginals, message",
    [
        ([("theta[0]",), ("nope",)], "not parameters"),
        ([("theta[0]", "theta[0]")], "twice"),
        ([("theta[0]",), ("theta[0]",)], "given twice"),
        ([()], "empty marginal"),
        ([], "non-empty list"),
        ([("theta[0]", "theta[1]", "theta[2]")], "1-D and 2-D"),
        ([0], "0 is neither"),
        (("theta[0]", "theta[1]"), "ambiguous"),
    ],
)
def test_bad_marginals_are_named(marginals, message, sims):  # noqa: F811
    with pytest.raises(ValueError, match=message):
        galton.infer(PROBLEM, X_OBS, key=jax.random.key(0), method="tmnre", marginals=marginals, simulations=sims, budget=len(sims), progress=False)


@pytest.mark.parametrize("epsilon", [0.0, 1.0, -1e-3, 2.0, "0.1", np.nan])
def test_epsilon_outside_the_unit_interval_is_refused(epsilon):
    with pytest.raises(ValueError, match=r"epsilon must be a number in \(0, 1\)"):
        TMNRE(epsilon=epsilon)
    assert TMNRE(epsilon=np.float32(1e-4)).epsilon == TMNRE(epsilon=jnp.float32(1e-4)).epsilon


def test_a_bad_observation_is_refused_before_any_round_cuts_a_box():
    rng = lambda key: np.random.default_rng(np.asarray(jax.random.key_data(key)))  # noqa: E731
    numpy_sim = galton.Simulator(dist.Normal(jnp.zeros(DIM), 1.0), lambda key, t: np.asarray(t) + 0.1 * rng(key).normal(size=DIM), name="numpy")
    assert numpy_sim.backend == "python"  # x's shape is known only once it has simulated
    method = TMNRE(marginals=[("theta[0]",)], hidden=8, training=Training(max_epochs=2, patience=1, batch_size=50))
    with pytest.raises(ProblemError, match="NaN or inf"):
        galton.infer(numpy_sim, np.full(DIM, np.nan), key=jax.random.key(0), method=method, budget=200, rounds=2, progress=False)
    with pytest.raises(ProblemError, match=r"x_obs has shape \(4,\), but numpy simulates x of shape \(3,\) \(the 100 simulations made before the check") as err:
        galton.infer(numpy_sim, np.zeros(DIM + 1), key=jax.random.key(0), method=method, budget=200, rounds=2, progress=False)
    assert len(err.value.simulations) == 100 and np.isfinite(err.value.simulations.x).all()


def test_a_collapsing_box_names_the_parameter():
    full = TruncatedPrior.full(PROBLEM.prior)
    box = TruncatedPrior(full.quantiles, np.full(DIM, 0.5), np.full(DIM, 0.5 + 1e-5))

    def spike(u):  # a degenerate head: one grid cell far above the rest in parameter 1
        values = jnp.zeros_like(u)
        return values.at[1000, 1].set(1e9)

    with pytest.raises(TruncationError, match=r"theta\[1\]") as err:
        shrink(box, spike, epsilon=1e-6, names=PROBLEM.prior.names)
    assert err.value.simulations is None


def test_a_prior_with_correlated_columns_is_refused_with_its_block():
    cov = jnp.array([[1.0, 0.5], [0.5, 1.0]])
    problem = galton.Simulator({"w": dist.MultivariateNormal(jnp.zeros(2), cov)}, lambda k, t: t + jax.random.normal(k, (2,)))
    with pytest.raises(TruncationError, match="block 'w'.*correlated"):
        galton.infer(problem, jnp.zeros(2), key=jax.random.key(0), method="tmnre", budget=100, rounds=2, progress=False)


def test_corner_and_truncation_plots_draw_from_the_estimators(amortized, truncated):
    from galton import plot

    fig = plot.marginals(amortized, reference=np.zeros((50, DIM)) + 0.01 * np.arange(50)[:, None], truth=np.asarray(X_OBS) / 2)
    assert len(fig.axes) == DIM + 1  # three 1-D panels and the one estimated pair
    fig = plot.marginals(amortized, consistent=True)
    assert len(fig.axes) == DIM + 1 and len(fig.axes[1].collections) > 0  # the pair (row 2, column 1): its HPD contours
    fig = plot.truncation(truncated[2])
    assert len(fig.axes) == DIM and len(fig.axes[0].patches) == 3


class _Disk(eqx.Module):
    radius: float

    def __call__(self, theta):
        return self.radius**2 - (theta**2).sum(-1)


def test_region_constraints_are_checked_in_chunks_alike():
    from galton.regions import _inside, _inside_chunk

    constraints = (lambda t: 1.0 - jnp.sum(t**2, -1),)
    theta = jax.random.normal(jax.random.key(0), (1000, 3))
    whole = np.asarray(_inside_chunk(constraints, theta))
    np.testing.assert_array_equal(_inside(constraints, theta, chunk=64), whole)
    np.testing.assert_array_equal(_inside(constraints, theta.reshape(10, 100, 3), chunk=64), whole.reshape(10, 100))
    assert 0 < whole.mean() < 1


def test_region_samples_the_prior_inside_its_constraints_exactly():
    prior = galton.Prior({"a": dist.Uniform(-1.0, 1.0), "b": dist.Uniform(-1.0, 1.0)})
    region = Region(TruncatedPrior.full(prior), [_Disk(0.5)], key=jax.random.key(0))
    assert abs(region.volume - np.pi * 0.25 / 4) < 0.005  # the disk's share of the square
    draws = np.asarray(region.sample(jax.random.key(1), (20_000,)))
    assert bool(region.contains(draws).all())
    u = np.asarray(region.sample_quantiles(jax.random.key(1), (20_000,)))  # the same draws, in quantile space
    np.testing.assert_allclose(np.asarray(region.quantiles.icdf(u)), draws, atol=1e-6)
    radius2 = (draws**2).sum(-1) / 0.25  # uniform on a disk: r² is uniform on [0, 1]
    assert stats.kstest(radius2, "uniform").pvalue > 1e-3
    assert np.isinf(np.asarray(region.log_prob(jnp.array([[0.0, 0.0], [0.5, 0.5]])))).tolist() == [False, True]


# x measures θ0 + θ1 sharply and θ0 − θ1 loosely: the posterior is a narrow diagonal ridge that
# fills a small part of any axis-aligned box
RIDGE = galton.Simulator(
    dist.Normal(jnp.zeros(2), 1.0),
    lambda key, t: jnp.stack([t[0] + t[1], t[0] - t[1]]) + jnp.array([0.05, 0.5]) * jax.random.normal(key, (2,)),
    name="ridge",
)


def ridge_posterior(x_obs):
    a = np.array([[1.0, 1.0], [1.0, -1.0]])
    precision = np.eye(2) + a.T @ np.diag([1 / 0.05**2, 1 / 0.5**2]) @ a
    cov = np.linalg.inv(precision)
    return cov @ a.T @ np.diag([1 / 0.05**2, 1 / 0.5**2]) @ np.asarray(x_obs), cov


def test_correlated_truncation_cuts_the_box_along_the_posterior(tmp_path):
    x_obs = jnp.array([0.6, -0.4])
    method = TMNRE(hidden=32, training=FAST, truncation="correlated")
    post = galton.infer(RIDGE, x_obs, key=jax.random.key(3), method=method, budget=3000, rounds=3, progress=False)
    shares = [r.get("region_share_of_box", 1.0) for r in post.rounds]
    assert shares[0] == 1.0 and max(shares[1:]) < 0.8 and shares[-1] < 0.5, shares  # measured 1, 0.60, 0.27: the 2-D head cuts the box
    assert post.rounds[-1]["volume"] < 0.5 * np.prod(np.diff(post.rounds[-1]["quantile_box"], axis=-1))
    mean, cov = ridge_posterior(x_obs)
    draws = np.asarray(post.marginal(("theta[0]", "theta[1]")).sample(4000, key=jax.random.key(4)))
    std = np.sqrt(np.diag(cov))
    assert np.all(np.abs(draws.mean(0) - mean) < 0.25 * std), (draws.mean(0), mean)
    np.testing.assert_allclose(draws.std(0) / std, 1, atol=0.2)
    assert abs(np.corrcoef(draws.T)[0, 1] - cov[0, 1] / std.prod()) < 0.05
    # the region travels with the saved posterior: its marginals and its proposal come back the same
    loaded = load(post.save(tmp_path / "ridge"))
    key = jax.random.key(5)
    np.testing.assert_array_equal(loaded.marginal("theta[0]").sample(50, key=key), post.marginal("theta[0]").sample(50, key=key))
    assert bool(post.proposal.sample(key, (5,)).shape == (5, 2))


def test_pool_all_trains_every_round_on_every_simulation_and_corrects_by_the_mixture():
    x_obs = jnp.array([0.6, -0.4])
    method = TMNRE(hidden=32, training=FAST, truncation="correlated", pool="all")
    post = galton.infer(RIDGE, x_obs, key=jax.random.key(3), method=method, budget=3000, rounds=3, progress=False)
    assert [(r["new"], r["reused"], r["pooled"]) for r in post.rounds] == [(1000, 0, 1000), (1000, 1000, 2000), (1000, 2000, 3000)]
    assert post.rounds[-1]["volume"] < 0.5  # the rounds still cut
    # the proposal the heads saw is the rounds' mixture: a third of its draws from the whole prior
    # (uniform in quantile space), the last third from the last, narrower region
    u, third = post.region_draws, round(65_536 / 3)
    assert u.shape == (3 * third, 2) and np.allclose(u[:third].std(0), 12**-0.5, atol=0.01), u[:third].std(0)
    assert np.all(u[-third:].std(0) < 0.8 * 12**-0.5), u[-third:].std(0)
    mean, cov = ridge_posterior(x_obs)
    draws = np.asarray(post.marginal(("theta[0]", "theta[1]")).sample(4000, key=jax.random.key(4)))
    std = np.sqrt(np.diag(cov))
    assert np.all(np.abs(draws.mean(0) - mean) < 0.25 * std), (draws.mean(0), mean)
    np.testing.assert_allclose(draws.std(0) / std, 1, atol=0.2)
    one = np.asarray(post.marginal("theta[1]").sample(4000, key=jax.random.key(6)))[:, 0]
    assert abs(one.mean() - mean[1]) < 0.25 * std[1] and abs(one.std() / std[1] - 1) < 0.2, (one.mean(), one.std())


# WIDE's x hidden among 9 heavy-tailed distractors: x = [θ + noise, t₂ draws] at scattered positions
SCATTER = np.array([4, 0, 9, 2, 11, 7, 1, 5, 10, 3, 8, 6])  # x[SCATTER[:3]] are θ + noise
DISTRACTED = galton.Simulator(
    dist.Normal(jnp.zeros(DIM), 1.0),
    lambda key, t: jnp.zeros(12).at[SCATTER].set(jnp.concatenate([t + 0.1 * jax.random.normal(key, (DIM,)),
                                                                  jax.random.t(jax.random.fold_in(key, 1), 2.0, (9,))])),
    name="distracted",
)
DISTRACTED_OBS = jnp.zeros(12).at[SCATTER].set(jnp.concatenate([X_OBS, jnp.array([0.5, -2.0, 0.1, 3.0, -0.4, 0.0, 1.2, -0.7, 0.3])]))


def test_spread_draws_each_output_of_the_projection_towards_one_value():
    embedding = galton.nets.Projected((12,), galton.nets.Identity((DIM,)), key=jax.random.key(2), sparse=True)
    results = []
    for spread in (0.0, 1e-3):
        method = TMNRE(marginals=[("theta[0]",), ("theta[1]",), ("theta[2]",)], hidden=16, embedding=embedding, spread=spread, training=FAST)
        projection = galton.infer(DISTRACTED, DISTRACTED_OBS, key=jax.random.key(3), method=method, budget=2000, rounds=1, progress=False).network.embedding
        w = np.abs(np.asarray(projection.weight))
        results.append((float(projection.spread()), w[:, SCATTER[:DIM]].sum() / w.sum()))
    (plain, plain_reads), (penalised, reads) = results
    # measured: 1.72 against 1.00, both reading θ's values (0.99, 0.98)
    assert penalised < 0.8 * plain and min(reads, plain_reads) > 0.9, results


def test_prune_trains_the_last_round_again_on_a_pruned_projection(fit_calls):
    # the projection's 3 values straight to the heads: with an MLP between them most fits never read one of θ's values
    embedding = galton.nets.Projected((12,), galton.nets.Identity((DIM,)), key=jax.random.key(2), sparse=True)
    method = TMNRE(marginals=[("theta[0]",), ("theta[1]",), ("theta[2]",)], hidden=16, embedding=embedding, prune=0.2, ensemble=2,
                   training=FAST, min_shrink=0.0)
    post = galton.infer(DISTRACTED, DISTRACTED_OBS, key=jax.random.key(3), method=method, budget=2000, rounds=2, progress=False)
    # round 1 once; the last round's two members twice each, the second time from the pruned first
    assert [kwargs.get("init") is None for _, kwargs, _ in fit_calls] == [True, True, False, True, False]
    # the second training a fine-tune, at a tenth of the step
    assert [c.training.learning_rate for c, _, _ in fit_calls] == [FAST.learning_rate] * 2 + [FAST.learning_rate * 0.1, FAST.learning_rate,
                                                                                              FAST.learning_rate * 0.1]
    for (_, _, trained), (_, kwargs, _) in [(fit_calls[1], fit_calls[2]), (fit_calls[3], fit_calls[4])]:
        w, start = np.abs(np.asarray(trained.embedding.weight)), np.asarray(kwargs["init"].embedding.weight)
        np.testing.assert_array_equal(start == 0, w < 0.2 * w.max(1, keepdims=True))
    for j, (_, kwargs, final) in enumerate(fit_calls[2::2]):
        start, w = np.asarray(kwargs["init"].embedding.weight), np.abs(np.asarray(final.embedding.weight))
        assert np.all(w[start == 0] == 0) and np.all(w[start != 0] > 0)  # training kept the pruned weights at zero
        np.testing.assert_array_equal(post.network.members[j].embedding.weight, final.embedding.weight)
        assert w[:, SCATTER[:DIM]].sum() / w.sum() > 0.9, w  # what is left reads θ's values
    assert np.isfinite(post.history[-1]["validation_before_pruning"])
    assert post.history[-1]["projection_reads"] == np.asarray((post.network.members[0].embedding.weight != 0).sum(1)).tolist()
    for i in range(DIM):
        draws = np.asarray(post.marginal(f"theta[{i}]").sample(4000, key=jax.random.key(4)))[:, 0]
        # measured: means within 0.12 σ, sds 0.95–0.98 of the exact
        assert abs(draws.mean() - WIDE_MEAN[i]) < 0.25 * WIDE_STD and abs(draws.std() / WIDE_STD - 1) < 0.15, (i, draws.mean(), draws.std())


def test_unknown_pool_is_refused():
    with pytest.raises(ValueError, match="pool must be one of"):
        TMNRE(pool="outside")


def test_unknown_truncation_is_refused():
    with pytest.raises(ValueError, match="truncation must be one of"):
        TMNRE(truncation="ellipse")


def test_tail_mass_cuts_the_flat_tails_of_a_saturated_head():
    full = TruncatedPrior.full(PROBLEM.prior)

    def saturated(u):  # a peak of width 0.01 in quantile space, flat 10 nats below it: ε = 1e-6 never cuts
        return jnp.maximum(-0.5 * ((u - 0.4) / 0.01) ** 2, -10.0 - 0.5 * jnp.abs(u - 0.4))

    kept = shrink(full, saturated, epsilon=1e-6, names=PROBLEM.prior.names)
    assert np.allclose(kept.u_low, 0.0) and np.allclose(kept.u_high, 1.0)
    cut = shrink(full, saturated, epsilon=1e-6, names=PROBLEM.prior.names, tail_mass=1e-3)
    # the flat tails hold 4.5e-5 × 0.95 / 0.025 ≈ 1.7e-3 of the mass; 5e-4 is cut from each end, the peak ±4σ stays
    assert np.all(np.asarray(cut.u_low) < 0.36) and np.all(np.asarray(cut.u_high) > 0.44), (cut.u_low, cut.u_high)
    assert np.all(np.asarray(cut.u_high - cut.u_low) < 0.7), (cut.u_low, cut.u_high)
    values = np.asarray(saturated(jnp.linspace(0, 1, 4096)[:, None]))[:, 0]
    level = float(tail_level(values[:, None], 1e-3)[0])  # the 2-D heads' rule: a level set
    weights = np.exp(values - values.max())
    assert 5e-4 < weights[values < level].sum() / weights.sum() <= 1e-3
    with pytest.raises(ValueError, match=r"tail_mass must be a number in \(0, 0.5\)"):
        TMNRE(tail_mass=0.5)


def test_a_margin_widens_each_cut_by_a_share_of_its_width_inside_the_old_box():
    full = TruncatedPrior.full(PROBLEM.prior)

    def peak(u):  # kept where within 5.26 widths of 0.3: [0.2474, 0.3526]
        return -0.5 * ((u - 0.3) / 0.01) ** 2

    tight = shrink(full, peak, epsilon=1e-6, names=PROBLEM.prior.names)
    wide = shrink(full, peak, epsilon=1e-6, names=PROBLEM.prior.names, margin=0.5)
    width = np.asarray(tight.u_high - tight.u_low)
    np.testing.assert_allclose(np.asarray(wide.u_high - wide.u_low), 2 * width, rtol=0.03)
    np.testing.assert_allclose(np.asarray(wide.u_low + wide.u_high) / 2, 0.3, atol=1e-3)
    edge = shrink(full, peak, epsilon=1e-6, names=PROBLEM.prior.names, margin=5.0)  # clipped to the old box
    assert np.allclose(edge.u_low, 0.0) and np.all(np.asarray(edge.u_high) < 1.0)
    with pytest.raises(ValueError, match="margin must be a non-negative number"):
        TMNRE(margin=-0.1)


@pytest.fixture
def fit_calls(monkeypatch):
    """Each round's `TMNRE.fit` as (the settings it ran with, its keywords, the trained network)."""
    calls, fit = [], TMNRE.fit

    def spy(self, *args, **kwargs):
        out = fit(self, *args, **kwargs)
        calls.append((self, kwargs, out[0]))
        return out

    monkeypatch.setattr(TMNRE, "fit", spy)
    return calls


def test_cut_balance_trains_the_cutting_rounds_balanced_and_the_last_plain(fit_calls):
    method = TMNRE(marginals=[("theta[0]",), ("theta[1]",), ("theta[2]",)], hidden=8, cut_balance=100.0,
                   training=Training(max_epochs=2, patience=1, batch_size=50), min_shrink=0.0)
    galton.infer(WIDE, X_OBS, key=jax.random.key(3), method=method, budget=600, rounds=3, progress=False)
    assert [m.balance for m, _, _ in fit_calls] == [100.0, 100.0, 0.0]
    fit_calls.clear()  # rounds merged once the box stops shrinking: the merged round is the last, plain
    galton.infer(WIDE, X_OBS, key=jax.random.key(3), method=replace(method, min_shrink=0.99), budget=600, rounds=3, progress=False)
    assert [m.balance for m, _, _ in fit_calls] == [100.0, 0.0]
    with pytest.raises(ValueError, match="cut_balance must be a non-negative number"):
        TMNRE(cut_balance=-1.0)


def test_carry_embedding_starts_each_round_from_the_last_trained_embedding(fit_calls):
    embedding = galton.nets.MLP((DIM,), 4, width=8, depth=1, key=jax.random.key(0))
    method = TMNRE(marginals=[("theta[0]",), ("theta[1]",), ("theta[2]",)], hidden=8, embedding=embedding, carry_embedding=True,
                   training=Training(max_epochs=3, patience=3, batch_size=50), min_shrink=0.0)
    galton.infer(WIDE, X_OBS, key=jax.random.key(3), method=method, budget=600, rounds=2, progress=False)
    (first_in, first_out), (second_in, second_out) = [(kwargs.get("embedding_from"), net) for _, kwargs, net in fit_calls]
    assert first_in is None and second_in is first_out
    # the x scaling is frozen in training: round 2 kept round 1's, though its simulations differ
    np.testing.assert_array_equal(second_out.x_shift.tree, first_out.x_shift.tree)
    leaves = lambda m: jax.tree.leaves(eqx.filter(m, eqx.is_array))  # noqa: E731
    trained, untrained = leaves(first_out.embedding), leaves(embedding)
    assert any(not np.array_equal(a, b) for a, b in zip(trained, untrained))  # the first round did train it
    with pytest.raises(ValueError, match="carry_embedding must be True or False"):
        TMNRE(carry_embedding=1)


@pytest.mark.parametrize("prior, quantiles", [
    (dist.StudentT(3.0, 0.0, 100.0), [1e-4, 0.05, 0.5, 0.95, 0.999]),  # mostly beyond ±30: no exact F⁻¹ in NumPyro
    (dist.StudentT(3.0, 1e4, 1.0), [1e-3, 0.3, 0.7, 0.999]),  # far from the origin, narrow
    (dist.SoftLaplace(0.0, 2.0), [1e-4, 0.5, 0.9]),
])
def test_quantiles_without_an_exact_inverse_cdf_reach_any_scale(prior, quantiles):
    q = TruncatedPrior.full(galton.Prior({"a": prior})).quantiles
    u = jnp.asarray(quantiles)[:, None]
    theta = q.icdf(u)
    np.testing.assert_allclose(np.asarray(q.cdf(theta)), np.asarray(u), rtol=2e-3, atol=2e-6)


def test_an_uncut_box_reports_the_support_not_float32_ends():
    prior = galton.Prior({"c": dist.Cauchy(0.0, 1.0), "s": dist.SoftLaplace(0.0, 1.0), "g": dist.Gamma(2.0, 1.0), "u": dist.Uniform(-1.0, 3.0)})
    np.testing.assert_array_equal(TruncatedPrior.full(prior).bounds(), [[-np.inf, np.inf], [-np.inf, np.inf], [0.0, np.inf], [-1.0, 3.0]])


def test_a_discrete_prior_is_refused_for_truncation():
    with pytest.raises(TruncationError, match="block 'k'.*discrete"):
        TruncatedPrior.full(galton.Prior({"k": dist.Poisson(3.0)}))


@pytest.mark.parametrize("n", [0, -1, 2.5, True, "3", np.float64(4.0)])
def test_a_bad_number_of_draws_is_refused(n, amortized):
    marginal = amortized.marginal("theta[0]")
    for draw in (lambda: marginal.sample(n, key=jax.random.key(0)), lambda: amortized.marginal_samples(n, key=jax.random.key(0)),
                 lambda: amortized.to_arviz(n=n)):
        with pytest.raises(ValueError, match="n must be a positive integer number of draws"):
            draw()
    assert marginal.sample(np.int64(3), key=jax.random.key(0)).shape == (3, 1)


def test_batched_calls_check_their_observations(amortized):
    marginal = amortized.marginal(("theta[0]", "theta[1]"))
    for xs, message in [(jnp.full((1, DIM), jnp.nan), "NaN or inf"), (jnp.zeros((2, DIM + 1)), r"xs has shape \(2, 4\)"),
                        (jnp.zeros(DIM), r"xs has shape \(3,\)")]:
        with pytest.raises(ProblemError, match=message):
            marginal.sample_batch(4, key=jax.random.key(0), xs=xs)
        with pytest.raises(ProblemError, match=message):
            marginal.log_prob_batch(jnp.zeros((len(xs), 2, 2)), xs)
    with pytest.raises(ProblemError, match=r"expected \(m, n, 2\)"):
        marginal.log_prob_batch(jnp.zeros((2, 2)), jnp.zeros((1, DIM)))


@pytest.mark.parametrize("settings, message", [
    (dict(hidden=0), "hidden must be a positive integer"), (dict(on_invalid="keep"), "on_invalid must be one of"),
    (dict(training={"max_epochs": 2}), "training must be a galton.Training"), (dict(min_shrink=1.0), r"min_shrink must be a number in \[0, 1\)"),
    (dict(ensemble=0), "ensemble must be a positive integer"), (dict(ensemble=2.0), "ensemble must be a positive integer"),
    (dict(prune=0.1), "prune applies to an embedding that is a galton.nets.Projected with sparse=True, got NoneType"),
    (dict(prune=1.0), r"prune must be a number in \(0, 1\)"),
    (dict(prune=0.1, calibrate=True), "prune's second training holds out other rows"),
    (dict(spread=0.01), "spread applies to an embedding that is a galton.nets.Projected, got NoneType"),
    (dict(spread=-1.0, embedding=galton.nets.Projected((DIM,), galton.nets.Identity((DIM,)), key=jax.random.key(0))), r"spread must be"),
])
def test_bad_settings_fail_before_any_simulation(settings, message):
    with pytest.raises(ValueError, match=message):
        galton.infer(PROBLEM, X_OBS, key=jax.random.key(0), method="tmnre", budget=100, rounds=2, progress=False, **settings)


def test_rounds_drop_invalid_simulations_when_asked():
    def simulator(key, theta):  # NaN wherever θ₀ > 0.3: about a sixth of the prior
        x = theta + 0.3 * jax.random.normal(key, theta.shape)
        return jnp.where(theta[0] > 0.3, jnp.nan, x)

    problem = galton.Simulator(PROBLEM.prior.distributions["theta"], simulator, name="tmnre_nan")
    method = TMNRE(marginals=[("theta[0]",)], hidden=8, training=Training(max_epochs=2, patience=1, batch_size=50), on_invalid="drop")
    with pytest.warns(UserWarning, match="dropped"):
        post = galton.infer(problem, X_OBS, key=jax.random.key(0), method=method, budget=400, rounds=2, progress=False)
    assert 0 < post.rounds[0]["new"] < 200 and np.isfinite(np.asarray(post.marginal("theta[0]").sample(10, key=jax.random.key(1)))).all()


def test_a_consistent_pair_takes_its_one_d_heads_margins(amortized, tmp_path):
    names = ("theta[0]", "theta[1]")
    pair, plain = amortized.marginal(names, consistent=True), amortized.marginal(names)
    assert pair.margins == [0, 1] and plain.margins is None
    levels = [0.05, 0.25, 0.5, 0.75, 0.95]
    draws = {c: np.asarray(p.sample(100_000, key=jax.random.key(4))) for c, p in [("consistent", pair), ("plain", plain)]}
    for i, name in enumerate(names):
        single = np.quantile(np.asarray(amortized.marginal(name).sample(100_000, key=jax.random.key(5)))[:, 0], levels)
        gap = {c: np.abs(np.quantile(d[:, i], levels) - single).max() / STD for c, d in draws.items()}
        # a quantile can move within one of the grid's cells (about 0.02 σ here) and by sampling noise (0.005 σ)
        assert gap["consistent"] < 0.04 and gap["consistent"] < gap["plain"], (name, gap)
    # the pair's own dependence is kept: the same correlation as the head's, up to noise
    np.testing.assert_allclose(np.corrcoef(draws["consistent"].T)[0, 1], np.corrcoef(draws["plain"].T)[0, 1], atol=0.03)
    grid = np.linspace(-1.6, 1.6, 321)  # ±5 prior σ
    mesh = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    assert abs(np.exp(np.asarray(pair.log_prob(mesh))).sum() * (grid[1] - grid[0]) ** 2 - 1) < 0.01
    loaded = load(amortized.save(tmp_path / "tmnre"))
    np.testing.assert_array_equal(loaded.marginal(names, consistent=True).sample(50, key=jax.random.key(3)), pair.sample(50, key=jax.random.key(3)))


def test_a_marginal_saved_before_a_setting_existed_loads_with_its_default(amortized, tmp_path):
    plain = amortized.marginal(("theta[0]", "theta[1]"))
    saved = plain.save(tmp_path / "pair")
    header = json.loads((saved / "posterior.json").read_text())
    del header["margins"]  # as galton wrote a standalone marginal before consistent pairs
    (saved / "posterior.json").write_text(json.dumps(header))
    loaded = load(saved)
    assert loaded.margins is None
    np.testing.assert_array_equal(loaded.sample(50, key=jax.random.key(3)), plain.sample(50, key=jax.random.key(3)))
    del header["u_low"]  # a setting without a default is still named when it is missing
    (saved / "posterior.json").write_text(json.dumps(header))
    with pytest.raises(PosteriorFileError, match="lacks 'u_low'"):
        load(saved)


def test_a_consistent_pair_needs_both_one_d_heads(sims):  # noqa: F811
    method = replace(METHOD, marginals=[("theta[0]",), ("theta[0]", "theta[1]")], training=replace(FAST, max_epochs=2))
    post = galton.infer(PROBLEM, X_OBS, key=jax.random.key(1), method=method, simulations=sims, budget=len(sims), progress=False)
    with pytest.raises(ValueError, match=r"\[\('theta\[1\]',\)\] is not among the estimated marginals"):
        post.marginal(("theta[0]", "theta[1]"), consistent=True)
    assert post.marginal("theta[0]", consistent=True).margins is None  # a 1-D marginal is its own head's
