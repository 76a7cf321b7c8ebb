"""method="ic": inference compilation's proposal and importance sampler, checked against exact posteriors
(the funnel's grid over θ, the mixture's grid over (m, δ) with its assignments summed out)."""

import dataclasses
import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import galton
from galton.methods import IC
from galton.methods.ic import CategoricalHead
from galton.tasks import mixture_assignments
from galton.train import Training


def test_inference_compilation_importance_samples_the_funnel():
    task = galton.tasks.get("funnel", dim=10)
    x = task.observation(1)
    method = IC(draws=4000, transforms=3, hidden=64, training=Training(learning_rate=3e-3, batch_size=256, max_epochs=40, patience=10))
    post = galton.infer(task.problem, x, method=method, budget=5000, key=jax.random.key(0), progress=False)
    assert post.info["ess_fraction"] > 0.05 and post.info["pareto_k"] < 0.7, post.info
    report = galton.diagnostics.compare(post, task.reference_posterior(x, 2000, key=jax.random.key(1)), show=False)
    assert report["c2st"] < 0.58 and abs(report["parameters"]["theta"]["mean_shift"]) < 0.2, report
    sims = galton.simulate(task.problem, 2000, key=jax.random.key(2), keep_latents=True, progress=False)
    proposal, _ = method.fit(task.problem, sims, key=jax.random.key(3), progress=False)
    mh = dataclasses.replace(method, sampler="mh", draws=2000).sample(task.problem, proposal, x, key=jax.random.key(4))
    assert 0 < mh.info["acceptance_rate"] <= 1 and mh.theta.shape == (2000, 1)


def test_inference_compilation_samples_the_discrete_assignments_of_a_mixture():
    task = galton.tasks.get("mixture_assignments")
    x = task.observation(1)
    method = IC(draws=4000, transforms=2, hidden=32, discrete="mean_field",
                training=Training(learning_rate=1e-3, batch_size=256, max_epochs=30, patience=5))
    post = galton.infer(task.problem, x, method=method, budget=5000, key=jax.random.key(0), progress=False)
    assert post.info["ess_fraction"] > 0.15 and post.info["pareto_k"] < 0.7, post.info  # 34 %, 0.35 when written
    m, delta, p = (np.asarray(a, np.float64) for a in mixture_assignments.grid_posterior(x))
    mean = np.array([p.sum(1) @ m, p.sum(0) @ delta])
    sd = np.sqrt(np.array([p.sum(1) @ m**2, p.sum(0) @ delta**2]) - mean**2)
    w = np.exp(post.log_weights - post.log_weights.max())
    estimate = (w[:, None] * post.theta).sum(0) / w.sum()
    assert np.all(np.abs(estimate - mean) < 0.1 * sd), (estimate, mean, sd)
    report = galton.diagnostics.compare(post, task.reference_posterior(x, 2000, key=jax.random.key(1)), show=False)
    assert report["c2st"] < 0.6, report


def test_inference_compilation_follows_the_galton_board_paths_to_their_slot():
    # x is the slot the path z reaches (a Delta): a path of the wrong sum has weight 0, and the
    # autoregressive head learns to steer each deflection towards the observed slot
    task = galton.tasks.get("galton_board", n_rows=10)
    x = task.observation(1)
    method = IC(draws=4000, transforms=2, hidden=32, training=Training(learning_rate=3e-3, batch_size=256, max_epochs=20, patience=5))
    post = galton.infer(task.problem, x, method=method, budget=4000, key=jax.random.key(0), progress=False)
    assert post.info["ess_fraction"] > 0.3 and post.info["pareto_k"] < 0.7, post.info  # 69 %, 0.49 when written
    report = galton.diagnostics.compare(post, task.reference_posterior(x, 2000, key=jax.random.key(1)), show=False)
    assert report["c2st"] < 0.6 and abs(report["parameters"]["theta"]["mean_shift"]) < 0.2, report


@pytest.mark.parametrize("autoregressive", [False, True])
def test_categorical_head_is_a_normalised_distribution_and_samples_its_own_log_prob(autoregressive):
    # three elements: two binary, one with three values 1..3 (a Categorical shifted by one)
    low, categories = np.array([0, 0, 1]), np.array([2, 2, 3])
    head = CategoricalHead(low, categories, 4, hidden=8, autoregressive=autoregressive, key=jax.random.key(0))
    if autoregressive:  # its output layer starts at zero: give it weights, so that the masks matter
        head = eqx.tree_at(lambda h: h.made_out, head, jax.random.normal(jax.random.key(1), head.made_out.shape))
    context = jax.random.normal(jax.random.key(2), (4,))
    every = jnp.asarray(list(itertools.product([0, 1], [0, 1], [1, 2, 3])), jnp.float32)  # (12, 3): all values
    log_q = jax.vmap(head.log_prob, (0, None))(every, context)
    np.testing.assert_allclose(float(jax.nn.logsumexp(log_q)), 0.0, atol=1e-5)
    z, log_q_drawn = jax.vmap(head.sample, (0, None))(jax.random.split(jax.random.key(3), 2000), context)
    np.testing.assert_allclose(log_q_drawn, jax.vmap(head.log_prob, (0, None))(z, context), atol=1e-5)
    index = np.asarray(z - low) @ np.array([6, 3, 1])  # the row of `every` each draw is
    frequency = np.bincount(index.astype(int), minlength=12) / 2000
    np.testing.assert_allclose(frequency, np.exp(log_q), atol=0.04)


def _poisson_counts():
    rate = numpyro.sample("rate", dist.LogNormal(0.0, 1.0))
    count = numpyro.sample("count", dist.Poisson(rate * jnp.ones(3)))
    numpyro.sample("x", dist.Normal(count, 1.0))


def test_inference_compilation_bad_inputs_name_the_problem():
    poisson = galton.Program(_poisson_counts, params=["rate"], observed=["x"], name="poisson_counts")
    with pytest.raises(galton.ProblemError, match=r"\['count \(Poisson\)'\] .* unbounded support"):
        galton.infer(poisson, np.zeros(3), method="ic", budget=100, key=jax.random.key(0), progress=False)
    with pytest.raises(ValueError, match="discrete must be one of"):
        IC(discrete="made")
    with pytest.raises(ValueError, match="draws must be an integer of at least 2, got 1"):
        IC(draws=1)
    task = galton.tasks.get("funnel", dim=3)
    sims = galton.simulate(task.problem, 50, key=jax.random.key(0), progress=False)
    with pytest.raises(galton.ProblemError, match="keep_latents=True"):
        IC().fit(task.problem, sims, key=jax.random.key(1))
    with pytest.raises(galton.ProblemError, match="x_obs has 4 values but funnel_3 observes 3"):
        IC().sample(task.problem, None, np.zeros(4), key=jax.random.key(2))  # checked before the proposal is used
