"""Inference compilation (Le, Baydin & Wood 2017) for a `Program`: an amortized proposal
q(θ, z | x), a conditional flow over θ and every continuous latent in unconstrained space,
trained by maximum likelihood on the program's own joint simulations (θ, z, x); then, at x_o,

- importance sampling: w = p(x_o, z, θ) p(θ) |J| / q(u | x_o), self-normalised, with Kish's
  ESS and the Pareto k̂ of PSIS (ArviZ) in ``posterior.info``; or
- an independence Metropolis–Hastings chain with q as its proposal (``sampler="mh"``).

Both are exact as the number of draws grows, whatever q learned: q only sets the efficiency,
and k̂ > 0.7 says the weights cannot be trusted.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from galton.flows import conditional_flow
from galton.methods.base import register, require_program
from galton.methods.npe import maximum_likelihood_loss
from galton.methods.nuts import _discrete_latents
from galton.posteriors import SamplesPosterior
from galton.problem import ProblemError, Program
from galton.simulate import simulate
from galton.train import Training, train

SAMPLERS = ("importance", "mh")


def _unconstrained(program: Program, theta: np.ndarray, z: np.ndarray) -> np.ndarray:
    """[u_θ, u_z] ``(n, d + d_z)`` for θ ``(n, d)`` and flat latents z ``(n, d_z)``."""
    u_theta = program.prior.to_unconstrained(jnp.asarray(theta))
    if not program.latents.dim:
        return np.asarray(u_theta)
    u_z = program.latents.flatten(program.latents_to_unconstrained(program.latents.unflatten(jnp.asarray(z))))
    return np.asarray(jnp.concatenate([u_theta, u_z], -1))


def _log_target(program: Program, x: jax.Array, u: jax.Array) -> jax.Array:
    """log p(x, z, θ) + log |d(θ, z)/du| for one u ``(d + d_z,)``."""
    d = program.prior.dim
    u_theta, u_z = u[:d], u[d:]
    theta = program.prior.to_constrained(u_theta)
    log_prior = program.prior.log_prob(theta) + program.prior.log_abs_det_jacobian(u_theta)
    z = program.latents.unflatten(u_z) if program.latents.dim else {}
    return program.log_joint_unconstrained(x, z, theta) + log_prior


@register("ic")
@dataclass(frozen=True)
class IC:
    """Settings of inference compilation.

    Attributes:
        draws: proposals drawn at x_o (importance) or chain length (mh).
        sampler: ``"importance"`` or ``"mh"`` (independence Metropolis–Hastings).
        flow, transforms, hidden, bins: the proposal flow (a neural spline flow by default).
        embedding: a `galton.nets` module for x.
        training: `Training` settings.
        max_pareto_k: above this k̂ the importance sampler warns.
    """

    draws: int = 10_000
    sampler: str = "importance"
    flow: str = "nsf"
    transforms: int = 5
    hidden: int = 64
    bins: int = 8
    embedding: eqx.Module | None = None
    training: Training = field(default_factory=lambda: Training(learning_rate=1e-3, batch_size=256))
    max_pareto_k: float = 0.7
    iid = False

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if int(self.draws) != self.draws or self.draws < 2:
            raise ValueError(f"draws must be an integer of at least 2, got {self.draws!r}")

    def fit(self, program: Program, sims, *, key, progress: bool = True):
        """Train q(u | x) on joint simulations with latents (``simulate(..., keep_latents=True)``)."""
        if "z" not in sims.extras and program.latents.dim:
            raise ProblemError("inference compilation trains on the latents too: simulate with keep_latents=True")
        u = _unconstrained(program, sims.theta, sims.extras.get("z", np.zeros((len(sims), 0))))
        x = sims.x.reshape(len(sims), -1)
        key_init, key_train = jax.random.split(key)
        model = conditional_flow(u, x, key=key_init, flow=self.flow, transforms=self.transforms, hidden=self.hidden,
                                 bins=self.bins, embedding=self.embedding)
        return train(model, maximum_likelihood_loss, (u, x), key=key_train, settings=self.training, names=["u", "x"], progress=progress)

    def run(self, problem, x_obs, *, key, budget, rounds=1, simulations=None, store=None, progress=True):
        """`galton.infer`'s path: ``budget`` joint simulations, one fit, then the sampler at ``x_obs``."""
        require_program(problem, "ic", rounds)
        discrete = _discrete_latents(problem)
        if discrete:
            raise ProblemError(
                f"latent site(s) {discrete} of {problem.name} are discrete; this proposal is a flow over continuous "
                "latents only (a categorical head for discrete ones is not built yet)"
            )
        key_sim, key_fit, key_draw = jax.random.split(key, 3)
        sims = simulations if simulations is not None else simulate(problem, budget, key=key_sim, keep_latents=True, store=store, progress=progress)
        start = time.perf_counter()
        flow, history = self.fit(problem, sims, key=key_fit, progress=progress)
        fit_s = time.perf_counter() - start
        return self.sample(problem, flow, x_obs, key=key_draw, history=history, fit_seconds=fit_s)

    def sample(self, program: Program, flow, x_obs, *, key, history=None, fit_seconds=None) -> SamplesPosterior:
        """Importance-sample (or MH-sample) p(θ | x_obs) with the trained proposal ``flow``."""
        x = jnp.asarray(x_obs, jnp.float32).reshape(-1)
        start = time.perf_counter()
        key_q, key_mh = jax.random.split(key)
        u = flow.sample(key_q, x, self.draws)  # (draws, d + d_z)
        log_q = flow.log_prob(u, x[None])
        log_p = jax.vmap(lambda v: _log_target(program, x, v))(u)
        log_w = np.asarray(log_p - log_q, np.float64)
        log_w[~np.isfinite(log_w)] = -np.inf
        d = program.prior.dim
        theta = np.asarray(program.prior.to_constrained(u[:, :d]))
        info = {"method": "ic", "sampler": self.sampler, "draws": self.draws, "fit_seconds": fit_seconds,
                "epochs": None if history is None else history["epochs"]}
        if self.sampler == "importance":
            info.update(_importance_diagnostics(log_w))
            info["sample_seconds"] = time.perf_counter() - start
            if info["pareto_k"] > self.max_pareto_k:
                warnings.warn(f"ic: Pareto k̂ = {info['pareto_k']:.2f} > {self.max_pareto_k} (ESS {info['ess']:.0f} of {self.draws}): "
                              "the importance weights are unreliable; train on more simulations or use sampler='mh'", stacklevel=4)
            return SamplesPosterior(theta, program.prior.names, log_weights=log_w, x_obs=np.asarray(x_obs), info=info)
        chain, rate = _independence_mh(log_w, key_mh)
        info.update(acceptance_rate=rate, sample_seconds=time.perf_counter() - start)
        return SamplesPosterior(theta[chain], program.prior.names, x_obs=np.asarray(x_obs), info=info)


def _importance_diagnostics(log_w: np.ndarray) -> dict:
    import arviz as az

    finite = log_w[np.isfinite(log_w)]
    w = np.exp(log_w - finite.max())
    w /= w.sum()
    with warnings.catch_warnings():  # ArviZ warns on large k̂; the caller reports it with the figure
        warnings.simplefilter("ignore")
        _, k = az.psislw(finite.copy())
    return {"ess": float(1.0 / np.sum(w**2)), "ess_fraction": float(1.0 / np.sum(w**2) / len(log_w)), "pareto_k": float(k)}


def _independence_mh(log_w: np.ndarray, key) -> tuple[np.ndarray, float]:
    """Indices of an independence MH chain through the proposals, accepting j over i with min(1, w_j / w_i)."""
    u = np.log(np.asarray(jax.random.uniform(key, (len(log_w),))))
    current, chain, accepted = 0, np.empty(len(log_w), np.int64), 0
    for j in range(len(log_w)):
        if log_w[j] - log_w[current] >= u[j] or not np.isfinite(log_w[current]):
            current, accepted = j, accepted + 1
        chain[j] = current
    return chain, accepted / len(log_w)


__all__ = ["IC"]
