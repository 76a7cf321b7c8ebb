"""Mining gold: augmented simulation, the joint-score/ratio estimators, Fisher information.

The estimators keep the harness contract of test_methods.py on a tiny Program; accuracy is
checked against exact likelihood ratios (the Galton board's dynamic programme) and the exact
Fisher information of the linear-Gaussian state-space model.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import galton
from galton import ProblemError, fisher, nets, summaries
from galton.methods import gold
from galton.methods.gold.ratios import gold_loss, mixture_loss
from galton.posteriors import load
from galton.tasks import galton_board as gb
from galton.tasks import state_space as ss
from galton.train import Training

TINY = Training(max_epochs=8, patience=8, batch_size=50)
SAMPLER = (("num_chains", 4), ("warmup", 30))
N_DRAWS = 60


def latent_gaussian(noise: float = 0.5):
    """θ ~ N(0, 1)², z ~ N(θ, 1), x ~ N(z, noise): p(x|θ) = N(θ, 1 + noise²) is known."""
    theta = numpyro.sample("theta", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
    z = numpyro.sample("z", dist.Normal(theta, 1.0).to_event(1))
    numpyro.sample("x", dist.Normal(z, noise).to_event(1))


PROGRAM = galton.Program(latent_gaussian, params=["theta"], observed=["x"], name="latent_gaussian")
X_OBS = jnp.array([0.4, -0.3])
SIGMA_X = float(np.sqrt(1 + 0.5**2))

CASES = {
    "carl": gold.CARL(hidden=8, depth=1, training=TINY, sampler=SAMPLER),
    "rolr": gold.ROLR(hidden=8, depth=1, training=TINY, sampler=SAMPLER),
    "alice": gold.ALICE(hidden=8, depth=1, training=TINY, sampler=SAMPLER),
    "cascal": gold.CASCAL(hidden=8, depth=1, training=TINY, sampler=SAMPLER),
    "rascal": gold.RASCAL(hidden=8, depth=1, training=TINY, sampler=SAMPLER, theta_ref=(0.0, 0.0)),
    "alices": gold.ALICES(hidden=8, depth=1, training=TINY, sampler=SAMPLER),
    "alices_ensemble": gold.ALICES(hidden=8, depth=1, training=TINY, sampler=SAMPLER, ensemble=2),
    "alices_partners": gold.ALICES(hidden=8, depth=1, training=TINY, sampler=SAMPLER, partners=4, mixture_size=64),
    "scandal": gold.SCANDAL(transforms=1, hidden=8, bins=4, training=TINY, sampler=SAMPLER),
    "score_npe": gold.ScoreNPE(transforms=1, hidden=8, bins=4, training=TINY),
}


# ------------------------------------------------------------------------------ augmented simulation


def test_joint_score_is_the_gradient_of_the_exact_log_likelihood_without_latents():
    def no_latents():
        theta = numpyro.sample("theta", dist.Uniform(jnp.array([-1.0, 0.5]), jnp.array([1.0, 2.0])).to_event(1))
        numpyro.sample("x", dist.Normal(theta[0], theta[1]).expand([3]).to_event(1))

    program = galton.Program(no_latents, params=["theta"], observed=["x"])
    sims = galton.simulate(program, 50, key=jax.random.key(0), augment=("score", "ratio"), theta_ref=[0.0, 1.0], progress=False)
    exact = lambda t, x: dist.Normal(t[0], t[1]).log_prob(x).sum()  # noqa: E731
    np.testing.assert_allclose(sims.extras["score"], jax.vmap(jax.grad(exact))(sims.theta, sims.x), rtol=1e-4, atol=1e-4)
    ref = jax.vmap(exact, (None, 0))(jnp.array([0.0, 1.0]), sims.x)
    np.testing.assert_allclose(sims.extras["log_ratio"], jax.vmap(exact)(sims.theta, sims.x) - ref, rtol=1e-4, atol=1e-4)


def test_joint_score_averages_to_the_true_score_on_the_galton_board():
    program = galton.tasks.get("galton_board").problem
    sims = galton.simulate(program, key=jax.random.key(1), theta=np.full((20_000, 1), 0.5), augment="score", progress=False)
    slots = sims.x[:, 0].astype(int)
    exact = jax.vmap(jax.grad(lambda t, k: jnp.log(gb.slot_probabilities(t)[k])), (None, 0))(jnp.float32(0.5), jnp.arange(21))
    for k in range(6, 13):  # the well-populated slots: mean within 4 standard errors
        t = sims.extras["score"][slots == k, 0]
        assert abs(t.mean() - float(exact[k])) < 4 * t.std() / np.sqrt(len(t)) + 0.02, k


def test_augmented_store_resumes_to_the_same_simulations(tmp_path):
    run = lambda: galton.simulate(PROGRAM, 300, key=jax.random.key(2), augment="score", chunk_size=100, store=tmp_path / "s.zarr", progress=False)  # noqa: E731
    first = run()
    import zarr

    zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")["done"][1] = 0  # as if killed before chunk 1 finished
    again = run()
    np.testing.assert_array_equal(first.extras["score"], again.extras["score"])
    np.testing.assert_array_equal(first.x, again.x)


# ------------------------------------------------------------------------------------------- losses


def _exact_f(theta, x, sigma=SIGMA_X):
    return dist.Normal(theta, sigma).log_prob(x).sum(-1)  # log p(x|θ) of `narrow` (and of each coordinate of PROGRAM)


class _Fixed:
    """A stand-in network whose f(θ, x) is a given function."""

    def __init__(self, fn):
        self.fn = fn

    def log_ratio(self, theta, x):
        return self.fn(theta, x)


def narrow():
    """As `latent_gaussian` in 1-D with θ ~ U(−½, ½): ratios stay moderate, so ROLR's squared
    ratios have a finite variance and a sample of the loss is a fair estimate of its mean."""
    theta = numpyro.sample("theta", dist.Uniform(-0.5, 0.5))
    z = numpyro.sample("z", dist.Normal(theta, 1.0))
    numpyro.sample("x", dist.Normal(z, 0.5))


@pytest.fixture(scope="module")
def pairs():
    program = galton.Program(narrow, params=["theta"], observed=["x"], name="narrow")
    return gold.pair_simulations(program, 100_000, key=jax.random.key(3), progress=False)


@pytest.mark.parametrize("base, alpha", [("carl", 0.0), ("rolr", 0.0), ("alice", 0.0), ("carl", 1.0), ("rolr", 1.0), ("alice", 1.0)])
def test_each_loss_is_minimised_by_the_exact_ratio(pairs, base, alpha):
    e = pairs.extras
    batch = tuple(jnp.asarray(a) for a in (pairs.theta, e["theta1"], pairs.x, e["y"], e["log_ratio"], e["score0"], e["score1"]))
    loss = lambda fn: float(gold_loss(_Fixed(fn), batch, None, base=base, alpha=alpha))  # noqa: E731
    best = loss(_exact_f)
    wrong = {
        "the joint's width": functools.partial(_exact_f, sigma=0.5),  # what the labels alone would suggest
        "too wide": functools.partial(_exact_f, sigma=1.5 * SIGMA_X),
        "scaled": lambda t, x: 0.8 * _exact_f(t, x),
        "shifted": lambda t, x: _exact_f(t + 0.3, x),
    }
    for label, fn in wrong.items():
        assert loss(fn) > best, (label, loss(fn), best)


@pytest.fixture(scope="module")
def weighted_rows():
    program = galton.Program(narrow, params=["theta"], observed=["x"], name="narrow")
    return gold.mixture_pairs(program, 20_000, key=jax.random.key(4), partners=5, mixture_size=256, progress=False)


def test_mixture_weights_average_to_one_and_the_weighted_losses_are_minimised_by_the_exact_ratio(weighted_rows):
    e = weighted_rows.extras
    assert len(weighted_rows) == 100_000 and weighted_rows.x.shape == (100_000, 1)
    # E_q[p(x, z|θ)/q(x, z)] = 1 for every θ: a wrong mixture density q would shift these means
    for column in ("log_w0", "log_w1"):
        w = np.exp(e[column].astype(np.float64))
        assert abs(w.mean() - 1) < 0.02 and w.max() < 50, (column, w.mean(), w.max())
    batch = tuple(jnp.asarray(a) for a in (weighted_rows.theta, e["theta1"], weighted_rows.x, e["log_w0"], e["log_w1"], e["score0"], e["score1"]))
    for alpha in (0.0, 1.0):
        loss = lambda fn: float(mixture_loss(_Fixed(fn), batch, None, alpha=alpha))  # noqa: E731
        best = loss(_exact_f)
        for label, fn in {"the joint's width": functools.partial(_exact_f, sigma=0.5), "scaled": lambda t, x: 0.8 * _exact_f(t, x),
                          "shifted": lambda t, x: _exact_f(t + 0.3, x)}.items():
            assert loss(fn) > best, (alpha, label, loss(fn), best)


def wide():
    """θ ~ U(−2, 2), z ~ N(θ, 1), x ~ N(z, ½): the exact score is (x − θ) / 1.25."""
    theta = numpyro.sample("theta", dist.Uniform(-2.0, 2.0))
    z = numpyro.sample("z", dist.Normal(theta, 1.0))
    numpyro.sample("x", dist.Normal(z, 0.5))


def test_mixture_rows_with_a_reference_have_unbiased_weights_and_scores(monkeypatch):
    program = galton.Program(wide, params=["theta"], observed=["x"], name="wide")
    # 2,000 prior simulations and 256 components: the random subset plus each one's own θ
    rows = gold.mixture_pairs(program, 4000, key=jax.random.key(5), partners=4, theta_ref=[0.0], mixture_size=256, progress=False)
    e = rows.extras
    assert np.array_equal(e["simulation"], np.repeat(np.arange(4000), 4))
    x, theta0, theta1 = rows.x[:, 0], rows.theta[:, 0], e["theta1"][:, 0]
    w0, w1 = np.exp(e["log_w0"].astype(np.float64)), np.exp(e["log_w1"].astype(np.float64))
    assert abs(w0.mean() - 1) < 0.05 and abs(w1.mean() - 1) < 0.05, (w0.mean(), w1.mean())
    # each score label is unbiased at its θ under its own weight; with the weights swapped the
    # first mean would be −0.2 E[θ0²] ≈ −0.27
    residual0 = (e["score0"][:, 0] - (x - theta0) / 1.25) * theta0
    residual1 = e["score1"][:, 0] - (x - theta1) / 1.25
    assert abs((w0 * residual0).mean()) < 0.03 and abs((w1 * residual1).mean()) < 0.03
    # the mixture density does not depend on how its evaluations are chunked
    from galton.methods.gold import mixture
    sims = galton.simulate(program, 30, key=jax.random.key(6), keep_latents=True, progress=False)
    x, z = sims.x.reshape(30, 1), sims.extras["z"]
    at_ref = np.asarray(galton.augment.joint_log_density(program, x, z, np.zeros((30, 1), np.float32)))
    args = (program, x, z, sims.theta[:20], at_ref, 8, jax.random.key(7))
    whole = mixture._log_mixture(*args)
    monkeypatch.setattr(mixture, "CHUNK", 7)
    np.testing.assert_allclose(mixture._log_mixture(*args), whole, rtol=1e-5)


# ------------------------------------------------------------------------------------ the contract


@pytest.fixture(scope="module", params=sorted(CASES))
def fitted(request):
    return request.param, galton.infer(PROGRAM, X_OBS, key=jax.random.key(1), method=CASES[request.param], budget=400, progress=False)


def test_contract_shapes_loss_save_load(fitted, tmp_path):
    case, posterior = fitted
    draws = posterior.sample(N_DRAWS, key=jax.random.key(2))
    assert draws.shape == (N_DRAWS, 2) and bool(jnp.isfinite(draws).all())
    assert bool(jnp.isfinite(posterior.log_prob(draws[:5])).all())
    losses = posterior.history[0]["train_loss"]
    assert min(losses[1:]) < losses[0], losses
    loaded = load(posterior.save(tmp_path / "posterior"))
    key = jax.random.key(3)
    np.testing.assert_array_equal(loaded.sample(N_DRAWS, key=key), posterior.sample(N_DRAWS, key=key))


def test_contract_same_key_for_both_key_kinds():
    a = galton.infer(PROGRAM, np.asarray(X_OBS), key=jax.random.PRNGKey(5), method=CASES["alices"], budget=300, progress=False)
    b = galton.infer(PROGRAM, X_OBS, key=jax.random.key(5), method=CASES["alices"], budget=300, progress=False)
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]


# ----------------------------------------------------------------------------------------- accuracy


@pytest.fixture(scope="module")
def board_pairs():
    return gold.pair_simulations(galton.tasks.get("galton_board").problem, 4000, key=jax.random.key(0), theta_ref=[0.0], progress=False)


def _board_ratio_mse(net) -> float:
    """E over a θ grid and x ~ ½(p(x|θ) + p(x|0)) of (log r̂ − log r)², exactly over the 21 slots."""
    grid, slots = jnp.linspace(-0.9, 0.9, 7), jnp.arange(21.0)
    probs = jax.vmap(gb.slot_probabilities)(grid)  # (7, 21)
    exact = jnp.log(probs) - jnp.log(gb.slot_probabilities(0.0))[None]
    est = gold.log_ratio(net, slots[None, :, None], jnp.broadcast_to(grid[:, None, None], (7, 21, 1)), jnp.zeros((7, 21, 1)))
    weight = 0.5 * (probs + gb.slot_probabilities(0.0)[None])
    return float((((est - exact) ** 2) * weight).sum(1).mean())


def test_the_joint_score_makes_alices_beat_alice_and_carl_on_the_galton_board(board_pairs):
    training = Training(max_epochs=400, patience=30, learning_rate=1e-3, batch_size=128)
    errors = {}
    for method in ("carl", "alice", "alices"):
        m = galton.methods.get(method, theta_ref=(0.0,), training=training)
        net, _ = m.fit(board_pairs, galton.tasks.get("galton_board").prior, key=jax.random.key(1), progress=False)
        errors[method] = _board_ratio_mse(net)
    # the exact log ratios span −34 .. 9 on this grid (variance 6.2 under the weighting)
    assert errors["alices"] < 0.4 and errors["alices"] < 0.8 * min(errors["carl"], errors["alice"]), errors


def test_an_ensemble_averages_its_members_and_beats_their_typical_error_on_the_galton_board(board_pairs):
    training = Training(max_epochs=400, patience=30, learning_rate=1e-3, batch_size=128)
    prior = galton.tasks.get("galton_board").prior
    ensemble, history = gold.ALICES(theta_ref=(0.0,), training=training, ensemble=4).fit(board_pairs, prior, key=jax.random.key(1), progress=False)
    assert len(ensemble.members) == 4 and len(history["members"]) == 4
    x, t0 = jnp.arange(21.0)[:, None], jnp.full((21, 1), 0.4)
    np.testing.assert_allclose(ensemble.log_ratio(t0, x), np.mean([m.log_ratio(t0, x) for m in ensemble.members], 0), rtol=1e-5, atol=1e-5)
    members = [_board_ratio_mse(m) for m in ensemble.members]
    # the members differ (their own keys), and their mean errs less than the median member
    assert len(set(np.round(members, 6))) == 4 and _board_ratio_mse(ensemble) < np.median(members), (_board_ratio_mse(ensemble), members)
    with pytest.raises(ValueError, match="ensemble must be a positive integer number of networks"):
        gold.ALICES(ensemble=0)
    with pytest.raises(ValueError, match="ensemble must be a positive integer number of networks"):
        gold.ALICES(ensemble=2.0)


def test_partners_make_alices_need_fewer_simulations_on_the_galton_board():
    """Each of 1,000 simulations stands for 16 θ0: ALICES errs less than on one pair per simulation."""
    board, prior = galton.tasks.get("galton_board").problem, galton.tasks.get("galton_board").prior
    errors = {}
    for partners in (1, 16):
        training = Training(max_epochs=300, patience=20, learning_rate=1e-3, batch_size=128 * (1 + partners // 4))
        m = gold.ALICES(theta_ref=(0.0,), partners=partners, training=training)
        sims = m.simulations(board, 1000, key=jax.random.key(2), progress=False)
        assert len(sims) == 1000 * partners
        errors[partners] = _board_ratio_mse(m.fit(sims, prior, key=jax.random.key(1), progress=False)[0])
    assert errors[16] < 0.7 * errors[1], errors
    for bad in (0, None, 2.5):
        with pytest.raises(ValueError, match="partners must be a positive integer number of rows per simulation"):
            gold.ALICES(partners=bad)
    with pytest.raises(ValueError, match="mixture_size must be a positive integer number of mixture components"):
        gold.ALICES(partners=4, mixture_size=0)
    with pytest.raises(ValueError, match="partners > 1 weights rows by the joint density"):
        gold.CASCAL(partners=4)
    with pytest.raises(galton.ProblemError, match="lack .*mixture_pairs"):
        gold.ALICES(partners=4).fit(board_pairs_small(), prior, key=jax.random.key(0))


def board_pairs_small():
    return gold.pair_simulations(galton.tasks.get("galton_board").problem, 20, key=jax.random.key(0), theta_ref=[0.0], progress=False)


# ------------------------------------------------------------------------------------------- Fisher


def test_fisher_information_truth_histogram_and_sally_match_the_exact_values():
    task = galton.tasks.get("state_space")
    theta = np.asarray(task.true_parameters(1))
    truth = galton.fisher_information(task.problem, theta, key=jax.random.key(0), n=20_000)
    exact_joint = ss.fisher_information(theta, joint=True)
    assert np.abs(truth - exact_joint).max() < 0.03 * np.abs(exact_joint).max()

    sims = galton.simulate(task.problem, key=jax.random.key(1), theta=np.tile(theta, (10_000, 1)), augment="score", progress=False)
    regressor = summaries.fit(sims, loss="sally", key=jax.random.key(2), progress=False,
                              embedding=nets.MLP(20, 64, width=64, depth=2, activation="tanh", key=jax.random.key(3)),
                              training=Training(learning_rate=1e-3, batch_size=256, patience=10, max_epochs=200))
    sally = galton.fisher_information(task.problem, theta, key=jax.random.key(4), n=10_000, method="sally", estimator=regressor)
    exact = ss.fisher_information(theta)
    np.testing.assert_allclose(np.diag(sally), np.diag(exact), rtol=0.1)  # x alone: far below the joint's (160 for σ_v)

    board = galton.tasks.get("galton_board").problem
    p = gb.slot_probabilities(jnp.float32(0.0))
    dp = jax.jacfwd(gb.slot_probabilities)(jnp.float32(0.0))
    hist = galton.fisher_information(board, [0.0], key=jax.random.key(5), n=40_000, method="histogram")
    np.testing.assert_allclose(hist[0, 0], float((dp**2 / p).sum()), rtol=0.05)


def test_fisher_information_of_x_from_chains_without_training():
    task = galton.tasks.get("state_space")
    theta = np.asarray(task.true_parameters(1))
    chains = galton.fisher_information(task.problem, theta, key=jax.random.key(6), n=2_000, method="chains")
    exact = ss.fisher_information(theta)  # of x: σ_v's 21 against the joint's 160
    scale = np.sqrt(np.outer(np.diag(exact), np.diag(exact)))
    assert np.all(np.abs(chains - exact) / scale < 0.12), np.abs(chains - exact) / scale  # measured 0.003–0.07 over 4 runs
    board = galton.tasks.get("galton_board").problem
    with pytest.raises(ProblemError, match="is discrete"):
        galton.fisher_information(board, [0.0], key=jax.random.key(0), method="chains")
    with pytest.raises(ValueError, match="latent_steps must be an integer of at least 2"):
        galton.fisher_information(task.problem, theta, key=jax.random.key(0), method="chains", latent_steps=1)


def test_project_and_profile():
    info = np.array([[4.0, 1.0], [1.0, 2.0]])
    assert fisher.project(info, [0]).tolist() == [[4.0]]
    np.testing.assert_allclose(fisher.profile(info, [0]), [[4.0 - 1.0 / 2.0]])


def test_state_space_kalman_likelihood_is_the_dense_gaussian():
    task = galton.tasks.get("state_space")
    x, theta = task.observation(2), task.true_parameters(2)
    dense = jax.scipy.stats.multivariate_normal.logpdf(x, jnp.zeros(20), ss.covariance(theta))
    np.testing.assert_allclose(ss.log_marginal_likelihood(x, theta), dense, rtol=1e-4)


# ---------------------------------------------------------------------------------------- bad input


def test_bad_inputs_name_the_problem():
    with pytest.raises(galton.ProblemError, match="black-box Simulator"):
        galton.infer(galton.tasks.get("two_moons").problem, jnp.zeros(2), key=jax.random.key(0), method="alices", budget=10)
    with pytest.raises(galton.ProblemError, match="theta_ref has 1 rows outside"):
        galton.simulate(galton.tasks.get("galton_board").problem, 10, key=jax.random.key(0), augment="ratio", theta_ref=[3.0])
    with pytest.raises(ValueError, match="needs theta_ref"):
        galton.simulate(PROGRAM, 10, key=jax.random.key(0), augment="ratio")
    board = galton.tasks.get("galton_board").problem
    with pytest.raises(galton.ProblemError, match=r"theta_ref must be one point of shape \(1,\).*got shape \(2,\)"):
        galton.simulate(board, 10, key=jax.random.key(0), augment="ratio", theta_ref=(0.4, 0.5))
    assert board.prior.dim == 1 and fisher.check_point(board.prior, [[0.4]]).shape == (1,)
    for theta, message in [([[0.4], [0.5]], r"got shape \(2, 1\)"), (None, "theta is None")]:
        with pytest.raises(galton.ProblemError, match=message):
            galton.fisher_information(board, theta, key=jax.random.key(0), n=10)
    with pytest.raises(galton.ProblemError, match="augment needs a Program"):
        galton.simulate(galton.tasks.get("two_moons").problem, 10, key=jax.random.key(0), augment="score")
    with pytest.raises(ValueError, match="augment must be 'score', 'ratio' or a tuple of them, got 1"):
        galton.simulate(PROGRAM, 10, key=jax.random.key(0), augment=1)
    with pytest.raises(ValueError, match="uses no score"):
        gold.CARL(alpha=1.0)
    with pytest.raises(galton.ProblemError, match="lack"):
        gold.ALICES().fit(galton.simulate(PROGRAM, 20, key=jax.random.key(0), progress=False), PROGRAM.prior, key=jax.random.key(0))

    def deterministic():
        theta = numpyro.sample("theta", dist.Uniform(0.0, 1.0))
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Delta(z + theta))

    with pytest.raises(galton.ProblemError, match="site 'x' is a Delta whose value changes with θ"):
        galton.simulate(galton.Program(deterministic, params=["theta"], observed=["x"]), 10, key=jax.random.key(0), augment="score")

    def moving_support():
        theta = numpyro.sample("theta", dist.Uniform(1.0, 2.0))
        numpyro.sample("x", dist.Uniform(0.0, theta))

    with pytest.raises(galton.ProblemError, match="site 'x' has a support that moves with θ"):
        gold.pair_simulations(galton.Program(moving_support, params=["theta"], observed=["x"]), 10, key=jax.random.key(0))

    def blows_up():
        theta = numpyro.sample("theta", dist.Uniform(0.0, 1.0))
        # finite values, but above θ = 0.7 the untaken branch's NaN gradient leaks into the score
        numpyro.sample("x", dist.Normal(jnp.where(theta > 0.7, 0.0, jnp.sqrt(0.7 - theta)), 1.0))

    program = galton.Program(blows_up, params=["theta"], observed=["x"])
    with pytest.raises(galton.SimulationError, match="non-finite joint log ratio or score"):
        gold.pair_simulations(program, 200, key=jax.random.key(0), theta_ref=[0.25])
    with pytest.warns(UserWarning, match="dropped"):
        kept = gold.pair_simulations(program, 200, key=jax.random.key(0), theta_ref=[0.25], on_invalid="drop")
    assert 0 < len(kept) < 200
    with pytest.raises(ValueError, match="estimator="):
        galton.fisher_information(PROGRAM, [0.0, 0.0], key=jax.random.key(0), n=10, method="sally")


def _discrete_theta():
    theta = numpyro.sample("theta", dist.Poisson(3.0))
    numpyro.sample("x", dist.Normal(theta, 1.0))


def test_a_discrete_parameter_has_no_joint_score():
    program = galton.Program(_discrete_theta, params=["theta"], observed=["x"])
    with pytest.raises(galton.ProblemError, match="parameter site 'theta' is discrete"):
        galton.simulate(program, 10, key=jax.random.key(0), augment="score", progress=False)
    with pytest.raises(galton.ProblemError, match="parameter site 'theta' is discrete"):
        galton.fisher_information(program, [3.0], key=jax.random.key(0), n=10)


@pytest.mark.parametrize("settings, error, match", [
    (dict(bins=0), ValueError, "bins must be an integer of at least 2"),
    (dict(bins=2.5), ValueError, "bins must be an integer of at least 2"),
    (dict(observable=lambda x: x), galton.ProblemError, r"returns shape \(2,\) per x; .* one number per simulation"),
])
def test_fisher_histogram_needs_a_scalar_observable_and_two_bins(settings, error, match):
    with pytest.raises(error, match=match):
        galton.fisher_information(PROGRAM, [0.0, 0.0], key=jax.random.key(0), n=10, method="histogram",
                                  **{"observable": lambda x: x[0], **settings})


# ------------------------------------------------------------------------- likelihood-ratio inference


def _gaussian_mean():
    theta = numpyro.sample("theta", dist.Uniform(-3.0, 3.0))
    numpyro.sample("x", dist.Normal(theta, 1.0))


GAUSSIAN_MEAN = galton.Program(_gaussian_mean, params=["theta"], observed=["x"], name="gaussian_mean")


def _exact_gaussian_loglik(theta, x):
    return -0.5 * ((x.reshape(1, -1) - theta.reshape(-1, 1)) ** 2).sum(1)


def test_wilks_sets_cover_at_the_nominal_rate_on_a_gaussian_mean():
    theta_grid = galton.lrt.grid(GAUSSIAN_MEAN.prior, 601)
    results = galton.lrt.coverage(_exact_gaussian_loglik, GAUSSIAN_MEAN, [0.4], n_events=10, theta_grid=theta_grid,
                                  key=jax.random.key(0), toys=400)
    for r in results:
        assert abs(r.pulls) < 3, r  # within 3 binomial standard errors of 68 % and 95 %


def test_neyman_sets_cover_where_a_miscalibrated_likelihood_breaks_wilks():
    def overconfident(theta, x):  # twice the exact log-likelihood: q doubles, Wilks sets shrink by √2
        return 2.0 * _exact_gaussian_loglik(theta, x)

    theta_grid = galton.lrt.grid(GAUSSIAN_MEAN.prior, 601)
    settings = dict(n_events=10, theta_grid=theta_grid, key=jax.random.key(4), toys=400)
    wilks = galton.lrt.coverage(overconfident, GAUSSIAN_MEAN, [0.4], **settings)
    neyman = galton.lrt.coverage(overconfident, GAUSSIAN_MEAN, [0.4], method="neyman", **settings)
    assert wilks[0].pulls < -5 and wilks[1].pulls < -5, wilks  # 68 % -> 47 %, 95 % -> 83 %
    for r in neyman:
        assert abs(r.pulls) < 3, r
    with pytest.raises(ValueError, match="method must be"):
        galton.lrt.coverage(overconfident, GAUSSIAN_MEAN, [0.4], method="asymptotic", **settings)


def test_neyman_and_wilks_sets_agree_where_wilks_is_exact():
    theta_grid = galton.lrt.grid(GAUSSIAN_MEAN.prior, 61)
    x = galton.simulate(GAUSSIAN_MEAN, key=jax.random.key(1), theta=np.full((10, 1), 0.4), progress=False).x
    wilks = galton.lrt.confidence_set(_exact_gaussian_loglik, x, theta_grid, level=0.68)
    neyman = galton.lrt.confidence_set(_exact_gaussian_loglik, x, theta_grid, level=0.68, method="neyman",
                                       problem=GAUSSIAN_MEAN, toys=300, key=jax.random.key(2))
    assert wilks.sum() >= 3 and (wilks != neyman).sum() <= 2  # at most the edge points differ
    x_mean = float(x.mean())
    assert abs(theta_grid.axes[0][wilks].mean() - x_mean) < 0.1  # centred on the MLE


def _coverage(**settings):
    theta_grid = galton.lrt.grid(GAUSSIAN_MEAN.prior, 5)
    settings = {"n_events": 2, "theta_grid": theta_grid, "key": jax.random.key(0), "toys": 2, **settings}
    return galton.lrt.coverage(_exact_gaussian_loglik, GAUSSIAN_MEAN, [0.4], **settings)


def _confidence_set(**settings):
    return galton.lrt.confidence_set(_exact_gaussian_loglik, np.zeros((3, 1)), galton.lrt.grid(GAUSSIAN_MEAN.prior, 5), **settings)


@pytest.mark.parametrize("call, match", [
    (lambda: _confidence_set(keep=[5]), r"keep has indices \[5\] outside 0..0"),
    (lambda: _confidence_set(keep=0), r"keep must be a sequence of parameter indices such as \[0\]"),
    (lambda: _confidence_set(keep=[0, 0]), "keep repeats an index"),
    (lambda: _confidence_set(keep=[]), "keep is empty"),
    (lambda: _confidence_set(level="0.95"), r"level must be a number in \(0, 1\)"),
    (lambda: _coverage(keep=[3]), r"keep has indices \[3\]"),
    (lambda: _coverage(levels=(1.5,)), r"each of levels must be a number in \(0, 1\)"),
    (lambda: _coverage(n_events=-1), "n_events must be a positive integer, got -1"),
    (lambda: _coverage(n_events=2.5), "n_events must be a positive integer, got 2.5"),
    (lambda: galton.lrt.grid(GAUSSIAN_MEAN.prior, 0), "points must be a positive integer, got 0"),
    (lambda: galton.lrt.grid(GAUSSIAN_MEAN.prior, [5, 5]), "points has 2 counts; give one per parameter"),
    (lambda: galton.lrt.grid(GAUSSIAN_MEAN.prior, 5, bounds=[(1, -1)]), r"bounds for theta are \(1.0, -1.0\)"),
    (lambda: fisher.profile(np.eye(2), [2]), r"keep has indices \[2\] outside 0..1"),
    (lambda: fisher.profile(np.diag([1.0, 1.0, 0.0]), [0]), r"profiled parameters \[1, 2\] is singular"),
    (lambda: galton.fisher_information(GAUSSIAN_MEAN, [0.4], key=jax.random.key(0), n=1), "n must be an integer of at least 2 simulations, got 1"),
    (lambda: gold.pairs.pair_simulations(GAUSSIAN_MEAN, 1.5, key=jax.random.key(0)), "n must be an integer of at least 2 simulations, got 1.5"),
])
def test_lrt_and_fisher_name_a_bad_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_coverage_takes_a_single_level_and_numpy_counts():
    (result,) = _coverage(levels=0.95, n_events=np.int64(2))
    assert result.level == 0.95


def test_lrt_from_a_trained_estimator_and_profiling():
    posterior = galton.infer(PROGRAM, np.zeros((5, 2)), key=jax.random.key(3), method=CASES["alices"], budget=400, progress=False)
    loglik = galton.lrt.log_likelihood(posterior)
    theta_grid = galton.lrt.grid(PROGRAM.prior, 9, bounds=[(-2, 2), (-2, 2)])
    q = galton.lrt.test_statistic(loglik, np.zeros((5, 2)), theta_grid)
    assert q.shape == (9, 9) and q.min() == 0.0 and np.isfinite(q).all()
    profiled = galton.lrt.test_statistic(loglik, np.zeros((5, 2)), theta_grid, keep=[0])
    np.testing.assert_allclose(profiled, q.min(axis=1))
    with pytest.raises(galton.ProblemError, match="x has shape"):
        loglik(jnp.zeros((3, 2)), np.zeros((5, 3)))  # events of the wrong shape
    with pytest.raises(galton.ProblemError, match="NaN or inf"):
        loglik(jnp.zeros((3, 2)), np.full((5, 2), np.nan))
    with pytest.raises(galton.ProblemError, match="NaN or inf"):
        posterior.log_prob(jnp.zeros((3, 2)), x=np.full(2, np.nan))
    with pytest.raises(galton.ProblemError, match=r"theta must have shape \(m, 2\)"):
        loglik(jnp.zeros((3, 1)), np.zeros((5, 2)))
    with pytest.raises(TypeError, match="no likelihood term"):
        galton.lrt.log_likelihood(galton.infer(PROGRAM, X_OBS, key=jax.random.key(0), method=CASES["score_npe"], budget=200, progress=False))
