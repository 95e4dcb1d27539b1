"""The per-ISA 2x2 max-pooling kernels (csrc/pool/maxpool2x2.c) against the float64 reference, on
the shapes where their vector loops meet their edges: channel counts around each vector width (the
argmax bytes are packed and unpacked per vector), odd heights and widths (a row and a column no window
covers), one-pixel outputs, and every thread count giving the same bits."""
import numpy as np
import pytest

import fastconv
from fastconv import reference

CHANNELS = [1, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 24, 31, 33]


def relu_like(rng, shape):
    """Ties, zeros, negatives and a few NaN and infinities: every branch of the first-maximum rule."""
    x = rng.integers(-3, 4, size=shape).astype(np.float32) * np.float32(0.5)
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, size=max(1, flat.size // 50), replace=False)
    flat[picks[0::3]] = np.nan
    flat[picks[1::3]] = np.inf
    flat[picks[2::3]] = -np.inf
    return x


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("hw", [(2, 2), (2, 3), (3, 2), (3, 3), (5, 7), (6, 9)])
def test_maxpool_2x2_matches_float64_reference_at_vector_edges(isa, rng, channels, hw):
    x = relu_like(rng, (2,) + hw + (channels,))
    x64 = x.astype(np.float64)
    y, argmax = fastconv.maxpool2d(x, 2, return_argmax=True)
    want_y, want_argmax = reference.maxpool2d(x64, 2, return_argmax=True)
    np.testing.assert_array_equal(y, want_y.astype(np.float32))
    np.testing.assert_array_equal(argmax, want_argmax)
    np.testing.assert_array_equal(fastconv.maxpool2d(x, 2), y)
    dy = rng.standard_normal(y.shape)
    for x_from_relu in (False, True):
        want = reference.maxpool2d_backward(dy, x64, 2, x_from_relu=x_from_relu)
        for recorded in (None, argmax):
            dx = fastconv.maxpool2d_backward(dy.astype(np.float32), x, 2, x_from_relu=x_from_relu, argmax=recorded)
            assert dx.shape == x.shape
            np.testing.assert_array_equal(dx, want.astype(np.float32))


def test_maxpool_2x2_gives_the_same_bits_for_any_thread_count(isa, threads, rng):
    x = relu_like(rng, (7, 13, 11, 21))
    dy = rng.standard_normal((7, 6, 5, 21)).astype(np.float32)
    results = []
    for count in (1, 2, 3):
        threads(count)
        y, argmax = fastconv.maxpool2d(x, 2, return_argmax=True)
        results.append((y, argmax, fastconv.maxpool2d_backward(dy, x, 2, x_from_relu=True, argmax=argmax),
                        fastconv.maxpool2d_backward(dy, x, 2)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
