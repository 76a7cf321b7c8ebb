"""SALLY: the score at θ_ref regressed as summaries, then NRE on them (method="sally"); SALLINO:
those summaries projected on θ − θ_ref, then a 1-D density (method="sallino")."""

import dataclasses

import jax
import numpy as np
import paramax
import pytest

import galton
from galton.methods import NLE, NRE, SALLINO, SALLY
from galton.posteriors import load
from galton.train import Training

FAST = SALLY(summary_training=Training(learning_rate=1e-3, batch_size=128, patience=10, max_epochs=60),
             ratio=NRE(hidden=32, training=Training(learning_rate=1e-3, batch_size=128, patience=10, max_epochs=60),
                       sampler=(("num_chains", 4), ("warmup", 200))))


def test_sally_summaries_recover_the_galton_board_posterior(tmp_path):
    task = galton.tasks.get("galton_board")
    x = task.observation(1)
    post = galton.infer(task.problem, x, method=FAST, budget=3000, key=jax.random.key(0), progress=False)
    reference = np.asarray(task.reference_posterior(x, 2000, key=jax.random.key(1)))
    report = galton.diagnostics.compare(post, reference, key=jax.random.key(2), show=False)
    assert report["c2st"] < 0.6 and abs(report["parameters"]["theta"]["mean_shift"]) < 0.2, report  # measured 0.485, +0.01 σ
    assert 0.8 < report["parameters"]["theta"]["sigma_ratio"] < 1.25
    # the regressor is the ratio network's frozen embedding: the posterior takes raw x and saves whole
    theta = np.linspace(-0.5, 0.5, 5)[:, None]
    again = load(post.save(tmp_path / "sally"))
    np.testing.assert_allclose(again.log_prob(theta), post.log_prob(theta), rtol=1e-5, atol=1e-5)
    assert len(post.history) == 2 and post.history[0]["epochs"] >= 1  # the regressor's, then the ratio's


def test_sally_refuses_what_has_no_joint_score():
    simulator = galton.tasks.get("two_moons").problem
    with pytest.raises(galton.ProblemError, match="'sally' uses the joint score of a Program"):
        galton.infer(simulator, np.zeros(2), method="sally", budget=100, key=jax.random.key(0), progress=False)
    board = galton.tasks.get("galton_board").problem
    with pytest.raises(galton.ProblemError, match="theta_ref"):
        galton.infer(board, np.zeros(1), method=dataclasses.replace(FAST, theta_ref=(5.0,)), budget=100, key=jax.random.key(0), progress=False)
    with pytest.raises(ValueError, match="local_fraction"):
        SALLY(local_fraction=1.0)
    with pytest.raises(ValueError, match="leaves no simulations"):
        galton.infer(board, np.zeros(1), method=FAST, budget=3, key=jax.random.key(0), progress=False)


SALLINO_FAST = SALLINO(summary_training=FAST.summary_training,
                       density=NLE(flow="nsf", transforms=2, hidden=32, sampler=(("num_chains", 4), ("warmup", 200)),
                                   training=Training(learning_rate=1e-3, batch_size=128, patience=10, max_epochs=60)))


def test_sallino_projected_score_density_recovers_the_galton_board_posterior(tmp_path):
    task = galton.tasks.get("galton_board")
    x = task.observation(1)
    post = galton.infer(task.problem, x, method=SALLINO_FAST, budget=3000, key=jax.random.key(0), progress=False)
    reference = np.asarray(task.reference_posterior(x, 2000, key=jax.random.key(1)))
    report = galton.diagnostics.compare(post, reference, key=jax.random.key(2), show=False)
    assert report["c2st"] < 0.6 and abs(report["parameters"]["theta"]["mean_shift"]) < 0.25, report
    assert 0.8 < report["parameters"]["theta"]["sigma_ratio"] < 1.25
    # the ratio is 1 at θ_ref (one flow gives numerator and denominator) and the whole estimator saves and loads
    theta_ref = paramax.unwrap(post.network.theta_ref)
    assert float(post.network.log_ratio(theta_ref, np.asarray(x, np.float32))) == 0.0
    theta = np.linspace(-0.5, 0.5, 5)[:, None]
    again = load(post.save(tmp_path / "sallino"))
    np.testing.assert_allclose(again.log_prob(theta), post.log_prob(theta), rtol=1e-5, atol=1e-5)


def test_sallino_refuses_what_sally_refuses():
    board = galton.tasks.get("galton_board").problem
    with pytest.raises(galton.ProblemError, match="'sallino' uses the joint score of a Program"):
        galton.infer(galton.tasks.get("two_moons").problem, np.zeros(2), method="sallino", budget=100, key=jax.random.key(0), progress=False)
    with pytest.raises(galton.ProblemError, match="theta_ref"):
        galton.infer(board, np.zeros(1), method=dataclasses.replace(SALLINO_FAST, theta_ref=(5.0,)), budget=100, key=jax.random.key(0), progress=False)
    with pytest.raises(ValueError, match="local_fraction"):
        SALLINO(local_fraction=0.0)
