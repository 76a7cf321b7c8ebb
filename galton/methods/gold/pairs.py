"""Training data of the parameterized ratio estimators: (θ0, θ1, x, y, log r, t0, t1) rows.

Half the budget simulates x ~ p(x|θ0) (y = 0), half x ~ p(x|θ1) (y = 1). θ0 is drawn from the
prior; θ1 is ``theta_ref`` (a single reference, as madminer's "parameterized" estimators) or,
without one, also drawn from the prior ("doubly parameterized"). Each row carries the joint
log ratio log r(x, z|θ0, θ1) and the joint scores t0 = t(x, z|θ0), t1 = t(x, z|θ1), all from
the joint density at the row's stored latents z; a score is a label only at the θ its x was
drawn at (t0 for y = 0 rows, t1 for y = 1), and the losses use it only there.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import jax
import numpy as np
from scipy.special import log_expit, logsumexp

from galton import augment
from galton.checks import check_count
from galton.keys import as_key
from galton.latent_chains import chain_labels
from galton.prior import check_point
from galton.problem import ProblemError, Program
from galton.simulate import SimulationError, simulate
from galton.store import Simulations

COLUMNS = ("theta1", "y", "log_ratio", "score0", "score1")


def pair_simulations(program: Program, n: int, *, key: jax.Array, theta_ref=None, store=None, on_invalid: str = "raise",
                     progress: bool = True) -> Simulations:
    """``n`` rows for CARL, ROLR, CASCAL, RASCAL, ALICE and ALICES.

    Args:
        program: a `Program` (the joint density is needed).
        n: simulations in all (at least 2), split evenly between the two classes.
        key: a ``jax.random`` key.
        theta_ref: optional ``(d,)`` θ1 for every row; drawn from the prior per row when omitted.
        store: optional directory: the two classes go to zarr stores ``store/numerator`` and
            ``store/denominator`` and a rerun resumes from them.

    Returns:
        `Simulations` with θ = θ0 ``(n, d)``, x ``(n, *x_shape)`` and extras ``theta1 (n, d)``,
        ``y (n,)``, ``log_ratio (n,)`` = log r(x, z|θ0, θ1), ``score0``, ``score1`` ``(n, d)``
        and the latents ``z (n, d_z)``.
    """
    check_on_invalid(on_invalid)
    key = as_key(key)
    key_num, key_den, key_ref, key_partner = jax.random.split(key, 4)
    num, den, ref = simulate_classes(program, n, keys=(key_num, key_den), theta_ref=theta_ref, store=store, progress=progress)
    prior = program.prior
    theta1_num = np.tile(ref, (len(num), 1)) if ref is not None else np.asarray(prior.sample(key_ref, (n - n // 2,)))[: len(num)]
    theta0_den = np.asarray(prior.sample(key_partner, (len(den),)))
    rows = []
    for sims, theta0, theta1, y in ((num, num.theta, theta1_num, 0.0), (den, theta0_den, den.theta, 1.0)):
        x = sims.x.reshape(len(sims), -1)
        z = sims.extras["z"]
        rows.append(Simulations(
            np.asarray(theta0, np.float32), sims.x,
            {
                "theta1": np.asarray(theta1, np.float32),
                "y": np.full(len(sims), y, np.float32),
                "log_ratio": np.asarray(augment.joint_log_ratio(program, x, z, theta0, theta1)),
                "score0": np.asarray(augment.joint_score(program, x, z, theta0)),
                "score1": np.asarray(augment.joint_score(program, x, z, theta1)),
                "z": np.asarray(z),
            },
            program.names,
        ))
    out = Simulations.concatenate(rows)
    return keep_finite(out, program, ("log_ratio", "score0", "score1"), on_invalid, what="joint log ratio or score")


RATIO_LABELS = ("rolr", "alice")  # the losses whose ratio labels averaging over z | x, θ keeps unbiased


def averaged_pair_labels(program: Program, pairs: Simulations, *, key: jax.Array, steps: int = 100, ratio: str | None = None,
                         progress: bool = True) -> Simulations:
    """``pairs`` whose labels are averaged over ``steps`` NUTS draws of z | x, θ at the θ each
    row's x was drawn at (`galton.latent_chains.chain_labels`).

    Every loss is linear in its labels, and a row's z is a draw of z | x, θ_drawn, so each label
    may be replaced by its mean over more such draws without moving any loss's minimiser:
    - the score labels the losses read (t0 on rows drawn at θ0, t1 on rows drawn at θ1);
    - with ``ratio="rolr"``, the ratio ROLR and RASCAL regress: r = p(x, z|θ0) / p(x, z|θ1) on
      rows drawn at θ1 and 1/r on rows drawn at θ0, both the mean of exp l with l the other θ's
      joint log density minus the drawn one's; ``log_ratio`` becomes log E[r] and −log E[1/r];
    - with ``ratio="alice"``, ALICE's and ALICES's soft label s = 1 / (1 + r): ``log_ratio``
      becomes log((1 − E s) / E s), whose σ(−·) in the loss is E s.
    With ``ratio=None`` the ratio labels stay the simulations' own (CASCAL's loss reads none).

    Returns:
        `Simulations` like ``pairs`` with those columns replaced, plus ``log_ratio_single`` (the
        simulations' own) and ``acceptance`` (each chain's mean, ``(n,)``).
    """
    return averaged_pair_label_sets(program, pairs, key=key, steps=steps, ratios=(ratio,), progress=progress)[ratio]


def averaged_pair_label_sets(program: Program, pairs: Simulations, *, key: jax.Array, steps: int = 100,
                             ratios=(None, *RATIO_LABELS), progress: bool = True) -> dict[str | None, Simulations]:
    """`averaged_pair_labels` for each ratio label in ``ratios`` (None or members of
    `RATIO_LABELS`), ``{ratio: Simulations}``, from one set of chains: the chains depend on the
    key alone, so each entry equals `averaged_pair_labels` with that ``ratio`` and this ``key``,
    for the chains' cost once (they are the dear part)."""
    if "z" not in pairs.extras:
        raise ProblemError("averaged labels need the pairs' latents z: make them with pair_simulations")
    ratios = tuple(dict.fromkeys(ratios))
    for ratio in ratios:
        if ratio not in (None, *RATIO_LABELS):
            raise ValueError(f"ratio must be None or one of {RATIO_LABELS}, got {ratio!r}")
    e = pairs.extras
    drawn_at_0 = np.asarray(e["y"]) == 0
    at0 = drawn_at_0[:, None]
    theta, other = np.where(at0, pairs.theta, e["theta1"]), np.where(at0, e["theta1"], pairs.theta)
    scores, l, acceptance = chain_labels(program, pairs.x, e["z"], theta, other if any(ratios) else None, key=key, steps=steps,
                                         progress=progress)
    l = l.astype(np.float64)
    extras = {**e, "acceptance": acceptance, "log_ratio_single": np.asarray(e["log_ratio"]),
              "score0": np.where(at0, scores, e["score0"]).astype(np.float32),
              "score1": np.where(at0, e["score1"], scores).astype(np.float32)}
    return {ratio: Simulations(pairs.theta, pairs.x, {**extras, "log_ratio": _averaged_log_ratio(ratio, l, drawn_at_0, e["log_ratio"])},
                               pairs.names) for ratio in ratios}


def _averaged_log_ratio(ratio: str | None, l: np.ndarray, drawn_at_0: np.ndarray, own) -> np.ndarray:
    """The ``log_ratio`` column for ``ratio`` from l ``(n, draws)`` (see `averaged_pair_labels`)."""
    if ratio == "rolr":  # log E[exp l]: the log of the mean ratio of the other θ to the drawn one
        mean = logsumexp(l, axis=1) - np.log(l.shape[1])
        return np.where(drawn_at_0, -mean, mean).astype(np.float32)
    if ratio == "alice":  # s = σ(a) with a = l on rows drawn at θ0 (log r = −l), −l on rows at θ1
        a = np.where(drawn_at_0[:, None], l, -l)
        return (logsumexp(log_expit(-a), axis=1) - logsumexp(log_expit(a), axis=1)).astype(np.float32)
    return np.asarray(own, np.float32)


def check_on_invalid(on_invalid: str) -> None:
    if on_invalid not in ("raise", "drop"):
        raise ValueError(f"on_invalid must be 'raise' or 'drop', got {on_invalid!r}")


def keep_finite(rows: Simulations, program: Program, columns: tuple, on_invalid: str, *, what: str) -> Simulations:
    """``rows`` whose ``columns`` are all finite; the others raise `SimulationError` or, with
    ``on_invalid="drop"``, are dropped with a warning."""
    finite = np.ones(len(rows), bool)
    for c in columns:
        finite &= np.isfinite(rows.extras[c].reshape(len(rows), -1)).all(1)
    if finite.all():
        return rows
    bad = np.flatnonzero(~finite)
    first = ", ".join(f"{k}={v:.4g}" for k, v in zip(program.names, rows.theta[bad[0]]))
    if on_invalid != "drop":
        raise SimulationError(
            f"{bad.size} of {len(rows)} rows have a non-finite {what} (first at θ0: {first}); "
            "pass on_invalid='drop' to discard them"
        )
    warnings.warn(f"dropped {bad.size} of {len(rows)} rows with a non-finite {what}", stacklevel=3)
    return rows[finite]


def simulate_classes(program: Program, n: int, *, keys: tuple, theta_ref=None, store=None, progress: bool = True):
    """The two halves of a budget of ``n``: ``n - n // 2`` simulations from the prior, and
    ``n // 2`` at θ_ref (from the prior too without one), both with their latents z; the
    stores ``store/numerator`` and ``store/denominator`` resume them.

    Returns:
        ``(numerator, denominator, theta_ref)``: two `Simulations` with extras ``z``, and
        θ_ref as a ``(d,)`` float32 array (None when not given).
    """
    if not isinstance(program, Program):
        raise ProblemError(f"the gold-mining estimators need a Program (a joint density to differentiate), got {type(program).__name__}")
    n = check_count(n, "n", minimum=2, what="simulations")
    augment.check_scorable(program)
    key_num, key_den = keys
    n_num, n_den = n - n // 2, n // 2
    ref = None if theta_ref is None else check_point(program.prior, theta_ref, what="theta_ref").astype(np.float32)
    sub = (lambda name: None) if store is None else (lambda name: Path(store) / name)
    num = simulate(program, n_num, key=key_num, keep_latents=True, store=sub("numerator"), progress=progress)
    if ref is None:
        den = simulate(program, n_den, key=key_den, keep_latents=True, store=sub("denominator"), progress=progress)
    else:
        den = simulate(program, key=key_den, theta=np.tile(ref, (n_den, 1)), keep_latents=True, store=sub("denominator"), progress=progress)
    return num, den, ref
