"""Truncated marginal neural ratio estimation (TMNRE; Miller et al. 2021, as in swyft).

Loss: one binary classifier per marginal m on a shared embedding of x, all trained at once,
with θ'_k, k = 1..K, derangements of the batch's θ (so each (θ'_k,m, x) is a marginal pair):
    L = mean_m [ −log σ(d_m(θ_m, x)) − mean_k log σ(−d_m(θ'_k,m, x)) ]
        + λ · mean_m ( mean_batch σ(d_m(θ_m, x)) + mean_batch,k σ(d_m(θ'_k,m, x)) − 1 )²
so d_m(θ_m, x) ≈ log p(θ_m | x) / p(θ_m) under the round's proposal. K (``negatives``) is 1 in
swyft; more marginal pairs per joint pair cost one embedding pass still, and average out the
noise of which θ' each x met. The second line is BNRE's balancing term (``balance=λ``, 0 by
default as in swyft).

``variant="c"``: NRE-C's loss per head (Miller et al. 2022; `galton.methods.nre.nre_c_loss`), K
(``negatives``) contrastive atoms from other rows and the class weight γ (``gamma``); a head
runs K + 1 times per x.

Rounds: after each round a box per parameter from its 1-D head (where the log-ratio at x_obs
exceeds its maximum + ln ε, `galton.truncation.shrink`); the prior restricted to the box is
the next proposal. Earlier simulations inside the new box are kept: they are draws from the
prior restricted to it, as the new ones are. Each round trains a fresh network on the pool.
With ``pool="all"`` every round trains on all simulations so far: the heads then estimate
p(θ_m | x) / p_mix(θ_m), p_mix the rounds' proposals mixed in proportion to their simulations,
whose marginal the posterior takes from draws of every round's proposal (the cuts read the heads
as ratios to the current proposal, which p_mix equals only where the posterior has its mass).

Correlated truncation (``truncation="correlated"``) also cuts the box by every 2-D head: the
next proposal is the prior restricted to the box, to each pair's region where its log-ratio
exceeds its maximum (over draws of the current proposal) + ln ε, and to every earlier round's
such region; it is sampled by rejection from the box. A posterior that is not axis-aligned
(a crescent, a ridge) fills much less of this region than of the box. Rather than the region
where the sum of the 1-D log-ratios passes the threshold, which would cut the tails of a
posterior correlated across many parameters, each pair is cut by its own 2-D marginal, which
sees the correlation. The heads of the last round then estimate p(θ_m | x) / p_R(θ_m), p_R the
region's marginal, which the posterior takes from 65,536 draws of the region.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from galton.checks import check_count, check_real
from galton.marginal_choice import resolve_marginals
from galton.methods.base import NeuralMethod, bind, fit_keys, register
from galton.methods.nre import balance_penalty, nre_c_loss, other_rows
from galton.nets import Projected
from galton.posteriors.marginal import TMNREPosterior
from galton.prior import Prior
from galton.problem import check_simulated_observation
from galton.ratio import MarginalRatioNetwork, derangement, head_values, marginal_ratio_ensemble, marginal_ratio_network, scaled_heads, temperatures
from galton.regions import Region
from galton.simulate import simulate
from galton.store import Simulations, round_store
from galton.train import Training, held_out_rows
from galton.truncation import TruncatedPrior, TruncationError, shrink, tail_level

PRUNED_STEP = 0.1  # the pruned network's second training: this share of the step size (a fine-tune)

TRUNCATIONS = ("box", "correlated")
POOLS = ("inside", "all")
VARIANTS = ("a", "c")
REGION_DRAWS = 65_536


def loss(model: MarginalRatioNetwork, batch, key, *, balance: float = 0.0, negatives: int = 1):
    theta, x = batch
    b = theta.shape[0]
    features = model.embed(x)
    joint = model.head_log_ratios(theta, features)  # (b, heads)
    rows = jnp.concatenate([derangement(k, b) for k in jax.random.split(key, negatives)]) if negatives > 1 else derangement(key, b)
    marginal = model.head_log_ratios(theta[rows], jnp.tile(features, (negatives,) + (1,) * (features.ndim - 1)))  # (K · b, heads)
    bce = -(jax.nn.log_sigmoid(joint).mean() + jax.nn.log_sigmoid(-marginal).mean())
    # BNRE's term per head: its gap vanishes in expectation for the exact ratio, and it pulls a
    # head that is too sure of itself towards a wider marginal
    return bce + balance * balance_penalty(joint, marginal) if balance else bce


def penalised(model: MarginalRatioNetwork, batch, key, *, base, weight: float):
    """``base``'s loss + ``weight`` × the projection's `Projected.spread`."""
    return base(model, batch, key) + weight * model.embedding.spread()


def loss_c(model: MarginalRatioNetwork, batch, key, *, negatives: int, gamma: float):
    theta, x = batch
    b = theta.shape[0]
    k = min(negatives, b - 1)
    features = model.embed(x)[:, None]  # (b, 1, e)
    joint = model.head_log_ratios(theta[:, None], features)  # (b, 1, heads)
    others = model.head_log_ratios(theta[other_rows(key, b, k)], features)  # (b, k, heads), none joint with x_i
    return nre_c_loss(joint, others, gamma)


@register("tmnre")
@dataclass(frozen=True)
class TMNRE(NeuralMethod):
    """Settings of truncated marginal neural ratio estimation.

    Attributes:
        marginals: tuples of parameter names to estimate, e.g. ``[("a",), ("a", "b")]``; default
            every 1-D marginal and, for at most 6 parameters, every 2-D one.
        epsilon: truncation threshold ε in (0, 1): a box keeps where a 1-D ratio exceeds its maximum × ε.
        tail_mass: when set (e.g. 1e-4), a box also drops the tails that hold at most this share of
            a parameter's 1-D marginal (`galton.truncation.shrink`): for heads whose log-ratio
            never falls ε below its maximum.
        margin: each new box widened by this share of its width a side (within the old box), against
            heads too sure of themselves; the 2-D cuts keep their thresholds.
        on_invalid: ``"raise"`` or ``"drop"``: what each round does with simulations whose x has NaN
            or inf (`galton.simulate`).
        variant: ``"a"`` (swyft's binary loss, with ``negatives`` marginal pairs per joint pair) or
            ``"c"`` (NRE-C's, with ``negatives`` contrastive atoms and class weight ``gamma``).
        negatives: marginal pairs per joint pair (K in the module's loss; 1 in swyft); for ``"c"`` the atoms per x.
        gamma: NRE-C's class weight γ (``variant="c"``). hidden, depth: each head's MLP.
        pool: ``"inside"`` (swyft's): each round trains on the simulations inside its proposal;
            ``"all"``: on every simulation so far (see the module), so an embedding learns from all
            of them without being carried. slcp_distractors (10,000 simulations, ``ensemble=3``,
            ``min_shrink=0``, two key sets): 0.560 / 0.612 marginal C2ST, against 0.581 / 0.650 carried.
        prune: with an embedding that is a sparse `galton.nets.Projected`, each of the last round's
            networks, once trained, drops the projection's weights under this share of each
            output's largest (`Projected.pruned`; 0.1 say) and trains again from there at a tenth
            of the step size: the little a projection still reads of distractors blurs the finest
            features. On slcp_distractors (``pool="all"``, ``ensemble=3``, two key sets) 0.1 gave
            0.549 / 0.602 marginal C2ST against 0.560 / 0.612 (0.553 / 0.605 retrained at the full step).
        spread: with an embedding that is a `galton.nets.Projected`, this weight × its
            `Projected.spread` (each output's ℓ1 / ℓ2 − 1, summed) is added to every round's loss,
            towards each output reading one value of x: a projection that blends slcp's draws, with
            weights that differ between a draw's coordinates, scatters the correlation the heads read. Keep it small (1e-3): at 1e-2 the outputs
            collapse onto whichever values lead at the start, distractors included. The validation
            loss that stops training includes the term. On slcp_distractors (``pool="all"``,
            ``ensemble=3``, ``prune=0.1``, four key sets) 1e-3 gave 0.553 / 0.604 marginal C2ST
            against 0.553 / 0.606: once, outputs held to their early picks never read half the
            informative values (see docs/tmnre_accuracy.md).
        carry_embedding: each round after the first starts from the last round's trained embedding
            (and its scaling of x), with fresh heads; pair it with ``min_shrink=0``, or a first round
            that hardly shrinks the box sends the rest of the budget to one round, with nothing to carry.
        truncation: ``"box"`` (swyft's) or ``"correlated"`` (the box cut further by the 2-D heads;
            see the module).
        min_shrink: when a round shrinks the box by less than this fraction per parameter (its
            prior mass to the power 1/d), the box has converged: the rest of the budget is spent
            in one last round inside it.
        balance: BNRE's balancing weight λ (Delaunoy et al. 2022; 100 there), 0 for swyft's loss:
            each head is held to E_joint[σ(d)] + E_marginal[σ(d)] = 1, which the exact ratio meets,
            so that an over-fitted head errs towards too wide a marginal.
        cut_balance: the balancing weight of the rounds whose heads cut the next proposal (all but
            the last); None: ``balance``. A cut is never undone, so a head too sure of itself there
            loses posterior mass for good, while in the last round balancing only widens the result.
        calibrate: after the last round, each head's log-ratio d is replaced by a·d, with a > 0 the
            factor that minimises the head's binary loss on the rows training held out
            (temperature scaling; on slcp at 10,000 simulations a = 0.71–0.98). The factors are in
            ``posterior.rounds[-1]["temperatures"]`` (with ``ensemble``, one list per network,
            each scaled on the rows its own training held out, before their mean).
        ensemble: the last round trains this many networks on its simulations, from different keys,
            and the posterior takes their mean log-ratio (`galton.ratio.MarginalRatioEnsemble`);
            the cutting rounds train one. On slcp (10,000 simulations, observations 1–5, two key
            sets) 3 gave 0.549 / 0.590 marginal C2ST against 0.555 / 0.603 with 1, in 145 s per
            observation against about 100 s.
        embedding: a `galton.nets` module for x, shared by all heads.
        training: `Training` settings for each round (default: step 1e-3, batches of 64, as swyft).
    """

    iid: ClassVar[bool] = False
    marginals: tuple | list | None = None
    epsilon: float = 1e-6
    tail_mass: float | None = None
    truncation: str = "box"
    min_shrink: float = 0.1
    balance: float = 0.0
    cut_balance: float | None = None
    margin: float = 0.0
    pool: str = "inside"
    prune: float | None = None
    spread: float = 0.0
    carry_embedding: bool = False
    calibrate: bool = False
    variant: str = "a"
    negatives: int = 1
    gamma: float = 1.0
    on_invalid: str = "raise"
    ensemble: int = 1
    hidden: int = 64
    depth: int = 2
    embedding: eqx.Module | None = None
    # swyft's step size and batch size: contrastive heads learn from many small steps
    training: Training = field(default_factory=lambda: Training(learning_rate=1e-3, batch_size=64))

    def __post_init__(self):
        self._check_settings(hidden=1, depth=1, negatives=1)
        check_real(self.epsilon, "epsilon", high=1.0)
        if self.tail_mass is not None:
            check_real(self.tail_mass, "tail_mass", high=0.5)
        for name in ("carry_embedding", "calibrate"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        check_count(self.ensemble, "ensemble", what="networks")
        if self.prune is not None and self.calibrate:
            raise ValueError("calibrate=True needs rows no network trained on, and prune's second training holds out other rows "
                             "than the first: use one of the two")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        check_real(self.gamma, "gamma")
        if self.variant == "c" and (self.balance or self.cut_balance):
            raise ValueError("balance and cut_balance apply to variant='a' (BNRE's term is for the binary loss)")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        check_real(self.spread, "spread", low_inclusive=True)
        if self.spread and not isinstance(self.embedding, Projected):
            raise ValueError(f"spread applies to an embedding that is a galton.nets.Projected, got {type(self.embedding).__name__}")
        if self.prune is not None:
            check_real(self.prune, "prune", high=1.0)
            if not (isinstance(self.embedding, Projected) and self.embedding.sparse):
                raise ValueError(f"prune applies to an embedding that is a galton.nets.Projected with sparse=True, got {type(self.embedding).__name__}")
        if self.truncation not in TRUNCATIONS:
            raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {self.truncation!r}")
        for name in ("balance", "margin") + (("cut_balance",) if self.cut_balance is not None else ()):
            check_real(getattr(self, name), name, low_inclusive=True)
        check_real(self.min_shrink, "min_shrink", high=1.0, low_inclusive=True)

    def loss(self, prior: Prior, sequential: bool):
        """The loss, the same in every round (each round's θ are draws from its own proposal)."""
        if self.variant == "c":
            base = bind(loss_c, negatives=self.negatives, gamma=self.gamma)
        else:
            base = bind(loss, balance=self.balance, negatives=self.negatives) if self.balance or self.negatives > 1 else loss
        return bind(penalised, base=base, weight=self.spread) if self.spread else base

    def network(self, theta, x, key, columns) -> MarginalRatioNetwork:
        """An untrained network with one head per marginal in ``columns`` (tuples of column indices)."""
        return marginal_ratio_network(theta, x, columns, key=key, hidden=self.hidden, depth=self.depth, embedding=self.embedding)

    def fit(self, sims: Simulations, prior: Prior, *, key, sequential=False, init=None, progress=True, columns=None, embedding_from=None):
        """`NeuralMethod.fit` on a fresh network with one head per marginal in ``columns``
        (column-index tuples; the settings' marginals when None), on ``embedding_from``'s trained
        embedding and x scaling when given (a `MarginalRatioNetwork`)."""
        if init is not None and embedding_from is not None:
            raise ValueError("embedding_from= applies only to a fresh network (init=None)")
        if init is None:
            if columns is None:
                columns = resolve_marginals(self.marginals, prior.names, truncate=False)
            init = self.network(sims.theta, sims.x, fit_keys(key)[0], columns)
            if embedding_from is not None:
                init = eqx.tree_at(lambda n: (n.embedding, n.x_shift, n.x_scale), init,
                                   (embedding_from.embedding, embedding_from.x_shift, embedding_from.x_scale))
        return super().fit(sims, prior, key=key, sequential=sequential, init=init, progress=progress)

    def _fit_pruned(self, sims: Simulations, prior: Prior, *, key, progress, columns, embedding_from):
        """`fit`, then the projection pruned (``prune``) and the network trained again from there."""
        network, first = self.fit(sims, prior, key=key, progress=progress, columns=columns, embedding_from=embedding_from)
        pruned = eqx.tree_at(lambda n: n.embedding, network, network.embedding.pruned(self.prune))
        # a fresh Adam at the full step knocks a trained network off its minimum: with it the best
        # validation epoch of the second training was its first, so the network hardly adapted
        finer = replace(self, training=self.training.fine_tune(PRUNED_STEP))
        network, second = finer.fit(sims, prior, key=jax.random.fold_in(key, 77), progress=progress, init=pruned)
        reads = np.asarray((network.embedding.weight != 0).sum(1)).tolist()  # x values each output reads
        return network, {**second, "epochs_before_pruning": first["epochs"], "projection_reads": reads,
                         "validation_before_pruning": min(first["validation_loss"])}

    def _temperatures(self, network: MarginalRatioNetwork, pool: Simulations, key: jax.Array) -> np.ndarray:
        """`galton.ratio.temperatures` of ``network`` on the rows that `fit` with ``key`` held out."""
        held = held_out_rows(len(pool), key=fit_keys(key)[1], settings=self.training)
        return temperatures(network, pool.theta[held], pool.x[held], key=jax.random.fold_in(key, 3))

    def posterior(self, network, prior: Prior, history: list[dict], proposal=None, rounds=(), key=None, mixture=None) -> TMNREPosterior:
        """The `TMNREPosterior` of ``network`` trained on draws from ``proposal`` (a box or a `Region`,
        whose draws from ``key`` give the marginals) or from ``mixture``: (proposal, count) per round."""
        proposal = TruncatedPrior.full(prior) if proposal is None else proposal
        drawn = None
        if mixture is not None and len(mixture) > 1:  # each round's share of the draws: its share of the simulations
            total = sum(count for _, count in mixture)
            drawn = np.concatenate([np.asarray(p.sample_quantiles(jax.random.fold_in(key, 100 + i), (round(REGION_DRAWS * n / total),)))
                                    for i, (p, n) in enumerate(mixture)])
        elif isinstance(proposal, Region):
            drawn = np.asarray(proposal.sample_quantiles(jax.random.fold_in(key, 1), (REGION_DRAWS,)))
        return TMNREPosterior(network, prior, history=history, u_low=np.asarray(proposal.u_low), u_high=np.asarray(proposal.u_high),
                              rounds=rounds, region_draws=drawn)

    def run(self, problem, x_obs, *, key, budget: int, rounds: int, simulations=None, store=None, progress=True) -> TMNREPosterior:
        """The TMNRE rounds; `galton.infer` calls this for ``method="tmnre"`` (see its arguments)."""
        prior = problem.prior
        columns = resolve_marginals(self.marginals, prior.names, truncate=rounds > 1)
        one_d = {m[0]: h for h, m in enumerate(columns) if len(m) == 1}
        proposal = TruncatedPrior.full(prior)  # also for one round: the marginal densities need the prior's columns
        per_round = [budget // rounds + (r < budget % rounds) for r in range(rounds)]
        pool, history, records, network, mixture = None, [], [], None, []
        r = 0
        while True:  # per_round can end early: a converged box gets the rest of the budget at once
            n = per_round[r]
            key_sim, key_fit, key = jax.random.split(key, 3)
            if r == 0 and simulations is not None:
                new = simulations
            else:
                new = simulate(problem, n, key=key_sim, proposal=proposal if r > 0 else None, store=round_store(store, r), progress=progress,
                               on_invalid=self.on_invalid)
            if r == 0:  # before any round cuts a box with it (a Python simulator's x shape is known only now)
                x_obs = check_simulated_observation(problem, x_obs, new, iid=False)
            mixture.append((proposal, len(new)))
            keep_all = pool is None or self.pool == "all"
            inside = np.ones(0 if pool is None else len(pool), bool) if keep_all else np.asarray(proposal.contains(pool.theta))
            pool = new if pool is None else Simulations.concatenate([pool[inside], new])
            last = r == len(per_round) - 1
            cutting = self if last or self.cut_balance is None else replace(self, balance=self.cut_balance)
            carried = network if self.carry_embedding else None
            fitting = self._fit_pruned if last and self.prune is not None else cutting.fit
            network, round_history = fitting(pool, prior, key=key_fit, progress=progress, columns=columns, embedding_from=carried)
            history.append(round_history)
            records.append({
                "round": r, "new": len(new), "reused": int(inside.sum()), "pooled": len(pool), "volume": proposal.volume,
                "box": proposal.bounds().tolist(), "quantile_box": np.stack([proposal.u_low, proposal.u_high], -1).tolist(),
            })
            if isinstance(proposal, Region):
                records[-1]["region_share_of_box"] = proposal.acceptance
            member_keys = [key_fit] + [jax.random.fold_in(key_fit, 10 + i) for i in range(1, self.ensemble if last else 1)]
            if last and self.ensemble > 1:  # the other members: the same pool and start, other keys
                others = [fitting(pool, prior, key=k, progress=progress, columns=columns, embedding_from=carried) for k in member_keys[1:]]
                network = marginal_ratio_ensemble([network] + [net for net, _ in others])
                records[-1]["member_epochs"] = [round_history["epochs"]] + [h["epochs"] for _, h in others]
            if r == 0 and rounds > 1 and not proposal.quantiles.bounded.all():
                unbounded = [n for n, b in zip(prior.names, proposal.quantiles.bounded) if not b]
                records[0]["note"] = f"{', '.join(unbounded)} have unbounded prior support: their boxes are cut in the prior's quantile space"
            if last and self.calibrate:  # each network on the rows its own training held out
                nets = list(network.members) if self.ensemble > 1 else [network]
                factors = [self._temperatures(net, pool, k) for net, k in zip(nets, member_keys)]
                nets = [scaled_heads(net, f) for net, f in zip(nets, factors)]
                network = marginal_ratio_ensemble(nets) if self.ensemble > 1 else nets[0]
                records[-1]["temperatures"] = factors[0].tolist() if self.ensemble == 1 else [f.tolist() for f in factors]
            if last:  # only the last round's posterior is kept: its region draws are dear
                mixed = mixture if self.pool == "all" else None
                return self.posterior(network, prior, history, proposal, records, key=key_fit, mixture=mixed).condition(x_obs)
            try:
                narrower = shrink(proposal, _one_d_log_ratios(network, proposal, x_obs, one_d), epsilon=self.epsilon,
                                   names=prior.names, tail_mass=self.tail_mass, margin=self.margin)
                if self.truncation == "correlated":
                    narrower = _correlated(network, proposal, narrower, x_obs, columns, self.epsilon, self.tail_mass,
                                           key=jax.random.fold_in(key_fit, 2))
            except TruncationError as err:
                raise TruncationError(f"{err} (round {r + 1}; the {len(pool)} simulations so far are in err.simulations)", pool) from None
            per_parameter = 1.0 - (narrower.volume / proposal.volume) ** (1.0 / prior.dim)
            if per_parameter < self.min_shrink and r + 2 < len(per_round):
                records[-1]["converged"] = f"the box shrank by {per_parameter:.1%} per parameter; the rest of the budget goes to one last round"
                per_round = per_round[: r + 1] + [sum(per_round[r + 1 :])]
            proposal, r = narrower, r + 1


class HeadConstraint(eqx.Module):
    """Inside where every head in ``heads`` exceeds its threshold at x_obs (``features``)."""

    network: MarginalRatioNetwork
    features: jax.Array
    heads: jax.Array
    thresholds: jax.Array

    def __call__(self, theta: jax.Array) -> jax.Array:
        """θ ``(n, d)`` -> the smallest margin over the heads ``(n,)``."""
        return jnp.min(self.network.head_log_ratios(theta, self.features, heads=self.heads) - self.thresholds, -1)


def _correlated(network, proposal, box: TruncatedPrior, x_obs, columns, epsilon: float, tail_mass, *, key) -> TruncatedPrior | Region:
    """``box`` cut by the earlier rounds' constraints and by this round's 2-D heads (see the module)."""
    previous = proposal.constraints if isinstance(proposal, Region) else ()
    pairs = jnp.asarray([h for h, m in enumerate(columns) if len(m) == 2], jnp.int32)
    key_draws, key_region = jax.random.split(key)
    if len(pairs):
        features = network.embed(jnp.asarray(x_obs, jnp.float32))
        draws = proposal.sample(jax.random.fold_in(key_draws, 2), (16_384,))  # where this round's heads were trained
        values = head_values(network, pairs, features, draws)
        thresholds = values.max(0) + math.log(epsilon)
        if tail_mass is not None:  # the draws are uniform in quantile space: weights ∝ exp(log-ratio)
            thresholds = jnp.maximum(thresholds, jnp.asarray(tail_level(np.asarray(values), tail_mass), jnp.float32))
        previous = (*previous, HeadConstraint(network, features, pairs, thresholds))
    return Region(box, previous, key=key_region) if previous else box


def _one_d_log_ratios(network: MarginalRatioNetwork, proposal: TruncatedPrior, x_obs, one_d: dict[int, int]):
    """``u_grid (G, d) -> (G, d)``: parameter i's 1-D head at F_i⁻¹(u_grid[:, i]), given x_obs."""
    heads = jnp.asarray([one_d[i] for i in range(proposal.dim)])
    features = network.embed(jnp.asarray(x_obs, jnp.float32))
    return lambda u: head_values(network, heads, features, proposal.quantiles.icdf(u))


__all__ = ["HeadConstraint", "POOLS", "TMNRE", "loss", "resolve_marginals"]
