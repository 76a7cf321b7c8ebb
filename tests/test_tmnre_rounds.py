"""TMNRE's rounds: truncation that keeps the truth, resume from the store, correlated truncation,
pooled rounds, the projection's spread and pruning, and the settings that change a round's training."""

from dataclasses import replace

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from analytic import DIM, PROBLEM, X_OBS
from analytic import TMNRE_FAST as FAST

import galton
from galton.methods import TMNRE
from galton.posteriors import load
from galton.problem import ProblemError
from galton.train import Training



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


def test_the_truncation_plot_draws_each_round_s_box(truncated):
    from galton import plot

    fig = plot.truncation(truncated[2])
    assert len(fig.axes) == DIM and len(fig.axes[0].patches) == 3


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


def test_rounds_drop_invalid_simulations_when_asked():
    def simulator(key, theta):  # NaN wherever θ₀ > 0.3: about a sixth of the prior
        x = theta + 0.3 * jax.random.normal(key, theta.shape)
        return jnp.where(theta[0] > 0.3, jnp.nan, x)

    problem = galton.Simulator(PROBLEM.prior.distributions["theta"], simulator, name="tmnre_nan")
    method = TMNRE(marginals=[("theta[0]",)], hidden=8, training=Training(max_epochs=2, patience=1, batch_size=50), on_invalid="drop")
    with pytest.warns(UserWarning, match="dropped"):
        post = galton.infer(problem, X_OBS, key=jax.random.key(0), method=method, budget=400, rounds=2, progress=False)
    assert 0 < post.rounds[0]["new"] < 200 and np.isfinite(np.asarray(post.marginal("theta[0]").sample(10, key=jax.random.key(1)))).all()
