"""TMNRE: marginal heads against the analytic Gaussian posterior, their losses, calibration, the
posterior objects, bad input. The problem is tests/analytic.py's: θ ~ N(0, 0.1·I₃), x ~ N(θ, 0.1·I₃), so every
marginal of p(θ | x) is N(x_i/2, 0.05), and the quantile-space truncation of a Gaussian prior is
exercised in tests/test_tmnre_rounds.py, the truncated prior and regions in tests/test_truncation.py."""

import json
from dataclasses import replace

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from analytic import DIM, PROBLEM, X_OBS, sims  # noqa: F401  (sims is a fixture)
from analytic import TMNRE_FAST as FAST
from scipy import stats

import galton
from galton.calibration import marginal_coverage
from galton.methods import TMNRE
from galton.methods import nre
from galton.methods.tmnre import loss as tmnre_loss
from galton.methods.tmnre import loss_c as tmnre_loss_c
from galton.posteriors import PosteriorFileError, load
from galton.problem import ProblemError

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


def test_the_corner_plot_draws_from_the_estimators(amortized):
    from galton import plot

    fig = plot.marginals(amortized, reference=np.zeros((50, DIM)) + 0.01 * np.arange(50)[:, None], truth=np.asarray(X_OBS) / 2)
    assert len(fig.axes) == DIM + 1  # three 1-D panels and the one estimated pair
    fig = plot.marginals(amortized, consistent=True)
    assert len(fig.axes) == DIM + 1 and len(fig.axes[1].collections) > 0  # the pair (row 2, column 1): its HPD contours


def test_unknown_pool_is_refused():
    with pytest.raises(ValueError, match="pool must be one of"):
        TMNRE(pool="outside")


def test_unknown_truncation_is_refused():
    with pytest.raises(ValueError, match="truncation must be one of"):
        TMNRE(truncation="ellipse")


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
