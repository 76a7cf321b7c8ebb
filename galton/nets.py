"""Embedding networks: compress one observation x ``in_shape`` to a vector ``(out_dim,)``.

Every net is an equinox module that acts on a single x (the library vmaps over batches) and
exposes ``.spec``, a JSON-able dict of its settings. ``build(net.spec, key=...)`` returns a
module of the same structure, into which ``eqx.tree_deserialise_leaves`` restores weights;
that is how trained models are saved and loaded. Activations are named by strings so that
the spec stays JSON.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
    "tanh": jnp.tanh,
    "softplus": jax.nn.softplus,
}


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def _shape(in_shape: int | Sequence[int]) -> tuple[int, ...]:
    return (int(in_shape),) if isinstance(in_shape, int) else tuple(int(s) for s in in_shape)


def _check_input(x: jax.Array, in_shape: tuple[int, ...], net: str) -> None:
    # runs at trace time, so a wrong shape fails with a message instead of deep inside a matmul
    if x.shape != in_shape:
        raise ValueError(f"{net} expects one x of shape {in_shape} (vmap over batches), got {x.shape}")


class Identity(eqx.Module):
    """The default embedding: x ``in_shape`` flattened to ``(prod(in_shape),)``."""

    in_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, in_shape: int | Sequence[int], *, key: jax.Array | None = None):
        # key is unused; accepting it lets `build` construct every net the same way
        self.in_shape = _shape(in_shape)

    @property
    def out_dim(self) -> int:
        return math.prod(self.in_shape)

    @property
    def spec(self) -> dict:
        return {"kind": "Identity", "in_shape": list(self.in_shape)}

    def __call__(self, x: jax.Array) -> jax.Array:
        _check_input(x, self.in_shape, "Identity")
        return x.reshape(-1)


class MLP(eqx.Module):
    """Fully connected net on flattened x: ``in_shape`` -> ``(out_dim,)``, ``depth`` hidden layers."""

    mlp: eqx.nn.MLP
    in_shape: tuple[int, ...] = eqx.field(static=True)
    out_dim: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def __init__(self, in_shape, out_dim: int, *, width: int = 64, depth: int = 2, activation: str = "relu", key: jax.Array):
        self.in_shape, self.out_dim, self.width, self.depth, self.activation = _shape(in_shape), out_dim, width, depth, activation
        self.mlp = eqx.nn.MLP(math.prod(self.in_shape), out_dim, width, depth, activation=_activation(activation), key=key)

    @property
    def spec(self) -> dict:
        return {"kind": "MLP", "in_shape": list(self.in_shape), "out_dim": self.out_dim,
                "width": self.width, "depth": self.depth, "activation": self.activation}

    def __call__(self, x: jax.Array) -> jax.Array:
        _check_input(x, self.in_shape, "MLP")
        return self.mlp(x.reshape(-1))


class ResidualBlock(eqx.Module):
    """h + W2 act(W1 norm(h)) on ``(width,)``: pre-norm, so the identity path stays clean."""

    norm: eqx.nn.LayerNorm | None
    inner: eqx.nn.Linear
    outer: eqx.nn.Linear
    activation: str = eqx.field(static=True)

    def __init__(self, width: int, *, layer_norm: bool, activation: str, key: jax.Array):
        key_inner, key_outer = jax.random.split(key)
        self.norm = eqx.nn.LayerNorm(width) if layer_norm else None
        self.inner = eqx.nn.Linear(width, width, key=key_inner)
        self.outer = eqx.nn.Linear(width, width, key=key_outer)
        self.activation = activation

    def __call__(self, h: jax.Array) -> jax.Array:
        z = h if self.norm is None else self.norm(h)
        return h + self.outer(_activation(self.activation)(self.inner(z)))


class ResNet(eqx.Module):
    """Residual MLP on flattened x: linear to ``width``, ``blocks`` residual blocks, linear to ``out_dim``."""

    stem: eqx.nn.Linear
    blocks: tuple[ResidualBlock, ...]
    head: eqx.nn.Linear
    in_shape: tuple[int, ...] = eqx.field(static=True)
    out_dim: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    layer_norm: bool = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def __init__(self, in_shape, out_dim: int, *, width: int = 64, blocks: int = 2, layer_norm: bool = True,
                 activation: str = "relu", key: jax.Array):
        _activation(activation)
        self.in_shape, self.out_dim, self.width = _shape(in_shape), out_dim, width
        self.layer_norm, self.activation = layer_norm, activation
        key_stem, key_head, *key_blocks = jax.random.split(key, blocks + 2)
        self.stem = eqx.nn.Linear(math.prod(self.in_shape), width, key=key_stem)
        self.blocks = tuple(ResidualBlock(width, layer_norm=layer_norm, activation=activation, key=k) for k in key_blocks)
        self.head = eqx.nn.Linear(width, out_dim, key=key_head)

    @property
    def spec(self) -> dict:
        return {"kind": "ResNet", "in_shape": list(self.in_shape), "out_dim": self.out_dim, "width": self.width,
                "blocks": len(self.blocks), "layer_norm": self.layer_norm, "activation": self.activation}

    def __call__(self, x: jax.Array) -> jax.Array:
        _check_input(x, self.in_shape, "ResNet")
        h = self.stem(x.reshape(-1))
        for block in self.blocks:
            h = block(h)
        return self.head(h)


class _ConvNet(eqx.Module):
    """Shared body of `CNN1d` and `CNN2d`: (conv 'same' -> activation -> 2x max pool) per stage, then a linear head."""

    convs: tuple[eqx.Module, ...]
    head: eqx.nn.Linear
    in_shape: tuple[int, ...] = eqx.field(static=True)
    out_dim: int = eqx.field(static=True)
    channels: tuple[int, ...] = eqx.field(static=True)
    kernel: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def _setup(self, in_shape, out_dim, channels, kernel, activation, key, dims: int):
        # dims spatial axes; a shape without the channel axis gets one channel
        in_shape = _shape(in_shape)
        if len(in_shape) not in (dims, dims + 1):
            raise ValueError(f"in_shape must be {dims} spatial sizes, optionally after a channel count; got {in_shape}")
        _activation(activation)
        self.in_shape, self.out_dim, self.channels, self.kernel, self.activation = (
            in_shape, out_dim, tuple(int(c) for c in channels), kernel, activation)
        spatial = in_shape[-dims:]
        pooled = [s // 2 ** len(self.channels) for s in spatial]
        if min(pooled) < 1:
            raise ValueError(f"in_shape {in_shape} is too small for {len(self.channels)} 2x poolings; use fewer channels stages")
        conv = eqx.nn.Conv1d if dims == 1 else eqx.nn.Conv2d
        sizes = (in_shape[0] if len(in_shape) > dims else 1, *self.channels)
        *key_convs, key_head = jax.random.split(key, len(self.channels) + 1)
        self.convs = tuple(conv(c_in, c_out, kernel, padding="SAME", key=k) for c_in, c_out, k in zip(sizes, sizes[1:], key_convs))
        self.head = eqx.nn.Linear(self.channels[-1] * math.prod(pooled), out_dim, key=key_head)

    def _forward(self, x: jax.Array, pool: eqx.Module, dims: int) -> jax.Array:
        _check_input(x, self.in_shape, type(self).__name__)
        h = x if x.ndim > dims else x[None]
        for conv in self.convs:
            h = pool(_activation(self.activation)(conv(h)))
        return self.head(h.reshape(-1))

    @property
    def spec(self) -> dict:
        return {"kind": type(self).__name__, "in_shape": list(self.in_shape), "out_dim": self.out_dim,
                "channels": list(self.channels), "kernel": self.kernel, "activation": self.activation}


class CNN1d(_ConvNet):
    """1-D convolutional net for series: x ``(length,)`` or ``(channels, length)`` -> ``(out_dim,)``.

    Each entry of ``channels`` is one stage (convolution, activation, max pool halving the
    length), so ``length`` must be at least ``2 ** len(channels)``.
    """

    def __init__(self, in_shape, out_dim: int, *, channels: Sequence[int] = (8, 16), kernel: int = 5,
                 activation: str = "relu", key: jax.Array):
        self._setup(in_shape, out_dim, channels, kernel, activation, key, dims=1)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self._forward(x, eqx.nn.MaxPool1d(2, 2), dims=1)


class CNN2d(_ConvNet):
    """2-D convolutional net for images: x ``(H, W)`` or ``(C, H, W)`` -> ``(out_dim,)``.

    Each entry of ``channels`` is one stage (convolution, activation, 2x2 max pool), so H and
    W must be at least ``2 ** len(channels)``.
    """

    def __init__(self, in_shape, out_dim: int, *, channels: Sequence[int] = (8, 16), kernel: int = 3,
                 activation: str = "relu", key: jax.Array):
        self._setup(in_shape, out_dim, channels, kernel, activation, key, dims=2)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self._forward(x, eqx.nn.MaxPool2d(2, 2), dims=2)


class DeepSet(eqx.Module):
    """Permutation-invariant net for sets of iid items: x ``(n_set, d_item)`` -> ``(out_dim,)``.

    ``rho(mean_i phi(x_i))``: phi embeds each item, the mean pools them, rho maps the pooled
    vector to the output. The mean (not the sum) keeps the pooled scale independent of the set
    size, so a net trained on sets of one size can be applied to another: any ``n_set`` is
    accepted at call time, only ``d_item`` must match ``in_shape``.

    For padded sets pass ``mask`` ``(n_set,)`` (True for real items): padded rows are left out
    of the mean. The library's flows call embeddings with x alone, so there all sets are whole.
    """

    phi: eqx.nn.MLP
    rho: eqx.nn.MLP
    in_shape: tuple[int, int] = eqx.field(static=True)
    out_dim: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def __init__(self, in_shape, out_dim: int, *, width: int = 64, activation: str = "relu", key: jax.Array):
        in_shape = _shape(in_shape)
        if len(in_shape) != 2:
            raise ValueError(f"DeepSet in_shape must be (n_set, d_item), got {in_shape}")
        self.in_shape, self.out_dim, self.width, self.activation = in_shape, out_dim, width, activation
        key_phi, key_rho = jax.random.split(key)
        act = _activation(activation)
        # phi ends in the activation so the pooled features are non-linear summaries of the items
        self.phi = eqx.nn.MLP(in_shape[1], width, width, 1, activation=act, final_activation=act, key=key_phi)
        self.rho = eqx.nn.MLP(width, out_dim, width, 1, activation=act, key=key_rho)

    @property
    def spec(self) -> dict:
        return {"kind": "DeepSet", "in_shape": list(self.in_shape), "out_dim": self.out_dim,
                "width": self.width, "activation": self.activation}

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        if x.ndim != 2 or x.shape[1] != self.in_shape[1]:
            raise ValueError(f"DeepSet expects one set of shape (n_set, {self.in_shape[1]}), got {x.shape}")
        features = jax.vmap(self.phi)(x)
        if mask is None:
            pooled = features.mean(0)
        else:
            weights = jnp.asarray(mask, features.dtype)[:, None]
            pooled = (weights * features).sum(0) / jnp.maximum(weights.sum(), 1.0)
        return self.rho(pooled)


class Reshaped(eqx.Module):
    """A net applied to x reshaped: e.g. a `CNN2d` on a `Program`'s flat x ``(1024,)`` seen as ``(32, 32)``.

    Args:
        in_shape: the shape x arrives in; net: a net (or its spec) whose ``in_shape`` holds as many values.
    """

    net: eqx.Module
    in_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, in_shape, net, *, key: jax.Array | None = None):
        self.in_shape = _shape(in_shape)
        self.net = build(net, key=jax.random.key(0) if key is None else key) if isinstance(net, dict) else net
        inner = tuple(self.net.spec["in_shape"])
        if math.prod(inner) != math.prod(self.in_shape):
            raise ValueError(f"Reshaped: x of shape {self.in_shape} cannot be seen as the net's in_shape {inner}")

    @property
    def out_dim(self) -> int:
        return self.net.out_dim

    @property
    def spec(self) -> dict:
        return {"kind": "Reshaped", "in_shape": list(self.in_shape), "net": self.net.spec}

    def __call__(self, x: jax.Array) -> jax.Array:
        _check_input(x, self.in_shape, "Reshaped")
        return self.net(x.reshape(self.net.spec["in_shape"]))


class Projected(eqx.Module):
    """A learned linear map of the flat x to as many values as ``net`` takes, then ``net``.

    For data where a few values carry the information at unknown positions among many: on
    slcp_distractors (8 of 100 values are 4 iid 2-D draws), a projection to 8 values and a
    `DeepSet` over them as ``(4, 2)`` learns which values to read.

    With ``sparse=True`` each weight is the product of two factors, both drawn small (standard
    deviation ``0.5 * size**-0.25`` for x of ``size`` values). Gradient descent from a small start
    on such products favours weights with few nonzero entries (the implicit L1 bias of a product
    parametrisation), so each value ``net`` gets reads one or a few of x's values rather than a
    blend of all, which is what a `DeepSet` over the projection needs. On slcp_distractors
    (TMNRE, 10,000 simulations) the mean marginal C2ST went from 0.611 / 0.692 to 0.568 / 0.626.

    Args:
        in_shape: the shape x arrives in; net: a net (or its spec) fed the projection, reshaped
            to the net's ``in_shape``; key: a ``jax.random`` key for the projection's weights (and
            the net's, when given as a spec); sparse: the product parametrisation above.
    """

    linear: eqx.nn.Linear
    factor: jax.Array | None
    net: eqx.Module
    in_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, in_shape, net, *, key: jax.Array, sparse: bool = False):
        self.in_shape = _shape(in_shape)
        key_linear, key_net = jax.random.split(key)
        self.net = build(net, key=key_net) if isinstance(net, dict) else net
        n_in, n_out = math.prod(self.in_shape), math.prod(self.net.spec["in_shape"])
        self.linear = eqx.nn.Linear(n_in, n_out, key=key_linear)
        self.factor = None
        if sparse:  # w = a ⊙ b, a and b alike and small: with factors twice these a small fit missed an informative value 2 times in 5
            scale = 0.5 * n_in**-0.25
            self.linear = eqx.tree_at(lambda lin: (lin.weight, lin.bias), self.linear,
                                      (scale * jax.random.normal(key_linear, (n_out, n_in)), jnp.zeros(n_out)))
            self.factor = scale * jax.random.normal(jax.random.fold_in(key_linear, 1), (n_out, n_in))

    @property
    def out_dim(self) -> int:
        return self.net.out_dim

    @property
    def sparse(self) -> bool:
        return self.factor is not None

    @property
    def spec(self) -> dict:
        return {"kind": "Projected", "in_shape": list(self.in_shape), "net": self.net.spec, "sparse": self.sparse}

    @property
    def weight(self) -> jax.Array:
        """The projection's matrix ``(values net takes, x's size)``."""
        return self.linear.weight if self.factor is None else self.linear.weight * self.factor

    def spread(self) -> jax.Array:
        """How far the rows are from reading one value each: Σ_rows ‖w_r‖₁ / ‖w_r‖₂ − 1, 0 when
        each row has one nonzero weight and free of the rows' scale (which the next layer can undo)."""
        w = self.weight
        squares = (w**2).sum(1)
        reads = squares > 0  # a row pruned to nothing reads no value: 0, and no NaN through sqrt's slope at 0
        return jnp.sum(jnp.where(reads, jnp.abs(w).sum(1) / jnp.sqrt(jnp.where(reads, squares, 1.0)) - 1, 0.0))

    def pruned(self, fraction: float) -> "Projected":
        """This projection with each weight under ``fraction`` × its row's largest (in absolute
        value) set to zero. Needs ``sparse=True``: both factors are zeroed, and as each one's
        gradient is the other, training from here keeps them at zero."""
        if self.factor is None:
            raise ValueError("pruned() needs a Projected built with sparse=True (a plain weight set to zero would grow back in training)")
        size = jnp.abs(self.weight)
        keep = size >= fraction * size.max(1, keepdims=True)
        return eqx.tree_at(lambda p: (p.linear.weight, p.factor), self,
                           (jnp.where(keep, self.linear.weight, 0.0), jnp.where(keep, self.factor, 0.0)))

    def __call__(self, x: jax.Array) -> jax.Array:
        _check_input(x, self.in_shape, "Projected")
        projected = self.weight @ x.reshape(-1) + self.linear.bias
        return self.net(projected.reshape(self.net.spec["in_shape"]))


NETS = {cls.__name__: cls for cls in (Identity, MLP, ResNet, CNN1d, CNN2d, DeepSet, Reshaped, Projected)}


def build(spec: dict, *, key: jax.Array) -> eqx.Module:
    """The net a ``spec`` (from ``net.spec``) describes, with fresh weights drawn from ``key``.

    Load trained weights with ``eqx.tree_deserialise_leaves(path, build(spec, key=key))``; the
    skeleton ``eqx.filter_eval_shape(build, spec, key=key)`` serves as well and skips drawing
    weights that would be overwritten.
    """
    settings = dict(spec)
    kind = settings.pop("kind", None)
    if kind not in NETS:
        raise ValueError(f"spec['kind'] must be one of {sorted(NETS)}, got {kind!r}")
    return NETS[kind](**settings, key=key)


__all__ = ["ACTIVATIONS", "CNN1d", "CNN2d", "DeepSet", "Identity", "MLP", "NETS", "Projected", "ResNet", "Reshaped", "build"]
