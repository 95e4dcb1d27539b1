"""Winograd F(2x2, 3x3) and F(4x4, 3x3) (csrc/conv/winograd.c), and the weight gradient as their duals
F(3x3, 2x2) and F(3x3, 4x4), forced, against the float64 reference with the error bounds stated in
fastconv.conv2d's docstring."""
import numpy as np
import pytest

import fastconv
from fastconv import _C, reference

# max |error| over the standard deviation of the exact result (the docstring's bounds)
BOUND = {"winograd": 5e-6, "winograd4x4": 1e-4}
VARIANTS = sorted(BOUND)


def check(actual, expected, terms, algorithm):
    """float32 against float64 on unit-normal data: max |error| <= bound * sqrt(terms), the standard
    deviation of a sum of `terms` products."""
    err = float(np.abs(actual - expected).max())
    assert err <= BOUND[algorithm] * np.sqrt(terms), (algorithm, err / np.sqrt(terms))


CASES = [  # x shape, cout, padding
    ((2, 9, 7, 5), 6, "same"),          # odd sizes: partial tiles at the right and bottom
    ((3, 11, 13, 16), 24, "valid"),
    ((1, 1, 1, 8), 9, "same"),          # one pixel: every tap but the centre in the padding
    ((2, 3, 3, 4), 5, "valid"),         # a single output pixel
    ((2, 6, 10, 33), 17, 2),            # more padding than 'same', lanes and a scalar tail
    ((1, 5, 8, 8), 8, ((0, 2), (2, 1))),
    ((4, 8, 8, 40), 48, "same"),        # several blocks of tiles
]


@pytest.mark.parametrize("algorithm", VARIANTS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_forward_and_gradients_match_reference(isa, rng, algorithm, case):
    x_shape, cout, padding = CASES[case]
    cin = x_shape[3]
    assert fastconv.conv2d_algorithm(x_shape, (3, 3, cin, cout), padding=padding, algorithm=algorithm) == algorithm
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal((3, 3, cin, cout)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    for activation in (None, "relu"):
        y = fastconv.conv2d(x, w, b, padding=padding, activation=activation, algorithm=algorithm)
        want = reference.conv2d(x64, w64, b.astype(np.float64), padding=padding, activation=activation)
        assert y.shape == want.shape and y.dtype == np.float32
        check(y, want, 9 * cin, algorithm)

    dy = rng.standard_normal(y.shape).astype(np.float32)
    xr = np.maximum(x, 0)  # x_from_relu: dx masked where x is zero, in the same pass
    for x_in, from_relu in ((x, False), (xr, True)):
        dx, dw, db = fastconv.conv2d_backward(dy, x_in, w, padding=padding, x_from_relu=from_relu, algorithm=algorithm)
        want = reference.conv2d_backward(dy.astype(np.float64), x_in.astype(np.float64), w64, padding=padding,
                                         x_from_relu=from_relu)
        check(dx, want[0], 9 * cout, algorithm)
        if from_relu:
            assert np.all(dx[xr == 0] == 0)
        check(dw, want[1], y.shape[0] * y.shape[1] * y.shape[2], algorithm)  # a sum over the output pixels
        # db is the other paths': the same bits
        np.testing.assert_array_equal(db, fastconv.conv2d_backward(dy, x_in, w, padding=padding, algorithm="im2col")[2])
        np.testing.assert_allclose(db, want[2], rtol=1e-5, atol=1e-5)
        # without dx, the same dw and db
        _, dw_alone, db_alone = fastconv.conv2d_backward(dy, x_in, w, padding=padding, need_dx=False,
                                                         algorithm=algorithm)
        np.testing.assert_array_equal(dw_alone, dw)
        np.testing.assert_array_equal(db_alone, db)


@pytest.mark.parametrize("algorithm", VARIANTS)
def test_error_bound_holds_up_to_512_input_channels(rng, algorithm):
    """The docstring's bound, over unit-normal data with many channels summed (few pixels: fast)."""
    for cin in (64, 512):
        x = rng.standard_normal((1, 8, 8, cin)).astype(np.float32)
        w = rng.standard_normal((3, 3, cin, 8)).astype(np.float32)
        y = fastconv.conv2d(x, w, padding="same", algorithm=algorithm)
        check(y, reference.conv2d(x.astype(np.float64), w.astype(np.float64), padding="same"), 9 * cin, algorithm)
        dy = rng.standard_normal((1, 8, 8, cin)).astype(np.float32)
        w2 = rng.standard_normal((3, 3, 8, cin)).astype(np.float32)
        dx = fastconv.conv2d_backward(dy, x[..., :8].copy(), w2, padding="same", algorithm=algorithm)[0]
        want = reference.conv2d_backward(dy.astype(np.float64), x[..., :8].astype(np.float64),
                                         w2.astype(np.float64), padding="same")[0]
        check(dx, want, 9 * cin, algorithm)
        dw = fastconv.conv2d_backward(dy[..., :8].copy(), x, w, padding="same", need_dx=False, algorithm=algorithm)[1]
        want = reference.conv2d_backward(dy[..., :8].astype(np.float64), x.astype(np.float64), w.astype(np.float64),
                                         padding="same", need_dx=False)[1]
        check(dw, want, 64, algorithm)


@pytest.mark.parametrize("algorithm", VARIANTS)
def test_weight_gradient_bound_holds_over_many_pixels(rng, algorithm):
    """The weight gradient sums over the batch and the output pixels: its bound at a larger K."""
    x = rng.standard_normal((24, 20, 20, 16)).astype(np.float32)
    w = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    dy = rng.standard_normal((24, 18, 18, 16)).astype(np.float32)
    dw = fastconv.conv2d_backward(dy, x, w, padding="valid", need_dx=False, algorithm=algorithm)[1]
    want = reference.conv2d_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64),
                                     padding="valid", need_dx=False)[1]
    check(dw, want, 24 * 18 * 18, algorithm)


@pytest.mark.skipif(not fastconv._C.openmp_enabled(), reason="built without OpenMP")
@pytest.mark.parametrize("algorithm", VARIANTS)
def test_results_are_the_same_bits_for_any_thread_count(threads, rng, algorithm):
    x = rng.standard_normal((6, 20, 18, 24)).astype(np.float32)  # many blocks of tiles
    w = rng.standard_normal((3, 3, 24, 40)).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    dy = rng.standard_normal((6, 20, 18, 40)).astype(np.float32)
    results = []
    for n in (1, 2, 3):
        threads(n)
        y = fastconv.conv2d(x, w, b, padding="same", activation="relu", algorithm=algorithm)
        results.append((y,) + fastconv.conv2d_backward(dy, x, w, padding="same", algorithm=algorithm))
    assert fastconv.ops.conv2d_plan(x.shape, w.shape, padding="same", backward=True, algorithm=algorithm)["threads"] > 1
    for result in results[1:]:
        for got, want in zip(result, results[0]):  # y, dx, dw, db
            np.testing.assert_array_equal(got, want)


def test_where_winograd_applies_and_what_auto_picks(monkeypatch):
    for algorithm in VARIANTS:
        # not 3x3 stride 1 undilated: auto's choice instead
        for w_shape, kwargs in (((3, 3, 8, 8), dict(strides=2)), ((3, 3, 8, 8), dict(dilation_rate=2)),
                                ((5, 5, 8, 8), {}), ((1, 1, 8, 8), {}), ((3, 1, 8, 8), {})):
            auto = fastconv.conv2d_algorithm((1, 9, 9, 8), w_shape, **kwargs)
            assert fastconv.conv2d_algorithm((1, 9, 9, 8), w_shape, algorithm=algorithm, **kwargs) == auto
            assert not auto.startswith("winograd")
        assert fastconv.conv2d_algorithm((1, 9, 9, 8), (3, 3, 8, 8), algorithm=algorithm.upper()) == algorithm
    # auto: few channels stay with implicit GEMM
    assert fastconv.conv2d_algorithm((1, 28, 28, 6), (3, 3, 6, 6), padding="same") == "implicit"
    for algorithm in VARIANTS:
        monkeypatch.setenv("FASTCONV_CONV_ALGO", algorithm)
        assert fastconv.conv2d_algorithm((1, 28, 28, 6), (3, 3, 6, 6), padding="same") == algorithm


@pytest.mark.parametrize("algorithm", VARIANTS)
@pytest.mark.parametrize("backward", [False, True])
def test_a_call_allocates_what_conv2d_workspace_bytes_says(rng, algorithm, backward):
    x = rng.standard_normal((3, 10, 9, 20)).astype(np.float32)
    w = rng.standard_normal((3, 3, 20, 36)).astype(np.float32)
    reported = fastconv.conv2d_workspace_bytes(x.shape, w.shape, padding="same", backward=backward,
                                               algorithm=algorithm)
    fastconv.release_workspace()
    _C.reset_workspace_peak()
    y = fastconv.conv2d(x, w, padding="same", algorithm=algorithm)
    if backward:
        _C.reset_workspace_peak()
        fastconv.conv2d_backward(y, x, w, padding="same", algorithm=algorithm)
    page = 4096
    assert _C.workspace_stats()[1] <= max(reported, 64) + 3 * page
    assert reported > 0


def test_auto_takes_winograd_only_where_it_was_measured_faster(isa):
    """Auto's rule (csrc/conv/conv.c): 3x3 stride 1, 8 or more channels both ways, on the AVX2 kernel;
    the tile size with fewer multiplies (F(2x2, 3x3) on a tie), where that is at most 2/3 of the direct
    method's 9 per output pixel."""
    cases = [  # x shape, w shape, auto's forward on AVX2
        ((8, 14, 14, 32), (3, 3, 32, 64), "winograd4x4"),  # 16 4x4 tiles: 576 multiplies, 49 2x2 ones: 784
        ((8, 14, 14, 8), (3, 3, 8, 16), "winograd4x4"),
        ((8, 3, 3, 64), (3, 3, 64, 64), "winograd4x4"),    # one 4x4 tile (36) against four 2x2 ones (64)
        ((8, 6, 6, 64), (3, 3, 64, 64), "winograd"),       # 4 4x4 tiles or 9 2x2 ones: 144 each
        ((8, 2, 2, 64), (3, 3, 64, 64), "winograd"),       # 16 multiplies for 4 pixels
        ((8, 1, 1, 64), (3, 3, 64, 64), None),             # 16 for 1 pixel: more than direct's 9
        ((8, 14, 14, 7), (3, 3, 7, 64), None),
        ((8, 14, 14, 64), (3, 3, 64, 7), None),
        ((8, 14, 14, 32), (5, 5, 32, 64), None),
    ]
    for x_shape, w_shape, want in cases:
        got = fastconv.conv2d_algorithm(x_shape, w_shape, padding="same")
        if isa == "avx2" and want:
            assert got == want, (x_shape, w_shape)
            assert fastconv.ops.conv2d_plan(x_shape, w_shape, padding="same", backward=True)["dx"] == "winograd"
        else:
            assert not got.startswith("winograd"), (x_shape, w_shape)


def test_auto_takes_the_winograd_weight_gradient_only_where_it_was_measured_faster(isa, rng):
    """Auto's rule (csrc/conv/conv.c): where the forward is Winograd (3x3 stride 1, 8 or more channels
    both ways, on the AVX2 kernel, not a 1x1 output), with the forward's tile: the one with fewer
    multiplies over the output, F(3x3, 2x2) on a tie."""
    for x_shape, w_shape, tile in (((4, 14, 14, 32), (3, 3, 32, 64), "winograd4x4"),
                                   ((4, 9, 9, 16), (3, 3, 16, 16), "winograd4x4"),
                                   ((4, 5, 5, 16), (3, 3, 16, 16), "winograd"),   # 144 multiplies each
                                   ((4, 14, 14, 16), (3, 3, 16, 8), "winograd4x4")):
        plan = fastconv.ops.conv2d_plan(x_shape, w_shape, padding="same", backward=True)
        assert (plan["dw"] == "winograd") == (isa == "avx2")
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = rng.standard_normal(w_shape).astype(np.float32)
        dy = rng.standard_normal(x_shape[:3] + w_shape[3:]).astype(np.float32)
        dw = fastconv.conv2d_backward(dy, x, w, padding="same", need_dx=False)[1]
        if isa == "avx2":  # the very tile auto picked: the same bits
            np.testing.assert_array_equal(dw, fastconv.conv2d_backward(dy, x, w, padding="same", need_dx=False,
                                                                       algorithm=tile)[1])
    for x_shape, w_shape, kwargs in (((4, 14, 14, 16), (3, 3, 16, 7), {}), ((4, 14, 14, 7), (3, 3, 7, 64), {}),
                                     ((4, 1, 1, 32), (3, 3, 32, 32), {}),
                                     ((4, 14, 14, 32), (5, 5, 32, 64), {}), ((4, 14, 14, 32), (3, 3, 32, 64),
                                                                             dict(strides=2))):
        assert fastconv.ops.conv2d_plan(x_shape, w_shape, padding="same", backward=True, **kwargs)["dw"] != "winograd"
