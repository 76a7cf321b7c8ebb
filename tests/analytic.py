"""The Gaussian-linear problem with an analytic posterior that the neural tests share.

θ ~ N(0, 0.1·I₃), x ~ N(θ, 0.1·I₃), so p(θ | x) = N(x/2, 0.05·I₃).
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

from galton import Simulator, simulate
from galton.posteriors import load
from galton.train import Training

DIM = 3
X_OBS = jnp.array([0.3, -0.2, 0.1])
FAST = Training(max_epochs=60, patience=10)
TMNRE_FAST = Training(learning_rate=3e-3, batch_size=64, max_epochs=40, patience=8)  # the TMNRE tests' heads
SAMPLER = (("method", "nuts"), ("num_chains", 8), ("warmup", 150))

def gaussian_linear(key, theta):
    return theta + jnp.sqrt(0.1) * jax.random.normal(key, theta.shape)

PROBLEM = Simulator(dist.Normal(jnp.zeros(DIM), jnp.sqrt(0.1)), gaussian_linear, name="gaussian_linear_3")



# fixtures for the test modules that import them (module scope: built once per importing file)
@pytest.fixture(scope="module")
def sims():
    return simulate(PROBLEM, 3000, key=jax.random.key(0), progress=False)


@pytest.fixture(scope="module")
def exact():
    """1,500 draws of the exact posterior at X_OBS."""
    return np.asarray(X_OBS / 2 + jnp.sqrt(0.05) * jax.random.normal(jax.random.key(99), (1500, DIM)))


def assert_round_trip(posterior, path, n):
    """save -> load gives the same samples for the same key, the same densities and record."""
    posterior.save(path)
    loaded = load(path)
    key = jax.random.key(11)
    np.testing.assert_array_equal(loaded.sample(n, key=key), posterior.sample(n, key=key))
    theta = np.zeros((4, DIM))
    np.testing.assert_array_equal(loaded.log_prob(theta), posterior.log_prob(theta))
    assert loaded.history == posterior.history
    return loaded
