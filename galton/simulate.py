"""The one simulation path: `simulate(problem, n, key=...)` -> `Simulations`.

Work is cut into chunks of rows. Chunk ``i`` draws its θ and its simulator keys from
``fold_in(key, i)`` alone, so the result does not depend on which chunks ran before, on
how many workers ran them, or on whether the run was interrupted and resumed from a store.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import os
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import loky
import numpy as np

from galton import _worker
from galton import augment as _augment
from galton.checks import check_count
from galton.keys import as_key
from galton.prior import check_point, check_theta
from galton.problem import ProblemError, Program, Simulator
from galton.progress import Progress
from galton.store import SimulationStore, Simulations, code_fingerprint, fingerprint_of, simulations_from_store

POLICIES = ("raise", "drop", "keep")


class SimulationError(RuntimeError):
    """The simulator failed, or returned invalid data under the ``"raise"`` policy."""


def _format_theta(names, row) -> str:
    return ", ".join(f"{n}={float(v):.6g}" for n, v in zip(names, np.asarray(row)))


@functools.lru_cache(maxsize=32)
def _batched(problem, keep_latents: bool, augment: tuple = (), theta_ref: tuple | None = None):
    """A jitted, vmapped ``(keys (m,), θ (m, d)) -> (x (m, ...), extras)`` for a JAX problem."""

    def one(key, theta):
        if not (keep_latents or augment):
            return problem.simulate_flat(key, theta), {}
        z, x = problem.sample_joint(key, theta)
        z_flat = problem.latents.flatten(z) if problem.latents.dim else jnp.zeros(0)
        extras = {"z": z_flat} if keep_latents else {}
        log_joint = lambda t: _augment._log_joint_flat(problem, x, z_flat, t)  # noqa: E731
        if "score" in augment:  # the ratio's log p(x, z|θ) comes with the gradient
            value, extras["score"] = jax.value_and_grad(log_joint)(theta)
        elif "ratio" in augment:
            value = log_joint(theta)
        if "ratio" in augment:
            extras["log_ratio"] = value - log_joint(jnp.asarray(theta_ref, theta.dtype))
        return x, extras

    return jax.jit(jax.vmap(one))


def _default_executor() -> cf.Executor:
    # loky's workers are spawned, never forked (forking a process running JAX's threads can
    # deadlock), do not re-run the user's __main__, and are reused between calls
    return loky.get_reusable_executor(max_workers=os.cpu_count() or 1)


def _as_executor(executor) -> cf.Executor:
    if hasattr(executor, "get_executor") and hasattr(executor, "gather"):  # a dask.distributed Client
        return executor.get_executor()
    if not isinstance(executor, cf.Executor):
        raise TypeError(
            f"executor must be a concurrent.futures.Executor or a dask.distributed.Client, got {type(executor).__name__}"
        )
    return executor


def _run_python(problem: Simulator, keys: jax.Array, theta: np.ndarray, executor: cf.Executor, offset: int):
    """Run a Python simulator once per row of θ on ``executor``; names the θ of any failure."""
    fn = _worker.dumps(problem.simulate)
    key_data = np.asarray(jax.random.key_data(keys))
    structured = [jax.tree.map(np.asarray, problem.prior.unflatten(row)) for row in theta]
    workers = getattr(executor, "_max_workers", None) or 4
    size = max(1, -(-len(theta) // (4 * workers)))  # a few batches per worker balances load and overhead
    batches = [range(i, min(i + size, len(theta))) for i in range(0, len(theta), size)]
    futures = [
        executor.submit(_worker.run_batch, fn, [key_data[i] for i in b], [structured[i] for i in b], b.start)
        for b in batches
    ]
    results = []
    for fut in futures:
        status, payload = fut.result()
        if status == "error":
            row, message = payload
            raise SimulationError(
                f"the simulator raised at simulation {offset + row} with "
                f"{_format_theta(problem.names, theta[row])}:\n{message}"
            )
        results.extend(payload)
    shapes = {np.shape(r) for r in results}
    if len(shapes) > 1:
        raise SimulationError(f"the simulator returned x of different shapes {sorted(shapes)}; x must have a fixed shape")
    first = results[0]  # the worker made it an array: a 0-d one holds what the simulator returned
    return _numeric(np.stack(results), first.item() if first.ndim == 0 else first), {}


def _numeric(x, returned) -> np.ndarray:
    """x as a numeric NumPy array; anything else (None, a dict, text), named by what the simulator
    ``returned``, fails here rather than as an indexing error or in a network's first layer."""
    if isinstance(x, (np.ndarray, jax.Array)) and x.dtype.kind in "biuf":
        return np.asarray(x)
    what = type(returned).__name__ + (f" (dtype {x.dtype})" if isinstance(x, (np.ndarray, jax.Array)) and x.dtype != object else "")
    raise SimulationError(
        f"the simulator returned {what}; simulate(key, theta) must return x as one numeric array (float, int or bool) of fixed shape"
    )


def _check_finite(x: np.ndarray, theta: np.ndarray, names, policy: str, offset: int, what: str = "") -> np.ndarray:
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1) if np.issubdtype(x.dtype, np.inexact) else np.ones(len(x), bool)
    if policy == "raise" and not finite.all():
        bad = np.flatnonzero(~finite)
        raise SimulationError(
            f"{bad.size} of {len(x)} simulations in this chunk returned NaN or inf{' ' + what if what else ''}, first simulation "
            f"{offset + int(bad[0])} with {_format_theta(names, theta[bad[0]])}; "
            "pass on_invalid='drop' to discard such simulations or 'keep' to keep them"
        )
    return finite if policy == "drop" else np.ones(len(x), bool)


def _check_augment(problem, augment, theta_ref) -> tuple[tuple[str, ...], list | None]:
    """Validated ``augment`` names (sorted) and θ_ref as a list (hashable for the compiled simulator, JSON for the store)."""
    augment = (augment,) if isinstance(augment, str) else augment
    if not (augment is None or isinstance(augment, (tuple, list)) and all(isinstance(a, str) for a in augment)):
        raise ValueError(f"augment must be 'score', 'ratio' or a tuple of them, got {augment!r}")
    augment = tuple(augment or ())
    unknown = sorted(set(augment) - set(_augment.AUGMENTS))
    if unknown:
        raise ValueError(f"augment may hold {list(_augment.AUGMENTS)}, got {unknown}")
    if not augment:
        if theta_ref is not None:
            raise ValueError("theta_ref goes with augment=('ratio',)")
        return (), None
    if not isinstance(problem, Program):
        raise ProblemError("augment needs a Program: a black-box Simulator has no joint density to differentiate")
    _augment.check_scorable(problem)
    if "ratio" in augment:
        if theta_ref is None:
            raise ValueError("augment=('ratio',) needs theta_ref, the (d,) parameters the joint ratio is taken against")
        theta_ref = [float(v) for v in check_point(problem.prior, theta_ref, what="theta_ref")]
    elif theta_ref is not None:
        raise ValueError("theta_ref goes with augment=('ratio',); the score needs none")
    return tuple(sorted(augment)), theta_ref


def _settings(problem, n, key, theta, proposal, chunk_size, keep_latents, on_invalid, augment=(), theta_ref=None) -> dict[str, Any]:
    extra = {"augment": list(augment), "theta_ref": theta_ref} if augment else {}  # stores written before augment stay valid
    return {
        **extra,
        "version": 1,
        "problem": f"{type(problem).__name__}:{problem.name}",
        "code": code_fingerprint(problem.model if isinstance(problem, Program) else problem.simulate),
        "prior": fingerprint_of(problem.prior.distributions),
        "names": list(problem.names),
        "n": n,
        "chunk_size": chunk_size,
        "key": np.asarray(jax.random.key_data(key)).tolist(),
        "theta": None if theta is None else fingerprint_of(np.asarray(theta)),
        "proposal": None if proposal is None else fingerprint_of(proposal),
        "keep_latents": keep_latents,
        "on_invalid": on_invalid,
    }


def simulate(
    problem: Simulator | Program,
    n: int | None = None,
    *,
    key: jax.Array,
    theta: jax.Array | None = None,
    proposal: Any = None,
    store: str | Path | None = None,
    executor: Any = None,
    chunk_size: int = 1000,
    on_invalid: str = "raise",
    keep_latents: bool = False,
    augment: tuple[str, ...] | str = (),
    theta_ref=None,
    progress: bool = True,
) -> Simulations:
    """Simulate ``n`` pairs (θ, x).

    Args:
        problem: a `Simulator` or `Program`.
        n: number of simulations (omit when ``theta`` is given).
        key: a ``jax.random`` key; the same key and settings give the same simulations.
        theta: optional ``(n, d)`` parameters to simulate at instead of drawing them.
        proposal: optional distribution to draw θ from instead of the prior: anything with
            ``sample(key, sample_shape) -> (*sample_shape, d)``; draws outside the prior's
            support are an error.
        store: optional path of a zarr store; chunks are appended as they finish and an
            interrupted run started again with the same arguments resumes where it stopped.
        executor: for Python (non-JAX) simulators, a ``concurrent.futures.Executor`` or a
            ``dask.distributed.Client``; a local process pool when omitted. JAX simulators run
            jitted and vmapped in this process.
        chunk_size: rows per chunk (the unit of vectorisation, storage and resumption).
        on_invalid: what to do with x containing NaN or inf: ``"raise"``, ``"drop"`` (with a
            warning giving the count) or ``"keep"``.
        keep_latents: for a `Program`, also return the latents z in ``extras["z"]`` ``(n, d_z)``.
        augment: for a `Program`, joint quantities to compute from each simulation's (x, z) at its
            θ ("mining gold", `galton.augment`): ``"score"`` gives ``extras["score"]`` ``(n, d)``,
            t(x, z|θ) = ∇θ log p(x, z|θ); ``"ratio"`` gives ``extras["log_ratio"]`` ``(n,)``,
            log p(x, z|θ) − log p(x, z|θ_ref).
        theta_ref: ``(d,)`` reference parameters for ``"ratio"``, inside the prior's support.
        progress: show a progress bar.

    Returns:
        `Simulations` with ``theta (n, d)`` and ``x (n, *event_shape)`` (fewer rows with ``"drop"``).
    """
    if not isinstance(problem, (Simulator, Program)):
        raise ProblemError(f"problem must be a galton Simulator or Program, got {type(problem).__name__}")
    key = as_key(key)
    if on_invalid not in POLICIES:
        raise ValueError(f"on_invalid must be one of {POLICIES}, got {on_invalid!r}")
    if keep_latents and not isinstance(problem, Program):
        raise ProblemError("keep_latents needs a Program: a black-box Simulator has no latents to return")
    augment, theta_ref = _check_augment(problem, augment, theta_ref)
    if theta is not None:
        if proposal is not None:
            raise ValueError("give either theta or proposal, not both")
        theta = np.asarray(check_theta(problem.prior, theta))
        if n is not None and n != len(theta):
            raise ValueError(f"n={n} but theta has {len(theta)} rows")
        n = len(theta)
    n = check_count(n, "n", what="simulations")
    chunk_size = min(check_count(chunk_size, "chunk_size"), n)
    n_chunks = -(-n // chunk_size)
    draw = (proposal if proposal is not None else problem.prior).sample

    disk = None
    if store is not None:
        settings = _settings(problem, n, key, theta, proposal, chunk_size, keep_latents, on_invalid, augment, theta_ref)
        disk = SimulationStore.open_or_create(store, settings)
    done = disk.done_chunks() if disk is not None else np.zeros(n_chunks, bool)

    if problem.backend == "python":
        pool = _default_executor() if executor is None else _as_executor(executor)
    parts: list[Simulations] = []
    n_done = int(sum(min(chunk_size, n - i * chunk_size) for i in np.flatnonzero(done)))
    bar = Progress(n, initial=n_done, unit="sim", desc=f"simulating {problem.name}", enabled=progress)
    x_shape = None
    try:
        for i in np.flatnonzero(~done):
            start, stop = i * chunk_size, min((i + 1) * chunk_size, n)
            key_theta, key_sim = jax.random.split(jax.random.fold_in(key, int(i)))
            keys = jax.random.split(key_sim, chunk_size)
            if theta is None:
                th = np.asarray(draw(key_theta, (chunk_size,)))
                th = np.asarray(check_theta(problem.prior, th, what="proposal draws"))
            else:
                # pad the last chunk to the full size so the jitted simulator compiles once
                th = theta[np.minimum(np.arange(start, start + chunk_size), n - 1)]
            if problem.backend == "jax":
                x, extras = _batched(problem, keep_latents, augment, None if theta_ref is None else tuple(theta_ref))(keys, jnp.asarray(th))
                x, extras = _numeric(x, x), {k: np.asarray(v) for k, v in extras.items()}
                rows = stop - start
                th, x, extras = th[:rows], x[:rows], {k: v[:rows] for k, v in extras.items()}
            else:
                th = th[: stop - start]
                x, extras = _run_python(problem, keys[: stop - start], th, pool, start)
            if x_shape is not None and x.shape[1:] != x_shape:  # chunks apart: one run's shapes, not the store's
                raise SimulationError(
                    f"the simulator returned x of shape {x.shape[1:]} in simulations {start} to {stop - 1}, "
                    f"but of shape {x_shape} in earlier ones; x must have a fixed shape"
                )
            x_shape = x.shape[1:]
            valid = _check_finite(x, th, problem.names, on_invalid, start)
            for name in ("score", "log_ratio"):
                if name in extras:
                    valid &= _check_finite(extras[name], th, problem.names, on_invalid, start, what=f"joint {name.replace('_', ' ')}s")
            if disk is not None:
                disk.write_chunk(int(i), {"theta": th, "x": x, "valid": valid, **{f"extra_{k}": v for k, v in extras.items()}})
            else:
                kept = {k: v[valid] for k, v in extras.items()}
                parts.append(Simulations(th[valid], x[valid], kept, problem.names, int((~valid).sum())))
            bar.update(stop - start)
    finally:
        bar.close()

    result = simulations_from_store(disk) if disk is not None else Simulations.concatenate(parts)
    if result.n_dropped:
        warnings.warn(f"dropped {result.n_dropped} of {n} simulations whose x had NaN or inf", stacklevel=2)
    return result
