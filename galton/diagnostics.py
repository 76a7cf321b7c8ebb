"""Accuracy diagnostics for posterior samples.

`c2st` is the classifier two-sample test of the sbibm benchmark (Lueckmann et al. 2021),
computed the same way so galton's figures compare with published ones.
"""

from __future__ import annotations

import numpy as np


def _as_samples(samples, what: str) -> np.ndarray:
    a = np.asarray(samples, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"{what} must have shape (n, d) with n >= 2, got {np.shape(samples)}")
    bad = ~np.isfinite(a).all(axis=1)
    if bad.any():
        raise ValueError(f"{what} has {int(bad.sum())} rows with NaN or inf values, first row {int(np.flatnonzero(bad)[0])}")
    return a


def c2st(
    samples_a,
    samples_b,
    *,
    seed: int = 1,
    n_folds: int = 5,
    scoring: str = "accuracy",
    z_score: bool = True,
    noise_scale: float | None = None,
) -> float:
    """Classifier two-sample test: how well an MLP tells ``samples_a`` from ``samples_b``.

    Mirrors ``sbibm.metrics.c2st``: both sets are z-scored with ``samples_a``'s mean and
    unbiased (ddof=1) standard deviation; an sklearn ``MLPClassifier`` (ReLU, two hidden
    layers of ``10·d`` units, adam, ``max_iter=10000``, ``random_state=seed``) is scored by
    ``KFold(n_folds, shuffle=True, random_state=seed)`` cross-validation.

    Args:
        samples_a: ``(n_a, d)`` (or ``(n_a,)`` for d = 1); by convention the reference samples.
        samples_b: ``(n_b, d)``; the samples under test.
        seed: seeds the classifier, the fold split and the optional noise.
        n_folds: cross-validation folds.
        scoring: an sklearn scorer name, ``"accuracy"`` or ``"roc_auc"``.
        z_score: standardise with ``samples_a``'s statistics first.
        noise_scale: if set, add N(0, noise_scale²) noise to every value (after z-scoring).

    Returns:
        The mean cross-validated score: 0.5 when the sets are indistinguishable, 1 when
        perfectly separated.

    Raises:
        ValueError: on mismatched dimensions, non-finite values or too few samples.
    """
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    a = _as_samples(samples_a, "samples_a")
    b = _as_samples(samples_b, "samples_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"samples_a has {a.shape[1]} dimensions but samples_b has {b.shape[1]}")
    if z_score:
        mean, std = a.mean(axis=0), a.std(axis=0, ddof=1)
        if np.any(std == 0):
            raise ValueError(f"samples_a is constant in dimensions {np.flatnonzero(std == 0).tolist()}; cannot z-score")
        a, b = (a - mean) / std, (b - mean) / std
    if noise_scale is not None:
        rng = np.random.default_rng(seed)
        a = a + noise_scale * rng.standard_normal(a.shape)
        b = b + noise_scale * rng.standard_normal(b.shape)
    dim = a.shape[1]
    data = np.concatenate([a, b]).astype(np.float32)
    target = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    clf = MLPClassifier(
        activation="relu",
        hidden_layer_sizes=(10 * dim, 10 * dim),
        max_iter=10000,
        solver="adam",
        random_state=seed,
    )
    folds = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    # the layers are small: multithreaded BLAS only adds overhead (10x slower on a busy 2-core machine)
    with threadpool_limits(limits=1, user_api="blas"):
        scores = cross_val_score(clf, data, target, cv=folds, scoring=scoring)
    return float(np.mean(scores))


__all__ = ["c2st"]


def compare(posterior, reference, *, n: int = 2000, key=None, names=None, show: bool = True) -> dict:
    """How far ``posterior`` is from ``reference`` (e.g. `method="nuts"` on the same Program).

    Args:
        posterior, reference: posteriors with ``sample(n, key=)``, or draws ``(m, d)``.
        n: draws of each compared (C2ST on ``n`` a side).
        key: a ``jax.random`` key for the draws (``jax.random.key(0)`` when omitted).
        names: parameter names for the report (the posterior's when it has them).
        show: print the report.

    Returns:
        ``{"c2st": float, "parameters": {name: {"mean_shift": (mean − ref mean) / ref σ,
        "sigma_ratio": σ / ref σ}}}``.
    """
    import jax

    key = jax.random.key(0) if key is None else key
    k1, k2 = jax.random.split(key)
    draws = [_as_samples(p.sample(n, key=k) if hasattr(p, "sample") else p, what)
             for p, k, what in ((posterior, k1, "posterior"), (reference, k2, "reference"))]
    m = min(len(draws[0]), len(draws[1]), n)
    a, b = draws[0][:m], draws[1][:m]  # equal classes: C2ST's chance level is then 0.5
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the posterior has {a.shape[1]} parameters and the reference {b.shape[1]}")
    names = list(names or getattr(posterior, "names", None) or [f"theta[{i}]" for i in range(a.shape[1])])
    ref_sd = b.std(0, ddof=1)
    params = {name: {"mean_shift": float((a[:, i].mean() - b[:, i].mean()) / ref_sd[i]), "sigma_ratio": float(a[:, i].std(ddof=1) / ref_sd[i])}
              for i, name in enumerate(names)}
    score = c2st(b, a)
    if show:
        print(f"C2ST {score:.3f} (0.5 = indistinguishable) on {min(len(a), len(b))} draws a side")
        for name, p in params.items():
            print(f"  {name:>12s}: mean shift {p['mean_shift']:+.3f} σ, σ ratio {p['sigma_ratio']:.3f}")
    return {"c2st": score, "parameters": params}
