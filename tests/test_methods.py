"""One harness over every registered method and variant (as optax tests all its optimisers):
on one tiny problem, a few epochs each, the contract every method keeps.

- the posterior's draws and densities have the documented shapes and are finite;
- training lowers the loss;
- save -> load gives the same draws for the same key and the same densities;
- the same key gives the same posterior, and a legacy ``PRNGKey`` the same as its typed twin.

Accuracy against analytic posteriors lives in test_neural.py; this file is about the contract.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import galton
from galton import methods
from galton.methods import NLE, NPE, NRE, TMNRE
from galton.posteriors import load
from galton.train import Training

TINY = Training(max_epochs=8, patience=8, batch_size=50)
N_DRAWS = 60  # one draw count everywhere, so each case's sampler compiles once
SAMPLER = (("num_chains", 4), ("warmup", 30))
PROBLEM = galton.Simulator(
    dist.Normal(jnp.zeros(2), 1.0), lambda key, theta: theta + 0.3 * jax.random.normal(key, (2,)), name="tiny"
)
X_OBS = jnp.array([0.4, -0.3])

CASES = {
    "npe-nsf": NPE(flow="nsf", transforms=1, hidden=8, bins=4, training=TINY),
    "npe-maf": NPE(flow="maf", transforms=1, hidden=8, training=TINY),
    "nle-maf": NLE(flow="maf", transforms=1, hidden=8, training=TINY, sampler=SAMPLER),
    "nle-nsf": NLE(flow="nsf", transforms=1, hidden=8, bins=4, training=TINY, sampler=SAMPLER),
    **{f"nre-{v}": NRE(variant=v, hidden=8, depth=1, training=TINY, sampler=SAMPLER) for v in ("a", "b", "c", "balanced")},
    "tmnre": TMNRE(hidden=8, depth=1, training=TINY),  # two parameters: its pair head is the joint
}
# every case in one round; each method's default case also sequentially (its proposal-corrected
# loss, pooled rounds), which is what rounds > 1 changes
SEQUENTIAL = {"npe-nsf", "nle-maf", "nre-b", "tmnre"}


def test_every_registered_method_is_in_the_harness():
    from test_abc import CASES as ABC_CASES  # the ABC methods keep the same contract in their own harness
    from test_gold import CASES as GOLD_CASES  # so do the gold-mining ones, on a Program

    gold = {type(m).name for m in GOLD_CASES.values()}
    neural = {n for n, cls in methods.REGISTRY.items() if issubclass(cls, methods.base.NeuralMethod)} - gold
    assert {type(m).name for m in CASES.values()} == neural
    assert {type(CASES[c]).name for c in SEQUENTIAL} == neural
    assert {type(m).name for m in ABC_CASES.values()} | neural | gold | {"nuts", "ic", "sally", "sallino"} == set(methods.names())  # nuts: test_nuts.py, ic: test_ic.py, sally and sallino: test_sally.py
    assert {"npe", "nle", "nre"} <= set(methods.names())
    for name in methods.names():
        assert getattr(galton, methods.REGISTRY[name].__name__) is methods.REGISTRY[name]


@pytest.fixture(scope="module")
def sims():
    return galton.simulate(PROBLEM, 400, key=jax.random.key(0), progress=False)


@pytest.fixture(
    scope="module", params=[(case, 1) for case in CASES] + [(case, 2) for case in sorted(SEQUENTIAL)], ids=lambda p: f"{p[0]}-r{p[1]}"
)
def fitted(request, sims):
    case, rounds = request.param
    simulations = sims if rounds == 1 else None
    posterior = galton.infer(
        PROBLEM, X_OBS, key=jax.random.key(1), method=CASES[case], budget=400, rounds=rounds,
        simulations=simulations, progress=False,
    )
    return case, rounds, posterior


def test_shapes_and_finite_values(fitted):
    _, rounds, posterior = fitted
    draws = posterior.sample(N_DRAWS, key=jax.random.key(2))
    assert draws.shape == (N_DRAWS, 2) and bool(jnp.isfinite(draws).all())
    lp = posterior.log_prob(draws[:5])
    assert lp.shape == (5,) and bool(jnp.isfinite(lp).all())
    assert posterior.log_prob(draws[0]).shape == ()
    assert posterior.names == ["theta[0]", "theta[1]"] and len(posterior.history) == rounds


def test_training_lowers_the_loss(fitted):
    _, _, posterior = fitted
    for history in posterior.history:
        losses = history["train_loss"]
        assert len(losses) == history["epochs"] <= TINY.max_epochs
        assert min(losses[1:]) < losses[0], losses


def test_save_and_load_round_trip(fitted, tmp_path):
    _, _, posterior = fitted
    loaded = load(posterior.save(tmp_path / "posterior"))
    assert type(loaded) is type(posterior) and loaded.history == posterior.history
    key = jax.random.key(3)
    np.testing.assert_array_equal(loaded.sample(N_DRAWS, key=key), posterior.sample(N_DRAWS, key=key))
    theta = np.zeros((3, 2))
    np.testing.assert_array_equal(loaded.log_prob(theta), posterior.log_prob(theta))


def test_same_key_same_posterior_for_both_key_kinds(fitted, sims):
    case, rounds, posterior = fitted
    if rounds > 1:
        pytest.skip("the one-round fits cover this; a second sequential fit doubles the harness's time")
    legacy = galton.infer(
        PROBLEM, np.asarray(X_OBS), key=jax.random.PRNGKey(1), method=CASES[case], budget=400, simulations=sims, progress=False
    )
    assert legacy.history[0]["train_loss"] == posterior.history[0]["train_loss"]
    np.testing.assert_array_equal(
        legacy.sample(N_DRAWS, key=jax.random.PRNGKey(4)),
        posterior.sample(N_DRAWS, key=jax.random.wrap_key_data(jax.random.PRNGKey(4))),
    )


@pytest.mark.parametrize("name, options, message", [
    ("npe", dict(hidden=-1), "hidden must be a positive integer, got -1"),
    ("npe", dict(hidden=2.5), "hidden must be a positive integer, got 2.5"),
    ("npe", dict(transforms=0), "transforms must be a positive integer, got 0"),
    ("npe", dict(bins=0), "bins must be a positive integer, got 0"),
    ("npe", dict(flow="xyz"), r"flow must be one of \('nsf', 'maf'\), got 'xyz'"),
    ("npe", dict(num_atoms=1), "num_atoms must be an integer of at least 2, got 1"),
    ("npe", dict(training={"max_epochs": 2}), r"training must be a galton.Training, not a dict: write training=galton.Training\(max_epochs=2\)"),
    ("npe", dict(hiden=8), "npe has no setting hiden; its settings are bins, embedding, flow, hidden"),
    ("nle", dict(sampler=(("num_chains", 0),)), "sampler num_chains must be a positive integer, got 0"),
    ("nle", dict(sampler=(("chains", 4),)), "sampler has the unknown setting 'chains'"),
    ("nle", dict(sampler="nuts"), "sampler must be a dict or"),
    ("nre", dict(variant="z"), "variant must be one of"),
    ("nre", dict(num_atoms=1), "num_atoms must be an integer of at least 2, got 1"),
    ("nre", dict(variant="c", num_atoms=0), "num_atoms must be a positive integer, got 0"),
    ("nre", dict(variant="c", gamma=-1.0), "gamma must be a positive number, got -1.0"),
    ("nre", dict(depth=0), "depth must be a positive integer, got 0"),
    ("nre", dict(strength=float("nan")), "strength must be a non-negative number"),
])
def test_bad_method_settings_fail_when_made(name, options, message):
    with pytest.raises(ValueError, match=message):
        methods.get(name, **options)


def test_a_sampler_dict_is_kept_as_pairs():
    method = NLE(sampler={"num_chains": 4, "warmup": 30})
    assert method.sampler == SAMPLER and NRE(variant="c", num_atoms=1).num_atoms == 1  # NRE-C's K counts marginal atoms
