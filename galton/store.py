"""Simulations in memory (`Simulations`) and on disk (`SimulationStore`, zarr).

A store is laid out in fixed chunks of rows. A chunk's rows are written first and its
``done`` flag after, so a run killed at any moment leaves only whole chunks marked done;
starting the same run again simulates just the chunks that are not.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
import zarr

FORMAT_VERSION = 1


class StoreMismatchError(ValueError):
    """A store on disk was written by a different problem or with different settings."""


@dataclass(frozen=True)
class Simulations:
    """Pairs (θ, x) and optional extra arrays aligned with them, as NumPy arrays.

    Attributes:
        theta: ``(n, d)`` parameters.
        x: ``(n, *event_shape)`` simulated data.
        extras: ``{name: (n, ...)}``, e.g. ``"z"`` latents or joint scores.
        names: flat parameter names, one per column of θ.
        n_dropped: simulations removed by the ``"drop"`` policy for non-finite x.
    """

    theta: np.ndarray
    x: np.ndarray
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)
    names: list[str] | None = None
    n_dropped: int = 0

    def __post_init__(self):
        n = len(self.theta)
        for label, arr in {"x": self.x, **{f"extras[{k!r}]": v for k, v in self.extras.items()}}.items():
            if len(arr) != n:
                raise ValueError(f"{label} has {len(arr)} rows but theta has {n}")

    def __len__(self) -> int:
        return len(self.theta)

    def __getitem__(self, index) -> "Simulations":
        """Rows by slice, integer array or boolean mask."""
        return Simulations(
            self.theta[index], self.x[index], {k: v[index] for k, v in self.extras.items()}, self.names
        )

    @staticmethod
    def concatenate(parts: list["Simulations"]) -> "Simulations":
        """Stack simulations of the same problem."""
        if not parts:
            raise ValueError("nothing to concatenate")
        return Simulations(
            np.concatenate([p.theta for p in parts]),
            np.concatenate([p.x for p in parts]),
            {k: np.concatenate([p.extras[k] for p in parts]) for k in parts[0].extras},
            parts[0].names,
            sum(p.n_dropped for p in parts),
        )

    def __repr__(self) -> str:
        extras = "".join(f", {k}={v.shape}" for k, v in self.extras.items())
        return f"Simulations(n={len(self)}, theta={self.theta.shape}, x={self.x.shape}{extras})"


def fingerprint_of(obj: Any) -> str:
    """A stable hash of an object's type and array contents (JAX PyTree leaves), for store checks."""
    h = hashlib.sha256(f"{type(obj).__module__}.{type(obj).__qualname__}".encode())
    digests = []
    for leaf in jax.tree.leaves(obj):
        if isinstance(leaf, (np.ndarray, jax.Array, float, int, bool, np.generic)):
            arr = np.ascontiguousarray(np.asarray(leaf))
            digests.append(hashlib.sha256(str(arr.shape).encode() + arr.tobytes()).hexdigest())
    # some PyTrees (NumPyro distributions) flatten in an order that varies between processes
    for d in sorted(digests):
        h.update(d.encode())
    return h.hexdigest()[:16]


def code_fingerprint(fn) -> str | None:
    """A stable hash of a simulator's code, so a store is matched on what simulates rather than on a
    name (every lambda is ``"<lambda>"``): the bytecode, constants and names of ``fn`` and of the
    functions nested in it, with the plain values (numbers, text, arrays) its closure, defaults and
    ``functools.partial`` arguments hold. None for a callable with no Python code to read."""
    h = hashlib.sha256()
    return h.hexdigest()[:16] if _hash_callable(h, fn, set()) else None


def _hash_callable(h, fn, seen: set) -> bool:
    if id(fn) in seen:  # (a recursive closure)
        return True
    seen.add(id(fn))
    fn = inspect.unwrap(fn)  # jax.jit and functools.wraps keep the Python function as __wrapped__
    if isinstance(fn, functools.partial):
        _hash_values(h, fn.args, fn.keywords, seen)
        return _hash_callable(h, fn.func, seen)
    fn = getattr(fn, "__func__", fn)  # a bound method: its function
    code = getattr(fn, "__code__", None)
    if code is None:  # a callable object: its class and name, and the code of its __call__
        h.update(f"{type(fn).__module__}.{type(fn).__qualname__}:{getattr(fn, '__qualname__', '')}".encode())
        call = getattr(type(fn), "__call__", None)
        return getattr(call, "__code__", None) is not None and _hash_callable(h, call, seen)
    _hash_code(h, code)
    _hash_values(h, (*_cell_values(fn), *(fn.__defaults__ or ())), fn.__kwdefaults__ or {}, seen)
    return True


def _cell_values(fn):
    for cell in fn.__closure__ or ():
        try:
            yield cell.cell_contents
        except ValueError:  # a cell not filled yet
            continue


def _hash_code(h, code: types.CodeType) -> None:
    h.update(code.co_code + repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):  # a nested function or comprehension (its repr holds an address)
            _hash_code(h, const)
        elif isinstance(const, frozenset):  # its order follows string hashing, which varies between processes
            h.update(repr(sorted(map(repr, const))).encode())
        else:
            h.update(repr(const).encode())


def _hash_values(h, values, keywords: Mapping[str, Any], seen: set) -> None:
    """Closure, default or partial values: plain ones by content, functions by their code, others by type."""
    for name, value in [*((None, v) for v in values), *sorted(keywords.items())]:
        h.update(repr(name).encode())
        if isinstance(value, (type(None), bool, int, float, complex, str, bytes)):
            h.update(repr(value).encode())
        elif isinstance(value, (np.ndarray, np.generic, jax.Array)) and (data := _array_bytes(value)) is not None:
            h.update(data)
        elif callable(value) and not isinstance(value, type):
            _hash_callable(h, value, seen)
        else:
            h.update(f"{type(value).__module__}.{type(value).__qualname__}".encode())


def _array_bytes(value) -> bytes | None:
    try:
        arr = np.ascontiguousarray(np.asarray(value))
    except TypeError:  # a JAX key array, which has no NumPy form
        return None
    return None if arr.dtype == object else f"{arr.dtype}{arr.shape}".encode() + arr.tobytes()


def _difference(key: str, stored, now) -> str:
    """What a difference in one of a store's settings means, in words (most of them are hashes)."""
    if key in ("theta", "proposal") and (stored is None) != (now is None):
        given, drawn = ("this run", "the store") if stored is None else ("the store", "this run")
        return f"{given} gives the parameters theta to simulate at where {drawn} draws them" if key == "theta" else \
            f"{given} draws theta from a proposal where {drawn} draws from the prior or takes theta as given"
    words = {
        "code": "the simulator's code changed since the store was written, so its simulations are of the old code",
        "problem": f"the store holds simulations of {stored}, this run's problem is {now}",
        "prior": "the prior differs from the one the store was made with",
        "names": f"the store's parameters are {stored}, this run's {now}",
        "n": f"the store holds {stored} simulations, this run asks for {now}",
        "chunk_size": f"the store is cut into chunks of {stored} simulations, this run into chunks of {now}",
        "key": "the random key differs from the one the store was made with",
        "theta": "the parameters theta to simulate at differ from those the store was made for",
        "proposal": "the proposal theta is drawn from differs from the one the store was made with",
    }
    return words.get(key, f"{key} was {stored!r} when the store was written, and is {now!r} now")


def _mismatch(path: Path, stored: dict, now: dict) -> str:
    keys = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))
    reasons = "; ".join(_difference(k, stored.get(k), now.get(k)) for k in keys)
    if keys == ["code"]:
        return f"the store at {path} cannot be resumed: {reasons}; simulate into a new store directory (or delete this one)"
    why = ""
    if "key" not in keys and ("n" in keys or "theta" in keys and None not in (stored["theta"], now["theta"])):  # changed upstream
        why = (" (in a multi-round or SMC-ABC run these follow from the earlier rounds, so a different "
               "observation x_o, training or method settings changes them)")
    return (f"the store at {path} was written by a different run: {reasons}{why}; "
            "use a new store directory, or the same problem, key and settings to resume")


class SimulationStore:
    """A zarr group holding one simulation run of ``n`` rows in chunks of ``chunk_size``.

    Open with `SimulationStore.open_or_create`; `settings` identify the run, and opening an
    existing store with different settings raises `StoreMismatchError`.
    """

    def __init__(self, group: zarr.Group, settings: dict):
        self.group = group
        self.settings = settings
        self.n = settings["n"]
        self.chunk_size = settings["chunk_size"]
        self.n_chunks = -(-self.n // self.chunk_size)

    @classmethod
    def open_or_create(cls, path: str | Path, settings: dict) -> "SimulationStore":
        settings = json.loads(json.dumps(settings))  # what comes back from disk is JSON too
        path = Path(path)
        if path.exists():
            try:
                group = zarr.open_group(str(path), mode="r+")
            except Exception as err:
                raise StoreMismatchError(f"{path} exists but is not a galton simulation store: {err}") from err
            stored = dict(group.attrs).get("galton")
            if stored is None:
                raise StoreMismatchError(f"{path} is a zarr group but not a galton simulation store")
            if "code" not in stored:  # written before simulators were fingerprinted: matched on the rest
                stored = {**stored, "code": settings.get("code")}
            if stored != settings:
                raise StoreMismatchError(_mismatch(path, stored, settings))
            return cls(group, settings)
        group = zarr.open_group(str(path), mode="w")
        group.attrs["galton"] = settings
        n_chunks = -(-settings["n"] // settings["chunk_size"])
        # one flag per zarr chunk: a missing chunk file reads as 0, so a flag is never half written
        group.create_array("done", shape=(n_chunks,), chunks=(1,), dtype="int8", fill_value=0)
        return cls(group, settings)

    def done_chunks(self) -> np.ndarray:
        """Boolean ``(n_chunks,)``: which chunks are complete."""
        return self.group["done"][:].astype(bool)

    def _ensure_array(self, name: str, sample: np.ndarray) -> zarr.Array:
        if name not in self.group:
            shape = (self.n, *sample.shape[1:])
            chunks = (self.chunk_size, *sample.shape[1:])
            return self.group.create_array(name, shape=shape, chunks=chunks, dtype=sample.dtype, fill_value=0)
        arr = self.group[name]
        if arr.shape[1:] != sample.shape[1:] or arr.dtype != sample.dtype:
            raise StoreMismatchError(
                f"store array {name!r} holds rows of shape {arr.shape[1:]} {arr.dtype}, "
                f"the simulator now returns {sample.shape[1:]} {sample.dtype}"
            )
        return arr

    def write_chunk(self, index: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write the rows of chunk ``index`` (every array ``(rows, ...)``), then mark it done."""
        start = index * self.chunk_size
        for name, values in arrays.items():
            arr = self._ensure_array(name, values)
            arr[start : start + len(values)] = values
        self.group["done"][index] = 1

    def read(self) -> dict[str, np.ndarray]:
        """All arrays, restricted to the rows of completed chunks."""
        done = np.repeat(self.done_chunks(), self.chunk_size)[: self.n]
        return {name: arr[:][done] for name, arr in self.group.arrays() if name != "done"}


def round_store(store, r: int) -> Path | None:
    """Where round ``r`` of a multi-round run keeps its simulations: ``store/round_r`` (None without a store)."""
    return None if store is None else Path(store) / f"round_{r}"


def load_simulations(path: str | Path) -> Simulations:
    """Read the completed rows of a store written by `galton.simulate` into memory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no simulation store at {path}")
    group = zarr.open_group(str(path), mode="r")
    settings = dict(group.attrs).get("galton")
    if settings is None:
        raise StoreMismatchError(f"{path} is not a galton simulation store")
    return simulations_from_store(SimulationStore(group, settings))


def simulations_from_store(store: SimulationStore) -> Simulations:
    """The valid rows of the completed chunks of ``store``."""
    arrays = store.read()
    if "theta" not in arrays:
        d = len(store.settings["names"])
        return Simulations(np.zeros((0, d), np.float32), np.zeros((0,), np.float32), {}, store.settings["names"])
    valid = arrays.pop("valid").astype(bool)
    theta, x = arrays.pop("theta"), arrays.pop("x")
    extras = {k.removeprefix("extra_"): v[valid] for k, v in arrays.items()}
    return Simulations(theta[valid], x[valid], extras, store.settings["names"], int((~valid).sum()))
