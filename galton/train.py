"""The one training loop behind every neural method.

An epoch is one jitted call: a `lax.scan` over shuffled minibatches, then the validation
loss. Python only sees one call per epoch, for early stopping and the progress bar.
Parameters wrapped in `paramax.NonTrainable` (z-scoring statistics, fixed permutations)
are never updated; other `paramax` wrappers are unwrapped before the loss sees the model.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import paramax

from galton._cache import stored_program
from galton.checks import check_count, check_real
from galton.keys import as_key
from galton.progress import Progress


class TrainingError(ValueError):
    """The data cannot train a model: too few rows, non-finite values, mismatched lengths."""


@dataclass(frozen=True)
class Training:
    """Settings of the training loop (defaults are sbi's, so comparisons are fair).

    Attributes:
        learning_rate: Adam step size.
        batch_size: rows per minibatch.
        validation_fraction: share of rows held out for early stopping.
        patience: epochs without a better validation loss before stopping.
        max_epochs: hard cap on epochs.
        clip_norm: global gradient-norm clip.
        decay: when set (swyft's ReduceLROnPlateau: 0.1), the step size is multiplied by it each
            time ``decay_patience`` epochs pass without a better validation loss; the search then
            settles into the minimum it found instead of hopping around it. ``patience`` still
            decides when to stop, so it should exceed ``decay_patience``.
        decay_patience: epochs without improvement before each decay.
        finish: when set (0.1 say), once ``patience`` stops training, it goes on from the best
            weights with a fresh optimiser at ``finish`` × the step size until ``patience`` epochs
            pass again without a better validation loss: a fine-tune into the minimum that the full
            step found but kept hopping around.
    """

    learning_rate: float = 5e-4
    batch_size: int = 200
    validation_fraction: float = 0.1
    patience: int = 20
    max_epochs: int = 2000
    clip_norm: float = 5.0
    decay: float | None = None
    decay_patience: int = 5
    finish: float | None = None

    def __post_init__(self):
        for name in ("batch_size", "patience", "max_epochs", "decay_patience"):
            check_count(getattr(self, name), name)
        for name in ("learning_rate", "clip_norm"):
            check_real(getattr(self, name), name)
        check_real(self.validation_fraction, "validation_fraction", high=1.0)
        if self.decay is not None:  # None: no decay
            check_real(self.decay, "decay", high=1.0)
        if self.finish is not None:
            check_real(self.finish, "finish", high=1.0)
        if self.decay is not None and self.decay_patience >= self.patience:
            raise ValueError(f"decay_patience ({self.decay_patience}) must be below patience ({self.patience}): "
                             "training would stop before the step size ever decays")

    def fine_tune(self, share: float) -> "Training":
        """These settings for a fine-tune from trained weights: ``share`` × the step size, constant
        (no decay, no further finish); `finish` and TMNRE's ``prune`` both train so."""
        return replace(self, learning_rate=self.learning_rate * share, decay=None, finish=None)

    def optimizer(self) -> optax.GradientTransformation:
        steps = [optax.clip_by_global_norm(self.clip_norm), optax.adam(self.learning_rate)]
        if self.decay is not None:  # the factor lives in the state: a decay needs no new program
            steps.append(optax.inject_hyperparams(optax.scale)(step_size=1.0))
        return optax.chain(*steps)


def _decayed(opt_state, factor: float):
    """``opt_state`` of `Training.optimizer` with its decay factor multiplied by ``factor``."""
    return optax.tree_utils.tree_set(opt_state, step_size=optax.tree_utils.tree_get(opt_state, "step_size") * factor)


def _is_frozen(leaf) -> bool:
    return isinstance(leaf, paramax.NonTrainable)


def check_training_data(arrays: Sequence[np.ndarray], names: Sequence[str]) -> None:
    """Raise `TrainingError` naming the array and row of any non-finite value or length mismatch."""
    n = len(arrays[0])
    for name, arr in zip(names, arrays):
        if len(arr) != n:
            raise TrainingError(f"{name} has {len(arr)} rows but {names[0]} has {n}")
        flat = np.asarray(arr).reshape(len(arr), -1)
        bad = ~np.isfinite(flat).all(axis=1)
        if bad.any():
            raise TrainingError(
                f"{name} has non-finite values in {int(bad.sum())} rows (first row {int(np.flatnonzero(bad)[0])}); "
                "simulate with on_invalid='drop' or remove those rows"
            )


def held_out_rows(n: int, *, key: jax.Array, settings: Training) -> np.ndarray:
    """The indices ``(n_val,)`` of the rows that `train` with this ``key`` and ``settings`` holds out
    for validation, of ``n`` rows given without ``groups``: where a trained model can be checked
    on rows it was not fitted to."""
    n_val = _validation_count(settings.validation_fraction, n)
    return np.asarray(jax.random.permutation(jax.random.split(as_key(key), 3)[0], n))[n - n_val:]  # as `_start` and `_split` draw them


def _validation_count(fraction: float, n: int) -> int:
    return max(1, int(round(fraction * n)))


def _split(arrays, fraction, batch_size, key, groups=None, shuffled=None):
    """Training and validation rows: the first and last of ``shuffled`` (the n row indices in an
    order `_start` drew from ``key``), or, with ``groups``, whole groups drawn from ``key``."""
    n = len(arrays[0])
    n_train = n - _validation_count(fraction, n)
    if n_train < 2:
        raise TrainingError(
            f"cannot train on {n} simulations with validation_fraction={fraction}: "
            "need at least 2 training rows and 1 validation row"
        )
    if groups is None:
        perm = np.asarray(shuffled)
    else:  # whole groups on one side: the held-out rows share nothing with the trained ones
        if np.shape(groups) != (n,):
            raise TrainingError(f"groups must label each of the {n} rows, got shape {np.shape(groups)}")
        labels, index = np.unique(np.asarray(groups), return_inverse=True)
        held = np.zeros(len(labels), bool)
        k = _validation_count(fraction, len(labels))
        held[np.asarray(jax.random.permutation(key, len(labels)))[:k]] = True
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, 1), n))
        out = held[index[order]]
        perm = np.concatenate([order[~out], order[out]])
        n_train = int((~held[index]).sum())
        if n_train < 2:
            raise TrainingError(f"holding out {k} of {len(labels)} groups of rows leaves {n_train} rows to train on; need at least 2")
    train = tuple(jax.device_put(a[perm[:n_train]]) for a in arrays)
    val = tuple(jax.device_put(a[perm[n_train:]]) for a in arrays)
    return train, val, min(batch_size, n_train)


def train(
    model: eqx.Module,
    loss: Callable[[eqx.Module, tuple, jax.Array], jax.Array],
    arrays: Sequence[np.ndarray],
    *,
    key: jax.Array,
    settings: Training = Training(),
    names: Sequence[str] | None = None,
    progress: bool = True,
    groups: np.ndarray | None = None,
) -> tuple[eqx.Module, dict]:
    """Fit ``model`` by minimising ``loss`` over minibatches of ``arrays``.

    Args:
        model: an equinox module (e.g. a conditional flow with its embedding); pass an
            already-trained model to continue training it with more data.
        loss: ``loss(model, batch, key) -> scalar`` where ``batch`` is a tuple of the arrays'
            minibatches ``(batch_size, ...)`` in the order given. A loss that is a PyTree (a
            `jax.tree_util.Partial`, an equinox module) passes its arrays to the compiled epoch as
            inputs: a loss weighted by statistics of the data compiles once for every dataset.
        arrays: aligned arrays with the same number of rows, e.g. ``(theta (n, d), x (n, ...))``.
        key: a ``jax.random`` key (split, shuffling, and the loss's own randomness).
        settings: a `Training`.
        names: names of the arrays, for error messages.
        progress: show a progress bar with epoch and losses.
        groups: optional ``(n,)`` labels: rows with the same label are all trained on or all held
            out (rows made from one simulation, which would otherwise validate on what was trained);
            ``validation_fraction`` is then a share of the groups.

    Returns:
        The model with the weights of the best validation epoch, and a history dict with
        ``train_loss`` and ``validation_loss`` per epoch, ``best_epoch``, ``epochs`` and ``seconds``
        (and ``decays``, the epochs after which the step size decayed, when it did).
    """
    names = list(names or [f"array {i}" for i in range(len(arrays))])
    arrays = [np.asarray(a) for a in arrays]
    check_training_data(arrays, names)
    params, static = eqx.partition(model, eqx.is_inexact_array, is_leaf=_is_frozen)
    key_split, key_epochs, key_val, shuffled, opt_state = _start(as_key(key), params, len(arrays[0]), settings)
    train_data, val_data, batch_size = _split(arrays, settings.validation_fraction, settings.batch_size, key_split, groups, shuffled)
    data = (train_data, val_data, key_epochs, key_val)
    epoch = _epoch_program(loss, static, settings, batch_size, (params, opt_state, train_data, val_data, key_epochs, np.int32(0), key_val))

    history = {"train_loss": [], "validation_loss": []}
    best, start = (np.inf, params, -1), time.perf_counter()
    bar = Progress(settings.max_epochs, unit="epoch", desc="training", enabled=progress, leave=False)
    try:
        best = _epochs(epoch, params, opt_state, data, settings, history, best, bar, 0)
        if settings.finish is not None and len(history["train_loss"]) < settings.max_epochs:
            finer = settings.fine_tune(settings.finish)
            history["finish_epoch"] = len(history["train_loss"])
            params = best[1]
            opt_state = finer.optimizer().init(params)
            epoch = _epoch_program(loss, static, finer, batch_size, (params, opt_state, train_data, val_data, key_epochs, np.int32(0), key_val))
            best = _epochs(epoch, params, opt_state, data, finer, history, best, bar, history["finish_epoch"])
    finally:
        bar.close()
    best_loss, best_params, best_epoch = best
    history.update(best_epoch=best_epoch, epochs=len(history["train_loss"]), seconds=time.perf_counter() - start)
    return eqx.combine(best_params, static), history


def _epochs(epoch, params, opt_state, data, settings: Training, history: dict, best: tuple, bar, first: int) -> tuple:
    """Epochs from number ``first`` until ``patience`` pass without a better validation loss than
    ``best`` = (loss, params, epoch) or ``max_epochs`` in all; the losses go to ``history``, and
    the best (loss, params, epoch) is returned."""
    train_data, val_data, key_epochs, key_val = data
    best_loss, best_params, best_epoch = best
    for i in range(first, settings.max_epochs):
        params, opt_state, train_loss, val_loss = epoch(params, opt_state, train_data, val_data, key_epochs, np.int32(i), key_val)
        train_loss, val_loss = float(train_loss), float(val_loss)
        history["train_loss"].append(train_loss)
        history["validation_loss"].append(val_loss)
        if val_loss < best_loss:
            best_loss, best_params, best_epoch = val_loss, params, i
        elif settings.decay is not None and (i - best_epoch) % settings.decay_patience == 0:
            opt_state = _decayed(opt_state, settings.decay)
            history.setdefault("decays", []).append(i)
        bar.update(1, train=f"{train_loss:.4f}", validation=f"{val_loss:.4f}", best=best_epoch)
        if not np.isfinite(train_loss):
            raise TrainingError(f"the training loss became {train_loss} at epoch {i}; try a smaller learning_rate")
        # patience counts from `first` at the latest: a finishing phase starts after its best epoch's patience ran out
        if i - max(best_epoch, first - 1) >= settings.patience:
            break
    return best_loss, best_params, best_epoch


def _start(key, params, n: int, settings: Training):
    """The split's, the epochs' and validation's keys, the n rows shuffled, and the optimiser's
    state, as one program (stored, see `galton._cache`): eight, each read from the compile cache
    by a fresh process at about 10 ms, were what it replaced."""
    opt_state = jax.eval_shape(settings.optimizer().init, params)
    stored = stored_program(lambda key, params: _start_values(key, params, n, settings), (key, params), identity=(n, settings),
                            out_structure=jax.tree.structure((0, 0, 0, 0, opt_state)))
    return stored(key, params) if stored is not None else _jitted_start(key, params, n, settings)


def _start_values(key, params, n: int, settings: Training):
    key_split, key_epochs, key_val = jax.random.split(key, 3)
    return key_split, key_epochs, key_val, jax.random.permutation(key_split, n), settings.optimizer().init(params)


_jitted_start = eqx.filter_jit(_start_values)


def _epoch_program(loss, static, settings: Training, batch_size: int, example: tuple):
    """``epoch(params, opt_state, train_data, val_data, key_epochs, i, key_val) -> (params, opt_state,
    train loss, validation loss)`` for ``loss`` and the model's non-trained part ``static``,
    compiled once for equal settings, structures and non-array values, whatever the arrays hold
    (a loss weighted by statistics of the data, a model z-scored on it). From galton's store of
    compiled programs when it can vouch for the code (a fresh process then skips tracing), else
    jitted in memory."""
    loss_arrays, loss_rest = eqx.partition(loss, eqx.is_array)
    static_arrays, static_rest = eqx.partition(static, eqx.is_array)
    params, opt_state = example[:2]
    epoch = _epoch_of(static_rest, loss_rest, settings, batch_size)
    stored = stored_program(epoch, (static_arrays, loss_arrays, *example), identity=(static_rest, loss_rest, settings, batch_size),
                            out_structure=jax.tree.structure((params, opt_state, 0.0, 0.0)))
    run = stored if stored is not None else _jitted_epoch(static_rest, loss_rest, settings, batch_size)
    return functools.partial(run, static_arrays, loss_arrays)


def _jitted_epoch(static_rest, loss_rest, settings: Training, batch_size: int):
    leaves, structure = jax.tree.flatten((static_rest, loss_rest))
    try:
        return _epoch_function(structure, tuple(leaves), settings, batch_size)
    except TypeError:  # an unhashable part: this loss gets a program of its own
        return _epoch_function.__wrapped__(structure, tuple(leaves), settings, batch_size)


@functools.lru_cache(maxsize=32)
def _epoch_function(structure, leaves: tuple, settings: Training, batch_size: int):
    """The in-memory jitted epoch for a model's and a loss's structure and non-array leaves and
    settings: one per (loss, model, settings, batch size), so a model trained again with the same
    ones (more rounds, another seed, another dataset) reuses the compiled program."""
    return eqx.filter_jit(_epoch_of(*jax.tree.unflatten(structure, leaves), settings, batch_size))


def _epoch_of(static_rest, loss_rest, settings: Training, batch_size: int):
    """`_epoch` as a function of the model's and the loss's arrays, then the training state."""
    optimizer = settings.optimizer()

    def epoch(static_arrays, loss_arrays, *args):
        model_static, loss_fn = eqx.combine(static_arrays, static_rest), eqx.combine(loss_arrays, loss_rest)
        return _epoch(model_static, loss_fn, *args, optimizer=optimizer, batch_size=batch_size)

    return epoch


def _epoch(static, loss_fn, params, opt_state, train_data, val_data, key_epochs, i, key_val, *, optimizer, batch_size: int):
    """Epoch ``i`` (traced): a `lax.scan` of optimiser steps over shuffled minibatches, then the validation loss."""
    key = jax.random.fold_in(key_epochs, i)  # here, not eagerly: 50 eager calls cost 40 ms

    def model_loss(params, static, batch, key):
        return loss_fn(paramax.unwrap(eqx.combine(params, static)), batch, key)

    key_perm, key_steps = jax.random.split(key)
    n = train_data[0].shape[0]
    n_batches = n // batch_size
    # the rows left over by the last full batch differ from epoch to epoch, so all are used
    order = jax.random.permutation(key_perm, n)[: n_batches * batch_size].reshape(n_batches, batch_size)

    def step(carry, inputs):
        params, opt_state = carry
        rows, k = inputs
        batch = tuple(a[rows] for a in train_data)
        value, grads = eqx.filter_value_and_grad(model_loss)(params, static, batch, k)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (eqx.apply_updates(params, updates), opt_state), value

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (order, jax.random.split(key_steps, n_batches)))
    return params, opt_state, losses.mean(), _validation_loss(model_loss, params, static, val_data, batch_size, key_val)


def _validation_loss(model_loss, params, static, val_data, batch_size, key):
    """Mean loss over the validation rows in minibatches of the training size (atomic and
    contrastive losses depend on the batch), the remainder padded by wrapping around.
    The key is the same every epoch so that validation losses compare across epochs."""
    n = val_data[0].shape[0]
    size = min(batch_size, n)
    n_batches = -(-n // size)
    rows = jnp.arange(n_batches * size).reshape(n_batches, size) % n
    losses = jax.lax.map(lambda r: model_loss(params, static, tuple(a[r] for a in val_data), key), rows)
    return losses.mean()
