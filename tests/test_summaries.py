"""Learned summaries: every loss trains, VMIM's summaries are sufficient on a linear-Gaussian
problem, and a compressor serves ABC (summary=) and the neural methods (embedding=)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import paramax
import pytest

import galton
from galton import summaries
from galton.methods import NPE
from galton.posteriors import load
from galton.summaries import CompressorError
from galton.train import Training

# θ ~ N(0, I₂); x = [Aθ + 0.3 ε (4 values), 6 values of pure noise]: the sufficient statistic is Aᵀ x[:4]
A = jnp.array([[1.0, 0.5], [0.0, 1.0], [0.7, -0.3], [0.2, 0.9]])


def linear(key, theta):
    k1, k2 = jax.random.split(key)
    return jnp.concatenate([A @ theta + 0.3 * jax.random.normal(k1, (4,)), jax.random.normal(k2, (6,))])


PROBLEM = galton.Simulator(dist.Normal(jnp.zeros(2), 1.0), linear, name="linear10")
X_O = jnp.concatenate([A @ jnp.array([0.5, -0.5]), jnp.zeros(6)])
COV = np.linalg.inv(np.eye(2) + np.asarray(A.T @ A) / 0.09)
MEAN = COV @ np.asarray(A.T @ X_O[:4]) / 0.09
SD = np.sqrt(np.diag(COV))
QUICK = Training(learning_rate=1e-3, batch_size=128, patience=5, max_epochs=60)


@pytest.fixture(scope="module")
def sims():
    return galton.simulate(PROBLEM, 4000, key=jax.random.key(0), progress=False)


@pytest.fixture(scope="module")
def vmim(sims):
    return summaries.fit(sims, loss="vmim", key=jax.random.key(1), training=QUICK, problem="linear10", progress=False)


@pytest.mark.parametrize("loss", summaries.LOSSES)
def test_every_loss_lowers_its_loss(loss, sims):
    data = sims[:1000]
    if loss == "sally":  # a regression target in the score's place (the real one is tested in test_gold.py)
        data = galton.Simulations(data.theta, data.x, {"score": data.x[:, :2] - data.theta}, data.names)
    c = summaries.fit(data, loss=loss, key=jax.random.key(2), training=Training(max_epochs=6, patience=6, batch_size=100), progress=False)
    h = c.history
    assert h["epochs"] == 6 and min(h["train_loss"][1:]) < h["train_loss"][0], h["train_loss"]
    s = jax.vmap(c)(jnp.asarray(sims.x[:5]))
    assert s.shape == (5, 2) and bool(jnp.isfinite(s).all()) and c.loss == loss


def test_vmim_summaries_are_sufficient_on_a_linear_gaussian_problem(vmim):
    post = galton.infer(PROBLEM, X_O, key=jax.random.key(3), method="rejection_abc", budget=200_000, quantile=0.005, summary=vmim, progress=False)
    draws = np.asarray(post.sample(5000, key=jax.random.key(4)))
    assert np.all(np.abs(draws.mean(0) - MEAN) < 0.4 * SD) and np.all(np.abs(draws.std(0) / SD - 1) < 0.2), (draws.mean(0), MEAN, draws.std(0), SD)
    # the same ABC on the raw 10-D x is far wider: the summaries carry the information, not the tolerance
    raw = galton.infer(PROBLEM, X_O, key=jax.random.key(3), method="rejection_abc", budget=200_000, quantile=0.005, progress=False)
    assert np.all(np.asarray(raw.sample(5000, key=jax.random.key(4))).std(0) > 1.3 * SD)


def test_a_compressor_is_an_embedding_frozen_or_fine_tuned_and_saves(vmim, sims, tmp_path):
    tiny = Training(max_epochs=3, patience=3, batch_size=100)
    for compressor, frozen in ((vmim.frozen(), True), (vmim, False)):
        npe = NPE(flow="maf", transforms=1, hidden=8, embedding=compressor, training=tiny)
        model, _ = npe.fit(sims[:1000], PROBLEM.prior, key=jax.random.key(5), progress=False)
        after = paramax.unwrap(model.embedding)
        same = jnp.allclose(paramax.unwrap(after.head).weight, vmim.head.weight)
        assert bool(same) == frozen
        # the flow hands raw x to the compressor, which z-scores it itself
        np.testing.assert_array_equal(np.asarray(paramax.unwrap(model.c_shift)), 0.0)
        posterior = npe.posterior(model, PROBLEM.prior, [{}])
        loaded = load(posterior.save(tmp_path / f"npe-{frozen}"))
        key = jax.random.key(6)
        np.testing.assert_array_equal(loaded.sample(20, key=key, x=X_O), posterior.sample(20, key=key, x=X_O))
    again = summaries.load(vmim.save(tmp_path / "compressor"))
    np.testing.assert_array_equal(jax.vmap(again)(jnp.asarray(sims.x[:8])), jax.vmap(vmim)(jnp.asarray(sims.x[:8])))
    assert again.history == vmim.history and again.problem == "linear10" and "vmim" in repr(again)


def test_bad_input_is_named(vmim, sims):
    other = galton.Simulator(dist.Normal(jnp.zeros(2), 1.0), lambda key, t: t + jax.random.normal(key, (2,)), name="other")
    with pytest.raises(CompressorError, match=r"trained on x of shape \(10,\) \(problem 'linear10'\) and cannot summarise x of shape \(2,\)"):
        galton.infer(other, jnp.zeros(2), key=jax.random.key(0), method="rejection_abc", budget=200, summary=vmim, progress=False)
    renamed = galton.Simulator(PROBLEM.prior.distributions["theta"], linear, name="renamed")
    with pytest.warns(UserWarning, match="trained on problem 'linear10' but summarises 'renamed'"):
        galton.infer(renamed, X_O, key=jax.random.key(0), method="rejection_abc", budget=200, summary=vmim, progress=False)
    with pytest.raises(CompressorError, match="loss must be one of"):
        summaries.fit(sims, loss="l2", key=jax.random.key(0))
    with pytest.raises(CompressorError, match="gives 2 summaries"):
        summaries.fit(sims, loss="mse", summaries=3, key=jax.random.key(0))
    with pytest.raises(CompressorError, match=r"embedding takes x of shape \(4,\)"):
        summaries.fit(sims, embedding=galton.nets.MLP(4, 8, key=jax.random.key(0)), key=jax.random.key(0))


def test_ratio_methods_take_a_compressor_as_their_embedding(vmim, sims):
    from galton.methods import NRE, TMNRE

    tiny = Training(max_epochs=3, patience=3, batch_size=100)
    for method in (NRE(hidden=8, depth=1, embedding=vmim.frozen(), training=tiny), TMNRE(hidden=8, depth=1, embedding=vmim, training=tiny)):
        post = galton.infer(PROBLEM, X_O, key=jax.random.key(7), method=method, budget=1000, simulations=sims[:1000], progress=False)
        assert np.isfinite(post.history[0]["train_loss"]).all()
        net = post.network if hasattr(post, "network") else None
        if net is not None:  # raw x reaches the compressor, which z-scores it itself
            np.testing.assert_array_equal(np.asarray(paramax.unwrap(net.x_shift)), 0.0)
