"""MCMC starting points: spread over the modes, and finite where the density is."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

from galton.prior import Prior
from galton.sampling import SamplingError, initial_points

PRIOR = Prior(dist.Uniform(-jnp.ones(2), jnp.ones(2)))


def two_modes(theta):
    # two equal, sharp modes at (±0.5, 0)
    d = lambda c: jnp.sum((theta - jnp.array([c, 0.0])) ** 2) / (2 * 0.02**2)  # noqa: E731
    return jnp.logaddexp(-d(0.5), -d(-0.5))


def test_chains_start_in_every_mode_in_proportion():
    starts = np.asarray(initial_points(two_modes, PRIOR, 200, key=jax.random.key(0), candidates=200))
    assert starts.shape == (200, 2)
    right = np.mean(starts[:, 0] > 0)
    # binomial(200, 0.5): sd 0.035; a shared candidate set would put every chain in one mode
    assert 0.35 < right < 0.65
    assert np.all(np.abs(np.abs(starts[:, 0]) - 0.5) < 0.15)


def test_chains_without_a_finite_candidate_take_one_from_the_pool():
    # finite on a small disc only: most chains' own 20 draws all miss it
    def disc(theta):
        return jnp.where(jnp.sum((theta - 0.6) ** 2) < 0.1**2, 0.0, -jnp.inf)

    starts = np.asarray(initial_points(disc, PRIOR, 50, key=jax.random.key(1), candidates=20))
    assert np.all(np.sum((starts - 0.6) ** 2, axis=1) < 0.1**2)
    again = np.asarray(initial_points(disc, PRIOR, 50, key=jax.random.key(1), candidates=20))
    np.testing.assert_array_equal(starts, again)


def test_no_finite_density_anywhere_is_an_error():
    with pytest.raises(SamplingError, match="not finite"):
        initial_points(lambda t: -jnp.inf * jnp.sum(t**2 + 1), PRIOR, 4, key=jax.random.key(2), candidates=10)
