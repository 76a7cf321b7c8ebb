"""Marginal posteriors from TMNRE's ratio heads: ratio × truncated prior, normalised on a grid.

A head d_m(θ_m, x) ≈ log p(θ_m | x) / p_box(θ_m) with p_box the prior restricted to the
round's box. In the prior's quantile space u = F(θ) the box is a rectangle and the truncated
prior is uniform, so the marginal posterior's density there is exp(d_m) / Z with Z a sum over
an even grid of cells; in θ it is that times the prior's marginal densities. Draws pick a cell
by its weight and a uniform point inside it, then map back by F⁻¹.

After correlated truncation the last proposal is a region inside the box, no longer uniform
in the marginal's quantile coordinates: its marginal density p_R(u_m) comes from a histogram of
draws of the region (``region_draws``), a factor on every cell's weight and on ``log_prob``.

The heads train separately, so a pair's margins need not match its parameters' 1-D heads. With
``consistent=True`` a pair's grid keeps its own odds ratios between cells and takes the 1-D heads'
margins: iterative proportional fitting (Sinkhorn) scales its rows and columns, so a corner plot's
diagonal and off-diagonal agree. The 1-D heads learn an easier function from the same simulations;
on slcp_distractors their margins were the closer to the reference (see docs/tmnre_accuracy.md).
"""

from __future__ import annotations

import math
from typing import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from galton.keys import as_key
from galton.posteriors.base import check_draws, check_theta_width, samples_to_arviz
from galton.posteriors.network import NetworkPosterior, check_x, check_xs
from galton.prior import Prior
from galton.problem import ProblemError
from galton.ratio import MarginalRatioNetwork, marginal_skeleton
from galton.regions import DrawnRegion
from galton.truncation import Quantiles, TruncatedPrior

GRID = {1: 4096, 2: 160}  # cells per axis: 4096 for a 1-D marginal, 160 x 160 for a 2-D one
REGION_BINS = {1: 128, 2: 48}  # histogram of the region's draws: about 30 per bin for 65,536 draws in 2-D
SINKHORN_STEPS = 50  # row and column scalings of a consistent pair: its margins then match to about 1e-4


def region_table(region_draws, u_low, u_high) -> np.ndarray:
    """log p_R on an even grid of bins over the box (a marginal's columns): draws ``(m, k)`` -> ``(B,)*k``
    (−inf where no draw fell); zeros ``(1,)*k`` (uniform) without draws."""
    k = len(u_low)
    if region_draws is None:
        return np.zeros((1,) * k, np.float32)
    bins = REGION_BINS[k]
    counts, _ = np.histogramdd(np.asarray(region_draws, np.float64), bins=bins, range=list(zip(u_low, u_high)))
    with np.errstate(divide="ignore"):
        return np.log(counts / counts.sum() * bins**k).astype(np.float32)


def _cell_index(u_cols: jax.Array, u_low: jax.Array, u_high: jax.Array, bins: int) -> jax.Array:
    """The even grid's cell ``(..., k)`` (int) of quantiles ``(..., k)`` in the box, ``bins`` a side."""
    return jnp.clip(jnp.floor((u_cols - u_low) / (u_high - u_low) * bins).astype(jnp.int32), 0, bins - 1)


def _region_term(table: jax.Array, u_low: jax.Array, u_high: jax.Array, u_cols: jax.Array) -> jax.Array:
    """log p_R at quantiles ``(..., k)`` of the marginal's columns -> ``(...)``."""
    index = _cell_index(u_cols, u_low, u_high, table.shape[0])
    return table[tuple(index[..., i] for i in range(u_cols.shape[-1]))]


def _cells(u_low: np.ndarray, u_high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres ``(G, k)`` of an even grid over the box, and the cell widths ``(k,)``."""
    k = len(u_low)
    steps = (np.arange(GRID[k]) + 0.5) / GRID[k]
    axes = [u_low[i] + steps * (u_high[i] - u_low[i]) for i in range(k)]
    centres = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, k)
    return centres.astype(np.float32), ((u_high - u_low) / GRID[k]).astype(np.float32)


def _full_theta(quantiles: Quantiles, cols: jax.Array, u_cols: jax.Array, u_fill: jax.Array) -> jax.Array:
    """θ rows ``(..., d)`` with the marginal's columns at quantiles ``u_cols`` and the rest at ``u_fill``."""
    u = jnp.broadcast_to(u_fill, (*u_cols.shape[:-1], u_fill.shape[-1]))
    return quantiles.icdf(u.at[..., cols].set(u_cols))


# head and cols are traced, so one compiled program serves every marginal of a size
def _grid_logits(network: MarginalRatioNetwork, quantiles, head, cols, centres, u_fill, features, region) -> jax.Array:
    """log-ratios + log p_R ``(m, G)`` of one head over the grid, for the features ``(m, e)`` of m observations."""
    theta = _full_theta(quantiles, cols, centres, u_fill)  # (G, d)
    table, lo, hi = region
    return network.head_log_ratios(theta[None], features[:, None], heads=head[None])[..., 0] + _region_term(table, lo, hi, centres)


def _scalings(logits, network, quantiles, cols, centres, u_fill, features, margins) -> tuple[jax.Array, jax.Array] | None:
    """log row and column factors ``(m, G)`` each that give a pair's grid ``logits`` ``(m, G²)`` its
    1-D heads' margins (``margins``: those heads ``(2,)`` and their region tables), or None without."""
    if margins is None:
        return None
    heads, tables = margins
    side = round(math.sqrt(centres.shape[0]))
    grid = logits.reshape(-1, side, side)
    axes = (centres.reshape(side, side, 2)[:, 0, :1], centres.reshape(side, side, 2)[0, :, 1:])
    targets = [jax.nn.log_softmax(_grid_logits(network, quantiles, heads[i], cols[i:i + 1], axes[i], u_fill, features, tables[i]), -1)
               for i in range(2)]

    def finite_lse(v, axis):  # a row or column without mass keeps none
        out = jax.nn.logsumexp(v, axis=axis)
        return jnp.where(jnp.isfinite(out), out, 0.0)

    def step(_, ab):
        a, b = ab
        a = targets[0] - finite_lse(grid + b[:, None, :], 2)
        return a, targets[1] - finite_lse(grid + a[:, :, None], 1)

    zeros = jnp.zeros(grid.shape[:2], grid.dtype)
    return jax.lax.fori_loop(0, SINKHORN_STEPS, step, (zeros, zeros))


def _scaled(logits: jax.Array, scalings) -> jax.Array:
    """A pair's grid logits ``(m, G²)`` with its row and column factors added."""
    if scalings is None:
        return logits
    a, b = scalings
    return (logits.reshape(a.shape + b.shape[-1:]) + a[:, :, None] + b[:, None, :]).reshape(logits.shape)


@eqx.filter_jit
def _log_prob(network, quantiles, head, cols, box, region, theta, xs, margins=None) -> jax.Array:
    u_low, u_high, centres, width, u_fill = box
    fill = quantiles.icdf(u_fill)
    full = jnp.broadcast_to(fill, (*theta.shape[:-1], fill.shape[-1])).at[..., cols].set(theta)
    u_cols = quantiles.cdf(full)[..., cols]
    features = network.embed(xs)
    lr = network.head_log_ratios(full, features[:, None], heads=head[None])[..., 0] + _region_term(*region, u_cols)
    log_f = quantiles.log_density(full)[..., cols].sum(-1)
    inside = jnp.all((u_cols >= u_low[cols]) & (u_cols <= u_high[cols]), axis=-1)
    logits = _grid_logits(network, quantiles, head, cols, centres, u_fill, features, region)
    scalings = _scalings(logits, network, quantiles, cols, centres, u_fill, features, margins)
    if scalings is not None:  # the factors of the cell each θ falls in
        cell = _cell_index(u_cols, u_low[cols], u_high[cols], scalings[0].shape[-1])
        lr = lr + jnp.take_along_axis(scalings[0], cell[..., 0], -1) + jnp.take_along_axis(scalings[1], cell[..., 1], -1)
    log_norm = jax.nn.logsumexp(_scaled(logits, scalings), axis=-1) + jnp.log(width).sum()
    return jnp.where(inside, lr - log_norm[:, None] + log_f, -jnp.inf)


@eqx.filter_jit
def _sample(network, quantiles, head, cols, centres, width, u_fill, region, xs, key, n: int, margins=None) -> jax.Array:
    features = network.embed(xs)
    logits = _grid_logits(network, quantiles, head, cols, centres, u_fill, features, region)
    logits = _scaled(logits, _scalings(logits, network, quantiles, cols, centres, u_fill, features, margins))
    k_cell, k_jitter = jax.random.split(key)
    # inverse-CDF draws of the cells: Gumbel-max over the grid would cost n x G noise per observation
    cdf = jnp.cumsum(jax.nn.softmax(logits, axis=-1), axis=-1)
    uniforms = jax.random.uniform(k_cell, (len(xs), n)) * cdf[:, -1:]
    cells = jnp.minimum(jax.vmap(jnp.searchsorted)(cdf, uniforms), centres.shape[0] - 1)
    jitter = jax.random.uniform(k_jitter, (len(xs), n, cols.shape[0]), minval=-0.5, maxval=0.5)
    u = centres[cells] + jitter * width
    return _full_theta(quantiles, cols, u, u_fill)[..., cols]


class _OnMarginalHeads(NetworkPosterior):
    """What the two kinds share: a `MarginalRatioNetwork`, one observation at a time, and the
    draws ``(m, d)`` in quantile space of a correlated truncation's region (None after a box)."""

    region_draws: np.ndarray | None = None

    def _replace(self, **changes):
        return super()._replace(**{"region_draws": self.region_draws, **changes})

    def _state(self):
        meta, arrays = super()._state()
        return meta, arrays if self.region_draws is None else {**arrays, "region_draws": self.region_draws}

    @classmethod
    def _from_state(cls, meta, arrays):
        region_draws = arrays.pop("region_draws", None)
        posterior = super()._from_state(meta, arrays)
        return posterior._replace(region_draws=region_draws) if region_draws is not None else posterior

    @classmethod
    def _skeleton(cls, meta):
        return marginal_skeleton(meta["spec"])

    def _check_obs(self, x) -> jax.Array:
        return check_x(x, self.network.x_shape, iid=False)


class MarginalPosterior(_OnMarginalHeads):
    """The posterior of one 1-D or 2-D marginal, from its TMNRE head and the last round's box.

    ``sample(n, key=)`` gives ``(n, k)``, ``log_prob(θ_m)`` takes ``(n, k)``; both amortized
    over x inside the box (``condition(x)``, ``sample_batch``, ``log_prob_batch``). A pair with
    ``margins`` (the head indices of its parameters' 1-D marginals) takes those heads' margins
    (see the module).
    """

    kind = "tmnre_marginal"
    settings = ("u_low", "u_high", "head", "rounds", "margins")

    def __init__(self, network, prior: Prior, x_obs=None, history=None, *, u_low, u_high, head: int, rounds=(), region_draws=None,
                 margins=None):
        self.u_low, self.u_high = [float(v) for v in u_low], [float(v) for v in u_high]
        self.head, self.rounds = int(head), list(rounds)
        self.margins = None if margins is None else [int(h) for h in margins]
        self.region_draws = None if region_draws is None else np.asarray(region_draws, np.float32)
        self.quantiles = Quantiles.of(prior)
        super().__init__(network, prior, x_obs, history)
        self.columns = network.marginals[self.head]
        self.names = [prior.names[c] for c in self.columns]
        lo, hi = np.asarray(self.u_low), np.asarray(self.u_high)
        self._u_fill = jnp.asarray(0.5 * (lo + hi), jnp.float32)
        cols = list(self.columns)
        self._centres, self._width = _cells(lo[cols], hi[cols])
        self._region = self._region_of(cols)
        self._margins = None
        if self.margins is not None:
            if len(cols) != 2 or [network.marginals[h] for h in self.margins] != [(c,) for c in cols]:
                raise ValueError(f"margins {self.margins} are not the 1-D heads of the pair {tuple(self.names)}")
            self._margins = (jnp.asarray(self.margins, jnp.int32), tuple(self._region_of([c]) for c in cols))

    def _region_of(self, cols: list[int]) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The region table of these columns, with the box's quantile bounds there."""
        lo, hi = np.asarray(self.u_low)[cols], np.asarray(self.u_high)[cols]
        table = region_table(None if self.region_draws is None else self.region_draws[:, cols], lo, hi)
        return jnp.asarray(table), jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)

    def _head(self) -> tuple[jax.Array, jax.Array]:
        return jnp.asarray(self.head, jnp.int32), jnp.asarray(self.columns, jnp.int32)

    def log_prob_batch(self, theta, xs) -> jax.Array:
        """log p(θ_m | x_j) for θ ``(m, n, k)`` and xs ``(m, *x_shape)`` -> ``(m, n)``."""
        theta, xs = jnp.asarray(theta, jnp.float32), check_xs(xs, self.network.x_shape)
        if theta.ndim != 3 or theta.shape[0] != xs.shape[0] or theta.shape[-1] != len(self.columns):
            raise ProblemError(f"theta has shape {theta.shape}; expected (m, n, {len(self.columns)}) for the marginal "
                               f"{tuple(self.names)} at m = {xs.shape[0]} observations")
        box = (jnp.asarray(self.u_low), jnp.asarray(self.u_high), jnp.asarray(self._centres), jnp.asarray(self._width), self._u_fill)
        return _log_prob(self.network, self.quantiles, *self._head(), box, self._region, theta, xs, self._margins)

    def log_prob(self, theta, x=None) -> jax.Array:
        theta, _ = check_theta_width(theta, len(self.columns))
        lp = self.log_prob_batch(theta.reshape(1, -1, theta.shape[-1]), self._x(x)[None])[0]
        return lp.reshape(theta.shape[:-1])

    def sample_batch(self, n: int, *, key: jax.Array, xs) -> jax.Array:
        """``n`` draws for each observation: xs ``(m, *x_shape)`` -> ``(m, n, k)``."""
        xs = check_xs(xs, self.network.x_shape)
        return _sample(self.network, self.quantiles, *self._head(), jnp.asarray(self._centres), jnp.asarray(self._width), self._u_fill,
                       self._region, xs, as_key(key), check_draws(n), self._margins)

    def sample(self, n: int, *, key: jax.Array, x=None) -> jax.Array:
        return self.sample_batch(n, key=key, xs=self._x(x)[None])[0]

    def grid(self, x=None) -> tuple[np.ndarray, np.ndarray]:
        """The normalised density on the grid: θ at the cell centres ``(G, k)`` and p(θ_m | x) ``(G,)``
        (for plots: a 2-D marginal's grid is 160 x 160 in quantile space, row-major)."""
        cols = jnp.asarray(self.columns)
        theta = _full_theta(self.quantiles, cols, jnp.asarray(self._centres), self._u_fill)[..., cols]
        return np.asarray(theta), np.asarray(jnp.exp(self.log_prob(theta, x)))


class TMNREPosterior(_OnMarginalHeads):
    """What TMNRE returns: every marginal's posterior, the last round's box and the truncation history.

    Attributes:
        marginals: the estimated marginals, as tuples of parameter names.
        rounds: one record per round: ``box`` (d, 2) in θ, ``quantile_box`` (d, 2), ``new`` and
            ``pooled`` simulation counts.

    ``sample`` and ``log_prob`` serve the joint posterior when one marginal covers every
    parameter (problems of one or two parameters); otherwise use `marginal`. `to_arviz`
    exports each parameter's 1-D marginal draws.
    """

    kind = "tmnre"
    settings = ("u_low", "u_high", "rounds")

    def __init__(self, network, prior: Prior, x_obs=None, history=None, *, u_low, u_high, rounds=(), region_draws=None):
        self.u_low, self.u_high = [float(v) for v in u_low], [float(v) for v in u_high]
        self.rounds = list(rounds)
        self.region_draws = None if region_draws is None else np.asarray(region_draws, np.float32)
        super().__init__(network, prior, x_obs, history)
        self.marginals = [tuple(prior.names[c] for c in m) for m in network.marginals]

    @property
    def proposal(self) -> TruncatedPrior | DrawnRegion:
        """The last round's proposal: the truncated prior, or after correlated truncation its
        region as draws (resampled)."""
        box = TruncatedPrior(Quantiles.of(self.prior), self.u_low, self.u_high)
        if self.region_draws is None:
            return box
        return DrawnRegion(box.quantiles, jnp.asarray(self.region_draws), box.u_low, box.u_high)

    def marginal(self, names: str | Sequence[str], *, consistent: bool = False) -> MarginalPosterior:
        """The posterior of one estimated marginal, e.g. ``marginal(("a", "b"))`` or ``marginal("a")``.

        ``consistent=True``: a pair takes its parameters' 1-D heads' margins (when both were
        estimated), keeping its own dependence between them; see `galton.posteriors.marginal`."""
        wanted = (names,) if isinstance(names, str) else tuple(names) if isinstance(names, (tuple, list)) else (names,)
        if wanted not in self.marginals:
            hint = f"; it was estimated as {wanted[::-1]}" if wanted[::-1] in self.marginals else ""
            raise ValueError(f"{wanted} is not among the estimated marginals {self.marginals}{hint}")
        margins = None
        if consistent and len(wanted) == 2:
            missing = [(n,) for n in wanted if (n,) not in self.marginals]
            if missing:
                raise ValueError(f"consistent=True gives {wanted} its parameters' 1-D heads' margins, but {missing} "
                                 f"{'is' if len(missing) == 1 else 'are'} not among the estimated marginals {self.marginals}")
            margins = [self.marginals.index((n,)) for n in wanted]
        return MarginalPosterior(
            self.network, self.prior, self.x_obs, self.history, u_low=self.u_low, u_high=self.u_high, head=self.marginals.index(wanted),
            rounds=self.rounds, region_draws=self.region_draws, margins=margins,
        )

    def _joint(self) -> MarginalPosterior:
        full = [m for m in self.marginals if len(m) == self.dim]
        if not full:
            raise ValueError(
                f"TMNRE estimated the marginals {self.marginals}, not the joint posterior of all {self.dim} "
                "parameters: use posterior.marginal(names), marginal_samples or to_arviz"
            )
        return self.marginal(tuple(self.names))

    def sample(self, n: int, *, key: jax.Array, x=None) -> jax.Array:
        return self._joint().sample(n, key=key, x=self._x(x))

    def log_prob(self, theta, x=None) -> jax.Array:
        return self._joint().log_prob(theta, x=self._x(x))

    def sample_batch(self, n: int, *, key: jax.Array, xs) -> jax.Array:
        return self._joint().sample_batch(n, key=key, xs=xs)

    def log_prob_batch(self, theta, xs) -> jax.Array:
        return self._joint().log_prob_batch(theta, xs)

    def marginal_samples(self, n: int, *, key: jax.Array, x=None, consistent: bool = False) -> dict[tuple[str, ...], np.ndarray]:
        """``n`` draws ``(n, k)`` of every estimated marginal, keyed by its names (``consistent``: as `marginal`)."""
        keys = jax.random.split(as_key(key), len(self.marginals))
        x = self._x(x)
        return {m: np.asarray(self.marginal(m, consistent=consistent).sample(n, key=k, x=x)) for k, m in zip(keys, self.marginals)}

    def to_arviz(self, *, n: int = 1000, key: jax.Array | None = None):
        """Each parameter's 1-D marginal draws as one ArviZ variable (draws of different parameters
        are independent: the joint structure lives in the 2-D marginals)."""
        key = jax.random.key(0) if key is None else as_key(key)
        keys = jax.random.split(key, self.dim)
        columns = [np.asarray(self.marginal(name).sample(check_draws(n), key=k))[:, 0] for k, name in zip(keys, self.names)]
        return samples_to_arviz(np.stack(columns, -1), self.names)


__all__ = ["MarginalPosterior", "TMNREPosterior"]
