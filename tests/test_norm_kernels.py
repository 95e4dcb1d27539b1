"""The batch normalisation kernels (fastconv.batch_norm, batch_norm_backward) against fastconv.reference."""
import numpy as np
import pytest

import fastconv
from fastconv import reference

# Rows not a multiple of any vector width, C = 1, 3, 17, 64; the last spans many row chunks and is
# large enough (over 125_000 values) to run on 2 threads.
SHAPES = [(5, 1), (7, 3), (3, 11, 17), (2, 9, 7, 64), (41, 13, 19, 17)]


def _inputs(rng, shape, mean=0.5, std=2.0):
    x = (rng.standard_normal(shape) * std + mean).astype(np.float32)
    channels = shape[-1]
    gamma, beta = (rng.standard_normal(channels).astype(np.float32) for _ in range(2))
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, gamma, beta, dy


def _float64(*arrays):
    return [None if a is None else np.asarray(a, dtype=np.float64) for a in arrays]


def _assert_close(got, want, name):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * max(1.0, float(np.abs(want).max())), err_msg=name)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_matches_reference(isa, threads, rng, shape, affine):
    threads(2)
    x, gamma, beta, dy = _inputs(rng, shape)
    if not affine:
        gamma = beta = None
    y, mean, variance = fastconv.batch_norm(x, gamma, beta, epsilon=1e-3)
    want_y, want_mean, want_variance = reference.batch_norm(*_float64(x, gamma, beta), epsilon=1e-3)
    for name, got, want in [("y", y, want_y), ("mean", mean, want_mean), ("variance", variance, want_variance)]:
        assert got.dtype == np.float32 and got.shape == want.shape
        _assert_close(got, want, name)

    moving_mean, moving_variance = mean + 0.25, variance * 1.5  # inference: given statistics
    y, *_ = fastconv.batch_norm(x, gamma, beta, epsilon=1e-3, mean=moving_mean, variance=moving_variance)
    want_y, *_ = reference.batch_norm(*_float64(x, gamma, beta), epsilon=1e-3,
                                      mean=_float64(moving_mean)[0], variance=_float64(moving_variance)[0])
    _assert_close(y, want_y, "inference y")

    for batch_statistics in (True, False):
        got = fastconv.batch_norm_backward(dy, x, mean, variance, gamma, epsilon=1e-3,
                                           batch_statistics=batch_statistics)
        want = reference.batch_norm_backward(*_float64(dy, x, mean, variance, gamma), epsilon=1e-3,
                                             batch_statistics=batch_statistics)
        for name, g, w in zip(("dx", "dgamma", "dbeta"), got, want):
            _assert_close(g, w, f"{name}, batch_statistics={batch_statistics}")
    dx, dgamma, dbeta = fastconv.batch_norm_backward(dy, x, mean, variance, gamma, need_dx=False)
    assert dx is None
    _assert_close(dgamma, want[1], "dgamma without dx")


def test_batch_norm_variance_does_not_cancel_under_a_large_mean(isa, threads, rng):
    """|mean| / std = 1e5: a float32 sum of squares minus the squared mean would lose every digit."""
    threads(2)
    x, gamma, beta, dy = _inputs(rng, (64, 12, 12, 3), mean=1e4, std=0.1)
    y, mean, variance = fastconv.batch_norm(x, gamma, beta)
    _, want_mean, want_variance = reference.batch_norm(*_float64(x, gamma, beta))
    np.testing.assert_allclose(mean, want_mean, rtol=1e-7)
    np.testing.assert_allclose(variance, want_variance, rtol=1e-5)
    # The mean is rounded to float32's steps of 1e-3 here, so y is compared with the statistics used.
    want_y, *_ = reference.batch_norm(*_float64(x, gamma, beta), mean=_float64(mean)[0],
                                      variance=_float64(variance)[0])
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)


def test_batch_norm_passes_nan_through_its_channel_only(rng):
    x, gamma, beta, dy = _inputs(rng, (9, 5, 3))
    x[4, 2, 1] = np.nan
    y, mean, variance = fastconv.batch_norm(x, gamma, beta)
    assert np.isnan(mean[1]) and np.isnan(variance[1]) and np.isnan(y[..., 1]).all()
    assert np.isfinite(y[..., [0, 2]]).all()
    dx, dgamma, dbeta = fastconv.batch_norm_backward(dy, x, mean, variance, gamma)
    assert np.isnan(dx[..., 1]).all() and np.isnan(dgamma[1]) and np.isfinite(dx[..., [0, 2]]).all()


def test_batch_norm_is_the_same_for_1_and_2_threads(isa, threads, rng):
    x, gamma, beta, dy = _inputs(rng, SHAPES[-1])
    results = []
    for n in (1, 2):
        threads(n)
        y, mean, variance = fastconv.batch_norm(x, gamma, beta)
        results.append((y, mean, variance, *fastconv.batch_norm_backward(dy, x, mean, variance, gamma)))
    for name, one, two in zip(("y", "mean", "variance", "dx", "dgamma", "dbeta"), *results):
        np.testing.assert_array_equal(one, two, err_msg=name)


def test_batch_norm_of_empty_arrays():
    y, mean, variance = fastconv.batch_norm(np.zeros((0, 3), np.float32))
    assert y.shape == (0, 3) and np.isnan(mean).all() and np.isnan(variance).all()
    dx, dgamma, dbeta = fastconv.batch_norm_backward(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(3), np.ones(3))
    assert dx.shape == (0, 3) and not dgamma.any() and not dbeta.any()


@pytest.mark.parametrize("ops", [fastconv, reference], ids=["fastconv", "reference"])
def test_batch_norm_rejects_bad_arguments(ops):
    x, c = np.ones((4, 3), np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match="x must have a batch axis"):
        ops.batch_norm(np.ones(3, np.float32))
    with pytest.raises(TypeError, match="x must hold real numbers"):
        ops.batch_norm(np.array([["a"]]))
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\)"):
        ops.batch_norm(x, np.ones(4, np.float32))
    with pytest.raises(ValueError, match="beta must be 1-D"):
        ops.batch_norm(x, c, np.ones((3, 1), np.float32))
    with pytest.raises(ValueError, match="mean and variance must be given together"):
        ops.batch_norm(x, mean=c)
    with pytest.raises(ValueError, match="epsilon must be positive"):
        ops.batch_norm(x, epsilon=0.0)
    with pytest.raises(TypeError, match="epsilon must be a real number"):
        ops.batch_norm(x, epsilon="1e-3")
    with pytest.raises(ValueError, match=r"dy must have shape \(4, 3\)"):
        ops.batch_norm_backward(np.ones((4, 2)), x, c, c)
    with pytest.raises(ValueError, match=r"variance must have shape \(3,\)"):
        ops.batch_norm_backward(x, x, c, np.ones(2))
