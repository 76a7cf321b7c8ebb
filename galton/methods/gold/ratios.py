"""Parameterized likelihood-ratio estimators trained on the joint ratio and score (Brehmer,
Louppe, Pavez, Cranmer 2020; the losses as madminer defines them).

One network f(θ, x) (a `galton.ratio.RatioNetwork`) gives log r̂(x|θ0, θ1) = f(θ0, x) − f(θ1, x),
so r̂(x|θ, θ) = 1 by construction, r̂ is consistent between any pair of θ, and f itself is
log p(x|θ) up to a function of x: the posterior is exp f(θ, x_o) · p(θ). With d = log r̂,
ŝ = σ(−d) the classifier's "x came from θ1" and, on rows (θ0, θ1, x, y, log r, t0, t1)
from `pair_simulations` (y = 1 when x ~ p(x|θ1)):

    CARL   (Cranmer et al. 2015):  L = −[y log ŝ + (1 − y) log(1 − ŝ)]
    ROLR:                          L = y (r̂ − r)² + (1 − y)(1/r̂ − 1/r)²
    ALICE  (Stoye et al. 2018):    L = −[s log ŝ + (1 − s) log(1 − ŝ)],  s = 1 / (1 + r)
    CASCAL, RASCAL, ALICES:        the above + α [(1 − y) |∇θ0 f(θ0, x) − t0|²_W + y |∇θ1 f(θ1, x) − t1|²_W]

with |v|²_W = Σ_j v_j² / Var(t_j) over the training labels (madminer weights the raw squared
error; scaled, the default α = 0.1 served both the Galton board, label variance 30 with θ_ref = 0,
and the state-space model, score variances 40 to 160).

r and t are the joint ratio and score. E[r(x, z|θ0, θ1) | x] is the true ratio when z ~ p(z|x, θ1)
(so ROLR regresses r on rows drawn at θ1 and 1/r on rows drawn at θ0), E[t(x, z|θ) | x] the true
score when z ~ p(z|x, θ), and 1/(1 + r) averages to the true ŝ over both classes; each loss is minimised by the true ratio (and score), so these estimators need no access
to p(x|θ). The score term ties f's gradient to the true score at the θ each x was drawn at,
which is where the sample efficiency comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from galton.checks import check_count
from galton.methods.base import NeuralMethod, bind, register, require_program
from galton.methods.gold import mixture
from galton.latent_chains import check_continuous_latents
from galton.methods.gold.pairs import COLUMNS, RATIO_LABELS, averaged_pair_labels, pair_simulations
from galton.posteriors import DensityPosterior
from galton.prior import Prior
from galton.problem import ProblemError
from galton.ratio import RatioEnsemble, RatioNetwork, ratio_ensemble, ratio_network
from galton.sampling import MCMC_DEFAULTS
from galton.store import Simulations
from galton.train import Training, train

LOG_CLIP = 30.0  # exp(±30) keeps ROLR's squared ratios finite in float32


def log_ratio(model: RatioNetwork, x: jax.Array, theta0: jax.Array, theta1: jax.Array) -> jax.Array:
    """log r̂(x|θ0, θ1) = f(θ0, x) − f(θ1, x) for x ``(*batch, *x_shape)``, θ ``(*batch, d)`` (broadcast) -> ``(*batch,)``."""
    return model.log_ratio(theta0, x) - model.log_ratio(theta1, x)


def _values_and_scores(model: RatioNetwork, theta, x):
    """f(θ, x) ``(b,)`` and ∇θ f(θ, x) ``(b, d)`` row by row."""
    return jax.vmap(jax.value_and_grad(lambda t, xx: model.log_ratio(t, xx)))(theta, x)


def score_weights(scores: np.ndarray) -> np.ndarray:
    """``(d,)`` 1 / variance of each parameter's joint-score labels ``(n, d)``: the score term is
    then dimensionless, and one α suits problems whose scores differ in scale by orders of magnitude."""
    var = np.var(np.asarray(scores, np.float64), axis=0)
    return (1.0 / np.maximum(var, 1e-12)).astype(np.float32)


def gold_loss(model: RatioNetwork, batch, key, *, base: str, alpha: float, weights: jax.Array | None = None) -> jax.Array:
    """CARL's, ALICE's or ROLR's loss (``base``) plus ``alpha`` × the score term weighted by
    ``weights`` ``(d,)`` (None: 1), on pairs: θ0, θ1 ``(b, d)``, x ``(b, *x_shape)``, y ``(b,)``
    (0: x ~ θ0, 1: x ~ θ1), log r ``(b,)``, joint scores t0, t1 ``(b, d)`` -> scalar."""
    theta0, theta1, x, y, log_r, t0, t1 = batch
    # a row's score label is at the θ its x was drawn from (θ0 when y = 0, θ1 when y = 1): only
    # there is ∇θ f needed, which saves a fifth of each step
    drawn = (y == 0)[:, None]
    f_drawn, g = _values_and_scores(model, jnp.where(drawn, theta0, theta1), x)
    f_other = jax.vmap(model.log_ratio)(jnp.where(drawn, theta1, theta0), x)
    f0, f1 = jnp.where(drawn[:, 0], f_drawn, f_other), jnp.where(drawn[:, 0], f_other, f_drawn)
    d = f0 - f1
    if base == "carl":
        loss = -(y * jax.nn.log_sigmoid(-d) + (1 - y) * jax.nn.log_sigmoid(d))
    elif base == "alice":
        s = jax.nn.sigmoid(-log_r)
        loss = -(s * jax.nn.log_sigmoid(-d) + (1 - s) * jax.nn.log_sigmoid(d))
    else:  # rolr
        d, log_r = jnp.clip(d, -LOG_CLIP, LOG_CLIP), jnp.clip(log_r, -LOG_CLIP, LOG_CLIP)
        loss = y * (jnp.exp(d) - jnp.exp(log_r)) ** 2 + (1 - y) * (jnp.exp(-d) - jnp.exp(-log_r)) ** 2
    if alpha:
        w = 1.0 if weights is None else jnp.asarray(weights)
        loss = loss + alpha * (w * (g - jnp.where(drawn, t0, t1)) ** 2).sum(-1)
    return loss.mean()


def mixture_loss(model, batch, key, *, alpha: float, weights: jax.Array | None = None) -> jax.Array:
    """ALICE(S) on importance-weighted rows: θ0, θ1 ``(b, d)``, x ``(b, *x_shape)``, log w0, log w1
    ``(b,)``, t0, t1 ``(b, d)``, the score term weighted by ``weights`` ``(d,)`` (None: 1); see
    `galton.methods.gold.mixture`."""
    theta0, theta1, x, log_w0, log_w1, t0, t1 = batch
    f0, g0 = _values_and_scores(model, theta0, x)
    f1, g1 = _values_and_scores(model, theta1, x)
    d = f0 - f1
    # a weight past e^30 is a degenerate row either way; clipped, it cannot overflow float32
    w0, w1 = jnp.exp(jnp.minimum(log_w0, LOG_CLIP)), jnp.exp(jnp.minimum(log_w1, LOG_CLIP))
    loss = -(w1 * jax.nn.log_sigmoid(-d) + w0 * jax.nn.log_sigmoid(d))
    if alpha:
        w = 1.0 if weights is None else jnp.asarray(weights)
        loss = loss + alpha * (w0 * (w * (g0 - t0) ** 2).sum(-1) + w1 * (w * (g1 - t1) ** 2).sum(-1))
    return loss.mean()


@dataclass(frozen=True)
class ParameterizedRatio(NeuralMethod):
    """Settings shared by CARL, ROLR, CASCAL, RASCAL, ALICE and ALICES.

    Attributes:
        alpha: weight of the score term, in units of the labels' variance (0 for CARL, ROLR and
            ALICE, which use no score).
        theta_ref: ``(d,)`` a fixed θ1 (madminer's parameterized estimators), or None to draw
            θ1 from the prior too (doubly parameterized: every pair of θ is trained).
        hidden, depth, activation: the MLP of f(θ, x) (smooth by default: the score terms
            differentiate it in θ); embedding: a `galton.nets` module for x.
        partners: for ALICE and ALICES, rows per simulation: each simulation stands for a draw at
            this many θ0 from the prior, weighted by the joint density against the density all
            simulations came from (`galton.methods.gold.mixture`; 1: one pair per simulation, as
            madminer). On the Galton board at 3,000 simulations, 32 cut ALICES's error 2–3 times;
            on the state-space model, whose 20 latent states make the weights degenerate, it does not help.
            With ``partners`` rows per simulation, batches about 50 × ``partners`` keep the steps per
            epoch, and a patience of 50 rides out the weighted validation loss's noise.
        mixture_size: at most this many simulated θ are that density's components (`mixture_pairs`).
        latent_steps: each label a loss reads is averaged over this many NUTS draws of z | x, θ
            from the row's own z (`pairs.averaged_pair_labels`; continuous latents only): the
            score labels of CASCAL, RASCAL and ALICES, the ratio labels of ROLR, RASCAL, ALICE
            and ALICES (partners=1); 0: the row's own z only.
        ensemble: train this many networks from different keys and average their log ratios
            (a `galton.ratio.RatioEnsemble`). On the Galton board at 3,000 pairs, 8 ALICES
            networks erred 0.09–0.12 where single ones erred 0.085–0.56 (typically 0.15–0.3).
        training: `Training`; sampler: settings for `galton.sampling.mcmc`.
    """

    base: ClassVar[str] = "carl"
    uses_score: ClassVar[bool] = False
    iid: ClassVar[bool] = True
    alpha: float = 0.0
    theta_ref: tuple | None = None
    hidden: int = 64
    depth: int = 2
    activation: str = "tanh"
    embedding: eqx.Module | None = None
    ensemble: int = 1
    partners: int = 1
    mixture_size: int = 2048
    latent_steps: int = 0
    training: Training = field(default_factory=Training)
    sampler: tuple = MCMC_DEFAULTS

    def __post_init__(self):
        self._check_settings(hidden=1, depth=1)
        check_count(self.partners, "partners", what="rows per simulation")
        check_count(self.mixture_size, "mixture_size", what="mixture components")
        if self.partners > 1 and self.base != "alice":
            raise ValueError(f"partners > 1 weights rows by the joint density, which ALICE and ALICES use; {type(self).__name__} does not")
        check_count(self.ensemble, "ensemble", what="networks")
        if self.uses_score and not self.alpha > 0:
            raise ValueError(f"{type(self).__name__} weights its score term by alpha > 0, got {self.alpha}")
        if not self.uses_score and self.alpha:
            raise ValueError(f"{type(self).__name__} uses no score; its score-augmented form is {_AUGMENTED[self.base]}")
        check_count(self.latent_steps, "latent_steps", minimum=0)
        if self.latent_steps and not ((self.uses_score or self.base in RATIO_LABELS) and self.partners == 1):
            raise ValueError(f"latent_steps averages labels: ROLR, CASCAL, RASCAL, ALICE and ALICES (partners=1) read them, "
                             f"{type(self).__name__}{' with partners > 1' if self.partners > 1 else ''} does not")
        if self.theta_ref is not None:
            object.__setattr__(self, "theta_ref", tuple(float(v) for v in np.ravel(self.theta_ref)))

    def loss(self, prior: Prior, sequential: bool, weights: np.ndarray | None = None):
        if self.partners > 1:
            return bind(mixture_loss, alpha=float(self.alpha), weights=weights)
        return bind(gold_loss, base=self.base, alpha=float(self.alpha), weights=weights)

    def network(self, theta, x, key) -> RatioNetwork:
        return ratio_network(theta, x, key=key, hidden=self.hidden, depth=self.depth, embedding=self.embedding, activation=self.activation)

    def _columns(self) -> tuple[str, ...]:
        """The extras the loss reads, in its batch order after θ0 and x (see `arrays`)."""
        return mixture.COLUMNS if self.partners > 1 else COLUMNS

    def arrays(self, sims: Simulations) -> tuple[np.ndarray, ...]:
        columns = self._columns()
        maker = "mixture_pairs" if self.partners > 1 else "pair_simulations"
        missing = [c for c in columns if c not in sims.extras]
        if missing:
            raise ProblemError(
                f"{type(self).__name__} with partners={self.partners} trains on rows with their joint ratio and scores; these "
                f"simulations lack {missing}: make them with galton.methods.gold.{maker} (or let galton.infer simulate)"
            )
        return (sims.theta, *(sims.extras[c] for c in columns[:1]), sims.x, *(sims.extras[c] for c in columns[1:]))

    def simulations(self, problem, budget: int, *, key, store=None, progress: bool = True) -> Simulations:
        """The training rows of ``budget`` simulations: `pair_simulations`, or `mixture_pairs` with ``partners`` > 1."""
        if self.partners > 1:
            return mixture.mixture_pairs(problem, budget, key=key, partners=self.partners, theta_ref=self.theta_ref,
                                         mixture_size=self.mixture_size, store=store, progress=progress)
        return pair_simulations(problem, budget, key=key, theta_ref=self.theta_ref, store=store, progress=progress)

    def fit(self, sims: Simulations, prior: Prior, *, key: jax.Array, sequential: bool = False,
            init: eqx.Module | None = None, progress: bool = True) -> tuple[RatioNetwork, dict]:
        """Train f on pair simulations (see `pair_simulations`); returns the network (a
        `RatioEnsemble` when ``ensemble`` > 1) and its history (an ensemble's: its members'
        histories under ``"members"``, their summed epochs under ``"epochs"``)."""
        arrays = self.arrays(sims)
        columns = self._columns()
        names = ["theta0", columns[0], "x", *columns[1:]]
        if not self.uses_score:
            weights = None
        elif self.partners > 1:
            weights = mixture.weighted_score_weights(sims)
        else:
            y = arrays[3][:, None]
            weights = score_weights(np.where(y == 0, arrays[5], arrays[6]))
        loss = self.loss(prior, sequential, weights)
        inits = init.members if isinstance(init, RatioEnsemble) else (init,) * self.ensemble
        if len(inits) != self.ensemble:
            raise ValueError(f"init has {len(inits)} members, these settings train ensemble={self.ensemble}")
        fitted = []
        for i, start in enumerate(inits):
            key_init, key_train = jax.random.split(key if self.ensemble == 1 else jax.random.fold_in(key, i))
            model = start if start is not None else self.network(np.concatenate([arrays[0], arrays[1]]), sims.x, key_init)
            fitted.append(train(model, loss, arrays, key=key_train, settings=self.training, names=names, progress=progress,
                                groups=sims.extras.get("simulation")))
        if self.ensemble == 1:
            return fitted[0]
        histories = [h for _, h in fitted]
        history = {**histories[0], "members": histories, "epochs": sum(h["epochs"] for h in histories)}
        return ratio_ensemble(m for m, _ in fitted), history

    def posterior(self, network, prior: Prior, history: list[dict]) -> DensityPosterior:
        return DensityPosterior(network, prior, history=history, term="ratio", sampler=self.sampler)

    def run(self, problem, x_obs, *, key, budget, rounds, simulations=None, store=None, progress=True):
        """`galton.infer`'s path: simulate ``budget`` pairs, train, condition on ``x_obs``."""
        require_program(problem, self.name, rounds)
        if self.latent_steps:
            check_continuous_latents(problem)
        key_sim, key_fit = jax.random.split(key)
        sims = simulations if simulations is not None else self.simulations(problem, budget, key=key_sim, store=store, progress=progress)
        if self.latent_steps:
            sims = averaged_pair_labels(problem, sims, key=jax.random.fold_in(key_sim, 1), steps=self.latent_steps,
                                        ratio=self.base if self.base in RATIO_LABELS else None, progress=progress)
        model, history = self.fit(sims, problem.prior, key=key_fit, progress=progress)
        return self.posterior(model, problem.prior, [history]).condition(x_obs)


_AUGMENTED = {"carl": "CASCAL", "rolr": "RASCAL", "alice": "ALICES"}


@register("carl")
@dataclass(frozen=True)
class CARL(ParameterizedRatio):
    """Calibrated classifier: cross-entropy of "x came from θ1", no gold used."""

    base: ClassVar[str] = "carl"


@register("rolr")
@dataclass(frozen=True)
class ROLR(ParameterizedRatio):
    """Regression of the likelihood ratio on the joint ratio."""

    base: ClassVar[str] = "rolr"


@register("alice")
@dataclass(frozen=True)
class ALICE(ParameterizedRatio):
    """Cross-entropy against the joint ratio's soft labels 1 / (1 + r)."""

    base: ClassVar[str] = "alice"


@register("cascal")
@dataclass(frozen=True)
class CASCAL(ParameterizedRatio):
    """CARL + α · joint-score regression."""

    base: ClassVar[str] = "carl"
    uses_score: ClassVar[bool] = True
    alpha: float = 0.1


@register("rascal")
@dataclass(frozen=True)
class RASCAL(ParameterizedRatio):
    """ROLR + α · joint-score regression."""

    base: ClassVar[str] = "rolr"
    uses_score: ClassVar[bool] = True
    alpha: float = 0.1


@register("alices")
@dataclass(frozen=True)
class ALICES(ParameterizedRatio):
    """ALICE + α · joint-score regression."""

    base: ClassVar[str] = "alice"
    uses_score: ClassVar[bool] = True
    alpha: float = 0.1
