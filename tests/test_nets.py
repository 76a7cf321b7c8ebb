"""Embedding networks: shapes, batching, DeepSet invariance, spec round trips, gradients."""

import io
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from galton import nets

KEY = jax.random.key(0)


def make(construct):
    """``construct(KEY)`` under jit: one compilation, kept by the persistent cache between
    runs, instead of one small eager compilation per weight shape (seconds on a busy CPU)."""
    return eqx.filter_jit(construct)(KEY)


# (net, shape of one x, out_dim); small widths keep compilation quick
CASES = {
    "Identity": (nets.Identity((3, 4)), (3, 4), 12),
    "MLP": (make(lambda key: nets.MLP((10,), 5, width=16, key=key)), (10,), 5),
    "ResNet": (make(lambda key: nets.ResNet((10,), 5, width=16, key=key)), (10,), 5),
    "CNN1d": (make(lambda key: nets.CNN1d((32,), 6, channels=(4, 8), key=key)), (32,), 6),
    "CNN2d": (make(lambda key: nets.CNN2d((12, 12), 4, channels=(4, 8), key=key)), (12, 12), 4),
    "DeepSet": (make(lambda key: nets.DeepSet((7, 2), 5, width=16, key=key)), (7, 2), 5),
    "Projected": (make(lambda key: nets.Projected((20,), nets.DeepSet((3, 2), 5, width=16, key=key), key=key)), (20,), 5),
    "Projected-sparse": (make(lambda key: nets.Projected((20,), nets.DeepSet((3, 2), 5, width=16, key=key), key=key, sparse=True)), (20,), 5),
}


@pytest.fixture(params=list(CASES))
def case(request):
    return CASES[request.param]


@eqx.filter_jit
def outputs_and_gradients(net, x):
    """Outputs for a batch x and the gradient of their sum with respect to the net's weights.

    One compiled function per net structure, shared by every test, keeps the tests fast.
    """

    def total(net):
        outputs = jax.vmap(net)(x)
        return outputs.sum(), outputs

    (_, outputs), gradients = eqx.filter_value_and_grad(total, has_aux=True)(net)
    return outputs, gradients


def batched(net, x):
    return outputs_and_gradients(net, x)[0]


def test_one_x_gives_a_vector_and_a_vmapped_batch_gives_rows(case):
    net, x_shape, out_dim = case
    x = jax.random.normal(KEY, (4, *x_shape))
    assert jax.eval_shape(net, x[0]).shape == (out_dim,)
    assert batched(net, x).shape == (4, out_dim)


def test_spec_is_json_and_rebuilds_the_same_outputs_after_deserialising(case):
    net, x_shape, _ = case
    spec = json.loads(json.dumps(net.spec))
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, net)
    buffer.seek(0)
    # build traced for shapes only: every weight must then come from the file
    skeleton = eqx.filter_eval_shape(nets.build, spec, key=jax.random.key(99))
    restored = eqx.tree_deserialise_leaves(buffer, skeleton)
    assert restored.spec == net.spec
    x = jax.random.normal(KEY, (4, *x_shape))
    np.testing.assert_array_equal(batched(restored, x), batched(net, x))


def test_gradients_with_respect_to_the_weights_are_finite(case):
    net, x_shape, _ = case
    _, grads = outputs_and_gradients(net, jax.random.normal(KEY, (4, *x_shape)))
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(eqx.filter(grads, eqx.is_array))]
    assert all(np.isfinite(leaf).all() for leaf in leaves)
    if leaves:  # Identity has no weights
        assert any((leaf != 0).any() for leaf in leaves)


@pytest.mark.parametrize(
    "construct, x_shape, out_dim",
    [
        (lambda: nets.MLP((2, 5), 3, width=8, depth=1, activation="tanh", key=KEY), (2, 5), 3),
        (lambda: nets.ResNet((10,), 5, width=16, blocks=1, layer_norm=False, key=KEY), (10,), 5),
        (lambda: nets.CNN1d((2, 33), 6, channels=(4,), key=KEY), (2, 33), 6),  # channels first, odd length
        (lambda: nets.CNN2d((3, 9, 10), 4, channels=(4,), key=KEY), (3, 9, 10), 4),
    ],
)
def test_other_settings_give_the_promised_shapes_and_specs(construct, x_shape, out_dim):
    # traced for shapes only (no weights drawn, nothing compiled) to keep the suite fast
    net = eqx.filter_eval_shape(construct)
    output = eqx.filter_eval_shape(lambda net, x: net(x), net, jnp.zeros(x_shape))
    assert output.shape == (out_dim,)
    rebuilt = eqx.filter_eval_shape(nets.build, json.loads(json.dumps(net.spec)), key=KEY)
    assert jax.tree.structure(rebuilt) == jax.tree.structure(net)
    assert rebuilt.spec == net.spec


def test_deepset_ignores_the_order_of_items_and_accepts_other_set_sizes():
    net = CASES["DeepSet"][0]
    x = jax.random.normal(KEY, (4, 7, 2))
    permuted = x[:, jax.random.permutation(jax.random.key(1), 7)]
    np.testing.assert_allclose(batched(net, permuted), batched(net, x), rtol=1e-5, atol=1e-6)
    assert jax.eval_shape(net, x[0, :3]).shape == (5,)


def test_deepset_mask_leaves_padded_items_out():
    net = CASES["DeepSet"][0]
    x = jax.random.normal(KEY, (4, 2))
    padded = jnp.concatenate([x, 1e3 * jnp.ones((3, 2))])
    mask = jnp.arange(7) < 4
    np.testing.assert_allclose(eqx.filter_jit(net)(padded, mask), eqx.filter_jit(net)(x), rtol=1e-5, atol=1e-6)


def test_wrong_inputs_fail_early_with_a_message():
    with pytest.raises(ValueError, match=r"expects one x of shape \(10,\)"):
        jax.eval_shape(CASES["MLP"][0], jnp.ones((4, 10)))  # a batch given where one x is expected
    with pytest.raises(ValueError, match="activation must be one of"):
        nets.MLP((3,), 2, activation="swish!", key=KEY)
    with pytest.raises(ValueError, match="too small"):
        nets.CNN1d((3,), 2, channels=(4, 8), key=KEY)
    with pytest.raises(ValueError, match="kind"):
        nets.build({"kind": "Transformer"}, key=KEY)


def _row_selectivity(sparse: bool, keys) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fits of y = sin(2 x₀) + x₁² from 40 values (x₂.. heavy-tailed noise) by a projection to 2
    values and an MLP, one per key: losses, the share of the projection's squared weight on x₀ and
    x₁, and each row's largest share of its own squared weight on one value ``(keys, 2)``."""
    n, d = 1000, 40
    k_x, k_t, k_y = jax.random.split(jax.random.key(7), 3)
    x = jax.random.normal(k_x, (n, d)).at[:, 2:].set(jax.random.t(k_t, 2.0, (n, d - 2)))
    x = x / x.std(0)
    y = jnp.sin(2 * x[:, 0]) + x[:, 1] ** 2 + 0.1 * jax.random.normal(k_y, (n,))
    optimiser = optax.adam(3e-3)

    def fit(key):
        net = nets.Projected((d,), nets.MLP((2,), 1, width=32, key=jax.random.fold_in(key, 1)), key=key, sparse=sparse)
        params, static = eqx.partition(net, eqx.is_array)
        loss = lambda p: jnp.mean((jax.vmap(eqx.combine(p, static))(x)[:, 0] - y) ** 2)  # noqa: E731

        def step(carry, _):
            params, state = carry
            value, grads = jax.value_and_grad(loss)(params)
            updates, state = optimiser.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), value

        (params, _), losses = jax.lax.scan(step, (params, optimiser.init(params)), length=1500)
        w = eqx.combine(params, static).weight ** 2
        return losses[-1], w[:, :2].sum() / w.sum(), w.max(1) / w.sum(1)

    return tuple(np.asarray(a) for a in jax.jit(jax.vmap(fit))(keys))


def test_a_sparse_projection_reads_single_values_where_a_dense_one_blends_them():
    keys = jax.random.split(jax.random.key(0), 5)
    losses, informative, rows = _row_selectivity(True, keys)
    dense_losses, _, dense_rows = _row_selectivity(False, keys)
    assert losses.max() < 0.05 and informative.min() > 0.98, (losses, informative)  # every fit found both values (measured ≤ 0.018, ≥ 0.99)
    # measured: 0.84 against 0.60 (the dense rows blend x₀ and x₁); one dense fit missed a value (loss 0.35)
    assert rows.mean() > 0.75 and dense_rows.mean() < 0.68 and rows.mean() - dense_rows.mean() > 0.15, (rows, dense_rows, dense_losses)


def test_a_projections_spread_counts_how_far_its_rows_are_from_reading_one_value():
    net = nets.Projected((4,), nets.Identity((2,)), key=KEY)
    one_hot = eqx.tree_at(lambda n: n.linear.weight, net, jnp.array([[0.0, 3.0, 0.0, 0.0], [-0.5, 0.0, 0.0, 0.0]]))
    even = eqx.tree_at(lambda n: n.linear.weight, net, jnp.array([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 2.0, -2.0]]))
    assert float(one_hot.spread()) == 0.0
    np.testing.assert_allclose(float(even.spread()), (2 - 1) + (np.sqrt(2) - 1), rtol=1e-6)  # √n − 1 for n equal weights a row
    scaled = eqx.tree_at(lambda n: n.linear.weight, even, 7.0 * even.linear.weight)
    np.testing.assert_allclose(float(scaled.spread()), float(even.spread()), rtol=1e-6)  # the next layer can undo a row's scale
    sparse = nets.Projected((20,), nets.Identity((3,)), key=KEY, sparse=True)
    grads = jax.grad(lambda p: p.spread())(sparse)
    assert np.isfinite(np.asarray(grads.factor)).all() and np.abs(np.asarray(grads.factor)).sum() > 0  # reaches both factors
    emptied = eqx.tree_at(lambda n: n.linear.weight, even, jnp.array([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, -2.0]]))
    assert float(emptied.spread()) == pytest.approx(np.sqrt(2) - 1)  # a row pruned to nothing adds nothing
    assert np.isfinite(np.asarray(jax.grad(lambda p: p.spread())(emptied).linear.weight)).all()


def test_pruning_a_sparse_projection_zeroes_both_factors_and_training_keeps_them_zero():
    net = nets.Projected((20,), nets.Identity((3,)), key=KEY, sparse=True)
    pruned = net.pruned(0.5)
    w, p = np.asarray(net.weight), np.asarray(pruned.weight)
    np.testing.assert_array_equal(p == 0, np.abs(w) < 0.5 * np.abs(w).max(1, keepdims=True))
    np.testing.assert_array_equal(p[p != 0], w[p != 0])
    assert np.all((p != 0).sum(1) >= 1)  # each row keeps its largest
    params, static = eqx.partition(pruned, eqx.is_array)
    grads = jax.grad(lambda q: jnp.sum(eqx.combine(q, static)(jnp.arange(1.0, 21.0)) ** 2))(params)
    optimiser = optax.adam(1e-2)
    updates, _ = optimiser.update(grads, optimiser.init(params), params)
    stepped = np.asarray(eqx.combine(optax.apply_updates(params, updates), static).weight)
    assert np.all(stepped[p == 0] == 0) and np.all(stepped[p != 0] != p[p != 0])
    with pytest.raises(ValueError, match=r"pruned\(\) needs a Projected built with sparse=True"):
        nets.Projected((20,), nets.Identity((3,)), key=KEY).pruned(0.5)
