"""conv2d, pooling and their backward passes against fastconv.reference, on every ISA path."""
import os
import pathlib
import sys
import threading

import numpy as np
import pytest

import fastconv
from fastconv import reference


def random_conv_case(rng):
    """A random valid convolution: shapes, strides, dilation and one of every padding form."""
    while True:
        n = int(rng.integers(1, 9))
        h, w = (int(v) for v in rng.integers(1, 41, size=2))
        cin, cout = (int(v) for v in rng.choice([1, 2, 3, 8, 17, 32, 70], size=2))
        kh, kw = (int(v) for v in rng.integers(1, 8, size=2))
        strides = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        dilation = (1, 1) if rng.random() < 0.7 else (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        padding = [
            "valid", "same", int(rng.integers(0, 3)),
            ((int(rng.integers(0, 3)), int(rng.integers(0, 3))), (int(rng.integers(0, 3)), int(rng.integers(0, 3)))),
        ][int(rng.integers(0, 4))]
        if padding == "same" and max(strides) > 1 and max(dilation) > 1:
            continue
        try:
            fastconv._args.conv_geometry((n, h, w, cin), (kh, kw, cin, cout), strides, padding, dilation)
        except ValueError:
            continue  # kernel larger than the padded input
        if n * h * w * kh * kw * cin * cout > 3e7:
            continue  # keep the suite fast
        return (n, h, w, cin), (kh, kw, cin, cout), dict(strides=strides, padding=padding, dilation_rate=dilation)


def assert_close(actual, expected, scale_terms):
    """float32 result against a float64 oracle, allowing rounding that grows with the summed terms."""
    tol = 1e-6 * np.sqrt(scale_terms) * max(1.0, np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * 10)


@pytest.mark.parametrize("algorithm", ["auto", "im2col", "direct", "implicit"])
@pytest.mark.parametrize("seed", range(12))
def test_conv2d_forward_and_backward_match_reference(isa, seed, algorithm):
    rng = np.random.default_rng(seed)
    for _ in range(3):
        x_shape, w_shape, kwargs = random_conv_case(rng)
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = rng.standard_normal(w_shape).astype(np.float32)
        b = rng.standard_normal(w_shape[3]).astype(np.float32)
        activation = [None, "relu"][seed % 2]
        y = fastconv.conv2d(x, w, b, activation=activation, algorithm=algorithm, **kwargs)
        expected = reference.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                                    activation=activation, **kwargs)
        assert y.dtype == np.float32 and y.shape == expected.shape
        k = w_shape[0] * w_shape[1] * w_shape[2]
        assert_close(y, expected, k)

        dy = rng.standard_normal(y.shape).astype(np.float32)
        got = fastconv.conv2d_backward(dy, x, w, algorithm=algorithm, **kwargs)
        want = reference.conv2d_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), **kwargs)
        terms = [w_shape[0] * w_shape[1] * w_shape[3], y.shape[0] * y.shape[1] * y.shape[2], y.shape[0] * y.shape[1] * y.shape[2]]
        for name, g, e, t in zip(("dx", "dw", "db"), got, want, terms):
            assert g.shape == e.shape and g.dtype == np.float32, name
            assert_close(g, e, t)


def test_implicit_gemm_forward_matches_reference(isa, rng):
    """Stride-1 convs whose output rows fill the GEMM's register tiles read their patches in place."""
    mr = fastconv._C.gemm_blocking()[0]  # the register tile's rows
    cases = [  # (output width in tiles, x shape without width, w shape, padding)
        (1, (2, 5, None, 7), (3, 3, 7, 16), "same"),  # (7 channels: not Winograd)
        (2, (3, 7, None, 32), (3, 3, 32, 7), "valid"),
        (1, (1, 4, None, 17), (2, 4, 17, 70), ((1, 2), (0, 3))),
        (3, (2, 6, None, 5), (5, 3, 5, 33), 1),
        (2, (1, 3, None, 64), (1, 3, 64, 40), "same"),
        # kernel rows over padding rows are skipped; the first and last two output rows see only padding
        (1, (2, 4, None, 7), (3, 3, 7, 16), ((4, 4), (1, 1))),
    ]
    for tiles, (n, h, _, cin), w_shape, padding in cases:
        g_pad = fastconv._args.conv_geometry((n, h, 64, cin), w_shape, 1, padding, 1)
        width = tiles * mr + (64 - g_pad.ow)  # the input width that gives `tiles` whole tiles per output row
        x_shape = (n, h, width, cin)
        assert fastconv.conv2d_algorithm(x_shape, w_shape, padding=padding) == "implicit"
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = rng.standard_normal(w_shape).astype(np.float32)
        b = rng.standard_normal(w_shape[3]).astype(np.float32)
        for activation, bias in [(None, None), ("relu", b)]:
            y = fastconv.conv2d(x, w, bias, padding=padding, activation=activation)
            want = reference.conv2d(x.astype(np.float64), w.astype(np.float64),
                                    None if bias is None else bias.astype(np.float64), padding=padding,
                                    activation=activation)
            assert y.shape == want.shape
            assert_close(y, want, np.prod(w_shape[:3]))
            np.testing.assert_array_equal(y, fastconv.conv2d(x, w, bias, padding=padding, activation=activation,
                                                             algorithm="implicit"))
        # dx as an implicit conv of dy with the flipped kernel (the "same" cases: x as wide as y)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        relu_x = np.maximum(x, 0)
        for x_from_relu in (False, True):
            got = fastconv.conv2d_backward(dy, relu_x, w, padding=padding, x_from_relu=x_from_relu)
            want = reference.conv2d_backward(dy.astype(np.float64), relu_x.astype(np.float64), w.astype(np.float64),
                                             padding=padding, x_from_relu=x_from_relu)
            for g, e, terms in zip(got, want, [np.prod(w_shape[:2]) * w_shape[3]] + [np.prod(y.shape[:3])] * 2):
                assert_close(g, e, terms)
    # Rows whose tiles would compute over an eighth more rows than they have run as bands, the tiles
    # crossing row ends (7 pixels with a 1-wide kernel: 8 rows computed on every ISA); partial tiles
    # along rows (MR + 1 pixels, and the Keras example's second conv, 26x26 -> 24x24).
    for x_shape, w_shape in [((2, 5, 7, 6), (3, 1, 6, 40)), ((2, 5, mr + 1, 6), (3, 1, 6, 40)),
                             ((2, 26, 26, 32), (3, 3, 32, 64))]:  # (auto: Winograd for the last)
        assert fastconv.conv2d_algorithm(x_shape, w_shape, algorithm="implicit") == "implicit"
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = rng.standard_normal(w_shape).astype(np.float32)
        b = rng.standard_normal(w_shape[3]).astype(np.float32)
        y = fastconv.conv2d(x, w, b, activation="relu", algorithm="implicit")
        assert_close(y, reference.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                                         activation="relu"), np.prod(w_shape[:3]))
    # Padding deeper than the kernel: implicit GEMM forward and dw, but dx through im2col. dw keeps the
    # same bits with and without dx.
    x_shape, w_shape, padding = (2, 6, 2 * mr - 2, 7), (3, 3, 7, 32), ((3, 3), (2, 2))  # (7: not Winograd)
    assert fastconv.conv2d_algorithm(x_shape, w_shape, padding=padding) == "implicit"
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    dy = rng.standard_normal(fastconv.conv2d(x, w, padding=padding).shape).astype(np.float32)
    got = fastconv.conv2d_backward(dy, x, w, padding=padding)
    want = reference.conv2d_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), padding=padding)
    for g, e, terms in zip(got, want, [9 * 32, dy.size // 32, dy.size // 32]):
        assert_close(g, e, terms)
    without_dx = fastconv.conv2d_backward(dy, x, w, padding=padding, need_dx=False)
    np.testing.assert_array_equal(without_dx[1], got[1])
    np.testing.assert_array_equal(without_dx[2], got[2])
    # Strided, dilated or badly tiled shapes fall back to im2col when implicit is asked for.
    assert fastconv.conv2d_algorithm((1, 9, 9, 8), (3, 3, 8, 8), strides=2, algorithm="implicit") == "im2col"
    assert fastconv.conv2d_algorithm((1, 9, 9, 8), (3, 3, 8, 8), dilation_rate=2, algorithm="implicit") == "im2col"


DIRECT_CASES = [  # (x shape, w shape, conv2d keywords): few input channels, every geometry
    ((3, 28, 28, 1), (3, 3, 1, 32), dict(padding="same")),
    ((2, 28, 28, 1), (3, 3, 1, 32), dict(padding="valid")),
    ((2, 13, 11, 2), (3, 5, 2, 7), dict(strides=(2, 1), padding="same")),
    ((2, 12, 15, 3), (5, 3, 3, 33), dict(strides=(1, 3), padding=((2, 0), (1, 2)))),
    ((1, 17, 16, 4), (3, 3, 4, 70), dict(padding=2, dilation_rate=(2, 3))),
    ((4, 9, 10, 1), (2, 4, 1, 1), dict(strides=2, padding="valid")),
    ((2, 7, 30, 3), (1, 7, 3, 17), dict(padding="same", dilation_rate=(1, 2))),
    ((2, 5, 5, 2), (5, 5, 2, 64), dict(padding="valid")),
    ((3, 8, 9, 4), (3, 2, 4, 16), dict(strides=3, padding=1)),
    ((1, 2, 3, 1), (3, 3, 1, 5), dict(padding=4)),  # rows and whole tiles of nothing but padding
]


@pytest.mark.parametrize("x_shape,w_shape,kwargs", DIRECT_CASES)
def test_direct_conv_matches_reference(isa, rng, x_shape, w_shape, kwargs):
    assert fastconv.conv2d_algorithm(x_shape, w_shape, **kwargs) == "direct"  # what auto picks for Cin <= 4
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[3]).astype(np.float32)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    for activation in (None, "relu"):
        for bias in (b, None):
            y = fastconv.conv2d(x, w, bias, activation=activation, algorithm="direct", **kwargs)
            expected = reference.conv2d(x64, w64, None if bias is None else bias.astype(np.float64),
                                        activation=activation, **kwargs)
            assert_close(y, expected, np.prod(w_shape[:3]))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    want = reference.conv2d_backward(dy.astype(np.float64), x64, w64, **kwargs)
    got = fastconv.conv2d_backward(dy, x, w, algorithm="direct", **kwargs)
    terms = [np.prod(w_shape[:2]) * w_shape[3]] + [np.prod(y.shape[:3])] * 2
    for g, e, t in zip(got, want, terms):
        assert g.shape == e.shape and g.dtype == np.float32
        assert_close(g, e, t)
    dx, dw, db = fastconv.conv2d_backward(dy, x, w, need_dx=False, **kwargs)
    assert dx is None
    np.testing.assert_array_equal(dw, got[1])
    np.testing.assert_array_equal(db, got[2])
    # auto: the same direct dw, and dx through im2col's dy @ w^T (faster with so few channels), also
    # through the ReLU before the conv
    relu_x = np.maximum(x, 0)
    for x_in, x_from_relu in ((x, False), (relu_x, True)):
        auto = fastconv.conv2d_backward(dy, x_in, w, x_from_relu=x_from_relu, **kwargs)
        want = reference.conv2d_backward(dy.astype(np.float64), x_in.astype(np.float64), w64,
                                         x_from_relu=x_from_relu, **kwargs)
        for g, e, t in zip(auto, want, terms):
            assert_close(g, e, t)
    np.testing.assert_array_equal(fastconv.conv2d_backward(dy, x, w, **kwargs)[1], got[1])


@pytest.mark.parametrize("algorithm", ["auto", "im2col", "implicit"])
def test_weight_gradient_of_few_output_channels(isa, rng, algorithm):
    """Up to 8 output channels dw is computed transposed (dy^T @ patches with im2col; under auto and
    implicit, by the direct kernels' rows over each padded image): around that bound, with
    several blocks of images, partial register tiles and tap counts off the vector width, against
    the reference."""
    for cout, cin, padding in [(1, 21, "same"), (3, 21, "same"), (4, 21, "same"), (5, 21, "same"), (8, 21, "same"),
                               (9, 21, "same"), (1, 32, "valid"), (4, 32, ((0, 2), (1, 0)))]:
        x = rng.standard_normal((9, 13, 11, cin)).astype(np.float32)
        w = rng.standard_normal((3, 3, cin, cout)).astype(np.float32)
        dy = rng.standard_normal(fastconv.conv2d(x, w, padding=padding).shape).astype(np.float32)
        _, dw, db = fastconv.conv2d_backward(dy, x, w, padding=padding, need_dx=False, algorithm=algorithm)
        _, want_dw, want_db = reference.conv2d_backward(dy.astype(np.float64), x.astype(np.float64),
                                                        w.astype(np.float64), padding=padding, need_dx=False)
        assert_close(dw, want_dw, 9 * 13 * 11)
        assert_close(db, want_db, 9 * 13 * 11)


@pytest.mark.parametrize("cout", [1, 2, 3, 4])
def test_few_output_channels_forward(isa, rng, cout):
    """A stride-1 conv with 1..4 output channels runs each output row through the direct kernels' dot
    products along the taps: kw * cin off the vector width, rows of 7 pixels (not whole groups of 4),
    padding of every form, bias and ReLU, against the reference; auto picks it (as "implicit")."""
    cases = [((3, 9, 7, 33), (3, 3), "same"), ((2, 12, 13, 5), (3, 5), ((2, 0), (1, 3))),
             ((2, 10, 11, 16), (5, 3), "valid"), ((1, 6, 7, 64), (1, 3), "same")]
    for x_shape, (kh, kw), padding in cases:
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = rng.standard_normal((kh, kw, x_shape[3], cout)).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32)
        assert fastconv.conv2d_algorithm(x.shape, w.shape, padding=padding) == "implicit"
        for activation in (None, "relu"):
            y = fastconv.conv2d(x, w, b, padding=padding, activation=activation)
            want = reference.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                                    padding=padding, activation=activation)
            assert y.shape == want.shape
            assert_close(y, want, kh * kw * x_shape[3])
    x = rng.standard_normal((1, 5, 6, 20)).astype(np.float32)
    x[0, 2, 3, 7] = np.nan
    y = fastconv.conv2d(x, rng.standard_normal((3, 3, 20, cout)).astype(np.float32), padding="same",
                        activation="relu")
    assert np.isnan(y[0, 1:4, 2:5]).all() and not np.isnan(y[0, 0]).any()


# Stride-1 convs whose dw takes the implicit GEMM path (cin * cout >= 2048, padded rows at most a fifth
# wider): several images per block and several blocks, odd cin (a partial tile reads past the padded
# image), cout off the register tile, asymmetric padding, a non-square kernel, valid 5x5.
IMPLICIT_DW_CASES = [
    ((11, 14, 14, 32), (3, 3, 32, 64), dict(padding="same")),
    ((3, 13, 11, 33), (3, 3, 33, 70), dict(padding=((2, 0), (1, 2)))),
    ((3, 20, 25, 40), (3, 5, 40, 64), dict(padding="same")),
    ((2, 30, 30, 48), (5, 5, 48, 48), dict(padding="valid")),
]


@pytest.mark.parametrize("x_shape,w_shape,kwargs", IMPLICIT_DW_CASES)
@pytest.mark.parametrize("algorithm", ["auto", "implicit"])
def test_implicit_weight_gradient_matches_reference(isa, rng, x_shape, w_shape, kwargs, algorithm):
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    dy = rng.standard_normal(fastconv.conv2d(x, w, **kwargs).shape).astype(np.float32)
    dx, dw, db = fastconv.conv2d_backward(dy, x, w, algorithm=algorithm, **kwargs)
    want = reference.conv2d_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), **kwargs)
    pixels = dy.shape[0] * dy.shape[1] * dy.shape[2]
    assert_close(dx, want[0], w_shape[0] * w_shape[1] * w_shape[3])
    assert_close(dw, want[1], pixels)
    assert_close(db, want[2], pixels)
    _, dw_alone, _ = fastconv.conv2d_backward(dy, x, w, algorithm=algorithm, need_dx=False, **kwargs)
    np.testing.assert_array_equal(dw_alone, dw)


@pytest.mark.parametrize("algorithm", ["im2col", "direct"])
def test_skipping_dx_gives_the_same_dw_and_db(isa, rng, algorithm):
    x = rng.standard_normal((3, 10, 9, 5)).astype(np.float32)
    w = rng.standard_normal((3, 3, 5, 6)).astype(np.float32)
    dy = rng.standard_normal((3, 10, 9, 6)).astype(np.float32)
    full = fastconv.conv2d_backward(dy, x, w, padding="same", algorithm=algorithm)
    dx, dw, db = fastconv.conv2d_backward(dy, x, w, padding="same", algorithm=algorithm, need_dx=False)
    assert dx is None and full[0] is not None
    np.testing.assert_array_equal(dw, full[1])
    np.testing.assert_array_equal(db, full[2])
    empty = fastconv.conv2d_backward(dy[:0], x[:0], w, padding="same", need_dx=False)
    assert empty[0] is None and not empty[1].any()


def test_algorithm_choice_and_environment(monkeypatch):
    assert fastconv.conv2d_algorithm((1, 8, 8, 1), (3, 3, 1, 8)) == "direct"
    assert fastconv.conv2d_algorithm((1, 8, 8, 4), (3, 3, 4, 8)) == "direct"
    assert fastconv.conv2d_algorithm((1, 8, 8, 5), (3, 3, 5, 8)) == "implicit"
    assert fastconv.conv2d_algorithm((1, 8, 8, 5), (3, 3, 5, 8), strides=2) == "im2col"
    assert fastconv.conv2d_algorithm((1, 5, 5, 5), (3, 3, 5, 8)) == "im2col"  # 3-pixel rows: 4 rows computed
    assert fastconv.conv2d_algorithm((1, 8, 8, 3), (1, 1, 3, 8)) == "gemm"
    assert fastconv.conv2d_algorithm((1, 8, 8, 1), (3, 3, 1, 8), algorithm="im2col") == "im2col"
    assert fastconv.conv2d_algorithm((1, 8, 8, 64), (3, 3, 64, 8), algorithm="direct") == "direct"
    monkeypatch.setenv("FASTCONV_CONV_ALGO", "im2col")
    assert fastconv.conv2d_algorithm((1, 8, 8, 1), (3, 3, 1, 8)) == "im2col"
    assert fastconv.conv2d_algorithm((1, 8, 8, 1), (3, 3, 1, 8), algorithm="auto") == "direct"  # keyword wins
    monkeypatch.setenv("FASTCONV_CONV_ALGO", "fft")
    with pytest.raises(ValueError, match="FASTCONV_CONV_ALGO must be one of"):
        fastconv.conv2d(X, W)


def test_workspace_bytes_are_reported_per_algorithm():
    shape = ((128, 28, 28, 1), (3, 3, 1, 32))
    direct = fastconv.conv2d_workspace_bytes(*shape, padding="same")
    im2col = fastconv.conv2d_workspace_bytes(*shape, padding="same", algorithm="im2col")
    assert 0 < direct < im2col  # packed weights only, against a block of patches per thread
    assert fastconv.conv2d_workspace_bytes(*shape, padding="same", backward=True) > direct
    # 1x1: a plain GEMM reading x in place; only its own packing buffers (they were left uncounted before)
    assert fastconv.conv2d_workspace_bytes((8, 8, 8, 16), (1, 1, 16, 4)) <= 64 << 10


def test_conv2d_same_padding_follows_keras(isa):
    # 'same' with stride 2 on an even input: TensorFlow puts the extra pad row/column at the bottom/right.
    x = np.arange(1 * 6 * 6 * 1, dtype=np.float32).reshape(1, 6, 6, 1)
    w = np.ones((3, 3, 1, 1), dtype=np.float32)
    y = fastconv.conv2d(x, w, strides=2, padding="same")
    assert y.shape == (1, 3, 3, 1)
    # Total pad 1 per axis, all of it at the bottom/right: output (0, 0) covers rows/cols 0..2 and
    # output (2, 2) covers rows/cols 4..5 plus the padding.
    assert y[0, 0, 0, 0] == 0 + 1 + 2 + 6 + 7 + 8 + 12 + 13 + 14
    assert y[0, 2, 2, 0] == 28 + 29 + 34 + 35
    np.testing.assert_allclose(y, reference.conv2d(x, w, strides=2, padding="same"))


def test_conv2d_pointwise_is_a_gemm(isa, rng):
    x = rng.standard_normal((4, 9, 7, 33)).astype(np.float32)
    w = rng.standard_normal((1, 1, 33, 20)).astype(np.float32)
    y = fastconv.conv2d(x, w, activation="relu")
    expected = np.maximum(x.reshape(-1, 33).astype(np.float64) @ w.reshape(33, 20), 0).reshape(4, 9, 7, 20)
    assert_close(y, expected, 33)


@pytest.mark.parametrize("algorithm", ["im2col", "direct", "implicit"])
@pytest.mark.parametrize("seed", range(4))
def test_conv2d_backward_fuses_the_gradient_of_the_relu_before_it(isa, seed, algorithm):
    """x_from_relu: dx is zero wherever x (a ReLU's output) is not > 0, as relu_backward would make it."""
    rng = np.random.default_rng(100 + seed)
    x_shape, w_shape, kwargs = random_conv_case(rng)
    if algorithm == "direct":  # the direct kernel's own dx path, with few input channels
        x_shape, w_shape = x_shape[:3] + (2,), w_shape[:2] + (2,) + w_shape[3:]
    x = np.maximum(rng.standard_normal(x_shape), 0).astype(np.float32)  # about half exact zeros
    w = rng.standard_normal(w_shape).astype(np.float32)
    dy = rng.standard_normal(fastconv.conv2d(x, w, **kwargs).shape).astype(np.float32)
    dx, dw, db = fastconv.conv2d_backward(dy, x, w, x_from_relu=True, algorithm=algorithm, **kwargs)
    want = reference.conv2d_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64),
                                     x_from_relu=True, **kwargs)
    assert_close(dx, want[0], w_shape[0] * w_shape[1] * w_shape[3])
    assert not dx[x <= 0].any()
    plain = fastconv.conv2d_backward(dy, x, w, algorithm=algorithm, **kwargs)
    np.testing.assert_array_equal(dx, fastconv.relu_backward(plain[0], x))
    np.testing.assert_array_equal(dw, plain[1])
    np.testing.assert_array_equal(db, plain[2])


POOL_CASES = [
    (2, None, "valid"), (2, None, "same"), (3, 2, "valid"), (3, 2, "same"), (3, 1, "same"),
    ((2, 3), (1, 2), "valid"), (4, 3, "same"), (1, 1, "valid"), ((1, 4), (3, 1), "same"),
]


@pytest.mark.parametrize("pool_size,strides,padding", POOL_CASES)
def test_pooling_matches_reference(isa, rng, pool_size, strides, padding):
    for shape in [(2, 9, 11, 5), (1, 4, 4, 64), (3, 13, 7, 1)]:
        x = rng.standard_normal(shape).astype(np.float32)
        y = fastconv.maxpool2d(x, pool_size, strides, padding)
        np.testing.assert_array_equal(y, reference.maxpool2d(x, pool_size, strides, padding))
        dy = rng.standard_normal(y.shape).astype(np.float32)
        np.testing.assert_allclose(fastconv.maxpool2d_backward(dy, x, pool_size, strides, padding),
                                   reference.maxpool2d_backward(dy, x, pool_size, strides, padding), atol=1e-5)
        relu_x = np.maximum(x, 0)  # x_from_relu: ties at zero, and windows of nothing but zeros
        np.testing.assert_allclose(
            fastconv.maxpool2d_backward(dy, relu_x, pool_size, strides, padding, x_from_relu=True),
            reference.maxpool2d_backward(dy, relu_x, pool_size, strides, padding, x_from_relu=True), atol=1e-5)
        np.testing.assert_allclose(fastconv.avgpool2d(x, pool_size, strides, padding),
                                   reference.avgpool2d(x.astype(np.float64), pool_size, strides, padding), atol=1e-5)
        np.testing.assert_allclose(fastconv.avgpool2d_backward(dy, x, pool_size, strides, padding),
                                   reference.avgpool2d_backward(dy, x, pool_size, strides, padding), atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 8, 8, 37), (1, 7, 9, 4), (3, 5, 6, 3), (2, 6, 4, 8), (1, 4, 6, 16),
                                   (2, 4, 4, 20), (1, 6, 5, 64)])
def test_maxpool_2x2_fast_path_with_ties_nan_and_inf(isa, rng, shape):
    """The per-ISA 2x2 kernels: channel counts below, at, and between multiples of every vector width
    (the last vector overlaps the one before), with and without the argmax."""
    x = rng.integers(-2, 3, size=shape).astype(np.float32)  # many ties
    x[0, 0, 0, :] = np.nan
    x[0, 2:4, 2:4, :] = -np.inf  # a window of nothing but -inf passes no gradient
    x[-1, 1, 0, :] = np.inf
    y = fastconv.maxpool2d(x, 2)
    np.testing.assert_array_equal(y, reference.maxpool2d(x, 2))
    y_with_argmax, argmax = fastconv.maxpool2d(x, 2, return_argmax=True)
    want_y, want_argmax = reference.maxpool2d(x, 2, return_argmax=True)
    np.testing.assert_array_equal(y_with_argmax, want_y)
    np.testing.assert_array_equal(argmax, want_argmax)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    for x_from_relu in (False, True):
        want = reference.maxpool2d_backward(dy, x, 2, x_from_relu=x_from_relu)
        np.testing.assert_array_equal(fastconv.maxpool2d_backward(dy, x, 2, x_from_relu=x_from_relu), want)
        np.testing.assert_array_equal(
            fastconv.maxpool2d_backward(dy, x, 2, x_from_relu=x_from_relu, argmax=argmax), want)
    fused = fastconv.maxpool2d_backward(dy, x, 2, x_from_relu=True)
    assert not fused[~(x > 0)].any()  # nothing through zeros, negatives or NaN


@pytest.mark.parametrize("pool_size,strides,padding", POOL_CASES)
def test_maxpool_argmax_matches_reference_and_routes_the_gradient(isa, rng, pool_size, strides, padding):
    for shape in [(2, 9, 11, 5), (1, 8, 8, 64), (3, 13, 7, 1)]:
        x = rng.integers(-2, 3, size=shape).astype(np.float32)  # ties, zeros and negatives
        x[0, 0, :2, :] = np.nan
        y, argmax = fastconv.maxpool2d(x, pool_size, strides, padding, return_argmax=True)
        want_y, want_argmax = reference.maxpool2d(x, pool_size, strides, padding, return_argmax=True)
        np.testing.assert_array_equal(y, want_y)
        assert argmax.dtype == np.uint8 and argmax.shape == y.shape
        np.testing.assert_array_equal(argmax, want_argmax)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        for x_from_relu in (False, True):
            from_x = fastconv.maxpool2d_backward(dy, x, pool_size, strides, padding, x_from_relu=x_from_relu)
            from_argmax = fastconv.maxpool2d_backward(dy, x, pool_size, strides, padding, x_from_relu=x_from_relu,
                                                      argmax=argmax)
            np.testing.assert_array_equal(from_argmax, from_x)
            np.testing.assert_allclose(from_argmax, reference.maxpool2d_backward(
                dy, x, pool_size, strides, padding, x_from_relu=x_from_relu, argmax=want_argmax), atol=1e-5)


def test_maxpool_argmax_is_checked_and_bad_bytes_pass_nothing(isa, rng):
    x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    for pool_size, strides, padding in [(2, None, "valid"), (3, 2, "same")]:
        y = fastconv.maxpool2d(x, pool_size, strides, padding)
        dy = np.ones_like(y)
        with pytest.raises(TypeError, match="argmax"):
            fastconv.maxpool2d_backward(dy, x, pool_size, strides, padding, argmax=np.zeros(y.shape, np.int32))
        with pytest.raises(ValueError, match="argmax"):
            fastconv.maxpool2d_backward(dy, x, pool_size, strides, padding,
                                        argmax=np.zeros((1,) + y.shape[1:], np.uint8))
        # Bytes that name no tap of the window, or a tap in the padding, send no gradient anywhere.
        junk = rng.integers(0, 256, size=y.shape).astype(np.uint8)
        np.testing.assert_array_equal(
            fastconv.maxpool2d_backward(dy, x, pool_size, strides, padding, argmax=junk),
            reference.maxpool2d_backward(dy, x, pool_size, strides, padding, argmax=junk))
    with pytest.raises(ValueError, match="pool window"):  # 144 taps do not fit the byte
        fastconv.maxpool2d(np.zeros((1, 12, 12, 1), np.float32), 12, return_argmax=True)


def test_maxpool_gradient_goes_to_first_maximum(isa):
    x = np.array([[5, 5], [5, 1]], dtype=np.float32).reshape(1, 2, 2, 1)
    dx = fastconv.maxpool2d_backward(np.ones((1, 1, 1, 1), np.float32), x, 2)
    np.testing.assert_array_equal(dx.reshape(2, 2), [[1, 0], [0, 0]])


def test_avgpool_same_excludes_padding(isa):
    x = np.ones((1, 3, 3, 1), dtype=np.float32)
    np.testing.assert_array_equal(fastconv.avgpool2d(x, 2, 2, "same"), np.ones((1, 2, 2, 1)))


def test_global_avgpool(rng):
    x = rng.standard_normal((3, 5, 4, 6)).astype(np.float32)
    np.testing.assert_allclose(fastconv.global_avgpool2d(x), x.mean(axis=(1, 2)), atol=1e-6)
    dy = rng.standard_normal((3, 6)).astype(np.float32)
    np.testing.assert_allclose(fastconv.global_avgpool2d_backward(dy, x), np.broadcast_to(dy[:, None, None, :] / 20, x.shape))


def numeric_gradient(f, x, eps):
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad


@pytest.mark.parametrize("kwargs", [
    dict(strides=1, padding="same"), dict(strides=2, padding="valid"),
    dict(strides=(1, 2), padding=((1, 0), (2, 1)), dilation_rate=1), dict(strides=1, padding="valid", dilation_rate=2),
])
def test_conv2d_backward_matches_finite_differences(kwargs):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 6, 5, 3))
    w = rng.standard_normal((3, 2, 3, 4))
    b = rng.standard_normal(4)
    probe = rng.standard_normal(reference.conv2d(x, w, b, **kwargs).shape)

    def loss():
        return float((reference.conv2d(x, w, b, **kwargs) * probe).sum())

    dx, dw, db = reference.conv2d_backward(probe, x, w, **kwargs)
    for analytic, variable in ((dx, x), (dw, w), (db, b)):
        np.testing.assert_allclose(analytic, numeric_gradient(loss, variable, 1e-6), rtol=1e-6, atol=1e-6)
    # fastconv's float32 backward agrees with the float64 gradient that finite differences confirmed.
    got = fastconv.conv2d_backward(probe, x, w, **kwargs)
    for g, e in zip(got, (dx, dw, db)):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op", ["max", "avg"])
def test_pool_backward_matches_finite_differences(op):
    rng = np.random.default_rng(3)
    x = rng.permutation(2 * 5 * 6 * 3).reshape(2, 5, 6, 3).astype(np.float64) / 7  # distinct: no ties
    forward = {"max": reference.maxpool2d, "avg": reference.avgpool2d}[op]
    backward = {"max": fastconv.maxpool2d_backward, "avg": fastconv.avgpool2d_backward}[op]
    probe = rng.standard_normal(forward(x, 3, 2, "same").shape)
    numeric = numeric_gradient(lambda: float((forward(x, 3, 2, "same") * probe).sum()), x, 1e-4)
    np.testing.assert_allclose(backward(probe, x, 3, 2, "same"), numeric, atol=1e-5)


def test_results_are_bitwise_identical_for_any_thread_count(isa, threads, rng):
    x = rng.standard_normal((16, 28, 28, 8)).astype(np.float32)
    w = rng.standard_normal((3, 3, 8, 32)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    a = rng.standard_normal((300, 500)).astype(np.float32)
    m = rng.standard_normal((500, 200)).astype(np.float32)

    x1 = rng.standard_normal((24, 28, 28, 1)).astype(np.float32)  # the direct kernel's first layer
    w1 = rng.standard_normal((3, 3, 1, 33)).astype(np.float32)
    x5 = rng.standard_normal((12, 9, 10, 33)).astype(np.float32)
    w5 = rng.standard_normal((3, 3, 33, 70)).astype(np.float32)
    dy5 = rng.standard_normal((12, 9, 10, 70)).astype(np.float32)

    def run_all():
        y = fastconv.conv2d(x, w, b, padding="same", activation="relu")
        grads = fastconv.conv2d_backward(y, x, w, padding="same")
        y1 = fastconv.conv2d(x1, w1, b[:1].repeat(33), padding="same", activation="relu")
        grads1 = fastconv.conv2d_backward(y1, x1, w1, padding="same")
        pooled, argmax = fastconv.maxpool2d(y, 2, return_argmax=True)
        # the same conv through im2col (auto takes implicit GEMM for it), and a strided one
        y2 = fastconv.conv2d(x, w, b, padding="same", activation="relu", algorithm="im2col")
        grads2 = fastconv.conv2d_backward(y2, x, w, padding="same", algorithm="im2col", x_from_relu=True)
        y3 = fastconv.conv2d(x, w, strides=2, padding="same")
        grads4 = fastconv.conv2d_backward(y[..., :3], x, w[..., :3], padding="same")  # dw transposed (cout 3)
        grads5 = fastconv.conv2d_backward(dy5, x5, w5, padding="same")  # implicit GEMM dw
        grads6 = fastconv.conv2d_backward(dy5[..., :2], x5, w5[..., :2], padding="same")  # few-output dw
        return [y, *grads, y1, *grads1, y2, *grads2, y3, *grads4, *grads5, *grads6, pooled, argmax, fastconv.gemm(a, m),
                fastconv.maxpool2d_backward(pooled, y, 2), fastconv.maxpool2d_backward(pooled, y, 2, argmax=argmax)]

    threads(1)
    serial = run_all()
    for count in (2, 3, 4):
        threads(count)
        for s, p in zip(serial, run_all()):
            np.testing.assert_array_equal(s, p)


def test_concurrent_calls_from_python_threads_match_serial(rng):
    x = rng.standard_normal((8, 20, 20, 4)).astype(np.float32)
    ws = [rng.standard_normal((3, 3, 4, 16)).astype(np.float32) for _ in range(4)]
    expected = [fastconv.conv2d(x, w, padding="same") for w in ws]
    results = [[] for _ in ws]
    errors = []

    def worker(i):
        try:
            for _ in range(10):
                results[i].append(fastconv.conv2d(x, ws[i], padding="same"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(len(ws))]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in pool)
    for want, got in zip(expected, results):
        assert len(got) == 10
        for y in got:
            np.testing.assert_array_equal(y, want)


def test_nan_and_inf_propagate(isa):
    x = np.ones((1, 4, 4, 2), dtype=np.float32)
    x[0, 1, 1, 0] = np.nan
    x[0, 2, 2, 1] = np.inf
    w = np.ones((2, 2, 2, 1), dtype=np.float32)
    y = fastconv.conv2d(x, w, activation="relu")
    np.testing.assert_array_equal(np.isnan(y), np.isnan(reference.conv2d(x, w, activation="relu")))
    pooled = fastconv.maxpool2d(x, 2)
    assert np.isnan(pooled[0, 0, 0, 0]) and np.isinf(pooled[0, 1, 1, 1])


def test_other_dtypes_and_views_are_accepted(rng):
    x = rng.integers(-3, 4, size=(2, 10, 12, 3))
    w = rng.standard_normal((3, 3, 3, 5))  # float64
    expected = reference.conv2d(x.astype(np.float64), w)
    np.testing.assert_allclose(fastconv.conv2d(x, w), expected, atol=1e-4)
    flipped = x[:, ::-1, ::2, :]  # negative and non-unit strides
    np.testing.assert_allclose(fastconv.conv2d(flipped, w), reference.conv2d(flipped.astype(np.float64), w), atol=1e-4)
    np.testing.assert_array_equal(fastconv.maxpool2d(x.astype(np.int16), 2), reference.maxpool2d(x, 2))


def test_empty_batch_gives_empty_results():
    x = np.zeros((0, 8, 8, 3), dtype=np.float32)
    w = np.ones((3, 3, 3, 4), dtype=np.float32)
    assert fastconv.conv2d(x, w, padding="same").shape == (0, 8, 8, 4)
    dx, dw, db = fastconv.conv2d_backward(np.zeros((0, 6, 6, 4), np.float32), x, w)
    assert dx.shape == (0, 8, 8, 3) and not dw.any() and not db.any()
    assert fastconv.maxpool2d(x, 2).shape == (0, 4, 4, 3)
    assert fastconv.maxpool2d_backward(np.zeros((0, 4, 4, 3)), x, 2).shape == x.shape


X = np.zeros((2, 8, 8, 3), dtype=np.float32)
W = np.zeros((3, 3, 3, 4), dtype=np.float32)


@pytest.mark.parametrize("call,error,words", [
    (lambda: fastconv.conv2d(X[0], W), ValueError, "x must be 4-D"),
    (lambda: fastconv.conv2d(X, W[0]), ValueError, "w must be 4-D"),
    (lambda: fastconv.conv2d(X, np.zeros((3, 3, 2, 4))), ValueError, "input channels"),
    (lambda: fastconv.conv2d(X, W, np.zeros(5)), ValueError, "b must have shape (4,)"),
    (lambda: fastconv.conv2d(X, np.zeros((9, 9, 3, 4))), ValueError, "larger than the padded input"),
    (lambda: fastconv.conv2d(X, W, strides=0), ValueError, "strides must be positive"),
    (lambda: fastconv.conv2d(X, W, strides=(1, 2, 3)), ValueError, "strides"),
    (lambda: fastconv.conv2d(X, W, strides=1.5), TypeError, "strides"),
    (lambda: fastconv.conv2d(X, W, padding="full"), ValueError, "padding"),
    (lambda: fastconv.conv2d(X, W, padding=-1), ValueError, "padding"),
    (lambda: fastconv.conv2d(X, W, activation="gelu"), ValueError, "activation"),
    (lambda: fastconv.conv2d(X, W, algorithm="fft"), ValueError, "algorithm must be one of auto, im2col, direct"),
    (lambda: fastconv.conv2d_backward(np.zeros((2, 6, 6, 4)), X, W, algorithm=3), ValueError, "algorithm must be"),
    (lambda: fastconv.conv2d(X.astype(np.complex64), W), TypeError, "x must hold real numbers"),
    (lambda: fastconv.conv2d(X.astype(bool), W), TypeError, "x must hold real numbers"),
    (lambda: fastconv.conv2d(X.astype(object), W), TypeError, "x must hold real numbers"),
    (lambda: fastconv.conv2d(X, W, padding=2**30), ValueError, "more than fastconv supports"),
    (lambda: fastconv.conv2d_backward(np.zeros((2, 5, 5, 4)), X, W), ValueError, "dy must have shape (2, 6, 6, 4)"),
    (lambda: fastconv.conv2d(X, W, out=np.zeros((2, 6, 6, 4))), TypeError, "out must have dtype float32"),
    (lambda: fastconv.conv2d(X, W, out=np.zeros((2, 6, 6, 5), np.float32)), ValueError, "out must have shape"),
    (lambda: fastconv.maxpool2d(X, 0), ValueError, "pool_size must be positive"),
    (lambda: fastconv.maxpool2d(X, 2, strides=-1), ValueError, "strides must be positive"),
    (lambda: fastconv.maxpool2d(X, 9), ValueError, "larger than the input"),
    (lambda: fastconv.maxpool2d(X, 2, padding="causal"), ValueError, "padding"),
    (lambda: fastconv.maxpool2d_backward(np.zeros((2, 3, 3, 3)), X, 2), ValueError, "dy must have shape"),
    (lambda: fastconv.avgpool2d(X[0], 2), ValueError, "x must be 4-D"),
    (lambda: fastconv.set_num_threads(0), ValueError, "positive"),
    (lambda: fastconv.set_num_threads(2.0), TypeError, "positive int"),
    (lambda: fastconv.set_isa("sse9"), ValueError, "isa must be one of"),
])
def test_bad_input_gets_a_clear_error(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value)


def subprocess_env(**variables):
    """A clean environment for a child Python that imports the fastconv under test, plus `variables`;
    a sanitizer run's preloaded runtime (tools/sanitize) is passed on, as the extension needs it."""
    env = {name: os.environ[name] for name in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS") if name in os.environ}
    env["PYTHONPATH"] = str(pathlib.Path(fastconv.__file__).resolve().parents[1])
    return {**env, **variables}


def test_forcing_a_path_by_environment_in_a_subprocess():
    import subprocess
    import sys
    code = "import fastconv; print(fastconv.get_isa())"
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(FASTCONV_ISA="generic"),
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "generic"


def test_gemm_with_a_smaller_team_than_asked_for():
    """OpenMP may run fewer threads than set_num_threads asks (here OMP_THREAD_LIMIT=1): a wide
    product, cut into one column group per thread, still computes every column."""
    import subprocess
    code = """if True:
        import numpy as np, fastconv
        fastconv.set_num_threads(2)
        rng = np.random.default_rng(0)
        a, b = rng.standard_normal((300, 500), dtype=np.float32), rng.standard_normal((500, 900), dtype=np.float32)
        print(float(np.abs(fastconv.gemm(a, b) - a.astype(np.float64) @ b).max()))
    """
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(OMP_THREAD_LIMIT="1"),
                         capture_output=True, text=True, check=True)
    assert float(out.stdout) < 1e-3


def test_config_reports_the_build():
    cfg = fastconv.config()
    assert cfg["isa"] in cfg["isas_available"] and "generic" in cfg["isas_available"]
    assert set(cfg) >= {"version", "isa", "isas_available", "kernels", "openmp", "num_threads", "compiler"}
    assert cfg["kernels"]["gemm"]


def test_threadpoolctl_sees_and_limits_fastconv(threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not fastconv.config()["openmp"]:
        pytest.skip("built without OpenMP")
    info = threadpoolctl.threadpool_info()
    assert any(entry["user_api"] == "openmp" for entry in info)
    with threadpoolctl.threadpool_limits(1):
        assert fastconv.get_num_threads() == 1
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert fastconv.get_num_threads() == 1


def test_freed_memory_setting_is_reported_and_can_be_turned_off():
    import platform
    import subprocess
    code = "import fastconv; print(fastconv.config()['keeps_freed_memory'])"
    results = {}
    for value in ("1", "0"):
        env = subprocess_env(FASTCONV_KEEP_FREED_MEMORY=value)
        results[value] = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                        check=True).stdout.strip()
    # glibc's malloc keeps freed memory when asked; AddressSanitizer's allocator (tools/sanitize) replaces it
    glibc_malloc = platform.libc_ver()[0] == "glibc" and "libasan" not in os.environ.get("LD_PRELOAD", "")
    assert results == {"1": str(glibc_malloc), "0": "False"}
