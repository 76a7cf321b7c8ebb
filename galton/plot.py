"""Plots of posteriors and diagnostics, each returning a matplotlib ``Figure``.

Figures are made with ``matplotlib.figure.Figure``, not ``pyplot``: nothing is shown, no
global backend or figure registry is touched, so the functions work headless and in
notebooks alike (Jupyter displays a returned Figure). Pass ``fig=`` to draw into a figure of
your own; save with ``fig.savefig(path)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import ndimage, stats

COLOURS = ("C0", "C1")  # galton, reference
CREDIBLE_MASSES = (0.68, 0.95)  # probability inside the 2-d contours


def _as_rows(samples, label: str) -> np.ndarray:
    """``(n,)`` or ``(n, d)`` array-like (NumPy or JAX) as a float ``(n, d)`` NumPy array."""
    array = np.asarray(samples, dtype=float)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or len(array) == 0:
        raise ValueError(f"{label} must be (n, d) with n > 0, got shape {array.shape}")
    return array


def _names(names: Sequence[str] | None, d: int) -> list[str]:
    if names is None:
        return [rf"$\theta_{{{i}}}$" for i in range(d)]
    if len(names) != d:
        raise ValueError(f"names has {len(names)} entries for {d} parameters")
    return list(names)


def _ranges(sets: list[np.ndarray], truth: np.ndarray | None) -> np.ndarray:
    """``(d, 2)`` plot limits: the central 99.8% of all sample sets, widened to show the truth."""
    pooled = np.concatenate([s[np.isfinite(s).all(1)] for s in sets])
    low, high = np.quantile(pooled, [0.001, 0.999], axis=0)
    if truth is not None:
        low, high = np.minimum(low, truth), np.maximum(high, truth)
    pad = 0.05 * (high - low)
    pad = np.where(pad > 0, pad, 0.5)  # a constant column still gets a visible window
    return np.stack([low - pad, high + pad], axis=1)


def _contour_levels(density: np.ndarray) -> np.ndarray:
    """Density thresholds enclosing `CREDIBLE_MASSES` of the mass, increasing (as contour wants)."""
    ordered = np.sort(density.ravel())[::-1]
    mass = np.cumsum(ordered) / ordered.sum()
    thresholds = [ordered[min(np.searchsorted(mass, m), len(ordered) - 1)] for m in sorted(CREDIBLE_MASSES, reverse=True)]
    return np.unique(thresholds)


def _pair(ax, x: np.ndarray, y: np.ndarray, extent: np.ndarray, bins: int, colour: str, filled: bool) -> None:
    """68% / 95% regions of a smoothed 2-d histogram; a scatter when too few points for contours."""
    density, x_edges, y_edges = np.histogram2d(x, y, bins=bins, range=extent)
    density = ndimage.gaussian_filter(density.T, sigma=1.0)  # histogram2d puts x on rows; contour wants y
    levels = _contour_levels(density) if density.sum() > 0 else np.array([])
    if len(x) < 50 or len(levels) < 2 or levels[0] <= 0:
        ax.scatter(x, y, s=2, color=colour, alpha=0.5, linewidths=0)
        return
    centres = (x_edges[:-1] + x_edges[1:]) / 2, (y_edges[:-1] + y_edges[1:]) / 2
    if filled:
        ax.contourf(*centres, density, levels=[*levels, np.inf], colors=colour, alpha=0.25)
    ax.contour(*centres, density, levels=levels, colors=colour, linewidths=1.0)


def corner(
    samples,
    *,
    names: Sequence[str] | None = None,
    reference=None,
    truth=None,
    labels: tuple[str, str] = ("galton", "reference"),
    bins: int = 50,
    fig: Figure | None = None,
) -> Figure:
    """Pairwise marginals of posterior samples, optionally against reference samples and the truth.

    Args:
        samples: ``(n, d)`` (or ``(n,)`` for d = 1) NumPy or JAX array.
        names: d parameter names for the axis labels; θ₀, θ₁, ... when omitted.
        reference: ``(m, d)`` samples drawn over the first set in a second colour (e.g. an
            exact posterior).
        truth: ``(d,)`` true parameters: lines on the diagonal, points below it.
        labels: legend entries for samples and reference.
        bins: histogram bins per axis (the 2-d histograms are smoothed by one bin).
        fig: a figure to draw into; a new one sized for d when omitted.

    Returns:
        The figure, with the d(d+1)/2 axes of the lower triangle: 1-d histograms on the
        diagonal and the 68% and 95% highest-density regions of each pair below it.
    """
    samples = _as_rows(samples, "samples")
    d = samples.shape[1]
    sets = [samples] if reference is None else [samples, _as_rows(reference, "reference")]
    if sets[-1].shape[1] != d:
        raise ValueError(f"reference has {sets[-1].shape[1]} parameters but samples have {d}")
    if truth is not None:
        truth = np.asarray(truth, dtype=float).reshape(-1)
        if truth.shape != (d,):
            raise ValueError(f"truth must have shape ({d},), got {truth.shape}")
    names = _names(names, d)
    limits = _ranges(sets, truth)
    if fig is None:
        fig = Figure(figsize=(1.0 + 2.0 * d, 1.0 + 2.0 * d), layout="constrained")
    axes = fig.subplots(d, d, squeeze=False)
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if j > i:
                fig.delaxes(ax)
                continue
            for k, (values, colour) in enumerate(zip(sets, COLOURS)):
                if i == j:
                    edges = np.linspace(*limits[i], bins + 1)
                    ax.hist(values[:, i], bins=edges, density=True, histtype="step", color=colour, linewidth=1.2)
                else:
                    _pair(ax, values[:, j], values[:, i], limits[[j, i]], bins, colour, filled=k == 0)
            if truth is not None:
                ax.axvline(truth[j], color="k", linewidth=0.8)
                if i != j:
                    ax.axhline(truth[i], color="k", linewidth=0.8)
                    ax.plot(truth[j], truth[i], "s", color="k", markersize=4)
            ax.set_xlim(limits[j])
            if i != j:
                ax.set_ylim(limits[i])
            else:
                ax.set_yticks([])  # densities: the height scale says little
            # labels only on the outer edges; inner axes share them
            if i == d - 1:
                ax.set_xlabel(names[j])
                ax.tick_params(axis="x", labelrotation=45)
            else:
                ax.tick_params(labelbottom=False)
            if j == 0 and i > 0:
                ax.set_ylabel(names[i])
            elif i != j:
                ax.tick_params(labelleft=False)
    if reference is not None:
        handles = [Line2D([], [], color=c, label=label) for c, label in zip(COLOURS, labels)]
        if d == 1:
            axes[0, 0].legend(handles=handles, frameon=False, fontsize="small")
        else:  # the empty upper triangle has room for it
            fig.legend(handles=handles, loc="upper right", frameon=False)
    return fig


def coverage(levels, coverage, *, band=None, fig: Figure | None = None) -> Figure:
    """Empirical coverage of credible regions against their nominal level.

    A calibrated posterior follows the diagonal; above it is conservative (regions too wide),
    below it overconfident.

    Args:
        levels: ``(k,)`` nominal credibility levels in [0, 1].
        coverage: ``(k,)`` fraction of simulations whose true θ fell inside the region at each
            level (e.g. from ``expected_coverage``).
        band: optional ``(lower, upper)``, each ``(k,)``, an uncertainty band around the curve.
        fig: a figure to draw into; a new one when omitted.
    """
    levels, coverage = np.asarray(levels, dtype=float), np.asarray(coverage, dtype=float)
    if levels.shape != coverage.shape or levels.ndim != 1:
        raise ValueError(f"levels and coverage must be matching 1-d arrays, got {levels.shape} and {coverage.shape}")
    order = np.argsort(levels)
    fig = Figure(figsize=(4.0, 4.0), layout="constrained") if fig is None else fig
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1.0, label="calibrated")
    if band is not None:
        lower, upper = (np.asarray(b, dtype=float)[order] for b in band)
        ax.fill_between(levels[order], lower, upper, color=COLOURS[0], alpha=0.25, linewidth=0)
    ax.plot(levels[order], coverage[order], color=COLOURS[0], label="galton")
    ax.text(0.05, 0.95, "conservative", transform=ax.transAxes, va="top", color="0.4", fontsize="small")
    ax.text(0.95, 0.05, "overconfident", transform=ax.transAxes, ha="right", color="0.4", fontsize="small")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="credibility level", ylabel="empirical coverage", aspect="equal")
    ax.legend(loc="center right", frameon=False, fontsize="small")
    return fig


def predictive(check, *, fig: Figure | None = None) -> Figure:
    """A posterior predictive check: each statistic's replicated values (histogram) against
    its observed value (line), with the p-value in the title.

    Args:
        check: a `galton.predictive.PredictiveCheck`.
        fig: a figure to draw into; a new one when omitted.
    """
    k = len(check.names)
    columns = min(k, 5)
    rows = -(-k // columns)
    fig = Figure(figsize=(2.6 * columns, 2.2 * rows), layout="constrained") if fig is None else fig
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax, name, observed, replicated, p in zip(axes, check.names, check.observed, check.replicated.T, check.p_values):
        ax.hist(replicated, bins=30, color=COLOURS[0], alpha=0.6)
        ax.axvline(observed, color="k", linewidth=1.5)
        ax.set_title(f"{name}   p = {p:.2f}", fontsize="small")
        ax.set_yticks([])
    for ax in axes[k:]:
        ax.set_visible(False)
    return fig


def sbc_ranks(
    ranks,
    *,
    n_bins: int = 20,
    max_rank: int | None = None,
    names: Sequence[str] | None = None,
    fig: Figure | None = None,
) -> Figure:
    """Histograms of simulation-based calibration ranks, one per parameter, with the band that
    99% of histograms fall in per bin when the posterior is calibrated (ranks uniform).

    Args:
        ranks: ``(n_sims, d)`` integer ranks in ``[0, max_rank]`` (rank of the true θ among
            ``max_rank`` posterior draws).
        n_bins: bars per histogram (at most ``max_rank + 1``).
        max_rank: L, the number of posterior draws per simulation; ``ranks.max()`` when
            omitted, which is right whenever some rank reached L.
        names: d parameter names for the titles.
        fig: a figure to draw into; a new one when omitted.
    """
    ranks = _as_rows(ranks, "ranks")
    if not np.all(ranks == np.round(ranks)) or ranks.min() < 0:
        raise ValueError("ranks must be non-negative integers")
    ranks = ranks.astype(int)
    n_sims, d = ranks.shape
    max_rank = int(ranks.max()) if max_rank is None else int(max_rank)
    if ranks.max() > max_rank:
        raise ValueError(f"ranks reach {ranks.max()}, above max_rank={max_rank}")
    n_bins = min(n_bins, max_rank + 1)
    # bin b holds the integer ranks in [b, b + 1) * (L + 1) / n_bins, so bins may hold unequal
    # numbers of ranks when n_bins does not divide L + 1; the band accounts for that
    edges = np.arange(n_bins + 1) * (max_rank + 1) / n_bins
    ranks_per_bin = np.diff(np.ceil(edges))
    lower = stats.binom.ppf(0.005, n_sims, ranks_per_bin / (max_rank + 1))
    upper = stats.binom.ppf(0.995, n_sims, ranks_per_bin / (max_rank + 1))
    names = _names(names, d)
    columns = min(d, 4)
    rows = -(-d // columns)
    fig = Figure(figsize=(3.0 * columns, 2.4 * rows), layout="constrained") if fig is None else fig
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        if i >= d:
            fig.delaxes(ax)
            continue
        counts = np.bincount(ranks[:, i] * n_bins // (max_rank + 1), minlength=n_bins)
        ax.fill_between(edges, np.append(lower, lower[-1]), np.append(upper, upper[-1]), step="post", color="0.85", linewidth=0)
        ax.stairs(counts, edges, color=COLOURS[0], linewidth=1.2)
        ax.set(xlim=(0, max_rank + 1), title=names[i], xlabel="rank")
        if i % columns == 0:
            ax.set_ylabel("simulations")
    return fig


def loss_curves(history: dict, *, fig: Figure | None = None) -> Figure:
    """Training and validation loss per epoch, with the best epoch marked when given.

    Args:
        history: ``{"train_loss": [...], "validation_loss": [...]}`` per epoch (0-based), and
            optionally ``"best_epoch"``, as returned by training.
        fig: a figure to draw into; a new one when omitted.
    """
    missing = {"train_loss", "validation_loss"} - set(history)
    if missing:
        raise ValueError(f"history lacks {sorted(missing)}; it has {sorted(history)}")
    fig = Figure(figsize=(5.0, 3.5), layout="constrained") if fig is None else fig
    ax = fig.subplots()
    ax.plot(np.asarray(history["train_loss"], dtype=float), label="train")
    ax.plot(np.asarray(history["validation_loss"], dtype=float), label="validation")
    best = history.get("best_epoch")
    if best is not None and best >= 0:
        ax.axvline(best, color="0.5", linestyle="--", linewidth=1.0, label=f"best epoch ({best})")
    ax.set(xlabel="epoch", ylabel="loss")
    ax.legend(frameon=False)
    return fig


__all__ = ["corner", "coverage", "loss_curves", "sbc_ranks"]


def marginals(posterior, *, reference=None, truth=None, grid: int = 120, consistent: bool = False, fig: Figure | None = None) -> Figure:
    """A corner plot drawn from TMNRE's 1-D and 2-D estimators directly: each marginal's density
    on a grid (no sampling noise), with the 68 % and 95 % highest-density contours of each pair.

    Args:
        posterior: a `TMNREPosterior` (conditioned on an observation).
        reference: optional ``(m, d)`` samples (e.g. the exact posterior) drawn in a second colour.
        truth: optional ``(d,)`` true parameters.
        grid: points per axis of the density grids.
        consistent: each pair with its parameters' 1-D heads' margins
            (`TMNREPosterior.marginal`), so the diagonal and the pairs agree.

    Returns:
        The figure; panels of pairs that were not estimated are left out.
    """
    names, d = list(posterior.names), posterior.dim
    estimated = set(posterior.marginals)
    draws = np.concatenate([np.asarray(posterior.marginal(n).sample(2000, key=_key(i))) for i, n in enumerate(names)], axis=1)
    sets = [draws] if reference is None else [draws, _as_rows(reference, "reference")]
    truth = None if truth is None else np.asarray(truth, dtype=float).reshape(-1)
    limits = _ranges(sets, truth)
    if fig is None:
        fig = Figure(figsize=(1.0 + 2.0 * d, 1.0 + 2.0 * d), layout="constrained")
    axes = fig.subplots(d, d, squeeze=False)
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            pair = (names[j], names[i])
            if j > i or (i != j and pair not in estimated):
                fig.delaxes(ax)
                continue
            if i == j:
                t = np.linspace(*limits[i], grid)
                ax.plot(t, np.exp(np.asarray(posterior.marginal(names[i]).log_prob(t[:, None]))), color=COLOURS[0])
                if reference is not None:
                    ax.hist(sets[1][:, i], bins=50, range=limits[i], density=True, histtype="step", color=COLOURS[1])
                ax.set_yticks([])
            else:
                tx, ty = np.linspace(*limits[j], grid), np.linspace(*limits[i], grid)
                mesh = np.stack(np.meshgrid(tx, ty), -1).reshape(-1, 2)
                density = np.exp(np.asarray(posterior.marginal(pair, consistent=consistent).log_prob(mesh))).reshape(grid, grid)
                levels = _contour_levels(density)
                if len(levels) >= 2 and levels[0] > 0:
                    ax.contourf(tx, ty, density, levels=[*levels, np.inf], colors=COLOURS[0], alpha=0.25)
                    ax.contour(tx, ty, density, levels=levels, colors=COLOURS[0], linewidths=1.0)
                if reference is not None:
                    _pair(ax, sets[1][:, j], sets[1][:, i], limits[[j, i]], 50, COLOURS[1], filled=False)
                ax.set_ylim(limits[i])
            if truth is not None:
                ax.axvline(truth[j], color="k", linewidth=0.8)
                if i != j:
                    ax.axhline(truth[i], color="k", linewidth=0.8)
            ax.set_xlim(limits[j])
            if i == d - 1 or (i != j and all((names[j], names[k]) not in estimated for k in range(i + 1, d))):
                ax.set_xlabel(names[j])
            if j == 0 and i > 0:
                ax.set_ylabel(names[i])
    return fig


def truncation(posterior, *, fig: Figure | None = None) -> Figure:
    """The box of each round, one panel per parameter: how TMNRE narrowed the prior.

    Args:
        posterior: a `TMNREPosterior`; its ``rounds`` hold each round's box and simulation counts.
    """
    rounds = posterior.rounds
    boxes = np.asarray([r["box"] for r in rounds], dtype=float)  # (R, d, 2)
    d = boxes.shape[1]
    fig = Figure(figsize=(2.2 * min(d, 5), 2.2 * -(-d // 5) + 0.4), layout="constrained") if fig is None else fig
    axes = np.atleast_1d(fig.subplots(-(-d // 5), min(d, 5), squeeze=False)).ravel()
    finite = np.where(np.isfinite(boxes), boxes, np.nan)
    for i, ax in enumerate(axes):
        if i >= d:
            fig.delaxes(ax)
            continue
        low, high = finite[:, i, 0], finite[:, i, 1]
        span = np.nanmax(high) - np.nanmin(low) if np.isfinite(np.nanmax(high) - np.nanmin(low)) else 1.0
        low = np.where(np.isnan(low), np.nanmin(low) - 0.1 * span, low)  # an uncut unbounded edge: drawn open
        high = np.where(np.isnan(high), np.nanmax(high) + 0.1 * span, high)
        ax.bar(np.arange(1, len(rounds) + 1), high - low, bottom=low, color=COLOURS[0], alpha=0.6, width=0.6)
        ax.set(title=posterior.names[i], xlabel="round", xticks=np.arange(1, len(rounds) + 1))
    fig.suptitle(f"truncation: {', '.join(str(r['new']) for r in rounds)} new simulations per round", fontsize="small")
    return fig


def _key(i: int):
    import jax

    return jax.random.key(i)
