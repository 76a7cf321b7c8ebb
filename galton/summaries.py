"""Learned summary statistics: a compressor s = f(x) trained on simulations, for ABC and as an
embedding of the neural methods.

A compressor is an embedding network (any `galton.nets` module) and a linear head on z-scored
x. Losses, for θ z-scored on the training set (Zeghal et al. compare them; only the mutual
information ones are sufficient in general):
    mse   ‖f(x) − θ‖²                              regression to the posterior mean
    mae   ‖f(x) − θ‖₁                              regression to the posterior median
    gnll  −log N(θ; f(x), (L Lᵀ)⁻¹), L from more head outputs   mean and covariance
    vmim  −log q(θ | f(x)), q a small conditional flow trained jointly   (Barber–Agakov bound)
    nass  JSD bound: softplus(−T(θ, s)) + softplus(T(θ', s)), T a critic, θ' another row's θ
The summaries are the first ``summaries`` head outputs (θ's dimension by default). A fitted
`Compressor` is a function of one x: pass it as ``summary=`` to an ABC method, or as
``embedding=`` to NPE / NLE / NRE / TMNRE (fine-tuned there; ``compressor.frozen()`` keeps it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import paramax

from galton import nets
from galton.checks import check_count
from galton.flows import conditional_flow, standardisation
from galton.store import Simulations
from galton.train import Training, train

LOSSES = ("mse", "mae", "gnll", "vmim", "nass", "sally")


class CompressorError(ValueError):
    """A compressor used on data it was not trained for, or bad settings."""


class Compressor(eqx.Module):
    """s = head(network((x − shift) / scale))[:summaries] for one x ``(*x_shape)`` -> ``(summaries,)``.

    Attributes:
        network: the embedding (a `galton.nets` module), wrapped in ``paramax.NonTrainable`` when frozen.
        head: linear map from the embedding to ``outputs`` values (gnll's also carry the precision).
        problem: the name of the problem it was trained on; loss: the loss it was trained with.
    """

    network: eqx.Module
    head: eqx.nn.Linear
    x_shift: paramax.NonTrainable
    x_scale: paramax.NonTrainable
    summaries: int = eqx.field(static=True)
    outputs: int = eqx.field(static=True)
    problem: str = eqx.field(static=True)
    loss: str = eqx.field(static=True)
    is_frozen: bool = eqx.field(static=True)
    history_json: str  # a leaf, not static: a skeleton rebuilt from the spec has the same structure
    standardises_input = True  # the flows and ratio networks give it raw x

    def __init__(self, network, *, summaries: int, outputs: int, problem: str = "", loss: str = "", frozen: bool = False,
                 x_shift=None, x_scale=None, head=None, history: dict | None = None, key: jax.Array | None = None):
        key = jax.random.key(0) if key is None else key
        k_net, k_head = jax.random.split(key)
        network = nets.build(network, key=k_net) if isinstance(network, dict) else paramax.unwrap(network)
        x_shape = tuple(network.spec["in_shape"])
        width = int(jax.eval_shape(network, jnp.zeros(x_shape)).shape[0])
        head = paramax.unwrap(head) if head is not None else eqx.nn.Linear(width, outputs, key=k_head)
        # frozen: both wrapped, so the training loop leaves them out of its parameters
        self.network = paramax.NonTrainable(network) if frozen else network
        self.head = paramax.NonTrainable(head) if frozen else head
        self.x_shift = paramax.NonTrainable(jnp.zeros(x_shape) if x_shift is None else jnp.asarray(x_shift, jnp.float32))
        self.x_scale = paramax.NonTrainable(jnp.ones(x_shape) if x_scale is None else jnp.asarray(x_scale, jnp.float32))
        self.summaries, self.outputs, self.problem, self.loss, self.is_frozen = int(summaries), int(outputs), problem, loss, frozen
        self.history_json = json.dumps(history or {})

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(paramax.unwrap(self.network).spec["in_shape"])

    @property
    def history(self) -> dict:
        """The training history (losses per epoch) of `fit`."""
        return json.loads(self.history_json)

    @property
    def spec(self) -> dict:
        return {"kind": "Compressor", "network": paramax.unwrap(self.network).spec, "summaries": self.summaries,
                "outputs": self.outputs, "problem": self.problem, "loss": self.loss, "frozen": self.is_frozen}

    def check_input(self, x_shape: Sequence[int]) -> None:
        """Raise `CompressorError` unless one x has shape ``x_shape``."""
        if tuple(x_shape) != self.x_shape:
            raise CompressorError(
                f"this compressor was trained on x of shape {self.x_shape}" + (f" (problem {self.problem!r})" if self.problem else "")
                + f" and cannot summarise x of shape {tuple(x_shape)}"
            )

    def outputs_of(self, x: jax.Array) -> jax.Array:
        """All head outputs ``(outputs,)`` for one x."""
        if x.shape != self.x_shape:
            self.check_input(x.shape)
        z = (x - paramax.unwrap(self.x_shift)) / paramax.unwrap(self.x_scale)
        return paramax.unwrap(self.head)(paramax.unwrap(self.network)(z))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.outputs_of(x)[: self.summaries]

    def _rebuild(self, **changes) -> "Compressor":
        settings = dict(summaries=self.summaries, outputs=self.outputs, problem=self.problem, loss=self.loss, frozen=self.is_frozen,
                        x_shift=paramax.unwrap(self.x_shift), x_scale=paramax.unwrap(self.x_scale), head=self.head, history=self.history)
        return Compressor(self.network, **{**settings, **changes})

    def frozen(self) -> "Compressor":
        """The same compressor with its weights held fixed when it is an embedding of a method."""
        return self._rebuild(frozen=True)

    def save(self, path) -> Path:
        """Write ``compressor.json`` and ``weights.eqx`` into the directory ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        eqx.tree_serialise_leaves(path / "weights.eqx", self._rebuild(frozen=False))
        (path / "compressor.json").write_text(json.dumps({**self.spec, "frozen": False, "history": self.history}))
        return path

    def __repr__(self) -> str:
        return f"Compressor({self.loss}, x {self.x_shape} -> {self.summaries} summaries, trained on {self.problem or 'unnamed data'})"


nets.NETS["Compressor"] = Compressor  # so that a method's saved network rebuilds its compressor embedding


def load(path) -> Compressor:
    """A compressor written by `Compressor.save`."""
    path = Path(path)
    meta = json.loads((path / "compressor.json").read_text())
    history = meta.pop("history", {})
    meta.pop("kind")
    skeleton = Compressor(**meta, history=history)
    return eqx.tree_deserialise_leaves(path / "weights.eqx", skeleton)


# ---------------------------------------------------------------------------------------- losses


class _Trainable(eqx.Module):
    """What one loss trains: the compressor, its partner (flow or critic), θ's z-scoring."""

    compressor: Compressor
    partner: eqx.Module | None
    theta_shift: paramax.NonTrainable
    theta_scale: paramax.NonTrainable

    def summarise(self, x):
        return jax.vmap(self.compressor.outputs_of)(x)

    def theta_z(self, theta):
        return (theta - paramax.unwrap(self.theta_shift)) / paramax.unwrap(self.theta_scale)


def _mse(model: _Trainable, batch, key):
    theta, x = batch
    return jnp.sum((model.summarise(x) - model.theta_z(theta)) ** 2, -1).mean()


def _mae(model: _Trainable, batch, key):
    theta, x = batch
    return jnp.sum(jnp.abs(model.summarise(x) - model.theta_z(theta)), -1).mean()


def _precision_cholesky(raw: jax.Array, d: int) -> jax.Array:
    """Lower-triangular L ``(..., d, d)`` with a positive diagonal from ``d(d+1)/2`` values."""
    rows, cols = jnp.tril_indices(d)
    lower = jnp.zeros((*raw.shape[:-1], d, d)).at[..., rows, cols].set(raw)
    diagonal = jnp.exp(jnp.diagonal(lower, axis1=-2, axis2=-1))
    return lower.at[..., jnp.arange(d), jnp.arange(d)].set(diagonal)


def _gnll(model: _Trainable, batch, key):
    theta, x = batch
    out = model.summarise(x)
    d = theta.shape[-1]
    mean, chol = out[:, :d], _precision_cholesky(out[:, d:], d)
    r = jnp.einsum("nji,nj->ni", chol, model.theta_z(theta) - mean)  # Lᵀ (θ − μ)
    return (0.5 * jnp.sum(r**2, -1) - jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)).mean()


def _vmim(model: _Trainable, batch, key):
    theta, x = batch
    s = model.summarise(x)[:, : model.compressor.summaries]
    return -model.partner.log_prob(theta, s).mean()


def _nass(model: _Trainable, batch, key):
    theta, x = batch
    s = model.summarise(x)[:, : model.compressor.summaries]
    t = model.theta_z(theta)
    shuffled = t[jnp.roll(jax.random.permutation(key, t.shape[0]), 1)]
    critic = jax.vmap(model.partner)
    joint = critic(jnp.concatenate([t, s], -1))
    marginal = critic(jnp.concatenate([shuffled, s], -1))
    return (jax.nn.softplus(-joint) + jax.nn.softplus(marginal)).mean()


_LOSS_FUNCTIONS = {"sally": _mse, "mse": _mse, "mae": _mae, "gnll": _gnll, "vmim": _vmim, "nass": _nass}


def fit(
    simulations: Simulations,
    *,
    key: jax.Array,
    loss: str = "vmim",
    embedding: eqx.Module | None = None,
    summaries: int | None = None,
    training: Training = Training(learning_rate=1e-3, batch_size=128, patience=10),
    problem: str | None = None,
    progress: bool = True,
) -> Compressor:
    """Train a compressor on simulations θ ``(n, d)``, x ``(n, *x_shape)``.

    Args:
        key: a ``jax.random`` key.
        loss: one of ``"mse"``, ``"mae"``, ``"gnll"``, ``"vmim"``, ``"nass"``, or ``"sally"``: regress the
            joint score t(x, z|θ) of simulations made with ``augment="score"`` (SALLY, Brehmer et
            al. 2020); drawn at one θ_ref, the summaries are then the estimated score
            ∇θ log p(x|θ_ref), in the score's own units: locally sufficient statistics, and
            their covariance is the Fisher information (`galton.fisher.fisher_information`).
        embedding: an untrained `galton.nets` module for one x; an MLP (64 wide, 2 layers, 64 out) if None.
        summaries: how many summaries; θ's dimension by default (and always for mse, mae, gnll).
        training: the `Training` settings.
        problem: the problem's name, kept so that the compressor can refuse another problem's data.

    Returns:
        The fitted `Compressor` (its ``history`` holds the losses per epoch).
    """
    if loss not in LOSSES:
        raise CompressorError(f"loss must be one of {LOSSES}, got {loss!r}")
    if not isinstance(simulations, Simulations):
        raise CompressorError(f"simulations must be galton Simulations, got {type(simulations).__name__}")
    theta, x = np.asarray(simulations.theta, np.float32), np.asarray(simulations.x, np.float32)
    if loss == "sally":
        if "score" not in simulations.extras:
            raise CompressorError("the sally loss regresses the joint score: simulate with galton.simulate(program, ..., augment='score')")
        theta = np.asarray(simulations.extras["score"], np.float32)  # the regression target, in θ's place
    d, x_shape = theta.shape[1], x.shape[1:]
    try:
        k = d if summaries is None else check_count(summaries, "summaries")
    except ValueError as err:
        raise CompressorError(str(err)) from None
    if loss in ("mse", "mae", "gnll", "sally") and k != d:
        raise CompressorError(f"the {loss} loss regresses θ, so it gives {d} summaries (θ's dimension), not {k}")
    k_emb, k_comp, k_partner, k_train = jax.random.split(key, 4)
    embedding = nets.MLP(x_shape, 64, width=64, depth=2, key=k_emb) if embedding is None else embedding
    embedding_shape = tuple(getattr(embedding, "spec", {}).get("in_shape", ()))
    if embedding_shape != x_shape:
        raise CompressorError(f"the embedding takes x of shape {embedding_shape}, but the simulations' x has shape {x_shape}")
    outputs = k + k * (k + 1) // 2 if loss == "gnll" else k
    x_shift, x_scale = standardisation(x)
    compressor = Compressor(embedding, summaries=k, outputs=outputs, problem=problem or "", loss=loss, x_shift=x_shift, x_scale=x_scale, key=k_comp)
    theta_shift, theta_scale = standardisation(theta)
    partner = None
    if loss == "vmim":
        partner = conditional_flow(theta, np.zeros((2, k), np.float32), key=k_partner, flow="maf", transforms=3, hidden=32)
    elif loss == "nass":
        partner = eqx.nn.MLP(d + k, "scalar", 64, 2, activation=jax.nn.relu, key=k_partner)
    model = _Trainable(compressor, partner, paramax.NonTrainable(jnp.asarray(theta_shift)), paramax.NonTrainable(jnp.asarray(theta_scale)))
    fitted, history = train(model, _LOSS_FUNCTIONS[loss], (theta, x), key=k_train, settings=training,
                            names=["score" if loss == "sally" else "theta", "x"], progress=progress)
    compressor = fitted.compressor
    if loss == "sally":  # fold the target's z-scoring into the linear head: outputs in the score's units
        shift, scale = jnp.asarray(theta_shift), jnp.asarray(theta_scale)
        head = compressor.head
        head = eqx.tree_at(lambda h: (h.weight, h.bias), head, (head.weight * scale[:, None], head.bias * scale + shift))
        compressor = compressor._rebuild(head=head)
    return compressor._rebuild(history=history)


__all__ = ["Compressor", "CompressorError", "LOSSES", "fit", "load"]
