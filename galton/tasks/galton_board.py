"""A generalised Galton board (after Brehmer et al., "Mining gold from implicit models", 2020).

Each ball falls through ``n_rows`` rows of pins. At row r (0-based) a ball at net position
``pos`` (rights minus lefts so far) goes right with probability

    p(θ, pos, r) = ½ (1 − w_r) + w_r · sigmoid(5 θ (pos / √n_rows − ½)),   w_r = sin(π r / (n_rows − 1)),

so the first and last rows are fair and the middle rows push balls away from (θ > 0) or
towards (θ < 0) the line pos = ½√n_rows. x is each ball's final slot, its number of right
deflections, in 0..n_rows; the deflections z ``(n_rows, n_balls)`` are latent Bernoullis.
θ ~ U(-1, 1).

The model is a `Program` (the path is a NumPyro ``scan``; x is a Delta site, so
log p(x, z | θ) is the sum of the Bernoulli log-probabilities). p(x | θ) itself sums over
2^n_rows paths, but a forward recursion over the slot reached so far computes it exactly in
O(n_rows²) (`log_marginal_likelihood`), which gives an exact grid reference posterior.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan

from galton.checks import check_count
from galton.problem import Program
from galton.tasks.base import Task

PRIOR_LOW, PRIOR_HIGH = -1.0, 1.0
STRENGTH = 5.0


def p_right(theta: jax.Array, position: jax.Array, row: jax.Array, n_rows: int) -> jax.Array:
    """Probability of a right deflection at ``row`` from net ``position``; broadcasts over all arguments."""
    w = jnp.sin(jnp.pi * row / (n_rows - 1))
    push = jax.nn.sigmoid(STRENGTH * theta * (position / jnp.sqrt(n_rows) - 0.5))
    return 0.5 * (1.0 - w) + w * push


def model(n_rows: int = 20, n_balls: int = 1):
    """θ ``()``, latent deflections z ``(n_rows, n_balls)`` (1 = right), slots x ``(n_balls,)``."""
    theta = numpyro.sample("theta", dist.Uniform(PRIOR_LOW, PRIOR_HIGH))

    def fall_one_row(position, row):
        right = numpyro.sample("z", dist.Bernoulli(probs=p_right(theta, position, row, n_rows)))
        return position + 2.0 * right - 1.0, None

    position, _ = scan(fall_one_row, jnp.zeros(n_balls), jnp.arange(n_rows))
    numpyro.sample("x", dist.Delta((position + n_rows) / 2.0, event_dim=1))


def slot_probabilities(theta: jax.Array, n_rows: int = 20) -> jax.Array:
    """p(slot | θ) ``(n_rows + 1,)`` for one scalar θ, by forward recursion over the rows."""
    slots = jnp.arange(n_rows + 1)

    def row_step(probs, row):
        p = p_right(theta, 2.0 * slots - row, row, n_rows)  # slot k after `row` rows is position 2k - row
        return probs * (1 - p) + jnp.concatenate([jnp.zeros(1), (probs * p)[:-1]]), None

    start = jnp.zeros(n_rows + 1).at[0].set(1.0)
    return jax.lax.scan(row_step, start, jnp.arange(n_rows))[0]


def log_marginal_likelihood(x: jax.Array, theta: jax.Array, n_rows: int = 20) -> jax.Array:
    """Exact log p(x | θ) of iid slots x ``(n_balls,)`` (integers 0..n_rows) for θ ``(...)``: ``(...)``."""
    x = jnp.asarray(x).astype(jnp.int32)
    theta = jnp.asarray(theta)
    probs = jax.vmap(lambda t: slot_probabilities(t, n_rows))(theta.reshape(-1))  # (m, n_rows + 1)
    return jnp.log(probs[:, x]).sum(-1).reshape(theta.shape)


def grid_posterior(x: jax.Array, n_rows: int = 20, n_grid: int = 4001) -> tuple[jax.Array, jax.Array]:
    """Exact posterior on a grid over the prior's support: (grid ``(n_grid,)``, normalised density ``(n_grid,)``)."""
    grid = jnp.linspace(PRIOR_LOW, PRIOR_HIGH, n_grid)
    log_post = log_marginal_likelihood(x, grid, n_rows)  # the prior is flat
    w = jnp.exp(log_post - log_post.max())
    return grid, w / jnp.trapezoid(w, grid)


def reference_posterior(x: jax.Array, n: int, key: jax.Array, *, n_rows: int = 20) -> jax.Array:
    """``n`` draws ``(n, 1)`` of p(θ | x) for slots x ``(n_balls,)``, by inverting the grid CDF."""
    grid, density = grid_posterior(x, n_rows)
    # trapezoid-rule CDF so linear interpolation of its inverse matches the piecewise-linear density
    cdf = jnp.concatenate([jnp.zeros(1), jnp.cumsum((density[1:] + density[:-1]) / 2 * jnp.diff(grid))])
    u = jax.random.uniform(key, (n,)) * cdf[-1]
    return jnp.interp(u, cdf, grid)[:, None]


@functools.cache
def _program(n_rows: int, n_balls: int) -> Program:
    return Program(
        functools.partial(model, n_rows=n_rows, n_balls=n_balls),
        params=["theta"],
        observed=["x"],
        name=f"galton_board_{n_rows}x{n_balls}",
    )


def _true_theta(k: int) -> jax.Array:
    return jax.random.uniform(jax.random.key(1000 + k), (1,), minval=PRIOR_LOW, maxval=PRIOR_HIGH)


def task(n_rows: int = 20, n_balls: int = 1) -> Task:
    """The board with ``n_rows`` rows observed through ``n_balls`` iid balls (x ``(n_balls,)``).

    Observation k is simulated with key k at θ_k drawn from the prior with key 1000 + k.
    """
    n_rows, n_balls = check_count(n_rows, "n_rows", minimum=2), check_count(n_balls, "n_balls")
    program = _program(n_rows, n_balls)
    return Task(
        name="galton_board",
        problem=program,
        observations=lambda k: program.simulate_flat(jax.random.key(k), _true_theta(k)),
        true_parameters_of=_true_theta,
        reference=functools.partial(reference_posterior, n_rows=n_rows),
        n_observations=10,
        description=f"generalised Galton board, {n_rows} rows, {n_balls} ball(s); 1 parameter, latent paths",
    )
