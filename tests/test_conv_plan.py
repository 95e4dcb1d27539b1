"""A convolution's reported scratch (conv2d_workspace_bytes, read from its plan) is what the call asks the
scratch allocator for: the accounting cannot drift from the allocations."""
import numpy as np
import pytest

import fastconv
from fastconv import _C

# (x shape, w shape, strides, padding, dilation): every forward, dx and dw path of the three algorithms.
SHAPES = [
    ((3, 9, 9, 1), (3, 3, 1, 8), 1, "same", 1),        # direct (few input channels)
    ((2, 11, 10, 3), (3, 3, 3, 5), 2, "valid", 1),     # direct, strided
    ((3, 9, 9, 16), (3, 3, 16, 24), 1, "same", 1),     # implicit GEMM, by rows; implicit dx, Winograd dw (AVX2)
    ((2, 5, 5, 8), (3, 3, 8, 64), 1, "valid", 1),      # im2col (rows too short for tiles)
    ((2, 6, 7, 16), (3, 3, 16, 40), 1, "same", 1),     # implicit GEMM by band
    ((4, 8, 8, 12), (3, 3, 12, 3), 1, "same", 1),      # few outputs: direct rows; few-outputs dw
    ((2, 9, 9, 6), (3, 3, 6, 7), 1, "valid", 1),       # transposed dw (up to 8 outputs)
    ((2, 12, 12, 8), (3, 3, 8, 16), 2, "same", 1),     # im2col, strided
    ((2, 12, 12, 8), (3, 3, 8, 16), 1, "same", 2),     # im2col, dilated
    ((2, 7, 7, 8), (1, 1, 8, 16), 1, "valid", 1),      # pointwise: one GEMM
    ((2, 8, 9, 16), (3, 2, 16, 32), 1, ((2, 3), (0, 4)), 1),  # explicit pads, beyond kh - 1 at the bottom
    ((40, 6, 6, 8), (3, 3, 8, 16), 1, "same", 1),      # many backward blocks and partial sums
]


def _conv(shape, backward, algorithm, rng):
    x_shape, w_shape, strides, padding, dilation = shape
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    args = dict(strides=strides, padding=padding, dilation_rate=dilation, algorithm=algorithm)
    y = fastconv.conv2d(x, w, **args)
    _C.scratch_requested()  # from here on: this call's requests only
    if backward:
        fastconv.conv2d_backward(np.ones_like(y), x, w, **args)
    else:
        fastconv.conv2d(x, w, **args)
    return _C.scratch_requested()


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("algorithm", ["auto", "im2col", "direct", "implicit", "winograd", "winograd4x4"])
@pytest.mark.parametrize("shape", SHAPES, ids=range(len(SHAPES)))
def test_workspace_bytes_are_what_the_call_requests(shape, algorithm, backward):
    rng = np.random.default_rng(0)
    requested = _conv(shape, backward, algorithm, rng)
    reported = fastconv.conv2d_workspace_bytes(*shape[:2], strides=shape[2], padding=shape[3],
                                               dilation_rate=shape[4], backward=backward, algorithm=algorithm)
    pointwise_gemm = not backward and fastconv.conv2d_algorithm(
        *shape[:2], strides=shape[2], padding=shape[3], dilation_rate=shape[4], algorithm=algorithm) == "gemm"
    if pointwise_gemm:  # the GEMM's own block: sized for any alignment of B, takes less for an aligned one
        assert requested[0] == requested[1] == 0 and 0 < requested[2] <= reported
    else:
        assert requested[2] == 0  # every GEMM works in the call's own block
        assert sum(requested) == reported


def test_the_counter_sees_a_larger_request():
    rng = np.random.default_rng(1)
    small = sum(_conv(SHAPES[2], False, "im2col", rng))
    large = sum(_conv(((8,) + SHAPES[2][0][1:],) + SHAPES[2][1:], False, "im2col", rng))
    assert 0 < small < large
    assert _C.scratch_requested() == (0, 0, 0)


def _plan(shape, **kwargs):
    x_shape, w_shape, strides, padding, dilation = shape
    return fastconv.ops.conv2d_plan(x_shape, w_shape, strides=strides, padding=padding, dilation_rate=dilation,
                                    **kwargs)


@pytest.mark.parametrize("shape,algorithm,forward,dx,dw", [
    (SHAPES[0], "auto", "direct", "im2col", "direct"),     # direct dx only when forced
    (SHAPES[0], "direct", "direct", "direct", "direct"),
    (((2, 9, 9, 64), (3, 2, 64, 12), 1, "same", 1), "auto", "implicit", "implicit", "implicit"),  # (3x2: no Winograd)
    (SHAPES[2], "im2col", "im2col", "im2col", "im2col"),
    (SHAPES[5], "auto", "implicit", "implicit", "few_outputs"),
    (SHAPES[6], "im2col", "im2col", "im2col", "im2col_transposed"),
    (SHAPES[7], "auto", "im2col", "im2col", "im2col"),
    (SHAPES[9], "auto", "gemm", "im2col", "im2col"),
    (SHAPES[2], "winograd", "winograd", "winograd", "winograd"),
    (SHAPES[2], "winograd4x4", "winograd", "winograd", "winograd"),
])
def test_the_plan_names_each_pass(shape, algorithm, forward, dx, dw):
    plan = _plan(shape, algorithm=algorithm)
    assert plan["forward"] == forward and plan["threads"] >= 1
    assert plan["algorithm"] == fastconv.conv2d_algorithm(*shape[:2], strides=shape[2], padding=shape[3],
                                                           dilation_rate=shape[4], algorithm=algorithm)
    backward = _plan(shape, algorithm=algorithm, backward=True)
    assert (backward["dx"], backward["dw"]) == (dx, dw)
    assert "forward" not in backward and "dx" not in plan
    without_dx = _plan(shape, algorithm=algorithm, backward=True, need_dx=False)
    assert (without_dx["dx"], without_dx["dw"]) == ("none", dw)
    # an implicit dx keeps its flipped kernel in a slot of its own; the others need none (Winograd
    # transforms its kernel straight into packed panels, in the call's scratch)
    assert (backward["scratch_bytes"]["kernel"] > 0) == (dx == "implicit")
    assert without_dx["scratch_bytes"]["kernel"] == 0
