"""keras.random: Keras 3's seed rules, the distributions' moments on large samples, dropout."""
import numpy as np
import pytest

from fastconv import keras
from fastconv.keras import GradientTape, Variable, ops
from fastconv.keras import random as krandom

N = 200_000  # samples for the moment checks: standard errors near 1 / sqrt(N) = 0.0022


def test_exported_as_keras_random():
    assert keras.random is krandom
    assert "random" in keras.__all__


# ----- seeds -----


def test_an_int_seed_gives_the_same_values_on_every_call():
    for draw in (lambda s: krandom.normal((3, 4), seed=s), lambda s: krandom.uniform((5,), seed=s),
                 lambda s: krandom.truncated_normal((2, 2), seed=s), lambda s: krandom.randint((6,), 0, 100, seed=s),
                 lambda s: krandom.categorical(np.zeros((2, 5)), 8, seed=s),
                 lambda s: krandom.shuffle(np.arange(20), seed=s),
                 lambda s: krandom.dropout(np.ones(50), 0.5, seed=s)):
        np.testing.assert_array_equal(draw(7), draw(7))
        assert not np.array_equal(draw(7), draw(8))


def test_a_seed_generator_changes_on_each_call_and_replays_from_its_seed():
    gen = krandom.SeedGenerator(42)
    a, b = krandom.normal((4,), seed=gen), krandom.normal((4,), seed=gen)
    assert not np.array_equal(a, b)
    again = krandom.SeedGenerator(42)
    np.testing.assert_array_equal(krandom.normal((4,), seed=again), a)
    np.testing.assert_array_equal(krandom.normal((4,), seed=again), b)
    # as in Keras, an int seed draws with the state a SeedGenerator of that seed starts from
    np.testing.assert_array_equal(krandom.normal((4,), seed=42), a)


def test_seeds_draw_as_keras_numpy_backend():
    """Keras' NumPy backend seeds a default_rng with the [seed, counter] pair: same seed, same values."""
    np.testing.assert_array_equal(krandom.normal((3, 2), seed=42),
                                  np.random.default_rng([42, 0]).normal(size=(3, 2)).astype(np.float32))
    gen = krandom.SeedGenerator(7)
    krandom.uniform((2,), seed=gen)
    np.testing.assert_array_equal(krandom.uniform((2,), seed=gen),
                                  np.random.default_rng([7, 1]).uniform(size=2).astype(np.float32))
    # truncated_normal: whole batches of 1000 draws, those within 2 stddevs kept in order
    rng, kept = np.random.default_rng([5, 0]), []
    while len(kept) < 1000:
        batch = rng.normal(size=1000)
        kept.extend(batch[np.abs(batch) <= 2])
    np.testing.assert_array_equal(krandom.truncated_normal((1000,), seed=5), np.float32(kept[:1000]))


def test_seed_generator_state_config_and_errors():
    gen = krandom.SeedGenerator(5, name="noise")
    assert isinstance(gen.state, Variable) and not gen.state.trainable
    np.testing.assert_array_equal(gen.next(), [5, 0])
    np.testing.assert_array_equal(gen.state.numpy(), [5, 1])
    assert gen.get_config() == {"seed": 5, "name": "noise"}
    clone = krandom.SeedGenerator.from_config(gen.get_config())
    np.testing.assert_array_equal(clone.next(), [5, 0])
    with pytest.raises(ValueError, match="seed"):
        krandom.SeedGenerator("5")
    with pytest.raises(ValueError, match="seed"):
        krandom.normal((2,), seed=1.5)
    with pytest.raises(ValueError, match="keyword"):
        krandom.SeedGenerator(1, colour="red")
    assert krandom.SeedGenerator().name != krandom.SeedGenerator().name


def test_unseeded_draws_follow_set_random_seed():
    def run():
        gen = krandom.SeedGenerator()  # its seed comes from the shared generator too
        return [krandom.normal((3,)), krandom.uniform((2,)), krandom.randint((4,), 0, 9),
                krandom.dropout(np.ones(10), 0.3), krandom.shuffle(np.arange(10)), krandom.normal((2,), seed=gen)]
    keras.utils.set_random_seed(123)
    first = run()
    keras.utils.set_random_seed(123)
    second = run()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    third = run()
    assert not np.array_equal(first[0], third[0])


# ----- distributions -----


def test_normal_moments_and_dtype():
    x = krandom.normal((N,), mean=2.0, stddev=3.0, seed=1)
    assert x.dtype == np.float32 and x.shape == (N,)
    assert abs(x.mean() - 2.0) < 0.03 and abs(x.std() - 3.0) < 0.03
    assert krandom.normal((2, 3), dtype="float64", seed=1).dtype == np.float64
    with pytest.raises(ValueError, match="dtype"):
        krandom.normal((2,), dtype="int32")


def test_uniform_moments_and_bounds():
    x = krandom.uniform((N,), minval=-1.0, maxval=3.0, seed=2)
    assert x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() < 3.0
    assert abs(x.mean() - 1.0) < 0.02 and abs(x.var() - 16 / 12) < 0.02
    with pytest.raises(ValueError, match="dtype"):
        krandom.uniform((2,), dtype="int64")


def test_truncated_normal_stays_within_two_stddevs():
    x = krandom.truncated_normal((N,), mean=1.0, stddev=0.5, seed=3)
    assert x.dtype == np.float32 and x.shape == (N,)
    assert np.all(np.abs(x - 1.0) <= 1.0 + 1e-6)
    # a standard normal truncated to [-2, 2] has standard deviation 0.8796
    assert abs(x.mean() - 1.0) < 0.01 and abs(x.std() - 0.5 * 0.8796) < 0.01


def test_randint_range_and_frequencies():
    x = krandom.randint((N,), 3, 8, seed=4)
    assert x.dtype == np.int32
    assert x.min() == 3 and x.max() == 7
    np.testing.assert_allclose(np.bincount(x - 3) / N, [0.2] * 5, atol=0.01)
    assert krandom.randint((2,), 0, 5, dtype="int64", seed=1).dtype == np.int64
    with pytest.raises(ValueError, match="dtype"):
        krandom.randint((2,), 0, 5, dtype="float32")
    with pytest.raises(ValueError, match="minval"):
        krandom.randint((2,), 5, 5)


def test_categorical_frequencies_follow_the_softmax():
    probabilities = np.array([[0.1, 0.2, 0.7], [0.5, 0.5, 0.0]])
    with np.errstate(divide="ignore"):
        logits = np.log(probabilities) + 3.0  # unnormalized log-probabilities; log 0 = -inf never drawn
    samples = krandom.categorical(logits, 50_000, seed=5)
    assert samples.shape == (2, 50_000) and samples.dtype == np.int32
    for row, p in zip(samples, probabilities):
        np.testing.assert_allclose(np.bincount(row, minlength=3) / row.size, p, atol=0.01)
    with pytest.raises(ValueError, match="2-D"):
        krandom.categorical(np.zeros(3), 2)


def test_gamma_binomial_beta_means():
    assert abs(krandom.gamma((N,), alpha=3.0, seed=6).mean() - 3.0) < 0.03
    b = krandom.binomial((N,), counts=10, probabilities=0.3, seed=7)
    assert b.dtype == np.float32 and abs(b.mean() - 3.0) < 0.03
    assert abs(krandom.beta((N,), alpha=2.0, beta=6.0, seed=8).mean() - 0.25) < 0.01


def test_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        krandom.normal((2, -1))
    with pytest.raises(TypeError, match="shape"):
        krandom.uniform("big")
    assert krandom.normal(3, seed=0).shape == (3,)


# ----- dropout -----


def test_dropout_zeroes_at_the_rate_and_scales_the_rest():
    x = np.full((N,), 2.0, dtype=np.float32)
    out = krandom.dropout(x, 0.25, seed=9)
    assert out.dtype == np.float32
    kept = out != 0
    np.testing.assert_allclose(out[kept], 2.0 / 0.75, rtol=1e-6)
    assert abs(1 - kept.mean() - 0.25) < 0.01
    assert abs(out.mean() - 2.0) < 0.03  # the expectation is unchanged


def test_dropout_noise_shape_shares_the_mask():
    x = np.ones((6, 50), dtype=np.float32)
    out = krandom.dropout(x, 0.5, noise_shape=(1, None), seed=10)
    assert np.all(out == out[:1])  # one mask for every row
    assert 0 < np.count_nonzero(out[0]) < 50
    with pytest.raises(ValueError, match="noise_shape"):
        krandom.dropout(x, 0.5, noise_shape=(6, 7))


def test_dropout_edge_rates():
    x = np.arange(1.0, 5.0, dtype=np.float32)
    assert krandom.dropout(x, 0.0) is x
    np.testing.assert_array_equal(krandom.dropout(x, 1.0), np.zeros(4))
    for rate in (-0.1, 1.5, "0.5"):
        with pytest.raises(ValueError, match="rate"):
            krandom.dropout(x, rate)


def test_dropout_gradient_is_the_same_scaled_mask():
    v = Variable(np.arange(1.0, 41.0).reshape(4, 10))
    cotangent = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    with GradientTape() as tape:
        out = krandom.dropout(v, 0.4, seed=11)
    grad = tape.gradient(out, v, output_gradients=cotangent)
    scale = np.asarray(out) / v.value  # 0 or 1 / 0.6 per entry
    dropped, kept = np.isclose(scale, 0), np.isclose(scale, 1 / 0.6)
    assert np.all(dropped | kept) and dropped.any() and kept.any()
    np.testing.assert_allclose(grad, cotangent * scale, rtol=1e-6)


# ----- shuffle -----


def test_shuffle_permutes_whole_slices():
    x = np.arange(24).reshape(6, 4)
    out = krandom.shuffle(x, seed=12)
    assert sorted(map(tuple, out)) == sorted(map(tuple, x))  # rows intact, in another order
    assert not np.array_equal(out, x)
    cols = krandom.shuffle(x, axis=1, seed=12)
    assert sorted(map(tuple, cols.T)) == sorted(map(tuple, x.T))


def test_shuffle_is_differentiable():
    v = Variable(np.arange(5.0))
    with GradientTape() as tape:
        out = krandom.shuffle(v, seed=13)
        loss = ops.sum(out * np.arange(5.0))
    grad = tape.gradient(loss, v)
    # each input's gradient is the weight of the position it moved to
    np.testing.assert_allclose(grad[np.asarray(out).astype(int)], np.arange(5.0))

