"""SALLY: the score at θ_ref regressed as summaries, then NRE on them (method="sally")."""

import dataclasses

import jax
import numpy as np
import pytest

import galton
from galton.methods import NRE, SALLY
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
