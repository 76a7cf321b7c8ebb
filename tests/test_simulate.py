import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
import zarr

from galton import ProblemError, Simulator
from galton.simulate import SimulationError, simulate
from galton.store import StoreMismatchError, load_simulations
from galton.tasks import get

PRIOR = dist.Uniform(-jnp.ones(2), jnp.ones(2))


def shifted_noise(key, theta):
    return theta + 0.1 * jax.random.normal(key, (2,))


def numpy_noise(key, theta):
    return np.asarray(theta) ** 2 + np.random.default_rng(key).normal(size=2)


JAX_SIM = Simulator(PRIOR, shifted_noise, names=["a", "b"])
NUMPY_SIM = Simulator(PRIOR, numpy_noise, names=["a", "b"])


def test_jax_simulation_is_reproducible_and_follows_the_model():
    sims = simulate(JAX_SIM, 2500, key=jax.random.key(0), chunk_size=1000, progress=False)
    again = simulate(JAX_SIM, 2500, key=jax.random.key(0), chunk_size=1000, progress=False)
    other = simulate(JAX_SIM, 2500, key=jax.random.key(1), chunk_size=1000, progress=False)
    assert sims.theta.shape == (2500, 2) and sims.x.shape == (2500, 2) and sims.names == ["a", "b"]
    np.testing.assert_array_equal(sims.x, again.x)
    assert not np.array_equal(sims.x, other.x)
    residual = sims.x - sims.theta
    np.testing.assert_allclose(residual.std(0), 0.1, rtol=0.05)
    assert np.abs(sims.theta).max() <= 1 and abs(sims.theta.mean()) < 0.05


def test_program_simulation_can_keep_latents():
    funnel = get("funnel", dim=8).problem
    sims = simulate(funnel, 300, key=jax.random.key(0), keep_latents=True, progress=False)
    assert sims.x.shape == (300, 8) and sims.extras["z"].shape == (300, 8)
    # x = z + N(0, 1) noise
    np.testing.assert_allclose((sims.x - sims.extras["z"]).std(), 1.0, rtol=0.05)
    with pytest.raises(ProblemError, match="keep_latents needs a Program"):
        simulate(JAX_SIM, 10, key=jax.random.key(0), keep_latents=True)


def test_numpy_simulator_runs_on_executors_with_the_same_result():
    key = jax.random.key(3)
    with cf.ThreadPoolExecutor(2) as pool:
        threaded = simulate(NUMPY_SIM, 60, key=key, chunk_size=25, executor=pool, progress=False)
    pooled = simulate(NUMPY_SIM, 60, key=key, chunk_size=25, progress=False)  # default: local processes
    np.testing.assert_array_equal(threaded.x, pooled.x)
    np.testing.assert_array_equal(threaded.theta, pooled.theta)
    assert (pooled.x - pooled.theta**2).std() == pytest.approx(1.0, abs=0.2)


def test_store_equals_memory_and_resumes_missing_chunks(tmp_path):
    key = jax.random.key(5)
    memory = simulate(JAX_SIM, 1050, key=key, chunk_size=200, progress=False)
    path = tmp_path / "sims.zarr"
    stored = simulate(JAX_SIM, 1050, key=key, chunk_size=200, store=path, progress=False)
    np.testing.assert_array_equal(stored.x, memory.x)
    # forget two chunks (as if the run died before them) and scribble over their rows
    group = zarr.open_group(str(path), mode="r+")
    group["done"][2] = 0
    group["done"][5] = 0
    group["x"][400:600] = -7.0
    assert len(load_simulations(path)) == 1050 - 200 - 50
    resumed = simulate(JAX_SIM, 1050, key=key, chunk_size=200, store=path, progress=False)
    np.testing.assert_array_equal(resumed.x, memory.x)
    np.testing.assert_array_equal(resumed.theta, memory.theta)


def test_mismatched_store_is_an_error(tmp_path):
    path = tmp_path / "sims.zarr"
    simulate(JAX_SIM, 100, key=jax.random.key(0), store=path, progress=False)
    with pytest.raises(StoreMismatchError, match="the random key differs from the one the store was made with"):
        simulate(JAX_SIM, 100, key=jax.random.key(1), store=path, progress=False)
    with pytest.raises(StoreMismatchError, match="holds simulations of Simulator:shifted_noise, this run's problem is Simulator:numpy_noise"):
        simulate(NUMPY_SIM, 100, key=jax.random.key(0), store=path, progress=False)
    wider = Simulator(dist.Uniform(-2 * jnp.ones(2), 2 * jnp.ones(2)), shifted_noise, names=["a", "b"])
    with pytest.raises(StoreMismatchError, match="the prior differs from the one the store was made with"):
        simulate(wider, 100, key=jax.random.key(0), store=path, progress=False)
    with pytest.raises(StoreMismatchError, match="this run gives the parameters theta to simulate at where the store draws them"):
        simulate(JAX_SIM, key=jax.random.key(0), theta=np.zeros((100, 2)), store=path, progress=False)
    # a later round's θ come from the earlier rounds' posterior: the message says what changes them
    round_1 = tmp_path / "round_1"
    simulate(JAX_SIM, key=jax.random.key(0), theta=np.zeros((10, 2)), store=round_1, progress=False)
    with pytest.raises(StoreMismatchError, match="the parameters theta to simulate at differ .* a different observation x_o"):
        simulate(JAX_SIM, key=jax.random.key(0), theta=np.full((10, 2), 0.5), store=round_1, progress=False)


def scaled(c):
    return Simulator(PRIOR, lambda key, theta: c * theta + jax.random.normal(key, (2,)), names=["a", "b"])


def test_a_store_is_matched_on_the_simulators_code_not_its_name(tmp_path):
    path = tmp_path / "sims.zarr"
    first = simulate(scaled(1.0), 100, key=jax.random.key(0), store=path, progress=False)
    np.testing.assert_array_equal(simulate(scaled(1.0), 100, key=jax.random.key(0), store=path, progress=False).x, first.x)
    # every lambda is named "<lambda>": other code, or another value in its closure, is another simulator
    other_code = Simulator(PRIOR, lambda key, theta: theta - jax.random.normal(key, (2,)), names=["a", "b"])
    for changed in (other_code, scaled(10.0)):
        with pytest.raises(StoreMismatchError, match="the simulator's code changed since the store was written.*new store directory"):
            simulate(changed, 100, key=jax.random.key(0), store=path, progress=False)


def test_a_store_written_before_code_fingerprints_still_resumes(tmp_path):
    path = tmp_path / "sims.zarr"
    first = simulate(JAX_SIM, 100, key=jax.random.key(0), chunk_size=50, store=path, progress=False)
    group = zarr.open_group(str(path), mode="r+")
    group.attrs["galton"] = {k: v for k, v in group.attrs["galton"].items() if k != "code"}
    group["done"][1] = 0
    resumed = simulate(JAX_SIM, 100, key=jax.random.key(0), chunk_size=50, store=path, progress=False)
    np.testing.assert_array_equal(resumed.x, first.x)


@pytest.mark.parametrize("returns, named", [
    (lambda key, theta: {"x": theta}, "dict"), (lambda key, theta: None, "NoneType"),
], ids=["dict", "None"])
def test_a_jax_simulator_returning_no_array_is_named(returns, named):
    with pytest.raises(SimulationError, match=f"the simulator returned {named}; simulate\\(key, theta\\) must return x as one numeric array"):
        simulate(Simulator(PRIOR, returns), 10, key=jax.random.key(0), progress=False)


def text(key, theta):
    return "abc"


def two_or_three(key, theta):
    return np.zeros(2 if float(theta[0]) > 0 else 3)


def test_a_python_simulator_returning_text_or_changing_shape_is_named(tmp_path):
    with cf.ThreadPoolExecutor(1) as pool:
        with pytest.raises(SimulationError, match=r"the simulator returned str \(dtype <U3\)"):
            simulate(Simulator(PRIOR, text), 4, key=jax.random.key(0), executor=pool, progress=False)
        # one row per chunk: the shapes differ between chunks, which is the simulator's fault, not the store's
        with pytest.raises(SimulationError, match=r"returned x of shape \(2,\) in simulations 1 to 1, but of shape \(3,\) in earlier ones"):
            simulate(Simulator(PRIOR, two_or_three), key=jax.random.key(0), theta=np.array([[-0.5, 0.0], [0.5, 0.0]]),
                     chunk_size=1, store=tmp_path / "shapes.zarr", executor=pool, progress=False)


KILLED_RUN = textwrap.dedent(
    """
    import concurrent.futures as cf, sys, time
    import jax, jax.numpy as jnp, numpy as np, numpyro.distributions as dist
    from galton import Simulator
    from galton.simulate import simulate

    def slow(key, theta):
        time.sleep(0.01)
        return np.asarray(theta) + np.random.default_rng(key).normal(size=2)

    sim = Simulator(dist.Uniform(-jnp.ones(2), jnp.ones(2)), slow, name="slow")
    with cf.ThreadPoolExecutor(1) as pool:
        simulate(sim, 400, key=jax.random.key(11), chunk_size=40, store=sys.argv[1], executor=pool, progress=False)
    """
)


def test_sigkilled_run_resumes_to_exactly_n_rows(tmp_path):
    script, path = tmp_path / "run.py", tmp_path / "killed.zarr"
    script.write_text(KILLED_RUN)
    proc = subprocess.Popen([sys.executable, str(script), str(path)])
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if (path / "done").exists():
            done = int(zarr.open_group(str(path), mode="r")["done"][:].sum())
            if done >= 3:
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = int(zarr.open_group(str(path), mode="r")["done"][:].sum())
    assert 3 <= partial < 10, "the run should have been killed part way"
    subprocess.run([sys.executable, str(script), str(path)], check=True, timeout=300)
    resumed = load_simulations(path)
    fresh = tmp_path / "fresh.zarr"
    subprocess.run([sys.executable, str(script), str(fresh)], check=True, timeout=300)
    reference = load_simulations(fresh)
    assert len(resumed) == 400
    np.testing.assert_array_equal(resumed.theta, reference.theta)
    np.testing.assert_array_equal(resumed.x, reference.x)
    assert len(np.unique(resumed.theta, axis=0)) == 400


def test_dask_cluster_gives_the_same_simulations():
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            remote = simulate(NUMPY_SIM, 40, key=jax.random.key(2), chunk_size=20, executor=client, progress=False)
    with cf.ThreadPoolExecutor(1) as pool:
        local = simulate(NUMPY_SIM, 40, key=jax.random.key(2), chunk_size=20, executor=pool, progress=False)
    np.testing.assert_array_equal(remote.x, local.x)


def test_bad_inputs_get_clear_errors():
    key = jax.random.key(0)
    with pytest.raises(ProblemError, match=r"shape \(n, 2\)"):
        simulate(JAX_SIM, key=key, theta=np.zeros((5, 3)))
    with pytest.raises(ProblemError, match="outside the prior's support.*a=0.5, b=1.5"):
        simulate(JAX_SIM, key=key, theta=np.array([[0.0, 0.0], [0.5, 1.5]]))
    with pytest.raises(ValueError, match="positive integer"):
        simulate(JAX_SIM, 0, key=key)
    with pytest.raises(ValueError, match="on_invalid"):
        simulate(JAX_SIM, 5, key=key, on_invalid="ignore")
    wide = dist.Uniform(-2 * jnp.ones(2), 2 * jnp.ones(2))
    with pytest.raises(ProblemError, match="proposal draws has [0-9]+ rows outside the prior's support"):
        simulate(JAX_SIM, 100, key=key, proposal=wide, progress=False)


def half_nan(key, theta):
    return jnp.where(theta[0] > 0, jnp.nan, theta)


def test_non_finite_simulations_follow_the_policy():
    sim = Simulator(PRIOR, half_nan, names=["a", "b"])
    key = jax.random.key(4)
    with pytest.raises(SimulationError, match=r"returned NaN or inf, first simulation \d+ with a=0\.\d+"):
        simulate(sim, 200, key=key, progress=False)
    with pytest.warns(UserWarning, match=r"dropped \d+ of 200"):
        dropped = simulate(sim, 200, key=key, on_invalid="drop", progress=False)
    assert 60 < dropped.n_dropped < 140 and len(dropped) == 200 - dropped.n_dropped
    assert np.isfinite(dropped.x).all() and (dropped.theta[:, 0] <= 0).all()
    kept = simulate(sim, 200, key=key, on_invalid="keep", progress=False)
    assert len(kept) == 200 and np.isnan(kept.x).any()


def raises_on_large_a(key, theta):
    if theta[0] > 0.8:
        raise RuntimeError("solver diverged")
    return np.asarray(theta)


def test_simulator_exception_names_the_theta():
    sim = Simulator(PRIOR, raises_on_large_a, names=["a", "b"])
    theta = np.array([[0.1, 0.2], [0.9, -0.3]])
    with cf.ThreadPoolExecutor(1) as pool:
        with pytest.raises(SimulationError, match=r"simulation 1 with a=0.9, b=-0.3:\nRuntimeError: solver diverged"):
            simulate(sim, key=jax.random.key(0), theta=theta, executor=pool, progress=False)


def test_a_python_simulators_observation_is_checked_before_and_after_its_first_simulations():
    import galton

    def never(key, theta):
        raise AssertionError("simulated before x_obs was checked")

    sim = Simulator(PRIOR, never, names=["a", "b"], backend="python")
    for bad, message in ((np.array([0.1, np.nan]), "NaN or inf"), ("text", "x_obs must be numbers")):
        with pytest.raises(ProblemError, match=message):
            galton.infer(sim, bad, key=jax.random.key(0), method="npe", budget=50, progress=False)
    with pytest.raises(ProblemError, match=r"x_obs has shape \(3,\), but .* \(2,\) \(the 40 simulations made before the check") as err:
        galton.infer(NUMPY_SIM, np.zeros(3), key=jax.random.key(0), method="npe", budget=40, progress=False)
    assert err.value.simulations.x.shape == (40, 2)
