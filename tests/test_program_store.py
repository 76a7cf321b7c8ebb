"""galton's store of compiled programs (`galton._cache.stored_program`): a fresh process loads a
training epoch instead of tracing and lowering it, and trains exactly as the jitted epoch does."""

import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from analytic import PROBLEM

import galton
from galton import _cache
from galton.train import Training, train

SETTINGS = Training(max_epochs=3, patience=3, batch_size=64)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("GALTON_COMPILE_CACHE", "1")
    monkeypatch.setenv("GALTON_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_cache, "_LOADED", type(_cache._LOADED)())
    return tmp_path / "galton-programs"


def _fit(sims):
    method = galton.methods.get("nre", hidden=16, training=SETTINGS)
    net, history = method.fit(sims, PROBLEM.prior, key=jax.random.key(3), progress=False)
    return jax.tree.leaves(eqx.filter(net, eqx.is_array)), history["validation_loss"]


def test_a_stored_epoch_trains_as_the_jitted_one_and_a_damaged_one_is_compiled_again(store, monkeypatch):
    sims = galton.simulate(PROBLEM, 600, key=jax.random.key(0), progress=False)
    monkeypatch.setenv("GALTON_COMPILE_CACHE", "0")
    jitted = _fit(sims)
    monkeypatch.setenv("GALTON_COMPILE_CACHE", "1")
    compiled = _fit(sims)
    files = sorted(store.glob("*.bin"))
    assert len(files) == 3  # the network's initialisation, the start of training, the epoch

    def refuse(*args):
        raise AssertionError("a stored program was compiled again")

    with monkeypatch.context() as m:  # a fresh process: nothing in memory, everything on disk
        m.setattr(_cache, "_LOADED", type(_cache._LOADED)())
        m.setattr(_cache, "_compile", refuse)
        loaded = _fit(sims)
    for path in files:  # torn writes or a foreign file: compiled afresh, not run
        path.write_bytes(b"not a program")
    monkeypatch.setattr(_cache, "_LOADED", type(_cache._LOADED)())
    recompiled = _fit(sims)
    for run in (compiled, loaded, recompiled):
        assert run[1] == jitted[1]  # validation losses, bit for bit
        for a, b in zip(run[0], jitted[0]):
            np.testing.assert_array_equal(a, b)
    assert all(path.stat().st_size > 10_000 for path in files)


def _weighted_mse(m, batch, key, *, weights):
    return jnp.mean(weights * (jax.vmap(m)(batch[0]) - batch[1]) ** 2)


def test_the_store_keeps_no_program_whose_code_it_cannot_vouch_for(store):
    from galton.methods.base import bind

    x = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    y = x.sum(1)
    model = eqx.nn.Linear(3, "scalar", key=jax.random.key(0))
    _, history = train(model, bind(_weighted_mse, weights=np.float32(2.0)), (x, y), key=jax.random.key(1), settings=SETTINGS,
                       progress=False)
    assert history["epochs"] == 3
    assert len(list(store.glob("*.bin"))) == 1  # the start of training, whose code is galton's; not the epoch of the test's loss


def test_descriptions_tell_apart_what_a_program_holds():
    from galton.methods.base import bind
    from galton.methods.gold.ratios import gold_loss

    def loss(alpha):
        return bind(gold_loss, base="rolr", alpha=alpha)

    assert _cache.describe((loss(0.1), 3)) == _cache.describe((loss(0.1), 3))
    assert _cache.describe((loss(0.1), 3)) != _cache.describe((loss(0.2), 3))
    assert _cache.describe(jnp.zeros((2, 3))) != _cache.describe(jnp.zeros((3, 2)))
    assert _cache.describe(jnp.zeros(2)) != _cache.describe(jnp.zeros(2, jnp.int32))
    assert _cache.describe(jnp.zeros(2)) == _cache.describe(jnp.ones(2))  # inputs: any values
    assert _cache.describe(jnp.zeros(2), inputs=False) != _cache.describe(jnp.ones(2), inputs=False)  # compiled in
    with pytest.raises(_cache._Unknown):  # code outside galton and its pinned dependencies
        _cache.describe(bind(_weighted_mse, weights=1.0))


def test_what_a_description_cannot_see_is_not_stored():
    import numpyro.distributions as dist

    from galton.methods.base import bind
    from galton.methods.npe import atomic_loss
    from galton.prior import Prior

    with pytest.raises(_cache._Unknown):  # a prior's repr names only its shapes: its numbers would be compiled in unseen
        _cache.describe(bind(atomic_loss, prior=Prior(dist.Uniform(-jnp.ones(2), jnp.ones(2))), num_atoms=10), inputs=False)
    weights = [eqx.nn.Linear(2, 2, key=jax.random.key(i)) for i in range(2)]  # equinox's repr hides the arrays
    assert _cache._value(weights[0]) != _cache._value(weights[1])
    before = _cache._environment()
    with jax.default_matmul_precision("highest"):  # JAX's flags are read for every program
        assert _cache._environment() != before


def test_the_cache_is_held_to_its_size_the_least_recently_used_files_going_first(store, monkeypatch):
    jax_cache = store.parent / "jit_epoch-cache"  # JAX's own files share the folder and the limit
    store.mkdir(parents=True)
    for age, path in enumerate([store / "new.bin", jax_cache, store / "old.bin"]):
        path.write_bytes(b"x" * 1000)
        os.utime(path, (1e9 - age, 1e9 - age))
    assert _cache.prune(store.parent, 2500) == 1000
    assert sorted(p.name for p in store.parent.rglob("*") if p.is_file()) == ["jit_epoch-cache", "new.bin"]

    sims = galton.simulate(PROBLEM, 600, key=jax.random.key(0), progress=False)
    _fit(sims)  # compiles three programs, each stored then pruned to the limit
    stored = sorted(store.glob("*.bin"), key=lambda p: p.stat().st_mtime)
    assert len(stored) == 4 and stored[0].name == "new.bin"
    for path in stored[1:]:
        os.utime(path, (1.5e9, 1.5e9))

    def refuse(*args):
        raise AssertionError("a stored program was compiled again")

    with monkeypatch.context() as m:  # a fresh process: loading a program (not compiling it) marks it used
        m.setattr(_cache, "_LOADED", type(_cache._LOADED)())
        m.setattr(_cache, "_compile", refuse)
        _fit(sims)
    assert all(p.stat().st_mtime > 1.5e9 for p in stored[1:])

    monkeypatch.setenv("GALTON_CACHE_MAX_MB", "0.05")  # less than the three programs take
    monkeypatch.setattr(_cache, "_LOADED", type(_cache._LOADED)())
    monkeypatch.setattr(_cache, "_load", lambda path, text: None)
    _fit(sims)
    assert sum(p.stat().st_size for p in store.parent.rglob("*") if p.is_file()) <= 0.05 * 2**20
    monkeypatch.setenv("GALTON_CACHE_MAX_MB", "lots")
    with pytest.raises(ValueError, match="GALTON_CACHE_MAX_MB"):
        _cache._max_bytes()
