"""method="nuts": the exact baseline for Programs, checked against the funnel's exact grid posterior."""

import jax
import numpy as np
import pytest

import galton
from galton.posteriors import load


def _grid_moments(task, x):
    from galton.tasks import funnel

    grid, density = funnel.grid_posterior(x)
    grid, density = np.asarray(grid), np.asarray(density)
    w = density / density.sum()
    mean = float(w @ grid)
    return mean, float(np.sqrt(w @ (grid - mean) ** 2))


@pytest.mark.parametrize("dim, reparam", [(10, "noncentered"), (1000, None)])
def test_nuts_matches_the_exact_funnel_posterior(dim, reparam):
    task = galton.tasks.get("funnel", dim=dim)
    x = task.observation(1)
    post = galton.infer(task.problem, x, method="nuts", reparam=reparam, key=jax.random.key(0), progress=False)
    mean, sd = _grid_moments(task, x)
    draws = np.asarray(post.theta[:, 0])
    assert abs(draws.mean() - mean) < 0.1 * sd, (draws.mean(), mean, sd)
    assert abs(draws.std() / sd - 1) < 0.05, (draws.std(), sd)
    assert post.info["r_hat"]["theta"] < 1.01 and post.info["divergences"] == 0
    report = galton.diagnostics.compare(post, task.reference_posterior(x, 2000, key=jax.random.key(1)), show=False)
    assert report["c2st"] < 0.55 and abs(report["parameters"]["theta"]["mean_shift"]) < 0.1


def test_nuts_warns_with_the_figures_and_keeps_latents(tmp_path):
    task = galton.tasks.get("funnel", dim=10)
    with pytest.warns(UserWarning, match=r"nuts: .*ESS \d+ < 400"):
        post = galton.infer(task.problem, task.observation(1), method="nuts", num_samples=50, num_warmup=50, keep_latents=True,
                            key=jax.random.key(2), progress=False)
    assert post.latents["z"].shape == (200, 10) and post.theta.shape == (200, 1)
    loaded = load(post.save(tmp_path / "nuts"))
    assert loaded.info["r_hat"] == post.info["r_hat"]


def test_nuts_bad_inputs_name_the_problem():
    board = galton.tasks.get("galton_board")
    with pytest.raises(galton.ProblemError, match=r"latent site\(s\) \['z'\] .* are discrete"):
        galton.infer(board.problem, board.observation(1), method="nuts", key=jax.random.key(0), progress=False)
    with pytest.raises(galton.ProblemError, match="black-box Simulator"):
        galton.infer(galton.tasks.get("two_moons").problem, np.zeros(2), method="nuts", key=jax.random.key(0))
    with pytest.raises(ValueError, match="reparam must be one of"):
        galton.NUTS(reparam="centred")
    with pytest.raises(ValueError, match="2 parameters and the reference 1"):
        galton.diagnostics.compare(np.zeros((10, 2)), np.zeros((10, 1)), show=False)
