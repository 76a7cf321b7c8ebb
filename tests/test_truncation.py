"""galton.truncation and galton.regions: the truncated prior and its exact sampling, the cut rules
(ε, tail mass, margin), the constrained region, and the priors truncation refuses."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from analytic import DIM, PROBLEM
from scipy import stats

import galton
from galton.methods import TMNRE
from galton.regions import Region
from galton.truncation import TruncatedPrior, TruncationError, shrink, tail_level


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
