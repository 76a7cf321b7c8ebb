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

from galton import augment
from galton.keys import as_key
from galton.problem import ProblemError, Program, check_point
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
        ``y (n,)``, ``log_ratio (n,)`` = log r(x, z|θ0, θ1), ``score0``, ``score1`` ``(n, d)``.
    """
    if not isinstance(program, Program):
        raise ProblemError(f"the gold-mining estimators need a Program (a joint density to differentiate), got {type(program).__name__}")
    if on_invalid not in ("raise", "drop"):
        raise ValueError(f"on_invalid must be 'raise' or 'drop', got {on_invalid!r}")
    if int(n) != n or n < 2:
        raise ValueError(f"n must be an integer of at least 2 simulations, got {n!r}")
    augment.check_scorable(program)
    prior = program.prior
    key = as_key(key)
    key_num, key_den, key_ref, key_partner = jax.random.split(key, 4)
    n_num, n_den = n - n // 2, n // 2
    if theta_ref is not None:
        ref = check_point(prior, theta_ref, what="theta_ref").astype(np.float32)
        theta1_num = np.tile(ref, (n_num, 1))
        theta1_den = np.tile(ref, (n_den, 1))
    else:
        theta1_num = np.asarray(prior.sample(key_ref, (n_num,)))
        theta1_den = None
    sub = (lambda name: None) if store is None else (lambda name: Path(store) / name)
    num = simulate(program, n_num, key=key_num, keep_latents=True, store=sub("numerator"), progress=progress)
    if theta1_den is None:
        den = simulate(program, n_den, key=key_den, keep_latents=True, store=sub("denominator"), progress=progress)
    else:
        den = simulate(program, key=key_den, theta=theta1_den, keep_latents=True, store=sub("denominator"), progress=progress)
    theta0_den = np.asarray(prior.sample(key_partner, (len(den),)))
    theta1_num = theta1_num[: len(num)]
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
            },
            program.names,
        ))
    out = Simulations.concatenate(rows)
    finite = np.isfinite(out.extras["log_ratio"]) & np.isfinite(out.extras["score0"]).all(1) & np.isfinite(out.extras["score1"]).all(1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        first = ", ".join(f"{k}={v:.4g}" for k, v in zip(program.names, out.theta[bad[0]]))
        if on_invalid != "drop":
            raise SimulationError(
                f"{bad.size} of {len(out)} rows have a non-finite joint log ratio or score (first at θ0: {first}); "
                "pass on_invalid='drop' to discard them"
            )
        warnings.warn(f"dropped {bad.size} of {len(out)} rows with a non-finite joint log ratio or score", stacklevel=2)
        out = out[finite]
    return out
