"""Every simulation as a training row at many θ: importance weights from the joint density.

`pair_simulations` gives each simulated (x, z) one partner θ0 and one class. But the joint
density can be read at any θ for a stored z, so each (x, z) can stand for a draw at any θ0,
weighted by p(x, z|θ0) / q(x, z), where q is the density all simulations were drawn from:

    q(x, z) = s_π · (1/m) Σ_j p(x, z|θ_j) + s_ref · p(x, z|θ_ref)

(s_π and s_ref the shares of the budget drawn from the prior and at θ_ref, θ_j the m simulated
prior draws). This is multiple importance sampling with the balance heuristic, the
deterministic mixture of Veach (1997): unbiased, and a weight is large only where no simulated
θ explains (x, z) well; its own θ_j bounds each simulation's weights. Past ``mixture_size``
prior simulations, a random subset of them and each simulation's own θ are the components.
Each simulation gets ``partners`` rows (θ0_k, θ1_k, x) with log w0 = log p(x, z|θ0_k) − log q
and log w1 = log p(x, z|θ1_k) − log q, and ALICE's loss becomes

    L = −[w1 log σ(−d) + w0 log σ(d)] + α [w0 |∇θ0 f − t(x, z|θ0)|²_W + w1 |∇θ1 f − t(x, z|θ1)|²_W]

whose expectation over q is ∫ p(x|θ1) log ŝ + p(x|θ0) log(1 − ŝ): CARL's population loss
at (θ0, θ1), minimised by the true ratio; each score term is minimised by the true score.
One pair per simulation is the special case q = ½ (p(·|θ0) + p(·|θ1)), which is ALICE.
On the Galton board at 3,000 simulations, 32 partners cut ALICES's error from 0.16–0.26 to
0.05–0.09 (CARL needs 100,000 for 0.072). Where z is long (the state-space model's 20
states) the weights degenerate and this does not help: see the README.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.scipy.special import logsumexp

from galton import augment
from galton.checks import check_count
from galton.keys import as_key
from galton.methods.gold.pairs import check_on_invalid, keep_finite, simulate_classes
from galton.problem import Program
from galton.store import Simulations

COLUMNS = ("theta1", "log_w0", "log_w1", "score0", "score1")
CHUNK = 65_536  # rows of joint-density evaluations at once


def mixture_pairs(program: Program, n: int, *, key: jax.Array, partners: int, theta_ref=None, mixture_size: int = 2048,
                  store=None, on_invalid: str = "raise", progress: bool = True) -> Simulations:
    """``n`` simulations as ``n · partners`` importance-weighted rows for ALICE and ALICES.

    Args:
        program: a `Program`.
        n: simulations in all, split as in `pair_simulations` (half at θ_ref when given).
        key: a ``jax.random`` key.
        partners: rows per simulation, each at its own θ0 (and θ1 without ``theta_ref``) from the prior.
        theta_ref: optional ``(d,)`` θ1 of every row.
        mixture_size: the simulated prior θ that are q's components: all of them when there are
            at most this many (the deterministic mixture, unbiased), else this many at random,
            plus each simulation's own θ (which bounds its weights).
        store: optional directory, as in `pair_simulations` (the same simulations resume).
        on_invalid: ``"raise"`` or ``"drop"`` rows with a non-finite joint density or score.
        progress: show the simulation's progress.

    Returns:
        `Simulations` with θ = θ0 ``(n · partners, d)``, x ``(n · partners, *x_shape)`` (each
        simulation's x repeated) and extras ``theta1 (·, d)``, ``log_w0``, ``log_w1 (·,)``,
        ``score0``, ``score1 (·, d)`` and ``simulation (·,)``, the index of the row's simulation
        (training holds out whole simulations).
    """
    check_count(partners, "partners", what="rows per simulation")
    check_count(mixture_size, "mixture_size", what="mixture components")
    check_on_invalid(on_invalid)
    key_num, key_den, key_mix, key0, key1 = jax.random.split(as_key(key), 5)
    num, den, ref = simulate_classes(program, n, keys=(key_num, key_den), theta_ref=theta_ref, store=store, progress=progress)
    sims = Simulations.concatenate([num, den])
    x, z = sims.x.reshape(len(sims), -1), sims.extras["z"]
    from_prior = len(sims) if ref is None else len(num)  # the first rows: their θ were drawn from the prior
    at_ref = None if ref is None else _chunked(augment.joint_log_density, program, x, z, np.tile(ref, (len(x), 1)))
    log_q = _log_mixture(program, x, z, np.asarray(sims.theta[:from_prior], np.float32), at_ref, int(mixture_size), key_mix)

    k = int(partners)
    rows = len(sims) * k
    prior = program.prior
    theta0 = np.asarray(prior.sample(key0, (rows,)), np.float32)
    theta1 = np.tile(ref, (rows, 1)) if ref is not None else np.asarray(prior.sample(key1, (rows,)), np.float32)
    xr, zr, lq = np.repeat(x, k, 0), np.repeat(z, k, 0), np.repeat(log_q, k)
    extras = {"theta1": theta1}
    for i, theta in ((0, theta0), (1, theta1)):
        if i == 1 and ref is not None:  # one θ1 for all: once per simulation, not per partner
            log_p = np.repeat(at_ref, k)
            score = np.repeat(_chunked(augment.joint_score, program, x, z, theta1[: len(x)]), k, 0)
        else:
            log_p = _chunked(augment.joint_log_density, program, xr, zr, theta)
            score = _chunked(augment.joint_score, program, xr, zr, theta)
        impossible = log_p == -np.inf  # a weight of 0, not an invalid row, whatever its score
        score[impossible] = 0.0
        extras[f"log_w{i}"] = np.where(impossible, -1e30, log_p - lq).astype(np.float32)
        extras[f"score{i}"] = score
    extras["simulation"] = np.repeat(np.arange(len(sims)), k)
    out = Simulations(theta0, np.repeat(sims.x, k, 0), {c: extras[c] for c in (*COLUMNS, "simulation")}, program.names)
    return keep_finite(out, program, COLUMNS[1:], on_invalid, what="joint log density or score")


def _chunked(fn, program, x, z, theta) -> np.ndarray:
    return np.concatenate([np.asarray(fn(program, x[i:i + CHUNK], z[i:i + CHUNK], theta[i:i + CHUNK]))
                           for i in range(0, len(x), CHUNK)])


def _log_mixture(program, x, z, thetas, at_ref, size: int, key) -> np.ndarray:
    """log q(x, z) ``(n,)`` for the n simulations, whose first ``len(thetas)`` were drawn at
    ``thetas`` from the prior and the rest at θ_ref; ``at_ref`` ``(n,)``: log p(x, z | θ_ref), or
    None without θ_ref."""
    n, m = len(x), len(thetas)
    chosen = np.arange(m) if m <= size else np.sort(np.asarray(jax.random.choice(key, m, (size,), replace=False)))
    total = np.full(n, -np.inf)
    rows = max(1, min(n, CHUNK))
    per_block = max(1, CHUNK // rows)
    for start in range(0, n, rows):  # a running log-sum over components, about CHUNK evaluations at a time
        part = slice(start, min(n, start + rows))
        width = part.stop - part.start
        for b in range(0, len(chosen), per_block):
            block = thetas[chosen[b:b + per_block]]
            values = np.asarray(augment.joint_log_density(
                program, np.tile(x[part], (len(block), 1)), np.tile(z[part], (len(block), 1)), np.repeat(block, width, 0)))
            total[part] = np.logaddexp(total[part], np.asarray(logsumexp(values.reshape(len(block), width), axis=0)))
    count = np.full(n, float(len(chosen)))
    if len(chosen) < m:  # each prior simulation's own θ joins its mixture, once
        own = np.setdiff1d(np.arange(m), chosen)
        total[own] = np.logaddexp(total[own], np.asarray(augment.joint_log_density(program, x[own], z[own], thetas[own])))
        count[own] += 1
    log_prior_part = total - np.log(count)
    if at_ref is None:
        return log_prior_part
    share_ref = (n - m) / n
    return np.logaddexp(np.log1p(-share_ref) + log_prior_part, np.log(share_ref) + at_ref)


def weighted_score_weights(sims: Simulations) -> np.ndarray:
    """``(d,)`` 1 / Var of the score labels under their importance weights (the score term's units)."""
    e = sims.extras
    labels = np.concatenate([e["score0"], e["score1"]]).astype(np.float64)
    w = np.exp(np.concatenate([e["log_w0"], e["log_w1"]]).astype(np.float64))
    mean = (w[:, None] * labels).sum(0) / w.sum()
    var = (w[:, None] * (labels - mean) ** 2).sum(0) / w.sum()
    return (1.0 / np.maximum(var, 1e-12)).astype(np.float32)
