"""The exact baseline for a `Program`: NumPyro's NUTS over (θ, z) given x_obs.

No simulations and no network: the program's joint density log p(x_obs, z, θ) is sampled in
the unconstrained space of each site (NumPyro's own transforms), chains vectorised in one
compiled program. R-hat, bulk ESS (ArviZ) and divergences go into ``posterior.info``, and a run
that fails ``max_r_hat``, ``min_ess`` or ``max_divergences`` warns with the figures. Any other
method on a Program can be checked against it with one call:
``galton.diagnostics.compare(posterior, nuts_posterior)``.
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.infer import MCMC, NUTS as NumPyroNUTS
from numpyro.infer.reparam import LocScaleReparam

from galton.checks import check_count
from galton.methods.base import register, require_program
from galton.posteriors import SamplesPosterior
from galton.problem import ProblemError, Program

REPARAMS = (None, "noncentered")


def _discrete_latents(program: Program) -> list[str]:
    tr = handlers.trace(handlers.seed(program.model, 0)).get_trace()
    return [k for k, s in tr.items() if s["type"] == "sample" and k in program.latents.shapes
            and getattr(s["fn"], "is_discrete", False)]


def _has_loc_scale(fn) -> bool:
    base = getattr(fn, "base_dist", fn)
    return hasattr(base, "loc") and hasattr(base, "scale") and type(base).__name__ in ("Normal", "StudentT", "Cauchy", "Laplace")


@functools.lru_cache(maxsize=4)
def _sampler(settings: "NUTS", program: Program, progress: bool) -> MCMC:
    """One MCMC per program and settings, x its argument: NumPyro keeps the compiled sampler
    in it, so a run at another observation of the same shape compiles nothing."""
    kernel = NumPyroNUTS(settings._model(program), target_accept_prob=settings.target_accept, max_tree_depth=settings.max_tree_depth,
                         dense_mass=settings.dense_mass)
    return MCMC(kernel, num_warmup=settings.num_warmup, num_samples=settings.num_samples, num_chains=settings.num_chains,
                chain_method="vectorized", progress_bar=progress, jit_model_args=True)


@register("nuts")
@dataclass(frozen=True)
class NUTS:
    """Settings of NUTS over θ and the latents of a Program.

    Attributes:
        num_samples: draws per chain after warm-up; num_warmup: adaptation steps per chain.
        num_chains: chains, vectorised.
        target_accept: the step-size adaptation's target; max_tree_depth: NUTS's cap.
        dense_mass: adapt a dense mass matrix (for correlated θ; costly with many latents).
        reparam: ``"noncentered"`` rewrites every latent with a location and scale as
            loc + scale · ε (funnels, hierarchies); None samples the model as written.
        keep_latents: keep the latents' draws in ``posterior.latents`` ``{site: (draws, *shape)}``.
        max_r_hat, min_ess, max_divergences: thresholds whose failure warns.
    """

    num_samples: int = 1000
    num_warmup: int = 500
    num_chains: int = 4
    target_accept: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = False
    reparam: str | None = None
    keep_latents: bool = False
    max_r_hat: float = 1.01
    min_ess: float = 400.0
    max_divergences: int = 0
    iid = False

    def __post_init__(self):
        if self.reparam not in REPARAMS:
            raise ValueError(f"reparam must be one of {REPARAMS}, got {self.reparam!r}")
        for name in ("num_samples", "num_warmup", "num_chains"):
            check_count(getattr(self, name), name, minimum=0 if name == "num_warmup" else 1)

    def _model(self, program: Program):
        """The program conditioned on x, which it takes as its argument (flat, ``(x_dim,)``)."""
        def conditioned(x):
            return handlers.condition(program.model, data=program.data.unflatten(x))()

        if self.reparam == "noncentered":
            tr = handlers.trace(handlers.seed(program.model, 0)).get_trace()
            config = {k: LocScaleReparam(0) for k in program.latents.shapes if _has_loc_scale(tr[k]["fn"])}
            return handlers.reparam(conditioned, config=config)
        return conditioned

    def run(self, problem, x_obs, *, key, budget=None, rounds=1, simulations=None, store=None, progress=True):
        """Sample p(θ, z | x_obs); returns a `SamplesPosterior` over θ (``budget``, ``simulations``
        and ``store`` have no role: NUTS simulates nothing)."""
        require_program(problem, "nuts", rounds)
        discrete = _discrete_latents(problem)
        if discrete:
            raise ProblemError(
                f"latent site(s) {discrete} of {problem.name} are discrete: NUTS needs continuous latents; "
                "marginalise them in the model (NumPyro's enumeration), use method='ic' (inference compilation proposes them "
                "with a categorical head and importance-samples the exact posterior), or a simulation-based method (npe, alices, ...)"
            )
        mcmc = _sampler(self, problem, progress)
        start = time.perf_counter()
        mcmc.run(key, jnp.asarray(x_obs, jnp.float32).reshape(-1), extra_fields=("diverging",))
        grouped = mcmc.get_samples(group_by_chain=True)
        seconds = time.perf_counter() - start
        blocks = {k: np.asarray(grouped[k]) for k in problem.prior.blocks.shapes}
        chains = np.asarray(problem.prior.blocks.flatten(blocks))  # (chains, draws, d)
        info = {"method": "nuts", "seconds": seconds, "num_chains": self.num_chains, "num_samples": self.num_samples,
                "num_warmup": self.num_warmup, **_diagnostics(chains, problem.prior.names)}
        info["divergences"] = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
        mcmc._states = mcmc._states_flat = None  # the cached sampler need not hold this run's draws (NumPyro 0.22's names)
        self._warn(info)
        posterior = SamplesPosterior(chains.reshape(-1, chains.shape[-1]), problem.prior.names, x_obs=x_obs, info=info)
        if self.keep_latents:
            posterior.latents = {k: np.asarray(v).reshape(-1, *np.shape(v)[2:]) for k, v in grouped.items() if k in problem.latents.shapes}
        return posterior

    def _warn(self, info: dict) -> None:
        problems = []
        worst_r = max(info["r_hat"].values())
        if worst_r > self.max_r_hat:
            problems.append(f"R-hat {worst_r:.3f} > {self.max_r_hat} ({_worst(info['r_hat'], max)})")
        least = min(info["ess_bulk"].values())
        if least < self.min_ess:
            problems.append(f"bulk ESS {least:.0f} < {self.min_ess:.0f} ({_worst(info['ess_bulk'], min)})")
        if info["divergences"] > self.max_divergences:
            total = info["num_chains"] * info["num_samples"]
            problems.append(f"{info['divergences']} divergent transitions of {total} (max_divergences={self.max_divergences})")
        if problems:
            warnings.warn("nuts: " + "; ".join(problems) + ". Run longer chains, raise target_accept, or try reparam='noncentered'",
                          stacklevel=4)


def _worst(values: dict, pick) -> str:
    name = pick(values, key=values.get)
    return f"worst: {name}"


def _diagnostics(chains: np.ndarray, names) -> dict:
    """R-hat and bulk ESS per parameter from ArviZ, for chains ``(chains, draws, d)``."""
    import arviz as az

    data = az.convert_to_dataset({"theta": chains})
    r_hat = np.atleast_1d(np.asarray(az.rhat(data)["theta"]))
    ess = np.atleast_1d(np.asarray(az.ess(data, method="bulk")["theta"]))
    return {"r_hat": {n: round(float(v), 4) for n, v in zip(names, r_hat)},
            "ess_bulk": {n: round(float(v), 1) for n, v in zip(names, ess)}}


__all__ = ["NUTS"]
