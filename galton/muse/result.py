"""What MUSE returns: `MuseResult` (a Gaussian posterior plus the run's record), its history
entries (`_record`, `_record_breakdown`), and `MuseError`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from galton.muse import solvers
from galton.muse.kernels import Rows
from galton.posteriors import GaussianPosterior
from galton.transforms import ElementwiseBijection


class MuseError(RuntimeError):
    """MUSE met values it cannot continue from (non-finite scores, a singular J)."""


class MuseResult(GaussianPosterior):
    """MUSE's estimate: a Gaussian posterior N(θ̂, Σ) in unconstrained θ, plus the run's record.

    As a `Posterior`, ``sample`` draws u ~ N(θ̂, Σ) in unconstrained space and returns
    them mapped to the parameters' support (the identity for unbounded parameters).

    Attributes:
        theta: θ̂ in the original space and the user's structure (a dict of arrays, an
            array, or the PyTree of a `HierarchicalModel`).
        theta_flat: ``(d,)`` θ̂ in the original space.  std: ``(d,)`` standard deviations in
            the original space (delta method through the bijection).
        loc, cov: ``(d,)`` θ̂ and ``(d, d)`` Σ in unconstrained space.
        J: ``(d, d)`` covariance of the simulations' scores.  H: ``(d, d)`` Jacobian of the
            expected score, ``H[a, b] = d⟨s_a⟩/dθ_b``.  H_prior: ``(d, d)`` −∇² log p(θ̂).
        theta_evaluated: ``(d,)`` the unconstrained θ at which the last MAPs, J and H were
            computed (θ̂ is this plus the last Newton step, of at most 0.1 σ when converged).
        history: one dict per iteration (θ, step in σ, MAP iterations and failures, time).
        nsims, converged, iterations, time_s, n_gradient_evaluations, n_hessian_vector_products.
        scores: ``(nsims, d)`` the simulations' scores at ``theta_evaluated``.
        z_map: ``(1 + nsims, n_z)`` the MAPs (data first) in unconstrained latent space.
    """

    kind = "muse"

    def __init__(self, loc, cov, names, bijection, x_obs, **record):
        super().__init__(loc, cov, names, bijection, x_obs)
        self.J, self.H, self.H_prior = (np.asarray(record.pop(k)) for k in ("J", "H", "H_prior"))
        self.theta_evaluated = np.asarray(record.pop("theta_evaluated"))
        self.scores = np.asarray(record.pop("scores"))
        self.z_map = np.asarray(record.pop("z_map"))
        self.key_data = np.asarray(record.pop("key_data"))
        self.history: list[dict[str, Any]] = list(record.pop("history"))
        self.nsims: int = int(record.pop("nsims"))
        self.converged: bool = bool(record.pop("converged"))
        self.time_s: float = float(record.pop("time_s"))
        self.n_gradient_evaluations: int = int(record.pop("n_gradient_evaluations"))
        self.n_hessian_vector_products: int = int(record.pop("n_hessian_vector_products"))
        self.jacobian: str = record.pop("jacobian")
        self.problem_name: str = record.pop("problem_name")
        self._unflatten = record.pop("unflatten", None)
        if record:
            raise TypeError(f"unexpected fields {sorted(record)}")

    @property
    def iterations(self) -> int:
        return len(self.history)

    @property
    def theta_flat(self) -> np.ndarray:
        return np.asarray(self.bijection.forward(np.asarray(self.loc, np.float64)), np.float64)

    @property
    def theta(self):
        """θ̂ in the user's structure (after `load`, a dict of flat names)."""
        if self._unflatten is not None:
            return self._unflatten(self.theta_flat)
        return dict(zip(self.names, self.theta_flat.tolist()))

    @property
    def std(self) -> np.ndarray:
        return np.abs(self.bijection.jacobian_diagonal(self.loc)) * self.std_unconstrained

    @property
    def key(self) -> jax.Array:
        return jax.random.wrap_key_data(jnp.asarray(self.key_data))

    def _state(self):
        meta, arrays = super()._state()
        meta = {
            **meta, "history": self.history, "nsims": self.nsims, "converged": self.converged, "time_s": self.time_s,
            "n_gradient_evaluations": self.n_gradient_evaluations,
            "n_hessian_vector_products": self.n_hessian_vector_products,
            "jacobian": self.jacobian, "problem_name": self.problem_name,
        }
        arrays = {
            **arrays, "J": self.J, "H": self.H, "H_prior": self.H_prior, "theta_evaluated": self.theta_evaluated,
            "scores": self.scores, "z_map": self.z_map, "key_data": self.key_data,
        }
        return meta, arrays

    @classmethod
    def _from_state(cls, meta, arrays):
        record = {k: meta[k] for k in ("history", "nsims", "converged", "time_s", "n_gradient_evaluations",
                                       "n_hessian_vector_products", "jacobian", "problem_name")}
        record.update({k: arrays[k] for k in ("J", "H", "H_prior", "theta_evaluated", "scores", "z_map", "key_data")})
        return cls(arrays["loc"], arrays["cov"], meta["names"], ElementwiseBijection.from_dict(meta["bijection"]), None, **record)

    def __repr__(self) -> str:
        state = f"converged in {self.iterations} iterations" if self.converged else f"NOT converged after {self.iterations} iterations"
        lines = [f"MuseResult({self.problem_name}: {self.nsims} simulations, {state}, {self.time_s:.3g} s)"]
        width = max(len(n) for n in self.names)
        for name, value, sd in zip(self.names, self.theta_flat, self.std):
            lines.append(f"  {name:<{width}} = {value:.4g} ± {sd:.2g}")
        if not self.bijection.is_identity:
            lines.append("  (± by the delta method; the Gaussian lives in unconstrained space)")
        return "\n".join(lines)


def _record(model, u, s_post, distance, kind, rows: Rows, failed, seconds) -> dict[str, Any]:
    """The history entry of one iteration."""
    status, counts = np.unique(rows.status, return_counts=True)
    return {
        "theta": model.bijection.forward(u).tolist(),
        "theta_unconstrained": u.tolist(),
        "score": s_post.tolist(),
        "step_sigma": distance,
        "newton": kind,
        "map_iterations_max": int(rows.iterations.max()),
        "map_iterations_mean": float(rows.iterations.mean()),
        "map_gradient_evaluations": int(rows.evaluations.sum()),
        "map_failed": np.flatnonzero(failed).tolist(),
        "map_status": {solvers.STATUS_NAMES[int(c)]: int(n) for c, n in zip(status, counts)},
        "time_s": seconds,
    }


def _record_breakdown(model, u, bad, seconds) -> dict[str, Any]:
    """The history entry of an iteration whose scores were not finite at rows ``bad``."""
    return {
        "theta": model.bijection.forward(u).tolist(), "theta_unconstrained": u.tolist(), "score": None,
        "step_sigma": None, "newton": "non-finite scores, retreat", "map_iterations_max": None,
        "map_iterations_mean": None, "map_gradient_evaluations": None, "map_failed": bad.tolist(),
        "map_status": None, "time_s": seconds,
    }


__all__ = ["MuseResult", "MuseError"]
