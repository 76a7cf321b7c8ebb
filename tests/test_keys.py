"""Both kinds of JAX key at every public entry point that draws: a legacy ``PRNGKey`` gives what
its typed twin ``wrap_key_data(PRNGKey(s))`` gives; anything else is a TypeError naming the key."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import galton
from galton import calibration, sampling
from galton.keys import as_key
from galton.posteriors import GaussianPosterior, SamplesPosterior
from galton.prior import Prior
from galton.train import Training, train

PRIOR = Prior(dist.Normal(jnp.zeros(2), 1.0))
PROBLEM = galton.Simulator(PRIOR.distributions["theta"], lambda k, t: t + 0.5 * jax.random.normal(k, (2,)), name="keys")
GAUSSIAN = GaussianPosterior(np.zeros(2), np.eye(2), ["a", "b"])
LOG_DENSITY = lambda t: -0.5 * jnp.sum((t - 0.3) ** 2) / 0.2  # noqa: E731


def _train(key):
    model = jnp.zeros(2)
    return train(model, lambda m, b, k: jnp.mean((b[0] - m) ** 2), [np.ones((20, 2))], key=key,
                 settings=Training(max_epochs=2, batch_size=5), progress=False)[1]["train_loss"]


ENTRY_POINTS = {
    "Prior.sample": lambda key: PRIOR.sample(key, (5,)),
    "simulate": lambda key: galton.simulate(PROBLEM, 20, key=key, progress=False).x,
    "train": _train,
    "GaussianPosterior.sample": lambda key: GAUSSIAN.sample(10, key=key),
    "SamplesPosterior.sample": lambda key: SamplesPosterior(np.arange(20.0).reshape(10, 2), ["a", "b"]).sample(5, key=key),
    "Posterior.to_arviz": lambda key: GAUSSIAN.to_arviz(n=5, key=key).posterior["a"].values,
    "sampling.mcmc": lambda key: sampling.mcmc(LOG_DENSITY, PRIOR, 8, key=key, num_chains=2, warmup=10),
    "sampling.importance_resample": lambda key: sampling.importance_resample(LOG_DENSITY, PRIOR, 5, key=key, oversample=4)[0],
    "sampling.rejection": lambda key: sampling.rejection(LOG_DENSITY, PRIOR, 5, key=key, batch=100),
    "calibration.sbc": lambda key: calibration.sbc(GAUSSIAN, np.zeros((3, 2)), np.zeros((3, 1)), key=key, n_samples=10),
    "calibration.tarp": lambda key: calibration.tarp(GAUSSIAN, np.eye(2)[:2], np.zeros((2, 1)), key=key, n_samples=10)[1],
    "calibration.expected_coverage": lambda key: calibration.expected_coverage(
        GAUSSIAN, np.zeros((3, 2)), np.zeros((3, 1)), key=key, n_samples=10)[1],
}


def test_as_key_converts_legacy_keys_and_keeps_typed_ones():
    typed = jax.random.key(3)
    assert as_key(typed) is typed
    legacy = as_key(jax.random.PRNGKey(3))
    assert jnp.issubdtype(legacy.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(legacy), jax.random.PRNGKey(3))
    np.testing.assert_array_equal(jax.random.key_data(as_key(np.asarray(jax.random.PRNGKey(3)))), jax.random.PRNGKey(3))


@pytest.mark.parametrize("bad", [3, np.float32(1.0), jnp.zeros(2), jax.random.split(jax.random.key(0), 2)], ids=["int", "float", "floats", "batch"])
def test_as_key_rejects_what_is_not_one_key(bad):
    with pytest.raises(TypeError, match="seed must be a"):
        as_key(bad, "seed")


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_entry_point_accepts_both_key_kinds(entry):
    fn = ENTRY_POINTS[entry]
    legacy, typed = jax.random.PRNGKey(5), jax.random.wrap_key_data(jax.random.PRNGKey(5))
    np.testing.assert_array_equal(np.asarray(fn(legacy)), np.asarray(fn(typed)))
    with pytest.raises(TypeError, match="key must be a jax.random key"):
        fn(5)
