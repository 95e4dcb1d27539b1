"""deterministic="ranks" on one process: the micro-batch tree, the ranks' shards of it, the layers'
leaf-by-leaf gradients (against float64 references) and what it relies on, that every per-sample
result is the same whatever batch the sample comes in. tests/test_distributed.py runs it on 1 to 4
ranks."""
import numpy as np
import pytest

from fastconv import keras, ops, reference
from fastconv.keras import losses, microbatch


@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 5, 8])
def test_shards_are_whole_tree_nodes_in_order(ranks):
    for count in range(0, 90):
        parts = [microbatch.shard(count, ranks, rank, leaf=8) for rank in range(ranks)]
        assert parts[0].start == 0 and parts[-1].stop == count
        for before, after in zip(parts, parts[1:]):
            assert before.stop == after.start
        for part in parts:
            assert part.start % 8 == 0 or part.start == count
    # a power-of-two rank count splits a batch of whole leaves evenly
    assert [microbatch.shard(96, 4, rank, leaf=8) for rank in range(4)] == \
        [slice(0, 24), slice(24, 48), slice(48, 72), slice(72, 96)]


@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("count", [1, 7, 8, 20, 64, 100])
def test_ranks_subtree_sums_finish_into_the_one_process_tree_bitwise(ranks, count):
    """Values of wildly different sizes, so that another order of the additions gives other bits."""
    rng = np.random.default_rng(count)
    leaves = microbatch.leaves(count, 8)
    values = [(rng.standard_normal(16) * 10.0 ** rng.integers(-6, 6, 16)).astype(np.float32) for _ in leaves]
    whole = microbatch.tree([v.copy() for v in values])
    per_rank = []
    for rank in range(ranks):
        part = microbatch.shard(count, ranks, rank, leaf=8)
        mine = [v.copy() for s, v in zip(leaves, values) if part.start <= s.start < part.stop]
        per_rank.append(microbatch.tree(mine))
    assert microbatch.tree(per_rank).tobytes() == whole.tobytes()
    exact = np.sum(np.array(values, dtype=np.float64), axis=0)
    np.testing.assert_allclose(whole, exact, rtol=1e-6, atol=1e-6 * np.abs(exact).max())


def _relative(actual, expected):
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


@pytest.mark.parametrize("samples", [8, 37])
def test_conv_dense_and_batch_norm_gradients_by_leaves_match_float64(samples):
    """Each layer's weight and bias gradients (and batch norm's statistics and input gradient) summed
    leaf by leaf, 37 samples = 4 leaves of 8 and one of 5, against float64 references."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, 9, 9, 3)).astype(np.float32)
    conv = keras.layers.Conv2D(6, 3, padding="same")
    dense = keras.layers.Dense(5)
    norm = keras.layers.BatchNormalization()
    conv.build(x.shape)
    dense.build((samples, 9 * 9 * 3))
    norm.build(x.shape)
    norm.gamma.value[...] = rng.uniform(0.5, 2.0, 3)
    with microbatch.window(0, samples, samples):
        y, conv_ctx = conv.forward(x, training=True)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx = conv.backward(conv_ctx, dy)
        flat = x.reshape(samples, -1)
        out, dense_ctx = dense.forward(flat, training=True)
        dout = rng.standard_normal(out.shape).astype(np.float32)
        dense.backward(dense_ctx, dout)
        normed, norm_ctx = norm.forward(x + 3.0, training=True)
        dnorm = norm.backward(norm_ctx, dy[..., :3].copy())
    x64, w64 = x.astype(np.float64), conv.kernel.value.astype(np.float64)
    dx64, dw64, db64 = reference.conv2d_backward(dy.astype(np.float64), x64, w64, padding="same")
    assert _relative(conv.kernel.grad, dw64) < 1e-5 and _relative(conv.bias.grad, db64) < 1e-5
    assert _relative(dx, dx64) < 1e-5
    assert _relative(dense.kernel.grad, flat.astype(np.float64).T @ dout.astype(np.float64)) < 1e-5
    assert _relative(dense.bias.grad, dout.astype(np.float64).sum(axis=0)) < 1e-5
    shifted = x.astype(np.float64) + 3.0
    expected, mean, variance = reference.batch_norm(shifted, norm.gamma.value.astype(np.float64),
                                                    norm.beta.value.astype(np.float64), epsilon=norm.epsilon)
    assert _relative(normed, expected) < 1e-5
    np.testing.assert_allclose(norm.moving_mean.value, 0.01 * mean, rtol=1e-5)
    ddx, dgamma, dbeta = reference.batch_norm_backward(dy[..., :3].astype(np.float64), shifted, mean, variance,
                                                       norm.gamma.value.astype(np.float64), epsilon=norm.epsilon)
    assert _relative(norm.gamma.grad, dgamma) < 1e-5 and _relative(norm.beta.grad, dbeta) < 1e-5
    assert _relative(dnorm, ddx) < 1e-4


def test_a_ranks_loss_gradient_is_its_rows_of_the_global_batchs():
    """Scaled by 1 / global batch on every rank: bitwise the rows one process computes (32 is not
    a power of two times 8 here: 1/24 and 1/(24/3) differ in rounding)."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((24, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 24)
    for loss in (losses.CategoricalCrossentropy(), losses.MeanSquaredError(), losses.BinaryCrossentropy()):
        target = loss.prepare_targets(np.eye(5, dtype=np.float32)[labels], logits.shape, np.float32)
        whole = loss.gradient(target, logits)
        with microbatch.window(8, 8, 24):
            part = loss.gradient(target[8:16], logits[8:16])
        assert part.tobytes() == whole[8:16].tobytes(), loss.name


def test_dropout_of_a_ranks_rows_is_their_part_of_the_batch_mask():
    x = np.random.default_rng(0).standard_normal((12, 5, 3)).astype(np.float32)
    y, mask = ops.dropout(x, 0.4, seed=123)
    part, part_mask = ops.dropout(x[7:], 0.4, seed=123, first=7 * 15)
    assert part.tobytes() == y[7:].tobytes() and part_mask.tobytes() == mask[7:].tobytes()
    np.testing.assert_array_equal(reference.dropout(x[7:], 0.4, 123, first=7 * 15)[1], part_mask)
    with pytest.raises(ValueError, match="first"):
        ops.dropout(x, 0.4, seed=1, first=-1)


def _same_rows(function, x):
    whole = function(x)
    for count in (1, 3, 8, 13):
        assert function(x[:count]).tobytes() == whole[:count].tobytes(), count


@pytest.mark.parametrize("algorithm", ["direct", "im2col", "implicit", "winograd", "winograd4x4", "auto"])
@pytest.mark.parametrize("shape", [(10, 10, 1, 8, "same"), (8, 8, 32, 32, "same"), (9, 9, 16, 24, "valid")])
def test_a_samples_conv_results_do_not_depend_on_its_batch(algorithm, shape):
    """What deterministic="ranks" relies on: a sample's forward output and input gradient are the
    same bits whatever batch it is computed in, for every algorithm."""
    height, width, cin, cout, padding = shape
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, height, width, cin)).astype(np.float32)
    w = rng.standard_normal((3, 3, cin, cout)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    _same_rows(lambda v: ops.conv2d(v, w, b, padding=padding, activation="relu", algorithm=algorithm), x)
    dy = rng.standard_normal(ops.conv2d(x, w, padding=padding).shape).astype(np.float32)
    whole = ops.conv2d_backward(dy, x, w, padding=padding, algorithm=algorithm)[0]
    for count in (1, 3, 8, 13):
        part = ops.conv2d_backward(dy[:count], x[:count], w, padding=padding, algorithm=algorithm)[0]
        assert part.tobytes() == whole[:count].tobytes(), count


def test_a_samples_dense_pool_and_batch_norm_results_do_not_depend_on_its_batch():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 300)).astype(np.float32)
    w = rng.standard_normal((300, 130)).astype(np.float32)
    b = rng.standard_normal(130).astype(np.float32)
    _same_rows(lambda v: ops.gemm(v, w, bias=b, activation="relu"), x)
    _same_rows(lambda v: ops.gemm(v, w, trans_b=True), x[:, :130].copy())  # an input gradient
    images = rng.standard_normal((16, 6, 6, 12)).astype(np.float32)
    _same_rows(lambda v: ops.maxpool2d(v, 2), images)
    mean, variance = ops.batch_norm_statistics(images)
    gamma, beta = rng.standard_normal(12).astype(np.float32), rng.standard_normal(12).astype(np.float32)
    _same_rows(lambda v: ops.batch_norm(v, gamma, beta, mean=mean, variance=variance)[0], images)
    _same_rows(lambda v: ops.batch_norm_backward(v, images[:len(v)], mean, variance, gamma,
                                                 batch_statistics=False)[0], images[::-1].copy())


@pytest.mark.parametrize("make", [lambda: keras.layers.RandomFlip("horizontal"),
                                  lambda: keras.layers.RandomTranslation(0.2, 0.2),
                                  lambda: keras.layers.SpatialDropout2D(0.5)])
def test_a_ranks_random_draws_are_its_rows_of_the_global_batchs(make):
    """Augmentation and dropout draw for the global batch (24 images) and keep the rank's rows (8 to
    16), so an image gets the same draw whichever rank holds it."""
    images = np.random.default_rng(0).uniform(0, 1, (24, 6, 6, 3)).astype(np.float32)
    layer = make()
    keras.utils.set_random_seed(5)
    with microbatch.window(0, 24, 24):
        whole = layer(images, training=True)
    keras.utils.set_random_seed(5)
    with microbatch.window(8, 8, 24):
        part = layer(images[8:16], training=True)
    assert np.asarray(part).tobytes() == np.asarray(whole)[8:16].tobytes()


def test_a_layer_whose_sums_are_not_reduced_by_leaves_is_refused_by_name():
    class Scale(keras.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="w")

        def call(self, x):
            return x * self.w

    microbatch.check_model(keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3),
                                             keras.layers.BatchNormalization(), keras.layers.Flatten(),
                                             keras.layers.Dense(2)]))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), Scale(name="scale")])
    with pytest.raises(ValueError, match="layer 'scale' \\(Scale\\) has trainable weights"):
        microbatch.check_model(model)
