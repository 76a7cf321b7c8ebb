"""The `Posterior` protocol every method returns, and saving and loading any kind.

A posterior over flat θ ``(d,)`` with named columns offers ``sample``, ``log_prob``,
``condition`` (for amortized kinds), ``to_arviz`` and ``save`` / `load`. Samples and
densities are in the parameters' original space.

Saved posteriors are a directory holding ``posterior.json`` (kind, names, settings) and
``arrays.npz``. A kind registers itself by defining ``kind``; `load` reads the kind from the file.
"""

from __future__ import annotations

import abc
import importlib
import json
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from galton.checks import check_count
from galton.keys import as_key
from galton.problem import ProblemError

FORMAT_VERSION = 1
_KINDS: dict[str, type["Posterior"]] = {}


class PosteriorFileError(ValueError):
    """A directory `load` cannot read as a saved posterior, or a path `save` cannot write to."""


class Posterior(abc.ABC):
    """A distribution over flat parameters θ ``(d,)``, with one name per column.

    Attributes:
        names: the flat parameter names, ``len(names) == d``.
        x_obs: the observation a non-amortized posterior was fitted to (None if amortized).
    """

    kind: ClassVar[str] = ""
    amortized: ClassVar[bool] = False
    names: list[str]
    x_obs: np.ndarray | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.kind:
            _KINDS[cls.kind] = cls

    @property
    def dim(self) -> int:
        return len(self.names)

    @abc.abstractmethod
    def sample(self, n: int, *, key: jax.Array, x=None) -> jax.Array:
        """``n`` draws ``(n, d)`` of θ given x (given the fitted observation when not amortized)."""

    @abc.abstractmethod
    def log_prob(self, theta, x=None) -> jax.Array:
        """log p(θ | x) for θ ``(n, d)`` -> ``(n,)`` (or ``(d,)`` -> scalar)."""

    def condition(self, x) -> "Posterior":
        """This posterior given observation ``x``: a conditioned copy for amortized kinds.

        A non-amortized posterior is returned unchanged for its own observation and
        refuses any other.
        """
        self._check_x(x)
        return self

    def _check_x(self, x) -> None:
        if self.amortized or x is None or self.x_obs is None:
            return
        x = np.asarray(x)
        name = type(self).__name__
        if x.shape != self.x_obs.shape:
            raise ValueError(
                f"this {name} was fitted to one observation of shape {self.x_obs.shape} and cannot be "
                f"conditioned on x of shape {x.shape}; it is not amortized: fit it again to the new x"
            )
        if not np.allclose(x, self.x_obs):
            gap = np.abs(np.asarray(x, np.float64) - np.asarray(self.x_obs, np.float64)).max()
            raise ValueError(
                f"this {name} was fitted to one observation and x differs from it (same shape {x.shape}, "
                f"values apart by up to {gap:.3g}); it is not amortized: fit it again to the new x"
            )

    def to_arviz(self, *, n: int = 1000, key: jax.Array | None = None):
        """``n`` draws as an ArviZ ``InferenceData`` with one variable per flat name.

        ``key`` defaults to ``jax.random.key(0)``, so the same posterior gives the same draws.
        """
        draws = np.asarray(self.sample(check_draws(n), key=jax.random.key(0) if key is None else as_key(key)))
        return samples_to_arviz(draws, self.names)

    # ---- saving -------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-able settings, arrays) from which `_from_state` rebuilds this object."""
        raise NotImplementedError

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "Posterior":
        raise NotImplementedError

    def save(self, path) -> Path:
        """Write to the directory ``path`` (created if missing); `load` reads it back."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise PosteriorFileError(f"cannot save a posterior to {path}: it is an existing file, and a saved posterior is a directory")
        path.mkdir(parents=True, exist_ok=True)
        meta, arrays = self._state()
        header = {"format": FORMAT_VERSION, "kind": self.kind, "module": type(self).__module__, "names": list(self.names), **meta}
        if self.x_obs is not None:
            arrays = {**arrays, "x_obs": np.asarray(self.x_obs)}
        np.savez(path / "arrays.npz", **arrays)
        (path / "posterior.json").write_text(json.dumps(header, indent=1))
        return path

    @classmethod
    def load(cls, path) -> "Posterior":
        """Read a posterior written by `save` (any kind; see the module-level `load`)."""
        return load(path)


def check_draws(n) -> int:
    """The number of draws ``n`` as an int: a positive integer (Python, NumPy or a JAX scalar)."""
    return check_count(n, "n", what="draws")


def check_theta_width(theta, d: int) -> tuple[jax.Array, bool]:
    """θ ``(..., d)`` as a JAX array, and whether it was one point ``(d,)``; any other width is a
    `ProblemError` naming θ's shape. Only the shape is checked, so this works under jit."""
    theta = jnp.asarray(theta)
    if theta.ndim == 0 or theta.shape[-1] != d:
        raise ProblemError(f"theta has shape {theta.shape}; this posterior has {d} parameters: expected ({d},) or (..., {d})")
    return theta, theta.ndim == 1


def samples_to_arviz(samples, names: Sequence[str]):
    """Samples ``(n, d)`` (one chain) or ``(chains, n, d)`` as an ArviZ ``InferenceData``, one variable per name."""
    with warnings.catch_warnings():  # ArviZ 0.23 announces its coming 1.0 on import, to every user of ours
        warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning)
        import arviz as az

    draws = np.asarray(samples)
    draws = draws[None] if draws.ndim == 2 else draws
    if draws.ndim != 3 or draws.shape[-1] != len(names):
        raise ValueError(f"samples must be (n, {len(names)}) or (chains, n, {len(names)}), got {np.shape(samples)}")
    return az.from_dict(posterior={name: draws[..., i] for i, name in enumerate(names)})


def load(path) -> Posterior:
    """Read a posterior saved with ``Posterior.save``; its kind is read from the file.

    Raises:
        PosteriorFileError: ``path`` holds no saved posterior, or a damaged or incomplete one.
    """
    path = Path(path)
    meta = _read_header(path)
    kind = meta["kind"]
    if kind not in _KINDS and str(meta.get("module", "")).startswith("galton."):
        try:  # the module defining the kind registers it (files from older galtons name moved modules)
            importlib.import_module(meta["module"])
        except ModuleNotFoundError:
            pass
    if kind not in _KINDS:
        raise PosteriorFileError(f"{path} holds a posterior of unknown kind {kind!r}; known kinds: {sorted(_KINDS)}")
    arrays = _read_arrays(path)
    x_obs = arrays.pop("x_obs", None)
    try:
        posterior = _KINDS[kind]._from_state(meta, arrays)
    except KeyError as e:
        raise PosteriorFileError(f"{path} lacks {e}, which a saved {kind!r} posterior has; the files are incomplete") from e
    except (ValueError, TypeError, EOFError, pickle.UnpicklingError) as e:
        raise PosteriorFileError(f"{path} does not hold a valid {kind!r} posterior: {e}") from e
    posterior.x_obs = x_obs
    return posterior


def _read_header(path: Path) -> dict[str, Any]:
    header_file = path / "posterior.json"
    if not header_file.is_file():
        raise PosteriorFileError(f"{path} holds no saved posterior (no posterior.json)")
    try:
        meta = json.loads(header_file.read_text())
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise PosteriorFileError(f"{header_file} is not valid JSON ({e}); the saved posterior is damaged") from e
    if not isinstance(meta, dict):
        raise PosteriorFileError(f"{header_file} holds a JSON {type(meta).__name__}, not a posterior's header; the saved posterior is damaged")
    if meta.get("format") != FORMAT_VERSION:
        raise PosteriorFileError(f"{path} has posterior format {meta.get('format')}; this galton reads format {FORMAT_VERSION}")
    if "kind" not in meta:
        raise PosteriorFileError(f"{header_file} names no posterior kind (no 'kind' entry); the saved posterior is damaged")
    return meta


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    arrays_file = path / "arrays.npz"
    if not arrays_file.is_file():
        raise PosteriorFileError(f"{path} has posterior.json but no arrays.npz; the saved posterior is incomplete")
    try:
        with np.load(arrays_file) as f:
            return {k: f[k] for k in f.files}
    # numpy reads a file that is not a zip archive as a pickle, which it refuses: "allow_pickle" would mislead
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise PosteriorFileError(f"{arrays_file} is not a readable NumPy archive ({type(e).__name__}); the saved posterior is damaged") from e


__all__ = ["Posterior", "PosteriorFileError", "check_draws", "check_theta_width", "load", "samples_to_arviz"]
