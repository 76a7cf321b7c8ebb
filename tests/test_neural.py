"""NPE end to end on a Gaussian-linear problem with an analytic posterior (tests/analytic.py).

θ ~ N(0, 0.1·I₃), x ~ N(θ, 0.1·I₃), so p(θ | x) = N(x/2, 0.05·I₃). Networks are small and
training short; the thresholds sit well below what the prior alone scores (checked too).
NLE and NRE, sampled by MCMC, are in test_neural_mcmc.py (a file each, so two test workers
share them out).
"""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

from analytic import DIM, FAST, PROBLEM, X_OBS, assert_round_trip, exact, sims  # noqa: F401  (fixtures)
import galton
from galton import ProblemError, Simulator, simulate
from galton.calibration import expected_coverage, sbc, sbc_uniformity, tarp
from galton.diagnostics import c2st
from galton.infer import infer
from galton.methods import NPE
from galton.train import Training, TrainingError


def test_prior_alone_fails_the_accuracy_threshold(exact):
    prior_draws = np.asarray(PROBLEM.prior.sample(jax.random.key(3), (1500,)))
    assert c2st(exact, prior_draws) > 0.68


@pytest.fixture(scope="module")
def npe_posterior(sims):
    method = NPE(transforms=3, hidden=32, training=FAST)
    return infer(PROBLEM, X_OBS, key=jax.random.key(1), method=method, simulations=sims, budget=len(sims), progress=False)


def test_npe_recovers_the_analytic_posterior(npe_posterior, exact):
    samples = npe_posterior.sample(1500, key=jax.random.key(2))
    assert c2st(exact, samples) < 0.58
    assert npe_posterior.history[0]["epochs"] <= FAST.max_epochs


def test_npe_is_calibrated(npe_posterior):
    test = simulate(PROBLEM, 300, key=jax.random.key(7), progress=False)
    ranks = sbc(npe_posterior, test.theta, test.x, key=jax.random.key(8), n_samples=100)
    assert ranks.shape == (300, DIM)
    assert sbc_uniformity(ranks, 100).min() > 0.001  # KS p-value per dimension
    levels, coverage = expected_coverage(npe_posterior, test.theta, test.x, key=jax.random.key(9), n_samples=300)
    assert np.abs(coverage - levels).max() < 0.12
    levels, ecp = tarp(npe_posterior, test.theta, test.x, key=jax.random.key(10), n_samples=300)
    assert np.abs(ecp - levels).max() < 0.12


def test_a_wrong_posterior_fails_calibration(npe_posterior):
    # the same flow at the wrong observations: ranks pile up at the ends
    test = simulate(PROBLEM, 300, key=jax.random.key(7), progress=False)
    ranks = sbc(npe_posterior, test.theta, np.asarray(test.x) * 0 + np.asarray(X_OBS), key=jax.random.key(8), n_samples=100)
    assert sbc_uniformity(ranks, 100).min() < 1e-6


def test_sequential_npe_uses_the_atomic_loss_and_stays_accurate(exact):
    method = NPE(transforms=3, hidden=32, training=Training(max_epochs=40, patience=10))
    posterior = infer(PROBLEM, X_OBS, key=jax.random.key(4), method=method, budget=3000, rounds=2, progress=False)
    assert len(posterior.history) == 2
    assert c2st(exact, posterior.sample(1500, key=jax.random.key(5))) < 0.6


def test_save_and_load_round_trip(npe_posterior, tmp_path):
    assert_round_trip(npe_posterior, tmp_path / "npe", 100)


def test_bad_inputs_get_clear_errors(sims):
    with pytest.raises(ProblemError, match=r"x_obs has shape \(4,\).*\(3,\)"):
        infer(PROBLEM, jnp.zeros(4), key=jax.random.key(0), budget=100, progress=False)
    with pytest.raises(ValueError, match="budget must be a positive"):
        infer(PROBLEM, X_OBS, key=jax.random.key(0), budget=0)
    nan_sims = type(sims)(sims.theta[:100], np.where(np.arange(100)[:, None] == 7, np.nan, sims.x[:100]))
    with pytest.raises(TrainingError, match="x has non-finite values in 1 rows \\(first row 7\\)"):
        NPE(training=FAST).fit(nan_sims, PROBLEM.prior, key=jax.random.key(0), progress=False)
    with pytest.raises(TrainingError, match="cannot train on 1 simulations"):
        NPE(training=FAST).fit(sims[:1], PROBLEM.prior, key=jax.random.key(0), progress=False)
    with pytest.raises(ValueError, match="method must be one of"):
        infer(PROBLEM, X_OBS, key=jax.random.key(0), method="abc")
    with pytest.raises(ProblemError, match="problem must be a galton Simulator or Program, got dict"):
        infer({"simulate": None}, X_OBS, key=jax.random.key(0))


def test_flow_posterior_keeps_to_the_prior_support():
    bounded = Simulator(dist.Uniform(-jnp.ones(2), jnp.ones(2)), lambda k, t: t + 0.5 * jax.random.normal(k, (2,)), name="box")
    posterior = infer(bounded, jnp.array([0.95, 0.0]), key=jax.random.key(0), budget=1000, progress=False,
                      method=NPE(transforms=2, hidden=16, training=Training(max_epochs=20)))
    samples = posterior.sample(2000, key=jax.random.key(1))
    assert np.abs(np.asarray(samples)).max() <= 1
    assert 0 < posterior.leakage(key=jax.random.key(2)) < 0.6
    assert posterior.log_prob(jnp.array([[1.5, 0.0]]))[0] == -jnp.inf


def test_training_holds_out_whole_groups_of_rows():
    from galton.train import _split

    rows = np.arange(200.0)[:, None]
    groups = np.repeat(np.arange(40), 5)
    train, val, _ = _split([rows], 0.2, 16, jax.random.key(0), groups)
    held, trained = set(groups[np.asarray(val[0][:, 0], int)]), set(groups[np.asarray(train[0][:, 0], int)])
    assert len(held) == 8 and not held & trained and len(val[0]) == 40 and len(train[0]) == 160
    with pytest.raises(TrainingError, match="holding out 1 of 1 groups of rows leaves 0 rows"):
        _split([rows], 0.2, 16, jax.random.key(0), np.zeros(200))
    with pytest.raises(TrainingError, match="groups must label each of the 200 rows"):
        _split([rows], 0.2, 16, jax.random.key(0), groups[:100])


def linear_regression():
    """1,000 rows of y = x·(1, 2, 3) + noise, a linear model and its squared error: a loss that a
    step far too large makes hop from epoch to epoch."""
    import equinox as eqx

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 3)).astype(np.float32)
    y = (x @ np.array([1.0, 2.0, 3.0]) + rng.normal(size=1000)).astype(np.float32)

    def loss(m, batch, key):
        return jnp.mean((jax.vmap(m)(batch[0]) - batch[1]) ** 2)

    return x, y, eqx.nn.Linear(3, "scalar", key=jax.random.key(0)), loss


def test_decay_settles_the_step_size_after_a_plateau():
    from galton.train import train

    x, y, model, loss = linear_regression()

    spread = {}
    for decay in (None, 0.1):  # a step size far too large: without decay the loss hops from epoch to epoch
        settings = Training(learning_rate=0.1, batch_size=16, patience=12, max_epochs=19, decay=decay, decay_patience=3)
        _, history = train(model, loss, (x, y), key=jax.random.key(1), settings=settings, progress=False)
        spread[decay] = np.ptp(history["validation_loss"][-6:])
    assert spread[0.1] < 0.01 and spread[None] > 0.05, spread
    expected, best = [], np.inf  # a decay after every 3 epochs since the last best one
    for i, value in enumerate(history["validation_loss"]):
        if value < best:
            best, best_epoch = value, i
        elif (i - best_epoch) % 3 == 0:
            expected.append(i)
    assert history["decays"] == expected and len(expected) >= 2, (history["decays"], expected)
    for bad, message in [(dict(decay=1.0), r"decay must be a number in \(0, 1\)"), (dict(decay="0.1"), "decay must be a number in"),
                         (dict(decay_patience=0), "decay_patience must be"), (dict(decay=0.5, decay_patience=20), "must be below patience")]:
        with pytest.raises(ValueError, match=message):
            Training(**bad)


@pytest.mark.parametrize("bad, message", [
    (dict(max_epochs=0), "max_epochs must be a positive integer, got 0"),
    (dict(max_epochs=2.5), "max_epochs must be a positive integer, got 2.5"),
    (dict(batch_size=0), "batch_size must be a positive integer, got 0"),
    (dict(patience=-1), "patience must be a positive integer, got -1"),
    (dict(learning_rate=float("nan")), "learning_rate must be a positive number, got nan"),
    (dict(learning_rate=0.0), "learning_rate must be a positive number, got 0.0"),
    (dict(clip_norm=-1.0), "clip_norm must be a positive number"),
    (dict(validation_fraction=1.0), r"validation_fraction must be a number in \(0, 1\), got 1.0"),
    (dict(validation_fraction=True), "validation_fraction must be a number in"),
])
def test_training_settings_are_checked_when_made(bad, message):
    with pytest.raises(ValueError, match=message):
        Training(**bad)


def test_training_settings_take_numpy_scalars():
    settings = Training(max_epochs=np.int64(3), batch_size=np.int32(16), learning_rate=np.float32(1e-3), validation_fraction=np.float64(0.2))
    assert settings.max_epochs == 3 and settings == Training(max_epochs=3, batch_size=16, learning_rate=np.float32(1e-3), validation_fraction=0.2)


TINY = NPE(transforms=1, hidden=8, training=Training(max_epochs=1, batch_size=50))


def test_given_simulations_are_checked_before_training(sims):
    key = jax.random.key(0)
    two = Simulator(dist.Normal(jnp.zeros(2), 1.0), lambda k, t: t + jax.random.normal(k, (2,)), name="two")
    with pytest.raises(ProblemError, match=r"simulations.theta must have shape \(n, 2\).*got \(3000, 3\)"):
        infer(two, jnp.zeros(2), key=key, method=TINY, simulations=sims, progress=False)
    wide = Simulator(dist.Normal(jnp.zeros(3), 1.0), lambda k, t: jnp.tile(t, 2), name="wide")
    with pytest.raises(ProblemError, match=r"simulations.x has shape \(3000, 3\), but wide simulates x of shape \(6,\): expected \(n, 6\)"):
        infer(wide, jnp.zeros(6), key=key, method=TINY, simulations=sims, progress=False)
    box = Simulator(dist.Uniform(-jnp.ones(3), jnp.ones(3)), lambda k, t: t, name="box")
    outside = int((np.abs(sims.theta) >= 1).any(1).sum())
    with pytest.raises(ProblemError, match=f"simulations.theta has {outside} rows outside the prior's support"):
        infer(box, X_OBS, key=key, method=TINY, simulations=sims, progress=False)
    with pytest.raises(ProblemError, match="simulations must be galton Simulations .* got list"):
        infer(PROBLEM, X_OBS, key=key, method=TINY, simulations=[sims.theta, sims.x], progress=False)
    pair = infer(PROBLEM, X_OBS, key=key, method=TINY, simulations=(sims.theta[:200], sims.x[:200]), budget=200, progress=False)
    assert pair.history[0]["epochs"] == 1


def test_infer_drops_invalid_simulations_in_every_round_when_asked():
    def blows_up(key, theta):  # x is NaN for a fifth of the prior
        return jnp.where(theta[0] > 0.6, jnp.nan, theta + 0.1 * jax.random.normal(key, (2,)))

    problem = Simulator(dist.Uniform(-jnp.ones(2), jnp.ones(2)), blows_up, name="blows_up")
    settings = dict(key=jax.random.key(0), budget=400, rounds=2, progress=False, transforms=1, hidden=8, training=Training(max_epochs=1, batch_size=50))
    with pytest.raises(galton.SimulationError, match="pass on_invalid='drop'"):
        infer(problem, jnp.zeros(2), **settings)
    with pytest.warns(UserWarning, match="dropped") as caught:
        posterior = infer(problem, jnp.zeros(2), on_invalid="drop", **settings)
    assert len([w for w in caught if "dropped" in str(w.message)]) == 2 and len(posterior.history) == 2
    with pytest.raises(ValueError, match="kept NaN or inf simulations cannot be trained on"):
        NPE(on_invalid="keep")


def test_held_out_rows_are_the_rows_training_validates_on():
    import equinox as eqx

    from galton.train import held_out_rows, train

    class Constant(eqx.Module):
        p: jax.Array

    values = np.random.default_rng(0).normal(size=(200, 1)).astype(np.float32)
    settings = Training(max_epochs=1, batch_size=64)
    # the loss is the batch's mean whatever the weights: the validation loss is the held-out rows' mean
    _, history = train(Constant(jnp.zeros(())), lambda m, batch, key: m.p * 0 + batch[0].mean(), (values,), key=jax.random.key(3),
                       settings=settings, progress=False)
    held = held_out_rows(200, key=jax.random.key(3), settings=settings)
    assert len(held) == 20 and len(set(held.tolist())) == 20
    np.testing.assert_allclose(history["validation_loss"][0], values[held].mean(), rtol=1e-5)
    assert abs(values[held].mean() - values[np.setdiff1d(np.arange(200), held)].mean()) > 1e-3


def _weighted_mse(m, batch, key, *, weights):
    return jnp.mean(weights * (jax.vmap(m)(batch[0]) - batch[1]) ** 2)


def test_a_loss_s_arrays_are_inputs_of_one_compiled_epoch():
    import equinox as eqx

    from galton.methods.base import bind
    from galton.train import _epoch_function, train

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -1.0, 2.0]) + 0.1 * rng.normal(size=300)).astype(np.float32)
    model = eqx.nn.Linear(3, "scalar", key=jax.random.key(0))
    settings = Training(max_epochs=2, batch_size=32, patience=2)

    def fit(weight):  # weights as a score-trained method computes them from its data
        loss = bind(_weighted_mse, weights=np.asarray(weight, np.float32))
        return train(model, loss, (x, y), key=jax.random.key(1), settings=settings, progress=False)[1]["validation_loss"]

    _epoch_function.cache_clear()
    one, ten, one_again = fit(1.0), fit(10.0), fit(1.0)
    assert _epoch_function.cache_info().misses == 1  # one program for all three
    assert one_again == one and ten != one
    _epoch_function.cache_clear()  # the same weights compiled first give the same epochs: nothing stale was reused
    assert fit(10.0) == ten
    np.testing.assert_allclose(ten[0], 10 * one[0], rtol=1e-3)  # Adam takes the same steps: the loss scaled, to rounding


def test_finish_fine_tunes_from_the_best_weights_at_a_smaller_step():
    from galton.train import train

    x, y, model, loss = linear_regression()

    settings = Training(learning_rate=0.1, batch_size=16, patience=5, max_epochs=200)  # a step far too large: the loss hops
    plain, hopping = train(model, loss, (x, y), key=jax.random.key(1), settings=settings, progress=False)
    finished, history = train(model, loss, (x, y), key=jax.random.key(1), settings=replace(settings, finish=0.01), progress=False)
    start = history["finish_epoch"]
    # the same first phase, then at least `patience` epochs from the best weights at a hundredth of the step
    assert start == hopping["epochs"] and history["validation_loss"][:start] == hopping["validation_loss"]
    assert history["epochs"] >= start + 5 and history["best_epoch"] >= start
    assert min(history["validation_loss"]) < min(hopping["validation_loss"]) - 1e-3, (min(history["validation_loss"]), min(hopping["validation_loss"]))
    assert np.ptp(history["validation_loss"][start + 1:]) < 0.3 * np.ptp(hopping["validation_loss"][-5:])  # settled, not hopping
    with pytest.raises(ValueError, match=r"finish must be a number in \(0, 1\)"):
        Training(finish=2.0)
    # what a finish trains with (and TMNRE's prune): a constant smaller step, nothing finishing after it
    tuned = Training(learning_rate=0.1, patience=5, decay=0.5, decay_patience=2, finish=0.1).fine_tune(0.01)
    assert (tuned.learning_rate, tuned.decay, tuned.finish, tuned.patience) == (pytest.approx(1e-3), None, None, 5)
